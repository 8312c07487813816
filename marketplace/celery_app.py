"""The Celery application. Without TOKENPORT_REDIS_URL it runs every task eagerly, in process."""

from __future__ import annotations

from celery import Celery

from marketplace.settings import get_settings
from marketplace.settlement.config import get_settlement_settings


def create_celery() -> Celery:
    settings = get_settings()
    app = Celery("tokenport", include=["marketplace.tasks"])
    if settings.redis_url:
        app.conf.broker_url = settings.redis_url
        app.conf.result_backend = settings.redis_url
    else:
        app.conf.task_always_eager = True
        app.conf.task_eager_propagates = True
        app.conf.broker_url = "memory://"
        app.conf.result_backend = "cache+memory://"
    app.conf.task_acks_late = True
    app.conf.worker_prefetch_multiplier = 1
    app.conf.beat_schedule = {
        "expire-holds": {"task": "tokenport.expire_holds", "schedule": settings.hold_sweep_interval_s},
        "watch-deposits": {"task": "tokenport.watch_deposits", "schedule": min((c.poll_interval_s for c in settings.chains), default=5.0)},
        "reconcile": {"task": "tokenport.reconcile", "schedule": 3600.0},
        "pay-suppliers": {"task": "tokenport.pay_suppliers", "schedule": settings.payout_interval_s},
        "close-settlement-period": {"task": "tokenport.close_settlement_period", "schedule": get_settlement_settings().check_interval_s},
        "probe-paused-listings": {"task": "tokenport.probe_paused_listings", "schedule": settings.listing_probe_interval_s},
    }
    return app


celery_app = create_celery()
