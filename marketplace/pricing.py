"""The cost of a call, from its token counts and the listing's prices.

Prices are integer micro-USD per million tokens (a $0.27/M price is 270_000). One token at price
p costs p / 1000 nano-USD, so the exact cost of a call is

    sum(tokens_i * price_i) / 1000 nano-USD

over the four token classes below, and it is rounded once, up to the next whole nano-USD. The
rounding is the only inexact step and it is at most 1 nano-USD (10**-9 USD) per call.

Each token is priced exactly once. `prompt_tokens` counts every input token in OpenAI's
convention, so the uncached input is prompt_tokens - cached_prompt_tokens - cache_write_tokens.
Reasoning tokens are part of completion_tokens and are priced as output.
"""

from __future__ import annotations

from dataclasses import dataclass

from providers.usage import Usage

MICRO_USD_PER_MTOK_TO_NANO_USD_DIVISOR = 1_000


@dataclass(frozen=True)
class Prices:
    input_micro_usd_per_mtok: int
    cached_input_micro_usd_per_mtok: int
    cache_write_micro_usd_per_mtok: int
    output_micro_usd_per_mtok: int

    def __post_init__(self) -> None:
        for name, value in self.__dict__.items():
            assert isinstance(value, int) and value >= 0, f"{name} must be a non-negative int, got {value!r}"


def _ceil_div(numerator: int, denominator: int) -> int:
    return -(-numerator // denominator)


def cost_nano_usd(usage: Usage, prices: Prices) -> int:
    uncached_input = usage.prompt_tokens - usage.cached_prompt_tokens - usage.cache_write_tokens
    if uncached_input < 0:
        raise ValueError(
            f"usage reports {usage.cached_prompt_tokens} cached and {usage.cache_write_tokens} "
            f"cache-write tokens but only {usage.prompt_tokens} prompt tokens"
        )

    micro_usd_tokens = (
        uncached_input * prices.input_micro_usd_per_mtok
        + usage.cached_prompt_tokens * prices.cached_input_micro_usd_per_mtok
        + usage.cache_write_tokens * prices.cache_write_micro_usd_per_mtok
        + usage.completion_tokens * prices.output_micro_usd_per_mtok
    )
    return _ceil_div(micro_usd_tokens, MICRO_USD_PER_MTOK_TO_NANO_USD_DIVISOR)


def max_cost_nano_usd(max_prompt_tokens: int, max_completion_tokens: int, prices: Prices) -> int:
    """The largest cost a call can reach, used as its hold: every input token at the dearest input price."""
    dearest_input = max(
        prices.input_micro_usd_per_mtok,
        prices.cached_input_micro_usd_per_mtok,
        prices.cache_write_micro_usd_per_mtok,
    )
    micro_usd_tokens = max_prompt_tokens * dearest_input + max_completion_tokens * prices.output_micro_usd_per_mtok
    return _ceil_div(micro_usd_tokens, MICRO_USD_PER_MTOK_TO_NANO_USD_DIVISOR)


def platform_fee_nano_usd(cost: int, fee_bps: int) -> int:
    """The platform's share of a call's cost, rounded down; the supplier receives the rest."""
    return cost * fee_bps // 10_000


def discount_bps(list_price: int, offer_price: int) -> int:
    """The offer's discount against the list price, in basis points (1,000 = 10%), rounded down."""
    if list_price <= 0:
        return 0
    return (list_price - offer_price) * 10_000 // list_price
