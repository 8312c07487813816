"""Build and verify time of a settlement period with 1,000,000 usage records.

Run: python bench/settlement_tree.py [--records N]

Steps, each timed on its own:

- baseline: hashlib.sha256 of each encoded usage leaf, the cheapest way to fingerprint the same
  bytes (no domain tags, no tree, no keccak);
- encode: the ABI encoding of each leaf, with every field range-checked;
- keccak: keccak256 of each encoded leaf;
- tree: the records Merkle tree over the leaf hashes;
- export: writing the period as JSON lines;
- verify: the full verifier (`Verifier.verify`) on that file against anvil, which parses and
  range-checks every line, recomputes every hash, both trees and the ledger root, replays the
  balances and reads the commitment and the reserves from the chain.

Balances: 1,000 buyers, each funded by one adjustment, so the replay and reserves pass.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from chain.devchain import DEV_DEPLOYER, DEV_TREASURY, AnvilProcess, deploy_dev_stablecoin, fund_wallet  # noqa: E402
from chain.registry import PeriodCommitment, commit_period, deploy_registry  # noqa: E402
from marketplace.settlement.chain_checks import ChainClients  # noqa: E402
from marketplace.settlement.encoding import ZERO_BYTES32, keccak256  # noqa: E402
from marketplace.settlement.export import ExportHeader, ReserveSource, compute_ledger_root, export_lines  # noqa: E402
from marketplace.settlement.leaves import ADJUSTMENT, BALANCE, USAGE, Leaf  # noqa: E402
from marketplace.settlement.tree import MerkleSumTree, MerkleTree  # noqa: E402
from marketplace.settlement.verify import Verifier  # noqa: E402

BUYERS = 1_000
FUNDING_NANO_USD = 10**12
PERIOD_START = 1_700_000_000
PERIOD_END = PERIOD_START + 3_600


def usage_values(index: int) -> dict:
    cost = 10_000 + index % 997
    fee = cost * 500 // 10_000
    moment_us = PERIOD_START * 1_000_000 + index
    return {
        "generation_id": f"gen-{index:024x}",
        "account_id": 1 + index % BUYERS,
        "api_key_id": 1 + index % BUYERS,
        "listing_id": 1 + index % 7,
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
        "created_at_us": moment_us,
        "finished_at_us": moment_us,
        "settled_at_us": moment_us,
    }


def timed(label: str, results: list[tuple[str, float]], function):  # type: ignore[no-untyped-def]
    started = time.perf_counter()
    value = function()
    results.append((label, time.perf_counter() - started))
    print(f"  {label}: {results[-1][1]:.2f} s", flush=True)
    return value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1_000_000, help="Usage records in the period.")
    arguments = parser.parse_args()
    count = arguments.records
    print(f"python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} CPUs; {count:,} usage records")

    results: list[tuple[str, float]] = []
    leaves = [Leaf(USAGE, usage_values(index)) for index in range(count)]
    encoded = timed("encode (ABI, range-checked)", results, lambda: [leaf.encode() for leaf in leaves])
    timed("baseline: hashlib.sha256 of each encoded leaf", results, lambda: [hashlib.sha256(data).digest() for data in encoded])
    hashes = timed("keccak256 of each encoded leaf", results, lambda: [keccak256(data) for data in encoded])
    del encoded
    tree = timed("records tree over the leaf hashes", results, lambda: MerkleTree(hashes))

    spend: dict[int, int] = {}
    supplier_credit = 0
    for leaf in leaves:
        spend[leaf.values["account_id"]] = spend.get(leaf.values["account_id"], 0) + leaf.values["cost_nano_usd"]
        supplier_credit += leaf.values["supplier_credit_nano_usd"]
    fundings = [
        Leaf(ADJUSTMENT, {"transfer_id": f"grant-{buyer:04d}", "code": "grant", "debit_account": "platform:revenue", "credit_account": f"buyer:{buyer}", "amount_nano_usd": FUNDING_NANO_USD, "created_at_us": PERIOD_START * 1_000_000})
        for buyer in range(1, BUYERS + 1)
    ]
    balances = [Leaf(BALANCE, {"account": f"buyer:{buyer}", "balance_nano_usd": FUNDING_NANO_USD - spend.get(buyer, 0)}) for buyer in range(1, BUYERS + 1)]
    balances.append(Leaf(BALANCE, {"account": "supplier:1", "balance_nano_usd": supplier_credit}))
    record_pairs = list(zip(leaves, hashes, strict=True)) + [(leaf, leaf.hash()) for leaf in fundings]
    record_tree = MerkleTree([digest for _, digest in record_pairs]) if fundings else tree
    balance_pairs = [(leaf, leaf.hash()) for leaf in balances]
    balance_tree = MerkleSumTree([(digest, leaf.sum_nano_usd) for leaf, digest in balance_pairs])

    with AnvilProcess() as node, tempfile.TemporaryDirectory(prefix="tokenport-bench-") as workdir:
        w3 = node.web3()
        operator = DEV_DEPLOYER.local_account()
        registry = deploy_registry(w3, operator)
        token = deploy_dev_stablecoin(w3)
        fund_wallet(w3, token, DEV_TREASURY.address, balance_tree.total // 1_000 + 1, 0)
        sources = (ReserveSource(31337, 1, token.address, 6, DEV_TREASURY.address),)
        totals = {"total_usage_nano_usd": sum(spend.values()), "total_deposits_nano_usd": 0, "total_payouts_nano_usd": 0}
        fields = {
            "chain_id": 31337,
            "registry_address": registry.address,
            "period_id": 1,
            "from_timestamp": PERIOD_START,
            "to_timestamp": PERIOD_END,
            "previous_ledger_root": ZERO_BYTES32,
            "balances_root": balance_tree.root,
            "records_root": record_tree.root,
            "total_liabilities_nano_usd": balance_tree.total,
            "record_count": record_tree.leaf_count,
            **totals,
        }
        ledger_root = compute_ledger_root(reserve_sources=sources, **fields)
        header = ExportHeader(**fields, ledger_root=ledger_root, balance_count=len(balances), opening_balance_count=0, reserve_sources=sources)
        commitment = {name: value for name, value in fields.items() if name not in ("chain_id", "registry_address", "previous_ledger_root")}
        commit_period(w3, registry, operator, PeriodCommitment(ledger_root=ledger_root, **commitment))

        path = Path(workdir) / "period-00000001.jsonl"

        def write() -> None:
            with open(path, "w", encoding="ascii") as file:
                file.writelines(export_lines(header, [], balance_pairs, record_pairs))

        timed("export as JSON lines", results, write)
        size_mb = path.stat().st_size / 1e6
        del leaves, hashes, tree, record_pairs

        def verify():  # type: ignore[no-untyped-def]
            with open(path, encoding="ascii") as lines:
                return Verifier(ChainClients({31337: w3})).verify(lines)

        report = timed("verify (full verifier, against anvil)", results, verify)

    timings = dict(results)
    build_s = timings["encode (ABI, range-checked)"] + timings["keccak256 of each encoded leaf"] + timings["records tree over the leaf hashes"]
    baseline_s = timings["baseline: hashlib.sha256 of each encoded leaf"]
    print()
    print(f"export file: {size_mb:,.0f} MB; verifier result: {'passed' if report.ok else report.mismatches[:3]}")
    print(f"{'step':<48} {'seconds':>8} {'x baseline':>10}")
    for label, seconds in results:
        print(f"{label:<48} {seconds:>8.2f} {seconds / baseline_s:>10.1f}")
    print(f"{'build (encode + keccak + tree)':<48} {build_s:>8.2f} {build_s / baseline_s:>10.1f}")


if __name__ == "__main__":
    main()
