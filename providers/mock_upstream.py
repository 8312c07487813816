"""A mock upstream for development, tests and benchmarks, speaking three protocols.

Run it with `python -m providers.mock_upstream --host 127.0.0.1 --port 9000`, or mount
`create_mock_app()` in-process. One server serves, streaming and not:

- OpenAI Chat Completions: `POST /v1/chat/completions` and `GET /v1/models`, checking
  `Authorization: Bearer <api_key>`.
- Anthropic Messages: `POST /v1/messages`, checking `x-api-key` (or `Authorization: Bearer`,
  which the anthropic SDK 2.17 sends) and requiring an `anthropic-version` header.
- Gemini: `POST /v1beta/models/{model}:generateContent` and
  `POST /v1beta/models/{model}:streamGenerateContent?alt=sse`, checking `x-goog-api-key` (or the
  `key` query parameter).

Content rule. The reply is the first words of `MOCK_REPLY_WORDS`, joined by single spaces, and
each word is one completion token. The token budget is `max_completion_tokens`, else
`max_tokens` (OpenAI), `max_tokens` (Anthropic) or `generationConfig.maxOutputTokens` (Gemini),
else unlimited. With the `reasoning` fault, the first `MOCK_REASONING_WORDS` (one token each)
are spent from the budget before the reply words, and are sent as `reasoning_content`, a
thinking block or thought parts. Stop sequences (`stop`, `stop_sequences` or
`generationConfig.stopSequences`) end the reply before the first word whose addition would make
the text contain one of them. The finish reason is "length" when the budget cut either part
short, else "stop" (Anthropic: "stop_sequence" when a stop sequence ended it, else "end_turn").

Tool rule. A request gets a tool call in place of text when it defines tools, does not set the
tool choice to none, and ends with a user message whose text contains the word "weather" (any
case). The call is of the first tool, with the arguments `MOCK_TOOL_ARGUMENTS`. The call costs
`MOCK_TOOL_CALL_TOKENS` completion tokens after any reasoning words and is never cut by the
budget. The finish reason is "tool_calls" (Anthropic "tool_use", Gemini "STOP"). A last message
that only carries tool results has no text, so the reply after a tool call is text again.

Choices rule. OpenAI `n` and Gemini `candidateCount` ask for that many identical choices; the
usage counts the prompt once and the completion once per choice.

Prompt rule. `prompt_tokens` is the sum over messages of `MOCK_PROMPT_TOKENS_PER_MESSAGE` plus
the number of whitespace-separated words in the message's text. The text is `content` when it
is a string, else the `text` of every part or block of type "text" (Gemini: every part with a
`text`). Anthropic's `system` and Gemini's `systemInstruction` count as one more message. Other
fields (names, tool calls, tool results, images) count nothing.

Example: {"messages": [{"role": "user", "content": "Say hello"}], "max_tokens": 5} gets
"This is the Tokenport mock" with finish_reason "length" and usage prompt_tokens 5
(3 + 2 words), completion_tokens 5. `expected_usage(body)` computes the same figures.

Usage conventions. OpenAI reports cache reads in `prompt_tokens_details.cached_tokens` (and,
only with the `cache_write` fault, writes in `prompt_tokens_details.cache_write_tokens`).
Anthropic reports `input_tokens` without cache reads and writes, which go in
`cache_read_input_tokens` and `cache_creation_input_tokens`, and reasoning in
`output_tokens_details.thinking_tokens`. Gemini reports `promptTokenCount` with the cached
tokens included, `cachedContentTokenCount`, `candidatesTokenCount` without thoughts and
`thoughtsTokenCount`.

Faults. Each request may name faults in the header `x-mock-fault` (comma-separated) or as
suffixes of the model name joined by "+" (for example "mock-1+reasoning+cached:4"), and
`POST /_mock/faults` with {"faults": [...], "count": N} adds faults to the next N completion
requests of any protocol. Faults from all three sources apply together:

- `status_500`: HTTP 500 with the protocol's error body.
- `status_429`: HTTP 429 with `Retry-After: MOCK_RETRY_AFTER_S` (Gemini also puts the delay in
  a RetryInfo detail of the body).
- `timeout`: waits `timeout_fault_s` before responding, or until the client disconnects.
- `redirect`: HTTP 307 with `Location` set to the request's own URL, and no body. A client that
  follows it sends the same request again, which succeeds when the fault was scheduled with
  `POST /_mock/faults` and no other source names it.
- `malformed_sse`: streams a `data:` line that is not JSON after the first event. A
  non-streaming request gets a 200 body that is not JSON.
- `disconnect_after:K`: streams K content chunks (text words or tool argument pieces, at most
  all of them), then drops the connection before the finish. A non-streaming request gets half
  of its body, then the connection is dropped.
- `stall_after:K`: streams K content chunks, at most all of them, then sends nothing for
  `timeout_fault_s` and drops the connection. A non-streaming request is unaffected.
- `stream_error`: streams one content chunk, then an error event in the protocol's form
  (OpenAI error object, Anthropic `error` event of type overloaded_error, Gemini error object
  with code 503), then ends. A non-streaming request is unaffected.
- `no_usage`: leaves out every usage report.
- `zero_cost_usage`: adds `"cost": 0` to the OpenAI usage object, as some gateways do.
- `reasoning`: adds reasoning as described above.
- `cached:N`: reports min(N, prompt tokens) prompt tokens as read from the cache.
- `cache_write:N`: reports min(N, prompt tokens not read from the cache) as written to it
  (Gemini has no field for it and ignores it).
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
import re
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
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
MOCK_TOOL_ARGUMENTS: dict[str, Any] = {"location": "Paris"}
MOCK_TOOL_CALL_TOKENS = 8
# Tool arguments are streamed in two pieces, split at this character offset of their JSON.
MOCK_TOOL_ARGUMENTS_SPLIT = 13
MOCK_THOUGHT_SIGNATURE = "bW9jay10aG91Z2h0LXNpZ25hdHVyZQ=="
MOCK_RETRY_AFTER_S = 7
MOCK_TIMEOUT_FAULT_S = 30.0
MOCK_MAX_RECORDED_BODIES = 20
MOCK_MAX_CHOICES = 8
MOCK_SYSTEM_FINGERPRINT = "fp_tokenport_mock"
MOCK_MODEL_CREATED = 1_700_000_000
MODEL_FAULT_SEPARATOR = "+"
FAULT_HEADER = "x-mock-fault"
# How often the `timeout` fault checks whether the client has gone.
_DISCONNECT_POLL_S = 0.05
_WEATHER = re.compile(r"\bweather\b", re.IGNORECASE)

_FLAG_FAULTS = frozenset(
    {
        "status_500",
        "status_429",
        "timeout",
        "redirect",
        "malformed_sse",
        "stream_error",
        "no_usage",
        "zero_cost_usage",
        "reasoning",
    }
)
_COUNT_FAULTS = frozenset(
    {"disconnect_after", "stall_after", "cached", "cache_write", "chunk_delay_ms"}
)


class InvalidFaultError(ValueError):
    """A fault name that the mock does not know, or a fault count that is not a whole number."""


@dataclass(frozen=True)
class Faults:
    """The faults that apply to one request."""

    status_500: bool = False
    status_429: bool = False
    timeout: bool = False
    redirect: bool = False
    malformed_sse: bool = False
    stream_error: bool = False
    no_usage: bool = False
    zero_cost_usage: bool = False
    reasoning: bool = False
    disconnect_after: int | None = None
    stall_after: int | None = None
    cached: int | None = None
    cache_write: int | None = None
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
        total += len(_message_text(message.get("content")).split())
    return total


def _message_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        return ""
    return " ".join(
        str(part.get("text", ""))
        for part in content
        if isinstance(part, Mapping) and part.get("type") == "text"
    )


# The reply rules, shared by the three protocols.


@dataclass(frozen=True)
class _MockRequest:
    """The fields of a request that the reply rules read, whatever its protocol."""

    prompt_tokens: int
    budget: int | None = None
    stop_sequences: tuple[str, ...] = ()
    tool_name: str | None = None
    choices: int = 1


@dataclass(frozen=True)
class _Reply:
    reasoning_words: tuple[str, ...]
    content_words: tuple[str, ...]
    # The tool's name and arguments when the tool rule applies.
    tool_call: tuple[str, dict[str, Any]] | None
    # "stop", "length", "stop_sequence" or "tool_calls", translated by each protocol.
    finish: str
    stop_sequence: str | None
    choices: int
    usage: Usage

    @property
    def content(self) -> str:
        return " ".join(self.content_words)

    @property
    def tool_arguments_json(self) -> str:
        assert self.tool_call is not None
        return json.dumps(self.tool_call[1])


def _plan_reply(request: _MockRequest, faults: Faults) -> _Reply:
    budget = request.budget
    reasoning_words = MOCK_REASONING_WORDS if faults.reasoning else ()
    if budget is not None:
        reasoning_words = reasoning_words[:budget]
    reasoning_cut = faults.reasoning and len(reasoning_words) < len(MOCK_REASONING_WORDS)

    tool_call = None
    content_words: tuple[str, ...] = ()
    stop_sequence = None
    if request.tool_name is not None:
        tool_call = (request.tool_name, dict(MOCK_TOOL_ARGUMENTS))
        finish = "tool_calls"
        per_choice = len(reasoning_words) + MOCK_TOOL_CALL_TOKENS
    else:
        candidates, stop_sequence = _cut_at_stop_sequence(request.stop_sequences)
        content_words = candidates
        if budget is not None:
            content_words = candidates[: budget - len(reasoning_words)]
        if reasoning_cut or len(content_words) < len(candidates):
            finish = "length"
            stop_sequence = None
        else:
            finish = "stop_sequence" if stop_sequence is not None else "stop"
        per_choice = len(reasoning_words) + len(content_words)

    cached = min(faults.cached or 0, request.prompt_tokens)
    written = min(faults.cache_write or 0, request.prompt_tokens - cached)
    usage = Usage(
        prompt_tokens=request.prompt_tokens,
        completion_tokens=per_choice * request.choices,
        cached_prompt_tokens=cached,
        cache_write_tokens=written,
        reasoning_tokens=len(reasoning_words) * request.choices,
    )
    return _Reply(
        reasoning_words=reasoning_words,
        content_words=content_words,
        tool_call=tool_call,
        finish=finish,
        stop_sequence=stop_sequence,
        choices=request.choices,
        usage=usage,
    )


def _cut_at_stop_sequence(stop_sequences: tuple[str, ...]) -> tuple[tuple[str, ...], str | None]:
    for count in range(1, len(MOCK_REPLY_WORDS) + 1):
        text = " ".join(MOCK_REPLY_WORDS[:count])
        for sequence in stop_sequences:
            if sequence and sequence in text:
                return MOCK_REPLY_WORDS[: count - 1], sequence
    return MOCK_REPLY_WORDS, None


def _asks_for_weather(text: str) -> bool:
    return _WEATHER.search(text) is not None


def _openai_request(body: Mapping[str, Any]) -> _MockRequest:
    budget = body.get("max_completion_tokens")
    if budget is None:
        budget = body.get("max_tokens")

    tool_name = None
    tools = body.get("tools") or []
    last = body["messages"][-1]
    if tools and body.get("tool_choice") != "none" and last.get("role") == "user":
        if _asks_for_weather(_message_text(last.get("content"))):
            tool_name = str((tools[0].get("function") or {}).get("name"))
    return _MockRequest(
        prompt_tokens=count_prompt_words(body["messages"]),
        budget=budget,
        stop_sequences=_stop_sequences(body.get("stop")),
        tool_name=tool_name,
        choices=body.get("n") or 1,
    )


def _anthropic_request(body: Mapping[str, Any]) -> _MockRequest:
    messages = body["messages"]
    prompt_tokens = count_prompt_words(messages)
    system = body.get("system")
    if system:
        prompt_tokens += count_prompt_words([{"content": system}])

    tool_name = None
    tools = body.get("tools") or []
    choice = body.get("tool_choice") or {}
    last = messages[-1]
    if tools and choice.get("type") != "none" and last.get("role") == "user":
        if _asks_for_weather(_message_text(last.get("content"))):
            tool_name = str(tools[0].get("name"))
    return _MockRequest(
        prompt_tokens=prompt_tokens,
        budget=body.get("max_tokens"),
        stop_sequences=_stop_sequences(body.get("stop_sequences")),
        tool_name=tool_name,
    )


def _gemini_request(body: Mapping[str, Any]) -> _MockRequest:
    contents = body["contents"]
    prompt_tokens = sum(
        MOCK_PROMPT_TOKENS_PER_MESSAGE + len(_gemini_text(content).split()) for content in contents
    )
    if body.get("systemInstruction"):
        prompt_tokens += MOCK_PROMPT_TOKENS_PER_MESSAGE
        prompt_tokens += len(_gemini_text(body["systemInstruction"]).split())

    config = body.get("generationConfig") or {}
    mode = ((body.get("toolConfig") or {}).get("functionCallingConfig") or {}).get("mode")
    declarations = [
        declaration
        for tool in body.get("tools") or []
        for declaration in tool.get("functionDeclarations") or []
    ]
    tool_name = None
    last = contents[-1]
    if declarations and mode != "NONE" and last.get("role", "user") == "user":
        if _asks_for_weather(_gemini_text(last)):
            tool_name = str(declarations[0].get("name"))
    return _MockRequest(
        prompt_tokens=prompt_tokens,
        budget=config.get("maxOutputTokens"),
        stop_sequences=_stop_sequences(config.get("stopSequences")),
        tool_name=tool_name,
        choices=config.get("candidateCount") or 1,
    )


def _gemini_text(content: Mapping[str, Any]) -> str:
    return " ".join(
        str(part["text"])
        for part in content.get("parts") or []
        if isinstance(part, Mapping) and isinstance(part.get("text"), str)
    )


def _stop_sequences(stop: Any) -> tuple[str, ...]:
    if isinstance(stop, str):
        return (stop,)
    if isinstance(stop, list):
        return tuple(item for item in stop if isinstance(item, str))
    return ()


_REQUEST_READERS: dict[str, Callable[[Mapping[str, Any]], _MockRequest]] = {
    "openai": _openai_request,
    "anthropic": _anthropic_request,
    "gemini": _gemini_request,
}


def _expected_reply(
    body: Mapping[str, Any], faults: Iterable[str], protocol: str, model: str | None
) -> _Reply:
    _, model_faults = split_model(str(model if model is not None else body.get("model", "")))
    return _plan_reply(_REQUEST_READERS[protocol](body), parse_faults([*model_faults, *faults]))


def expected_usage(
    body: Mapping[str, Any],
    faults: Iterable[str] = (),
    *,
    protocol: str = "openai",
    model: str | None = None,
) -> Usage:
    """Return the usage the mock reports for `body`, with the faults of its model and `faults`.

    `protocol` is "openai", "anthropic" or "gemini". Gemini bodies carry no model, so pass the
    model of the URL as `model` to apply its fault suffixes.
    """
    return _expected_reply(body, faults, protocol, model).usage


def expected_content(
    body: Mapping[str, Any],
    faults: Iterable[str] = (),
    *,
    protocol: str = "openai",
    model: str | None = None,
) -> str:
    """Return the assistant text the mock sends for `body` ("" for a tool call)."""
    return _expected_reply(body, faults, protocol, model).content


def usage_to_openai(usage: Usage, *, zero_cost: bool = False) -> dict[str, Any]:
    """Render a `Usage` as OpenAI's Chat Completions `usage` object."""
    prompt_details: dict[str, Any] = {
        "cached_tokens": usage.cached_prompt_tokens,
        "audio_tokens": 0,
    }
    if usage.cache_write_tokens:
        prompt_details["cache_write_tokens"] = usage.cache_write_tokens
    rendered: dict[str, Any] = {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
        "prompt_tokens_details": prompt_details,
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


def usage_to_anthropic(usage: Usage) -> dict[str, Any]:
    """Render a `Usage` as Anthropic's `usage` object, input_tokens without cache counts."""
    rendered: dict[str, Any] = {
        "input_tokens": usage.uncached_prompt_tokens,
        "cache_creation_input_tokens": usage.cache_write_tokens,
        "cache_read_input_tokens": usage.cached_prompt_tokens,
        "output_tokens": usage.completion_tokens,
    }
    if usage.reasoning_tokens:
        rendered["output_tokens_details"] = {"thinking_tokens": usage.reasoning_tokens}
    return rendered


def usage_to_gemini(usage: Usage) -> dict[str, Any]:
    """Render a `Usage` as Gemini's `usageMetadata`, whose prompt count includes cached tokens."""
    rendered: dict[str, Any] = {
        "promptTokenCount": usage.prompt_tokens,
        "candidatesTokenCount": usage.completion_tokens - usage.reasoning_tokens,
        "totalTokenCount": usage.total_tokens,
    }
    if usage.cached_prompt_tokens:
        rendered["cachedContentTokenCount"] = usage.cached_prompt_tokens
    if usage.reasoning_tokens:
        rendered["thoughtsTokenCount"] = usage.reasoning_tokens
    return rendered


# State and the app.


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
    requests_by_protocol: dict[str, int] = field(default_factory=dict)
    last_bodies: deque[Any] = field(default_factory=lambda: deque(maxlen=MOCK_MAX_RECORDED_BODIES))
    last_faults: deque[list[str]] = field(
        default_factory=lambda: deque(maxlen=MOCK_MAX_RECORDED_BODIES)
    )
    last_headers: deque[dict[str, str]] = field(
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

    def next_id(self) -> int:
        self.completion_ids += 1
        return self.completion_ids

    def snapshot(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "requests_by_protocol": dict(self.requests_by_protocol),
            "models_requests": self.models_requests,
            "unauthorized": self.unauthorized,
            "streams_started": self.streams_started,
            "streams_completed": self.streams_completed,
            "streams_aborted": self.streams_aborted,
            "last_bodies": list(self.last_bodies),
            "last_faults": list(self.last_faults),
            "last_headers": list(self.last_headers),
            "scheduled_faults": [
                {"faults": names, "count": count} for names, count in self.scheduled_faults
            ],
        }


# Headers recorded per request, so tests can check what an adapter sent. Credentials are left
# out on purpose.
_RECORDED_HEADERS = ("anthropic-version", "accept", "content-type")


@dataclass(frozen=True)
class _Protocol:
    """The credential check, validation, error body and response of one protocol in the mock."""

    name: str
    check_credential: Callable[[Request, str | None], Response | None]
    validate: Callable[[Request, Any], Response | None]
    error: Callable[..., Response]
    respond: Callable[[_Call], Response]


@dataclass(frozen=True)
class _Call:
    """One validated completion request with its faults and planned reply."""

    state: MockState
    body: Mapping[str, Any]
    model: str
    faults: Faults
    reply: _Reply
    # How long the `timeout` and `stall_after` faults wait.
    timeout_fault_s: float
    streaming: bool
    number: int
    created: int


def create_mock_app(
    api_key: str | None = MOCK_API_KEY, *, timeout_fault_s: float = MOCK_TIMEOUT_FAULT_S
) -> Starlette:
    """Create the mock upstream app. With `api_key=None` any credential is accepted."""
    state = MockState()

    async def handle(
        request: Request, protocol: _Protocol, model: str | None, streaming: bool
    ) -> Response:
        state.requests += 1
        state.requests_by_protocol[protocol.name] = (
            state.requests_by_protocol.get(protocol.name, 0) + 1
        )
        denied = protocol.check_credential(request, api_key)
        if denied is not None:
            state.unauthorized += 1
            return denied

        state.last_headers.append(
            {name: request.headers[name] for name in _RECORDED_HEADERS if name in request.headers}
        )
        try:
            body = json.loads(await request.body())
        except (json.JSONDecodeError, UnicodeDecodeError):
            state.last_bodies.append(None)
            state.last_faults.append([])
            return protocol.error(400, "The request body is not valid JSON.", None)
        state.last_bodies.append(body)

        invalid = protocol.validate(request, body)
        if invalid is not None:
            state.last_faults.append([])
            return invalid

        # Scheduled faults are used up only by requests that pass validation.
        base_model, model_faults = split_model(model if model is not None else body["model"])
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
            return protocol.error(400, str(exc), FAULT_HEADER)

        if faults.timeout:
            await _wait_or_disconnect(request, timeout_fault_s)
        if faults.redirect:
            return Response(status_code=307, headers={"location": str(request.url)})
        if faults.status_500:
            return protocol.error(
                500, "The mock upstream failed on purpose (fault status_500).", None
            )
        if faults.status_429:
            return protocol.error(
                429,
                "Rate limit reached for requests (mock fault status_429).",
                None,
                headers={"retry-after": str(MOCK_RETRY_AFTER_S)},
            )

        reader = _REQUEST_READERS[protocol.name]
        call = _Call(
            state=state,
            body=body,
            model=base_model,
            faults=faults,
            reply=_plan_reply(reader(body), faults),
            timeout_fault_s=timeout_fault_s,
            streaming=streaming,
            number=state.next_id(),
            created=int(time.time()),
        )
        logger.debug(
            "Responding to %s request %s for model %r, faults %s",
            protocol.name,
            call.number,
            base_model,
            applied,
        )
        return protocol.respond(call)

    async def chat_completions(request: Request) -> Response:
        body_stream = await _peek_stream_flag(request)
        return await handle(request, OPENAI, None, body_stream)

    async def messages(request: Request) -> Response:
        return await handle(request, ANTHROPIC, None, await _peek_stream_flag(request))

    async def generate_content(request: Request) -> Response:
        model, _, method = request.path_params["target"].rpartition(":")
        if not model or method not in ("generateContent", "streamGenerateContent"):
            return _gemini_error(404, f"Unknown method {request.path_params['target']!r}.", None)
        streaming = method == "streamGenerateContent"
        if streaming and request.query_params.get("alt") != "sse":
            return _gemini_error(
                400, "The mock serves streamGenerateContent only with alt=sse.", "alt"
            )
        return await handle(request, GEMINI, model, streaming)

    async def list_models(request: Request) -> Response:
        state.models_requests += 1
        denied = _check_bearer(request, api_key)
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
        Route("/v1/messages", messages, methods=["POST"]),
        Route("/v1beta/models/{target}", generate_content, methods=["POST"]),
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


async def _peek_stream_flag(request: Request) -> bool:
    # Starlette caches the body, so the handler can read it again.
    try:
        body = json.loads(await request.body())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return False
    return isinstance(body, dict) and body.get("stream") is True


async def _wait_or_disconnect(request: Request, duration_s: float) -> None:
    deadline = time.monotonic() + duration_s
    while time.monotonic() < deadline:
        if await request.is_disconnected():
            return
        await asyncio.sleep(_DISCONNECT_POLL_S)


def _echoed_key_message(presented: str, missing: str) -> str:
    # Unlike real upstreams, which mask all but the last characters, the mock echoes the whole
    # credential, so that tests can check that clients redact it.
    return f"Incorrect API key provided: {presented}." if presented else missing


def _matches(presented: str, api_key: str) -> bool:
    return hmac.compare_digest(presented.encode(), api_key.encode())


# OpenAI Chat Completions.


def _check_bearer(request: Request, api_key: str | None) -> Response | None:
    if api_key is None:
        return None
    authorization = request.headers.get("authorization", "")
    scheme, _, presented = authorization.partition(" ")
    if scheme.lower() == "bearer" and _matches(presented, api_key):
        return None
    message = _echoed_key_message(
        presented, "You didn't provide an API key in an Authorization: Bearer header."
    )
    logger.info("Rejected %s %s: missing or wrong API key", request.method, request.url.path)
    return _error_response(401, message, "invalid_request_error", "invalid_api_key")


def _validate_openai(request: Request, body: object) -> Response | None:
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
        if value is not None and not _is_positive_int(value):
            return _invalid_request(f"{name} must be an integer >= 1, got {value!r}.", name)
    n = body.get("n")
    if n is not None and (not _is_positive_int(n) or n > MOCK_MAX_CHOICES):
        return _invalid_request(
            f"n must be an integer from 1 to {MOCK_MAX_CHOICES}, got {n!r}.", "n"
        )
    if body.get("tools") is not None and not _is_list_of_objects(body["tools"]):
        return _invalid_request("tools must be a list of objects.", "tools")
    return None


def _is_positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


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


def _openai_error(
    status_code: int, message: str, param: str | None, *, headers: Mapping[str, str] | None = None
) -> Response:
    if status_code == 400:
        return _invalid_request(message, param)
    if status_code == 429:
        return _error_response(429, message, "requests", "rate_limit_exceeded", headers=headers)
    return _error_response(status_code, message, "server_error", None, headers=headers)


def _openai_respond(call: _Call) -> Response:
    completion_id = f"chatcmpl-mock{call.number:010d}"
    if call.streaming:
        include_usage = bool((call.body.get("stream_options") or {}).get("include_usage"))
        events = _openai_stream(call, completion_id, include_usage)
        return StreamingResponse(events, media_type="text/event-stream")

    if call.faults.malformed_sse:
        return Response(
            b'{"id": "' + completion_id.encode() + b'", "object": "chat.compl',
            media_type="application/json",
        )
    reply = call.reply
    choices = [
        {
            "index": index,
            "message": _openai_message(call, completion_id, index),
            "logprobs": None,
            "finish_reason": _openai_finish(reply),
        }
        for index in range(reply.choices)
    ]
    body: dict[str, Any] = {
        "id": completion_id,
        "object": "chat.completion",
        "created": call.created,
        "model": call.model,
        "choices": choices,
        "service_tier": "default",
        "system_fingerprint": MOCK_SYSTEM_FINGERPRINT,
    }
    if not call.faults.no_usage:
        body["usage"] = usage_to_openai(reply.usage, zero_cost=call.faults.zero_cost_usage)
    return _json_or_dropped(body, call.faults)


def _openai_finish(reply: _Reply) -> str:
    return "stop" if reply.finish == "stop_sequence" else reply.finish


def _openai_tool_call_id(completion_id: str, index: int) -> str:
    return f"call_{completion_id.removeprefix('chatcmpl-')}_{index}"


def _openai_message(call: _Call, completion_id: str, index: int) -> dict[str, Any]:
    reply = call.reply
    message: dict[str, Any] = {
        "role": "assistant",
        "content": reply.content,
        "refusal": None,
        "annotations": [],
    }
    if reply.tool_call is not None:
        message["content"] = None
        message["tool_calls"] = [
            {
                "id": _openai_tool_call_id(completion_id, index),
                "type": "function",
                "function": {"name": reply.tool_call[0], "arguments": reply.tool_arguments_json},
            }
        ]
    if call.faults.reasoning:
        message["reasoning_content"] = " ".join(reply.reasoning_words)
    return message


def _openai_stream(call: _Call, completion_id: str, include_usage: bool) -> AsyncIterator[bytes]:
    reply = call.reply
    faults = call.faults
    report_usage = include_usage and not faults.no_usage
    delay_s = faults.chunk_delay_ms / 1000

    def chunk(index: int, delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
        event: dict[str, Any] = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": call.created,
            "model": call.model,
            "service_tier": "default",
            "system_fingerprint": MOCK_SYSTEM_FINGERPRINT,
            "choices": [
                {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
            ],
        }
        # OpenAI sends "usage": null in every chunk but the last when include_usage is set.
        if report_usage:
            event["usage"] = None
        return _sse_data(event)

    def content_deltas(index: int) -> list[dict[str, Any]]:
        if reply.tool_call is None:
            return [
                {"content": word if position == 0 else " " + word}
                for position, word in enumerate(reply.content_words)
            ]
        arguments = reply.tool_arguments_json
        opening = {
            "index": 0,
            "id": _openai_tool_call_id(completion_id, index),
            "type": "function",
            "function": {"name": reply.tool_call[0], "arguments": ""},
        }
        pieces = [arguments[:MOCK_TOOL_ARGUMENTS_SPLIT], arguments[MOCK_TOOL_ARGUMENTS_SPLIT:]]
        return [{"tool_calls": [opening]}] + [
            {"tool_calls": [{"index": 0, "function": {"arguments": piece}}]} for piece in pieces
        ]

    async def events() -> AsyncIterator[bytes]:
        for index in range(reply.choices):
            yield chunk(index, {"role": "assistant", "content": "", "refusal": None})
        if faults.malformed_sse:
            yield b'data: {"id": "' + completion_id.encode() + b'", "choices": [{"delta": \n\n'

        for position, word in enumerate(reply.reasoning_words):
            if delay_s:
                await asyncio.sleep(delay_s)
            for index in range(reply.choices):
                yield chunk(index, {"reasoning_content": word if position == 0 else " " + word})

        deltas = [content_deltas(index) for index in range(reply.choices)]
        for position in range(len(deltas[0])):
            if faults.disconnect_after is not None and position >= faults.disconnect_after:
                break
            if faults.stall_after is not None and position >= faults.stall_after:
                await _stall(call)
            if delay_s:
                await asyncio.sleep(delay_s)
            for index in range(reply.choices):
                yield chunk(index, deltas[index][position])
            if faults.stream_error:
                error = {
                    "error": {
                        "message": "The mock upstream failed mid-stream (fault stream_error).",
                        "type": "server_error",
                    }
                }
                yield _sse_data(error)
                return

        if faults.disconnect_after is not None:
            raise _MockDisconnect("mock fault disconnect_after: dropping the connection")

        for index in range(reply.choices):
            yield chunk(index, {}, _openai_finish(reply))
        if report_usage:
            usage_event = {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": call.created,
                "model": call.model,
                "service_tier": "default",
                "system_fingerprint": MOCK_SYSTEM_FINGERPRINT,
                "choices": [],
                "usage": usage_to_openai(reply.usage, zero_cost=faults.zero_cost_usage),
            }
            yield _sse_data(usage_event)
        yield b"data: [DONE]\n\n"

    return _counted_stream(call.state, events())


# Anthropic Messages.


def _check_anthropic_key(request: Request, api_key: str | None) -> Response | None:
    if api_key is None:
        return None
    # The anthropic Python SDK 2.17 sends its API key as `Authorization: Bearer`, older clients
    # and the Messages API reference use `x-api-key`, so both are accepted.
    scheme, _, bearer = request.headers.get("authorization", "").partition(" ")
    presented = request.headers.get("x-api-key") or (bearer if scheme.lower() == "bearer" else "")
    if presented and _matches(presented, api_key):
        return None
    logger.info("Rejected %s %s: missing or wrong x-api-key", request.method, request.url.path)
    message = _echoed_key_message(presented, "x-api-key header is required")
    return _anthropic_error(401, message, None)


def _anthropic_error(
    status_code: int, message: str, param: str | None, *, headers: Mapping[str, str] | None = None
) -> Response:
    error_type = {
        400: "invalid_request_error",
        401: "authentication_error",
        429: "rate_limit_error",
        529: "overloaded_error",
    }.get(status_code, "api_error")
    if param is not None:
        message = f"{param}: {message}"
    body = {"type": "error", "error": {"type": error_type, "message": message}}
    return JSONResponse(body, status_code=status_code, headers=headers)


def _validate_anthropic(request: Request, body: object) -> Response | None:
    if not request.headers.get("anthropic-version"):
        return _anthropic_error(400, "anthropic-version: header is required", None)
    if not isinstance(body, dict):
        return _anthropic_error(400, "The request body must be a JSON object.", None)
    if not isinstance(body.get("model"), str) or not body["model"]:
        return _anthropic_error(400, "Field required.", "model")
    if not _is_positive_int(body.get("max_tokens")):
        return _anthropic_error(400, "Field required and must be an integer >= 1.", "max_tokens")

    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return _anthropic_error(400, "Field required and must be a non-empty list.", "messages")
    for index, message in enumerate(messages):
        if (
            not isinstance(message, dict)
            or message.get("role") not in ("user", "assistant")
            or not isinstance(message.get("content"), (str, list))
        ):
            return _anthropic_error(
                400, "Each message needs role user or assistant and content.", f"messages.{index}"
            )
    if "n" in body:
        return _anthropic_error(400, "Extra inputs are not permitted.", "n")
    if not _is_list_of_objects(body.get("tools", [])):
        return _anthropic_error(400, "Must be a list of tool objects.", "tools")
    if not isinstance(body.get("tool_choice", {}), dict):
        return _anthropic_error(400, "Must be an object.", "tool_choice")
    return None


def _is_list_of_objects(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(item, dict) for item in value)


def _anthropic_respond(call: _Call) -> Response:
    message_id = f"msg_mock{call.number:010d}"
    if call.streaming:
        return StreamingResponse(
            _anthropic_stream(call, message_id), media_type="text/event-stream"
        )
    if call.faults.malformed_sse:
        return Response(
            b'{"id": "' + message_id.encode() + b'", "type": "mess', media_type="application/json"
        )

    message = _anthropic_message(call, message_id, complete=True)
    return _json_or_dropped(message, call.faults)


def _anthropic_stop_reason(reply: _Reply) -> str:
    return {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use"}.get(
        reply.finish, reply.finish
    )


def _anthropic_tool_use_id(message_id: str) -> str:
    return f"toolu_{message_id.removeprefix('msg_')}"


def _anthropic_message(call: _Call, message_id: str, *, complete: bool) -> dict[str, Any]:
    reply = call.reply
    content: list[dict[str, Any]] = []
    if complete:
        if call.faults.reasoning:
            content.append(
                {
                    "type": "thinking",
                    "thinking": " ".join(reply.reasoning_words),
                    "signature": MOCK_THOUGHT_SIGNATURE,
                }
            )
        if reply.tool_call is not None:
            content.append(
                {
                    "type": "tool_use",
                    "id": _anthropic_tool_use_id(message_id),
                    "name": reply.tool_call[0],
                    "input": reply.tool_call[1],
                }
            )
        else:
            content.append({"type": "text", "text": reply.content})

    message: dict[str, Any] = {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": call.model,
        "content": content,
        "stop_reason": _anthropic_stop_reason(reply) if complete else None,
        "stop_sequence": reply.stop_sequence if complete else None,
    }
    if not call.faults.no_usage:
        usage = usage_to_anthropic(reply.usage)
        if not complete:
            # message_start reports the output so far, which the message_delta events update.
            usage["output_tokens"] = 1
            usage.pop("output_tokens_details", None)
        message["usage"] = usage
    return message


def _anthropic_event(event: dict[str, Any]) -> bytes:
    return b"event: " + event["type"].encode() + b"\n" + _sse_data(event)


def _anthropic_stream(call: _Call, message_id: str) -> AsyncIterator[bytes]:
    reply = call.reply
    faults = call.faults
    delay_s = faults.chunk_delay_ms / 1000

    def block_events(
        index: int, start: dict[str, Any], deltas: list[dict[str, Any]]
    ) -> list[bytes]:
        return [
            _anthropic_event(
                {"type": "content_block_start", "index": index, "content_block": start}
            ),
            *(
                _anthropic_event({"type": "content_block_delta", "index": index, "delta": delta})
                for delta in deltas
            ),
        ]

    async def events() -> AsyncIterator[bytes]:
        message = _anthropic_message(call, message_id, complete=False)
        yield _anthropic_event({"type": "message_start", "message": message})
        if faults.malformed_sse:
            yield b'event: content_block_start\ndata: {"type": "content_block_start", "index": \n\n'
        yield _anthropic_event({"type": "ping"})

        index = 0
        if faults.reasoning:
            deltas = [
                {"type": "thinking_delta", "thinking": word if position == 0 else " " + word}
                for position, word in enumerate(reply.reasoning_words)
            ] + [{"type": "signature_delta", "signature": MOCK_THOUGHT_SIGNATURE}]
            for event in block_events(
                index, {"type": "thinking", "thinking": "", "signature": ""}, deltas
            ):
                if delay_s:
                    await asyncio.sleep(delay_s)
                yield event
            yield _anthropic_event({"type": "content_block_stop", "index": index})
            index += 1

        if reply.tool_call is not None:
            arguments = reply.tool_arguments_json
            start = {
                "type": "tool_use",
                "id": _anthropic_tool_use_id(message_id),
                "name": reply.tool_call[0],
                "input": {},
            }
            # The Messages API opens a tool's input with an empty partial_json.
            pieces = [
                "",
                arguments[:MOCK_TOOL_ARGUMENTS_SPLIT],
                arguments[MOCK_TOOL_ARGUMENTS_SPLIT:],
            ]
            deltas = [{"type": "input_json_delta", "partial_json": piece} for piece in pieces]
        else:
            start = {"type": "text", "text": ""}
            deltas = [
                {"type": "text_delta", "text": word if position == 0 else " " + word}
                for position, word in enumerate(reply.content_words)
            ]

        opening, *delta_events = block_events(index, start, deltas)
        yield opening
        for position, event in enumerate(delta_events):
            if faults.disconnect_after is not None and position >= faults.disconnect_after:
                raise _MockDisconnect("mock fault disconnect_after: dropping the connection")
            if faults.stall_after is not None and position >= faults.stall_after:
                await _stall(call)
            if delay_s:
                await asyncio.sleep(delay_s)
            yield event
            if faults.stream_error:
                error = {
                    "type": "error",
                    "error": {
                        "type": "overloaded_error",
                        "message": "Overloaded (mock fault stream_error)",
                    },
                }
                yield _anthropic_event(error)
                return
        if faults.disconnect_after is not None:
            raise _MockDisconnect("mock fault disconnect_after: dropping the connection")
        yield _anthropic_event({"type": "content_block_stop", "index": index})

        delta: dict[str, Any] = {
            "type": "message_delta",
            "delta": {
                "stop_reason": _anthropic_stop_reason(reply),
                "stop_sequence": reply.stop_sequence,
            },
        }
        if not faults.no_usage:
            usage: dict[str, Any] = {"output_tokens": reply.usage.completion_tokens}
            if reply.usage.reasoning_tokens:
                usage["output_tokens_details"] = {"thinking_tokens": reply.usage.reasoning_tokens}
            delta["usage"] = usage
        yield _anthropic_event(delta)
        yield _anthropic_event({"type": "message_stop"})

    return _counted_stream(call.state, events())


# Gemini generateContent.

_GEMINI_STATUSES = {
    400: "INVALID_ARGUMENT",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
}


def _check_google_key(request: Request, api_key: str | None) -> Response | None:
    if api_key is None:
        return None
    presented = request.headers.get("x-goog-api-key") or request.query_params.get("key", "")
    if presented and _matches(presented, api_key):
        return None
    logger.info("Rejected %s %s: missing or wrong API key", request.method, request.url.path)
    if not presented:
        return _gemini_error(
            403, "Method doesn't allow unregistered callers. Please use an API key.", None
        )
    return _gemini_error(400, f"API key not valid: {presented}. Please pass a valid API key.", None)


def _gemini_error(
    status_code: int, message: str, param: str | None, *, headers: Mapping[str, str] | None = None
) -> Response:
    if param is not None:
        message = f"{param}: {message}"
    error: dict[str, Any] = {
        "code": status_code,
        "message": message,
        "status": _GEMINI_STATUSES.get(status_code, "UNKNOWN"),
    }
    if status_code == 429:
        error["details"] = [
            {
                "@type": "type.googleapis.com/google.rpc.RetryInfo",
                "retryDelay": f"{MOCK_RETRY_AFTER_S}s",
            }
        ]
    return JSONResponse({"error": error}, status_code=status_code, headers=headers)


def _validate_gemini(request: Request, body: object) -> Response | None:
    if not isinstance(body, dict):
        return _gemini_error(400, "The request body must be a JSON object.", None)
    contents = body.get("contents")
    if not isinstance(contents, list) or not contents:
        return _gemini_error(400, "contents must be a non-empty list.", "contents")
    for index, content in enumerate(contents):
        if not isinstance(content, dict) or not isinstance(content.get("parts"), list):
            return _gemini_error(400, "Each content needs a parts list.", f"contents[{index}]")
    config = body.get("generationConfig") or {}
    if not isinstance(config, dict):
        return _gemini_error(400, "generationConfig must be an object.", "generationConfig")
    for name in ("maxOutputTokens", "candidateCount"):
        value = config.get(name)
        if value is not None and not _is_positive_int(value):
            return _gemini_error(
                400, f"must be an integer >= 1, got {value!r}.", f"generationConfig.{name}"
            )
    if (config.get("candidateCount") or 1) > MOCK_MAX_CHOICES:
        return _gemini_error(
            400, f"must be at most {MOCK_MAX_CHOICES}.", "generationConfig.candidateCount"
        )
    if not _is_list_of_objects(body.get("tools", [])):
        return _gemini_error(400, "must be a list of tool objects.", "tools")
    if not isinstance(body.get("toolConfig", {}), dict):
        return _gemini_error(400, "must be an object.", "toolConfig")
    return None


def _gemini_finish(reply: _Reply) -> str:
    return "MAX_TOKENS" if reply.finish == "length" else "STOP"


def _gemini_respond(call: _Call) -> Response:
    response_id = f"mock{call.number:010d}"
    if call.streaming:
        return StreamingResponse(_gemini_stream(call, response_id), media_type="text/event-stream")
    if call.faults.malformed_sse:
        return Response(b'{"candidates": [{"content": ', media_type="application/json")

    reply = call.reply
    parts: list[dict[str, Any]] = []
    if call.faults.reasoning:
        parts.append({"text": " ".join(reply.reasoning_words), "thought": True})
    if reply.tool_call is not None:
        parts.append(_gemini_function_call_part(reply))
    else:
        parts.append({"text": reply.content})

    candidates = [
        {
            "content": {"role": "model", "parts": parts},
            "finishReason": _gemini_finish(reply),
            "index": index,
        }
        for index in range(reply.choices)
    ]
    body: dict[str, Any] = {
        "candidates": candidates,
        "modelVersion": call.model,
        "responseId": response_id,
    }
    if not call.faults.no_usage:
        body["usageMetadata"] = usage_to_gemini(reply.usage)
    return _json_or_dropped(body, call.faults)


def _gemini_function_call_part(reply: _Reply) -> dict[str, Any]:
    assert reply.tool_call is not None
    name, arguments = reply.tool_call
    return {
        "functionCall": {"name": name, "args": arguments},
        "thoughtSignature": MOCK_THOUGHT_SIGNATURE,
    }


def _gemini_stream(call: _Call, response_id: str) -> AsyncIterator[bytes]:
    reply = call.reply
    faults = call.faults
    delay_s = faults.chunk_delay_ms / 1000

    def response(parts: list[dict[str, Any]], output_so_far: int, finish: bool = False) -> bytes:
        candidates = []
        for index in range(reply.choices):
            candidate: dict[str, Any] = {
                "content": {"role": "model", "parts": parts},
                "index": index,
            }
            if finish:
                candidate["finishReason"] = _gemini_finish(reply)
            candidates.append(candidate)
        data: dict[str, Any] = {
            "candidates": candidates,
            "modelVersion": call.model,
            "responseId": response_id,
        }
        if not faults.no_usage:
            if finish:
                data["usageMetadata"] = usage_to_gemini(reply.usage)
            else:
                # Responses before the last report the prompt and the output so far.
                data["usageMetadata"] = {
                    "promptTokenCount": reply.usage.prompt_tokens,
                    "candidatesTokenCount": output_so_far,
                    "totalTokenCount": reply.usage.prompt_tokens + output_so_far,
                }
        return _sse_data(data)

    if reply.tool_call is not None:
        # Gemini sends a function call whole, in the response that finishes the candidate.
        content_steps: list[list[dict[str, Any]]] = [[_gemini_function_call_part(reply)]]
    else:
        content_steps = [
            [{"text": word if position == 0 else " " + word}]
            for position, word in enumerate(reply.content_words)
        ] or [[{"text": ""}]]
    reasoning_steps = [
        [{"text": word if position == 0 else " " + word, "thought": True}]
        for position, word in enumerate(reply.reasoning_words)
    ]
    steps = [(parts, False) for parts in reasoning_steps] + [
        (parts, True) for parts in content_steps
    ]
    # The last response carries the finish, unless a fault ends the stream before it.
    finishes = faults.disconnect_after is None and not faults.stream_error

    async def events() -> AsyncIterator[bytes]:
        content_sent = 0
        for number, (parts, is_content) in enumerate(steps):
            if is_content:
                if faults.disconnect_after is not None and content_sent >= faults.disconnect_after:
                    raise _MockDisconnect("mock fault disconnect_after: dropping the connection")
                if faults.stall_after is not None and content_sent >= faults.stall_after:
                    await _stall(call)
                content_sent += 1
            if delay_s:
                await asyncio.sleep(delay_s)
            yield response(parts, number + 1, finish=finishes and number == len(steps) - 1)
            if number == 0 and faults.malformed_sse:
                yield b'data: {"candidates": [{"content": \n\n'
            if is_content and faults.stream_error:
                error = {
                    "error": {
                        "code": 503,
                        "message": "The model is overloaded (mock fault stream_error).",
                        "status": "UNAVAILABLE",
                    }
                }
                yield _sse_data(error)
                return
        if faults.disconnect_after is not None:
            raise _MockDisconnect("mock fault disconnect_after: dropping the connection")

    return _counted_stream(call.state, events())


OPENAI = _Protocol("openai", _check_bearer, _validate_openai, _openai_error, _openai_respond)
ANTHROPIC = _Protocol(
    "anthropic", _check_anthropic_key, _validate_anthropic, _anthropic_error, _anthropic_respond
)
GEMINI = _Protocol("gemini", _check_google_key, _validate_gemini, _gemini_error, _gemini_respond)


# Responses, streams and deliberate disconnects.


def _json_or_dropped(body: Mapping[str, Any], faults: Faults) -> Response:
    encoded = _encode(body)
    if faults.disconnect_after is not None:
        return _DroppedResponse(encoded)
    return Response(encoded, media_type="application/json")


async def _counted_stream(state: MockState, events: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    state.streams_started += 1
    completed = False
    try:
        async for event in events:
            yield event
        completed = True
    finally:
        if completed:
            state.streams_completed += 1
        else:
            state.streams_aborted += 1


class _MockDisconnect(Exception):
    """Raised inside a response on purpose, so the server drops the connection."""


async def _stall(call: _Call) -> None:
    await asyncio.sleep(call.timeout_fault_s)
    raise _MockDisconnect("mock fault stall_after: dropping the connection")


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


def _sse_data(value: Any) -> bytes:
    return b"data: " + _encode(value) + b"\n\n"


def _encode(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    parser = argparse.ArgumentParser(
        prog="python -m providers.mock_upstream",
        description="Run the mock upstream (OpenAI, Anthropic and Gemini protocols).",
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
            "credential that clients must send, or an empty string to accept any "
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
    logger.info("Starting the mock upstream on http://%s:%s", args.host, args.port)
    # uvicorn logs its own shutdown lines, and on SIGTERM it ends the process after them.
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, access_log=False)


if __name__ == "__main__":
    main()
