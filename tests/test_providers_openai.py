"""The OpenAI-compatible adapter against the mock upstream and against in-process transports."""

from __future__ import annotations

import logging
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest

from providers.errors import UpstreamError
from providers.mock_upstream import (
    MOCK_REASONING_WORDS,
    MOCK_REPLY_WORDS,
    MOCK_RETRY_AFTER_S,
    expected_content,
    expected_usage,
)
from providers.openai_compat import CompletionResult, complete, stream, usage_from_chunk
from providers.usage import Usage

pytestmark = pytest.mark.anyio

TIMEOUT_S = 10.0
# Well below the mock's `timeout` fault wait (5 s in the fixture), so the client gives up first.
SHORT_TIMEOUT_S = 0.5


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(trust_env=False) as shared_client:
        yield shared_client


def chat_body(**extra: Any) -> dict[str, Any]:
    return {"model": "mock-1", "messages": [{"role": "user", "content": "Say hello"}], **extra}


async def collect(chunks: AsyncIterator[dict[str, Any]]) -> list[dict[str, Any]]:
    return [chunk async for chunk in chunks]


def content_of(chunks: list[dict[str, Any]], field: str = "content") -> str:
    return "".join(
        choice["delta"].get(field) or "" for chunk in chunks for choice in chunk["choices"]
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# Non-streaming calls against the mock upstream.


async def test_complete_returns_exact_usage(client, fresh_mock_upstream) -> None:
    body = chat_body(max_tokens=5)

    result = await complete(
        client, fresh_mock_upstream.base_url, fresh_mock_upstream.api_key, body, TIMEOUT_S
    )

    assert isinstance(result, CompletionResult)
    assert result.usage == Usage(prompt_tokens=5, completion_tokens=5)
    assert result.usage == expected_usage(body)
    assert result.body["object"] == "chat.completion"
    assert result.body["choices"][0]["message"]["content"] == "This is the Tokenport mock"
    assert result.body["choices"][0]["finish_reason"] == "length"


async def test_complete_forces_non_streaming(client, fresh_mock_upstream) -> None:
    body = chat_body(stream=True, stream_options={"include_usage": True})

    result = await complete(
        client, fresh_mock_upstream.base_url, fresh_mock_upstream.api_key, body, TIMEOUT_S
    )

    sent = fresh_mock_upstream.stats()["last_bodies"][-1]
    assert sent["stream"] is False
    assert "stream_options" not in sent
    assert result.body["choices"][0]["message"]["content"] == " ".join(MOCK_REPLY_WORDS)
    assert result.body["choices"][0]["finish_reason"] == "stop"


async def test_complete_cached_and_reasoning(client, fresh_mock_upstream) -> None:
    body = chat_body(model="mock-1+reasoning+cached:3")

    result = await complete(
        client, fresh_mock_upstream.base_url, fresh_mock_upstream.api_key, body, TIMEOUT_S
    )

    assert result.usage == Usage(
        prompt_tokens=5,
        completion_tokens=len(MOCK_REASONING_WORDS) + len(MOCK_REPLY_WORDS),
        cached_prompt_tokens=3,
        reasoning_tokens=len(MOCK_REASONING_WORDS),
    )
    assert result.usage == expected_usage(body)
    assert result.body["model"] == "mock-1"
    assert result.body["choices"][0]["message"]["reasoning_content"] == "Thinking about the request"


async def test_complete_ignores_cost(client, fresh_mock_upstream) -> None:
    body = chat_body(max_tokens=3)

    result = await complete(
        client,
        fresh_mock_upstream.base_url,
        fresh_mock_upstream.api_key,
        {**body, "model": "mock-1+zero_cost_usage"},
        TIMEOUT_S,
    )

    assert result.body["usage"]["cost"] == 0
    assert result.usage == Usage(prompt_tokens=5, completion_tokens=3)


async def test_complete_without_usage(client, fresh_mock_upstream) -> None:
    result = await complete(
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
        ("status_500", "server_error", 500, None, "mock upstream failed on purpose"),
        ("status_429", "rate_limited", 429, float(MOCK_RETRY_AFTER_S), "Rate limit reached"),
        ("malformed_sse", "bad_response", 200, None, "not valid JSON"),
        ("disconnect_after:0", "connection", None, None, "connection to upstream"),
    ],
)
async def test_complete_fault_kinds(
    client, fresh_mock_upstream, fault, kind, status_code, retry_after_s, message_part
) -> None:
    fresh_mock_upstream.set_faults([fault])

    with pytest.raises(UpstreamError) as caught:
        await complete(
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
        await complete(
            client,
            fresh_mock_upstream.base_url,
            fresh_mock_upstream.api_key,
            chat_body(model="mock-1+timeout"),
            SHORT_TIMEOUT_S,
        )

    assert caught.value.kind == "timeout"
    assert caught.value.status_code is None
    assert caught.value.message.endswith(f"timed out after {SHORT_TIMEOUT_S} s")


async def test_complete_wrong_key_is_redacted(client, fresh_mock_upstream) -> None:
    wrong_key = "sk-wrong-credential-4242"

    with pytest.raises(UpstreamError) as caught:
        await complete(client, fresh_mock_upstream.base_url, wrong_key, chat_body(), TIMEOUT_S)

    # The mock echoes the presented credential in its 401 message.
    assert caught.value.kind == "client_error"
    assert caught.value.status_code == 401
    assert wrong_key not in str(caught.value)
    assert wrong_key not in repr(caught.value)
    assert "Incorrect API key provided: [REDACTED]" in caught.value.message
    assert "code=invalid_api_key" in caught.value.message


async def test_complete_connection_refused(client) -> None:
    base_url = f"http://127.0.0.1:{free_port()}/v1"

    with pytest.raises(UpstreamError) as caught:
        await complete(client, base_url, "sk-any", chat_body(), TIMEOUT_S)

    assert caught.value.kind == "connection"
    assert caught.value.status_code is None


async def test_complete_sends_bearer_credential(fresh_mock_upstream) -> None:
    seen: list[httpx.Request] = []

    async def record(request: httpx.Request) -> None:
        seen.append(request)

    async with httpx.AsyncClient(trust_env=False, event_hooks={"request": [record]}) as client:
        await complete(
            client,
            fresh_mock_upstream.base_url + "/",
            fresh_mock_upstream.api_key,
            chat_body(),
            TIMEOUT_S,
        )

    assert seen[0].headers["authorization"] == f"Bearer {fresh_mock_upstream.api_key}"
    assert seen[0].url.path == "/v1/chat/completions"


# Streaming calls against the mock upstream.


async def test_stream_chunk_order_and_usage(client, fresh_mock_upstream) -> None:
    body = chat_body(max_tokens=6)

    chunks = await collect(
        stream(client, fresh_mock_upstream.base_url, fresh_mock_upstream.api_key, body, TIMEOUT_S)
    )

    assert all(chunk["object"] == "chat.completion.chunk" for chunk in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    content_chunks = chunks[1:7]
    assert [chunk["choices"][0]["delta"]["content"] for chunk in content_chunks] == [
        "This",
        " is",
        " the",
        " Tokenport",
        " mock",
        " upstream",
    ]
    assert chunks[7]["choices"][0]["delta"] == {}
    assert chunks[7]["choices"][0]["finish_reason"] == "length"
    assert chunks[8]["choices"] == []
    assert len(chunks) == 9
    assert [usage_from_chunk(chunk) for chunk in chunks[:8]] == [None] * 8
    assert usage_from_chunk(chunks[8]) == Usage(prompt_tokens=5, completion_tokens=6)
    assert usage_from_chunk(chunks[8]) == expected_usage(body)
    assert content_of(chunks) == expected_content(body)


async def test_stream_requests_usage(client, fresh_mock_upstream) -> None:
    body = chat_body(stream_options={"include_usage": False})

    await collect(
        stream(client, fresh_mock_upstream.base_url, fresh_mock_upstream.api_key, body, TIMEOUT_S)
    )

    sent = fresh_mock_upstream.stats()["last_bodies"][-1]
    assert sent["stream"] is True
    assert sent["stream_options"] == {"include_usage": True}


async def test_stream_reasoning_and_cached(client, fresh_mock_upstream) -> None:
    body = chat_body(model="mock-1+reasoning+cached:2")

    chunks = await collect(
        stream(client, fresh_mock_upstream.base_url, fresh_mock_upstream.api_key, body, TIMEOUT_S)
    )

    assert content_of(chunks, "reasoning_content") == "Thinking about the request"
    assert content_of(chunks) == " ".join(MOCK_REPLY_WORDS)
    assert usage_from_chunk(chunks[-1]) == Usage(
        prompt_tokens=5,
        completion_tokens=16,
        cached_prompt_tokens=2,
        reasoning_tokens=4,
    )


async def test_stream_without_usage(client, fresh_mock_upstream) -> None:
    chunks = await collect(
        stream(
            client,
            fresh_mock_upstream.base_url,
            fresh_mock_upstream.api_key,
            chat_body(model="mock-1+no_usage"),
            TIMEOUT_S,
        )
    )

    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert [usage_from_chunk(chunk) for chunk in chunks] == [None] * len(chunks)


async def test_stream_ignores_cost(client, fresh_mock_upstream) -> None:
    chunks = await collect(
        stream(
            client,
            fresh_mock_upstream.base_url,
            fresh_mock_upstream.api_key,
            chat_body(model="mock-1+zero_cost_usage", max_tokens=2),
            TIMEOUT_S,
        )
    )

    assert chunks[-1]["usage"]["cost"] == 0
    assert usage_from_chunk(chunks[-1]) == Usage(prompt_tokens=5, completion_tokens=2)


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
    chunks = stream(
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
    chunks = stream(
        client,
        fresh_mock_upstream.base_url,
        fresh_mock_upstream.api_key,
        chat_body(model="mock-1+timeout"),
        SHORT_TIMEOUT_S,
    )

    with pytest.raises(UpstreamError) as caught:
        await anext(chunks)

    assert caught.value.kind == "timeout"


async def test_stream_malformed_line(client, fresh_mock_upstream) -> None:
    received: list[dict[str, Any]] = []

    with pytest.raises(UpstreamError) as caught:
        async for chunk in stream(
            client,
            fresh_mock_upstream.base_url,
            fresh_mock_upstream.api_key,
            chat_body(model="mock-1+malformed_sse"),
            TIMEOUT_S,
        ):
            received.append(chunk)

    assert caught.value.kind == "bad_response"
    assert "data: line that is not valid JSON" in caught.value.message
    assert len(received) == 1
    assert received[0]["choices"][0]["delta"]["role"] == "assistant"


async def test_stream_disconnect_mid_stream(client, fresh_mock_upstream) -> None:
    received: list[dict[str, Any]] = []

    with pytest.raises(UpstreamError) as caught:
        async for chunk in stream(
            client,
            fresh_mock_upstream.base_url,
            fresh_mock_upstream.api_key,
            chat_body(model="mock-1+disconnect_after:3"),
            TIMEOUT_S,
        ):
            received.append(chunk)

    assert caught.value.kind == "connection"
    assert content_of(received) == "This is the"
    assert len(received) == 4


async def test_stream_wrong_key(client, fresh_mock_upstream) -> None:
    wrong_key = "sk-wrong-stream-credential"

    with pytest.raises(UpstreamError) as caught:
        await anext(stream(client, fresh_mock_upstream.base_url, wrong_key, chat_body(), TIMEOUT_S))

    assert caught.value.kind == "client_error"
    assert caught.value.status_code == 401
    assert wrong_key not in str(caught.value)


async def test_stream_connection_refused(client) -> None:
    chunks = stream(client, f"http://127.0.0.1:{free_port()}/v1", "sk-any", chat_body(), TIMEOUT_S)

    with pytest.raises(UpstreamError) as caught:
        await anext(chunks)

    assert caught.value.kind == "connection"


async def test_stream_early_aclose_closes_response(fresh_mock_upstream) -> None:
    responses: list[httpx.Response] = []

    async def record(response: httpx.Response) -> None:
        responses.append(response)

    async with httpx.AsyncClient(trust_env=False, event_hooks={"response": [record]}) as client:
        # A 50 ms pause before each content chunk keeps the upstream mid-stream when we close.
        chunks = stream(
            client,
            fresh_mock_upstream.base_url,
            fresh_mock_upstream.api_key,
            chat_body(model="mock-1+chunk_delay_ms:50"),
            TIMEOUT_S,
        )
        first = await anext(chunks)
        assert responses[0].is_closed is False

        await chunks.aclose()

        assert first["choices"][0]["delta"]["role"] == "assistant"
        assert responses[0].is_closed is True

    stats = fresh_mock_upstream.wait_for_stats(lambda stats: stats["streams_aborted"] == 1)
    assert stats["streams_aborted"] == 1
    assert stats["streams_completed"] == 0


# Edge cases of the wire format, served by in-process handlers.


def transport_client(handler: Callable[[httpx.Request], httpx.Response]) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.MockTransport(handler))


def sse_response(body: bytes, status_code: int = 200, **headers: str) -> httpx.Response:
    return httpx.Response(
        status_code, content=body, headers={"content-type": "text/event-stream", **headers}
    )


async def test_stream_sse_comments_and_multiline_data() -> None:
    body = (
        b": keep-alive comment\r\n\r\n"
        b"event: message\r\nid: 1\r\n"
        b'data: {"id": "a",\r\ndata: "choices": []}\r\n\r\n'
        b"data: [DONE]\r\n\r\n"
        b'data: {"never": "read"}\n\n'
    )

    async with transport_client(lambda request: sse_response(body)) as client:
        chunks = await collect(
            stream(client, "http://upstream.test/v1", "sk-test", chat_body(), TIMEOUT_S)
        )

    assert chunks == [{"id": "a", "choices": []}]


async def test_stream_missing_done_is_connection() -> None:
    body = b'data: {"id": "a", "choices": []}\n\n'

    async with transport_client(lambda request: sse_response(body)) as client:
        with pytest.raises(UpstreamError) as caught:
            await collect(
                stream(client, "http://upstream.test/v1", "sk-test", chat_body(), TIMEOUT_S)
            )

    assert caught.value.kind == "connection"
    assert "before sending data: [DONE]" in caught.value.message


async def test_stream_error_object_inside_stream() -> None:
    body = b'data: {"error": {"message": "overloaded sk-test", "type": "server_error"}}\n\n'

    async with transport_client(lambda request: sse_response(body)) as client:
        with pytest.raises(UpstreamError) as caught:
            await collect(
                stream(client, "http://upstream.test/v1", "sk-test", chat_body(), TIMEOUT_S)
            )

    assert caught.value.kind == "server_error"
    assert "overloaded [REDACTED], type=server_error" in caught.value.message


async def test_stream_non_object_chunk() -> None:
    body = b"data: [1, 2]\n\ndata: [DONE]\n\n"

    async with transport_client(lambda request: sse_response(body)) as client:
        with pytest.raises(UpstreamError) as caught:
            await collect(
                stream(client, "http://upstream.test/v1", "sk-test", chat_body(), TIMEOUT_S)
            )

    assert caught.value.kind == "bad_response"


async def test_stream_retry_after_ms_preferred() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            429,
            json={"error": {"message": "slow down"}},
            headers={"retry-after": "2", "retry-after-ms": "1500"},
        )

    async with transport_client(handler) as client:
        with pytest.raises(UpstreamError) as caught:
            await anext(
                stream(client, "http://upstream.test/v1", "sk-test", chat_body(), TIMEOUT_S)
            )

    assert caught.value.kind == "rate_limited"
    assert caught.value.retry_after_s == 1.5
    assert "slow down" in caught.value.message


async def test_stream_json_instead_of_sse() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"error": {"message": "streaming disabled"}})

    async with transport_client(handler) as client:
        with pytest.raises(UpstreamError) as caught:
            await anext(
                stream(client, "http://upstream.test/v1", "sk-test", chat_body(), TIMEOUT_S)
            )

    assert caught.value.kind == "bad_response"
    assert caught.value.message == (
        "upstream http://upstream.test returned JSON instead of an event stream: streaming disabled"
    )


async def test_complete_error_body_with_200() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"error": {"message": "quota exhausted", "code": "quota"}})

    async with transport_client(handler) as client:
        with pytest.raises(UpstreamError) as caught:
            await complete(client, "http://upstream.test/v1", "sk-test", chat_body(), TIMEOUT_S)

    assert caught.value.kind == "bad_response"
    assert "quota exhausted, code=quota" in caught.value.message


async def test_complete_invalid_usage_is_none(caplog) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            200, json={"choices": [], "usage": {"prompt_tokens": -3, "completion_tokens": 1}}
        )

    async with transport_client(handler) as client:
        with caplog.at_level(logging.WARNING, logger="providers.openai_compat"):
            result = await complete(
                client, "http://upstream.test/v1", "sk-test", chat_body(), TIMEOUT_S
            )

    assert result.usage is None
    assert result.body["usage"] == {"prompt_tokens": -3, "completion_tokens": 1}
    assert "usage.prompt_tokens must not be negative" in caplog.text
    assert "sk-test" not in caplog.text


async def test_complete_redirect_is_bad_response() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(302, headers={"location": "http://elsewhere.test/"})

    async with transport_client(handler) as client:
        with pytest.raises(UpstreamError) as caught:
            await complete(client, "http://upstream.test/v1", "sk-test", chat_body(), TIMEOUT_S)

    assert caught.value.kind == "bad_response"
    assert caught.value.status_code == 302


async def test_error_message_hides_url_query() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(503, text="unavailable")

    async with transport_client(handler) as client:
        with pytest.raises(UpstreamError) as caught:
            await complete(
                client,
                "http://upstream.test:8443/v1beta?key=secret-in-query",
                "sk-test",
                chat_body(),
                TIMEOUT_S,
            )

    assert caught.value.kind == "server_error"
    assert (
        caught.value.message == "upstream http://upstream.test:8443 returned HTTP 503: unavailable"
    )
