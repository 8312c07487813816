"""The Gemini adapter: request translation, and calls against the mock upstream."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from providers import gemini
from providers.errors import UpstreamError
from providers.mock_upstream import (
    MOCK_REASONING_WORDS,
    MOCK_REPLY_WORDS,
    MOCK_RETRY_AFTER_S,
    MOCK_THOUGHT_SIGNATURE,
    MOCK_TOOL_CALL_TOKENS,
    expected_usage,
)
from providers.usage import InvalidUsageError, Usage

pytestmark = pytest.mark.anyio

TIMEOUT_S = 10.0
SHORT_TIMEOUT_S = 0.5
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather of a city",
        "parameters": {
            "type": "object",
            "properties": {"location": {"type": "string"}},
            "additionalProperties": False,
        },
    },
}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(trust_env=False) as shared_client:
        yield shared_client


def base_url(mock) -> str:
    return f"{mock.root_url}/v1beta"


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


def joined(chunks: list[dict[str, Any]], field: str = "content", index: int = 0) -> str:
    return "".join(
        choice["delta"].get(field) or ""
        for chunk in chunks
        for choice in chunk["choices"]
        if choice["index"] == index
    )


def mock_usage(body: dict[str, Any], faults: tuple[str, ...] = ()) -> Usage:
    model, request = gemini.to_gemini_request(body)
    return expected_usage(request, faults, protocol="gemini", model=model)


# Request translation.


def test_translate_generation_config() -> None:
    model, request = gemini.to_gemini_request(
        chat_body(
            max_completion_tokens=20,
            temperature=0.3,
            top_p=0.8,
            seed=7,
            stop=["END"],
            n=2,
            presence_penalty=0.5,
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "x", "schema": {"type": "object"}},
            },
        )
    )

    assert model == "mock-1"
    assert request["systemInstruction"] == {"parts": [{"text": "Be brief"}]}
    assert request["contents"] == [{"role": "user", "parts": [{"text": "Say hello"}]}]
    assert request["generationConfig"] == {
        "maxOutputTokens": 20,
        "temperature": 0.3,
        "topP": 0.8,
        "seed": 7,
        "presencePenalty": 0.5,
        "stopSequences": ["END"],
        "candidateCount": 2,
        "responseMimeType": "application/json",
        "responseJsonSchema": {"type": "object"},
    }


def test_translate_media_parts() -> None:
    content = [
        {"type": "text", "text": "Describe"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0K"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg?size=large"}},
        {"type": "file", "file": {"file_data": "data:application/pdf;base64,JVBERi0x"}},
        {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}},
    ]

    _, request = gemini.to_gemini_request(
        chat_body(messages=[{"role": "user", "content": content}])
    )

    assert request["contents"][0]["parts"] == [
        {"text": "Describe"},
        {"inlineData": {"mimeType": "image/png", "data": "iVBORw0K"}},
        {
            "fileData": {
                "mimeType": "image/jpeg",
                "fileUri": "https://example.com/cat.jpg?size=large",
            }
        },
        {"inlineData": {"mimeType": "application/pdf", "data": "JVBERi0x"}},
        {"inlineData": {"mimeType": "audio/wav", "data": "UklGRg=="}},
    ]


def test_translate_tools_and_results() -> None:
    messages = [
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_a",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"location": "Paris"}'},
                    "extra_content": {"google": {"thought_signature": "c2ln"}},
                },
                {
                    "id": "call_b",
                    "type": "function",
                    "function": {"name": "get_time", "arguments": "{}"},
                },
            ],
        },
        {"role": "tool", "tool_call_id": "call_a", "content": '{"celsius": 18}'},
        {"role": "tool", "tool_call_id": "call_b", "content": "noon"},
    ]

    _, request = gemini.to_gemini_request(
        chat_body(
            messages=messages,
            tools=[WEATHER_TOOL],
            tool_choice={"type": "function", "function": {"name": "get_weather"}},
        )
    )

    assert request["contents"] == [
        {"role": "user", "parts": [{"text": "Weather in Paris and Rome?"}]},
        {
            "role": "model",
            "parts": [
                {
                    "functionCall": {"name": "get_weather", "args": {"location": "Paris"}},
                    "thoughtSignature": "c2ln",
                },
                {"functionCall": {"name": "get_time", "args": {}}},
            ],
        },
        {
            "role": "user",
            "parts": [
                {"functionResponse": {"name": "get_weather", "response": {"celsius": 18}}},
                {"functionResponse": {"name": "get_time", "response": {"result": "noon"}}},
            ],
        },
    ]
    assert request["tools"] == [
        {
            "functionDeclarations": [
                {
                    "name": "get_weather",
                    "description": "Current weather of a city",
                    "parametersJsonSchema": WEATHER_TOOL["function"]["parameters"],
                }
            ]
        }
    ]
    assert request["toolConfig"] == {
        "functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["get_weather"]}
    }


@pytest.mark.parametrize(
    ("tool_choice", "mode"), [("auto", "AUTO"), ("none", "NONE"), ("required", "ANY")]
)
def test_translate_tool_choice(tool_choice, mode) -> None:
    _, request = gemini.to_gemini_request(weather_body(tool_choice=tool_choice))

    assert request["toolConfig"] == {"functionCallingConfig": {"mode": mode}}


def test_translate_model_prefix_and_url() -> None:
    url = gemini.generate_url(
        "https://generativelanguage.googleapis.com/v1beta/",
        "models/gemini-2.5-flash",
        streaming=True,
    )

    assert url == (
        "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse"
    )


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (chat_body(model=""), "model is missing"),
        (chat_body(messages=[{"role": "function", "content": "x"}]), "messages[0].role 'function'"),
        (
            chat_body(messages=[{"role": "tool", "tool_call_id": "call_x", "content": "1"}]),
            "messages[0].tool_call_id 'call_x' matches no tool call",
        ),
        (
            chat_body(
                messages=[
                    {
                        "role": "user",
                        "content": [
                            {"type": "image_url", "image_url": {"url": "https://example.com/image"}}
                        ],
                    }
                ]
            ),
            "must be a base64 data URL, or an http(s) URL whose path ends in a known image",
        ),
        (
            chat_body(
                messages=[
                    {"role": "user", "content": [{"type": "file", "file": {"file_id": "file-1"}}]}
                ]
            ),
            "messages[0].content[0].file.file_data is missing",
        ),
        (
            chat_body(tools=[WEATHER_TOOL], tool_choice="sometimes"),
            "tool_choice 'sometimes' is not supported",
        ),
    ],
)
def test_untranslatable_request_rejected(body, message) -> None:
    with pytest.raises(UpstreamError) as caught:
        gemini.to_gemini_request(body)

    assert caught.value.kind == "client_error"
    assert caught.value.status_code is None
    assert message in caught.value.message


# Usage and responses.


def test_usage_metadata_to_canonical() -> None:
    usage = gemini.usage_from_metadata(
        {
            "promptTokenCount": 1000,
            "cachedContentTokenCount": 600,
            "toolUsePromptTokenCount": 50,
            "candidatesTokenCount": 80,
            "thoughtsTokenCount": 120,
            "totalTokenCount": 1250,
        }
    )

    assert usage == Usage(
        prompt_tokens=1050, completion_tokens=200, cached_prompt_tokens=600, reasoning_tokens=120
    )
    assert usage.total_tokens == 1250


@pytest.mark.parametrize(
    ("metadata", "message"),
    [
        ({"candidatesTokenCount": 1}, "usageMetadata.promptTokenCount is missing"),
        ({"promptTokenCount": -1}, "usageMetadata.promptTokenCount must not be negative"),
        ({"promptTokenCount": 4, "cachedContentTokenCount": 5}, r"exceed prompt_tokens \(4\)"),
    ],
)
def test_usage_metadata_rejects(metadata, message) -> None:
    with pytest.raises(InvalidUsageError, match=message):
        gemini.usage_from_metadata(metadata)


@pytest.mark.parametrize(
    ("reason", "has_tool_calls", "finish_reason"),
    [
        ("STOP", False, "stop"),
        ("STOP", True, "tool_calls"),
        ("MAX_TOKENS", False, "length"),
        ("SAFETY", False, "content_filter"),
        ("RECITATION", False, "content_filter"),
        ("MALFORMED_FUNCTION_CALL", False, "stop"),
        (None, False, None),
    ],
)
def test_finish_reason_mapping(reason, has_tool_calls, finish_reason) -> None:
    assert gemini.finish_reason_for(reason, has_tool_calls=has_tool_calls) == finish_reason


def test_blocked_prompt_is_content_filter() -> None:
    body = gemini.chat_completion_from_response(
        {"promptFeedback": {"blockReason": "SAFETY"}, "usageMetadata": {"promptTokenCount": 9}},
        Usage(9, 0),
        model="gemini-2.5-flash",
        created=1,
    )

    assert body["choices"] == [
        {
            "index": 0,
            "message": {"role": "assistant", "content": None},
            "logprobs": None,
            "finish_reason": "content_filter",
        }
    ]
    assert body["model"] == "gemini-2.5-flash"


def test_retry_delay_from_body() -> None:
    body = json.dumps(
        {
            "error": {
                "code": 429,
                "details": [
                    {"@type": "type.googleapis.com/google.rpc.QuotaFailure"},
                    {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "31.5s"},
                ],
            }
        }
    ).encode()

    assert gemini.retry_delay_from_body(body) == 31.5
    assert gemini.retry_delay_from_body(b"not json") is None


# Non-streaming calls against the mock upstream.


async def test_complete_text_and_usage(client, fresh_mock_upstream) -> None:
    body = chat_body(max_tokens=5)

    result = await gemini.complete(
        client, base_url(fresh_mock_upstream), fresh_mock_upstream.api_key, body, TIMEOUT_S
    )

    assert result.body["object"] == "chat.completion"
    assert result.body["id"] == "mock0000000001"
    assert result.body["model"] == "mock-1"
    assert result.body["choices"][0]["message"] == {
        "role": "assistant",
        "content": "This is the Tokenport mock",
    }
    assert result.body["choices"][0]["finish_reason"] == "length"
    assert result.usage == Usage(prompt_tokens=10, completion_tokens=5)
    assert result.usage == mock_usage(body)
    sent = fresh_mock_upstream.stats()["last_bodies"][-1]
    assert sent["generationConfig"] == {"maxOutputTokens": 5}


async def test_complete_cache_and_thoughts(client, fresh_mock_upstream) -> None:
    body = chat_body(model="mock-1+reasoning+cached:6")

    result = await gemini.complete(
        client, base_url(fresh_mock_upstream), fresh_mock_upstream.api_key, body, TIMEOUT_S
    )

    assert result.body["choices"][0]["message"]["reasoning_content"] == "Thinking about the request"
    assert result.body["choices"][0]["message"]["content"] == " ".join(MOCK_REPLY_WORDS)
    assert result.usage == Usage(
        prompt_tokens=10,
        completion_tokens=len(MOCK_REASONING_WORDS) + len(MOCK_REPLY_WORDS),
        cached_prompt_tokens=6,
        reasoning_tokens=len(MOCK_REASONING_WORDS),
    )
    assert result.usage == mock_usage(body)


async def test_complete_several_candidates(client, fresh_mock_upstream) -> None:
    result = await gemini.complete(
        client,
        base_url(fresh_mock_upstream),
        fresh_mock_upstream.api_key,
        chat_body(n=2, max_tokens=3),
        TIMEOUT_S,
    )

    assert [choice["index"] for choice in result.body["choices"]] == [0, 1]
    assert [choice["message"]["content"] for choice in result.body["choices"]] == [
        "This is the"
    ] * 2
    assert result.usage == Usage(prompt_tokens=10, completion_tokens=6)


async def test_complete_stop_sequence(client, fresh_mock_upstream) -> None:
    result = await gemini.complete(
        client,
        base_url(fresh_mock_upstream),
        fresh_mock_upstream.api_key,
        chat_body(stop="mock"),
        TIMEOUT_S,
    )

    assert result.body["choices"][0]["message"]["content"] == "This is the Tokenport"
    assert result.body["choices"][0]["finish_reason"] == "stop"


async def test_complete_tool_call_and_signature_round_trip(client, fresh_mock_upstream) -> None:
    first = await gemini.complete(
        client,
        base_url(fresh_mock_upstream),
        fresh_mock_upstream.api_key,
        weather_body(),
        TIMEOUT_S,
    )
    choice = first.body["choices"][0]
    call = choice["message"]["tool_calls"][0]

    assert choice["finish_reason"] == "tool_calls"
    assert call == {
        "id": "call_mock0000000001_0_0",
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"location": "Paris"}'},
        "extra_content": {"google": {"thought_signature": MOCK_THOUGHT_SIGNATURE}},
    }
    assert first.usage == Usage(prompt_tokens=3 + 6, completion_tokens=MOCK_TOOL_CALL_TOKENS)

    follow_up = weather_body()
    follow_up["messages"] += [
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": call["id"], "content": "18 C"},
    ]
    second = await gemini.complete(
        client, base_url(fresh_mock_upstream), fresh_mock_upstream.api_key, follow_up, TIMEOUT_S
    )

    assert second.body["choices"][0]["finish_reason"] == "stop"
    sent = fresh_mock_upstream.stats()["last_bodies"][-1]["contents"]
    assert sent[1] == {
        "role": "model",
        "parts": [
            {
                "functionCall": {"name": "get_weather", "args": {"location": "Paris"}},
                "thoughtSignature": MOCK_THOUGHT_SIGNATURE,
            }
        ],
    }
    assert sent[2] == {
        "role": "user",
        "parts": [{"functionResponse": {"name": "get_weather", "response": {"result": "18 C"}}}],
    }


async def test_complete_without_usage(client, fresh_mock_upstream) -> None:
    result = await gemini.complete(
        client,
        base_url(fresh_mock_upstream),
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
            "failed on purpose (fault status_500)., code=500",
        ),
        ("status_429", "rate_limited", 429, float(MOCK_RETRY_AFTER_S), "code=429"),
        ("malformed_sse", "bad_response", 200, None, "not valid JSON"),
        ("disconnect_after:0", "connection", None, None, "connection to upstream"),
    ],
)
async def test_complete_fault_kinds(
    client, fresh_mock_upstream, fault, kind, status_code, retry_after_s, message_part
) -> None:
    fresh_mock_upstream.set_faults([fault])

    with pytest.raises(UpstreamError) as caught:
        await gemini.complete(
            client,
            base_url(fresh_mock_upstream),
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
        await gemini.complete(
            client,
            base_url(fresh_mock_upstream),
            fresh_mock_upstream.api_key,
            chat_body(model="mock-1+timeout"),
            SHORT_TIMEOUT_S,
        )

    assert caught.value.kind == "timeout"


async def test_complete_wrong_key_is_redacted(client, fresh_mock_upstream) -> None:
    wrong_key = "AIzaSy-wrong-credential-4242"

    with pytest.raises(UpstreamError) as caught:
        await gemini.complete(
            client, base_url(fresh_mock_upstream), wrong_key, chat_body(), TIMEOUT_S
        )

    assert caught.value.kind == "client_error"
    assert caught.value.status_code == 400
    assert wrong_key not in str(caught.value)
    assert "API key not valid: [REDACTED]." in caught.value.message


async def test_rate_limit_delay_from_retry_info() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        error = {
            "code": 429,
            "message": "Resource has been exhausted",
            "status": "RESOURCE_EXHAUSTED",
            "details": [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "12s"}],
        }
        return httpx.Response(429, json={"error": error})

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        with pytest.raises(UpstreamError) as complete_error:
            await gemini.complete(
                client, "http://upstream.test/v1beta", "k", chat_body(), TIMEOUT_S
            )
        with pytest.raises(UpstreamError) as stream_error:
            await anext(
                gemini.stream(client, "http://upstream.test/v1beta", "k", chat_body(), TIMEOUT_S)
            )

    assert complete_error.value.kind == "rate_limited"
    assert complete_error.value.retry_after_s == 12.0
    assert stream_error.value.retry_after_s == 12.0


# Streaming calls against the mock upstream.


async def test_stream_text_chunks_and_usage(client, fresh_mock_upstream) -> None:
    body = chat_body(max_tokens=3)

    chunks = await collect(
        gemini.stream(
            client, base_url(fresh_mock_upstream), fresh_mock_upstream.api_key, body, TIMEOUT_S
        )
    )

    assert [chunk["choices"][0]["delta"] for chunk in chunks[:-1]] == [
        {"role": "assistant", "content": ""},
        {"content": "This"},
        {"content": " is"},
        {"content": " the"},
        {},
    ]
    assert chunks[-2]["choices"][0]["finish_reason"] == "length"
    assert chunks[-1]["choices"] == []
    # The usage of the last response wins over the partial counts of earlier ones.
    assert gemini.usage_from_chunk(chunks[-1]) == Usage(prompt_tokens=10, completion_tokens=3)
    assert gemini.usage_from_chunk(chunks[-1]) == mock_usage(body)
    assert fresh_mock_upstream.stats()["last_headers"][-1]["accept"] == "text/event-stream"


async def test_stream_thoughts_and_cache(client, fresh_mock_upstream) -> None:
    chunks = await collect(
        gemini.stream(
            client,
            base_url(fresh_mock_upstream),
            fresh_mock_upstream.api_key,
            chat_body(model="mock-1+reasoning+cached:4"),
            TIMEOUT_S,
        )
    )

    assert joined(chunks, "reasoning_content") == "Thinking about the request"
    assert joined(chunks) == " ".join(MOCK_REPLY_WORDS)
    assert gemini.usage_from_chunk(chunks[-1]) == Usage(
        prompt_tokens=10, completion_tokens=16, cached_prompt_tokens=4, reasoning_tokens=4
    )


async def test_stream_several_candidates(client, fresh_mock_upstream) -> None:
    chunks = await collect(
        gemini.stream(
            client,
            base_url(fresh_mock_upstream),
            fresh_mock_upstream.api_key,
            chat_body(n=2, max_tokens=2),
            TIMEOUT_S,
        )
    )

    assert joined(chunks, index=0) == "This is"
    assert joined(chunks, index=1) == "This is"
    assert gemini.usage_from_chunk(chunks[-1]) == Usage(prompt_tokens=10, completion_tokens=4)


async def test_stream_tool_call(client, fresh_mock_upstream) -> None:
    chunks = await collect(
        gemini.stream(
            client,
            base_url(fresh_mock_upstream),
            fresh_mock_upstream.api_key,
            weather_body(),
            TIMEOUT_S,
        )
    )

    calls = [
        call
        for chunk in chunks
        for choice in chunk["choices"]
        for call in choice["delta"].get("tool_calls") or []
    ]
    assert calls == [
        {
            "index": 0,
            "id": "call_mock0000000001_0_0",
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"location": "Paris"}'},
            "extra_content": {"google": {"thought_signature": MOCK_THOUGHT_SIGNATURE}},
        }
    ]
    assert [choice["finish_reason"] for chunk in chunks for choice in chunk["choices"]][
        -1
    ] == "tool_calls"


async def test_stream_without_usage(client, fresh_mock_upstream) -> None:
    chunks = await collect(
        gemini.stream(
            client,
            base_url(fresh_mock_upstream),
            fresh_mock_upstream.api_key,
            chat_body(model="mock-1+no_usage"),
            TIMEOUT_S,
        )
    )

    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert [gemini.usage_from_chunk(chunk) for chunk in chunks] == [None] * len(chunks)


@pytest.mark.parametrize(
    ("fault", "kind", "status_code"),
    [("status_500", "server_error", 500), ("status_429", "rate_limited", 429)],
)
async def test_stream_status_error_before_first_chunk(
    client, fresh_mock_upstream, fault, kind, status_code
) -> None:
    chunks = gemini.stream(
        client,
        base_url(fresh_mock_upstream),
        fresh_mock_upstream.api_key,
        chat_body(model=f"mock-1+{fault}"),
        TIMEOUT_S,
    )

    with pytest.raises(UpstreamError) as caught:
        await anext(chunks)

    assert caught.value.kind == kind
    assert caught.value.status_code == status_code


async def test_stream_malformed_line(client, fresh_mock_upstream) -> None:
    received: list[dict[str, Any]] = []

    with pytest.raises(UpstreamError) as caught:
        async for chunk in gemini.stream(
            client,
            base_url(fresh_mock_upstream),
            fresh_mock_upstream.api_key,
            chat_body(model="mock-1+malformed_sse"),
            TIMEOUT_S,
        ):
            received.append(chunk)

    assert caught.value.kind == "bad_response"
    assert "data: line that is not valid JSON" in caught.value.message
    assert joined(received) == "This"


async def test_stream_disconnect_mid_stream(client, fresh_mock_upstream) -> None:
    received: list[dict[str, Any]] = []

    with pytest.raises(UpstreamError) as caught:
        async for chunk in gemini.stream(
            client,
            base_url(fresh_mock_upstream),
            fresh_mock_upstream.api_key,
            chat_body(model="mock-1+disconnect_after:3"),
            TIMEOUT_S,
        ):
            received.append(chunk)

    assert caught.value.kind == "connection"
    assert joined(received) == "This is the"


async def test_stream_error_object(client, fresh_mock_upstream) -> None:
    with pytest.raises(UpstreamError) as caught:
        await collect(
            gemini.stream(
                client,
                base_url(fresh_mock_upstream),
                fresh_mock_upstream.api_key,
                chat_body(model="mock-1+stream_error"),
                TIMEOUT_S,
            )
        )

    assert caught.value.kind == "server_error"
    assert caught.value.message.endswith(
        "sent an error inside the stream: "
        "The model is overloaded (mock fault stream_error)., code=503"
    )


async def test_stream_closed_before_finish_reason() -> None:
    candidate = {"content": {"role": "model", "parts": [{"text": "Hel"}]}, "index": 0}
    body = b"data: " + json.dumps({"candidates": [candidate]}).encode() + b"\n\n"

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=body, headers={"content-type": "text/event-stream"})

    received: list[dict[str, Any]] = []
    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        with pytest.raises(UpstreamError) as caught:
            async for chunk in gemini.stream(
                client, "http://upstream.test/v1beta", "k", chat_body(), TIMEOUT_S
            ):
                received.append(chunk)

    assert caught.value.kind == "connection"
    assert "before every candidate had a finishReason" in caught.value.message
    assert joined(received) == "Hel"
