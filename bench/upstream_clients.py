"""Time one adapter call over each HTTP client of `providers.http`, one call at a time.

Run: python bench/upstream_clients.py [--calls N]

The OpenAI adapter calls the mock upstream, which runs in a process of its own, through an
`httpx.AsyncClient` (the baseline, which the proxy used before) and through the proxy's
`AiohttpClient`, on uvloop as under uvicorn. Each mode (non-streaming, then streaming) gets 200
warm-up calls per client, then the clients take turns in blocks of 200 calls, so that load from
elsewhere on the machine falls on both alike. The request is the one of `python -m bench`: one
short message and `max_tokens` 16, so a stream has 16 content chunks.
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from contextlib import aclosing
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx  # noqa: E402
import uvloop  # noqa: E402

from bench.systems import MAX_TOKENS, PROMPT, start_mock_upstream  # noqa: E402
from providers import registry  # noqa: E402
from providers.http import AiohttpClient, HttpClientLike, create_aiohttp_session  # noqa: E402
from providers.mock_upstream import MOCK_API_KEY  # noqa: E402

WARM_UP_CALLS = 200
BLOCK_CALLS = 200
TIMEOUT_S = 30.0
BODY = {"model": "mock-1", "messages": PROMPT, "max_tokens": MAX_TOKENS}


async def time_call(client: HttpClientLike, base_url: str, streaming: bool) -> float:
    """Call the adapter once, reading the whole stream when streaming, and return the seconds."""
    adapter = registry.get_adapter("openai")
    started = time.perf_counter()
    if streaming:
        chunks = adapter.stream(client, base_url, MOCK_API_KEY, BODY, TIMEOUT_S)
        async with aclosing(chunks):
            async for _chunk in chunks:
                pass
    else:
        await adapter.complete(client, base_url, MOCK_API_KEY, BODY, TIMEOUT_S)
    return time.perf_counter() - started


async def measure(base_url: str, calls: int) -> dict[tuple[str, bool], list[float]]:
    limits = httpx.Limits(max_connections=200, max_keepalive_connections=100)
    session = create_aiohttp_session(
        max_connections=200, max_connections_per_host=100, keepalive_s=4.0
    )
    durations: dict[tuple[str, bool], list[float]] = {}
    async with httpx.AsyncClient(trust_env=False, limits=limits) as httpx_client, session:
        clients: dict[str, HttpClientLike] = {
            "httpx.AsyncClient": httpx_client,
            "AiohttpClient": AiohttpClient(session),
        }
        for streaming in (False, True):
            for client in clients.values():
                for _ in range(WARM_UP_CALLS):
                    await time_call(client, base_url, streaming)

            for _ in range(max(1, calls // BLOCK_CALLS)):
                for name, client in clients.items():
                    block = durations.setdefault((name, streaming), [])
                    for _ in range(BLOCK_CALLS):
                        block.append(await time_call(client, base_url, streaming))
    return durations


def percentile_ms(sorted_durations: list[float], fraction: float) -> float:
    return sorted_durations[int(len(sorted_durations) * fraction)] * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--calls", type=int, default=2000, help="calls per client and mode (default: %(default)s)"
    )
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as log_dir:
        mock = start_mock_upstream(Path(log_dir))
        try:
            durations = uvloop.run(measure(f"{mock.url}/v1", args.calls))
        finally:
            mock.stop()

    print(f"Python {platform.python_version()}, {platform.machine()}, uvloop")
    print("| client | mode | calls | p50 (ms) | p90 (ms) | p99 (ms) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for (name, streaming), values in durations.items():
        values.sort()
        mode = "stream" if streaming else "non-stream"
        print(
            f"| {name} | {mode} | {len(values)} | {percentile_ms(values, 0.5):.2f} "
            f"| {percentile_ms(values, 0.9):.2f} | {percentile_ms(values, 0.99):.2f} |"
        )


if __name__ == "__main__":
    main()
