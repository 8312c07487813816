"""`tokenport serve`: the API with the embedded development setup, or on configured chains."""

from __future__ import annotations

import uvicorn
from rich.console import Console

from chain.devchain import DEV_BUYER
from marketplace.api.app import create_app
from marketplace.db import Database
from marketplace.devenv import ChainPoller, DevEnvironment, start_dev_environment
from marketplace.settings import Settings


def serve_production(settings: Settings, host: str, port: int) -> None:
    uvicorn.run(create_app(settings), host=host, port=port, log_level="info")


def _print_welcome(console: Console, env: DevEnvironment, settings: Settings, url: str) -> None:
    console.rule("Tokenport development marketplace")
    console.print(f"API:            {url}  (OpenAPI docs at {url}/docs)")
    console.print(f"Database:       {settings.database_url}")
    console.print(f"Chain (anvil):  {env.anvil.url}  chain id {env.chain.chain_id}, {env.chain.confirmations} confirmations")
    console.print(f"USDC (test):    {env.token.address}")
    console.print(f"Treasury:       {env.chain.treasury_address}")
    console.print(f"Mock upstream:  {env.mock_base_url}  credential {env.mock_api_key}")
    console.print(f"Demo buyer:     {DEV_BUYER.address}  holds 100 test USDC")
    console.print(f"[yellow]Development-only private key of the demo buyer:[/yellow] {DEV_BUYER.private_key}")
    console.print("Try it:")
    console.print(f"  curl {url}/v1/offers")
    console.print("  tokenport demo      # the whole story, end to end, in a fresh sandbox")
    console.print("  Sign in: POST /v1/auth/nonce, then POST /v1/auth/verify with an EIP-4361 message signed by the demo key.")


def serve_development(console: Console, settings: Settings, host: str, port: int, anvil_port: int, mock_port: int) -> None:
    env = start_dev_environment(anvil_port=anvil_port, mock_port=mock_port)
    settings = settings.model_copy(update={"chains": [env.chain], "siwe_domain": f"{host}:{port}", "siwe_uri": f"http://{host}:{port}"})
    db = Database(settings.database_url)
    app = create_app(settings, db)
    poller = ChainPoller(db, env.chain, env.w3, app.state.chain_heads)
    poller.start()
    _print_welcome(console, env, settings, f"http://{host}:{port}")
    try:
        uvicorn.run(app, host=host, port=port, log_level="info")
    finally:
        poller.stop()
        env.stop()
