"""The mock upstream: its content and prompt rules, its controls, and its wire format as read by
the real `openai` SDK."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import openai
import pytest

from providers.mock_upstream import (
    FAULT_HEADER,
    MOCK_MODELS,
    MOCK_PROMPT_TOKENS_PER_MESSAGE,
    MOCK_REASONING_WORDS,
    MOCK_REPLY_WORDS,
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
