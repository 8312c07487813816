"""Closing a settlement period: its records and balances from the ledger, trees, the commitment.

A period is the half-open interval [from_timestamp, to_timestamp) of Unix seconds. A record
belongs to the period that contains its ledger time:

- a usage record (one generation): the time of the transfer that resolved its hold (post, void
  or expire). The supplier credit and the platform fee of the call, written in the same database
  transaction a few microseconds later, go with it even if they fall past the period's end;
- a deposit: the time of its credit transfer;
- a payout: the time of the transfer that confirmed it, which debits "clearing:payouts" (the
  supplier's payable was moved there when the payout was reserved, an adjustment);
- an adjustment: any other posted transfer that moves a buyer or supplier balance.

The closing balance of each liability account (buyers, suppliers, payouts in flight) is its opening balance (the previous
period's balance leaf) plus the changes of the period's records. Before anything is stored, the
closer checks those balances against the live ledger, so the committed balances are the ledger's
and not only consistent with the records.

Period 1 starts at Unix time 0, so its opening balances are all zero.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import os
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from eth_account import Account
from eth_account.signers.local import LocalAccount
from sqlalchemy import or_, select, text
from sqlalchemy.orm import Session, aliased
from web3 import Web3
from web3.contract import Contract
from web3.exceptions import ContractCustomError

from chain.contracts import contract_at
from chain.registry import PeriodCommitment, commit_period, fetch_period_commitments, last_period_id, read_period
from marketplace.db import Database
from marketplace.models import (
    Deposit,
    Generation,
    LedgerAccount,
    LedgerTransfer,
    Listing,
    Payout,
    SettlementPeriod,
    Supplier,
)
from marketplace.settings import ChainSettings, Settings
from marketplace.settlement import store
from marketplace.settlement.config import SettlementSettings
from marketplace.settlement.encoding import ZERO_BYTES32, hex_to_bytes32
from marketplace.settlement.export import ReserveSource, compute_ledger_root
from marketplace.settlement.leaves import (
    ADJUSTMENT,
    BALANCE,
    DEPOSIT,
    PAYOUT,
    USAGE,
    Leaf,
    balance_sort_key,
    is_liability_account,
    parse_liability_account,
    record_changes,
    record_sort_key,
)
from marketplace.settlement.tree import MerkleSumTree, MerkleTree

logger = logging.getLogger(__name__)

EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
ONE_MICROSECOND = dt.timedelta(microseconds=1)
# Ledger account codes of what the platform owes: buyer balances, supplier earnings, and
# payouts reserved from suppliers but not yet confirmed on-chain ("clearing:payouts").
LIABILITY_CODES = ("buyer", "supplier_payable", "payout_clearing")
HOLD_RESOLUTION_CODES = ("post", "void", "expire")
USAGE_SPLIT_CODES = ("usage_supplier", "usage_fee")
# Serializes closers on PostgreSQL. SQLite's BEGIN IMMEDIATE already does.
SETTLEMENT_LOCK_KEY = 727_275
MAX_LISTED_DIFFERENCES = 10


class SettlementError(RuntimeError):
    """A period cannot be closed or committed in its current state, and nothing was committed on-chain."""


def to_microseconds(moment: dt.datetime) -> int:
    """Unix microseconds of a timezone-aware datetime, computed without floating point."""
    return (moment - EPOCH) // ONE_MICROSECOND


def from_unix_seconds(seconds: int) -> dt.datetime:
    return EPOCH + dt.timedelta(seconds=seconds)


@dataclass(frozen=True)
class PeriodBounds:
    period_id: int
    from_timestamp: int
    to_timestamp: int

    def __post_init__(self) -> None:
        assert self.period_id >= 1, f"period ids start at 1, got {self.period_id}"
        assert self.to_timestamp > self.from_timestamp, f"period {self.period_id} ends at {self.to_timestamp}, before it starts"


@dataclass
class BuiltPeriod:
    """A period's leaves and trees, ready to store and commit."""

    bounds: PeriodBounds
    chain_id: int
    registry_address: str
    previous_ledger_root: bytes
    reserve_sources: tuple[ReserveSource, ...]
    balances: list[Leaf]
    records: list[Leaf]
    owners: dict[tuple[str, int], int | None]
    balance_tree: MerkleSumTree
    record_tree: MerkleTree
    buyer_liabilities_nano_usd: int
    supplier_liabilities_nano_usd: int
    total_usage_nano_usd: int
    total_deposits_nano_usd: int
    total_payouts_nano_usd: int

    @property
    def ledger_root(self) -> bytes:
        return compute_ledger_root(
            chain_id=self.chain_id,
            registry_address=self.registry_address,
            period_id=self.bounds.period_id,
            from_timestamp=self.bounds.from_timestamp,
            to_timestamp=self.bounds.to_timestamp,
            previous_ledger_root=self.previous_ledger_root,
            balances_root=self.balance_tree.root,
            records_root=self.record_tree.root,
            reserve_sources=self.reserve_sources,
            total_liabilities_nano_usd=self.balance_tree.total,
            total_usage_nano_usd=self.total_usage_nano_usd,
            total_deposits_nano_usd=self.total_deposits_nano_usd,
            total_payouts_nano_usd=self.total_payouts_nano_usd,
            record_count=self.record_tree.leaf_count,
        )


def reserve_sources_for(chains: Iterable[ChainSettings], vault_addresses: dict[int, list[str]]) -> tuple[ReserveSource, ...]:
    """Return every (chain, token, holder) whose balance backs liabilities: each chain's
    treasury and vaults, for each of its configured tokens."""
    sources = []
    for chain in chains:
        holders = [chain.treasury_address, *([chain.vault_address] if chain.vault_address else []), *vault_addresses.get(chain.chain_id, [])]
        for token in chain.tokens:
            for holder in dict.fromkeys(holders):
                sources.append(ReserveSource(chain.chain_id, chain.confirmations, token.address, token.decimals, holder))
    return tuple(sorted(sources, key=ReserveSource.sort_key))


# --- reading the period's records ------------------------------------------------------------


@dataclass
class _Records:
    leaves: list[Leaf]
    # Ledger transfers that the leaves stand for, so they are not listed as adjustments.
    covered_transfer_ids: set[str]


def _read_usage(session: Session, start: dt.datetime, end: dt.datetime, batch_size: int) -> _Records:
    resolution = aliased(LedgerTransfer)
    supplier_transfer = aliased(LedgerTransfer)
    fee_transfer = aliased(LedgerTransfer)
    supplier_account = aliased(LedgerAccount)
    query = (
        select(
            Generation,
            resolution.id,
            resolution.code,
            resolution.amount_nano_usd,
            resolution.created_at,
            supplier_transfer.id,
            supplier_transfer.amount_nano_usd,
            supplier_account.name,
            fee_transfer.id,
            fee_transfer.amount_nano_usd,
            Listing.supplier_id,
        )
        .join(resolution, resolution.pending_id == Generation.hold_transfer_id)
        .outerjoin(supplier_transfer, supplier_transfer.id == Generation.id + ":supplier")
        .outerjoin(supplier_account, supplier_account.id == supplier_transfer.credit_account_id)
        .outerjoin(fee_transfer, fee_transfer.id == Generation.id + ":fee")
        .outerjoin(Listing, Listing.id == Generation.listing_id)
        .where(resolution.created_at >= start, resolution.created_at < end)
        .execution_options(yield_per=batch_size)
    )
    records = _Records([], set())
    for row in session.execute(query):
        (generation, resolution_id, code, charged, settled_at, supplier_id_text, supplier_amount, supplier_name, fee_id, fee_amount, listing_supplier_id) = row
        if code not in HOLD_RESOLUTION_CODES:
            raise SettlementError(f"hold of generation {generation.id} was resolved by a {code!r} transfer")
        if charged != generation.cost_nano_usd:
            raise SettlementError(
                f"generation {generation.id} records a cost of {generation.cost_nano_usd} nano-USD, "
                f"but its hold was posted for {charged}"
            )
        supplier_id = parse_liability_account(supplier_name)[1] if supplier_name else (listing_supplier_id or 0)
        finished_at = generation.finished_at or settled_at
        values = {
            "generation_id": generation.id,
            "account_id": generation.account_id,
            "api_key_id": generation.api_key_id,
            "listing_id": generation.listing_id or 0,
            "supplier_id": supplier_id,
            "model": generation.model,
            "status": generation.status,
            "stream": bool(generation.stream),
            "usage_estimated": bool(generation.usage_estimated),
            "prompt_tokens": generation.prompt_tokens,
            "completion_tokens": generation.completion_tokens,
            "cached_prompt_tokens": generation.cached_prompt_tokens,
            "cache_write_tokens": generation.cache_write_tokens,
            "reasoning_tokens": generation.reasoning_tokens,
            "hold_nano_usd": generation.hold_nano_usd,
            "cost_nano_usd": charged,
            "supplier_credit_nano_usd": supplier_amount or 0,
            "platform_fee_nano_usd": fee_amount or 0,
            "created_at_us": to_microseconds(generation.created_at),
            "finished_at_us": to_microseconds(finished_at),
            "settled_at_us": to_microseconds(settled_at),
        }
        records.leaves.append(Leaf(USAGE, values))
        records.covered_transfer_ids.update(filter(None, (resolution_id, supplier_id_text, fee_id)))
    return records


def _read_deposits(session: Session, start: dt.datetime, end: dt.datetime, chains: dict[int, ChainSettings]) -> _Records:
    rows = session.execute(
        select(LedgerTransfer.id, LedgerTransfer.amount_nano_usd, LedgerTransfer.created_at, Deposit)
        .join(Deposit, Deposit.transfer_id == LedgerTransfer.id)
        .where(LedgerTransfer.code == "deposit", LedgerTransfer.created_at >= start, LedgerTransfer.created_at < end)
    )
    records = _Records([], set())
    for transfer_id, amount, credited_at, deposit in rows:
        chain = chains.get(deposit.chain_id)
        token = chain.token_by_address(deposit.token_address) if chain is not None else None
        if token is None:
            raise SettlementError(
                f"deposit {transfer_id} is in token {deposit.token_address} on chain {deposit.chain_id}, "
                "which is not configured; add it to TOKENPORT_CHAINS to close the period"
            )
        if amount != deposit.amount_nano_usd or deposit.account_id is None:
            raise SettlementError(
                f"deposit {transfer_id} credited {amount} nano-USD, but its deposit record has {deposit.amount_nano_usd} "
                f"for account {deposit.account_id}; reconcile the deposit before closing the period"
            )
        values = {
            "chain_id": deposit.chain_id,
            "tx_hash": hex_to_bytes32("tx_hash", deposit.tx_hash),
            "log_index": deposit.log_index,
            "block_number": deposit.block_number,
            "block_hash": hex_to_bytes32("block_hash", deposit.block_hash),
            "token_address": Web3.to_checksum_address(deposit.token_address),
            "token_decimals": token.decimals,
            "from_address": Web3.to_checksum_address(deposit.from_address),
            "to_address": Web3.to_checksum_address(deposit.to_address),
            "amount_units": int(deposit.amount_units),
            "amount_nano_usd": amount,
            "account_id": deposit.account_id,
            "credited_at_us": to_microseconds(credited_at),
        }
        records.leaves.append(Leaf(DEPOSIT, values))
        records.covered_transfer_ids.add(transfer_id)
    return records


def _read_payouts(session: Session, start: dt.datetime, end: dt.datetime, chains: dict[int, ChainSettings]) -> _Records:
    debit = aliased(LedgerAccount)
    rows = session.execute(
        select(LedgerTransfer.id, LedgerTransfer.amount_nano_usd, LedgerTransfer.created_at, debit.name, Payout)
        .join(Payout, Payout.transfer_id == LedgerTransfer.id)
        .join(debit, debit.id == LedgerTransfer.debit_account_id)
        .where(LedgerTransfer.code == "payout", LedgerTransfer.created_at >= start, LedgerTransfer.created_at < end)
    )
    records = _Records([], set())
    for transfer_id, amount, paid_at, debit_name, payout in rows:
        chain = chains.get(payout.chain_id)
        token = chain.token_by_address(payout.token_address) if chain is not None else None
        if chain is None or token is None:
            raise SettlementError(
                f"payout {payout.id} is in token {payout.token_address} on chain {payout.chain_id}, "
                "which is not configured; add it to TOKENPORT_CHAINS to close the period"
            )
        if amount != payout.amount_nano_usd or payout.tx_hash is None or payout.block_hash is None:
            raise SettlementError(
                f"payout {payout.id} debited {amount} nano-USD, but its payout record has {payout.amount_nano_usd} "
                f"and transaction {payout.tx_hash}; reconcile the payout before closing the period"
            )
        values = {
            "payout_id": str(payout.id),
            "supplier_id": payout.supplier_id,
            "debit_account": debit_name,
            "chain_id": payout.chain_id,
            "tx_hash": hex_to_bytes32("tx_hash", payout.tx_hash),
            "block_number": payout.block_number,
            "block_hash": hex_to_bytes32("block_hash", payout.block_hash),
            "token_address": Web3.to_checksum_address(payout.token_address),
            "token_decimals": token.decimals,
            # Payouts are signed by the chain's treasury key (chain/payouts.py).
            "from_address": chain.treasury_address,
            "to_address": Web3.to_checksum_address(payout.to_address),
            "amount_units": int(payout.amount_units),
            "amount_nano_usd": amount,
            "paid_at_us": to_microseconds(paid_at),
        }
        records.leaves.append(Leaf(PAYOUT, values))
        records.covered_transfer_ids.add(transfer_id)
    return records


def _liability_transfers(session: Session, *conditions):  # type: ignore[no-untyped-def]
    """Posted, non-zero transfers that debit or credit a buyer or supplier account."""
    debit = aliased(LedgerAccount)
    credit = aliased(LedgerAccount)
    return session.execute(
        select(LedgerTransfer, debit.name, credit.name)
        .join(debit, debit.id == LedgerTransfer.debit_account_id)
        .join(credit, credit.id == LedgerTransfer.credit_account_id)
        .where(
            LedgerTransfer.is_pending.is_(False),
            LedgerTransfer.amount_nano_usd > 0,
            or_(debit.code.in_(LIABILITY_CODES), credit.code.in_(LIABILITY_CODES)),
            *conditions,
        )
    )


def _resolution_times(session: Session, generation_ids: set[str]) -> dict[str, dt.datetime]:
    """Return the ledger time of each generation's hold resolution, which decides its period."""
    times: dict[str, dt.datetime] = {}
    ids = sorted(generation_ids)
    for offset in range(0, len(ids), 500):
        rows = session.execute(
            select(Generation.id, LedgerTransfer.created_at)
            .join(LedgerTransfer, LedgerTransfer.pending_id == Generation.hold_transfer_id)
            .where(Generation.id.in_(ids[offset : offset + 500]))
        )
        times.update({generation_id: created_at for generation_id, created_at in rows})
    return times


def _read_adjustments(session: Session, start: dt.datetime, end: dt.datetime, covered: set[str]) -> list[Leaf]:
    candidates = [
        (transfer, debit_name, credit_name)
        for transfer, debit_name, credit_name in _liability_transfers(session, LedgerTransfer.created_at >= start, LedgerTransfer.created_at < end)
        if transfer.id not in covered
    ]
    # The supplier credit of a call settled in the previous period can fall in this one; it
    # was committed with its usage record there.
    split_references = {transfer.reference for transfer, _, _ in candidates if transfer.code in USAGE_SPLIT_CODES and transfer.reference}
    settled = _resolution_times(session, split_references)

    leaves = []
    for transfer, debit_name, credit_name in candidates:
        if transfer.code in USAGE_SPLIT_CODES and transfer.reference in settled and settled[transfer.reference] < start:
            continue
        logger.debug("ledger transfer %s (%s, %d nano-USD) is committed as an adjustment", transfer.id, transfer.code, transfer.amount_nano_usd)
        values = {
            "transfer_id": transfer.id,
            "code": transfer.code,
            "debit_account": debit_name,
            "credit_account": credit_name,
            "amount_nano_usd": transfer.amount_nano_usd,
            "created_at_us": to_microseconds(transfer.created_at),
        }
        leaves.append(Leaf(ADJUSTMENT, values))
    return leaves


# --- balances --------------------------------------------------------------------------------


def _closing_balances(opening: dict[str, int], records: Iterable[Leaf]) -> dict[str, int]:
    closing = dict(opening)
    for leaf in records:
        for account, change in record_changes(leaf):
            closing[account] = closing.get(account, 0) + change
    negative = {account: balance for account, balance in closing.items() if balance < 0}
    if negative:
        raise SettlementError(f"the period's records leave negative balances: {_first_items(negative)}")
    return closing


def _check_against_ledger(session: Session, closing: dict[str, int], end: dt.datetime) -> None:
    """Check the closing balances against the live ledger minus what was posted after ``end``.

    A difference means that a movement of a liability balance is missing from the records or
    was counted twice. Then the period must not be committed.
    """
    live = {
        name: int(balance)
        for name, balance in session.execute(
            select(LedgerAccount.name, LedgerAccount.credits_posted_nano_usd - LedgerAccount.debits_posted_nano_usd).where(
                LedgerAccount.code.in_(LIABILITY_CODES)
            )
        )
    }
    later = list(_liability_transfers(session, LedgerTransfer.created_at >= end))
    settled = _resolution_times(session, {t.reference for t, _, _ in later if t.code in USAGE_SPLIT_CODES and t.reference})
    for transfer, debit_name, credit_name in later:
        if transfer.code in USAGE_SPLIT_CODES and transfer.reference in settled and settled[transfer.reference] < end:
            continue  # committed with its usage record in this period or an earlier one
        if is_liability_account(debit_name) or debit_name in live:
            live[debit_name] = live.get(debit_name, 0) + transfer.amount_nano_usd
        if is_liability_account(credit_name) or credit_name in live:
            live[credit_name] = live.get(credit_name, 0) - transfer.amount_nano_usd

    differences = {
        account: (closing.get(account, 0), live.get(account, 0))
        for account in set(live) | set(closing)
        if closing.get(account, 0) != live.get(account, 0)
    }
    if differences:
        raise SettlementError(
            "closing balances differ from the ledger (account: (from records, from ledger)): " + _first_items(differences)
        )


def _first_items(mapping: dict) -> str:
    items = sorted(mapping.items())
    listed = ", ".join(f"{key}: {value}" for key, value in items[:MAX_LISTED_DIFFERENCES])
    if len(items) > MAX_LISTED_DIFFERENCES:
        listed += f" and {len(items) - MAX_LISTED_DIFFERENCES} more"
    return listed


# --- building ----------------------------------------------------------------------------------


def build_period(
    session: Session,
    bounds: PeriodBounds,
    *,
    chain_id: int,
    registry_address: str,
    chains: list[ChainSettings],
    vault_addresses: dict[int, list[str]] | None = None,
    batch_size: int = 1_000,
) -> BuiltPeriod:
    """Collect the period's records and balances from the ledger and build both trees.

    Raises SettlementError, having written nothing, when the records and the ledger disagree.
    """
    start = from_unix_seconds(bounds.from_timestamp)
    end = from_unix_seconds(bounds.to_timestamp)

    chains_by_id = {chain.chain_id: chain for chain in chains}
    usage = _read_usage(session, start, end, batch_size)
    deposits = _read_deposits(session, start, end, chains_by_id)
    payouts = _read_payouts(session, start, end, chains_by_id)
    covered = usage.covered_transfer_ids | deposits.covered_transfer_ids | payouts.covered_transfer_ids
    adjustments = _read_adjustments(session, start, end, covered)
    records = sorted([*usage.leaves, *deposits.leaves, *payouts.leaves, *adjustments], key=record_sort_key)

    previous = session.get(SettlementPeriod, bounds.period_id - 1) if bounds.period_id > 1 else None
    opening = store.read_balances(session, previous.period_id) if previous is not None else {}
    closing = _closing_balances(opening, records)
    _check_against_ledger(session, closing, end)

    balances = sorted((Leaf(BALANCE, {"account": name, "balance_nano_usd": value}) for name, value in closing.items()), key=balance_sort_key)
    balance_tree = MerkleSumTree([(leaf.hash(), leaf.sum_nano_usd) for leaf in balances])
    record_tree = MerkleTree([leaf.hash() for leaf in records])
    buyer_liabilities = sum(value for name, value in closing.items() if name.startswith("buyer:"))

    return BuiltPeriod(
        bounds=bounds,
        chain_id=chain_id,
        registry_address=registry_address,
        previous_ledger_root=hex_to_bytes32("ledger_root", previous.ledger_root) if previous is not None else ZERO_BYTES32,
        reserve_sources=reserve_sources_for(chains, vault_addresses or {}),
        balances=balances,
        records=records,
        owners=_owners(session, balances, records),
        balance_tree=balance_tree,
        record_tree=record_tree,
        buyer_liabilities_nano_usd=buyer_liabilities,
        supplier_liabilities_nano_usd=balance_tree.total - buyer_liabilities,
        total_usage_nano_usd=sum(leaf.values["cost_nano_usd"] for leaf in usage.leaves),
        total_deposits_nano_usd=sum(leaf.values["amount_nano_usd"] for leaf in deposits.leaves),
        total_payouts_nano_usd=sum(leaf.values["amount_nano_usd"] for leaf in payouts.leaves),
    )


def _owners(session: Session, balances: list[Leaf], records: list[Leaf]) -> dict[tuple[str, int], int | None]:
    """Return the account that may read each leaf's proof, keyed by (tree, leaf index)."""
    supplier_accounts = dict(session.execute(select(Supplier.id, Supplier.account_id)).all())

    def owner_of(account_name: str) -> int | None:
        if not is_liability_account(account_name):
            return None
        kind, owner_id = parse_liability_account(account_name)
        if kind == "buyer":
            return owner_id
        return supplier_accounts.get(owner_id) if kind == "supplier" else None

    owners: dict[tuple[str, int], int | None] = {}
    for index, leaf in enumerate(balances):
        owners[(store.BALANCES_TREE, index)] = owner_of(leaf.values["account"])
    for index, leaf in enumerate(records):
        if leaf.kind is PAYOUT:
            owners[(store.RECORDS_TREE, index)] = owner_of(f"supplier:{leaf.values['supplier_id']}")
            continue
        changes = record_changes(leaf)
        owners[(store.RECORDS_TREE, index)] = owner_of(changes[0][0]) if changes else None
    return owners


# --- closing and committing --------------------------------------------------------------------


@dataclass
class SettlementAnchor:
    """The SettlementRegistry that periods are committed to, on one chain, and its operator."""

    w3: Web3
    registry: Contract
    operator: LocalAccount

    @property
    def chain_id(self) -> int:
        return self.w3.eth.chain_id


def next_bounds(last: SettlementPeriod | None, now: dt.datetime, period_s: int, close_delay_s: int, to_timestamp: int | None = None) -> PeriodBounds | None:
    """Return the bounds of the next period to close, or None when none ended ``close_delay_s`` ago.

    Without ``to_timestamp``, the period ends at the last multiple of ``period_s`` that lies at
    least ``close_delay_s`` before ``now``. So a platform that was down closes one longer period.
    """
    from_timestamp = last.to_timestamp if last is not None else 0
    if to_timestamp is None:
        latest_end = int((now - EPOCH).total_seconds()) - close_delay_s
        to_timestamp = latest_end - latest_end % period_s
    if to_timestamp <= from_timestamp:
        return None
    return PeriodBounds((last.period_id + 1) if last is not None else 1, from_timestamp, to_timestamp)


def _begin_closing(session: Session) -> bool:
    """Start the closing transaction. Returns False when another closer is running.

    On PostgreSQL every read of the build uses one snapshot, and an advisory lock lets one closer
    run at a time. The lock is tried with pg_try_advisory_xact_lock and not waited for, because a
    waiting closer would keep its snapshot from before the other one committed. SQLite's BEGIN
    IMMEDIATE serializes closers.
    """
    if session.get_bind().dialect.name != "postgresql":
        return True
    session.connection(execution_options={"isolation_level": "REPEATABLE READ"})
    return bool(session.execute(text("SELECT pg_try_advisory_xact_lock(:key)"), {"key": SETTLEMENT_LOCK_KEY}).scalar())


def _latest_period(session: Session) -> SettlementPeriod | None:
    return session.scalar(select(SettlementPeriod).order_by(SettlementPeriod.period_id.desc()).limit(1))


def close_next_period(
    db: Database,
    anchor: SettlementAnchor,
    *,
    chains: list[ChainSettings],
    period_s: int = 3_600,
    close_delay_s: int = 300,
    to_timestamp: int | None = None,
    now: dt.datetime | None = None,
    vault_addresses: dict[int, list[str]] | None = None,
    export_dir: str | Path | None = None,
    batch_size: int = 1_000,
) -> SettlementPeriod | None:
    """Build, store and commit the next period, then write its export. Returns the committed
    period, or None when no period is due.

    A period that was built but not committed (a crash, or a chain that had not yet reached its
    end time) is committed as it was built, never rebuilt. Raises SettlementError when the
    ledger or the registry disagrees with what would be committed.
    """
    now = now or dt.datetime.now(dt.UTC)
    # NOTE: on SQLite the build runs inside BEGIN IMMEDIATE, so every other writer waits until
    # the period is stored, for a time that grows with the period's records.
    with db.transaction() as session:
        if not _begin_closing(session):
            logger.info("another process is closing a settlement period; skipping this run")
            return None
        last = _latest_period(session)
        if last is not None and last.status == "built":
            period_id = last.period_id
        else:
            bounds = next_bounds(last, now, period_s, close_delay_s, to_timestamp)
            if bounds is None:
                return None
            on_chain_last = last_period_id(anchor.registry)
            if on_chain_last != bounds.period_id - 1:
                raise SettlementError(
                    f"the registry's last period is {on_chain_last}, but the database's is {bounds.period_id - 1}; "
                    "another operator or database may be committing to this registry"
                )
            built = build_period(
                session,
                bounds,
                chain_id=anchor.chain_id,
                registry_address=anchor.registry.address,
                chains=chains,
                vault_addresses=vault_addresses,
                batch_size=batch_size,
            )
            store.store_period(session, built, batch_size)
            period_id = bounds.period_id
            logger.info(
                "built settlement period %d [%d, %d): %d balances, %d records",
                period_id, bounds.from_timestamp, bounds.to_timestamp, len(built.balances), len(built.records),
            )

    with db.session() as session:
        period = session.get(SettlementPeriod, period_id)
        assert period is not None, f"settlement period {period_id} vanished after it was stored"
    committed = _commit_on_chain(anchor, period)
    if committed is None:
        return None
    transaction_hash, block_number = committed

    with db.transaction() as session:
        period = session.get(SettlementPeriod, period_id, with_for_update=True)
        period.status = "committed"
        period.commit_tx_hash = "0x" + transaction_hash.hex()
        period.commit_block_number = block_number
        period.committed_at = dt.datetime.now(dt.UTC)
    with db.session() as session:
        export_sha256 = write_export(session, period_id, Path(export_dir) if export_dir else None)
    with db.transaction() as session:
        period = session.get(SettlementPeriod, period_id, with_for_update=True)
        period.export_sha256 = export_sha256
    logger.info("committed settlement period %d in transaction 0x%s", period_id, transaction_hash.hex())
    with db.session() as session:
        return session.get(SettlementPeriod, period_id)


def period_commitment(period: SettlementPeriod) -> PeriodCommitment:
    """Return the arguments of ``commitPeriod`` for a stored period."""
    return PeriodCommitment(
        period_id=period.period_id,
        from_timestamp=period.from_timestamp,
        to_timestamp=period.to_timestamp,
        ledger_root=hex_to_bytes32("ledger_root", period.ledger_root),
        balances_root=hex_to_bytes32("balances_root", period.balances_root),
        records_root=hex_to_bytes32("records_root", period.records_root),
        total_liabilities_nano_usd=period.total_liabilities_nano_usd,
        total_usage_nano_usd=period.total_usage_nano_usd,
        total_deposits_nano_usd=period.total_deposits_nano_usd,
        total_payouts_nano_usd=period.total_payouts_nano_usd,
        record_count=period.record_count,
    )


def _commit_on_chain(anchor: SettlementAnchor, period: SettlementPeriod) -> tuple[bytes, int] | None:
    """Commit a stored period, or find its commitment if an earlier attempt already made it.

    Returns (transaction hash, block number), or None when the chain has not yet reached the
    period's end time, in which case a later run commits it.
    """
    commitment = period_commitment(period)
    if last_period_id(anchor.registry) >= period.period_id:
        stored = read_period(anchor.registry, period.period_id)
        assert stored is not None, f"the registry reports period {period.period_id} but cannot read it"
        if stored.commitment != commitment:
            raise SettlementError(
                f"the registry contains a different commitment for period {period.period_id} than the database; "
                "stop the settlement task and compare the two before closing more periods"
            )
        for log in fetch_period_commitments(anchor.registry, stored.committed_at_block, stored.committed_at_block):
            if log.commitment.period_id == period.period_id:
                return bytes(log.transaction_hash), log.block_number
        raise SettlementError(f"no PeriodCommitted log for period {period.period_id} in block {stored.committed_at_block}")

    try:
        receipt = commit_period(anchor.w3, anchor.registry, anchor.operator, commitment)
    except ContractCustomError as exc:
        if _is_period_not_ended(exc):
            logger.info("settlement period %d ends after the chain's latest block time; committing it later", period.period_id)
            return None
        raise SettlementError(f"the registry rejected period {period.period_id}: {exc}") from exc
    return bytes(receipt["transactionHash"]), receipt["blockNumber"]


def _is_period_not_ended(error: ContractCustomError) -> bool:
    """Return whether the registry reverted with PeriodNotEnded(toTimestamp, blockTimestamp)."""
    selector = Web3.keccak(text="PeriodNotEnded(uint64,uint256)")[:4].hex()
    return selector in str(error.data).lower()


def write_export(session: Session, period_id: int, export_dir: Path | None) -> str:
    """Write the export of a committed period to ``export_dir`` (if given) and return its SHA-256.

    The file is written under a temporary name and renamed, so a reader never sees half of it.
    """
    digest = hashlib.sha256()
    target = temporary = None
    if export_dir is not None:
        export_dir.mkdir(parents=True, exist_ok=True)
        target = export_dir / store.export_file_name(period_id)
        temporary = target.with_suffix(".jsonl.partial")
    with open(temporary, "w", encoding="ascii") if temporary else _NullWriter() as file:
        for line in store.iter_export_lines(session, period_id):
            digest.update(line.encode("ascii"))
            file.write(line)
    if temporary is not None and target is not None:
        os.replace(temporary, target)
    return digest.hexdigest()


class _NullWriter:
    def __enter__(self) -> _NullWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        return None

    def write(self, _text: str) -> None:
        return None


# --- the scheduled task -----------------------------------------------------------------------


def settlement_anchor(settings: Settings, settlement: SettlementSettings) -> SettlementAnchor:
    """Connect to the registry chain named by the settings, with the operator's key."""
    assert settlement.enabled, "settlement needs TOKENPORT_SETTLEMENT_REGISTRY_ADDRESS and _OPERATOR_PRIVATE_KEY"
    if not settings.chains:
        raise SettlementError("settlement needs a chain; set TOKENPORT_CHAINS")
    chain = settings.chain(settlement.chain_id) if settlement.chain_id else settings.chains[0]
    w3 = Web3(Web3.HTTPProvider(chain.rpc_url, request_kwargs={"timeout": 30}))
    operator = Account.from_key(settlement.operator_private_key.get_secret_value())  # type: ignore[union-attr]
    return SettlementAnchor(w3, contract_at(w3, "SettlementRegistry", settlement.registry_address), operator)  # type: ignore[arg-type]


def close_scheduled_period(db: Database, settings: Settings, settlement: SettlementSettings) -> dict | None:
    """Close the next due period with the configured registry; the Celery beat task's body."""
    if not settlement.enabled:
        logger.debug("settlement is not configured; no period closed")
        return None
    period = close_next_period(
        db,
        settlement_anchor(settings, settlement),
        chains=settings.chains,
        period_s=settlement.period_s,
        close_delay_s=settlement.close_delay_s,
        vault_addresses=settlement.vault_addresses,
        export_dir=settlement.export_dir,
        batch_size=settlement.batch_size,
    )
    if period is None:
        return None
    return {"period_id": period.period_id, "ledger_root": period.ledger_root, "commit_tx_hash": period.commit_tx_hash}
