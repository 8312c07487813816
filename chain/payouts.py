"""Supplier payouts on-chain: sign, store, broadcast, confirm, and retry without ever paying twice.

The ledger side is `marketplace/payouts.py`. This module runs one pass over a chain:

1. Every open payout is advanced. If one of its transactions is mined and has the chain's
   confirmation depth in a canonical block, the payout is confirmed (status 1) or its nonce is
   given up (reverted). If none is mined, the latest transaction is broadcast again, or replaced
   with higher fees and the same nonce once it is older than `payout_replace_after_s`. If the
   nonce was used at the confirmation depth by some other transaction, the payout takes a new one.
2. Suppliers whose available earnings reach the threshold get a new payout, if the treasury's
   token balance covers it.

Why this pays once: a transaction is signed and stored in the database before it is broadcast.
Every transaction of one payout uses the same nonce until that nonce is used up at the
confirmation depth, by a transaction of ours that reverted or by another one, so at most one of
them can transfer tokens. A crash after broadcasting can only lead to the stored transaction
being broadcast again. The treasury key may sign other transactions, because `allocate_nonce`
skips nonces that the node already counts as used. One that takes a nonce Tokenport assigned
only delays that payout until it is confirmed, and then the payout takes a new nonce.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from eth_account import Account
from eth_account.signers.local import LocalAccount
from sqlalchemy import select
from web3 import Web3
from web3.exceptions import ContractLogicError, Web3RPCError

from chain.rpc import read_block_hash, read_head_block, read_receipt, read_safe_block, to_hex
from marketplace import payouts
from marketplace.db import Database
from marketplace.models import Payout, PayoutAttempt, utcnow
from marketplace.settings import ChainSettings, Settings, TokenSettings

logger = logging.getLogger(__name__)

# transfer(address,uint256) and balanceOf(address). transfer declares no outputs, so tokens
# whose transfer returns nothing (USDT) are called the same way as those that return a bool.
ERC20_PAYOUT_ABI = [
    {
        "name": "transfer",
        "type": "function",
        "stateMutability": "nonpayable",
        "inputs": [{"name": "to", "type": "address"}, {"name": "value", "type": "uint256"}],
        "outputs": [],
    },
    {
        "name": "balanceOf",
        "type": "function",
        "stateMutability": "view",
        "inputs": [{"name": "account", "type": "address"}],
        "outputs": [{"name": "", "type": "uint256"}],
    },
]

# The gas estimate is raised by this share, because the state may change before the transaction is mined.
GAS_ESTIMATE_MARGIN_PCT = 25

# Parts of the errors that geth and anvil return for a transaction they already have, or whose
# nonce is already used. Such a rejection means that sending it again changed nothing.
_ALREADY_SENT_PHRASES = ("already known", "already imported", "known transaction", "nonce too low")


class PayoutConfigError(Exception):
    """Payouts cannot run with the given settings."""


class _TreasuryTooLow(Exception):
    def __init__(self, amount_units: int) -> None:
        super().__init__(f"treasury cannot cover {amount_units} units")
        self.amount_units = amount_units


def treasury_signer(settings: Settings, chain: ChainSettings) -> LocalAccount:
    """Return the key that signs payouts on `chain`: the treasury_private_key setting, or in
    development mode the development treasury key. The key must belong to the chain's treasury."""
    if settings.treasury_private_key is not None:
        signer = Account.from_key(settings.treasury_private_key.get_secret_value())
    elif settings.mode == "development":
        from chain.devchain import DEV_TREASURY

        signer = DEV_TREASURY.local_account()
    else:
        raise PayoutConfigError("payouts need TOKENPORT_TREASURY_PRIVATE_KEY in production mode")
    if signer.address != chain.treasury_address:
        raise PayoutConfigError(
            f"the treasury key signs for {signer.address}, but chain {chain.chain_id} has treasury {chain.treasury_address}"
        )
    return signer


@dataclass
class PayoutRunResult:
    opened: int = 0
    signed: int = 0
    broadcast: int = 0
    replaced: int = 0
    confirmed: int = 0
    reverted: int = 0
    failed: int = 0
    waiting: int = 0
    skipped_for_balance: int = 0


class PayoutSender:
    """Pays suppliers on one chain from the treasury.

    `gas_limit` fixes the gas of every new transaction instead of estimating it. Tests use it
    to make a transaction run out of gas and revert.
    """

    def __init__(
        self,
        db: Database,
        settings: Settings,
        chain: ChainSettings,
        w3: Web3,
        signer: LocalAccount,
        *,
        gas_limit: int | None = None,
    ) -> None:
        token = chain.payout_token()
        if token is None:
            raise PayoutConfigError(f"chain {chain.chain_id} lists no token to pay out in")
        assert signer.address == chain.treasury_address, "the signer must be the chain's treasury"
        self.db = db
        self.settings = settings
        self.chain = chain
        self.w3 = w3
        self.signer = signer
        self.token: TokenSettings = token
        self.contract = w3.eth.contract(address=token.address, abi=ERC20_PAYOUT_ABI)
        self.gas_limit = gas_limit

    def run_once(self) -> PayoutRunResult:
        result = PayoutRunResult()
        head = read_head_block(self.w3)
        safe = min(read_safe_block(self.w3, self.chain, head), head)

        with self.db.session() as session:
            open_ids = payouts.open_payout_ids(session, self.chain.chain_id)
        for payout_id in open_ids:
            self._advance(payout_id, safe, result)

        with self.db.session() as session:
            supplier_ids = payouts.payable_supplier_ids(
                session, self.settings.payout_threshold_nano_usd, self.settings.payout_failure_cooldown_s
            )
        for supplier_id in supplier_ids:
            payout_id = self._open(supplier_id, result)
            if payout_id is not None:
                self._advance(payout_id, safe, result)
        return result

    # --- opening ------------------------------------------------------------------------

    def _open(self, supplier_id: int, result: PayoutRunResult) -> int | None:
        treasury_units = self.contract.functions.balanceOf(self.chain.treasury_address).call()
        try:
            with self.db.transaction() as session:
                committed_units = payouts.open_payout_units(session, self.chain.chain_id, self.token.address)
                payout = payouts.open_payout(
                    session, supplier_id, self.chain.chain_id, self.token, self.settings.payout_threshold_nano_usd
                )
                if payout is None:
                    return None
                if committed_units + int(payout.amount_units) > treasury_units:
                    # Raising rolls the transaction back, which undoes the reservation too.
                    raise _TreasuryTooLow(int(payout.amount_units))
                payout_id = payout.id
        except _TreasuryTooLow as exc:
            logger.error(
                "treasury %s has %d units of %s, fewer than a payout of %d units to supplier %d needs; "
                "the payout waits until the treasury is funded",
                self.chain.treasury_address, treasury_units, self.token.address, exc.amount_units, supplier_id,
            )
            result.skipped_for_balance += 1
            return None
        result.opened += 1
        return payout_id

    # --- advancing ----------------------------------------------------------------------

    def _advance(self, payout_id: int, safe: int, result: PayoutRunResult) -> None:
        with self.db.session() as session:
            payout = session.get(Payout, payout_id)
            assert payout is not None
            attempts = list(
                session.scalars(
                    select(PayoutAttempt).where(PayoutAttempt.payout_id == payout_id).order_by(PayoutAttempt.id)
                )
            )
        if payout.status != "open":
            return

        for attempt in reversed([attempt for attempt in attempts if attempt.status == "signed"]):
            receipt = read_receipt(self.w3, attempt.tx_hash)
            if receipt is None:
                continue
            block_number = int(receipt["blockNumber"])
            if block_number > safe or read_block_hash(self.w3, block_number) != to_hex(receipt["blockHash"]):
                result.waiting += 1
                return
            if receipt["status"] == 1:
                self._check_transfer_log(payout, receipt)
                with self.db.transaction() as session:
                    payouts.confirm_payout(session, attempt.id, block_number, to_hex(receipt["blockHash"]))
                result.confirmed += 1
                return
            with self.db.transaction() as session:
                payout = payouts.record_reverted(session, attempt.id)
                if payout.failed_attempts >= self.settings.payout_max_attempts:
                    payouts.fail_payout(session, payout_id, f"{payout.failed_attempts} transactions reverted, the last {attempt.tx_hash}")
                    result.failed += 1
            result.reverted += 1
            if payout.status != "open":
                return
            self._sign_and_send(payout_id, None, result)
            return

        current = [attempt for attempt in attempts if attempt.status == "signed" and attempt.nonce == payout.nonce]
        if not current:
            self._sign_and_send(payout_id, None, result)
            return
        latest = current[-1]

        # If the treasury's nonce at the confirmation depth is past ours and none of our
        # transactions is mined, another transaction of the treasury used the nonce.
        confirmed_nonce = self.w3.eth.get_transaction_count(self.chain.treasury_address, max(safe, 0))
        if confirmed_nonce > latest.nonce:
            with self.db.transaction() as session:
                payouts.release_nonce(session, payout_id, f"nonce {latest.nonce} was used by another transaction")
            self._sign_and_send(payout_id, None, result)
            return

        sent_at = latest.broadcast_at or latest.created_at
        age_s = (utcnow() - sent_at).total_seconds()
        if latest.broadcast_at is not None and age_s >= self.settings.payout_replace_after_s:
            self._sign_and_send(payout_id, latest, result)
        else:
            self._broadcast(latest, result)

    def _check_transfer_log(self, payout: Payout, receipt: Any) -> None:
        expected_topics = [
            Web3.keccak(text="Transfer(address,address,uint256)").to_0x_hex(),
            "0x" + "00" * 12 + self.chain.treasury_address[2:].lower(),
            "0x" + "00" * 12 + payout.to_address[2:].lower(),
        ]
        for log in receipt["logs"]:
            same = (
                Web3.to_checksum_address(log["address"]) == payout.token_address
                and [to_hex(topic) for topic in log["topics"]] == expected_topics
                and int.from_bytes(bytes(log["data"]), "big") == int(payout.amount_units)
            )
            if same:
                return
        # NOTE: the payout is still recorded as paid, because the transaction succeeded. The
        # reconciler reports the mismatch for an operator to resolve.
        logger.error(
            "payout transaction %s succeeded without a Transfer of %s units to %s",
            to_hex(receipt["transactionHash"]), payout.amount_units, payout.to_address,
        )

    # --- signing and broadcasting -------------------------------------------------------

    def _fees(self, replaced: PayoutAttempt | None) -> tuple[int, int]:
        base_fee = int(self.w3.eth.get_block("latest")["baseFeePerGas"])
        priority_fee = int(self.w3.eth.max_priority_fee)
        max_fee = 2 * base_fee + priority_fee
        if replaced is not None:
            bump = 100 + self.settings.payout_fee_bump_pct
            priority_fee = max(priority_fee, -(-int(replaced.max_priority_fee_per_gas_wei) * bump // 100))
            max_fee = max(max_fee, -(-int(replaced.max_fee_per_gas_wei) * bump // 100), priority_fee)
        return max_fee, priority_fee

    def _sign_and_send(self, payout_id: int, replaced: PayoutAttempt | None, result: PayoutRunResult) -> None:
        """Sign a new transaction for the payout (a replacement of `replaced`, or with a new nonce), store it, then broadcast it."""
        with self.db.session() as session:
            payout = session.get(Payout, payout_id)
            assert payout is not None
        data = self.contract.encode_abi("transfer", args=[payout.to_address, int(payout.amount_units)])
        try:
            gas = self.gas_limit or self._estimate_gas(data)
        except (ContractLogicError, Web3RPCError) as exc:
            logger.error("payout %d cannot be sent now, because its transfer would revert: %s", payout_id, exc)
            return
        max_fee, priority_fee = self._fees(replaced)
        pending_nonce = self.w3.eth.get_transaction_count(self.chain.treasury_address, "pending")

        with self.db.transaction() as session:
            # The row lock makes a concurrent run wait here. It then finds the nonce that this
            # run gave the payout and stops, so one payout never gets two nonces.
            payout = session.get(Payout, payout_id, with_for_update=True)
            assert payout is not None
            if payout.status != "open":
                return
            if replaced is None:
                if payout.nonce is not None:
                    return
                nonce = payouts.allocate_nonce(session, self.chain.chain_id, self.chain.treasury_address, pending_nonce)
            else:
                if payout.nonce != replaced.nonce:
                    return
                nonce = replaced.nonce
            signed = self.signer.sign_transaction(
                {
                    "type": 2,
                    "chainId": self.chain.chain_id,
                    "nonce": nonce,
                    "to": self.token.address,
                    "value": 0,
                    "data": data,
                    "gas": gas,
                    "maxFeePerGas": max_fee,
                    "maxPriorityFeePerGas": priority_fee,
                }
            )
            attempt = payouts.record_attempt(
                session,
                payout_id,
                nonce=nonce,
                tx_hash=to_hex(signed.hash),
                raw_transaction=to_hex(signed.raw_transaction),
                max_fee_per_gas_wei=max_fee,
                max_priority_fee_per_gas_wei=priority_fee,
            )
        result.signed += 1
        result.replaced += replaced is not None
        logger.info(
            "payout transaction signed: payout=%d tx=%s nonce=%d max_fee_per_gas_wei=%d replaces=%s",
            payout_id, attempt.tx_hash, nonce, max_fee, replaced.tx_hash if replaced is not None else None,
        )
        self._broadcast(attempt, result)

    def _estimate_gas(self, data: str) -> int:
        estimate = self.w3.eth.estimate_gas({"from": self.chain.treasury_address, "to": self.token.address, "data": data})
        return estimate + estimate * GAS_ESTIMATE_MARGIN_PCT // 100

    def _broadcast(self, attempt: PayoutAttempt, result: PayoutRunResult) -> None:
        """Send a stored transaction. Sending it again is harmless: the node rejects it as known or as using a spent nonce."""
        try:
            self.w3.eth.send_raw_transaction(attempt.raw_transaction)
        except Web3RPCError as exc:
            message = str(exc).lower()
            if any(phrase in message for phrase in _ALREADY_SENT_PHRASES):
                logger.info("payout transaction %s is already known to the node: %s", attempt.tx_hash, exc)
            else:
                logger.error("payout transaction %s was rejected by the node; the next run retries: %s", attempt.tx_hash, exc)
            return
        with self.db.transaction() as session:
            payouts.mark_broadcast(session, attempt.id)
        result.broadcast += 1
