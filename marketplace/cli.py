"""The `tokenport` command."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import typer
from rich.console import Console

app = typer.Typer(help="Tokenport: an open marketplace for LLM tokens, paid in stablecoins.", no_args_is_help=True)
console = Console()


@app.command()
def serve(
    host: str = typer.Option("127.0.0.1", help="Address the API listens on."),
    port: int = typer.Option(8000, help="TCP port the API listens on."),
    anvil_port: int = typer.Option(8545, help="TCP port of the development chain (anvil), development mode only."),
    mock_port: int = typer.Option(9100, help="TCP port of the mock upstream, development mode only."),
) -> None:
    """Run the marketplace. With no TOKENPORT_CHAINS set, start the embedded development setup."""
    from marketplace.devserver import serve_development, serve_production
    from marketplace.settings import get_settings

    logging.basicConfig(level=os.environ.get("TOKENPORT_LOG_LEVEL", "INFO"))
    settings = get_settings()
    if settings.chains:
        serve_production(settings, host, port)
    else:
        serve_development(console, settings, host, port, anvil_port, mock_port)


@app.command()
def demo() -> None:
    """Run the whole story (list, deposit, confirm, two calls, reconcile) on the embedded defaults."""
    from marketplace.demo import DemoFailure, main

    logging.basicConfig(level=logging.WARNING)
    try:
        main(console)
    except DemoFailure as exc:
        console.print(f"[red]demo failed:[/red] {exc}")
        raise typer.Exit(1) from exc
    console.print("[green]demo finished: every figure matches the ledger[/green]")


@app.command("setup-devchain")
def setup_devchain(rpc_url: str = typer.Option("http://127.0.0.1:8545", help="JSON-RPC URL of a development chain started from anvil's test mnemonic.")) -> None:
    """Deploy the test stablecoin to a running development chain and fund the demo buyer."""
    from web3 import Web3

    from chain.devchain import DEV_BUYER, DEV_TREASURY, deploy_dev_stablecoin, fund_wallet
    from marketplace.devenv import DEMO_BUYER_FUNDING_UNITS, DEMO_ETH_FUNDING_WEI

    w3 = Web3(Web3.HTTPProvider(rpc_url))
    token = deploy_dev_stablecoin(w3)
    fund_wallet(w3, token, DEV_BUYER.address, DEMO_BUYER_FUNDING_UNITS, DEMO_ETH_FUNDING_WEI)
    console.print(f"test USDC at {token.address}, treasury {DEV_TREASURY.address}, demo buyer {DEV_BUYER.address}")


@app.command()
def migrate() -> None:
    """Apply the database migrations to TOKENPORT_DATABASE_URL."""
    from marketplace.db import Database
    from marketplace.schema import upgrade_schema
    from marketplace.settings import get_settings

    upgrade_schema(Database(get_settings().database_url))
    console.print("database schema is up to date")


@app.command()
def reconcile() -> None:
    """Run the reconciliation task once and print its report as JSON."""
    import json

    from marketplace.tasks import reconcile_task

    report = reconcile_task.apply().get()
    console.print_json(json.dumps(report))
    if not report["ok"]:
        raise typer.Exit(1)


@app.command("expire-holds")
def expire_holds() -> None:
    """Release the holds that outlived their calls (a killed API process leaves them), once."""
    from marketplace.tasks import expire_holds_task

    released = expire_holds_task.apply().get()
    console.print(f"released {released} expired holds")


audit_app = typer.Typer(help="Verify settlement periods and inclusion proofs against the chain, with no database.", no_args_is_help=True)
app.add_typer(audit_app, name="audit")


@audit_app.command("verify")
def audit_verify(
    export: Path = typer.Argument(..., exists=True, dir_okay=False, help="Settlement export file (JSON lines), from GET /v1/audit/periods/{id}/export."),
    rpc_url: str = typer.Option(..., help="JSON-RPC URL of the chain that holds the SettlementRegistry."),
    chain_rpc: list[str] = typer.Option([], help="CHAIN_ID=URL of another chain that deposits, payouts or reserves are on; repeatable."),
    min_confirmations: int = typer.Option(1, min=1, help="Least confirmations a deposit or payout must have, above the export's own depth."),
) -> None:
    """Recompute a period from its export and check it against the chain; exit 1 on any mismatch."""
    from marketplace.settlement.report import run_verify

    try:
        code = run_verify(console, export, rpc_url, chain_rpc, min_confirmations)
    except ValueError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
    raise typer.Exit(code)


@audit_app.command("verify-proof")
def audit_verify_proof(
    proof: Path = typer.Argument(..., exists=True, dir_okay=False, help="Inclusion proof (JSON), from GET /v1/audit/periods/{id}/proofs/...."),
    rpc_url: str = typer.Option(..., help="JSON-RPC URL of the chain that holds the SettlementRegistry."),
) -> None:
    """Check one balance or record proof against the root committed on-chain; exit 1 if it fails."""
    from marketplace.settlement.report import run_verify_proof

    raise typer.Exit(run_verify_proof(console, proof, rpc_url))


if __name__ == "__main__":
    app()
