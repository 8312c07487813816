"""Usage history of an account: one row per metered call, paginated newest first, and a CSV export."""

from __future__ import annotations

import csv
import datetime as dt
import io
from collections.abc import Iterator

from sqlalchemy import select
from sqlalchemy.orm import Session

from marketplace.errors import InvalidRequest
from marketplace.models import Generation

MAX_PAGE_SIZE = 500
EXPORT_BATCH_SIZE = MAX_PAGE_SIZE

CSV_COLUMNS = (
    "id",
    "created_at",
    "finished_at",
    "model",
    "listing_id",
    "api_key_id",
    "stream",
    "status",
    "prompt_tokens",
    "completion_tokens",
    "cached_prompt_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
    "usage_estimated",
    "cost_nano_usd",
    "latency_ms",
)


def _cursor_filter(query, cursor: str | None):  # type: ignore[no-untyped-def]
    """Page after a cursor "<created_at ISO>|<id>", the last row of the previous page."""
    if cursor is None:
        return query
    created_text, _, generation_id = cursor.partition("|")
    try:
        created_at = dt.datetime.fromisoformat(created_text)
    except ValueError as exc:
        raise InvalidRequest(f"cursor {cursor!r} is invalid; pass next_cursor from the previous page", param="cursor") from exc
    return query.where(
        (Generation.created_at < created_at) | ((Generation.created_at == created_at) & (Generation.id < generation_id))
    )


def list_usage(session: Session, account_id: int, limit: int, cursor: str | None) -> tuple[list[Generation], str | None]:
    if not 1 <= limit <= MAX_PAGE_SIZE:
        raise InvalidRequest(f"limit must be between 1 and {MAX_PAGE_SIZE}, got {limit}", param="limit")
    query = select(Generation).where(Generation.account_id == account_id)
    query = _cursor_filter(query, cursor).order_by(Generation.created_at.desc(), Generation.id.desc()).limit(limit + 1)
    rows = list(session.scalars(query))
    next_cursor = None
    if len(rows) > limit:
        rows = rows[:limit]
        last = rows[-1]
        next_cursor = f"{last.created_at.isoformat()}|{last.id}"
    return rows, next_cursor


def _csv_value(value: object) -> object:
    if isinstance(value, dt.datetime):
        return value.isoformat()
    if value is None:
        return ""
    return value


def export_csv(session: Session, account_id: int) -> Iterator[str]:
    """Yield the account's whole usage history as CSV text, newest first, in bounded batches."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(CSV_COLUMNS)
    cursor = None
    while True:
        rows, cursor = list_usage(session, account_id, EXPORT_BATCH_SIZE, cursor)
        for row in rows:
            writer.writerow([_csv_value(getattr(row, column)) for column in CSV_COLUMNS])
        yield buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()
        if cursor is None:
            return
