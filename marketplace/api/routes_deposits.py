"""Deposit instructions and deposit status for the signed-in account."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from marketplace.api.deps import get_db, get_settings, require_session
from marketplace.db import Database
from marketplace.deposits import deposit_view
from marketplace.models import Deposit, Wallet
from marketplace.settings import Settings

router = APIRouter(prefix="/v1")


def eip681_transfer_uri(chain_id: int, token_address: str, recipient: str, amount_units: int | None = None) -> str:
    """An EIP-681 URI that asks a wallet to call transfer(recipient, amount) on the token."""
    uri = f"ethereum:{token_address}@{chain_id}/transfer?address={recipient}"
    if amount_units is not None:
        uri += f"&uint256={amount_units}"
    return uri


@router.get("/deposits/instructions")
def deposit_instructions(account_id: int = Depends(require_session), db: Database = Depends(get_db), settings: Settings = Depends(get_settings)) -> dict:
    with db.session() as session:
        wallets = [wallet.address for wallet in session.query(Wallet).filter_by(account_id=account_id)]
    options = []
    for chain in settings.chains:
        for token in chain.tokens:
            options.append(
                {
                    "chain_id": chain.chain_id,
                    "chain": chain.name,
                    "token_symbol": token.symbol,
                    "token_address": token.address,
                    "token_decimals": token.decimals,
                    "treasury_address": chain.treasury_address,
                    "confirmations_required": chain.confirmations,
                    "payment_uri": eip681_transfer_uri(chain.chain_id, token.address, chain.treasury_address),
                }
            )
    return {
        "send_from": wallets,
        "rule": "Send the token from one of your signed-in wallets to the treasury; other senders are not credited.",
        "options": options,
    }


@router.get("/deposits")
def list_deposits(request: Request, account_id: int = Depends(require_session), db: Database = Depends(get_db), settings: Settings = Depends(get_settings)) -> dict:
    heads: dict[int, int] = getattr(request.app.state, "chain_heads", {})
    with db.session() as session:
        rows = session.query(Deposit).filter_by(account_id=account_id).order_by(Deposit.block_number, Deposit.log_index)
        data = []
        for deposit in rows:
            depth = settings.chain(deposit.chain_id).confirmations
            data.append(deposit_view(deposit, heads.get(deposit.chain_id), depth))
    return {"data": data}
