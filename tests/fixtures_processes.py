"""Run the API as separate uvicorn worker processes, as production does, for cross-process tests."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field

import httpx

from chain.devchain import pick_free_port
from marketplace.settings import ChainSettings

START_TIMEOUT_S = 60.0
REDIS_URL = os.environ.get("TOKENPORT_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


@dataclass
class ApiProcesses:
    url: str
    process: subprocess.Popen
    log_path: str
    worker_pids: list[int] = field(default_factory=list)

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=5)

    def log(self) -> str:
        with open(self.log_path) as handle:
            return handle.read()


def start_api_processes(
    database_url: str,
    log_path: str,
    *,
    workers: int,
    chains: list[ChainSettings] | None = None,
    extra_env: dict[str, str] | None = None,
) -> ApiProcesses:
    port = pick_free_port()
    env = {
        **os.environ,
        "TOKENPORT_DATABASE_URL": database_url,
        "TOKENPORT_REDIS_URL": REDIS_URL,
        "TOKENPORT_API_KEY_CACHE_TTL_S": "0",
        "TOKENPORT_CHAINS": json.dumps([chain.model_dump() for chain in chains or []]),
        "TOKENPORT_LOG_LEVEL": "INFO",
        # Keys of this test session only, so parallel test runs sharing Redis never collide.
        "TOKENPORT_REDIS_KEY_PREFIX": f"tokenport-test-{os.getpid()}",
        **(extra_env or {}),
    }
    command = [
        sys.executable, "-m", "uvicorn", "marketplace.api.app:create_app", "--factory",
        "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers), "--log-level", "info",
    ]
    log = open(log_path, "w")
    process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"API processes exited with {process.returncode}:\n{open(log_path).read()}")
        try:
            if httpx.get(f"{url}/health", timeout=1, trust_env=False).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"API processes did not answer within {START_TIMEOUT_S} s:\n{open(log_path).read()}")
        time.sleep(0.2)
    return ApiProcesses(url, process, log_path)
