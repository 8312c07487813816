"""Gas of committing one settlement period, at 10 and at 10,000 usage records.

Run: python bench/settlement_gas.py

It starts anvil from contracts/node_modules, deploys the SettlementRegistry, builds real record
and balance trees for each record count, and commits two consecutive periods. The commitment
stores fixed-size roots, so its gas must not grow with the record count. Baselines measured in
the same run: a plain ETH transfer (the cheapest transaction) and posting every leaf hash as
calldata, which is what committing records one by one would cost at least.
"""

from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from web3 import Web3  # noqa: E402

from chain.contracts import send_transaction, wait_for_success  # noqa: E402
from chain.devchain import DEV_BUYER, DEV_DEPLOYER, AnvilProcess  # noqa: E402
from chain.registry import PeriodCommitment, commit_period, deploy_registry  # noqa: E402
from marketplace.settlement.encoding import ZERO_BYTES32  # noqa: E402
from marketplace.settlement.export import BuiltExport, build_export  # noqa: E402
from marketplace.settlement.leaves import BALANCE, USAGE, Leaf  # noqa: E402

# Period 1 pays once for the registry's first writes (lastPeriodId from zero), so the
# comparison is between later periods: 10, then 10,000, then 10 records again.
RECORD_COUNTS = (10, 10, 10_000, 10)
TRANSACTION_BASE_GAS = 21_000
CALLDATA_ZERO_BYTE_GAS = 4
CALLDATA_NONZERO_BYTE_GAS = 16
BUYERS = 100


def usage_leaf(index: int, moment_us: int) -> Leaf:
    cost = 10_000 + index % 997
    fee = cost * 500 // 10_000
    return Leaf(
        USAGE,
        {
            "generation_id": f"gen-{index:024x}",
            "account_id": 1 + index % BUYERS,
            "api_key_id": 1 + index % BUYERS,
            "listing_id": 1,
            "supplier_id": 1,
            "model": "deepseek/deepseek-chat",
            "status": "completed",
            "stream": index % 2 == 0,
            "usage_estimated": False,
            "prompt_tokens": 7 + index % 50,
            "completion_tokens": 12 + index % 70,
            "cached_prompt_tokens": 0,
            "cache_write_tokens": 0,
            "reasoning_tokens": 0,
            "hold_nano_usd": 2 * cost,
            "cost_nano_usd": cost,
            "supplier_credit_nano_usd": cost - fee,
            "platform_fee_nano_usd": fee,
            "created_at_us": moment_us - 100,
            "finished_at_us": moment_us - 10,
            "settled_at_us": moment_us,
        },
    )


def build_period(period_id: int, from_timestamp: int, to_timestamp: int, record_count: int, registry: str, previous_root: bytes) -> BuiltExport:
    records = sorted((usage_leaf(index, to_timestamp * 1_000_000 - 1) for index in range(record_count)), key=lambda leaf: leaf.values["generation_id"])
    balances = [Leaf(BALANCE, {"account": f"buyer:{buyer}", "balance_nano_usd": 10**9 + buyer}) for buyer in range(1, BUYERS + 1)]
    return build_export(
        chain_id=31337,
        registry_address=registry,
        period_id=period_id,
        from_timestamp=from_timestamp,
        to_timestamp=to_timestamp,
        previous_ledger_root=previous_root,
        opening=[],
        balances=balances,
        records=records,
        reserve_sources=(),
    )


def commitment_of(built: BuiltExport) -> PeriodCommitment:
    header = built.header
    return PeriodCommitment(
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


def calldata_gas(data: bytes) -> int:
    zeros = data.count(0)
    return zeros * CALLDATA_ZERO_BYTE_GAS + (len(data) - zeros) * CALLDATA_NONZERO_BYTE_GAS


def post_leaf_hashes(w3: Web3, built: BuiltExport) -> str:
    """Send every record's leaf hash as calldata to an account; return the gas used or why not."""
    data = b"".join(digest for _, digest in built.records)
    try:
        transaction_hash = send_transaction(w3, {"to": DEV_BUYER.address, "data": data, "gas": 30_000_000}, DEV_DEPLOYER.local_account())
        receipt = wait_for_success(w3, transaction_hash, "calldata baseline")
    except Exception as exc:  # noqa: BLE001 - the baseline reports any rejection instead of failing the run
        return f"rejected ({type(exc).__name__}; {len(data):,} bytes of calldata would need {TRANSACTION_BASE_GAS + calldata_gas(data):,} gas)"
    return f"{receipt['gasUsed']:,}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.parse_args()
    print(f"python {platform.python_version()} on {platform.machine()}, anvil from contracts/node_modules")

    with AnvilProcess() as node:
        w3 = node.web3()
        operator = DEV_DEPLOYER.local_account()
        registry = deploy_registry(w3, operator)
        transfer = wait_for_success(w3, send_transaction(w3, {"to": DEV_BUYER.address, "value": 1}, operator), "ETH transfer baseline")

        rows = []
        previous_root, from_timestamp = ZERO_BYTES32, 1_700_000_000
        for period_id, record_count in enumerate(RECORD_COUNTS, start=1):
            to_timestamp = from_timestamp + 3_600
            built = build_period(period_id, from_timestamp, to_timestamp, record_count, registry.address, previous_root)
            function = registry.functions.commitPeriod(*commitment_of(built).contract_args())
            calldata = bytes.fromhex(function.build_transaction({"from": operator.address})["data"][2:])
            receipt = commit_period(w3, registry, operator, commitment_of(built))
            execution = receipt["gasUsed"] - TRANSACTION_BASE_GAS - calldata_gas(calldata)
            rows.append((record_count, receipt["gasUsed"], execution, post_leaf_hashes(w3, built)))
            previous_root, from_timestamp = built.header.ledger_root, to_timestamp

    print(f"baseline, plain ETH transfer: {transfer['gasUsed']:,} gas")
    print(f"{'period':>6} {'records':>8} {'commitPeriod gasUsed':>21} {'execution gas':>14}  baseline, every leaf hash as calldata")
    for period_id, (record_count, gas_used, execution, baseline) in enumerate(rows, start=1):
        print(f"{period_id:>6} {record_count:>8,} {gas_used:>21,} {execution:>14,}  {baseline}")
    print("execution gas is gasUsed less the 21,000 base and the calldata gas")


if __name__ == "__main__":
    main()
