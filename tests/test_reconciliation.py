"""Reconciliation of the ledger against the chain: every kind of difference is found and named."""

from __future__ import annotations

from chain.devchain import DEV_BUYER, DEV_SUPPLIER_PAYOUT, DEV_TREASURY, fund_wallet, mine_blocks, send_token
from chain.watcher import DepositWatcher
from marketplace import ledger
from marketplace.deposits import deposit_transfer_id
from marketplace.listings import register_supplier
from marketplace.models import ChainCursor, Payout
from marketplace.payouts import PAYOUT_CLEARING, payout_transfer_id
from marketplace.reconciliation import reconcile
from tests.test_watcher import bind_wallet, buyer_account_id, chain, deposit_rows  # noqa: F401  (fixtures)

FAKE_TX = "0x" + "cd" * 32


def test_matching_ledger_reports_zero_differences(db, eth_tester_w3, dev_token, chain, buyer_account_id):  # noqa: F811
    fund_wallet(eth_tester_w3, dev_token, DEV_BUYER.address, 5_000_000, 0)
    send_token(eth_tester_w3, dev_token, DEV_BUYER.private_key, DEV_TREASURY.address, 5_000_000)
    mine_blocks(eth_tester_w3, chain.confirmations)
    DepositWatcher(db, chain, eth_tester_w3).poll_once()

    report = reconcile(db, [(chain, eth_tester_w3)]).to_dict()

    assert report["difference_count"] == 0
    assert report["alert_count"] == 0
    assert report["ok"] is True
    assert report["chain_deposits_nano_usd"] == 5_000_000_000
    assert report["ledger_deposits_nano_usd"] == 5_000_000_000
    assert report["reserves"] == [
        {
            "chain_id": chain.chain_id,
            "token_address": dev_token.address,
            "on_chain_nano_usd": 5_000_000_000,
            "ledger_nano_usd": 5_000_000_000,
            "rounding_allowance_nano_usd": 0,
        }
    ]


def test_credit_without_chain_transfer_reports_missing_amount(db, eth_tester_w3, dev_token, chain, buyer_account_id):  # noqa: F811
    DepositWatcher(db, chain, eth_tester_w3).poll_once()
    transfer_id = deposit_transfer_id(chain.chain_id, FAKE_TX, 3)
    with db.transaction() as session:
        source = ledger.get_or_create_account(session, ledger.chain_asset_account_name(chain.chain_id, dev_token.address), "chain_asset")
        buyer = ledger.get_buyer_account(session, buyer_account_id)
        ledger.transfer(session, transfer_id, source, buyer, 1_234_567_000, "deposit")

    report = reconcile(db, [(chain, eth_tester_w3)]).to_dict()

    assert report["ok"] is False
    assert report["difference_count"] == 2
    assert report["missing_on_chain_nano_usd"] == 1_234_567_000
    assert report["differences"][0]["kind"] == "missing_on_chain"
    assert report["differences"][0]["transfer_id"] == transfer_id
    # The treasury's balance is zero, so the ledger's claim on it exceeds the reserves as well.
    assert report["differences"][1]["kind"] == "reserves_below_ledger"
    assert report["differences"][1]["chain_amount_nano_usd"] == 0
    assert report["differences"][1]["ledger_amount_nano_usd"] == 1_234_567_000
    assert report["ledger_balanced"] is True


def test_skipped_block_reports_missing_credit(db, eth_tester_w3, dev_token, chain, buyer_account_id):  # noqa: F811
    fund_wallet(eth_tester_w3, dev_token, DEV_BUYER.address, 4_000_000, 0)
    send_token(eth_tester_w3, dev_token, DEV_BUYER.private_key, DEV_TREASURY.address, 4_000_000)
    mine_blocks(eth_tester_w3, chain.confirmations)
    # A watcher bug that moved the cursor over the deposit without crediting it.
    with db.transaction() as session:
        session.add(ChainCursor(chain_id=chain.chain_id, last_block=eth_tester_w3.eth.block_number))

    report = reconcile(db, [(chain, eth_tester_w3)])

    assert [(difference.kind, difference.chain_amount_nano_usd, difference.ledger_amount_nano_usd) for difference in report.differences] == [
        ("missing_in_ledger", 4_000_000_000, 0)
    ]
    assert report.ok is False


def test_double_credit_reports_amount_mismatch(db, eth_tester_w3, dev_token, chain, buyer_account_id):  # noqa: F811
    fund_wallet(eth_tester_w3, dev_token, DEV_BUYER.address, 2_000_000, 0)
    send_token(eth_tester_w3, dev_token, DEV_BUYER.private_key, DEV_TREASURY.address, 2_000_000)
    mine_blocks(eth_tester_w3, chain.confirmations)
    DepositWatcher(db, chain, eth_tester_w3).poll_once()
    (deposit,) = deposit_rows(db)
    # A second credit of the same log under another id, as a bug that ignored the reversal count would write.
    with db.transaction() as session:
        source = ledger.get_or_create_account(session, ledger.chain_asset_account_name(chain.chain_id, dev_token.address), "chain_asset")
        buyer = ledger.get_buyer_account(session, buyer_account_id)
        duplicate_id = deposit_transfer_id(chain.chain_id, deposit.tx_hash, deposit.log_index, 1)
        ledger.transfer(session, duplicate_id, source, buyer, 2_000_000_000, "deposit")

    report = reconcile(db, [(chain, eth_tester_w3)])

    kinds = [(difference.kind, difference.transfer_id, difference.chain_amount_nano_usd, difference.ledger_amount_nano_usd) for difference in report.differences]
    assert kinds == [
        ("amount_mismatch", deposit.transfer_id, 2_000_000_000, 4_000_000_000),
        ("reserves_below_ledger", ledger.chain_asset_account_name(chain.chain_id, dev_token.address), 2_000_000_000, 4_000_000_000),
    ]


def test_payout_missing_on_chain_reported(db, eth_tester_w3, dev_token, chain):  # noqa: F811
    account_id = bind_wallet(db, chain.chain_id, DEV_SUPPLIER_PAYOUT)
    with db.transaction() as session:
        supplier = register_supplier(session, account_id, "Supplier", DEV_SUPPLIER_PAYOUT.address)
        payout = Payout(
            supplier_id=supplier.id,
            chain_id=chain.chain_id,
            token_address=dev_token.address,
            to_address=DEV_SUPPLIER_PAYOUT.address,
            amount_units="3000000",
            amount_nano_usd=3_000_000_000,
            status="confirmed",
            failed_attempts=0,
            tx_hash=FAKE_TX,
        )
        session.add(payout)
        payable = ledger.get_or_create_account(session, ledger.supplier_account_name(supplier.id), "supplier_payable")
        clearing = ledger.get_or_create_account(session, PAYOUT_CLEARING, "payout_clearing")
        asset = ledger.get_or_create_account(session, ledger.chain_asset_account_name(chain.chain_id, dev_token.address), "chain_asset")
        ledger.transfer(session, "test-reserve", payable, clearing, 3_000_000_000, "payout_reserve")
        ledger.transfer(session, payout_transfer_id(chain.chain_id, FAKE_TX), clearing, asset, 3_000_000_000, "payout")

    report = reconcile(db, [(chain, eth_tester_w3)])

    assert [(difference.kind, difference.transfer_id) for difference in report.differences] == [
        ("payout_missing_on_chain", payout_transfer_id(chain.chain_id, FAKE_TX))
    ]
    assert report.payouts_confirmed_nano_usd == 3_000_000_000


def test_reconcile_task_runs_eagerly(monkeypatch, db, eth_tester_w3, dev_token, chain):  # noqa: F811
    import marketplace.tasks as tasks

    monkeypatch.setattr(tasks, "get_settings", lambda: type("S", (), {"database_url": db.url, "chains": [chain]})())
    monkeypatch.setattr(tasks, "_chain_connections", lambda: [(chain, eth_tester_w3)])

    result = tasks.reconcile_task.delay().get()

    assert result["ok"] is True
    assert result["difference_count"] == 0
    assert tasks.celery_app.conf.task_always_eager is True
