"""Sample a server process with py-spy and summarize where its threads spend their time."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

SAMPLE_RATE_HZ = 250
TOP_ROWS = 15


def start_py_spy(pid: int, output_stem: Path) -> subprocess.Popen:
    """Start recording `pid` into `<output_stem>.txt` as collapsed stacks, one line per stack.

    Only the thread holding the GIL is sampled, so the shares are of the CPU time the process
    spends in Python, not of time spent waiting for the database or the network.
    """
    # The bench extra installs py-spy beside this interpreter, which need not be on PATH.
    beside = Path(sys.executable).parent / "py-spy"
    py_spy = str(beside) if beside.exists() else shutil.which("py-spy")
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
    """Where the sampled time went, as a Markdown section: by component (the package or project
    folder of the innermost frame), then by function of our own code, inclusive.

    Each line of py-spy's raw output is `frame;frame;...;frame count`, outermost first, and a
    frame is `function (file:line)`. A function is counted once per stack for its inclusive share.
    """
    by_component: Counter[str] = Counter()
    own_inclusive: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        total += count
        by_component[_component(frames[-1])] += count
        for frame in {_short(frame) for frame in frames if _component(frame) in OWN_COMPONENTS}:
            own_inclusive[frame] += count
    if total == 0:
        return "### Profile of Tokenport\n\npy-spy recorded no samples."

    component_rows = [f"| {name} | {100 * count / total:.1f} |" for name, count in by_component.most_common(TOP_ROWS)]
    own_rows = [f"| {frame} | {100 * count / total:.1f} |" for frame, count in own_inclusive.most_common(TOP_ROWS)]
    return "\n".join(
        [
            f"### Profile of Tokenport (py-spy --gil, {SAMPLE_RATE_HZ} Hz, {total} samples of the thread holding the GIL)",
            "",
            "Exclusive share by component, the package or folder of the innermost frame:",
            "",
            "| component | % of samples |",
            "| --- | --- |",
            *component_rows,
            "",
            "Inclusive share of our own functions (marketplace/, providers/):",
            "",
            "| function | % of samples |",
            "| --- | --- |",
            *own_rows,
        ]
    )


OWN_COMPONENTS = ("marketplace", "providers")


def _component(frame: str) -> str:
    """Return the package or project folder of a frame.

    py-spy names files relative to the import path (`sqlalchemy/orm/session.py`,
    `marketplace/proxy.py`, `asyncio/tasks.py`), so the first folder is the component. A module
    at the top of the path (`threading.py`) is its own component.
    """
    location = frame.rpartition(" (")[2].split(":", 1)[0]
    parts = [part for part in location.split("/") if part]
    if "site-packages" in parts:
        parts = parts[parts.index("site-packages") + 1 :]
    return parts[0].removesuffix(".py") if parts else "unknown"


def _short(frame: str) -> str:
    """`function (path/to/module.py:line)` becomes `function (module.py)`."""
    name, _, location = frame.partition(" (")
    file_name = location.split(":", 1)[0].rsplit("/", 1)[-1]
    return f"{name} ({file_name})" if file_name else name
