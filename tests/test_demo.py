"""`tokenport demo` runs the whole story and exits 0 with figures that match the ledger."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from marketplace.demo import DEMO_DEPOSIT_UNITS, format_usd

pytestmark = pytest.mark.anvil


def test_demo_exits_zero_and_prints_ledger_figures():
    environment = {**os.environ, "COLUMNS": "200", "TOKENPORT_DATABASE_URL": "sqlite:///unused.db"}
    completed = subprocess.run(
        [sys.executable, "-m", "marketplace.cli", "demo"], capture_output=True, text=True, timeout=180, env=environment
    )

    assert completed.returncode == 0, completed.stdout + completed.stderr
    output = completed.stdout
    assert "credited 5000000000 nano-USD ($5.000000000), balance $5.000000000" in output
    # The mock reports 7 prompt and 12 completion tokens, then 6 and 12 (see providers/mock_upstream.py).
    assert "cost 12072 nano-USD, balance $4.999987928" in output
    assert "cost 11856 nano-USD, balance $4.999976072" in output
    assert "differences 0, ledger balanced: True" in output
    assert "demo finished: every figure matches the ledger" in output
    assert DEMO_DEPOSIT_UNITS == 5_000_000


def test_format_usd_pads_nano_digits():
    assert format_usd(5_000_000_000) == "$5.000000000"
    assert format_usd(12_072) == "$0.000012072"
    assert format_usd(-1) == "-$0.000000001"
