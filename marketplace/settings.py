"""Runtime settings, read from `TOKENPORT_*` environment variables.

Every limit carries its unit in its name. The defaults are the embedded development setup:
SQLite, Celery in eager mode, and whatever chain the run command starts.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Literal

from pydantic import BaseModel, Field, field_validator
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

    @field_validator("treasury_address")
    @classmethod
    def _checksum(cls, value: str) -> str:
        return Web3.to_checksum_address(value)

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
    api_key_cache_ttl_s: float = Field(default=5.0, ge=0)

    # Fernet key for supplier credentials at rest. Development mode derives a fixed key when unset.
    credential_key: str | None = None

    def chain(self, chain_id: int) -> ChainSettings:
        for chain in self.chains:
            if chain.chain_id == chain_id:
                return chain
        raise KeyError(f"chain {chain_id} is not configured; add it to TOKENPORT_CHAINS")


@lru_cache
def get_settings() -> Settings:
    return Settings()
