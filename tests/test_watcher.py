"""The deposit watcher on an in-process eth-tester chain: depth, exactly-once credit and what is no deposit.

The plain functions here build chain scenarios for the other watcher and payout tests too.
"""

from __future__ import annotations

from collections.abc import Iterable

import pytest
from eth_account import Account
from hexbytes import HexBytes
from sqlalchemy import func, select
from web3 import Web3
from web3.contract import Contract

from chain.contracts import deploy_contract
from chain.devchain import DEV_BUYER, DEV_DEPLOYER, DEV_TREASURY, DevAccount, fund_wallet, mine_blocks, send_token
from chain.watcher import DEPOSITED_TOPIC, TRANSFER_TOPIC, DepositWatcher
from marketplace.accounts import issue_nonce, sign_in
from marketplace.db import Database
from marketplace.models import ChainCursor, Deposit, LedgerTransfer
from marketplace.settings import ChainSettings, Settings, TokenSettings
from marketplace.wallet_client import build_siwe_message, sign_text
from tests.factories import buyer_balance
from tests.fake_rpc import response_rewrite_middleware

CONFIRMATIONS = 4
# Gas and fees for locally signed test transfers: enough for any of the test tokens, so a batch
# can be signed without asking the node.
TRANSFER_GAS = 120_000
MAX_FEE_PER_GAS_WEI = 50 * 10**9
PRIORITY_FEE_PER_GAS_WEI = 10**9


# --- helpers shared by the watcher and payout tests -----------------------------------------


def bind_wallet(db: Database, chain_id: int, wallet: DevAccount) -> int:
    """Sign in with the wallet through Sign-In with Ethereum and return the account id."""
    settings = Settings(database_url=db.url)
    with db.transaction() as session:
        nonce = issue_nonce(session, settings).nonce
    message = build_siwe_message(address=wallet.address, nonce=nonce, domain=settings.siwe_domain, uri=settings.siwe_uri, chain_id=chain_id)
    with db.transaction() as session:
        return sign_in(session, settings, message=message, signature=sign_text(wallet.private_key, message)).account_id


def deploy_token(w3: Web3, symbol: str = "USDC", decimals: int = 6, name: str = "Test USD Coin") -> Contract:
    return deploy_contract(w3, "TestStablecoin", name, symbol, decimals, sender=DEV_DEPLOYER.local_account())


def sign_transfers(w3: Web3, token: Contract, sender: DevAccount, to: str, amounts: Iterable[int]) -> list[HexBytes]:
    """Sign one token transfer per amount with consecutive nonces, without sending them."""
    account = Account.from_key(sender.private_key)
    nonce = w3.eth.get_transaction_count(account.address, "pending")
    chain_id = w3.eth.chain_id
    raws = []
    for offset, amount in enumerate(amounts):
        data = token.encode_abi("transfer", args=[Web3.to_checksum_address(to), amount])
        signed = account.sign_transaction(
            {
                "type": 2,
                "chainId": chain_id,
                "nonce": nonce + offset,
                "to": token.address,
                "data": data,
                "value": 0,
                "gas": TRANSFER_GAS,
                "maxFeePerGas": MAX_FEE_PER_GAS_WEI,
                "maxPriorityFeePerGas": PRIORITY_FEE_PER_GAS_WEI,
            }
        )
        raws.append(HexBytes(signed.raw_transaction))
    return raws


def send_raw(w3: Web3, raws: Iterable[HexBytes], *, wait: bool = True) -> list[str]:
    """Broadcast signed transactions; with `wait`, return once the last one is mined."""
    tx_hashes = ["0x" + bytes(w3.eth.send_raw_transaction(raw)).hex() for raw in raws]
    if wait and tx_hashes:
        w3.eth.wait_for_transaction_receipt(tx_hashes[-1], timeout=30)
    return tx_hashes


def chain_settings(w3: Web3, tokens: list[tuple[Contract, int]], **fields) -> ChainSettings:
    """Chain settings for the node behind w3, its treasury the development treasury."""
    return ChainSettings(
        chain_id=w3.eth.chain_id,
        rpc_url="http://unused",
        treasury_address=DEV_TREASURY.address,
        tokens=[TokenSettings(symbol=token.functions.symbol().call(), address=token.address, decimals=decimals) for token, decimals in tokens],
        **{"confirmations": CONFIRMATIONS, "start_block": w3.eth.block_number, **fields},
    )


def ledger_amounts(db: Database, code: str = "deposit") -> dict[str, int]:
    """Return the ledger transfers with the given code, by id."""
    with db.session() as session:
        rows = session.execute(select(LedgerTransfer.id, LedgerTransfer.amount_nano_usd).where(LedgerTransfer.code == code))
        return {row[0]: int(row[1]) for row in rows}


def deposit_rows(db: Database) -> list[Deposit]:
    with db.session() as session:
        return list(session.scalars(select(Deposit).order_by(Deposit.block_number, Deposit.log_index)))


# --- fixtures -------------------------------------------------------------------------------


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
    return bind_wallet(db, chain.chain_id, DEV_BUYER)


def _credited_transfers(db) -> int:
    with db.session() as session:
        return session.scalar(select(func.count()).select_from(LedgerTransfer).where(LedgerTransfer.code == "deposit"))


# --- tests ----------------------------------------------------------------------------------


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
        cursor = session.get(ChainCursor, chain.chain_id)
    assert deposit.status == "credited"
    assert deposit.amount_units == "7250000"
    assert buyer_balance(db, buyer_account_id).posted_nano_usd == 7_250_000_000
    assert result.cursor_block == eth_tester_w3.eth.block_number - CONFIRMATIONS + 1
    assert result.credited == 1
    assert cursor.head_block == eth_tester_w3.eth.block_number
    assert cursor.last_block_hash == eth_tester_w3.eth.get_block(result.cursor_block)["hash"].to_0x_hex()


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
        cursor = session.get(ChainCursor, chain.chain_id)
        cursor.last_block = chain.start_block - 1
        cursor.last_block_hash = None
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


def test_impostor_token_credits_nothing(db, eth_tester_w3, dev_token, chain, buyer_account_id):
    # Same name, symbol and decimals as the listed USDC, at an address that is not listed.
    impostor = deploy_token(eth_tester_w3, "USDC", 6)
    assert impostor.functions.symbol().call() == dev_token.functions.symbol().call()
    fund_wallet(eth_tester_w3, impostor, DEV_BUYER.address, 9_000_000, 0)
    send_token(eth_tester_w3, impostor, DEV_BUYER.private_key, DEV_TREASURY.address, 9_000_000)
    mine_blocks(eth_tester_w3, CONFIRMATIONS)
    watcher = DepositWatcher(db, chain, eth_tester_w3)

    result = watcher.poll_once()

    assert result.logs_seen == 0
    assert deposit_rows(db) == []
    assert _credited_transfers(db) == 0
    assert buyer_balance(db, buyer_account_id).posted_nano_usd == 0
    # Even a provider that returned the impostor's logs would not get them credited.
    impostor_logs = eth_tester_w3.eth.get_logs(
        {"fromBlock": chain.start_block, "toBlock": "latest", "address": impostor.address, "topics": [TRANSFER_TOPIC]}
    )
    assert len(impostor_logs) == 2
    assert all(watcher.parse_log(log) is None for log in impostor_logs)


def _raw_log(address: str, topics: list[str], data: bytes) -> dict:
    return {
        "address": address,
        "topics": [HexBytes(topic) for topic in topics],
        "data": HexBytes(data),
        "transactionHash": HexBytes("0x" + "ab" * 32),
        "logIndex": 0,
        "blockNumber": 5,
        "blockHash": HexBytes("0x" + "cd" * 32),
    }


def _topic(address: str) -> str:
    return "0x" + "00" * 12 + address[2:].lower()


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("zero_amount", None),
        ("erc721_shape", None),
        ("short_data", None),
        ("from_vault_withdrawal", None),
        ("vault_event_of_other_contract", None),
        ("vault_unlisted_token", None),
        ("transfer", "transfer"),
        ("vault", "vault"),
    ],
)
def test_parse_log_keeps_listed_deposits(db, eth_tester_w3, dev_token, chain, case, expected):
    vault = "0x" + "77" * 20
    watched = chain.model_copy(update={"vault_address": Web3.to_checksum_address(vault)})
    watcher = DepositWatcher(db, watched, eth_tester_w3)
    amount = (5_000_000).to_bytes(32, "big")
    token, buyer, treasury = dev_token.address, DEV_BUYER.address, DEV_TREASURY.address
    ref = "0x" + (7).to_bytes(32, "big").hex()
    raw = {
        "zero_amount": _raw_log(token, [TRANSFER_TOPIC, _topic(buyer), _topic(treasury)], bytes(32)),
        "erc721_shape": _raw_log(token, [TRANSFER_TOPIC, _topic(buyer), _topic(treasury), "0x" + "00" * 31 + "01"], amount),
        "short_data": _raw_log(token, [TRANSFER_TOPIC, _topic(buyer), _topic(treasury)], amount[:16]),
        "from_vault_withdrawal": _raw_log(token, [TRANSFER_TOPIC, _topic(vault), _topic(treasury)], amount),
        "vault_event_of_other_contract": _raw_log("0x" + "66" * 20, [DEPOSITED_TOPIC, ref, _topic(token), _topic(buyer)], amount),
        "vault_unlisted_token": _raw_log(vault, [DEPOSITED_TOPIC, ref, _topic("0x" + "55" * 20), _topic(buyer)], amount),
        "transfer": _raw_log(token, [TRANSFER_TOPIC, _topic(buyer), _topic(treasury)], amount),
        "vault": _raw_log(vault, [DEPOSITED_TOPIC, ref, _topic(token), _topic(buyer)], amount),
    }[case]

    parsed = watcher.parse_log(raw)

    if expected is None:
        assert parsed is None
        assert watcher.skipped_logs == 1
    else:
        assert parsed is not None
        assert parsed.source == expected
        assert parsed.amount_units == 5_000_000
        assert parsed.from_address == buyer
        assert parsed.account_ref == (7 if expected == "vault" else None)


def test_reverted_receipt_rejects_deposit(db, eth_tester_w3, dev_token, chain, buyer_account_id):
    fund_wallet(eth_tester_w3, dev_token, DEV_BUYER.address, 2_000_000, 0)
    send_token(eth_tester_w3, dev_token, DEV_BUYER.private_key, DEV_TREASURY.address, 2_000_000)
    mine_blocks(eth_tester_w3, CONFIRMATIONS)
    # A provider that reports every receipt as reverted, while eth_getLogs still returns the log.
    eth_tester_w3.middleware_onion.add(
        response_rewrite_middleware({"eth_getTransactionReceipt": lambda _params, receipt: {**receipt, "status": 0}})
    )

    result = DepositWatcher(db, chain, eth_tester_w3).poll_once()

    (deposit,) = deposit_rows(db)
    assert deposit.status == "rejected"
    assert deposit.status_reason == "the transaction reverted"
    assert result.rejected == 1
    assert result.credited == 0
    assert _credited_transfers(db) == 0
    assert buyer_balance(db, buyer_account_id).posted_nano_usd == 0


def test_unbound_wallet_deposit_unattributed(db, eth_tester_w3, dev_token, chain):
    fund_wallet(eth_tester_w3, dev_token, DEV_BUYER.address, 1_500_000, 0)
    send_token(eth_tester_w3, dev_token, DEV_BUYER.private_key, DEV_TREASURY.address, 1_500_000)
    mine_blocks(eth_tester_w3, CONFIRMATIONS)

    result = DepositWatcher(db, chain, eth_tester_w3).poll_once()

    (deposit,) = deposit_rows(db)
    assert deposit.status == "unattributed"
    assert deposit.account_id is None
    assert result.unattributed == 1
    assert _credited_transfers(db) == 0


def test_eighteen_decimals_round_up(db, eth_tester_w3, chain, buyer_account_id):
    token = deploy_token(eth_tester_w3, "USDS", 18)
    watched = chain.model_copy(update={"tokens": [TokenSettings(symbol="USDS", address=token.address, decimals=18)]})
    # 2.5 tokens and 1 wei: 2,500,000,000 nano-USD and a fraction of one more.
    amount_units = 25 * 10**17 + 1
    fund_wallet(eth_tester_w3, token, DEV_BUYER.address, amount_units, 0)
    send_token(eth_tester_w3, token, DEV_BUYER.private_key, DEV_TREASURY.address, amount_units)
    mine_blocks(eth_tester_w3, CONFIRMATIONS)

    DepositWatcher(db, watched, eth_tester_w3).poll_once()

    (deposit,) = deposit_rows(db)
    assert deposit.amount_units == str(amount_units)
    assert deposit.amount_nano_usd == 2_500_000_001
    assert buyer_balance(db, buyer_account_id).posted_nano_usd == 2_500_000_001


def test_absurd_reference_and_amount_rejected(db, buyer_account_id):
    from marketplace import deposits

    def log(log_index: int, amount_units: int, account_ref: int) -> deposits.DepositLog:
        return deposits.DepositLog(
            chain_id=1,
            tx_hash="0x" + "ef" * 32,
            log_index=log_index,
            block_number=10,
            block_hash="0x" + "01" * 32,
            token_address="0x" + "11" * 20,
            token_decimals=18,
            from_address=DEV_BUYER.address,
            to_address="0x" + "22" * 20,
            amount_units=amount_units,
            source="vault",
            account_ref=account_ref,
        )

    with db.transaction() as session:
        # A reference far outside the accounts table's id range, and one that names no account.
        huge_ref = deposits.credit_deposit(session, log(0, 10**18, 2**255))
        unknown_ref = deposits.credit_deposit(session, log(1, 10**18, 12_345))
        # About 10**20 USD, which no 64-bit nano-USD column holds.
        huge_amount = deposits.credit_deposit(session, log(2, 10**38, buyer_account_id))
        statuses = [(row.status, row.account_id, row.amount_nano_usd) for row in (huge_ref, unknown_ref, huge_amount)]

    assert statuses == [("unattributed", None, 10**9), ("unattributed", None, 10**9), ("rejected", buyer_account_id, 0)]
    assert _credited_transfers(db) == 0
