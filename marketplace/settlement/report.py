"""`tokenport audit` output: run the verifier with progress bars and print its report.

This module must not import the database layer: an auditor runs it with no database.
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from requests.exceptions import RequestException
from web3.exceptions import Web3Exception

from marketplace.settlement.proof import check_proof_file
from marketplace.settlement.verify import VerificationReport, connect_clients, verify_export_file

# Beyond this many mismatches the report prints a count per check instead of every line.
MAX_PRINTED_MISMATCHES = 200


def parse_chain_rpcs(values: list[str]) -> dict[int, str]:
    """Parse ``--chain-rpc CHAIN_ID=URL`` options. Raises ValueError naming the bad value."""
    urls = {}
    for value in values:
        chain_text, separator, url = value.partition("=")
        if not separator or not chain_text.isdigit() or not url:
            raise ValueError(f"invalid --chain-rpc {value!r}: expected CHAIN_ID=URL, such as 8453=https://rpc.example")
        urls[int(chain_text)] = url
    return urls


def _format_usd(nano_usd: int) -> str:
    whole, fraction = divmod(nano_usd, 10**9)
    return f"${whole:,}.{fraction:09d}"


def print_report(console: Console, report: VerificationReport) -> None:
    header = report.header
    if header is not None:
        table = Table(title=f"Settlement period {header.period_id}", show_header=False)
        table.add_row("chain / registry", f"{header.chain_id} / {header.registry_address}")
        table.add_row("period", f"[{header.from_timestamp}, {header.to_timestamp}) Unix seconds")
        table.add_row("committed at block", str(report.committed_at_block))
        table.add_row("lines read", f"{report.line_count:,}")
        table.add_row("leaves by type", ", ".join(f"{kind} {count:,}" for kind, count in sorted(report.record_counts.items())) or "none")
        table.add_row("deposits / payouts checked on-chain", f"{report.deposits_checked:,} / {report.payouts_checked:,}")
        table.add_row("liabilities", f"{report.total_liabilities_nano_usd:,} nano-USD ({_format_usd(report.total_liabilities_nano_usd)})")
        table.add_row("reserves", f"{report.total_reserves_nano_usd:,} nano-USD ({_format_usd(report.total_reserves_nano_usd)})")
        for reading in report.reserves:
            table.add_row(
                f"  chain {reading.chain_id} holder {reading.holder_address}",
                f"{reading.amount_units:,} units of {reading.token_address} at block {reading.block}",
            )
        console.print(table)

    if report.ok:
        console.print("[green]verified: every root, total, record and reserve matches the chain[/green]")
        return
    console.print(f"[red]{len(report.mismatches)} mismatches[/red]")
    for mismatch in report.mismatches[:MAX_PRINTED_MISMATCHES]:
        console.print(f"[red]MISMATCH[/red] {mismatch}", markup=True, highlight=False, soft_wrap=True)
    hidden = report.mismatches[MAX_PRINTED_MISMATCHES:]
    if hidden:
        counts: dict[str, int] = {}
        for mismatch in hidden:
            counts[mismatch.check] = counts.get(mismatch.check, 0) + 1
        console.print(f"... and {len(hidden)} more: " + ", ".join(f"{check} {count}" for check, count in sorted(counts.items())))


def run_verify(console: Console, export: Path, rpc_url: str, chain_rpcs: list[str], min_confirmations: int) -> int:
    """Verify an export and print the report. Returns the exit code: 0 verified, 1 not, 2 no chain."""
    try:
        clients = connect_clients(rpc_url, parse_chain_rpcs(chain_rpcs))
    except (RequestException, Web3Exception) as exc:
        console.print(f"[red]error:[/red] cannot reach the RPC endpoint: {exc}", highlight=False)
        return 2
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    try:
        with Progress(*columns, console=console, transient=False) as progress:
            report = verify_export_file(str(export), clients, min_confirmations=min_confirmations, progress=progress)
    except (RequestException, Web3Exception) as exc:
        console.print(f"[red]error:[/red] the RPC endpoint failed during verification, so nothing was concluded: {exc}", highlight=False)
        return 2
    print_report(console, report)
    return 0 if report.ok else 1


def run_verify_proof(console: Console, proof_path: Path, rpc_url: str) -> int:
    """Check one inclusion proof against the chain and print the result. Returns the exit code."""
    check = check_proof_file(str(proof_path), rpc_url)
    if check.proof is not None:
        proof = check.proof
        console.print(f"{proof.leaf.name} in the {proof.tree} tree of period {proof.period_id}, registry {proof.registry_address} on chain {proof.chain_id}")
    if check.ok:
        console.print("[green]verified: the proof leads to the root committed on-chain[/green]")
        return 0
    for problem in check.problems:
        console.print(f"[red]MISMATCH[/red] {problem}", highlight=False, soft_wrap=True)
    return 1
