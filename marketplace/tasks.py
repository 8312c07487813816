"""Celery tasks: the hold sweep, the deposit watcher, supplier payouts and reconciliation."""

from __future__ import annotations

import logging

from marketplace import metering
from marketplace.celery_app import celery_app
from marketplace.db import get_database
from marketplace.reconciliation import reconcile
from marketplace.settings import get_settings

logger = logging.getLogger(__name__)


def _chain_connections() -> list:
    from chain.rpc import connect

    settings = get_settings()
    return [(chain, connect(chain)) for chain in settings.chains]


@celery_app.task(name="tokenport.expire_holds")
def expire_holds_task() -> int:
    db = get_database(get_settings().database_url)
    with db.transaction() as session:
        expired = metering.expire_holds(session)
    if expired:
        logger.info("expired holds released", extra={"count": expired})
    return expired


# One watcher per chain and worker process, so each keeps the eth_getLogs window size that its
# provider accepted. The cursor itself lives in the database.
_deposit_watchers: dict[int, object] = {}


@celery_app.task(name="tokenport.watch_deposits")
def watch_deposits_task() -> list[dict]:
    """Poll every chain once. A failing chain is logged and skipped, so it never stops the others."""
    from dataclasses import asdict

    from chain.watcher import DepositWatcher

    db = get_database(get_settings().database_url)
    results = []
    for chain, w3 in _chain_connections():
        watcher = _deposit_watchers.get(chain.chain_id)
        if not isinstance(watcher, DepositWatcher) or watcher.chain != chain:
            watcher = DepositWatcher(db, chain, w3)
            _deposit_watchers[chain.chain_id] = watcher
        try:
            result = watcher.poll_once()
        except Exception as exc:
            logger.exception("deposit poll failed; the next run retries it: chain=%d", chain.chain_id)
            results.append({"chain_id": chain.chain_id, "error": f"{type(exc).__name__}: {exc}"})
            continue
        results.append({"chain_id": chain.chain_id, **asdict(result), "windows": len(result.windows)})
    return results


@celery_app.task(name="tokenport.pay_suppliers")
def pay_suppliers_task() -> dict:
    """Advance open payouts and pay every supplier whose earnings reach the threshold, on the payout chain."""
    from dataclasses import asdict

    from chain.payouts import PayoutSender, treasury_signer

    settings = get_settings()
    connections = _chain_connections()
    if not connections:
        return {"skipped": "no chain is configured"}
    chain_id = settings.payout_chain_id or connections[0][0].chain_id
    chain, w3 = next(((chain, w3) for chain, w3 in connections if chain.chain_id == chain_id), (None, None))
    if chain is None or w3 is None:
        raise ValueError(f"payout chain {chain_id} is not configured; add it to TOKENPORT_CHAINS")

    sender = PayoutSender(get_database(settings.database_url), settings, chain, w3, treasury_signer(settings, chain))
    return {"chain_id": chain.chain_id, **asdict(sender.run_once())}


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
