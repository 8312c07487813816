"""The deposit watcher on an in-process eth-tester chain: confirmation depth and exactly-once credit."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from chain.devchain import DEV_BUYER, DEV_TREASURY, fund_wallet, mine_blocks, send_token
from chain.watcher import DepositWatcher
from marketplace.accounts import sign_in
from marketplace.models import ChainCursor, Deposit, LedgerTransfer
from marketplace.settings import ChainSettings, Settings, TokenSettings
from marketplace.wallet_client import build_siwe_message, sign_text
from tests.factories import buyer_balance

CONFIRMATIONS = 4


@pytest.fixture
def chain(eth_tester_w3, dev_token) -> ChainSettings:
    return ChainSettings(
        chain_id=eth_tester_w3.eth.chain_id,
        rpc_url="http://unused",
        treasury_address=DEV_TREASURY.address,
        confirmations=CONFIRMATIONS,
        max_block_range=3,
        start_block=eth_tester_w3.eth.block_number,
        tokens=[TokenSettings(symbol="USDC", address=dev_token.address, decimals=6)],
    )


@pytest.fixture
def buyer_account_id(db, chain) -> int:
    settings = Settings(database_url=db.url, chains=[chain])
    with db.transaction() as session:
        from marketplace.accounts import issue_nonce

        nonce = issue_nonce(session, settings).nonce
    message = build_siwe_message(address=DEV_BUYER.address, nonce=nonce, domain=settings.siwe_domain, uri=settings.siwe_uri, chain_id=chain.chain_id)
    with db.transaction() as session:
        return sign_in(session, settings, message=message, signature=sign_text(DEV_BUYER.private_key, message)).account_id


def _credited_transfers(db) -> int:
    with db.session() as session:
        return session.scalar(select(func.count()).select_from(LedgerTransfer).where(LedgerTransfer.code == "deposit"))


def test_deposit_waits_for_confirmation_depth(db, eth_tester_w3, dev_token, chain, buyer_account_id):
    fund_wallet(eth_tester_w3, dev_token, DEV_BUYER.address, 7_250_000, 0)
    watcher = DepositWatcher(db, chain, eth_tester_w3)

    send_token(eth_tester_w3, dev_token, DEV_BUYER.private_key, DEV_TREASURY.address, 7_250_000)
    for missing in range(CONFIRMATIONS - 1, 0, -1):
        watcher.poll_once()
        with db.session() as session:
            deposit = session.scalar(select(Deposit))
        assert deposit.status == "pending"
        assert buyer_balance(db, buyer_account_id).posted_nano_usd == 0
        mine_blocks(eth_tester_w3, 1)

    result = watcher.poll_once()
    with db.session() as session:
        deposit = session.scalar(select(Deposit))
    assert deposit.status == "credited"
    assert deposit.amount_units == "7250000"
    assert buyer_balance(db, buyer_account_id).posted_nano_usd == 7_250_000_000
    assert result.cursor_block == eth_tester_w3.eth.block_number - CONFIRMATIONS + 1


def test_rescanning_the_same_blocks_credits_nothing_more(db, eth_tester_w3, dev_token, chain, buyer_account_id):
    fund_wallet(eth_tester_w3, dev_token, DEV_BUYER.address, 3_000_000, 0)
    watcher = DepositWatcher(db, chain, eth_tester_w3)
    send_token(eth_tester_w3, dev_token, DEV_BUYER.private_key, DEV_TREASURY.address, 1_000_000)
    send_token(eth_tester_w3, dev_token, DEV_BUYER.private_key, DEV_TREASURY.address, 2_000_000)
    mine_blocks(eth_tester_w3, CONFIRMATIONS)
    watcher.poll_once()
    assert _credited_transfers(db) == 2

    # Move the cursor back to before the deposits, as a crash before the cursor save would.
    with db.transaction() as session:
        session.get(ChainCursor, chain.chain_id).last_block = chain.start_block - 1
    watcher.poll_once()
    DepositWatcher(db, chain, eth_tester_w3).poll_once()

    assert _credited_transfers(db) == 2
    assert buyer_balance(db, buyer_account_id).posted_nano_usd == 3_000_000_000


def test_transfer_to_other_address_is_ignored(db, eth_tester_w3, dev_token, chain, buyer_account_id):
    fund_wallet(eth_tester_w3, dev_token, DEV_BUYER.address, 1_000_000, 0)
    send_token(eth_tester_w3, dev_token, DEV_BUYER.private_key, DEV_BUYER.address.replace("3C44", "3c44"), 1_000_000)
    mine_blocks(eth_tester_w3, CONFIRMATIONS)

    result = DepositWatcher(db, chain, eth_tester_w3).poll_once()

    assert result.logs_seen == 0
    assert _credited_transfers(db) == 0
