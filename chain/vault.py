"""Deploy the TopUpVault contract and make deposits into it with web3.py.

Amounts named ``amount_units`` are in the token's base units (1 USDC = 10**6 units on most
chains). Each deposit names its Tokenport account with a 32-byte account reference, built by
``account_ref_for``. Signed deposits (EIP-2612 permit, EIP-3009 authorization) take the
payer's private key and sign both the typed data and the transaction locally.
"""

from __future__ import annotations

import logging
import secrets
from typing import Any, NamedTuple

from eth_abi import encode
from eth_account import Account
from eth_account.signers.local import LocalAccount
from web3 import Web3
from web3.contract import Contract
from web3.types import TxReceipt

from chain.contracts import Sender, deploy_contract, sender_address, transact

logger = logging.getLogger(__name__)

ACCOUNT_REF_BYTES = 32
MAX_ACCOUNT_ID = 2 ** (8 * ACCOUNT_REF_BYTES) - 1

# Bits of the ERC-5267 eip712Domain() `fields` value, in the order of the EIP-712 domain fields.
_DOMAIN_FIELDS = (
    (0x01, "name", "string"),
    (0x02, "version", "string"),
    (0x04, "chainId", "uint256"),
    (0x08, "verifyingContract", "address"),
    (0x10, "salt", "bytes32"),
)

_DOMAIN_FIELD_NAMES = [field_name for _bit, field_name, _type in _DOMAIN_FIELDS]

_PERMIT_TYPE = [
    {"name": "owner", "type": "address"},
    {"name": "spender", "type": "address"},
    {"name": "value", "type": "uint256"},
    {"name": "nonce", "type": "uint256"},
    {"name": "deadline", "type": "uint256"},
]

_RECEIVE_WITH_AUTHORIZATION_TYPE = [
    {"name": "from", "type": "address"},
    {"name": "to", "type": "address"},
    {"name": "value", "type": "uint256"},
    {"name": "validAfter", "type": "uint256"},
    {"name": "validBefore", "type": "uint256"},
    {"name": "nonce", "type": "bytes32"},
]


class Signature(NamedTuple):
    """An ECDSA signature split the way Solidity functions take it."""

    v: int
    r: bytes
    s: bytes


def account_ref_for(account_id: int) -> bytes:
    """Encode a Tokenport account id as the vault's 32-byte ``accountRef``.

    The encoding is the id as a 32-byte big-endian unsigned integer, the same as Solidity's
    ``bytes32(uint256(accountId))``. It is injective, so two accounts can never share a
    reference, and ``account_id_from_ref`` reverses it without a lookup table. A hash of the
    id would hide nothing, because small ids can be found by hashing every candidate. The
    vault rejects the zero reference, so ids start at 1.
    """
    if isinstance(account_id, bool) or not isinstance(account_id, int):
        raise TypeError(f"invalid account id {account_id!r}: expected an int")
    if not 1 <= account_id <= MAX_ACCOUNT_ID:
        raise ValueError(f"invalid account id {account_id}: expected 1 to 2**256 - 1")
    return account_id.to_bytes(ACCOUNT_REF_BYTES, "big")


def account_id_from_ref(account_ref: bytes) -> int:
    """Decode an ``accountRef`` made by ``account_ref_for`` back to the account id.

    Raises ``ValueError`` unless ``account_ref`` is 32 bytes and not all zero.
    """
    if len(account_ref) != ACCOUNT_REF_BYTES:
        raise ValueError(
            f"invalid account reference of {len(account_ref)} bytes: expected {ACCOUNT_REF_BYTES}"
        )
    account_id = int.from_bytes(account_ref, "big")
    if account_id == 0:
        raise ValueError("invalid account reference: the zero reference names no account")
    return account_id


def deploy_vault(w3: Web3, owner_sender: Sender) -> Contract:
    """Deploy a TopUpVault from ``owner_sender`` with that account as its owner."""
    return deploy_contract(w3, "TopUpVault", sender_address(owner_sender), sender=owner_sender)


def allow_token(
    w3: Web3, vault: Contract, token_address: str, owner_sender: Sender, allowed: bool = True
) -> TxReceipt:
    """Allow (or with ``allowed=False`` disallow) deposits of a token. The vault owner must send it."""
    function = vault.functions.setTokenAllowed(Web3.to_checksum_address(token_address), allowed)
    return transact(w3, function, owner_sender)


def withdraw_from_vault(
    w3: Web3,
    vault: Contract,
    token_address: str,
    to: str,
    amount_units: int,
    owner_sender: Sender,
) -> TxReceipt:
    """Send ``amount_units`` of a token from the vault to ``to``. The vault owner must send it."""
    function = vault.functions.withdraw(
        Web3.to_checksum_address(token_address), Web3.to_checksum_address(to), amount_units
    )
    return transact(w3, function, owner_sender)


def deposit_to_vault(
    w3: Web3,
    vault: Contract,
    token: Contract,
    private_key: str,
    amount_units: int,
    account_ref: bytes,
) -> TxReceipt:
    """Approve the vault for ``amount_units`` and call ``deposit``, both signed with ``private_key``.

    The approval is skipped when the allowance already covers the amount. Returns the receipt of
    the deposit and raises ``TransactionFailedError`` when either transaction reverts.
    """
    payer = Account.from_key(private_key)
    allowance = token.functions.allowance(payer.address, vault.address).call()
    if allowance < amount_units:
        transact(w3, token.functions.approve(vault.address, amount_units), payer)

    receipt = transact(
        w3, vault.functions.deposit(token.address, amount_units, account_ref), payer
    )
    logger.info(
        "deposited %d units of %s to vault %s from %s (tx=%s)",
        amount_units, token.address, vault.address, payer.address,
        receipt["transactionHash"].to_0x_hex(),
    )
    return receipt


def deposit_with_permit(
    w3: Web3,
    vault: Contract,
    token: Contract,
    private_key: str,
    amount_units: int,
    account_ref: bytes,
    deadline: int,
    domain: dict[str, Any] | None = None,
) -> TxReceipt:
    """Sign an EIP-2612 permit for the vault and deposit with it in one transaction.

    ``deadline`` is a Unix timestamp in seconds. ``domain`` is the token's EIP-712 domain, read
    with ERC-5267 ``eip712Domain()`` when None (see ``sign_token_typed_data``).
    """
    payer = Account.from_key(private_key)
    signature = sign_permit(token, payer, vault.address, amount_units, deadline, domain)
    function = vault.functions.depositWithPermit(
        token.address, amount_units, account_ref, deadline, *signature
    )
    return transact(w3, function, payer)


def deposit_with_authorization(
    w3: Web3,
    vault: Contract,
    token: Contract,
    private_key: str,
    amount_units: int,
    account_ref: bytes,
    valid_after: int,
    valid_before: int,
    nonce: bytes | None = None,
    domain: dict[str, Any] | None = None,
) -> TxReceipt:
    """Sign an EIP-3009 ReceiveWithAuthorization to the vault and deposit with it in one transaction.

    The authorization is valid in blocks whose timestamp is after ``valid_after`` and before
    ``valid_before`` (Unix seconds). ``nonce`` defaults to 32 random bytes. ``domain`` is the
    token's EIP-712 domain, read with ERC-5267 ``eip712Domain()`` when None.
    """
    payer = Account.from_key(private_key)
    if nonce is None:
        nonce = secrets.token_bytes(32)
    signature = sign_receive_with_authorization(
        token, payer, vault.address, amount_units, valid_after, valid_before, nonce, domain
    )
    function = vault.functions.depositWithAuthorization(
        token.address, amount_units, account_ref, valid_after, valid_before, nonce, *signature
    )
    return transact(w3, function, payer)


def sign_permit(
    token: Contract,
    owner: LocalAccount,
    spender: str,
    value: int,
    deadline: int,
    domain: dict[str, Any] | None = None,
) -> Signature:
    """Sign an EIP-2612 Permit of ``owner`` for ``spender``, using the owner's current permit nonce."""
    nonce = token.functions.nonces(owner.address).call()
    message = {
        "owner": owner.address,
        "spender": Web3.to_checksum_address(spender),
        "value": value,
        "nonce": nonce,
        "deadline": deadline,
    }
    return sign_token_typed_data(token, owner, "Permit", _PERMIT_TYPE, message, domain)


def sign_receive_with_authorization(
    token: Contract,
    payer: LocalAccount,
    payee: str,
    value: int,
    valid_after: int,
    valid_before: int,
    nonce: bytes,
    domain: dict[str, Any] | None = None,
) -> Signature:
    """Sign an EIP-3009 ReceiveWithAuthorization from ``payer`` to ``payee``."""
    if len(nonce) != 32:
        raise ValueError(f"invalid authorization nonce of {len(nonce)} bytes: expected 32")
    message = {
        "from": payer.address,
        "to": Web3.to_checksum_address(payee),
        "value": value,
        "validAfter": valid_after,
        "validBefore": valid_before,
        "nonce": nonce,
    }
    return sign_token_typed_data(
        token, payer, "ReceiveWithAuthorization", _RECEIVE_WITH_AUTHORIZATION_TYPE, message, domain
    )


def read_eip712_domain(token: Contract) -> dict[str, Any]:
    """Read a token's EIP-712 domain with ERC-5267 ``eip712Domain()``.

    Returns only the domain fields that the token uses, keyed by their EIP-712 names.
    """
    fields, name, version, chain_id, verifying_contract, salt, _extensions = (
        token.functions.eip712Domain().call()
    )
    values = {
        "name": name,
        "version": version,
        "chainId": chain_id,
        "verifyingContract": verifying_contract,
        "salt": salt,
    }
    field_bits = fields[0] if isinstance(fields, bytes) else fields
    return {
        field_name: values[field_name]
        for bit, field_name, _field_type in _DOMAIN_FIELDS
        if field_bits & bit
    }


def sign_token_typed_data(
    token: Contract,
    signer: LocalAccount,
    primary_type: str,
    message_type: list[dict[str, str]],
    message: dict[str, Any],
    domain: dict[str, Any] | None = None,
) -> Signature:
    """Sign an EIP-712 message of type ``primary_type`` in the token's domain.

    ``domain`` maps EIP-712 domain field names (name, version, chainId, verifyingContract,
    salt) to values. When it is None, it is read with ERC-5267 ``eip712Domain()``, so pass it
    for tokens without that function. When the token has ``DOMAIN_SEPARATOR()``, the domain's
    hash is checked against it first, and a mismatch raises ``ValueError``.
    """
    if domain is None:
        domain = read_eip712_domain(token)
    unknown = set(domain) - set(_DOMAIN_FIELD_NAMES)
    if unknown:
        raise ValueError(f"invalid EIP-712 domain fields {sorted(unknown)}: expected {_DOMAIN_FIELD_NAMES}")
    domain_type = [
        {"name": field_name, "type": field_type}
        for _bit, field_name, field_type in _DOMAIN_FIELDS
        if field_name in domain
    ]
    _check_domain_separator(token, domain_type, domain)

    typed_data = {
        "types": {"EIP712Domain": domain_type, primary_type: message_type},
        "primaryType": primary_type,
        "domain": domain,
        "message": message,
    }
    signed = signer.sign_typed_data(full_message=typed_data)
    return Signature(
        v=signed.v,
        r=signed.r.to_bytes(32, "big"),
        s=signed.s.to_bytes(32, "big"),
    )


def eip712_domain_separator(domain_type: list[dict[str, str]], domain: dict[str, Any]) -> bytes:
    """Compute the EIP-712 domain separator: hashStruct of the EIP712Domain fields in use."""
    type_string = "EIP712Domain(" + ",".join(f"{f['type']} {f['name']}" for f in domain_type) + ")"
    abi_types = ["bytes32"]
    values: list[Any] = [Web3.keccak(text=type_string)]
    for field in domain_type:
        value = domain[field["name"]]
        if field["type"] == "string":
            # EIP-712 encodes a string member as the keccak256 of its UTF-8 bytes.
            abi_types.append("bytes32")
            values.append(Web3.keccak(text=value))
        else:
            abi_types.append(field["type"])
            values.append(value)
    return bytes(Web3.keccak(encode(abi_types, values)))


def _check_domain_separator(
    token: Contract, domain_type: list[dict[str, str]], domain: dict[str, Any]
) -> None:
    if not any(item.get("name") == "DOMAIN_SEPARATOR" for item in token.abi):
        return
    expected = bytes(token.functions.DOMAIN_SEPARATOR().call())
    computed = eip712_domain_separator(domain_type, domain)
    if computed != expected:
        raise ValueError(
            f"invalid EIP-712 domain {domain!r} for token {token.address}: its separator "
            f"0x{computed.hex()} differs from the token's DOMAIN_SEPARATOR() 0x{expected.hex()}. "
            "Check the name, version and chain id"
        )
