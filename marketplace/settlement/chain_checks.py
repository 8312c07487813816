"""Checks of settlement records against the chain, through plain JSON-RPC reads.

A deposit leaf names one log: (chain id, transaction hash, log index). A payout leaf names one
transaction, which must emit exactly one ERC-20 Transfer of its token from the reserve holder
to the supplier. The check reads the receipt and the block. It compares every field of the leaf
with the log (the contract that emitted it, the token, sender, recipient and amount), and checks
the block number and hash, the receipt's success and the confirmation depth. Reserves are ERC-20 ``balanceOf``
calls at a chosen block.

This module must not import the database layer, because the verifier uses it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from web3 import Web3
from web3.exceptions import TransactionNotFound, Web3Exception

from marketplace.settlement.leaves import (
    DEPOSIT,
    Leaf,
    nano_usd_per_unit,
    units_to_nano_usd_credit,
    units_to_nano_usd_floor,
)

logger = logging.getLogger(__name__)

TRANSFER_TOPIC = Web3.keccak(text="Transfer(address,address,uint256)")
# TopUpVault's event for a deposit that names its account: Deposited(accountRef, token, payer, amount).
VAULT_DEPOSITED_TOPIC = Web3.keccak(text="Deposited(bytes32,address,address,uint256)")

ERC20_READ_ABI = [
    {"name": "decimals", "type": "function", "stateMutability": "view", "inputs": [], "outputs": [{"name": "", "type": "uint8"}]},
    {
        "name": "balanceOf",
        "type": "function",
        "stateMutability": "view",
        "inputs": [{"name": "account", "type": "address"}],
        "outputs": [{"name": "", "type": "uint256"}],
    },
]


class MissingRpc(LookupError):
    """No RPC endpoint was given for a chain that the export refers to."""


def address_topic(address: str) -> bytes:
    return bytes(12) + bytes.fromhex(address[2:])


@dataclass
class ChainClients:
    """One Web3 connection per chain id, with the per-chain reads that checks repeat cached."""

    connections: dict[int, Web3]
    _decimals: dict[tuple[int, str], int] = field(default_factory=dict)
    _heads: dict[int, int] = field(default_factory=dict)

    def web3(self, chain_id: int) -> Web3:
        try:
            return self.connections[chain_id]
        except KeyError:
            raise MissingRpc(f"no RPC URL for chain {chain_id}; pass --chain-rpc {chain_id}=URL") from None

    def head(self, chain_id: int) -> int:
        if chain_id not in self._heads:
            self._heads[chain_id] = self.web3(chain_id).eth.block_number
        return self._heads[chain_id]

    def token_decimals(self, chain_id: int, token_address: str) -> int:
        key = (chain_id, token_address)
        if key not in self._decimals:
            w3 = self.web3(chain_id)
            token = w3.eth.contract(address=Web3.to_checksum_address(token_address), abi=ERC20_READ_ABI)
            self._decimals[key] = token.functions.decimals().call()
        return self._decimals[key]

    def token_balance(self, chain_id: int, token_address: str, holder: str, block: int | str) -> int:
        w3 = self.web3(chain_id)
        token = w3.eth.contract(address=Web3.to_checksum_address(token_address), abi=ERC20_READ_ABI)
        return token.functions.balanceOf(Web3.to_checksum_address(holder)).call(block_identifier=block)


def _find_log(receipt: Any, log_index: int) -> Any | None:
    for log in receipt["logs"]:
        if int(log["logIndex"]) == log_index:
            return log
    return None


def _log_parts(log: Any) -> tuple[str, list[bytes], int | None]:
    data = bytes(log["data"])
    amount = int.from_bytes(data, "big") if len(data) == 32 else None
    return Web3.to_checksum_address(log["address"]), [bytes(topic) for topic in log["topics"]], amount


def _compare_deposit_log(leaf: Leaf, log: Any) -> list[str]:
    """Compare the emitter, topics and data of a deposit's log with the leaf."""
    values = leaf.values
    emitter, topics, amount = _log_parts(log)
    problems = []

    if topics and topics[0] == VAULT_DEPOSITED_TOPIC:
        # A vault deposit: the vault emits it, the token and the payer are topics, and the
        # account reference is the account id as a 32-byte big-endian integer.
        if len(topics) != 4:
            return [f"log {values['log_index']} is a malformed Deposited event"]
        if emitter != values["to_address"]:
            problems.append(f"the Deposited event comes from {emitter}, not the vault {values['to_address']}")
        if topics[2] != address_topic(values["token_address"]):
            problems.append(f"the Deposited event is for token 0x{topics[2][-20:].hex()}, not {values['token_address']}")
        if topics[3] != address_topic(values["from_address"]):
            problems.append(f"the Deposited event's payer is 0x{topics[3][-20:].hex()}, not {values['from_address']}")
        if int.from_bytes(topics[1], "big") != values["account_id"]:
            problems.append(f"the Deposited event names account {int.from_bytes(topics[1], 'big')}, not {values['account_id']}")
    elif topics and topics[0] == TRANSFER_TOPIC:
        if len(topics) != 3:
            return [f"log {values['log_index']} is a malformed Transfer event"]
        if emitter != values["token_address"]:
            problems.append(f"the Transfer comes from contract {emitter}, not token {values['token_address']}")
        if topics[1] != address_topic(values["from_address"]):
            problems.append(f"the Transfer is from 0x{topics[1][-20:].hex()}, not {values['from_address']}")
        if topics[2] != address_topic(values["to_address"]):
            problems.append(f"the Transfer is to 0x{topics[2][-20:].hex()}, not {values['to_address']}")
    else:
        return [f"log {values['log_index']} of the transaction is not an ERC-20 Transfer or a vault Deposited event"]

    if amount != values["amount_units"]:
        problems.append(f"the log moves {amount} units, the record says {values['amount_units']}")
    return problems


def _check_payout_logs(leaf: Leaf, receipt: Any) -> list[str]:
    """A payout's transaction must emit exactly one matching ERC-20 Transfer of the token."""
    values = leaf.values
    expected = [TRANSFER_TOPIC, address_topic(values["from_address"]), address_topic(values["to_address"])]
    transfers = []
    for log in receipt["logs"]:
        emitter, topics, amount = _log_parts(log)
        if emitter == values["token_address"] and topics == expected:
            transfers.append(amount)
    if len(transfers) != 1:
        return [
            f"the transaction has {len(transfers)} Transfers of {values['token_address']} from "
            f"{values['from_address']} to {values['to_address']}, expected exactly 1"
        ]
    if transfers[0] != values["amount_units"]:
        return [f"the Transfer moves {transfers[0]} units, the record says {values['amount_units']}"]
    return []


def check_transfer_record(
    clients: ChainClients, leaf: Leaf, confirmations: int, reserve_holders: set[str], token_addresses: set[str]
) -> list[str]:
    """Check a deposit or payout leaf against its chain and return what does not match.

    ``reserve_holders`` and ``token_addresses`` are the committed reserve sources of the leaf's
    chain: a deposit must arrive at one of the holders, and a payout must leave one of them.
    """
    values = leaf.values
    chain_id = values["chain_id"]
    problems = []

    if values["token_address"] not in token_addresses:
        problems.append(f"token {values['token_address']} is not a committed reserve token of chain {chain_id}")
    own_address = values["to_address"] if leaf.kind is DEPOSIT else values["from_address"]
    if own_address not in reserve_holders:
        side = "recipient" if leaf.kind is DEPOSIT else "sender"
        problems.append(f"the {side} {own_address} is not a committed reserve holder of chain {chain_id}")

    w3 = clients.web3(chain_id)
    try:
        receipt = w3.eth.get_transaction_receipt(values["tx_hash"])
    except TransactionNotFound:
        return [*problems, f"transaction 0x{values['tx_hash'].hex()} was not found on chain {chain_id}"]
    if receipt["status"] != 1:
        problems.append(f"transaction 0x{values['tx_hash'].hex()} reverted")
    if receipt["blockNumber"] != values["block_number"]:
        problems.append(f"the transaction is in block {receipt['blockNumber']}, the record says {values['block_number']}")
    if bytes(receipt["blockHash"]) != values["block_hash"]:
        problems.append(f"the transaction is in block 0x{bytes(receipt['blockHash']).hex()}, the record says 0x{values['block_hash'].hex()}")

    block = w3.eth.get_block(receipt["blockNumber"])
    if bytes(block["hash"]) != bytes(receipt["blockHash"]):
        problems.append(f"block {receipt['blockNumber']} of the receipt is no longer canonical")
    depth = clients.head(chain_id) - receipt["blockNumber"] + 1
    if depth < confirmations:
        problems.append(f"the transaction has {depth} confirmations, fewer than the {confirmations} required")

    if leaf.kind is DEPOSIT:
        log = _find_log(receipt, values["log_index"])
        if log is None:
            return [*problems, f"the transaction has no log with index {values['log_index']}"]
        problems.extend(_compare_deposit_log(leaf, log))
    else:
        problems.extend(_check_payout_logs(leaf, receipt))

    problems.extend(_check_amount(clients, leaf))
    return problems


def _check_amount(clients: ChainClients, leaf: Leaf) -> list[str]:
    """Check the nano-USD amount against the token units, using the decimals read on-chain."""
    values = leaf.values
    decimals = clients.token_decimals(values["chain_id"], values["token_address"])
    if decimals != values["token_decimals"]:
        return [f"token {values['token_address']} has {decimals} decimals on-chain, the record says {values['token_decimals']}"]

    units, nano_usd = values["amount_units"], values["amount_nano_usd"]
    if leaf.kind is DEPOSIT:
        expected = units_to_nano_usd_credit(units, decimals)
        if nano_usd != expected:
            return [f"{units} units at {decimals} decimals credit {expected} nano-USD, the record says {nano_usd}"]
        return []
    # A payout must deliver at least what the ledger debited, and less than one token unit more.
    delivered = units_to_nano_usd_floor(units, decimals)
    if not nano_usd <= delivered < nano_usd + nano_usd_per_unit(decimals):
        return [f"{units} units at {decimals} decimals deliver {delivered} nano-USD for a debit of {nano_usd}"]
    return []


@dataclass(frozen=True)
class ReserveReading:
    """One reserve source's on-chain balance at ``block``."""

    chain_id: int
    token_address: str
    holder_address: str
    block: int | str
    amount_units: int
    amount_nano_usd: int


def read_reserve(clients: ChainClients, chain_id: int, token_address: str, decimals: int, holder: str, block: int | str) -> ReserveReading:
    """Read one holder's token balance at ``block`` and value it in nano-USD, rounded down."""
    units = clients.token_balance(chain_id, token_address, holder, block)
    return ReserveReading(chain_id, token_address, holder, block, units, units_to_nano_usd_floor(units, decimals))


def read_reserve_at_or_latest(
    clients: ChainClients, chain_id: int, token_address: str, decimals: int, holder: str, block: int | None
) -> ReserveReading:
    """Read a reserve at ``block``, or at the latest block when ``block`` is None or the node
    no longer serves that block's state (a node that is not an archive node)."""
    if block is not None:
        try:
            return read_reserve(clients, chain_id, token_address, decimals, holder, block)
        except (Web3Exception, ValueError) as exc:
            logger.warning("reserve read at block %s failed on chain %d, reading latest: %s", block, chain_id, exc)
    return read_reserve(clients, chain_id, token_address, decimals, holder, "latest")
