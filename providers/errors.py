"""The exception that every provider adapter raises for a failed upstream call."""

from __future__ import annotations

import logging
import math
import time
from email.utils import parsedate_to_datetime
from typing import Any, Literal, get_args

logger = logging.getLogger(__name__)

UpstreamErrorKind = Literal[
    "rate_limited",  # HTTP 429
    "server_error",  # HTTP 5xx
    "timeout",  # connecting or waiting for data took longer than the timeout, or HTTP 408
    "connection",  # the connection failed or was dropped, also mid-stream
    "bad_response",  # a 2xx response that could not be parsed, or an unexpected status
    "client_error",  # HTTP 4xx other than 408 and 429: the request or the credential was rejected
]
UPSTREAM_ERROR_KINDS: frozenset[str] = frozenset(get_args(UpstreamErrorKind))

# Upstream error texts are kept in messages for diagnosis, cut to this many characters.
MAX_UPSTREAM_DETAIL_CHARS = 500
REDACTED = "[REDACTED]"


class UpstreamError(Exception):
    """A failed upstream call, classified by what went wrong rather than by which listing failed.

    `status_code` is the upstream's HTTP status, or None when no response arrived.
    `retry_after_s` is the delay the upstream asked for (Retry-After), or None.
    The message never contains the upstream credential: adapters pass every upstream text
    through `redact` first.
    """

    def __init__(
        self,
        kind: UpstreamErrorKind,
        message: str,
        *,
        status_code: int | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        if kind not in UPSTREAM_ERROR_KINDS:
            raise ValueError(f"unknown upstream error kind {kind!r}")
        super().__init__(message)
        self.kind: UpstreamErrorKind = kind
        self.message = message
        self.status_code = status_code
        self.retry_after_s = retry_after_s

    def __reduce__(self) -> tuple[Any, ...]:
        # Exception pickling replays only `args`, which would lose the keyword-only fields.
        return (
            type(self),
            (self.kind, self.message),
            {"status_code": self.status_code, "retry_after_s": self.retry_after_s},
        )

    def __repr__(self) -> str:
        return (
            f"UpstreamError(kind={self.kind!r}, status_code={self.status_code!r}, "
            f"retry_after_s={self.retry_after_s!r}, message={self.message!r})"
        )


def kind_for_status(status_code: int) -> UpstreamErrorKind:
    """Classify a non-2xx HTTP status."""
    if status_code == 429:
        return "rate_limited"
    if status_code == 408:
        return "timeout"
    if 500 <= status_code <= 599:
        return "server_error"
    if 400 <= status_code <= 499:
        return "client_error"
    # 1xx and 3xx: redirects are not followed, so the call produced nothing usable.
    return "bad_response"


def redact(text: str, secret: str | None) -> str:
    """Replace every occurrence of `secret` in `text` and cut the result for a message."""
    if secret:
        text = text.replace(secret, REDACTED)
    if len(text) > MAX_UPSTREAM_DETAIL_CHARS:
        text = text[:MAX_UPSTREAM_DETAIL_CHARS] + "..."
    return text


def parse_retry_after(
    retry_after: str | None,
    retry_after_ms: str | None = None,
    *,
    now_s: float | None = None,
) -> float | None:
    """Parse Retry-After (seconds or an HTTP date) into seconds from now, or None.

    `retry_after_ms` is OpenAI's `retry-after-ms` header. It is preferred when it parses,
    because it is more precise. A date in the past gives 0.0. An unparseable, negative or
    non-finite value gives None.
    """
    if retry_after_ms is not None:
        milliseconds = _parse_seconds(retry_after_ms)
        if milliseconds is not None:
            return milliseconds / 1000

    if retry_after is None:
        return None
    seconds = _parse_seconds(retry_after)
    if seconds is not None:
        return seconds

    try:
        retry_at = parsedate_to_datetime(retry_after.strip())
    except (TypeError, ValueError, IndexError):
        return None
    if retry_at.tzinfo is None:
        # parsedate_to_datetime returns a naive datetime for the zone "-0000", whose offset
        # is unknown. RFC 9110 requires GMT, so such a date is treated as invalid.
        return None
    current_s = time.time() if now_s is None else now_s
    return max(0.0, retry_at.timestamp() - current_s)


def _parse_seconds(value: str) -> float | None:
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    if not math.isfinite(seconds) or seconds < 0:
        return None
    return seconds
