"""Start and stop the servers under test as child processes on 127.0.0.1."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

STOP_TIMEOUT_S = 15.0


def pick_free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class ProcessStartError(RuntimeError):
    pass


@dataclass
class ManagedProcess:
    """A server started in its own process group, so stopping it also stops its workers."""

    name: str
    url: str
    process: subprocess.Popen
    log_path: Path

    def stop(self) -> None:
        if self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=5)

    def log_tail(self, max_chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-max_chars:]
        except FileNotFoundError:
            return "(no log)"

    def pids(self) -> list[int]:
        """The process and its direct children, for a profiler to attach to."""
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        try:
            return [self.process.pid, *[int(pid) for pid in children.read_text().split()]]
        except FileNotFoundError:
            return [self.process.pid]


def start_process(
    name: str,
    command: list[str],
    *,
    port: int,
    log_dir: Path,
    env: dict[str, str] | None = None,
    ready_path: str = "/",
    start_timeout_s: float = 90.0,
    cwd: Path | None = None,
) -> ManagedProcess:
    """Start `command` and wait until http://127.0.0.1:port answers `ready_path` with any status."""
    log_path = log_dir / f"{name}.log"
    log = open(log_path, "w")
    process = subprocess.Popen(
        command,
        env={**os.environ, **(env or {})},
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        cwd=cwd,
    )
    log.close()
    managed = ManagedProcess(name, f"http://127.0.0.1:{port}", process, log_path)

    deadline = time.monotonic() + start_timeout_s
    while True:
        if process.poll() is not None:
            raise ProcessStartError(f"{name} exited with status {process.returncode} while starting:\n{managed.log_tail()}")
        try:
            httpx.get(managed.url + ready_path, timeout=2, trust_env=False)
            return managed
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            managed.stop()
            raise ProcessStartError(f"{name} did not answer on {managed.url} within {start_timeout_s} s:\n{managed.log_tail()}")
        time.sleep(0.2)
