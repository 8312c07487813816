"""Which listing serves a call: buyer preferences in OpenRouter's `provider` shape, price, health
and supplier limits.

By default the candidates are a model's active listings, cheapest first (by the cost of one
million input plus one million output tokens). A buyer can reorder or narrow them per request:

    "provider": {"order": [...], "only": [...], "ignore": [...], "allow_fallbacks": true,
                 "sort": "price", "max_price": {"prompt": 0.5, "completion": 2}}

Suppliers are named by their supplier name, case-insensitively. `max_price` is in USD per
million tokens, as on OpenRouter.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from marketplace.errors import InvalidRequest
from marketplace.models import Listing

MICRO_USD_PER_USD = Decimal(10**6)


class MaxPrice(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prompt: Decimal | None = Field(default=None, ge=0)
    completion: Decimal | None = Field(default=None, ge=0)


class ProviderPreferences(BaseModel):
    model_config = ConfigDict(extra="forbid")

    order: list[str] = Field(default_factory=list, max_length=50)
    only: list[str] | None = Field(default=None, max_length=50)
    ignore: list[str] = Field(default_factory=list, max_length=50)
    allow_fallbacks: bool = True
    sort: Literal["price"] | None = None
    max_price: MaxPrice | None = None

    @field_validator("order", "only", "ignore")
    @classmethod
    def _lowercase(cls, value: list[str] | None) -> list[str] | None:
        return [name.lower() for name in value] if value is not None else None


def parse_preferences(raw: Any) -> ProviderPreferences:
    if raw is None:
        return ProviderPreferences()
    try:
        return ProviderPreferences.model_validate(raw)
    except (ValidationError, InvalidOperation) as exc:
        detail = exc.errors()[0] if isinstance(exc, ValidationError) else {"loc": (), "msg": str(exc)}
        location = ".".join(str(part) for part in ("provider", *detail["loc"]))
        raise InvalidRequest(f"{location}: {detail['msg']}", param=location) from exc


def _price_limit_micro_usd(value: Decimal | None) -> Decimal | None:
    return None if value is None else value * MICRO_USD_PER_USD


def order_candidates(listings: list[tuple[Listing, str]], preferences: ProviderPreferences) -> list[Listing]:
    """Filter and order (listing, supplier name) pairs; the first is tried first."""
    prompt_limit = _price_limit_micro_usd(preferences.max_price.prompt if preferences.max_price else None)
    completion_limit = _price_limit_micro_usd(preferences.max_price.completion if preferences.max_price else None)

    kept: list[tuple[Listing, str]] = []
    for listing, supplier_name in listings:
        name = supplier_name.lower()
        if preferences.only is not None and name not in preferences.only:
            continue
        if name in preferences.ignore:
            continue
        if prompt_limit is not None and listing.offer_input_micro_usd_per_mtok > prompt_limit:
            continue
        if completion_limit is not None and listing.offer_output_micro_usd_per_mtok > completion_limit:
            continue
        kept.append((listing, name))

    def rank(item: tuple[Listing, str]) -> tuple[int, int, int]:
        listing, name = item
        position = preferences.order.index(name) if name in preferences.order else len(preferences.order)
        price = listing.offer_input_micro_usd_per_mtok + listing.offer_output_micro_usd_per_mtok
        return (position, price, listing.id)

    ordered = [listing for listing, _ in sorted(kept, key=rank)]
    if not preferences.allow_fallbacks:
        return ordered[:1]
    return ordered
