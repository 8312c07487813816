"""Token usage of one upstream call, and the parser for OpenAI's `usage` object.

Every adapter translates its upstream's usage report into `Usage`, so metering and pricing read
one shape. The fields follow OpenAI's Chat Completions counting: `prompt_tokens` includes the
cached prompt tokens and `completion_tokens` includes the reasoning tokens.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)


class InvalidUsageError(ValueError):
    """A usage report that is missing a count, or has a count that is negative or not an integer."""


@dataclass(frozen=True)
class Usage:
    """Token counts of one call.

    `prompt_tokens` counts every input token, including `cached_prompt_tokens` (cache reads) and
    `cache_write_tokens`. `completion_tokens` counts every output token, including
    `reasoning_tokens`. `estimated` is True when the counts were computed locally because the
    upstream reported none.
    """

    prompt_tokens: int
    completion_tokens: int
    cached_prompt_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0
    estimated: bool = False

    def __post_init__(self) -> None:
        for name in (
            "prompt_tokens",
            "completion_tokens",
            "cached_prompt_tokens",
            "cache_write_tokens",
            "reasoning_tokens",
        ):
            _check_count(name, getattr(self, name))

        if not isinstance(self.estimated, bool):
            raise InvalidUsageError(f"estimated must be a bool, got {self.estimated!r}")

        # The parts must fit inside their totals, or pricing would charge a negative number of
        # uncached prompt tokens or plain completion tokens.
        prompt_parts = self.cached_prompt_tokens + self.cache_write_tokens
        if prompt_parts > self.prompt_tokens:
            raise InvalidUsageError(
                f"cached_prompt_tokens ({self.cached_prompt_tokens}) plus cache_write_tokens "
                f"({self.cache_write_tokens}) exceed prompt_tokens ({self.prompt_tokens})"
            )
        if self.reasoning_tokens > self.completion_tokens:
            raise InvalidUsageError(
                f"reasoning_tokens ({self.reasoning_tokens}) exceed completion_tokens "
                f"({self.completion_tokens})"
            )

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    @property
    def uncached_prompt_tokens(self) -> int:
        """Prompt tokens that were neither read from nor written to a prompt cache."""
        return self.prompt_tokens - self.cached_prompt_tokens - self.cache_write_tokens


def usage_from_openai(usage: Mapping[str, Any]) -> Usage:
    """Parse an OpenAI Chat Completions `usage` object into a `Usage` with `estimated=False`.

    Reads `prompt_tokens`, `completion_tokens`, `prompt_tokens_details.cached_tokens` and
    `completion_tokens_details.reasoning_tokens`. A details object or count that is absent or
    null counts as 0. When `prompt_tokens_details.cached_tokens` is absent, DeepSeek's top-level
    `prompt_cache_hit_tokens` is read instead. `total_tokens` and any `cost` field are ignored:
    Tokenport computes totals and prices itself.

    Raises InvalidUsageError when `usage` is not an object, when `prompt_tokens` or
    `completion_tokens` is missing, or when a count is negative or not an integer.
    """
    if not isinstance(usage, Mapping):
        raise InvalidUsageError(f"usage must be a JSON object, got {type(usage).__name__}")

    prompt_tokens = _required_count(usage, "prompt_tokens")
    completion_tokens = _required_count(usage, "completion_tokens")

    prompt_details = _details(usage, "prompt_tokens_details")
    cached_prompt_tokens = _optional_count(
        prompt_details, "cached_tokens", "prompt_tokens_details.cached_tokens"
    )
    if cached_prompt_tokens is None:
        cached_prompt_tokens = _optional_count(
            usage, "prompt_cache_hit_tokens", "prompt_cache_hit_tokens"
        )

    completion_details = _details(usage, "completion_tokens_details")
    reasoning_tokens = _optional_count(
        completion_details, "reasoning_tokens", "completion_tokens_details.reasoning_tokens"
    )

    return Usage(
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        cached_prompt_tokens=cached_prompt_tokens or 0,
        reasoning_tokens=reasoning_tokens or 0,
    )


def _check_count(name: str, value: object) -> None:
    # bool is a subclass of int, but `true` is never a token count.
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidUsageError(f"{name} must be an integer, got {value!r}")
    if value < 0:
        raise InvalidUsageError(f"{name} must not be negative, got {value}")


def _required_count(usage: Mapping[str, Any], name: str) -> int:
    if usage.get(name) is None:
        raise InvalidUsageError(f"usage.{name} is missing")
    value = usage[name]
    _check_count(f"usage.{name}", value)
    return value


def _optional_count(container: Mapping[str, Any], name: str, path: str) -> int | None:
    value = container.get(name)
    if value is None:
        return None
    _check_count(f"usage.{path}", value)
    return value


def _details(usage: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    details = usage.get(name)
    if details is None:
        return {}
    if not isinstance(details, Mapping):
        raise InvalidUsageError(f"usage.{name} must be a JSON object, got {details!r}")
    return details
