"""Stored settlement periods: their leaves, their tree nodes for proofs, and their exports.

Every leaf is stored with its fields in export form. Every tree level is stored in chunks of
``CHUNK_NODES`` consecutive nodes, so an inclusion proof reads one chunk per level instead of
rebuilding the tree, and the storage is about twice the leaf hashes.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from sqlalchemy import and_, func, insert, or_, select
from sqlalchemy.orm import Session

from marketplace.models import SettlementLeaf, SettlementPeriod, SettlementTreeChunk
from marketplace.settlement.encoding import hex_to_bytes32
from marketplace.settlement.export import OPENING_BALANCE, ExportHeader, ReserveSource, dump_line, leaf_line
from marketplace.settlement.leaves import LEAF_KINDS, Leaf, leaf_from_json, record_key
from marketplace.settlement.proof import BALANCES_TREE, RECORDS_TREE, InclusionProof
from marketplace.settlement.tree import MerkleSumTree, MerkleTree, empty_subtree, empty_sum_subtree, flatten_levels, tree_depth

if TYPE_CHECKING:
    from marketplace.settlement.period import BuiltPeriod

CHUNK_NODES = 4_096
HASH_BYTES = 32
SUM_BYTES = 16
MAX_PROOFS_PER_PAGE = 500


def export_file_name(period_id: int) -> str:
    return f"period-{period_id:08d}.jsonl"


def _hex(value: bytes) -> str:
    return "0x" + value.hex()


def store_period(session: Session, built: BuiltPeriod, batch_size: int) -> SettlementPeriod:
    """Insert a built period (status "built"), its leaves and its tree chunks. Flushes, never commits."""
    bounds = built.bounds
    period = SettlementPeriod(
        period_id=bounds.period_id,
        chain_id=built.chain_id,
        registry_address=built.registry_address,
        from_timestamp=bounds.from_timestamp,
        to_timestamp=bounds.to_timestamp,
        previous_ledger_root=_hex(built.previous_ledger_root),
        ledger_root=_hex(built.ledger_root),
        balances_root=_hex(built.balance_tree.root),
        records_root=_hex(built.record_tree.root),
        total_liabilities_nano_usd=built.balance_tree.total,
        total_buyer_liabilities_nano_usd=built.buyer_liabilities_nano_usd,
        total_supplier_liabilities_nano_usd=built.supplier_liabilities_nano_usd,
        total_usage_nano_usd=built.total_usage_nano_usd,
        total_deposits_nano_usd=built.total_deposits_nano_usd,
        total_payouts_nano_usd=built.total_payouts_nano_usd,
        record_count=built.record_tree.leaf_count,
        balance_count=built.balance_tree.leaf_count,
        reserve_sources=[source.to_json() for source in built.reserve_sources],
        status="built",
    )
    session.add(period)
    session.flush()

    for tree_name, leaves, tree in ((BALANCES_TREE, built.balances, built.balance_tree), (RECORDS_TREE, built.records, built.record_tree)):
        leaf_hashes = tree.hash_levels[0] if tree_name == BALANCES_TREE else tree.levels[0]  # type: ignore[union-attr]
        rows = []
        for index, (leaf, leaf_hash) in enumerate(zip(leaves, leaf_hashes, strict=True)):
            rows.append(
                {
                    "period_id": bounds.period_id,
                    "tree": tree_name,
                    "leaf_index": index,
                    "kind": leaf.kind.name,
                    "record_key": record_key(leaf)[:200],
                    "owner_account_id": built.owners.get((tree_name, index)),
                    "fields": leaf.to_json(),
                    "leaf_hash": _hex(leaf_hash),
                }
            )
            if len(rows) >= batch_size:
                session.execute(insert(SettlementLeaf), rows)
                rows = []
        if rows:
            session.execute(insert(SettlementLeaf), rows)
        _store_chunks(session, bounds.period_id, tree_name, tree, batch_size)
    session.flush()
    return period


def _store_chunks(session: Session, period_id: int, tree_name: str, tree: MerkleTree | MerkleSumTree, batch_size: int) -> None:
    rows = []
    for level in flatten_levels(tree):
        for chunk_index in range(0, max(level.node_count, 1), CHUNK_NODES):
            start, end = chunk_index, min(chunk_index + CHUNK_NODES, level.node_count)
            rows.append(
                {
                    "period_id": period_id,
                    "tree": tree_name,
                    "level": level.level,
                    "chunk_index": chunk_index // CHUNK_NODES,
                    "hashes": level.hashes[start * HASH_BYTES : end * HASH_BYTES],
                    "sums": level.sums[start * SUM_BYTES : end * SUM_BYTES] if level.sums is not None else None,
                }
            )
            if len(rows) >= max(batch_size // 100, 1):
                session.execute(insert(SettlementTreeChunk), rows)
                rows = []
    if rows:
        session.execute(insert(SettlementTreeChunk), rows)


def read_balances(session: Session, period_id: int) -> dict[str, int]:
    """Return the balance of every account at the end of a stored period, by ledger account name."""
    rows = session.execute(
        select(SettlementLeaf.fields).where(SettlementLeaf.period_id == period_id, SettlementLeaf.tree == BALANCES_TREE)
    )
    return {fields["account"]: int(fields["balance_nano_usd"]) for (fields,) in rows}


def count_leaves(session: Session, period_id: int, tree: str) -> int:
    return session.scalar(
        select(func.count()).select_from(SettlementLeaf).where(SettlementLeaf.period_id == period_id, SettlementLeaf.tree == tree)
    ) or 0


def _ordered_fields(kind_name: str, fields: dict) -> dict:
    return {name: fields[name] for name in LEAF_KINDS[kind_name].field_names()}


def _iter_leaf_rows(session: Session, period_id: int, tree: str, batch_size: int = 1_000) -> Iterator[SettlementLeaf]:
    query = (
        select(SettlementLeaf)
        .where(SettlementLeaf.period_id == period_id, SettlementLeaf.tree == tree)
        .order_by(SettlementLeaf.leaf_index)
        .execution_options(yield_per=batch_size)
    )
    yield from session.scalars(query)


def export_header(session: Session, period: SettlementPeriod) -> ExportHeader:
    """Return the export header of a stored period."""
    opening_count = count_leaves(session, period.period_id - 1, BALANCES_TREE) if period.period_id > 1 else 0
    return ExportHeader(
        chain_id=period.chain_id,
        registry_address=period.registry_address,
        period_id=period.period_id,
        from_timestamp=period.from_timestamp,
        to_timestamp=period.to_timestamp,
        previous_ledger_root=hex_to_bytes32("previous_ledger_root", period.previous_ledger_root),
        ledger_root=hex_to_bytes32("ledger_root", period.ledger_root),
        balances_root=hex_to_bytes32("balances_root", period.balances_root),
        records_root=hex_to_bytes32("records_root", period.records_root),
        total_liabilities_nano_usd=period.total_liabilities_nano_usd,
        total_usage_nano_usd=period.total_usage_nano_usd,
        total_deposits_nano_usd=period.total_deposits_nano_usd,
        total_payouts_nano_usd=period.total_payouts_nano_usd,
        record_count=period.record_count,
        balance_count=period.balance_count,
        opening_balance_count=opening_count,
        reserve_sources=tuple(ReserveSource.from_json(source) for source in period.reserve_sources),
        commit_transaction_hash=hex_to_bytes32("commit_tx_hash", period.commit_tx_hash) if period.commit_tx_hash else None,
        commit_block_number=period.commit_block_number,
    )


def iter_export_lines(session: Session, period_id: int) -> Iterator[str]:
    """Yield the export of a stored period line by line, reading leaves in batches."""
    period = session.get(SettlementPeriod, period_id)
    assert period is not None, f"settlement period {period_id} is not stored"
    yield dump_line(export_header(session, period).to_json())
    if period_id > 1:
        for row in _iter_leaf_rows(session, period_id - 1, BALANCES_TREE):
            yield leaf_line(OPENING_BALANCE, row.leaf_index, hex_to_bytes32("leaf_hash", row.leaf_hash), _ordered_fields(row.kind, row.fields))
    for tree in (BALANCES_TREE, RECORDS_TREE):
        for row in _iter_leaf_rows(session, period_id, tree):
            yield leaf_line(row.kind, row.leaf_index, hex_to_bytes32("leaf_hash", row.leaf_hash), _ordered_fields(row.kind, row.fields))


# --- proofs ------------------------------------------------------------------------------------


def _siblings(session: Session, period_id: int, tree: str, leaf_index: int, leaf_count: int) -> list[tuple[bytes, int]]:
    """Read the sibling of each level on a leaf's path from the stored chunks."""
    depth = tree_depth(leaf_count)
    wanted = []
    for level in range(depth):
        sibling = (leaf_index >> level) ^ 1
        stored_nodes = -(-leaf_count // (1 << level))
        wanted.append((level, sibling, sibling < stored_nodes))

    chunk_keys = {(level, sibling // CHUNK_NODES) for level, sibling, stored in wanted if stored}
    chunks = {}
    if chunk_keys:
        conditions = [and_(SettlementTreeChunk.level == level, SettlementTreeChunk.chunk_index == index) for level, index in chunk_keys]
        query = select(SettlementTreeChunk).where(
            SettlementTreeChunk.period_id == period_id, SettlementTreeChunk.tree == tree, or_(*conditions)
        )
        chunks = {(chunk.level, chunk.chunk_index): chunk for chunk in session.scalars(query)}

    siblings = []
    for level, sibling, stored in wanted:
        if not stored:
            empty = empty_sum_subtree(level) if tree == BALANCES_TREE else empty_subtree(level)
            siblings.append((empty, 0))
            continue
        chunk = chunks[(level, sibling // CHUNK_NODES)]
        offset = sibling % CHUNK_NODES
        digest = bytes(chunk.hashes[offset * HASH_BYTES : (offset + 1) * HASH_BYTES])
        value = int.from_bytes(bytes(chunk.sums[offset * SUM_BYTES : (offset + 1) * SUM_BYTES]), "big") if chunk.sums is not None else 0
        siblings.append((digest, value))
    return siblings


def proof_for_leaf(session: Session, period: SettlementPeriod, row: SettlementLeaf) -> InclusionProof:
    """Assemble the inclusion proof of one stored leaf."""
    leaf_count = period.balance_count if row.tree == BALANCES_TREE else period.record_count
    leaf: Leaf = leaf_from_json(row.kind, row.fields)
    return InclusionProof(
        chain_id=period.chain_id,
        registry_address=period.registry_address,
        period_id=period.period_id,
        tree=row.tree,
        leaf=leaf,
        leaf_index=row.leaf_index,
        leaf_count=leaf_count,
        siblings=tuple(_siblings(session, period.period_id, row.tree, row.leaf_index, leaf_count)),
    )


def account_proofs(
    session: Session,
    period: SettlementPeriod,
    account_id: int,
    tree: str,
    *,
    kind: str | None = None,
    after_index: int = -1,
    limit: int = 100,
) -> tuple[list[InclusionProof], int | None]:
    """Return the proofs of one account's leaves in a tree, in leaf order, a page at a time.

    Returns the proofs and the leaf index to pass as ``after_index`` for the next page, or None
    on the last page.
    """
    assert 1 <= limit <= MAX_PROOFS_PER_PAGE, f"limit must be 1 to {MAX_PROOFS_PER_PAGE}, got {limit}"
    query = select(SettlementLeaf).where(
        SettlementLeaf.period_id == period.period_id,
        SettlementLeaf.owner_account_id == account_id,
        SettlementLeaf.tree == tree,
        SettlementLeaf.leaf_index > after_index,
    )
    if kind is not None:
        query = query.where(SettlementLeaf.kind == kind)
    rows = list(session.scalars(query.order_by(SettlementLeaf.leaf_index).limit(limit + 1)))
    next_after = rows[limit - 1].leaf_index if len(rows) > limit else None
    return [proof_for_leaf(session, period, row) for row in rows[:limit]], next_after
