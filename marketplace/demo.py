"""`tokenport demo`: the whole story on the embedded defaults, each step printed with its figures.

A supplier lists deepseek/deepseek-chat at a discount, a buyer signs in with a wallet and sends
5 USDC, the deposit confirms, two calls go through the `openai` SDK, and reconciliation runs.
After each step the printed balance is read back from the ledger, and the demo fails if the
figures disagree.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
from rich.console import Console

from chain.devchain import DEV_BUYER, DEV_SUPPLIER_PAYOUT, mine_blocks, send_token
from chain.watcher import DepositWatcher
from marketplace import ledger
from marketplace.api.app import create_app
from marketplace.db import Database
from marketplace.devenv import DevEnvironment, start_dev_environment
from marketplace.reconciliation import reconcile
from marketplace.servers import BackgroundServer
from marketplace.settings import Settings
from marketplace.wallet_client import build_siwe_message, sign_text

DEMO_MODEL = "deepseek/deepseek-chat"
# DeepSeek's published list price for deepseek-chat, and the supplier's 20% discount.
DEMO_LIST_INPUT_MICRO_USD_PER_MTOK = 270_000
DEMO_LIST_OUTPUT_MICRO_USD_PER_MTOK = 1_100_000
DEMO_OFFER_INPUT_MICRO_USD_PER_MTOK = 216_000
DEMO_OFFER_OUTPUT_MICRO_USD_PER_MTOK = 880_000
DEMO_DEPOSIT_UNITS = 5_000_000  # 5 USDC


class DemoFailure(RuntimeError):
    pass


def format_usd(nano_usd: int) -> str:
    sign = "-" if nano_usd < 0 else ""
    whole, fraction = divmod(abs(nano_usd), 10**9)
    return f"{sign}${whole}.{fraction:09d}"


def sign_in(client: httpx.Client, private_key: str, address: str, settings: Settings, chain_id: int) -> str:
    nonce = client.post("/v1/auth/nonce").json()["nonce"]
    message = build_siwe_message(address=address, nonce=nonce, domain=settings.siwe_domain, uri=settings.siwe_uri, chain_id=chain_id)
    response = client.post("/v1/auth/verify", json={"message": message, "signature": sign_text(private_key, message)})
    response.raise_for_status()
    return response.json()["session_token"]


def create_demo_listing(client: httpx.Client, session_token: str, env: DevEnvironment, payout_address: str) -> dict:
    headers = {"authorization": f"Bearer {session_token}"}
    client.post("/v1/supplier", json={"name": "Demo Supplier", "payout_address": payout_address}, headers=headers).raise_for_status()
    response = client.post(
        "/v1/supplier/listings",
        headers=headers,
        json={
            "model": DEMO_MODEL,
            "upstream_base_url": env.mock_base_url,
            "upstream_credential": env.mock_api_key,
            "upstream_model": "mock-1",
            "list_input_micro_usd_per_mtok": DEMO_LIST_INPUT_MICRO_USD_PER_MTOK,
            "list_output_micro_usd_per_mtok": DEMO_LIST_OUTPUT_MICRO_USD_PER_MTOK,
            "offer_input_micro_usd_per_mtok": DEMO_OFFER_INPUT_MICRO_USD_PER_MTOK,
            "offer_output_micro_usd_per_mtok": DEMO_OFFER_OUTPUT_MICRO_USD_PER_MTOK,
        },
    )
    response.raise_for_status()
    return response.json()


@dataclass
class DemoResult:
    credited_nano_usd: int
    balances_nano_usd: list[int]
    charges_nano_usd: list[int]
    reconciliation: dict


def _ledger_balance(db: Database, account_id: int) -> int:
    with db.transaction() as session:
        return ledger.read_balance(session, ledger.get_buyer_account(session, account_id).id).available_nano_usd


def run_demo(console: Console, workdir: Path) -> DemoResult:
    env = start_dev_environment(confirmations=3)
    settings = Settings(database_url=f"sqlite:///{workdir / 'demo.db'}", chains=[env.chain])
    db = Database(settings.database_url)
    server = BackgroundServer(create_app(settings, db), name="tokenport-api").start()
    try:
        return _story(console, env, settings, db, server)
    finally:
        server.stop()
        env.stop()
        db.dispose()


def _story(console: Console, env: DevEnvironment, settings: Settings, db: Database, server: BackgroundServer) -> DemoResult:
    chain_id = env.chain.chain_id
    watcher = DepositWatcher(db, env.chain, env.w3)
    client = httpx.Client(base_url=server.url, timeout=30)

    console.rule("1. A supplier lists capacity")
    supplier_session = sign_in(client, DEV_SUPPLIER_PAYOUT.private_key, DEV_SUPPLIER_PAYOUT.address, settings, chain_id)
    offer = create_demo_listing(client, supplier_session, env, DEV_SUPPLIER_PAYOUT.address)
    console.print(
        f"{DEMO_MODEL}: input {offer['offer_price']['input_micro_usd_per_mtok']} micro-USD/Mtok "
        f"(list {offer['list_price']['input_micro_usd_per_mtok']}, {offer['discount_bps']['input'] / 100:.2f}% off), "
        f"output {offer['offer_price']['output_micro_usd_per_mtok']} micro-USD/Mtok "
        f"(list {offer['list_price']['output_micro_usd_per_mtok']}, {offer['discount_bps']['output'] / 100:.2f}% off)"
    )

    console.rule("2. A buyer signs in with a wallet and sends 5 USDC")
    buyer_session = sign_in(client, DEV_BUYER.private_key, DEV_BUYER.address, settings, chain_id)
    headers = {"authorization": f"Bearer {buyer_session}"}
    account = client.get("/v1/account", headers=headers).json()
    instructions = client.get("/v1/deposits/instructions", headers=headers).json()["options"][0]
    console.print(f"buyer account {account['account_id']}, wallet {DEV_BUYER.address}")
    console.print(f"payment URI: {instructions['payment_uri']}")
    tx_hash = send_token(env.w3, env.token, DEV_BUYER.private_key, instructions["treasury_address"], DEMO_DEPOSIT_UNITS)
    console.print(f"sent {DEMO_DEPOSIT_UNITS} units (5 USDC) in transaction 0x{bytes(tx_hash).hex()}")

    console.rule("3. The deposit confirms")
    poll = watcher.poll_once()
    deposit = client.get("/v1/deposits", headers=headers).json()["data"][0]
    confirmations = poll.head_block - deposit["block_number"] + 1
    console.print(f"status {deposit['status']}, {confirmations} of {env.chain.confirmations} confirmations")
    if deposit["status"] != "pending":
        raise DemoFailure(f"the deposit should be pending before its confirmations, found {deposit['status']}")
    mine_blocks(env.w3, env.chain.confirmations - confirmations)
    watcher.poll_once()
    deposit = client.get("/v1/deposits", headers=headers).json()["data"][0]
    credited = deposit["amount_nano_usd"]
    balance = _ledger_balance(db, account["account_id"])
    console.print(f"status {deposit['status']}, credited {credited} nano-USD ({format_usd(credited)}), balance {format_usd(balance)}")
    if deposit["status"] != "credited" or balance != credited:
        raise DemoFailure(f"expected a credited deposit and a balance of {credited}, found {deposit['status']} and {balance}")

    console.rule("4. Two calls through the openai SDK")
    key = client.post("/v1/keys", headers=headers, json={"name": "demo"}).json()["key"]
    sdk = openai.OpenAI(base_url=f"{server.url}/v1", api_key=key)
    balances = [balance]
    charges = []

    completion = sdk.chat.completions.create(model=DEMO_MODEL, messages=[{"role": "user", "content": "Say hello to Tokenport"}], max_tokens=16)
    charged = completion.usage.model_extra["cost_nano_usd"]
    balances.append(_ledger_balance(db, account["account_id"]))
    charges.append(charged)
    console.print(f"non-streaming: {completion.choices[0].message.content!r}")
    console.print(
        f"  usage {completion.usage.prompt_tokens} prompt + {completion.usage.completion_tokens} completion tokens, "
        f"cost {charged} nano-USD, balance {format_usd(balances[-1])}"
    )

    stream = sdk.chat.completions.create(model=DEMO_MODEL, messages=[{"role": "user", "content": "Now stream it"}], max_tokens=16, stream=True)
    text, usage = [], None
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            text.append(chunk.choices[0].delta.content)
        if chunk.usage is not None:
            usage = chunk.usage
    if usage is None:
        raise DemoFailure("the stream ended without a usage chunk")
    charged = usage.model_extra["cost_nano_usd"]
    balances.append(_ledger_balance(db, account["account_id"]))
    charges.append(charged)
    console.print(f"streaming: {''.join(text)!r}")
    console.print(
        f"  usage {usage.prompt_tokens} prompt + {usage.completion_tokens} completion tokens, "
        f"cost {charged} nano-USD, balance {format_usd(balances[-1])}"
    )
    for before, after, charge in zip(balances[:-1], balances[1:], charges, strict=True):
        if before - after != charge:
            raise DemoFailure(f"balance fell by {before - after} nano-USD but the call reported {charge}")

    console.rule("5. Reconciliation")
    report = reconcile(db, [(env.chain, env.w3)]).to_dict()
    console.print(
        f"chain deposits {report['chain_deposits_nano_usd']} nano-USD, ledger deposits {report['ledger_deposits_nano_usd']} nano-USD, "
        f"differences {report['difference_count']}, ledger balanced: {report['ledger_balanced']}"
    )
    if not report["ok"]:
        raise DemoFailure(f"reconciliation found differences: {report['differences']}")
    return DemoResult(credited, balances, charges, report)


def main(console: Console | None = None) -> DemoResult:
    console = console or Console()
    with tempfile.TemporaryDirectory(prefix="tokenport-demo-") as workdir:
        return run_demo(console, Path(workdir))
