"""The adapter for each upstream protocol a listing may name in `upstream_protocol`.

Every adapter has the interface of `openai_compat`: `complete(client, base_url, api_key, body,
timeout_s) -> CompletionResult` and `stream(...) -> AsyncIterator[dict]`, both taking and giving
Chat Completions objects, and `usage_from_chunk(chunk) -> Usage | None`, which reads the usage of
a streamed chunk or a completion body in the adapter's canonical rendering, cache writes
included. Use that `usage_from_chunk` rather than `usage_from_openai`, which does not read
cache writes. `client` is an `httpx.AsyncClient` or a `providers.http.HttpClient`.

    adapter = get_adapter(listing.upstream_protocol)
    result = await adapter.complete(client, listing.upstream_base_url, key, body, timeout_s)

Protocols: "openai" (plain OpenAI-compatible), the OpenAI-compatible vendor profiles
"deepseek", "moonshot", "qwen", "glm" and "minimax" (see `vendors`), "anthropic" (Messages API)
and "gemini" (generateContent). "kimi", "zhipu" and "dashscope" are accepted as aliases.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from providers import anthropic, gemini, vendors
from providers.http import HttpClientLike
from providers.openai_compat import CompletionResult
from providers.usage import Usage

CompleteFunction = Callable[
    [HttpClientLike, str, str, Mapping[str, Any], float], Awaitable[CompletionResult]
]
StreamFunction = Callable[
    [HttpClientLike, str, str, Mapping[str, Any], float], AsyncIterator[dict[str, Any]]
]


@dataclass(frozen=True)
class Adapter:
    """The calls of one upstream protocol. `family` is "openai", "anthropic" or "gemini"."""

    protocol: str
    family: str
    complete: CompleteFunction
    stream: StreamFunction
    usage_from_chunk: Callable[[Mapping[str, Any]], Usage | None]


def _vendor_adapter(name: str) -> Adapter:
    profile = vendors.get_profile(name)
    return Adapter(
        protocol=name,
        family="openai",
        complete=functools.partial(vendors.complete, profile),
        stream=functools.partial(vendors.stream, profile),
        usage_from_chunk=vendors.usage_from_chunk,
    )


_ADAPTERS: dict[str, Adapter] = {
    **{name: _vendor_adapter(name) for name in vendors.PROFILES},
    "anthropic": Adapter(
        protocol="anthropic",
        family="anthropic",
        complete=anthropic.complete,
        stream=anthropic.stream,
        usage_from_chunk=anthropic.usage_from_chunk,
    ),
    "gemini": Adapter(
        protocol="gemini",
        family="gemini",
        complete=gemini.complete,
        stream=gemini.stream,
        usage_from_chunk=gemini.usage_from_chunk,
    ),
}

ALIASES: dict[str, str] = {"kimi": "moonshot", "zhipu": "glm", "dashscope": "qwen"}

SUPPORTED_PROTOCOLS: tuple[str, ...] = tuple(_ADAPTERS)


class UnknownProtocolError(ValueError):
    """An upstream protocol name that no adapter serves."""


def get_adapter(protocol: str) -> Adapter:
    """Return the adapter for `protocol` or one of its aliases, case-insensitively.

    Raises UnknownProtocolError naming the protocol and the supported ones.
    """
    name = protocol.strip().lower() if isinstance(protocol, str) else protocol
    name = ALIASES.get(name, name)
    try:
        return _ADAPTERS[name]
    except (KeyError, TypeError):
        raise UnknownProtocolError(
            f"upstream protocol {protocol!r} is not supported; use one of "
            f"{', '.join(SUPPORTED_PROTOCOLS)}"
        ) from None
