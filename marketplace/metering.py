"""The money side of a metered call: open it with a hold, then settle or fail it exactly once.

Each function is one database transaction. Opening writes the generation record and the hold
together; settling posts the cost (at most the hold), releases the rest, splits the cost between
the supplier and the platform, and finishes the generation record, all in one commit.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from marketplace import ledger, spend
from marketplace.db import Database
from marketplace.errors import InsufficientBalance
from marketplace.models import Generation, utcnow
from marketplace.pricing import platform_fee_nano_usd
from providers.usage import Usage

logger = logging.getLogger(__name__)


def hold_transfer_id(generation_id: str, attempt: int = 0) -> str:
    """The hold of one attempt; a call that falls back to another listing holds again per attempt."""
    return f"hold:{generation_id}" if attempt == 0 else f"hold:{generation_id}:{attempt}"


@dataclass(frozen=True)
class OpenedCall:
    generation_id: str
    hold_id: str
    hold_nano_usd: int
    started_at: dt.datetime
    # Whose call it is and the spend-limit period its hold was reserved in, so that settling
    # needs nothing but this record.
    account_id: int | None = None
    api_key_id: int | None = None
    spend_period: str | None = None


def open_call(
    db: Database,
    *,
    generation_id: str,
    account_id: int,
    api_key_id: int,
    listing_id: int,
    model: str,
    stream: bool,
    hold_nano_usd: int,
    hold_ttl_s: int,
    spend_limit_nano_usd: int | None = None,
    spend_limit_period: str | None = None,
    attempt: int = 0,
) -> OpenedCall:
    """Hold the call's largest possible cost against the balance and the key's spend limit.

    Raises RateLimited when the spend limit cannot take the hold and InsufficientBalance when
    the balance cannot, and then writes nothing. Attempt 0 creates the generation record; a
    fallback attempt moves it to the new listing, after the previous attempt's hold was voided.
    """
    now = utcnow()
    hold_id = hold_transfer_id(generation_id, attempt)
    period = spend.period_for(spend_limit_period, now) if spend_limit_nano_usd is not None and spend_limit_period else None
    try:
        with db.transaction() as session:
            if period is not None:
                spend.reserve(session, api_key_id, period, spend_limit_nano_usd, hold_nano_usd)
            buyer, clearing = _call_accounts(session, account_id)
            if attempt == 0:
                session.add(
                    Generation(
                        id=generation_id,
                        account_id=account_id,
                        api_key_id=api_key_id,
                        listing_id=listing_id,
                        model=model,
                        stream=stream,
                        status="pending",
                        hold_nano_usd=hold_nano_usd,
                        hold_transfer_id=hold_id,
                        spend_period=period,
                        created_at=now,
                    )
                )
            else:
                generation = session.get(Generation, generation_id, with_for_update=True)
                assert generation is not None and generation.status == "failed", f"generation {generation_id} cannot fall back"
                generation.listing_id = listing_id
                generation.status = "pending"
                generation.hold_nano_usd = hold_nano_usd
                generation.hold_transfer_id = hold_id
                generation.spend_period = period
            session.flush()
            ledger.place_hold(
                session,
                hold_id,
                buyer,
                clearing,
                hold_nano_usd,
                now + dt.timedelta(seconds=hold_ttl_s),
                reference=generation_id,
            )
    except ledger.InsufficientFunds as exc:
        raise InsufficientBalance(
            f"balance of {exc.available_nano_usd} nano-USD does not cover this call's hold of "
            f"{exc.requested_nano_usd} nano-USD; top up, or lower max_tokens",
            code="insufficient_balance",
        ) from exc
    started_at = now if attempt == 0 else _started_at(db, generation_id)
    return OpenedCall(generation_id, hold_id, hold_nano_usd, started_at, account_id, api_key_id, period)


def _started_at(db: Database, generation_id: str) -> dt.datetime:
    with db.session() as session:
        generation = session.get(Generation, generation_id)
        assert generation is not None
        return generation.created_at


@dataclass(frozen=True)
class SettledCall:
    cost_nano_usd: int
    charged_nano_usd: int
    balance_nano_usd: int


def elapsed_ms(started_at: dt.datetime, finished_at: dt.datetime) -> int:
    return int((finished_at - started_at).total_seconds() * 1000)


def settle_call(
    db: Database,
    call: OpenedCall,
    *,
    usage: Usage,
    cost_nano_usd: int,
    supplier_id: int,
    fee_bps: int,
    status: str,
    error: str | None = None,
) -> SettledCall:
    """Charge the call's cost, capped at its hold, and credit the supplier and the platform."""
    charged = min(cost_nano_usd, call.hold_nano_usd)
    if charged < cost_nano_usd:
        logger.warning(
            "call cost exceeds its hold; charging the hold",
            extra={"generation_id": call.generation_id, "cost_nano_usd": cost_nano_usd, "hold_nano_usd": call.hold_nano_usd},
        )
    fee = platform_fee_nano_usd(charged, fee_bps)
    finished_at = utcnow()

    with db.transaction() as session:
        # One statement locks the generation row, as SELECT ... FOR UPDATE would, and finishes it.
        finished = session.execute(
            update(Generation)
            .where(Generation.id == call.generation_id)
            .values(
                **usage_values(usage),
                cost_nano_usd=charged,
                status=status,
                error=error,
                latency_ms=elapsed_ms(call.started_at, finished_at),
                finished_at=finished_at,
            )
            .returning(Generation.account_id, Generation.api_key_id, Generation.spend_period, Generation.hold_nano_usd)
            .execution_options(synchronize_session=False)
        ).one_or_none()
        assert finished is not None, f"generation {call.generation_id} was never opened"
        account_id, api_key_id, spend_period, hold_nano_usd = finished
        if spend_period is not None:
            spend.release(session, api_key_id, spend_period, hold_nano_usd, charged)

        # The ledger goes last, so the account rows that every call shares are locked only
        # from their updates to the commit.
        _, _, supplier, revenue = _call_accounts(session, account_id, supplier_id)
        splits = [
            ledger.Split(f"{call.generation_id}:supplier", supplier, charged - fee, "usage_supplier"),
            ledger.Split(f"{call.generation_id}:fee", revenue, fee, "usage_fee"),
        ]
        balance = ledger.post_hold_and_split(session, call.hold_id, charged, splits, reference=call.generation_id)

    return SettledCall(cost_nano_usd, charged, balance.available_nano_usd)


def _call_accounts(session: Session, account_id: int, supplier_id: int | None = None) -> list[ledger.LedgerAccount]:
    """Read a call's buyer and clearing accounts in one query, creating any that is missing.

    With `supplier_id`, the supplier and platform revenue accounts follow in the same query.
    """
    specs = [
        (ledger.buyer_account_name(account_id), "buyer", account_id, True),
        (ledger.USAGE_CLEARING, "usage_clearing", None, False),
    ]
    if supplier_id is not None:
        specs += [
            (ledger.supplier_account_name(supplier_id), "supplier_payable", None, False),
            (ledger.PLATFORM_REVENUE, "platform_revenue", None, False),
        ]
    found = ledger.find_accounts(session, [name for name, *_ in specs])
    return [
        found.get(name)
        or ledger.get_or_create_account(session, name, code, account_id=owner_id, debits_must_not_exceed_credits=constrained)
        for name, code, owner_id, constrained in specs
    ]


def fail_call(db: Database, call: OpenedCall, *, error: str) -> None:
    """Release the whole hold of a call that produced nothing; the buyer pays 0."""
    finished_at = utcnow()
    with db.transaction() as session:
        generation = session.get(Generation, call.generation_id, with_for_update=True)
        assert generation is not None, f"generation {call.generation_id} was never opened"
        ledger.void_hold(session, call.hold_id)
        _release_spend(session, generation, 0)
        generation.status = "failed"
        generation.error = error[:500]
        generation.latency_ms = elapsed_ms(call.started_at, finished_at)
        generation.finished_at = finished_at


def _release_spend(session: Session, generation: Generation, charged_nano_usd: int) -> None:
    if generation.spend_period is not None:
        spend.release(session, generation.api_key_id, generation.spend_period, generation.hold_nano_usd, charged_nano_usd)


def usage_values(usage: Usage) -> dict[str, int | bool]:
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "cached_prompt_tokens": usage.cached_prompt_tokens,
        "cache_write_tokens": usage.cache_write_tokens,
        "reasoning_tokens": usage.reasoning_tokens,
        "usage_estimated": usage.estimated,
    }


def expire_holds(session: Session, now: dt.datetime | None = None, limit: int = 500) -> int:
    """Release holds that outlived their call and mark their generations expired."""
    expired = 0
    for hold_id in ledger.find_expired_holds(session, now, limit):
        try:
            with session.begin_nested():
                ledger.expire_hold(session, hold_id)
                generation = session.scalar(select(Generation).where(Generation.hold_transfer_id == hold_id))
                if generation is not None and generation.status == "pending":
                    _release_spend(session, generation, 0)
                    generation.status = "expired"
                    generation.finished_at = utcnow()
            expired += 1
        except ledger.HoldAlreadyResolved:
            logger.info("hold resolved before the sweep reached it", extra={"hold_id": hold_id})
    return expired
