"""Routing between listings: price order, buyer preferences, fallback, pausing and supplier limits."""

from __future__ import annotations

import asyncio

import httpx
import openai
import pytest
from sqlalchemy import select

from chain.devchain import DEV_BUYER, DEV_DEPLOYER, DEV_SUPPLIER_PAYOUT
from marketplace.models import Generation, Listing
from tests.factories import buyer_balance, create_api_key, create_listing, credit_without_chain, sign_in
from tests.fixtures_app import start_marketplace
from tests.fixtures_processes import start_api_processes

MESSAGES = [{"role": "user", "content": "hi"}]
FUNDS_NANO_USD = 10**9


def cost(prompt_tokens: int, completion_tokens: int, input_price: int, output_price: int) -> int:
    return -(-(prompt_tokens * input_price + completion_tokens * output_price) // 1000)


def _two_suppliers(client, settings, mock_upstream, cheap_model: str, dear_model: str = "mock-1", **cheap_fields):
    """A cheap listing by one supplier and a dearer one by another, both for deepseek/deepseek-chat."""
    cheap_session = sign_in(client, settings, DEV_SUPPLIER_PAYOUT)["session_token"]
    cheap = create_listing(
        client, cheap_session, DEV_SUPPLIER_PAYOUT.address, upstream_base_url=mock_upstream.base_url,
        upstream_credential=mock_upstream.api_key, upstream_model=cheap_model, **cheap_fields,
    )
    dear_session = sign_in(client, settings, DEV_DEPLOYER)["session_token"]
    client.post("/v1/supplier", json={"name": "Second Supplier", "payout_address": DEV_DEPLOYER.address}, headers={"authorization": f"Bearer {dear_session}"})
    dear = create_listing(
        client, dear_session, DEV_DEPLOYER.address, upstream_base_url=mock_upstream.base_url, upstream_credential=mock_upstream.api_key,
        upstream_model=dear_model, offer_input_micro_usd_per_mtok=250_000, offer_output_micro_usd_per_mtok=1_000_000,
    )
    return cheap, dear, cheap_session


def _buyer(client, settings, db, **key_fields):
    buyer = sign_in(client, settings, DEV_BUYER)
    credit_without_chain(db, buyer["account_id"], FUNDS_NANO_USD)
    return buyer["account_id"], create_api_key(client, buyer["session_token"], **key_fields)


def test_failing_cheap_listing_falls_back_and_is_paused(db, fresh_mock_upstream):
    server, market = start_marketplace(db, [], listing_health_min_calls=3, listing_health_error_rate_pct=50)
    try:
        client = market.client()
        cheap, dear, _ = _two_suppliers(client, market.settings, fresh_mock_upstream, "mock-1+status_500")
        account_id, key = _buyer(client, market.settings, db)
        sdk = openai.OpenAI(base_url=f"{market.url}/v1", api_key=key, max_retries=0)

        replies = [sdk.chat.completions.create(model="deepseek/deepseek-chat", messages=MESSAGES, max_tokens=12) for _ in range(4)]
        upstream_models = [body["model"] for body in fresh_mock_upstream.stats()["last_bodies"]]
    finally:
        server.stop()

    one_call = cost(4, 12, 250_000, 1_000_000)
    assert one_call == 13_000
    assert [reply.usage.model_extra["cost_nano_usd"] for reply in replies] == [one_call] * 4
    assert buyer_balance(db, account_id).posted_nano_usd == FUNDS_NANO_USD - 4 * one_call
    assert buyer_balance(db, account_id).pending_debits_nano_usd == 0
    # Three calls tried the cheap listing first; the third failure paused it, so the fourth went straight on.
    assert upstream_models == ["mock-1+status_500", "mock-1"] * 3 + ["mock-1"]
    with db.session() as session:
        paused = session.get(Listing, cheap["listing_id"])
        generations = list(session.scalars(select(Generation).order_by(Generation.created_at)))
    assert paused.status == "paused"
    assert paused.paused_reason.startswith("3 of 3 calls failed")
    assert [generation.listing_id for generation in generations] == [dear["listing_id"]] * 4
    assert [generation.status for generation in generations] == ["completed"] * 4


def test_streaming_call_falls_back_before_first_token(db, fresh_mock_upstream):
    server, market = start_marketplace(db, [])
    try:
        client = market.client()
        _two_suppliers(client, market.settings, fresh_mock_upstream, "mock-1+status_429")
        account_id, key = _buyer(client, market.settings, db)
        sdk = openai.OpenAI(base_url=f"{market.url}/v1", api_key=key, max_retries=0)

        chunks = list(sdk.chat.completions.create(model="deepseek/deepseek-chat", messages=MESSAGES, max_tokens=12, stream=True))
    finally:
        server.stop()

    assert chunks[-1].usage.model_extra["cost_nano_usd"] == 13_000
    assert buyer_balance(db, account_id).posted_nano_usd == FUNDS_NANO_USD - 13_000


def test_provider_preferences_pick_and_exclude(db, fresh_mock_upstream):
    server, market = start_marketplace(db, [])
    try:
        client = market.client()
        _two_suppliers(client, market.settings, fresh_mock_upstream, "mock-1")
        account_id, key = _buyer(client, market.settings, db)
        sdk = openai.OpenAI(base_url=f"{market.url}/v1", api_key=key, max_retries=0)

        default = sdk.chat.completions.create(model="deepseek/deepseek-chat", messages=MESSAGES, max_tokens=12)
        ordered = sdk.chat.completions.create(
            model="deepseek/deepseek-chat", messages=MESSAGES, max_tokens=12, extra_body={"provider": {"order": ["second supplier"]}}
        )
        capped = sdk.chat.completions.create(
            model="deepseek/deepseek-chat", messages=MESSAGES, max_tokens=12, extra_body={"provider": {"max_price": {"completion": 0.9}}}
        )
        with pytest.raises(openai.NotFoundError) as none_left:
            sdk.chat.completions.create(
                model="deepseek/deepseek-chat", messages=MESSAGES, max_tokens=12, extra_body={"provider": {"only": ["nobody"]}}
            )
        with pytest.raises(openai.BadRequestError) as bad:
            sdk.chat.completions.create(model="deepseek/deepseek-chat", messages=MESSAGES, extra_body={"provider": {"sort": "vibes"}})
    finally:
        server.stop()

    assert default.usage.model_extra["cost_nano_usd"] == cost(4, 12, 216_000, 880_000)
    assert ordered.usage.model_extra["cost_nano_usd"] == cost(4, 12, 250_000, 1_000_000)
    assert capped.usage.model_extra["cost_nano_usd"] == cost(4, 12, 216_000, 880_000)
    assert none_left.value.body["code"] == "no_matching_listing"
    assert bad.value.body["param"] == "provider.sort"


def test_upstream_rejecting_the_request_does_not_fall_back(db, fresh_mock_upstream):
    server, market = start_marketplace(db, [])
    try:
        client = market.client()
        _two_suppliers(client, market.settings, fresh_mock_upstream, "mock-1")
        account_id, key = _buyer(client, market.settings, db)
        response = httpx.post(
            f"{market.url}/v1/chat/completions",
            # The mock accepts at most 8 choices, the proxy 16, so only the upstream rejects this.
            json={"model": "deepseek/deepseek-chat", "messages": MESSAGES, "n": 12, "max_tokens": 2},
            headers={"authorization": f"Bearer {key}"},
            trust_env=False,
        )
    finally:
        server.stop()

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "upstream_invalid_request"
    assert fresh_mock_upstream.stats()["requests"] == 1
    assert buyer_balance(db, account_id).posted_nano_usd == FUNDS_NANO_USD


@pytest.mark.postgres
@pytest.mark.redis
def test_supplier_request_limit_holds_across_two_processes(db, database_url, fresh_mock_upstream, tmp_path):
    if not database_url.startswith("postgresql"):
        pytest.skip("several API processes need PostgreSQL")
    api = start_api_processes(db.url, str(tmp_path / "api.log"), workers=2)
    try:
        client = httpx.Client(base_url=api.url, timeout=30, trust_env=False)
        from marketplace.settings import Settings

        settings = Settings()
        supplier = sign_in(client, settings, DEV_SUPPLIER_PAYOUT)["session_token"]
        create_listing(client, supplier, DEV_SUPPLIER_PAYOUT.address, upstream_base_url=fresh_mock_upstream.base_url, upstream_credential=fresh_mock_upstream.api_key, requests_per_minute=4)
        account_id, key = _buyer(client, settings, db)

        async def fire() -> list[int]:
            async with httpx.AsyncClient(base_url=api.url, timeout=60, trust_env=False) as http:
                responses = await asyncio.gather(
                    *[http.post("/v1/chat/completions", json={"model": "deepseek/deepseek-chat", "messages": MESSAGES, "max_tokens": 3}, headers={"authorization": f"Bearer {key}"}) for _ in range(10)]
                )
            return [response.status_code for response in responses]

        statuses = asyncio.run(fire())
        rejected = httpx.post(f"{api.url}/v1/chat/completions", json={"model": "deepseek/deepseek-chat", "messages": MESSAGES}, headers={"authorization": f"Bearer {key}"}, trust_env=False)
    finally:
        api.stop()

    # NOTE: the window is a fixed minute; a run that crosses a minute boundary could admit 8.
    assert statuses.count(200) == 4
    assert statuses.count(429) == 6
    assert rejected.json()["error"]["code"] == "supplier_limits_reached"
    assert fresh_mock_upstream.stats()["requests"] == 4
    assert buyer_balance(db, account_id).pending_debits_nano_usd == 0


def test_probe_reactivates_only_answering_listings(db, fresh_mock_upstream):
    import anyio

    from marketplace.health import HealthTracker
    from marketplace.probes import probe_paused_listings
    from marketplace.ratelimit import MemoryRateLimiter

    server, market = start_marketplace(db, [])
    try:
        client = market.client()
        broken, healthy, _ = _two_suppliers(client, market.settings, fresh_mock_upstream, "mock-1+status_500")
    finally:
        server.stop()
    tracker = HealthTracker(db, market.settings, MemoryRateLimiter())
    assert tracker.pause(broken["listing_id"], "test") is True
    assert tracker.pause(healthy["listing_id"], "test") is True

    results = anyio.run(probe_paused_listings, db, market.settings)

    assert results == {broken["listing_id"]: False, healthy["listing_id"]: True}
    with db.session() as session:
        assert session.get(Listing, broken["listing_id"]).status == "paused"
        assert session.get(Listing, healthy["listing_id"]).status == "active"


@pytest.mark.parametrize("fault", ["disconnect_after:0", "malformed_sse"])
def test_stream_failing_before_output_falls_back(db, fresh_mock_upstream, fault):
    server, market = start_marketplace(db, [])
    try:
        client = market.client()
        _two_suppliers(client, market.settings, fresh_mock_upstream, f"mock-1+{fault}")
        account_id, key = _buyer(client, market.settings, db)
        sdk = openai.OpenAI(base_url=f"{market.url}/v1", api_key=key, max_retries=0)

        chunks = list(sdk.chat.completions.create(model="deepseek/deepseek-chat", messages=MESSAGES, max_tokens=12, stream=True))
        upstream_models = [body["model"] for body in fresh_mock_upstream.stats()["last_bodies"]]
    finally:
        server.stop()

    # The cheap listing sent its role chunk and then failed: only the dear listing is paid.
    assert upstream_models == [f"mock-1+{fault}", "mock-1"]
    assert "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices) != ""
    assert chunks[-1].usage.model_extra["cost_nano_usd"] == 13_000
    assert buyer_balance(db, account_id).posted_nano_usd == FUNDS_NANO_USD - 13_000
