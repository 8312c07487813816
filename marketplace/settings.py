"""Runtime settings, read from `TOKENPORT_*` environment variables.

Every limit carries its unit in its name. The defaults are the embedded development setup:
SQLite, Celery in eager mode, and whatever chain the run command starts.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Literal

from pydantic import BaseModel, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from web3 import Web3


class TokenSettings(BaseModel):
    """A stablecoin accepted on one chain, identified by its contract address, never its symbol."""

    symbol: str
    address: str
    decimals: int = Field(ge=0, le=36)

    @field_validator("address")
    @classmethod
    def _checksum(cls, value: str) -> str:
        return Web3.to_checksum_address(value)


class ChainSettings(BaseModel):
    """One EVM chain that the deposit watcher follows."""

    chain_id: int = Field(gt=0)
    name: str = "dev"
    rpc_url: str
    treasury_address: str
    confirmations: int = Field(default=3, ge=1)
    poll_interval_s: float = Field(default=2.0, gt=0)
    max_block_range: int = Field(default=2_000, ge=1)
    start_block: int = Field(default=0, ge=0)
    tokens: list[TokenSettings] = Field(default_factory=list)
    # "confirmations" credits a deposit once its block is `confirmations` deep. "finalized"
    # credits up to the block that the RPC reports with the `finalized` tag, on chains that have one.
    finality: Literal["confirmations", "finalized"] = "confirmations"
    # The TopUpVault contract, whose Deposited events name the account they are for. None
    # accepts only plain transfers to the treasury.
    vault_address: str | None = None
    # When the block under the watcher's cursor changes hash, credited deposits this many blocks
    # below the cursor are checked again and the range is scanned again.
    reorg_check_blocks: int = Field(default=256, ge=1)
    # The token that supplier payouts on this chain are paid in. None means the first token.
    payout_token_address: str | None = None
    rpc_timeout_s: float = Field(default=30.0, gt=0)

    @field_validator("treasury_address")
    @classmethod
    def _checksum(cls, value: str) -> str:
        return Web3.to_checksum_address(value)

    @field_validator("vault_address", "payout_token_address")
    @classmethod
    def _checksum_optional(cls, value: str | None) -> str | None:
        return Web3.to_checksum_address(value) if value is not None else None

    def payout_token(self) -> TokenSettings | None:
        """Return the token that payouts on this chain use, or None when the chain lists no token."""
        if self.payout_token_address is None:
            return self.tokens[0] if self.tokens else None
        token = self.token_by_address(self.payout_token_address)
        if token is None:
            raise ValueError(
                f"payout token {self.payout_token_address} of chain {self.chain_id} is not one of its tokens"
            )
        return token

    def token_by_address(self, address: str) -> TokenSettings | None:
        checksummed = Web3.to_checksum_address(address)
        for token in self.tokens:
            if token.address == checksummed:
                return token
        return None


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TOKENPORT_", env_nested_delimiter="__")

    mode: Literal["development", "production"] = "development"
    database_url: str = "sqlite:///.tokenport/tokenport.db"
    # PostgreSQL connections per process: at most pool size plus overflow.
    database_pool_size: int = Field(default=5, ge=1)
    database_max_overflow: int = Field(default=5, ge=0)
    # Without a Redis URL, Celery runs tasks in eager mode and rate limits live in process memory.
    redis_url: str | None = None
    # Prefix of every Redis key this deployment writes, so deployments can share one Redis.
    redis_key_prefix: str = "tokenport"

    host: str = "127.0.0.1"
    port: int = 8000
    # The domain and URI that Sign-In with Ethereum messages must name.
    siwe_domain: str = "127.0.0.1:8000"
    siwe_uri: str = "http://127.0.0.1:8000"
    siwe_nonce_ttl_s: int = Field(default=600, gt=0)
    session_ttl_s: int = Field(default=86_400, gt=0)

    chains: list[ChainSettings] = Field(default_factory=list)

    platform_fee_bps: int = Field(default=500, ge=0, le=10_000)
    hold_ttl_s: int = Field(default=600, gt=0)
    hold_sweep_interval_s: float = Field(default=30.0, gt=0)
    # Used for the hold when a request sets no max_tokens and the listing sets no limit.
    default_max_output_tokens: int = Field(default=4_096, gt=0)
    upstream_timeout_s: float = Field(default=120.0, gt=0)
    # The proxy's upstream connections, in all and to one host and port, and how long an idle
    # one is kept. The keep-alive stays below uvicorn's default idle timeout of 5 s, so the proxy
    # does not reuse a connection that a uvicorn upstream is closing at that moment.
    upstream_max_connections: int = Field(default=200, ge=1)
    upstream_max_connections_per_host: int = Field(default=100, ge=1)
    upstream_keepalive_s: float = Field(default=4.0, gt=0)
    # A call falls back to another listing at most this many times after failures before any output.
    max_fallbacks: int = Field(default=2, ge=0, le=10)
    # A listing is paused when, within one window, at least min_calls calls were made and at
    # least error_rate_pct percent of them failed. A Celery task probes it until it answers.
    listing_health_window_s: int = Field(default=300, gt=0)
    listing_health_min_calls: int = Field(default=5, ge=1)
    listing_health_error_rate_pct: int = Field(default=50, ge=1, le=100)
    listing_probe_interval_s: float = Field(default=60.0, gt=0)
    api_key_cache_ttl_s: float = Field(default=5.0, ge=0)
    # How long the proxy reuses a model's active listings before reading them again. A change
    # made through this process is seen at once; one made through another process within this.
    listing_cache_ttl_s: float = Field(default=1.0, ge=0)
    # The largest request body the proxy reads, in bytes. A longer one gets a 413 before it is
    # parsed. 32 MiB fits a long-context prompt with images as data URLs.
    max_request_bytes: int = Field(default=32 * 1024 * 1024, gt=0)

    # Supplier payouts: a supplier whose available earnings reach the threshold is paid on the
    # payout chain (None means the first configured chain) from the treasury. Development mode
    # signs with the development treasury key when treasury_private_key is unset.
    payout_threshold_nano_usd: int = Field(default=10 * 10**9, gt=0)
    payout_interval_s: float = Field(default=300.0, gt=0)
    payout_chain_id: int | None = None
    treasury_private_key: SecretStr | None = None
    # A payout whose transactions reverted this many times is given up and its amount returned
    # to the supplier's payable balance.
    payout_max_attempts: int = Field(default=5, ge=1)
    # A supplier whose payout was given up gets no new payout for this long.
    payout_failure_cooldown_s: float = Field(default=3_600.0, ge=0)
    # An unmined payout transaction is replaced, with the same nonce and fees raised by
    # payout_fee_bump_pct, after this long. A node accepts a replacement only when both fees
    # rise by its price bump: 10% in geth and Erigon, 12.5% in OpenEthereum.
    payout_replace_after_s: float = Field(default=180.0, ge=0)
    payout_fee_bump_pct: int = Field(default=25, ge=13, le=1_000)

    # Fernet key for supplier credentials at rest. Development mode derives a fixed key when unset.
    credential_key: str | None = None

    @property
    def max_call_s(self) -> float:
        """Return the maximum duration of a call: 80% of its hold's lifetime, so the expiry sweep
        never releases the hold of a call that is still streaming."""
        return self.hold_ttl_s * 0.8

    def chain(self, chain_id: int) -> ChainSettings:
        for chain in self.chains:
            if chain.chain_id == chain_id:
                return chain
        raise KeyError(f"chain {chain_id} is not configured; add it to TOKENPORT_CHAINS")


@lru_cache
def get_settings() -> Settings:
    return Settings()
