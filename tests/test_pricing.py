"""Pricing: the exact cost of a call, its ceiling rounding, holds, fees and discounts."""

from __future__ import annotations

from fractions import Fraction
from types import SimpleNamespace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from marketplace.pricing import (
    MICRO_USD_PER_MTOK_TO_NANO_USD_DIVISOR,
    Prices,
    cost_nano_usd,
    discount_bps,
    max_cost_nano_usd,
    platform_fee_nano_usd,
)
from providers.usage import InvalidUsageError, Usage

# $0.27/M input, $0.027/M cache read, $0.3375/M cache write, $1.10/M output.
PRICES = Prices(
    input_micro_usd_per_mtok=270_000,
    cached_input_micro_usd_per_mtok=27_000,
    cache_write_micro_usd_per_mtok=337_500,
    output_micro_usd_per_mtok=1_100_000,
)
ONE_MICRO_USD_PER_MTOK = Prices(1, 1, 1, 1)


def test_cost_of_plain_usage():
    usage = Usage(prompt_tokens=1_000, completion_tokens=500)

    # 1,000 x $0.27/M + 500 x $1.10/M = $0.00082.
    assert cost_nano_usd(usage, PRICES) == 820_000


def test_cost_of_cached_usage():
    usage = Usage(prompt_tokens=1_000, completion_tokens=0, cached_prompt_tokens=600)

    # 400 uncached x 270,000 + 600 cached x 27,000 = 124,200,000 micro-USD-tokens.
    assert cost_nano_usd(usage, PRICES) == 124_200


def test_cost_of_cache_write_usage():
    usage = Usage(prompt_tokens=1_000, completion_tokens=0, cache_write_tokens=400)

    # 600 uncached x 270,000 + 400 written x 337,500 = 297,000,000 micro-USD-tokens.
    assert cost_nano_usd(usage, PRICES) == 297_000


def test_cost_of_mixed_usage():
    usage = Usage(
        prompt_tokens=1_000,
        completion_tokens=300,
        cached_prompt_tokens=500,
        cache_write_tokens=200,
        reasoning_tokens=100,
    )

    # 300 x 270,000 + 500 x 27,000 + 200 x 337,500 + 300 x 1,100,000 = 492,000,000.
    assert cost_nano_usd(usage, PRICES) == 492_000


def test_reasoning_tokens_are_priced_once_as_output():
    with_reasoning = Usage(prompt_tokens=0, completion_tokens=100, reasoning_tokens=60)
    without_reasoning = Usage(prompt_tokens=0, completion_tokens=100)

    assert cost_nano_usd(with_reasoning, PRICES) == 110_000
    assert cost_nano_usd(without_reasoning, PRICES) == 110_000


def test_cost_of_no_tokens_is_zero():
    assert cost_nano_usd(Usage(prompt_tokens=0, completion_tokens=0), PRICES) == 0


@pytest.mark.parametrize(
    ("prompt_tokens", "completion_tokens", "expected_nano_usd"),
    [
        (1, 0, 1),
        (0, 1, 1),
        (999, 0, 1),
        (1_000, 0, 1),
        (1_001, 0, 2),
        (1_000, 1, 2),
        (2_000, 0, 2),
    ],
)
def test_cost_rounds_up_to_whole_nano_usd(prompt_tokens, completion_tokens, expected_nano_usd):
    usage = Usage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens)

    assert cost_nano_usd(usage, ONE_MICRO_USD_PER_MTOK) == expected_nano_usd


def test_usage_with_cache_parts_above_prompt_is_rejected():
    with pytest.raises(InvalidUsageError):
        Usage(prompt_tokens=10, completion_tokens=0, cached_prompt_tokens=6, cache_write_tokens=5)


def test_cost_rejects_cache_parts_above_prompt():
    # Usage validates itself, so this duck-typed stand-in reaches the check inside cost_nano_usd.
    usage = SimpleNamespace(prompt_tokens=10, completion_tokens=0, cached_prompt_tokens=6, cache_write_tokens=5)

    with pytest.raises(ValueError, match="6 cached and 5 cache-write tokens but only 10 prompt tokens"):
        cost_nano_usd(usage, PRICES)


def test_max_cost_uses_cache_write_price_when_dearest():
    prices = Prices(
        input_micro_usd_per_mtok=100,
        cached_input_micro_usd_per_mtok=10,
        cache_write_micro_usd_per_mtok=250,
        output_micro_usd_per_mtok=1_000,
    )

    # 1,000 x 250 + 500 x 1,000 = 750,000 micro-USD-tokens.
    assert max_cost_nano_usd(1_000, 500, prices) == 750


def test_max_cost_uses_input_price_when_dearest():
    prices = Prices(
        input_micro_usd_per_mtok=300,
        cached_input_micro_usd_per_mtok=10,
        cache_write_micro_usd_per_mtok=250,
        output_micro_usd_per_mtok=1_000,
    )

    assert max_cost_nano_usd(1_000, 500, prices) == 800


def test_max_cost_rounds_up():
    assert max_cost_nano_usd(1, 0, ONE_MICRO_USD_PER_MTOK) == 1
    assert max_cost_nano_usd(1_001, 0, ONE_MICRO_USD_PER_MTOK) == 2


@pytest.mark.parametrize(
    ("cost", "fee_bps", "expected_fee"),
    [
        (999, 500, 49),
        (1_000, 500, 50),
        (19, 500, 0),
        (0, 500, 0),
        (1_000, 0, 0),
        (1_000, 10_000, 1_000),
        (123_457, 500, 6_172),
    ],
)
def test_platform_fee_rounds_down(cost, fee_bps, expected_fee):
    assert platform_fee_nano_usd(cost, fee_bps) == expected_fee


@pytest.mark.parametrize(
    ("list_price", "offer_price", "expected_bps"),
    [
        (270_000, 216_000, 2_000),
        (3, 2, 3_333),
        (100, 100, 0),
        (100, 0, 10_000),
        (0, 5, 0),
        # An offer above the list price is a negative discount.
        (100, 150, -5_000),
    ],
)
def test_discount_bps_rounds_down(list_price, offer_price, expected_bps):
    assert discount_bps(list_price, offer_price) == expected_bps


TOKEN_COUNTS = st.integers(min_value=0, max_value=10_000_000)
PRICE_VALUES = st.integers(min_value=0, max_value=1_000_000_000)


@st.composite
def usages(draw: st.DrawFn) -> Usage:
    prompt = draw(TOKEN_COUNTS)
    cached = draw(st.integers(min_value=0, max_value=prompt))
    cache_write = draw(st.integers(min_value=0, max_value=prompt - cached))
    completion = draw(TOKEN_COUNTS)
    reasoning = draw(st.integers(min_value=0, max_value=completion))
    return Usage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        cached_prompt_tokens=cached,
        cache_write_tokens=cache_write,
        reasoning_tokens=reasoning,
    )


prices_strategy = st.builds(Prices, PRICE_VALUES, PRICE_VALUES, PRICE_VALUES, PRICE_VALUES)


def exact_cost_nano_usd(usage: Usage, prices: Prices) -> Fraction:
    micro_usd_tokens = (
        usage.uncached_prompt_tokens * prices.input_micro_usd_per_mtok
        + usage.cached_prompt_tokens * prices.cached_input_micro_usd_per_mtok
        + usage.cache_write_tokens * prices.cache_write_micro_usd_per_mtok
        + usage.completion_tokens * prices.output_micro_usd_per_mtok
    )
    return Fraction(micro_usd_tokens, MICRO_USD_PER_MTOK_TO_NANO_USD_DIVISOR)


def add_usages(first: Usage, second: Usage) -> Usage:
    return Usage(
        prompt_tokens=first.prompt_tokens + second.prompt_tokens,
        completion_tokens=first.completion_tokens + second.completion_tokens,
        cached_prompt_tokens=first.cached_prompt_tokens + second.cached_prompt_tokens,
        cache_write_tokens=first.cache_write_tokens + second.cache_write_tokens,
        reasoning_tokens=first.reasoning_tokens + second.reasoning_tokens,
    )


@given(usage=usages(), prices=prices_strategy)
def test_cost_is_exact_cost_rounded_up(usage, prices):
    cost = cost_nano_usd(usage, prices)
    exact = exact_cost_nano_usd(usage, prices)

    assert isinstance(cost, int)
    assert cost >= exact
    assert cost < exact + 1


@given(first=usages(), second=usages(), prices=prices_strategy)
def test_split_usage_never_undercounts(first, second, prices):
    whole = cost_nano_usd(add_usages(first, second), prices)
    parts = cost_nano_usd(first, prices) + cost_nano_usd(second, prices)

    assert parts >= whole
    # Each part rounds up by less than 1 nano-USD, so splitting adds at most 1 nano-USD.
    assert parts <= whole + 1


@given(usage=usages(), prices=prices_strategy)
def test_max_cost_covers_every_usage_within_bounds(usage, prices):
    hold = max_cost_nano_usd(usage.prompt_tokens, usage.completion_tokens, prices)

    assert cost_nano_usd(usage, prices) <= hold
