"""Per-key spend limits: a call's hold is reserved against the key's limit for the current period.

The check includes every hold still open, not just posted spend, so N parallel first calls
cannot all pass a limit that only one of them fits.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from marketplace.errors import RateLimited
from marketplace.models import ApiKeySpend


def period_for(limit_period: str, now: dt.datetime) -> str:
    if limit_period == "total":
        return "total"
    if limit_period == "month":
        return now.strftime("%Y-%m")
    if limit_period == "day":
        return now.strftime("%Y-%m-%d")
    raise ValueError(f"unknown spend limit period {limit_period!r}")


def _ensure_row(session: Session, api_key_id: int, period: str) -> None:
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    statement = insert(ApiKeySpend).values(api_key_id=api_key_id, period=period, reserved_nano_usd=0, spent_nano_usd=0)
    session.execute(statement.on_conflict_do_nothing(index_elements=["api_key_id", "period"]))


def reserve(session: Session, api_key_id: int, period: str, limit_nano_usd: int, hold_nano_usd: int) -> None:
    """Reserve a hold against the limit, or raise RateLimited and change nothing."""
    _ensure_row(session, api_key_id, period)
    result = session.execute(
        update(ApiKeySpend)
        .where(
            ApiKeySpend.api_key_id == api_key_id,
            ApiKeySpend.period == period,
            ApiKeySpend.spent_nano_usd + ApiKeySpend.reserved_nano_usd + hold_nano_usd <= limit_nano_usd,
        )
        .values(reserved_nano_usd=ApiKeySpend.reserved_nano_usd + hold_nano_usd)
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:
        row = session.get(ApiKeySpend, (api_key_id, period))
        used = row.spent_nano_usd + row.reserved_nano_usd if row else 0
        raise RateLimited(
            f"API key spend limit of {limit_nano_usd} nano-USD for period {period} would be exceeded: "
            f"{used} nano-USD spent or held, this call holds {hold_nano_usd} nano-USD",
            code="spend_limit_exceeded",
        )


def release(session: Session, api_key_id: int, period: str, hold_nano_usd: int, charged_nano_usd: int) -> None:
    """Turn a reservation into spend: the charged part is spent, the whole hold is unreserved."""
    session.execute(
        update(ApiKeySpend)
        .where(ApiKeySpend.api_key_id == api_key_id, ApiKeySpend.period == period)
        .values(
            reserved_nano_usd=ApiKeySpend.reserved_nano_usd - hold_nano_usd,
            spent_nano_usd=ApiKeySpend.spent_nano_usd + charged_nano_usd,
        )
        .execution_options(synchronize_session=False)
    )
