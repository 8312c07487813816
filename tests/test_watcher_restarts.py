"""A watcher killed again and again still credits every deposit exactly once, with the exact amount.

The watcher runs as `python -m chain.watcher` in a subprocess behind a capped RPC proxy. The test
kills it with SIGKILL after a random number of committed block windows and a random few
milliseconds more, so some kills land inside a window's transaction.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from eth_account import Account
from web3 import Web3
from web3.contract import Contract

from chain.contracts import deploy_contract
from chain.devchain import DEV_BUYER, DEV_DEPLOYER, DEV_TREASURY, derive_dev_account, fund_wallet, mine_blocks
from chain.vault import account_ref_for, allow_token, deploy_vault, deposit_to_vault
from chain.watcher import DepositWatcher
from marketplace.deposits import deposit_transfer_id, units_to_nano_usd
from marketplace.reconciliation import reconcile
from marketplace.settings import TokenSettings
from tests.factories import buyer_balance
from tests.fake_rpc import CappedRpcProxy, LogCaps
from tests.test_watcher import (
    MAX_FEE_PER_GAS_WEI,
    PRIORITY_FEE_PER_GAS_WEI,
    TRANSFER_GAS,
    bind_wallet,
    chain_settings,
    deploy_token,
    deposit_rows,
    ledger_amounts,
    send_raw,
)

pytestmark = pytest.mark.anvil

REPO_ROOT = Path(__file__).resolve().parent.parent
DEPOSIT_COUNT = 1_000
VAULT_DEPOSIT_COUNT = 100
DEPOSITS_PER_BLOCK = 4
KILLS = 10
CONFIRMATIONS = 2
BUYERS = [DEV_BUYER, *(derive_dev_account(index) for index in range(4, 8))]
VAULT_GAS = 200_000


def _sign(w3: Web3, sender, nonce: int, to: str, data: str, gas: int) -> bytes:
    account = Account.from_key(sender.private_key)
    return account.sign_transaction(
        {
            "type": 2,
            "chainId": w3.eth.chain_id,
            "nonce": nonce,
            "to": to,
            "data": data,
            "value": 0,
            "gas": gas,
            "maxFeePerGas": MAX_FEE_PER_GAS_WEI,
            "maxPriorityFeePerGas": PRIORITY_FEE_PER_GAS_WEI,
        }
    ).raw_transaction


def _random_amount(rng: random.Random, decimals: int) -> int:
    if decimals == 18 and rng.random() < 0.3:
        # A fraction of a nano-USD, which the credit rounds up.
        return rng.randint(1, 10**21)
    return rng.randint(1, 5_000) * 10 ** (decimals - 2) + rng.randint(0, 99) * 10 ** max(decimals - 6, 0)


def _make_deposits(w3: Web3, tokens: list[tuple[Contract, int]], vault: Contract, account_ids: dict[str, int], rng: random.Random) -> dict[str, tuple[int, int]]:
    """Send DEPOSIT_COUNT deposits, DEPOSITS_PER_BLOCK per block, and return (token decimals, amount) by transaction hash."""
    nonces = {buyer.address: w3.eth.get_transaction_count(buyer.address) for buyer in BUYERS}
    plans = []
    for position in range(DEPOSIT_COUNT):
        buyer = BUYERS[position % len(BUYERS)]
        token, decimals = tokens[position % len(tokens)]
        amount = _random_amount(rng, decimals)
        if position % (DEPOSIT_COUNT // VAULT_DEPOSIT_COUNT) == 0:
            data = vault.encode_abi("deposit", args=[token.address, amount, account_ref_for(account_ids[buyer.address])])
            raw = _sign(w3, buyer, nonces[buyer.address], vault.address, data, VAULT_GAS)
        else:
            data = token.encode_abi("transfer", args=[DEV_TREASURY.address, amount])
            raw = _sign(w3, buyer, nonces[buyer.address], token.address, data, TRANSFER_GAS)
        nonces[buyer.address] += 1
        plans.append((raw, decimals, amount))

    w3.manager.request_blocking("evm_setAutomine", [False])
    expected = {}
    try:
        for start in range(0, DEPOSIT_COUNT, DEPOSITS_PER_BLOCK):
            batch = plans[start : start + DEPOSITS_PER_BLOCK]
            tx_hashes = send_raw(w3, [raw for raw, _, _ in batch], wait=False)
            mine_blocks(w3, 1)
            expected.update((tx_hash, (decimals, amount)) for tx_hash, (_, decimals, amount) in zip(tx_hashes, batch, strict=True))
    finally:
        w3.manager.request_blocking("evm_setAutomine", [True])
    return expected


def _run_watcher(environment: dict[str, str], until_block: int, log_path: Path) -> subprocess.Popen:
    with log_path.open("ab") as log_file:
        return subprocess.Popen(
            [sys.executable, "-m", "chain.watcher", "--until-block", str(until_block), "--progress"],
            cwd=REPO_ROOT,
            env=environment,
            stdout=subprocess.PIPE,
            stderr=log_file,
            text=True,
        )


def test_killed_watcher_credits_exactly_once(db, anvil_w3, tmp_path):
    rng = random.Random(20261204)
    usdc = deploy_token(anvil_w3, "USDC", 6)
    usds = deploy_token(anvil_w3, "USDS", 18, name="Test USD 18")
    usdt = deploy_contract(anvil_w3, "NoReturnToken", "Test Tether USD", "USDT", sender=DEV_DEPLOYER.local_account())
    tokens = [(usdc, 6), (usds, 18), (usdt, 6)]
    vault = deploy_vault(anvil_w3, DEV_TREASURY.local_account())
    for token, _ in tokens:
        allow_token(anvil_w3, vault, token.address, DEV_TREASURY.local_account())
    chain = chain_settings(anvil_w3, tokens, vault_address=vault.address, confirmations=CONFIRMATIONS, max_block_range=4, poll_interval_s=0.05)
    account_ids = {buyer.address: bind_wallet(db, chain.chain_id, buyer) for buyer in BUYERS}
    for buyer in BUYERS:
        for token, decimals in tokens:
            fund_wallet(anvil_w3, token, buyer.address, 10**12 * 10**decimals, 0)
            send_raw(anvil_w3, [_sign(anvil_w3, buyer, anvil_w3.eth.get_transaction_count(buyer.address), token.address, token.encode_abi("approve", args=[vault.address, 2**256 - 1]), 100_000)])
    chain = chain.model_copy(update={"start_block": anvil_w3.eth.block_number + 1})
    expected_by_tx = _make_deposits(anvil_w3, tokens, vault, account_ids, rng)
    mine_blocks(anvil_w3, CONFIRMATIONS)
    until_block = anvil_w3.eth.block_number - CONFIRMATIONS + 1

    caps = LogCaps(max_block_range=3, max_results=10)
    log_path = tmp_path / "watcher.log"
    kill_points = []
    started = time.monotonic()
    with CappedRpcProxy(anvil_w3.provider.endpoint_uri, caps) as proxy:
        environment = {
            **os.environ,
            "TOKENPORT_DATABASE_URL": db.url,
            "TOKENPORT_CHAINS": json.dumps([chain.model_copy(update={"rpc_url": proxy.url}).model_dump()]),
        }
        while len(kill_points) < KILLS:
            process = _run_watcher(environment, until_block, log_path)
            windows = rng.randint(1, 4)
            committed = [process.stdout.readline() for _ in range(windows)]
            time.sleep(rng.uniform(0, 0.05))
            if process.poll() is not None:
                pytest.fail(f"the watcher finished before kill {len(kill_points) + 1}; add deposits or shrink windows")
            os.kill(process.pid, signal.SIGKILL)
            process.wait(timeout=30)
            kill_points.append(committed[-1].strip())

        process = _run_watcher(environment, until_block, log_path)
        process.communicate(timeout=120)
        assert process.returncode == 0, log_path.read_text()[-3000:]
    elapsed_s = time.monotonic() - started

    log_indexes = _deposit_log_indexes(anvil_w3, chain, db, expected_by_tx)
    expected = {
        deposit_transfer_id(chain.chain_id, tx_hash, log_indexes[tx_hash]): units_to_nano_usd(amount, decimals)
        for tx_hash, (decimals, amount) in expected_by_tx.items()
    }
    assert len(expected) == DEPOSIT_COUNT
    assert ledger_amounts(db) == expected
    rows = deposit_rows(db)
    assert len(rows) == DEPOSIT_COUNT
    assert {row.status for row in rows} == {"credited"}
    assert sum(row.source == "vault" for row in rows) == VAULT_DEPOSIT_COUNT
    assert {row.amount_units for row in rows} == {str(amount) for _, amount in expected_by_tx.values()}
    assert sum(buyer_balance(db, account_id).posted_nano_usd for account_id in account_ids.values()) == sum(expected.values())
    report = reconcile(db, [(chain, anvil_w3)])
    assert report.differences == []
    assert report.ok is True
    print(f"\n{DEPOSIT_COUNT} deposits, {len(kill_points)} kills after windows {kill_points}, {elapsed_s:.1f} s of watching")


def _deposit_log_indexes(w3: Web3, chain, db, expected_by_tx: dict[str, tuple[int, int]]) -> dict[str, int]:
    watcher = DepositWatcher(db, chain, w3)
    indexes = {}
    for tx_hash in expected_by_tx:
        receipt = w3.eth.get_transaction_receipt(tx_hash)
        (deposit_log,) = [log for log in receipt["logs"] if watcher.parse_log(log) is not None]
        indexes[tx_hash] = int(deposit_log["logIndex"])
    return indexes


def test_fee_on_transfer_credits_received_amount(db, anvil_w3):
    fee_token = deploy_contract(
        anvil_w3, "FeeOnTransferToken", "Fee USD", "FUSD", 100, DEV_DEPLOYER.address, sender=DEV_DEPLOYER.local_account()
    )
    vault = deploy_vault(anvil_w3, DEV_TREASURY.local_account())
    allow_token(anvil_w3, vault, fee_token.address, DEV_TREASURY.local_account())
    chain = chain_settings(anvil_w3, [], vault_address=vault.address, confirmations=1)
    chain = chain.model_copy(update={"tokens": [TokenSettings(symbol="FUSD", address=fee_token.address, decimals=6)]})
    account_id = bind_wallet(db, chain.chain_id, DEV_BUYER)
    fund_wallet(anvil_w3, fee_token, DEV_BUYER.address, 100_000_000, 0)

    # A 1% fee: 10 tokens sent, 9.9 arrive, by plain transfer and through the vault.
    send_raw(anvil_w3, [_sign(anvil_w3, DEV_BUYER, anvil_w3.eth.get_transaction_count(DEV_BUYER.address), fee_token.address, fee_token.encode_abi("transfer", args=[DEV_TREASURY.address, 10_000_000]), TRANSFER_GAS)])
    deposit_to_vault(anvil_w3, vault, fee_token, DEV_BUYER.private_key, 10_000_000, account_ref_for(account_id))
    DepositWatcher(db, chain, anvil_w3).poll_once()

    rows = deposit_rows(db)
    assert [(row.source, row.amount_units, row.status) for row in rows] == [
        ("transfer", "9900000", "credited"),
        ("vault", "9900000", "credited"),
    ]
    assert fee_token.functions.balanceOf(DEV_TREASURY.address).call() == 9_900_000
    assert fee_token.functions.balanceOf(vault.address).call() == 9_900_000
    assert buyer_balance(db, account_id).posted_nano_usd == 19_800_000_000
    assert reconcile(db, [(chain, anvil_w3)]).ok is True
