"""A mock OpenAI-compatible upstream for development, tests and benchmarks.

Run it with `python -m providers.mock_upstream --host 127.0.0.1 --port 9000`, or mount
`create_mock_app()` in-process. It serves `POST /v1/chat/completions` (streaming and not) and
`GET /v1/models` in OpenAI's wire format, and checks `Authorization: Bearer <api_key>`.

Content rule. The reply is the first words of `MOCK_REPLY_WORDS`, joined by single spaces, and
each word is one completion token. The token budget is `max_completion_tokens`, else
`max_tokens`, else unlimited. With the `reasoning` fault, the first `MOCK_REASONING_WORDS` (one
token each) are spent from the budget before the reply words and are reported as
`reasoning_content` and `reasoning_tokens`. `finish_reason` is "length" when the budget cut
either part short, else "stop".

Prompt rule. `prompt_tokens` is the sum over messages of `MOCK_PROMPT_TOKENS_PER_MESSAGE` plus
the number of whitespace-separated words in the message's text. The text is `content` when it
is a string, else the `text` of every part of type "text". Other fields (name, tool calls,
images) count nothing.

Example: {"messages": [{"role": "user", "content": "Say hello"}], "max_tokens": 5} gets
"This is the Tokenport mock" with finish_reason "length" and usage prompt_tokens 5
(3 + 2 words), completion_tokens 5. `expected_usage(body)` computes the same figures.

Faults. Each request may name faults in the header `x-mock-fault` (comma-separated) or as
suffixes of the model name joined by "+" (for example "mock-1+reasoning+cached:4"), and
`POST /_mock/faults` with {"faults": [...], "count": N} adds faults to the next N chat
completion requests. Faults from all three sources apply together:

- `status_500`: HTTP 500 with an OpenAI error body.
- `status_429`: HTTP 429 with `Retry-After: MOCK_RETRY_AFTER_S`.
- `timeout`: waits `timeout_fault_s` before responding, or until the client disconnects.
- `malformed_sse`: streams a `data:` line that is not JSON after the role chunk. A
  non-streaming request gets a 200 body that is not JSON.
- `disconnect_after:K`: streams K content chunks (at most all of them), then drops the
  connection before the finish chunk. A non-streaming request gets half of its body, then the
  connection is dropped.
- `no_usage`: leaves out the usage chunk and the `usage` field.
- `zero_cost_usage`: adds `"cost": 0` to the usage object, as some gateways do.
- `reasoning`: adds reasoning as described above.
- `cached:N`: reports min(N, prompt_tokens) as `prompt_tokens_details.cached_tokens`.
- `chunk_delay_ms:N`: waits N milliseconds before each reasoning and content chunk.

Test support: `GET /_mock/stats` returns request counts and the last request bodies, and
`POST /_mock/reset` clears them and the scheduled faults. The mock keeps all state in memory
of one process.
"""

from __future__ import annotations

import argparse
import asyncio
import hmac
import json
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from providers.usage import Usage

logger = logging.getLogger(__name__)

MOCK_API_KEY = "sk-mock-upstream-0123456789"
MOCK_MODELS = ("mock-1", "mock-reasoner")
MOCK_REPLY_WORDS = tuple("This is the Tokenport mock upstream and every word is one token".split())
MOCK_REASONING_WORDS = tuple("Thinking about the request".split())
MOCK_PROMPT_TOKENS_PER_MESSAGE = 3
MOCK_RETRY_AFTER_S = 7
MOCK_TIMEOUT_FAULT_S = 30.0
MOCK_MAX_RECORDED_BODIES = 20
MOCK_SYSTEM_FINGERPRINT = "fp_tokenport_mock"
MOCK_MODEL_CREATED = 1_700_000_000
MODEL_FAULT_SEPARATOR = "+"
FAULT_HEADER = "x-mock-fault"
# How often the `timeout` fault checks whether the client has gone.
_DISCONNECT_POLL_S = 0.05

_FLAG_FAULTS = frozenset(
    {
        "status_500",
        "status_429",
        "timeout",
        "malformed_sse",
        "no_usage",
        "zero_cost_usage",
        "reasoning",
    }
)
_COUNT_FAULTS = frozenset({"disconnect_after", "cached", "chunk_delay_ms"})


class InvalidFaultError(ValueError):
    """A fault name that the mock does not know, or a fault count that is not a whole number."""


@dataclass(frozen=True)
class Faults:
    """The faults that apply to one request."""

    status_500: bool = False
    status_429: bool = False
    timeout: bool = False
    malformed_sse: bool = False
    no_usage: bool = False
    zero_cost_usage: bool = False
    reasoning: bool = False
    disconnect_after: int | None = None
    cached: int | None = None
    chunk_delay_ms: int = 0


def parse_faults(specs: Iterable[str]) -> Faults:
    """Parse fault names such as "status_500" or "cached:4" into `Faults`.

    Raises InvalidFaultError for an unknown name or a count that is not a whole number >= 0.
    """
    values: dict[str, Any] = {}
    for raw_spec in specs:
        spec = raw_spec.strip()
        if not spec:
            continue

        name, has_count, count_text = spec.partition(":")
        if name in _FLAG_FAULTS and not has_count:
            values[name] = True
        elif name in _COUNT_FAULTS and has_count:
            if not count_text.isdigit():
                raise InvalidFaultError(
                    f"mock fault {spec!r} needs a whole number >= 0 after the colon"
                )
            values[name] = int(count_text)
        else:
            known = sorted(_FLAG_FAULTS) + sorted(f"{name}:N" for name in _COUNT_FAULTS)
            raise InvalidFaultError(
                f"unknown mock fault {spec!r}; known faults: {', '.join(known)}"
            )
    return Faults(**values)


def split_model(model: str) -> tuple[str, list[str]]:
    """Split "mock-1+reasoning+cached:4" into ("mock-1", ["reasoning", "cached:4"])."""
    base, *fault_specs = model.split(MODEL_FAULT_SEPARATOR)
    return base, fault_specs


def count_prompt_words(messages: Iterable[Mapping[str, Any]]) -> int:
    """Apply the prompt rule of this module: per message, a fixed overhead plus its text words."""
    total = 0
    for message in messages:
        total += MOCK_PROMPT_TOKENS_PER_MESSAGE
        content = message.get("content")
        if isinstance(content, str):
            total += len(content.split())
        elif isinstance(content, list):
            for part in content:
                if isinstance(part, Mapping) and part.get("type") == "text":
                    total += len(str(part.get("text", "")).split())
    return total


@dataclass(frozen=True)
class _Reply:
    reasoning_words: tuple[str, ...]
    content_words: tuple[str, ...]
    finish_reason: str
    usage: Usage


def _plan_reply(body: Mapping[str, Any], faults: Faults) -> _Reply:
    budget = body.get("max_completion_tokens")
    if budget is None:
        budget = body.get("max_tokens")

    reasoning_words = MOCK_REASONING_WORDS if faults.reasoning else ()
    if budget is not None:
        reasoning_words = reasoning_words[:budget]
        content_words = MOCK_REPLY_WORDS[: budget - len(reasoning_words)]
    else:
        content_words = MOCK_REPLY_WORDS

    truncated = len(content_words) < len(MOCK_REPLY_WORDS) or (
        faults.reasoning and len(reasoning_words) < len(MOCK_REASONING_WORDS)
    )
    prompt_tokens = count_prompt_words(body["messages"])
    usage = Usage(
        prompt_tokens=prompt_tokens,
        completion_tokens=len(reasoning_words) + len(content_words),
        cached_prompt_tokens=min(faults.cached or 0, prompt_tokens),
        reasoning_tokens=len(reasoning_words),
    )
    return _Reply(
        reasoning_words=reasoning_words,
        content_words=content_words,
        finish_reason="length" if truncated else "stop",
        usage=usage,
    )


def expected_usage(body: Mapping[str, Any], faults: Iterable[str] = ()) -> Usage:
    """Return the usage the mock reports for `body`, with the faults of its model and `faults`."""
    _, model_faults = split_model(str(body.get("model", "")))
    return _plan_reply(body, parse_faults([*model_faults, *faults])).usage


def expected_content(body: Mapping[str, Any], faults: Iterable[str] = ()) -> str:
    """Return the assistant content the mock sends for `body`."""
    _, model_faults = split_model(str(body.get("model", "")))
    return " ".join(_plan_reply(body, parse_faults([*model_faults, *faults])).content_words)


def usage_to_openai(usage: Usage, *, zero_cost: bool = False) -> dict[str, Any]:
    """Render a `Usage` as OpenAI's Chat Completions `usage` object."""
    rendered: dict[str, Any] = {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cached_prompt_tokens, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": usage.reasoning_tokens,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }
    if zero_cost:
        rendered["cost"] = 0
    return rendered


@dataclass
class MockState:
    """Request counters, recorded bodies and scheduled faults of one mock app."""

    requests: int = 0
    models_requests: int = 0
    unauthorized: int = 0
    streams_started: int = 0
    streams_completed: int = 0
    streams_aborted: int = 0
    completion_ids: int = 0
    last_bodies: deque[Any] = field(default_factory=lambda: deque(maxlen=MOCK_MAX_RECORDED_BODIES))
    last_faults: deque[list[str]] = field(
        default_factory=lambda: deque(maxlen=MOCK_MAX_RECORDED_BODIES)
    )
    # Each entry is [fault names, requests left]. Requests use up the oldest entry first.
    scheduled_faults: deque[list[Any]] = field(default_factory=deque)

    def take_scheduled_faults(self) -> list[str]:
        if not self.scheduled_faults:
            return []
        entry = self.scheduled_faults[0]
        entry[1] -= 1
        if entry[1] <= 0:
            self.scheduled_faults.popleft()
        return list(entry[0])

    def snapshot(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "models_requests": self.models_requests,
            "unauthorized": self.unauthorized,
            "streams_started": self.streams_started,
            "streams_completed": self.streams_completed,
            "streams_aborted": self.streams_aborted,
            "last_bodies": list(self.last_bodies),
            "last_faults": list(self.last_faults),
            "scheduled_faults": [
                {"faults": names, "count": count} for names, count in self.scheduled_faults
            ],
        }


def create_mock_app(
    api_key: str | None = MOCK_API_KEY, *, timeout_fault_s: float = MOCK_TIMEOUT_FAULT_S
) -> Starlette:
    """Create the mock upstream app. With `api_key=None` any bearer credential is accepted."""
    state = MockState()

    async def chat_completions(request: Request) -> Response:
        state.requests += 1
        denied = _check_credential(request, api_key)
        if denied is not None:
            state.unauthorized += 1
            return denied

        try:
            body = json.loads(await request.body())
        except (json.JSONDecodeError, UnicodeDecodeError):
            state.last_bodies.append(None)
            state.last_faults.append([])
            return _invalid_request("The request body is not valid JSON.", None)
        state.last_bodies.append(body)

        invalid = _validate_body(body)
        if invalid is not None:
            state.last_faults.append([])
            return invalid

        # Scheduled faults are used up only by requests that pass validation.
        base_model, model_faults = split_model(body["model"])
        fault_specs = [
            *request.headers.get(FAULT_HEADER, "").split(","),
            *model_faults,
            *state.take_scheduled_faults(),
        ]
        applied = [spec.strip() for spec in fault_specs if spec.strip()]
        state.last_faults.append(applied)
        try:
            faults = parse_faults(applied)
        except InvalidFaultError as exc:
            return _invalid_request(str(exc), FAULT_HEADER)

        if faults.timeout:
            await _wait_or_disconnect(request, timeout_fault_s)
        if faults.status_500:
            return _error_response(
                500,
                "The mock upstream failed on purpose (fault status_500).",
                "server_error",
                None,
            )
        if faults.status_429:
            return _error_response(
                429,
                "Rate limit reached for requests (mock fault status_429).",
                "requests",
                "rate_limit_exceeded",
                headers={"retry-after": str(MOCK_RETRY_AFTER_S)},
            )

        reply = _plan_reply(body, faults)
        state.completion_ids += 1
        completion_id = f"chatcmpl-mock{state.completion_ids:010d}"
        created = int(time.time())
        logger.debug(
            "Responding with %s for model %r, faults %s", completion_id, base_model, applied
        )

        if body.get("stream") is True:
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            events = _stream_events(
                state, reply, faults, completion_id, created, base_model, include_usage
            )
            return StreamingResponse(events, media_type="text/event-stream")
        return _completion_response(reply, faults, completion_id, created, base_model)

    async def list_models(request: Request) -> Response:
        state.models_requests += 1
        denied = _check_credential(request, api_key)
        if denied is not None:
            state.unauthorized += 1
            return denied
        data = [
            {
                "id": model,
                "object": "model",
                "created": MOCK_MODEL_CREATED,
                "owned_by": "tokenport-mock",
            }
            for model in MOCK_MODELS
        ]
        return JSONResponse({"object": "list", "data": data})

    async def stats(request: Request) -> Response:
        return JSONResponse(state.snapshot())

    async def reset(request: Request) -> Response:
        fresh = MockState()
        for name in MockState.__dataclass_fields__:
            setattr(state, name, getattr(fresh, name))
        return JSONResponse(state.snapshot())

    async def schedule_faults(request: Request) -> Response:
        try:
            payload = json.loads(await request.body())
        except (json.JSONDecodeError, UnicodeDecodeError):
            return _invalid_request("The request body is not valid JSON.", None)
        if not isinstance(payload, dict):
            return _invalid_request("The request body must be a JSON object.", None)

        names = payload.get("faults")
        count = payload.get("count", 1)
        if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
            return _invalid_request("faults must be a list of fault names.", "faults")
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            return _invalid_request("count must be an integer >= 1.", "count")
        try:
            parse_faults(names)
        except InvalidFaultError as exc:
            return _invalid_request(str(exc), "faults")

        state.scheduled_faults.append([names, count])
        return JSONResponse(state.snapshot())

    routes = [
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        Route("/v1/models", list_models, methods=["GET"]),
        Route("/_mock/stats", stats, methods=["GET"]),
        Route("/_mock/reset", reset, methods=["POST"]),
        Route("/_mock/faults", schedule_faults, methods=["POST"]),
    ]
    app = Starlette(routes=routes)
    app.state.mock = state
    # Adds a filter to the process-wide "uvicorn.error" logger, once per process.
    _quiet_deliberate_disconnects()
    return app


def _check_credential(request: Request, api_key: str | None) -> Response | None:
    if api_key is None:
        return None
    authorization = request.headers.get("authorization", "")
    scheme, _, presented = authorization.partition(" ")
    if scheme.lower() == "bearer" and hmac.compare_digest(presented.encode(), api_key.encode()):
        return None
    # Unlike OpenAI, which masks all but the last characters, the mock echoes the whole
    # credential, so that tests can check that clients redact it.
    message = (
        f"Incorrect API key provided: {presented}."
        if presented
        else "You didn't provide an API key in an Authorization: Bearer header."
    )
    logger.info("Rejected %s %s: missing or wrong API key", request.method, request.url.path)
    return _error_response(401, message, "invalid_request_error", "invalid_api_key")


def _validate_body(body: object) -> Response | None:
    if not isinstance(body, dict):
        return _invalid_request("The request body must be a JSON object.", None)
    if not isinstance(body.get("model"), str) or not body["model"]:
        return _invalid_request("model is missing or not a non-empty string.", "model")

    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return _invalid_request("messages must be a non-empty list.", "messages")
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            return _invalid_request(
                f"messages[{index}] must be an object with a string role.", f"messages[{index}]"
            )

    for name in ("max_tokens", "max_completion_tokens"):
        value = body.get(name)
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or value < 1
        ):
            return _invalid_request(f"{name} must be an integer >= 1, got {value!r}.", name)
    if body.get("n") not in (None, 1):
        return _invalid_request("The mock upstream supports only n = 1.", "n")
    return None


def _error_response(
    status_code: int,
    message: str,
    error_type: str,
    code: str | None,
    *,
    param: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    body = {"error": {"message": message, "type": error_type, "param": param, "code": code}}
    return JSONResponse(body, status_code=status_code, headers=headers)


def _invalid_request(message: str, param: str | None) -> JSONResponse:
    logger.info("Rejected an invalid request (param %s): %s", param, message)
    return _error_response(400, message, "invalid_request_error", None, param=param)


async def _wait_or_disconnect(request: Request, duration_s: float) -> None:
    deadline = time.monotonic() + duration_s
    while time.monotonic() < deadline:
        if await request.is_disconnected():
            return
        await asyncio.sleep(_DISCONNECT_POLL_S)


def _completion_response(
    reply: _Reply, faults: Faults, completion_id: str, created: int, model: str
) -> Response:
    if faults.malformed_sse:
        return Response(
            b'{"id": "' + completion_id.encode() + b'", "object": "chat.compl',
            media_type="application/json",
        )

    message: dict[str, Any] = {
        "role": "assistant",
        "content": " ".join(reply.content_words),
        "refusal": None,
        "annotations": [],
    }
    if faults.reasoning:
        message["reasoning_content"] = " ".join(reply.reasoning_words)
    body: dict[str, Any] = {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {"index": 0, "message": message, "logprobs": None, "finish_reason": reply.finish_reason}
        ],
        "service_tier": "default",
        "system_fingerprint": MOCK_SYSTEM_FINGERPRINT,
    }
    if not faults.no_usage:
        body["usage"] = usage_to_openai(reply.usage, zero_cost=faults.zero_cost_usage)

    encoded = _encode(body)
    if faults.disconnect_after is not None:
        return _DroppedResponse(encoded)
    return Response(encoded, media_type="application/json")


class _MockDisconnect(Exception):
    """Raised inside a response on purpose, so the server drops the connection."""


class _DroppedConnectionFilter(logging.Filter):
    """Drops uvicorn's "Exception in ASGI application" record for a deliberate disconnect."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, BaseExceptionGroup):
            return not all(isinstance(inner, _MockDisconnect) for inner in exc.exceptions)
        return not isinstance(exc, _MockDisconnect)


def _quiet_deliberate_disconnects() -> None:
    server_logger = logging.getLogger("uvicorn.error")
    if not any(isinstance(item, _DroppedConnectionFilter) for item in server_logger.filters):
        server_logger.addFilter(_DroppedConnectionFilter())


class _DroppedResponse(Response):
    """Announces the whole body in Content-Length, sends half of it, then drops the connection."""

    def __init__(self, content: bytes) -> None:
        super().__init__(content, media_type="application/json")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        half = self.body[: len(self.body) // 2]
        await send({"type": "http.response.body", "body": half, "more_body": True})
        raise _MockDisconnect("mock fault disconnect_after: dropping the connection")


async def _stream_events(
    state: MockState,
    reply: _Reply,
    faults: Faults,
    completion_id: str,
    created: int,
    model: str,
    include_usage: bool,
) -> AsyncIterator[bytes]:
    report_usage = include_usage and not faults.no_usage
    delay_s = faults.chunk_delay_ms / 1000

    def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
        event: dict[str, Any] = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "service_tier": "default",
            "system_fingerprint": MOCK_SYSTEM_FINGERPRINT,
            "choices": [
                {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
            ],
        }
        # OpenAI sends "usage": null in every chunk but the last when include_usage is set.
        if report_usage:
            event["usage"] = None
        return b"data: " + _encode(event) + b"\n\n"

    state.streams_started += 1
    completed = False
    try:
        yield chunk({"role": "assistant", "content": "", "refusal": None})
        if faults.malformed_sse:
            yield b'data: {"id": "' + completion_id.encode() + b'", "choices": [{"delta": \n\n'

        for index, word in enumerate(reply.reasoning_words):
            if delay_s:
                await asyncio.sleep(delay_s)
            yield chunk({"reasoning_content": word if index == 0 else " " + word})

        for index, word in enumerate(reply.content_words):
            if faults.disconnect_after is not None and index >= faults.disconnect_after:
                break
            if delay_s:
                await asyncio.sleep(delay_s)
            yield chunk({"content": word if index == 0 else " " + word})

        if faults.disconnect_after is not None:
            raise _MockDisconnect("mock fault disconnect_after: dropping the connection")

        yield chunk({}, reply.finish_reason)
        if report_usage:
            usage_event = {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "service_tier": "default",
                "system_fingerprint": MOCK_SYSTEM_FINGERPRINT,
                "choices": [],
                "usage": usage_to_openai(reply.usage, zero_cost=faults.zero_cost_usage),
            }
            yield b"data: " + _encode(usage_event) + b"\n\n"
        yield b"data: [DONE]\n\n"
        completed = True
    finally:
        if completed:
            state.streams_completed += 1
        else:
            state.streams_aborted += 1


def _encode(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    parser = argparse.ArgumentParser(
        prog="python -m providers.mock_upstream",
        description="Run the mock OpenAI-compatible upstream.",
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default: %(default)s)"
    )
    parser.add_argument(
        "--port", type=int, default=9000, help="TCP port to listen on (default: %(default)s)"
    )
    parser.add_argument(
        "--api-key",
        default=MOCK_API_KEY,
        help=(
            "bearer credential that clients must send, or an empty string to accept any "
            "(default: the MOCK_API_KEY constant)"
        ),
    )
    parser.add_argument(
        "--timeout-fault-s",
        type=float,
        default=MOCK_TIMEOUT_FAULT_S,
        help="seconds that the timeout fault waits before responding (default: %(default)s)",
    )
    parser.add_argument(
        "--log-level", default="warning", help="uvicorn log level (default: %(default)s)"
    )
    args = parser.parse_args(argv)

    logging.basicConfig(level=args.log_level.upper())
    app = create_mock_app(args.api_key or None, timeout_fault_s=args.timeout_fault_s)
    logger.info("Starting the mock upstream on http://%s:%s/v1", args.host, args.port)
    # uvicorn logs its own shutdown lines, and on SIGTERM it ends the process after them.
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, access_log=False)


if __name__ == "__main__":
    main()
