"""Probes of paused listings: one tiny call each, and a listing that answers is reactivated.

A probe is not a buyer's call, so it writes nothing to the ledger; the supplier's upstream is
charged one short completion for it.
"""

from __future__ import annotations

import logging

import httpx
from sqlalchemy import select

from marketplace import health
from marketplace.credentials import decrypt_credential
from marketplace.db import Database
from marketplace.models import Listing
from marketplace.settings import Settings
from providers.errors import UpstreamError
from providers.registry import get_adapter

logger = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 20.0
PROBE_MESSAGES = [{"role": "user", "content": "ping"}]


async def probe_paused_listings(db: Database, settings: Settings, client: httpx.AsyncClient | None = None) -> dict[int, bool]:
    """Probe every paused listing once; returns listing id -> whether it was reactivated."""
    with db.session() as session:
        paused = list(session.scalars(select(Listing).where(Listing.status == "paused").order_by(Listing.id)))

    results: dict[int, bool] = {}
    async with httpx.AsyncClient(timeout=PROBE_TIMEOUT_S) if client is None else _borrowed(client) as http:
        for listing in paused:
            adapter = get_adapter(listing.upstream_protocol)
            body = {"model": listing.upstream_model, "messages": PROBE_MESSAGES, "max_tokens": 1}
            try:
                await adapter.complete(http, listing.upstream_base_url, decrypt_credential(settings, listing.upstream_credential_encrypted), body, PROBE_TIMEOUT_S)
            except UpstreamError as exc:
                logger.info("paused listing still failing", extra={"listing_id": listing.id, "kind": exc.kind, "status": exc.status_code})
                results[listing.id] = False
                continue
            results[listing.id] = health.reactivate(db, listing.id)
    return results


class _borrowed:
    """Use a caller's client without closing it."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client

    async def __aenter__(self) -> httpx.AsyncClient:
        return self.client

    async def __aexit__(self, *exc_info: object) -> None:
        return None
