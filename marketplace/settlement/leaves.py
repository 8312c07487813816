"""The leaves of the settlement trees: one typed, tagged record each, and its leaf hash.

A leaf hash is ``keccak256(abi.encode(tag, field_1, ..., field_n))`` with the fields of its kind
in the order listed below. The tag is ``keccak256("tokenport.settlement.v1.<kind>")``, so a leaf
of one kind can never be read as another kind or as an inner node. docs/settlement.md lists the
same layouts for auditors.

Money is in nano-USD (1 USD = 10**9 nano-USD), the ledger unit, as uint128: no single amount
or sum can come near 2**128, and no negative value can be encoded. Token amounts are raw base
units as uint256, as the chain reports them. Times are Unix microseconds as uint64.

This module must not import the database layer, because the verifier uses it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from marketplace.settlement.encoding import (
    AbiField,
    AbiType,
    EncodingError,
    TupleEncoder,
    domain_tag,
    json_parser,
    keccak256,
    value_to_json,
)

MICROSECONDS_PER_SECOND = 1_000_000
NANO_USD_DECIMALS = 9

# Liability accounts, whose balances the platform owes: each buyer's balance, each supplier's
# payable earnings, and the payouts reserved from suppliers but not yet confirmed on-chain.
PAYOUTS_IN_FLIGHT = "clearing:payouts"
_LIABILITY_ACCOUNT = re.compile(r"^(?:(buyer|supplier):([1-9][0-9]{0,18})|(clearing):(payouts))$")
_LIABILITY_RANK = {"buyer": 0, "supplier": 1, "clearing": 2}

# Usage records whose generation produced nothing must cost nothing.
UNCHARGED_USAGE_STATUSES = frozenset({"failed", "expired"})


def _uint(name: str, bits: int) -> AbiField:
    return AbiField(name, AbiType(f"uint{bits}"))


def _string(name: str, max_bytes: int) -> AbiField:
    return AbiField(name, AbiType.STRING, max_bytes)


def _address(name: str) -> AbiField:
    return AbiField(name, AbiType.ADDRESS)


def _bytes32(name: str) -> AbiField:
    return AbiField(name, AbiType.BYTES32)


def _bool(name: str) -> AbiField:
    return AbiField(name, AbiType.BOOL)


@dataclass(frozen=True)
class LeafKind:
    """A kind of leaf: its name (the ``type`` of its export line), tag and fields."""

    name: str
    fields: tuple[AbiField, ...]

    @property
    def tag(self) -> bytes:
        return self.encoder.tag

    @property
    def encoder(self) -> TupleEncoder:
        return _ENCODERS[self.name]

    def field_names(self) -> list[str]:
        return [field.name for field in self.fields]

    @property
    def names(self) -> frozenset[str]:
        return _NAMES[self.name]

    @property
    def parsers(self) -> tuple[tuple[str, Callable[[Any], Any]], ...]:
        return _PARSERS[self.name]


BALANCE = LeafKind(
    "balance",
    (
        # A ledger account name: "buyer:<account id>", "supplier:<supplier id>" or
        # "clearing:payouts".
        _string("account", 40),
        _uint("balance_nano_usd", 128),
    ),
)

USAGE = LeafKind(
    "usage",
    (
        _string("generation_id", 160),
        _uint("account_id", 64),
        _uint("api_key_id", 64),
        _uint("listing_id", 64),
        _uint("supplier_id", 64),
        _string("model", 200),
        _string("status", 20),
        _bool("stream"),
        _bool("usage_estimated"),
        _uint("prompt_tokens", 64),
        _uint("completion_tokens", 64),
        _uint("cached_prompt_tokens", 64),
        _uint("cache_write_tokens", 64),
        _uint("reasoning_tokens", 64),
        _uint("hold_nano_usd", 128),
        _uint("cost_nano_usd", 128),
        _uint("supplier_credit_nano_usd", 128),
        _uint("platform_fee_nano_usd", 128),
        _uint("created_at_us", 64),
        _uint("finished_at_us", 64),
        # Ledger time of the transfer that resolved the call's hold. It decides the period.
        _uint("settled_at_us", 64),
    ),
)

DEPOSIT = LeafKind(
    "deposit",
    (
        _uint("chain_id", 64),
        _bytes32("tx_hash"),
        _uint("log_index", 64),
        _uint("block_number", 64),
        _bytes32("block_hash"),
        _address("token_address"),
        _uint("token_decimals", 8),
        _address("from_address"),
        _address("to_address"),
        _uint("amount_units", 256),
        _uint("amount_nano_usd", 128),
        _uint("account_id", 64),
        # Ledger time of the credit. It decides the period.
        _uint("credited_at_us", 64),
    ),
)

# A payout is identified by its transaction, which moves the token once from a reserve holder
# to the supplier's payout address.
PAYOUT = LeafKind(
    "payout",
    (
        _string("payout_id", 160),
        _uint("supplier_id", 64),
        # The liability account that the confirmed payout debits, such as "clearing:payouts".
        _string("debit_account", 40),
        _uint("chain_id", 64),
        _bytes32("tx_hash"),
        _uint("block_number", 64),
        _bytes32("block_hash"),
        _address("token_address"),
        _uint("token_decimals", 8),
        _address("from_address"),
        _address("to_address"),
        _uint("amount_units", 256),
        _uint("amount_nano_usd", 128),
        # Ledger time of the debit. It decides the period.
        _uint("paid_at_us", 64),
    ),
)

# A posted ledger transfer that touches a buyer or supplier account and belongs to no usage
# record, deposit or payout (a deposit reversal, a manual correction). Without it, the change
# of a balance between periods could not be explained from the records.
ADJUSTMENT = LeafKind(
    "adjustment",
    (
        _string("transfer_id", 160),
        _string("code", 30),
        _string("debit_account", 120),
        _string("credit_account", 120),
        _uint("amount_nano_usd", 128),
        _uint("created_at_us", 64),
    ),
)

BALANCE_KINDS = (BALANCE,)
RECORD_KINDS = (USAGE, DEPOSIT, PAYOUT, ADJUSTMENT)
LEAF_KINDS = {kind.name: kind for kind in (*BALANCE_KINDS, *RECORD_KINDS)}
_ENCODERS = {name: TupleEncoder(domain_tag(name), kind.fields) for name, kind in LEAF_KINDS.items()}
_NAMES = {name: frozenset(kind.field_names()) for name, kind in LEAF_KINDS.items()}
_PARSERS = {name: tuple((field.name, json_parser(field)) for field in kind.fields) for name, kind in LEAF_KINDS.items()}
_RECORD_RANK = {kind.name: rank for rank, kind in enumerate(RECORD_KINDS)}


@dataclass(frozen=True)
class Leaf:
    """One leaf: its kind and the value of each of its fields."""

    kind: LeafKind
    values: dict[str, Any]

    def encode(self) -> bytes:
        return self.kind.encoder.encode(self.values)

    def hash(self) -> bytes:
        return keccak256(self.encode())

    @property
    def name(self) -> str:
        """A short name that identifies the leaf in a report, such as ``usage gen-abc``."""
        return f"{self.kind.name} {record_key(self)}"

    @property
    def sum_nano_usd(self) -> int:
        """The value that a balance leaf adds to the sum tree."""
        assert self.kind is BALANCE, f"{self.kind.name} leaves carry no sum"
        return self.values["balance_nano_usd"]

    def to_json(self) -> dict[str, Any]:
        return {field.name: value_to_json(field.abi_type, self.values[field.name]) for field in self.kind.fields}


def leaf_from_json(kind_name: str, data: dict[str, Any]) -> Leaf:
    """Parse the fields of one leaf from their JSON forms, range-checking every one.

    ``data`` must contain exactly the fields of the kind. Raises EncodingError naming the field.
    """
    kind = LEAF_KINDS.get(kind_name)
    if kind is None:
        raise EncodingError(f"type: unknown leaf type {kind_name!r}; expected one of {sorted(LEAF_KINDS)}")
    extra = sorted(set(data) - kind.names)
    if extra:
        raise EncodingError(f"{extra[0]}: not a field of a {kind_name} leaf")
    values = {}
    for name, parse in kind.parsers:
        if name not in data:
            raise EncodingError(f"{name}: missing")
        values[name] = parse(data[name])
    leaf = Leaf(kind, values)
    check_leaf_rules(leaf)
    return leaf


def parse_liability_account(name: str) -> tuple[str, int]:
    """Split ``buyer:12`` into ("buyer", 12), and "clearing:payouts" into ("clearing", 0).

    Raises EncodingError for any account that is not a liability.
    """
    match = _LIABILITY_ACCOUNT.match(name)
    if match is None:
        raise EncodingError(f"account: {name!r} is not a liability account (buyer:<id>, supplier:<id> or {PAYOUTS_IN_FLIGHT})")
    if match.group(3):
        return "clearing", 0
    return match.group(1), int(match.group(2))


def is_liability_account(name: str) -> bool:
    return _LIABILITY_ACCOUNT.match(name) is not None


def check_leaf_rules(leaf: Leaf) -> None:
    """Check the rules between the fields of one leaf that its types alone cannot express."""
    values = leaf.values
    if leaf.kind is BALANCE:
        parse_liability_account(values["account"])
    elif leaf.kind is PAYOUT:
        parse_liability_account(values["debit_account"])
    elif leaf.kind is USAGE:
        if values["supplier_credit_nano_usd"] + values["platform_fee_nano_usd"] != values["cost_nano_usd"]:
            raise EncodingError(
                f"cost_nano_usd: {values['cost_nano_usd']} is not supplier_credit_nano_usd "
                f"{values['supplier_credit_nano_usd']} plus platform_fee_nano_usd {values['platform_fee_nano_usd']}"
            )
        if values["cost_nano_usd"] > values["hold_nano_usd"]:
            raise EncodingError(f"cost_nano_usd: {values['cost_nano_usd']} is over hold_nano_usd {values['hold_nano_usd']}")
        if values["status"] in UNCHARGED_USAGE_STATUSES and values["cost_nano_usd"] != 0:
            raise EncodingError(f"cost_nano_usd: a {values['status']} call must cost 0, not {values['cost_nano_usd']}")
        if values["cached_prompt_tokens"] + values["cache_write_tokens"] > values["prompt_tokens"]:
            raise EncodingError("cached_prompt_tokens: cached and cache-write tokens exceed prompt_tokens")
        if values["reasoning_tokens"] > values["completion_tokens"]:
            raise EncodingError("reasoning_tokens: more reasoning tokens than completion_tokens")
        if values["supplier_id"] == 0 and values["supplier_credit_nano_usd"] != 0:
            raise EncodingError("supplier_credit_nano_usd: a call without a supplier (supplier_id 0) credits no supplier")
    elif leaf.kind is ADJUSTMENT:
        if values["debit_account"] == values["credit_account"]:
            raise EncodingError(f"credit_account: the transfer debits and credits {values['debit_account']}")
        if not (is_liability_account(values["debit_account"]) or is_liability_account(values["credit_account"])):
            raise EncodingError("debit_account: an adjustment must touch a liability account")


def record_changes(leaf: Leaf) -> list[tuple[str, int]]:
    """Return how a record moves buyer and supplier balances, as (account, nano-USD) pairs.

    The closing balance of every account is its opening balance plus these changes, summed over
    the period's records. A pair with a zero change still names its account, which must then
    have a balance leaf.
    """
    values = leaf.values
    if leaf.kind is USAGE:
        changes = [(f"buyer:{values['account_id']}", -values["cost_nano_usd"])]
        if values["supplier_id"]:
            changes.append((f"supplier:{values['supplier_id']}", values["supplier_credit_nano_usd"]))
        return changes
    if leaf.kind is DEPOSIT:
        return [(f"buyer:{values['account_id']}", values["amount_nano_usd"])]
    if leaf.kind is PAYOUT:
        return [(values["debit_account"], -values["amount_nano_usd"])]
    if leaf.kind is ADJUSTMENT:
        changes = []
        if is_liability_account(values["debit_account"]):
            changes.append((values["debit_account"], -values["amount_nano_usd"]))
        if is_liability_account(values["credit_account"]):
            changes.append((values["credit_account"], values["amount_nano_usd"]))
        return changes
    raise AssertionError(f"{leaf.kind.name} leaves are not records")


def record_key(leaf: Leaf) -> str:
    """Return the identity of a leaf within its tree, unique per period."""
    values = leaf.values
    if leaf.kind is BALANCE:
        return values["account"]
    if leaf.kind is USAGE:
        return values["generation_id"]
    if leaf.kind is DEPOSIT:
        return f"{values['chain_id']}:0x{values['tx_hash'].hex()}:{values['log_index']}"
    if leaf.kind is PAYOUT:
        return values["payout_id"]
    return values["transfer_id"]


def balance_sort_key(leaf: Leaf) -> tuple[int, int]:
    """Canonical order of balance leaves: buyers by account id, suppliers by supplier id, then
    the payouts in flight."""
    kind, owner_id = parse_liability_account(leaf.values["account"])
    return (_LIABILITY_RANK[kind], owner_id)


def record_sort_key(leaf: Leaf) -> tuple[Any, ...]:
    """Canonical order of record leaves: by kind (usage, deposit, payout, adjustment), then key."""
    values = leaf.values
    rank = _RECORD_RANK[leaf.kind.name]
    if leaf.kind is DEPOSIT:
        return (rank, values["chain_id"], values["tx_hash"], values["log_index"])
    if leaf.kind is PAYOUT:
        return (rank, values["chain_id"], values["tx_hash"], record_key(leaf).encode("utf-8"))
    return (rank, record_key(leaf).encode("utf-8"))


def units_to_nano_usd_floor(amount_units: int, decimals: int) -> int:
    """Convert token base units to nano-USD at 1 token = 1 USD, rounding down.

    Reserves are valued with this rule, so a fraction of a nano-USD never counts as backing.
    """
    if decimals <= NANO_USD_DECIMALS:
        return amount_units * 10 ** (NANO_USD_DECIMALS - decimals)
    return amount_units // 10 ** (decimals - NANO_USD_DECIMALS)


def units_to_nano_usd_credit(amount_units: int, decimals: int) -> int:
    """Convert a deposit's token base units to the nano-USD it credits.

    This is the ledger's rule for deposits: exact up to 9 decimals, and with more decimals the
    fraction below one nano-USD is rounded up, in the buyer's favour.
    """
    if decimals <= NANO_USD_DECIMALS:
        return amount_units * 10 ** (NANO_USD_DECIMALS - decimals)
    divisor = 10 ** (decimals - NANO_USD_DECIMALS)
    return -(-amount_units // divisor)


def nano_usd_per_unit(decimals: int) -> int:
    """Return the nano-USD value of one base unit of a token, at least 1."""
    return 10 ** max(NANO_USD_DECIMALS - decimals, 0)
