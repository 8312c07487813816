"""Settlement settings, read from `TOKENPORT_SETTLEMENT_*` environment variables.

Settlement is off until a registry address and the operator's key are set. The registry lives
on one of the chains in `TOKENPORT_CHAINS`; reserves are read on all of them.
"""

from __future__ import annotations

from functools import lru_cache

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from web3 import Web3


class SettlementSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TOKENPORT_SETTLEMENT_")

    # The chain of the SettlementRegistry. Unset means the first configured chain.
    chain_id: int | None = Field(default=None, gt=0)
    registry_address: str | None = None
    # Private key of the registry's operator, which alone may commit periods. Never logged.
    operator_private_key: SecretStr | None = None
    # Periods end on multiples of period_s Unix seconds.
    period_s: int = Field(default=3_600, gt=0)
    # A period is closed only once its end is this far in the past, so that transactions still
    # open at its end have committed. It must exceed the longest ledger transaction.
    close_delay_s: int = Field(default=300, ge=0)
    # Directory for export files (period-00000001.jsonl); unset means the API serves them only.
    export_dir: str | None = None
    # Addresses that hold reserves besides each chain's treasury and vault_address, by chain
    # id: {"8453": ["0x…"]}.
    vault_addresses: dict[int, list[str]] = Field(default_factory=dict)
    # How often Celery beat checks whether a period is due. Closing one takes a single run.
    check_interval_s: float = Field(default=60.0, gt=0)
    # Bound on the rows the closer reads or writes per database round trip.
    batch_size: int = Field(default=1_000, gt=0)

    @field_validator("registry_address")
    @classmethod
    def _checksum(cls, value: str | None) -> str | None:
        return Web3.to_checksum_address(value) if value else None

    @field_validator("vault_addresses")
    @classmethod
    def _checksum_vaults(cls, value: dict[int, list[str]]) -> dict[int, list[str]]:
        return {chain_id: [Web3.to_checksum_address(address) for address in addresses] for chain_id, addresses in value.items()}

    @property
    def enabled(self) -> bool:
        return bool(self.registry_address and self.operator_private_key)


@lru_cache
def get_settlement_settings() -> SettlementSettings:
    return SettlementSettings()
