"""Reconciliation: the ledger against the chain, and the ledger against itself.

For every configured chain and token, the on-chain Transfer logs into the treasury up to the
watcher's cursor are compared, log by log, with the ledger's deposit credits. A difference is
reported with its transaction, log index and amount. Transfers from wallets that no account has
proved are listed as unattributed: they are on-chain but are, by design, not credited.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field

from sqlalchemy import select
from sqlalchemy.orm import Session
from web3 import Web3

from marketplace import ledger
from marketplace.db import Database
from marketplace.deposits import deposit_transfer_id, units_to_nano_usd
from marketplace.models import Deposit, LedgerTransfer
from marketplace.settings import ChainSettings

logger = logging.getLogger(__name__)


@dataclass
class Difference:
    kind: str  # "missing_in_ledger", "missing_on_chain" or "amount_mismatch"
    transfer_id: str
    chain_amount_nano_usd: int
    ledger_amount_nano_usd: int

    @property
    def difference_nano_usd(self) -> int:
        return self.chain_amount_nano_usd - self.ledger_amount_nano_usd


@dataclass
class ReconciliationReport:
    ledger_balanced: bool
    ledger_debits_posted_nano_usd: int
    ledger_credits_posted_nano_usd: int
    negative_buyer_balances: int
    chain_deposits_nano_usd: int = 0
    ledger_deposits_nano_usd: int = 0
    unattributed_nano_usd: int = 0
    differences: list[Difference] = field(default_factory=list)
    scanned_to_block: dict[int, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.ledger_balanced and self.negative_buyer_balances == 0 and not self.differences

    def to_dict(self) -> dict:
        data = asdict(self)
        data["ok"] = self.ok
        data["difference_count"] = len(self.differences)
        data["missing_in_ledger_nano_usd"] = sum(d.difference_nano_usd for d in self.differences if d.kind == "missing_in_ledger")
        data["missing_on_chain_nano_usd"] = sum(-d.difference_nano_usd for d in self.differences if d.kind == "missing_on_chain")
        return data


def _ledger_deposits(session: Session, chain_id: int) -> dict[str, int]:
    prefix = f"deposit:{chain_id}:"
    rows = session.execute(
        select(LedgerTransfer.id, LedgerTransfer.amount_nano_usd).where(
            LedgerTransfer.code == "deposit", LedgerTransfer.id.startswith(prefix)
        )
    )
    return {row[0]: int(row[1]) for row in rows}


def _unattributed(session: Session, chain_id: int) -> set[str]:
    rows = session.scalars(select(Deposit).where(Deposit.chain_id == chain_id, Deposit.status == "unattributed"))
    return {deposit_transfer_id(row.chain_id, row.tx_hash, row.log_index) for row in rows}


def reconcile(db: Database, chains: list[tuple[ChainSettings, Web3]]) -> ReconciliationReport:
    from chain.watcher import DepositWatcher

    with db.session() as session:
        totals = ledger.read_totals(session)
    report = ReconciliationReport(
        ledger_balanced=totals.balanced,
        ledger_debits_posted_nano_usd=totals.debits_posted_nano_usd,
        ledger_credits_posted_nano_usd=totals.credits_posted_nano_usd,
        negative_buyer_balances=totals.negative_constrained_accounts,
    )

    for chain, w3 in chains:
        watcher = DepositWatcher(db, chain, w3)
        with db.session() as session:
            cursor = watcher.read_cursor(session)
            credited = _ledger_deposits(session, chain.chain_id)
            unattributed = _unattributed(session, chain.chain_id)
        report.scanned_to_block[chain.chain_id] = cursor

        on_chain: dict[str, int] = {}
        if cursor >= chain.start_block:
            for _, _, logs in watcher.fetch_logs(chain.start_block, cursor):
                for log in logs:
                    on_chain[deposit_transfer_id(log.chain_id, log.tx_hash, log.log_index)] = units_to_nano_usd(
                        log.amount_units, log.token_decimals
                    )

        for transfer_id, amount in sorted(on_chain.items()):
            if transfer_id in unattributed:
                report.unattributed_nano_usd += amount
                continue
            report.chain_deposits_nano_usd += amount
            ledger_amount = credited.get(transfer_id)
            if ledger_amount is None:
                report.differences.append(Difference("missing_in_ledger", transfer_id, amount, 0))
            elif ledger_amount != amount:
                report.differences.append(Difference("amount_mismatch", transfer_id, amount, ledger_amount))
        for transfer_id, amount in sorted(credited.items()):
            report.ledger_deposits_nano_usd += amount
            if transfer_id not in on_chain:
                report.differences.append(Difference("missing_on_chain", transfer_id, 0, amount))

    for difference in report.differences:
        logger.error("reconciliation difference", extra=asdict(difference))
    return report
