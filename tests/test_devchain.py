"""Tests for chain.devchain: development accounts, the anvil process and chain helpers."""

from __future__ import annotations

import socket
import time

import pytest
from eth_abi import encode
from hexbytes import HexBytes
from web3 import Web3
from web3.exceptions import ContractCustomError

from chain import devchain
from chain.contracts import (
    TRANSFER_EVENT_TOPIC,
    TransactionFailedError,
    send_transaction,
    wait_for_success,
)
from chain.devchain import (
    DEV_ACCOUNTS,
    DEV_BUYER,
    DEV_CHAIN_ID,
    DEV_DEPLOYER,
    DEV_SUPPLIER_PAYOUT,
    DEV_TREASURY,
    AnvilExitedError,
    AnvilNotFoundError,
    AnvilProcess,
    AnvilStartError,
    deploy_dev_stablecoin,
    find_anvil_binary,
    fund_wallet,
    mine_blocks,
    send_token,
)
from tests.fixtures_chain import DEV_ACCOUNT_BALANCE_WEI

# Anvil's documented default accounts 0-3 for the "test ... junk" mnemonic.
EXPECTED_ADDRESSES = {
    "deployer": "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266",
    "treasury": "0x70997970C51812dc3A010C7d01b50e0d17dc79C8",
    "buyer": "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC",
    "supplier_payout": "0x90F79bf6EB2c4f870365E785982E1f101E93b906",
}
ONE_ETH_WEI = 10**18

# Custom error of OpenZeppelin ERC20 5.x: ERC20InsufficientBalance(sender, balance, needed).
INSUFFICIENT_BALANCE_SELECTOR = Web3.keccak(text="ERC20InsufficientBalance(address,uint256,uint256)")[:4]


# --- development accounts ----------------------------------------------------------------


def test_dev_account_addresses():
    addresses = {name: account.address for name, account in DEV_ACCOUNTS.items()}

    assert addresses == EXPECTED_ADDRESSES


def test_dev_account_keys_match_addresses():
    for account in (DEV_DEPLOYER, DEV_TREASURY, DEV_BUYER, DEV_SUPPLIER_PAYOUT):
        assert account.local_account().address == account.address


def test_dev_account_repr_hides_key():
    text = repr(DEV_BUYER)

    assert DEV_BUYER.private_key not in text
    assert DEV_BUYER.private_key[2:] not in text
    assert DEV_BUYER.address in text


def test_dev_account_unpacks_to_address_and_key():
    address, private_key = DEV_DEPLOYER

    assert address == EXPECTED_ADDRESSES["deployer"]
    assert private_key.startswith("0x")
    assert len(private_key) == 66


# --- anvil binary and process ------------------------------------------------------------


def test_missing_anvil_names_npm_ci(monkeypatch, tmp_path):
    monkeypatch.setattr(devchain, "ANVIL_BINARY", tmp_path / "anvil")

    with pytest.raises(AnvilNotFoundError, match="npm ci --prefix contracts"):
        find_anvil_binary()


def test_anvil_process_rejects_bad_block_time():
    with pytest.raises(ValueError, match="invalid block_time"):
        AnvilProcess(block_time=0)


@pytest.mark.anvil
def test_anvil_reports_dev_chain_id(anvil_w3: Web3):
    assert DEV_CHAIN_ID == 31337
    assert anvil_w3.eth.chain_id == 31337


@pytest.mark.anvil
def test_anvil_prefunds_dev_accounts(anvil_w3: Web3):
    for account in (DEV_TREASURY, DEV_BUYER, DEV_SUPPLIER_PAYOUT):
        assert anvil_w3.eth.get_balance(account.address) == DEV_ACCOUNT_BALANCE_WEI


@pytest.mark.anvil
def test_anvil_rejects_port_in_use(anvil: AnvilProcess):
    with pytest.raises(AnvilStartError, match="already in use"):
        AnvilProcess(port=anvil.port).start()


@pytest.mark.anvil
def test_anvil_exit_reports_bind_error(anvil: AnvilProcess):
    # A bound socket that does not listen refuses connections, so anvil gets past the
    # port check and then fails to bind.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        holder.bind(("127.0.0.1", 0))
        port = holder.getsockname()[1]
        node = AnvilProcess(port=port)

        with pytest.raises(AnvilExitedError, match="Address already in use"):
            node.start()

    assert not node.running
    assert node.log_path is None


@pytest.mark.anvil
def test_anvil_stop_frees_port_and_log(anvil: AnvilProcess):
    node = AnvilProcess().start()
    port = node.port
    log_path = node.log_path
    assert node.running
    assert log_path.exists()

    node.stop()

    assert not node.running
    assert not log_path.exists()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()


@pytest.mark.anvil
def test_anvil_block_time_mines_blocks(anvil: AnvilProcess):
    with AnvilProcess(block_time=0.2) as node:
        w3 = node.web3()
        target_block = w3.eth.block_number + 2
        # One block every 0.2 s, so two blocks are due after 0.4 s. Give up after 5 s.
        deadline = time.monotonic() + 5.0
        while w3.eth.block_number < target_block and time.monotonic() < deadline:
            time.sleep(0.1)

        assert w3.eth.block_number >= target_block


# --- helpers on anvil --------------------------------------------------------------------


@pytest.mark.anvil
def test_deploy_dev_stablecoin_on_anvil(anvil_w3: Web3):
    token = deploy_dev_stablecoin(anvil_w3)

    assert token.functions.name().call() == "Test USD Coin"
    assert token.functions.symbol().call() == "USDC"
    assert token.functions.decimals().call() == 6
    assert token.functions.owner().call() == DEV_DEPLOYER.address
    assert len(anvil_w3.eth.get_code(token.address)) > 0


@pytest.mark.anvil
def test_fund_wallet_exact_balances(anvil_w3: Web3):
    token = deploy_dev_stablecoin(anvil_w3)

    fund_wallet(anvil_w3, token, DEV_BUYER.address.lower(), 25_000_000, ONE_ETH_WEI // 10)

    assert token.functions.balanceOf(DEV_BUYER.address).call() == 25_000_000
    assert token.functions.totalSupply().call() == 25_000_000
    expected_wei = DEV_ACCOUNT_BALANCE_WEI + ONE_ETH_WEI // 10
    assert anvil_w3.eth.get_balance(DEV_BUYER.address) == expected_wei


@pytest.mark.anvil
def test_fund_wallet_fresh_address(anvil_w3: Web3):
    token = deploy_dev_stablecoin(anvil_w3)
    fresh = anvil_w3.eth.account.create()

    fund_wallet(anvil_w3, token, fresh.address, 7, 3 * ONE_ETH_WEI)

    assert token.functions.balanceOf(fresh.address).call() == 7
    assert anvil_w3.eth.get_balance(fresh.address) == 3 * ONE_ETH_WEI


@pytest.mark.anvil
def test_fund_wallet_rejects_negative_amount(anvil_w3: Web3):
    token = deploy_dev_stablecoin(anvil_w3)

    with pytest.raises(ValueError, match="invalid funding amounts"):
        fund_wallet(anvil_w3, token, DEV_BUYER.address, -1, 0)


@pytest.mark.anvil
def test_send_token_moves_exact_amount(anvil_w3: Web3):
    token = deploy_dev_stablecoin(anvil_w3)
    fund_wallet(anvil_w3, token, DEV_BUYER.address, 10_000_000, 0)

    transaction_hash = send_token(anvil_w3, token, DEV_BUYER.private_key, DEV_TREASURY.address, 2_500_001)

    assert token.functions.balanceOf(DEV_BUYER.address).call() == 7_499_999
    assert token.functions.balanceOf(DEV_TREASURY.address).call() == 2_500_001

    receipt = anvil_w3.eth.get_transaction_receipt(transaction_hash)
    assert receipt["status"] == 1
    assert receipt["from"] == DEV_BUYER.address
    (log,) = receipt["logs"]
    assert log["topics"][0].to_0x_hex() == TRANSFER_EVENT_TOPIC
    (event,) = token.events.Transfer().process_receipt(receipt)
    assert event["args"]["from"] == DEV_BUYER.address
    assert event["args"]["to"] == DEV_TREASURY.address
    assert event["args"]["value"] == 2_500_001


@pytest.mark.anvil
def test_send_token_over_balance_raises(anvil_w3: Web3):
    token = deploy_dev_stablecoin(anvil_w3)
    fund_wallet(anvil_w3, token, DEV_BUYER.address, 3, 0)

    # Gas estimation runs the transfer first, so the revert surfaces before sending.
    with pytest.raises(ContractCustomError) as raised:
        send_token(anvil_w3, token, DEV_BUYER.private_key, DEV_TREASURY.address, 4)

    expected = INSUFFICIENT_BALANCE_SELECTOR + encode(
        ["address", "uint256", "uint256"], [DEV_BUYER.address, 3, 4]
    )
    assert raised.value.data == HexBytes(expected).to_0x_hex()
    assert token.functions.balanceOf(DEV_BUYER.address).call() == 3
    assert token.functions.balanceOf(DEV_TREASURY.address).call() == 0


@pytest.mark.anvil
def test_send_token_without_wait_returns_hash(anvil_w3: Web3):
    token = deploy_dev_stablecoin(anvil_w3)
    fund_wallet(anvil_w3, token, DEV_BUYER.address, 5, 0)

    transaction_hash = send_token(anvil_w3, token, DEV_BUYER.private_key, DEV_TREASURY.address, 5, wait=False)
    receipt = anvil_w3.eth.wait_for_transaction_receipt(transaction_hash, timeout=30)

    assert receipt["status"] == 1
    assert token.functions.balanceOf(DEV_TREASURY.address).call() == 5


@pytest.mark.anvil
def test_mined_revert_raises_transaction_failed(anvil_w3: Web3):
    token = deploy_dev_stablecoin(anvil_w3)
    transaction = token.functions.mint(DEV_BUYER.address, 1).build_transaction(
        {"from": DEV_DEPLOYER.address, "gas": 200_000}
    )
    transaction_hash = send_transaction(anvil_w3, transaction, DEV_BUYER.local_account())
    with pytest.raises(TransactionFailedError, match="reverted in block"):
        wait_for_success(anvil_w3, transaction_hash, "mint by non-owner")


@pytest.mark.anvil
@pytest.mark.parametrize("count", [0, 1, 7])
def test_mine_blocks_on_anvil(anvil_w3: Web3, count: int):
    start_block = anvil_w3.eth.block_number

    mine_blocks(anvil_w3, count)

    assert anvil_w3.eth.block_number == start_block + count


# --- helpers on eth-tester ---------------------------------------------------------------


@pytest.mark.parametrize("count", [0, 1, 7])
def test_mine_blocks_on_eth_tester(eth_tester_w3: Web3, count: int):
    start_block = eth_tester_w3.eth.block_number

    mine_blocks(eth_tester_w3, count)

    assert eth_tester_w3.eth.block_number == start_block + count


def test_mine_blocks_rejects_negative(eth_tester_w3: Web3):
    with pytest.raises(ValueError, match="invalid block count"):
        mine_blocks(eth_tester_w3, -1)


def test_eth_tester_funds_dev_accounts(eth_tester_w3: Web3):
    for account in DEV_ACCOUNTS.values():
        assert eth_tester_w3.eth.get_balance(account.address) == DEV_ACCOUNT_BALANCE_WEI


def test_fund_and_send_on_eth_tester(eth_tester_w3: Web3, dev_token):
    fund_wallet(eth_tester_w3, dev_token, DEV_BUYER.address, 9_000_000, ONE_ETH_WEI)

    send_token(eth_tester_w3, dev_token, DEV_BUYER.private_key, DEV_TREASURY.address, 4_000_000)

    assert dev_token.functions.balanceOf(DEV_BUYER.address).call() == 5_000_000
    assert dev_token.functions.balanceOf(DEV_TREASURY.address).call() == 4_000_000
