"""The Anthropic Messages adapter: request translation, and calls against the mock upstream."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from providers import anthropic
from providers.errors import UpstreamError
from providers.mock_upstream import (
    MOCK_REASONING_WORDS,
    MOCK_REPLY_WORDS,
    MOCK_RETRY_AFTER_S,
    MOCK_TOOL_CALL_TOKENS,
    expected_usage,
)
from providers.usage import Usage

pytestmark = pytest.mark.anyio

TIMEOUT_S = 10.0
# Well below the mock's `timeout` fault wait (5 s in the fixture), so the client gives up first.
SHORT_TIMEOUT_S = 0.5
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather of a city",
        "parameters": {"type": "object", "properties": {"location": {"type": "string"}}},
    },
}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(trust_env=False) as shared_client:
        yield shared_client


def chat_body(**extra: Any) -> dict[str, Any]:
    return {
        "model": "mock-1",
        "messages": [
            {"role": "system", "content": "Be brief"},
            {"role": "user", "content": "Say hello"},
        ],
        "max_tokens": 50,
        **extra,
    }


def weather_body(**extra: Any) -> dict[str, Any]:
    return chat_body(
        messages=[{"role": "user", "content": "What is the weather in Paris?"}],
        tools=[WEATHER_TOOL],
        **extra,
    )


async def collect(chunks: AsyncIterator[dict[str, Any]]) -> list[dict[str, Any]]:
    return [chunk async for chunk in chunks]


def joined(chunks: list[dict[str, Any]], field: str = "content") -> str:
    return "".join(
        choice["delta"].get(field) or "" for chunk in chunks for choice in chunk["choices"]
    )


def tool_call_deltas(chunks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        call
        for chunk in chunks
        for choice in chunk["choices"]
        for call in choice["delta"].get("tool_calls") or []
    ]


def mock_usage(body: dict[str, Any], faults: tuple[str, ...] = ()) -> Usage:
    """The canonical usage the mock reports for the Messages request the adapter sends."""
    return expected_usage(anthropic.to_messages_request(body), faults, protocol="anthropic")


# Request translation.


def test_translate_system_and_stop() -> None:
    request = anthropic.to_messages_request(
        chat_body(stop="END", temperature=0.2, top_p=0.9, user="buyer-7", max_completion_tokens=20)
    )

    assert request == {
        "model": "mock-1",
        "max_tokens": 20,
        "system": [{"type": "text", "text": "Be brief"}],
        "messages": [{"role": "user", "content": [{"type": "text", "text": "Say hello"}]}],
        "stop_sequences": ["END"],
        "temperature": 0.2,
        "top_p": 0.9,
        "metadata": {"user_id": "buyer-7"},
    }


def test_translate_images_and_documents() -> None:
    content = [
        {"type": "text", "text": "Compare", "cache_control": {"type": "ephemeral"}},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0K"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
        {
            "type": "file",
            "file": {"file_data": "data:application/pdf;base64,JVBERi0x", "filename": "a.pdf"},
        },
    ]

    request = anthropic.to_messages_request(
        chat_body(messages=[{"role": "user", "content": content}])
    )

    assert request["messages"][0]["content"] == [
        {"type": "text", "text": "Compare", "cache_control": {"type": "ephemeral"}},
        {
            "type": "image",
            "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0K"},
        },
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
        {
            "type": "document",
            "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0x"},
        },
    ]


def test_translate_tool_round_trip() -> None:
    messages = [
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {
            "role": "assistant",
            "content": "Checking.",
            "tool_calls": [
                {
                    "id": "toolu_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"location": "Paris"}'},
                },
                {
                    "id": "toolu_2",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": ""},
                },
            ],
        },
        {"role": "tool", "tool_call_id": "toolu_1", "content": "18 C"},
        {"role": "tool", "tool_call_id": "toolu_2", "content": [{"type": "text", "text": "21 C"}]},
        {"role": "user", "content": "Thanks"},
    ]

    request = anthropic.to_messages_request(
        chat_body(
            messages=messages,
            tools=[WEATHER_TOOL],
            tool_choice="required",
            parallel_tool_calls=False,
        )
    )

    assert request["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "Weather in Paris and Rome?"}]},
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Checking."},
                {
                    "type": "tool_use",
                    "id": "toolu_1",
                    "name": "get_weather",
                    "input": {"location": "Paris"},
                },
                {"type": "tool_use", "id": "toolu_2", "name": "get_weather", "input": {}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": "18 C"},
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_2",
                    "content": [{"type": "text", "text": "21 C"}],
                },
                {"type": "text", "text": "Thanks"},
            ],
        },
    ]
    assert request["tools"] == [
        {
            "name": "get_weather",
            "description": "Current weather of a city",
            "input_schema": {"type": "object", "properties": {"location": {"type": "string"}}},
        }
    ]
    assert request["tool_choice"] == {"type": "any", "disable_parallel_tool_use": True}


@pytest.mark.parametrize(
    ("tool_choice", "expected"),
    [
        ("auto", {"type": "auto"}),
        ("none", {"type": "none"}),
        (
            {"type": "function", "function": {"name": "get_weather"}},
            {"type": "tool", "name": "get_weather"},
        ),
    ],
)
def test_translate_tool_choice(tool_choice, expected) -> None:
    request = anthropic.to_messages_request(weather_body(tool_choice=tool_choice))

    assert request["tool_choice"] == expected


def test_empty_tool_calls_list_is_no_tool_use() -> None:
    messages = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello", "tool_calls": []},
        {"role": "user", "content": "Bye"},
    ]

    request = anthropic.to_messages_request(chat_body(messages=messages))

    assert request["messages"][1] == {
        "role": "assistant",
        "content": [{"type": "text", "text": "Hello"}],
    }


@pytest.mark.parametrize(
    ("effort", "max_tokens", "thinking"),
    [
        ("low", 4000, {"type": "enabled", "budget_tokens": 1024}),
        ("high", 32000, {"type": "enabled", "budget_tokens": 16384}),
        ("high", 16000, None),
        (None, 4000, None),
    ],
)
def test_reasoning_effort_becomes_thinking(effort, max_tokens, thinking) -> None:
    request = anthropic.to_messages_request(
        chat_body(reasoning_effort=effort, max_tokens=max_tokens)
    )

    assert request.get("thinking") == thinking


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (chat_body(n=2), "n=2 is not supported by Anthropic upstreams"),
        ({"model": "m", "messages": [{"role": "user", "content": "Hi"}]}, "max_tokens is required"),
        (chat_body(messages=[{"role": "function", "content": "x"}]), "messages[0].role 'function'"),
        (
            chat_body(
                messages=[{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}]
            ),
            "messages[0].content[0].type 'input_audio' is not supported",
        ),
        (
            chat_body(
                messages=[
                    {
                        "role": "user",
                        "content": [{"type": "image_url", "image_url": {"url": "ftp://x"}}],
                    }
                ]
            ),
            "messages[0].content[0].image_url.url must be an https URL or a base64 data URL",
        ),
        (
            chat_body(
                messages=[
                    {
                        "role": "assistant",
                        "tool_calls": [
                            {
                                "id": "t",
                                "type": "function",
                                "function": {"name": "f", "arguments": "{oops"},
                            }
                        ],
                    }
                ]
            ),
            "messages[0].tool_calls[0].function.arguments is not valid JSON",
        ),
        (
            chat_body(messages=[{"role": "tool", "content": "x"}]),
            "messages[0].tool_call_id is missing",
        ),
        (chat_body(tools=[{"type": "retrieval"}]), "tools[0].type must be 'function'"),
    ],
)
def test_untranslatable_request_rejected(body, message) -> None:
    with pytest.raises(UpstreamError) as caught:
        anthropic.to_messages_request(body)

    assert caught.value.kind == "client_error"
    assert caught.value.status_code is None
    assert message in caught.value.message


async def test_untranslatable_request_sends_nothing(client, fresh_mock_upstream) -> None:
    with pytest.raises(UpstreamError):
        await anthropic.complete(
            client,
            fresh_mock_upstream.base_url,
            fresh_mock_upstream.api_key,
            chat_body(n=3),
            TIMEOUT_S,
        )
    with pytest.raises(UpstreamError):
        await anext(
            anthropic.stream(
                client,
                fresh_mock_upstream.base_url,
                fresh_mock_upstream.api_key,
                chat_body(n=3),
                TIMEOUT_S,
            )
        )

    assert fresh_mock_upstream.stats()["requests"] == 0


# Response and usage translation.


def test_usage_excludes_cache_from_input() -> None:
    usage = anthropic.usage_from_messages(
        {
            "input_tokens": 10,
            "cache_read_input_tokens": 200,
            "cache_creation_input_tokens": 30,
            "output_tokens": 40,
            "output_tokens_details": {"thinking_tokens": 25},
        }
    )

    assert usage == Usage(
        prompt_tokens=240,
        completion_tokens=40,
        cached_prompt_tokens=200,
        cache_write_tokens=30,
        reasoning_tokens=25,
    )


@pytest.mark.parametrize(
    ("stop_reason", "finish_reason"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("tool_use", "tool_calls"),
        ("refusal", "content_filter"),
        ("pause_turn", "stop"),
        ("model_context_window_exceeded", "length"),
        ("something_new", "stop"),
        (None, None),
    ],
)
def test_finish_reason_mapping(stop_reason, finish_reason) -> None:
    assert anthropic.finish_reason_for(stop_reason) == finish_reason


# Non-streaming calls against the mock upstream.


async def test_complete_text_and_usage(client, fresh_mock_upstream) -> None:
    body = chat_body(max_tokens=5)

    result = await anthropic.complete(
        client, fresh_mock_upstream.base_url, fresh_mock_upstream.api_key, body, TIMEOUT_S
    )

    assert result.body["object"] == "chat.completion"
    assert result.body["id"] == "msg_mock0000000001"
    assert result.body["choices"][0]["message"] == {
        "role": "assistant",
        "content": "This is the Tokenport mock",
    }
    assert result.body["choices"][0]["finish_reason"] == "length"
    # System (3 + 2 words) and user (3 + 2 words); five reply words.
    assert result.usage == Usage(prompt_tokens=10, completion_tokens=5)
    assert result.usage == mock_usage(body)
    assert fresh_mock_upstream.stats()["last_headers"][-1]["anthropic-version"] == "2023-06-01"


async def test_complete_cache_and_reasoning(client, fresh_mock_upstream) -> None:
    body = chat_body(model="mock-1+reasoning+cached:4+cache_write:3")

    result = await anthropic.complete(
        client, fresh_mock_upstream.base_url, fresh_mock_upstream.api_key, body, TIMEOUT_S
    )

    assert result.usage == Usage(
        prompt_tokens=10,
        completion_tokens=len(MOCK_REASONING_WORDS) + len(MOCK_REPLY_WORDS),
        cached_prompt_tokens=4,
        cache_write_tokens=3,
        reasoning_tokens=len(MOCK_REASONING_WORDS),
    )
    assert result.body["choices"][0]["message"]["reasoning_content"] == "Thinking about the request"
    assert result.body["choices"][0]["message"]["content"] == " ".join(MOCK_REPLY_WORDS)
    assert result.body["usage"]["prompt_tokens_details"] == {
        "cached_tokens": 4,
        "cache_write_tokens": 3,
    }


async def test_complete_stop_sequence(client, fresh_mock_upstream) -> None:
    result = await anthropic.complete(
        client,
        fresh_mock_upstream.base_url,
        fresh_mock_upstream.api_key,
        chat_body(stop=["Tokenport"]),
        TIMEOUT_S,
    )

    assert result.body["choices"][0]["message"]["content"] == "This is the"
    assert result.body["choices"][0]["finish_reason"] == "stop"
    assert fresh_mock_upstream.stats()["last_bodies"][-1]["stop_sequences"] == ["Tokenport"]


async def test_complete_tool_call(client, fresh_mock_upstream) -> None:
    result = await anthropic.complete(
        client, fresh_mock_upstream.base_url, fresh_mock_upstream.api_key, weather_body(), TIMEOUT_S
    )

    choice = result.body["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] is None
    assert choice["message"]["tool_calls"] == [
        {
            "id": "toolu_mock0000000001",
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"location": "Paris"}'},
        }
    ]
    # One user message of six words; a tool call costs a fixed number of tokens.
    assert result.usage == Usage(prompt_tokens=3 + 6, completion_tokens=MOCK_TOOL_CALL_TOKENS)


async def test_tool_result_round_trip(client, fresh_mock_upstream) -> None:
    first = await anthropic.complete(
        client, fresh_mock_upstream.base_url, fresh_mock_upstream.api_key, weather_body(), TIMEOUT_S
    )
    call = first.body["choices"][0]["message"]["tool_calls"][0]
    follow_up = weather_body()
    follow_up["messages"] += [
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": call["id"], "content": "18 C and sunny"},
    ]

    second = await anthropic.complete(
        client, fresh_mock_upstream.base_url, fresh_mock_upstream.api_key, follow_up, TIMEOUT_S
    )

    assert second.body["choices"][0]["finish_reason"] == "stop"
    assert second.body["choices"][0]["message"]["content"] == " ".join(MOCK_REPLY_WORDS)
    sent = fresh_mock_upstream.stats()["last_bodies"][-1]["messages"]
    assert sent[1]["content"] == [
        {
            "type": "tool_use",
            "id": call["id"],
            "name": "get_weather",
            "input": {"location": "Paris"},
        }
    ]
    assert sent[2] == {
        "role": "user",
        "content": [
            {"type": "tool_result", "tool_use_id": call["id"], "content": "18 C and sunny"}
        ],
    }


async def test_complete_without_usage(client, fresh_mock_upstream) -> None:
    result = await anthropic.complete(
        client,
        fresh_mock_upstream.base_url,
        fresh_mock_upstream.api_key,
        chat_body(model="mock-1+no_usage"),
        TIMEOUT_S,
    )

    assert result.usage is None
    assert "usage" not in result.body


@pytest.mark.parametrize(
    ("fault", "kind", "status_code", "retry_after_s", "message_part"),
    [
        (
            "status_500",
            "server_error",
            500,
            None,
            "failed on purpose (fault status_500)., type=api_error",
        ),
        ("status_429", "rate_limited", 429, float(MOCK_RETRY_AFTER_S), "type=rate_limit_error"),
        ("malformed_sse", "bad_response", 200, None, "not valid JSON"),
        ("disconnect_after:0", "connection", None, None, "connection to upstream"),
    ],
)
async def test_complete_fault_kinds(
    client, fresh_mock_upstream, fault, kind, status_code, retry_after_s, message_part
) -> None:
    fresh_mock_upstream.set_faults([fault])

    with pytest.raises(UpstreamError) as caught:
        await anthropic.complete(
            client,
            fresh_mock_upstream.base_url,
            fresh_mock_upstream.api_key,
            chat_body(),
            TIMEOUT_S,
        )

    assert caught.value.kind == kind
    assert caught.value.status_code == status_code
    assert caught.value.retry_after_s == retry_after_s
    assert message_part in caught.value.message


async def test_complete_timeout(client, fresh_mock_upstream) -> None:
    with pytest.raises(UpstreamError) as caught:
        await anthropic.complete(
            client,
            fresh_mock_upstream.base_url,
            fresh_mock_upstream.api_key,
            chat_body(model="mock-1+timeout"),
            SHORT_TIMEOUT_S,
        )

    assert caught.value.kind == "timeout"
    assert caught.value.message.endswith(f"timed out after {SHORT_TIMEOUT_S} s")


async def test_complete_wrong_key_is_redacted(client, fresh_mock_upstream) -> None:
    wrong_key = "sk-ant-wrong-credential-4242"

    with pytest.raises(UpstreamError) as caught:
        await anthropic.complete(
            client, fresh_mock_upstream.base_url, wrong_key, chat_body(), TIMEOUT_S
        )

    assert caught.value.kind == "client_error"
    assert caught.value.status_code == 401
    assert wrong_key not in str(caught.value)
    assert (
        "Incorrect API key provided: [REDACTED]., type=authentication_error" in caught.value.message
    )


# Streaming calls against the mock upstream.


async def test_stream_text_chunks_and_usage(client, fresh_mock_upstream) -> None:
    body = chat_body(max_tokens=4)

    chunks = await collect(
        anthropic.stream(
            client, fresh_mock_upstream.base_url, fresh_mock_upstream.api_key, body, TIMEOUT_S
        )
    )

    assert [chunk["choices"][0]["delta"] for chunk in chunks[:-1]] == [
        {"role": "assistant", "content": ""},
        {"content": "This"},
        {"content": " is"},
        {"content": " the"},
        {"content": " Tokenport"},
        {},
    ]
    assert chunks[-2]["choices"][0]["finish_reason"] == "length"
    assert chunks[-1]["choices"] == []
    assert {chunk["id"] for chunk in chunks} == {"msg_mock0000000001"}
    assert anthropic.usage_from_chunk(chunks[-1]) == Usage(prompt_tokens=10, completion_tokens=4)
    assert [anthropic.usage_from_chunk(chunk) for chunk in chunks[:-1]] == [None] * 6


async def test_stream_reasoning_and_cache(client, fresh_mock_upstream) -> None:
    chunks = await collect(
        anthropic.stream(
            client,
            fresh_mock_upstream.base_url,
            fresh_mock_upstream.api_key,
            chat_body(model="mock-1+reasoning+cached:2+cache_write:5"),
            TIMEOUT_S,
        )
    )

    assert joined(chunks, "reasoning_content") == "Thinking about the request"
    assert joined(chunks) == " ".join(MOCK_REPLY_WORDS)
    assert anthropic.usage_from_chunk(chunks[-1]) == Usage(
        prompt_tokens=10,
        completion_tokens=16,
        cached_prompt_tokens=2,
        cache_write_tokens=5,
        reasoning_tokens=4,
    )


async def test_stream_tool_call(client, fresh_mock_upstream) -> None:
    chunks = await collect(
        anthropic.stream(
            client,
            fresh_mock_upstream.base_url,
            fresh_mock_upstream.api_key,
            weather_body(),
            TIMEOUT_S,
        )
    )

    deltas = tool_call_deltas(chunks)
    assert deltas[0] == {
        "index": 0,
        "id": "toolu_mock0000000001",
        "type": "function",
        "function": {"name": "get_weather", "arguments": ""},
    }
    arguments = "".join(delta["function"]["arguments"] for delta in deltas)
    assert json.loads(arguments) == {"location": "Paris"}
    assert [chunk["choices"][0]["finish_reason"] for chunk in chunks if chunk["choices"]][
        -1
    ] == "tool_calls"
    assert joined(chunks) == ""


async def test_stream_without_usage(client, fresh_mock_upstream) -> None:
    chunks = await collect(
        anthropic.stream(
            client,
            fresh_mock_upstream.base_url,
            fresh_mock_upstream.api_key,
            chat_body(model="mock-1+no_usage"),
            TIMEOUT_S,
        )
    )

    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert [anthropic.usage_from_chunk(chunk) for chunk in chunks] == [None] * len(chunks)


@pytest.mark.parametrize(
    ("fault", "kind", "status_code", "retry_after_s"),
    [
        ("status_500", "server_error", 500, None),
        ("status_429", "rate_limited", 429, float(MOCK_RETRY_AFTER_S)),
    ],
)
async def test_stream_status_error_before_first_chunk(
    client, fresh_mock_upstream, fault, kind, status_code, retry_after_s
) -> None:
    chunks = anthropic.stream(
        client,
        fresh_mock_upstream.base_url,
        fresh_mock_upstream.api_key,
        chat_body(model=f"mock-1+{fault}"),
        TIMEOUT_S,
    )

    with pytest.raises(UpstreamError) as caught:
        await anext(chunks)

    assert caught.value.kind == kind
    assert caught.value.status_code == status_code
    assert caught.value.retry_after_s == retry_after_s


async def test_stream_timeout(client, fresh_mock_upstream) -> None:
    chunks = anthropic.stream(
        client,
        fresh_mock_upstream.base_url,
        fresh_mock_upstream.api_key,
        chat_body(model="mock-1+timeout"),
        SHORT_TIMEOUT_S,
    )

    with pytest.raises(UpstreamError) as caught:
        await anext(chunks)

    assert caught.value.kind == "timeout"


async def test_stream_malformed_event(client, fresh_mock_upstream) -> None:
    received: list[dict[str, Any]] = []

    with pytest.raises(UpstreamError) as caught:
        async for chunk in anthropic.stream(
            client,
            fresh_mock_upstream.base_url,
            fresh_mock_upstream.api_key,
            chat_body(model="mock-1+malformed_sse"),
            TIMEOUT_S,
        ):
            received.append(chunk)

    assert caught.value.kind == "bad_response"
    assert "event data that is not valid JSON" in caught.value.message
    assert [chunk["choices"][0]["delta"] for chunk in received] == [
        {"role": "assistant", "content": ""}
    ]


async def test_stream_disconnect_mid_stream(client, fresh_mock_upstream) -> None:
    received: list[dict[str, Any]] = []

    with pytest.raises(UpstreamError) as caught:
        async for chunk in anthropic.stream(
            client,
            fresh_mock_upstream.base_url,
            fresh_mock_upstream.api_key,
            chat_body(model="mock-1+disconnect_after:3"),
            TIMEOUT_S,
        ):
            received.append(chunk)

    assert caught.value.kind == "connection"
    assert joined(received) == "This is the"


async def test_stream_error_event(client, fresh_mock_upstream) -> None:
    received: list[dict[str, Any]] = []

    with pytest.raises(UpstreamError) as caught:
        async for chunk in anthropic.stream(
            client,
            fresh_mock_upstream.base_url,
            fresh_mock_upstream.api_key,
            chat_body(model="mock-1+stream_error"),
            TIMEOUT_S,
        ):
            received.append(chunk)

    assert caught.value.kind == "server_error"
    assert caught.value.status_code == 200
    assert caught.value.message.endswith(
        "sent an error event inside the stream: "
        "Overloaded (mock fault stream_error), type=overloaded_error"
    )
    assert joined(received) == "This"


async def test_stream_ends_before_message_stop() -> None:
    events = [
        {
            "type": "message_start",
            "message": {
                "id": "msg_1",
                "model": "m",
                "usage": {"input_tokens": 1, "output_tokens": 1},
            },
        },
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hi"}},
    ]
    body = b"".join(
        b"event: " + event["type"].encode() + b"\ndata: " + json.dumps(event).encode() + b"\n\n"
        for event in events
    )

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=body, headers={"content-type": "text/event-stream"})

    received: list[dict[str, Any]] = []
    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        with pytest.raises(UpstreamError) as caught:
            async for chunk in anthropic.stream(
                client, "http://upstream.test/v1", "k", chat_body(), TIMEOUT_S
            ):
                received.append(chunk)

    assert caught.value.kind == "connection"
    assert (
        caught.value.message
        == "upstream http://upstream.test closed the stream before sending message_stop"
    )
    assert joined(received) == "Hi"


async def test_stream_early_aclose_closes_response(fresh_mock_upstream) -> None:
    async with httpx.AsyncClient(trust_env=False) as client:
        chunks = anthropic.stream(
            client,
            fresh_mock_upstream.base_url,
            fresh_mock_upstream.api_key,
            chat_body(model="mock-1+chunk_delay_ms:50"),
            TIMEOUT_S,
        )
        first = await anext(chunks)
        await chunks.aclose()

    assert first["choices"][0]["delta"]["role"] == "assistant"
    stats = fresh_mock_upstream.wait_for_stats(lambda stats: stats["streams_aborted"] == 1)
    assert stats["streams_aborted"] == 1
    assert stats["streams_completed"] == 0
