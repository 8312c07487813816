"""Profiles of OpenAI-compatible vendors: the quirks that `openai_compat` alone gets wrong.

A `VendorProfile` adds three things on top of `openai_compat`: request tweaks before the call,
usage normalization into the canonical `Usage`, and detection of errors that arrive with HTTP
200. `complete` and `stream` here have the interface of `openai_compat` plus the profile as
first argument. Their results carry the usage in the canonical rendering of
`openai_compat.render_usage`, so `usage_from_chunk` reads every profile's usage alike, and each
stream ends with one usage chunk whose `choices` is empty, wherever the vendor put its usage.

The quirks, with the vendor documentation they come from:

- deepseek: reasoning arrives as `reasoning_content` deltas, and cache hits as the top-level
  `prompt_cache_hit_tokens` (with `prompt_cache_miss_tokens`) rather than in
  `prompt_tokens_details`. https://api-docs.deepseek.com/guides/kv_cache and
  https://api-docs.deepseek.com/guides/thinking_mode_api_example_streaming
- moonshot (Kimi): explicit-cache hits as a top-level `cached_tokens`, and in streams the usage
  may sit inside the last choice (`choices[0].usage`). https://platform.moonshot.cn/docs/api/caching
  and the recorded Kimi streams of Vercel's AI SDK (packages/moonshotai/src/__fixtures__).
- qwen (DashScope compatible mode): usage only when `stream_options.include_usage` is set.
  https://www.alibabacloud.com/help/en/model-studio/stream. Some versions are reported to send
  it in the last chunk together with its choices. The page above does not show that, and the
  stream handling covers both forms.
- glm (Zhipu): usage and finish_reason only in the last chunk
  (https://docs.bigmodel.cn/cn/guide/capabilities/streaming), and the finish reasons
  "sensitive" (blocked by moderation) and "network_error" (inference failed), listed in the
  response fields of Zhipu's model API reference at docs.bigmodel.cn/api-reference.
- minimax: errors as `base_resp` objects in HTTP 200 bodies, with the codes of
  https://platform.minimax.io/docs/api-reference/errorcode, and reasoning inline in `<think>`
  tags unless `reasoning_split` is true, which moves it to `reasoning_details`.
  https://platform.minimax.io/docs/api-reference/text-openai-api

Profiles send `max_completion_tokens` as `max_tokens` where the vendor documents only that name,
because the proxy's hold assumes the upstream honours the completion bound. They remove
Anthropic-style `cache_control` marks, which clients of the Anthropic ingress bring, except for
DashScope, whose explicit cache reads them. Zhipu's bodies and chunks lack `object`, which is
added.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any

from providers import openai_compat
from providers.errors import UpstreamError, UpstreamErrorKind, redact
from providers.http import HttpClientLike
from providers.openai_compat import CompletionResult, render_usage, rendered_usage_from_chunk
from providers.usage import InvalidUsageError, Usage, usage_from_openai

logger = logging.getLogger(__name__)

ChoiceNormalizer = Callable[[dict[str, Any], int], None]

usage_from_chunk = rendered_usage_from_chunk

# MiniMax base_resp.status_code values from its error code page, and their kinds. Other non-zero
# codes are "bad_response".
MINIMAX_ERROR_KINDS: dict[int, UpstreamErrorKind] = {
    1000: "server_error",  # unknown error
    1001: "timeout",  # request timeout
    1002: "rate_limited",  # rate limit
    1004: "client_error",  # not authorized
    1008: "client_error",  # insufficient balance
    1024: "server_error",  # internal error
}

# Zhipu's finish reasons beyond OpenAI's, as Chat Completions finish reasons. "network_error"
# means the inference failed, which `_check_glm_finish` raises instead.
GLM_FINISH_REASONS = {"sensitive": "content_filter"}


@dataclass(frozen=True)
class VendorProfile:
    """The quirks of one OpenAI-compatible vendor.

    `prepare_request(body, streaming)` returns the body to send. `parse_usage(usage)` turns the
    vendor's usage object into a `Usage` and raises InvalidUsageError for a malformed one.
    `check_response(data, upstream, api_key)` raises UpstreamError for an error reported in a
    200 body or chunk. `new_normalizer()` returns a function for one response that rewrites a
    choice in place (`normalize(choice, index)`), for vendor fields and values that have a Chat
    Completions equivalent. `requires_done` is False for vendors whose streams may end without
    `data: [DONE]`.
    """

    name: str
    prepare_request: Callable[[Mapping[str, Any], bool], dict[str, Any]]
    parse_usage: Callable[[Mapping[str, Any]], Usage]
    check_response: Callable[[Mapping[str, Any], str, str], None] = field(
        default=lambda data, upstream, api_key: None
    )
    new_normalizer: Callable[[], ChoiceNormalizer] = field(default=lambda: _leave_choice)
    requires_done: bool = True


async def complete(
    profile: VendorProfile,
    client: HttpClientLike,
    base_url: str,
    api_key: str,
    body: Mapping[str, Any],
    timeout_s: float,
) -> CompletionResult:
    """Send a non-streaming chat completion to a vendor, as `openai_compat.complete` does.

    The returned body's `usage` is the canonical rendering of the vendor's usage, and `usage`
    is None when the vendor reported none or a malformed one (logged as a warning).

    Raises UpstreamError as `openai_compat.complete` does, and for an error the profile finds
    in a 200 body.
    """
    upstream = openai_compat.describe_upstream(openai_compat.chat_completions_url(base_url))
    result = await openai_compat.complete(
        client, base_url, api_key, profile.prepare_request(body, False), timeout_s
    )
    data = dict(result.body)
    profile.check_response(data, upstream, api_key)
    # Zhipu leaves `object` out of its bodies and chunks.
    data.setdefault("object", "chat.completion")

    normalize = profile.new_normalizer()
    for position, choice in enumerate(data.get("choices") or []):
        if isinstance(choice, dict):
            normalize(choice, choice.get("index", position))

    usage = _parse_usage(profile, data.get("usage"), upstream)
    if usage is not None:
        data["usage"] = render_usage(usage)
    return CompletionResult(body=data, usage=usage)


async def stream(
    profile: VendorProfile,
    client: HttpClientLike,
    base_url: str,
    api_key: str,
    body: Mapping[str, Any],
    timeout_s: float,
) -> AsyncIterator[dict[str, Any]]:
    """Send a streaming chat completion to a vendor and yield normalized chunks.

    Usage is taken out of every chunk that carries it: a usage-only chunk, the last chunk with
    choices, or a choice itself. The last usage seen is yielded at the end, in a chunk with
    empty `choices` and the canonical usage. Chunks left with no choices are dropped.

    Raises UpstreamError as `openai_compat.stream` does, for an error the profile finds in a
    chunk, and, for a vendor whose stream may end without `data: [DONE]`, when it ends before
    every choice has a finish_reason (kind "connection").
    """
    upstream = openai_compat.describe_upstream(openai_compat.chat_completions_url(base_url))
    normalize = profile.new_normalizer()
    usage: Usage | None = None
    last: Mapping[str, Any] = {}
    started: set[int] = set()
    finished: set[int] = set()

    chunks = openai_compat.stream(
        client,
        base_url,
        api_key,
        profile.prepare_request(body, True),
        timeout_s,
        require_done=profile.requires_done,
    )
    async with aclosing(chunks):
        async for chunk in chunks:
            profile.check_response(chunk, upstream, api_key)
            chunk.setdefault("object", "chat.completion.chunk")
            reported = _pop_usage(chunk)
            if reported is not None:
                usage = _parse_usage(profile, reported, upstream) or usage
            last = chunk

            choices = chunk.get("choices") or []
            for position, choice in enumerate(choices):
                index = choice.get("index", position)
                started.add(index)
                normalize(choice, index)
                if choice.get("finish_reason"):
                    finished.add(index)
            if choices:
                yield chunk

    if not profile.requires_done and (not started or started - finished):
        raise UpstreamError(
            "connection",
            f"upstream {upstream} closed the stream before every choice had a finish_reason",
            status_code=200,
        )
    if usage is not None:
        yield {
            "id": last.get("id"),
            "object": "chat.completion.chunk",
            "created": last.get("created"),
            "model": last.get("model"),
            "choices": [],
            "usage": render_usage(usage),
        }


def _pop_usage(chunk: dict[str, Any]) -> Any:
    """Take the usage out of a chunk: top-level, else from a choice (Kimi puts it there)."""
    reported = chunk.pop("usage", None)
    for choice in chunk.get("choices") or []:
        if isinstance(choice, dict) and "usage" in choice:
            in_choice = choice.pop("usage")
            reported = reported if reported is not None else in_choice
    return reported


def _parse_usage(profile: VendorProfile, reported: Any, upstream: str) -> Usage | None:
    if reported is None:
        return None
    try:
        if not isinstance(reported, Mapping):
            raise InvalidUsageError(f"usage must be a JSON object, got {type(reported).__name__}")
        return profile.parse_usage(reported)
    except InvalidUsageError as exc:
        logger.warning(
            "Upstream %s (%s) reported invalid usage, ignoring it: %s", upstream, profile.name, exc
        )
        return None


# Request tweaks.


def _strip_cache_control(body: dict[str, Any]) -> None:
    """Remove Anthropic-style `cache_control` marks from message parts and tools, in place.

    Clients of the Anthropic ingress bring them. Only DashScope documents them for its
    OpenAI-compatible mode; other vendors may reject the unknown field, so it goes.
    """
    messages = []
    for message in body.get("messages") or []:
        content = message.get("content") if isinstance(message, Mapping) else None
        if isinstance(content, list):
            message = {
                **message,
                "content": [
                    {key: value for key, value in part.items() if key != "cache_control"}
                    if isinstance(part, Mapping)
                    else part
                    for part in content
                ],
            }
        messages.append(message)
    if "messages" in body:
        body["messages"] = messages
    if isinstance(body.get("tools"), list):
        body["tools"] = [
            {key: value for key, value in tool.items() if key != "cache_control"}
            if isinstance(tool, Mapping)
            else tool
            for tool in body["tools"]
        ]


def _openai_request(body: Mapping[str, Any], streaming: bool) -> dict[str, Any]:
    prepared = dict(body)
    _strip_cache_control(prepared)
    return prepared


def _use_max_tokens(body: dict[str, Any]) -> None:
    """Send `max_completion_tokens` as `max_tokens`, the only name the vendor documents."""
    max_completion_tokens = body.pop("max_completion_tokens", None)
    if max_completion_tokens is not None and body.get("max_tokens") is None:
        body["max_tokens"] = max_completion_tokens


def _max_tokens_request(body: Mapping[str, Any], streaming: bool) -> dict[str, Any]:
    prepared = _openai_request(body, streaming)
    _use_max_tokens(prepared)
    return prepared


def _qwen_request(body: Mapping[str, Any], streaming: bool) -> dict[str, Any]:
    # DashScope's explicit context cache reads cache_control marks, so they stay.
    prepared = dict(body)
    _use_max_tokens(prepared)
    return prepared


def _minimax_request(body: Mapping[str, Any], streaming: bool) -> dict[str, Any]:
    # reasoning_split moves the reasoning out of `<think>` tags in the content into
    # reasoning_details. A buyer who sets it false gets the tags in the content unchanged.
    prepared = _openai_request(body, streaming)
    prepared.setdefault("reasoning_split", True)
    return prepared


# Usage normalization.


def _openai_usage(usage: Mapping[str, Any]) -> Usage:
    # OpenRouter-style gateways also report cache writes; see openai_compat.render_usage.
    return openai_compat.usage_from_rendered(usage)


def _deepseek_usage(usage: Mapping[str, Any]) -> Usage:
    # usage_from_openai falls back to prompt_cache_hit_tokens when prompt_tokens_details has
    # no cached_tokens; the miss count is prompt_tokens minus the hits.
    return usage_from_openai(usage)


def _moonshot_usage(usage: Mapping[str, Any]) -> Usage:
    parsed = usage_from_openai(usage)
    top_level_cached = usage.get("cached_tokens")
    if parsed.cached_prompt_tokens or top_level_cached is None:
        return parsed
    return _with_cache_counts(parsed, top_level_cached, 0, "cached_tokens")


def _qwen_usage(usage: Mapping[str, Any]) -> Usage:
    parsed = usage_from_openai(usage)
    details = usage.get("prompt_tokens_details")
    # NOTE: the explicit-cache field `cache_creation_input_tokens` is written from memory of
    # DashScope's context cache guide and not checked against a response. When it is absent,
    # cache writes count as plain input, which undercharges rather than overcharges.
    created = details.get("cache_creation_input_tokens") if isinstance(details, Mapping) else None
    if created is None:
        return parsed
    return _with_cache_counts(
        parsed,
        parsed.cached_prompt_tokens,
        created,
        "prompt_tokens_details.cache_creation_input_tokens",
    )


def _with_cache_counts(parsed: Usage, cached: Any, written: Any, path: str) -> Usage:
    for value in (cached, written):
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidUsageError(f"usage.{path} must be an integer, got {value!r}")
    return Usage(
        prompt_tokens=parsed.prompt_tokens,
        completion_tokens=parsed.completion_tokens,
        cached_prompt_tokens=cached,
        cache_write_tokens=written,
        reasoning_tokens=parsed.reasoning_tokens,
    )


# Errors in 200 responses.


def _check_minimax(data: Mapping[str, Any], upstream: str, api_key: str) -> None:
    base_resp = data.get("base_resp")
    if not isinstance(base_resp, Mapping):
        return
    code = base_resp.get("status_code")
    if code in (0, None):
        return
    message = redact(str(base_resp.get("status_msg") or "(no message)"), api_key)
    raise UpstreamError(
        MINIMAX_ERROR_KINDS.get(code, "bad_response") if isinstance(code, int) else "bad_response",
        f"upstream {upstream} returned MiniMax error {code}: {message}",
        status_code=200,
    )


def _check_glm(data: Mapping[str, Any], upstream: str, api_key: str) -> None:
    for choice in data.get("choices") or []:
        if isinstance(choice, dict) and choice.get("finish_reason") == "network_error":
            raise UpstreamError(
                "server_error",
                f"upstream {upstream} ended the completion with finish_reason network_error, "
                "which Zhipu documents as a failed inference",
                status_code=200,
            )


# Choice normalization.


def _leave_choice(choice: dict[str, Any], index: int) -> None:
    return None


def _glm_normalizer() -> ChoiceNormalizer:
    def normalize(choice: dict[str, Any], index: int) -> None:
        if choice.get("finish_reason") in GLM_FINISH_REASONS:
            choice["finish_reason"] = GLM_FINISH_REASONS[choice["finish_reason"]]

    return normalize


def _minimax_normalizer() -> ChoiceNormalizer:
    """Copy reasoning_details text into reasoning_content, keeping reasoning_details.

    MiniMax's guide requires clients to send reasoning_details back unchanged, so it stays.
    NOTE: MiniMax's streaming example treats each delta's reasoning_details text as the
    cumulative text so far, while a report against MiniMax-M2.7
    (https://github.com/MiniMax-AI/MiniMax-M2/issues/95) found it incremental. A text that starts
    with everything received so far is taken as cumulative and cut to its new suffix, else it is
    taken as incremental.
    """
    received: dict[int, str] = {}

    def normalize(choice: dict[str, Any], index: int) -> None:
        message = choice.get("message") or choice.get("delta")
        details = message.get("reasoning_details") if isinstance(message, dict) else None
        if not isinstance(details, list):
            return
        text = "".join(
            str(detail.get("text") or "") for detail in details if isinstance(detail, Mapping)
        )
        so_far = received.get(index, "")
        new_text = text[len(so_far) :] if so_far and text.startswith(so_far) else text
        received[index] = so_far + new_text
        if new_text and not message.get("reasoning_content"):
            message["reasoning_content"] = new_text

    return normalize


PROFILES: dict[str, VendorProfile] = {
    "openai": VendorProfile("openai", _openai_request, _openai_usage),
    "deepseek": VendorProfile("deepseek", _max_tokens_request, _deepseek_usage),
    "moonshot": VendorProfile("moonshot", _max_tokens_request, _moonshot_usage),
    "qwen": VendorProfile("qwen", _qwen_request, _qwen_usage),
    "glm": VendorProfile(
        "glm",
        _max_tokens_request,
        usage_from_openai,
        check_response=_check_glm,
        new_normalizer=_glm_normalizer,
    ),
    "minimax": VendorProfile(
        "minimax",
        _minimax_request,
        usage_from_openai,
        check_response=_check_minimax,
        new_normalizer=_minimax_normalizer,
        requires_done=False,
    ),
}


def get_profile(name: str) -> VendorProfile:
    """Return the profile called `name`. Raises KeyError naming the known profiles."""
    try:
        return PROFILES[name]
    except KeyError:
        raise KeyError(f"unknown vendor profile {name!r}; known: {', '.join(PROFILES)}") from None
