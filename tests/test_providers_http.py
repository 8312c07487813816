"""The adapters over both HTTP clients of `providers.http`, against real servers on 127.0.0.1.

Every test runs once with an `httpx.AsyncClient` and once with an `AiohttpClient`, and expects
the same result from both, except where a message repeats the text of the library's exception.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator, Iterator
from contextlib import aclosing
from typing import Any

import anyio
import httpx
import pytest
from starlette.middleware.gzip import GZipMiddleware

from marketplace.servers import BackgroundServer
from providers import registry
from providers.errors import REDACTED, UpstreamError
from providers.http import (
    AiohttpClient,
    HttpClient,
    HttpxClient,
    StreamResponse,
    as_http_client,
    create_aiohttp_session,
    encode_json,
)
from providers.mock_upstream import MOCK_API_KEY, MOCK_RETRY_AFTER_S, create_mock_app
from providers.openai_compat import MAX_SSE_EVENT_CHARS
from providers.usage import Usage

pytestmark = pytest.mark.anyio

TIMEOUT_S = 10.0
# Well below the mock's fault wait (5 s in the fixture), so the client gives up first.
SHORT_TIMEOUT_S = 0.5
PROTOCOLS = ("openai", "anthropic", "gemini")
CLIENTS = ("httpx", "aiohttp")
# The mock's reply to `chat_body()`, which requests 5 tokens for a 5-token prompt.
REPLY_TEXT = "This is the Tokenport mock"
REPLY_USAGE = Usage(prompt_tokens=5, completion_tokens=5)
STATUS_500_DETAIL = {
    "openai": "The mock upstream failed on purpose (fault status_500)., type=server_error",
    "anthropic": "The mock upstream failed on purpose (fault status_500)., type=api_error",
    "gemini": "The mock upstream failed on purpose (fault status_500)., code=500",
}
STATUS_429_DETAIL = {
    "openai": (
        "Rate limit reached for requests (mock fault status_429)., "
        "type=requests, code=rate_limit_exceeded"
    ),
    "anthropic": "Rate limit reached for requests (mock fault status_429)., type=rate_limit_error",
    "gemini": "Rate limit reached for requests (mock fault status_429)., code=429",
}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(params=CLIENTS)
async def client(request) -> AsyncIterator[httpx.AsyncClient | HttpClient]:
    """An `httpx.AsyncClient`, as tests and ordinary callers pass, or the proxy's aiohttp client."""
    if request.param == "httpx":
        async with httpx.AsyncClient(trust_env=False) as httpx_client:
            yield httpx_client
        return
    session = create_aiohttp_session(
        max_connections=10, max_connections_per_host=10, keepalive_s=4.0
    )
    async with session:
        yield AiohttpClient(session)


@pytest.fixture(params=PROTOCOLS)
def protocol(request) -> str:
    return request.param


def base_url(root_url: str, protocol: str) -> str:
    return root_url + ("/v1beta" if protocol == "gemini" else "/v1")


def chat_body(**extra: Any) -> dict[str, Any]:
    return {
        "model": "mock-1",
        "messages": [{"role": "user", "content": "Say hello"}],
        "max_tokens": 5,
        **extra,
    }


def client_name(client: httpx.AsyncClient | HttpClient) -> str:
    return "httpx" if isinstance(client, httpx.AsyncClient) else "aiohttp"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def collect(chunks: AsyncIterator[dict[str, Any]], into: list[dict[str, Any]]) -> None:
    async with aclosing(chunks):
        async for chunk in chunks:
            into.append(chunk)


def content_of(chunks: list[dict[str, Any]]) -> str:
    return "".join(
        choice["delta"].get("content") or "" for chunk in chunks for choice in chunk["choices"]
    )


async def call(
    client, protocol: str, url: str, *, streaming: bool, body=None, timeout_s=TIMEOUT_S, key=None
) -> list[dict[str, Any]]:
    """Run one adapter call and return its chunks, or the completion body as the only item."""
    adapter = registry.get_adapter(protocol)
    api_key = MOCK_API_KEY if key is None else key
    if not streaming:
        result = await adapter.complete(client, url, api_key, body or chat_body(), timeout_s)
        return [result.body]
    chunks: list[dict[str, Any]] = []
    await collect(adapter.stream(client, url, api_key, body or chat_body(), timeout_s), chunks)
    return chunks


# The mock upstream: success, statuses, faults.


async def test_complete_exact_usage(client, protocol, fresh_mock_upstream) -> None:
    adapter = registry.get_adapter(protocol)
    url = base_url(fresh_mock_upstream.root_url, protocol)

    result = await adapter.complete(client, url, MOCK_API_KEY, chat_body(), TIMEOUT_S)

    assert result.usage == REPLY_USAGE
    assert result.body["choices"][0]["message"]["content"] == REPLY_TEXT
    assert result.body["choices"][0]["finish_reason"] == "length"
    assert fresh_mock_upstream.stats()["requests"] == 1


async def test_stream_exact_usage(client, protocol, fresh_mock_upstream) -> None:
    adapter = registry.get_adapter(protocol)
    url = base_url(fresh_mock_upstream.root_url, protocol)

    chunks = await call(client, protocol, url, streaming=True)

    assert content_of(chunks) == REPLY_TEXT
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert [choice["finish_reason"] for choice in chunks[-2]["choices"]] == ["length"]
    assert chunks[-1]["choices"] == []
    assert adapter.usage_from_chunk(chunks[-1]) == REPLY_USAGE
    assert fresh_mock_upstream.stats()["streams_completed"] == 1


@pytest.mark.parametrize("streaming", [False, True], ids=["complete", "stream"])
async def test_status_500(client, protocol, streaming, fresh_mock_upstream) -> None:
    fresh_mock_upstream.set_faults(["status_500"])
    url = base_url(fresh_mock_upstream.root_url, protocol)

    with pytest.raises(UpstreamError) as caught:
        await call(client, protocol, url, streaming=streaming)

    assert caught.value.kind == "server_error"
    assert caught.value.status_code == 500
    assert caught.value.retry_after_s is None
    assert caught.value.message == (
        f"upstream {fresh_mock_upstream.root_url} returned HTTP 500: {STATUS_500_DETAIL[protocol]}"
    )


@pytest.mark.parametrize("streaming", [False, True], ids=["complete", "stream"])
async def test_status_429_retry_after(client, protocol, streaming, fresh_mock_upstream) -> None:
    fresh_mock_upstream.set_faults(["status_429"])
    url = base_url(fresh_mock_upstream.root_url, protocol)

    with pytest.raises(UpstreamError) as caught:
        await call(client, protocol, url, streaming=streaming)

    assert caught.value.kind == "rate_limited"
    assert caught.value.status_code == 429
    assert caught.value.retry_after_s == float(MOCK_RETRY_AFTER_S)
    assert caught.value.message == (
        f"upstream {fresh_mock_upstream.root_url} returned HTTP 429: {STATUS_429_DETAIL[protocol]}"
    )


async def test_stream_silent_mid_stream_times_out(client, protocol, fresh_mock_upstream) -> None:
    # The mock sends the first content chunk, then nothing for 5 s.
    url = base_url(fresh_mock_upstream.root_url, protocol)
    adapter = registry.get_adapter(protocol)
    chunks: list[dict[str, Any]] = []

    with pytest.raises(UpstreamError) as caught:
        await collect(
            adapter.stream(
                client, url, MOCK_API_KEY, chat_body(model="mock-1+stall_after:1"), SHORT_TIMEOUT_S
            ),
            chunks,
        )

    assert content_of(chunks) == "This"
    assert caught.value.kind == "timeout"
    assert caught.value.status_code is None
    assert caught.value.message == (
        f"upstream {fresh_mock_upstream.root_url} timed out after {SHORT_TIMEOUT_S} s"
    )


async def test_complete_silent_upstream_times_out(client, protocol, fresh_mock_upstream) -> None:
    url = base_url(fresh_mock_upstream.root_url, protocol)

    with pytest.raises(UpstreamError) as caught:
        await call(
            client,
            protocol,
            url,
            streaming=False,
            body=chat_body(model="mock-1+timeout"),
            timeout_s=SHORT_TIMEOUT_S,
        )

    assert caught.value.kind == "timeout"
    assert caught.value.message == (
        f"upstream {fresh_mock_upstream.root_url} timed out after {SHORT_TIMEOUT_S} s"
    )


@pytest.mark.parametrize("streaming", [False, True], ids=["complete", "stream"])
async def test_redirect_not_followed(client, protocol, streaming, fresh_mock_upstream) -> None:
    # The 307 points at the same URL, where a second request would succeed.
    fresh_mock_upstream.set_faults(["redirect"])
    url = base_url(fresh_mock_upstream.root_url, protocol)

    with pytest.raises(UpstreamError) as caught:
        await call(client, protocol, url, streaming=streaming)

    assert caught.value.kind == "bad_response"
    assert caught.value.status_code == 307
    assert caught.value.message == (
        f"upstream {fresh_mock_upstream.root_url} returned HTTP 307: (empty body)"
    )
    assert fresh_mock_upstream.stats()["requests"] == 1


@pytest.mark.parametrize("streaming", [False, True], ids=["complete", "stream"])
async def test_connection_refused(client, protocol, streaming) -> None:
    port = free_port()
    url = base_url(f"http://127.0.0.1:{port}", protocol)
    reason = {
        "httpx": "ConnectError: All connection attempts failed",
        "aiohttp": (
            f"ClientConnectorError: Cannot connect to host 127.0.0.1:{port} ssl:default "
            f"[Connect call failed ('127.0.0.1', {port})]"
        ),
    }[client_name(client)]

    with pytest.raises(UpstreamError) as caught:
        await call(client, protocol, url, streaming=streaming)

    assert caught.value.kind == "connection"
    assert caught.value.status_code is None
    assert caught.value.message == (
        f"connection to upstream http://127.0.0.1:{port} failed: {reason}"
    )


@pytest.mark.parametrize(
    ("url", "described"),
    [("http://[::1/v1", "<invalid URL>"), ("http:///v1", "http://")],
    ids=["unclosed-bracket", "no-host"],
)
@pytest.mark.parametrize("streaming", [False, True], ids=["complete", "stream"])
async def test_invalid_url(client, protocol, streaming, url, described) -> None:
    with pytest.raises(UpstreamError) as caught:
        await call(client, protocol, url, streaming=streaming)

    assert caught.value.kind == "connection"
    assert caught.value.status_code is None
    assert caught.value.message == (
        f"upstream URL for {described} is invalid; correct the listing's base URL"
    )


async def test_stream_dropped_mid_stream(client, protocol, fresh_mock_upstream) -> None:
    url = base_url(fresh_mock_upstream.root_url, protocol)
    adapter = registry.get_adapter(protocol)
    chunks: list[dict[str, Any]] = []
    reason = {
        "httpx": (
            "RemoteProtocolError: peer closed connection without sending complete message body "
            "(incomplete chunked read)"
        ),
        "aiohttp": (
            "ClientPayloadError: Response payload is not completed: <TransferEncodingError: 400, "
            "message='Not enough data to satisfy transfer length header.'>"
        ),
    }[client_name(client)]

    with pytest.raises(UpstreamError) as caught:
        await collect(
            adapter.stream(
                client, url, MOCK_API_KEY, chat_body(model="mock-1+disconnect_after:2"), TIMEOUT_S
            ),
            chunks,
        )

    assert content_of(chunks) == "This is"
    assert caught.value.kind == "connection"
    assert caught.value.message == (
        f"connection to upstream {fresh_mock_upstream.root_url} failed: {reason}"
    )


async def test_complete_dropped_is_not_retried(client, protocol, fresh_mock_upstream) -> None:
    url = base_url(fresh_mock_upstream.root_url, protocol)

    with pytest.raises(UpstreamError) as caught:
        await call(
            client,
            protocol,
            url,
            streaming=False,
            body=chat_body(model="mock-1+disconnect_after:0"),
        )

    assert caught.value.kind == "connection"
    assert fresh_mock_upstream.stats()["requests"] == 1


@pytest.mark.parametrize("streaming", [False, True], ids=["complete", "stream"])
async def test_wrong_credential_is_redacted(client, protocol, streaming, fresh_mock_upstream):
    # The mock echoes the presented credential in its error message.
    wrong_key = "sk-wrong-credential-4242"
    url = base_url(fresh_mock_upstream.root_url, protocol)

    with pytest.raises(UpstreamError) as caught:
        await call(client, protocol, url, streaming=streaming, key=wrong_key)

    assert caught.value.kind == "client_error"
    assert caught.value.status_code in (400, 401)
    assert wrong_key not in caught.value.message
    assert REDACTED in caught.value.message


@pytest.mark.parametrize("wrong_key", ["sk-line\nbreak", "sk-caf\u00e9"], ids=["newline", "accent"])
async def test_unsendable_credential_is_hidden(client, protocol, wrong_key, fresh_mock_upstream):
    url = base_url(fresh_mock_upstream.root_url, protocol)
    header = {"openai": "Authorization", "anthropic": "x-api-key", "gemini": "x-goog-api-key"}

    with pytest.raises(UpstreamError) as caught:
        await call(client, protocol, url, streaming=False, key=wrong_key)

    assert caught.value.kind == "connection"
    assert caught.value.message == (
        f"connection to upstream {fresh_mock_upstream.root_url} failed: InvalidHeaderValueError: "
        f"the value of header {header[protocol]!r} contains a control or non-ASCII character; "
        "check the credential it carries"
    )
    assert fresh_mock_upstream.stats()["requests"] == 0


async def test_stream_early_close_drops_connection(client, fresh_mock_upstream) -> None:
    adapter = registry.get_adapter("openai")
    # A 50 ms pause before each content chunk keeps the upstream mid-stream when we close.
    chunks = adapter.stream(
        client,
        fresh_mock_upstream.base_url,
        MOCK_API_KEY,
        chat_body(model="mock-1+chunk_delay_ms:50"),
        TIMEOUT_S,
    )

    first = await anext(chunks)
    await chunks.aclose()

    # Poll from a thread, because asyncio closes a socket in a later turn of the event loop.
    stats = await anyio.to_thread.run_sync(
        fresh_mock_upstream.wait_for_stats, lambda stats: stats["streams_aborted"] == 1
    )
    assert first["choices"][0]["delta"]["role"] == "assistant"
    assert stats["streams_aborted"] == 1
    assert stats["streams_completed"] == 0


# Compressed responses, through GZipMiddleware in front of a mock of its own.


@pytest.fixture(scope="module")
def gzip_mock_root_url() -> Iterator[str]:
    app = GZipMiddleware(create_mock_app(MOCK_API_KEY), minimum_size=0)
    with BackgroundServer(app, name="gzip-mock-upstream", lifespan="off", ws="none") as server:
        yield server.url


@pytest.mark.parametrize("streaming", [False, True], ids=["complete", "stream"])
async def test_gzip_response_decoded(client, protocol, streaming, gzip_mock_root_url) -> None:
    adapter = registry.get_adapter(protocol)
    url = base_url(gzip_mock_root_url, protocol)
    served = httpx.post(
        f"{gzip_mock_root_url}/v1/chat/completions",
        json=chat_body(),
        headers={"authorization": f"Bearer {MOCK_API_KEY}"},
        trust_env=False,
    )

    chunks = await call(client, protocol, url, streaming=streaming)

    assert served.headers["content-encoding"] == "gzip"
    assert adapter.usage_from_chunk(chunks[-1]) == REPLY_USAGE
    if streaming:
        assert content_of(chunks) == REPLY_TEXT
    else:
        assert chunks[0]["choices"][0]["message"]["content"] == REPLY_TEXT


# Wire details, against an upstream that sends whatever bytes a test gives it.


class ScriptedUpstream:
    """An ASGI app that records each request and responds with the status, headers and body set."""

    def __init__(self) -> None:
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.status = 200
        self.headers: dict[str, str] = {}
        self.pieces: list[bytes] = []

    def answer(self, pieces: list[bytes], content_type: str, **headers: str) -> None:
        self.requests.clear()
        self.status = 200
        self.headers = {"content-type": content_type, **headers}
        self.pieces = pieces

    async def __call__(self, scope, receive, send) -> None:  # type: ignore[no-untyped-def]
        body = bytearray()
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {name.decode(): value.decode() for name, value in scope["headers"]}
        self.requests.append((headers, bytes(body)))

        raw_headers = [(name.encode(), value.encode()) for name, value in self.headers.items()]
        await send({"type": "http.response.start", "status": self.status, "headers": raw_headers})
        for piece in self.pieces:
            await send({"type": "http.response.body", "body": piece, "more_body": True})
            # Gives the server a chance to write each piece in a packet of its own.
            await asyncio.sleep(0)
        await send({"type": "http.response.body", "body": b""})


@pytest.fixture(scope="module")
def scripted_server() -> Iterator[tuple[ScriptedUpstream, str]]:
    upstream = ScriptedUpstream()
    with BackgroundServer(upstream, name="scripted-upstream", lifespan="off", ws="none") as server:
        yield upstream, f"{server.url}/v1"


def sse(*events: Any, line_end: bytes = b"\n") -> list[bytes]:
    return [
        b"data: " + json.dumps(event, ensure_ascii=False).encode() + line_end * 2
        for event in events
    ] + [b"data: [DONE]" + line_end * 2]


def text_chunk(text: str) -> dict[str, Any]:
    return {
        "id": "c",
        "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": {"content": text}}],
    }


async def test_request_bytes_are_compact_utf8(client, scripted_server) -> None:
    upstream, url = scripted_server
    upstream.answer(sse(text_chunk("ok")), "text/event-stream")
    body = chat_body(messages=[{"role": "user", "content": "Say h\u00e9llo"}])

    await call(client, "openai", url, streaming=True, body=body)

    headers, sent = upstream.requests[0]
    expected = {**body, "stream": True, "stream_options": {"include_usage": True}}
    assert sent == encode_json(expected)
    assert "h\u00e9llo".encode() in sent
    assert headers["content-type"] == "application/json"
    assert headers["authorization"] == f"Bearer {MOCK_API_KEY}"
    assert headers["accept"] == "text/event-stream"
    assert "cookie" not in headers


@pytest.mark.parametrize("line_end", [b"\n", b"\r\n", b"\r"], ids=["lf", "crlf", "cr"])
async def test_stream_line_ends(client, scripted_server, line_end) -> None:
    upstream, url = scripted_server
    upstream.answer(sse(text_chunk("a"), text_chunk("b"), line_end=line_end), "text/event-stream")

    chunks = await call(client, "openai", url, streaming=True)

    assert content_of(chunks) == "ab"
    assert len(chunks) == 2


async def test_stream_keeps_unicode_line_separators(client, scripted_server) -> None:
    # JSON allows U+2028, U+2029 and U+0085 unescaped, and they do not end an event-stream line.
    upstream, url = scripted_server
    text = "one\u2028two\u2029three\u0085four"
    upstream.answer(sse(text_chunk(text)), "text/event-stream")

    chunks = await call(client, "openai", url, streaming=True)

    assert content_of(chunks) == text


async def test_stream_long_event(client, scripted_server) -> None:
    # One data line far longer than aiohttp's 64 KiB read buffer, within MAX_SSE_EVENT_CHARS.
    upstream, url = scripted_server
    text = "x" * (MAX_SSE_EVENT_CHARS // 2)
    upstream.answer(sse(text_chunk(text)), "text/event-stream")

    chunks = await call(client, "openai", url, streaming=True)

    assert content_of(chunks) == text


async def test_complete_large_body(client, scripted_server) -> None:
    upstream, url = scripted_server
    text = "y" * (4 * 1024 * 1024)
    body = {
        "id": "c",
        "object": "chat.completion",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 4_000_000, "total_tokens": 4_000_005},
    }
    encoded = json.dumps(body).encode()
    upstream.answer([encoded[:65536], encoded[65536:]], "application/json")

    result = await registry.get_adapter("openai").complete(
        client, url, MOCK_API_KEY, chat_body(), TIMEOUT_S
    )

    assert result.body["choices"][0]["message"]["content"] == text
    assert result.usage == Usage(prompt_tokens=5, completion_tokens=4_000_000)


async def test_large_response_header(client, scripted_server) -> None:
    # httpx accepts header blocks up to 100 KiB, and aiohttp's default limit is 8190 bytes a line.
    upstream, url = scripted_server
    upstream.answer(sse(text_chunk("a")), "text/event-stream", **{"x-trace": "t" * 20_000})

    chunks = await call(client, "openai", url, streaming=True)

    assert content_of(chunks) == "a"


async def test_complete_text_body_charset(client, scripted_server) -> None:
    upstream, url = scripted_server
    upstream.answer(["caf\u00e9 ferm\u00e9".encode("latin-1")], "text/plain; charset=latin-1")

    with pytest.raises(UpstreamError) as caught:
        await call(client, "openai", url, streaming=False)

    assert caught.value.kind == "bad_response"
    assert caught.value.status_code == 200
    assert caught.value.message == (
        f"upstream {url.removesuffix('/v1')} returned a body that is not valid JSON: "
        "'caf\u00e9 ferm\u00e9'"
    )


# The aiohttp session's settings.


async def test_aiohttp_session_stores_no_cookies(scripted_server) -> None:
    # By "localhost": aiohttp's default cookie jar ignores cookies from IP addresses anyway.
    upstream, url = scripted_server
    url = url.replace("127.0.0.1", "localhost")
    cookie = {"set-cookie": "affinity=1; Path=/"}
    upstream.answer(sse(text_chunk("a")), "text/event-stream", **cookie)
    session = create_aiohttp_session(max_connections=2, max_connections_per_host=2, keepalive_s=4.0)

    async with session:
        for _ in range(2):
            await call(AiohttpClient(session), "openai", url, streaming=True)

    assert len(upstream.requests) == 2
    assert "cookie" not in upstream.requests[1][0]


async def test_aiohttp_session_ignores_proxy_environment(monkeypatch, fresh_mock_upstream):
    # A proxy from the environment would point every request at a closed port.
    proxy = f"http://127.0.0.1:{free_port()}"
    for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.setenv(name, proxy)
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    session = create_aiohttp_session(max_connections=2, max_connections_per_host=2, keepalive_s=4.0)

    async with session:
        chunks = await call(
            AiohttpClient(session), "openai", fresh_mock_upstream.base_url, streaming=False
        )

    assert chunks[0]["choices"][0]["message"]["content"] == REPLY_TEXT


# The interface itself.


def test_as_http_client_wraps_httpx() -> None:
    httpx_client = httpx.AsyncClient(trust_env=False)
    wrapped = as_http_client(httpx_client)

    assert isinstance(wrapped, HttpxClient)
    assert wrapped.client is httpx_client
    assert as_http_client(wrapped) is wrapped


def test_as_http_client_rejects_other_types() -> None:
    with pytest.raises(TypeError) as caught:
        as_http_client(httpx.Client())  # type: ignore[arg-type]

    assert str(caught.value) == (
        "expected an httpx.AsyncClient or a providers.http.HttpClient, got Client"
    )


class PiecesResponse(StreamResponse):
    def __init__(self, pieces: list[bytes]) -> None:
        self.pieces = pieces
        self.status_code = 200
        self.headers = {}

    async def aiter_bytes(self) -> AsyncIterator[bytes]:
        for piece in self.pieces:
            yield piece

    async def aclose(self) -> None:
        return None


@pytest.mark.parametrize(
    ("pieces", "lines"),
    [
        ([b"a\r", b"\nb\n"], ["a", "b"]),
        ([b"a\r", b"", b"\nb"], ["a", "b"]),
        ([b"a\r\r\nb\n\n"], ["a", "", "b", ""]),
        ([b"a", b"b\r", b"c"], ["ab", "c"]),
        ([b"caf\xc3", b"\xa9\n\xff\n"], ["caf\u00e9", "\ufffd"]),
        ([b"\n"], [""]),
        ([], []),
    ],
    ids=["crlf-split", "empty-piece", "cr-crlf", "cr-alone", "utf8-split", "empty-line", "empty"],
)
async def test_aiter_lines_splits(pieces, lines) -> None:
    assert [line async for line in PiecesResponse(pieces).aiter_lines()] == lines
