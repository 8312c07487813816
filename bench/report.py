"""Markdown tables of one benchmark run."""

from __future__ import annotations

from dataclasses import dataclass

from bench.load import LoadResult

FLOOR = "floor (mock direct)"


@dataclass(frozen=True)
class Point:
    """One load run: a system, a mode, and either a concurrency (closed loop) or a rate (open loop)."""

    system: str
    mode: str
    load: str
    result: LoadResult


def _ms(value_us: float) -> str:
    return f"{value_us / 1000:.2f}"


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def find(points: list[Point], system: str, mode: str, load: str) -> LoadResult | None:
    for point in points:
        if (point.system, point.mode, point.load) == (system, mode, load):
            return point.result
    return None


def proxy_table(points: list[Point]) -> str:
    """Throughput and latency per system, mode and load, with overhead over the floor."""
    rows = []
    for point in points:
        result = point.result
        floor = find(points, FLOOR, point.mode, point.load)
        if floor is not None and point.system != FLOOR:
            overhead = [_ms(result.p50_us - floor.p50_us), _ms(result.p90_us - floor.p90_us), _ms(result.p99_us - floor.p99_us)]
        else:
            overhead = ["", "", ""]
        rows.append(
            [
                point.system,
                point.mode,
                point.load,
                str(result.requests),
                str(result.failed),
                f"{result.throughput_rps:,.0f}",
                _ms(result.p50_us),
                _ms(result.p90_us),
                _ms(result.p99_us),
                *overhead,
            ]
        )
    header = [
        "system", "mode", "load", "requests", "failed", "throughput (req/s)",
        "p50 (ms)", "p90 (ms)", "p99 (ms)", "overhead p50 (ms)", "overhead p90 (ms)", "overhead p99 (ms)",
    ]
    return table(header, rows)


def ratio_table(points: list[Point], subject: str, baselines: list[str]) -> str:
    """Throughput of `subject` divided by each baseline's, per mode and closed-loop load."""
    rows = []
    seen: set[tuple[str, str]] = set()
    for point in points:
        key = (point.mode, point.load)
        if point.system != subject or key in seen or not point.load.startswith("c="):
            continue
        seen.add(key)
        row = [point.mode, point.load]
        for baseline in baselines:
            other = find(points, baseline, point.mode, point.load)
            if other is None or other.throughput_rps == 0:
                row.append("not measured")
            else:
                row.append(f"{point.result.throughput_rps / other.throughput_rps:.2f}")
        rows.append(row)
    return table(["mode", "load", *[f"{subject} / {baseline}" for baseline in baselines]], rows)
