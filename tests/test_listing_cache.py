"""The proxy's per-process cache of a model's listings: reused within its TTL, dropped on any listing write."""

from __future__ import annotations

import asyncio

import httpx
from sqlalchemy import text

from marketplace import health
from marketplace.models import Listing
from marketplace.proxy import MeteringProxy
from marketplace.ratelimit import create_rate_limiter
from marketplace.settings import Settings
from tests.test_ledger import create_caller

MODEL = "deepseek/deepseek-chat"


def _proxy(db, ttl_s: float) -> MeteringProxy:
    settings = Settings(database_url=db.url, listing_cache_ttl_s=ttl_s)
    return MeteringProxy(db, settings, httpx.AsyncClient(), create_rate_limiter(None))


def _prices(proxy: MeteringProxy) -> list[int]:
    rows = asyncio.run(proxy._candidates(MODEL))
    return [listing.offer_input_micro_usd_per_mtok for listing, _supplier in rows]


def test_cache_drops_on_local_write(db):
    _buyer, _key, _supplier, listing_id = create_caller(db)
    proxy = _proxy(db, ttl_s=3600)
    assert _prices(proxy) == [216_000]

    with db.transaction() as session:
        listing = session.get(Listing, listing_id)
        assert listing is not None
        listing.offer_input_micro_usd_per_mtok = 200_000
    assert _prices(proxy) == [200_000]

    health.HealthTracker(db, proxy.settings, proxy.limiter).pause(listing_id, "test")
    assert _prices(proxy) == []
    asyncio.run(proxy.close())


def test_cache_keeps_remote_write_until_ttl(db):
    _buyer, _key, _supplier, listing_id = create_caller(db)
    cached = _proxy(db, ttl_s=3600)
    uncached = _proxy(db, ttl_s=0)
    assert _prices(cached) == _prices(uncached) == [216_000]

    # As another process would change it: straight SQL, which this process does not see.
    with db.engine.begin() as connection:
        connection.execute(text("UPDATE listings SET offer_input_micro_usd_per_mtok = 100000 WHERE id = :id"), {"id": listing_id})

    assert _prices(cached) == [216_000]
    assert _prices(uncached) == [100_000]
    asyncio.run(cached.close())
    asyncio.run(uncached.close())
