"""`tokenport serve`: the API with the embedded development setup, or on configured chains."""

from __future__ import annotations

import atexit
import signal
import sys
from pathlib import Path

import uvicorn
from rich.console import Console

from chain.devchain import DEV_BUYER, DEV_SUPPLIER_PAYOUT
from marketplace.api.app import create_app
from marketplace.db import Database
from marketplace import listings
from marketplace.demo import (
    DEMO_LIST_INPUT_MICRO_USD_PER_MTOK,
    DEMO_LIST_OUTPUT_MICRO_USD_PER_MTOK,
    DEMO_MODEL,
    DEMO_OFFER_INPUT_MICRO_USD_PER_MTOK,
    DEMO_OFFER_OUTPUT_MICRO_USD_PER_MTOK,
)
from marketplace.devenv import ChainPoller, DevEnvironment, start_dev_environment
from marketplace.models import Account, Wallet
from marketplace.settings import Settings


def serve_production(settings: Settings, host: str, port: int) -> None:
    uvicorn.run(create_app(settings), host=host, port=port, log_level="info")


def _print_welcome(console: Console, env: DevEnvironment, settings: Settings, url: str) -> None:
    console.rule("Tokenport development marketplace")
    console.print(f"API:            {url}  (OpenAPI docs at {url}/docs)")
    console.print(f"Database:       {settings.database_url}  (development data starts empty on every run)")
    console.print(f"Chain (anvil):  {env.anvil.url}  chain id {env.chain.chain_id}, {env.chain.confirmations} confirmations")
    console.print(f"USDC (test):    {env.token.address}")
    console.print(f"Treasury:       {env.chain.treasury_address}")
    console.print(f"Mock upstream:  {env.mock_base_url}  credential {env.mock_api_key}")
    console.print(f"Demo buyer:     {DEV_BUYER.address}  holds 100 test USDC")
    console.print(f"[yellow]Development-only private key of the demo buyer:[/yellow] {DEV_BUYER.private_key}")
    console.print(f"Listed:         {DEMO_MODEL} from the demo supplier, served by the mock upstream")
    console.print("Try it:")
    console.print(f"  curl {url}/v1/offers")
    console.print("  tokenport demo      # the whole story, end to end, in a fresh sandbox")
    console.print("  Sign in: POST /v1/auth/nonce, then POST /v1/auth/verify with an EIP-4361 message signed by the demo key.")


DEV_BLOCK_TIME_S = 1


def _reset_sqlite(database_url: str) -> None:
    """Delete the development SQLite file: each start brings a new chain, so old deposits would
    point at blocks that no longer exist."""
    path = Path(database_url.removeprefix("sqlite:///"))
    for candidate in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        candidate.unlink(missing_ok=True)


def _seed_demo_listing(db: Database, settings: Settings, env: DevEnvironment) -> None:
    """List deepseek/deepseek-chat from the demo supplier, served by the mock upstream."""
    with db.transaction() as session:
        account = Account()
        session.add(account)
        session.flush()
        session.add(Wallet(account_id=account.id, address=DEV_SUPPLIER_PAYOUT.address))
        supplier = listings.register_supplier(session, account.id, "Demo Supplier", DEV_SUPPLIER_PAYOUT.address)
        listings.create_listing(
            session,
            settings,
            supplier,
            listings.ListingInput(
                model=DEMO_MODEL,
                upstream_base_url=env.mock_base_url,
                upstream_credential=env.mock_api_key,
                upstream_model="mock-1",
                upstream_protocol="openai",
                list_input_micro_usd_per_mtok=DEMO_LIST_INPUT_MICRO_USD_PER_MTOK,
                list_output_micro_usd_per_mtok=DEMO_LIST_OUTPUT_MICRO_USD_PER_MTOK,
                offer_input_micro_usd_per_mtok=DEMO_OFFER_INPUT_MICRO_USD_PER_MTOK,
                offer_output_micro_usd_per_mtok=DEMO_OFFER_OUTPUT_MICRO_USD_PER_MTOK,
            ),
        )


def serve_development(console: Console, settings: Settings, host: str, port: int, anvil_port: int, mock_port: int) -> None:
    env = start_dev_environment(anvil_port=anvil_port, mock_port=mock_port, block_time_s=DEV_BLOCK_TIME_S)
    # Stop anvil and the mock even when uvicorn exits on a signal rather than through `finally`.
    atexit.register(env.stop)
    settings = settings.model_copy(update={"chains": [env.chain], "siwe_domain": f"{host}:{port}", "siwe_uri": f"http://{host}:{port}"})
    if settings.database_url.startswith("sqlite:///"):
        _reset_sqlite(settings.database_url)
    db = Database(settings.database_url)
    app = create_app(settings, db)
    _seed_demo_listing(db, settings, env)
    poller = ChainPoller(db, env.chain, env.w3, app.state.chain_heads)
    poller.start()
    _print_welcome(console, env, settings, f"http://{host}:{port}")
    # uvicorn re-raises SIGTERM after its shutdown; this handler turns it into SystemExit so the
    # `finally` below stops anvil instead of the process dying with it still running.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        uvicorn.run(app, host=host, port=port, log_level="info")
    finally:
        poller.stop()
        env.stop()
