"""Translation for clients that speak Anthropic's Messages API to the proxy.

The proxy works in Chat Completions, so a Messages request is translated on the way in
(`messages_request_to_openai`) and the response on the way out (`openai_response_to_messages`
for a whole response, `openai_chunks_to_message_events` for a stream). The functions are pure:
they do no I/O and hold no state between calls.

The output follows the shapes that the `anthropic` Python SDK 2.17 parses: `Message` for a
response, and an event order for a stream. That order is message_start, then for each content
block content_block_start, content_block_delta (text_delta, thinking_delta or input_json_delta)
and content_block_stop, then message_delta with the stop reason and usage, then message_stop.
Anthropic's `input_tokens` leaves out cache reads and writes, which are reported as
`cache_read_input_tokens` and `cache_creation_input_tokens`.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import AsyncIterable, AsyncIterator, Mapping
from typing import Any

from providers.openai_compat import usage_from_rendered
from providers.usage import InvalidUsageError, Usage

logger = logging.getLogger(__name__)

# Chat Completions finish_reason as Anthropic's stop_reason.
STOP_REASONS: dict[str, str] = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}

# An extended-thinking budget as a Chat Completions reasoning_effort: up to the first bound is
# "low", up to the second "medium", above it "high". The anthropic adapter maps back with its
# THINKING_BUDGET_TOKENS table.
THINKING_EFFORT_BOUNDS_TOKENS = (2048, 8192)

_CUSTOM_TOOL_TYPES = (None, "custom")


class InvalidMessagesRequest(ValueError):
    """A Messages request with a missing or invalid field; `param` names the field."""

    def __init__(self, param: str | None, message: str) -> None:
        super().__init__(message)
        self.param = param
        self.message = message


# Requests: Messages to Chat Completions.


def messages_request_to_openai(body: Any) -> dict[str, Any]:
    """Validate a Messages request body and translate it into a Chat Completions body.

    `system` becomes a leading system message. tool_result blocks become tool messages placed
    before the rest of their user turn, and tool_use blocks `tool_calls` with JSON-string
    arguments. Images become `image_url` parts (data URLs for base64 sources), and PDF documents
    `file` parts. Thinking blocks of earlier turns are dropped. `thinking` becomes
    `reasoning_effort`, `stop_sequences` `stop`, `tool_choice` any `required`, and
    `metadata.user_id` `user`. `cache_control` marks are kept on parts and tools, for upstreams
    that honour them. `top_k` has no Chat Completions equivalent and is dropped.

    Raises InvalidMessagesRequest naming the field for a missing or invalid value.
    """
    if not isinstance(body, Mapping):
        raise InvalidMessagesRequest(None, "The request body must be a JSON object.")

    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidMessagesRequest("model", "model is missing or not a non-empty string.")
    max_tokens = body.get("max_tokens")
    if not _is_int(max_tokens) or max_tokens < 1:
        raise InvalidMessagesRequest(
            "max_tokens", f"max_tokens must be an integer >= 1, got {max_tokens!r}."
        )
    raw_messages = body.get("messages")
    if not isinstance(raw_messages, list) or not raw_messages:
        raise InvalidMessagesRequest("messages", "messages must be a non-empty list.")

    messages = _system_messages(body.get("system"))
    for index, message in enumerate(raw_messages):
        messages.extend(_translate_message(message, f"messages[{index}]"))

    request: dict[str, Any] = {"model": model, "messages": messages, "max_tokens": max_tokens}
    _copy_sampling(body, request)

    stream = body.get("stream")
    if stream is not None:
        if not isinstance(stream, bool):
            raise InvalidMessagesRequest("stream", f"stream must be a boolean, got {stream!r}.")
        request["stream"] = stream

    if body.get("tools") is not None:
        request["tools"] = _translate_tools(body["tools"])
    if body.get("tool_choice") is not None:
        request.update(_translate_tool_choice(body["tool_choice"]))

    metadata = body.get("metadata")
    if metadata is not None:
        if not isinstance(metadata, Mapping):
            raise InvalidMessagesRequest("metadata", "metadata must be an object.")
        if metadata.get("user_id") is not None:
            request["user"] = str(metadata["user_id"])

    effort = _reasoning_effort(body.get("thinking"))
    if effort is not None:
        request["reasoning_effort"] = effort
    return request


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _copy_sampling(body: Mapping[str, Any], request: dict[str, Any]) -> None:
    for name in ("temperature", "top_p"):
        value = body.get(name)
        if value is None:
            continue
        if not _is_number(value) or not 0 <= value <= 1:
            raise InvalidMessagesRequest(
                name, f"{name} must be a number from 0 to 1, got {value!r}."
            )
        request[name] = value

    top_k = body.get("top_k")
    if top_k is not None and (not _is_int(top_k) or top_k < 0):
        raise InvalidMessagesRequest("top_k", f"top_k must be an integer >= 0, got {top_k!r}.")

    stop_sequences = body.get("stop_sequences")
    if stop_sequences is not None:
        if not isinstance(stop_sequences, list) or not all(
            isinstance(item, str) for item in stop_sequences
        ):
            raise InvalidMessagesRequest(
                "stop_sequences", "stop_sequences must be a list of strings."
            )
        if stop_sequences:
            request["stop"] = list(stop_sequences)


def _system_messages(system: Any) -> list[dict[str, Any]]:
    if system is None or system == "":
        return []
    if isinstance(system, str):
        return [{"role": "system", "content": system}]
    if not isinstance(system, list):
        raise InvalidMessagesRequest("system", "system must be a string or a list of text blocks.")

    parts = []
    for index, block in enumerate(system):
        path = f"system[{index}]"
        if not isinstance(block, Mapping) or block.get("type") != "text":
            raise InvalidMessagesRequest(path, f"{path} must be a text block.")
        parts.append(_text_part(block, path))
    return [{"role": "system", "content": parts}] if parts else []


def _translate_message(message: Any, path: str) -> list[dict[str, Any]]:
    if not isinstance(message, Mapping):
        raise InvalidMessagesRequest(path, f"{path} must be an object.")
    role = message.get("role")
    if role not in ("user", "assistant"):
        raise InvalidMessagesRequest(
            f"{path}.role", f"{path}.role must be 'user' or 'assistant', got {role!r}."
        )

    content = message.get("content")
    if isinstance(content, str):
        return [{"role": role, "content": content}]
    if not isinstance(content, list):
        raise InvalidMessagesRequest(
            f"{path}.content", f"{path}.content must be a string or a list of blocks."
        )
    for index, block in enumerate(content):
        if not isinstance(block, Mapping) or not isinstance(block.get("type"), str):
            raise InvalidMessagesRequest(
                f"{path}.content[{index}]", f"{path}.content[{index}] must be a block with a type."
            )

    if role == "user":
        return _user_messages(content, path)
    return [_assistant_message(content, path)]


def _user_messages(blocks: list[Mapping[str, Any]], path: str) -> list[dict[str, Any]]:
    tool_messages: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for index, block in enumerate(blocks):
        block_path = f"{path}.content[{index}]"
        block_type = block["type"]
        if block_type == "tool_result":
            tool_messages.append(_tool_message(block, block_path))
        elif block_type == "text":
            parts.append(_text_part(block, block_path))
        elif block_type == "image":
            parts.append(_image_part(block, block_path))
        elif block_type == "document":
            parts.append(_document_part(block, block_path))
        else:
            raise InvalidMessagesRequest(
                f"{block_path}.type",
                f"{block_path}.type {block_type!r} is not supported in user messages; use text, "
                "image, document or tool_result.",
            )

    # Tool results reply to the previous assistant turn, so they come before the new user text.
    messages = tool_messages
    if parts:
        messages.append({"role": "user", "content": parts})
    return messages


def _text_part(block: Mapping[str, Any], path: str) -> dict[str, Any]:
    text = block.get("text")
    if not isinstance(text, str):
        raise InvalidMessagesRequest(f"{path}.text", f"{path}.text must be a string.")
    return _with_cache_control({"type": "text", "text": text}, block)


def _image_part(block: Mapping[str, Any], path: str) -> dict[str, Any]:
    source = block.get("source")
    source_type = source.get("type") if isinstance(source, Mapping) else None
    if source_type == "base64":
        url = _data_url(source, f"{path}.source")
    elif source_type == "url" and isinstance(source.get("url"), str):
        url = source["url"]
    else:
        raise InvalidMessagesRequest(
            f"{path}.source", f"{path}.source must be a base64 or url image source."
        )
    return _with_cache_control({"type": "image_url", "image_url": {"url": url}}, block)


def _document_part(block: Mapping[str, Any], path: str) -> dict[str, Any]:
    source = block.get("source")
    source_type = source.get("type") if isinstance(source, Mapping) else None
    if source_type == "base64":
        file = {
            "filename": str(block.get("title") or "document.pdf"),
            "file_data": _data_url(source, f"{path}.source"),
        }
        return _with_cache_control({"type": "file", "file": file}, block)
    if source_type == "text" and isinstance(source.get("data"), str):
        return _with_cache_control({"type": "text", "text": source["data"]}, block)
    raise InvalidMessagesRequest(
        f"{path}.source", f"{path}.source must be a base64 or text document source."
    )


def _data_url(source: Mapping[str, Any], path: str) -> str:
    media_type = source.get("media_type")
    data = source.get("data")
    if not isinstance(media_type, str) or not isinstance(data, str):
        raise InvalidMessagesRequest(path, f"{path} needs string media_type and data fields.")
    return f"data:{media_type};base64,{data}"


def _tool_message(block: Mapping[str, Any], path: str) -> dict[str, Any]:
    tool_use_id = block.get("tool_use_id")
    if not isinstance(tool_use_id, str) or not tool_use_id:
        raise InvalidMessagesRequest(f"{path}.tool_use_id", f"{path}.tool_use_id is missing.")

    content = block.get("content")
    if content is None or isinstance(content, str):
        result: str | list[dict[str, Any]] = content or ""
    elif isinstance(content, list):
        result = []
        for index, item in enumerate(content):
            item_path = f"{path}.content[{index}]"
            if not isinstance(item, Mapping) or item.get("type") != "text":
                raise InvalidMessagesRequest(
                    item_path,
                    f"{item_path} must be a text block; tool results with images cannot be sent "
                    "as Chat Completions tool messages.",
                )
            result.append(_text_part(item, item_path))
    else:
        raise InvalidMessagesRequest(
            f"{path}.content", f"{path}.content must be a string or a list of blocks."
        )
    return {"role": "tool", "tool_call_id": tool_use_id, "content": result}


def _assistant_message(blocks: list[Mapping[str, Any]], path: str) -> dict[str, Any]:
    texts: list[str] = []
    tool_calls: list[dict[str, Any]] = []
    for index, block in enumerate(blocks):
        block_path = f"{path}.content[{index}]"
        block_type = block["type"]
        if block_type == "text":
            texts.append(_text_part(block, block_path)["text"])
        elif block_type == "tool_use":
            tool_calls.append(_tool_call(block, block_path))
        elif block_type in ("thinking", "redacted_thinking"):
            # Reasoning of earlier turns has no Chat Completions input form.
            continue
        else:
            raise InvalidMessagesRequest(
                f"{block_path}.type",
                f"{block_path}.type {block_type!r} is not supported in assistant messages; use "
                "text, thinking or tool_use.",
            )

    message: dict[str, Any] = {"role": "assistant", "content": "".join(texts) if texts else None}
    if tool_calls:
        message["tool_calls"] = tool_calls
    elif not texts:
        message["content"] = ""
    return message


def _tool_call(block: Mapping[str, Any], path: str) -> dict[str, Any]:
    if not isinstance(block.get("id"), str) or not isinstance(block.get("name"), str):
        raise InvalidMessagesRequest(path, f"{path} needs string id and name fields.")
    tool_input = block.get("input", {})
    if not isinstance(tool_input, Mapping):
        raise InvalidMessagesRequest(f"{path}.input", f"{path}.input must be an object.")
    return {
        "id": block["id"],
        "type": "function",
        "function": {
            "name": block["name"],
            "arguments": json.dumps(tool_input, ensure_ascii=False),
        },
    }


def _translate_tools(tools: Any) -> list[dict[str, Any]]:
    if not isinstance(tools, list):
        raise InvalidMessagesRequest("tools", "tools must be a list.")

    translated = []
    for index, tool in enumerate(tools):
        path = f"tools[{index}]"
        if not isinstance(tool, Mapping):
            raise InvalidMessagesRequest(path, f"{path} must be an object.")
        if tool.get("type") not in _CUSTOM_TOOL_TYPES:
            raise InvalidMessagesRequest(
                f"{path}.type",
                f"{path}.type {tool.get('type')!r} is a server tool, which this endpoint does not "
                "run; define a custom tool with name and input_schema.",
            )
        if not isinstance(tool.get("name"), str) or not tool["name"]:
            raise InvalidMessagesRequest(f"{path}.name", f"{path}.name is missing.")
        schema = tool.get("input_schema")
        if not isinstance(schema, Mapping):
            raise InvalidMessagesRequest(
                f"{path}.input_schema", f"{path}.input_schema must be an object."
            )

        function: dict[str, Any] = {"name": tool["name"], "parameters": dict(schema)}
        if isinstance(tool.get("description"), str):
            function["description"] = tool["description"]
        translated.append(_with_cache_control({"type": "function", "function": function}, tool))
    return translated


def _translate_tool_choice(tool_choice: Any) -> dict[str, Any]:
    choice_type = tool_choice.get("type") if isinstance(tool_choice, Mapping) else None
    translated: dict[str, Any]
    if choice_type == "auto":
        translated = {"tool_choice": "auto"}
    elif choice_type == "any":
        translated = {"tool_choice": "required"}
    elif choice_type == "none":
        translated = {"tool_choice": "none"}
    elif choice_type == "tool":
        if not isinstance(tool_choice.get("name"), str):
            raise InvalidMessagesRequest("tool_choice.name", "tool_choice.name is missing.")
        translated = {
            "tool_choice": {"type": "function", "function": {"name": tool_choice["name"]}}
        }
    else:
        raise InvalidMessagesRequest(
            "tool_choice.type",
            f"tool_choice.type must be auto, any, tool or none, got {choice_type!r}.",
        )

    if tool_choice.get("disable_parallel_tool_use") is True:
        translated["parallel_tool_calls"] = False
    return translated


def _reasoning_effort(thinking: Any) -> str | None:
    if thinking is None:
        return None
    if not isinstance(thinking, Mapping) or not isinstance(thinking.get("type"), str):
        raise InvalidMessagesRequest("thinking", "thinking must be an object with a type.")
    if thinking["type"] != "enabled":
        return None

    budget = thinking.get("budget_tokens")
    if not _is_int(budget) or budget < 1:
        raise InvalidMessagesRequest(
            "thinking.budget_tokens",
            f"thinking.budget_tokens must be an integer >= 1, got {budget!r}.",
        )
    low_bound, medium_bound = THINKING_EFFORT_BOUNDS_TOKENS
    if budget <= low_bound:
        return "low"
    return "medium" if budget <= medium_bound else "high"


def _with_cache_control(part: dict[str, Any], block: Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(block.get("cache_control"), Mapping):
        part["cache_control"] = dict(block["cache_control"])
    return part


# Responses: Chat Completions to Messages.


def message_id_for(completion_id: Any) -> str:
    """Return an Anthropic-style message id ("msg_...") for a Chat Completions id."""
    text = str(completion_id or uuid.uuid4().hex)
    return text if text.startswith("msg_") else f"msg_{text}"


def stop_reason_for(finish_reason: Any, *, has_tool_use: bool = False) -> str:
    """Map a Chat Completions finish_reason to Anthropic's stop_reason.

    A response that called tools ends with "tool_use" unless it was cut at the token limit.
    Unknown or missing reasons become "end_turn".
    """
    if has_tool_use and finish_reason not in ("length", "content_filter"):
        return "tool_use"
    return STOP_REASONS.get(str(finish_reason), "end_turn")


def usage_to_messages(usage: Usage | None) -> dict[str, int]:
    """Render a `Usage` as Anthropic's usage object, with input_tokens excluding cache counts."""
    if usage is None:
        return {
            "input_tokens": 0,
            "output_tokens": 0,
            "cache_read_input_tokens": 0,
            "cache_creation_input_tokens": 0,
        }
    return {
        "input_tokens": usage.uncached_prompt_tokens,
        "output_tokens": usage.completion_tokens,
        "cache_read_input_tokens": usage.cached_prompt_tokens,
        "cache_creation_input_tokens": usage.cache_write_tokens,
    }


def openai_response_to_messages(body: Mapping[str, Any], usage: Usage | None) -> dict[str, Any]:
    """Translate a `chat.completion` body into a Messages response.

    Only the first choice is used. `reasoning_content` becomes a thinking block (with an empty
    signature, since the upstream gave none), `content` a text block, and each tool call a
    tool_use block whose `input` is the parsed arguments. An empty `tool_calls` list means no
    tool call. `usage` is the metered usage; when None, the body's usage is read, else zeros.
    """
    choices = body.get("choices") or []
    choice = choices[0] if choices and isinstance(choices[0], Mapping) else {}
    message = choice.get("message") if isinstance(choice.get("message"), Mapping) else {}

    content: list[dict[str, Any]] = []
    reasoning = message.get("reasoning_content")
    if isinstance(reasoning, str) and reasoning:
        content.append({"type": "thinking", "thinking": reasoning, "signature": ""})
    text = _message_text(message.get("content"))
    if text:
        content.append({"type": "text", "text": text})
    for call in message.get("tool_calls") or []:
        block = _tool_use_block(call)
        if block is not None:
            content.append(block)

    has_tool_use = any(block["type"] == "tool_use" for block in content)
    return {
        "id": message_id_for(body.get("id")),
        "type": "message",
        "role": "assistant",
        "model": str(body.get("model") or ""),
        "content": content,
        "stop_reason": stop_reason_for(choice.get("finish_reason"), has_tool_use=has_tool_use),
        "stop_sequence": None,
        "usage": usage_to_messages(usage if usage is not None else _usage_of(body)),
    }


def _message_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            str(part.get("text") or "")
            for part in content
            if isinstance(part, Mapping) and part.get("type") == "text"
        )
    return ""


def _tool_use_block(call: Any) -> dict[str, Any] | None:
    function = call.get("function") if isinstance(call, Mapping) else None
    if not isinstance(function, Mapping):
        return None
    arguments = function.get("arguments") or "{}"
    try:
        tool_input = json.loads(arguments) if isinstance(arguments, str) else arguments
    except json.JSONDecodeError:
        logger.warning(
            "Tool call %s has arguments that are not JSON; sending an empty input", call.get("id")
        )
        tool_input = {}
    return {
        "type": "tool_use",
        "id": str(call.get("id") or f"toolu_{uuid.uuid4().hex}"),
        "name": str(function.get("name") or ""),
        "input": tool_input if isinstance(tool_input, Mapping) else {"value": tool_input},
    }


def _usage_of(chunk: Mapping[str, Any]) -> Usage | None:
    usage = chunk.get("usage")
    if not isinstance(usage, Mapping):
        return None
    try:
        return usage_from_rendered(usage)
    except InvalidUsageError as exc:
        logger.warning("Ignoring invalid usage while translating to Messages: %s", exc)
        return None


# Streams: Chat Completions chunks to Messages events.


async def openai_chunks_to_message_events(
    chunks: AsyncIterable[Mapping[str, Any]],
    model: str,
    message_id: str,
    *,
    input_tokens: int = 0,
) -> AsyncIterator[tuple[str, dict[str, Any]]]:
    """Translate `chat.completion.chunk` objects into Messages stream events.

    Yields (event name, data) pairs in the order the `anthropic` SDK expects. Reasoning,
    text and each tool call open their own content block, and a block is stopped before the
    next one starts. An empty `tool_calls` list opens nothing. The usage chunk (empty
    `choices`) feeds message_delta's usage. `input_tokens` is the prompt estimate for
    message_start, because Chat Completions reports usage only at the end; message_delta then
    carries the reported counts. A chunk with an `error` object and no choices becomes an
    `error` event, and the stream ends there without message_stop.
    """
    translator = _EventTranslator()
    yield translator.message_start(model, message_id, input_tokens)
    async for chunk in chunks:
        if "error" in chunk and not chunk.get("choices"):
            yield _error_event(chunk.get("error"))
            return
        for event in translator.translate(chunk):
            yield event
    for event in translator.finish():
        yield event


class _EventTranslator:
    def __init__(self) -> None:
        self.block_index = -1
        # The open block: "thinking", "text", or ("tool", OpenAI tool call index).
        self.open_block: Any = None
        self.tool_blocks: dict[int, int] = {}
        self.finish_reason: Any = None
        self.usage: Usage | None = None

    def message_start(
        self, model: str, message_id: str, input_tokens: int
    ) -> tuple[str, dict[str, Any]]:
        message = {
            "id": message_id,
            "type": "message",
            "role": "assistant",
            "content": [],
            "model": model,
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": input_tokens, "output_tokens": 0},
        }
        return "message_start", {"type": "message_start", "message": message}

    def translate(self, chunk: Mapping[str, Any]) -> list[tuple[str, dict[str, Any]]]:
        usage = _usage_of(chunk)
        if usage is not None:
            self.usage = usage

        events: list[tuple[str, dict[str, Any]]] = []
        for choice in chunk.get("choices") or []:
            if not isinstance(choice, Mapping) or choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") if isinstance(choice.get("delta"), Mapping) else {}
            if isinstance(delta.get("reasoning_content"), str) and delta["reasoning_content"]:
                events.extend(
                    self._open("thinking", {"type": "thinking", "thinking": "", "signature": ""})
                )
                events.append(
                    self._delta({"type": "thinking_delta", "thinking": delta["reasoning_content"]})
                )
            if isinstance(delta.get("content"), str) and delta["content"]:
                events.extend(self._open("text", {"type": "text", "text": ""}))
                events.append(self._delta({"type": "text_delta", "text": delta["content"]}))
            for call in delta.get("tool_calls") or []:
                if isinstance(call, Mapping):
                    events.extend(self._tool_call_events(call))
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
        return events

    def finish(self) -> list[tuple[str, dict[str, Any]]]:
        events = self._close()
        stop_reason = stop_reason_for(self.finish_reason, has_tool_use=bool(self.tool_blocks))
        delta = {
            "type": "message_delta",
            "delta": {"stop_reason": stop_reason, "stop_sequence": None},
            "usage": usage_to_messages(self.usage),
        }
        events.append(("message_delta", delta))
        events.append(("message_stop", {"type": "message_stop"}))
        return events

    def _tool_call_events(self, call: Mapping[str, Any]) -> list[tuple[str, dict[str, Any]]]:
        events: list[tuple[str, dict[str, Any]]] = []
        tool_index = call.get("index", 0)
        function = call.get("function") if isinstance(call.get("function"), Mapping) else {}
        if tool_index not in self.tool_blocks:
            block = {
                "type": "tool_use",
                "id": str(call.get("id") or f"toolu_{uuid.uuid4().hex}"),
                "name": str(function.get("name") or ""),
                "input": {},
            }
            events.extend(self._open(("tool", tool_index), block))
            self.tool_blocks[tool_index] = self.block_index

        arguments = function.get("arguments")
        if isinstance(arguments, str) and arguments:
            delta = {"type": "input_json_delta", "partial_json": arguments}
            # Arguments for an earlier tool call still go to its own block index.
            events.append(self._delta(delta, self.tool_blocks[tool_index]))
        return events

    def _open(self, kind: Any, block: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
        if self.open_block == kind:
            return []
        events = self._close()
        self.block_index += 1
        self.open_block = kind
        events.append(
            (
                "content_block_start",
                {"type": "content_block_start", "index": self.block_index, "content_block": block},
            )
        )
        return events

    def _close(self) -> list[tuple[str, dict[str, Any]]]:
        if self.open_block is None:
            return []
        self.open_block = None
        return [("content_block_stop", {"type": "content_block_stop", "index": self.block_index})]

    def _delta(self, delta: dict[str, Any], index: int | None = None) -> tuple[str, dict[str, Any]]:
        block_index = self.block_index if index is None else index
        return "content_block_delta", {
            "type": "content_block_delta",
            "index": block_index,
            "delta": delta,
        }


def _error_event(error: Any) -> tuple[str, dict[str, Any]]:
    error = error if isinstance(error, Mapping) else {}
    code = f"{error.get('type') or ''} {error.get('code') or ''}"
    error_type = "rate_limit_error" if "rate" in code else "api_error"
    message = str(error.get("message") or "the upstream failed mid-stream")
    return "error", {"type": "error", "error": {"type": error_type, "message": message}}
