"""Deposits: the one place where a confirmed on-chain transfer becomes a ledger credit, or stops being one.

The watcher in `chain/` reads logs and hands them here; it never writes the ledger itself. A
deposit is one log, identified by (chain id, transaction hash, log index), and moves through
these statuses:

- pending: seen in a block that is not yet deep enough, with that block's hash.
- credited: the block reached the confirmation depth and the receipt confirmed the log.
  One ledger transfer `deposit:{chain}:{tx}:{log}` moved the amount to the buyer.
- unattributed: confirmed, but the sender is no bound wallet (or the vault reference names
  no account), so nothing was credited.
- orphaned: its block left the canonical chain before the deposit was credited.
- reversed: credited, then its block left the canonical chain. A reversing transfer took the
  amount back from the buyer, as far as the buyer's available balance allowed, and the rest is
  owed by the buyer on a receivable account that later deposits pay off first.
- rejected: the receipt does not confirm the log, or the amount does not fit the ledger.

An orphaned or reversed deposit whose transaction is included again becomes pending again. Its
next credit gets a transfer id with the reversal count appended, so the credits and reversals
of one log always net to at most one credit.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from marketplace import ledger
from marketplace.errors import InvalidRequest
from marketplace.models import Account, ChainCursor, Deposit, LedgerAccount, Wallet, utcnow
from marketplace.settings import Settings

logger = logging.getLogger(__name__)

# The largest amount a BigInteger column holds: about 9.2 billion USD in nano-USD.
MAX_AMOUNT_NANO_USD = 2**63 - 1
# The largest id of the accounts table's Integer column.
MAX_ACCOUNT_ID = 2**31 - 1

_DECIMAL_AMOUNT = re.compile(r"(\d{1,40})(?:\.(\d{1,40}))?")

# Statuses whose log was found in the canonical chain at the confirmation depth.
SETTLED_STATUSES = ("credited", "unattributed")


@dataclass(frozen=True)
class DepositLog:
    """A deposit log into the treasury or the vault, as read from the chain.

    `source` is "transfer" for an ERC-20 Transfer to the treasury, whose sender's bound wallet
    names the account, or "vault" for a TopUpVault Deposited event, whose `account_ref` does.
    """

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
    source: str = "transfer"
    account_ref: int | None = None

    @property
    def key(self) -> tuple[str, int]:
        return (self.tx_hash.lower(), self.log_index)


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


def deposit_transfer_id(chain_id: int, tx_hash: str, log_index: int, reversal_count: int = 0) -> str:
    """Return the id of the ledger transfer that credits a deposit.

    The first credit of a log has no suffix. A credit after `reversal_count` reversals of the
    same log, which was included again, has the count appended.
    """
    transfer_id = f"deposit:{chain_id}:{tx_hash.lower()}:{log_index}"
    return transfer_id if reversal_count == 0 else f"{transfer_id}:{reversal_count}"


def deposit_reversal_transfer_id(chain_id: int, tx_hash: str, log_index: int, reversal_count: int = 0) -> str:
    return "deposit_reversal:" + deposit_transfer_id(chain_id, tx_hash, log_index, reversal_count).removeprefix("deposit:")


def deposit_shortfall_transfer_id(chain_id: int, tx_hash: str, log_index: int, reversal_count: int = 0) -> str:
    return "deposit_shortfall:" + deposit_transfer_id(chain_id, tx_hash, log_index, reversal_count).removeprefix("deposit:")


def receivable_account_name(account_id: int) -> str:
    """Return the name of the ledger account that records what a buyer owes after a reversal their balance could not cover."""
    return f"receivable:{account_id}"


def _find(session: Session, chain_id: int, tx_hash: str, log_index: int) -> Deposit | None:
    return session.scalar(
        select(Deposit).where(
            Deposit.chain_id == chain_id,
            Deposit.tx_hash == tx_hash.lower(),
            Deposit.log_index == log_index,
        )
    )


def find_deposits(session: Session, chain_id: int, keys: list[tuple[str, int]]) -> dict[tuple[str, int], Deposit]:
    """Return the deposit rows of the given (transaction hash, log index) keys on one chain."""
    if not keys:
        return {}
    tx_hashes = sorted({tx_hash.lower() for tx_hash, _ in keys})
    rows = session.scalars(select(Deposit).where(Deposit.chain_id == chain_id, Deposit.tx_hash.in_(tx_hashes)))
    requested = {(tx_hash.lower(), log_index) for tx_hash, log_index in keys}
    return {(row.tx_hash, row.log_index): row for row in rows if (row.tx_hash, row.log_index) in requested}


def _attributed_account(session: Session, log: DepositLog) -> int | None:
    if log.source == "vault":
        # Anyone can send any 32-byte reference, and one outside the id column's range names no account.
        if log.account_ref is None or not 1 <= log.account_ref <= MAX_ACCOUNT_ID:
            return None
        return log.account_ref if session.get(Account, log.account_ref) is not None else None
    # The same query as marketplace.accounts.wallet_owner, without importing the sign-in
    # module, whose SIWE grammar takes about a second to load in every watcher process.
    return session.scalar(select(Wallet.account_id).where(Wallet.address == log.from_address))


def _move_to_block(deposit: Deposit, log: DepositLog) -> None:
    deposit.block_number = log.block_number
    deposit.block_hash = log.block_hash


def _upsert(session: Session, log: DepositLog) -> Deposit:
    """Create the row of a log seen in the canonical chain, or bring an existing one up to date.

    A pending row follows its log to a new block. An orphaned or reversed row whose log is back
    in the canonical chain becomes pending again. Other rows are left to the caller.
    """
    deposit = _find(session, log.chain_id, log.tx_hash, log.log_index)
    if deposit is None:
        amount_nano_usd = units_to_nano_usd(log.amount_units, log.token_decimals)
        too_large = amount_nano_usd > MAX_AMOUNT_NANO_USD
        deposit = Deposit(
            chain_id=log.chain_id,
            tx_hash=log.tx_hash.lower(),
            log_index=log.log_index,
            amount_units=str(log.amount_units),
            amount_nano_usd=0 if too_large else amount_nano_usd,
            token_address=log.token_address,
            from_address=log.from_address,
            to_address=log.to_address,
            account_id=_attributed_account(session, log),
            block_number=log.block_number,
            block_hash=log.block_hash,
            status="rejected" if too_large else "pending",
            status_reason=f"amount of {log.amount_units} units does not fit the ledger" if too_large else None,
            source=log.source,
            account_ref=None if log.account_ref is None else "0x" + log.account_ref.to_bytes(32, "big").hex(),
            reversal_count=0,
            shortfall_nano_usd=0,
        )
        session.add(deposit)
        return deposit

    if deposit.status == "pending":
        _move_to_block(deposit, log)
    elif deposit.status in ("orphaned", "reversed"):
        logger.info(
            "deposit is back in the canonical chain: chain=%d tx=%s log=%d block=%d",
            log.chain_id, log.tx_hash, log.log_index, log.block_number,
        )
        deposit.status = "pending"
        deposit.status_reason = None
        _move_to_block(deposit, log)
    return deposit


def record_pending(session: Session, log: DepositLog) -> Deposit:
    """Record a deposit seen in a block that does not yet have enough confirmations."""
    deposit = _upsert(session, log)
    session.flush()
    return deposit


def credit_deposit(session: Session, log: DepositLog) -> Deposit:
    """Credit a confirmed deposit to the account it names, exactly once.

    The caller has checked the log against its transaction receipt. A transfer from a wallet
    that no account has proved, or a vault deposit for an unknown account, is recorded as
    unattributed and credits nothing. A credited deposit found in another block is moved there.
    """
    deposit = _upsert(session, log)
    if deposit.status in SETTLED_STATUSES:
        if deposit.block_hash != log.block_hash:
            logger.warning(
                "settled deposit moved to block %d: chain=%d tx=%s log=%d",
                log.block_number, log.chain_id, log.tx_hash, log.log_index,
            )
            _move_to_block(deposit, log)
            session.flush()
        return deposit

    _move_to_block(deposit, log)
    if units_to_nano_usd(log.amount_units, log.token_decimals) > MAX_AMOUNT_NANO_USD:
        return _reject(session, deposit, f"amount of {log.amount_units} units does not fit the ledger")
    if deposit.account_id is None:
        deposit.account_id = _attributed_account(session, log)
    if deposit.account_id is None:
        deposit.status = "unattributed"
        session.flush()
        logger.warning(
            "deposit was not credited because it names no account: chain=%d tx=%s log=%d from=%s source=%s",
            log.chain_id, log.tx_hash, log.log_index, log.from_address, log.source,
        )
        return deposit

    source = ledger.get_or_create_account(
        session, ledger.chain_asset_account_name(log.chain_id, log.token_address), "chain_asset"
    )
    buyer = ledger.get_buyer_account(session, deposit.account_id)
    transfer_id = deposit_transfer_id(log.chain_id, log.tx_hash, log.log_index, deposit.reversal_count)
    ledger.transfer(session, transfer_id, source, buyer, deposit.amount_nano_usd, "deposit", reference=transfer_id)
    deposit.status = "credited"
    deposit.status_reason = None
    deposit.transfer_id = transfer_id
    deposit.credited_at = utcnow()
    session.flush()
    logger.info(
        "deposit credited: chain=%d tx=%s log=%d account=%d amount_nano_usd=%d",
        log.chain_id, log.tx_hash, log.log_index, deposit.account_id, deposit.amount_nano_usd,
    )

    _recover_receivable(session, deposit.account_id, buyer, transfer_id)
    return deposit


def reject_deposit(session: Session, log: DepositLog, reason: str) -> Deposit:
    """Record a log that must not be credited, for example one whose transaction reverted."""
    deposit = _upsert(session, log)
    if deposit.status in SETTLED_STATUSES:
        # A settled deposit is only taken back by a reversal, which needs proof that its log left the chain.
        return deposit
    return _reject(session, deposit, reason)


def _reject(session: Session, deposit: Deposit, reason: str) -> Deposit:
    deposit.status = "rejected"
    deposit.status_reason = reason[:300]
    session.flush()
    logger.error(
        "deposit rejected: chain=%d tx=%s log=%d reason=%s", deposit.chain_id, deposit.tx_hash, deposit.log_index, reason
    )
    return deposit


def orphan_deposit(session: Session, deposit_id: int, reason: str) -> Deposit:
    """Mark a deposit that was never credited and whose log left the canonical chain."""
    deposit = session.get(Deposit, deposit_id)
    assert deposit is not None, f"deposit {deposit_id} does not exist"
    if deposit.status in ("pending", "unattributed", "rejected"):
        deposit.status = "orphaned"
        deposit.status_reason = reason[:300]
        session.flush()
        logger.warning(
            "deposit left the canonical chain before it was credited: chain=%d tx=%s log=%d",
            deposit.chain_id, deposit.tx_hash, deposit.log_index,
        )
    return deposit


def move_deposit(session: Session, deposit_id: int, block_number: int, block_hash: str) -> Deposit:
    """Record that a deposit's transaction is now in another block, with the same log."""
    deposit = session.get(Deposit, deposit_id)
    assert deposit is not None, f"deposit {deposit_id} does not exist"
    if deposit.block_hash != block_hash:
        logger.warning(
            "deposit moved from block %d to block %d: chain=%d tx=%s log=%d status=%s",
            deposit.block_number, block_number, deposit.chain_id, deposit.tx_hash, deposit.log_index, deposit.status,
        )
        deposit.block_number = block_number
        deposit.block_hash = block_hash
        session.flush()
    return deposit


def _lock_ledger_account(session: Session, ledger_account_id: int) -> None:
    # On PostgreSQL this keeps a concurrent hold from spending the balance between the read
    # below and the reversal. SQLite writers are already serialized by BEGIN IMMEDIATE.
    session.execute(select(LedgerAccount.id).where(LedgerAccount.id == ledger_account_id).with_for_update())


def reverse_deposit(session: Session, deposit_id: int, reason: str) -> Deposit:
    """Take back a credited deposit whose log left the canonical chain.

    The reversal moves the credited amount from the buyer back to the chain asset account,
    but never more than the buyer's available balance, because a buyer balance must not go
    below zero. The rest, the shortfall, is debited to the buyer's receivable account, which
    later deposits pay off before they add to the balance. Both transfers are new ones: the
    credit itself is never changed.
    """
    deposit = session.get(Deposit, deposit_id)
    assert deposit is not None, f"deposit {deposit_id} does not exist"
    if deposit.status != "credited":
        if deposit.status in ("pending", "unattributed", "rejected"):
            return orphan_deposit(session, deposit_id, reason)
        return deposit
    assert deposit.account_id is not None, f"credited deposit {deposit_id} has no account"

    source = ledger.get_or_create_account(
        session, ledger.chain_asset_account_name(deposit.chain_id, deposit.token_address), "chain_asset"
    )
    buyer = ledger.get_buyer_account(session, deposit.account_id)
    _lock_ledger_account(session, buyer.id)
    available_nano_usd = max(0, ledger.read_balance(session, buyer.id).available_nano_usd)
    recovered_nano_usd = min(deposit.amount_nano_usd, available_nano_usd)
    shortfall_nano_usd = deposit.amount_nano_usd - recovered_nano_usd

    key = (deposit.chain_id, deposit.tx_hash, deposit.log_index, deposit.reversal_count)
    credit_id = deposit_transfer_id(*key)
    ledger.transfer(
        session, deposit_reversal_transfer_id(*key), buyer, source, recovered_nano_usd, "deposit_reversal", reference=credit_id
    )
    if shortfall_nano_usd > 0:
        receivable = ledger.get_or_create_account(
            session, receivable_account_name(deposit.account_id), "buyer_receivable", account_id=deposit.account_id
        )
        ledger.transfer(
            session, deposit_shortfall_transfer_id(*key), receivable, source, shortfall_nano_usd, "deposit_shortfall", reference=credit_id
        )

    deposit.status = "reversed"
    deposit.status_reason = reason[:300]
    deposit.reversal_count += 1
    deposit.shortfall_nano_usd = shortfall_nano_usd
    deposit.reversed_at = utcnow()
    session.flush()
    logger.error(
        "credited deposit reversed because its block left the canonical chain: chain=%d tx=%s log=%d "
        "account=%d amount_nano_usd=%d recovered_nano_usd=%d shortfall_nano_usd=%d reason=%s",
        deposit.chain_id, deposit.tx_hash, deposit.log_index, deposit.account_id,
        deposit.amount_nano_usd, recovered_nano_usd, shortfall_nano_usd, reason,
    )
    return deposit


def _recover_receivable(session: Session, account_id: int, buyer: LedgerAccount, credit_id: str) -> None:
    receivable = session.scalar(select(LedgerAccount).where(LedgerAccount.name == receivable_account_name(account_id)))
    if receivable is None:
        return
    # The receivable is debit-normal, so what the buyer owes is the negative of its balance.
    owed_nano_usd = -ledger.read_balance(session, receivable.id).posted_nano_usd
    if owed_nano_usd <= 0:
        return

    _lock_ledger_account(session, buyer.id)
    available_nano_usd = max(0, ledger.read_balance(session, buyer.id).available_nano_usd)
    recovered_nano_usd = min(owed_nano_usd, available_nano_usd)
    if recovered_nano_usd == 0:
        return
    ledger.transfer(
        session, f"receivable_recovery:{credit_id}", buyer, receivable, recovered_nano_usd, "receivable_recovery", reference=credit_id
    )
    logger.warning(
        "deposit paid off a reversal shortfall: account=%d recovered_nano_usd=%d still_owed_nano_usd=%d",
        account_id, recovered_nano_usd, owed_nano_usd - recovered_nano_usd,
    )


# --- the API's deposit instructions and status ---------------------------------------------


def eip681_transfer_uri(chain_id: int, token_address: str, recipient: str, amount_units: int | None = None) -> str:
    """Return an EIP-681 URI with which a wallet calls transfer(recipient, amount) on the token."""
    uri = f"ethereum:{token_address}@{chain_id}/transfer?address={recipient}"
    if amount_units is not None:
        uri += f"&uint256={amount_units}"
    return uri


def eip681_call_uri(chain_id: int, contract_address: str, function: str, arguments: list[tuple[str, object]]) -> str:
    """Return an EIP-681 URI for a contract call, with arguments given as (ABI type, value) in order."""
    query = "&".join(f"{abi_type}={value}" for abi_type, value in arguments)
    return f"ethereum:{contract_address}@{chain_id}/{function}?{query}"


def parse_amount_units(amount: str, decimals: int) -> int:
    """Convert a decimal token amount such as "5" or "12.25" to base units, exactly.

    Raises InvalidRequest naming the `amount` field when the text is no positive decimal
    number or has more fractional digits than the token.
    """
    match = _DECIMAL_AMOUNT.fullmatch(amount.strip())
    if match is None:
        raise InvalidRequest(f"amount {amount!r} is not a decimal number such as 5 or 12.25", param="amount")
    whole, fraction = match.group(1), match.group(2) or ""
    if len(fraction) > decimals:
        raise InvalidRequest(f"amount {amount!r} has more than the token's {decimals} decimals", param="amount")
    units = int(whole) * 10**decimals + (int(fraction.ljust(decimals, "0")) if fraction else 0)
    if units == 0:
        raise InvalidRequest(f"amount {amount!r} must be greater than zero", param="amount")
    return units


def deposit_instructions(session: Session, settings: Settings, account_id: int, amount: str | None = None) -> dict:
    """Return how an account can top up: a plain transfer from a bound wallet, or a vault deposit, per chain and token.

    With `amount` (a decimal string in whole tokens), every URI carries the amount in the
    token's base units.
    """
    wallets = list(session.scalars(select(Wallet.address).where(Wallet.account_id == account_id).order_by(Wallet.id)))
    account_ref = "0x" + account_id.to_bytes(32, "big").hex()
    transfer_options = []
    vault_options = []
    for chain in settings.chains:
        for token in chain.tokens:
            amount_units = parse_amount_units(amount, token.decimals) if amount is not None else None
            common = {
                "chain_id": chain.chain_id,
                "chain": chain.name,
                "token_symbol": token.symbol,
                "token_address": token.address,
                "token_decimals": token.decimals,
                "amount_units": None if amount_units is None else str(amount_units),
                "confirmations_required": chain.confirmations if chain.finality == "confirmations" else None,
                "finality": chain.finality,
            }
            transfer_options.append(
                {
                    **common,
                    "method": "transfer",
                    "treasury_address": chain.treasury_address,
                    "payment_uri": eip681_transfer_uri(chain.chain_id, token.address, chain.treasury_address, amount_units),
                }
            )
            if chain.vault_address is None:
                continue
            shown_units = amount_units if amount_units is not None else "<amount in base units>"
            vault_options.append(
                {
                    **common,
                    "method": "vault",
                    "vault_address": chain.vault_address,
                    "account_ref": account_ref,
                    "approve_uri": eip681_call_uri(
                        chain.chain_id, token.address, "approve", [("address", chain.vault_address), ("uint256", shown_units)]
                    ),
                    "deposit_uri": eip681_call_uri(
                        chain.chain_id,
                        chain.vault_address,
                        "deposit",
                        [("address", token.address), ("uint256", shown_units), ("bytes32", account_ref)],
                    ),
                }
            )
    return {
        "send_from": wallets,
        "rule": (
            "Either send the token from one of your signed-in wallets to the treasury (other senders are "
            "not credited), or approve the vault and call deposit(token, amount, account_ref) from any "
            "wallet. The vault credits the amount it received."
        ),
        "options": transfer_options + vault_options,
    }


def _chain_position(session: Session, settings: Settings, chain_id: int) -> tuple[int | None, int | None]:
    """Return (head block, confirmations required) of a chain, from the watcher's last poll."""
    cursor = session.get(ChainCursor, chain_id)
    head_block = cursor.head_block if cursor is not None else None
    try:
        chain = settings.chain(chain_id)
    except KeyError:
        return head_block, None
    return head_block, chain.confirmations if chain.finality == "confirmations" else None


def account_deposits(session: Session, settings: Settings, account_id: int, *, chain_id: int | None = None, tx_hash: str | None = None) -> list[dict]:
    """Return an account's deposits, optionally of one transaction, oldest first, with their status."""
    query = select(Deposit).where(Deposit.account_id == account_id)
    if chain_id is not None:
        query = query.where(Deposit.chain_id == chain_id)
    if tx_hash is not None:
        query = query.where(Deposit.tx_hash == tx_hash.lower())
    views = []
    for deposit in session.scalars(query.order_by(Deposit.chain_id, Deposit.block_number, Deposit.log_index)):
        head_block, required = _chain_position(session, settings, deposit.chain_id)
        views.append(deposit_view(deposit, head_block, required))
    return views


def deposit_view(deposit: Deposit, head_block: int | None, confirmations_required: int | None) -> dict:
    """Shape a deposit for the API. `confirmations_required` is None on chains that credit at the finalized block."""
    confirmations = 0
    if head_block is not None and head_block >= deposit.block_number:
        confirmations = head_block - deposit.block_number + 1
    if confirmations_required is not None:
        confirmations = min(confirmations, confirmations_required)
    return {
        "chain_id": deposit.chain_id,
        "tx_hash": deposit.tx_hash,
        "log_index": deposit.log_index,
        "block_number": deposit.block_number,
        "block_hash": deposit.block_hash,
        "source": deposit.source,
        "token_address": deposit.token_address,
        "from_address": deposit.from_address,
        "amount_units": deposit.amount_units,
        "amount_nano_usd": deposit.amount_nano_usd,
        "status": deposit.status,
        "status_reason": deposit.status_reason,
        "confirmations": confirmations if deposit.status == "pending" else None,
        "confirmations_required": confirmations_required,
        "transfer_id": deposit.transfer_id,
        "shortfall_nano_usd": deposit.shortfall_nano_usd,
    }
