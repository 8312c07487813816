"""Tests for the TopUpVault contract and chain.vault.

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

from chain.contracts import deploy_contract, transact
from chain.devchain import DEV_BUYER, DEV_DEPLOYER, DEV_SUPPLIER_PAYOUT, DEV_TREASURY
from chain.vault import (
    account_id_from_ref,
    account_ref_for,
    allow_token,
    deploy_vault,
    deposit_to_vault,
    deposit_with_authorization,
    deposit_with_permit,
    read_eip712_domain,
    sign_permit,
    sign_receive_with_authorization,
    withdraw_from_vault,
)

ACCOUNT_ID = 7
ACCOUNT_REF = account_ref_for(ACCOUNT_ID)
FEE_COLLECTOR = DEV_SUPPLIER_PAYOUT.address
DEPOSITED_TOPIC = Web3.keccak(text="Deposited(bytes32,address,address,uint256)")


def error_data(signature: str, types: list[str], values: list[object]) -> str:
    """Return the revert data of custom error ``signature`` with its arguments, as 0x-hex."""
    selector = Web3.keccak(text=signature)[:4]
    return HexBytes(selector + encode(types, values)).to_0x_hex()


def ownable_unauthorized(account: str) -> str:
    return error_data("OwnableUnauthorizedAccount(address)", ["address"], [account])


def latest_timestamp(w3: Web3) -> int:
    return w3.eth.get_block("latest")["timestamp"]


def deposited_events(vault: Contract, receipt) -> list[dict]:
    return [dict(event["args"]) for event in vault.events.Deposited().process_receipt(receipt, errors=DISCARD)]


def deploy_token(w3: Web3, name: str, *args: object) -> Contract:
    return deploy_contract(w3, name, *args, sender=DEV_DEPLOYER.local_account())


def mint(w3: Web3, token: Contract, to: str, amount_units: int) -> None:
    transact(w3, token.functions.mint(to, amount_units), DEV_DEPLOYER.local_account())


def setup_vault(w3: Web3, token_name: str, *token_args: object) -> tuple[Contract, Contract]:
    """Deploy a vault owned by DEV_TREASURY and a token it allows, with 10 tokens minted to DEV_BUYER."""
    token = deploy_token(w3, token_name, *token_args)
    vault = deploy_vault(w3, DEV_TREASURY.local_account())
    allow_token(w3, vault, token.address, DEV_TREASURY.local_account())
    mint(w3, token, DEV_BUYER.address, 10_000_000)
    return vault, token


@pytest.fixture
def usdc_vault(eth_tester_w3: Web3) -> tuple[Contract, Contract]:
    return setup_vault(eth_tester_w3, "TestStablecoin", "Test USD Coin", "USDC", 6)


@pytest.fixture
def permit_vault(eth_tester_w3: Web3) -> tuple[Contract, Contract]:
    return setup_vault(eth_tester_w3, "PermitStablecoin", "Permit USD Coin", "PUSDC")


# --- account references ------------------------------------------------------------------


def test_account_ref_is_big_endian_id():
    assert account_ref_for(1) == b"\x00" * 31 + b"\x01"
    assert account_ref_for(0x0102) == b"\x00" * 30 + b"\x01\x02"
    assert account_ref_for(2**256 - 1) == b"\xff" * 32


def test_account_ref_round_trips():
    for account_id in (1, 7, 255, 256, 10**18, 2**256 - 1):
        assert account_id_from_ref(account_ref_for(account_id)) == account_id


def test_account_ref_rejects_invalid_ids():
    with pytest.raises(ValueError, match="invalid account id 0"):
        account_ref_for(0)
    with pytest.raises(ValueError, match="invalid account id -1"):
        account_ref_for(-1)
    with pytest.raises(ValueError, match="invalid account id"):
        account_ref_for(2**256)
    with pytest.raises(TypeError, match="expected an int"):
        account_ref_for(True)
    with pytest.raises(TypeError, match="expected an int"):
        account_ref_for("7")


def test_account_id_from_ref_rejects_invalid_refs():
    with pytest.raises(ValueError, match="31 bytes"):
        account_id_from_ref(b"\x01" * 31)
    with pytest.raises(ValueError, match="zero reference"):
        account_id_from_ref(b"\x00" * 32)


# --- deployment and allowlist on eth-tester ----------------------------------------------


def test_vault_owner_is_deployer(eth_tester_w3: Web3):
    vault = deploy_vault(eth_tester_w3, DEV_TREASURY.local_account())

    assert vault.functions.owner().call() == DEV_TREASURY.address
    assert vault.functions.pendingOwner().call() == "0x0000000000000000000000000000000000000000"


def test_allow_token_emits_event(eth_tester_w3: Web3, dev_token: Contract):
    vault = deploy_vault(eth_tester_w3, DEV_TREASURY.local_account())

    allowed = allow_token(eth_tester_w3, vault, dev_token.address, DEV_TREASURY.local_account())
    assert vault.functions.isTokenAllowed(dev_token.address).call() is True
    disallowed = allow_token(
        eth_tester_w3, vault, dev_token.address, DEV_TREASURY.local_account(), allowed=False
    )

    (allowed_event,) = vault.events.TokenAllowedSet().process_receipt(allowed)
    (disallowed_event,) = vault.events.TokenAllowedSet().process_receipt(disallowed)
    assert dict(allowed_event["args"]) == {"token": dev_token.address, "allowed": True}
    assert dict(disallowed_event["args"]) == {"token": dev_token.address, "allowed": False}
    assert vault.functions.isTokenAllowed(dev_token.address).call() is False


def test_ownership_transfer_takes_two_steps(eth_tester_w3: Web3):
    w3 = eth_tester_w3
    vault = deploy_vault(w3, DEV_TREASURY.local_account())

    transact(w3, vault.functions.transferOwnership(DEV_DEPLOYER.address), DEV_TREASURY.local_account())
    assert vault.functions.owner().call() == DEV_TREASURY.address
    assert vault.functions.pendingOwner().call() == DEV_DEPLOYER.address
    transact(w3, vault.functions.acceptOwnership(), DEV_DEPLOYER.local_account())

    assert vault.functions.owner().call() == DEV_DEPLOYER.address


# --- deposits on eth-tester --------------------------------------------------------------


def test_deposit_emits_exact_amount(eth_tester_w3: Web3, usdc_vault):
    vault, token = usdc_vault

    receipt = deposit_to_vault(eth_tester_w3, vault, token, DEV_BUYER.private_key, 2_345_678, ACCOUNT_REF)

    assert deposited_events(vault, receipt) == [
        {"accountRef": ACCOUNT_REF, "token": token.address, "payer": DEV_BUYER.address, "amount": 2_345_678}
    ]
    (log,) = [log for log in receipt["logs"] if log["address"] == vault.address]
    assert log["topics"] == [
        DEPOSITED_TOPIC,
        HexBytes(ACCOUNT_REF),
        HexBytes(encode(["address"], [token.address])),
        HexBytes(encode(["address"], [DEV_BUYER.address])),
    ]
    assert HexBytes(log["data"]) == HexBytes(encode(["uint256"], [2_345_678]))
    assert token.functions.balanceOf(vault.address).call() == 2_345_678
    assert token.functions.balanceOf(DEV_BUYER.address).call() == 7_654_322
    assert token.functions.allowance(DEV_BUYER.address, vault.address).call() == 0


def test_deposit_returns_received_amount(eth_tester_w3: Web3, usdc_vault):
    vault, token = usdc_vault
    transact(eth_tester_w3, token.functions.approve(vault.address, 500_000), DEV_BUYER.local_account())

    received = vault.functions.deposit(token.address, 500_000, ACCOUNT_REF).call(
        {"from": DEV_BUYER.address}
    )

    assert received == 500_000


def test_deposit_skips_approve_when_allowance_covers(eth_tester_w3: Web3, usdc_vault):
    w3 = eth_tester_w3
    vault, token = usdc_vault
    transact(w3, token.functions.approve(vault.address, 3_000_000), DEV_BUYER.local_account())
    nonce_before = w3.eth.get_transaction_count(DEV_BUYER.address)

    deposit_to_vault(w3, vault, token, DEV_BUYER.private_key, 1_000_000, ACCOUNT_REF)

    assert w3.eth.get_transaction_count(DEV_BUYER.address) == nonce_before + 1
    assert token.functions.allowance(DEV_BUYER.address, vault.address).call() == 2_000_000


def test_fee_on_transfer_deposit_credits_received(eth_tester_w3: Web3):
    # 1 % fee: the vault receives and credits 990,000 of the 1,000,000 units sent.
    w3 = eth_tester_w3
    vault, token = setup_vault(w3, "FeeOnTransferToken", "Fee Token", "FEE", 100, FEE_COLLECTOR)

    receipt = deposit_to_vault(w3, vault, token, DEV_BUYER.private_key, 1_000_000, ACCOUNT_REF)

    assert deposited_events(vault, receipt) == [
        {"accountRef": ACCOUNT_REF, "token": token.address, "payer": DEV_BUYER.address, "amount": 990_000}
    ]
    assert token.functions.balanceOf(vault.address).call() == 990_000
    assert token.functions.balanceOf(FEE_COLLECTOR).call() == 10_000
    assert token.functions.balanceOf(DEV_BUYER.address).call() == 9_000_000


def test_fee_on_transfer_deposit_tracks_fee_change(eth_tester_w3: Web3):
    w3 = eth_tester_w3
    vault, token = setup_vault(w3, "FeeOnTransferToken", "Fee Token", "FEE", 0, FEE_COLLECTOR)

    first = deposit_to_vault(w3, vault, token, DEV_BUYER.private_key, 1_000_000, ACCOUNT_REF)
    transact(w3, token.functions.setFeeBasisPoints(30), DEV_DEPLOYER.local_account())
    second = deposit_to_vault(w3, vault, token, DEV_BUYER.private_key, 1_000_000, ACCOUNT_REF)

    assert deposited_events(vault, first)[0]["amount"] == 1_000_000
    assert deposited_events(vault, second)[0]["amount"] == 997_000
    assert token.functions.balanceOf(vault.address).call() == 1_997_000


def test_permit_deposit_in_one_transaction(eth_tester_w3: Web3, permit_vault):
    w3 = eth_tester_w3
    vault, token = permit_vault
    nonce_before = w3.eth.get_transaction_count(DEV_BUYER.address)
    assert token.functions.allowance(DEV_BUYER.address, vault.address).call() == 0

    receipt = deposit_with_permit(
        w3, vault, token, DEV_BUYER.private_key, 1_500_000, ACCOUNT_REF, latest_timestamp(w3) + 600
    )

    assert w3.eth.get_transaction_count(DEV_BUYER.address) == nonce_before + 1
    assert receipt["to"] == vault.address
    assert deposited_events(vault, receipt) == [
        {"accountRef": ACCOUNT_REF, "token": token.address, "payer": DEV_BUYER.address, "amount": 1_500_000}
    ]
    assert token.functions.nonces(DEV_BUYER.address).call() == 1
    assert token.functions.allowance(DEV_BUYER.address, vault.address).call() == 0
    assert token.functions.balanceOf(vault.address).call() == 1_500_000


def test_permit_deposit_with_explicit_domain(eth_tester_w3: Web3, permit_vault):
    # Builds the domain by hand, as a caller must for a token without eip712Domain().
    w3 = eth_tester_w3
    vault, token = permit_vault
    domain = {
        "name": "Permit USD Coin",
        "version": "1",
        "chainId": w3.eth.chain_id,
        "verifyingContract": token.address,
    }

    receipt = deposit_with_permit(
        w3, vault, token, DEV_BUYER.private_key, 700_000, ACCOUNT_REF, latest_timestamp(w3) + 600, domain
    )

    assert read_eip712_domain(token) == domain
    assert deposited_events(vault, receipt)[0]["amount"] == 700_000


def test_sign_permit_rejects_wrong_domain(eth_tester_w3: Web3, permit_vault):
    w3 = eth_tester_w3
    vault, token = permit_vault
    domain = {**read_eip712_domain(token), "version": "2"}
    nonce_before = w3.eth.get_transaction_count(DEV_BUYER.address)

    with pytest.raises(ValueError, match="differs from the token's DOMAIN_SEPARATOR"):
        deposit_with_permit(
            w3, vault, token, DEV_BUYER.private_key, 700_000, ACCOUNT_REF, latest_timestamp(w3) + 600, domain
        )
    with pytest.raises(ValueError, match="invalid EIP-712 domain fields"):
        sign_permit(token, DEV_BUYER.local_account(), vault.address, 1, 0, {"name": "x", "chain": 1})

    assert w3.eth.get_transaction_count(DEV_BUYER.address) == nonce_before


def test_permit_deposit_survives_front_run_permit(eth_tester_w3: Web3, permit_vault):
    # An observer copies the permit from the pending deposit and submits it to the token first.
    w3 = eth_tester_w3
    vault, token = permit_vault
    deadline = latest_timestamp(w3) + 600
    signature = sign_permit(token, DEV_BUYER.local_account(), vault.address, 800_000, deadline)
    transact(
        w3,
        token.functions.permit(DEV_BUYER.address, vault.address, 800_000, deadline, *signature),
        DEV_SUPPLIER_PAYOUT.local_account(),
    )

    receipt = transact(
        w3,
        vault.functions.depositWithPermit(token.address, 800_000, ACCOUNT_REF, deadline, *signature),
        DEV_BUYER.local_account(),
    )

    assert deposited_events(vault, receipt)[0]["amount"] == 800_000
    assert token.functions.balanceOf(vault.address).call() == 800_000


def test_authorization_deposit_in_one_transaction(eth_tester_w3: Web3, permit_vault):
    w3 = eth_tester_w3
    vault, token = permit_vault
    nonce = secrets.token_bytes(32)
    nonce_before = w3.eth.get_transaction_count(DEV_BUYER.address)
    now = latest_timestamp(w3)

    receipt = deposit_with_authorization(
        w3, vault, token, DEV_BUYER.private_key, 2_000_000, ACCOUNT_REF, now - 1, now + 600, nonce
    )

    assert w3.eth.get_transaction_count(DEV_BUYER.address) == nonce_before + 1
    assert receipt["to"] == vault.address
    assert deposited_events(vault, receipt) == [
        {"accountRef": ACCOUNT_REF, "token": token.address, "payer": DEV_BUYER.address, "amount": 2_000_000}
    ]
    assert token.functions.authorizationState(DEV_BUYER.address, nonce).call() is True
    assert token.functions.balanceOf(vault.address).call() == 2_000_000
    assert token.functions.balanceOf(DEV_BUYER.address).call() == 8_000_000


def test_deposits_from_two_payers_add_up(eth_tester_w3: Web3, usdc_vault):
    w3 = eth_tester_w3
    vault, token = usdc_vault
    mint(w3, token, DEV_SUPPLIER_PAYOUT.address, 1_000_000)

    first = deposit_to_vault(w3, vault, token, DEV_BUYER.private_key, 300_000, account_ref_for(1))
    second = deposit_to_vault(w3, vault, token, DEV_SUPPLIER_PAYOUT.private_key, 200_001, account_ref_for(2))

    assert deposited_events(vault, first)[0]["accountRef"] == account_ref_for(1)
    assert deposited_events(vault, second)[0]["accountRef"] == account_ref_for(2)
    assert deposited_events(vault, second)[0]["payer"] == DEV_SUPPLIER_PAYOUT.address
    assert token.functions.balanceOf(vault.address).call() == 500_001


# --- withdrawals on eth-tester -----------------------------------------------------------


def test_owner_withdraw_emits_event(eth_tester_w3: Web3, usdc_vault):
    w3 = eth_tester_w3
    vault, token = usdc_vault
    deposit_to_vault(w3, vault, token, DEV_BUYER.private_key, 5_000_000, ACCOUNT_REF)

    receipt = withdraw_from_vault(
        w3, vault, token.address, DEV_SUPPLIER_PAYOUT.address, 1_234_567, DEV_TREASURY.local_account()
    )

    (event,) = vault.events.Withdrawn().process_receipt(receipt, errors=DISCARD)
    assert dict(event["args"]) == {"token": token.address, "to": DEV_SUPPLIER_PAYOUT.address, "amount": 1_234_567}
    assert token.functions.balanceOf(vault.address).call() == 3_765_433
    assert token.functions.balanceOf(DEV_SUPPLIER_PAYOUT.address).call() == 1_234_567


def test_owner_withdraws_disallowed_token(eth_tester_w3: Web3, usdc_vault):
    w3 = eth_tester_w3
    vault, token = usdc_vault
    deposit_to_vault(w3, vault, token, DEV_BUYER.private_key, 1_000_000, ACCOUNT_REF)
    allow_token(w3, vault, token.address, DEV_TREASURY.local_account(), allowed=False)

    withdraw_from_vault(w3, vault, token.address, DEV_TREASURY.address, 1_000_000, DEV_TREASURY.local_account())

    assert token.functions.balanceOf(vault.address).call() == 0
    assert token.functions.balanceOf(DEV_TREASURY.address).call() == 1_000_000


# --- rejections on anvil -----------------------------------------------------------------


def assert_reverts(w3: Web3, function, sender, expected_data: str) -> None:
    with pytest.raises(ContractCustomError) as raised:
        transact(w3, function, sender)
    assert raised.value.data == expected_data


@pytest.mark.anvil
def test_deposit_rejects_token_not_allowed(anvil_w3: Web3):
    w3 = anvil_w3
    vault, allowed_token = setup_vault(w3, "TestStablecoin", "Test USD Coin", "USDC", 6)
    other_token = deploy_token(w3, "TestStablecoin", "Other", "OTHER", 6)
    mint(w3, other_token, DEV_BUYER.address, 1_000_000)
    transact(w3, other_token.functions.approve(vault.address, 1_000_000), DEV_BUYER.local_account())

    assert_reverts(
        w3, vault.functions.deposit(other_token.address, 1_000_000, ACCOUNT_REF), DEV_BUYER.local_account(),
        error_data("TokenNotAllowed(address)", ["address"], [other_token.address]),
    )
    assert other_token.functions.balanceOf(vault.address).call() == 0

    allow_token(w3, vault, allowed_token.address, DEV_TREASURY.local_account(), allowed=False)
    transact(w3, allowed_token.functions.approve(vault.address, 1_000_000), DEV_BUYER.local_account())
    assert_reverts(
        w3, vault.functions.deposit(allowed_token.address, 1_000_000, ACCOUNT_REF), DEV_BUYER.local_account(),
        error_data("TokenNotAllowed(address)", ["address"], [allowed_token.address]),
    )


@pytest.mark.anvil
def test_signed_deposits_reject_token_not_allowed(anvil_w3: Web3):
    w3 = anvil_w3
    token = deploy_token(w3, "PermitStablecoin", "Permit USD Coin", "PUSDC")
    vault = deploy_vault(w3, DEV_TREASURY.local_account())
    mint(w3, token, DEV_BUYER.address, 1_000_000)
    now = latest_timestamp(w3)
    expected = error_data("TokenNotAllowed(address)", ["address"], [token.address])

    with pytest.raises(ContractCustomError) as permit_raised:
        deposit_with_permit(w3, vault, token, DEV_BUYER.private_key, 1_000, ACCOUNT_REF, now + 600)
    with pytest.raises(ContractCustomError) as authorization_raised:
        deposit_with_authorization(w3, vault, token, DEV_BUYER.private_key, 1_000, ACCOUNT_REF, 0, now + 600)

    assert permit_raised.value.data == expected
    assert authorization_raised.value.data == expected


@pytest.mark.anvil
def test_deposit_rejects_zero_amount_and_ref(anvil_w3: Web3):
    w3 = anvil_w3
    vault, token = setup_vault(w3, "TestStablecoin", "Test USD Coin", "USDC", 6)
    transact(w3, token.functions.approve(vault.address, 1_000_000), DEV_BUYER.local_account())
    buyer = DEV_BUYER.local_account()

    assert_reverts(w3, vault.functions.deposit(token.address, 0, ACCOUNT_REF), buyer, error_data("ZeroAmount()", [], []))
    assert_reverts(w3, vault.functions.deposit(token.address, 1, b"\x00" * 32), buyer, error_data("ZeroAccountRef()", [], []))


@pytest.mark.anvil
def test_deposit_rejects_when_fee_takes_everything(anvil_w3: Web3):
    w3 = anvil_w3
    vault, token = setup_vault(w3, "FeeOnTransferToken", "Fee Token", "FEE", 10_000, FEE_COLLECTOR)
    transact(w3, token.functions.approve(vault.address, 1_000_000), DEV_BUYER.local_account())

    assert_reverts(
        w3, vault.functions.deposit(token.address, 1_000_000, ACCOUNT_REF), DEV_BUYER.local_account(),
        error_data("NothingReceived(address)", ["address"], [token.address]),
    )
    assert token.functions.balanceOf(DEV_BUYER.address).call() == 10_000_000


@pytest.mark.anvil
def test_authorization_deposit_rejects_reused_nonce(anvil_w3: Web3):
    w3 = anvil_w3
    vault, token = setup_vault(w3, "PermitStablecoin", "Permit USD Coin", "PUSDC")
    nonce = secrets.token_bytes(32)
    now = latest_timestamp(w3)
    deposit_with_authorization(w3, vault, token, DEV_BUYER.private_key, 1_000_000, ACCOUNT_REF, 0, now + 600, nonce)

    with pytest.raises(ContractCustomError) as raised:
        deposit_with_authorization(
            w3, vault, token, DEV_BUYER.private_key, 1_000_000, ACCOUNT_REF, 0, now + 600, nonce
        )

    assert raised.value.data == error_data(
        "AuthorizationAlreadyUsed(address,bytes32)", ["address", "bytes32"], [DEV_BUYER.address, nonce]
    )
    assert token.functions.balanceOf(vault.address).call() == 1_000_000


@pytest.mark.anvil
def test_authorization_deposit_rejects_relayer(anvil_w3: Web3):
    # The vault always names the caller as `from`, so another account cannot submit the
    # buyer's authorization and pick the account that gets the credit.
    w3 = anvil_w3
    vault, token = setup_vault(w3, "PermitStablecoin", "Permit USD Coin", "PUSDC")
    nonce = secrets.token_bytes(32)
    now = latest_timestamp(w3)
    signature = sign_receive_with_authorization(
        token, DEV_BUYER.local_account(), vault.address, 1_000_000, 0, now + 600, nonce
    )
    function = vault.functions.depositWithAuthorization(
        token.address, 1_000_000, account_ref_for(99), 0, now + 600, nonce, *signature
    )

    with pytest.raises(ContractCustomError) as raised:
        transact(w3, function, DEV_SUPPLIER_PAYOUT.local_account())

    assert HexBytes(raised.value.data)[:4] == Web3.keccak(text="InvalidAuthorizationSigner(address,address)")[:4]
    assert token.functions.authorizationState(DEV_BUYER.address, nonce).call() is False


@pytest.mark.anvil
def test_permit_deposit_rejects_invalid_permit(anvil_w3: Web3):
    # Without an allowance, the permit's own error is passed on.
    w3 = anvil_w3
    vault, token = setup_vault(w3, "PermitStablecoin", "Permit USD Coin", "PUSDC")
    deadline = latest_timestamp(w3) + 600
    signature = sign_permit(token, DEV_BUYER.local_account(), vault.address, 1_000, deadline)
    function = vault.functions.depositWithPermit(token.address, 2_000, ACCOUNT_REF, deadline, *signature)

    with pytest.raises(ContractCustomError) as raised:
        transact(w3, function, DEV_BUYER.local_account())

    assert HexBytes(raised.value.data)[:4] == Web3.keccak(text="ERC2612InvalidSigner(address,address)")[:4]
    assert token.functions.balanceOf(vault.address).call() == 0


@pytest.mark.anvil
def test_only_owner_allows_tokens(anvil_w3: Web3):
    w3 = anvil_w3
    token = deploy_token(w3, "TestStablecoin", "Test USD Coin", "USDC", 6)
    vault = deploy_vault(w3, DEV_TREASURY.local_account())

    assert_reverts(
        w3, vault.functions.setTokenAllowed(token.address, True), DEV_BUYER.local_account(),
        ownable_unauthorized(DEV_BUYER.address),
    )
    assert vault.functions.isTokenAllowed(token.address).call() is False


@pytest.mark.anvil
def test_only_owner_withdraws(anvil_w3: Web3):
    w3 = anvil_w3
    vault, token = setup_vault(w3, "TestStablecoin", "Test USD Coin", "USDC", 6)
    deposit_to_vault(w3, vault, token, DEV_BUYER.private_key, 1_000_000, ACCOUNT_REF)

    assert_reverts(
        w3, vault.functions.withdraw(token.address, DEV_BUYER.address, 1_000_000), DEV_BUYER.local_account(),
        ownable_unauthorized(DEV_BUYER.address),
    )
    assert token.functions.balanceOf(vault.address).call() == 1_000_000


@pytest.mark.anvil
def test_withdraw_rejects_zero_recipient_and_amount(anvil_w3: Web3):
    w3 = anvil_w3
    vault, token = setup_vault(w3, "TestStablecoin", "Test USD Coin", "USDC", 6)
    treasury = DEV_TREASURY.local_account()
    zero_address = "0x0000000000000000000000000000000000000000"

    assert_reverts(
        w3, vault.functions.withdraw(token.address, zero_address, 1), treasury, error_data("ZeroRecipient()", [], [])
    )
    assert_reverts(
        w3, vault.functions.withdraw(token.address, DEV_TREASURY.address, 0), treasury, error_data("ZeroAmount()", [], [])
    )


@pytest.mark.anvil
def test_allow_rejects_address_without_code(anvil_w3: Web3):
    w3 = anvil_w3
    vault = deploy_vault(w3, DEV_TREASURY.local_account())

    assert_reverts(
        w3, vault.functions.setTokenAllowed(DEV_BUYER.address, True), DEV_TREASURY.local_account(),
        error_data("TokenNotContract(address)", ["address"], [DEV_BUYER.address]),
    )


@pytest.mark.anvil
def test_renounce_ownership_disabled(anvil_w3: Web3):
    w3 = anvil_w3
    vault = deploy_vault(w3, DEV_TREASURY.local_account())

    with pytest.raises(ContractCustomError) as raised:
        vault.functions.renounceOwnership().call({"from": DEV_TREASURY.address})

    assert raised.value.data == error_data("RenounceOwnershipDisabled()", [], [])
    assert vault.functions.owner().call() == DEV_TREASURY.address


@pytest.mark.anvil
def test_reentrant_deposit_rejected(anvil_w3: Web3):
    w3 = anvil_w3
    vault, token = setup_vault(w3, "ReentrantDepositToken")
    transact(w3, token.functions.approve(vault.address, 1_000_000), DEV_BUYER.local_account())
    transact(w3, token.functions.arm(vault.address, ACCOUNT_REF), DEV_DEPLOYER.local_account())

    assert_reverts(
        w3, vault.functions.deposit(token.address, 1_000_000, ACCOUNT_REF), DEV_BUYER.local_account(),
        error_data("ReentrancyGuardReentrantCall()", [], []),
    )
    assert token.functions.balanceOf(vault.address).call() == 0

    # Disarmed, the same token deposits normally, so the guard was the only obstacle.
    transact(w3, token.functions.arm("0x0000000000000000000000000000000000000000", ACCOUNT_REF), DEV_DEPLOYER.local_account())
    receipt = deposit_to_vault(w3, vault, token, DEV_BUYER.private_key, 1_000_000, ACCOUNT_REF)
    assert deposited_events(vault, receipt)[0]["amount"] == 1_000_000
