"""Usage and its parser for OpenAI's `usage` object."""

from __future__ import annotations

import dataclasses

import pytest

from providers.usage import InvalidUsageError, Usage, usage_from_openai


def test_usage_from_openai_plain_counts() -> None:
    usage = usage_from_openai({"prompt_tokens": 12, "completion_tokens": 30, "total_tokens": 42})

    assert usage == Usage(prompt_tokens=12, completion_tokens=30)
    assert usage.estimated is False
    assert usage.total_tokens == 42


def test_usage_from_openai_cached_and_reasoning() -> None:
    usage = usage_from_openai(
        {
            "prompt_tokens": 2006,
            "completion_tokens": 300,
            "total_tokens": 2306,
            "prompt_tokens_details": {"cached_tokens": 1920, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": 256,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        }
    )

    assert usage.prompt_tokens == 2006
    assert usage.completion_tokens == 300
    assert usage.cached_prompt_tokens == 1920
    assert usage.reasoning_tokens == 256
    assert usage.cache_write_tokens == 0
    assert usage.uncached_prompt_tokens == 86


def test_usage_from_openai_ignores_cost() -> None:
    usage = usage_from_openai(
        {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12, "cost": 0}
    )

    assert usage == Usage(prompt_tokens=5, completion_tokens=7)
    assert "cost" not in {field.name for field in dataclasses.fields(Usage)}


def test_usage_from_openai_null_details() -> None:
    usage = usage_from_openai(
        {
            "prompt_tokens": 5,
            "completion_tokens": 7,
            "prompt_tokens_details": None,
            "completion_tokens_details": {"reasoning_tokens": None},
        }
    )

    assert usage == Usage(prompt_tokens=5, completion_tokens=7)


def test_usage_from_openai_deepseek_cache_hits() -> None:
    usage = usage_from_openai(
        {
            "prompt_tokens": 100,
            "completion_tokens": 10,
            "prompt_cache_hit_tokens": 64,
            "prompt_cache_miss_tokens": 36,
        }
    )

    assert usage.cached_prompt_tokens == 64


def test_cached_details_beat_deepseek_field() -> None:
    usage = usage_from_openai(
        {
            "prompt_tokens": 100,
            "completion_tokens": 10,
            "prompt_tokens_details": {"cached_tokens": 32},
            "prompt_cache_hit_tokens": 64,
        }
    )

    assert usage.cached_prompt_tokens == 32


@pytest.mark.parametrize(
    ("usage", "message"),
    [
        ({"prompt_tokens": -1, "completion_tokens": 0}, "usage.prompt_tokens must not be negative"),
        (
            {"prompt_tokens": 1, "completion_tokens": -5},
            "usage.completion_tokens must not be negative",
        ),
        (
            {
                "prompt_tokens": 1,
                "completion_tokens": 1,
                "prompt_tokens_details": {"cached_tokens": -1},
            },
            "usage.prompt_tokens_details.cached_tokens must not be negative",
        ),
        (
            {
                "prompt_tokens": 1,
                "completion_tokens": 1,
                "completion_tokens_details": {"reasoning_tokens": -2},
            },
            "usage.completion_tokens_details.reasoning_tokens must not be negative",
        ),
        ({"prompt_tokens": 1.5, "completion_tokens": 1}, "usage.prompt_tokens must be an integer"),
        ({"prompt_tokens": 1.0, "completion_tokens": 1}, "usage.prompt_tokens must be an integer"),
        ({"prompt_tokens": "12", "completion_tokens": 1}, "usage.prompt_tokens must be an integer"),
        ({"prompt_tokens": True, "completion_tokens": 1}, "usage.prompt_tokens must be an integer"),
        ({"completion_tokens": 1}, "usage.prompt_tokens is missing"),
        ({"prompt_tokens": 1, "completion_tokens": None}, "usage.completion_tokens is missing"),
        (
            {"prompt_tokens": 1, "completion_tokens": 1, "prompt_tokens_details": [1]},
            "usage.prompt_tokens_details must be a JSON object",
        ),
        (
            {
                "prompt_tokens": 4,
                "completion_tokens": 1,
                "prompt_tokens_details": {"cached_tokens": 5},
            },
            r"cached_prompt_tokens \(5\) plus cache_write_tokens \(0\) exceed prompt_tokens \(4\)",
        ),
        (
            {
                "prompt_tokens": 4,
                "completion_tokens": 1,
                "completion_tokens_details": {"reasoning_tokens": 2},
            },
            r"reasoning_tokens \(2\) exceed completion_tokens \(1\)",
        ),
    ],
)
def test_usage_from_openai_rejects_invalid_counts(usage: dict, message: str) -> None:
    with pytest.raises(InvalidUsageError, match=message):
        usage_from_openai(usage)


def test_usage_from_openai_rejects_non_object() -> None:
    with pytest.raises(InvalidUsageError, match="usage must be a JSON object, got list"):
        usage_from_openai([1, 2])  # type: ignore[arg-type]


def test_usage_rejects_cache_parts_above_prompt() -> None:
    with pytest.raises(InvalidUsageError, match="exceed prompt_tokens"):
        Usage(prompt_tokens=10, completion_tokens=0, cached_prompt_tokens=6, cache_write_tokens=5)


def test_usage_estimated_flag() -> None:
    usage = Usage(prompt_tokens=10, completion_tokens=3, estimated=True)

    assert usage.estimated is True
    with pytest.raises(dataclasses.FrozenInstanceError):
        usage.prompt_tokens = 11  # type: ignore[misc]
