"""The audit API: committed settlement periods, their exports, account proofs and reserves.

Periods, exports and reserves are public. Proofs are for the signed-in account's own leaves.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Query
from fastapi.responses import StreamingResponse

from marketplace.api.deps import get_db, get_settings, require_session
from marketplace.db import Database
from marketplace.settings import Settings
from marketplace.settlement import audit
from marketplace.settlement.proof import BALANCES_TREE, RECORDS_TREE
from marketplace.settlement.store import export_file_name

router = APIRouter(prefix="/v1/audit")


@router.get("/periods")
def list_periods(
    limit: int = Query(20, description="Periods per page, 1 to 100."),
    before_period_id: int | None = Query(None, description="Return periods older than this one; next_before_period_id of the previous page."),
    db: Database = Depends(get_db),
) -> dict:
    with db.session() as session:
        return audit.list_periods(session, limit, before_period_id)


@router.get("/periods/{period_id}")
def read_period(period_id: int, db: Database = Depends(get_db)) -> dict:
    with db.session() as session:
        return audit.period_view(audit.committed_period(session, period_id))


@router.get("/periods/{period_id}/export")
def download_export(period_id: int, db: Database = Depends(get_db)) -> StreamingResponse:
    with db.session() as session:
        audit.committed_period(session, period_id)
    headers = {"content-disposition": f'attachment; filename="{export_file_name(period_id)}"'}
    return StreamingResponse(audit.iter_export(db, period_id), media_type="application/x-ndjson", headers=headers)


@router.get("/periods/{period_id}/proofs/balances")
def balance_proofs(period_id: int, account_id: int = Depends(require_session), db: Database = Depends(get_db)) -> dict:
    with db.session() as session:
        return audit.account_proofs_view(session, period_id, account_id, BALANCES_TREE, None, -1, 10)


@router.get("/periods/{period_id}/proofs/records")
def record_proofs(
    period_id: int,
    leaf_type: str | None = Query(None, alias="type", description="Only leaves of this type: usage, deposit, payout or adjustment."),
    after_index: int = Query(-1, description="Return leaves after this index; next_after_index of the previous page."),
    limit: int = Query(100, description="Proofs per page, 1 to 500."),
    account_id: int = Depends(require_session),
    db: Database = Depends(get_db),
) -> dict:
    with db.session() as session:
        return audit.account_proofs_view(session, period_id, account_id, RECORDS_TREE, leaf_type, after_index, limit)


@router.get("/reserves")
def reserves(
    period_id: int | None = Query(None, description="Compare with this period's liabilities; the latest committed period by default."),
    db: Database = Depends(get_db),
    settings: Settings = Depends(get_settings),
) -> dict:
    with db.session() as session:
        return audit.reserves_view(session, settings, period_id)
