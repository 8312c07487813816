"""Load generators, each run as a separate process: wrk for closed-loop load at a fixed
concurrency, hey for open-loop load at a fixed rate. Both send a fixed number of requests."""

from __future__ import annotations

import csv
import io
import json
import math
import shutil
import signal
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

WRK_SCRIPT = Path(__file__).with_name("wrk_report.lua")
# Upper bound on one wrk run. A run that reaches it has sent fewer requests than requested, and
# its result shows that in its request count.
WRK_MAX_DURATION_S = 300
REQUEST_TIMEOUT_S = 30


class LoadToolMissing(RuntimeError):
    pass


@dataclass(frozen=True)
class LoadResult:
    """One load run against one endpoint. Latencies are in microseconds."""

    requests: int
    duration_s: float
    non_200: int
    socket_errors: int
    timeouts: int
    p50_us: float
    p90_us: float
    p99_us: float

    @property
    def throughput_rps(self) -> float:
        return self.requests / self.duration_s if self.duration_s > 0 else 0.0

    @property
    def failed(self) -> int:
        return self.non_200 + self.socket_errors + self.timeouts


def require_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise LoadToolMissing(f"{name} is not installed; install it with `apt-get install -y {name}`")
    return path


def run_wrk(url: str, body: dict, headers: dict[str, str], *, connections: int, requests: int) -> LoadResult:
    """Send `requests` POSTs from `connections` connections on one wrk thread, as fast as they return."""
    wrk = require_tool("wrk")
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as body_file:
        json.dump(body, body_file)
    # One thread keeps the load generator to at most one core of the two.
    command = [
        wrk, "-t1", f"-c{connections}", f"-d{WRK_MAX_DURATION_S}s", f"--timeout={REQUEST_TIMEOUT_S}s",
        "-s", str(WRK_SCRIPT), url, "--", str(requests), body_file.name,
        *[f"{name}: {value}" for name, value in headers.items()],
    ]
    try:
        output = _run_until_done(command)
    finally:
        Path(body_file.name).unlink(missing_ok=True)
    for line in output.splitlines():
        if line.startswith("BENCH-JSON "):
            data = json.loads(line.removeprefix("BENCH-JSON "))
            return LoadResult(
                requests=data["requests"],
                duration_s=data["duration_us"] / 1e6,
                non_200=data["non_200"],
                socket_errors=data["socket_errors"],
                timeouts=data["timeouts"],
                p50_us=data["p50_us"],
                p90_us=data["p90_us"],
                p99_us=data["p99_us"],
            )
    raise RuntimeError(f"wrk printed no result:\n{output}")


def _run_until_done(command: list[str]) -> str:
    """Run wrk until its one thread prints BENCH-DONE, then end it with SIGINT, on which wrk
    stops and prints its results. Returns everything it printed."""
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert process.stdout is not None
    lines = []
    for line in process.stdout:
        lines.append(line)
        if line.startswith("BENCH-DONE"):
            process.send_signal(signal.SIGINT)
            break
    try:
        rest, _ = process.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        rest, _ = process.communicate()
    return "".join(lines) + rest


def run_hey_at_rate(url: str, body: dict, headers: dict[str, str], *, rate_rps: int, requests: int, workers: int = 4) -> LoadResult:
    """Send `requests` POSTs at `rate_rps` requests per second in total, from `workers` connections."""
    hey = require_tool("hey")
    assert rate_rps % workers == 0, f"rate {rate_rps} must divide evenly among {workers} workers"
    command = [
        hey, "-n", str(requests), "-c", str(workers), "-q", str(rate_rps // workers), "-t", str(REQUEST_TIMEOUT_S),
        "-m", "POST", "-T", "application/json", "-d", json.dumps(body), "-o", "csv",
    ]
    for name, value in headers.items():
        command += ["-H", f"{name}: {value}"]
    command.append(url)
    completed = subprocess.run(command, capture_output=True, text=True, timeout=requests / rate_rps * 3 + 60)
    if completed.returncode != 0:
        raise RuntimeError(f"hey failed (exit {completed.returncode}):\n{completed.stderr}")

    rows = list(csv.DictReader(io.StringIO(completed.stdout)))
    latencies_us = [float(row["response-time"]) * 1e6 for row in rows]
    statuses = [row["status-code"] for row in rows]
    # hey's offset is when a request started, counted from the start of the run.
    duration_s = max((float(row["offset"]) + latency / 1e6 for row, latency in zip(rows, latencies_us, strict=True)), default=0.0)
    latencies_us.sort()
    return LoadResult(
        requests=len(rows),
        duration_s=duration_s,
        non_200=sum(1 for status in statuses if status != "200"),
        socket_errors=requests - len(rows),
        timeouts=0,
        p50_us=percentile(latencies_us, 50),
        p90_us=percentile(latencies_us, 90),
        p99_us=percentile(latencies_us, 99),
    )


def percentile(sorted_values: list[float], pct: float) -> float:
    """Nearest-rank percentile of values sorted ascending; 0 for no values."""
    if not sorted_values:
        return 0.0
    rank = max(1, math.ceil(pct / 100 * len(sorted_values)))
    return sorted_values[rank - 1]
