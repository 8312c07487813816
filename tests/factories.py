"""Builders for test data that go through the same API and domain functions as real users."""

from __future__ import annotations

import httpx
from sqlalchemy import func, select

from chain.devchain import DevAccount
from marketplace import deposits, ledger
from marketplace.db import Database
from marketplace.models import Generation, LedgerAccount, LedgerTransfer
from marketplace.settings import Settings
from marketplace.wallet_client import build_siwe_message, sign_text

DEFAULT_CHAIN_ID = 31337


def sign_in(client: httpx.Client, settings: Settings, wallet: DevAccount, chain_id: int = DEFAULT_CHAIN_ID) -> dict:
    nonce = client.post("/v1/auth/nonce").json()["nonce"]
    message = build_siwe_message(address=wallet.address, nonce=nonce, domain=settings.siwe_domain, uri=settings.siwe_uri, chain_id=chain_id)
    response = client.post("/v1/auth/verify", json={"message": message, "signature": sign_text(wallet.private_key, message)})
    assert response.status_code == 200, response.text
    return response.json()


def create_listing(client: httpx.Client, session_token: str, payout_address: str, **fields) -> dict:
    headers = {"authorization": f"Bearer {session_token}"}
    response = client.post("/v1/supplier", json={"name": "Test Supplier", "payout_address": payout_address}, headers=headers)
    assert response.status_code in (201, 409), response.text
    body = {
        "model": "deepseek/deepseek-chat",
        "upstream_model": "mock-1",
        "list_input_micro_usd_per_mtok": 270_000,
        "list_output_micro_usd_per_mtok": 1_100_000,
        "offer_input_micro_usd_per_mtok": 216_000,
        "offer_output_micro_usd_per_mtok": 880_000,
        **fields,
    }
    response = client.post("/v1/supplier/listings", json=body, headers=headers)
    assert response.status_code == 201, response.text
    return response.json()


def create_api_key(client: httpx.Client, session_token: str, **fields) -> str:
    response = client.post("/v1/keys", json={"name": "test", **fields}, headers={"authorization": f"Bearer {session_token}"})
    assert response.status_code == 201, response.text
    return response.json()["key"]


def credit_without_chain(db: Database, account_id: int, amount_nano_usd: int, tx_hash: str = "0x" + "ab" * 32, log_index: int = 0) -> None:
    """Credit a buyer through the deposit path with a made-up log, for tests that need no chain."""
    log = deposits.DepositLog(
        chain_id=DEFAULT_CHAIN_ID,
        tx_hash=tx_hash,
        log_index=log_index,
        block_number=1,
        block_hash="0x" + "00" * 32,
        token_address="0x" + "11" * 20,
        token_decimals=9,
        from_address="0x" + "22" * 20,
        to_address="0x" + "33" * 20,
        amount_units=amount_nano_usd,
    )
    with db.transaction() as session:
        source = ledger.get_or_create_account(session, ledger.chain_asset_account_name(log.chain_id, log.token_address), "chain_asset")
        buyer = ledger.get_buyer_account(session, account_id)
        transfer_id = deposits.deposit_transfer_id(log.chain_id, log.tx_hash, log.log_index)
        ledger.transfer(session, transfer_id, source, buyer, amount_nano_usd, "deposit", reference=transfer_id)


def buyer_balance(db: Database, account_id: int) -> ledger.Balance:
    with db.transaction() as session:
        return ledger.read_balance(session, ledger.get_buyer_account(session, account_id).id)


def ledger_counts(db: Database) -> tuple[int, int, int]:
    """(ledger transfers, ledger accounts, generations): a test compares these to show nothing was written."""
    with db.session() as session:
        return (
            session.scalar(select(func.count()).select_from(LedgerTransfer)),
            session.scalar(select(func.count()).select_from(LedgerAccount)),
            session.scalar(select(func.count()).select_from(Generation)),
        )
