"""Leaf encodings, the two Merkle trees and their proofs, with no database and no chain."""

from __future__ import annotations

import subprocess
import sys

import pytest
from eth_abi import encode
from hypothesis import given, settings
from hypothesis import strategies as st
from web3 import Web3

from marketplace.deposits import units_to_nano_usd
from marketplace.settlement.encoding import EncodingError, keccak256
from marketplace.settlement.export import ExportFormatError, parse_leaf_line
from marketplace.settlement.leaves import (
    ADJUSTMENT,
    BALANCE,
    DEPOSIT,
    LEAF_KINDS,
    PAYOUT,
    USAGE,
    Leaf,
    leaf_from_json,
    units_to_nano_usd_credit,
)
from marketplace.settlement.tree import (
    EMPTY_LEAF_HASH,
    NODE_TAG,
    SUM_NODE_TAG,
    MerkleSumTree,
    MerkleTree,
    ProofError,
    balances_root_from_proof,
    hash_sum_node,
    records_root_from_proof,
)

ADDRESS_A = Web3.to_checksum_address("0x" + "a1" * 20)
ADDRESS_B = Web3.to_checksum_address("0x" + "b2" * 20)


def usage_values(**changes: object) -> dict:
    values = {
        "generation_id": "gen-0001",
        "account_id": 7,
        "api_key_id": 3,
        "listing_id": 2,
        "supplier_id": 1,
        "model": "deepseek/deepseek-chat",
        "status": "completed",
        "stream": True,
        "usage_estimated": False,
        "prompt_tokens": 7,
        "completion_tokens": 12,
        "cached_prompt_tokens": 0,
        "cache_write_tokens": 0,
        "reasoning_tokens": 0,
        "hold_nano_usd": 30_496,
        "cost_nano_usd": 12_072,
        "supplier_credit_nano_usd": 11_469,
        "platform_fee_nano_usd": 603,
        "created_at_us": 1_700_000_000_000_000,
        "finished_at_us": 1_700_000_000_100_000,
        "settled_at_us": 1_700_000_000_100_050,
    }
    values.update(changes)
    return values


def sample_leaves() -> list[Leaf]:
    return [
        Leaf(BALANCE, {"account": "buyer:7", "balance_nano_usd": 4_999_987_928}),
        Leaf(USAGE, usage_values()),
        Leaf(
            DEPOSIT,
            {
                "chain_id": 31337,
                "tx_hash": bytes(range(32)),
                "log_index": 0,
                "block_number": 5,
                "block_hash": bytes(range(32, 64)),
                "token_address": ADDRESS_A,
                "token_decimals": 6,
                "from_address": ADDRESS_B,
                "to_address": ADDRESS_A,
                "amount_units": 5_000_000,
                "amount_nano_usd": 5_000_000_000,
                "account_id": 7,
                "credited_at_us": 1_700_000_000_000_000,
            },
        ),
        Leaf(
            PAYOUT,
            {
                "payout_id": "payout-1",
                "supplier_id": 1,
                "debit_account": "clearing:payouts",
                "chain_id": 31337,
                "tx_hash": bytes(32),
                "block_number": 9,
                "block_hash": bytes([1] * 32),
                "token_address": ADDRESS_A,
                "token_decimals": 6,
                "from_address": ADDRESS_A,
                "to_address": ADDRESS_B,
                "amount_units": 11,
                "amount_nano_usd": 11_000,
                "paid_at_us": 1_700_000_000_000_001,
            },
        ),
        Leaf(
            ADJUSTMENT,
            {
                "transfer_id": "correction-1",
                "code": "correction",
                "debit_account": "platform:revenue",
                "credit_account": "buyer:7",
                "amount_nano_usd": 1,
                "created_at_us": 1_700_000_000_000_002,
            },
        ),
    ]


# --- encodings ---------------------------------------------------------------------------------


@pytest.mark.parametrize("leaf", sample_leaves(), ids=lambda leaf: leaf.kind.name)
def test_leaf_encoding_equals_eth_abi_encode(leaf: Leaf):
    expected = encode(leaf.kind.encoder.abi_types(), [leaf.kind.tag, *(leaf.values[name] for name in leaf.kind.field_names())])

    assert leaf.encode() == expected
    assert leaf.hash() == Web3.keccak(expected)


@settings(max_examples=200, deadline=None)
@given(
    generation_id=st.text(min_size=0, max_size=40),
    model=st.text(min_size=0, max_size=50),
    tokens=st.integers(min_value=0, max_value=2**64 - 1),
    cost=st.integers(min_value=0, max_value=2**127),
)
def test_usage_encoding_matches_eth_abi_for_any_strings(generation_id: str, model: str, tokens: int, cost: int):
    values = usage_values(
        generation_id=generation_id,
        model=model,
        prompt_tokens=tokens,
        hold_nano_usd=cost,
        cost_nano_usd=cost,
        supplier_credit_nano_usd=cost,
        platform_fee_nano_usd=0,
    )
    leaf = Leaf(USAGE, values)
    expected = encode(USAGE.encoder.abi_types(), [USAGE.tag, *(values[name] for name in USAGE.field_names())])

    assert leaf.encode() == expected


def test_strings_are_length_prefixed():
    # Moving a character between two adjacent strings must change the hash.
    first = Leaf(USAGE, usage_values(generation_id="gen-1a", model="b"))
    second = Leaf(USAGE, usage_values(generation_id="gen-1", model="ab"))

    assert first.hash() != second.hash()


def test_leaf_tags_are_distinct():
    tags = {kind.tag for kind in LEAF_KINDS.values()} | {NODE_TAG, SUM_NODE_TAG}

    assert len(tags) == len(LEAF_KINDS) + 2


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("cost_nano_usd", -1, "outside uint128"),
        ("cost_nano_usd", 2**128, "outside uint128"),
        ("prompt_tokens", 2**64, "outside uint64"),
        ("prompt_tokens", True, "expected an integer"),
        ("prompt_tokens", 7.0, "expected an integer"),
        ("stream", 1, "expected true or false"),
        ("model", "x" * 201, "over the limit of 200"),
        ("generation_id", None, "expected a string"),
    ],
)
def test_out_of_range_value_is_rejected(field: str, value: object, message: str):
    leaf = Leaf(USAGE, usage_values(**{field: value}))

    with pytest.raises(EncodingError, match=message) as raised:
        leaf.encode()
    assert str(raised.value).startswith(field)


def test_address_must_be_checksummed():
    deposit = sample_leaves()[2]
    values = {**deposit.values, "to_address": ADDRESS_A.lower()}

    with pytest.raises(EncodingError, match="not in EIP-55 checksum form"):
        Leaf(DEPOSIT, values).encode()


def test_keccak256_is_ethereum_keccak():
    assert keccak256(b"") == Web3.keccak(b"")
    assert keccak256(b"tokenport") == Web3.keccak(text="tokenport")


@pytest.mark.parametrize("decimals", [0, 6, 9, 18])
def test_deposit_conversion_matches_ledger_rule(decimals: int):
    for units in (0, 1, 999, 10**decimals, 10**decimals + 1, 123_456_789_123_456_789):
        assert units_to_nano_usd_credit(units, decimals) == units_to_nano_usd(units, decimals)


# --- JSON forms ------------------------------------------------------------------------------


@pytest.mark.parametrize("leaf", sample_leaves(), ids=lambda leaf: leaf.kind.name)
def test_json_round_trip_keeps_the_hash(leaf: Leaf):
    parsed = leaf_from_json(leaf.kind.name, leaf.to_json())

    assert parsed.hash() == leaf.hash()


@pytest.mark.parametrize(
    ("field", "raw", "message"),
    [
        ("cost_nano_usd", "012072", "without leading zeros"),
        ("cost_nano_usd", "-1", "decimal digits"),
        ("cost_nano_usd", 12072, "decimal digits"),
        ("cost_nano_usd", "1e4", "decimal digits"),
        ("cost_nano_usd", str(2**128), "outside uint128"),
        ("stream", "true", "true or false"),
    ],
)
def test_json_number_forms_are_strict(field: str, raw: object, message: str):
    fields = Leaf(USAGE, usage_values()).to_json()
    fields[field] = raw

    with pytest.raises(EncodingError, match=message):
        leaf_from_json("usage", fields)


def test_json_rejects_unknown_and_missing_fields():
    fields = Leaf(USAGE, usage_values()).to_json()

    with pytest.raises(EncodingError, match="extra: not a field"):
        leaf_from_json("usage", {**fields, "extra": "1"})
    del fields["model"]
    with pytest.raises(EncodingError, match="model: missing"):
        leaf_from_json("usage", fields)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"supplier_credit_nano_usd": 11_470}, "is not supplier_credit_nano_usd"),
        ({"hold_nano_usd": 12_071}, "is over hold_nano_usd"),
        ({"status": "failed"}, "a failed call must cost 0"),
        ({"cached_prompt_tokens": 8}, "exceed prompt_tokens"),
        ({"supplier_id": 0}, "credits no supplier"),
    ],
)
def test_usage_rules_between_fields(changes: dict, message: str):
    fields = Leaf(USAGE, usage_values(**changes)).to_json()

    with pytest.raises(EncodingError, match=message):
        leaf_from_json("usage", fields)


def test_balance_account_must_be_buyer_or_supplier():
    with pytest.raises(EncodingError, match="is not a liability account"):
        leaf_from_json("balance", {"account": "platform:revenue", "balance_nano_usd": "1"})


def test_leaf_line_with_bad_field_names_its_record():
    line = '{"type":"balance","index":"0","leaf_hash":"0x' + "00" * 32 + '","fields":{"account":"buyer:7","balance_nano_usd":"-5"}}'

    parsed = parse_leaf_line(2, line)

    assert parsed.record == "balance buyer:7"
    assert parsed.error is not None and parsed.error.startswith("balance_nano_usd")


def test_leaf_line_extra_key_rejected():
    with pytest.raises(ExportFormatError, match="line 3: a leaf line must be an object"):
        parse_leaf_line(3, '{"type":"balance","index":"0","leaf_hash":"0x","fields":{},"note":"x"}')


# --- trees and proofs --------------------------------------------------------------------------


def digests(count: int) -> list[bytes]:
    return [keccak256(index.to_bytes(8, "big")) for index in range(count)]


@pytest.mark.parametrize("count", range(0, 18))
def test_every_records_proof_leads_to_root(count: int):
    tree = MerkleTree(digests(count))

    for index, leaf_hash in enumerate(digests(count)):
        assert records_root_from_proof(leaf_hash, index, count, tree.proof(index)) == tree.root


@pytest.mark.parametrize("count", range(0, 18))
def test_every_balance_proof_leads_to_root_and_total(count: int):
    leaves = [(digest, index * 1_000 + 1) for index, digest in enumerate(digests(count))]
    tree = MerkleSumTree(leaves)

    assert tree.total == sum(value for _, value in leaves)
    for index, (leaf_hash, value) in enumerate(leaves):
        assert balances_root_from_proof(leaf_hash, value, index, count, tree.proof(index)) == (tree.root, tree.total)


def test_root_commits_to_leaf_count():
    three = MerkleTree(digests(3))
    four = MerkleTree([*digests(3), EMPTY_LEAF_HASH])

    # The fourth position of a three-leaf tree is the empty leaf, so the tops agree; the roots must not.
    assert three.top == four.top
    assert three.root != four.root


def test_empty_trees_have_fixed_roots():
    assert MerkleTree([]).root == MerkleTree([]).root
    assert MerkleSumTree([]).total == 0
    assert MerkleTree([]).root != MerkleSumTree([]).root


def test_proof_with_wrong_length_is_rejected():
    tree = MerkleTree(digests(5))

    with pytest.raises(ProofError, match="needs 3 siblings, the proof has 2"):
        records_root_from_proof(digests(5)[0], 0, 5, tree.proof(0)[:2])


def test_proof_index_outside_tree_is_rejected():
    tree = MerkleTree(digests(4))

    with pytest.raises(ProofError, match="outside a tree of 4 leaves"):
        records_root_from_proof(digests(4)[0], 4, 4, tree.proof(0))


def test_balance_proof_with_changed_sibling_sum_fails():
    # Maxwell's original sum tree hashed only the total of the two children, so a sibling sum
    # could be traded against the user's own. Committing to both sums makes any change visible.
    leaves = [(digest, 100 * (index + 1)) for index, digest in enumerate(digests(4))]
    tree = MerkleSumTree(leaves)
    proof = tree.proof(0)
    sibling_hash, sibling_sum = proof[0]
    forged = [(sibling_hash, sibling_sum - 50), *proof[1:]]

    root, total = balances_root_from_proof(leaves[0][0], leaves[0][1] + 50, 0, 4, forged)

    assert total == tree.total
    assert root != tree.root


def test_balance_proof_rejects_sum_outside_uint128():
    leaves = [(digest, 5) for digest in digests(2)]
    tree = MerkleSumTree(leaves)
    negative_as_word = 2**256 - 5

    with pytest.raises(ProofError, match="sum out of range"):
        balances_root_from_proof(leaves[0][0], 5, 0, 2, [(tree.proof(0)[0][0], negative_as_word)])


def test_sum_node_rejects_overflow():
    with pytest.raises(EncodingError, match="node sum"):
        hash_sum_node(bytes(32), 2**127, bytes(32), 2**127)


def test_sum_tree_rejects_negative_balance():
    with pytest.raises(EncodingError, match="outside uint128"):
        MerkleSumTree([(bytes(32), -1)])


def test_verifier_modules_do_not_import_the_database_layer():
    modules = ["marketplace.settlement.verify", "marketplace.settlement.proof", "marketplace.settlement.report"]
    program = (
        "import sys\n"
        + "".join(f"import {module}\n" for module in modules)
        + "loaded = sorted(m for m in sys.modules if m.startswith(('sqlalchemy', 'alembic', 'marketplace.db', 'marketplace.models')))\n"
        + "print(','.join(loaded))\n"
    )
    completed = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=60)

    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip() == ""
