"""Translation for Anthropic-format clients, checked field by field and through the real
`anthropic` SDK, which parses what the translation produces."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterable
from typing import Any

import anthropic
import httpx
import httpx2
import pytest
from anthropic.lib.streaming._messages import accumulate_event
from anthropic.types import Message

from providers import registry
from providers.anthropic_ingress import (
    InvalidMessagesRequest,
    message_id_for,
    messages_request_to_openai,
    openai_chunks_to_message_events,
    openai_response_to_messages,
)
from providers.mock_upstream import MOCK_REPLY_WORDS, MOCK_TOOL_CALL_TOKENS
from providers.openai_compat import render_usage
from providers.usage import Usage

TIMEOUT_S = 10.0
WEATHER_TOOL = {
    "name": "get_weather",
    "description": "Current weather of a city",
    "input_schema": {"type": "object", "properties": {"location": {"type": "string"}}},
}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def messages_body(**extra: Any) -> dict[str, Any]:
    return {
        "model": "claude-sonnet-4-5",
        "max_tokens": 100,
        "messages": [{"role": "user", "content": "Say hello"}],
        **extra,
    }


async def chunks_of(items: Iterable[dict[str, Any]]) -> AsyncIterator[dict[str, Any]]:
    for item in items:
        yield item


async def events_of(
    chunks: Iterable[dict[str, Any]], **kwargs: Any
) -> list[tuple[str, dict[str, Any]]]:
    translated = openai_chunks_to_message_events(
        chunks_of(chunks), "claude-sonnet-4-5", "msg_test", **kwargs
    )
    return [event async for event in translated]


def delta_chunk(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
    return {
        "id": "gen-1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "m",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
    }


def usage_chunk(usage: Usage) -> dict[str, Any]:
    return {
        "id": "gen-1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "m",
        "choices": [],
        "usage": render_usage(usage),
    }


def sse_body(events: Iterable[tuple[str, dict[str, Any]]]) -> bytes:
    return b"".join(
        f"event: {name}\ndata: {json.dumps(data)}\n\n".encode() for name, data in events
    )


# Requests: Messages to Chat Completions.


def test_request_plain_text() -> None:
    request = messages_request_to_openai(
        messages_body(
            system="Be brief",
            temperature=0.5,
            top_p=0.9,
            top_k=40,
            stop_sequences=["END"],
            stream=True,
            metadata={"user_id": "buyer-7"},
        )
    )

    assert request == {
        "model": "claude-sonnet-4-5",
        "max_tokens": 100,
        "messages": [
            {"role": "system", "content": "Be brief"},
            {"role": "user", "content": "Say hello"},
        ],
        "temperature": 0.5,
        "top_p": 0.9,
        "stop": ["END"],
        "stream": True,
        "user": "buyer-7",
    }


def test_request_system_blocks_keep_cache_control() -> None:
    system = [
        {"type": "text", "text": "Rules", "cache_control": {"type": "ephemeral"}},
        {"type": "text", "text": "More rules"},
    ]

    request = messages_request_to_openai(messages_body(system=system))

    assert request["messages"][0] == {
        "role": "system",
        "content": [
            {"type": "text", "text": "Rules", "cache_control": {"type": "ephemeral"}},
            {"type": "text", "text": "More rules"},
        ],
    }


def test_request_images_and_documents() -> None:
    content = [
        {
            "type": "image",
            "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0K"},
        },
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
        {
            "type": "document",
            "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0x"},
            "title": "q3.pdf",
        },
        {
            "type": "document",
            "source": {"type": "text", "media_type": "text/plain", "data": "Plain notes"},
        },
        {"type": "text", "text": "Summarize"},
    ]

    request = messages_request_to_openai(
        messages_body(messages=[{"role": "user", "content": content}])
    )

    assert request["messages"] == [
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0K"}},
                {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
                {
                    "type": "file",
                    "file": {
                        "filename": "q3.pdf",
                        "file_data": "data:application/pdf;base64,JVBERi0x",
                    },
                },
                {"type": "text", "text": "Plain notes"},
                {"type": "text", "text": "Summarize"},
            ],
        }
    ]


def test_request_tool_loop() -> None:
    messages = [
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": [
                {"type": "thinking", "thinking": "Use the tool.", "signature": "c2ln"},
                {"type": "text", "text": "Checking."},
                {
                    "type": "tool_use",
                    "id": "toolu_1",
                    "name": "get_weather",
                    "input": {"location": "Paris"},
                },
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Also, hurry."},
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_1",
                    "content": [{"type": "text", "text": "18 C"}],
                },
            ],
        },
    ]

    request = messages_request_to_openai(
        messages_body(
            messages=messages,
            tools=[WEATHER_TOOL],
            tool_choice={"type": "any", "disable_parallel_tool_use": True},
        )
    )

    assert request["messages"] == [
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": "Checking.",
            "tool_calls": [
                {
                    "id": "toolu_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"location": "Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "toolu_1", "content": [{"type": "text", "text": "18 C"}]},
        {"role": "user", "content": [{"type": "text", "text": "Also, hurry."}]},
    ]
    assert request["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "parameters": WEATHER_TOOL["input_schema"],
                "description": "Current weather of a city",
            },
        }
    ]
    assert request["tool_choice"] == "required"
    assert request["parallel_tool_calls"] is False


@pytest.mark.parametrize(
    ("tool_choice", "expected"),
    [
        ({"type": "auto"}, "auto"),
        ({"type": "none"}, "none"),
        (
            {"type": "tool", "name": "get_weather"},
            {"type": "function", "function": {"name": "get_weather"}},
        ),
    ],
)
def test_request_tool_choice(tool_choice, expected) -> None:
    request = messages_request_to_openai(
        messages_body(tools=[WEATHER_TOOL], tool_choice=tool_choice)
    )

    assert request["tool_choice"] == expected
    assert "parallel_tool_calls" not in request


@pytest.mark.parametrize(
    ("thinking", "effort"),
    [
        ({"type": "enabled", "budget_tokens": 1024}, "low"),
        ({"type": "enabled", "budget_tokens": 8000}, "medium"),
        ({"type": "enabled", "budget_tokens": 32000}, "high"),
        ({"type": "disabled"}, None),
    ],
)
def test_request_thinking_becomes_reasoning_effort(thinking, effort) -> None:
    request = messages_request_to_openai(messages_body(thinking=thinking))

    assert request.get("reasoning_effort") == effort


@pytest.mark.parametrize(
    ("body", "param", "message"),
    [
        ([1], None, "The request body must be a JSON object."),
        (
            {"max_tokens": 1, "messages": [{"role": "user", "content": "x"}]},
            "model",
            "model is missing",
        ),
        (messages_body(max_tokens=0), "max_tokens", "max_tokens must be an integer >= 1, got 0."),
        (
            messages_body(max_tokens=True),
            "max_tokens",
            "max_tokens must be an integer >= 1, got True.",
        ),
        (messages_body(messages=[]), "messages", "messages must be a non-empty list."),
        (
            messages_body(messages=[{"role": "system", "content": "x"}]),
            "messages[0].role",
            "must be 'user' or 'assistant'",
        ),
        (
            messages_body(messages=[{"role": "user", "content": 7}]),
            "messages[0].content",
            "must be a string or a list",
        ),
        (
            messages_body(messages=[{"role": "user", "content": [{"text": "x"}]}]),
            "messages[0].content[0]",
            "must be a block with a type",
        ),
        (
            messages_body(messages=[{"role": "user", "content": [{"type": "audio"}]}]),
            "messages[0].content[0].type",
            "'audio' is not supported in user messages",
        ),
        (
            messages_body(
                messages=[{"role": "user", "content": [{"type": "tool_result", "content": "x"}]}]
            ),
            "messages[0].content[0].tool_use_id",
            "tool_use_id is missing",
        ),
        (
            messages_body(
                messages=[
                    {
                        "role": "user",
                        "content": [
                            {
                                "type": "tool_result",
                                "tool_use_id": "t",
                                "content": [{"type": "image", "source": {}}],
                            }
                        ],
                    }
                ]
            ),
            "messages[0].content[0].content[0]",
            "tool results with images cannot be sent",
        ),
        (
            messages_body(
                messages=[
                    {
                        "role": "assistant",
                        "content": [{"type": "tool_use", "id": "t", "name": "f", "input": []}],
                    }
                ]
            ),
            "messages[0].content[0].input",
            "input must be an object",
        ),
        (messages_body(system=[{"type": "image"}]), "system[0]", "must be a text block"),
        (
            messages_body(temperature=1.5),
            "temperature",
            "temperature must be a number from 0 to 1, got 1.5.",
        ),
        (messages_body(top_k=-1), "top_k", "top_k must be an integer >= 0"),
        (messages_body(stop_sequences="END"), "stop_sequences", "must be a list of strings"),
        (messages_body(stream="yes"), "stream", "stream must be a boolean"),
        (
            messages_body(tools=[{"type": "web_search_20250305", "name": "web_search"}]),
            "tools[0].type",
            "is a server tool",
        ),
        (
            messages_body(tools=[{"name": "f"}]),
            "tools[0].input_schema",
            "input_schema must be an object",
        ),
        (
            messages_body(tool_choice={"type": "sometimes"}),
            "tool_choice.type",
            "must be auto, any, tool or none",
        ),
        (
            messages_body(tool_choice={"type": "tool"}),
            "tool_choice.name",
            "tool_choice.name is missing",
        ),
        (
            messages_body(thinking={"type": "enabled"}),
            "thinking.budget_tokens",
            "must be an integer >= 1",
        ),
        (messages_body(metadata="x"), "metadata", "metadata must be an object"),
    ],
)
def test_request_invalid_field_named(body, param, message) -> None:
    with pytest.raises(InvalidMessagesRequest) as caught:
        messages_request_to_openai(body)

    assert isinstance(caught.value, ValueError)
    assert caught.value.param == param
    assert message in caught.value.message


# Responses: Chat Completions to Messages.


def completion(
    message: dict[str, Any], finish_reason: str = "stop", **extra: Any
) -> dict[str, Any]:
    return {
        "id": "gen-abc",
        "object": "chat.completion",
        "created": 1,
        "model": "claude-sonnet-4-5",
        "choices": [{"index": 0, "message": message, "finish_reason": finish_reason}],
        **extra,
    }


def test_response_text_and_usage() -> None:
    usage = Usage(
        prompt_tokens=5000, completion_tokens=40, cached_prompt_tokens=3000, cache_write_tokens=1500
    )

    message = openai_response_to_messages(
        completion({"role": "assistant", "content": "Hello!"}), usage
    )

    assert message == {
        "id": "msg_gen-abc",
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet-4-5",
        "content": [{"type": "text", "text": "Hello!"}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {
            "input_tokens": 500,
            "output_tokens": 40,
            "cache_read_input_tokens": 3000,
            "cache_creation_input_tokens": 1500,
        },
    }
    parsed = Message.model_validate(message)
    assert (
        parsed.usage.input_tokens
        + parsed.usage.cache_read_input_tokens
        + parsed.usage.cache_creation_input_tokens
        == 5000
    )


def test_response_tool_calls_and_reasoning() -> None:
    body = completion(
        {
            "role": "assistant",
            "content": None,
            "reasoning_content": "Need the tool.",
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"location": "Paris"}'},
                }
            ],
        },
        "tool_calls",
    )

    message = openai_response_to_messages(body, Usage(10, 8))

    assert message["content"] == [
        {"type": "thinking", "thinking": "Need the tool.", "signature": ""},
        {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"location": "Paris"}},
    ]
    assert message["stop_reason"] == "tool_use"
    parsed = Message.model_validate(message)
    assert parsed.content[1].input == {"location": "Paris"}


def test_response_empty_tool_calls_is_no_tool_use() -> None:
    body = completion({"role": "assistant", "content": "Done.", "tool_calls": []})

    message = openai_response_to_messages(body, Usage(3, 2))

    assert message["content"] == [{"type": "text", "text": "Done."}]
    assert message["stop_reason"] == "end_turn"
    Message.model_validate(message)


@pytest.mark.parametrize(
    ("finish_reason", "stop_reason"),
    [
        ("stop", "end_turn"),
        ("length", "max_tokens"),
        ("content_filter", "refusal"),
        (None, "end_turn"),
        ("odd", "end_turn"),
    ],
)
def test_response_stop_reasons(finish_reason, stop_reason) -> None:
    body = completion({"role": "assistant", "content": "x"}, finish_reason)

    assert openai_response_to_messages(body, Usage(1, 1))["stop_reason"] == stop_reason


def test_response_usage_read_from_body_when_not_given() -> None:
    usage = Usage(50, 5, cached_prompt_tokens=20, cache_write_tokens=10)
    body = completion({"role": "assistant", "content": "x"}, usage=render_usage(usage))

    message = openai_response_to_messages(body, None)

    assert message["usage"] == {
        "input_tokens": 20,
        "output_tokens": 5,
        "cache_read_input_tokens": 20,
        "cache_creation_input_tokens": 10,
    }


def test_message_id_for() -> None:
    assert message_id_for("gen-123") == "msg_gen-123"
    assert message_id_for("msg_01ABC") == "msg_01ABC"
    assert message_id_for(None).startswith("msg_")


# Streams: Chat Completions chunks to Messages events.


@pytest.mark.anyio
async def test_events_text_order() -> None:
    events = await events_of(
        [
            delta_chunk({"role": "assistant", "content": ""}),
            delta_chunk({"content": "Hel"}),
            delta_chunk({"content": "lo"}),
            delta_chunk({}, "stop"),
            usage_chunk(Usage(30, 2, cached_prompt_tokens=10)),
        ],
        input_tokens=28,
    )

    assert [name for name, _ in events] == [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert events[0][1]["message"]["usage"] == {"input_tokens": 28, "output_tokens": 0}
    assert events[1][1] == {
        "type": "content_block_start",
        "index": 0,
        "content_block": {"type": "text", "text": ""},
    }
    assert events[2][1]["delta"] == {"type": "text_delta", "text": "Hel"}
    assert events[5][1] == {
        "type": "message_delta",
        "delta": {"stop_reason": "end_turn", "stop_sequence": None},
        "usage": {
            "input_tokens": 20,
            "output_tokens": 2,
            "cache_read_input_tokens": 10,
            "cache_creation_input_tokens": 0,
        },
    }


@pytest.mark.anyio
async def test_events_empty_tool_calls_open_no_block() -> None:
    events = await events_of(
        [
            delta_chunk({"role": "assistant", "content": "", "tool_calls": []}),
            delta_chunk({"content": "Hi", "tool_calls": []}),
            delta_chunk({"tool_calls": []}, "stop"),
        ]
    )

    starts = [
        data["content_block"]["type"] for name, data in events if name == "content_block_start"
    ]
    assert starts == ["text"]
    assert events[-2][1]["delta"]["stop_reason"] == "end_turn"


@pytest.mark.anyio
async def test_events_reasoning_text_and_tools() -> None:
    events = await events_of(
        [
            delta_chunk({"role": "assistant", "reasoning_content": "Plan."}),
            delta_chunk({"content": "Checking."}),
            delta_chunk(
                {
                    "tool_calls": [
                        {
                            "index": 0,
                            "id": "call_a",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": ""},
                        }
                    ]
                }
            ),
            delta_chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"location":'}}]}),
            delta_chunk({"tool_calls": [{"index": 0, "function": {"arguments": ' "Paris"}'}}]}),
            delta_chunk(
                {
                    "tool_calls": [
                        {
                            "index": 1,
                            "id": "call_b",
                            "type": "function",
                            "function": {"name": "get_time", "arguments": "{}"},
                        }
                    ]
                }
            ),
            delta_chunk({}, "tool_calls"),
            usage_chunk(Usage(12, 30, reasoning_tokens=5)),
        ]
    )

    assert [(name, data.get("index")) for name, data in events] == [
        ("message_start", None),
        ("content_block_start", 0),
        ("content_block_delta", 0),
        ("content_block_stop", 0),
        ("content_block_start", 1),
        ("content_block_delta", 1),
        ("content_block_stop", 1),
        ("content_block_start", 2),
        ("content_block_delta", 2),
        ("content_block_delta", 2),
        ("content_block_stop", 2),
        ("content_block_start", 3),
        ("content_block_delta", 3),
        ("content_block_stop", 3),
        ("message_delta", None),
        ("message_stop", None),
    ]
    assert events[1][1]["content_block"] == {"type": "thinking", "thinking": "", "signature": ""}
    assert events[7][1]["content_block"] == {
        "type": "tool_use",
        "id": "call_a",
        "name": "get_weather",
        "input": {},
    }
    assert events[-2][1]["delta"]["stop_reason"] == "tool_use"

    snapshot = None
    buffers: dict[int, bytes] = {}
    for _, data in events:
        snapshot = accumulate_event(event=data, current_snapshot=snapshot, json_bufs=buffers)
    assert snapshot.content[0].thinking == "Plan."
    assert snapshot.content[1].text == "Checking."
    assert snapshot.content[2].input == {"location": "Paris"}
    assert snapshot.content[3].name == "get_time"
    assert snapshot.stop_reason == "tool_use"
    assert snapshot.usage.output_tokens == 30
    assert snapshot.usage.input_tokens == 12


@pytest.mark.anyio
async def test_events_error_chunk_ends_stream() -> None:
    error = {
        "error": {
            "message": "upstream failed: overloaded",
            "type": "upstream_error",
            "code": "upstream_server_error",
        }
    }

    events = await events_of([delta_chunk({"content": "Hi"}), error, usage_chunk(Usage(1, 1))])

    assert events[-1] == (
        "error",
        {"type": "error", "error": {"type": "api_error", "message": "upstream failed: overloaded"}},
    )
    assert "message_stop" not in [name for name, _ in events]


@pytest.mark.anyio
async def test_events_without_usage_report_zeros() -> None:
    events = await events_of([delta_chunk({"content": "Hi"}, "length")])

    assert events[-2][1]["usage"] == {
        "input_tokens": 0,
        "output_tokens": 0,
        "cache_read_input_tokens": 0,
        "cache_creation_input_tokens": 0,
    }
    assert events[-2][1]["delta"]["stop_reason"] == "max_tokens"


# The real anthropic SDK against an ingress served in-process, with the mock upstream behind it.


class Ingress:
    """A Messages endpoint in an httpx2 handler: translate in, call the mock, translate out."""

    def __init__(self, mock) -> None:
        self.mock = mock
        self.openai_requests: list[dict[str, Any]] = []

    async def handle(self, request: httpx2.Request) -> httpx2.Response:
        body = messages_request_to_openai(json.loads(request.content))
        self.openai_requests.append(body)
        adapter = registry.get_adapter("openai")
        async with httpx.AsyncClient(trust_env=False) as upstream_client:
            if not body.get("stream"):
                result = await adapter.complete(
                    upstream_client, self.mock.base_url, self.mock.api_key, body, TIMEOUT_S
                )
                return httpx2.Response(
                    200, json=openai_response_to_messages(result.body, result.usage)
                )

            chunks = adapter.stream(
                upstream_client, self.mock.base_url, self.mock.api_key, body, TIMEOUT_S
            )
            events = [
                event
                async for event in openai_chunks_to_message_events(
                    chunks, body["model"], "msg_ingress"
                )
            ]
        return httpx2.Response(
            200, content=sse_body(events), headers={"content-type": "text/event-stream"}
        )

    def sdk(self) -> anthropic.AsyncAnthropic:
        # The anthropic SDK 2.17 is built on httpx2, so its client and transport come from there.
        return anthropic.AsyncAnthropic(
            api_key="sk-ant-buyer",
            base_url="http://ingress.test",
            max_retries=0,
            http_client=httpx2.AsyncClient(transport=httpx2.MockTransport(self.handle)),
        )


@pytest.mark.anyio
async def test_sdk_create_parses_translated_message(fresh_mock_upstream) -> None:
    ingress = Ingress(fresh_mock_upstream)
    sdk = ingress.sdk()

    message = await sdk.messages.create(
        model="mock-1+cached:2",
        max_tokens=5,
        system="Be brief",
        messages=[{"role": "user", "content": "Say hello"}],
    )
    await sdk.close()

    assert isinstance(message, Message)
    assert message.content[0].text == "This is the Tokenport mock"
    assert message.stop_reason == "max_tokens"
    assert message.usage.input_tokens == 10 - 2
    assert message.usage.cache_read_input_tokens == 2
    assert message.usage.output_tokens == 5
    assert ingress.openai_requests[0]["messages"][0] == {"role": "system", "content": "Be brief"}


@pytest.mark.anyio
async def test_sdk_stream_accumulates_text(fresh_mock_upstream) -> None:
    ingress = Ingress(fresh_mock_upstream)
    sdk = ingress.sdk()

    async with sdk.messages.stream(
        model="mock-1+reasoning",
        max_tokens=100,
        messages=[{"role": "user", "content": "Say hello"}],
    ) as stream:
        texts = [text async for text in stream.text_stream]
        message = await stream.get_final_message()
    await sdk.close()

    assert "".join(texts) == " ".join(MOCK_REPLY_WORDS)
    assert [block.type for block in message.content] == ["thinking", "text"]
    assert message.content[0].thinking == "Thinking about the request"
    assert message.content[1].text == " ".join(MOCK_REPLY_WORDS)
    assert message.stop_reason == "end_turn"
    assert message.usage.input_tokens == 5
    assert message.usage.output_tokens == 16
    assert message.id == "msg_ingress"


@pytest.mark.anyio
async def test_sdk_stream_tool_use(fresh_mock_upstream) -> None:
    ingress = Ingress(fresh_mock_upstream)
    sdk = ingress.sdk()

    async with sdk.messages.stream(
        model="mock-1",
        max_tokens=100,
        tools=[WEATHER_TOOL],
        messages=[{"role": "user", "content": "What is the weather in Paris?"}],
    ) as stream:
        message = await stream.get_final_message()

    tool_use = message.content[0]
    assert tool_use.type == "tool_use"
    assert tool_use.name == "get_weather"
    assert tool_use.input == {"location": "Paris"}
    assert message.stop_reason == "tool_use"
    assert message.usage.output_tokens == MOCK_TOOL_CALL_TOKENS

    follow_up = await sdk.messages.create(
        model="mock-1",
        max_tokens=100,
        tools=[WEATHER_TOOL],
        messages=[
            {"role": "user", "content": "What is the weather in Paris?"},
            {"role": "assistant", "content": [block.model_dump() for block in message.content]},
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": tool_use.id, "content": "18 C"}],
            },
        ],
    )
    await sdk.close()

    assert follow_up.stop_reason == "end_turn"
    assert follow_up.content[0].text == " ".join(MOCK_REPLY_WORDS)
    assert ingress.openai_requests[-1]["messages"][-1] == {
        "role": "tool",
        "tool_call_id": tool_use.id,
        "content": "18 C",
    }


@pytest.mark.anyio
async def test_sdk_raw_events_parse() -> None:
    events = await events_of(
        [
            delta_chunk({"role": "assistant", "content": ""}),
            delta_chunk({"content": "Hi"}),
            delta_chunk({}, "stop"),
            usage_chunk(Usage(7, 1, cache_write_tokens=3)),
        ]
    )

    def handler(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(
            200, content=sse_body(events), headers={"content-type": "text/event-stream"}
        )

    sdk = anthropic.AsyncAnthropic(
        api_key="k",
        base_url="http://ingress.test",
        http_client=httpx2.AsyncClient(transport=httpx2.MockTransport(handler)),
    )
    stream = await sdk.messages.create(
        model="m", max_tokens=10, messages=[{"role": "user", "content": "x"}], stream=True
    )
    parsed = [event async for event in stream]
    await sdk.close()

    assert [event.type for event in parsed] == [name for name, _ in events]
    assert parsed[-2].usage.cache_creation_input_tokens == 3
    assert parsed[-2].usage.input_tokens == 4
