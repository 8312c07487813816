"""Deposit instructions and status over HTTP, the finalized tag, and the Celery task across several chains."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from chain.devchain import DEV_BUYER, DEV_TREASURY, fund_wallet, mine_blocks
from chain.rpc import connect
from chain.vault import account_ref_for, allow_token, deploy_vault
from chain.watcher import DepositWatcher
from marketplace.models import LedgerTransfer
from marketplace.settings import ChainSettings
from tests.factories import buyer_balance, sign_in
from tests.fixtures_app import start_marketplace
from tests.test_watcher import bind_wallet, chain_settings, deploy_token, deposit_rows, send_raw, sign_transfers
from tests.test_watcher_reorgs import reorg

pytestmark = pytest.mark.anvil


@pytest.fixture
def usdc(anvil_w3):
    token = deploy_token(anvil_w3, "USDC", 6)
    fund_wallet(anvil_w3, token, DEV_BUYER.address, 100_000_000, 0)
    return token


@pytest.fixture
def vault(anvil_w3, usdc):
    contract = deploy_vault(anvil_w3, DEV_TREASURY.local_account())
    allow_token(anvil_w3, contract, usdc.address, DEV_TREASURY.local_account())
    return contract


def test_instructions_list_eip681_uris(db, anvil_w3, usdc, vault):
    chain = chain_settings(anvil_w3, [(usdc, 6)], vault_address=vault.address, confirmations=3)
    server, market = start_marketplace(db, [chain])
    try:
        client = market.client()
        buyer = sign_in(client, market.settings, DEV_BUYER)
        headers = {"authorization": f"Bearer {buyer['session_token']}"}

        plain = client.get("/v1/deposits/instructions", headers=headers).json()
        exact = client.get("/v1/deposits/instructions", params={"amount": "12.25"}, headers=headers).json()
        too_precise = client.get("/v1/deposits/instructions", params={"amount": "0.1234567"}, headers=headers)
        not_a_number = client.get("/v1/deposits/instructions", params={"amount": "1e6"}, headers=headers)
    finally:
        server.stop()

    ref = "0x" + account_ref_for(buyer["account_id"]).hex()
    transfer, through_vault = exact["options"]
    assert plain["send_from"] == [DEV_BUYER.address]
    assert [option["method"] for option in plain["options"]] == ["transfer", "vault"]
    assert plain["options"][0]["payment_uri"] == f"ethereum:{usdc.address}@31337/transfer?address={DEV_TREASURY.address}"
    assert transfer["payment_uri"] == f"ethereum:{usdc.address}@31337/transfer?address={DEV_TREASURY.address}&uint256=12250000"
    assert transfer["confirmations_required"] == 3
    assert through_vault["account_ref"] == ref
    assert through_vault["approve_uri"] == f"ethereum:{usdc.address}@31337/approve?address={vault.address}&uint256=12250000"
    assert through_vault["deposit_uri"] == f"ethereum:{vault.address}@31337/deposit?address={usdc.address}&uint256=12250000&bytes32={ref}"
    assert too_precise.status_code == 400
    assert too_precise.json()["error"]["param"] == "amount"
    assert too_precise.json()["error"]["message"] == "amount '0.1234567' has more than the token's 6 decimals"
    assert not_a_number.status_code == 400
    assert not_a_number.json()["error"]["message"] == "amount '1e6' is not a decimal number such as 5 or 12.25"


def test_status_pending_credited_orphaned(db, anvil_w3, usdc):
    chain = chain_settings(anvil_w3, [(usdc, 6)], confirmations=3)
    server, market = start_marketplace(db, [chain])
    try:
        client = market.client()
        buyer = sign_in(client, market.settings, DEV_BUYER)
        headers = {"authorization": f"Bearer {buyer['session_token']}"}
        watcher = DepositWatcher(db, chain, anvil_w3)
        kept, lost = send_raw(anvil_w3, sign_transfers(anvil_w3, usdc, DEV_BUYER, DEV_TREASURY.address, [2_000_000, 3_000_000]))

        watcher.poll_once()
        pending = [client.get(f"/v1/deposits/31337/{tx_hash}", headers=headers).json()["data"][0] for tx_hash in (kept, lost)]
        # The second transfer's block is replaced; the first has one confirmation more.
        reorg(anvil_w3, 1)
        mine_blocks(anvil_w3, 3)
        watcher.poll_once()
        settled = [client.get(f"/v1/deposits/31337/{tx_hash}", headers=headers).json()["data"][0] for tx_hash in (kept, lost)]
        listing = client.get("/v1/deposits", headers=headers).json()["data"]
        unknown = client.get(f"/v1/deposits/31337/0x{'12' * 32}", headers=headers)
        malformed = client.get("/v1/deposits/31337/0x1234", headers=headers)
    finally:
        server.stop()

    assert [(view["status"], view["confirmations"], view["confirmations_required"]) for view in pending] == [
        ("pending", 2, 3),
        ("pending", 1, 3),
    ]
    assert [(view["status"], view["confirmations"]) for view in settled] == [("credited", None), ("orphaned", None)]
    assert settled[0]["transfer_id"] == f"deposit:31337:{kept}:0"
    assert [view["status"] for view in listing] == ["credited", "orphaned"]
    assert unknown.status_code == 404
    assert unknown.json()["error"]["param"] == "tx_hash"
    assert malformed.status_code == 400
    assert buyer_balance(db, buyer["account_id"]).posted_nano_usd == 2_000_000_000


def test_finalized_tag_sets_creditable_block(db, anvil_w3, usdc):
    # anvil reports block head - 64 as finalized (32 slots per epoch, two epochs).
    chain = chain_settings(anvil_w3, [(usdc, 6)], finality="finalized")
    account_id = bind_wallet(db, chain.chain_id, DEV_BUYER)
    watcher = DepositWatcher(db, chain, anvil_w3)
    (tx_hash,) = send_raw(anvil_w3, sign_transfers(anvil_w3, usdc, DEV_BUYER, DEV_TREASURY.address, [1_000_000]))
    deposit_block = anvil_w3.eth.get_transaction_receipt(tx_hash)["blockNumber"]

    mine_blocks(anvil_w3, 40)
    early = watcher.poll_once()
    finalized_then = anvil_w3.eth.get_block("finalized")["number"]
    early_status = deposit_rows(db)[0].status
    mine_blocks(anvil_w3, 30)
    late = watcher.poll_once()

    assert early.safe_block == finalized_then
    assert early.safe_block < deposit_block
    assert early_status == "pending"
    assert late.safe_block >= deposit_block
    assert deposit_rows(db)[0].status == "credited"
    assert buyer_balance(db, account_id).posted_nano_usd == 1_000_000_000


def test_watch_task_isolates_broken_chain(db, anvil_w3, usdc, eth_tester_w3, dev_token, monkeypatch):
    import marketplace.tasks as tasks

    fund_wallet(eth_tester_w3, dev_token, DEV_BUYER.address, 4_000_000, 0)
    anvil_chain = chain_settings(anvil_w3, [(usdc, 6)], confirmations=1)
    tester_chain = chain_settings(eth_tester_w3, [(dev_token, 6)], confirmations=1)
    # Nothing listens on port 9 of 127.0.0.1, so every call to this chain fails.
    broken_chain = ChainSettings(chain_id=999, rpc_url="http://127.0.0.1:9", treasury_address=DEV_TREASURY.address, rpc_timeout_s=2)
    account_id = bind_wallet(db, anvil_chain.chain_id, DEV_BUYER)
    send_raw(anvil_w3, sign_transfers(anvil_w3, usdc, DEV_BUYER, DEV_TREASURY.address, [1_000_000]))
    send_raw(eth_tester_w3, sign_transfers(eth_tester_w3, dev_token, DEV_BUYER, DEV_TREASURY.address, [4_000_000]))
    connections = [(broken_chain, connect(broken_chain)), (anvil_chain, anvil_w3), (tester_chain, eth_tester_w3)]
    monkeypatch.setattr(tasks, "get_settings", lambda: type("S", (), {"database_url": db.url})())
    monkeypatch.setattr(tasks, "_chain_connections", lambda: connections)
    monkeypatch.setattr(tasks, "_deposit_watchers", {})

    results = tasks.watch_deposits_task.delay().get()

    assert [result["chain_id"] for result in results] == [999, 31337, eth_tester_w3.eth.chain_id]
    assert "ConnectionError" in results[0]["error"]
    assert [result["credited"] for result in results[1:]] == [1, 1]
    with db.session() as session:
        credit_ids = sorted(session.scalars(select(LedgerTransfer.id).where(LedgerTransfer.code == "deposit")))
    assert [credit_id.split(":")[1] for credit_id in credit_ids] == sorted(["31337", str(eth_tester_w3.eth.chain_id)])
    assert buyer_balance(db, account_id).posted_nano_usd == 5_000_000_000
