"""Sign-in, the account view and API keys."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Path

from marketplace import accounts, ledger
from marketplace.api.deps import get_db, get_settings, require_session
from marketplace.api.schemas import ApiKeyBody, SignInBody
from marketplace.db import Database
from marketplace.errors import InvalidRequest
from marketplace.models import ApiKey, Wallet
from marketplace.settings import Settings

router = APIRouter(prefix="/v1")


@router.post("/auth/nonce")
def create_nonce(db: Database = Depends(get_db), settings: Settings = Depends(get_settings)) -> dict:
    with db.transaction() as session:
        nonce = accounts.issue_nonce(session, settings)
    return {
        "nonce": nonce.nonce,
        "expires_at": nonce.expires_at.isoformat(),
        "domain": settings.siwe_domain,
        "uri": settings.siwe_uri,
        "chain_ids": [chain.chain_id for chain in settings.chains],
        "plain_message": accounts.plain_sign_in_text(nonce.nonce, "<your checksummed address>"),
    }


@router.post("/auth/verify")
def verify_sign_in(body: SignInBody, db: Database = Depends(get_db), settings: Settings = Depends(get_settings)) -> dict:
    with db.transaction() as session:
        result = accounts.sign_in(
            session, settings, signature=body.signature, message=body.message, address=body.address, nonce=body.nonce
        )
    return {
        "account_id": result.account_id,
        "address": result.address,
        "session_token": result.session_token,
        "expires_at": result.expires_at.isoformat(),
        "created": result.created,
    }


@router.get("/account")
def read_account(account_id: int = Depends(require_session), db: Database = Depends(get_db)) -> dict:
    with db.transaction() as session:
        buyer = ledger.get_buyer_account(session, account_id)
        balance = ledger.read_balance(session, buyer.id)
        wallets = [wallet.address for wallet in session.query(Wallet).filter_by(account_id=account_id)]
    return {
        "account_id": account_id,
        "wallets": wallets,
        "balance_nano_usd": balance.posted_nano_usd,
        "held_nano_usd": balance.pending_debits_nano_usd,
        "available_nano_usd": balance.available_nano_usd,
    }


def _key_view(key: ApiKey) -> dict:
    return {
        "id": key.id,
        "name": key.name,
        "prefix": key.key_prefix,
        "created_at": key.created_at.isoformat(),
        "revoked_at": key.revoked_at.isoformat() if key.revoked_at else None,
        "allowed_models": key.allowed_models,
        "spend_limit_nano_usd": key.spend_limit_nano_usd,
        "spend_limit_period": key.spend_limit_period,
        "requests_per_minute": key.requests_per_minute,
        "tokens_per_minute": key.tokens_per_minute,
    }


@router.post("/keys", status_code=201)
def create_key(body: ApiKeyBody, account_id: int = Depends(require_session), db: Database = Depends(get_db)) -> dict:
    if (body.spend_limit_nano_usd is None) != (body.spend_limit_period is None):
        raise InvalidRequest("spend_limit_nano_usd and spend_limit_period must be set together", param="spend_limit_period")
    with db.transaction() as session:
        created = accounts.create_api_key(session, account_id, **body.model_dump())
        view = _key_view(created.key)
    return {**view, "key": created.secret, "note": "This key is shown once; store it now."}


@router.get("/keys")
def list_keys(account_id: int = Depends(require_session), db: Database = Depends(get_db)) -> dict:
    with db.session() as session:
        keys = session.query(ApiKey).filter_by(account_id=account_id).order_by(ApiKey.id)
        return {"data": [_key_view(key) for key in keys]}


@router.delete("/keys/{key_id}")
def revoke_key(key_id: int = Path(ge=1, le=2**31 - 1), account_id: int = Depends(require_session), db: Database = Depends(get_db)) -> dict:
    with db.transaction() as session:
        key = accounts.revoke_api_key(session, account_id, key_id)
        return _key_view(key)
