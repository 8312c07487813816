"""The mock upstream: its content, prompt, tool, stop and choices rules, its controls, and its
three wire formats, as read by the real `openai` and `anthropic` SDKs."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import anthropic
import httpx
import httpx2
import openai
import pytest

from providers.mock_upstream import (
    FAULT_HEADER,
    MOCK_MODELS,
    MOCK_PROMPT_TOKENS_PER_MESSAGE,
    MOCK_REASONING_WORDS,
    MOCK_REPLY_WORDS,
    MOCK_THOUGHT_SIGNATURE,
    MOCK_TOOL_ARGUMENTS,
    MOCK_TOOL_CALL_TOKENS,
    Faults,
    InvalidFaultError,
    count_prompt_words,
    expected_content,
    expected_usage,
    parse_faults,
    split_model,
)
from providers.usage import Usage

TIMEOUT_S = 10.0


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def sdk(fresh_mock_upstream) -> AsyncIterator[openai.AsyncOpenAI]:
    http_client = httpx.AsyncClient(trust_env=False)
    sdk_client = openai.AsyncOpenAI(
        base_url=fresh_mock_upstream.base_url,
        api_key=fresh_mock_upstream.api_key,
        max_retries=0,
        timeout=TIMEOUT_S,
        http_client=http_client,
    )
    yield sdk_client
    await sdk_client.close()


def chat_body(**extra: Any) -> dict[str, Any]:
    return {"model": "mock-1", "messages": [{"role": "user", "content": "Say hello"}], **extra}


def post_chat(mock, body: Any, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.post(
        f"{mock.base_url}/chat/completions",
        json=body,
        headers={"authorization": f"Bearer {mock.api_key}", **(headers or {})},
        timeout=TIMEOUT_S,
        trust_env=False,
    )


# The content and prompt rules.


def test_reply_words_are_twelve_tokens() -> None:
    assert len(MOCK_REPLY_WORDS) == 12
    assert len(MOCK_REASONING_WORDS) == 4
    assert MOCK_PROMPT_TOKENS_PER_MESSAGE == 3


def test_prompt_rule_counts_words_and_overhead() -> None:
    messages = [
        {"role": "system", "content": "You are terse."},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Describe  this\nimage"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
            ],
        },
        {"role": "assistant", "content": None, "tool_calls": []},
    ]

    assert count_prompt_words(messages) == (3 + 3) + (3 + 3) + 3


@pytest.mark.parametrize(
    ("extra", "faults", "expected"),
    [
        ({}, (), Usage(prompt_tokens=5, completion_tokens=12)),
        ({"max_tokens": 5}, (), Usage(prompt_tokens=5, completion_tokens=5)),
        ({"max_tokens": 100}, (), Usage(prompt_tokens=5, completion_tokens=12)),
        (
            {"max_tokens": 100, "max_completion_tokens": 2},
            (),
            Usage(prompt_tokens=5, completion_tokens=2),
        ),
        ({}, ("reasoning",), Usage(prompt_tokens=5, completion_tokens=16, reasoning_tokens=4)),
        (
            {"max_tokens": 6},
            ("reasoning",),
            Usage(prompt_tokens=5, completion_tokens=6, reasoning_tokens=4),
        ),
        (
            {"max_tokens": 3},
            ("reasoning",),
            Usage(prompt_tokens=5, completion_tokens=3, reasoning_tokens=3),
        ),
        ({}, ("cached:4",), Usage(prompt_tokens=5, completion_tokens=12, cached_prompt_tokens=4)),
        ({}, ("cached:50",), Usage(prompt_tokens=5, completion_tokens=12, cached_prompt_tokens=5)),
    ],
)
def test_expected_usage_rule(extra, faults, expected) -> None:
    assert expected_usage(chat_body(**extra), faults) == expected


def test_expected_usage_reads_model_suffix() -> None:
    body = chat_body(model="mock-1+reasoning+cached:2", max_tokens=6)

    assert expected_usage(body) == Usage(
        prompt_tokens=5, completion_tokens=6, cached_prompt_tokens=2, reasoning_tokens=4
    )
    assert expected_content(body) == "This is"


def test_expected_content_truncates() -> None:
    assert expected_content(chat_body(max_tokens=3)) == "This is the"
    assert expected_content(chat_body()) == " ".join(MOCK_REPLY_WORDS)


def test_parse_faults() -> None:
    faults = parse_faults(
        ["status_429", " cached:7 ", "", "disconnect_after:0", "chunk_delay_ms:20"]
    )

    assert faults == Faults(status_429=True, cached=7, disconnect_after=0, chunk_delay_ms=20)


@pytest.mark.parametrize("spec", ["explode", "cached", "cached:x", "cached:-1", "reasoning:2"])
def test_parse_faults_rejects(spec: str) -> None:
    with pytest.raises(InvalidFaultError):
        parse_faults([spec])


def test_split_model() -> None:
    assert split_model("mock-1") == ("mock-1", [])
    assert split_model("mock-1+reasoning+cached:4") == ("mock-1", ["reasoning", "cached:4"])


# The real openai SDK reads the mock's wire format.


@pytest.mark.anyio
async def test_sdk_non_streaming(sdk) -> None:
    completion = await sdk.chat.completions.create(
        model="mock-1+cached:2",
        messages=[{"role": "user", "content": "Say hello"}],
        max_tokens=5,
    )

    assert completion.object == "chat.completion"
    assert completion.model == "mock-1"
    assert completion.choices[0].message.role == "assistant"
    assert completion.choices[0].message.content == "This is the Tokenport mock"
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage.prompt_tokens == 5
    assert completion.usage.completion_tokens == 5
    assert completion.usage.total_tokens == 10
    assert completion.usage.prompt_tokens_details.cached_tokens == 2
    assert completion.usage.completion_tokens_details.reasoning_tokens == 0


@pytest.mark.anyio
async def test_sdk_streaming_with_usage(sdk) -> None:
    response = await sdk.chat.completions.create(
        model="mock-1+reasoning",
        messages=[{"role": "user", "content": "Say hello"}],
        max_completion_tokens=7,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in response]

    assert chunks[0].choices[0].delta.role == "assistant"
    content = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert content == "This is the"
    finish_reasons = [chunk.choices[0].finish_reason for chunk in chunks if chunk.choices]
    assert finish_reasons[-1] == "length"
    assert chunks[-1].choices == []
    assert chunks[-1].usage.prompt_tokens == 5
    assert chunks[-1].usage.completion_tokens == 7
    assert chunks[-1].usage.completion_tokens_details.reasoning_tokens == 4
    assert all(chunk.usage is None for chunk in chunks[:-1])


@pytest.mark.anyio
async def test_sdk_streaming_without_usage_option(sdk) -> None:
    response = await sdk.chat.completions.create(
        model="mock-1", messages=[{"role": "user", "content": "Say hello"}], stream=True
    )
    chunks = [chunk async for chunk in response]

    assert all(chunk.choices for chunk in chunks)
    assert all(chunk.usage is None for chunk in chunks)
    assert chunks[-1].choices[0].finish_reason == "stop"


@pytest.mark.anyio
async def test_sdk_lists_models(sdk) -> None:
    page = await sdk.models.list()

    assert [model.id for model in page.data] == list(MOCK_MODELS)


@pytest.mark.anyio
async def test_sdk_wrong_key(fresh_mock_upstream) -> None:
    async with httpx.AsyncClient(trust_env=False) as http_client:
        sdk_client = openai.AsyncOpenAI(
            base_url=fresh_mock_upstream.base_url,
            api_key="sk-wrong",
            max_retries=0,
            http_client=http_client,
        )
        with pytest.raises(openai.AuthenticationError) as caught:
            await sdk_client.models.list()

    assert caught.value.status_code == 401
    assert caught.value.code == "invalid_api_key"
    assert fresh_mock_upstream.stats()["unauthorized"] == 1


@pytest.mark.anyio
async def test_sdk_rate_limited(sdk) -> None:
    with pytest.raises(openai.RateLimitError) as caught:
        await sdk.chat.completions.create(
            model="mock-1+status_429", messages=[{"role": "user", "content": "Say hello"}]
        )

    assert caught.value.response.headers["retry-after"] == "7"
    assert caught.value.code == "rate_limit_exceeded"


@pytest.mark.anyio
async def test_sdk_server_error(sdk) -> None:
    with pytest.raises(openai.InternalServerError):
        await sdk.chat.completions.create(
            model="mock-1",
            messages=[{"role": "user", "content": "Say hello"}],
            extra_headers={FAULT_HEADER: "status_500"},
        )


# Controls: stats, reset, scheduled faults and request validation.


def test_stats_record_requests(fresh_mock_upstream) -> None:
    post_chat(fresh_mock_upstream, chat_body(max_tokens=1))
    post_chat(fresh_mock_upstream, chat_body(model="mock-1+no_usage"), {FAULT_HEADER: "cached:1"})

    stats = fresh_mock_upstream.stats()

    assert stats["requests"] == 2
    assert stats["unauthorized"] == 0
    assert stats["last_bodies"] == [chat_body(max_tokens=1), chat_body(model="mock-1+no_usage")]
    assert stats["last_faults"] == [[], ["cached:1", "no_usage"]]


def test_reset_clears_stats_and_faults(mock_upstream) -> None:
    post_chat(mock_upstream, chat_body())
    mock_upstream.set_faults(["status_500"], count=3)

    mock_upstream.reset()
    stats = mock_upstream.stats()

    assert stats["requests"] == 0
    assert stats["last_bodies"] == []
    assert stats["scheduled_faults"] == []
    assert post_chat(mock_upstream, chat_body()).status_code == 200


def test_scheduled_faults_apply_in_order(fresh_mock_upstream) -> None:
    fresh_mock_upstream.set_faults(["status_500"], count=2)
    fresh_mock_upstream.set_faults(["status_429"], count=1)

    statuses = [post_chat(fresh_mock_upstream, chat_body()).status_code for _ in range(4)]

    assert statuses == [500, 500, 429, 200]
    assert fresh_mock_upstream.stats()["scheduled_faults"] == []


def test_scheduled_faults_skip_invalid_requests(fresh_mock_upstream) -> None:
    fresh_mock_upstream.set_faults(["status_500"], count=1)

    invalid = post_chat(fresh_mock_upstream, {"model": "mock-1", "messages": []})
    valid = post_chat(fresh_mock_upstream, chat_body())

    assert invalid.status_code == 400
    assert valid.status_code == 500


def test_schedule_unknown_fault_rejected(fresh_mock_upstream) -> None:
    response = httpx.post(
        f"{fresh_mock_upstream.root_url}/_mock/faults",
        json={"faults": ["explode"], "count": 1},
        timeout=TIMEOUT_S,
        trust_env=False,
    )

    assert response.status_code == 400
    assert response.json()["error"]["param"] == "faults"
    assert "unknown mock fault 'explode'" in response.json()["error"]["message"]


def test_unknown_fault_header_rejected(fresh_mock_upstream) -> None:
    response = post_chat(fresh_mock_upstream, chat_body(), {FAULT_HEADER: "explode"})

    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"
    assert response.json()["error"]["param"] == FAULT_HEADER


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ([1, 2], None),
        ({"messages": [{"role": "user", "content": "hi"}]}, "model"),
        ({"model": "mock-1"}, "messages"),
        ({"model": "mock-1", "messages": []}, "messages"),
        ({"model": "mock-1", "messages": ["hi"]}, "messages[0]"),
        ({"model": "mock-1", "messages": [{"role": "user"}], "max_tokens": 0}, "max_tokens"),
        (
            {"model": "mock-1", "messages": [{"role": "user"}], "max_completion_tokens": 1.5},
            "max_completion_tokens",
        ),
        ({"model": "mock-1", "messages": [{"role": "user"}], "n": 0}, "n"),
        ({"model": "mock-1", "messages": [{"role": "user"}], "n": 9}, "n"),
        ({"model": "mock-1", "messages": [{"role": "user"}], "tools": {"a": 1}}, "tools"),
    ],
)
def test_invalid_request_rejected(fresh_mock_upstream, body, param) -> None:
    response = post_chat(fresh_mock_upstream, body)

    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"
    assert response.json()["error"]["param"] == param


def test_models_require_credential(fresh_mock_upstream) -> None:
    response = httpx.get(
        f"{fresh_mock_upstream.base_url}/models", timeout=TIMEOUT_S, trust_env=False
    )

    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_api_key"


def test_cost_field_in_usage(fresh_mock_upstream) -> None:
    response = post_chat(
        fresh_mock_upstream, chat_body(model="mock-1+zero_cost_usage", max_tokens=2)
    )

    assert response.json()["usage"] == {
        "prompt_tokens": 5,
        "completion_tokens": 2,
        "total_tokens": 7,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
        "cost": 0,
    }


def test_sse_wire_format(fresh_mock_upstream) -> None:
    response = post_chat(
        fresh_mock_upstream,
        chat_body(max_tokens=1, stream=True, stream_options={"include_usage": True}),
    )

    assert response.headers["content-type"].startswith("text/event-stream")
    events = response.text.split("\n\n")
    assert events[-1] == ""
    assert events[-2] == "data: [DONE]"
    assert all(event.startswith("data: {") for event in events[:-2])
    assert len(events) == 2 + 4  # role, one word, finish, usage


# The tool, stop and choices rules.

WEATHER_TOOL = {
    "type": "function",
    "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {}}},
}


@pytest.mark.parametrize(
    ("extra", "content", "usage"),
    [
        ({"stop": "mock"}, "This is the Tokenport", Usage(prompt_tokens=5, completion_tokens=4)),
        ({"stop": ["zzz", "the"]}, "This is", Usage(prompt_tokens=5, completion_tokens=2)),
        (
            {"stop": "Token", "max_tokens": 2},
            "This is",
            Usage(prompt_tokens=5, completion_tokens=2),
        ),
        ({"n": 3, "max_tokens": 2}, "This is", Usage(prompt_tokens=5, completion_tokens=6)),
        (
            {"n": 2, "max_tokens": 6},
            "This is",
            Usage(prompt_tokens=5, completion_tokens=12, reasoning_tokens=8),
        ),
    ],
)
def test_stop_and_choices_rules(extra, content, usage) -> None:
    faults = ("reasoning",) if extra.get("max_tokens") == 6 else ()

    assert expected_content(chat_body(**extra), faults) == content
    assert expected_usage(chat_body(**extra), faults) == usage


def test_tool_rule_needs_weather_in_last_user_message() -> None:
    asks = chat_body(messages=[{"role": "user", "content": "Weather today?"}], tools=[WEATHER_TOOL])
    no_tools = chat_body(messages=[{"role": "user", "content": "Weather today?"}])
    declined = {**asks, "tool_choice": "none"}
    answered = chat_body(
        messages=[
            {"role": "user", "content": "Weather today?"},
            {
                "role": "assistant",
                "tool_calls": [
                    {
                        "id": "c",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": "{}"},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "c", "content": "sunny"},
        ],
        tools=[WEATHER_TOOL],
    )

    assert expected_content(asks) == ""
    assert expected_usage(asks) == Usage(prompt_tokens=5, completion_tokens=MOCK_TOOL_CALL_TOKENS)
    assert expected_content(no_tools) == " ".join(MOCK_REPLY_WORDS)
    assert expected_content(declined) == " ".join(MOCK_REPLY_WORDS)
    assert expected_content(answered) == " ".join(MOCK_REPLY_WORDS)


def test_expected_usage_other_protocols() -> None:
    anthropic_body = {
        "model": "mock-1+cached:3+cache_write:2",
        "max_tokens": 4,
        "system": [{"type": "text", "text": "Be brief"}],
        "messages": [{"role": "user", "content": [{"type": "text", "text": "Say hello"}]}],
    }
    gemini_body = {
        "systemInstruction": {"parts": [{"text": "Be brief"}]},
        "contents": [{"role": "user", "parts": [{"text": "Say hello"}]}],
        "generationConfig": {"maxOutputTokens": 4, "candidateCount": 2},
    }

    assert expected_usage(anthropic_body, protocol="anthropic") == Usage(
        prompt_tokens=10, completion_tokens=4, cached_prompt_tokens=3, cache_write_tokens=2
    )
    assert expected_usage(gemini_body, protocol="gemini", model="mock-1+reasoning") == Usage(
        prompt_tokens=10, completion_tokens=8, reasoning_tokens=8
    )
    assert expected_content(gemini_body, protocol="gemini") == "This is the Tokenport"


@pytest.mark.anyio
async def test_sdk_several_choices(sdk) -> None:
    completion = await sdk.chat.completions.create(
        model="mock-1", messages=[{"role": "user", "content": "Say hello"}], max_tokens=2, n=2
    )

    assert [choice.index for choice in completion.choices] == [0, 1]
    assert [choice.message.content for choice in completion.choices] == ["This is", "This is"]
    assert completion.usage.completion_tokens == 4


@pytest.mark.anyio
async def test_sdk_tool_call(sdk) -> None:
    completion = await sdk.chat.completions.create(
        model="mock-1",
        messages=[{"role": "user", "content": "What is the weather in Paris?"}],
        tools=[WEATHER_TOOL],
    )

    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    assert choice.message.tool_calls[0].function.name == "get_weather"
    assert json.loads(choice.message.tool_calls[0].function.arguments) == MOCK_TOOL_ARGUMENTS


@pytest.mark.anyio
async def test_sdk_streamed_tool_call(sdk) -> None:
    response = await sdk.chat.completions.create(
        model="mock-1",
        messages=[{"role": "user", "content": "What is the weather in Paris?"}],
        tools=[WEATHER_TOOL],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in response]

    calls = [
        call
        for chunk in chunks
        if chunk.choices
        for call in chunk.choices[0].delta.tool_calls or []
    ]
    assert calls[0].function.name == "get_weather"
    assert json.loads("".join(call.function.arguments for call in calls)) == MOCK_TOOL_ARGUMENTS
    assert [chunk.choices[0].finish_reason for chunk in chunks if chunk.choices][-1] == "tool_calls"
    assert chunks[-1].usage.completion_tokens == MOCK_TOOL_CALL_TOKENS


# The Anthropic Messages protocol, as read by the real anthropic SDK.


@pytest.fixture
async def anthropic_sdk(fresh_mock_upstream) -> AsyncIterator[anthropic.AsyncAnthropic]:
    # The anthropic SDK 2.17 is built on httpx2, so its client comes from there.
    sdk_client = anthropic.AsyncAnthropic(
        base_url=fresh_mock_upstream.root_url,
        api_key=fresh_mock_upstream.api_key,
        max_retries=0,
        timeout=TIMEOUT_S,
        http_client=httpx2.AsyncClient(trust_env=False),
    )
    yield sdk_client
    await sdk_client.close()


@pytest.mark.anyio
async def test_anthropic_sdk_message(anthropic_sdk, fresh_mock_upstream) -> None:
    message = await anthropic_sdk.messages.create(
        model="mock-1+cached:3+cache_write:2",
        max_tokens=5,
        system="Be brief",
        messages=[{"role": "user", "content": "Say hello"}],
    )

    assert message.type == "message"
    assert message.id == "msg_mock0000000001"
    assert message.model == "mock-1"
    assert message.content[0].text == "This is the Tokenport mock"
    assert message.stop_reason == "max_tokens"
    assert message.usage.input_tokens == 10 - 3 - 2
    assert message.usage.cache_read_input_tokens == 3
    assert message.usage.cache_creation_input_tokens == 2
    assert message.usage.output_tokens == 5
    assert fresh_mock_upstream.stats()["requests_by_protocol"] == {"anthropic": 1}


@pytest.mark.anyio
async def test_anthropic_sdk_stream(anthropic_sdk) -> None:
    async with anthropic_sdk.messages.stream(
        model="mock-1+reasoning",
        max_tokens=100,
        stop_sequences=["upstream"],
        messages=[{"role": "user", "content": "Say hello"}],
    ) as stream:
        events = [event.type async for event in stream]
        message = await stream.get_final_message()

    assert events[0] == "message_start"
    assert events[-1] == "message_stop"
    assert [block.type for block in message.content] == ["thinking", "text"]
    assert message.content[0].thinking == "Thinking about the request"
    assert message.content[0].signature == MOCK_THOUGHT_SIGNATURE
    assert message.content[1].text == "This is the Tokenport mock"
    assert message.stop_reason == "stop_sequence"
    assert message.stop_sequence == "upstream"
    assert message.usage.output_tokens == 4 + 5
    assert message.usage.output_tokens_details.thinking_tokens == 4


@pytest.mark.anyio
async def test_anthropic_sdk_tool_use(anthropic_sdk) -> None:
    async with anthropic_sdk.messages.stream(
        model="mock-1",
        max_tokens=100,
        tools=[{"name": "get_weather", "input_schema": {"type": "object", "properties": {}}}],
        messages=[{"role": "user", "content": "Weather in Paris?"}],
    ) as stream:
        message = await stream.get_final_message()

    assert message.stop_reason == "tool_use"
    assert message.content[0].type == "tool_use"
    assert message.content[0].input == MOCK_TOOL_ARGUMENTS
    assert message.usage.output_tokens == MOCK_TOOL_CALL_TOKENS


@pytest.mark.anyio
async def test_anthropic_sdk_errors(anthropic_sdk, fresh_mock_upstream) -> None:
    with pytest.raises(anthropic.RateLimitError) as rate_limited:
        await anthropic_sdk.messages.create(
            model="mock-1+status_429", max_tokens=5, messages=[{"role": "user", "content": "x"}]
        )
    with pytest.raises(anthropic.BadRequestError) as invalid:
        await anthropic_sdk.messages.create(
            model="mock-1", max_tokens=0, messages=[{"role": "user", "content": "x"}]
        )

    assert rate_limited.value.response.headers["retry-after"] == "7"
    assert rate_limited.value.body["error"]["type"] == "rate_limit_error"
    assert invalid.value.body["error"]["message"].startswith("max_tokens:")


def post_messages(mock, body: Any, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.post(
        f"{mock.root_url}/v1/messages",
        json=body,
        headers=headers
        if headers is not None
        else {"x-api-key": mock.api_key, "anthropic-version": "2023-06-01"},
        timeout=TIMEOUT_S,
        trust_env=False,
    )


def test_anthropic_requires_key_and_version(fresh_mock_upstream) -> None:
    body = {"model": "mock-1", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}

    wrong_key = post_messages(
        fresh_mock_upstream, body, {"x-api-key": "sk-wrong", "anthropic-version": "2023-06-01"}
    )
    no_version = post_messages(
        fresh_mock_upstream, body, {"x-api-key": fresh_mock_upstream.api_key}
    )

    assert wrong_key.status_code == 401
    assert wrong_key.json() == {
        "type": "error",
        "error": {
            "type": "authentication_error",
            "message": "Incorrect API key provided: sk-wrong.",
        },
    }
    assert no_version.status_code == 400
    assert no_version.json()["error"]["type"] == "invalid_request_error"
    assert fresh_mock_upstream.stats()["unauthorized"] == 1


def test_anthropic_sse_wire_format(fresh_mock_upstream) -> None:
    response = post_messages(
        fresh_mock_upstream,
        {
            "model": "mock-1",
            "max_tokens": 1,
            "stream": True,
            "messages": [{"role": "user", "content": "x"}],
        },
    )

    events = [event for event in response.text.split("\n\n") if event]
    names = [event.split("\n")[0] for event in events]
    assert names == [
        "event: message_start",
        "event: ping",
        "event: content_block_start",
        "event: content_block_delta",
        "event: content_block_stop",
        "event: message_delta",
        "event: message_stop",
    ]
    assert all(event.split("\n")[1].startswith("data: {") for event in events)


# The Gemini protocol.


def post_gemini(
    mock, model: str, body: Any, *, method: str = "generateContent", key: str | None = None
) -> httpx.Response:
    suffix = "?alt=sse" if method == "streamGenerateContent" else ""
    return httpx.post(
        f"{mock.root_url}/v1beta/models/{model}:{method}{suffix}",
        json=body,
        headers={"x-goog-api-key": key if key is not None else mock.api_key},
        timeout=TIMEOUT_S,
        trust_env=False,
    )


def gemini_body(**config: Any) -> dict[str, Any]:
    return {
        "contents": [{"role": "user", "parts": [{"text": "Say hello"}]}],
        "generationConfig": config,
    }


def test_gemini_response_shape(fresh_mock_upstream) -> None:
    response = post_gemini(
        fresh_mock_upstream, "mock-1+reasoning+cached:2", gemini_body(maxOutputTokens=6)
    )

    assert response.status_code == 200
    assert response.json() == {
        "candidates": [
            {
                "content": {
                    "role": "model",
                    "parts": [
                        {"text": "Thinking about the request", "thought": True},
                        {"text": "This is"},
                    ],
                },
                "finishReason": "MAX_TOKENS",
                "index": 0,
            }
        ],
        "modelVersion": "mock-1",
        "responseId": "mock0000000001",
        "usageMetadata": {
            "promptTokenCount": 5,
            "candidatesTokenCount": 2,
            "totalTokenCount": 11,
            "cachedContentTokenCount": 2,
            "thoughtsTokenCount": 4,
        },
    }


def test_gemini_stream_shape(fresh_mock_upstream) -> None:
    response = post_gemini(
        fresh_mock_upstream,
        "mock-1",
        gemini_body(maxOutputTokens=2),
        method="streamGenerateContent",
    )

    events = [
        json.loads(event.removeprefix("data: ")) for event in response.text.split("\n\n") if event
    ]
    assert [event["candidates"][0]["content"]["parts"] for event in events] == [
        [{"text": "This"}],
        [{"text": " is"}],
    ]
    assert "finishReason" not in events[0]["candidates"][0]
    assert events[-1]["candidates"][0]["finishReason"] == "MAX_TOKENS"
    assert events[-1]["usageMetadata"] == {
        "promptTokenCount": 5,
        "candidatesTokenCount": 2,
        "totalTokenCount": 7,
    }


@pytest.mark.parametrize(
    ("key", "status_code", "status"),
    [("", 403, "PERMISSION_DENIED"), ("AIza-wrong", 400, "INVALID_ARGUMENT")],
)
def test_gemini_rejects_key(fresh_mock_upstream, key, status_code, status) -> None:
    response = post_gemini(fresh_mock_upstream, "mock-1", gemini_body(), key=key)

    assert response.status_code == status_code
    assert response.json()["error"]["status"] == status


def test_gemini_rate_limit_has_retry_info(fresh_mock_upstream) -> None:
    response = post_gemini(fresh_mock_upstream, "mock-1+status_429", gemini_body())

    assert response.status_code == 429
    assert response.headers["retry-after"] == "7"
    assert response.json()["error"]["details"] == [
        {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "7s"}
    ]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"contents": []}, "contents: contents must be a non-empty list."),
        ({"contents": [{"role": "user"}]}, "contents[0]: Each content needs a parts list."),
        (
            gemini_body(maxOutputTokens=0),
            "generationConfig.maxOutputTokens: must be an integer >= 1, got 0.",
        ),
        (gemini_body(candidateCount=9), "generationConfig.candidateCount: must be at most 8."),
    ],
)
def test_gemini_invalid_request(fresh_mock_upstream, body, message) -> None:
    response = post_gemini(fresh_mock_upstream, "mock-1", body)

    assert response.status_code == 400
    assert response.json()["error"]["message"] == message


def test_gemini_stream_needs_alt_sse(fresh_mock_upstream) -> None:
    response = httpx.post(
        f"{fresh_mock_upstream.root_url}/v1beta/models/mock-1:streamGenerateContent",
        json=gemini_body(),
        headers={"x-goog-api-key": fresh_mock_upstream.api_key},
        timeout=TIMEOUT_S,
        trust_env=False,
    )

    assert response.status_code == 400
    assert "alt=sse" in response.json()["error"]["message"]


def test_scheduled_faults_apply_to_every_protocol(fresh_mock_upstream) -> None:
    fresh_mock_upstream.set_faults(["status_500"], count=3)
    anthropic_body = {
        "model": "mock-1",
        "max_tokens": 5,
        "messages": [{"role": "user", "content": "x"}],
    }

    statuses = [
        post_chat(fresh_mock_upstream, chat_body()).status_code,
        post_messages(fresh_mock_upstream, anthropic_body).status_code,
        post_gemini(fresh_mock_upstream, "mock-1", gemini_body()).status_code,
        post_gemini(fresh_mock_upstream, "mock-1", gemini_body()).status_code,
    ]

    assert statuses == [500, 500, 500, 200]
    assert fresh_mock_upstream.stats()["requests_by_protocol"] == {
        "openai": 1,
        "anthropic": 1,
        "gemini": 2,
    }


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            {"max_tokens": 5, "messages": [{"role": "user", "content": "x"}]},
            "model: Field required.",
        ),
        (
            {"model": "mock-1", "max_tokens": 5, "messages": [{"role": "system", "content": "x"}]},
            "messages.0: Each message needs role user or assistant and content.",
        ),
        (
            {
                "model": "mock-1",
                "max_tokens": 5,
                "n": 2,
                "messages": [{"role": "user", "content": "x"}],
            },
            "n: Extra inputs are not permitted.",
        ),
        (
            {
                "model": "mock-1",
                "max_tokens": 5,
                "tools": "x",
                "messages": [{"role": "user", "content": "x"}],
            },
            "tools: Must be a list of tool objects.",
        ),
        (
            {
                "model": "mock-1",
                "max_tokens": 5,
                "tool_choice": "any",
                "messages": [{"role": "user", "content": "x"}],
            },
            "tool_choice: Must be an object.",
        ),
    ],
)
def test_anthropic_invalid_request(fresh_mock_upstream, body, message) -> None:
    response = post_messages(fresh_mock_upstream, body)

    assert response.status_code == 400
    assert response.json() == {
        "type": "error",
        "error": {"type": "invalid_request_error", "message": message},
    }
