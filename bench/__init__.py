"""Benchmarks of the metering proxy, the ledger and the deposit watcher; run with `python -m bench`."""
