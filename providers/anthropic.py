"""Adapter for upstreams that speak Anthropic's Messages API.

It presents the interface of `openai_compat`: `complete` and `stream` take a Chat Completions
request body, send it as `POST {base_url}/messages` with `x-api-key` and `anthropic-version`
headers, and return a `chat.completion` body or yield `chat.completion.chunk` objects. Usage is
reported in the canonical form of `Usage` and rendered into the OpenAI body with
`openai_compat.render_usage`, so `usage_from_chunk` reads cache writes back.

Anthropic reports `input_tokens` without the prompt tokens read from or written to its cache, so
the canonical prompt is input + cache_read_input_tokens + cache_creation_input_tokens, and each
token is priced once. Field names and event order follow Anthropic's streaming guide
(https://platform.claude.com/docs/build-with-claude/streaming) and the types of the `anthropic`
Python SDK 2.17.

A request that cannot be expressed in the Messages API (`n` > 1, a missing `max_tokens`, an
unknown part type) raises UpstreamError of kind "client_error" with `status_code` None before
anything is sent. The proxy can respond 400 to it, or fall over to a listing of another
protocol.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import aclosing
from typing import Any

from providers.errors import UpstreamError, UpstreamErrorKind, redact
from providers.http import HttpClientLike
from providers.openai_compat import (
    CompletionResult,
    describe_upstream,
    error_detail,
    post_json,
    render_usage,
    rendered_usage_from_chunk,
    stream_sse_data,
)
from providers.usage import InvalidUsageError, Usage

logger = logging.getLogger(__name__)

MESSAGES_PATH = "/messages"
ANTHROPIC_VERSION = "2023-06-01"

# Anthropic's stop_reason values (SDK type StopReason) and the Chat Completions finish_reason
# each one becomes.
FINISH_REASONS: dict[str, str] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "tool_use": "tool_calls",
    "pause_turn": "stop",
    "refusal": "content_filter",
    "model_context_window_exceeded": "length",
}

# Chat Completions `reasoning_effort` as an extended-thinking budget. Anthropic's minimum budget
# is 1,024 tokens and the budget must stay below max_tokens, so a smaller max_tokens disables it.
THINKING_BUDGET_TOKENS: dict[str, int] = {
    "minimal": 1024,
    "low": 1024,
    "medium": 4096,
    "high": 16384,
}

# Error types of Anthropic's error objects and the kind each one is classified as.
_ERROR_KINDS: dict[str, UpstreamErrorKind] = {
    "rate_limit_error": "rate_limited",
    "overloaded_error": "server_error",
    "api_error": "server_error",
    "timeout_error": "timeout",
    "invalid_request_error": "client_error",
    "authentication_error": "client_error",
    "permission_error": "client_error",
    "not_found_error": "client_error",
    "request_too_large": "client_error",
    "billing_error": "client_error",
}

_DATA_URL = re.compile(r"^data:(?P<media_type>[\w.+-]+/[\w.+-]+);base64,(?P<data>.*)$", re.DOTALL)

usage_from_chunk = rendered_usage_from_chunk


def messages_url(base_url: str) -> str:
    return base_url.rstrip("/") + MESSAGES_PATH


async def complete(
    client: HttpClientLike,
    base_url: str,
    api_key: str,
    body: Mapping[str, Any],
    timeout_s: float,
) -> CompletionResult:
    """Send a Chat Completions request as a Messages request and return a `chat.completion` body.

    `timeout_s` is a deadline for the whole call. `usage` is None when the response has no
    usage or an invalid one (logged as a warning), so the caller counts tokens locally.

    Raises UpstreamError for an untranslatable request (kind "client_error", nothing sent), a
    non-2xx status, a timeout, a connection failure, and a body that is not a message.
    """
    request_body = to_messages_request(body)
    url = messages_url(base_url)
    upstream = describe_upstream(url)
    logger.debug("Sending message request to %s, model %r", upstream, request_body["model"])

    data, status_code = await post_json(
        client, url, request_body, _request_headers(api_key, streaming=False), timeout_s, api_key
    )
    if not isinstance(data, dict) or data.get("type") != "message":
        if isinstance(data, dict) and "error" in data:
            detail = error_detail(data, api_key)
        else:
            detail = redact(json.dumps(data), api_key)
        raise UpstreamError(
            "bad_response",
            f"upstream {upstream} returned HTTP {status_code} without a message: {detail}",
            status_code=status_code,
        )

    usage = None
    if data.get("usage") is not None:
        try:
            usage = usage_from_messages(data["usage"])
        except InvalidUsageError as exc:
            logger.warning("Upstream %s reported invalid usage, ignoring it: %s", upstream, exc)
    return CompletionResult(body=chat_completion_from_message(data, usage), usage=usage)


async def stream(
    client: HttpClientLike,
    base_url: str,
    api_key: str,
    body: Mapping[str, Any],
    timeout_s: float,
) -> AsyncIterator[dict[str, Any]]:
    """Send a streaming Messages request and yield `chat.completion.chunk` objects.

    The first chunk carries the assistant role. Text becomes `content` deltas, thinking becomes
    `reasoning_content` deltas, and each tool_use block becomes a tool call whose arguments
    arrive as the block's `input_json_delta` pieces. `message_delta` gives the finish chunk and
    `message_stop` a last chunk with empty `choices` and the usage, when the upstream reported
    any. `timeout_s` bounds connecting and each wait for data.

    Raises UpstreamError on the first iteration for an untranslatable request or a non-2xx
    status. Later it raises for a timeout, a dropped connection, data that is not a JSON object,
    and an `error` event, classified by its error type. A stream that ends before
    `message_stop` raises kind "connection".
    """
    request_body = {**to_messages_request(body), "stream": True}
    url = messages_url(base_url)
    upstream = describe_upstream(url)
    translator = MessageStreamTranslator(upstream, api_key)
    logger.debug("Opening message stream to %s, model %r", upstream, request_body["model"])

    events = stream_sse_data(
        client, url, request_body, _request_headers(api_key, streaming=True), timeout_s, api_key
    )
    async with aclosing(events):
        async for data in events:
            for chunk in translator.translate(_parse_event(data, upstream, api_key)):
                yield chunk
            if translator.stopped:
                return

    raise UpstreamError(
        "connection",
        f"upstream {upstream} closed the stream before sending message_stop",
        status_code=200,
    )


# Request translation: Chat Completions to Messages.


def to_messages_request(body: Mapping[str, Any]) -> dict[str, Any]:
    """Translate a Chat Completions request body into a Messages request body.

    System and developer messages become `system`, tool messages become `tool_result` blocks in
    a user turn, assistant tool calls become `tool_use` blocks, images become base64 or URL
    image blocks and PDF files become document blocks. Consecutive turns of one role are merged,
    so all tool results of a turn share one user message. `cache_control` on a part or a tool is
    kept. `stream` is left for the caller to set.

    Raises UpstreamError of kind "client_error" naming the field for a request that the
    Messages API cannot express.
    """
    if body.get("n") not in (None, 1):
        raise _unsupported(
            f"n={body['n']!r} is not supported by Anthropic upstreams, which return one message "
            "per request; send n=1"
        )
    max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
    if max_tokens is None:
        raise _unsupported(
            "max_tokens is required by Anthropic upstreams; set max_tokens or max_completion_tokens"
        )
    messages = body.get("messages")
    if not isinstance(messages, Sequence) or isinstance(messages, str):
        raise _unsupported("messages must be a list of messages")

    system, turns = _translate_messages(messages)
    request: dict[str, Any] = {
        "model": body.get("model"),
        "max_tokens": max_tokens,
        "messages": turns,
    }
    if system:
        request["system"] = system

    stop = body.get("stop")
    if isinstance(stop, str):
        request["stop_sequences"] = [stop]
    elif stop:
        request["stop_sequences"] = list(stop)
    for name in ("temperature", "top_p", "top_k"):
        if body.get(name) is not None:
            request[name] = body[name]
    if body.get("user"):
        request["metadata"] = {"user_id": str(body["user"])}

    tools = body.get("tools")
    if tools:
        request["tools"] = _translate_tools(tools)
        tool_choice = _translate_tool_choice(
            body.get("tool_choice"), body.get("parallel_tool_calls")
        )
        if tool_choice is not None:
            request["tool_choice"] = tool_choice

    thinking = _thinking_config(body, max_tokens)
    if thinking is not None:
        request["thinking"] = thinking
    return request


def _translate_messages(
    messages: Sequence[Any],
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    system: list[dict[str, Any]] = []
    turns: list[dict[str, Any]] = []
    for index, message in enumerate(messages):
        path = f"messages[{index}]"
        if not isinstance(message, Mapping):
            raise _unsupported(f"{path} must be an object")
        role = message.get("role")

        if role in ("system", "developer"):
            system.extend(_text_blocks(message.get("content"), f"{path}.content"))
        elif role == "user":
            _append_turn(turns, "user", _user_blocks(message.get("content"), f"{path}.content"))
        elif role == "assistant":
            _append_turn(turns, "assistant", _assistant_blocks(message, path))
        elif role == "tool":
            _append_turn(turns, "user", [_tool_result_block(message, path)])
        else:
            raise _unsupported(
                f"{path}.role {role!r} is not supported by Anthropic upstreams; use system, "
                "developer, user, assistant or tool"
            )
    return system, turns


def _append_turn(turns: list[dict[str, Any]], role: str, blocks: list[dict[str, Any]]) -> None:
    if not blocks:
        return
    if not turns or turns[-1]["role"] != role:
        turns.append({"role": role, "content": blocks})
        return
    # Anthropic wants a turn's tool results before any other block of the same user message.
    merged = turns[-1]["content"] + blocks
    turns[-1]["content"] = [block for block in merged if block["type"] == "tool_result"] + [
        block for block in merged if block["type"] != "tool_result"
    ]


def _text_blocks(content: Any, path: str) -> list[dict[str, Any]]:
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    if not isinstance(content, list):
        raise _unsupported(f"{path} must be a string or a list of text parts")

    blocks = []
    for index, part in enumerate(content):
        if not isinstance(part, Mapping) or part.get("type") not in ("text", "input_text"):
            raise _unsupported(f"{path}[{index}] must be a text part")
        block = _text_block(part)
        if block is not None:
            blocks.append(block)
    return blocks


def _text_block(part: Mapping[str, Any]) -> dict[str, Any] | None:
    text = part.get("text")
    # Anthropic rejects empty text blocks, and an empty part carries no content.
    if not isinstance(text, str) or not text:
        return None
    return _with_cache_control({"type": "text", "text": text}, part)


def _user_blocks(content: Any, path: str) -> list[dict[str, Any]]:
    if content is None or isinstance(content, str):
        return _text_blocks(content, path)
    if not isinstance(content, list):
        raise _unsupported(f"{path} must be a string or a list of parts")

    blocks = []
    for index, part in enumerate(content):
        part_path = f"{path}[{index}]"
        part_type = part.get("type") if isinstance(part, Mapping) else None
        if part_type in ("text", "input_text"):
            block = _text_block(part)
        elif part_type == "image_url":
            block = _image_block(part, part_path)
        elif part_type == "file":
            block = _document_block(part, part_path)
        else:
            raise _unsupported(
                f"{part_path}.type {part_type!r} is not supported by Anthropic upstreams; use "
                "text, image_url or file parts"
            )
        if block is not None:
            blocks.append(block)
    return blocks


def _image_block(part: Mapping[str, Any], path: str) -> dict[str, Any]:
    image_url = part.get("image_url")
    url = image_url.get("url") if isinstance(image_url, Mapping) else image_url
    if not isinstance(url, str) or not url:
        raise _unsupported(f"{path}.image_url.url is missing")

    if url.startswith("data:"):
        media_type, data = _parse_data_url(url, f"{path}.image_url.url")
        source = {"type": "base64", "media_type": media_type, "data": data}
    elif url.startswith(("https://", "http://")):
        source = {"type": "url", "url": url}
    else:
        raise _unsupported(f"{path}.image_url.url must be an https URL or a base64 data URL")
    return _with_cache_control({"type": "image", "source": source}, part)


def _document_block(part: Mapping[str, Any], path: str) -> dict[str, Any]:
    file = part.get("file")
    file_data = file.get("file_data") if isinstance(file, Mapping) else None
    if not isinstance(file_data, str):
        raise _unsupported(
            f"{path}.file.file_data is missing; Anthropic upstreams take files as base64 data "
            "URLs, not file ids"
        )
    media_type, data = _parse_data_url(file_data, f"{path}.file.file_data")
    source = {"type": "base64", "media_type": media_type, "data": data}
    return _with_cache_control({"type": "document", "source": source}, part)


def _parse_data_url(url: str, path: str) -> tuple[str, str]:
    match = _DATA_URL.match(url)
    if match is None:
        raise _unsupported(f"{path} must be a base64 data URL (data:<media type>;base64,<data>)")
    return match["media_type"], match["data"]


def _assistant_blocks(message: Mapping[str, Any], path: str) -> list[dict[str, Any]]:
    content = message.get("content")
    if isinstance(content, list):
        # Assistant messages may carry refusal parts, which Anthropic has no block for.
        content = [
            part
            for part in content
            if not (isinstance(part, Mapping) and part.get("type") == "refusal")
        ]
    blocks = _text_blocks(content, f"{path}.content")

    # An empty tool_calls list means no tool call.
    tool_calls = message.get("tool_calls") or []
    if not isinstance(tool_calls, list):
        raise _unsupported(f"{path}.tool_calls must be a list")
    for index, call in enumerate(tool_calls):
        blocks.append(_tool_use_block(call, f"{path}.tool_calls[{index}]"))
    return blocks


def _tool_use_block(call: Any, path: str) -> dict[str, Any]:
    function = call.get("function") if isinstance(call, Mapping) else None
    if not isinstance(function, Mapping) or not isinstance(function.get("name"), str):
        raise _unsupported(f"{path}.function.name is missing")
    if not isinstance(call.get("id"), str) or not call["id"]:
        raise _unsupported(f"{path}.id is missing")

    arguments = function.get("arguments") or "{}"
    try:
        tool_input = json.loads(arguments) if isinstance(arguments, str) else arguments
    except json.JSONDecodeError as exc:
        raise _unsupported(f"{path}.function.arguments is not valid JSON: {exc}") from exc
    if not isinstance(tool_input, Mapping):
        raise _unsupported(f"{path}.function.arguments must be a JSON object")
    return {
        "type": "tool_use",
        "id": call["id"],
        "name": function["name"],
        "input": dict(tool_input),
    }


def _tool_result_block(message: Mapping[str, Any], path: str) -> dict[str, Any]:
    tool_call_id = message.get("tool_call_id")
    if not isinstance(tool_call_id, str) or not tool_call_id:
        raise _unsupported(f"{path}.tool_call_id is missing")

    content = message.get("content")
    result: str | list[dict[str, Any]]
    if content is None or isinstance(content, str):
        result = content or ""
    else:
        result = _text_blocks(content, f"{path}.content")
    return {"type": "tool_result", "tool_use_id": tool_call_id, "content": result}


def _translate_tools(tools: Any) -> list[dict[str, Any]]:
    if not isinstance(tools, list):
        raise _unsupported("tools must be a list")

    translated = []
    for index, tool in enumerate(tools):
        path = f"tools[{index}]"
        if not isinstance(tool, Mapping) or tool.get("type") != "function":
            raise _unsupported(f"{path}.type must be 'function' for Anthropic upstreams")
        function = tool.get("function")
        if not isinstance(function, Mapping) or not isinstance(function.get("name"), str):
            raise _unsupported(f"{path}.function.name is missing")

        definition: dict[str, Any] = {
            "name": function["name"],
            "input_schema": function.get("parameters") or {"type": "object", "properties": {}},
        }
        if function.get("description"):
            definition["description"] = function["description"]
        translated.append(_with_cache_control(definition, tool))
    return translated


def _translate_tool_choice(tool_choice: Any, parallel_tool_calls: Any) -> dict[str, Any] | None:
    choice: dict[str, Any] | None
    if tool_choice is None:
        choice = None
    elif tool_choice == "auto":
        choice = {"type": "auto"}
    elif tool_choice == "none":
        choice = {"type": "none"}
    elif tool_choice == "required":
        choice = {"type": "any"}
    elif isinstance(tool_choice, Mapping) and isinstance(tool_choice.get("function"), Mapping):
        choice = {"type": "tool", "name": tool_choice["function"].get("name")}
    else:
        raise _unsupported(
            f"tool_choice {tool_choice!r} is not supported; use auto, none, required or "
            '{"type": "function", "function": {"name": ...}}'
        )

    if parallel_tool_calls is False:
        choice = choice or {"type": "auto"}
        if choice["type"] != "none":
            choice["disable_parallel_tool_use"] = True
    return choice


def _thinking_config(body: Mapping[str, Any], max_tokens: int) -> dict[str, Any] | None:
    # A client of Anthropic's own format may send `thinking` as is.
    if isinstance(body.get("thinking"), Mapping):
        return dict(body["thinking"])
    effort = body.get("reasoning_effort")
    budget = THINKING_BUDGET_TOKENS.get(effort) if isinstance(effort, str) else None
    if budget is None or not isinstance(max_tokens, int) or budget >= max_tokens:
        return None
    return {"type": "enabled", "budget_tokens": budget}


def _with_cache_control(block: dict[str, Any], source: Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(source.get("cache_control"), Mapping):
        block["cache_control"] = dict(source["cache_control"])
    return block


def _unsupported(message: str) -> UpstreamError:
    return UpstreamError("client_error", message)


# Response translation: Messages to Chat Completions.


def usage_from_messages(usage: Mapping[str, Any]) -> Usage:
    """Parse Anthropic's `usage` object into a canonical `Usage`.

    The prompt is input_tokens + cache_read_input_tokens + cache_creation_input_tokens, because
    Anthropic's input_tokens leaves out both cache counts. Reasoning tokens are read from
    `output_tokens_details.thinking_tokens` when present, else 0.

    Raises InvalidUsageError when `input_tokens` or `output_tokens` is missing, or a count is
    negative or not an integer.
    """
    if not isinstance(usage, Mapping):
        raise InvalidUsageError(f"usage must be a JSON object, got {type(usage).__name__}")

    input_tokens = _count(usage, "input_tokens", required=True)
    output_tokens = _count(usage, "output_tokens", required=True)
    cache_read_tokens = _count(usage, "cache_read_input_tokens")
    cache_creation_tokens = _count(usage, "cache_creation_input_tokens")
    details = usage.get("output_tokens_details")
    thinking_tokens = _count(details, "thinking_tokens") if isinstance(details, Mapping) else 0

    return Usage(
        prompt_tokens=input_tokens + cache_read_tokens + cache_creation_tokens,
        completion_tokens=output_tokens,
        cached_prompt_tokens=cache_read_tokens,
        cache_write_tokens=cache_creation_tokens,
        reasoning_tokens=thinking_tokens,
    )


def _count(container: Mapping[str, Any], name: str, *, required: bool = False) -> int:
    value = container.get(name)
    if value is None:
        if required:
            raise InvalidUsageError(f"usage.{name} is missing")
        return 0
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidUsageError(f"usage.{name} must be an integer, got {value!r}")
    if value < 0:
        raise InvalidUsageError(f"usage.{name} must not be negative, got {value}")
    return value


def finish_reason_for(stop_reason: Any, *, has_tool_calls: bool = False) -> str | None:
    """Map Anthropic's stop_reason to a finish_reason; None stays None, unknown values "stop"."""
    if stop_reason is None:
        return None
    if has_tool_calls and stop_reason == "end_turn":
        return "tool_calls"
    return FINISH_REASONS.get(stop_reason, "stop")


def chat_completion_from_message(
    message: Mapping[str, Any], usage: Usage | None, *, created: int | None = None
) -> dict[str, Any]:
    """Translate a Messages response into a `chat.completion` body with rendered `usage`.

    Text blocks join into `content`, thinking blocks into `reasoning_content`, and tool_use
    blocks become `tool_calls` with JSON-string arguments. Redacted thinking and server tool
    blocks have no Chat Completions form and are left out.
    """
    texts: list[str] = []
    reasoning: list[str] = []
    tool_calls: list[dict[str, Any]] = []
    for block in message.get("content") or []:
        if not isinstance(block, Mapping):
            continue
        block_type = block.get("type")
        if block_type == "text":
            texts.append(str(block.get("text") or ""))
        elif block_type == "thinking":
            reasoning.append(str(block.get("thinking") or ""))
        elif block_type == "tool_use":
            tool_calls.append(
                {
                    "id": block.get("id"),
                    "type": "function",
                    "function": {
                        "name": block.get("name"),
                        "arguments": json.dumps(block.get("input") or {}, ensure_ascii=False),
                    },
                }
            )

    reply: dict[str, Any] = {
        "role": "assistant",
        "content": "".join(texts) if texts or not tool_calls else None,
    }
    if tool_calls:
        reply["tool_calls"] = tool_calls
    if reasoning:
        reply["reasoning_content"] = "".join(reasoning)

    body: dict[str, Any] = {
        "id": message.get("id"),
        "object": "chat.completion",
        "created": int(time.time()) if created is None else created,
        "model": message.get("model"),
        "choices": [
            {
                "index": 0,
                "message": reply,
                "logprobs": None,
                "finish_reason": finish_reason_for(
                    message.get("stop_reason"), has_tool_calls=bool(tool_calls)
                )
                or "stop",
            }
        ],
    }
    if usage is not None:
        body["usage"] = render_usage(usage)
    return body


class MessageStreamTranslator:
    """Turns the events of one Messages stream into `chat.completion.chunk` objects.

    `translate` takes each event's parsed data in order and returns the chunks it produces,
    often none. `stopped` is True after `message_stop`.
    """

    def __init__(self, upstream: str, api_key: str, *, created: int | None = None) -> None:
        self.upstream = upstream
        self.api_key = api_key
        self.created = int(time.time()) if created is None else created
        self.message_id: str | None = None
        self.model: str | None = None
        self.stopped = False
        # Usage counts as last reported: message_start gives them all, and each message_delta
        # repeats the cumulative output_tokens and any count that changed.
        self.usage_counts: dict[str, Any] = {}
        # Anthropic content block index to the OpenAI tool call index of that block.
        self.tool_call_indexes: dict[int, int] = {}

    def translate(self, event: Mapping[str, Any]) -> list[dict[str, Any]]:
        event_type = event.get("type")
        if event_type == "message_start":
            return self._message_start(event)
        if event_type == "content_block_start":
            return self._block_start(event)
        if event_type == "content_block_delta":
            return self._block_delta(event)
        if event_type == "message_delta":
            return self._message_delta(event)
        if event_type == "message_stop":
            return self._message_stop()
        if event_type == "error":
            raise self._stream_error(event)
        # ping, content_block_stop and event types added later carry nothing to translate.
        return []

    def _message_start(self, event: Mapping[str, Any]) -> list[dict[str, Any]]:
        message = event.get("message")
        message = message if isinstance(message, Mapping) else {}
        self.message_id = message.get("id")
        self.model = message.get("model")
        if isinstance(message.get("usage"), Mapping):
            self.usage_counts.update(message["usage"])
        return [self._chunk({"role": "assistant", "content": ""})]

    def _block_start(self, event: Mapping[str, Any]) -> list[dict[str, Any]]:
        block = event.get("content_block")
        if not isinstance(block, Mapping):
            return []
        block_type = block.get("type")
        if block_type == "tool_use":
            tool_index = len(self.tool_call_indexes)
            self.tool_call_indexes[event.get("index", tool_index)] = tool_index
            call = {
                "index": tool_index,
                "id": block.get("id"),
                "type": "function",
                "function": {"name": block.get("name"), "arguments": ""},
            }
            return [self._chunk({"tool_calls": [call]})]
        if block_type == "text" and block.get("text"):
            return [self._chunk({"content": block["text"]})]
        if block_type == "thinking" and block.get("thinking"):
            return [self._chunk({"reasoning_content": block["thinking"]})]
        return []

    def _block_delta(self, event: Mapping[str, Any]) -> list[dict[str, Any]]:
        delta = event.get("delta")
        if not isinstance(delta, Mapping):
            return []
        delta_type = delta.get("type")
        if delta_type == "text_delta" and delta.get("text"):
            return [self._chunk({"content": delta["text"]})]
        if delta_type == "thinking_delta" and delta.get("thinking"):
            return [self._chunk({"reasoning_content": delta["thinking"]})]
        if delta_type == "input_json_delta" and delta.get("partial_json"):
            tool_index = self.tool_call_indexes.get(event.get("index"))
            if tool_index is None:
                return []
            call = {"index": tool_index, "function": {"arguments": delta["partial_json"]}}
            return [self._chunk({"tool_calls": [call]})]
        # signature_delta and citations_delta have no Chat Completions form.
        return []

    def _message_delta(self, event: Mapping[str, Any]) -> list[dict[str, Any]]:
        if isinstance(event.get("usage"), Mapping):
            self.usage_counts.update(
                {name: value for name, value in event["usage"].items() if value is not None}
            )
        delta = event.get("delta")
        stop_reason = delta.get("stop_reason") if isinstance(delta, Mapping) else None
        finish_reason = finish_reason_for(stop_reason)
        if finish_reason is None:
            return []
        return [self._chunk({}, finish_reason)]

    def _message_stop(self) -> list[dict[str, Any]]:
        self.stopped = True
        if not self.usage_counts:
            return []
        try:
            usage = usage_from_messages(self.usage_counts)
        except InvalidUsageError as exc:
            logger.warning(
                "Upstream %s reported invalid usage in its stream, ignoring it: %s",
                self.upstream,
                exc,
            )
            return []
        return [
            {
                "id": self.message_id,
                "object": "chat.completion.chunk",
                "created": self.created,
                "model": self.model,
                "choices": [],
                "usage": render_usage(usage),
            }
        ]

    def _chunk(self, delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
        return {
            "id": self.message_id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [
                {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
            ],
        }

    def _stream_error(self, event: Mapping[str, Any]) -> UpstreamError:
        error = event.get("error")
        error_type = error.get("type") if isinstance(error, Mapping) else None
        return UpstreamError(
            _ERROR_KINDS.get(str(error_type), "server_error"),
            f"upstream {self.upstream} sent an error event inside the stream: "
            f"{error_detail(event, self.api_key)}",
            status_code=200,
        )


def _parse_event(data: str, upstream: str, api_key: str) -> dict[str, Any]:
    try:
        event = json.loads(data)
    except json.JSONDecodeError as exc:
        raise UpstreamError(
            "bad_response",
            f"upstream {upstream} sent event data that is not valid JSON: "
            f"{redact(data, api_key)!r}",
            status_code=200,
        ) from exc
    if not isinstance(event, dict):
        raise UpstreamError(
            "bad_response",
            f"upstream {upstream} sent event data that is not a JSON object: "
            f"{redact(data, api_key)!r}",
            status_code=200,
        )
    return event


def _request_headers(api_key: str, *, streaming: bool) -> dict[str, str]:
    return {
        "x-api-key": api_key,
        "anthropic-version": ANTHROPIC_VERSION,
        "Accept": "text/event-stream" if streaming else "application/json",
    }
