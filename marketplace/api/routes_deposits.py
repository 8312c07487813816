"""Deposit instructions and deposit status for the signed-in account."""

from __future__ import annotations

import re

from fastapi import APIRouter, Depends, Query

from marketplace import deposits
from marketplace.api.deps import get_db, get_settings, require_session
from marketplace.db import Database
from marketplace.errors import InvalidRequest, NotFound
from marketplace.settings import Settings

router = APIRouter(prefix="/v1")

_TX_HASH = re.compile(r"0x[0-9a-fA-F]{64}")


@router.get("/deposits/instructions")
def deposit_instructions(
    amount: str | None = Query(default=None, max_length=90, description="Amount in whole tokens, such as 5 or 12.25."),
    account_id: int = Depends(require_session),
    db: Database = Depends(get_db),
    settings: Settings = Depends(get_settings),
) -> dict:
    with db.session() as session:
        return deposits.deposit_instructions(session, settings, account_id, amount)


@router.get("/deposits")
def list_deposits(account_id: int = Depends(require_session), db: Database = Depends(get_db), settings: Settings = Depends(get_settings)) -> dict:
    with db.session() as session:
        return {"data": deposits.account_deposits(session, settings, account_id)}


@router.get("/deposits/{chain_id}/{tx_hash}")
def read_deposit(
    chain_id: int,
    tx_hash: str,
    account_id: int = Depends(require_session),
    db: Database = Depends(get_db),
    settings: Settings = Depends(get_settings),
) -> dict:
    """Return the deposits of one transaction: pending with n of N confirmations, credited, orphaned, and so on."""
    if _TX_HASH.fullmatch(tx_hash) is None:
        raise InvalidRequest(f"tx_hash {tx_hash!r} is not a 0x-prefixed 32-byte hex hash", param="tx_hash")
    with db.session() as session:
        data = deposits.account_deposits(session, settings, account_id, chain_id=chain_id, tx_hash=tx_hash)
    if not data:
        raise NotFound(
            f"no deposit of this account in transaction {tx_hash} on chain {chain_id}; "
            "the watcher records a deposit at its next poll after the transaction is mined",
            param="tx_hash",
        )
    return {"data": data}
