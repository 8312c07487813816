"""Celery tasks: the hold sweep, the deposit watcher and reconciliation."""

from __future__ import annotations

import logging

from web3 import Web3

from marketplace import metering
from marketplace.celery_app import celery_app
from marketplace.db import get_database
from marketplace.reconciliation import reconcile
from marketplace.settings import get_settings

logger = logging.getLogger(__name__)


def _chain_connections() -> list:
    settings = get_settings()
    return [(chain, Web3(Web3.HTTPProvider(chain.rpc_url, request_kwargs={"timeout": 30}))) for chain in settings.chains]


@celery_app.task(name="tokenport.expire_holds")
def expire_holds_task() -> int:
    db = get_database(get_settings().database_url)
    with db.transaction() as session:
        expired = metering.expire_holds(session)
    if expired:
        logger.info("expired holds released", extra={"count": expired})
    return expired


@celery_app.task(name="tokenport.watch_deposits")
def watch_deposits_task() -> list[dict]:
    from chain.watcher import DepositWatcher

    db = get_database(get_settings().database_url)
    results = []
    for chain, w3 in _chain_connections():
        result = DepositWatcher(db, chain, w3).poll_once()
        results.append({"chain_id": chain.chain_id, "head_block": result.head_block, "cursor_block": result.cursor_block, "credited": result.credited, "pending": result.pending})
    return results


@celery_app.task(name="tokenport.reconcile")
def reconcile_task() -> dict:
    db = get_database(get_settings().database_url)
    return reconcile(db, _chain_connections()).to_dict()


@celery_app.task(name="tokenport.probe_paused_listings")
def probe_paused_listings_task() -> dict[str, bool]:
    import anyio

    from marketplace.probes import probe_paused_listings

    settings = get_settings()
    results = anyio.run(probe_paused_listings, get_database(settings.database_url), settings)
    return {str(listing_id): reactivated for listing_id, reactivated in results.items()}


@celery_app.task(name="tokenport.close_settlement_period")
def close_settlement_period_task() -> dict | None:
    """Close the next settlement period if one is due, and commit it on-chain."""
    from marketplace.settlement.config import get_settlement_settings
    from marketplace.settlement.period import close_scheduled_period

    settings = get_settings()
    return close_scheduled_period(get_database(settings.database_url), settings, get_settlement_settings())
