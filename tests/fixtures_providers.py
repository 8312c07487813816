"""Fixtures for upstream providers: the mock upstream server.

`mock_upstream` starts one mock upstream per test session under uvicorn, in a background thread,
on a free port of 127.0.0.1. Its counters and scheduled faults carry over between tests, so a
test that reads them or schedules faults should use `fresh_mock_upstream`, which resets the mock
first.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import httpx
import pytest

from marketplace.servers import BackgroundServer
from providers.mock_upstream import MOCK_API_KEY, create_mock_app

# Timeout of each control request (stats, reset, faults) to the mock.
CONTROL_REQUEST_TIMEOUT_S = 5.0
# The `timeout` fault waits this long at most, so tests set client timeouts well below it.
TIMEOUT_FAULT_S = 5.0


class MockUpstream:
    """A running mock upstream and the calls that control it."""

    def __init__(self, port: int, api_key: str) -> None:
        self.port = port
        self.api_key = api_key
        self.root_url = f"http://127.0.0.1:{port}"
        self.base_url = f"{self.root_url}/v1"

    def stats(self) -> dict[str, Any]:
        response = httpx.get(
            f"{self.root_url}/_mock/stats", timeout=CONTROL_REQUEST_TIMEOUT_S, trust_env=False
        )
        response.raise_for_status()
        return response.json()

    def reset(self) -> None:
        response = httpx.post(
            f"{self.root_url}/_mock/reset", timeout=CONTROL_REQUEST_TIMEOUT_S, trust_env=False
        )
        response.raise_for_status()

    def set_faults(self, faults: Iterable[str], count: int = 1) -> None:
        """Apply `faults` to each of the next `count` chat completion requests."""
        response = httpx.post(
            f"{self.root_url}/_mock/faults",
            json={"faults": list(faults), "count": count},
            timeout=CONTROL_REQUEST_TIMEOUT_S,
            trust_env=False,
        )
        response.raise_for_status()

    def wait_for_stats(
        self,
        predicate: Callable[[dict[str, Any]], bool],
        timeout_s: float = CONTROL_REQUEST_TIMEOUT_S,
    ) -> dict[str, Any]:
        """Poll the stats until `predicate(stats)` is true or `timeout_s` passes, then return them.

        Server-side effects of a client action, such as an aborted stream, arrive a moment later.
        """
        deadline = time.monotonic() + timeout_s
        while True:
            stats = self.stats()
            if predicate(stats) or time.monotonic() > deadline:
                return stats
            time.sleep(0.02)


@pytest.fixture(scope="session")
def mock_upstream() -> Iterator[MockUpstream]:
    app = create_mock_app(MOCK_API_KEY, timeout_fault_s=TIMEOUT_FAULT_S)
    server = BackgroundServer(app, name="mock-upstream", lifespan="off", ws="none").start()
    try:
        yield MockUpstream(server.port, MOCK_API_KEY)
    finally:
        server.stop()


@pytest.fixture
def fresh_mock_upstream(mock_upstream: MockUpstream) -> MockUpstream:
    """The session's mock upstream, with counters, recorded bodies and scheduled faults cleared."""
    mock_upstream.reset()
    return mock_upstream
