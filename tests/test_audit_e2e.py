"""End to end: the demo story, a supplier payout and one closed period, audited on anvil.

The period is committed to a SettlementRegistry. Then the auditor's command, the public audit
API and a buyer's inclusion proof are checked against the chain, with no database on their side.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from rich.console import Console
from web3 import Web3

from chain.contracts import contract_at
from chain.devchain import DEV_BUYER, DEV_DEPLOYER, DEV_SUPPLIER_PAYOUT, DEV_TREASURY, mine_blocks
from chain.payouts import PayoutSender
from chain.registry import deploy_registry, read_period
from marketplace.api.app import create_app
from marketplace.db import Database
from marketplace.demo import _story
from marketplace.devenv import DevEnvironment, start_dev_environment
from marketplace.models import LedgerAccount
from marketplace.servers import BackgroundServer
from marketplace.settings import Settings
from marketplace.settlement.config import SettlementSettings
from marketplace.settlement.period import SettlementAnchor, close_next_period, close_scheduled_period
from marketplace.settlement.proof import check_proof, check_proof_file
from marketplace.settlement.verify import connect_clients, verify_export_file
from tests.factories import sign_in
from tests.fixtures_app import POSTGRES_URL, reset_postgres

pytestmark = pytest.mark.anvil

DEMO_CREDIT_NANO_USD = 5_000_000_000
# The two demo calls cost 12,072 and 11,856 nano-USD; the supplier keeps 95% of each, rounded up.
DEMO_USAGE_NANO_USD = 12_072 + 11_856
SUPPLIER_EARNINGS_NANO_USD = 11_469 + 11_264
PAYOUT_UNITS = 22


@dataclass
class AuditedMarketplace:
    env: DevEnvironment
    settings: Settings
    db: Database
    server: BackgroundServer
    anchor: SettlementAnchor
    export_path: Path
    buyer_account_id: int
    workdir: Path

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.server.url, timeout=30, trust_env=False)


def wait_past(timestamp: int, w3: Web3) -> None:
    """Wait until the wall clock, and so anvil's next block, is past ``timestamp``, and mine it."""
    time.sleep(max(0.0, timestamp + 1.05 - time.time()))
    mine_blocks(w3, 1)


def close_period_now(market: AuditedMarketplace) -> int:
    to_timestamp = math.ceil(time.time()) + 1
    wait_past(to_timestamp, market.env.w3)
    period = close_next_period(market.db, market.anchor, chains=market.settings.chains, to_timestamp=to_timestamp, export_dir=market.workdir)
    assert period is not None and period.status == "committed"
    return period.period_id


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def market(request, tmp_path_factory) -> Iterator[AuditedMarketplace]:
    workdir = tmp_path_factory.mktemp(f"audit-{request.param}")
    if request.param == "postgres":
        reset_postgres(POSTGRES_URL)
        database_url = POSTGRES_URL
    else:
        database_url = f"sqlite:///{workdir / 'tokenport.db'}"
    env = start_dev_environment(confirmations=3)
    settings = Settings(database_url=database_url, chains=[env.chain], payout_threshold_nano_usd=1)
    db = Database(database_url)
    server = BackgroundServer(create_app(settings, db), name="tokenport-api").start()
    try:
        _story(Console(file=open(os.devnull, "w")), env, settings, db, server)

        payouts = PayoutSender(db, settings, env.chain, env.w3, DEV_TREASURY.local_account())
        assert payouts.run_once().opened == 1
        mine_blocks(env.w3, env.chain.confirmations)
        assert payouts.run_once().confirmed == 1

        operator = DEV_DEPLOYER.local_account()
        anchor = SettlementAnchor(env.w3, deploy_registry(env.w3, operator), operator)
        with db.session() as session:
            buyer = session.query(LedgerAccount).filter_by(code="buyer").one()
        audited = AuditedMarketplace(env, settings, db, server, anchor, workdir / "period-00000001.jsonl", buyer.account_id, workdir)
        assert close_period_now(audited) == 1
        yield audited
    finally:
        server.stop()
        env.stop()
        db.dispose()


def run_cli(*arguments: str) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "COLUMNS": "240"}
    return subprocess.run(
        [sys.executable, "-m", "marketplace.cli", "audit", *arguments], capture_output=True, text=True, timeout=120, env=environment
    )


def test_audit_verify_command_passes_after_demo(market: AuditedMarketplace):
    completed = run_cli("verify", str(market.export_path), "--rpc-url", market.env.anvil.url)

    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert "verified: every root, total, record and reserve matches the chain" in completed.stdout
    assert "deposits / payouts checked on-chain" in completed.stdout
    assert "1 / 1" in completed.stdout


def test_export_holds_the_demo_figures(market: AuditedMarketplace):
    report = verify_export_file(str(market.export_path), connect_clients(market.env.anvil.url))

    assert report.mismatches == []
    assert report.record_counts == {"balance": 3, "usage": 2, "deposit": 1, "payout": 1, "adjustment": 1}
    header = report.header
    assert header.total_deposits_nano_usd == DEMO_CREDIT_NANO_USD
    assert header.total_usage_nano_usd == DEMO_USAGE_NANO_USD
    assert header.total_payouts_nano_usd == PAYOUT_UNITS * 1_000
    buyer_balance = DEMO_CREDIT_NANO_USD - DEMO_USAGE_NANO_USD
    supplier_balance = SUPPLIER_EARNINGS_NANO_USD - PAYOUT_UNITS * 1_000
    assert header.total_liabilities_nano_usd == buyer_balance + supplier_balance
    assert report.total_reserves_nano_usd == DEMO_CREDIT_NANO_USD - PAYOUT_UNITS * 1_000


def test_committed_balances_equal_the_ledger(market: AuditedMarketplace):
    lines = market.export_path.read_text().splitlines()
    balances = {json.loads(line)["fields"]["account"]: int(json.loads(line)["fields"]["balance_nano_usd"]) for line in lines if '"type":"balance"' in line}
    with market.db.session() as session:
        ledger = {
            account.name: account.credits_posted_nano_usd - account.debits_posted_nano_usd
            for account in session.query(LedgerAccount).filter(LedgerAccount.code.in_(["buyer", "supplier_payable", "payout_clearing"]))
        }

    assert balances == ledger


@pytest.mark.parametrize(("line_type", "field"), [("usage", "completion_tokens"), ("balance", "balance_nano_usd"), ("deposit", "amount_units"), ("payout", "to_address")])
def test_audit_verify_command_names_a_changed_record(market: AuditedMarketplace, tmp_path: Path, line_type: str, field: str):
    lines = market.export_path.read_text().splitlines(keepends=True)
    number = next(index for index, line in enumerate(lines) if json.loads(line)["type"] == line_type)
    data = json.loads(lines[number])
    original = data["fields"][field]
    data["fields"][field] = DEV_BUYER.address if field == "to_address" else str(int(original) + 1)
    lines[number] = json.dumps(data) + "\n"
    changed = tmp_path / "changed.jsonl"
    changed.write_text("".join(lines))

    completed = run_cli("verify", str(changed), "--rpc-url", market.env.anvil.url)

    assert completed.returncode == 1, completed.stdout
    assert f"(line {number + 1})" in completed.stdout
    assert "MISMATCH" in completed.stdout


def test_buyer_balance_proof_verifies_with_one_rpc(market: AuditedMarketplace, tmp_path: Path):
    client = market.client()
    token = sign_in(client, market.settings, DEV_BUYER)["session_token"]

    response = client.get("/v1/audit/periods/1/proofs/balances", headers={"authorization": f"Bearer {token}"})

    assert response.status_code == 200, response.text
    proofs = response.json()["data"]
    assert [proof["fields"] for proof in proofs] == [
        {"account": f"buyer:{market.buyer_account_id}", "balance_nano_usd": str(DEMO_CREDIT_NANO_USD - DEMO_USAGE_NANO_USD)}
    ]
    proof_path = tmp_path / "balance-proof.json"
    proof_path.write_text(json.dumps(proofs[0]))
    check = check_proof_file(str(proof_path), market.env.anvil.url)
    assert check.problems == []
    completed = run_cli("verify-proof", str(proof_path), "--rpc-url", market.env.anvil.url)
    assert completed.returncode == 0, completed.stdout + completed.stderr

    forged = {**proofs[0], "fields": {**proofs[0]["fields"], "balance_nano_usd": str(DEMO_CREDIT_NANO_USD)}}
    forged_check = check_proof(forged, market.env.w3)
    assert "the proof does not lead to the committed balances root" in forged_check.problems


def test_buyer_record_proofs_cover_usage_and_deposit(market: AuditedMarketplace):
    client = market.client()
    token = sign_in(client, market.settings, DEV_BUYER)["session_token"]
    headers = {"authorization": f"Bearer {token}"}

    usage = client.get("/v1/audit/periods/1/proofs/records", params={"type": "usage"}, headers=headers).json()
    everything = client.get("/v1/audit/periods/1/proofs/records", params={"limit": 2}, headers=headers).json()
    rest = client.get("/v1/audit/periods/1/proofs/records", params={"limit": 2, "after_index": everything["next_after_index"]}, headers=headers).json()

    assert sorted(int(proof["fields"]["cost_nano_usd"]) for proof in usage["data"]) == [11_856, 12_072]
    assert [proof["type"] for proof in everything["data"] + rest["data"]] == ["usage", "usage", "deposit"]
    assert rest["next_after_index"] is None
    for proof in everything["data"] + rest["data"]:
        assert check_proof(proof, market.env.w3).problems == []


def test_supplier_sees_only_own_proofs(market: AuditedMarketplace):
    client = market.client()
    token = sign_in(client, market.settings, DEV_SUPPLIER_PAYOUT)["session_token"]
    headers = {"authorization": f"Bearer {token}"}

    balances = client.get("/v1/audit/periods/1/proofs/balances", headers=headers).json()["data"]
    records = client.get("/v1/audit/periods/1/proofs/records", headers=headers).json()["data"]

    assert [proof["fields"]["account"] for proof in balances] == ["supplier:1"]
    assert sorted(proof["type"] for proof in records) == ["adjustment", "payout"]


def test_proofs_need_a_session(market: AuditedMarketplace):
    response = market.client().get("/v1/audit/periods/1/proofs/balances")

    assert response.status_code == 401


def test_periods_api_lists_the_committed_period(market: AuditedMarketplace):
    client = market.client()

    listed = client.get("/v1/audit/periods").json()["data"]
    period = client.get("/v1/audit/periods/1").json()
    stored = read_period(contract_at(market.env.w3, "SettlementRegistry", period["registry_address"]), 1)

    assert listed[-1] == period
    assert period["ledger_root"] == "0x" + stored.commitment.ledger_root.hex()
    assert period["balances_root"] == "0x" + stored.commitment.balances_root.hex()
    assert period["total_liabilities_nano_usd"] == stored.commitment.total_liabilities_nano_usd
    receipt = market.env.w3.eth.get_transaction_receipt(period["commit_tx_hash"])
    assert receipt["blockNumber"] == stored.committed_at_block == period["commit_block_number"]


def test_export_download_equals_the_written_file(market: AuditedMarketplace):
    client = market.client()

    response = client.get("/v1/audit/periods/1/export")
    period = client.get("/v1/audit/periods/1").json()

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/x-ndjson")
    assert response.content == market.export_path.read_bytes()
    assert hashlib.sha256(response.content).hexdigest() == period["export_sha256"]


def test_unknown_period_is_not_found(market: AuditedMarketplace):
    response = market.client().get("/v1/audit/periods/99")

    assert response.status_code == 404
    assert response.json()["error"]["message"] == "settlement period 99 is not committed; list committed periods at GET /v1/audit/periods"


def test_reserves_api_covers_liabilities(market: AuditedMarketplace):
    body = market.client().get("/v1/audit/reserves").json()

    assert body["covered"] is True
    assert body["total_reserves_nano_usd"] == DEMO_CREDIT_NANO_USD - PAYOUT_UNITS * 1_000
    assert body["liabilities"]["buyers_nano_usd"] == DEMO_CREDIT_NANO_USD - DEMO_USAGE_NANO_USD
    assert body["liabilities"]["suppliers_nano_usd"] == SUPPLIER_EARNINGS_NANO_USD - PAYOUT_UNITS * 1_000
    assert [(row["holder_address"], row["amount_units"]) for row in body["reserves"]] == [(DEV_TREASURY.address, str(5_000_000 - PAYOUT_UNITS))]
    assert [(row["token_address"], row["amount_units"]) for row in body["reserves_by_token"]] == [(market.env.token.address, str(5_000_000 - PAYOUT_UNITS))]


def test_no_period_is_due_right_after_one_closed(market: AuditedMarketplace):
    period = close_next_period(market.db, market.anchor, chains=market.settings.chains, period_s=3_600, close_delay_s=300)

    assert period is None


def test_second_period_verifies_with_opening_balances(market: AuditedMarketplace):
    client = market.client()
    token = sign_in(client, market.settings, DEV_BUYER)["session_token"]
    key = client.post("/v1/keys", json={"name": "second"}, headers={"authorization": f"Bearer {token}"}).json()["key"]
    response = client.post(
        "/v1/chat/completions",
        json={"model": "deepseek/deepseek-chat", "messages": [{"role": "user", "content": "Once more"}], "max_tokens": 4},
        headers={"authorization": f"Bearer {key}"},
    )
    assert response.status_code == 200, response.text

    period_id = close_period_now(market)
    report = verify_export_file(str(market.workdir / f"period-{period_id:08d}.jsonl"), connect_clients(market.env.anvil.url))

    assert report.mismatches == []
    assert report.record_counts["opening_balance"] == 3
    assert report.record_counts["usage"] == 1


def test_scheduled_close_does_nothing_without_configuration(market: AuditedMarketplace):
    assert close_scheduled_period(market.db, market.settings, SettlementSettings()) is None
