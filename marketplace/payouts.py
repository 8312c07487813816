"""Supplier payouts in the ledger and the database. `chain/payouts.py` signs and sends them.

A payout moves a supplier's available earnings out in three balanced transfers at most:

- reserve `payout_reserve:{payout_id}`: supplier payable -> `clearing:payouts`, when it opens,
  so the same earnings can never be paid twice;
- confirm `payout:{chain_id}:{tx_hash}`: `clearing:payouts` -> the chain asset account of the
  token, keyed by the transaction that was mined, once it has the chain's confirmation depth;
- or return `payout_return:{payout_id}`: `clearing:payouts` -> supplier payable, when the
  payout is given up after its transactions reverted too often.

Each function here flushes and never commits: the caller owns the transaction.
"""

from __future__ import annotations

import datetime as dt
import logging

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from marketplace import ledger
from marketplace.deposits import units_to_nano_usd
from marketplace.models import LedgerAccount, Payout, PayoutAttempt, SignerNonce, Supplier, utcnow
from marketplace.settings import TokenSettings

logger = logging.getLogger(__name__)

PAYOUT_CLEARING = "clearing:payouts"


def payout_reserve_transfer_id(payout_id: int) -> str:
    return f"payout_reserve:{payout_id}"


def payout_transfer_id(chain_id: int, tx_hash: str) -> str:
    return f"payout:{chain_id}:{tx_hash.lower()}"


def payout_return_transfer_id(payout_id: int) -> str:
    return f"payout_return:{payout_id}"


def nano_usd_to_units_floor(amount_nano_usd: int, decimals: int) -> int:
    """Convert nano-USD to token units, rounding down: the remainder stays with the supplier for the next payout."""
    assert amount_nano_usd >= 0, f"negative amount {amount_nano_usd}"
    if decimals >= 9:
        return amount_nano_usd * 10 ** (decimals - 9)
    return amount_nano_usd // 10 ** (9 - decimals)


def _lock(session: Session, ledger_account_id: int) -> None:
    session.execute(select(LedgerAccount.id).where(LedgerAccount.id == ledger_account_id).with_for_update())


def payable_supplier_ids(session: Session, threshold_nano_usd: int, failure_cooldown_s: float = 0.0) -> list[int]:
    """Return suppliers whose available payable balance reaches the threshold.

    Suppliers with an open payout, or with a payout given up less than `failure_cooldown_s`
    seconds ago, are left out.
    """
    available = (
        LedgerAccount.credits_posted_nano_usd - LedgerAccount.debits_posted_nano_usd - LedgerAccount.debits_pending_nano_usd
    )
    names = session.scalars(
        select(LedgerAccount.name).where(LedgerAccount.code == "supplier_payable", available >= threshold_nano_usd)
    )
    candidates = {int(name.removeprefix("supplier:")) for name in names if name.startswith("supplier:")}
    if not candidates:
        return []
    busy = set(session.scalars(select(Payout.supplier_id).where(Payout.status == "open", Payout.supplier_id.in_(candidates))))
    cooling_since = utcnow() - dt.timedelta(seconds=failure_cooldown_s)
    cooling = set(
        session.scalars(
            select(Payout.supplier_id).where(
                Payout.status == "failed", Payout.updated_at > cooling_since, Payout.supplier_id.in_(candidates)
            )
        )
    )
    return sorted(candidates - busy - cooling)


def open_payout(
    session: Session, supplier_id: int, chain_id: int, token: TokenSettings, threshold_nano_usd: int
) -> Payout | None:
    """Reserve a supplier's available earnings for one payout, or return None when nothing is due.

    The amount is the available balance rounded down to whole token units. A supplier has at
    most one open payout, which the locked payable row makes true under concurrent runs too.
    """
    supplier = session.get(Supplier, supplier_id)
    assert supplier is not None, f"supplier {supplier_id} does not exist"
    payable = ledger.get_or_create_account(
        session, ledger.supplier_account_name(supplier_id), "supplier_payable", account_id=supplier.account_id
    )
    _lock(session, payable.id)
    if session.scalar(select(Payout.id).where(Payout.supplier_id == supplier_id, Payout.status == "open")) is not None:
        return None

    available_nano_usd = ledger.read_balance(session, payable.id).available_nano_usd
    amount_units = nano_usd_to_units_floor(max(0, available_nano_usd), token.decimals)
    amount_nano_usd = units_to_nano_usd(amount_units, token.decimals)
    if amount_units == 0 or amount_nano_usd < threshold_nano_usd:
        return None
    assert amount_nano_usd <= available_nano_usd, f"payout of {amount_nano_usd} exceeds available {available_nano_usd}"

    payout = Payout(
        supplier_id=supplier_id,
        chain_id=chain_id,
        token_address=token.address,
        to_address=supplier.payout_address,
        amount_units=str(amount_units),
        amount_nano_usd=amount_nano_usd,
        status="open",
        failed_attempts=0,
    )
    session.add(payout)
    session.flush()
    clearing = ledger.get_or_create_account(session, PAYOUT_CLEARING, "payout_clearing")
    ledger.transfer(
        session, payout_reserve_transfer_id(payout.id), payable, clearing, amount_nano_usd, "payout_reserve", reference=str(payout.id)
    )
    logger.info(
        "payout opened: payout=%d supplier=%d chain=%d amount_units=%d amount_nano_usd=%d to=%s",
        payout.id, supplier_id, chain_id, amount_units, amount_nano_usd, supplier.payout_address,
    )
    return payout


def open_payout_ids(session: Session, chain_id: int) -> list[int]:
    return list(session.scalars(select(Payout.id).where(Payout.chain_id == chain_id, Payout.status == "open").order_by(Payout.id)))


def open_payout_units(session: Session, chain_id: int, token_address: str) -> int:
    """Sum the token units of payouts that are reserved but not yet confirmed or failed."""
    rows = session.scalars(
        select(Payout.amount_units).where(Payout.chain_id == chain_id, Payout.token_address == token_address, Payout.status == "open")
    )
    return sum(int(units) for units in rows)


def allocate_nonce(session: Session, chain_id: int, address: str, chain_pending_nonce: int) -> int:
    """Assign the next nonce of a signing account, never one that this database assigned before.

    `chain_pending_nonce` is the node's pending transaction count, so nonces that another
    signer of the same account used are skipped too.
    """
    row = session.scalar(
        select(SignerNonce).where(SignerNonce.chain_id == chain_id, SignerNonce.address == address).with_for_update()
    )
    if row is None:
        row = SignerNonce(chain_id=chain_id, address=address, next_nonce=0)
        session.add(row)
    nonce = max(row.next_nonce, chain_pending_nonce)
    row.next_nonce = nonce + 1
    session.flush()
    return nonce


def record_attempt(
    session: Session,
    payout_id: int,
    *,
    nonce: int,
    tx_hash: str,
    raw_transaction: str,
    max_fee_per_gas_wei: int,
    max_priority_fee_per_gas_wei: int,
) -> PayoutAttempt:
    """Store a signed transaction of a payout before it is broadcast."""
    payout = session.get(Payout, payout_id)
    assert payout is not None and payout.status == "open", f"payout {payout_id} is not open"
    assert payout.nonce in (None, nonce), f"payout {payout_id} uses nonce {payout.nonce}, not {nonce}"
    attempt = PayoutAttempt(
        payout_id=payout_id,
        nonce=nonce,
        tx_hash=tx_hash.lower(),
        raw_transaction=raw_transaction,
        max_fee_per_gas_wei=str(max_fee_per_gas_wei),
        max_priority_fee_per_gas_wei=str(max_priority_fee_per_gas_wei),
        status="signed",
    )
    session.add(attempt)
    payout.nonce = nonce
    session.flush()
    return attempt


def mark_broadcast(session: Session, attempt_id: int) -> None:
    attempt = session.get(PayoutAttempt, attempt_id)
    assert attempt is not None, f"payout attempt {attempt_id} does not exist"
    if attempt.broadcast_at is None:
        attempt.broadcast_at = utcnow()


def release_nonce(session: Session, payout_id: int, reason: str) -> None:
    """Retire the current nonce of a payout, whose attempts can no longer be mined, so the next attempt takes a new one."""
    payout = session.get(Payout, payout_id)
    assert payout is not None, f"payout {payout_id} does not exist"
    for attempt in session.scalars(
        select(PayoutAttempt).where(PayoutAttempt.payout_id == payout_id, PayoutAttempt.nonce == payout.nonce)
    ):
        if attempt.status == "signed":
            attempt.status = "replaced"
    logger.warning("payout %d gives up nonce %s: %s", payout_id, payout.nonce, reason)
    payout.nonce = None
    session.flush()


def record_reverted(session: Session, attempt_id: int) -> Payout:
    """Record an attempt that was mined and reverted. Its nonce is used up, so the payout needs a new one."""
    attempt = session.get(PayoutAttempt, attempt_id)
    assert attempt is not None, f"payout attempt {attempt_id} does not exist"
    payout = session.get(Payout, attempt.payout_id)
    assert payout is not None
    if attempt.status != "reverted":
        release_nonce(session, payout.id, f"transaction {attempt.tx_hash} reverted")
        attempt.status = "reverted"
        payout.failed_attempts += 1
        session.flush()
        logger.error("payout transaction reverted: payout=%d tx=%s attempts_failed=%d", payout.id, attempt.tx_hash, payout.failed_attempts)
    return payout


def confirm_payout(session: Session, attempt_id: int, block_number: int, block_hash: str) -> Payout:
    """Record the mined, confirmed transaction of a payout and write its ledger transfer, keyed by that transaction."""
    attempt = session.get(PayoutAttempt, attempt_id)
    assert attempt is not None, f"payout attempt {attempt_id} does not exist"
    payout = session.get(Payout, attempt.payout_id)
    assert payout is not None
    if payout.status == "confirmed":
        assert payout.tx_hash == attempt.tx_hash, f"payout {payout.id} was confirmed by {payout.tx_hash}, not {attempt.tx_hash}"
        return payout
    assert payout.status == "open", f"payout {payout.id} is {payout.status}"

    clearing = ledger.get_or_create_account(session, PAYOUT_CLEARING, "payout_clearing")
    asset = ledger.get_or_create_account(session, ledger.chain_asset_account_name(payout.chain_id, payout.token_address), "chain_asset")
    transfer_id = payout_transfer_id(payout.chain_id, attempt.tx_hash)
    ledger.transfer(session, transfer_id, clearing, asset, payout.amount_nano_usd, "payout", reference=str(payout.id))

    for sibling in session.scalars(select(PayoutAttempt).where(PayoutAttempt.payout_id == payout.id, PayoutAttempt.id != attempt.id)):
        if sibling.status == "signed":
            sibling.status = "replaced"
    payout.status = "confirmed"
    payout.tx_hash = attempt.tx_hash
    payout.block_number = block_number
    payout.block_hash = block_hash
    payout.transfer_id = transfer_id
    payout.confirmed_at = utcnow()
    session.flush()
    logger.info(
        "payout confirmed: payout=%d supplier=%d tx=%s block=%d amount_nano_usd=%d",
        payout.id, payout.supplier_id, attempt.tx_hash, block_number, payout.amount_nano_usd,
    )
    return payout


def fail_payout(session: Session, payout_id: int, reason: str) -> Payout:
    """Give up a payout and return its reserved amount to the supplier's payable balance."""
    payout = session.get(Payout, payout_id)
    assert payout is not None, f"payout {payout_id} does not exist"
    if payout.status != "open":
        return payout
    clearing = ledger.get_or_create_account(session, PAYOUT_CLEARING, "payout_clearing")
    payable = ledger.get_or_create_account(session, ledger.supplier_account_name(payout.supplier_id), "supplier_payable")
    ledger.transfer(
        session, payout_return_transfer_id(payout.id), clearing, payable, payout.amount_nano_usd, "payout_return", reference=str(payout.id)
    )
    payout.status = "failed"
    payout.error = reason[:500]
    session.flush()
    logger.error("payout failed and its amount was returned to the supplier: payout=%d reason=%s", payout.id, reason)
    return payout


def open_payouts_nano_usd(session: Session) -> int:
    return int(session.scalar(select(func.coalesce(func.sum(Payout.amount_nano_usd), 0)).where(Payout.status == "open")) or 0)


def payout_view(payout: Payout) -> dict:
    return {
        "id": payout.id,
        "supplier_id": payout.supplier_id,
        "chain_id": payout.chain_id,
        "token_address": payout.token_address,
        "to_address": payout.to_address,
        "amount_units": payout.amount_units,
        "amount_nano_usd": payout.amount_nano_usd,
        "status": payout.status,
        "tx_hash": payout.tx_hash,
        "block_number": payout.block_number,
        "failed_attempts": payout.failed_attempts,
        "error": payout.error,
    }
