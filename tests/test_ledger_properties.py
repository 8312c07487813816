"""A Hypothesis state machine that drives the real ledger on SQLite and checks it against a model.

One in-memory SQLite database serves a whole test run. Each example creates its own buyers,
clearing account and supplier account, so the per-account checks compare the database with that
example's model alone, while the ledger-wide checks cover every example so far.
"""

from __future__ import annotations

import datetime as dt
import itertools
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule, run_state_machine_as_test
from sqlalchemy import func, select

from marketplace import ledger, metering
from marketplace.db import Database
from marketplace.models import Account, LedgerAccount, LedgerTransfer
from marketplace.schema import upgrade_schema

BUYERS_PER_EXAMPLE = 3
CHAIN_ASSET = ledger.chain_asset_account_name(31337, "0x" + "11" * 20)
# Hold expiry times are fixed, far from the wall clock, and spread over two hours after this.
BASE_TIME = dt.datetime(2031, 1, 1, tzinfo=dt.UTC)
MAX_EXAMPLES = 120
STEPS_PER_EXAMPLE = 30
MIN_TOTAL_STEPS = 2_000

AMOUNTS = st.integers(min_value=0, max_value=2_000_000)


@dataclass
class BuyerModel:
    ledger_account_id: int
    credited_nano_usd: int = 0
    charged_nano_usd: int = 0
    refunded_nano_usd: int = 0

    @property
    def posted_nano_usd(self) -> int:
        return self.credited_nano_usd - self.charged_nano_usd

    @property
    def refundable_nano_usd(self) -> int:
        return self.charged_nano_usd - self.refunded_nano_usd


@dataclass
class HoldModel:
    buyer_index: int
    amount_nano_usd: int
    expires_at: dt.datetime
    # open, post, void or expire: the code of the transfer that resolved it.
    resolution: str = "open"
    posted_nano_usd: int = 0


@dataclass
class RunStatistics:
    steps: int = 0
    examples: int = 0
    rules: dict[str, int] = field(default_factory=dict)

    def count(self, rule_name: str) -> None:
        self.steps += 1
        self.rules[rule_name] = self.rules.get(rule_name, 0) + 1


class LedgerMachine(RuleBasedStateMachine):
    """Deposits, holds, posts, voids, expiry sweeps and refunds against one model of the money."""

    # Set by the test before the machine runs.
    database: Database
    statistics: RunStatistics
    example_numbers: Iterator[int]

    def __init__(self) -> None:
        super().__init__()
        self.example = next(self.example_numbers)
        self.statistics.examples += 1
        self.deposit_count = 0
        self.hold_count = 0
        self.deposits: dict[str, tuple[int, int]] = {}
        self.holds: dict[str, HoldModel] = {}
        self.supplier_nano_usd = 0
        self.clearing_name = f"clearing:model-{self.example}"
        self.supplier_name = f"supplier:model-{self.example}"

        with self.database.transaction() as session:
            ledger.get_or_create_account(session, CHAIN_ASSET, "chain_asset")
            self.clearing_id = ledger.get_or_create_account(session, self.clearing_name, "usage_clearing").id
            self.supplier_id = ledger.get_or_create_account(session, self.supplier_name, "supplier_payable").id
            self.buyers: list[BuyerModel] = []
            for _ in range(BUYERS_PER_EXAMPLE):
                account = Account()
                session.add(account)
                session.flush()
                self.buyers.append(BuyerModel(ledger.get_buyer_account(session, account.id).id))

    def teardown(self) -> None:
        # Later examples sweep expired holds ledger-wide, so no hold may outlive its example.
        with self.database.transaction() as session:
            for hold_id, hold in self.holds.items():
                if hold.resolution == "open":
                    ledger.void_hold(session, hold_id)

    # Helpers

    def accounts(self, session) -> tuple[LedgerAccount, LedgerAccount, LedgerAccount]:
        return (
            session.get(LedgerAccount, self.clearing_id),
            session.get(LedgerAccount, self.supplier_id),
            ledger.get_or_create_account(session, CHAIN_ASSET, "chain_asset"),
        )

    def buyer_account(self, session, buyer_index: int) -> LedgerAccount:
        return session.get(LedgerAccount, self.buyers[buyer_index].ledger_account_id)

    def open_holds(self) -> list[str]:
        return [hold_id for hold_id, hold in self.holds.items() if hold.resolution == "open"]

    def resolved_holds(self) -> list[str]:
        return [hold_id for hold_id, hold in self.holds.items() if hold.resolution != "open"]

    def held_nano_usd(self, buyer_index: int) -> int:
        return sum(
            hold.amount_nano_usd
            for hold in self.holds.values()
            if hold.buyer_index == buyer_index and hold.resolution == "open"
        )

    def available_nano_usd(self, buyer_index: int) -> int:
        return self.buyers[buyer_index].posted_nano_usd - self.held_nano_usd(buyer_index)

    def count_transfers(self) -> int:
        with self.database.session() as session:
            return session.scalar(select(func.count()).select_from(LedgerTransfer))

    # Rules

    @rule(buyer_index=st.integers(0, BUYERS_PER_EXAMPLE - 1), amount=AMOUNTS)
    def deposit(self, buyer_index: int, amount: int) -> None:
        self.statistics.count("deposit")
        self.deposit_count += 1
        transfer_id = f"model-{self.example}:deposit-{self.deposit_count}"
        with self.database.transaction() as session:
            _clearing, _supplier, source = self.accounts(session)
            ledger.transfer(session, transfer_id, source, self.buyer_account(session, buyer_index), amount, "deposit")
        self.buyers[buyer_index].credited_nano_usd += amount
        self.deposits[transfer_id] = (buyer_index, amount)

    @precondition(lambda self: self.deposits)
    @rule(data=st.data())
    def repeat_deposit(self, data: st.DataObject) -> None:
        """Write a deposit again under its transfer id; the ledger must keep the first one only."""
        self.statistics.count("repeat_deposit")
        transfer_id = data.draw(st.sampled_from(sorted(self.deposits)))
        buyer_index, amount = self.deposits[transfer_id]
        transfers_before = self.count_transfers()
        with self.database.transaction() as session:
            _clearing, _supplier, source = self.accounts(session)
            ledger.transfer(session, transfer_id, source, self.buyer_account(session, buyer_index), amount, "deposit")
        assert self.count_transfers() == transfers_before

    @rule(buyer_index=st.integers(0, BUYERS_PER_EXAMPLE - 1), ttl_minutes=st.integers(1, 120), data=st.data())
    def place_hold(self, buyer_index: int, ttl_minutes: int, data: st.DataObject) -> None:
        self.statistics.count("place_hold")
        # Up to a quarter above the available balance, so that most holds fit and some do not.
        available = self.available_nano_usd(buyer_index)
        amount = data.draw(st.integers(0, available + available // 4 + 1), label="amount")
        self.hold_count += 1
        hold_id = f"model-{self.example}:hold-{self.hold_count}"
        expires_at = BASE_TIME + dt.timedelta(minutes=ttl_minutes)
        fits = amount <= self.available_nano_usd(buyer_index)
        transfers_before = self.count_transfers()

        try:
            with self.database.transaction() as session:
                clearing, _supplier, _source = self.accounts(session)
                ledger.place_hold(session, hold_id, self.buyer_account(session, buyer_index), clearing, amount, expires_at)
        except ledger.InsufficientFunds as exc:
            assert not fits, f"hold of {amount} rejected with {self.available_nano_usd(buyer_index)} available"
            assert exc.available_nano_usd == self.available_nano_usd(buyer_index)
            assert exc.requested_nano_usd == amount
            assert self.count_transfers() == transfers_before
            return

        assert fits, f"hold of {amount} accepted with {self.available_nano_usd(buyer_index)} available"
        self.holds[hold_id] = HoldModel(buyer_index, amount, expires_at)

    @precondition(lambda self: self.open_holds())
    @rule(data=st.data())
    def post(self, data: st.DataObject) -> None:
        """Post part of a hold and pay it on to the supplier, as settling a call does."""
        self.statistics.count("post")
        hold_id = data.draw(st.sampled_from(self.open_holds()))
        hold = self.holds[hold_id]
        amount = data.draw(st.integers(0, hold.amount_nano_usd))

        with self.database.transaction() as session:
            ledger.post_hold(session, hold_id, amount)
            clearing, supplier, _source = self.accounts(session)
            ledger.transfer(session, f"{hold_id}:supplier", clearing, supplier, amount, "usage_supplier")

        hold.resolution = "post"
        hold.posted_nano_usd = amount
        self.buyers[hold.buyer_index].charged_nano_usd += amount
        self.supplier_nano_usd += amount

    @precondition(lambda self: self.open_holds())
    @rule(data=st.data())
    def void(self, data: st.DataObject) -> None:
        self.statistics.count("void")
        hold_id = data.draw(st.sampled_from(self.open_holds()))
        with self.database.transaction() as session:
            ledger.void_hold(session, hold_id)
        self.holds[hold_id].resolution = "void"

    @precondition(lambda self: self.open_holds())
    @rule(minutes_after_base=st.integers(0, 180))
    def expire(self, minutes_after_base: int) -> None:
        self.statistics.count("expire")
        now = BASE_TIME + dt.timedelta(minutes=minutes_after_base)
        due = [hold_id for hold_id in self.open_holds() if self.holds[hold_id].expires_at < now]

        with self.database.transaction() as session:
            expired_count = metering.expire_holds(session, now=now)

        assert expired_count == len(due)
        for hold_id in due:
            self.holds[hold_id].resolution = "expire"

    @precondition(lambda self: any(buyer.refundable_nano_usd > 0 for buyer in self.buyers))
    @rule(data=st.data())
    def refund(self, data: st.DataObject) -> None:
        """Return part of what a buyer paid with a reversing transfer from the supplier payable."""
        self.statistics.count("refund")
        candidates = [index for index, buyer in enumerate(self.buyers) if buyer.refundable_nano_usd > 0]
        buyer_index = data.draw(st.sampled_from(candidates))
        buyer = self.buyers[buyer_index]
        amount = data.draw(st.integers(1, buyer.refundable_nano_usd))
        transfer_id = f"model-{self.example}:refund-{buyer_index}-{buyer.refunded_nano_usd}"

        with self.database.transaction() as session:
            _clearing, supplier, _source = self.accounts(session)
            ledger.transfer(session, transfer_id, supplier, self.buyer_account(session, buyer_index), amount, "refund")

        buyer.refunded_nano_usd += amount
        buyer.credited_nano_usd += amount
        self.supplier_nano_usd -= amount

    @precondition(lambda self: self.resolved_holds())
    @rule(data=st.data())
    def resolve_again(self, data: st.DataObject) -> None:
        """Resolve a resolved hold again. The same resolution is idempotent, and any other raises HoldAlreadyResolved."""
        self.statistics.count("resolve_again")
        hold_id = data.draw(st.sampled_from(self.resolved_holds()))
        hold = self.holds[hold_id]
        same = data.draw(st.booleans())
        transfers_before = self.count_transfers()

        if same:
            with self.database.transaction() as session:
                if hold.resolution == "post":
                    ledger.post_hold(session, hold_id, hold.posted_nano_usd)
                elif hold.resolution == "void":
                    ledger.void_hold(session, hold_id)
                else:
                    ledger.expire_hold(session, hold_id)
        else:
            with pytest.raises(ledger.HoldAlreadyResolved):
                with self.database.transaction() as session:
                    if hold.resolution == "post":
                        ledger.void_hold(session, hold_id)
                    else:
                        ledger.post_hold(session, hold_id, 0)

        assert self.count_transfers() == transfers_before

    # Invariants

    @invariant()
    def ledger_sums_to_zero(self) -> None:
        with self.database.session() as session:
            totals = ledger.read_totals(session)
        assert totals.balanced, totals
        assert totals.negative_constrained_accounts == 0

    @invariant()
    def buyer_balances_match_model(self) -> None:
        with self.database.session() as session:
            for index, buyer in enumerate(self.buyers):
                balance = ledger.read_balance(session, buyer.ledger_account_id)
                assert balance.posted_nano_usd == buyer.posted_nano_usd, f"buyer {index}"
                assert balance.pending_debits_nano_usd == self.held_nano_usd(index), f"buyer {index}"
                assert balance.available_nano_usd >= 0, f"buyer {index}"

    @invariant()
    def holds_resolve_at_most_once(self) -> None:
        if not self.holds:
            return
        with self.database.session() as session:
            rows = session.execute(
                select(LedgerTransfer.pending_id, func.count(), func.min(LedgerTransfer.code))
                .where(LedgerTransfer.pending_id.in_(list(self.holds)))
                .group_by(LedgerTransfer.pending_id)
            ).all()
        resolutions = {pending_id: (count, code) for pending_id, count, code in rows}
        for hold_id, hold in self.holds.items():
            if hold.resolution == "open":
                assert hold_id not in resolutions, f"open hold {hold_id} has a resolving transfer"
            else:
                assert resolutions.get(hold_id) == (1, hold.resolution), hold_id

    @invariant()
    def clearing_and_supplier_match_model(self) -> None:
        open_total = sum(self.held_nano_usd(index) for index in range(BUYERS_PER_EXAMPLE))
        with self.database.session() as session:
            clearing = session.get(LedgerAccount, self.clearing_id)
            supplier = session.get(LedgerAccount, self.supplier_id)
            assert clearing.credits_posted_nano_usd - clearing.debits_posted_nano_usd == 0
            assert clearing.credits_pending_nano_usd == open_total
            assert supplier.credits_posted_nano_usd - supplier.debits_posted_nano_usd == self.supplier_nano_usd


@pytest.fixture
def memory_database() -> Iterator[Database]:
    database = Database("sqlite:///:memory:")
    upgrade_schema(database)
    yield database
    database.dispose()


def test_ledger_matches_model(memory_database):
    statistics = RunStatistics()
    LedgerMachine.database = memory_database
    LedgerMachine.statistics = statistics
    LedgerMachine.example_numbers = itertools.count(1)
    started = time.perf_counter()

    run_state_machine_as_test(
        LedgerMachine,
        settings=settings(
            max_examples=MAX_EXAMPLES,
            stateful_step_count=STEPS_PER_EXAMPLE,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )

    elapsed_s = time.perf_counter() - started
    print(f"ledger state machine: {statistics.steps} steps in {statistics.examples} examples, {elapsed_s:.1f} s, rules {statistics.rules}")
    assert statistics.steps >= MIN_TOTAL_STEPS
