"""Database tables. Amounts are integers in nano-USD (1 USD = 10**9 nano-USD) unless named otherwise."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from marketplace.db import Base


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Timestamp(TypeDecorator):
    """A timezone-aware UTC timestamp. SQLite drops the zone, so values are read back as UTC."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_result_value(self, value, dialect):  # type: ignore[no-untyped-def]
        if isinstance(value, dt.datetime) and value.tzinfo is None:
            value = value.replace(tzinfo=dt.UTC)
        return value


class Account(Base):
    """A person or company on the platform; the same account can buy and supply."""

    __tablename__ = "accounts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    created_at: Mapped[dt.datetime] = mapped_column(Timestamp(), default=utcnow)


class Wallet(Base):
    """A wallet address whose control an account proved by signing a sign-in message."""

    __tablename__ = "wallets"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"), index=True)
    # EIP-55 checksummed.
    address: Mapped[str] = mapped_column(String(42), unique=True)
    verified_at: Mapped[dt.datetime] = mapped_column(Timestamp(), default=utcnow)


class AuthNonce(Base):
    """A server nonce for wallet sign-in; each is accepted once, before it expires."""

    __tablename__ = "auth_nonces"

    nonce: Mapped[str] = mapped_column(String(64), primary_key=True)
    created_at: Mapped[dt.datetime] = mapped_column(Timestamp(), default=utcnow)
    expires_at: Mapped[dt.datetime] = mapped_column(Timestamp())
    used_at: Mapped[dt.datetime | None] = mapped_column(Timestamp(), nullable=True)


class SessionToken(Base):
    """A bearer token for account management, issued at sign-in and stored as a SHA-256 hash."""

    __tablename__ = "session_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[dt.datetime] = mapped_column(Timestamp(), default=utcnow)
    expires_at: Mapped[dt.datetime] = mapped_column(Timestamp())


class ApiKey(Base):
    """A key for the metering proxy. Only its SHA-256 hash and a display prefix are stored."""

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"), index=True)
    name: Mapped[str] = mapped_column(String(100))
    key_prefix: Mapped[str] = mapped_column(String(16))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[dt.datetime] = mapped_column(Timestamp(), default=utcnow)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(Timestamp(), nullable=True)
    spend_limit_nano_usd: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    # "day", "month" or "total".
    spend_limit_period: Mapped[str | None] = mapped_column(String(10), nullable=True)
    requests_per_minute: Mapped[int | None] = mapped_column(Integer, nullable=True)
    tokens_per_minute: Mapped[int | None] = mapped_column(Integer, nullable=True)
    allowed_models: Mapped[list[str] | None] = mapped_column(JSON, nullable=True)


class ApiKeySpend(Base):
    """What an API key spent and holds in one spend-limit period ("total", "2026-12" or "2026-12-04").

    The proxy reserves a call's hold here in the same transaction as the ledger hold, with a
    conditional UPDATE, so parallel calls cannot pass a limit together.
    """

    __tablename__ = "api_key_spend"
    __table_args__ = (
        CheckConstraint("reserved_nano_usd >= 0", name="reserved_nonnegative"),
        CheckConstraint("spent_nano_usd >= 0", name="spent_nonnegative"),
    )

    api_key_id: Mapped[int] = mapped_column(ForeignKey("api_keys.id"), primary_key=True)
    period: Mapped[str] = mapped_column(String(20), primary_key=True)
    reserved_nano_usd: Mapped[int] = mapped_column(BigInteger, default=0)
    spent_nano_usd: Mapped[int] = mapped_column(BigInteger, default=0)


class Supplier(Base):
    """An account's supplier profile, with the wallet its earnings are paid to."""

    __tablename__ = "suppliers"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"), unique=True)
    name: Mapped[str] = mapped_column(String(100))
    payout_address: Mapped[str] = mapped_column(String(42))
    created_at: Mapped[dt.datetime] = mapped_column(Timestamp(), default=utcnow)


class Listing(Base):
    """Capacity for one model offered by a supplier. Prices are micro-USD per million tokens."""

    __tablename__ = "listings"
    __table_args__ = (
        CheckConstraint("offer_input_micro_usd_per_mtok >= 0", name="offer_input_nonnegative"),
        CheckConstraint("offer_output_micro_usd_per_mtok >= 0", name="offer_output_nonnegative"),
        Index("ix_listings_model_status", "model", "status"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    supplier_id: Mapped[int] = mapped_column(ForeignKey("suppliers.id"), index=True)
    model: Mapped[str] = mapped_column(String(200))
    upstream_protocol: Mapped[str] = mapped_column(String(30), default="openai")
    upstream_base_url: Mapped[str] = mapped_column(String(500))
    upstream_model: Mapped[str] = mapped_column(String(200))
    # Fernet token of the supplier's upstream API key.
    upstream_credential_encrypted: Mapped[str] = mapped_column(Text)
    list_input_micro_usd_per_mtok: Mapped[int] = mapped_column(BigInteger)
    list_output_micro_usd_per_mtok: Mapped[int] = mapped_column(BigInteger)
    offer_input_micro_usd_per_mtok: Mapped[int] = mapped_column(BigInteger)
    offer_cached_input_micro_usd_per_mtok: Mapped[int] = mapped_column(BigInteger)
    offer_cache_write_micro_usd_per_mtok: Mapped[int] = mapped_column(BigInteger)
    offer_output_micro_usd_per_mtok: Mapped[int] = mapped_column(BigInteger)
    max_output_tokens: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # The supplier's own upstream limits, enforced across API processes; None means no limit.
    requests_per_minute: Mapped[int | None] = mapped_column(Integer, nullable=True)
    tokens_per_minute: Mapped[int | None] = mapped_column(Integer, nullable=True)
    tokens_per_day: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    region: Mapped[str | None] = mapped_column(String(40), nullable=True)
    # "active", "paused" (failing upstream, probed until it recovers) or "deleted".
    status: Mapped[str] = mapped_column(String(10), default="active")
    paused_reason: Mapped[str | None] = mapped_column(String(300), nullable=True)
    paused_at: Mapped[dt.datetime | None] = mapped_column(Timestamp(), nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(Timestamp(), default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(Timestamp(), default=utcnow, onupdate=utcnow)


class LedgerAccount(Base):
    """A ledger account with TigerBeetle-style posted and pending totals.

    The balance of a credit-normal account (a buyer, a supplier payable) is
    credits_posted - debits_posted. A buyer account is constrained so that
    debits_posted + debits_pending never exceed credits_posted.
    """

    __tablename__ = "ledger_accounts"
    __table_args__ = (
        CheckConstraint(
            "NOT debits_must_not_exceed_credits OR "
            "debits_posted_nano_usd + debits_pending_nano_usd <= credits_posted_nano_usd",
            name="constrained_balance_nonnegative",
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    # Unique name such as "buyer:12", "supplier:3" or "platform:revenue".
    name: Mapped[str] = mapped_column(String(120), unique=True)
    # buyer, supplier_payable, platform_revenue, usage_clearing or chain_asset.
    code: Mapped[str] = mapped_column(String(30))
    account_id: Mapped[int | None] = mapped_column(ForeignKey("accounts.id"), nullable=True, index=True)
    debits_must_not_exceed_credits: Mapped[bool] = mapped_column(Boolean, default=False)
    debits_pending_nano_usd: Mapped[int] = mapped_column(BigInteger, default=0)
    debits_posted_nano_usd: Mapped[int] = mapped_column(BigInteger, default=0)
    credits_pending_nano_usd: Mapped[int] = mapped_column(BigInteger, default=0)
    credits_posted_nano_usd: Mapped[int] = mapped_column(BigInteger, default=0)


class LedgerTransfer(Base):
    """An append-only movement between two ledger accounts. The id is the idempotency key.

    A pending transfer is a hold. It resolves exactly once, by a later transfer whose pending_id
    names it (unique): a post for at most the held amount, a void, or an expiry.
    """

    __tablename__ = "ledger_transfers"
    __table_args__ = (
        CheckConstraint("amount_nano_usd >= 0", name="amount_nonnegative"),
        Index("ix_ledger_transfers_pending_open", "is_pending", "expires_at"),
        Index("ix_ledger_transfers_created_at", "created_at"),
    )

    id: Mapped[str] = mapped_column(String(160), primary_key=True)
    debit_account_id: Mapped[int] = mapped_column(ForeignKey("ledger_accounts.id"), index=True)
    credit_account_id: Mapped[int] = mapped_column(ForeignKey("ledger_accounts.id"), index=True)
    amount_nano_usd: Mapped[int] = mapped_column(BigInteger)
    # deposit, hold, post, void, expire, usage_supplier, usage_fee, deposit_reversal, payout.
    code: Mapped[str] = mapped_column(String(30))
    is_pending: Mapped[bool] = mapped_column(Boolean, default=False)
    pending_id: Mapped[str | None] = mapped_column(
        ForeignKey("ledger_transfers.id"), unique=True, nullable=True
    )
    expires_at: Mapped[dt.datetime | None] = mapped_column(Timestamp(), nullable=True)
    reference: Mapped[str | None] = mapped_column(String(200), nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(Timestamp(), default=utcnow)


class Deposit(Base):
    """A stablecoin transfer into the treasury, seen on-chain; credited once it is confirmed."""

    __tablename__ = "deposits"
    __table_args__ = (UniqueConstraint("chain_id", "tx_hash", "log_index", name="uq_deposit_log"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    chain_id: Mapped[int] = mapped_column(BigInteger)
    tx_hash: Mapped[str] = mapped_column(String(66))
    log_index: Mapped[int] = mapped_column(Integer)
    block_number: Mapped[int] = mapped_column(BigInteger)
    block_hash: Mapped[str] = mapped_column(String(66))
    token_address: Mapped[str] = mapped_column(String(42))
    from_address: Mapped[str] = mapped_column(String(42), index=True)
    to_address: Mapped[str] = mapped_column(String(42))
    # The raw token amount as a decimal string: uint256 does not fit a 64-bit column.
    amount_units: Mapped[str] = mapped_column(String(80))
    amount_nano_usd: Mapped[int] = mapped_column(BigInteger)
    account_id: Mapped[int | None] = mapped_column(ForeignKey("accounts.id"), nullable=True, index=True)
    # pending, credited, orphaned, or unattributed (the sender is no bound wallet).
    # Also reversed (credited, then removed by a reorganisation) and rejected (the receipt
    # does not confirm the log, or the amount does not fit the ledger).
    status: Mapped[str] = mapped_column(String(15))
    transfer_id: Mapped[str | None] = mapped_column(String(160), nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(Timestamp(), default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(Timestamp(), default=utcnow, onupdate=utcnow)
    # "transfer" (an ERC-20 Transfer to the treasury) or "vault" (a TopUpVault Deposited event).
    source: Mapped[str] = mapped_column(String(10), default="transfer")
    # The vault event's 32-byte account reference as 0x-prefixed hex; None for plain transfers.
    account_ref: Mapped[str | None] = mapped_column(String(66), nullable=True)
    # How many times a credit of this log was reversed. A later credit of the same log, after
    # it was included again, gets a transfer id with this count appended.
    reversal_count: Mapped[int] = mapped_column(Integer, default=0)
    # The part of the last reversal that the buyer's balance could not cover, owed by the buyer.
    shortfall_nano_usd: Mapped[int] = mapped_column(BigInteger, default=0)
    credited_at: Mapped[dt.datetime | None] = mapped_column(Timestamp(), nullable=True)
    reversed_at: Mapped[dt.datetime | None] = mapped_column(Timestamp(), nullable=True)
    status_reason: Mapped[str | None] = mapped_column(String(300), nullable=True)


class ChainCursor(Base):
    """The last block whose logs the watcher has fully processed, per chain."""

    __tablename__ = "chain_cursors"

    chain_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    last_block: Mapped[int] = mapped_column(BigInteger)
    updated_at: Mapped[dt.datetime] = mapped_column(Timestamp(), default=utcnow, onupdate=utcnow)
    # The hash of last_block when it was processed. A different canonical hash later means a
    # reorganisation reached below the cursor.
    last_block_hash: Mapped[str | None] = mapped_column(String(66), nullable=True)
    # The chain head and the highest creditable block at the last poll, for deposit status.
    head_block: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    safe_block: Mapped[int | None] = mapped_column(BigInteger, nullable=True)


class Generation(Base):
    """One metered proxy call: what was used, what it cost, and how it ended."""

    __tablename__ = "generations"
    __table_args__ = (Index("ix_generations_account_created", "account_id", "created_at"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"))
    api_key_id: Mapped[int] = mapped_column(ForeignKey("api_keys.id"), index=True)
    listing_id: Mapped[int | None] = mapped_column(ForeignKey("listings.id"), nullable=True, index=True)
    model: Mapped[str] = mapped_column(String(200))
    stream: Mapped[bool] = mapped_column(Boolean, default=False)
    # pending, completed, incomplete, client_disconnected, failed or expired.
    status: Mapped[str] = mapped_column(String(20), default="pending")
    prompt_tokens: Mapped[int] = mapped_column(Integer, default=0)
    completion_tokens: Mapped[int] = mapped_column(Integer, default=0)
    cached_prompt_tokens: Mapped[int] = mapped_column(Integer, default=0)
    cache_write_tokens: Mapped[int] = mapped_column(Integer, default=0)
    reasoning_tokens: Mapped[int] = mapped_column(Integer, default=0)
    usage_estimated: Mapped[bool] = mapped_column(Boolean, default=False)
    hold_nano_usd: Mapped[int] = mapped_column(BigInteger, default=0)
    cost_nano_usd: Mapped[int] = mapped_column(BigInteger, default=0)
    hold_transfer_id: Mapped[str | None] = mapped_column(String(160), nullable=True, index=True)
    # The API key's spend-limit period this call's hold was reserved in, or None without a limit.
    spend_period: Mapped[str | None] = mapped_column(String(20), nullable=True)
    latency_ms: Mapped[int | None] = mapped_column(Integer, nullable=True)
    error: Mapped[str | None] = mapped_column(String(500), nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(Timestamp(), default=utcnow)
    finished_at: Mapped[dt.datetime | None] = mapped_column(Timestamp(), nullable=True)


class Payout(Base):
    """A supplier's earnings sent from the treasury on-chain, reserved in the ledger until it confirms.

    Every transaction of one payout uses the same nonce until one is mined, so at most one of
    them can transfer the tokens. A transaction that reverted consumes the nonce, and only then
    does the next attempt take a new nonce.
    """

    __tablename__ = "payouts"
    __table_args__ = (Index("ix_payouts_chain_status", "chain_id", "status"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    supplier_id: Mapped[int] = mapped_column(ForeignKey("suppliers.id"), index=True)
    chain_id: Mapped[int] = mapped_column(BigInteger)
    token_address: Mapped[str] = mapped_column(String(42))
    to_address: Mapped[str] = mapped_column(String(42))
    # The raw token amount as a decimal string: uint256 does not fit a 64-bit column.
    amount_units: Mapped[str] = mapped_column(String(80))
    amount_nano_usd: Mapped[int] = mapped_column(BigInteger)
    # open (reserved, transactions in flight), confirmed, or failed (amount returned).
    status: Mapped[str] = mapped_column(String(15), default="open")
    # The treasury nonce of the current attempt; None before the first attempt is signed.
    nonce: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    failed_attempts: Mapped[int] = mapped_column(Integer, default=0)
    # Set when confirmed: the mined transaction and the ledger transfer keyed by it.
    tx_hash: Mapped[str | None] = mapped_column(String(66), nullable=True, unique=True)
    block_number: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    block_hash: Mapped[str | None] = mapped_column(String(66), nullable=True)
    transfer_id: Mapped[str | None] = mapped_column(String(160), nullable=True)
    error: Mapped[str | None] = mapped_column(String(500), nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(Timestamp(), default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(Timestamp(), default=utcnow, onupdate=utcnow)
    confirmed_at: Mapped[dt.datetime | None] = mapped_column(Timestamp(), nullable=True)


class PayoutAttempt(Base):
    """One signed transaction of a payout. It is stored before it is broadcast, so a crash
    after broadcasting can only lead to the same transaction being sent again."""

    __tablename__ = "payout_attempts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    payout_id: Mapped[int] = mapped_column(ForeignKey("payouts.id"), index=True)
    nonce: Mapped[int] = mapped_column(BigInteger)
    tx_hash: Mapped[str] = mapped_column(String(66), unique=True)
    # The signed transaction as 0x-prefixed hex. It holds no secret and is public once broadcast.
    raw_transaction: Mapped[str] = mapped_column(Text)
    max_fee_per_gas_wei: Mapped[str] = mapped_column(String(80))
    max_priority_fee_per_gas_wei: Mapped[str] = mapped_column(String(80))
    # signed, reverted or replaced.
    status: Mapped[str] = mapped_column(String(15), default="signed")
    created_at: Mapped[dt.datetime] = mapped_column(Timestamp(), default=utcnow)
    broadcast_at: Mapped[dt.datetime | None] = mapped_column(Timestamp(), nullable=True)


class SignerNonce(Base):
    """The next nonce that Tokenport assigns to a signing account on one chain.

    Its row is locked while a nonce is assigned, so concurrent payout runs never sign two
    transactions with the same nonce.
    """

    __tablename__ = "signer_nonces"

    chain_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    address: Mapped[str] = mapped_column(String(42), primary_key=True)
    next_nonce: Mapped[int] = mapped_column(BigInteger, default=0)


class SettlementPeriod(Base):
    """A closed settlement period: its bounds, roots and totals, and its on-chain commitment.

    Timestamps are Unix seconds, and the period is [from_timestamp, to_timestamp). Roots are
    0x-hex. status is "built" once the trees are stored and "committed" once the
    SettlementRegistry holds the period.
    """

    __tablename__ = "settlement_periods"

    period_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    chain_id: Mapped[int] = mapped_column(BigInteger)
    registry_address: Mapped[str] = mapped_column(String(42))
    from_timestamp: Mapped[int] = mapped_column(BigInteger)
    to_timestamp: Mapped[int] = mapped_column(BigInteger, unique=True)
    previous_ledger_root: Mapped[str] = mapped_column(String(66))
    ledger_root: Mapped[str] = mapped_column(String(66))
    balances_root: Mapped[str] = mapped_column(String(66))
    records_root: Mapped[str] = mapped_column(String(66))
    total_liabilities_nano_usd: Mapped[int] = mapped_column(BigInteger)
    total_buyer_liabilities_nano_usd: Mapped[int] = mapped_column(BigInteger)
    total_supplier_liabilities_nano_usd: Mapped[int] = mapped_column(BigInteger)
    total_usage_nano_usd: Mapped[int] = mapped_column(BigInteger)
    total_deposits_nano_usd: Mapped[int] = mapped_column(BigInteger)
    total_payouts_nano_usd: Mapped[int] = mapped_column(BigInteger)
    record_count: Mapped[int] = mapped_column(BigInteger)
    balance_count: Mapped[int] = mapped_column(BigInteger)
    # The export form of each reserve source: the chain, token and holder whose balance backs
    # liabilities, and the chain's confirmation depth.
    reserve_sources: Mapped[list[dict]] = mapped_column(JSON)
    # built or committed.
    status: Mapped[str] = mapped_column(String(10))
    commit_tx_hash: Mapped[str | None] = mapped_column(String(66), nullable=True)
    commit_block_number: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    # SHA-256 of the export file, as hex, once the period is committed.
    export_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(Timestamp(), default=utcnow)
    committed_at: Mapped[dt.datetime | None] = mapped_column(Timestamp(), nullable=True)


class SettlementLeaf(Base):
    """One leaf of a period's balances or records tree, with its fields in export form."""

    __tablename__ = "settlement_leaves"
    __table_args__ = (Index("ix_settlement_leaves_owner", "period_id", "owner_account_id", "tree", "leaf_index"),)

    period_id: Mapped[int] = mapped_column(ForeignKey("settlement_periods.period_id"), primary_key=True)
    # balances or records.
    tree: Mapped[str] = mapped_column(String(10), primary_key=True)
    leaf_index: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    # balance, usage, deposit, payout or adjustment.
    kind: Mapped[str] = mapped_column(String(20))
    record_key: Mapped[str] = mapped_column(String(200))
    # The account that may fetch this leaf's proof: the buyer, or the supplier's account.
    owner_account_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    fields: Mapped[dict] = mapped_column(JSON)
    leaf_hash: Mapped[str] = mapped_column(String(66))


class SettlementTreeChunk(Base):
    """Up to a fixed number of consecutive nodes of one level of a period's tree, for proofs.

    hashes holds 32 bytes per node. sums holds each node's sum in the balances tree as 16
    big-endian bytes (uint128), and is null in the records tree.
    """

    __tablename__ = "settlement_tree_chunks"

    period_id: Mapped[int] = mapped_column(ForeignKey("settlement_periods.period_id"), primary_key=True)
    tree: Mapped[str] = mapped_column(String(10), primary_key=True)
    level: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    chunk_index: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    hashes: Mapped[bytes] = mapped_column(LargeBinary)
    sums: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
