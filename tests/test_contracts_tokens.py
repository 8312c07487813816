"""Tests for the test tokens: NoReturnToken, FeeOnTransferToken and PermitStablecoin.

Happy paths run on eth-tester. Reverts run on anvil, because web3's eth-tester provider turns
custom error data into text, while anvil returns it for ``ContractCustomError.data``.
"""

from __future__ import annotations

import secrets

import pytest
from eth_abi import encode
from hexbytes import HexBytes
from web3 import Web3
from web3.contract import Contract
from web3.exceptions import ContractCustomError
from web3.logs import DISCARD

from chain.contracts import TRANSFER_EVENT_TOPIC, deploy_contract, load_artifact, transact
from chain.devchain import DEV_BUYER, DEV_DEPLOYER, DEV_SUPPLIER_PAYOUT, DEV_TREASURY
from chain.vault import (
    account_ref_for,
    allow_token,
    deploy_vault,
    deposit_to_vault,
    sign_permit,
    sign_receive_with_authorization,
    sign_token_typed_data,
    withdraw_from_vault,
)

ZERO_ADDRESS = "0x0000000000000000000000000000000000000000"
FEE_COLLECTOR = DEV_SUPPLIER_PAYOUT.address
FEE_BASIS_POINTS = 250  # 2.5 %

# Fields of both EIP-3009 TransferWithAuthorization and ReceiveWithAuthorization.
AUTHORIZATION_FIELDS = [
    {"name": "from", "type": "address"},
    {"name": "to", "type": "address"},
    {"name": "value", "type": "uint256"},
    {"name": "validAfter", "type": "uint256"},
    {"name": "validBefore", "type": "uint256"},
    {"name": "nonce", "type": "bytes32"},
]
CANCEL_AUTHORIZATION_TYPE = [
    {"name": "authorizer", "type": "address"},
    {"name": "nonce", "type": "bytes32"},
]


def error_data(signature: str, types: list[str], values: list[object]) -> str:
    """Return the revert data of custom error ``signature`` with its arguments, as 0x-hex."""
    selector = Web3.keccak(text=signature)[:4]
    return HexBytes(selector + encode(types, values)).to_0x_hex()


def address_topic(address: str) -> HexBytes:
    return HexBytes(encode(["address"], [address]))


def transfer_logs(receipt, token: Contract) -> list[tuple[str, str, int]]:
    """Return (from, to, value) of every Transfer log of ``token`` in the receipt, in log order."""
    return [
        (event["args"]["from"], event["args"]["to"], event["args"]["value"])
        for event in token.events.Transfer().process_receipt(receipt, errors=DISCARD)
    ]


def latest_timestamp(w3: Web3) -> int:
    return w3.eth.get_block("latest")["timestamp"]


def deploy_no_return_token(w3: Web3) -> Contract:
    return deploy_contract(
        w3, "NoReturnToken", "Test Tether USD", "USDT", sender=DEV_DEPLOYER.local_account()
    )


def deploy_fee_token(w3: Web3, fee_basis_points: int = FEE_BASIS_POINTS) -> Contract:
    return deploy_contract(
        w3, "FeeOnTransferToken", "Fee Token", "FEE", fee_basis_points, FEE_COLLECTOR,
        sender=DEV_DEPLOYER.local_account(),
    )


def deploy_permit_token(w3: Web3) -> Contract:
    return deploy_contract(
        w3, "PermitStablecoin", "Permit USD Coin", "PUSDC", sender=DEV_DEPLOYER.local_account()
    )


def mint(w3: Web3, token: Contract, to: str, amount_units: int) -> None:
    transact(w3, token.functions.mint(to, amount_units), DEV_DEPLOYER.local_account())


def sign_transfer_authorization(token, payer, to, value, valid_after, valid_before, nonce):
    message = {
        "from": payer.address,
        "to": to,
        "value": value,
        "validAfter": valid_after,
        "validBefore": valid_before,
        "nonce": nonce,
    }
    return sign_token_typed_data(
        token, payer, "TransferWithAuthorization", AUTHORIZATION_FIELDS, message
    )


def sign_cancel_authorization(token, authorizer, nonce):
    message = {"authorizer": authorizer.address, "nonce": nonce}
    return sign_token_typed_data(
        token, authorizer, "CancelAuthorization", CANCEL_AUTHORIZATION_TYPE, message
    )


# --- NoReturnToken -----------------------------------------------------------------------


def test_no_return_token_abi_has_no_bool_outputs():
    abi = load_artifact("NoReturnToken")["abi"]
    functions = {item["name"]: item for item in abi if item["type"] == "function"}

    assert functions["transfer"]["outputs"] == []
    assert functions["transferFrom"]["outputs"] == []
    assert functions["approve"]["outputs"] == []


def test_no_return_token_metadata(eth_tester_w3: Web3):
    token = deploy_no_return_token(eth_tester_w3)

    assert token.functions.name().call() == "Test Tether USD"
    assert token.functions.symbol().call() == "USDT"
    assert token.functions.decimals().call() == 6
    assert token.functions.owner().call() == DEV_DEPLOYER.address


def test_no_return_token_emits_standard_events(eth_tester_w3: Web3):
    w3 = eth_tester_w3
    token = deploy_no_return_token(w3)
    buyer = DEV_BUYER.local_account()
    treasury = DEV_TREASURY.local_account()

    mint_receipt = transact(w3, token.functions.mint(DEV_BUYER.address, 5_000_000), DEV_DEPLOYER.local_account())
    transfer_receipt = transact(w3, token.functions.transfer(DEV_TREASURY.address, 1_000_001), buyer)
    approve_receipt = transact(w3, token.functions.approve(DEV_TREASURY.address, 2_000_000), buyer)
    transfer_from_receipt = transact(
        w3, token.functions.transferFrom(DEV_BUYER.address, FEE_COLLECTOR, 1_500_000), treasury
    )

    assert transfer_logs(mint_receipt, token) == [(ZERO_ADDRESS, DEV_BUYER.address, 5_000_000)]
    (log,) = transfer_receipt["logs"]
    assert log["topics"] == [
        HexBytes(TRANSFER_EVENT_TOPIC),
        address_topic(DEV_BUYER.address),
        address_topic(DEV_TREASURY.address),
    ]
    assert HexBytes(log["data"]) == HexBytes(encode(["uint256"], [1_000_001]))
    (approval,) = token.events.Approval().process_receipt(approve_receipt, errors=DISCARD)
    assert approval["args"]["owner"] == DEV_BUYER.address
    assert approval["args"]["spender"] == DEV_TREASURY.address
    assert approval["args"]["value"] == 2_000_000
    assert transfer_logs(transfer_from_receipt, token) == [(DEV_BUYER.address, FEE_COLLECTOR, 1_500_000)]

    assert token.functions.balanceOf(DEV_BUYER.address).call() == 2_499_999
    assert token.functions.balanceOf(DEV_TREASURY.address).call() == 1_000_001
    assert token.functions.balanceOf(FEE_COLLECTOR).call() == 1_500_000
    assert token.functions.allowance(DEV_BUYER.address, DEV_TREASURY.address).call() == 500_000
    assert token.functions.totalSupply().call() == 5_000_000


def test_no_return_token_through_vault_safe_erc20(eth_tester_w3: Web3):
    w3 = eth_tester_w3
    token = deploy_no_return_token(w3)
    treasury = DEV_TREASURY.local_account()
    vault = deploy_vault(w3, treasury)
    allow_token(w3, vault, token.address, treasury)
    mint(w3, token, DEV_BUYER.address, 3_000_000)

    deposit_receipt = deposit_to_vault(
        w3, vault, token, DEV_BUYER.private_key, 2_500_000, account_ref_for(42)
    )
    withdraw_receipt = withdraw_from_vault(
        w3, vault, token.address, DEV_SUPPLIER_PAYOUT.address, 700_000, treasury
    )

    (deposited,) = vault.events.Deposited().process_receipt(deposit_receipt, errors=DISCARD)
    assert deposited["args"]["amount"] == 2_500_000
    assert transfer_logs(deposit_receipt, token) == [(DEV_BUYER.address, vault.address, 2_500_000)]
    assert transfer_logs(withdraw_receipt, token) == [(vault.address, DEV_SUPPLIER_PAYOUT.address, 700_000)]
    assert token.functions.balanceOf(vault.address).call() == 1_800_000
    assert token.functions.balanceOf(DEV_BUYER.address).call() == 500_000
    assert token.functions.balanceOf(DEV_SUPPLIER_PAYOUT.address).call() == 700_000


@pytest.mark.anvil
def test_no_return_token_failed_pull_bubbles_error(anvil_w3: Web3):
    w3 = anvil_w3
    token = deploy_no_return_token(w3)
    treasury = DEV_TREASURY.local_account()
    vault = deploy_vault(w3, treasury)
    allow_token(w3, vault, token.address, treasury)
    mint(w3, token, DEV_BUYER.address, 1_000_000)
    transact(w3, token.functions.approve(vault.address, 5_000_000), DEV_BUYER.local_account())

    with pytest.raises(ContractCustomError) as raised:
        transact(
            w3, vault.functions.deposit(token.address, 1_000_001, account_ref_for(1)),
            DEV_BUYER.local_account(),
        )

    assert raised.value.data == error_data(
        "ERC20InsufficientBalance(address,uint256,uint256)",
        ["address", "uint256", "uint256"],
        [DEV_BUYER.address, 1_000_000, 1_000_001],
    )
    assert token.functions.balanceOf(vault.address).call() == 0


@pytest.mark.anvil
def test_no_return_token_mint_only_owner(anvil_w3: Web3):
    token = deploy_no_return_token(anvil_w3)

    with pytest.raises(ContractCustomError) as raised:
        transact(anvil_w3, token.functions.mint(DEV_BUYER.address, 1), DEV_BUYER.local_account())

    assert raised.value.data == error_data(
        "OwnableUnauthorizedAccount(address)", ["address"], [DEV_BUYER.address]
    )


# --- FeeOnTransferToken ------------------------------------------------------------------


def test_fee_token_metadata(eth_tester_w3: Web3):
    token = deploy_fee_token(eth_tester_w3)

    assert token.functions.decimals().call() == 6
    assert token.functions.feeBasisPoints().call() == FEE_BASIS_POINTS
    assert token.functions.feeCollector().call() == FEE_COLLECTOR
    assert token.functions.feeFor(1_000_000).call() == 25_000


def test_fee_token_transfer_delivers_amount_minus_fee(eth_tester_w3: Web3):
    w3 = eth_tester_w3
    token = deploy_fee_token(w3)
    mint(w3, token, DEV_BUYER.address, 5_000_000)

    receipt = transact(w3, token.functions.transfer(DEV_TREASURY.address, 1_000_000), DEV_BUYER.local_account())

    assert transfer_logs(receipt, token) == [
        (DEV_BUYER.address, DEV_TREASURY.address, 975_000),
        (DEV_BUYER.address, FEE_COLLECTOR, 25_000),
    ]
    assert token.functions.balanceOf(DEV_TREASURY.address).call() == 975_000
    assert token.functions.balanceOf(FEE_COLLECTOR).call() == 25_000
    assert token.functions.balanceOf(DEV_BUYER.address).call() == 4_000_000
    assert token.functions.totalSupply().call() == 5_000_000


def test_fee_token_mint_charges_no_fee(eth_tester_w3: Web3):
    token = deploy_fee_token(eth_tester_w3)

    receipt = transact(
        eth_tester_w3, token.functions.mint(DEV_BUYER.address, 1_000_000), DEV_DEPLOYER.local_account()
    )

    assert transfer_logs(receipt, token) == [(ZERO_ADDRESS, DEV_BUYER.address, 1_000_000)]
    assert token.functions.balanceOf(DEV_BUYER.address).call() == 1_000_000


def test_fee_token_fee_rounds_down(eth_tester_w3: Web3):
    # 39 * 250 / 10,000 = 0.975 rounds down to 0, so there is no fee and no fee Transfer log.
    w3 = eth_tester_w3
    token = deploy_fee_token(w3)
    mint(w3, token, DEV_BUYER.address, 1_000)

    small = transact(w3, token.functions.transfer(DEV_TREASURY.address, 39), DEV_BUYER.local_account())
    # 41 * 250 / 10,000 = 1.025 rounds down to a fee of 1.
    larger = transact(w3, token.functions.transfer(DEV_TREASURY.address, 41), DEV_BUYER.local_account())

    assert transfer_logs(small, token) == [(DEV_BUYER.address, DEV_TREASURY.address, 39)]
    assert transfer_logs(larger, token) == [
        (DEV_BUYER.address, DEV_TREASURY.address, 40),
        (DEV_BUYER.address, FEE_COLLECTOR, 1),
    ]
    assert token.functions.balanceOf(DEV_TREASURY.address).call() == 79
    assert token.functions.balanceOf(FEE_COLLECTOR).call() == 1


def test_fee_token_transfer_from_spends_full_allowance(eth_tester_w3: Web3):
    w3 = eth_tester_w3
    token = deploy_fee_token(w3)
    mint(w3, token, DEV_BUYER.address, 2_000_000)
    transact(w3, token.functions.approve(DEV_TREASURY.address, 1_500_000), DEV_BUYER.local_account())

    receipt = transact(
        w3, token.functions.transferFrom(DEV_BUYER.address, DEV_TREASURY.address, 1_000_000),
        DEV_TREASURY.local_account(),
    )

    assert transfer_logs(receipt, token) == [
        (DEV_BUYER.address, DEV_TREASURY.address, 975_000),
        (DEV_BUYER.address, FEE_COLLECTOR, 25_000),
    ]
    assert token.functions.allowance(DEV_BUYER.address, DEV_TREASURY.address).call() == 500_000
    assert token.functions.balanceOf(DEV_BUYER.address).call() == 1_000_000


def test_fee_token_owner_changes_fee(eth_tester_w3: Web3):
    w3 = eth_tester_w3
    token = deploy_fee_token(w3, fee_basis_points=0)
    mint(w3, token, DEV_BUYER.address, 2_000_000)

    before = transact(w3, token.functions.transfer(DEV_TREASURY.address, 1_000_000), DEV_BUYER.local_account())
    change = transact(w3, token.functions.setFeeBasisPoints(100), DEV_DEPLOYER.local_account())
    after = transact(w3, token.functions.transfer(DEV_TREASURY.address, 1_000_000), DEV_BUYER.local_account())

    assert transfer_logs(before, token) == [(DEV_BUYER.address, DEV_TREASURY.address, 1_000_000)]
    (fee_changed,) = token.events.FeeChanged().process_receipt(change, errors=DISCARD)
    assert fee_changed["args"]["feeBasisPoints"] == 100
    assert transfer_logs(after, token) == [
        (DEV_BUYER.address, DEV_TREASURY.address, 990_000),
        (DEV_BUYER.address, FEE_COLLECTOR, 10_000),
    ]


@pytest.mark.anvil
def test_fee_token_rejects_fee_above_100_percent(anvil_w3: Web3):
    token = deploy_fee_token(anvil_w3)

    with pytest.raises(ContractCustomError) as raised:
        transact(anvil_w3, token.functions.setFeeBasisPoints(10_001), DEV_DEPLOYER.local_account())

    assert raised.value.data == error_data("InvalidFee(uint16)", ["uint16"], [10_001])
    assert token.functions.feeBasisPoints().call() == FEE_BASIS_POINTS


@pytest.mark.anvil
def test_fee_token_insufficient_balance_names_full_amount(anvil_w3: Web3):
    token = deploy_fee_token(anvil_w3)
    mint(anvil_w3, token, DEV_BUYER.address, 1_000)

    with pytest.raises(ContractCustomError) as raised:
        transact(anvil_w3, token.functions.transfer(DEV_TREASURY.address, 1_001), DEV_BUYER.local_account())

    assert raised.value.data == error_data(
        "ERC20InsufficientBalance(address,uint256,uint256)",
        ["address", "uint256", "uint256"],
        [DEV_BUYER.address, 1_000, 1_001],
    )


# --- PermitStablecoin --------------------------------------------------------------------


def test_permit_token_metadata_and_domain(eth_tester_w3: Web3):
    token = deploy_permit_token(eth_tester_w3)

    fields, name, version, chain_id, verifying_contract, salt, extensions = (
        token.functions.eip712Domain().call()
    )

    assert token.functions.decimals().call() == 6
    assert token.functions.symbol().call() == "PUSDC"
    assert fields == b"\x0f"
    assert name == "Permit USD Coin"
    assert version == "1"
    assert chain_id == eth_tester_w3.eth.chain_id
    assert verifying_contract == token.address
    assert salt == b"\x00" * 32
    assert extensions == []


def test_permit_token_typehashes_match_eip3009(eth_tester_w3: Web3):
    token = deploy_permit_token(eth_tester_w3)

    assert token.functions.TRANSFER_WITH_AUTHORIZATION_TYPEHASH().call() == Web3.keccak(
        text="TransferWithAuthorization(address from,address to,uint256 value,"
        "uint256 validAfter,uint256 validBefore,bytes32 nonce)"
    )
    assert token.functions.RECEIVE_WITH_AUTHORIZATION_TYPEHASH().call() == Web3.keccak(
        text="ReceiveWithAuthorization(address from,address to,uint256 value,"
        "uint256 validAfter,uint256 validBefore,bytes32 nonce)"
    )
    assert token.functions.CANCEL_AUTHORIZATION_TYPEHASH().call() == Web3.keccak(
        text="CancelAuthorization(address authorizer,bytes32 nonce)"
    )


def test_permit_sets_allowance(eth_tester_w3: Web3):
    w3 = eth_tester_w3
    token = deploy_permit_token(w3)
    buyer = DEV_BUYER.local_account()
    deadline = latest_timestamp(w3) + 3600
    signature = sign_permit(token, buyer, DEV_TREASURY.address, 4_000_000, deadline)

    # The treasury submits the buyer's permit and pays the gas.
    transact(
        w3,
        token.functions.permit(DEV_BUYER.address, DEV_TREASURY.address, 4_000_000, deadline, *signature),
        DEV_TREASURY.local_account(),
    )

    assert token.functions.allowance(DEV_BUYER.address, DEV_TREASURY.address).call() == 4_000_000
    assert token.functions.nonces(DEV_BUYER.address).call() == 1


def test_receive_with_authorization_by_payee(eth_tester_w3: Web3):
    w3 = eth_tester_w3
    token = deploy_permit_token(w3)
    mint(w3, token, DEV_BUYER.address, 3_000_000)
    nonce = secrets.token_bytes(32)
    now = latest_timestamp(w3)
    signature = sign_receive_with_authorization(
        token, DEV_BUYER.local_account(), DEV_TREASURY.address, 1_200_000, now - 1, now + 3600, nonce
    )

    receipt = transact(
        w3,
        token.functions.receiveWithAuthorization(
            DEV_BUYER.address, DEV_TREASURY.address, 1_200_000, now - 1, now + 3600, nonce, *signature
        ),
        DEV_TREASURY.local_account(),
    )

    assert transfer_logs(receipt, token) == [(DEV_BUYER.address, DEV_TREASURY.address, 1_200_000)]
    (used,) = token.events.AuthorizationUsed().process_receipt(receipt, errors=DISCARD)
    assert used["args"]["authorizer"] == DEV_BUYER.address
    assert used["args"]["nonce"] == nonce
    assert token.functions.authorizationState(DEV_BUYER.address, nonce).call() is True
    assert token.functions.balanceOf(DEV_TREASURY.address).call() == 1_200_000
    assert token.functions.balanceOf(DEV_BUYER.address).call() == 1_800_000


def test_transfer_with_authorization_by_relayer(eth_tester_w3: Web3):
    w3 = eth_tester_w3
    token = deploy_permit_token(w3)
    mint(w3, token, DEV_BUYER.address, 1_000_000)
    nonce = secrets.token_bytes(32)
    now = latest_timestamp(w3)
    signature = sign_transfer_authorization(
        token, DEV_BUYER.local_account(), DEV_TREASURY.address, 600_000, 0, now + 3600, nonce
    )

    # DEV_SUPPLIER_PAYOUT is neither payer nor payee, only the relayer that pays the gas.
    receipt = transact(
        w3,
        token.functions.transferWithAuthorization(
            DEV_BUYER.address, DEV_TREASURY.address, 600_000, 0, now + 3600, nonce, *signature
        ),
        DEV_SUPPLIER_PAYOUT.local_account(),
    )

    assert transfer_logs(receipt, token) == [(DEV_BUYER.address, DEV_TREASURY.address, 600_000)]
    assert token.functions.authorizationState(DEV_BUYER.address, nonce).call() is True


@pytest.mark.anvil
def test_receive_with_authorization_rejects_other_caller(anvil_w3: Web3):
    w3 = anvil_w3
    token = deploy_permit_token(w3)
    mint(w3, token, DEV_BUYER.address, 1_000_000)
    nonce = secrets.token_bytes(32)
    now = latest_timestamp(w3)
    signature = sign_receive_with_authorization(
        token, DEV_BUYER.local_account(), DEV_TREASURY.address, 500_000, 0, now + 3600, nonce
    )

    with pytest.raises(ContractCustomError) as raised:
        transact(
            w3,
            token.functions.receiveWithAuthorization(
                DEV_BUYER.address, DEV_TREASURY.address, 500_000, 0, now + 3600, nonce, *signature
            ),
            DEV_SUPPLIER_PAYOUT.local_account(),
        )

    assert raised.value.data == error_data(
        "CallerNotPayee(address,address)",
        ["address", "address"],
        [DEV_SUPPLIER_PAYOUT.address, DEV_TREASURY.address],
    )
    assert token.functions.authorizationState(DEV_BUYER.address, nonce).call() is False


@pytest.mark.anvil
def test_receive_with_authorization_validity_window(anvil_w3: Web3):
    w3 = anvil_w3
    token = deploy_permit_token(w3)
    mint(w3, token, DEV_BUYER.address, 1_000_000)
    buyer = DEV_BUYER.local_account()
    treasury = DEV_TREASURY.local_account()
    now = latest_timestamp(w3)

    def receive(valid_after: int, valid_before: int) -> None:
        nonce = secrets.token_bytes(32)
        signature = sign_receive_with_authorization(
            token, buyer, DEV_TREASURY.address, 1, valid_after, valid_before, nonce
        )
        function = token.functions.receiveWithAuthorization(
            DEV_BUYER.address, DEV_TREASURY.address, 1, valid_after, valid_before, nonce, *signature
        )
        transact(w3, function, treasury)

    with pytest.raises(ContractCustomError) as not_yet_valid:
        receive(now + 3600, now + 7200)
    # The next block's timestamp is at least `now`, so validBefore = now has passed.
    with pytest.raises(ContractCustomError) as expired:
        receive(0, now)

    assert HexBytes(not_yet_valid.value.data)[:4] == Web3.keccak(
        text="AuthorizationNotYetValid(uint256,uint256)"
    )[:4]
    assert HexBytes(expired.value.data)[:4] == Web3.keccak(text="AuthorizationExpired(uint256,uint256)")[:4]
    assert token.functions.balanceOf(DEV_TREASURY.address).call() == 0


@pytest.mark.anvil
def test_receive_with_authorization_rejects_reused_nonce(anvil_w3: Web3):
    w3 = anvil_w3
    token = deploy_permit_token(w3)
    mint(w3, token, DEV_BUYER.address, 1_000_000)
    nonce = secrets.token_bytes(32)
    now = latest_timestamp(w3)
    signature = sign_receive_with_authorization(
        token, DEV_BUYER.local_account(), DEV_TREASURY.address, 100_000, 0, now + 3600, nonce
    )
    function = token.functions.receiveWithAuthorization(
        DEV_BUYER.address, DEV_TREASURY.address, 100_000, 0, now + 3600, nonce, *signature
    )
    transact(w3, function, DEV_TREASURY.local_account())

    with pytest.raises(ContractCustomError) as raised:
        transact(w3, function, DEV_TREASURY.local_account())

    assert raised.value.data == error_data(
        "AuthorizationAlreadyUsed(address,bytes32)", ["address", "bytes32"], [DEV_BUYER.address, nonce]
    )
    assert token.functions.balanceOf(DEV_TREASURY.address).call() == 100_000


@pytest.mark.anvil
def test_receive_with_authorization_rejects_wrong_signer(anvil_w3: Web3):
    w3 = anvil_w3
    token = deploy_permit_token(w3)
    mint(w3, token, DEV_BUYER.address, 1_000_000)
    nonce = secrets.token_bytes(32)
    now = latest_timestamp(w3)
    # Signed by DEV_SUPPLIER_PAYOUT for a transfer from DEV_BUYER's balance.
    impostor = DEV_SUPPLIER_PAYOUT.local_account()
    message = {
        "from": DEV_BUYER.address,
        "to": DEV_TREASURY.address,
        "value": 100_000,
        "validAfter": 0,
        "validBefore": now + 3600,
        "nonce": nonce,
    }
    signature = sign_token_typed_data(
        token, impostor, "ReceiveWithAuthorization", AUTHORIZATION_FIELDS, message
    )

    with pytest.raises(ContractCustomError) as raised:
        transact(
            w3,
            token.functions.receiveWithAuthorization(
                DEV_BUYER.address, DEV_TREASURY.address, 100_000, 0, now + 3600, nonce, *signature
            ),
            DEV_TREASURY.local_account(),
        )

    assert raised.value.data == error_data(
        "InvalidAuthorizationSigner(address,address)",
        ["address", "address"],
        [DEV_SUPPLIER_PAYOUT.address, DEV_BUYER.address],
    )


@pytest.mark.anvil
def test_cancel_authorization_blocks_nonce(anvil_w3: Web3):
    w3 = anvil_w3
    token = deploy_permit_token(w3)
    mint(w3, token, DEV_BUYER.address, 1_000_000)
    buyer = DEV_BUYER.local_account()
    nonce = secrets.token_bytes(32)
    now = latest_timestamp(w3)
    receive_signature = sign_receive_with_authorization(
        token, buyer, DEV_TREASURY.address, 100_000, 0, now + 3600, nonce
    )
    cancel_signature = sign_cancel_authorization(token, buyer, nonce)

    cancel_receipt = transact(
        w3, token.functions.cancelAuthorization(DEV_BUYER.address, nonce, *cancel_signature),
        DEV_SUPPLIER_PAYOUT.local_account(),
    )
    with pytest.raises(ContractCustomError) as raised:
        transact(
            w3,
            token.functions.receiveWithAuthorization(
                DEV_BUYER.address, DEV_TREASURY.address, 100_000, 0, now + 3600, nonce, *receive_signature
            ),
            DEV_TREASURY.local_account(),
        )

    (canceled,) = token.events.AuthorizationCanceled().process_receipt(cancel_receipt, errors=DISCARD)
    assert canceled["args"]["authorizer"] == DEV_BUYER.address
    assert canceled["args"]["nonce"] == nonce
    assert raised.value.data == error_data(
        "AuthorizationAlreadyUsed(address,bytes32)", ["address", "bytes32"], [DEV_BUYER.address, nonce]
    )
    assert token.functions.balanceOf(DEV_BUYER.address).call() == 1_000_000
