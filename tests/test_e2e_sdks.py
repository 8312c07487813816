"""Both SDKs against Tokenport, each reaching an upstream that speaks the other protocol, tool calls included."""

from __future__ import annotations

import json

import anthropic
import openai
import pytest

from chain.devchain import DEV_BUYER, DEV_SUPPLIER_PAYOUT
from tests.factories import buyer_balance, create_api_key, create_listing, credit_without_chain, sign_in

FUNDS_NANO_USD = 10**9
WEATHER_TOOL_OPENAI = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city",
        "parameters": {"type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]},
    },
}
WEATHER_TOOL_ANTHROPIC = {
    "name": "get_weather",
    "description": "Current weather for a city",
    "input_schema": {"type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]},
}


def _market_with(marketplace, mock_upstream, protocol: str, model: str, upstream_model: str) -> tuple[int, str]:
    client = marketplace.client()
    supplier = sign_in(client, marketplace.settings, DEV_SUPPLIER_PAYOUT)
    create_listing(
        client, supplier["session_token"], DEV_SUPPLIER_PAYOUT.address, model=model, upstream_protocol=protocol,
        upstream_base_url=mock_upstream.base_url, upstream_credential=mock_upstream.api_key, upstream_model=upstream_model,
    )
    buyer = sign_in(client, marketplace.settings, DEV_BUYER)
    credit_without_chain(marketplace.db, buyer["account_id"], FUNDS_NANO_USD)
    return buyer["account_id"], create_api_key(client, buyer["session_token"])


def cost(prompt_tokens: int, completion_tokens: int) -> int:
    return -(-(prompt_tokens * 216_000 + completion_tokens * 880_000) // 1000)


@pytest.fixture
def anthropic_client(marketplace, fresh_mock_upstream):
    account_id, key = _market_with(marketplace, fresh_mock_upstream, "openai", "deepseek/deepseek-chat", "mock-1")
    return account_id, anthropic.Anthropic(base_url=marketplace.url, api_key=key, max_retries=0)


def test_anthropic_sdk_message_from_openai_upstream(marketplace, anthropic_client):
    account_id, client = anthropic_client

    message = client.messages.create(
        model="deepseek/deepseek-chat", max_tokens=12, system="Be brief.", messages=[{"role": "user", "content": "Say hello"}]
    )

    assert message.type == "message"
    assert message.role == "assistant"
    assert message.content[0].type == "text"
    assert message.content[0].text == "This is the Tokenport mock upstream and every word is one token"
    assert message.stop_reason == "end_turn"
    # The mock counts 3 + 2 words for the system message and 3 + 2 for the user message.
    assert message.usage.input_tokens == 10
    assert message.usage.output_tokens == 12
    assert message.usage.model_extra["cost_nano_usd"] == cost(10, 12)
    assert buyer_balance(marketplace.db, account_id).posted_nano_usd == FUNDS_NANO_USD - cost(10, 12)


def test_anthropic_sdk_stream_and_tool_use_from_openai_upstream(marketplace, anthropic_client):
    account_id, client = anthropic_client

    with client.messages.stream(
        model="deepseek/deepseek-chat", max_tokens=40, tools=[WEATHER_TOOL_ANTHROPIC],
        messages=[{"role": "user", "content": "What is the weather in Paris?"}],
    ) as stream:
        event_types = [event.type for event in stream]
        final = stream.get_final_message()

    tool_uses = [block for block in final.content if block.type == "tool_use"]
    assert event_types[0] == "message_start"
    assert event_types[-1] == "message_stop"
    assert "input_json" in event_types
    assert final.stop_reason == "tool_use"
    assert len(tool_uses) == 1
    assert tool_uses[0].name == "get_weather"
    assert tool_uses[0].input == {"location": "Paris"}
    assert final.usage.output_tokens > 0
    assert buyer_balance(marketplace.db, account_id).pending_debits_nano_usd == 0
    assert buyer_balance(marketplace.db, account_id).posted_nano_usd < FUNDS_NANO_USD


def test_anthropic_sdk_errors_use_anthropic_shape(marketplace, anthropic_client):
    _, client = anthropic_client

    with pytest.raises(anthropic.NotFoundError) as missing:
        client.messages.create(model="acme/none", max_tokens=5, messages=[{"role": "user", "content": "x"}])
    with pytest.raises(anthropic.BadRequestError) as invalid:
        client.messages.create(model="deepseek/deepseek-chat", max_tokens=5, messages=[])

    assert missing.value.body["type"] == "error"
    assert missing.value.body["error"]["type"] == "not_found_error"
    assert invalid.value.body["error"]["type"] == "invalid_request_error"


@pytest.fixture
def openai_client(marketplace, fresh_mock_upstream):
    account_id, key = _market_with(marketplace, fresh_mock_upstream, "anthropic", "anthropic/claude-sonnet", "claude-mock")
    return account_id, openai.OpenAI(base_url=f"{marketplace.url}/v1", api_key=key, max_retries=0)


def test_openai_sdk_completion_and_tool_call_from_anthropic_upstream(marketplace, openai_client):
    account_id, client = openai_client

    plain = client.chat.completions.create(model="anthropic/claude-sonnet", max_tokens=12, messages=[{"role": "user", "content": "Say hello"}])
    tool = client.chat.completions.create(
        model="anthropic/claude-sonnet", max_tokens=40, tools=[WEATHER_TOOL_OPENAI],
        messages=[{"role": "user", "content": "What is the weather in Paris?"}],
    )

    calls = tool.choices[0].message.tool_calls
    assert plain.choices[0].message.content == "This is the Tokenport mock upstream and every word is one token"
    assert plain.choices[0].finish_reason == "stop"
    assert plain.usage.prompt_tokens == 5
    assert plain.usage.completion_tokens == 12
    assert plain.usage.model_extra["cost_nano_usd"] == cost(5, 12)
    assert tool.choices[0].finish_reason == "tool_calls"
    assert len(calls) == 1
    assert calls[0].function.name == "get_weather"
    assert json.loads(calls[0].function.arguments) == {"location": "Paris"}


def test_openai_sdk_stream_from_anthropic_upstream(marketplace, openai_client):
    account_id, client = openai_client

    chunks = list(client.chat.completions.create(model="anthropic/claude-sonnet", max_tokens=5, messages=[{"role": "user", "content": "Say hello"}], stream=True))

    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    usage = chunks[-1].usage
    assert text == "This is the Tokenport mock"
    assert usage.prompt_tokens == 5
    assert usage.completion_tokens == 5
    assert usage.model_extra["cost_nano_usd"] == cost(5, 5)
    assert buyer_balance(marketplace.db, account_id).posted_nano_usd == FUNDS_NANO_USD - cost(5, 5)


def test_request_the_upstream_protocol_cannot_express_gets_400(marketplace, openai_client, fresh_mock_upstream):
    account_id, client = openai_client

    with pytest.raises(openai.BadRequestError) as raised:
        client.chat.completions.create(model="anthropic/claude-sonnet", max_tokens=5, n=2, messages=[{"role": "user", "content": "hi"}])

    assert raised.value.body["code"] == "unsupported_by_upstream"
    assert fresh_mock_upstream.stats()["requests"] == 0
    assert buyer_balance(marketplace.db, account_id).posted_nano_usd == FUNDS_NANO_USD
    assert buyer_balance(marketplace.db, account_id).pending_debits_nano_usd == 0
