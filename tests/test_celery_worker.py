"""A crashed API process leaves a hold behind; a real Celery worker on Redis expires it and reconciles."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import httpx
import pytest
from celery import Celery
from sqlalchemy import select

from marketplace import ledger
from marketplace.models import Generation
from tests.factories import buyer_balance, credit_without_chain
from tests.fixtures_processes import start_api_processes
from tests.test_concurrency import _prepare, postgres_db  # noqa: F401  (fixture)

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

# A Redis database of its own, so no other test's tasks reach this worker.
CELERY_REDIS_URL = os.environ.get("TOKENPORT_TEST_CELERY_REDIS_URL", "redis://127.0.0.1:6379/5")
HOLD_TTL_S = 2


def _start_worker(database_url: str, log_path: str) -> subprocess.Popen:
    env = {**os.environ, "TOKENPORT_DATABASE_URL": database_url, "TOKENPORT_REDIS_URL": CELERY_REDIS_URL, "TOKENPORT_CHAINS": "[]"}
    command = [sys.executable, "-m", "celery", "-A", "marketplace.celery_app", "worker", "--pool", "solo", "--loglevel", "INFO"]
    return subprocess.Popen(command, env=env, stdout=open(log_path, "w"), stderr=subprocess.STDOUT, start_new_session=True)


def _wait_for(predicate, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_crashed_call_hold_is_expired_by_worker(postgres_db, fresh_mock_upstream, tmp_path):  # noqa: F811
    import redis

    redis.Redis.from_url(CELERY_REDIS_URL).flushdb()
    api = start_api_processes(postgres_db.url, str(tmp_path / "api.log"), workers=1, extra_env={"TOKENPORT_HOLD_TTL_S": str(HOLD_TTL_S)})
    worker = _start_worker(postgres_db.url, str(tmp_path / "worker.log"))
    try:
        account_id, key = _prepare(api.url, fresh_mock_upstream)
        credit_without_chain(postgres_db, account_id, 10**9)
        # The timeout fault keeps the upstream silent, so the call sits on its hold until the crash.
        fresh_mock_upstream.set_faults(["timeout"], count=1)
        body = {"model": "deepseek/deepseek-chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 12}
        caller = threading.Thread(
            target=lambda: httpx.post(f"{api.url}/v1/chat/completions", json=body, headers={"authorization": f"Bearer {key}"}, timeout=30, trust_env=False),
            daemon=True,
        )
        caller.start()
        _wait_for(lambda: buyer_balance(postgres_db, account_id).pending_debits_nano_usd > 0, 10, "the hold")
        held = buyer_balance(postgres_db, account_id).pending_debits_nano_usd

        os.killpg(api.process.pid, signal.SIGKILL)
        api.process.wait(timeout=10)
        assert buyer_balance(postgres_db, account_id).pending_debits_nano_usd == held

        client = Celery(broker=CELERY_REDIS_URL, backend=CELERY_REDIS_URL)
        time.sleep(HOLD_TTL_S + 0.5)
        expired = client.send_task("tokenport.expire_holds").get(timeout=60)
        report = client.send_task("tokenport.reconcile").get(timeout=60)
    finally:
        api.stop()
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=30)

    assert expired == 1
    assert report["ok"] is True
    assert report["ledger_balanced"] is True
    balance = buyer_balance(postgres_db, account_id)
    assert balance.pending_debits_nano_usd == 0
    assert balance.posted_nano_usd == 10**9
    with postgres_db.session() as session:
        generation = session.scalar(select(Generation))
        totals = ledger.read_totals(session)
    assert generation.status == "expired"
    assert generation.cost_nano_usd == 0
    assert totals.credits_pending_nano_usd == 0
    assert totals.debits_posted_nano_usd == totals.credits_posted_nano_usd
