"""End to end: a wallet deposit on anvil pays for metered calls made with the real openai SDK."""

from __future__ import annotations

import openai
import pytest
from web3 import Web3

from chain.devchain import DEV_BUYER, DEV_DEPLOYER, DEV_SUPPLIER_PAYOUT, DEV_TREASURY, deploy_dev_stablecoin, fund_wallet, mine_blocks, send_token
from chain.watcher import DepositWatcher
from marketplace import ledger
from marketplace.reconciliation import reconcile
from marketplace.settings import ChainSettings, TokenSettings
from tests.factories import buyer_balance, create_api_key, create_listing, sign_in
from tests.fixtures_app import start_marketplace

pytestmark = pytest.mark.anvil

DEPOSIT_UNITS = 5_000_000  # 5 USDC at 6 decimals
OFFER_INPUT = 216_000
OFFER_OUTPUT = 880_000
CONFIRMATIONS = 3


def expected_cost_nano_usd(prompt_tokens: int, completion_tokens: int) -> int:
    # The documented rule: sum(tokens * micro-USD per Mtok) / 1000, rounded up once.
    return -(-(prompt_tokens * OFFER_INPUT + completion_tokens * OFFER_OUTPUT) // 1000)


@pytest.fixture
def dev_chain(anvil_w3: Web3):
    token = deploy_dev_stablecoin(anvil_w3)
    fund_wallet(anvil_w3, token, DEV_BUYER.address, 100_000_000, 10**18)
    chain = ChainSettings(
        chain_id=31337,
        rpc_url="http://unused",
        treasury_address=DEV_TREASURY.address,
        confirmations=CONFIRMATIONS,
        start_block=anvil_w3.eth.block_number,
        tokens=[TokenSettings(symbol="USDC", address=token.address, decimals=6)],
    )
    return anvil_w3, token, chain


def test_deposit_pays_for_two_sdk_calls(db, dev_chain, mock_upstream):
    w3, token, chain = dev_chain
    server, market = start_marketplace(db, [chain])
    try:
        client = market.client()
        supplier = sign_in(client, market.settings, DEV_SUPPLIER_PAYOUT)
        create_listing(client, supplier["session_token"], DEV_SUPPLIER_PAYOUT.address, upstream_base_url=mock_upstream.base_url, upstream_credential=mock_upstream.api_key)
        buyer = sign_in(client, market.settings, DEV_BUYER)
        account_id = buyer["account_id"]
        watcher = DepositWatcher(db, chain, w3)

        send_token(w3, token, DEV_BUYER.private_key, DEV_TREASURY.address, DEPOSIT_UNITS)
        watcher.poll_once()
        assert buyer_balance(db, account_id).posted_nano_usd == 0
        mine_blocks(w3, CONFIRMATIONS - 1)
        watcher.poll_once()
        assert buyer_balance(db, account_id).posted_nano_usd == 5_000_000_000

        sdk = openai.OpenAI(base_url=f"{market.url}/v1", api_key=create_api_key(client, buyer["session_token"]))
        completion = sdk.chat.completions.create(
            model="deepseek/deepseek-chat", messages=[{"role": "user", "content": "Say hello to Tokenport"}], max_tokens=16
        )
        # The mock counts 3 tokens per message plus one per word, and one per reply word.
        assert completion.usage.prompt_tokens == 7
        assert completion.usage.completion_tokens == 12
        assert completion.usage.model_extra["cost_nano_usd"] == expected_cost_nano_usd(7, 12) == 12_072
        assert completion.choices[0].message.content == "This is the Tokenport mock upstream and every word is one token"
        assert buyer_balance(db, account_id).posted_nano_usd == 5_000_000_000 - 12_072

        stream = sdk.chat.completions.create(
            model="deepseek/deepseek-chat", messages=[{"role": "user", "content": "Now stream it"}], max_tokens=5, stream=True
        )
        chunks = list(stream)
        text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
        usage = chunks[-1].usage
        assert text == "This is the Tokenport mock"
        assert usage.prompt_tokens == 6
        assert usage.completion_tokens == 5
        assert usage.model_extra["cost_nano_usd"] == expected_cost_nano_usd(6, 5) == 5_696
        assert buyer_balance(db, account_id).posted_nano_usd == 5_000_000_000 - 12_072 - 5_696
        assert buyer_balance(db, account_id).pending_debits_nano_usd == 0
        assert len({chunk.id for chunk in chunks}) == 1
        assert chunks[0].id.startswith("gen-")

        report = reconcile(db, [(chain, w3)])
        assert report.differences == []
        assert report.ledger_balanced is True
        assert report.chain_deposits_nano_usd == 5_000_000_000
        with db.session() as session:
            assert ledger.read_totals(session).credits_pending_nano_usd == 0
    finally:
        server.stop()


def test_unbound_sender_is_not_credited(db, dev_chain):
    w3, token, chain = dev_chain
    watcher = DepositWatcher(db, chain, w3)
    fund_wallet(w3, token, DEV_DEPLOYER.address, 1_000_000, 0)

    send_token(w3, token, DEV_DEPLOYER.private_key, DEV_TREASURY.address, 1_000_000)
    mine_blocks(w3, CONFIRMATIONS)
    watcher.poll_once()

    report = reconcile(db, [(chain, w3)])
    assert report.unattributed_nano_usd == 1_000_000_000
    assert report.differences == []
    assert report.ledger_deposits_nano_usd == 0
