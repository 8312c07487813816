"""The public audit views: committed periods, exports, account proofs and proof of reserves.

Only committed periods are visible; a period that is built but not yet on-chain is not.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session
from web3 import Web3
from web3.exceptions import Web3Exception

from marketplace.db import Database
from marketplace.errors import InvalidRequest, NotFound, UpstreamUnavailable
from marketplace.models import SettlementPeriod
from marketplace.settings import Settings
from marketplace.settlement import store
from marketplace.settlement.chain_checks import ChainClients, read_reserve
from marketplace.settlement.export import ReserveSource
from marketplace.settlement.leaves import LEAF_KINDS

MAX_PERIODS_PER_PAGE = 100
CHAIN_TIMEOUT_S = 10.0

logger = logging.getLogger(__name__)


def period_view(period: SettlementPeriod) -> dict:
    """Return the public summary of a committed period. Amounts are nano-USD as integers."""
    return {
        "period_id": period.period_id,
        "chain_id": period.chain_id,
        "registry_address": period.registry_address,
        "from_timestamp": period.from_timestamp,
        "to_timestamp": period.to_timestamp,
        "ledger_root": period.ledger_root,
        "balances_root": period.balances_root,
        "records_root": period.records_root,
        "previous_ledger_root": period.previous_ledger_root,
        "total_liabilities_nano_usd": period.total_liabilities_nano_usd,
        "total_buyer_liabilities_nano_usd": period.total_buyer_liabilities_nano_usd,
        "total_supplier_liabilities_nano_usd": period.total_supplier_liabilities_nano_usd,
        "total_usage_nano_usd": period.total_usage_nano_usd,
        "total_deposits_nano_usd": period.total_deposits_nano_usd,
        "total_payouts_nano_usd": period.total_payouts_nano_usd,
        "record_count": period.record_count,
        "balance_count": period.balance_count,
        "commit_tx_hash": period.commit_tx_hash,
        "commit_block_number": period.commit_block_number,
        "committed_at": period.committed_at.isoformat() if period.committed_at else None,
        "export_sha256": period.export_sha256,
        "export_url": f"/v1/audit/periods/{period.period_id}/export",
    }


def list_periods(session: Session, limit: int, before_period_id: int | None) -> dict:
    """Committed periods, newest first, a page at a time."""
    if not 1 <= limit <= MAX_PERIODS_PER_PAGE:
        raise InvalidRequest(f"limit must be between 1 and {MAX_PERIODS_PER_PAGE}, got {limit}", param="limit")
    query = select(SettlementPeriod).where(SettlementPeriod.status == "committed")
    if before_period_id is not None:
        query = query.where(SettlementPeriod.period_id < before_period_id)
    rows = list(session.scalars(query.order_by(SettlementPeriod.period_id.desc()).limit(limit + 1)))
    next_before = rows[limit - 1].period_id if len(rows) > limit else None
    return {"data": [period_view(period) for period in rows[:limit]], "next_before_period_id": next_before}


def committed_period(session: Session, period_id: int) -> SettlementPeriod:
    period = session.get(SettlementPeriod, period_id)
    if period is None or period.status != "committed":
        raise NotFound(f"settlement period {period_id} is not committed; list committed periods at GET /v1/audit/periods", code="period_not_found")
    return period


def latest_committed_period(session: Session) -> SettlementPeriod:
    period = session.scalar(
        select(SettlementPeriod).where(SettlementPeriod.status == "committed").order_by(SettlementPeriod.period_id.desc()).limit(1)
    )
    if period is None:
        raise NotFound("no settlement period is committed yet", code="period_not_found")
    return period


def iter_export(db: Database, period_id: int) -> Iterator[str]:
    """Yield a committed period's export lines; the caller has checked that it is committed."""
    with db.session() as session:
        yield from store.iter_export_lines(session, period_id)


def account_proofs_view(
    session: Session, period_id: int, account_id: int, tree: str, kind: str | None, after_index: int, limit: int
) -> dict:
    """Return the inclusion proofs of an account's leaves in one tree of a committed period."""
    if kind is not None and kind not in LEAF_KINDS:
        raise InvalidRequest(f"type must be one of {sorted(LEAF_KINDS)}, got {kind!r}", param="type")
    if not 1 <= limit <= store.MAX_PROOFS_PER_PAGE:
        raise InvalidRequest(f"limit must be between 1 and {store.MAX_PROOFS_PER_PAGE}, got {limit}", param="limit")
    period = committed_period(session, period_id)
    proofs, next_after = store.account_proofs(session, period, account_id, tree, kind=kind, after_index=after_index, limit=limit)
    return {"data": [proof.to_json() for proof in proofs], "next_after_index": next_after}


@dataclass(frozen=True)
class _Holding:
    source: ReserveSource
    amount_units: int
    amount_nano_usd: int
    block_number: int


def reserves_view(session: Session, settings: Settings, period_id: int | None) -> dict:
    """On-chain reserves now, per token and holder, against the liabilities of a committed period.

    Reserves are read at each chain's latest block and valued at 1 token = 1 USD, rounded down.
    """
    period = committed_period(session, period_id) if period_id is not None else latest_committed_period(session)
    sources = [ReserveSource.from_json(source) for source in period.reserve_sources]
    connections = {}
    for chain in settings.chains:
        connections[chain.chain_id] = Web3(Web3.HTTPProvider(chain.rpc_url, request_kwargs={"timeout": CHAIN_TIMEOUT_S}))
    clients = ChainClients(connections)

    holdings = []
    for source in sources:
        try:
            block_number = clients.head(source.chain_id)
            reading = read_reserve(clients, source.chain_id, source.token_address, source.token_decimals, source.holder_address, block_number)
        except LookupError as exc:
            raise UpstreamUnavailable(f"chain {source.chain_id} is not configured on this server", code="chain_unavailable") from exc
        except (Web3Exception, OSError, ValueError) as exc:
            logger.warning("reserve read failed on chain %d for %s: %s", source.chain_id, source.holder_address, exc)
            raise UpstreamUnavailable(f"reading reserves on chain {source.chain_id} failed; try again later", code="chain_unavailable") from exc
        holdings.append(_Holding(source, reading.amount_units, reading.amount_nano_usd, block_number))

    total_reserves = sum(holding.amount_nano_usd for holding in holdings)
    by_token: dict[tuple[int, str], dict] = {}
    for holding in holdings:
        key = (holding.source.chain_id, holding.source.token_address)
        entry = by_token.setdefault(key, {"chain_id": key[0], "token_address": key[1], "amount_units": 0, "amount_nano_usd": 0})
        entry["amount_units"] += holding.amount_units
        entry["amount_nano_usd"] += holding.amount_nano_usd
    return {
        "period_id": period.period_id,
        "liabilities": {
            "buyers_nano_usd": period.total_buyer_liabilities_nano_usd,
            "suppliers_nano_usd": period.total_supplier_liabilities_nano_usd,
            "total_nano_usd": period.total_liabilities_nano_usd,
            "as_of_timestamp": period.to_timestamp,
        },
        "reserves": [
            {
                "chain_id": holding.source.chain_id,
                "token_address": holding.source.token_address,
                "token_decimals": holding.source.token_decimals,
                "holder_address": holding.source.holder_address,
                "block_number": holding.block_number,
                "amount_units": str(holding.amount_units),
                "amount_nano_usd": holding.amount_nano_usd,
            }
            for holding in holdings
        ],
        "reserves_by_token": [{**entry, "amount_units": str(entry["amount_units"])} for entry in by_token.values()],
        "total_reserves_nano_usd": total_reserves,
        "covered": total_reserves >= period.total_liabilities_nano_usd,
        "surplus_nano_usd": total_reserves - period.total_liabilities_nano_usd,
    }
