"""`tokenport expire-holds` releases, once, the holds that outlived their calls."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.test_ledger import create_caller, deposit, open_call, read_buyer

TOKENPORT = Path(sys.executable).parent / "tokenport"


def test_expire_holds_releases_what_outlived_its_call(db):
    buyer_id, api_key_id, _supplier_id, listing_id = create_caller(db)
    deposit(db, buyer_id, 100_000, "deposit-1")
    # A hold that expires at once, as if the API process had died during the call.
    open_call(db, "gen-1", buyer_id, api_key_id, listing_id, hold_nano_usd=40_000, hold_ttl_s=0)
    open_call(db, "gen-2", buyer_id, api_key_id, listing_id, hold_nano_usd=10_000, hold_ttl_s=600)
    env = {**os.environ, "TOKENPORT_DATABASE_URL": db.url}
    env.pop("TOKENPORT_REDIS_URL", None)

    first = subprocess.run([str(TOKENPORT), "expire-holds"], env=env, capture_output=True, text=True, timeout=120)
    second = subprocess.run([str(TOKENPORT), "expire-holds"], env=env, capture_output=True, text=True, timeout=120)

    assert first.returncode == 0, first.stderr
    assert first.stdout.strip() == "released 1 expired holds"
    assert second.stdout.strip() == "released 0 expired holds"
    assert read_buyer(db, buyer_id).debits_pending_nano_usd == 10_000
