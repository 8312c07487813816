"""Adapter for upstreams that speak OpenAI's Chat Completions API.

Both calls take a shared client (an `httpx.AsyncClient` or a `providers.http.HttpClient`), the
upstream's base URL (for example "http://127.0.0.1:9000/v1", to which "/chat/completions" is
appended), the upstream credential, which is sent as `Authorization: Bearer`, and the request
body as the buyer sent it. Every failure becomes an `UpstreamError`, and no message or log line
contains the credential.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any

import anyio
import httpx

from providers.errors import UpstreamError, kind_for_status, parse_retry_after, redact
from providers.http import (
    HttpClientLike,
    Response,
    StreamResponse,
    TransportError,
    TransportInvalidURL,
    TransportTimeout,
    as_http_client,
)
from providers.usage import InvalidUsageError, Usage, usage_from_openai

logger = logging.getLogger(__name__)

CHAT_COMPLETIONS_PATH = "/chat/completions"
CACHE_WRITE_TOKENS_FIELD = "cache_write_tokens"
SSE_DONE = "[DONE]"
# Limits on what is read from an upstream, so that a broken upstream cannot exhaust memory.
MAX_ERROR_BODY_BYTES = 64 * 1024
MAX_SSE_EVENT_CHARS = 1024 * 1024


@dataclass(frozen=True)
class CompletionResult:
    """A non-streaming completion: the upstream's JSON body and its reported usage, if any."""

    body: dict[str, Any]
    usage: Usage | None


def chat_completions_url(base_url: str) -> str:
    return base_url.rstrip("/") + CHAT_COMPLETIONS_PATH


async def complete(
    client: HttpClientLike,
    base_url: str,
    api_key: str,
    body: Mapping[str, Any],
    timeout_s: float,
) -> CompletionResult:
    """Send a non-streaming chat completion and return the parsed body and its usage.

    `stream` is forced to false and `stream_options` is removed, because OpenAI rejects
    `stream_options` without streaming. `timeout_s` is a deadline for the whole call.
    `usage` is None when the body has no usage or an invalid one (logged as a warning), so the
    caller counts tokens locally in both cases. The body is returned unchanged either way.

    Raises UpstreamError for a non-2xx status, a timeout, a connection failure, and a body that
    is not a JSON object or contains only an error object (kind "bad_response").
    """
    url = chat_completions_url(base_url)
    request_body = {key: value for key, value in body.items() if key != "stream_options"}
    request_body["stream"] = False
    upstream = _describe(url)
    logger.debug("Sending chat completion to %s, model %r", upstream, body.get("model"))

    http_client = as_http_client(client)
    try:
        with anyio.fail_after(timeout_s):
            response = await http_client.post_json(
                url, request_body, _request_headers(api_key, streaming=False), timeout_s
            )
    except TimeoutError as exc:
        raise _timeout_error(upstream, timeout_s) from exc
    except TransportError as exc:
        raise _transport_error(exc, upstream, timeout_s, api_key) from exc

    if not response.is_success:
        raise _status_error(response, response.content, upstream, api_key)

    try:
        data = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UpstreamError(
            "bad_response",
            f"upstream {upstream} returned a body that is not valid JSON: "
            f"{redact(response.text, api_key)!r}",
            status_code=response.status_code,
        ) from exc
    _check_json_object(data, upstream, api_key, status_code=response.status_code)

    try:
        usage = usage_from_chunk(data)
    except InvalidUsageError as exc:
        logger.warning("Upstream %s reported invalid usage, ignoring it: %s", upstream, exc)
        usage = None
    return CompletionResult(body=data, usage=usage)


async def stream(
    client: HttpClientLike,
    base_url: str,
    api_key: str,
    body: Mapping[str, Any],
    timeout_s: float,
    *,
    require_done: bool = True,
) -> AsyncIterator[dict[str, Any]]:
    """Send a streaming chat completion and yield each parsed `chat.completion.chunk` object.

    The request gets `stream: true` and `stream_options.include_usage: true`, so the upstream
    ends with a chunk whose `choices` is empty and whose `usage` is set (see `usage_from_chunk`).
    Iteration ends at `data: [DONE]`. Closing the generator early (`aclose`) closes the HTTP
    response. Breaking out of `async for` does not close it, so wrap the generator in
    `contextlib.aclosing` when stopping early. `timeout_s` bounds connecting and each wait for
    data. It is not a deadline for the whole stream, because a long completion may stream for
    longer than any single wait.

    Raises UpstreamError on the first iteration for a non-2xx status, with Retry-After
    parsed into `retry_after_s`. At any point it raises UpstreamError of kind "timeout" or
    "connection" when the upstream is too slow, the connection fails, or the stream ends before
    `data: [DONE]`. A `data:` line that is not a JSON object raises kind "bad_response", and an
    error object sent inside the stream raises kind "server_error".

    With `require_done=False` a stream that closes without `data: [DONE]` ends normally, for
    vendors that omit it. The caller then decides whether the stream was complete.
    """
    url = chat_completions_url(base_url)
    stream_options = dict(body.get("stream_options") or {})
    stream_options["include_usage"] = True
    request_body = {**body, "stream": True, "stream_options": stream_options}
    upstream = _describe(url)
    logger.debug("Opening chat completion stream to %s, model %r", upstream, body.get("model"))

    try:
        response = await as_http_client(client).open_stream(
            url, request_body, _request_headers(api_key, streaming=True), timeout_s
        )
    except TransportError as exc:
        raise _transport_error(exc, upstream, timeout_s, api_key) from exc

    try:
        if not response.is_success:
            error_body = await _read_limited(response, upstream, timeout_s, api_key)
            raise _status_error(response, error_body, upstream, api_key)
        if response.headers.get("content-type", "").startswith("application/json"):
            # The upstream ignored `stream: true` or sent an error object with a 2xx status.
            json_body = await _read_limited(response, upstream, timeout_s, api_key)
            raise UpstreamError(
                "bad_response",
                f"upstream {upstream} returned JSON instead of an event stream: "
                f"{_error_detail_from_body(json_body, api_key)}",
                status_code=response.status_code,
            )

        async with aclosing(_iter_sse_data(response, upstream, timeout_s, api_key)) as events:
            async for data in events:
                if data == SSE_DONE:
                    return
                yield _parse_chunk(data, upstream, api_key)

        if not require_done:
            return
        raise UpstreamError(
            "connection",
            f"upstream {upstream} closed the stream before sending data: [DONE]",
            status_code=response.status_code,
        )
    finally:
        await response.aclose()


def usage_from_chunk(chunk: Mapping[str, Any]) -> Usage | None:
    """Return the usage reported in a stream chunk, or None when the chunk carries none.

    Raises InvalidUsageError when the chunk's `usage` is malformed.
    """
    usage = chunk.get("usage")
    if usage is None:
        return None
    return usage_from_openai(usage)


def render_usage(usage: Usage) -> dict[str, Any]:
    """Render a `Usage` as a Chat Completions `usage` object, the canonical form of every adapter.

    Cache writes go in `prompt_tokens_details.cache_write_tokens`, the field that OpenRouter
    documents (https://openrouter.ai/docs/use-cases/usage-accounting) and that the `openai` SDK
    3.60 types as PromptTokensDetails.cache_write_tokens. `usage_from_rendered` reads it back.
    """
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
        "prompt_tokens_details": {
            "cached_tokens": usage.cached_prompt_tokens,
            CACHE_WRITE_TOKENS_FIELD: usage.cache_write_tokens,
        },
        "completion_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
    }


def usage_from_rendered(usage: Mapping[str, Any]) -> Usage:
    """Parse a usage object in the form of `render_usage`, including its cache writes.

    Reads what `usage_from_openai` reads plus `prompt_tokens_details.cache_write_tokens`.
    Raises InvalidUsageError for the same reasons as `usage_from_openai`, and when the cache
    writes are not a non-negative integer.
    """
    parsed = usage_from_openai(usage)
    details = usage.get("prompt_tokens_details")
    cache_write_tokens = (
        details.get(CACHE_WRITE_TOKENS_FIELD) if isinstance(details, Mapping) else None
    )
    if cache_write_tokens is None:
        return parsed
    if isinstance(cache_write_tokens, bool) or not isinstance(cache_write_tokens, int):
        raise InvalidUsageError(
            f"usage.prompt_tokens_details.{CACHE_WRITE_TOKENS_FIELD} must be an integer, "
            f"got {cache_write_tokens!r}"
        )
    # `replace` runs the checks of Usage again, so negative counts and overflowing parts raise.
    return dataclasses.replace(parsed, cache_write_tokens=cache_write_tokens)


def rendered_usage_from_chunk(chunk: Mapping[str, Any]) -> Usage | None:
    """Return the usage of an adapter's chunk or body, read with `usage_from_rendered`.

    Returns None when the chunk carries no usage. Raises InvalidUsageError when it is malformed.
    """
    usage = chunk.get("usage")
    if usage is None:
        return None
    if not isinstance(usage, Mapping):
        raise InvalidUsageError(f"usage must be a JSON object, got {type(usage).__name__}")
    return usage_from_rendered(usage)


def _request_headers(api_key: str, *, streaming: bool) -> dict[str, str]:
    return {
        "Authorization": f"Bearer {api_key}",
        "Accept": "text/event-stream" if streaming else "application/json",
    }


@functools.lru_cache(maxsize=1024)
def _describe(url: str) -> str:
    """Name an upstream by scheme, host and port only, because paths and queries may hold keys.

    Cached: every call names its upstream, and a marketplace has few distinct upstream URLs.
    """
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL:
        return "<invalid URL>"
    port = f":{parsed.port}" if parsed.port is not None else ""
    return f"{parsed.scheme}://{parsed.host}{port}"


async def _iter_sse_data(
    response: StreamResponse, upstream: str, timeout_s: float, api_key: str
) -> AsyncIterator[str]:
    """Yield the data of each server-sent event, joining multi-line data with newlines.

    Comment lines (starting with ":") and the fields event, id and retry are skipped, as the
    server-sent events format allows. Data that was not ended by a blank line before the
    stream closed is still yielded, so a final event is not lost to a missing newline.
    """
    data_lines: list[str] = []
    data_chars = 0
    try:
        async for line in response.aiter_lines():
            if line == "":
                if data_lines:
                    yield "\n".join(data_lines)
                    data_lines = []
                    data_chars = 0
                continue
            if line.startswith(":"):
                continue

            field, _, value = line.partition(":")
            if field != "data":
                continue
            if value.startswith(" "):
                value = value[1:]

            data_chars += len(value)
            if data_chars > MAX_SSE_EVENT_CHARS:
                raise UpstreamError(
                    "bad_response",
                    f"upstream {upstream} sent a server-sent event longer than "
                    f"{MAX_SSE_EVENT_CHARS} characters",
                    status_code=response.status_code,
                )
            data_lines.append(value)
    except TransportError as exc:
        raise _transport_error(exc, upstream, timeout_s, api_key) from exc

    if data_lines:
        yield "\n".join(data_lines)


def _parse_chunk(data: str, upstream: str, api_key: str) -> dict[str, Any]:
    try:
        chunk = json.loads(data)
    except json.JSONDecodeError as exc:
        raise UpstreamError(
            "bad_response",
            f"upstream {upstream} sent a data: line that is not valid JSON: "
            f"{redact(data, api_key)!r}",
            status_code=200,
        ) from exc

    if isinstance(chunk, dict) and "error" in chunk and "choices" not in chunk:
        raise UpstreamError(
            "server_error",
            f"upstream {upstream} sent an error inside the stream: {_error_detail(chunk, api_key)}",
            status_code=200,
        )
    _check_json_object(chunk, upstream, api_key, status_code=200)
    return chunk


def _check_json_object(data: object, upstream: str, api_key: str, *, status_code: int) -> None:
    if not isinstance(data, dict):
        raise UpstreamError(
            "bad_response",
            f"upstream {upstream} returned JSON that is not an object: "
            f"{redact(json.dumps(data), api_key)!r}",
            status_code=status_code,
        )
    # Some OpenAI-compatible gateways return HTTP 200 with only an error object.
    if "error" in data and "choices" not in data:
        raise UpstreamError(
            "bad_response",
            f"upstream {upstream} returned HTTP {status_code} with an error: "
            f"{_error_detail(data, api_key)}",
            status_code=status_code,
        )


async def _read_limited(
    response: StreamResponse, upstream: str, timeout_s: float, api_key: str
) -> bytes:
    """Read at most MAX_ERROR_BODY_BYTES of a streamed response body."""
    body = bytearray()
    try:
        async for part in response.aiter_bytes():
            body.extend(part)
            if len(body) >= MAX_ERROR_BODY_BYTES:
                break
    except TransportError as exc:
        raise _transport_error(exc, upstream, timeout_s, api_key) from exc
    return bytes(body[:MAX_ERROR_BODY_BYTES])


def _status_error(
    response: Response | StreamResponse, body: bytes, upstream: str, api_key: str
) -> UpstreamError:
    detail = _error_detail_from_body(body, api_key)
    retry_after_s = parse_retry_after(
        response.headers.get("retry-after"), response.headers.get("retry-after-ms")
    )
    logger.debug(
        "Upstream %s returned HTTP %s, retry after %s s",
        upstream,
        response.status_code,
        retry_after_s,
    )
    return UpstreamError(
        kind_for_status(response.status_code),
        f"upstream {upstream} returned HTTP {response.status_code}: {detail}",
        status_code=response.status_code,
        retry_after_s=retry_after_s,
    )


def _error_detail_from_body(body: bytes, api_key: str) -> str:
    text = body.decode("utf-8", errors="replace")
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        return redact(text, api_key) or "(empty body)"
    if isinstance(data, dict) and "error" in data:
        return _error_detail(data, api_key)
    return redact(text, api_key)


def _error_detail(data: Mapping[str, Any], api_key: str) -> str:
    """Format OpenAI's error object ({"error": {"message", "type", "code"}}) for a message."""
    error = data.get("error")
    if isinstance(error, Mapping):
        parts = [str(error.get("message") or "(no message)")]
        for name in ("type", "code"):
            if error.get(name) is not None:
                parts.append(f"{name}={error[name]}")
        return redact(", ".join(parts), api_key)
    return redact(str(error), api_key)


def _timeout_error(upstream: str, timeout_s: float) -> UpstreamError:
    return UpstreamError("timeout", f"upstream {upstream} timed out after {timeout_s} s")


def _invalid_url_error(upstream: str) -> UpstreamError:
    # The URL itself stays out of the message, because its path or query may contain a key.
    return UpstreamError(
        "connection", f"upstream URL for {upstream} is invalid; correct the listing's base URL"
    )


def _connection_error(upstream: str, exc: BaseException, api_key: str) -> UpstreamError:
    reason = redact(str(exc), api_key) or type(exc).__name__
    return UpstreamError(
        "connection", f"connection to upstream {upstream} failed: {type(exc).__name__}: {reason}"
    )


def _transport_error(
    exc: TransportError, upstream: str, timeout_s: float, api_key: str
) -> UpstreamError:
    if isinstance(exc, TransportTimeout):
        return _timeout_error(upstream, timeout_s)
    if isinstance(exc, TransportInvalidURL):
        return _invalid_url_error(upstream)
    return _connection_error(upstream, exc.cause, api_key)


# Transport shared with the adapters of the other protocols (Anthropic Messages, Gemini). They
# differ from Chat Completions in paths, headers and bodies, but not in how a failed HTTP call,
# a slow upstream or a broken event stream becomes an UpstreamError.

RetryAfterFromBody = Callable[[bytes], float | None]


def describe_upstream(url: str) -> str:
    """Name an upstream by scheme, host and port only, for messages and logs."""
    return _describe(url)


def error_detail(data: Mapping[str, Any], api_key: str) -> str:
    """Format an `{"error": {"message", "type", "code"}}` object for a message, redacted."""
    return _error_detail(data, api_key)


async def post_json(
    client: HttpClientLike,
    url: str,
    json_body: Mapping[str, Any],
    headers: Mapping[str, str],
    timeout_s: float,
    api_key: str,
    *,
    retry_after_from_body: RetryAfterFromBody | None = None,
) -> tuple[Any, int]:
    """POST `json_body` and return the parsed JSON response and its HTTP status.

    `timeout_s` is a deadline for the whole call. `retry_after_from_body` reads a retry delay
    from an error body when the response has no Retry-After header.

    Raises UpstreamError for a non-2xx status, a timeout, a connection failure and a body that
    is not valid JSON (kind "bad_response"). Checking the JSON's shape is left to the caller.
    """
    upstream = _describe(url)
    http_client = as_http_client(client)
    try:
        with anyio.fail_after(timeout_s):
            response = await http_client.post_json(url, dict(json_body), headers, timeout_s)
    except TimeoutError as exc:
        raise _timeout_error(upstream, timeout_s) from exc
    except TransportError as exc:
        raise _transport_error(exc, upstream, timeout_s, api_key) from exc

    if not response.is_success:
        raise _status_error_with_body_delay(
            response, response.content, upstream, api_key, retry_after_from_body
        )

    try:
        return response.json(), response.status_code
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UpstreamError(
            "bad_response",
            f"upstream {upstream} returned a body that is not valid JSON: "
            f"{redact(response.text, api_key)!r}",
            status_code=response.status_code,
        ) from exc


async def stream_sse_data(
    client: HttpClientLike,
    url: str,
    json_body: Mapping[str, Any],
    headers: Mapping[str, str],
    timeout_s: float,
    api_key: str,
    *,
    retry_after_from_body: RetryAfterFromBody | None = None,
) -> AsyncIterator[str]:
    """POST `json_body` and yield the data of each server-sent event of the response.

    Raises UpstreamError on the first iteration for a non-2xx status or a JSON body in place of
    an event stream, and at any point for a timeout or a dropped connection, as `stream` does.
    It does not decide whether the stream ended early: the caller checks the protocol's own end
    marker. `timeout_s` bounds connecting and each wait for data. Closing the generator early
    closes the HTTP response.
    """
    upstream = _describe(url)
    try:
        response = await as_http_client(client).open_stream(
            url, dict(json_body), headers, timeout_s
        )
    except TransportError as exc:
        raise _transport_error(exc, upstream, timeout_s, api_key) from exc

    try:
        if not response.is_success:
            error_body = await _read_limited(response, upstream, timeout_s, api_key)
            raise _status_error_with_body_delay(
                response, error_body, upstream, api_key, retry_after_from_body
            )
        if response.headers.get("content-type", "").startswith("application/json"):
            json_body_text = await _read_limited(response, upstream, timeout_s, api_key)
            raise UpstreamError(
                "bad_response",
                f"upstream {upstream} returned JSON instead of an event stream: "
                f"{_error_detail_from_body(json_body_text, api_key)}",
                status_code=response.status_code,
            )

        async with aclosing(_iter_sse_data(response, upstream, timeout_s, api_key)) as events:
            async for data in events:
                yield data
    finally:
        await response.aclose()


def _status_error_with_body_delay(
    response: Response | StreamResponse,
    body: bytes,
    upstream: str,
    api_key: str,
    retry_after_from_body: RetryAfterFromBody | None,
) -> UpstreamError:
    error = _status_error(response, body, upstream, api_key)
    if error.retry_after_s is None and retry_after_from_body is not None:
        error.retry_after_s = retry_after_from_body(body)
    return error
