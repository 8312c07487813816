"""Tests for the SettlementRegistry contract and chain.registry.

Happy paths and the gas measurement run on eth-tester. Reverts run on anvil, because web3's
eth-tester provider turns custom error data into text, while anvil returns it for
``ContractCustomError.data``.
"""

from __future__ import annotations

import dataclasses

import pytest
from eth_abi import encode
from hexbytes import HexBytes
from web3 import Web3
from web3.contract import Contract
from web3.exceptions import ContractCustomError

from chain.contracts import deploy_contract, transact
from chain.devchain import DEV_BUYER, DEV_DEPLOYER, DEV_TREASURY
from chain.registry import (
    PeriodCommitment,
    commit_period,
    deploy_registry,
    fetch_period_commitments,
    last_period_id,
    read_period,
)

ONE_USD_NANO = 10**9
PERIOD_SECONDS = 3_600
# Well before any block timestamp of eth-tester or anvil, so every period below has ended.
FIRST_PERIOD_START = 1_700_000_000

# Intrinsic gas of a transaction without an access list (EIP-2028 calldata prices).
TRANSACTION_BASE_GAS = 21_000
CALLDATA_ZERO_BYTE_GAS = 4
CALLDATA_NONZERO_BYTE_GAS = 16


def error_data(signature: str, types: list[str], values: list[object]) -> str:
    """Return the revert data of custom error ``signature`` with its arguments, as 0x-hex."""
    selector = Web3.keccak(text=signature)[:4]
    return HexBytes(selector + encode(types, values)).to_0x_hex()


def make_period(period_id: int, record_count: int = 10, **changes: object) -> PeriodCommitment:
    """Return a valid commitment for ``period_id`` in a chain of one-hour periods."""
    from_timestamp = FIRST_PERIOD_START + (period_id - 1) * PERIOD_SECONDS
    fields = {
        "period_id": period_id,
        "from_timestamp": from_timestamp,
        "to_timestamp": from_timestamp + PERIOD_SECONDS,
        "ledger_root": Web3.keccak(text=f"ledger {period_id}"),
        "balances_root": Web3.keccak(text=f"balances {period_id}"),
        "records_root": Web3.keccak(text=f"records {period_id}"),
        "total_liabilities_nano_usd": 1_250 * ONE_USD_NANO + 123,
        "total_usage_nano_usd": 37 * ONE_USD_NANO + 456_789,
        "total_deposits_nano_usd": 500 * ONE_USD_NANO,
        "total_payouts_nano_usd": 21 * ONE_USD_NANO + 1,
        "record_count": record_count,
    }
    fields.update(changes)
    fields["ledger_root"] = bytes(fields["ledger_root"])
    fields["balances_root"] = bytes(fields["balances_root"])
    fields["records_root"] = bytes(fields["records_root"])
    return PeriodCommitment(**fields)


def calldata_gas(data: bytes) -> int:
    zero_bytes = data.count(0)
    return zero_bytes * CALLDATA_ZERO_BYTE_GAS + (len(data) - zero_bytes) * CALLDATA_NONZERO_BYTE_GAS


@pytest.fixture
def registry(eth_tester_w3: Web3) -> Contract:
    return deploy_registry(eth_tester_w3, DEV_TREASURY.local_account())


# --- commitments on eth-tester -----------------------------------------------------------


def test_registry_operator_and_empty_state(registry: Contract):
    assert registry.functions.operator().call() == DEV_TREASURY.address
    assert last_period_id(registry) == 0
    assert read_period(registry, 1) is None


def test_commit_emits_event_with_all_fields(eth_tester_w3: Web3, registry: Contract):
    period = make_period(1)

    receipt = commit_period(eth_tester_w3, registry, DEV_TREASURY.local_account(), period)

    (event,) = registry.events.PeriodCommitted().process_receipt(receipt)
    assert dict(event["args"]) == {
        "periodId": 1,
        "ledgerRoot": period.ledger_root,
        "balancesRoot": period.balances_root,
        "recordsRoot": period.records_root,
        "fromTimestamp": FIRST_PERIOD_START,
        "toTimestamp": FIRST_PERIOD_START + PERIOD_SECONDS,
        "totalLiabilitiesNanoUsd": 1_250_000_000_123,
        "totalUsageNanoUsd": 37_000_456_789,
        "totalDepositsNanoUsd": 500_000_000_000,
        "totalPayoutsNanoUsd": 21_000_000_001,
        "recordCount": 10,
    }
    (log,) = receipt["logs"]
    assert log["topics"] == [
        Web3.keccak(
            text="PeriodCommitted(uint64,bytes32,bytes32,bytes32,uint64,uint64,"
            "uint256,uint256,uint256,uint256,uint32)"
        ),
        HexBytes(encode(["uint64"], [1])),
    ]


def test_commit_stores_period(eth_tester_w3: Web3, registry: Contract):
    period = make_period(1, record_count=4_321)

    receipt = commit_period(eth_tester_w3, registry, DEV_TREASURY.local_account(), period)
    stored = read_period(registry, 1)

    assert last_period_id(registry) == 1
    assert stored is not None
    assert stored.commitment == period
    assert stored.committed_at_block == receipt["blockNumber"]
    assert read_period(registry, 2) is None
    assert read_period(registry, 0) is None


def test_consecutive_periods_readable_from_logs(eth_tester_w3: Web3, registry: Contract):
    w3 = eth_tester_w3
    operator = DEV_TREASURY.local_account()
    periods = [make_period(1), make_period(2, record_count=0), make_period(3, record_count=10_000)]
    receipts = [commit_period(w3, registry, operator, period) for period in periods]

    logs = fetch_period_commitments(registry, from_block=0)

    assert [log.commitment for log in logs] == periods
    assert [log.block_number for log in logs] == [receipt["blockNumber"] for receipt in receipts]
    assert [log.transaction_hash for log in logs] == [receipt["transactionHash"] for receipt in receipts]
    assert [log.block_hash for log in logs] == [receipt["blockHash"] for receipt in receipts]
    assert [log.log_index for log in logs] == [0, 0, 0]
    assert last_period_id(registry) == 3
    for period in periods:
        assert read_period(registry, period.period_id).commitment == period


def test_fetch_period_commitments_block_range(eth_tester_w3: Web3, registry: Contract):
    w3 = eth_tester_w3
    operator = DEV_TREASURY.local_account()
    first = commit_period(w3, registry, operator, make_period(1))
    second = commit_period(w3, registry, operator, make_period(2))

    only_second = fetch_period_commitments(registry, from_block=first["blockNumber"] + 1)
    only_first = fetch_period_commitments(
        registry, from_block=first["blockNumber"], to_block=second["blockNumber"] - 1
    )

    assert [log.commitment.period_id for log in only_second] == [2]
    assert [log.commitment.period_id for log in only_first] == [1]


def test_commit_gas_independent_of_record_count(eth_tester_w3: Web3):
    # Two fresh registries commit the same first period, except for its record count, so
    # both transactions write the same storage slots from zero.
    w3 = eth_tester_w3
    operator = DEV_TREASURY.local_account()
    gas_used = {}
    execution_gas = {}
    for record_count in (10, 10_000):
        registry = deploy_registry(w3, operator)
        receipt = commit_period(w3, registry, operator, make_period(1, record_count=record_count))
        transaction = w3.eth.get_transaction(receipt["transactionHash"])
        intrinsic_gas = TRANSACTION_BASE_GAS + calldata_gas(bytes(transaction["input"]))
        gas_used[record_count] = receipt["gasUsed"]
        execution_gas[record_count] = receipt["gasUsed"] - intrinsic_gas

    # Only the calldata differs: 10 encodes as one non-zero byte (0x0a), 10,000 as two
    # (0x2710), so the larger count costs 16 - 4 = 12 more intrinsic gas.
    assert execution_gas[10] == execution_gas[10_000]
    assert gas_used[10_000] - gas_used[10] == CALLDATA_NONZERO_BYTE_GAS - CALLDATA_ZERO_BYTE_GAS
    print(f"commitPeriod gasUsed: {gas_used}, execution gas: {execution_gas}")


def test_period_commitment_validates_fields():
    with pytest.raises(ValueError, match="must be after from_timestamp"):
        make_period(1, to_timestamp=FIRST_PERIOD_START)
    with pytest.raises(ValueError, match="invalid ledger_root"):
        make_period(1, ledger_root=b"\x01" * 31)
    with pytest.raises(ValueError, match="invalid period_id 0"):
        dataclasses.replace(make_period(1), period_id=0)
    with pytest.raises(ValueError, match="invalid record_count"):
        make_period(1, record_count=2**32)
    with pytest.raises(ValueError, match="invalid total_usage_nano_usd -1"):
        make_period(1, total_usage_nano_usd=-1)
    with pytest.raises(TypeError, match="invalid total_payouts_nano_usd"):
        make_period(1, total_payouts_nano_usd=1.5)


# --- rejections on anvil -----------------------------------------------------------------


def assert_commit_reverts(w3: Web3, registry: Contract, sender, period: PeriodCommitment, expected_data: str) -> None:
    with pytest.raises(ContractCustomError) as raised:
        commit_period(w3, registry, sender, period)
    assert raised.value.data == expected_data


@pytest.mark.anvil
def test_commit_by_non_operator_reverts(anvil_w3: Web3):
    registry = deploy_registry(anvil_w3, DEV_TREASURY.local_account())

    assert_commit_reverts(
        anvil_w3, registry, DEV_BUYER.local_account(), make_period(1),
        error_data("NotOperator(address)", ["address"], [DEV_BUYER.address]),
    )
    assert last_period_id(registry) == 0


@pytest.mark.anvil
def test_recommit_period_reverts(anvil_w3: Web3):
    operator = DEV_TREASURY.local_account()
    registry = deploy_registry(anvil_w3, operator)
    original = make_period(1)
    commit_period(anvil_w3, registry, operator, original)
    replacement = dataclasses.replace(original, ledger_root=b"\xee" * 32)

    assert_commit_reverts(
        anvil_w3, registry, operator, replacement,
        error_data("PeriodAlreadyCommitted(uint64)", ["uint64"], [1]),
    )
    assert read_period(registry, 1).commitment == original


@pytest.mark.anvil
def test_period_id_gap_reverts(anvil_w3: Web3):
    operator = DEV_TREASURY.local_account()
    registry = deploy_registry(anvil_w3, operator)
    no_start = error_data("PeriodIdNotNext(uint64,uint64)", ["uint64", "uint64"], [2, 1])

    assert_commit_reverts(anvil_w3, registry, operator, make_period(2), no_start)
    commit_period(anvil_w3, registry, operator, make_period(1))
    # Period 3 with period 2's times, so only the id is wrong.
    gap = dataclasses.replace(make_period(2), period_id=3)
    assert_commit_reverts(
        anvil_w3, registry, operator, gap,
        error_data("PeriodIdNotNext(uint64,uint64)", ["uint64", "uint64"], [3, 2]),
    )
    assert last_period_id(registry) == 1


@pytest.mark.anvil
def test_period_id_zero_reverts(anvil_w3: Web3):
    # PeriodCommitment rejects id 0, so the call is built by hand.
    operator = DEV_TREASURY.local_account()
    registry = deploy_registry(anvil_w3, operator)
    args = list(make_period(1).contract_args())
    args[0] = 0

    with pytest.raises(ContractCustomError) as raised:
        transact(anvil_w3, registry.functions.commitPeriod(*args), operator)

    assert raised.value.data == error_data("PeriodIdNotNext(uint64,uint64)", ["uint64", "uint64"], [0, 1])


@pytest.mark.anvil
def test_period_start_mismatch_reverts(anvil_w3: Web3):
    operator = DEV_TREASURY.local_account()
    registry = deploy_registry(anvil_w3, operator)
    commit_period(anvil_w3, registry, operator, make_period(1))
    previous_end = FIRST_PERIOD_START + PERIOD_SECONDS

    for from_timestamp in (previous_end - 1, previous_end + 1):
        period = make_period(2, from_timestamp=from_timestamp)
        assert_commit_reverts(
            anvil_w3, registry, operator, period,
            error_data("PeriodStartMismatch(uint64,uint64)", ["uint64", "uint64"], [from_timestamp, previous_end]),
        )
    assert last_period_id(registry) == 1


@pytest.mark.anvil
def test_period_not_ended_reverts(anvil_w3: Web3):
    operator = DEV_TREASURY.local_account()
    registry = deploy_registry(anvil_w3, operator)
    future_end = anvil_w3.eth.get_block("latest")["timestamp"] + 86_400
    period = make_period(1, to_timestamp=future_end)

    with pytest.raises(ContractCustomError) as raised:
        commit_period(anvil_w3, registry, operator, period)

    assert HexBytes(raised.value.data)[:4] == Web3.keccak(text="PeriodNotEnded(uint64,uint256)")[:4]
    assert last_period_id(registry) == 0


@pytest.mark.anvil
def test_empty_period_reverts(anvil_w3: Web3):
    # PeriodCommitment rejects to <= from, so the call is built by hand.
    operator = DEV_TREASURY.local_account()
    registry = deploy_registry(anvil_w3, operator)
    args = list(make_period(1).contract_args())
    args[2] = args[1]

    with pytest.raises(ContractCustomError) as raised:
        transact(anvil_w3, registry.functions.commitPeriod(*args), operator)

    assert raised.value.data == error_data(
        "EmptyPeriod(uint64,uint64)", ["uint64", "uint64"], [FIRST_PERIOD_START, FIRST_PERIOD_START]
    )


@pytest.mark.anvil
def test_periods_view_rejects_uncommitted(anvil_w3: Web3):
    operator = DEV_TREASURY.local_account()
    registry = deploy_registry(anvil_w3, operator)
    commit_period(anvil_w3, registry, operator, make_period(1))

    for period_id in (0, 2):
        with pytest.raises(ContractCustomError) as raised:
            registry.functions.periods(period_id).call()
        assert raised.value.data == error_data("PeriodNotCommitted(uint64)", ["uint64"], [period_id])


@pytest.mark.anvil
def test_registry_rejects_zero_operator(anvil_w3: Web3):
    with pytest.raises(ContractCustomError) as raised:
        deploy_contract(
            anvil_w3, "SettlementRegistry", "0x0000000000000000000000000000000000000000",
            sender=DEV_DEPLOYER.local_account(),
        )

    assert raised.value.data == error_data("ZeroOperator()", [], [])


@pytest.mark.anvil
def test_commit_gas_on_anvil(anvil_w3: Web3):
    w3 = anvil_w3
    operator = DEV_TREASURY.local_account()
    gas_used = {}
    execution_gas = {}
    for record_count in (10, 10_000):
        registry = deploy_registry(w3, operator)
        receipt = commit_period(w3, registry, operator, make_period(1, record_count=record_count))
        transaction = w3.eth.get_transaction(receipt["transactionHash"])
        intrinsic_gas = TRANSACTION_BASE_GAS + calldata_gas(bytes(transaction["input"]))
        gas_used[record_count] = receipt["gasUsed"]
        execution_gas[record_count] = receipt["gasUsed"] - intrinsic_gas

    assert execution_gas[10] == execution_gas[10_000]
    assert gas_used[10_000] - gas_used[10] == CALLDATA_NONZERO_BYTE_GAS - CALLDATA_ZERO_BYTE_GAS
    print(f"commitPeriod gasUsed on anvil: {gas_used}, execution gas: {execution_gas}")
