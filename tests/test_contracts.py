"""Tests for the compiled artifacts, chain.contracts and the TestStablecoin contract."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import pytest
from eth_abi import encode
from hexbytes import HexBytes
from web3 import Web3
from web3.contract import Contract
from web3.exceptions import ContractCustomError

from chain.contracts import (
    ARTIFACTS_DIR,
    TRANSFER_EVENT_TOPIC,
    TransactionFailedError,
    contract_at,
    deploy_contract,
    load_artifact,
    send_transaction,
    transact,
    wait_for_success,
)
from chain.devchain import DEV_BUYER, DEV_DEPLOYER, DEV_TREASURY, deploy_dev_stablecoin

REPO_ROOT = Path(__file__).resolve().parent.parent
CONTRACTS_DIR = REPO_ROOT / "contracts"
ZERO_ADDRESS = "0x0000000000000000000000000000000000000000"

# Custom error of OpenZeppelin Ownable 5.x: OwnableUnauthorizedAccount(address account).
OWNABLE_UNAUTHORIZED_SELECTOR = Web3.keccak(text="OwnableUnauthorizedAccount(address)")[:4]


def address_topic(address: str) -> HexBytes:
    return HexBytes(encode(["address"], [address]))


def ownable_unauthorized_data(account: str) -> str:
    return HexBytes(OWNABLE_UNAUTHORIZED_SELECTOR + encode(["address"], [account])).to_0x_hex()


# --- artifacts ---------------------------------------------------------------------------


def test_artifacts_rebuild_byte_identical():
    result = subprocess.run(
        ["node", str(CONTRACTS_DIR / "build.mjs"), "--check"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"


def test_artifact_compiler_matches_solc_pin():
    package = json.loads((CONTRACTS_DIR / "package.json").read_text())
    pinned = package["devDependencies"]["solc"]
    artifact = load_artifact("TestStablecoin")

    assert artifact["compiler"]["name"] == "solc"
    assert artifact["compiler"]["version"].startswith(f"{pinned}+commit.")


def test_artifact_records_settings():
    artifact = load_artifact("TestStablecoin")

    assert artifact["settings"] == {
        "evmVersion": "cancun",
        "optimizer": {"enabled": True, "runs": 200},
    }


def test_artifact_source_hash_matches_file():
    artifact = load_artifact("TestStablecoin")
    source = CONTRACTS_DIR / "src" / "TestStablecoin.sol"

    recorded = artifact["sources"]["src/TestStablecoin.sol"]["sha256"]
    assert recorded == hashlib.sha256(source.read_bytes()).hexdigest()


def test_artifact_files_end_with_newline():
    for path in sorted(ARTIFACTS_DIR.glob("*.json")):
        assert path.read_bytes().endswith(b"}\n"), path.name


def test_artifact_bytecode_is_hex():
    artifact = load_artifact("TestStablecoin")

    assert artifact["contractName"] == "TestStablecoin"
    assert artifact["bytecode"].startswith("0x60")
    assert artifact["deployedBytecode"].startswith("0x60")


def test_load_artifact_rejects_path_name():
    with pytest.raises(ValueError, match="invalid contract name"):
        load_artifact("../package")


def test_load_artifact_missing_file():
    with pytest.raises(FileNotFoundError, match="node contracts/build.mjs"):
        load_artifact("NoSuchContract")


def test_transfer_event_topic_value():
    assert TRANSFER_EVENT_TOPIC == "0xddf252ad1be2c89b69c2b068fc378daa952ba7f163c4a11628f55a4df523b3ef"


# --- TestStablecoin on eth-tester --------------------------------------------------------


def test_stablecoin_metadata(dev_token: Contract):
    assert dev_token.functions.name().call() == "Test USD Coin"
    assert dev_token.functions.symbol().call() == "USDC"
    assert dev_token.functions.decimals().call() == 6
    assert dev_token.functions.totalSupply().call() == 0
    assert dev_token.functions.owner().call() == DEV_DEPLOYER.address


def test_deploy_contract_with_other_decimals(eth_tester_w3: Web3):
    token = deploy_contract(
        eth_tester_w3, "TestStablecoin", "Test Tether USD", "USDT", 18,
        sender=DEV_DEPLOYER.local_account(),
    )

    assert token.functions.decimals().call() == 18
    assert token.functions.symbol().call() == "USDT"


def test_deploy_contract_from_node_account(eth_tester_w3: Web3):
    node_account = eth_tester_w3.eth.accounts[1]

    token = deploy_contract(eth_tester_w3, "TestStablecoin", "T", "T", 6, sender=node_account)

    assert token.functions.owner().call() == node_account


def test_contract_at_accepts_lowercase_address(eth_tester_w3: Web3, dev_token: Contract):
    token = contract_at(eth_tester_w3, "TestStablecoin", dev_token.address.lower())

    assert token.address == dev_token.address
    assert token.functions.decimals().call() == 6


def test_owner_mint_credits_exact_amount(eth_tester_w3: Web3, dev_token: Contract):
    receipt = transact(
        eth_tester_w3,
        dev_token.functions.mint(DEV_BUYER.address, 123_456_789),
        DEV_DEPLOYER.local_account(),
    )

    assert receipt["status"] == 1
    assert dev_token.functions.balanceOf(DEV_BUYER.address).call() == 123_456_789
    assert dev_token.functions.totalSupply().call() == 123_456_789

    (event,) = dev_token.events.Transfer().process_receipt(receipt)
    assert event["args"]["from"] == ZERO_ADDRESS
    assert event["args"]["to"] == DEV_BUYER.address
    assert event["args"]["value"] == 123_456_789


def test_non_owner_mint_reverts_when_mined(eth_tester_w3: Web3, dev_token: Contract):
    # A fixed gas limit skips gas estimation, so the reverting call is mined with status 0.
    buyer = DEV_BUYER.local_account()
    transaction = dev_token.functions.mint(DEV_BUYER.address, 1_000_000).build_transaction(
        {"from": DEV_DEPLOYER.address, "gas": 200_000}
    )
    transaction_hash = send_transaction(eth_tester_w3, transaction, buyer)

    with pytest.raises(TransactionFailedError) as raised:
        wait_for_success(eth_tester_w3, transaction_hash, "mint by non-owner")

    assert raised.value.receipt["status"] == 0
    assert raised.value.transaction_hash == transaction_hash
    assert dev_token.functions.balanceOf(DEV_BUYER.address).call() == 0
    assert dev_token.functions.totalSupply().call() == 0


def test_transfer_emits_exact_log(eth_tester_w3: Web3, dev_token: Contract):
    transact(
        eth_tester_w3,
        dev_token.functions.mint(DEV_BUYER.address, 5_000_000),
        DEV_DEPLOYER.local_account(),
    )

    receipt = transact(
        eth_tester_w3,
        dev_token.functions.transfer(DEV_TREASURY.address, 1_250_001),
        DEV_BUYER.local_account(),
    )

    assert len(receipt["logs"]) == 1
    log = receipt["logs"][0]
    assert log["address"] == dev_token.address
    assert log["topics"] == [
        HexBytes(TRANSFER_EVENT_TOPIC),
        address_topic(DEV_BUYER.address),
        address_topic(DEV_TREASURY.address),
    ]
    assert HexBytes(log["data"]) == HexBytes(encode(["uint256"], [1_250_001]))

    assert dev_token.functions.balanceOf(DEV_BUYER.address).call() == 3_749_999
    assert dev_token.functions.balanceOf(DEV_TREASURY.address).call() == 1_250_001


# --- TestStablecoin on anvil -------------------------------------------------------------


@pytest.mark.anvil
def test_non_owner_mint_reverts_with_ownable_error(anvil_w3: Web3):
    token = deploy_dev_stablecoin(anvil_w3)

    with pytest.raises(ContractCustomError) as raised:
        transact(anvil_w3, token.functions.mint(DEV_BUYER.address, 1), DEV_BUYER.local_account())

    assert raised.value.data == ownable_unauthorized_data(DEV_BUYER.address)
    assert token.functions.totalSupply().call() == 0
