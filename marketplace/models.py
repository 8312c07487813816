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
    # "active", "paused" or "deleted".
    status: Mapped[str] = mapped_column(String(10), default="active")
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
    status: Mapped[str] = mapped_column(String(15))
    transfer_id: Mapped[str | None] = mapped_column(String(160), nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(Timestamp(), default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(Timestamp(), default=utcnow, onupdate=utcnow)


class ChainCursor(Base):
    """The last block whose logs the watcher has fully processed, per chain."""

    __tablename__ = "chain_cursors"

    chain_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    last_block: Mapped[int] = mapped_column(BigInteger)
    updated_at: Mapped[dt.datetime] = mapped_column(Timestamp(), default=utcnow, onupdate=utcnow)


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
    hold_transfer_id: Mapped[str | None] = mapped_column(String(160), nullable=True)
    # The API key's spend-limit period this call's hold was reserved in, or None without a limit.
    spend_period: Mapped[str | None] = mapped_column(String(20), nullable=True)
    latency_ms: Mapped[int | None] = mapped_column(Integer, nullable=True)
    error: Mapped[str | None] = mapped_column(String(500), nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(Timestamp(), default=utcnow)
    finished_at: Mapped[dt.datetime | None] = mapped_column(Timestamp(), nullable=True)
