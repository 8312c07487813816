"""Production scheduling: Celery beat on Redis runs the deposit watcher and the payouts, in a real worker."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis
from sqlalchemy import select

from chain.devchain import DEV_BUYER, DEV_SUPPLIER_PAYOUT, DEV_TREASURY, fund_wallet
from marketplace import ledger
from marketplace.listings import register_supplier
from marketplace.models import Payout
from tests.factories import buyer_balance
from tests.fixtures_app import POSTGRES_URL, reset_postgres
from tests.test_watcher import bind_wallet, chain_settings, deploy_token, send_raw, sign_transfers

pytestmark = [pytest.mark.anvil, pytest.mark.postgres, pytest.mark.redis]

# A Redis database of its own, so that no other test's worker takes these tasks.
CELERY_REDIS_URL = os.environ.get("TOKENPORT_TEST_WATCHER_REDIS_URL", "redis://127.0.0.1:6379/6")
REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(params=["postgres"])
def database_url(request) -> str:
    """PostgreSQL only, as in production: the worker and beat are separate processes."""
    reset_postgres(POSTGRES_URL)
    return POSTGRES_URL


def _start(arguments: list[str], environment: dict[str, str], log_path: Path) -> subprocess.Popen:
    with log_path.open("wb") as log_file:
        return subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "marketplace.celery_app", *arguments],
            cwd=REPO_ROOT,
            env=environment,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=5)


def test_beat_runs_watcher_and_payouts(db, anvil_w3, tmp_path):
    usdc = deploy_token(anvil_w3, "USDC", 6)
    fund_wallet(anvil_w3, usdc, DEV_BUYER.address, 10_000_000, 0)
    fund_wallet(anvil_w3, usdc, DEV_TREASURY.address, 100_000_000, 0)
    chain = chain_settings(anvil_w3, [(usdc, 6)], confirmations=1, poll_interval_s=0.5)
    chain = chain.model_copy(update={"rpc_url": anvil_w3.provider.endpoint_uri})
    buyer_id = bind_wallet(db, chain.chain_id, DEV_BUYER)
    supplier_account_id = bind_wallet(db, chain.chain_id, DEV_SUPPLIER_PAYOUT)
    with db.transaction() as session:
        supplier = register_supplier(session, supplier_account_id, "Supplier", DEV_SUPPLIER_PAYOUT.address)
        clearing = ledger.get_or_create_account(session, ledger.USAGE_CLEARING, "usage_clearing")
        payable = ledger.get_or_create_account(session, ledger.supplier_account_name(supplier.id), "supplier_payable")
        ledger.transfer(session, "test-earnings", clearing, payable, 3_000_000_000, "usage_supplier")
    send_raw(anvil_w3, sign_transfers(anvil_w3, usdc, DEV_BUYER, DEV_TREASURY.address, [7_000_000]))

    redis.Redis.from_url(CELERY_REDIS_URL).flushdb()
    environment = {
        **os.environ,
        "TOKENPORT_MODE": "development",
        "TOKENPORT_DATABASE_URL": db.url,
        "TOKENPORT_REDIS_URL": CELERY_REDIS_URL,
        "TOKENPORT_CHAINS": json.dumps([chain.model_dump()]),
        "TOKENPORT_PAYOUT_INTERVAL_S": "1",
        "TOKENPORT_PAYOUT_THRESHOLD_NANO_USD": "1000000000",
    }
    worker = _start(["worker", "--pool", "solo", "--loglevel", "INFO"], environment, tmp_path / "worker.log")
    beat = _start(["beat", "--loglevel", "INFO", "--schedule", str(tmp_path / "beat-schedule")], environment, tmp_path / "beat.log")
    token = anvil_w3.eth.contract(address=usdc.address, abi=usdc.abi)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            credited = buyer_balance(db, buyer_id).posted_nano_usd
            paid_units = token.functions.balanceOf(DEV_SUPPLIER_PAYOUT.address).call()
            with db.session() as session:
                payable_left = ledger.read_balance(session, payable.id).available_nano_usd
                payout_statuses = list(session.scalars(select(Payout.status)))
            if credited and payout_statuses == ["confirmed"]:
                break
            time.sleep(0.5)
    finally:
        _stop(beat)
        _stop(worker)

    log = (tmp_path / "worker.log").read_text()
    assert credited == 7_000_000_000, log[-3000:]
    assert paid_units == 3_000_000, log[-3000:]
    assert payable_left == 0
    assert payout_statuses == ["confirmed"]
    assert "tokenport.watch_deposits" in log
    assert "tokenport.pay_suppliers" in log
