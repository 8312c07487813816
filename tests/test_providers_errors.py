"""UpstreamError, status classification, redaction and Retry-After parsing."""

from __future__ import annotations

import pickle

import pytest

from providers.errors import (
    MAX_UPSTREAM_DETAIL_CHARS,
    UPSTREAM_ERROR_KINDS,
    UpstreamError,
    kind_for_status,
    parse_retry_after,
    redact,
)


def test_error_kinds_are_fixed() -> None:
    assert UPSTREAM_ERROR_KINDS == {
        "rate_limited",
        "server_error",
        "timeout",
        "connection",
        "bad_response",
        "client_error",
    }


def test_unknown_kind_rejected() -> None:
    with pytest.raises(ValueError, match="unknown upstream error kind 'overheated'"):
        UpstreamError("overheated", "boom")  # type: ignore[arg-type]


def test_error_fields() -> None:
    error = UpstreamError("rate_limited", "slow down", status_code=429, retry_after_s=1.5)

    assert error.kind == "rate_limited"
    assert error.message == "slow down"
    assert str(error) == "slow down"
    assert error.status_code == 429
    assert error.retry_after_s == 1.5


def test_error_survives_pickling() -> None:
    error = UpstreamError("server_error", "upstream failed", status_code=503, retry_after_s=2.0)

    copy = pickle.loads(pickle.dumps(error))

    assert copy.kind == "server_error"
    assert copy.message == "upstream failed"
    assert copy.status_code == 503
    assert copy.retry_after_s == 2.0


@pytest.mark.parametrize(
    ("status_code", "kind"),
    [
        (400, "client_error"),
        (401, "client_error"),
        (403, "client_error"),
        (404, "client_error"),
        (408, "timeout"),
        (422, "client_error"),
        (429, "rate_limited"),
        (500, "server_error"),
        (502, "server_error"),
        (503, "server_error"),
        (529, "server_error"),
        (301, "bad_response"),
        (304, "bad_response"),
    ],
)
def test_kind_for_status(status_code: int, kind: str) -> None:
    assert kind_for_status(status_code) == kind


def test_redact_replaces_secret() -> None:
    assert redact("bad key sk-123 (sk-123)", "sk-123") == "bad key [REDACTED] ([REDACTED])"
    assert redact("no secret here", "") == "no secret here"


def test_redact_cuts_long_text() -> None:
    redacted = redact("x" * (MAX_UPSTREAM_DETAIL_CHARS + 10), "sk-123")

    assert redacted == "x" * MAX_UPSTREAM_DETAIL_CHARS + "..."


@pytest.mark.parametrize(
    ("retry_after", "retry_after_ms", "expected"),
    [
        ("7", None, 7.0),
        (" 2.5 ", None, 2.5),
        ("Wed, 21 Oct 2015 07:28:10 GMT", None, 10.0),
        ("Wed, 21 Oct 2015 07:27:00 GMT", None, 0.0),
        ("Wed, 21 Oct 2015 07:28:10 -0000", None, None),
        ("-1", None, None),
        ("soon", None, None),
        ("nan", None, None),
        ("inf", None, None),
        (None, None, None),
        ("7", "250", 0.25),
        ("7", "bad", 7.0),
        (None, "1500", 1.5),
    ],
)
def test_parse_retry_after(retry_after, retry_after_ms, expected) -> None:
    # 2015-10-21 07:28:00 UTC
    now_s = 1445412480.0

    assert parse_retry_after(retry_after, retry_after_ms, now_s=now_s) == expected
