"""Every adapter turns its vendor's documented wire format into canonical content and usage.

Each fixture in tests/fixtures/providers contains a response or stream in the shape its vendor
documents (the header of each file names the source). The tests serve it through an in-process
transport to the adapter that `registry.get_adapter` returns, and check the exact content and
the exact canonical `Usage`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from providers import registry
from providers.errors import UpstreamError
from providers.openai_compat import render_usage, usage_from_rendered
from providers.usage import InvalidUsageError, Usage

pytestmark = pytest.mark.anyio

FIXTURES = Path(__file__).parent / "fixtures" / "providers"
TIMEOUT_S = 5.0
API_KEY = "sk-fixture-credential"
BASE_URLS = {
    "openai": "http://upstream.test/v1",
    "anthropic": "http://upstream.test/v1",
    "gemini": "http://upstream.test/v1beta",
}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def load_json_fixture(name: str) -> dict[str, Any]:
    """Read a .jsonc fixture: JSON after a header of // comment lines."""
    lines = (FIXTURES / name).read_text().splitlines()
    return json.loads("\n".join(line for line in lines if not line.lstrip().startswith("//")))


def load_sse_fixture(name: str) -> bytes:
    # The ":" header lines are server-sent event comments, which every reader skips.
    return (FIXTURES / name).read_bytes()


class Upstream:
    """An in-process upstream that returns one fixed response to every request."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self.requests: list[httpx.Request] = []

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return self.response

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=httpx.MockTransport(self.handle))

    def sent_body(self) -> dict[str, Any]:
        return json.loads(self.requests[-1].content)


def json_upstream(fixture: str) -> Upstream:
    return Upstream(httpx.Response(200, json=load_json_fixture(fixture)))


def sse_upstream(fixture: str) -> Upstream:
    return Upstream(
        httpx.Response(
            200, content=load_sse_fixture(fixture), headers={"content-type": "text/event-stream"}
        )
    )


def chat_body(model: str = "fixture-model", **extra: Any) -> dict[str, Any]:
    return {
        "model": model,
        "messages": [{"role": "user", "content": "Hi"}],
        "max_tokens": 100,
        **extra,
    }


async def complete_with(protocol: str, upstream: Upstream, body: dict[str, Any] | None = None):
    adapter = registry.get_adapter(protocol)
    async with upstream.client() as client:
        return await adapter.complete(
            client, BASE_URLS[adapter.family], API_KEY, body or chat_body(), TIMEOUT_S
        )


async def stream_with(
    protocol: str, upstream: Upstream, body: dict[str, Any] | None = None
) -> list[dict[str, Any]]:
    adapter = registry.get_adapter(protocol)
    async with upstream.client() as client:
        chunks = adapter.stream(
            client, BASE_URLS[adapter.family], API_KEY, body or chat_body(), TIMEOUT_S
        )
        return [chunk async for chunk in chunks]


def joined(chunks: list[dict[str, Any]], field: str = "content") -> str:
    return "".join(
        choice["delta"].get(field) or "" for chunk in chunks for choice in chunk["choices"]
    )


def finish_reasons(chunks: list[dict[str, Any]]) -> list[str]:
    return [
        choice["finish_reason"]
        for chunk in chunks
        for choice in chunk["choices"]
        if choice.get("finish_reason")
    ]


def stream_usage(protocol: str, chunks: list[dict[str, Any]]) -> Usage | None:
    adapter = registry.get_adapter(protocol)
    reported = [adapter.usage_from_chunk(chunk) for chunk in chunks]
    assert all(usage is None for usage in reported[:-1]), "only the last chunk may carry usage"
    return reported[-1]


# Non-streaming fixtures: exact content and canonical usage.


@pytest.mark.parametrize(
    ("protocol", "fixture", "content", "reasoning", "finish_reason", "usage"),
    [
        (
            "openai",
            "openai_response.jsonc",
            "The invoice total is 1,240 USDC.",
            None,
            "stop",
            Usage(
                2006, 300, cached_prompt_tokens=1536, cache_write_tokens=256, reasoning_tokens=256
            ),
        ),
        (
            "deepseek",
            "deepseek_response.jsonc",
            "9.8 is greater than 9.11.",
            "Compare the tenths digit: 8 is more than 1.",
            "stop",
            Usage(1000, 420, cached_prompt_tokens=768, reasoning_tokens=380),
        ),
        (
            "moonshot",
            "kimi_response.jsonc",
            "The report covers three quarters.",
            None,
            "stop",
            Usage(100, 10, cached_prompt_tokens=80),
        ),
        (
            "qwen",
            "qwen_response.jsonc",
            "I am Qwen, a large language model.",
            None,
            "stop",
            Usage(3019, 104, cached_prompt_tokens=2048),
        ),
        (
            "glm",
            "glm_response.jsonc",
            "Spring rain wakes the willows.",
            "A short poem about spring.",
            "stop",
            Usage(320, 150, cached_prompt_tokens=128, reasoning_tokens=120),
        ),
        (
            "minimax",
            "minimax_response.jsonc",
            "Hello! How can I assist you?",
            "The user greets me.",
            "stop",
            Usage(26, 223, reasoning_tokens=214),
        ),
        (
            "gemini",
            "gemini_response.jsonc",
            'The shortest word is "ox".',
            "Sorting by length first.",
            "stop",
            Usage(4000, 430, cached_prompt_tokens=3072, reasoning_tokens=310),
        ),
    ],
)
async def test_response_fixture_content_and_usage(
    protocol, fixture, content, reasoning, finish_reason, usage
) -> None:
    result = await complete_with(protocol, json_upstream(fixture))

    message = result.body["choices"][0]["message"]
    assert message["content"] == content
    assert message.get("reasoning_content") == reasoning
    assert result.body["choices"][0]["finish_reason"] == finish_reason
    assert result.usage == usage
    assert result.body["usage"] == render_usage(usage)
    assert registry.get_adapter(protocol).usage_from_chunk(result.body) == usage


async def test_anthropic_response_fixture_tool_use() -> None:
    result = await complete_with("anthropic", json_upstream("anthropic_response.jsonc"))

    choice = result.body["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] == "I'll check the weather in Paris."
    assert choice["message"]["tool_calls"] == [
        {
            "id": "toolu_01A09q90qw90lq917835lq9",
            "type": "function",
            "function": {
                "name": "get_weather",
                "arguments": '{"location": "Paris", "unit": "celsius"}',
            },
        }
    ]
    # input 472 + cache reads 3000 + cache writes 1200: each prompt token is counted once.
    assert result.usage == Usage(
        prompt_tokens=4672, completion_tokens=89, cached_prompt_tokens=3000, cache_write_tokens=1200
    )
    assert result.usage.uncached_prompt_tokens == 472
    assert result.body["id"] == "msg_01XFDUDYJgAACzvnptvVoYEL"
    assert result.body["model"] == "claude-sonnet-4-5-20250929"


async def test_minimax_keeps_reasoning_details() -> None:
    result = await complete_with("minimax", json_upstream("minimax_response.jsonc"))

    message = result.body["choices"][0]["message"]
    assert message["reasoning_details"][0]["text"] == "The user greets me."
    assert message["reasoning_content"] == "The user greets me."


async def test_minimax_base_resp_error_with_200() -> None:
    with pytest.raises(UpstreamError) as caught:
        await complete_with("minimax", json_upstream("minimax_error_response.jsonc"))

    assert caught.value.kind == "rate_limited"
    assert caught.value.status_code == 200
    assert caught.value.message == (
        "upstream http://upstream.test returned MiniMax error 1002: rate limit exceeded(RPM)"
    )


# Streaming fixtures: exact deltas, finish reasons and one final usage chunk.


@pytest.mark.parametrize(
    ("protocol", "fixture", "content", "reasoning", "usage"),
    [
        (
            "openai",
            "openai_stream.sse",
            "Hello there",
            "",
            Usage(1200, 70, cached_prompt_tokens=1024, reasoning_tokens=64),
        ),
        (
            "deepseek",
            "deepseek_stream.sse",
            "9.8 is greater.",
            "Compare the tenths.",
            Usage(64, 96, reasoning_tokens=88),
        ),
        (
            "moonshot",
            "kimi_stream.sse",
            "OK.",
            "Short answer.",
            Usage(12, 5, cached_prompt_tokens=8, reasoning_tokens=3),
        ),
        ("qwen", "qwen_stream.sse", "I am Qwen.", "", Usage(22, 4)),
        ("glm", "glm_stream.sse", "春天", "Spring", Usage(18, 9)),
        (
            "minimax",
            "minimax_stream.sse",
            "Hello! How can I help?",
            "The user says hi.",
            Usage(26, 34, reasoning_tokens=25),
        ),
        (
            "gemini",
            "gemini_stream.sse",
            "Hello! How can I help you today?",
            "",
            Usage(9, 31, reasoning_tokens=22),
        ),
    ],
)
async def test_stream_fixture_content_and_usage(
    protocol, fixture, content, reasoning, usage
) -> None:
    chunks = await stream_with(protocol, sse_upstream(fixture))

    assert all(chunk["object"] == "chat.completion.chunk" for chunk in chunks[:-1])
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert joined(chunks) == content
    assert joined(chunks, "reasoning_content") == reasoning
    assert finish_reasons(chunks) == ["stop"]
    assert chunks[-1]["choices"] == []
    assert stream_usage(protocol, chunks) == usage


async def test_anthropic_stream_fixture_events() -> None:
    chunks = await stream_with("anthropic", sse_upstream("anthropic_stream.sse"))

    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert {chunk["id"] for chunk in chunks} == {"msg_014p7gG3wDgGV9EUtLvnow3U"}
    assert joined(chunks, "reasoning_content") == "The user wants the weather."
    assert joined(chunks) == "Okay, let me check the weather."
    tool_deltas = [
        call
        for chunk in chunks
        for choice in chunk["choices"]
        for call in choice["delta"].get("tool_calls") or []
    ]
    assert tool_deltas[0] == {
        "index": 0,
        "id": "toolu_01T1x1fJ34qAmk2tNTrN7Up6",
        "type": "function",
        "function": {"name": "get_weather", "arguments": ""},
    }
    # The empty partial_json piece yields no chunk.
    assert [call["function"]["arguments"] for call in tool_deltas[1:]] == [
        '{"location":',
        ' "San Francisco, CA"}',
    ]
    assert finish_reasons(chunks) == ["tool_calls"]
    # input 472 + cache reads 2048 from message_start, output 89 from message_delta.
    assert stream_usage("anthropic", chunks) == Usage(2520, 89, cached_prompt_tokens=2048)


async def test_qwen_usage_with_choices_moves_to_last_chunk() -> None:
    chunks = await stream_with("qwen", sse_upstream("qwen_stream.sse"))

    finish_chunk = chunks[-2]
    assert finish_chunk["choices"][0]["finish_reason"] == "stop"
    assert "usage" not in finish_chunk
    assert chunks[-1]["id"] == "chatcmpl-d8aa6596-fixture-0002"
    assert chunks[-1]["model"] == "qwen-plus"


async def test_kimi_usage_inside_choice_is_taken_out() -> None:
    chunks = await stream_with("moonshot", sse_upstream("kimi_stream.sse"))

    assert all("usage" not in choice for chunk in chunks for choice in chunk["choices"])
    assert chunks[-1]["usage"]["prompt_tokens_details"]["cached_tokens"] == 8


# Vendor quirks beyond the fixtures.


def sse_lines(*events: dict[str, Any], done: bool = True) -> bytes:
    body = b"".join(b"data: " + json.dumps(event).encode() + b"\n\n" for event in events)
    return body + (b"data: [DONE]\n\n" if done else b"")


def chunk(delta: dict[str, Any], finish_reason: str | None = None, **extra: Any) -> dict[str, Any]:
    return {
        "id": "chunk-1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "m",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
        **extra,
    }


def stream_upstream(body: bytes) -> Upstream:
    return Upstream(
        httpx.Response(200, content=body, headers={"content-type": "text/event-stream"})
    )


async def test_glm_sensitive_finish_is_content_filter() -> None:
    upstream = stream_upstream(
        sse_lines(chunk({"role": "assistant", "content": "Hi"}), chunk({}, "sensitive"))
    )

    chunks = await stream_with("glm", upstream)

    assert finish_reasons(chunks) == ["content_filter"]


async def test_glm_network_error_finish_raises() -> None:
    upstream = stream_upstream(sse_lines(chunk({"content": "Hi"}), chunk({}, "network_error")))

    with pytest.raises(UpstreamError) as caught:
        await stream_with("glm", upstream)

    assert caught.value.kind == "server_error"
    assert "finish_reason network_error" in caught.value.message


async def test_minimax_cumulative_reasoning_details() -> None:
    def reasoning(text: str) -> dict[str, Any]:
        return {"reasoning_details": [{"type": "reasoning.text", "text": text}]}

    upstream = stream_upstream(
        sse_lines(
            chunk(reasoning("The user")),
            chunk(reasoning("The user says hi.")),
            chunk({"content": "Hello!"}, "stop"),
            done=False,
        )
    )

    chunks = await stream_with("minimax", upstream)

    assert joined(chunks, "reasoning_content") == "The user says hi."


async def test_minimax_stream_without_finish_is_connection_error() -> None:
    upstream = stream_upstream(sse_lines(chunk({"content": "Hel"}), done=False))

    with pytest.raises(UpstreamError) as caught:
        await stream_with("minimax", upstream)

    assert caught.value.kind == "connection"
    assert "before every choice had a finish_reason" in caught.value.message


async def test_minimax_error_inside_stream() -> None:
    upstream = stream_upstream(
        sse_lines(
            chunk({"content": "Hi"}),
            {"base_resp": {"status_code": 1001, "status_msg": "request timeout"}, "choices": []},
            done=False,
        )
    )

    with pytest.raises(UpstreamError) as caught:
        await stream_with("minimax", upstream)

    assert caught.value.kind == "timeout"
    assert "MiniMax error 1001: request timeout" in caught.value.message


async def test_openai_profile_requires_done() -> None:
    upstream = stream_upstream(sse_lines(chunk({"content": "Hi"}, "stop"), done=False))

    with pytest.raises(UpstreamError) as caught:
        await stream_with("openai", upstream)

    assert caught.value.kind == "connection"
    assert "before sending data: [DONE]" in caught.value.message


@pytest.mark.parametrize("protocol", ["deepseek", "moonshot", "qwen", "glm"])
async def test_max_completion_tokens_sent_as_max_tokens(protocol) -> None:
    upstream = json_upstream("openai_response.jsonc")
    body = {
        "model": "m",
        "messages": [{"role": "user", "content": "Hi"}],
        "max_completion_tokens": 64,
    }

    await complete_with(protocol, upstream, body)

    sent = upstream.sent_body()
    assert sent["max_tokens"] == 64
    assert "max_completion_tokens" not in sent


async def test_minimax_asks_for_reasoning_split() -> None:
    upstream = json_upstream("minimax_response.jsonc")

    await complete_with("minimax", upstream)
    await complete_with("minimax", upstream, chat_body(reasoning_split=False))

    assert json.loads(upstream.requests[0].content)["reasoning_split"] is True
    assert json.loads(upstream.requests[1].content)["reasoning_split"] is False


def cache_marked_body() -> dict[str, Any]:
    return {
        "model": "m",
        "max_tokens": 10,
        "messages": [
            {
                "role": "system",
                "content": [
                    {"type": "text", "text": "Long rules", "cache_control": {"type": "ephemeral"}}
                ],
            },
            {"role": "user", "content": "Hi"},
        ],
        "tools": [
            {
                "type": "function",
                "function": {"name": "f", "parameters": {"type": "object"}},
                "cache_control": {"type": "ephemeral"},
            }
        ],
    }


@pytest.mark.parametrize(
    ("protocol", "kept"), [("openai", False), ("deepseek", False), ("qwen", True)]
)
async def test_cache_control_marks(protocol, kept) -> None:
    upstream = json_upstream("openai_response.jsonc")

    await complete_with(protocol, upstream, cache_marked_body())

    sent = upstream.sent_body()
    assert ("cache_control" in sent["messages"][0]["content"][0]) is kept
    assert ("cache_control" in sent["tools"][0]) is kept
    assert sent["messages"][1] == {"role": "user", "content": "Hi"}


async def test_invalid_vendor_usage_is_ignored(caplog) -> None:
    body = load_json_fixture("kimi_response.jsonc")
    body["usage"]["cached_tokens"] = 500
    upstream = Upstream(httpx.Response(200, json=body))

    result = await complete_with("moonshot", upstream)

    assert result.usage is None
    assert result.body["usage"]["cached_tokens"] == 500
    assert "reported invalid usage" in caplog.text


# The canonical rendering and the registry.


def test_render_usage_round_trip() -> None:
    usage = Usage(100, 20, cached_prompt_tokens=30, cache_write_tokens=40, reasoning_tokens=5)

    rendered = render_usage(usage)

    assert rendered == {
        "prompt_tokens": 100,
        "completion_tokens": 20,
        "total_tokens": 120,
        "prompt_tokens_details": {"cached_tokens": 30, "cache_write_tokens": 40},
        "completion_tokens_details": {"reasoning_tokens": 5},
    }
    assert usage_from_rendered(rendered) == usage


@pytest.mark.parametrize(
    ("details", "message"),
    [
        ({"cache_write_tokens": "4"}, "cache_write_tokens must be an integer"),
        ({"cache_write_tokens": -1}, "cache_write_tokens must not be negative"),
        ({"cached_tokens": 6, "cache_write_tokens": 5}, r"exceed prompt_tokens \(10\)"),
    ],
)
def test_usage_from_rendered_rejects(details, message) -> None:
    with pytest.raises(InvalidUsageError, match=message):
        usage_from_rendered(
            {"prompt_tokens": 10, "completion_tokens": 1, "prompt_tokens_details": details}
        )


def test_registry_protocols() -> None:
    assert registry.SUPPORTED_PROTOCOLS == (
        "openai",
        "deepseek",
        "moonshot",
        "qwen",
        "glm",
        "minimax",
        "anthropic",
        "gemini",
    )
    for protocol in registry.SUPPORTED_PROTOCOLS:
        adapter = registry.get_adapter(protocol)
        assert adapter.protocol == protocol
        assert callable(adapter.complete)
        assert callable(adapter.stream)


@pytest.mark.parametrize(
    ("alias", "protocol"),
    [("kimi", "moonshot"), ("zhipu", "glm"), ("dashscope", "qwen"), (" Anthropic ", "anthropic")],
)
def test_registry_aliases(alias, protocol) -> None:
    assert registry.get_adapter(alias).protocol == protocol


@pytest.mark.parametrize("protocol", ["bedrock", "", None])
def test_registry_unknown_protocol(protocol) -> None:
    with pytest.raises(registry.UnknownProtocolError) as caught:
        registry.get_adapter(protocol)

    assert str(caught.value).startswith(
        f"upstream protocol {protocol!r} is not supported; use one of openai,"
    )


def test_registry_families() -> None:
    families: dict[str, str] = {
        protocol: registry.get_adapter(protocol).family for protocol in registry.SUPPORTED_PROTOCOLS
    }

    assert families == {
        "openai": "openai",
        "deepseek": "openai",
        "moonshot": "openai",
        "qwen": "openai",
        "glm": "openai",
        "minimax": "openai",
        "anthropic": "anthropic",
        "gemini": "gemini",
    }


async def test_gemini_request_goes_to_model_path() -> None:
    upstream = json_upstream("gemini_response.jsonc")

    await complete_with("gemini", upstream, chat_body(model="models/gemini-2.5-flash"))

    request = upstream.requests[-1]
    assert request.url.path == "/v1beta/models/gemini-2.5-flash:generateContent"
    assert request.headers["x-goog-api-key"] == API_KEY
    assert "key" not in request.url.params


async def test_anthropic_request_headers() -> None:
    upstream = json_upstream("anthropic_response.jsonc")

    await complete_with("anthropic", upstream)

    request = upstream.requests[-1]
    assert request.url.path == "/v1/messages"
    assert request.headers["x-api-key"] == API_KEY
    assert request.headers["anthropic-version"] == "2023-06-01"
    assert "authorization" not in request.headers
