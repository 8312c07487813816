"""Load compiled contract artifacts and deploy or call contracts with web3.py.

The artifacts are the JSON files that ``node contracts/build.mjs`` writes to
``contracts/artifacts/``. A ``sender`` in this module is either an eth-account
``LocalAccount``, whose transactions are signed here and sent with
``eth_sendRawTransaction`` so they work against any JSON-RPC endpoint, or a checksum
address of an account that the node itself unlocks (``eth_sendTransaction``).
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

from eth_account.signers.local import LocalAccount
from eth_typing import ChecksumAddress
from hexbytes import HexBytes
from web3 import Web3
from web3.contract import Contract
from web3.contract.contract import ContractFunction
from web3.types import TxParams, TxReceipt

logger = logging.getLogger(__name__)

ARTIFACTS_DIR = Path(__file__).resolve().parent.parent / "contracts" / "artifacts"

# keccak256("Transfer(address,address,uint256)"): topic 0 of every ERC-20 Transfer log.
TRANSFER_EVENT_SIGNATURE = "Transfer(address,address,uint256)"
TRANSFER_EVENT_TOPIC = Web3.keccak(text=TRANSFER_EVENT_SIGNATURE).to_0x_hex()

DEFAULT_RECEIPT_TIMEOUT_SECONDS = 120.0

_ARTIFACT_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

Sender = LocalAccount | ChecksumAddress


class TransactionFailedError(RuntimeError):
    """A mined transaction whose receipt has status 0 (reverted)."""

    def __init__(self, description: str, receipt: TxReceipt) -> None:
        self.receipt = receipt
        self.transaction_hash = HexBytes(receipt["transactionHash"])
        super().__init__(
            f"{description} failed: transaction {self.transaction_hash.to_0x_hex()} "
            f"reverted in block {receipt['blockNumber']}"
        )


def load_artifact(name: str) -> dict[str, Any]:
    """Read ``contracts/artifacts/<name>.json`` and return it as a dict.

    Raises ``ValueError`` for a name that is not a Solidity identifier and
    ``FileNotFoundError`` when the artifact has not been built.
    """
    if not _ARTIFACT_NAME.match(name):
        raise ValueError(f"invalid contract name {name!r}: expected a Solidity identifier")

    path = ARTIFACTS_DIR / f"{name}.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"contract artifact not found: {path}. Build it with: node contracts/build.mjs"
        )
    return json.loads(path.read_text(encoding="utf-8"))


def contract_factory(w3: Web3, name: str) -> type[Contract]:
    """Return a web3 contract class with the ABI and creation bytecode of artifact ``name``."""
    artifact = load_artifact(name)
    return w3.eth.contract(abi=artifact["abi"], bytecode=artifact["bytecode"])


def contract_at(w3: Web3, name: str, address: str) -> Contract:
    """Return a web3 contract for artifact ``name`` deployed at ``address`` (any case)."""
    artifact = load_artifact(name)
    return w3.eth.contract(address=Web3.to_checksum_address(address), abi=artifact["abi"])


def sender_address(sender: Sender) -> ChecksumAddress:
    """Return the checksum address that ``sender`` sends from."""
    if isinstance(sender, LocalAccount):
        return Web3.to_checksum_address(sender.address)
    return Web3.to_checksum_address(sender)


def send_transaction(w3: Web3, transaction: TxParams, sender: Sender) -> HexBytes:
    """Send ``transaction`` from ``sender`` and return its hash without waiting for it.

    A ``LocalAccount`` sender signs locally: the nonce (pending count), chain id, gas
    estimate and EIP-1559 fees are filled in here unless ``transaction`` sets them.
    """
    transaction = dict(transaction)
    transaction["from"] = sender_address(sender)
    if not isinstance(sender, LocalAccount):
        return HexBytes(w3.eth.send_transaction(transaction))

    signed = sender.sign_transaction(_fill_for_signing(w3, transaction))
    return HexBytes(w3.eth.send_raw_transaction(signed.raw_transaction))


def _fill_for_signing(w3: Web3, transaction: dict[str, Any]) -> dict[str, Any]:
    transaction.setdefault("chainId", w3.eth.chain_id)
    transaction.setdefault("nonce", w3.eth.get_transaction_count(transaction["from"], "pending"))
    if "gas" not in transaction:
        transaction["gas"] = w3.eth.estimate_gas(transaction)

    if "gasPrice" not in transaction and "maxFeePerGas" not in transaction:
        # The same rule web3.py applies to unsigned transactions: room for the base fee to
        # double before the transaction stops being includable.
        priority_fee = w3.eth.max_priority_fee
        base_fee = w3.eth.get_block("latest")["baseFeePerGas"]
        transaction["maxPriorityFeePerGas"] = priority_fee
        transaction["maxFeePerGas"] = 2 * base_fee + priority_fee
    return transaction


def wait_for_success(
    w3: Web3,
    transaction_hash: HexBytes,
    description: str,
    timeout: float = DEFAULT_RECEIPT_TIMEOUT_SECONDS,
) -> TxReceipt:
    """Wait for the receipt of ``transaction_hash`` and return it.

    Raises ``TransactionFailedError`` when the transaction reverted and web3's
    ``TimeExhausted`` when no receipt arrives within ``timeout`` seconds.
    """
    receipt = w3.eth.wait_for_transaction_receipt(transaction_hash, timeout=timeout)
    if receipt["status"] != 1:
        logger.error("%s reverted: tx=%s", description, HexBytes(transaction_hash).to_0x_hex())
        raise TransactionFailedError(description, receipt)
    return receipt


def transact(
    w3: Web3,
    function: ContractFunction,
    sender: Sender,
    timeout: float = DEFAULT_RECEIPT_TIMEOUT_SECONDS,
) -> TxReceipt:
    """Call the state-changing contract ``function`` from ``sender`` and wait for success."""
    transaction = function.build_transaction({"from": sender_address(sender)})
    transaction_hash = send_transaction(w3, transaction, sender)
    return wait_for_success(w3, transaction_hash, f"{function.fn_name}()", timeout)


def deploy_contract(
    w3: Web3,
    name: str,
    *constructor_args: Any,
    sender: Sender,
    timeout: float = DEFAULT_RECEIPT_TIMEOUT_SECONDS,
) -> Contract:
    """Deploy artifact ``name`` with ``constructor_args`` and return the deployed contract.

    Waits until the deployment is mined. Raises ``TransactionFailedError`` when it reverted.
    """
    factory = contract_factory(w3, name)
    transaction = factory.constructor(*constructor_args).build_transaction(
        {"from": sender_address(sender)}
    )
    transaction_hash = send_transaction(w3, transaction, sender)
    receipt = wait_for_success(w3, transaction_hash, f"deployment of {name}", timeout)

    address = receipt["contractAddress"]
    logger.info("deployed %s at %s (tx=%s)", name, address, transaction_hash.to_0x_hex())
    return w3.eth.contract(address=address, abi=factory.abi)
