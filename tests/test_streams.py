"""Streamed calls are charged exactly for what was delivered, however the stream ends."""

from __future__ import annotations

import json
import time

import httpx
import openai
import pytest
from sqlalchemy import select

from chain.devchain import DEV_BUYER, DEV_SUPPLIER_PAYOUT
from marketplace.models import Generation
from providers.tokens import count_prompt_tokens, count_text_tokens
from tests.factories import buyer_balance, create_api_key, create_listing, credit_without_chain, sign_in

FUNDS_NANO_USD = 10**9
MESSAGES = [{"role": "user", "content": "Tell me about Tokenport"}]
REPLY_WORDS = "This is the Tokenport mock upstream and every word is one token".split()


def cost(prompt_tokens: int, completion_tokens: int) -> int:
    return -(-(prompt_tokens * 216_000 + completion_tokens * 880_000) // 1000)


def _setup(marketplace, mock_upstream, upstream_model: str, **listing_fields) -> tuple[int, str]:
    client = marketplace.client()
    supplier = sign_in(client, marketplace.settings, DEV_SUPPLIER_PAYOUT)
    create_listing(
        client, supplier["session_token"], DEV_SUPPLIER_PAYOUT.address,
        upstream_base_url=mock_upstream.base_url, upstream_credential=mock_upstream.api_key, upstream_model=upstream_model,
        **listing_fields,
    )
    buyer = sign_in(client, marketplace.settings, DEV_BUYER)
    credit_without_chain(marketplace.db, buyer["account_id"], FUNDS_NANO_USD)
    return buyer["account_id"], create_api_key(client, buyer["session_token"])


def _wait_for_generation(db, predicate, timeout_s: float = 10.0) -> Generation:
    deadline = time.monotonic() + timeout_s
    while True:
        with db.session() as session:
            generation = session.scalar(select(Generation))
        if generation is not None and predicate(generation):
            return generation
        assert time.monotonic() < deadline, f"generation did not settle: {generation and generation.status}"
        time.sleep(0.05)


def _sse_events(response: httpx.Response):
    for line in response.iter_lines():
        if line.startswith("data: ") and line != "data: [DONE]":
            yield json.loads(line[len("data: "):])


@pytest.mark.parametrize("k", [1, 4])
def test_client_disconnect_charges_prompt_and_delivered(marketplace, fresh_mock_upstream, k):
    # The mock waits 400 ms before each content chunk, so the proxy is waiting on chunk k+1
    # when the client goes away and cannot have sent it.
    account_id, key = _setup(marketplace, fresh_mock_upstream, "mock-1+chunk_delay_ms:400")
    body = {"model": "deepseek/deepseek-chat", "messages": MESSAGES, "stream": True}
    received = []
    with httpx.stream("POST", f"{marketplace.url}/v1/chat/completions", json=body, headers={"authorization": f"Bearer {key}"}, timeout=30, trust_env=False) as response:
        for event in _sse_events(response):
            content = event["choices"][0]["delta"].get("content") if event.get("choices") else None
            if content:
                received.append(content)
            if len(received) == k:
                break

    generation = _wait_for_generation(marketplace.db, lambda g: g.status != "pending")

    delivered_text = " ".join(REPLY_WORDS[:k])
    assert "".join(received) == delivered_text
    assert generation.status == "client_disconnected"
    assert generation.usage_estimated is True
    assert generation.prompt_tokens == count_prompt_tokens(MESSAGES)
    assert generation.completion_tokens == count_text_tokens(delivered_text)
    expected = cost(count_prompt_tokens(MESSAGES), count_text_tokens(delivered_text))
    assert generation.cost_nano_usd == expected
    assert buyer_balance(marketplace.db, account_id).posted_nano_usd == FUNDS_NANO_USD - expected
    assert buyer_balance(marketplace.db, account_id).pending_debits_nano_usd == 0


def test_upstream_failure_before_first_token_costs_nothing(marketplace, fresh_mock_upstream):
    account_id, key = _setup(marketplace, fresh_mock_upstream, "mock-1+status_500")
    sdk = openai.OpenAI(base_url=f"{marketplace.url}/v1", api_key=key, max_retries=0)

    with pytest.raises(openai.APIStatusError) as raised:
        sdk.chat.completions.create(model="deepseek/deepseek-chat", messages=MESSAGES, stream=True)

    assert raised.value.status_code == 502
    assert raised.value.body["code"] == "upstream_server_error"
    generation = _wait_for_generation(marketplace.db, lambda g: g.status != "pending")
    assert generation.status == "failed"
    assert generation.cost_nano_usd == 0
    assert buyer_balance(marketplace.db, account_id).posted_nano_usd == FUNDS_NANO_USD
    assert buyer_balance(marketplace.db, account_id).pending_debits_nano_usd == 0


def test_upstream_drop_mid_stream_charges_delivered_and_reports_error(marketplace, fresh_mock_upstream):
    account_id, key = _setup(marketplace, fresh_mock_upstream, "mock-1+disconnect_after:3")
    body = {"model": "deepseek/deepseek-chat", "messages": MESSAGES, "stream": True}
    with httpx.stream("POST", f"{marketplace.url}/v1/chat/completions", json=body, headers={"authorization": f"Bearer {key}"}, timeout=30, trust_env=False) as response:
        events = list(_sse_events(response))

    errors = [event["error"] for event in events if "error" in event]
    usage = events[-1]["usage"]
    delivered_text = " ".join(REPLY_WORDS[:3])
    expected = cost(count_prompt_tokens(MESSAGES), count_text_tokens(delivered_text))
    assert response.status_code == 200
    assert errors[0]["code"] == "upstream_connection"
    assert usage["estimated"] is True
    assert usage["completion_tokens"] == count_text_tokens(delivered_text)
    assert usage["cost_nano_usd"] == expected
    assert buyer_balance(marketplace.db, account_id).posted_nano_usd == FUNDS_NANO_USD - expected


@pytest.mark.parametrize("fault", ["zero_cost_usage", "no_usage"])
def test_missing_or_zero_cost_usage_is_charged_by_tokens(marketplace, fresh_mock_upstream, fault):
    account_id, key = _setup(marketplace, fresh_mock_upstream, f"mock-1+{fault}")
    sdk = openai.OpenAI(base_url=f"{marketplace.url}/v1", api_key=key)

    chunks = list(sdk.chat.completions.create(model="deepseek/deepseek-chat", messages=MESSAGES, stream=True))

    usage = chunks[-1].usage
    if fault == "zero_cost_usage":
        # The upstream's own counts: 3 + 4 words of prompt, 12 reply words.
        prompt, completion, estimated = 7, 12, False
    else:
        prompt, completion, estimated = count_prompt_tokens(MESSAGES), count_text_tokens(" ".join(REPLY_WORDS)), True
    assert usage.prompt_tokens == prompt
    assert usage.completion_tokens == completion
    assert usage.model_extra["estimated"] is estimated
    assert usage.model_extra["cost_nano_usd"] == cost(prompt, completion)
    assert buyer_balance(marketplace.db, account_id).posted_nano_usd == FUNDS_NANO_USD - cost(prompt, completion)


def test_cached_and_reasoning_tokens_are_priced_once(marketplace, fresh_mock_upstream):
    account_id, key = _setup(
        marketplace, fresh_mock_upstream, "mock-1+reasoning+cached:4", offer_cached_input_micro_usd_per_mtok=54_000
    )
    sdk = openai.OpenAI(base_url=f"{marketplace.url}/v1", api_key=key)

    completion = sdk.chat.completions.create(model="deepseek/deepseek-chat", messages=MESSAGES, max_tokens=10)

    usage = completion.usage
    assert usage.prompt_tokens == 7
    assert usage.prompt_tokens_details.cached_tokens == 4
    assert usage.completion_tokens == 10
    assert usage.completion_tokens_details.reasoning_tokens == 4
    # 3 uncached at 216000, 4 cached at 54000, 10 output (4 of them reasoning) at 880000.
    assert usage.model_extra["cost_nano_usd"] == (3 * 216_000 + 4 * 54_000 + 10 * 880_000) // 1000 == 9_664
    assert buyer_balance(marketplace.db, account_id).posted_nano_usd == FUNDS_NANO_USD - 9_664


def test_stream_cut_before_hold_expires(db, fresh_mock_upstream):
    from tests.fixtures_app import start_marketplace

    # A 2 s hold allows 1.6 s of streaming; the mock takes 300 ms per word, 3.6 s for all 12.
    server, market = start_marketplace(db, [], hold_ttl_s=2)
    try:
        account_id, key = _setup(market, fresh_mock_upstream, "mock-1+chunk_delay_ms:300")
        body = {"model": "deepseek/deepseek-chat", "messages": MESSAGES, "stream": True}
        with httpx.stream("POST", f"{market.url}/v1/chat/completions", json=body, headers={"authorization": f"Bearer {key}"}, timeout=30, trust_env=False) as response:
            lines = [line for line in response.iter_lines() if line]
    finally:
        server.stop()

    events = [json.loads(line[len("data: "):]) for line in lines if line != "data: [DONE]"]
    delivered = "".join(event["choices"][0]["delta"].get("content") or "" for event in events if event.get("choices"))
    errors = [event["error"] for event in events if "error" in event]
    usage = events[-1]["usage"]
    assert lines[-1] == "data: [DONE]"
    assert errors == [
        {
            "message": "upstream failed: the call ran for its longest allowed time of 1.6 s (80% of TOKENPORT_HOLD_TTL_S) and was cut",
            "type": "upstream_error",
            "param": None,
            "code": "upstream_timeout",
        }
    ]
    # Some words arrived, not all, and exactly those are charged.
    assert 0 < count_text_tokens(delivered) < len(REPLY_WORDS)
    expected = cost(count_prompt_tokens(MESSAGES), count_text_tokens(delivered))
    assert usage["cost_nano_usd"] == expected
    generation = _wait_for_generation(db, lambda row: row.status != "pending")
    assert (generation.status, generation.cost_nano_usd) == ("incomplete", expected)
    assert buyer_balance(db, account_id).posted_nano_usd == FUNDS_NANO_USD - expected
    assert buyer_balance(db, account_id).pending_debits_nano_usd == 0
