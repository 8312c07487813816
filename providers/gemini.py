"""Adapter for upstreams that speak Google's Gemini API (generateContent).

It presents the interface of `openai_compat`: `complete` and `stream` take a Chat Completions
request body, send it as `POST {base_url}/models/{model}:generateContent` (or
`:streamGenerateContent?alt=sse`) with the key in the `x-goog-api-key` header, and return a
`chat.completion` body or yield `chat.completion.chunk` objects. The base URL is the API version
root, for example "https://generativelanguage.googleapis.com/v1beta".

Usage follows the `usageMetadata` object of GenerateContentResponse: `promptTokenCount` already
includes `cachedContentTokenCount`, and the output is `candidatesTokenCount` plus
`thoughtsTokenCount`, of which the thoughts are the reasoning tokens. `toolUsePromptTokenCount`
(input that built-in tools fetched) is added to the prompt, because `totalTokenCount` is the sum
of all four. Field meanings follow Google's GenerateContentResponseUsageMetadata reference
(https://googleapis.github.io/js-genai/release_docs/classes/types.GenerateContentResponseUsageMetadata.html).

A request that cannot be expressed for Gemini raises UpstreamError of kind "client_error" with
`status_code` None before anything is sent.
"""

from __future__ import annotations

import json
import logging
import mimetypes
import re
import time
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import aclosing
from typing import Any
from urllib.parse import quote

from providers.errors import UpstreamError, kind_for_status, redact
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

API_KEY_HEADER = "x-goog-api-key"
MODELS_PREFIX = "models/"

# Candidate.finishReason values and the Chat Completions finish_reason each one becomes. Values
# not listed (OTHER, MALFORMED_FUNCTION_CALL and any added later) become "stop".
FINISH_REASONS: dict[str, str] = {
    "STOP": "stop",
    "MAX_TOKENS": "length",
    "SAFETY": "content_filter",
    "RECITATION": "content_filter",
    "BLOCKLIST": "content_filter",
    "PROHIBITED_CONTENT": "content_filter",
    "SPII": "content_filter",
    "IMAGE_SAFETY": "content_filter",
}

# The Chat Completions parameters that map one to one onto generationConfig fields.
_GENERATION_FIELDS = {
    "temperature": "temperature",
    "top_p": "topP",
    "top_k": "topK",
    "seed": "seed",
    "presence_penalty": "presencePenalty",
    "frequency_penalty": "frequencyPenalty",
}

_DATA_URL = re.compile(r"^data:(?P<media_type>[\w.+-]+/[\w.+-]+);base64,(?P<data>.*)$", re.DOTALL)
_RETRY_DELAY = re.compile(r"^(?P<seconds>\d+(?:\.\d+)?)s$")
_RETRY_INFO_TYPE = "type.googleapis.com/google.rpc.RetryInfo"

usage_from_chunk = rendered_usage_from_chunk


def generate_url(base_url: str, model: str, *, streaming: bool) -> str:
    """Build the generateContent URL, escaping the model name as one path segment."""
    if model.startswith(MODELS_PREFIX):
        model = model[len(MODELS_PREFIX) :]
    method = "streamGenerateContent?alt=sse" if streaming else "generateContent"
    return f"{base_url.rstrip('/')}/models/{quote(model, safe='-._~+@')}:{method}"


async def complete(
    client: HttpClientLike,
    base_url: str,
    api_key: str,
    body: Mapping[str, Any],
    timeout_s: float,
) -> CompletionResult:
    """Send a Chat Completions request as generateContent and return a `chat.completion` body.

    Each candidate becomes a choice. `timeout_s` is a deadline for the whole call. `usage` is
    None when the response has no usage metadata or an invalid one (logged as a warning).

    Raises UpstreamError for an untranslatable request (kind "client_error", nothing sent), a
    non-2xx status (a 429 takes its delay from Retry-After or the body's RetryInfo), a timeout,
    a connection failure, and a body that is not a GenerateContentResponse.
    """
    model, request_body = to_gemini_request(body)
    url = generate_url(base_url, model, streaming=False)
    upstream = describe_upstream(url)
    logger.debug("Sending generateContent to %s, model %r", upstream, model)

    data, status_code = await post_json(
        client,
        url,
        request_body,
        _request_headers(api_key, streaming=False),
        timeout_s,
        api_key,
        retry_after_from_body=retry_delay_from_body,
    )
    if not isinstance(data, dict) or "error" in data:
        detail = (
            error_detail(data, api_key) if isinstance(data, dict) else redact(str(data), api_key)
        )
        raise UpstreamError(
            "bad_response",
            f"upstream {upstream} returned HTTP {status_code} without a response: {detail}",
            status_code=status_code,
        )

    usage = None
    if data.get("usageMetadata") is not None:
        try:
            usage = usage_from_metadata(data["usageMetadata"])
        except InvalidUsageError as exc:
            logger.warning("Upstream %s reported invalid usage, ignoring it: %s", upstream, exc)
    return CompletionResult(
        body=chat_completion_from_response(data, usage, model=model), usage=usage
    )


async def stream(
    client: HttpClientLike,
    base_url: str,
    api_key: str,
    body: Mapping[str, Any],
    timeout_s: float,
) -> AsyncIterator[dict[str, Any]]:
    """Send streamGenerateContent and yield `chat.completion.chunk` objects.

    Each GenerateContentResponse of the stream becomes chunks: a role chunk the first time a
    candidate appears, `content` and `reasoning_content` deltas for text and thought parts, a
    whole tool call for each functionCall part, and a finish chunk for a finishReason. After the
    stream ends, a last chunk with empty `choices` carries the usage of the last usageMetadata.
    `timeout_s` bounds connecting and each wait for data.

    Gemini sends no end marker, so a stream that closes before every candidate has a
    finishReason raises UpstreamError of kind "connection". It also raises on the first
    iteration for an untranslatable request or a non-2xx status, and at any point for a
    timeout, an error object inside the stream, and data that is not a JSON object.
    """
    model, request_body = to_gemini_request(body)
    url = generate_url(base_url, model, streaming=True)
    upstream = describe_upstream(url)
    translator = GeminiStreamTranslator(upstream, api_key, model=model)
    logger.debug("Opening streamGenerateContent to %s, model %r", upstream, model)

    events = stream_sse_data(
        client,
        url,
        request_body,
        _request_headers(api_key, streaming=True),
        timeout_s,
        api_key,
        retry_after_from_body=retry_delay_from_body,
    )
    async with aclosing(events):
        async for data in events:
            for chunk in translator.translate(_parse_response(data, upstream, api_key)):
                yield chunk

    for chunk in translator.finish():
        yield chunk


# Request translation: Chat Completions to generateContent.


def to_gemini_request(body: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """Translate a Chat Completions request body into a model name and a generateContent body.

    System and developer messages become `systemInstruction`, and assistant messages `model`
    turns with functionCall parts. Tool messages become functionResponse parts, named after the
    assistant tool call with their tool_call_id. Images and files become inlineData or fileData
    parts. Tools become functionDeclarations with the JSON Schema passed unchanged as
    `parametersJsonSchema`. `n` becomes candidateCount.

    Raises UpstreamError of kind "client_error" naming the field for a request that Gemini
    cannot express.
    """
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _unsupported("model is missing")
    messages = body.get("messages")
    if not isinstance(messages, Sequence) or isinstance(messages, str):
        raise _unsupported("messages must be a list of messages")

    system, contents = _translate_messages(messages)
    request: dict[str, Any] = {"contents": contents}
    if system:
        request["systemInstruction"] = {"parts": system}

    generation_config = _generation_config(body)
    if generation_config:
        request["generationConfig"] = generation_config

    tools = body.get("tools")
    if tools:
        request["tools"] = [{"functionDeclarations": _function_declarations(tools)}]
        tool_config = _tool_config(body.get("tool_choice"))
        if tool_config is not None:
            request["toolConfig"] = tool_config
    return model, request


def _translate_messages(
    messages: Sequence[Any],
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    function_names = _function_names_by_call_id(messages)
    system: list[dict[str, Any]] = []
    contents: list[dict[str, Any]] = []
    for index, message in enumerate(messages):
        path = f"messages[{index}]"
        if not isinstance(message, Mapping):
            raise _unsupported(f"{path} must be an object")
        role = message.get("role")

        if role in ("system", "developer"):
            system.extend(_text_parts(message.get("content"), f"{path}.content"))
        elif role == "user":
            _append_content(
                contents, "user", _user_parts(message.get("content"), f"{path}.content")
            )
        elif role == "assistant":
            _append_content(contents, "model", _model_parts(message, path))
        elif role == "tool":
            _append_content(
                contents, "user", [_function_response_part(message, path, function_names)]
            )
        else:
            raise _unsupported(
                f"{path}.role {role!r} is not supported by Gemini upstreams; use system, "
                "developer, user, assistant or tool"
            )
    return system, contents


def _function_names_by_call_id(messages: Sequence[Any]) -> dict[str, str]:
    names: dict[str, str] = {}
    for message in messages:
        if not isinstance(message, Mapping) or message.get("role") != "assistant":
            continue
        for call in message.get("tool_calls") or []:
            function = call.get("function") if isinstance(call, Mapping) else None
            if isinstance(function, Mapping) and isinstance(call.get("id"), str):
                names[call["id"]] = str(function.get("name"))
    return names


def _append_content(contents: list[dict[str, Any]], role: str, parts: list[dict[str, Any]]) -> None:
    if not parts:
        return
    if contents and contents[-1]["role"] == role:
        contents[-1]["parts"].extend(parts)
    else:
        contents.append({"role": role, "parts": parts})


def _text_parts(content: Any, path: str) -> list[dict[str, Any]]:
    if content is None:
        return []
    if isinstance(content, str):
        return [{"text": content}] if content else []
    if not isinstance(content, list):
        raise _unsupported(f"{path} must be a string or a list of text parts")

    parts = []
    for index, part in enumerate(content):
        if not isinstance(part, Mapping) or part.get("type") not in ("text", "input_text"):
            raise _unsupported(f"{path}[{index}] must be a text part")
        if part.get("text"):
            parts.append({"text": str(part["text"])})
    return parts


def _user_parts(content: Any, path: str) -> list[dict[str, Any]]:
    if content is None or isinstance(content, str):
        return _text_parts(content, path)
    if not isinstance(content, list):
        raise _unsupported(f"{path} must be a string or a list of parts")

    parts = []
    for index, part in enumerate(content):
        part_path = f"{path}[{index}]"
        part_type = part.get("type") if isinstance(part, Mapping) else None
        if part_type in ("text", "input_text"):
            if part.get("text"):
                parts.append({"text": str(part["text"])})
        elif part_type == "image_url":
            parts.append(_image_part(part, part_path))
        elif part_type == "file":
            parts.append(_file_part(part, part_path))
        elif part_type == "input_audio":
            parts.append(_audio_part(part, part_path))
        else:
            raise _unsupported(
                f"{part_path}.type {part_type!r} is not supported by Gemini upstreams; use text, "
                "image_url, file or input_audio parts"
            )
    return parts


def _image_part(part: Mapping[str, Any], path: str) -> dict[str, Any]:
    image_url = part.get("image_url")
    url = image_url.get("url") if isinstance(image_url, Mapping) else image_url
    if not isinstance(url, str) or not url:
        raise _unsupported(f"{path}.image_url.url is missing")
    if url.startswith("data:"):
        return _inline_data(url, f"{path}.image_url.url")

    mime_type, _ = mimetypes.guess_type(url.split("?", 1)[0])
    if not url.startswith(("https://", "http://")) or mime_type is None:
        raise _unsupported(
            f"{path}.image_url.url must be a base64 data URL, or an http(s) URL whose path ends "
            "in a known image extension such as .png or .jpg"
        )
    return {"fileData": {"mimeType": mime_type, "fileUri": url}}


def _file_part(part: Mapping[str, Any], path: str) -> dict[str, Any]:
    file = part.get("file")
    file_data = file.get("file_data") if isinstance(file, Mapping) else None
    if not isinstance(file_data, str):
        raise _unsupported(
            f"{path}.file.file_data is missing; Gemini upstreams take files as base64 data URLs, "
            "not file ids"
        )
    return _inline_data(file_data, f"{path}.file.file_data")


def _audio_part(part: Mapping[str, Any], path: str) -> dict[str, Any]:
    audio = part.get("input_audio")
    if not isinstance(audio, Mapping) or not isinstance(audio.get("data"), str):
        raise _unsupported(f"{path}.input_audio.data is missing")
    audio_format = audio.get("format") or "wav"
    return {"inlineData": {"mimeType": f"audio/{audio_format}", "data": audio["data"]}}


def _inline_data(url: str, path: str) -> dict[str, Any]:
    match = _DATA_URL.match(url)
    if match is None:
        raise _unsupported(f"{path} must be a base64 data URL (data:<media type>;base64,<data>)")
    return {"inlineData": {"mimeType": match["media_type"], "data": match["data"]}}


def _model_parts(message: Mapping[str, Any], path: str) -> list[dict[str, Any]]:
    content = message.get("content")
    if isinstance(content, list):
        content = [
            part
            for part in content
            if not (isinstance(part, Mapping) and part.get("type") == "refusal")
        ]
    parts = _text_parts(content, f"{path}.content")

    # An empty tool_calls list means no tool call.
    tool_calls = message.get("tool_calls") or []
    if not isinstance(tool_calls, list):
        raise _unsupported(f"{path}.tool_calls must be a list")
    for index, call in enumerate(tool_calls):
        parts.append(_function_call_part(call, f"{path}.tool_calls[{index}]"))
    return parts


def _function_call_part(call: Any, path: str) -> dict[str, Any]:
    function = call.get("function") if isinstance(call, Mapping) else None
    if not isinstance(function, Mapping) or not isinstance(function.get("name"), str):
        raise _unsupported(f"{path}.function.name is missing")

    arguments = function.get("arguments") or "{}"
    try:
        args = json.loads(arguments) if isinstance(arguments, str) else arguments
    except json.JSONDecodeError as exc:
        raise _unsupported(f"{path}.function.arguments is not valid JSON: {exc}") from exc
    if not isinstance(args, Mapping):
        raise _unsupported(f"{path}.function.arguments must be a JSON object")

    part: dict[str, Any] = {"functionCall": {"name": function["name"], "args": dict(args)}}
    # Gemini 3 wants the thought signature of a function call back in the next request. Google's
    # own OpenAI-compatible endpoint carries it in extra_content.google.thought_signature.
    signature = _thought_signature(call)
    if signature is not None:
        part["thoughtSignature"] = signature
    return part


def _thought_signature(call: Mapping[str, Any]) -> str | None:
    extra = call.get("extra_content")
    google = extra.get("google") if isinstance(extra, Mapping) else None
    signature = google.get("thought_signature") if isinstance(google, Mapping) else None
    return signature if isinstance(signature, str) else None


def _function_response_part(
    message: Mapping[str, Any], path: str, function_names: Mapping[str, str]
) -> dict[str, Any]:
    tool_call_id = message.get("tool_call_id")
    if not isinstance(tool_call_id, str) or tool_call_id not in function_names:
        raise _unsupported(
            f"{path}.tool_call_id {tool_call_id!r} matches no tool call of an earlier assistant "
            "message; Gemini needs the function name of every tool result"
        )

    content = message.get("content")
    if isinstance(content, list):
        content = "".join(part["text"] for part in _text_parts(content, f"{path}.content"))
    text = content if isinstance(content, str) else ""
    # functionResponse.response must be a JSON object, so other results are wrapped.
    try:
        parsed = json.loads(text)
    except json.JSONDecodeError:
        parsed = text
    response = parsed if isinstance(parsed, dict) else {"result": parsed}
    return {"functionResponse": {"name": function_names[tool_call_id], "response": response}}


def _generation_config(body: Mapping[str, Any]) -> dict[str, Any]:
    config: dict[str, Any] = {}
    max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
    if max_tokens is not None:
        config["maxOutputTokens"] = max_tokens
    for name, gemini_name in _GENERATION_FIELDS.items():
        if body.get(name) is not None:
            config[gemini_name] = body[name]

    stop = body.get("stop")
    if isinstance(stop, str):
        config["stopSequences"] = [stop]
    elif stop:
        config["stopSequences"] = list(stop)
    if body.get("n") not in (None, 1):
        config["candidateCount"] = body["n"]

    response_format = body.get("response_format")
    if isinstance(response_format, Mapping):
        format_type = response_format.get("type")
        if format_type in ("json_object", "json_schema"):
            config["responseMimeType"] = "application/json"
        json_schema = response_format.get("json_schema")
        if format_type == "json_schema" and isinstance(json_schema, Mapping):
            config["responseJsonSchema"] = json_schema.get("schema") or {}
    return config


def _function_declarations(tools: Any) -> list[dict[str, Any]]:
    if not isinstance(tools, list):
        raise _unsupported("tools must be a list")

    declarations = []
    for index, tool in enumerate(tools):
        path = f"tools[{index}]"
        if not isinstance(tool, Mapping) or tool.get("type") != "function":
            raise _unsupported(f"{path}.type must be 'function' for Gemini upstreams")
        function = tool.get("function")
        if not isinstance(function, Mapping) or not isinstance(function.get("name"), str):
            raise _unsupported(f"{path}.function.name is missing")

        declaration: dict[str, Any] = {"name": function["name"]}
        if function.get("description"):
            declaration["description"] = function["description"]
        if function.get("parameters"):
            declaration["parametersJsonSchema"] = function["parameters"]
        declarations.append(declaration)
    return declarations


def _tool_config(tool_choice: Any) -> dict[str, Any] | None:
    if tool_choice is None:
        return None
    if tool_choice == "auto":
        calling = {"mode": "AUTO"}
    elif tool_choice == "none":
        calling = {"mode": "NONE"}
    elif tool_choice == "required":
        calling = {"mode": "ANY"}
    elif isinstance(tool_choice, Mapping) and isinstance(tool_choice.get("function"), Mapping):
        calling = {"mode": "ANY", "allowedFunctionNames": [tool_choice["function"].get("name")]}
    else:
        raise _unsupported(
            f"tool_choice {tool_choice!r} is not supported; use auto, none, required or "
            '{"type": "function", "function": {"name": ...}}'
        )
    return {"functionCallingConfig": calling}


def _unsupported(message: str) -> UpstreamError:
    return UpstreamError("client_error", message)


# Response translation: generateContent to Chat Completions.


def usage_from_metadata(metadata: Mapping[str, Any]) -> Usage:
    """Parse Gemini's `usageMetadata` into a canonical `Usage`.

    prompt = promptTokenCount (which includes cachedContentTokenCount) + toolUsePromptTokenCount,
    completion = candidatesTokenCount + thoughtsTokenCount, reasoning = thoughtsTokenCount,
    cached = cachedContentTokenCount. Absent counts are 0, except promptTokenCount.

    Raises InvalidUsageError when promptTokenCount is missing, or a count is negative or not an
    integer.
    """
    if not isinstance(metadata, Mapping):
        raise InvalidUsageError(
            f"usageMetadata must be a JSON object, got {type(metadata).__name__}"
        )

    prompt_tokens = _count(metadata, "promptTokenCount", required=True)
    tool_use_tokens = _count(metadata, "toolUsePromptTokenCount")
    candidates_tokens = _count(metadata, "candidatesTokenCount")
    thoughts_tokens = _count(metadata, "thoughtsTokenCount")
    cached_tokens = _count(metadata, "cachedContentTokenCount")
    return Usage(
        prompt_tokens=prompt_tokens + tool_use_tokens,
        completion_tokens=candidates_tokens + thoughts_tokens,
        cached_prompt_tokens=cached_tokens,
        reasoning_tokens=thoughts_tokens,
    )


def _count(metadata: Mapping[str, Any], name: str, *, required: bool = False) -> int:
    value = metadata.get(name)
    if value is None:
        if required:
            raise InvalidUsageError(f"usageMetadata.{name} is missing")
        return 0
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidUsageError(f"usageMetadata.{name} must be an integer, got {value!r}")
    if value < 0:
        raise InvalidUsageError(f"usageMetadata.{name} must not be negative, got {value}")
    return value


def finish_reason_for(finish_reason: Any, *, has_tool_calls: bool = False) -> str | None:
    """Map a Gemini finishReason to a Chat Completions finish_reason; None stays None.

    Gemini ends a function call with STOP, which becomes "tool_calls" when the candidate called
    a function.
    """
    if finish_reason is None:
        return None
    if has_tool_calls and finish_reason == "STOP":
        return "tool_calls"
    return FINISH_REASONS.get(str(finish_reason), "stop")


def chat_completion_from_response(
    data: Mapping[str, Any],
    usage: Usage | None,
    *,
    model: str,
    created: int | None = None,
) -> dict[str, Any]:
    """Translate a GenerateContentResponse into a `chat.completion` body with rendered `usage`.

    Text parts join into `content`, thought parts into `reasoning_content`, and functionCall
    parts become `tool_calls` with JSON-string arguments. A prompt blocked before any candidate
    becomes one choice with finish_reason "content_filter".
    """
    response_id = str(data.get("responseId") or uuid.uuid4().hex)
    choices = []
    for position, candidate in enumerate(data.get("candidates") or []):
        if not isinstance(candidate, Mapping):
            continue
        index = candidate.get("index", position)
        message = _message_from_parts(_candidate_parts(candidate), response_id, index)
        finish_reason = finish_reason_for(
            candidate.get("finishReason"), has_tool_calls="tool_calls" in message
        )
        choices.append(
            {
                "index": index,
                "message": message,
                "logprobs": None,
                "finish_reason": finish_reason or "stop",
            }
        )

    if not choices:
        choices.append(
            {
                "index": 0,
                "message": {"role": "assistant", "content": None},
                "logprobs": None,
                "finish_reason": "content_filter" if _prompt_blocked(data) else "stop",
            }
        )

    body: dict[str, Any] = {
        "id": response_id,
        "object": "chat.completion",
        "created": int(time.time()) if created is None else created,
        "model": data.get("modelVersion") or model,
        "choices": choices,
    }
    if usage is not None:
        body["usage"] = render_usage(usage)
    return body


def _candidate_parts(candidate: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    content = candidate.get("content")
    parts = content.get("parts") if isinstance(content, Mapping) else None
    return [part for part in parts or [] if isinstance(part, Mapping)]


def _message_from_parts(
    parts: list[Mapping[str, Any]], response_id: str, index: int
) -> dict[str, Any]:
    texts: list[str] = []
    thoughts: list[str] = []
    tool_calls: list[dict[str, Any]] = []
    for part in parts:
        if isinstance(part.get("functionCall"), Mapping):
            tool_calls.append(
                _tool_call(part, _tool_call_id(part, response_id, index, len(tool_calls)))
            )
        elif isinstance(part.get("text"), str):
            (thoughts if part.get("thought") else texts).append(part["text"])

    message: dict[str, Any] = {
        "role": "assistant",
        "content": "".join(texts) if texts or not tool_calls else None,
    }
    if tool_calls:
        message["tool_calls"] = tool_calls
    if thoughts:
        message["reasoning_content"] = "".join(thoughts)
    return message


def _tool_call_id(part: Mapping[str, Any], response_id: str, index: int, position: int) -> str:
    call_id = part["functionCall"].get("id")
    # The Gemini API leaves functionCall.id out, so ids are made unique per response.
    return (
        call_id
        if isinstance(call_id, str) and call_id
        else f"call_{response_id}_{index}_{position}"
    )


def _tool_call(part: Mapping[str, Any], call_id: str) -> dict[str, Any]:
    function_call = part["functionCall"]
    call: dict[str, Any] = {
        "id": call_id,
        "type": "function",
        "function": {
            "name": function_call.get("name"),
            "arguments": json.dumps(function_call.get("args") or {}, ensure_ascii=False),
        },
    }
    if isinstance(part.get("thoughtSignature"), str):
        call["extra_content"] = {"google": {"thought_signature": part["thoughtSignature"]}}
    return call


def _prompt_blocked(data: Mapping[str, Any]) -> bool:
    feedback = data.get("promptFeedback")
    return isinstance(feedback, Mapping) and bool(feedback.get("blockReason"))


class GeminiStreamTranslator:
    """Turns the GenerateContentResponse objects of one stream into `chat.completion.chunk`s.

    `translate` takes each parsed response in order and returns its chunks. `finish` checks that
    every candidate finished and returns the usage chunk, or raises UpstreamError.
    """

    def __init__(
        self, upstream: str, api_key: str, *, model: str, created: int | None = None
    ) -> None:
        self.upstream = upstream
        self.api_key = api_key
        self.model = model
        self.created = int(time.time()) if created is None else created
        self.response_id: str | None = None
        self.metadata: Mapping[str, Any] | None = None
        self.started: set[int] = set()
        self.finished: set[int] = set()
        self.tool_call_counts: dict[int, int] = {}

    def translate(self, data: Mapping[str, Any]) -> list[dict[str, Any]]:
        if "error" in data:
            raise self._stream_error(data)
        if self.response_id is None:
            self.response_id = str(data.get("responseId") or uuid.uuid4().hex)
        if data.get("modelVersion"):
            self.model = str(data["modelVersion"])
        # Every response of the stream may carry usageMetadata; the last one is the total.
        if isinstance(data.get("usageMetadata"), Mapping):
            self.metadata = data["usageMetadata"]

        chunks: list[dict[str, Any]] = []
        candidates = [
            candidate
            for candidate in data.get("candidates") or []
            if isinstance(candidate, Mapping)
        ]
        for position, candidate in enumerate(candidates):
            chunks.extend(self._candidate_chunks(candidate, candidate.get("index", position)))
        if not candidates and _prompt_blocked(data):
            chunks.extend(self._start(0))
            chunks.append(self._chunk(0, {}, "content_filter"))
            self.finished.add(0)
        return chunks

    def finish(self) -> list[dict[str, Any]]:
        if not self.started or self.started - self.finished:
            raise UpstreamError(
                "connection",
                f"upstream {self.upstream} closed the stream before every candidate had a "
                "finishReason",
                status_code=200,
            )
        if self.metadata is None:
            return []
        try:
            usage = usage_from_metadata(self.metadata)
        except InvalidUsageError as exc:
            logger.warning(
                "Upstream %s reported invalid usage in its stream, ignoring it: %s",
                self.upstream,
                exc,
            )
            return []
        return [
            {
                "id": self.response_id,
                "object": "chat.completion.chunk",
                "created": self.created,
                "model": self.model,
                "choices": [],
                "usage": render_usage(usage),
            }
        ]

    def _candidate_chunks(self, candidate: Mapping[str, Any], index: int) -> list[dict[str, Any]]:
        chunks = self._start(index)
        called = False
        for part in _candidate_parts(candidate):
            if isinstance(part.get("functionCall"), Mapping):
                position = self.tool_call_counts.get(index, 0)
                self.tool_call_counts[index] = position + 1
                call = _tool_call(part, _tool_call_id(part, str(self.response_id), index, position))
                chunks.append(self._chunk(index, {"tool_calls": [{"index": position, **call}]}))
                called = True
            elif isinstance(part.get("text"), str) and part["text"]:
                field = "reasoning_content" if part.get("thought") else "content"
                chunks.append(self._chunk(index, {field: part["text"]}))

        finish_reason = finish_reason_for(
            candidate.get("finishReason"),
            has_tool_calls=called or self.tool_call_counts.get(index, 0) > 0,
        )
        if finish_reason is not None:
            chunks.append(self._chunk(index, {}, finish_reason))
            self.finished.add(index)
        return chunks

    def _start(self, index: int) -> list[dict[str, Any]]:
        if index in self.started:
            return []
        self.started.add(index)
        return [self._chunk(index, {"role": "assistant", "content": ""})]

    def _chunk(
        self, index: int, delta: dict[str, Any], finish_reason: str | None = None
    ) -> dict[str, Any]:
        return {
            "id": self.response_id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [
                {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
            ],
        }

    def _stream_error(self, data: Mapping[str, Any]) -> UpstreamError:
        error = data.get("error")
        code = error.get("code") if isinstance(error, Mapping) else None
        kind = kind_for_status(code) if isinstance(code, int) and code >= 400 else "server_error"
        return UpstreamError(
            kind,
            f"upstream {self.upstream} sent an error inside the stream: "
            f"{error_detail(data, self.api_key)}",
            status_code=200,
        )


def retry_delay_from_body(body: bytes) -> float | None:
    """Read the RetryInfo delay ("7s") that Google puts in the details of a 429 error body."""
    try:
        data = json.loads(body.decode("utf-8", errors="replace"))
    except json.JSONDecodeError:
        return None
    error = data.get("error") if isinstance(data, dict) else None
    details = error.get("details") if isinstance(error, dict) else None
    for detail in details if isinstance(details, list) else []:
        if isinstance(detail, dict) and detail.get("@type") == _RETRY_INFO_TYPE:
            match = _RETRY_DELAY.match(str(detail.get("retryDelay", "")))
            if match is not None:
                return float(match["seconds"])
    return None


def _parse_response(data: str, upstream: str, api_key: str) -> dict[str, Any]:
    try:
        response = json.loads(data)
    except json.JSONDecodeError as exc:
        raise UpstreamError(
            "bad_response",
            f"upstream {upstream} sent a data: line that is not valid JSON: "
            f"{redact(data, api_key)!r}",
            status_code=200,
        ) from exc
    if not isinstance(response, dict):
        raise UpstreamError(
            "bad_response",
            f"upstream {upstream} sent a data: line that is not a JSON object: "
            f"{redact(data, api_key)!r}",
            status_code=200,
        )
    return response


def _request_headers(api_key: str, *, streaming: bool) -> dict[str, str]:
    return {
        API_KEY_HEADER: api_key,
        "Accept": "text/event-stream" if streaming else "application/json",
    }
