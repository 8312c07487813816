"""Supplier payouts on anvil: paid on-chain once, through crashes, dropped, stuck and reverted transactions."""

from __future__ import annotations

import pytest
from sqlalchemy import select
from web3 import Web3

from chain.devchain import DEV_DEPLOYER, DEV_SUPPLIER_PAYOUT, DEV_TREASURY, fund_wallet, mine_blocks
from chain.payouts import PayoutSender, treasury_signer
from marketplace import ledger, payouts
from marketplace.celery_app import create_celery
from marketplace.db import Database
from marketplace.listings import register_supplier
from marketplace.models import Payout, PayoutAttempt
from marketplace.reconciliation import reconcile
from marketplace.settings import ChainSettings, Settings
from tests.test_watcher import bind_wallet, chain_settings, deploy_token, ledger_amounts, send_raw, sign_transfers

pytestmark = pytest.mark.anvil

CONFIRMATIONS = 2
TREASURY_UNITS = 1_000_000_000  # 1,000 USDC
EARNED_NANO_USD = 12_345_678_912  # $12.345678912: pays 12.345678 USDC, and 912 nano-USD stay
PAID_UNITS = 12_345_678
PAID_NANO_USD = 12_345_678_000
# Enough gas for the transaction to be mined, too little for the token transfer to finish.
OUT_OF_GAS_LIMIT = 30_000
_TRANSFER_ABI = [
    {
        "name": "transfer",
        "type": "function",
        "stateMutability": "nonpayable",
        "inputs": [{"name": "to", "type": "address"}, {"name": "value", "type": "uint256"}],
        "outputs": [],
    },
    {
        "name": "balanceOf",
        "type": "function",
        "stateMutability": "view",
        "inputs": [{"name": "account", "type": "address"}],
        "outputs": [{"name": "", "type": "uint256"}],
    },
]


class SimulatedKill(BaseException):
    """Raised at a chosen point to stop a payout run the way a killed worker stops, without any handler running."""


@pytest.fixture
def payout_chain(anvil_w3) -> tuple[Web3, ChainSettings]:
    token = deploy_token(anvil_w3, "USDC", 6)
    fund_wallet(anvil_w3, token, DEV_TREASURY.address, TREASURY_UNITS, 0)
    return anvil_w3, chain_settings(anvil_w3, [(token, 6)], confirmations=CONFIRMATIONS)


@pytest.fixture
def settings(db, payout_chain) -> Settings:
    return Settings(database_url=db.url, chains=[payout_chain[1]], payout_threshold_nano_usd=1_000_000_000)


@pytest.fixture
def supplier_id(db, payout_chain) -> int:
    account_id = bind_wallet(db, payout_chain[1].chain_id, DEV_SUPPLIER_PAYOUT)
    with db.transaction() as session:
        supplier = register_supplier(session, account_id, "Test Supplier", DEV_SUPPLIER_PAYOUT.address)
        clearing = ledger.get_or_create_account(session, ledger.USAGE_CLEARING, "usage_clearing")
        payable = ledger.get_or_create_account(session, ledger.supplier_account_name(supplier.id), "supplier_payable")
        ledger.transfer(session, "test-earnings", clearing, payable, EARNED_NANO_USD, "usage_supplier")
        return supplier.id


def make_sender(db: Database, settings: Settings, w3: Web3, chain: ChainSettings, **options) -> PayoutSender:
    return PayoutSender(db, settings, chain, w3, treasury_signer(settings, chain), **options)


def supplier_units(w3: Web3, chain: ChainSettings) -> int:
    token = w3.eth.contract(address=chain.tokens[0].address, abi=_TRANSFER_ABI)
    return token.functions.balanceOf(DEV_SUPPLIER_PAYOUT.address).call()


def payout_rows(db: Database) -> list[Payout]:
    with db.session() as session:
        return list(session.scalars(select(Payout).order_by(Payout.id)))


def attempt_rows(db: Database) -> list[PayoutAttempt]:
    with db.session() as session:
        return list(session.scalars(select(PayoutAttempt).order_by(PayoutAttempt.id)))


def payable_available(db: Database, supplier_id: int) -> int:
    with db.session() as session:
        account = ledger.get_or_create_account(session, ledger.supplier_account_name(supplier_id), "supplier_payable")
        return ledger.read_balance(session, account.id).available_nano_usd


def run_until_settled(sender: PayoutSender, w3: Web3, rounds: int = 4) -> None:
    """Run the sender and mine enough blocks for its transactions to confirm, a few times."""
    for _ in range(rounds):
        sender.run_once()
        mine_blocks(w3, CONFIRMATIONS)


def assert_paid_once(db: Database, w3: Web3, chain: ChainSettings, supplier_id: int) -> Payout:
    (payout,) = payout_rows(db)
    assert payout.status == "confirmed"
    assert supplier_units(w3, chain) == PAID_UNITS
    assert ledger_amounts(db, "payout") == {payouts.payout_transfer_id(chain.chain_id, payout.tx_hash): PAID_NANO_USD}
    assert payable_available(db, supplier_id) == EARNED_NANO_USD - PAID_NANO_USD
    receipt = w3.eth.get_transaction_receipt(payout.tx_hash)
    assert receipt["status"] == 1
    report = reconcile(db, [(chain, w3)])
    assert report.differences == []
    assert report.payouts_confirmed_nano_usd == PAID_NANO_USD
    return payout


def test_supplier_paid_once(db, payout_chain, settings, supplier_id):
    w3, chain = payout_chain
    sender = make_sender(db, settings, w3, chain)

    first = sender.run_once()
    waiting = sender.run_once()
    mine_blocks(w3, CONFIRMATIONS)
    confirmed = sender.run_once()
    after = sender.run_once()

    assert (first.opened, first.signed, first.broadcast) == (1, 1, 1)
    assert waiting.waiting == 1
    assert confirmed.confirmed == 1
    assert (after.opened, after.signed, after.confirmed) == (0, 0, 0)
    payout = assert_paid_once(db, w3, chain, supplier_id)
    assert payout.amount_units == str(PAID_UNITS)
    assert payout.to_address == DEV_SUPPLIER_PAYOUT.address
    assert [attempt.status for attempt in attempt_rows(db)] == ["signed"]


@pytest.mark.parametrize(
    "kill_point",
    ["after_reserve", "after_sign_before_broadcast", "after_broadcast", "before_confirm_commit"],
)
def test_killed_payout_run_pays_once(db, payout_chain, settings, supplier_id, monkeypatch, kill_point):
    w3, chain = payout_chain

    def kill(*_args, **_kwargs):
        raise SimulatedKill(kill_point)

    real_send = w3.eth.send_raw_transaction

    def send_then_kill(raw):  # type: ignore[no-untyped-def]
        real_send(raw)
        raise SimulatedKill(kill_point)

    with monkeypatch.context() as patch:
        if kill_point == "after_reserve":
            patch.setattr(PayoutSender, "_sign_and_send", kill)
        elif kill_point == "after_sign_before_broadcast":
            patch.setattr(PayoutSender, "_broadcast", kill)
        elif kill_point == "after_broadcast":
            patch.setattr(w3.eth, "send_raw_transaction", send_then_kill)
        else:
            make_sender(db, settings, w3, chain).run_once()
            mine_blocks(w3, CONFIRMATIONS)
            patch.setattr(payouts, "confirm_payout", kill)
        with pytest.raises(SimulatedKill):
            make_sender(db, settings, w3, chain).run_once()

    run_until_settled(make_sender(db, settings, w3, chain), w3)

    payout = assert_paid_once(db, w3, chain, supplier_id)
    assert {attempt.nonce for attempt in attempt_rows(db)} == {payout.nonce}


def test_dropped_payout_broadcast_again(db, payout_chain, settings, supplier_id):
    w3, chain = payout_chain
    sender = make_sender(db, settings, w3, chain)
    w3.manager.request_blocking("evm_setAutomine", [False])
    try:
        sender.run_once()
        (attempt,) = attempt_rows(db)
        w3.manager.request_blocking("anvil_dropTransaction", [attempt.tx_hash])
        assert int(w3.manager.request_blocking("txpool_status", [])["pending"], 16) == 0

        again = sender.run_once()
    finally:
        w3.manager.request_blocking("evm_setAutomine", [True])
    mine_blocks(w3, 1 + CONFIRMATIONS)
    sender.run_once()

    assert again.broadcast == 1
    assert again.signed == 0
    payout = assert_paid_once(db, w3, chain, supplier_id)
    assert payout.tx_hash == attempt.tx_hash


def test_stuck_payout_replaced_same_nonce(db, payout_chain, settings, supplier_id):
    w3, chain = payout_chain
    w3.manager.request_blocking("evm_setAutomine", [False])
    try:
        make_sender(db, settings, w3, chain).run_once()
        impatient = settings.model_copy(update={"payout_replace_after_s": 0})
        replaced = make_sender(db, impatient, w3, chain).run_once()
    finally:
        w3.manager.request_blocking("evm_setAutomine", [True])
    mine_blocks(w3, 1 + CONFIRMATIONS)
    make_sender(db, settings, w3, chain).run_once()

    first, second = attempt_rows(db)
    assert replaced.replaced == 1
    assert first.nonce == second.nonce
    assert int(second.max_fee_per_gas_wei) >= int(first.max_fee_per_gas_wei) * 125 // 100
    payout = assert_paid_once(db, w3, chain, supplier_id)
    assert payout.tx_hash in (first.tx_hash, second.tx_hash)
    assert sorted(attempt.status for attempt in attempt_rows(db)) == ["replaced", "signed"]


def test_reverted_payout_retried_new_nonce(db, payout_chain, settings, supplier_id):
    w3, chain = payout_chain
    make_sender(db, settings, w3, chain, gas_limit=OUT_OF_GAS_LIMIT).run_once()
    mine_blocks(w3, CONFIRMATIONS)
    (reverted,) = attempt_rows(db)
    assert w3.eth.get_transaction_receipt(reverted.tx_hash)["status"] == 0

    run_until_settled(make_sender(db, settings, w3, chain), w3)

    payout = assert_paid_once(db, w3, chain, supplier_id)
    first, second = attempt_rows(db)
    assert (first.status, first.tx_hash) == ("reverted", reverted.tx_hash)
    assert second.nonce == first.nonce + 1
    assert payout.failed_attempts == 1
    assert payout.tx_hash == second.tx_hash


def test_given_up_payout_returns_amount(db, payout_chain, settings, supplier_id):
    w3, chain = payout_chain
    one_try = settings.model_copy(update={"payout_max_attempts": 1})
    make_sender(db, one_try, w3, chain, gas_limit=OUT_OF_GAS_LIMIT).run_once()
    mine_blocks(w3, CONFIRMATIONS)
    # This run finds the revert, gives the payout up, and opens no new one during the cooldown.
    make_sender(db, one_try, w3, chain, gas_limit=OUT_OF_GAS_LIMIT).run_once()

    (failed,) = payout_rows(db)
    assert failed.status == "failed"
    assert payable_available(db, supplier_id) == EARNED_NANO_USD
    report = reconcile(db, [(chain, w3)])
    assert [(alert.kind, alert.amount_nano_usd) for alert in report.alerts] == [("payout_failed", PAID_NANO_USD)]
    assert report.differences == []

    cooled = settings.model_copy(update={"payout_failure_cooldown_s": 0})
    run_until_settled(make_sender(db, cooled, w3, chain), w3)

    failed, paid = payout_rows(db)
    assert failed.status == "failed"
    assert paid.status == "confirmed"
    assert supplier_units(w3, chain) == PAID_UNITS
    assert payable_available(db, supplier_id) == EARNED_NANO_USD - PAID_NANO_USD


def test_foreign_nonce_use_gets_new_nonce(db, payout_chain, settings, supplier_id):
    w3, chain = payout_chain
    sender = make_sender(db, settings, w3, chain)
    w3.manager.request_blocking("evm_setAutomine", [False])
    try:
        sender.run_once()
        (lost,) = attempt_rows(db)
        w3.manager.request_blocking("anvil_dropTransaction", [lost.tx_hash])
    finally:
        w3.manager.request_blocking("evm_setAutomine", [True])
    # The operator spends the same nonce from the treasury on something else.
    other = sign_transfers(w3, w3.eth.contract(address=chain.tokens[0].address, abi=_TRANSFER_ABI), DEV_TREASURY, DEV_DEPLOYER.address, [1])
    send_raw(w3, other)
    mine_blocks(w3, CONFIRMATIONS)

    run_until_settled(sender, w3)

    payout = assert_paid_once(db, w3, chain, supplier_id)
    first, second = attempt_rows(db)
    assert first.status == "replaced"
    assert second.nonce == first.nonce + 1
    assert payout.tx_hash == second.tx_hash



def test_underfunded_treasury_pays_nothing(db, payout_chain, settings, supplier_id):
    w3, chain = payout_chain
    frugal = settings.model_copy(update={"payout_threshold_nano_usd": 1_000_000_000})
    with db.transaction() as session:
        clearing = ledger.get_or_create_account(session, ledger.USAGE_CLEARING, "usage_clearing")
        payable = ledger.get_or_create_account(session, ledger.supplier_account_name(supplier_id), "supplier_payable")
        ledger.transfer(session, "test-big-earnings", clearing, payable, 2_000 * 10**9, "usage_supplier")

    result = make_sender(db, frugal, w3, chain).run_once()

    assert result.skipped_for_balance == 1
    assert result.opened == 0
    assert payout_rows(db) == []
    assert payable_available(db, supplier_id) == EARNED_NANO_USD + 2_000 * 10**9


def test_below_threshold_not_paid(db, payout_chain, settings, supplier_id):
    w3, chain = payout_chain
    high = settings.model_copy(update={"payout_threshold_nano_usd": 20 * 10**9})

    result = make_sender(db, high, w3, chain).run_once()

    assert result.opened == 0
    assert payout_rows(db) == []


def test_pay_suppliers_task_runs_eagerly(db, payout_chain, settings, supplier_id, monkeypatch):
    import marketplace.tasks as tasks

    w3, chain = payout_chain
    monkeypatch.setattr(tasks, "get_settings", lambda: settings)
    monkeypatch.setattr(tasks, "_chain_connections", lambda: [(chain, w3)])

    first = tasks.pay_suppliers_task.delay().get()
    mine_blocks(w3, CONFIRMATIONS)
    second = tasks.pay_suppliers_task.delay().get()

    assert first["opened"] == 1
    assert second["confirmed"] == 1
    assert supplier_units(w3, chain) == PAID_UNITS


def test_beat_schedule_entries(monkeypatch):
    app = create_celery()

    schedule = app.conf.beat_schedule

    assert schedule["watch-deposits"]["task"] == "tokenport.watch_deposits"
    assert schedule["pay-suppliers"]["task"] == "tokenport.pay_suppliers"
    assert schedule["pay-suppliers"]["schedule"] == Settings().payout_interval_s


def test_supplier_sees_confirmed_payout_in_api(db, payout_chain, settings, supplier_id):
    from tests.factories import sign_in
    from tests.fixtures_app import start_marketplace

    w3, chain = payout_chain
    sender = make_sender(db, settings, w3, chain)
    sender.run_once()
    mine_blocks(w3, CONFIRMATIONS)
    sender.run_once()
    server, market = start_marketplace(db, [chain])
    try:
        client = market.client()
        token = sign_in(client, market.settings, DEV_SUPPLIER_PAYOUT, chain_id=chain.chain_id)["session_token"]
        listed = client.get("/v1/supplier/payouts", headers={"authorization": f"Bearer {token}"}).json()["data"]
    finally:
        server.stop()

    (payout,) = payout_rows(db)
    assert len(listed) == 1
    assert listed[0]["status"] == "confirmed"
    assert listed[0]["tx_hash"] == payout.tx_hash
    assert listed[0]["amount_nano_usd"] == PAID_NANO_USD
    assert listed[0]["to_address"] == DEV_SUPPLIER_PAYOUT.address
