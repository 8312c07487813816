"""Reconciliation of the ledger against the chain, run as the Celery task in eager mode."""

from __future__ import annotations

import pytest

from chain.devchain import DEV_BUYER, DEV_TREASURY, fund_wallet, mine_blocks, send_token
from chain.watcher import DepositWatcher
from marketplace import ledger
from marketplace.deposits import deposit_transfer_id
from marketplace.reconciliation import reconcile
from marketplace.settings import ChainSettings, TokenSettings
from tests.test_watcher import buyer_account_id, chain  # noqa: F401  (fixtures)

FAKE_TX = "0x" + "cd" * 32


def test_matching_ledger_reports_zero_differences(db, eth_tester_w3, dev_token, chain, buyer_account_id):  # noqa: F811
    fund_wallet(eth_tester_w3, dev_token, DEV_BUYER.address, 5_000_000, 0)
    send_token(eth_tester_w3, dev_token, DEV_BUYER.private_key, DEV_TREASURY.address, 5_000_000)
    mine_blocks(eth_tester_w3, chain.confirmations)
    DepositWatcher(db, chain, eth_tester_w3).poll_once()

    report = reconcile(db, [(chain, eth_tester_w3)]).to_dict()

    assert report["difference_count"] == 0
    assert report["ok"] is True
    assert report["chain_deposits_nano_usd"] == 5_000_000_000
    assert report["ledger_deposits_nano_usd"] == 5_000_000_000


def test_credit_without_chain_transfer_reports_missing_amount(db, eth_tester_w3, dev_token, chain, buyer_account_id):  # noqa: F811
    DepositWatcher(db, chain, eth_tester_w3).poll_once()
    transfer_id = deposit_transfer_id(chain.chain_id, FAKE_TX, 3)
    with db.transaction() as session:
        source = ledger.get_or_create_account(session, ledger.chain_asset_account_name(chain.chain_id, dev_token.address), "chain_asset")
        buyer = ledger.get_buyer_account(session, buyer_account_id)
        ledger.transfer(session, transfer_id, source, buyer, 1_234_567_000, "deposit")

    report = reconcile(db, [(chain, eth_tester_w3)]).to_dict()

    assert report["ok"] is False
    assert report["difference_count"] == 1
    assert report["missing_on_chain_nano_usd"] == 1_234_567_000
    assert report["differences"][0]["kind"] == "missing_on_chain"
    assert report["differences"][0]["transfer_id"] == transfer_id
    assert report["ledger_balanced"] is True


def test_reconcile_task_runs_eagerly(monkeypatch, db, eth_tester_w3, dev_token, chain):  # noqa: F811
    import marketplace.tasks as tasks

    monkeypatch.setattr(tasks, "get_settings", lambda: type("S", (), {"database_url": db.url, "chains": [chain]})())
    monkeypatch.setattr(tasks, "_chain_connections", lambda: [(chain, eth_tester_w3)])

    result = tasks.reconcile_task.delay().get()

    assert result["ok"] is True
    assert result["difference_count"] == 0
    assert tasks.celery_app.conf.task_always_eager is True
