"""Listing health: count each listing's calls and failures, and pause a listing that keeps failing.

The counters live in the shared rate-limit store (Redis in production), so every API process
sees the same error rate. A paused listing gets no traffic until the probe task finds its
upstream answering again and reactivates it.
"""

from __future__ import annotations

import asyncio
import logging

from sqlalchemy import update

from marketplace import listings
from marketplace.db import Database
from marketplace.models import Listing, utcnow
from marketplace.ratelimit import RateLimiter
from marketplace.settings import Settings

logger = logging.getLogger(__name__)


# Successful calls are counted in memory and sent to the shared store at most this often, so a
# healthy call costs no round trip. A failure sends the listing's unsent successes with it, so the
# error rate it is judged on counts every call this process made.
SUCCESS_FLUSH_INTERVAL_S = 0.5


class HealthTracker:
    def __init__(self, db: Database, settings: Settings, counters: RateLimiter) -> None:
        self.db = db
        self.settings = settings
        self.counters = counters
        self._unsent_successes: dict[int, int] = {}
        self._flusher: asyncio.Task[None] | None = None

    async def record(self, listing_id: int, ok: bool, detail: str = "") -> bool:
        """Count one call's outcome; returns True when this failure paused the listing."""
        window = self.settings.listing_health_window_s
        if ok:
            self._unsent_successes[listing_id] = self._unsent_successes.get(listing_id, 0) + 1
            if self._flusher is None:
                self._flusher = asyncio.get_running_loop().create_task(self._flush_later())
            return False
        unsent = self._unsent_successes.pop(listing_id, 0)
        calls = await self.counters.increment(f"health:calls:{listing_id}", 1 + unsent, window)
        errors = await self.counters.increment(f"health:errors:{listing_id}", 1, window)
        if calls < self.settings.listing_health_min_calls:
            return False
        if errors * 100 < self.settings.listing_health_error_rate_pct * calls:
            return False
        reason = f"{errors} of {calls} calls failed within {window} s; last error: {detail}"[:300]
        return self.pause(listing_id, reason)

    def pause(self, listing_id: int, reason: str) -> bool:
        with self.db.transaction() as session:
            result = session.execute(
                update(Listing)
                .where(Listing.id == listing_id, Listing.status == "active")
                .values(status="paused", paused_reason=reason, paused_at=utcnow())
            )
        listings.note_listing_change()
        if result.rowcount:
            logger.warning("listing paused", extra={"listing_id": listing_id, "reason": reason})
        return bool(result.rowcount)

    async def _flush_later(self) -> None:
        try:
            await asyncio.sleep(SUCCESS_FLUSH_INTERVAL_S)
        finally:
            self._flusher = None
        await self.flush()

    async def flush(self) -> None:
        """Send the successes counted in memory to the shared store."""
        unsent, self._unsent_successes = self._unsent_successes, {}
        window = self.settings.listing_health_window_s
        for listing_id, count in unsent.items():
            await self.counters.increment(f"health:calls:{listing_id}", count, window)

    async def close(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
            self._flusher = None
        await self.flush()

    async def snapshot(self, listing_id: int) -> dict:
        await self.flush()
        window = self.settings.listing_health_window_s
        return {
            "window_s": window,
            "calls": await self.counters.read(f"health:calls:{listing_id}", window),
            "errors": await self.counters.read(f"health:errors:{listing_id}", window),
        }


def reactivate(db: Database, listing_id: int) -> bool:
    with db.transaction() as session:
        result = session.execute(
            update(Listing).where(Listing.id == listing_id, Listing.status == "paused").values(status="active", paused_reason=None, paused_at=None)
        )
    listings.note_listing_change()
    if result.rowcount:
        logger.info("listing reactivated after a successful probe", extra={"listing_id": listing_id})
    return bool(result.rowcount)
