"""Deposit watcher throughput on anvil: empty blocks scanned per second, and deposit logs
credited per second.

Anvil runs from contracts/node_modules, the test stablecoin is deployed, and the watcher writes
to its own PostgreSQL schema. Each figure is one `DepositWatcher.poll_once` over a range that
is already confirmed, so it counts the whole scan: log queries in windows, receipt checks, and
one database transaction per window that credits the deposits and moves the cursor.
"""

from __future__ import annotations

import time

from eth_account import Account as EthAccount
from web3 import Web3

from bench.report import table
from bench.tokenport_setup import reset_schema
from chain.devchain import DEV_BUYER, DEV_TREASURY, AnvilProcess, deploy_dev_stablecoin, fund_wallet, mine_blocks
from chain.watcher import DepositWatcher
from marketplace.db import Database
from marketplace.models import Account, Wallet
from marketplace.schema import upgrade_schema
from marketplace.settings import ChainSettings, TokenSettings

SCHEMA = "tokenport_watcher_bench"
EMPTY_BLOCKS = 4_000
# anvil takes seconds per thousand blocks of anvil_mine, so the empty range is mined in parts.
MINE_CHUNK_BLOCKS = 500
DEPOSITS = 1_000
DEPOSITS_PER_BLOCK = 50
CONFIRMATIONS = 1
TRANSFER_GAS = 100_000


def _send_deposits(w3: Web3, token, count: int) -> None:  # type: ignore[no-untyped-def]
    """Send `count` token transfers from the development buyer to the treasury, DEPOSITS_PER_BLOCK
    to a block, signing locally with fixed gas and fees so that each costs one RPC call."""
    sender = EthAccount.from_key(DEV_BUYER.private_key)
    nonce = w3.eth.get_transaction_count(sender.address, "pending")
    chain_id = w3.eth.chain_id
    max_fee = 2 * w3.eth.get_block("latest")["baseFeePerGas"] + 10**9
    w3.manager.request_blocking("evm_setAutomine", [False])
    try:
        for index in range(count):
            transaction = token.functions.transfer(DEV_TREASURY.address, 1_000 + index).build_transaction(
                {
                    "from": sender.address,
                    "nonce": nonce + index,
                    "chainId": chain_id,
                    "gas": TRANSFER_GAS,
                    "maxFeePerGas": max_fee,
                    "maxPriorityFeePerGas": 10**9,
                }
            )
            w3.eth.send_raw_transaction(sender.sign_transaction(transaction).raw_transaction)
            if (index + 1) % DEPOSITS_PER_BLOCK == 0:
                mine_blocks(w3, 1)
        mine_blocks(w3, 1)
    finally:
        w3.manager.request_blocking("evm_setAutomine", [True])


def _poll_rate(watcher: DepositWatcher) -> tuple[float, int, int]:
    started = time.perf_counter()
    result = watcher.poll_once()
    elapsed_s = time.perf_counter() - started
    scanned = result.cursor_block - watcher_start(result)
    return elapsed_s, scanned, result.credited


def watcher_start(result) -> int:  # type: ignore[no-untyped-def]
    return result.windows[0][0] - 1 if result.windows else result.cursor_block


def run() -> str:
    database_url = reset_schema(SCHEMA)
    db = Database(database_url)
    upgrade_schema(db)
    with db.transaction() as session:
        # The sending wallet belongs to an account, so each deposit is credited to its balance.
        buyer = Account()
        session.add(buyer)
        session.flush()
        session.add(Wallet(account_id=buyer.id, address=DEV_BUYER.address))
    anvil = AnvilProcess().start()
    try:
        w3 = anvil.web3()
        token = deploy_dev_stablecoin(w3)
        fund_wallet(w3, token, DEV_BUYER.address, 10**12, 10**20)
        chain = ChainSettings(
            chain_id=31337,
            name="anvil",
            rpc_url=anvil.url,
            treasury_address=DEV_TREASURY.address,
            confirmations=CONFIRMATIONS,
            start_block=w3.eth.block_number + 1,
            tokens=[TokenSettings(symbol="USDC", address=token.address, decimals=6)],
        )

        for _ in range(EMPTY_BLOCKS // MINE_CHUNK_BLOCKS):
            mine_blocks(w3, MINE_CHUNK_BLOCKS)
        mine_blocks(w3, CONFIRMATIONS)
        empty_s, empty_blocks, _ = _poll_rate(DepositWatcher(db, chain, w3))

        _send_deposits(w3, token, DEPOSITS)
        mine_blocks(w3, CONFIRMATIONS)
        logs_s, log_blocks, logs = _poll_rate(DepositWatcher(db, chain, w3))
    finally:
        anvil.stop()
        db.dispose()

    rows = [
        ["empty blocks", f"{empty_blocks:,}", "0", f"{empty_s:.2f}", f"{empty_blocks / empty_s:,.0f}", ""],
        [
            f"blocks of {DEPOSITS_PER_BLOCK} deposits",
            f"{log_blocks:,}",
            f"{logs:,}",
            f"{logs_s:.2f}",
            f"{log_blocks / logs_s:,.1f}",
            f"{logs / logs_s:,.0f}",
        ],
    ]
    return "\n".join(
        [
            "### Deposit watcher on anvil",
            "",
            "One `DepositWatcher.poll_once` over each confirmed range; the deposits are token transfers to the treasury "
            "from a wallet bound to an account, so each is checked against its receipt and credited to that account.",
            "",
            table(["range", "blocks", "deposit logs", "seconds", "blocks per second", "logs per second"], rows),
        ]
    )
