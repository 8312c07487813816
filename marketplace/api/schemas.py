"""Request bodies of the management API. Prices are integer micro-USD per million tokens."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


# Bounds that keep every stored number inside a signed 64-bit column.
MAX_AMOUNT_NANO_USD = 10**18
MAX_COUNT = 10**12


class StrictBody(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SignInBody(StrictBody):
    signature: str = Field(min_length=1, max_length=200)
    message: str | None = Field(default=None, max_length=4_000)
    address: str | None = None
    nonce: str | None = None


class ApiKeyBody(StrictBody):
    name: str = Field(default="default", min_length=1, max_length=100)
    allowed_models: list[str] | None = Field(default=None, max_length=200)
    spend_limit_nano_usd: int | None = Field(default=None, ge=0, le=MAX_AMOUNT_NANO_USD)
    spend_limit_period: str | None = Field(default=None, pattern="^(day|month|total)$")
    requests_per_minute: int | None = Field(default=None, ge=1, le=MAX_COUNT)
    tokens_per_minute: int | None = Field(default=None, ge=1, le=MAX_COUNT)


class SupplierBody(StrictBody):
    name: str = Field(min_length=1, max_length=100)
    payout_address: str


class ListingBody(StrictBody):
    model: str = Field(min_length=3, max_length=200)
    upstream_base_url: str = Field(pattern=r"^https?://", max_length=500)
    upstream_credential: str = Field(min_length=1, max_length=1_000)
    upstream_model: str | None = Field(default=None, max_length=200)
    upstream_protocol: str = "openai"
    list_input_micro_usd_per_mtok: int = Field(ge=0, le=10**12)
    list_output_micro_usd_per_mtok: int = Field(ge=0, le=10**12)
    offer_input_micro_usd_per_mtok: int = Field(ge=0, le=10**12)
    offer_output_micro_usd_per_mtok: int = Field(ge=0, le=10**12)
    offer_cached_input_micro_usd_per_mtok: int | None = Field(default=None, ge=0, le=10**12)
    offer_cache_write_micro_usd_per_mtok: int | None = Field(default=None, ge=0, le=10**12)
    max_output_tokens: int | None = Field(default=None, ge=1, le=10_000_000)
    requests_per_minute: int | None = Field(default=None, ge=1, le=MAX_COUNT)
    tokens_per_minute: int | None = Field(default=None, ge=1, le=MAX_COUNT)
    tokens_per_day: int | None = Field(default=None, ge=1, le=MAX_COUNT)
    region: str | None = Field(default=None, max_length=40)


class ListingUpdateBody(StrictBody):
    """Fields to change on a listing; omitted fields stay as they are."""

    upstream_base_url: str | None = Field(default=None, pattern=r"^https?://", max_length=500)
    upstream_credential: str | None = Field(default=None, min_length=1, max_length=1_000)
    upstream_model: str | None = Field(default=None, max_length=200)
    list_input_micro_usd_per_mtok: int | None = Field(default=None, ge=0, le=10**12)
    list_output_micro_usd_per_mtok: int | None = Field(default=None, ge=0, le=10**12)
    offer_input_micro_usd_per_mtok: int | None = Field(default=None, ge=0, le=10**12)
    offer_output_micro_usd_per_mtok: int | None = Field(default=None, ge=0, le=10**12)
    offer_cached_input_micro_usd_per_mtok: int | None = Field(default=None, ge=0, le=10**12)
    offer_cache_write_micro_usd_per_mtok: int | None = Field(default=None, ge=0, le=10**12)
    max_output_tokens: int | None = Field(default=None, ge=1, le=10_000_000)
    requests_per_minute: int | None = Field(default=None, ge=1, le=MAX_COUNT)
    tokens_per_minute: int | None = Field(default=None, ge=1, le=MAX_COUNT)
    tokens_per_day: int | None = Field(default=None, ge=1, le=MAX_COUNT)
    region: str | None = Field(default=None, max_length=40)
    status: str | None = None
