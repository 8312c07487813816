"""The verifier against anvil, on exports built from leaves for real on-chain transfers.

Each test commits a period to a SettlementRegistry on anvil: a 5 USDC deposit into the treasury,
one metered call, an 11-unit payout from the treasury to the supplier, and a 1 nano-USD
correction. The verifier must pass it as committed, and fail, naming the record, on any change.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
from web3 import Web3
from web3.contract import Contract

from chain.devchain import DEV_BUYER, DEV_DEPLOYER, DEV_SUPPLIER_PAYOUT, DEV_TREASURY, deploy_dev_stablecoin, fund_wallet, mine_blocks, send_token
from chain.registry import PeriodCommitment, commit_period, deploy_registry
from marketplace.settlement.chain_checks import ChainClients
from marketplace.settlement.encoding import ZERO_BYTES32
from marketplace.settlement.export import BuiltExport, ReserveSource, build_export
from marketplace.settlement.leaves import ADJUSTMENT, BALANCE, DEPOSIT, PAYOUT, USAGE, Leaf, leaf_from_json
from marketplace.settlement.verify import VerificationReport, Verifier

pytestmark = pytest.mark.anvil

CHAIN_ID = 31337
CONFIRMATIONS = 3
DEPOSIT_UNITS = 5_000_000
PAYOUT_UNITS = 11
BUYER = "buyer:7"
SUPPLIER = "supplier:1"


@dataclass
class Chain:
    w3: Web3
    token: Contract
    registry: Contract
    deposit: dict
    payout: dict


def transfer_facts(w3: Web3, tx_hash: bytes) -> dict:
    receipt = w3.eth.get_transaction_receipt(tx_hash)
    return {
        "tx_hash": bytes(tx_hash),
        "log_index": int(receipt["logs"][0]["logIndex"]),
        "block_number": receipt["blockNumber"],
        "block_hash": bytes(receipt["blockHash"]),
    }


@pytest.fixture
def chain(anvil_w3: Web3) -> Chain:
    token = deploy_dev_stablecoin(anvil_w3)
    fund_wallet(anvil_w3, token, DEV_BUYER.address, 100_000_000, 0)
    deposit = transfer_facts(anvil_w3, send_token(anvil_w3, token, DEV_BUYER.private_key, DEV_TREASURY.address, DEPOSIT_UNITS))
    payout = transfer_facts(anvil_w3, send_token(anvil_w3, token, DEV_TREASURY.private_key, DEV_SUPPLIER_PAYOUT.address, PAYOUT_UNITS))
    mine_blocks(anvil_w3, CONFIRMATIONS)
    registry = deploy_registry(anvil_w3, DEV_DEPLOYER.local_account())
    return Chain(anvil_w3, token, registry, deposit, payout)


def period_leaves(chain: Chain, moment_us: int) -> tuple[list[Leaf], list[Leaf]]:
    usage = Leaf(
        USAGE,
        {
            "generation_id": "gen-0001",
            "account_id": 7,
            "api_key_id": 3,
            "listing_id": 2,
            "supplier_id": 1,
            "model": "deepseek/deepseek-chat",
            "status": "completed",
            "stream": False,
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
            "created_at_us": moment_us - 10,
            "finished_at_us": moment_us - 5,
            "settled_at_us": moment_us,
        },
    )
    deposit = Leaf(
        DEPOSIT,
        {
            **chain.deposit,
            "chain_id": CHAIN_ID,
            "token_address": chain.token.address,
            "token_decimals": 6,
            "from_address": DEV_BUYER.address,
            "to_address": DEV_TREASURY.address,
            "amount_units": DEPOSIT_UNITS,
            "amount_nano_usd": DEPOSIT_UNITS * 1_000,
            "account_id": 7,
            "credited_at_us": moment_us - 100,
        },
    )
    payout_facts = {name: value for name, value in chain.payout.items() if name != "log_index"}
    payout = Leaf(
        PAYOUT,
        {
            **payout_facts,
            "payout_id": "payout-1",
            "supplier_id": 1,
            "debit_account": SUPPLIER,
            "chain_id": CHAIN_ID,
            "token_address": chain.token.address,
            "token_decimals": 6,
            "from_address": DEV_TREASURY.address,
            "to_address": DEV_SUPPLIER_PAYOUT.address,
            "amount_units": PAYOUT_UNITS,
            "amount_nano_usd": PAYOUT_UNITS * 1_000,
            "paid_at_us": moment_us + 1,
        },
    )
    correction = Leaf(
        ADJUSTMENT,
        {
            "transfer_id": "correction-1",
            "code": "correction",
            "debit_account": BUYER,
            "credit_account": "platform:revenue",
            "amount_nano_usd": 1,
            "created_at_us": moment_us + 2,
        },
    )
    balances = [
        Leaf(BALANCE, {"account": BUYER, "balance_nano_usd": DEPOSIT_UNITS * 1_000 - 12_072 - 1}),
        Leaf(BALANCE, {"account": SUPPLIER, "balance_nano_usd": 11_469 - PAYOUT_UNITS * 1_000}),
    ]
    return balances, [usage, deposit, payout, correction]


def commit(chain: Chain, built: BuiltExport) -> None:
    header = built.header
    commitment = PeriodCommitment(
        period_id=header.period_id,
        from_timestamp=header.from_timestamp,
        to_timestamp=header.to_timestamp,
        ledger_root=header.ledger_root,
        balances_root=header.balances_root,
        records_root=header.records_root,
        total_liabilities_nano_usd=header.total_liabilities_nano_usd,
        total_usage_nano_usd=header.total_usage_nano_usd,
        total_deposits_nano_usd=header.total_deposits_nano_usd,
        total_payouts_nano_usd=header.total_payouts_nano_usd,
        record_count=header.record_count,
    )
    commit_period(chain.w3, chain.registry, DEV_DEPLOYER.local_account(), commitment)


def reserve_sources(chain: Chain) -> tuple[ReserveSource, ...]:
    return (ReserveSource(CHAIN_ID, CONFIRMATIONS, chain.token.address, 6, DEV_TREASURY.address),)


def first_period(chain: Chain, *, balances: list[Leaf] | None = None, records: list[Leaf] | None = None) -> BuiltExport:
    to_timestamp = chain.w3.eth.get_block("latest")["timestamp"] - 1
    default_balances, default_records = period_leaves(chain, to_timestamp * 1_000_000 - 1_000)
    built = build_export(
        chain_id=CHAIN_ID,
        registry_address=chain.registry.address,
        period_id=1,
        from_timestamp=0,
        to_timestamp=to_timestamp,
        previous_ledger_root=ZERO_BYTES32,
        opening=[],
        balances=balances if balances is not None else default_balances,
        records=records if records is not None else default_records,
        reserve_sources=reserve_sources(chain),
    )
    commit(chain, built)
    return built


def verify_lines(chain: Chain, lines: list[str], **options) -> VerificationReport:
    return Verifier(ChainClients({CHAIN_ID: chain.w3}), **options).verify(lines)


def mutated(value: object) -> object:
    """A different value of the same JSON form."""
    if isinstance(value, bool):
        return not value
    assert isinstance(value, str)
    if value.isdigit():
        return str(int(value) + 1)
    if value.startswith("0x") and len(value) == 66:
        return value[:-1] + ("0" if value[-1] != "0" else "1")
    if value.startswith("0x") and len(value) == 42:
        return DEV_DEPLOYER.address if value != DEV_DEPLOYER.address else DEV_BUYER.address
    kind, _, number = value.rpartition(":")
    if kind and number.isdigit():
        return f"{kind}:{int(number) + 1}"
    return value + "x"


def rehashed(line: str) -> str:
    """The same line with leaf_hash recomputed from its fields, when they still parse."""
    data = json.loads(line)
    kind = "balance" if data["type"] == "opening_balance" else data["type"]
    try:
        data["leaf_hash"] = "0x" + leaf_from_json(kind, data["fields"]).hash().hex()
    except ValueError:
        pass
    return json.dumps(data, separators=(",", ":")) + "\n"


def test_committed_period_verifies(chain: Chain):
    built = first_period(chain)

    report = verify_lines(chain, list(built.lines()))

    assert report.mismatches == []
    assert report.deposits_checked == 1
    assert report.payouts_checked == 1
    assert report.total_liabilities_nano_usd == 4_999_987_927 + 469
    assert report.total_reserves_nano_usd == (DEPOSIT_UNITS - PAYOUT_UNITS) * 1_000


KIND_LINES = {"balance": 1, "usage": 3, "deposit": 4, "payout": 5, "adjustment": 6}


@pytest.mark.parametrize("kind", ["balance", "usage", "deposit", "payout", "adjustment"])
def test_changing_any_field_fails_and_names_the_record(chain: Chain, kind: str):
    lines = list(first_period(chain).lines())
    line_index = KIND_LINES[kind]
    original = json.loads(lines[line_index])
    assert original["type"] == kind

    for field, value in original["fields"].items():
        data = json.loads(lines[line_index])
        data["fields"][field] = mutated(value)
        changed = [*lines[:line_index], json.dumps(data) + "\n", *lines[line_index + 1 :]]

        report = verify_lines(chain, changed)

        named = [m for m in report.mismatches if f"(line {line_index + 1})" in m.record]
        assert named, f"changing {kind}.{field} was not reported against its line: {report.mismatches}"
        forged = verify_lines(chain, [*changed[:line_index], rehashed(changed[line_index]), *changed[line_index + 1 :]])
        assert not forged.ok, f"changing {kind}.{field} and its leaf_hash passed"


def test_changed_deposit_fails_flow_and_chain(chain: Chain):
    lines = list(first_period(chain).lines())
    data = json.loads(lines[KIND_LINES["deposit"]])
    data["fields"]["amount_units"] = str(DEPOSIT_UNITS + 1)
    data["fields"]["amount_nano_usd"] = str((DEPOSIT_UNITS + 1) * 1_000)
    lines[KIND_LINES["deposit"]] = rehashed(json.dumps(data))

    report = verify_lines(chain, lines)
    checks = {(mismatch.check, mismatch.record.split(" (line")[0]) for mismatch in report.mismatches}

    assert ("chain", f"deposit {CHAIN_ID}:0x{chain.deposit['tx_hash'].hex()}:{chain.deposit['log_index']}") in checks
    assert ("flow", f"balance {BUYER}") in checks
    assert ("root", "records_root") in checks


def test_removed_record_fails(chain: Chain):
    lines = list(first_period(chain).lines())

    report = verify_lines(chain, [*lines[:4], *lines[5:]])

    messages = [str(mismatch) for mismatch in report.mismatches]
    assert any("the header announces 4 leaves, the file has 3" in message for message in messages)
    assert any(mismatch.check == "root" and mismatch.record == "records_root" for mismatch in report.mismatches)


def test_repeated_record_fails(chain: Chain):
    lines = list(first_period(chain).lines())

    report = verify_lines(chain, [*lines[:4], lines[3], *lines[4:]])

    assert any(mismatch.check == "order" for mismatch in report.mismatches)
    assert any(mismatch.check == "format" and "out of sequence" in mismatch.message for mismatch in report.mismatches)


def test_changed_reserve_holder_fails(chain: Chain):
    lines = list(first_period(chain).lines())
    header = json.loads(lines[0])
    header["reserve_sources"][0]["holder_address"] = DEV_BUYER.address

    report = verify_lines(chain, [json.dumps(header) + "\n", *lines[1:]])

    assert any(mismatch.record == "ledger_root" for mismatch in report.mismatches)


def test_negative_balance_cannot_be_committed_or_verified(chain: Chain):
    lines = list(first_period(chain).lines())
    data = json.loads(lines[1])
    data["fields"]["balance_nano_usd"] = str(2**256 - 1)

    report = verify_lines(chain, [lines[0], json.dumps(data) + "\n", *lines[2:]])

    assert any(mismatch.check == "fields" and "outside uint128" in mismatch.message for mismatch in report.mismatches)


def test_reserves_below_liabilities_fail(chain: Chain):
    send_token(chain.w3, chain.token, DEV_TREASURY.private_key, DEV_DEPLOYER.address, 1_000_000)
    built = first_period(chain)

    report = verify_lines(chain, list(built.lines()))

    assert [mismatch.record for mismatch in report.mismatches] == ["proof of reserves"]
    assert "do not cover liabilities of 4999988396 nano-USD" in report.mismatches[0].message


def test_shallow_deposit_fails_depth_check(chain: Chain):
    built = first_period(chain)

    report = verify_lines(chain, list(built.lines()), min_confirmations=1_000)

    shallow = [m for m in report.mismatches if "fewer than the 1000 required" in m.message]
    assert {m.record.split(" (line")[0] for m in shallow} == {
        f"deposit {CHAIN_ID}:0x{chain.deposit['tx_hash'].hex()}:{chain.deposit['log_index']}",
        "payout payout-1",
    }


def test_uncommitted_period_fails(chain: Chain):
    to_timestamp = chain.w3.eth.get_block("latest")["timestamp"] - 1
    balances, records = period_leaves(chain, to_timestamp * 1_000_000 - 1_000)
    built = build_export(
        chain_id=CHAIN_ID,
        registry_address=chain.registry.address,
        period_id=1,
        from_timestamp=0,
        to_timestamp=to_timestamp,
        previous_ledger_root=ZERO_BYTES32,
        opening=[],
        balances=balances,
        records=records,
        reserve_sources=reserve_sources(chain),
    )

    report = verify_lines(chain, list(built.lines()))

    assert any(mismatch.record == "period 1" and "has not committed" in mismatch.message for mismatch in report.mismatches)


def test_second_period_replays_opening_balances(chain: Chain, tmp_path: Path):
    first = first_period(chain)
    mine_blocks(chain.w3, 1)
    to_timestamp = chain.w3.eth.get_block("latest")["timestamp"]
    correction = Leaf(
        ADJUSTMENT,
        {
            "transfer_id": "correction-2",
            "code": "correction",
            "debit_account": "platform:revenue",
            "credit_account": BUYER,
            "amount_nano_usd": 1,
            "created_at_us": first.header.to_timestamp * 1_000_000,
        },
    )
    opening = [leaf for leaf, _ in first.balances]
    balances = [Leaf(BALANCE, {"account": BUYER, "balance_nano_usd": opening[0].values["balance_nano_usd"] + 1}), opening[1]]
    second = build_export(
        chain_id=CHAIN_ID,
        registry_address=chain.registry.address,
        period_id=2,
        from_timestamp=first.header.to_timestamp,
        to_timestamp=to_timestamp,
        previous_ledger_root=first.header.ledger_root,
        opening=opening,
        balances=balances,
        records=[correction],
        reserve_sources=reserve_sources(chain),
    )
    commit(chain, second)
    lines = list(second.lines())

    assert verify_lines(chain, lines).mismatches == []
    data = json.loads(lines[1])
    assert data["type"] == "opening_balance"
    data["fields"]["balance_nano_usd"] = mutated(data["fields"]["balance_nano_usd"])
    report = verify_lines(chain, [lines[0], rehashed(json.dumps(data)), *lines[2:]])
    records = {mismatch.record for mismatch in report.mismatches}
    assert "opening balances" in records
    assert f"balance {BUYER}" in records


def test_first_period_with_opening_balances_fails(chain: Chain):
    built = first_period(chain)
    lines = list(built.lines())
    header = json.loads(lines[0])
    header["opening_balance_count"] = "1"
    opening = json.loads(lines[1])
    opening["type"] = "opening_balance"

    report = verify_lines(chain, [json.dumps(header) + "\n", json.dumps(opening) + "\n", *lines[1:]])

    assert any(mismatch.record == "opening balances" for mismatch in report.mismatches)
