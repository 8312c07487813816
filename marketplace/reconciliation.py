"""Reconciliation: the ledger against the chain, and the ledger against itself.

For every configured chain, the report compares each deposit log on-chain, up to the watcher's
cursor, with the net of the ledger's credits and reversals for that log. It checks every
confirmed payout against its transaction receipt. It also compares the treasury's and the
vault's balance of each token with the amount the ledger records for them. Every difference is
reported with its transfer id and amounts.

Alerts are facts that need an operator without being differences: a credited deposit that a
reorganisation reversed (the confirmation depth was too shallow), a buyer who still owes part
of such a reversal, and a payout that was given up.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session
from web3 import Web3

from marketplace import ledger
from marketplace.db import Database
from marketplace.deposits import deposit_transfer_id, units_to_nano_usd
from marketplace.models import Deposit, LedgerAccount, LedgerTransfer, Payout
from marketplace.payouts import PAYOUT_CLEARING, payout_transfer_id
from marketplace.settings import ChainSettings

logger = logging.getLogger(__name__)

# Ledger transfer codes that add to (+1) or take from (-1) the net credit of one deposit log.
_DEPOSIT_CODES = {"deposit": 1, "deposit_reversal": -1, "deposit_shortfall": -1}

_BALANCE_OF_ABI = [
    {
        "name": "balanceOf",
        "type": "function",
        "stateMutability": "view",
        "inputs": [{"name": "account", "type": "address"}],
        "outputs": [{"name": "", "type": "uint256"}],
    }
]


@dataclass
class Difference:
    # missing_in_ledger, missing_on_chain, amount_mismatch, payout_missing_on_chain,
    # payout_amount_mismatch, payout_clearing_mismatch or reserves_below_ledger.
    kind: str
    transfer_id: str
    chain_amount_nano_usd: int
    ledger_amount_nano_usd: int

    @property
    def difference_nano_usd(self) -> int:
        return self.chain_amount_nano_usd - self.ledger_amount_nano_usd


@dataclass
class Alert:
    # deposit_reversed, receivable_outstanding or payout_failed.
    kind: str
    subject: str
    amount_nano_usd: int
    detail: str


@dataclass
class ReserveCheck:
    """The treasury's and the vault's balance of one token, against the amount the ledger records for them."""

    chain_id: int
    token_address: str
    on_chain_nano_usd: int
    ledger_nano_usd: int
    # Deposits of tokens with more than 9 decimals are credited rounded up, by less than one
    # nano-USD each, so the ledger may exceed the holdings by up to this much.
    rounding_allowance_nano_usd: int


@dataclass
class ReconciliationReport:
    ledger_balanced: bool
    ledger_debits_posted_nano_usd: int
    ledger_credits_posted_nano_usd: int
    negative_buyer_balances: int
    chain_deposits_nano_usd: int = 0
    ledger_deposits_nano_usd: int = 0
    unattributed_nano_usd: int = 0
    receivables_nano_usd: int = 0
    payouts_confirmed_nano_usd: int = 0
    payouts_open_nano_usd: int = 0
    differences: list[Difference] = field(default_factory=list)
    alerts: list[Alert] = field(default_factory=list)
    reserves: list[ReserveCheck] = field(default_factory=list)
    scanned_to_block: dict[int, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """No difference, a balanced ledger, and no buyer who owes money after a reversal."""
        return (
            self.ledger_balanced
            and self.negative_buyer_balances == 0
            and not self.differences
            and self.receivables_nano_usd == 0
        )

    def to_dict(self) -> dict:
        data = asdict(self)
        data["ok"] = self.ok
        data["difference_count"] = len(self.differences)
        data["alert_count"] = len(self.alerts)
        data["missing_in_ledger_nano_usd"] = sum(d.difference_nano_usd for d in self.differences if d.kind == "missing_in_ledger")
        data["missing_on_chain_nano_usd"] = sum(-d.difference_nano_usd for d in self.differences if d.kind == "missing_on_chain")
        return data


def _deposit_key(transfer_id: str, code: str) -> tuple[str, int]:
    """Return (tx hash, log index) from an id such as deposit:{chain}:{tx}:{log}[:{reversal count}]."""
    parts = transfer_id.removeprefix(f"{code}:").split(":")
    return parts[1], int(parts[2])


def _ledger_net_deposits(session: Session, chain_id: int) -> dict[tuple[str, int], int]:
    """Return the net ledger credit per deposit log on one chain: credits minus reversals."""
    net: dict[tuple[str, int], int] = {}
    for code, sign in _DEPOSIT_CODES.items():
        rows = session.execute(
            select(LedgerTransfer.id, LedgerTransfer.amount_nano_usd).where(
                LedgerTransfer.code == code, LedgerTransfer.id.startswith(f"{code}:{chain_id}:")
            )
        )
        for transfer_id, amount in rows:
            key = _deposit_key(transfer_id, code)
            net[key] = net.get(key, 0) + sign * int(amount)
    return net


def _rows_with_status(session: Session, chain_id: int, status: str) -> dict[tuple[str, int], Deposit]:
    rows = session.scalars(select(Deposit).where(Deposit.chain_id == chain_id, Deposit.status == status))
    return {(row.tx_hash, row.log_index): row for row in rows}


def _check_deposits(db: Database, chain: ChainSettings, w3: Web3, report: ReconciliationReport) -> None:
    from chain.watcher import DepositWatcher

    watcher = DepositWatcher(db, chain, w3)
    with db.session() as session:
        cursor = watcher.read_cursor(session)
        ledger_net = _ledger_net_deposits(session, chain.chain_id)
        unattributed = _rows_with_status(session, chain.chain_id, "unattributed")
        # After the cursor went back for a reorganisation, a credited deposit can be above it.
        # The scan reaches that deposit, so that it is not reported missing.
        highest_settled = session.scalar(
            select(func.max(Deposit.block_number)).where(
                Deposit.chain_id == chain.chain_id, Deposit.status.in_(("credited", "unattributed"))
            )
        )
    scan_to = max(cursor, highest_settled or -1)
    report.scanned_to_block[chain.chain_id] = scan_to

    # NOTE: every run scans the chain's whole history again, so its cost grows with the chain.
    on_chain: dict[tuple[str, int], int] = {}
    if scan_to >= chain.start_block:
        for _window, logs in watcher.iter_deposit_logs(chain.start_block, scan_to):
            for log in logs:
                on_chain[log.key] = units_to_nano_usd(log.amount_units, log.token_decimals)

    for key, amount in sorted(on_chain.items()):
        if key in unattributed:
            report.unattributed_nano_usd += amount
            continue
        report.chain_deposits_nano_usd += amount
        ledger_amount = ledger_net.get(key, 0)
        transfer_id = deposit_transfer_id(chain.chain_id, *key)
        if ledger_amount == 0:
            report.differences.append(Difference("missing_in_ledger", transfer_id, amount, 0))
        elif ledger_amount != amount:
            report.differences.append(Difference("amount_mismatch", transfer_id, amount, ledger_amount))
    for key, amount in sorted(ledger_net.items()):
        report.ledger_deposits_nano_usd += amount
        if key not in on_chain and amount != 0:
            report.differences.append(Difference("missing_on_chain", deposit_transfer_id(chain.chain_id, *key), 0, amount))


def _check_payouts(chain: ChainSettings, w3: Web3, session: Session, report: ReconciliationReport) -> None:
    from chain.rpc import read_receipt, to_hex

    transfer_topic = Web3.keccak(text="Transfer(address,address,uint256)").to_0x_hex()
    confirmed = session.scalars(select(Payout).where(Payout.chain_id == chain.chain_id, Payout.status == "confirmed"))
    for payout in confirmed:
        assert payout.tx_hash is not None
        transfer_id = payout_transfer_id(payout.chain_id, payout.tx_hash)
        ledger_transfer = session.get(LedgerTransfer, transfer_id)
        ledger_amount = ledger_transfer.amount_nano_usd if ledger_transfer is not None else 0
        report.payouts_confirmed_nano_usd += ledger_amount

        receipt = read_receipt(w3, payout.tx_hash)
        sent_units = 0
        if receipt is not None and receipt["status"] == 1:
            for log in receipt["logs"]:
                topics = [to_hex(topic) for topic in log["topics"]]
                if (
                    Web3.to_checksum_address(log["address"]) == payout.token_address
                    and len(topics) == 3
                    and topics[0] == transfer_topic
                    and Web3.to_checksum_address(bytes.fromhex(topics[2][-40:])) == payout.to_address
                ):
                    sent_units += int.from_bytes(bytes(log["data"]), "big")
        token = chain.token_by_address(payout.token_address)
        decimals = token.decimals if token is not None else 9
        chain_amount = units_to_nano_usd(sent_units, decimals)
        if sent_units == 0:
            report.differences.append(Difference("payout_missing_on_chain", transfer_id, 0, ledger_amount))
        elif chain_amount != ledger_amount:
            report.differences.append(Difference("payout_amount_mismatch", transfer_id, chain_amount, ledger_amount))

    for payout in session.scalars(select(Payout).where(Payout.chain_id == chain.chain_id, Payout.status == "failed")):
        report.alerts.append(Alert("payout_failed", f"payout:{payout.id}", payout.amount_nano_usd, payout.error or ""))


def _check_reserves(chain: ChainSettings, w3: Web3, session: Session, report: ReconciliationReport) -> None:
    holders = [chain.treasury_address] + ([chain.vault_address] if chain.vault_address else [])
    for token in chain.tokens:
        contract = w3.eth.contract(address=token.address, abi=_BALANCE_OF_ABI)
        held_units = sum(contract.functions.balanceOf(holder).call() for holder in holders)
        asset = session.scalar(
            select(LedgerAccount).where(LedgerAccount.name == ledger.chain_asset_account_name(chain.chain_id, token.address))
        )
        # The chain asset account is debited by deposits and credited by payouts and reversals.
        ledger_nano_usd = -ledger.read_balance(session, asset.id).posted_nano_usd if asset is not None else 0
        allowance = 0
        if token.decimals > 9:
            allowance = int(
                session.scalar(
                    select(func.count()).select_from(Deposit).where(
                        Deposit.chain_id == chain.chain_id, Deposit.token_address == token.address, Deposit.status == "credited"
                    )
                )
                or 0
            )
        check = ReserveCheck(chain.chain_id, token.address, units_to_nano_usd(held_units, token.decimals), ledger_nano_usd, allowance)
        report.reserves.append(check)
        if check.on_chain_nano_usd + allowance < ledger_nano_usd:
            report.differences.append(
                Difference("reserves_below_ledger", ledger.chain_asset_account_name(chain.chain_id, token.address), check.on_chain_nano_usd, ledger_nano_usd)
            )


def _check_ledger_alerts(session: Session, report: ReconciliationReport) -> None:
    for deposit in session.scalars(select(Deposit).where(Deposit.reversal_count > 0).order_by(Deposit.id)):
        report.alerts.append(
            Alert(
                "deposit_reversed",
                deposit_transfer_id(deposit.chain_id, deposit.tx_hash, deposit.log_index),
                deposit.amount_nano_usd,
                f"reversed {deposit.reversal_count} time(s), now {deposit.status}; last shortfall "
                f"{deposit.shortfall_nano_usd} nano-USD; {deposit.status_reason or ''}".strip(),
            )
        )
    for account in session.scalars(select(LedgerAccount).where(LedgerAccount.code == "buyer_receivable")):
        owed = -ledger.read_balance(session, account.id).posted_nano_usd
        if owed > 0:
            report.receivables_nano_usd += owed
            report.alerts.append(Alert("receivable_outstanding", account.name, owed, "buyer owes part of a reversed deposit"))

    clearing = session.scalar(select(LedgerAccount).where(LedgerAccount.name == PAYOUT_CLEARING))
    clearing_nano_usd = ledger.read_balance(session, clearing.id).posted_nano_usd if clearing is not None else 0
    open_nano_usd = int(session.scalar(select(func.coalesce(func.sum(Payout.amount_nano_usd), 0)).where(Payout.status == "open")) or 0)
    report.payouts_open_nano_usd = open_nano_usd
    if clearing_nano_usd != open_nano_usd:
        report.differences.append(Difference("payout_clearing_mismatch", PAYOUT_CLEARING, open_nano_usd, clearing_nano_usd))


def reconcile(db: Database, chains: list[tuple[ChainSettings, Web3]]) -> ReconciliationReport:
    """Build the report. It reads the chain and the database and writes nothing."""
    with db.session() as session:
        totals = ledger.read_totals(session)
    report = ReconciliationReport(
        ledger_balanced=totals.balanced,
        ledger_debits_posted_nano_usd=totals.debits_posted_nano_usd,
        ledger_credits_posted_nano_usd=totals.credits_posted_nano_usd,
        negative_buyer_balances=totals.negative_constrained_accounts,
    )

    for chain, w3 in chains:
        _check_deposits(db, chain, w3, report)
        with db.session() as session:
            _check_payouts(chain, w3, session, report)
            _check_reserves(chain, w3, session, report)
    with db.session() as session:
        _check_ledger_alerts(session, report)

    for difference in report.differences:
        logger.error("reconciliation difference: %s", _describe(asdict(difference)))
    for alert in report.alerts:
        logger.warning("reconciliation alert: %s", _describe(asdict(alert)))
    return report


def _describe(fields: dict[str, Any]) -> str:
    return " ".join(f"{name}={value}" for name, value in fields.items())
