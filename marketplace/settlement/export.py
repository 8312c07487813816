"""The settlement export: one period as JSON lines, version 1, and the ledger root of its header.

Line 1 is the header. Then come the opening balances (the previous period's balance leaves, so
the verifier can replay the period), the balance leaves and the record leaves, each group in
leaf-index order. Every line is one JSON object. Every integer is a string of decimal digits,
bytes are lowercase 0x-hex and addresses EIP-55. docs/settlement.md documents the format.

    {"type": "header", "format": "tokenport-settlement-export", "version": "1", ...}
    {"type": "opening_balance", "index": "0", "leaf_hash": "0x…", "fields": {…}}
    {"type": "balance", "index": "0", "leaf_hash": "0x…", "fields": {…}}
    {"type": "usage", "index": "0", "leaf_hash": "0x…", "fields": {…}}

This module must not import the database layer, because the verifier uses it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from marketplace.settlement.encoding import (
    AbiField,
    AbiType,
    EncodingError,
    TupleEncoder,
    bytes32_from_json,
    bytes32_to_json,
    check_address,
    domain_tag,
    keccak256,
    uint_from_json,
)
from marketplace.settlement.leaves import LEAF_KINDS, Leaf, leaf_from_json
from marketplace.settlement.tree import MerkleSumTree, MerkleTree

EXPORT_FORMAT = "tokenport-settlement-export"
EXPORT_VERSION = 1
OPENING_BALANCE = "opening_balance"

RESERVES_TAG = domain_tag("reserves")
_RESERVE_SOURCE = TupleEncoder(
    domain_tag("reserve_source"),
    (
        AbiField("chain_id", AbiType.UINT64),
        AbiField("confirmations", AbiType.UINT64),
        AbiField("token_address", AbiType.ADDRESS),
        AbiField("token_decimals", AbiType.UINT8),
        AbiField("holder_address", AbiType.ADDRESS),
    ),
)
_LEDGER_ROOT = TupleEncoder(
    domain_tag("ledger_root"),
    (
        AbiField("chain_id", AbiType.UINT64),
        AbiField("registry_address", AbiType.ADDRESS),
        AbiField("period_id", AbiType.UINT64),
        AbiField("from_timestamp", AbiType.UINT64),
        AbiField("to_timestamp", AbiType.UINT64),
        AbiField("previous_ledger_root", AbiType.BYTES32),
        AbiField("balances_root", AbiType.BYTES32),
        AbiField("records_root", AbiType.BYTES32),
        AbiField("reserves_hash", AbiType.BYTES32),
        AbiField("total_liabilities_nano_usd", AbiType.UINT256),
        AbiField("total_usage_nano_usd", AbiType.UINT256),
        AbiField("total_deposits_nano_usd", AbiType.UINT256),
        AbiField("total_payouts_nano_usd", AbiType.UINT256),
        AbiField("record_count", AbiType.UINT32),
    ),
)


class ExportFormatError(ValueError):
    """A line of an export is not valid JSON or does not follow the export format."""

    def __init__(self, line_number: int, message: str) -> None:
        super().__init__(f"line {line_number}: {message}")
        self.line_number = line_number


@dataclass(frozen=True)
class ReserveSource:
    """An on-chain balance that backs liabilities: ``holder_address``'s balance of one token.

    ``confirmations`` is the depth that a deposit or payout on this chain must have.
    """

    chain_id: int
    confirmations: int
    token_address: str
    token_decimals: int
    holder_address: str

    def sort_key(self) -> tuple[int, str, str]:
        return (self.chain_id, self.token_address.lower(), self.holder_address.lower())

    def to_json(self) -> dict[str, str]:
        return {
            "chain_id": str(self.chain_id),
            "confirmations": str(self.confirmations),
            "token_address": self.token_address,
            "token_decimals": str(self.token_decimals),
            "holder_address": self.holder_address,
        }

    @classmethod
    def from_json(cls, data: Any) -> ReserveSource:
        if not isinstance(data, dict) or set(data) != {"chain_id", "confirmations", "token_address", "token_decimals", "holder_address"}:
            raise EncodingError(f"reserve_sources: expected an object with chain_id, confirmations, token_address, token_decimals and holder_address, got {data!r}")
        return cls(
            chain_id=uint_from_json("chain_id", data["chain_id"], 64),
            confirmations=uint_from_json("confirmations", data["confirmations"], 64),
            token_address=check_address("token_address", data["token_address"]),
            token_decimals=uint_from_json("token_decimals", data["token_decimals"], 8),
            holder_address=check_address("holder_address", data["holder_address"]),
        )


def reserves_hash(sources: Iterable[ReserveSource]) -> bytes:
    """Hash the reserve sources in canonical order, so the set of counted holders is committed."""
    ordered = sorted(sources, key=ReserveSource.sort_key)
    keys = [source.sort_key() for source in ordered]
    if len(set(keys)) != len(keys):
        raise EncodingError("reserve_sources: a (chain, token, holder) appears twice")
    digests = [keccak256(_RESERVE_SOURCE.encode(source.__dict__)) for source in ordered]
    return keccak256(RESERVES_TAG + b"".join(digests))


_HEADER_UINTS = {
    "chain_id": 64,
    "period_id": 64,
    "from_timestamp": 64,
    "to_timestamp": 64,
    "total_liabilities_nano_usd": 256,
    "total_usage_nano_usd": 256,
    "total_deposits_nano_usd": 256,
    "total_payouts_nano_usd": 256,
    "record_count": 32,
    "balance_count": 64,
    "opening_balance_count": 64,
}
_HEADER_ROOTS = ("previous_ledger_root", "ledger_root", "balances_root", "records_root")


@dataclass(frozen=True)
class ExportHeader:
    """The header line: the period, its roots and totals, and where its reserves are held.

    ``commit_transaction_hash`` and ``commit_block_number`` record where the operator committed
    the period. They are informational, because the verifier reads the commitment from the
    registry itself.
    """

    chain_id: int
    registry_address: str
    period_id: int
    from_timestamp: int
    to_timestamp: int
    previous_ledger_root: bytes
    ledger_root: bytes
    balances_root: bytes
    records_root: bytes
    total_liabilities_nano_usd: int
    total_usage_nano_usd: int
    total_deposits_nano_usd: int
    total_payouts_nano_usd: int
    record_count: int
    balance_count: int
    opening_balance_count: int
    reserve_sources: tuple[ReserveSource, ...] = ()
    commit_transaction_hash: bytes | None = None
    commit_block_number: int | None = None

    def compute_ledger_root(self) -> bytes:
        """Recompute the ledger root from the header's own fields."""
        return compute_ledger_root(
            chain_id=self.chain_id,
            registry_address=self.registry_address,
            period_id=self.period_id,
            from_timestamp=self.from_timestamp,
            to_timestamp=self.to_timestamp,
            previous_ledger_root=self.previous_ledger_root,
            balances_root=self.balances_root,
            records_root=self.records_root,
            reserve_sources=self.reserve_sources,
            total_liabilities_nano_usd=self.total_liabilities_nano_usd,
            total_usage_nano_usd=self.total_usage_nano_usd,
            total_deposits_nano_usd=self.total_deposits_nano_usd,
            total_payouts_nano_usd=self.total_payouts_nano_usd,
            record_count=self.record_count,
        )

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"type": "header", "format": EXPORT_FORMAT, "version": str(EXPORT_VERSION)}
        data["chain_id"] = str(self.chain_id)
        data["registry_address"] = self.registry_address
        data["period_id"] = str(self.period_id)
        data["from_timestamp"] = str(self.from_timestamp)
        data["to_timestamp"] = str(self.to_timestamp)
        for name in _HEADER_ROOTS:
            data[name] = bytes32_to_json(getattr(self, name))
        for name in _HEADER_UINTS:
            data.setdefault(name, str(getattr(self, name)))
        data["reserve_sources"] = [source.to_json() for source in sorted(self.reserve_sources, key=ReserveSource.sort_key)]
        data["commit"] = None
        if self.commit_transaction_hash is not None:
            data["commit"] = {
                "transaction_hash": bytes32_to_json(self.commit_transaction_hash),
                "block_number": str(self.commit_block_number),
            }
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ExportHeader:
        """Parse a header line. Raises EncodingError naming the first invalid field."""
        if data.get("format") != EXPORT_FORMAT:
            raise EncodingError(f"format: expected {EXPORT_FORMAT!r}, got {data.get('format')!r}")
        if data.get("version") != str(EXPORT_VERSION):
            raise EncodingError(f"version: this verifier reads version {EXPORT_VERSION}, got {data.get('version')!r}")
        expected = {"type", "format", "version", "registry_address", "reserve_sources", "commit", *_HEADER_UINTS, *_HEADER_ROOTS}
        extra = sorted(set(data) - expected)
        if extra:
            raise EncodingError(f"{extra[0]}: not a header field")
        missing = sorted(expected - set(data))
        if missing:
            raise EncodingError(f"{missing[0]}: missing")

        values: dict[str, Any] = {name: uint_from_json(name, data[name], bits) for name, bits in _HEADER_UINTS.items()}
        for name in _HEADER_ROOTS:
            values[name] = bytes32_from_json(name, data[name])
        values["registry_address"] = check_address("registry_address", data["registry_address"])
        if not isinstance(data["reserve_sources"], list):
            raise EncodingError("reserve_sources: expected a list")
        values["reserve_sources"] = tuple(ReserveSource.from_json(item) for item in data["reserve_sources"])
        commit = data["commit"]
        if commit is not None:
            if not isinstance(commit, dict) or set(commit) != {"transaction_hash", "block_number"}:
                raise EncodingError("commit: expected null or an object with transaction_hash and block_number")
            values["commit_transaction_hash"] = bytes32_from_json("commit.transaction_hash", commit["transaction_hash"])
            values["commit_block_number"] = uint_from_json("commit.block_number", commit["block_number"], 64)
        return cls(**values)


def compute_ledger_root(
    *,
    chain_id: int,
    registry_address: str,
    period_id: int,
    from_timestamp: int,
    to_timestamp: int,
    previous_ledger_root: bytes,
    balances_root: bytes,
    records_root: bytes,
    reserve_sources: Iterable[ReserveSource],
    total_liabilities_nano_usd: int,
    total_usage_nano_usd: int,
    total_deposits_nano_usd: int,
    total_payouts_nano_usd: int,
    record_count: int,
) -> bytes:
    """Return the ledger root: one hash over the period's identity, both tree roots, the reserve
    sources, the totals and the previous period's ledger root, so periods form a hash chain."""
    values = {
        "chain_id": chain_id,
        "registry_address": registry_address,
        "period_id": period_id,
        "from_timestamp": from_timestamp,
        "to_timestamp": to_timestamp,
        "previous_ledger_root": previous_ledger_root,
        "balances_root": balances_root,
        "records_root": records_root,
        "reserves_hash": reserves_hash(reserve_sources),
        "total_liabilities_nano_usd": total_liabilities_nano_usd,
        "total_usage_nano_usd": total_usage_nano_usd,
        "total_deposits_nano_usd": total_deposits_nano_usd,
        "total_payouts_nano_usd": total_payouts_nano_usd,
        "record_count": record_count,
    }
    return keccak256(_LEDGER_ROOT.encode(values))


def dump_line(data: dict[str, Any]) -> str:
    """Serialize one export line: compact, ASCII-only, keys in the order given, newline-terminated."""
    return json.dumps(data, separators=(",", ":"), ensure_ascii=True) + "\n"


def leaf_line(line_type: str, index: int, leaf_hash: bytes, fields: dict[str, Any]) -> str:
    """Serialize one leaf line from its fields' JSON forms."""
    return dump_line({"type": line_type, "index": str(index), "leaf_hash": bytes32_to_json(leaf_hash), "fields": fields})


def export_lines(
    header: ExportHeader,
    opening_balances: Iterable[tuple[Leaf, bytes]],
    balances: Iterable[tuple[Leaf, bytes]],
    records: Iterable[tuple[Leaf, bytes]],
) -> Iterator[str]:
    """Yield the lines of an export. Each leaf comes with its hash, in leaf-index order."""
    yield dump_line(header.to_json())
    for index, (leaf, leaf_hash) in enumerate(opening_balances):
        yield leaf_line(OPENING_BALANCE, index, leaf_hash, leaf.to_json())
    for index, (leaf, leaf_hash) in enumerate(balances):
        yield leaf_line(leaf.kind.name, index, leaf_hash, leaf.to_json())
    for index, (leaf, leaf_hash) in enumerate(records):
        yield leaf_line(leaf.kind.name, index, leaf_hash, leaf.to_json())


@dataclass
class LeafLine:
    """One parsed leaf line. ``leaf`` is None when its fields failed to parse, and ``error`` gives the reason.

    ``record`` names the record for reports even when its fields are invalid, as far as the
    line allows.
    """

    line_number: int
    line_type: str
    index: int
    stored_hash: bytes | None
    leaf: Leaf | None
    record: str
    error: str | None = None
    raw_fields: dict[str, Any] = field(default_factory=dict)


_KEY_FIELDS = ("account", "generation_id", "payout_id", "transfer_id")


def _record_name(line_type: str, fields: Any) -> str:
    if isinstance(fields, dict):
        for name in _KEY_FIELDS:
            if isinstance(fields.get(name), str):
                return f"{line_type} {fields[name]}"
        if all(isinstance(fields.get(name), str) for name in ("chain_id", "tx_hash", "log_index")):
            return f"{line_type} {fields['chain_id']}:{fields['tx_hash']}:{fields['log_index']}"
    return line_type


def parse_leaf_line(line_number: int, text: str) -> LeafLine:
    """Parse one leaf line. Structural errors raise ExportFormatError; field errors are returned
    in ``LeafLine.error`` so that the verifier can name the record and carry on."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ExportFormatError(line_number, f"invalid JSON: {exc}") from exc
    if not isinstance(data, dict) or set(data) != {"type", "index", "leaf_hash", "fields"}:
        raise ExportFormatError(line_number, "a leaf line must be an object with exactly type, index, leaf_hash and fields")
    line_type = data["type"]
    if line_type != OPENING_BALANCE and line_type not in LEAF_KINDS:
        raise ExportFormatError(line_number, f"unknown line type {line_type!r}")
    try:
        index = uint_from_json("index", data["index"], 64)
    except EncodingError as exc:
        raise ExportFormatError(line_number, str(exc)) from exc

    fields = data["fields"]
    record = _record_name(line_type, fields)
    parsed = LeafLine(line_number, line_type, index, None, None, record, raw_fields=fields if isinstance(fields, dict) else {})
    try:
        parsed.stored_hash = bytes32_from_json("leaf_hash", data["leaf_hash"])
        if not isinstance(fields, dict):
            raise EncodingError("fields: expected an object")
        kind_name = "balance" if line_type == OPENING_BALANCE else line_type
        parsed.leaf = leaf_from_json(kind_name, fields)
        parsed.record = f"{line_type} {parsed.leaf.name.split(' ', 1)[1]}"
    except EncodingError as exc:
        parsed.error = str(exc)
    return parsed


def parse_header_line(text: str) -> ExportHeader:
    """Parse line 1 of an export. Raises ExportFormatError for an invalid header."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ExportFormatError(1, f"invalid JSON: {exc}") from exc
    if not isinstance(data, dict) or data.get("type") != "header":
        raise ExportFormatError(1, "the first line must be the header object (type \"header\")")
    try:
        return ExportHeader.from_json(data)
    except EncodingError as exc:
        raise ExportFormatError(1, str(exc)) from exc


@dataclass(frozen=True)
class BuiltExport:
    """A header built from leaves, with each group's leaves paired with their hashes."""

    header: ExportHeader
    opening: list[tuple[Leaf, bytes]]
    balances: list[tuple[Leaf, bytes]]
    records: list[tuple[Leaf, bytes]]

    def lines(self) -> Iterator[str]:
        return export_lines(self.header, self.opening, self.balances, self.records)


def build_export(
    *,
    chain_id: int,
    registry_address: str,
    period_id: int,
    from_timestamp: int,
    to_timestamp: int,
    previous_ledger_root: bytes,
    opening: list[Leaf],
    balances: list[Leaf],
    records: list[Leaf],
    reserve_sources: tuple[ReserveSource, ...],
) -> BuiltExport:
    """Build the trees and header of an export from leaves already in canonical order.

    The database closer stores its trees for proofs instead; this builds exports from leaves
    alone, for tools, tests and benchmarks.
    """
    def hashed(leaves: list[Leaf]) -> list[tuple[Leaf, bytes]]:
        return [(leaf, leaf.hash()) for leaf in leaves]

    opening_pairs, balance_pairs, record_pairs = hashed(opening), hashed(balances), hashed(records)
    balance_tree = MerkleSumTree([(digest, leaf.sum_nano_usd) for leaf, digest in balance_pairs])
    record_tree = MerkleTree([digest for _, digest in record_pairs])
    totals = {"usage": 0, "deposit": 0, "payout": 0}
    for leaf in records:
        if leaf.kind.name == "usage":
            totals["usage"] += leaf.values["cost_nano_usd"]
        elif leaf.kind.name in ("deposit", "payout"):
            totals[leaf.kind.name] += leaf.values["amount_nano_usd"]

    fields = {
        "chain_id": chain_id,
        "registry_address": registry_address,
        "period_id": period_id,
        "from_timestamp": from_timestamp,
        "to_timestamp": to_timestamp,
        "previous_ledger_root": previous_ledger_root,
        "balances_root": balance_tree.root,
        "records_root": record_tree.root,
        "total_liabilities_nano_usd": balance_tree.total,
        "total_usage_nano_usd": totals["usage"],
        "total_deposits_nano_usd": totals["deposit"],
        "total_payouts_nano_usd": totals["payout"],
        "record_count": record_tree.leaf_count,
    }
    ledger_root = compute_ledger_root(reserve_sources=reserve_sources, **fields)
    header = ExportHeader(
        **fields,
        ledger_root=ledger_root,
        balance_count=balance_tree.leaf_count,
        opening_balance_count=len(opening),
        reserve_sources=tuple(reserve_sources),
    )
    return BuiltExport(header, opening_pairs, balance_pairs, record_pairs)
