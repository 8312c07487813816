"""Sample a server process with py-spy and summarize where its threads spend their time."""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

SAMPLE_RATE_HZ = 250
TOP_FUNCTIONS = 25


def start_py_spy(pid: int, output_stem: Path) -> subprocess.Popen:
    """Start recording `pid` into `<output_stem>.txt` as collapsed stacks, one line per stack.

    Only the thread holding the GIL is sampled, so the shares are of the CPU time the process
    spends in Python, not of time spent waiting for the database or the network.
    """
    py_spy = shutil.which("py-spy")
    if py_spy is None:
        raise RuntimeError("py-spy is not installed; install the bench extra: pip install -e '.[bench]'")
    command = [py_spy, "record", "--pid", str(pid), "--format", "raw", "--rate", str(SAMPLE_RATE_HZ), "--gil", "-o", f"{output_stem}.txt"]
    profiler = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # py-spy needs a moment to attach before the load starts.
    time.sleep(1.0)
    return profiler


def stop_py_spy(profiler: subprocess.Popen) -> None:
    profiler.send_signal(signal.SIGINT)
    try:
        profiler.wait(timeout=30)
    except subprocess.TimeoutExpired:
        profiler.kill()
        profiler.wait()


def summarize_collapsed(path: Path) -> str:
    """The functions with the most samples, inclusive and exclusive, as a Markdown section.

    Each line of py-spy's raw output is `frame;frame;...;frame count`, outermost first. A
    function is counted once per stack for the inclusive share, however often it recurs.
    """
    inclusive: Counter[str] = Counter()
    exclusive: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_short(frame) for frame in stack.split(";")]
        total += count
        for frame in set(frames):
            inclusive[frame] += count
        exclusive[frames[-1]] += count
    if total == 0:
        return "### Profile of Tokenport\n\npy-spy recorded no samples."

    rows = [
        f"| {frame} | {100 * inclusive[frame] / total:.1f} | {100 * exclusive[frame] / total:.1f} |"
        for frame, _ in inclusive.most_common(TOP_FUNCTIONS)
    ]
    return "\n".join(
        [
            f"### Profile of Tokenport (py-spy --gil, {SAMPLE_RATE_HZ} Hz, {total} samples of the thread holding the GIL)",
            "",
            "| function | inclusive % | exclusive % |",
            "| --- | --- | --- |",
            *rows,
        ]
    )


def _short(frame: str) -> str:
    """`function (path/to/module.py:line)` becomes `function (module.py)`."""
    name, _, location = frame.partition(" (")
    file_name = location.split(":", 1)[0].rsplit("/", 1)[-1]
    return f"{name} ({file_name})" if file_name else name
