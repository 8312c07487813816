"""Group commit for the proxy's metering: many calls' holds and settlements in one transaction.

Every metered call writes twice: a hold before the upstream call and a settlement after it.
Written one transaction each, every call pays two commits (a disk flush each on PostgreSQL) and
takes the row locks of the accounts every call shares (the clearing account, the platform's
revenue, a busy buyer) once per transaction. The batcher queues those writes and applies all that
are waiting in one transaction, as TigerBeetle applies a batch of transfers: it locks each buyer
row once, decides each hold in arrival order against the locked balances, writes every row with
one statement per table, and updates each shared account once with the batch's sum.

Each call still waits for the commit that holds its money, so nothing is acknowledged that is not
durable, and the rows are exactly those of `metering.open_call`, `settle_call` and `fail_call`.
If a batch fails for any reason other than a refused hold (a hold the expiry sweep resolved first,
a lost connection), it is rolled back and each of its operations is applied again on its own
through those functions, so one bad operation never fails the others.

This module holds the requests, the decisions and the SQLAlchemy writer, which runs the batches
on one thread and serves SQLite. PostgreSQL gets the writer in `marketplace.metering_pg`, which
runs on the event loop; `create_batcher` picks one.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import queue
import threading
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, bindparam, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite

from marketplace import ledger, metering, spend
from marketplace.db import Database
from marketplace.errors import InsufficientBalance, RateLimited
from marketplace.models import ApiKeySpend, Generation, LedgerAccount, LedgerTransfer, utcnow
from marketplace.pricing import platform_fee_nano_usd
from providers.usage import Usage

logger = logging.getLogger(__name__)

# Operations applied in one transaction at most. A batch takes whatever waits when the previous
# commit ends, so under light load each batch holds one call and adds no wait at all.
MAX_BATCH_OPERATIONS = 512

_generations = Generation.__table__
_transfers = LedgerTransfer.__table__
_accounts = LedgerAccount.__table__
_spend = ApiKeySpend.__table__


@dataclass(frozen=True)
class OpenRequest:
    """The arguments of `metering.open_call`, queued."""

    generation_id: str
    account_id: int
    api_key_id: int
    listing_id: int
    model: str
    stream: bool
    hold_nano_usd: int
    hold_ttl_s: int
    spend_limit_nano_usd: int | None = None
    spend_limit_period: str | None = None
    attempt: int = 0
    # When the call's first attempt opened; a fallback attempt keeps it for the call's latency.
    started_at: dt.datetime | None = None


@dataclass(frozen=True)
class SettleRequest:
    """The arguments of `metering.settle_call`, queued."""

    call: metering.OpenedCall
    usage: Usage
    cost_nano_usd: int
    supplier_id: int
    fee_bps: int
    status: str
    error: str | None = None


@dataclass(frozen=True)
class FailRequest:
    """The arguments of `metering.fail_call`, queued."""

    call: metering.OpenedCall
    error: str


Operation = OpenRequest | SettleRequest | FailRequest


@dataclass
class Pending:
    operation: Operation
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future


@dataclass
class Batch:
    """The rows one batch writes, gathered while its operations are decided in order."""

    now: dt.datetime
    # The buyer rows the batch locked before deciding anything.
    buyers: set[int]
    new_generations: list[dict[str, Any]] = field(default_factory=list)
    reopened_generations: list[dict[str, Any]] = field(default_factory=list)
    finished_generations: list[dict[str, Any]] = field(default_factory=list)
    transfers: list[dict[str, Any]] = field(default_factory=list)
    # Per ledger account id: [debits_posted, debits_pending, credits_posted, credits_pending].
    account_deltas: dict[int, list[int]] = field(default_factory=dict)
    # Per (api key id, period): [reserved, spent].
    spend_deltas: dict[tuple[int, str], list[int]] = field(default_factory=dict)

    def move(self, account_id: int, index: int, amount: int) -> None:
        self.account_deltas.setdefault(account_id, [0, 0, 0, 0])[index] += amount

    def spend(self, key: tuple[int, str], reserved: int, spent: int) -> None:
        deltas = self.spend_deltas.setdefault(key, [0, 0])
        deltas[0] += reserved
        deltas[1] += spent


class MeteringBatcher:
    """Queue metering writes and apply them in batches; `create_batcher` picks the writer."""

    def __init__(self, db: Database, *, max_batch: int = MAX_BATCH_OPERATIONS, autostart: bool = True) -> None:
        self.db = db
        self.max_batch = max_batch
        # Without autostart, operations wait in the queue until `start()`.
        self.autostart = autostart
        # Ledger account ids by name. An account is never deleted or renamed, so an id, once
        # read, stays right; only ids are kept here, never balances.
        self._account_ids: dict[str, int] = {}
        self._new_account_ids: dict[str, int] = {}
        # Committed batches and their operations, and batches that were applied one by one.
        self.batches = 0
        self.operations = 0
        self.fallbacks = 0

    def start(self) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        """Commit every queued operation, then stop."""
        raise NotImplementedError

    def _enqueue(self, pending: Pending) -> None:
        raise NotImplementedError

    async def submit(self, operation: Operation) -> Any:
        """Queue one operation and wait for its commit; raises what the operation raised.

        Waiting is shielded from cancellation: once queued, an operation commits whatever the
        caller does, so the caller must see its result to release what it holds.
        """
        if self.autostart:
            self.start()
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._enqueue(Pending(operation, loop, future))
        return await asyncio.shield(future)

    async def open(self, request: OpenRequest) -> metering.OpenedCall:
        return await self.submit(request)

    async def settle(self, request: SettleRequest) -> metering.SettledCall:
        return await self.submit(request)

    async def fail(self, request: FailRequest) -> None:
        await self.submit(request)

    def _apply_alone(self, operation: Operation) -> Any:
        """Apply one operation in its own transaction, through the reference functions."""
        if isinstance(operation, OpenRequest):
            return metering.open_call(
                self.db,
                generation_id=operation.generation_id,
                account_id=operation.account_id,
                api_key_id=operation.api_key_id,
                listing_id=operation.listing_id,
                model=operation.model,
                stream=operation.stream,
                hold_nano_usd=operation.hold_nano_usd,
                hold_ttl_s=operation.hold_ttl_s,
                spend_limit_nano_usd=operation.spend_limit_nano_usd,
                spend_limit_period=operation.spend_limit_period,
                attempt=operation.attempt,
            )
        if isinstance(operation, SettleRequest):
            return metering.settle_call(
                self.db,
                operation.call,
                usage=operation.usage,
                cost_nano_usd=operation.cost_nano_usd,
                supplier_id=operation.supplier_id,
                fee_bps=operation.fee_bps,
                status=operation.status,
                error=operation.error,
            )
        metering.fail_call(self.db, operation.call, error=operation.error)
        return None

    def _decide(self, batch: Batch, operations: list[Operation], ids: dict[str, int], spend_rows, balances) -> list[Any]:  # type: ignore[no-untyped-def]
        """Decide every operation in queue order against the locked rows, gathering the writes."""
        clearing = ids[ledger.USAGE_CLEARING]
        outcomes: list[Any] = []
        for operation in operations:
            spend_key = spend_key_of(operation, batch.now)
            buyer = ids[ledger.buyer_account_name(owner_of(operation))]
            if isinstance(operation, OpenRequest):
                outcomes.append(decide_open(batch, operation, spend_key, spend_rows, balances, buyer, clearing))
            elif isinstance(operation, SettleRequest):
                supplier = ids[ledger.supplier_account_name(operation.supplier_id)]
                revenue = ids[ledger.PLATFORM_REVENUE]
                outcomes.append(decide_settle(batch, operation, spend_key, spend_rows, balances, buyer, clearing, supplier, revenue))
            else:
                outcomes.append(decide_fail(batch, operation, spend_key, spend_rows, balances, buyer, clearing))
        return outcomes


def account_specs(operations: list[Operation]) -> list[tuple[str, str, int | None, bool]]:
    """List the ledger accounts a batch touches as (name, code, owner account id, constrained), buyers first."""
    specs: list[tuple[str, str, int | None, bool]] = [
        (ledger.buyer_account_name(owner), "buyer", owner, True) for owner in sorted({owner_of(operation) for operation in operations})
    ]
    specs.append((ledger.USAGE_CLEARING, "usage_clearing", None, False))
    settles = [operation for operation in operations if isinstance(operation, SettleRequest)]
    if settles:
        specs += [
            (ledger.supplier_account_name(supplier_id), "supplier_payable", None, False)
            for supplier_id in sorted({operation.supplier_id for operation in settles})
        ]
        specs.append((ledger.PLATFORM_REVENUE, "platform_revenue", None, False))
    return specs


def create_batcher(db: Database, **options: Any) -> MeteringBatcher:
    """Create the writer for this database: on the event loop for PostgreSQL, on a thread otherwise."""
    if db.is_postgres:
        from marketplace.metering_pg import PostgresBatcher

        return PostgresBatcher(db, **options)
    return ThreadedBatcher(db, **options)


class ThreadedBatcher(MeteringBatcher):
    """Apply the batches on one thread through SQLAlchemy; the writer for SQLite."""

    def __init__(self, db: Database, **options: Any) -> None:
        super().__init__(db, **options)
        self._queue: queue.SimpleQueue[Pending | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._connection: Connection | None = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="metering-batcher", daemon=True)
            self._thread.start()

    def _enqueue(self, pending: Pending) -> None:
        self._queue.put(pending)

    async def close(self) -> None:
        await asyncio.to_thread(self.stop)

    def stop(self) -> None:
        """Finish every queued operation, then stop the thread."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            stop = False
            while len(batch) < self.max_batch:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stop = True
                    break
                batch.append(item)
            try:
                self._apply_batch(batch)
            except Exception as exc:  # noqa: BLE001 - the writer must outlive any one batch
                logger.exception("metering batch could not be applied", extra={"operations": len(batch)})
                for pending in batch:
                    resolve_pending(pending, exc)
            if stop:
                return

    def _apply_batch(self, batch: list[Pending]) -> None:
        try:
            outcomes = self._write_batch([pending.operation for pending in batch])
        except Exception:
            logger.warning("metering batch failed; applying its operations one by one", exc_info=True, extra={"operations": len(batch)})
            self._drop_connection()
            self.fallbacks += 1
            for pending in batch:
                try:
                    outcome: Any = self._apply_alone(pending.operation)
                except Exception as exc:  # noqa: BLE001 - handed to the waiting caller
                    outcome = exc
                resolve_pending(pending, outcome)
            return
        self.batches += 1
        self.operations += len(batch)
        for pending, outcome in zip(batch, outcomes, strict=True):
            resolve_pending(pending, outcome)

    def _drop_connection(self) -> None:
        if self._connection is not None:
            try:
                self._connection.invalidate()
                self._connection.close()
            except Exception:  # noqa: BLE001 - the connection is discarded either way
                logger.debug("closing a failed metering connection failed", exc_info=True)
            self._connection = None

    # One batch ---------------------------------------------------------------------------------

    def _account_id(self, connection: Connection, name: str, code: str, owner_id: int | None = None, constrained: bool = False) -> int:
        """Return the id of a ledger account, creating it in the batch's transaction if missing."""
        found = self._account_ids.get(name) or self._new_account_ids.get(name)
        if found is not None:
            return found
        dialect_insert = postgresql.insert if connection.dialect.name == "postgresql" else sqlite.insert
        connection.execute(
            dialect_insert(_accounts)
            .values(
                name=name,
                code=code,
                account_id=owner_id,
                debits_must_not_exceed_credits=constrained,
                debits_pending_nano_usd=0,
                debits_posted_nano_usd=0,
                credits_pending_nano_usd=0,
                credits_posted_nano_usd=0,
            )
            .on_conflict_do_nothing(index_elements=["name"])
        )
        found = connection.execute(select(_accounts.c.id).where(_accounts.c.name == name)).scalar_one()
        # Known for good only once the batch commits: a rolled-back batch takes the row with it.
        self._new_account_ids[name] = found
        return found

    def _write_batch(self, operations: list[Operation]) -> list[Any]:
        """Decide and write every operation in one transaction; return each one's outcome.

        A refused hold is an outcome (its exception), not a failure of the batch.
        """
        now = utcnow()
        if self._connection is None:
            self._connection = self.db.engine.connect()
        connection = self._connection
        self._new_account_ids = {}
        with connection.begin() as transaction:
            specs = account_specs(operations)
            ids = {name: self._account_id(connection, name, code, owner, constrained) for name, code, owner, constrained in specs}
            spend_keys = sorted({key for key in (spend_key_of(operation, now) for operation in operations) if key is not None})
            spend_rows = self._lock_spend(connection, spend_keys)
            buyers = [ids[name] for name, code, *_ in specs if code == "buyer"]
            balances = self._lock_buyers(connection, buyers)
            batch = Batch(now, set(buyers))
            outcomes = self._decide(batch, operations, ids, spend_rows, balances)
            if all(isinstance(outcome, Exception) for outcome in outcomes):
                # Every hold was refused: write nothing, not even an account row.
                transaction.rollback()
                return outcomes
            self._write(connection, batch)
        self._account_ids.update(self._new_account_ids)
        return outcomes

    def _lock_spend(self, connection: Connection, keys: list[tuple[int, str]]) -> dict[tuple[int, str], list[int]]:
        """Create the spend rows the batch needs and lock them, in key order; return their values."""
        if not keys:
            return {}
        dialect_insert = postgresql.insert if connection.dialect.name == "postgresql" else sqlite.insert
        connection.execute(
            dialect_insert(_spend).on_conflict_do_nothing(index_elements=["api_key_id", "period"]),
            [{"api_key_id": key_id, "period": period, "reserved_nano_usd": 0, "spent_nano_usd": 0} for key_id, period in keys],
        )
        rows: dict[tuple[int, str], list[int]] = {}
        for key_id, period in keys:
            row = connection.execute(
                select(_spend.c.reserved_nano_usd, _spend.c.spent_nano_usd)
                .where(_spend.c.api_key_id == key_id, _spend.c.period == period)
                .with_for_update()
            ).one()
            rows[(key_id, period)] = [row[0], row[1]]
        return rows

    @staticmethod
    def _lock_buyers(connection: Connection, ledger_ids: list[int]) -> dict[int, list[int]]:
        """Lock the batch's buyer rows in id order; return [credits_posted, debits_posted, debits_pending] of each."""
        rows = connection.execute(
            select(_accounts.c.id, _accounts.c.credits_posted_nano_usd, _accounts.c.debits_posted_nano_usd, _accounts.c.debits_pending_nano_usd)
            .where(_accounts.c.id.in_(ledger_ids))
            .order_by(_accounts.c.id)
            .with_for_update()
        )
        return {row[0]: [row[1], row[2], row[3]] for row in rows}

    def _write(self, connection: Connection, batch: Batch) -> None:
        if batch.new_generations:
            connection.execute(insert(_generations), batch.new_generations)
        if batch.reopened_generations:
            _update_all(
                connection,
                update(_generations)
                .where(_generations.c.id == bindparam("b_id"), _generations.c.status == "failed")
                .values(
                    listing_id=bindparam("listing_id"),
                    status="pending",
                    hold_nano_usd=bindparam("hold_nano_usd"),
                    hold_transfer_id=bindparam("hold_transfer_id"),
                    spend_period=bindparam("spend_period"),
                ),
                batch.reopened_generations,
                "reopen a failed generation",
            )
        if batch.finished_generations:
            _update_all(
                connection,
                update(_generations)
                .where(_generations.c.id == bindparam("b_id"))
                .values({name: bindparam(name) for name in FINISH_COLUMNS}),
                batch.finished_generations,
                "finish a generation",
            )
        if batch.transfers:
            connection.execute(insert(_transfers), batch.transfers)
        spend_rows = [
            {"b_key": key_id, "b_period": period, "d_reserved": reserved, "d_spent": spent}
            for (key_id, period), (reserved, spent) in sorted(batch.spend_deltas.items())
            if reserved or spent
        ]
        if spend_rows:
            connection.execute(
                update(_spend)
                .where(_spend.c.api_key_id == bindparam("b_key"), _spend.c.period == bindparam("b_period"))
                .values(
                    reserved_nano_usd=_spend.c.reserved_nano_usd + bindparam("d_reserved"),
                    spent_nano_usd=_spend.c.spent_nano_usd + bindparam("d_spent"),
                ),
                spend_rows,
            )
        # Buyers first (locked already), then the shared accounts in id order, which is the
        # order `metering.settle_call` takes them in.
        rows = [
            {"b_id": account_id, "d_dpo": deltas[0], "d_dpe": deltas[1], "d_cpo": deltas[2], "d_cpe": deltas[3]}
            for account_id, deltas in sorted(batch.account_deltas.items(), key=lambda item: _lock_rank(item[0], batch))
            if any(deltas)
        ]
        if rows:
            connection.execute(
                update(_accounts)
                .where(_accounts.c.id == bindparam("b_id"))
                .values(
                    debits_posted_nano_usd=_accounts.c.debits_posted_nano_usd + bindparam("d_dpo"),
                    debits_pending_nano_usd=_accounts.c.debits_pending_nano_usd + bindparam("d_dpe"),
                    credits_posted_nano_usd=_accounts.c.credits_posted_nano_usd + bindparam("d_cpo"),
                    credits_pending_nano_usd=_accounts.c.credits_pending_nano_usd + bindparam("d_cpe"),
                ),
                rows,
            )


FINISH_COLUMNS = (
    "prompt_tokens",
    "completion_tokens",
    "cached_prompt_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
    "usage_estimated",
    "cost_nano_usd",
    "status",
    "error",
    "latency_ms",
    "finished_at",
)


def _lock_rank(account_id: int, batch: Batch) -> tuple[int, int]:
    # The buyer rows were locked before anything was decided; every other account follows in
    # id order.
    return (0 if account_id in batch.buyers else 1, account_id)


def owner_of(operation: Operation) -> int:
    if isinstance(operation, OpenRequest):
        return operation.account_id
    assert operation.call.account_id is not None, f"call {operation.call.generation_id} has no owner"
    return operation.call.account_id


def _update_all(connection: Connection, statement: Any, rows: list[dict[str, Any]], what: str) -> None:
    result = connection.execute(statement, rows)
    if result.rowcount != len(rows):
        raise RuntimeError(f"could not {what}: {result.rowcount} of {len(rows)} rows matched")


def spend_key_of(operation: Operation, now: dt.datetime) -> tuple[int, str] | None:
    if isinstance(operation, OpenRequest):
        if operation.spend_limit_nano_usd is None or not operation.spend_limit_period:
            return None
        return (operation.api_key_id, spend.period_for(operation.spend_limit_period, now))
    call = operation.call
    if call.spend_period is None:
        return None
    assert call.api_key_id is not None
    return (call.api_key_id, call.spend_period)


def available_nano_usd(balance: list[int]) -> int:
    """Return what a buyer may still spend, from [credits_posted, debits_posted, debits_pending]."""
    credits_posted, debits_posted, debits_pending = balance
    return credits_posted - debits_posted - debits_pending


def decide_open(
    batch: Batch,
    operation: OpenRequest,
    spend_key: tuple[int, str] | None,
    spend_rows: dict[tuple[int, str], list[int]],
    balances: dict[int, list[int]],
    buyer: int,
    clearing: int,
) -> metering.OpenedCall | Exception:
    hold = operation.hold_nano_usd
    if hold < 0:
        return ledger.LedgerError(f"hold {operation.generation_id} has negative amount {hold}")
    if spend_key is not None:
        reserved, spent = spend_rows[spend_key]
        limit = operation.spend_limit_nano_usd
        assert limit is not None
        if spent + reserved + hold > limit:
            return RateLimited(
                f"API key spend limit of {limit} nano-USD for period {spend_key[1]} would be exceeded: "
                f"{spent + reserved} nano-USD spent or held, this call holds {hold} nano-USD",
                code="spend_limit_exceeded",
            )
    balance = balances[buyer]
    available = available_nano_usd(balance)
    if hold > available:
        return InsufficientBalance(
            f"balance of {available} nano-USD does not cover this call's hold of {hold} nano-USD; top up, or lower max_tokens",
            code="insufficient_balance",
        )

    if spend_key is not None:
        spend_rows[spend_key][0] += hold
        batch.spend(spend_key, hold, 0)
    balance[2] += hold
    batch.move(buyer, 1, hold)
    batch.move(clearing, 3, hold)
    hold_id = metering.hold_transfer_id(operation.generation_id, operation.attempt)
    period = spend_key[1] if spend_key is not None else None
    batch.transfers.append(
        _transfer(hold_id, buyer, clearing, hold, "hold", batch.now, is_pending=True,
                  expires_at=batch.now + dt.timedelta(seconds=operation.hold_ttl_s), reference=operation.generation_id)
    )
    if operation.attempt == 0:
        batch.new_generations.append(
            {
                "id": operation.generation_id,
                "account_id": operation.account_id,
                "api_key_id": operation.api_key_id,
                "listing_id": operation.listing_id,
                "model": operation.model,
                "stream": operation.stream,
                "status": "pending",
                "prompt_tokens": 0,
                "completion_tokens": 0,
                "cached_prompt_tokens": 0,
                "cache_write_tokens": 0,
                "reasoning_tokens": 0,
                "usage_estimated": False,
                "hold_nano_usd": hold,
                "cost_nano_usd": 0,
                "hold_transfer_id": hold_id,
                "spend_period": period,
                "created_at": batch.now,
            }
        )
        started_at = batch.now
    else:
        batch.reopened_generations.append(
            {"b_id": operation.generation_id, "listing_id": operation.listing_id, "hold_nano_usd": hold, "hold_transfer_id": hold_id, "spend_period": period}
        )
        started_at = operation.started_at or batch.now
    return metering.OpenedCall(operation.generation_id, hold_id, hold, started_at, operation.account_id, operation.api_key_id, period)


def decide_settle(
    batch: Batch,
    operation: SettleRequest,
    spend_key: tuple[int, str] | None,
    spend_rows: dict[tuple[int, str], list[int]],
    balances: dict[int, list[int]],
    buyer: int,
    clearing: int,
    supplier: int,
    revenue: int,
) -> metering.SettledCall:
    call = operation.call
    charged = min(operation.cost_nano_usd, call.hold_nano_usd)
    if charged < operation.cost_nano_usd:
        logger.warning(
            "call cost exceeds its hold; charging the hold",
            extra={"generation_id": call.generation_id, "cost_nano_usd": operation.cost_nano_usd, "hold_nano_usd": call.hold_nano_usd},
        )
    fee = platform_fee_nano_usd(charged, operation.fee_bps)
    held = call.hold_nano_usd
    _finish(batch, operation.usage, call, charged, operation.status, operation.error)
    _release_spend(batch, spend_key, spend_rows, held, charged)

    balance = balances[buyer]
    balance[1] += charged
    balance[2] -= held
    batch.move(buyer, 0, charged)
    batch.move(buyer, 1, -held)
    batch.move(clearing, 2, charged)
    batch.move(clearing, 3, -held)
    batch.transfers.append(_transfer(f"{call.hold_id}:post", buyer, clearing, charged, "post", batch.now, pending_id=call.hold_id))
    for transfer_id, credit, amount, code in (
        (f"{call.generation_id}:supplier", supplier, charged - fee, "usage_supplier"),
        (f"{call.generation_id}:fee", revenue, fee, "usage_fee"),
    ):
        batch.transfers.append(_transfer(transfer_id, clearing, credit, amount, code, batch.now, reference=call.generation_id))
        batch.move(clearing, 0, amount)
        batch.move(credit, 2, amount)
    return metering.SettledCall(operation.cost_nano_usd, charged, available_nano_usd(balance))


def decide_fail(
    batch: Batch,
    operation: FailRequest,
    spend_key: tuple[int, str] | None,
    spend_rows: dict[tuple[int, str], list[int]],
    balances: dict[int, list[int]],
    buyer: int,
    clearing: int,
) -> None:
    call = operation.call
    held = call.hold_nano_usd
    batch.finished_generations.append(
        {
            "b_id": call.generation_id,
            **metering.usage_values(Usage(prompt_tokens=0, completion_tokens=0)),
            "cost_nano_usd": 0,
            "status": "failed",
            "error": operation.error[:500],
            "latency_ms": metering.elapsed_ms(call.started_at, batch.now),
            "finished_at": batch.now,
        }
    )
    _release_spend(batch, spend_key, spend_rows, held, 0)
    balances[buyer][2] -= held
    batch.move(buyer, 1, -held)
    batch.move(clearing, 3, -held)
    batch.transfers.append(_transfer(f"{call.hold_id}:void", buyer, clearing, 0, "void", batch.now, pending_id=call.hold_id))


def _finish(batch: Batch, usage: Usage, call: metering.OpenedCall, charged: int, status: str, error: str | None) -> None:
    batch.finished_generations.append(
        {
            "b_id": call.generation_id,
            **metering.usage_values(usage),
            "cost_nano_usd": charged,
            "status": status,
            "error": error,
            "latency_ms": metering.elapsed_ms(call.started_at, batch.now),
            "finished_at": batch.now,
        }
    )


def _release_spend(
    batch: Batch, spend_key: tuple[int, str] | None, spend_rows: dict[tuple[int, str], list[int]], held: int, charged: int
) -> None:
    if spend_key is None:
        return
    row = spend_rows[spend_key]
    row[0] -= held
    row[1] += charged
    batch.spend(spend_key, -held, charged)


def _transfer(
    transfer_id: str,
    debit: int,
    credit: int,
    amount: int,
    code: str,
    now: dt.datetime,
    *,
    is_pending: bool = False,
    pending_id: str | None = None,
    expires_at: dt.datetime | None = None,
    reference: str | None = None,
) -> dict[str, Any]:
    return {
        "id": transfer_id,
        "debit_account_id": debit,
        "credit_account_id": credit,
        "amount_nano_usd": amount,
        "code": code,
        "is_pending": is_pending,
        "pending_id": pending_id,
        "expires_at": expires_at,
        "reference": reference,
        "created_at": now,
    }


def resolve_pending(pending: Pending, outcome: Any) -> None:
    """Hand an operation's outcome to the caller waiting on it, from any thread."""

    def deliver() -> None:
        if pending.future.done():
            return
        if isinstance(outcome, BaseException):
            pending.future.set_exception(outcome)
        else:
            pending.future.set_result(outcome)

    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if running is pending.loop:
        # Already on the caller's loop: no wake-up through the loop's self-pipe.
        deliver()
        return
    try:
        pending.loop.call_soon_threadsafe(deliver)
    except RuntimeError:
        logger.warning("a metering result arrived after its event loop closed", extra={"operation": type(pending.operation).__name__})


