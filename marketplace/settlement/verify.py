"""The independent verifier: an export file and RPC endpoints in, a list of mismatches out.

It trusts nothing the operator says beyond the export's leaves. From them it recomputes every
leaf hash, both trees, the totals and the ledger root, and compares them with the commitment
that the SettlementRegistry contract stores. It replays the period (opening balances plus the
effect of every record must give the closing balances), checks each deposit and payout against
its chain, and checks that the committed reserve holders hold at least the committed
liabilities. Each mismatch names the record, account or root it concerns.

This module must not import the database layer: an auditor runs it with no database.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from rich.progress import Progress, TaskID
from web3 import Web3
from web3.exceptions import Web3Exception

from chain.contracts import contract_at
from chain.registry import StoredPeriod, read_period
from marketplace.settlement.chain_checks import ChainClients, MissingRpc, ReserveReading, check_transfer_record, read_reserve_at_or_latest
from marketplace.settlement.encoding import ZERO_BYTES32
from marketplace.settlement.export import (
    OPENING_BALANCE,
    ExportFormatError,
    ExportHeader,
    LeafLine,
    compute_ledger_root,
    parse_header_line,
    parse_leaf_line,
)
from marketplace.settlement.leaves import (
    ADJUSTMENT,
    BALANCE,
    DEPOSIT,
    MICROSECONDS_PER_SECOND,
    PAYOUT,
    USAGE,
    Leaf,
    balance_sort_key,
    record_changes,
    record_sort_key,
)
from marketplace.settlement.tree import MerkleSumTree, MerkleTree

logger = logging.getLogger(__name__)

_SECTIONS = {OPENING_BALANCE: 0, BALANCE.name: 1, USAGE.name: 2, DEPOSIT.name: 2, PAYOUT.name: 2, ADJUSTMENT.name: 2}
_SECTION_NAMES = ("opening balances", "balances", "records")
_TIME_FIELDS = {USAGE.name: "settled_at_us", DEPOSIT.name: "credited_at_us", PAYOUT.name: "paid_at_us", ADJUSTMENT.name: "created_at_us"}


@dataclass(frozen=True)
class Mismatch:
    """One thing that does not verify. ``record`` names the record, account, root or field."""

    check: str
    record: str
    message: str

    def __str__(self) -> str:
        return f"[{self.check}] {self.record}: {self.message}"


@dataclass
class VerificationReport:
    """The outcome of verifying one export. It passes when ``mismatches`` is empty."""

    header: ExportHeader | None = None
    mismatches: list[Mismatch] = field(default_factory=list)
    line_count: int = 0
    record_counts: dict[str, int] = field(default_factory=dict)
    deposits_checked: int = 0
    payouts_checked: int = 0
    reserves: list[ReserveReading] = field(default_factory=list)
    total_reserves_nano_usd: int = 0
    total_liabilities_nano_usd: int = 0
    committed_at_block: int | None = None

    @property
    def ok(self) -> bool:
        return not self.mismatches

    def add(self, check: str, record: str, message: str) -> None:
        self.mismatches.append(Mismatch(check, record, message))


class _Progress:
    """Rich progress bars, or nothing when the caller passes no Progress."""

    def __init__(self, progress: Progress | None) -> None:
        self.progress = progress
        self.task: TaskID | None = None
        self.total = 0

    def start(self, description: str, total: int) -> None:
        if self.progress is not None:
            self.task = self.progress.add_task(description, total=total)
            self.total = total

    def advance(self, steps: int = 1) -> None:
        if self.progress is not None and self.task is not None:
            self.progress.advance(self.task, steps)

    def finish(self) -> None:
        """Mark the current bar complete, also when some of its steps were skipped."""
        if self.progress is not None and self.task is not None:
            self.progress.update(self.task, completed=self.total)
            self.task = None


@dataclass
class _Section:
    """The leaves of one section as they are read: their hashes, sums and order."""

    hashes: list[bytes] = field(default_factory=list)
    sums: list[int] = field(default_factory=list)
    previous_key: Any = None


class Verifier:
    """Verifies exports against the chains in ``clients``.

    ``min_confirmations`` raises the depth that each deposit and payout must have above the depth
    the export commits to for its chain; it never lowers it.
    """

    def __init__(self, clients: ChainClients, *, min_confirmations: int = 1, progress: Progress | None = None) -> None:
        self.clients = clients
        self.min_confirmations = min_confirmations
        self.progress = _Progress(progress)

    def verify(self, lines: Iterable[str]) -> VerificationReport:
        """Verify an export given as its lines (a file object works) and return the report."""
        report = VerificationReport()
        iterator = iter(lines)
        first = next(iterator, None)
        if first is None:
            report.add("format", "export", "the file is empty")
            return report
        try:
            header = parse_header_line(first)
        except ExportFormatError as exc:
            report.add("format", "header", str(exc))
            return report
        report.header = header
        report.line_count = 1

        commitment = self._read_commitment(header, report)
        state = _ReplayState(header)
        self._read_leaves(header, iterator, report, state)
        self._check_counts(header, report, state)
        self._check_roots(header, commitment, report, state)
        self._check_flow(report, state)
        self._check_transfers_on_chain(header, report, state)
        self._check_reserves(header, commitment, report, state)
        return report

    # --- the commitment -----------------------------------------------------------------

    def _read_commitment(self, header: ExportHeader, report: VerificationReport) -> _Commitment | None:
        try:
            w3 = self.clients.web3(header.chain_id)
        except MissingRpc:
            served = ", ".join(str(chain_id) for chain_id in sorted(self.clients.connections)) or "none"
            report.add("chain", "registry", f"the registry is on chain {header.chain_id}, but the RPC URLs given serve chain {served}")
            return None
        if not w3.eth.get_code(Web3.to_checksum_address(header.registry_address)):
            report.add("chain", "registry", f"no contract at {header.registry_address} on chain {header.chain_id}")
            return None

        registry = contract_at(w3, "SettlementRegistry", header.registry_address)
        try:
            current = read_period(registry, header.period_id)
            previous = read_period(registry, header.period_id - 1) if header.period_id > 1 else None
        except (Web3Exception, ValueError) as exc:
            report.add("chain", "registry", f"reading period {header.period_id} from {header.registry_address} failed: {exc}")
            return None
        if current is None:
            report.add("chain", f"period {header.period_id}", f"the registry at {header.registry_address} has not committed this period")
            return None
        if header.period_id > 1 and previous is None:
            report.add("chain", f"period {header.period_id - 1}", "the previous period is not committed")
            return None
        report.committed_at_block = current.committed_at_block
        return _Commitment(current, previous)

    # --- the leaves ---------------------------------------------------------------------

    def _read_leaves(self, header: ExportHeader, lines: Iterator[str], report: VerificationReport, state: _ReplayState) -> None:
        total = header.opening_balance_count + header.balance_count + header.record_count
        self.progress.start("Hashing leaves", total)
        section_index = 0
        line_number = 1
        for text in lines:
            line_number += 1
            report.line_count = line_number
            if not text.strip():
                report.add("format", f"line {line_number}", "blank line")
                continue
            try:
                line = parse_leaf_line(line_number, text)
            except ExportFormatError as exc:
                report.add("format", f"line {line_number}", str(exc))
                continue

            line_section = _SECTIONS[line.line_type]
            if line_section < section_index:
                report.add("format", _line_name(line), f"{_SECTION_NAMES[line_section]} must come before {_SECTION_NAMES[section_index]}")
            section_index = max(section_index, line_section)
            self._read_leaf(header, line, report, state, line_section)
            self.progress.advance()
        self.progress.finish()

    def _read_leaf(self, header: ExportHeader, line: LeafLine, report: VerificationReport, state: _ReplayState, section_number: int) -> None:
        section = state.sections[section_number]
        name = _line_name(line)
        if line.index != len(section.hashes):
            report.add("format", name, f"index {line.index} is out of sequence; expected {len(section.hashes)}")
        state.counts[line.line_type] += 1

        if line.error is not None or line.leaf is None:
            report.add("fields", name, f"invalid field: {line.error}")
            section.hashes.append(line.stored_hash or ZERO_BYTES32)
            section.sums.append(0)
            return

        leaf = line.leaf
        leaf_hash = leaf.hash()
        if line.stored_hash != leaf_hash:
            report.add("leaf_hash", name, "the fields do not hash to the line's leaf_hash: the record differs from the one committed")
        section.hashes.append(leaf_hash)
        section.sums.append(leaf.sum_nano_usd if leaf.kind is BALANCE else 0)

        key = balance_sort_key(leaf) if leaf.kind is BALANCE else record_sort_key(leaf)
        if section.previous_key is not None and key <= section.previous_key:
            report.add("order", name, "leaves must be in canonical order without repeats; this one repeats or is out of order")
        section.previous_key = key

        if section_number == 0:
            state.opening[leaf.values["account"]] = leaf.values["balance_nano_usd"]
        elif section_number == 1:
            state.closing[leaf.values["account"]] = leaf.values["balance_nano_usd"]
        else:
            self._read_record(header, leaf, name, report, state)

    def _read_record(self, header: ExportHeader, leaf: Leaf, name: str, report: VerificationReport, state: _ReplayState) -> None:
        values = leaf.values
        moment_us = values[_TIME_FIELDS[leaf.kind.name]]
        if not header.from_timestamp * MICROSECONDS_PER_SECOND <= moment_us < header.to_timestamp * MICROSECONDS_PER_SECOND:
            report.add("period", name, f"its ledger time {moment_us} us is outside the period [{header.from_timestamp}, {header.to_timestamp}) s")

        if leaf.kind is USAGE:
            state.totals["usage"] += values["cost_nano_usd"]
        elif leaf.kind is DEPOSIT:
            state.totals["deposits"] += values["amount_nano_usd"]
            state.transfers.append((leaf, name))
        elif leaf.kind is PAYOUT:
            state.totals["payouts"] += values["amount_nano_usd"]
            state.transfers.append((leaf, name))
        for account, change in record_changes(leaf):
            state.changes[account] += change

    def _check_counts(self, header: ExportHeader, report: VerificationReport, state: _ReplayState) -> None:
        report.record_counts = dict(state.counts)
        expected = (header.opening_balance_count, header.balance_count, header.record_count)
        for section_number, count in enumerate(expected):
            actual = len(state.sections[section_number].hashes)
            if actual != count:
                report.add("format", f"header {_SECTION_NAMES[section_number]}", f"the header announces {count} leaves, the file has {actual}")

    # --- roots and totals ---------------------------------------------------------------

    def _check_roots(self, header: ExportHeader, commitment: _Commitment | None, report: VerificationReport, state: _ReplayState) -> None:
        self.progress.start("Building trees", 3)
        opening_section, balance_section, record_section = state.sections
        opening = MerkleSumTree(list(zip(opening_section.hashes, opening_section.sums, strict=True)))
        self.progress.advance()
        balances = MerkleSumTree(list(zip(balance_section.hashes, balance_section.sums, strict=True)))
        self.progress.advance()
        records = MerkleTree(record_section.hashes)
        self.progress.advance()
        self.progress.finish()
        report.total_liabilities_nano_usd = balances.total

        computed = {
            "balances_root": balances.root,
            "records_root": records.root,
            "total_liabilities_nano_usd": balances.total,
            "total_usage_nano_usd": state.totals["usage"],
            "total_deposits_nano_usd": state.totals["deposits"],
            "total_payouts_nano_usd": state.totals["payouts"],
            "record_count": records.leaf_count,
        }
        for name, value in computed.items():
            if getattr(header, name) != value:
                report.add("header", f"header {name}", f"the header says {_show(getattr(header, name))}, the leaves give {_show(value)}")
        if header.ledger_root != header.compute_ledger_root():
            report.add("header", "header ledger_root", "the header's ledger_root does not match the header's own fields")
        if commitment is None:
            return

        stored = commitment.current.commitment
        on_chain = {
            "balances_root": stored.balances_root,
            "records_root": stored.records_root,
            "total_liabilities_nano_usd": stored.total_liabilities_nano_usd,
            "total_usage_nano_usd": stored.total_usage_nano_usd,
            "total_deposits_nano_usd": stored.total_deposits_nano_usd,
            "total_payouts_nano_usd": stored.total_payouts_nano_usd,
            "record_count": stored.record_count,
        }
        for name, value in computed.items():
            if on_chain[name] != value:
                report.add("root", name, f"recomputed {_show(value)}, committed on-chain {_show(on_chain[name])}")
        for name in ("from_timestamp", "to_timestamp"):
            if getattr(header, name) != getattr(stored, name):
                report.add("root", name, f"the export says {getattr(header, name)}, committed on-chain {getattr(stored, name)}")

        previous = commitment.previous.commitment if commitment.previous is not None else None
        self._check_opening(opening, previous, report)
        previous_ledger_root = previous.ledger_root if previous is not None else ZERO_BYTES32
        ledger_root = compute_ledger_root(
            chain_id=header.chain_id,
            registry_address=header.registry_address,
            period_id=header.period_id,
            from_timestamp=stored.from_timestamp,
            to_timestamp=stored.to_timestamp,
            previous_ledger_root=previous_ledger_root,
            balances_root=balances.root,
            records_root=records.root,
            reserve_sources=header.reserve_sources,
            total_liabilities_nano_usd=balances.total,
            total_usage_nano_usd=state.totals["usage"],
            total_deposits_nano_usd=state.totals["deposits"],
            total_payouts_nano_usd=state.totals["payouts"],
            record_count=records.leaf_count,
        )
        if ledger_root != stored.ledger_root:
            report.add(
                "root",
                "ledger_root",
                "the ledger root recomputed from the leaves, the reserve sources and the previous period does not match the one committed on-chain",
            )

    def _check_opening(self, opening: MerkleSumTree, previous: Any, report: VerificationReport) -> None:
        if previous is None:
            if opening.leaf_count:
                report.add("root", "opening balances", "the first period has no previous period, so it must have no opening balances")
            return
        if opening.root != previous.balances_root:
            report.add("root", "opening balances", "the opening balances do not hash to the previous period's committed balances root")
        if opening.total != previous.total_liabilities_nano_usd:
            report.add("root", "opening balances", f"they sum to {opening.total}, the previous period committed {previous.total_liabilities_nano_usd}")

    # --- the replay ---------------------------------------------------------------------

    def _check_flow(self, report: VerificationReport, state: _ReplayState) -> None:
        accounts = set(state.opening) | set(state.closing) | set(state.changes)
        for account in sorted(accounts):
            expected = state.opening.get(account, 0) + state.changes.get(account, 0)
            closing = state.closing.get(account)
            if closing is None:
                if account in state.changes or expected != 0:
                    report.add("flow", f"balance {account}", f"the records leave it at {expected} nano-USD, but it has no balance leaf")
                continue
            if closing != expected:
                report.add(
                    "flow",
                    f"balance {account}",
                    f"opening {state.opening.get(account, 0)} plus the period's records "
                    f"({state.changes.get(account, 0):+d}) is {expected} nano-USD, the balance leaf says {closing}",
                )

    # --- the chain ----------------------------------------------------------------------

    def _check_transfers_on_chain(self, header: ExportHeader, report: VerificationReport, state: _ReplayState) -> None:
        sources = defaultdict(list)
        for source in header.reserve_sources:
            sources[source.chain_id].append(source)
        self.progress.start("Checking deposits and payouts on-chain", len(state.transfers))
        for leaf, name in state.transfers:
            chain_id = leaf.values["chain_id"]
            chain_sources = sources.get(chain_id, [])
            confirmations = max([self.min_confirmations, *(source.confirmations for source in chain_sources)])
            holders = {source.holder_address for source in chain_sources}
            tokens = {source.token_address for source in chain_sources}
            try:
                problems = check_transfer_record(self.clients, leaf, confirmations, holders, tokens)
            except MissingRpc as exc:
                problems = [str(exc)]
            except (Web3Exception, ValueError) as exc:
                problems = [f"reading it from chain {chain_id} failed: {exc}"]
            for problem in problems:
                report.add("chain", name, problem)
            if leaf.kind is DEPOSIT:
                report.deposits_checked += 1
            else:
                report.payouts_checked += 1
            self.progress.advance()
        self.progress.finish()

    def _check_reserves(self, header: ExportHeader, commitment: _Commitment | None, report: VerificationReport, state: _ReplayState) -> None:
        self.progress.start("Reading reserves", len(header.reserve_sources))
        if not header.reserve_sources:
            report.add("reserves", "reserve_sources", "the export names no reserve holders")
        for source in header.reserve_sources:
            # Reserves are read at the block that committed the period, on the registry's chain.
            block = commitment.current.committed_at_block if commitment and source.chain_id == header.chain_id else None
            try:
                decimals = self.clients.token_decimals(source.chain_id, source.token_address)
                if decimals != source.token_decimals:
                    report.add("reserves", f"token {source.token_address}", f"it has {decimals} decimals on-chain, the export says {source.token_decimals}")
                reading = read_reserve_at_or_latest(self.clients, source.chain_id, source.token_address, decimals, source.holder_address, block)
            except MissingRpc as exc:
                report.add("reserves", f"holder {source.holder_address}", str(exc))
                continue
            except (Web3Exception, ValueError) as exc:
                report.add("reserves", f"holder {source.holder_address}", f"reading its balance of {source.token_address} failed: {exc}")
                continue
            report.reserves.append(reading)
            report.total_reserves_nano_usd += reading.amount_nano_usd
            self.progress.advance()
        self.progress.finish()

        liabilities = report.total_liabilities_nano_usd
        if commitment is not None:
            liabilities = max(liabilities, commitment.current.commitment.total_liabilities_nano_usd)
        if report.total_reserves_nano_usd < liabilities:
            report.add(
                "reserves",
                "proof of reserves",
                f"reserves of {report.total_reserves_nano_usd} nano-USD do not cover liabilities of {liabilities} nano-USD",
            )


@dataclass
class _Commitment:
    current: StoredPeriod
    previous: StoredPeriod | None


class _ReplayState:
    """The hashes, balances, totals and records that the verifier collects while it reads leaves."""

    def __init__(self, header: ExportHeader) -> None:
        self.header = header
        self.sections = (_Section(), _Section(), _Section())
        self.counts: dict[str, int] = defaultdict(int)
        self.opening: dict[str, int] = {}
        self.closing: dict[str, int] = {}
        self.changes: dict[str, int] = defaultdict(int)
        self.totals: dict[str, int] = defaultdict(int)
        self.transfers: list[tuple[Leaf, str]] = []


def _line_name(line: LeafLine) -> str:
    return f"{line.record} (line {line.line_number})"


def _show(value: Any) -> str:
    if isinstance(value, bytes):
        return "0x" + value.hex()
    return str(value)


def connect_clients(rpc_url: str, chain_rpc_urls: dict[int, str] | None = None, timeout_s: float = 30.0) -> ChainClients:
    """Connect to the registry's chain at ``rpc_url`` and to any other chain by id.

    The chain id of ``rpc_url`` is read from the node, so the caller need not know it.
    """
    connections: dict[int, Web3] = {}
    for url in [rpc_url, *(chain_rpc_urls or {}).values()]:
        w3 = Web3(Web3.HTTPProvider(url, request_kwargs={"timeout": timeout_s}))
        connections[w3.eth.chain_id] = w3
    for chain_id, url in (chain_rpc_urls or {}).items():
        if chain_id not in connections:
            raise ValueError(f"the RPC URL given for chain {chain_id} serves another chain")
    return ChainClients(connections)


def verify_export_file(path: str, clients: ChainClients, *, min_confirmations: int = 1, progress: Progress | None = None) -> VerificationReport:
    """Verify the export at ``path``. The file is read line by line, never whole."""
    with open(path, encoding="utf-8") as lines:
        return Verifier(clients, min_confirmations=min_confirmations, progress=progress).verify(lines)
