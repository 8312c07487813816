"""Reorganisations on anvil (`anvil_reorg`): a deposit is credited once, only while its log is canonical."""

from __future__ import annotations

import time

import pytest
from web3 import Web3
from web3.exceptions import TransactionNotFound

from chain.devchain import DEV_BUYER, DEV_TREASURY, fund_wallet, mine_blocks
from chain.watcher import DepositWatcher
from marketplace import ledger
from marketplace.deposits import deposit_reversal_transfer_id, deposit_transfer_id, receivable_account_name
from marketplace.reconciliation import reconcile
from tests.factories import buyer_balance
from tests.test_watcher import bind_wallet, chain_settings, deploy_token, deposit_rows, ledger_amounts, send_raw, sign_transfers

pytestmark = pytest.mark.anvil

DEPOSIT_UNITS = 5_000_000  # 5 USDC
DEPOSIT_NANO_USD = 5_000_000_000


def reorg(w3: Web3, depth: int, reincluded: list[tuple[bytes, int]] | None = None) -> None:
    """Replace the last `depth` blocks, putting each (raw transaction, offset) into the new block at that offset.

    Returns once the node serves the new blocks and the receipts of the included transactions,
    because anvil may return from the call before it serves them.
    """
    first_replaced = w3.eth.block_number - depth + 1
    old_hash = w3.eth.get_block(first_replaced)["hash"]
    pairs = [["0x" + bytes(raw).hex(), offset] for raw, offset in (reincluded or [])]
    w3.manager.request_blocking("anvil_reorg", [depth, pairs])

    deadline = time.monotonic() + 10
    while True:
        replaced = w3.eth.get_block(first_replaced)["hash"] != old_hash
        included = all(_has_receipt(w3, Web3.keccak(raw)) for raw, _ in (reincluded or []))
        if replaced and included:
            return
        assert time.monotonic() < deadline, "anvil did not apply the reorganisation within 10 s"
        time.sleep(0.05)


def _has_receipt(w3: Web3, tx_hash: bytes) -> bool:
    try:
        return w3.eth.get_transaction_receipt(tx_hash) is not None
    except TransactionNotFound:
        return False


@pytest.fixture
def usdc(anvil_w3):
    token = deploy_token(anvil_w3, "USDC", 6)
    fund_wallet(anvil_w3, token, DEV_BUYER.address, 100_000_000, 0)
    return token


def test_reorg_before_depth_never_credits(db, anvil_w3, usdc):
    chain = chain_settings(anvil_w3, [(usdc, 6)], confirmations=3)
    account_id = bind_wallet(db, chain.chain_id, DEV_BUYER)
    watcher = DepositWatcher(db, chain, anvil_w3)
    (raw,) = sign_transfers(anvil_w3, usdc, DEV_BUYER, DEV_TREASURY.address, [DEPOSIT_UNITS])
    send_raw(anvil_w3, [raw])
    watcher.poll_once()
    assert [row.status for row in deposit_rows(db)] == ["pending"]

    reorg(anvil_w3, 1)
    mine_blocks(anvil_w3, 5)
    result = watcher.poll_once()

    (deposit,) = deposit_rows(db)
    assert deposit.status == "orphaned"
    assert result.orphaned == 1
    assert result.credited == 0
    assert ledger_amounts(db) == {}
    assert buyer_balance(db, account_id).posted_nano_usd == 0
    assert reconcile(db, [(chain, anvil_w3)]).ok is True


def test_reorg_after_credit_reverses_and_alerts(db, anvil_w3, usdc):
    chain = chain_settings(anvil_w3, [(usdc, 6)], confirmations=1)
    account_id = bind_wallet(db, chain.chain_id, DEV_BUYER)
    watcher = DepositWatcher(db, chain, anvil_w3)
    (tx_hash,) = send_raw(anvil_w3, sign_transfers(anvil_w3, usdc, DEV_BUYER, DEV_TREASURY.address, [DEPOSIT_UNITS]))
    watcher.poll_once()
    assert buyer_balance(db, account_id).posted_nano_usd == DEPOSIT_NANO_USD

    reorg(anvil_w3, 1)
    mine_blocks(anvil_w3, 1)
    result = watcher.poll_once()

    (deposit,) = deposit_rows(db)
    assert result.reorg_detected is True
    assert result.reversed == 1
    assert deposit.status == "reversed"
    assert deposit.reversal_count == 1
    assert deposit.shortfall_nano_usd == 0
    assert buyer_balance(db, account_id).posted_nano_usd == 0
    assert ledger_amounts(db, "deposit") == {deposit_transfer_id(chain.chain_id, tx_hash, 0): DEPOSIT_NANO_USD}
    assert ledger_amounts(db, "deposit_reversal") == {deposit_reversal_transfer_id(chain.chain_id, tx_hash, 0): DEPOSIT_NANO_USD}

    report = reconcile(db, [(chain, anvil_w3)])
    assert report.differences == []
    assert report.ledger_balanced is True
    assert [(alert.kind, alert.subject, alert.amount_nano_usd) for alert in report.alerts] == [
        ("deposit_reversed", deposit_transfer_id(chain.chain_id, tx_hash, 0), DEPOSIT_NANO_USD)
    ]


def test_reversal_after_spending_records_shortfall(db, anvil_w3, usdc):
    chain = chain_settings(anvil_w3, [(usdc, 6)], confirmations=1)
    account_id = bind_wallet(db, chain.chain_id, DEV_BUYER)
    watcher = DepositWatcher(db, chain, anvil_w3)
    send_raw(anvil_w3, sign_transfers(anvil_w3, usdc, DEV_BUYER, DEV_TREASURY.address, [DEPOSIT_UNITS]))
    watcher.poll_once()
    spent_nano_usd = 2_000_000_000
    with db.transaction() as session:
        buyer = ledger.get_buyer_account(session, account_id)
        revenue = ledger.get_or_create_account(session, ledger.PLATFORM_REVENUE, "platform_revenue")
        ledger.transfer(session, "test-spend", buyer, revenue, spent_nano_usd, "post")

    reorg(anvil_w3, 1)
    mine_blocks(anvil_w3, 1)
    watcher.poll_once()

    (deposit,) = deposit_rows(db)
    assert deposit.status == "reversed"
    assert deposit.shortfall_nano_usd == spent_nano_usd
    assert buyer_balance(db, account_id).posted_nano_usd == 0
    report = reconcile(db, [(chain, anvil_w3)])
    assert report.receivables_nano_usd == spent_nano_usd
    assert report.negative_buyer_balances == 0
    assert report.ledger_balanced is True
    assert report.ok is False
    assert ("receivable_outstanding", receivable_account_name(account_id), spent_nano_usd) in [
        (alert.kind, alert.subject, alert.amount_nano_usd) for alert in report.alerts
    ]

    # The next deposit pays the shortfall off first.
    send_raw(anvil_w3, sign_transfers(anvil_w3, usdc, DEV_BUYER, DEV_TREASURY.address, [DEPOSIT_UNITS]))
    watcher.poll_once()

    assert buyer_balance(db, account_id).posted_nano_usd == DEPOSIT_NANO_USD - spent_nano_usd
    report = reconcile(db, [(chain, anvil_w3)])
    assert report.receivables_nano_usd == 0
    assert report.differences == []
    assert report.ok is True


def test_reincluded_deposit_credited_once(db, anvil_w3, usdc):
    chain = chain_settings(anvil_w3, [(usdc, 6)], confirmations=3)
    account_id = bind_wallet(db, chain.chain_id, DEV_BUYER)
    watcher = DepositWatcher(db, chain, anvil_w3)
    (raw,) = sign_transfers(anvil_w3, usdc, DEV_BUYER, DEV_TREASURY.address, [DEPOSIT_UNITS])
    (tx_hash,) = send_raw(anvil_w3, [raw])
    first_block = anvil_w3.eth.get_transaction_receipt(tx_hash)["blockNumber"]
    mine_blocks(anvil_w3, 1)
    watcher.poll_once()

    # The transaction's block and the one after are replaced; the transaction lands in the second.
    reorg(anvil_w3, 2, [(raw, 1)])
    watcher.poll_once()
    (pending,) = deposit_rows(db)
    mine_blocks(anvil_w3, 3)
    watcher.poll_once()

    (deposit,) = deposit_rows(db)
    new_block = anvil_w3.eth.get_transaction_receipt(tx_hash)["blockNumber"]
    assert new_block == first_block + 1
    assert pending.status == "pending"
    assert pending.block_number == new_block
    assert deposit.status == "credited"
    assert deposit.block_number == new_block
    assert deposit.block_hash == anvil_w3.eth.get_block(new_block)["hash"].to_0x_hex()
    assert ledger_amounts(db) == {deposit_transfer_id(chain.chain_id, tx_hash, 0): DEPOSIT_NANO_USD}
    assert buyer_balance(db, account_id).posted_nano_usd == DEPOSIT_NANO_USD


def test_moved_credited_deposit_stays_credited(db, anvil_w3, usdc):
    chain = chain_settings(anvil_w3, [(usdc, 6)], confirmations=1)
    account_id = bind_wallet(db, chain.chain_id, DEV_BUYER)
    watcher = DepositWatcher(db, chain, anvil_w3)
    (raw,) = sign_transfers(anvil_w3, usdc, DEV_BUYER, DEV_TREASURY.address, [DEPOSIT_UNITS])
    (tx_hash,) = send_raw(anvil_w3, [raw])
    mine_blocks(anvil_w3, 1)
    watcher.poll_once()

    reorg(anvil_w3, 2, [(raw, 1)])
    result = watcher.poll_once()

    (deposit,) = deposit_rows(db)
    assert result.reorg_detected is True
    assert result.moved == 1
    assert result.reversed == 0
    assert deposit.status == "credited"
    assert deposit.block_number == anvil_w3.eth.get_transaction_receipt(tx_hash)["blockNumber"]
    assert ledger_amounts(db) == {deposit_transfer_id(chain.chain_id, tx_hash, 0): DEPOSIT_NANO_USD}
    assert ledger_amounts(db, "deposit_reversal") == {}
    assert buyer_balance(db, account_id).posted_nano_usd == DEPOSIT_NANO_USD


def test_reversed_then_reincluded_credited_once(db, anvil_w3, usdc):
    chain = chain_settings(anvil_w3, [(usdc, 6)], confirmations=1)
    account_id = bind_wallet(db, chain.chain_id, DEV_BUYER)
    watcher = DepositWatcher(db, chain, anvil_w3)
    (raw,) = sign_transfers(anvil_w3, usdc, DEV_BUYER, DEV_TREASURY.address, [DEPOSIT_UNITS])
    (tx_hash,) = send_raw(anvil_w3, [raw])
    watcher.poll_once()
    reorg(anvil_w3, 1)
    mine_blocks(anvil_w3, 1)
    watcher.poll_once()
    assert buyer_balance(db, account_id).posted_nano_usd == 0

    # The dropped transaction is broadcast again and mined in a new block.
    send_raw(anvil_w3, [raw])
    watcher.poll_once()

    (deposit,) = deposit_rows(db)
    assert deposit.status == "credited"
    assert deposit.reversal_count == 1
    assert ledger_amounts(db) == {
        deposit_transfer_id(chain.chain_id, tx_hash, 0): DEPOSIT_NANO_USD,
        deposit_transfer_id(chain.chain_id, tx_hash, 0, 1): DEPOSIT_NANO_USD,
    }
    assert sum(ledger_amounts(db, "deposit_reversal").values()) == DEPOSIT_NANO_USD
    assert buyer_balance(db, account_id).posted_nano_usd == DEPOSIT_NANO_USD
    report = reconcile(db, [(chain, anvil_w3)])
    assert report.differences == []
    assert report.ledger_deposits_nano_usd == DEPOSIT_NANO_USD
    assert report.chain_deposits_nano_usd == DEPOSIT_NANO_USD
