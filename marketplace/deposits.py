"""Deposits: the one place where a confirmed on-chain transfer becomes a ledger credit.

The watcher in `chain/` reads logs and hands them here; it never writes the ledger itself.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from marketplace import ledger
from marketplace.accounts import wallet_owner
from marketplace.models import Deposit

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DepositLog:
    """An ERC-20 Transfer log into the treasury, as read from the chain."""

    chain_id: int
    tx_hash: str
    log_index: int
    block_number: int
    block_hash: str
    token_address: str
    token_decimals: int
    from_address: str
    to_address: str
    amount_units: int


def units_to_nano_usd(amount_units: int, decimals: int) -> int:
    """Convert a token amount to nano-USD at 1 token = 1 USD.

    Tokens with at most 9 decimals convert exactly. With more decimals, the fraction below one
    nano-USD is rounded up, in the buyer's favour; the raw amount stays on the deposit row.
    """
    assert amount_units >= 0, f"negative token amount {amount_units}"
    if decimals <= 9:
        return amount_units * 10 ** (9 - decimals)
    divisor = 10 ** (decimals - 9)
    return -(-amount_units // divisor)


def deposit_transfer_id(chain_id: int, tx_hash: str, log_index: int) -> str:
    return f"deposit:{chain_id}:{tx_hash.lower()}:{log_index}"


def _find(session: Session, log: DepositLog) -> Deposit | None:
    return session.scalar(
        select(Deposit).where(
            Deposit.chain_id == log.chain_id,
            Deposit.tx_hash == log.tx_hash.lower(),
            Deposit.log_index == log.log_index,
        )
    )


def _upsert(session: Session, log: DepositLog) -> Deposit:
    deposit = _find(session, log)
    if deposit is None:
        deposit = Deposit(
            chain_id=log.chain_id,
            tx_hash=log.tx_hash.lower(),
            log_index=log.log_index,
            amount_units=str(log.amount_units),
            amount_nano_usd=units_to_nano_usd(log.amount_units, log.token_decimals),
            token_address=log.token_address,
            from_address=log.from_address,
            to_address=log.to_address,
            account_id=wallet_owner(session, log.from_address),
            block_number=log.block_number,
            block_hash=log.block_hash,
            status="pending",
        )
        session.add(deposit)
    elif deposit.status == "pending":
        deposit.block_number = log.block_number
        deposit.block_hash = log.block_hash
    return deposit


def record_pending(session: Session, log: DepositLog) -> Deposit:
    """Record a deposit seen in a block that does not yet have enough confirmations."""
    deposit = _upsert(session, log)
    session.flush()
    return deposit


def credit_deposit(session: Session, log: DepositLog) -> Deposit:
    """Credit a confirmed deposit to the buyer who owns the sending wallet, exactly once.

    A transfer from a wallet that no account has proved is recorded as unattributed and
    credits nothing.
    """
    deposit = _upsert(session, log)
    if deposit.status in ("credited", "unattributed"):
        return deposit
    if deposit.account_id is None:
        deposit.account_id = wallet_owner(session, log.from_address)
    deposit.block_number = log.block_number
    deposit.block_hash = log.block_hash

    if deposit.account_id is None:
        deposit.status = "unattributed"
        session.flush()
        logger.warning(
            "deposit from an unbound wallet was not credited",
            extra={"chain_id": log.chain_id, "tx_hash": log.tx_hash, "from_address": log.from_address},
        )
        return deposit

    source = ledger.get_or_create_account(
        session, ledger.chain_asset_account_name(log.chain_id, log.token_address), "chain_asset"
    )
    buyer = ledger.get_buyer_account(session, deposit.account_id)
    transfer_id = deposit_transfer_id(log.chain_id, log.tx_hash, log.log_index)
    ledger.transfer(session, transfer_id, source, buyer, deposit.amount_nano_usd, "deposit", reference=transfer_id)
    deposit.status = "credited"
    deposit.transfer_id = transfer_id
    session.flush()
    logger.info(
        "deposit credited",
        extra={"chain_id": log.chain_id, "tx_hash": log.tx_hash, "account_id": deposit.account_id, "amount_nano_usd": deposit.amount_nano_usd},
    )
    return deposit


def orphan_missing_pending(
    session: Session, chain_id: int, from_block: int, to_block: int, seen: set[tuple[str, int]]
) -> int:
    """Mark pending deposits in a confirmed block range that the canonical chain no longer has."""
    pending = session.scalars(
        select(Deposit).where(
            Deposit.chain_id == chain_id,
            Deposit.status == "pending",
            Deposit.block_number >= from_block,
            Deposit.block_number <= to_block,
        )
    )
    orphaned = 0
    for deposit in pending:
        if (deposit.tx_hash, deposit.log_index) not in seen:
            deposit.status = "orphaned"
            orphaned += 1
            logger.warning("pending deposit left the canonical chain", extra={"chain_id": chain_id, "tx_hash": deposit.tx_hash})
    session.flush()
    return orphaned


def deposit_view(deposit: Deposit, head_block: int | None, confirmations_required: int) -> dict:
    confirmations = 0
    if head_block is not None and head_block >= deposit.block_number:
        confirmations = head_block - deposit.block_number + 1
    return {
        "chain_id": deposit.chain_id,
        "tx_hash": deposit.tx_hash,
        "log_index": deposit.log_index,
        "block_number": deposit.block_number,
        "token_address": deposit.token_address,
        "from_address": deposit.from_address,
        "amount_units": deposit.amount_units,
        "amount_nano_usd": deposit.amount_nano_usd,
        "status": deposit.status,
        "confirmations": min(confirmations, confirmations_required) if deposit.status == "pending" else None,
        "confirmations_required": confirmations_required,
    }
