"""Races across several API worker processes on PostgreSQL: holds never overdraw, budgets never leak."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from chain.devchain import DEV_BUYER, DEV_SUPPLIER_PAYOUT
from marketplace import ledger
from marketplace.settings import Settings
from tests.factories import buyer_balance, create_api_key, create_listing, credit_without_chain, sign_in
from tests.fixtures_processes import start_api_processes

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

BODY = {"model": "deepseek/deepseek-chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 12}
# The mock reports 3 + 1 prompt tokens and 12 completion tokens for BODY:
# ceil((4 * 216000 + 12 * 880000) / 1000) nano-USD.
CALL_COST_NANO_USD = 11_424


@pytest.fixture
def postgres_db(db, database_url):
    if not database_url.startswith("postgresql"):
        pytest.skip("this race runs against PostgreSQL, the production database")
    return db


def _prepare(api_url: str, mock_upstream, **key_fields) -> tuple[int, str]:
    settings = Settings()
    client = httpx.Client(base_url=api_url, timeout=30, trust_env=False)
    supplier = sign_in(client, settings, DEV_SUPPLIER_PAYOUT)
    create_listing(client, supplier["session_token"], DEV_SUPPLIER_PAYOUT.address, upstream_base_url=mock_upstream.base_url, upstream_credential=mock_upstream.api_key)
    buyer = sign_in(client, settings, DEV_BUYER)
    return buyer["account_id"], create_api_key(client, buyer["session_token"], **key_fields)


async def _fire(url: str, key: str, count: int) -> list[int]:
    limits = httpx.Limits(max_connections=count)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits, trust_env=False) as client:
        responses = await asyncio.gather(
            *[client.post("/v1/chat/completions", json=BODY, headers={"authorization": f"Bearer {key}"}) for _ in range(count)]
        )
    return [response.status_code for response in responses]


def test_200_parallel_calls_never_overdraw(postgres_db, fresh_mock_upstream, tmp_path):
    api = start_api_processes(postgres_db.url, str(tmp_path / "api.log"), workers=4)
    try:
        account_id, key = _prepare(api.url, fresh_mock_upstream)
        credit_without_chain(postgres_db, account_id, 50 * CALL_COST_NANO_USD)

        statuses = asyncio.run(_fire(api.url, key, 200))
    finally:
        api.stop()

    succeeded = statuses.count(200)
    assert statuses.count(402) == 200 - succeeded
    assert 1 <= succeeded <= 50
    balance = buyer_balance(postgres_db, account_id)
    assert balance.posted_nano_usd == 50 * CALL_COST_NANO_USD - succeeded * CALL_COST_NANO_USD
    assert balance.posted_nano_usd >= 0
    assert balance.pending_debits_nano_usd == 0
    assert fresh_mock_upstream.stats()["requests"] == succeeded
    with postgres_db.session() as session:
        totals = ledger.read_totals(session)
    assert totals.balanced is True
    assert totals.negative_constrained_accounts == 0


def test_spend_limit_below_one_hold_rejects_all_parallel_calls(postgres_db, fresh_mock_upstream, tmp_path):
    api = start_api_processes(postgres_db.url, str(tmp_path / "api.log"), workers=4)
    try:
        account_id, key = _prepare(api.url, fresh_mock_upstream, spend_limit_nano_usd=10_000, spend_limit_period="day")
        credit_without_chain(postgres_db, account_id, 10**9)

        statuses = asyncio.run(_fire(api.url, key, 8))
        body = httpx.post(f"{api.url}/v1/chat/completions", json=BODY, headers={"authorization": f"Bearer {key}"}, trust_env=False).json()
    finally:
        api.stop()

    assert statuses == [429] * 8
    assert body["error"]["code"] == "spend_limit_exceeded"
    assert fresh_mock_upstream.stats()["requests"] == 0
    assert buyer_balance(postgres_db, account_id).posted_nano_usd == 10**9


def test_request_limit_holds_across_processes(postgres_db, fresh_mock_upstream, tmp_path):
    api = start_api_processes(postgres_db.url, str(tmp_path / "api.log"), workers=2)
    try:
        account_id, key = _prepare(api.url, fresh_mock_upstream, requests_per_minute=5)
        credit_without_chain(postgres_db, account_id, 10**9)

        statuses = asyncio.run(_fire(api.url, key, 12))
    finally:
        api.stop()

    # NOTE: the window is a fixed minute; a run that crosses a minute boundary could admit 10.
    assert statuses.count(200) == 5
    assert statuses.count(429) == 7
    assert fresh_mock_upstream.stats()["requests"] == 5
