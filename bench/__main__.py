"""Run the whole benchmark and print its tables: `python -m bench` (or `make bench`).

One run starts the mock upstream and then measures, one server at a time: the mock called
directly (the floor), a bare pass-through proxy, Tokenport with full metering on PostgreSQL,
the LiteLLM proxy and Portkey's gateway. Each is loaded non-streaming and streaming, at fixed
concurrencies (wrk) and at a fixed rate (hey), each with a fixed request count. Then it measures
the ledger on PostgreSQL, the deposit watcher on anvil and, when bench/settlement_tree.py is
present, the settlement tree. Every figure printed comes from this one run.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from bench import report, systems
from bench.load import LoadResult, require_tool, run_hey_at_rate, run_wrk
from bench.processes import ManagedProcess
from bench.report import Point
from bench.systems import Target

BENCH_DIR = Path(__file__).resolve().parent
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
TOKENPORT_SCHEMA = "tokenport_bench"
WARMUP_REQUESTS = 300


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000, help="requests per closed-loop run (default: %(default)s)")
    parser.add_argument(
        "--concurrency", default="1,16", help="comma-separated connection counts of the closed-loop runs (default: %(default)s)"
    )
    parser.add_argument("--rate", type=int, default=100, help="requests per second of the open-loop run (default: %(default)s)")
    parser.add_argument("--rate-requests", type=int, default=1000, help="requests of the open-loop run (default: %(default)s)")
    parser.add_argument(
        "--systems",
        default="floor,passthrough,passthrough-httpx,tokenport,litellm,portkey",
        help="comma-separated systems to measure, in order (default: %(default)s)",
    )
    parser.add_argument("--skip-extras", action="store_true", help="measure only the proxies, not the ledger, watcher and settlement tree")
    parser.add_argument(
        "--litellm-database",
        action="store_true",
        help="give LiteLLM the PostgreSQL database for virtual keys and spend tracking (needs Prisma's engines, which it downloads)",
    )
    parser.add_argument(
        "--profile", action="store_true", help="after Tokenport's runs, record a py-spy profile of one more c=16 non-streaming run"
    )
    parser.add_argument("--output", type=Path, help="also write the report to this file")
    return parser.parse_args(argv)


def machine_description() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (
        f"{os.cpu_count()} CPUs ({cpu}), {memory_gib:.0f} GiB memory, {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}"
    )


def tool_versions() -> str:
    versions = []
    for command in (["wrk", "-v"], ["hey", "-h"], ["node", "--version"], ["psql", "--version"]):
        try:
            completed = subprocess.run(command, capture_output=True, text=True, timeout=10)
            output = (completed.stdout + completed.stderr).strip().splitlines()
            if command[0] == "hey":
                versions.append("hey (Debian package)")
            elif command[0] == "node":
                versions.append(f"node {output[0] if output else 'unknown'}")
            else:
                versions.append(output[0] if output else f"{command[0]}: no version printed")
        except (OSError, subprocess.TimeoutExpired):
            versions.append(f"{command[0]}: not found")
    return "; ".join(versions)


class Run:
    """The state of one benchmark run: its log folder, the mock upstream and the points measured."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.started_at = dt.datetime.now(dt.UTC)
        self.log_dir = BENCH_DIR / ".runs" / self.started_at.strftime("%Y%m%dT%H%M%SZ")
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.concurrencies = [int(value) for value in args.concurrency.split(",")]
        self.points: list[Point] = []
        self.notes: list[str] = []
        self.sections: list[str] = []

    def say(self, message: str) -> None:
        print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)

    def measure(self, target: Target, profile: bool = False) -> None:
        """Warm the target up, then run every closed-loop and open-loop load against it."""
        for stream in (False, True):
            mode = "stream" if stream else "non-stream"
            body = target.body(stream)
            warmup = run_wrk(target.endpoint, body, target.headers, connections=16, requests=WARMUP_REQUESTS)
            if warmup.failed:
                self.notes.append(f"{target.name} {mode}: {warmup.failed} of {warmup.requests} warm-up requests failed")
            for connections in self.concurrencies:
                result = run_wrk(target.endpoint, body, target.headers, connections=connections, requests=self.args.requests)
                self._record(target, mode, f"c={connections}", result)
            result = run_hey_at_rate(target.endpoint, body, target.headers, rate_rps=self.args.rate, requests=self.args.rate_requests)
            self._record(target, mode, f"{self.args.rate} req/s", result)
            if result.failed == result.requests:
                self.notes.append(f"{target.name} {mode}: every request failed; see {target.name.lower()}.log in the run's folder")
        if profile:
            # A separate pass, so that the profiler's cost stays out of the figures above.
            profiler = self._start_profiler(target)
            run_wrk(target.endpoint, target.body(os.environ.get("BENCH_PROFILE_STREAM") == "1"), target.headers, connections=16, requests=self.args.requests)
            self._stop_profiler(profiler)

    def _record(self, target: Target, mode: str, load: str, result: LoadResult) -> None:
        self.points.append(Point(target.name, mode, load, result))
        self.say(
            f"{target.name} {mode} {load}: {result.throughput_rps:,.0f} req/s, p50 {result.p50_us / 1000:.2f} ms, "
            f"p99 {result.p99_us / 1000:.2f} ms, {result.failed} failed"
        )

    def _start_profiler(self, target: Target) -> subprocess.Popen | None:
        from bench.profile import start_py_spy

        assert target.process is not None
        return start_py_spy(target.process.pids()[-1], self.log_dir / "tokenport-profile")

    def _stop_profiler(self, profiler: subprocess.Popen) -> None:
        from bench.profile import stop_py_spy, summarize_collapsed

        stop_py_spy(profiler)
        self.sections.append(summarize_collapsed(self.log_dir / "tokenport-profile.txt"))


def run_proxies(run: Run) -> None:
    mock = systems.start_mock_upstream(run.log_dir)
    try:
        for name in run.args.systems.split(","):
            target = start_system(run, name.strip(), mock)
            if target is None:
                continue
            try:
                run.measure(target, profile=run.args.profile and name == "tokenport")
                if name == "tokenport":
                    run.sections.append(check_tokenport_ledger(run))
            finally:
                target.stop()
    finally:
        mock.stop()


def start_system(run: Run, name: str, mock: ManagedProcess) -> Target | None:
    run.say(f"starting {name}")
    if name == "floor":
        return systems.direct_target(mock)
    if name == "passthrough":
        return systems.start_passthrough(mock, run.log_dir, "aiohttp")
    if name == "passthrough-httpx":
        return systems.start_passthrough(mock, run.log_dir, "httpx")
    if name == "tokenport":
        from bench.tokenport_setup import prepare_tokenport
        from providers.mock_upstream import MOCK_API_KEY

        fixture = prepare_tokenport(TOKENPORT_SCHEMA, mock.url + "/v1", MOCK_API_KEY)
        run.tokenport_fixture = fixture  # type: ignore[attr-defined]
        return systems.start_tokenport(fixture.database_url, fixture.api_key, run.log_dir, REDIS_URL)
    if name == "litellm":
        litellm = systems.install_litellm(run.log_dir)
        database_url = None
        if run.args.litellm_database:
            from bench.tokenport_setup import POSTGRES_BASE_URL, reset_schema

            reset_schema("litellm_bench")
            database_url = f"{POSTGRES_BASE_URL}?schema=litellm_bench"
        else:
            run.notes.append(
                "LiteLLM ran with its master key only: no virtual keys and no spend tracking. With a database URL its "
                "proxy runs `prisma generate`, which downloads Prisma's query engine from binaries.prisma.sh at start; "
                "this machine reaches no such host (seen with litellm 1.106.12 and prisma 0.15.0: ENOTFOUND)."
            )
        return systems.start_litellm(mock, run.log_dir, litellm, database_url)
    if name == "portkey":
        server = systems.install_portkey(run.log_dir)
        return systems.start_portkey(mock, run.log_dir, server)
    raise SystemExit(f"unknown system {name!r}; use floor, passthrough, passthrough-httpx, tokenport, litellm or portkey")


def check_tokenport_ledger(run: Run) -> str:
    """Read back what the metered calls wrote: every call settled, and the ledger balanced."""
    from sqlalchemy import func, select

    from marketplace import ledger
    from marketplace.db import Database
    from marketplace.models import Generation

    fixture = run.tokenport_fixture  # type: ignore[attr-defined]
    db = Database(fixture.database_url)
    try:
        with db.session() as session:
            statuses = dict(session.execute(select(Generation.status, func.count()).group_by(Generation.status)).all())
            totals = ledger.read_totals(session)
            charged = session.scalar(select(func.coalesce(func.sum(Generation.cost_nano_usd), 0)))
            balance = ledger.read_balance(session, ledger.get_buyer_account(session, fixture.buyer_account_id).id)
    finally:
        db.dispose()
    return "\n".join(
        [
            "### Tokenport's ledger after its runs",
            "",
            f"- generations by status: {', '.join(f'{status} {count}' for status, count in sorted(statuses.items()))}",
            f"- charged in total: {charged} nano-USD; buyer balance {balance.posted_nano_usd} nano-USD posted, "
            f"{balance.pending_debits_nano_usd} nano-USD still held",
            f"- ledger balanced: {totals.balanced}; constrained accounts below zero: {totals.negative_constrained_accounts}",
        ]
    )


def aims_section(points: list[Point], rate: int) -> str:
    closed = [point for point in points if point.system == "Tokenport" and point.load == "c=16" and point.mode == "non-stream"]
    rows = []
    if closed:
        tokenport = closed[0].result.throughput_rps
        for baseline, factor, label in (("LiteLLM", 10.0, ">= 10x LiteLLM"), ("Portkey", 3.0, ">= 3x Portkey"), ("pass-through", 0.5, ">= 50% of pass-through")):
            other = report.find(points, baseline, "non-stream", "c=16")
            if other is None:
                rows.append([label, "not measured", ""])
                continue
            ratio = tokenport / other.throughput_rps
            rows.append([label, f"{ratio:.2f}x", "met" if ratio >= factor else "not met"])
    tokenport_rate = report.find(points, "Tokenport", "non-stream", f"{rate} req/s")
    floor_rate = report.find(points, report.FLOOR, "non-stream", f"{rate} req/s")
    if tokenport_rate is not None and floor_rate is not None:
        overhead_ms = (tokenport_rate.p99_us - floor_rate.p99_us) / 1000
        rows.append([f"overhead p99 <= 2 ms at {rate} req/s", f"{overhead_ms:.2f} ms", "met" if overhead_ms <= 2 else "not met"])
    return report.table(["aim (non-streaming, c=16)", "reached", ""], rows)


def run_extras(run: Run) -> None:
    from bench import ledger_bench, watcher_bench

    run.say("measuring ledger holds and posts on PostgreSQL")
    run.sections.append(ledger_bench.run())
    run.say("measuring the deposit watcher on anvil")
    run.sections.append(watcher_bench.run())
    settlement = BENCH_DIR / "settlement_tree.py"
    if settlement.is_file():
        run.say("measuring the settlement tree (bench/settlement_tree.py)")
        completed = subprocess.run([sys.executable, "-m", "bench.settlement_tree"], capture_output=True, text=True)
        output = completed.stdout.strip() or completed.stderr.strip()
        # The script prints plain text with aligned columns, kept as it is in a code block.
        run.sections.append(f"### Settlement tree (bench/settlement_tree.py, exit {completed.returncode})\n\n```\n{output}\n```")
    else:
        run.sections.append("### Settlement tree\n\nNot measured: bench/settlement_tree.py is not present.")


def render(run: Run, elapsed_s: float) -> str:
    args = run.args
    parts = [
        f"## Run of {run.started_at:%Y-%m-%d %H:%M} UTC",
        "",
        f"Command: `{' '.join(['python -m bench', *sys.argv[1:]])}`",
        "",
        f"Machine: {machine_description()}. Tools: {tool_versions()}.",
        "",
        f"Each closed-loop run sends {args.requests} requests from wrk (one thread) at the given number of connections, "
        f"after {WARMUP_REQUESTS} warm-up requests per mode; each open-loop run sends {args.rate_requests} requests from hey "
        f"at {args.rate} req/s. Every server is one process; one server runs at a time, beside the mock upstream. "
        "Overhead is a system's latency percentile minus the floor's same percentile at the same load. hey reports "
        "latency to 0.1 ms.",
        "",
        "### Proxies",
        "",
        report.proxy_table(run.points),
        "",
        "### Ratios of throughput",
        "",
        report.ratio_table(run.points, "Tokenport", ["LiteLLM", "Portkey", "pass-through"]),
        "",
        "### Aims",
        "",
        aims_section(run.points, args.rate),
    ]
    for section in run.sections:
        parts += ["", section]
    if run.notes:
        parts += ["", "### Notes", ""] + [f"- {note}" for note in run.notes]
    parts += ["", f"The run took {elapsed_s:.0f} s; logs are in {run.log_dir.relative_to(BENCH_DIR.parent)}."]
    return "\n".join(parts) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    require_tool("wrk")
    require_tool("hey")
    run = Run(args)
    started = time.monotonic()
    run_proxies(run)
    if not args.skip_extras:
        run_extras(run)
    text = render(run, time.monotonic() - started)
    print(text)
    (run.log_dir / "report.md").write_text(text)
    if args.output is not None:
        args.output.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
