"""The PostgreSQL writer of the metering batches: one task on the event loop, one connection.

It runs on the event loop, not on a thread. A thread needs the GIL back after every database
round trip, and each time it waits behind the busy event loop: on a thread, a batch of 8 calls
took 9.5 ms at the median, most of it waiting. It talks to psycopg directly, with fixed
statements that psycopg prepares once. A batch is written one of two ways:

- in one statement, when the buyers' balances that earlier batches returned admit every hold.
  Data-modifying CTEs insert and update every row in autocommit, and each table's rows arrive
  as one JSON parameter read with `jsonb_to_recordset`. `_write_optimistically` explains why a
  stale balance can never let a buyer overdraw.
- otherwise in a transaction: BEGIN, SELECT ... FOR UPDATE of the batch's accounts, decisions
  against those rows, the same writing statement, COMMIT.

The decisions are the same functions as the SQLAlchemy writer's.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import datetime as dt
import json
import logging
from typing import Any

import psycopg

from marketplace import ledger, metering
from marketplace.metering_batch import (
    Batch,
    MeteringBatcher,
    OpenRequest,
    Operation,
    Pending,
    account_specs,
    available_nano_usd,
    owner_of,
    resolve_pending,
    spend_key_of,
)
from marketplace.models import utcnow

logger = logging.getLogger(__name__)

_CREATE_ACCOUNT = """
INSERT INTO ledger_accounts (name, code, account_id, debits_must_not_exceed_credits,
    debits_pending_nano_usd, debits_posted_nano_usd, credits_pending_nano_usd, credits_posted_nano_usd)
VALUES (%s, %s, %s, %s, 0, 0, 0, 0)
ON CONFLICT (name) DO NOTHING
"""

_FIND_ACCOUNTS = "SELECT name, id FROM ledger_accounts WHERE name = ANY(%s::text[])"

# Buyers first, then the shared accounts, each group in id order: LockRows sits above the sort, so
# the rows are locked in this order, the order `metering.settle_call` takes them in.
_LOCK_ACCOUNTS = """
SELECT id, credits_posted_nano_usd, debits_posted_nano_usd, debits_pending_nano_usd
FROM ledger_accounts WHERE id = ANY(%(ids)s::int[])
ORDER BY id = ANY(%(buyers)s::int[]) DESC, id
FOR UPDATE
"""

_CREATE_SPEND = """
INSERT INTO api_key_spend (api_key_id, period, reserved_nano_usd, spent_nano_usd)
SELECT key, period, 0, 0 FROM unnest(%s::int[], %s::text[]) AS wanted(key, period)
ON CONFLICT (api_key_id, period) DO NOTHING
"""

_LOCK_SPEND = """
SELECT s.api_key_id, s.period, s.reserved_nano_usd, s.spent_nano_usd
FROM api_key_spend AS s JOIN unnest(%s::int[], %s::text[]) AS wanted(key, period)
  ON s.api_key_id = wanted.key AND s.period = wanted.period
ORDER BY s.api_key_id, s.period
FOR UPDATE OF s
"""

# Every table once. A data-modifying CTE runs even when nothing reads it, and none of them
# touches a row that another one touches, so their order does not matter.
_WRITE = """
WITH new_generations AS (
  INSERT INTO generations (id, account_id, api_key_id, listing_id, model, stream, status, prompt_tokens,
      completion_tokens, cached_prompt_tokens, cache_write_tokens, reasoning_tokens, usage_estimated,
      hold_nano_usd, cost_nano_usd, hold_transfer_id, spend_period, created_at)
  SELECT id, account_id, api_key_id, listing_id, model, stream, 'pending', 0, 0, 0, 0, 0, false,
      hold_nano_usd, 0, hold_transfer_id, spend_period, %(now)s
  FROM jsonb_to_recordset(%(new)s::jsonb) AS new(id text, account_id int, api_key_id int, listing_id int, model text,
      stream bool, hold_nano_usd bigint, hold_transfer_id text, spend_period text)
  RETURNING 1
), reopened AS (
  UPDATE generations AS g
  SET listing_id = r.listing_id, status = 'pending', hold_nano_usd = r.hold_nano_usd, hold_transfer_id = r.hold_transfer_id,
      spend_period = r.spend_period
  FROM jsonb_to_recordset(%(reopened)s::jsonb) AS r(b_id text, listing_id int, hold_nano_usd bigint, hold_transfer_id text,
      spend_period text)
  WHERE g.id = r.b_id AND g.status = 'failed'
  RETURNING 1
), finished AS (
  UPDATE generations AS g
  SET prompt_tokens = f.prompt_tokens, completion_tokens = f.completion_tokens, cached_prompt_tokens = f.cached_prompt_tokens,
      cache_write_tokens = f.cache_write_tokens, reasoning_tokens = f.reasoning_tokens, usage_estimated = f.usage_estimated,
      cost_nano_usd = f.cost_nano_usd, status = f.status, error = f.error, latency_ms = f.latency_ms, finished_at = %(now)s
  FROM jsonb_to_recordset(%(finished)s::jsonb) AS f(b_id text, prompt_tokens int, completion_tokens int, cached_prompt_tokens int,
      cache_write_tokens int, reasoning_tokens int, usage_estimated bool, cost_nano_usd bigint, status text, error text,
      latency_ms int)
  WHERE g.id = f.b_id
  RETURNING 1
), transfers AS (
  INSERT INTO ledger_transfers (id, debit_account_id, credit_account_id, amount_nano_usd, code, is_pending,
      pending_id, expires_at, reference, created_at)
  SELECT id, debit_account_id, credit_account_id, amount_nano_usd, code, is_pending, pending_id, expires_at, reference, %(now)s
  FROM jsonb_to_recordset(%(transfers)s::jsonb) AS t(id text, debit_account_id int, credit_account_id int,
      amount_nano_usd bigint, code text, is_pending bool, pending_id text, expires_at timestamptz, reference text)
  RETURNING 1
), spent AS (
  UPDATE api_key_spend AS s
  SET reserved_nano_usd = s.reserved_nano_usd + d.reserved, spent_nano_usd = s.spent_nano_usd + d.spent
  FROM jsonb_to_recordset(%(spend)s::jsonb) AS d(key int, period text, reserved bigint, spent bigint)
  WHERE s.api_key_id = d.key AND s.period = d.period
  RETURNING 1
), moved AS (
  UPDATE ledger_accounts AS a
  SET debits_posted_nano_usd = a.debits_posted_nano_usd + d.debits_posted,
      debits_pending_nano_usd = a.debits_pending_nano_usd + d.debits_pending,
      credits_posted_nano_usd = a.credits_posted_nano_usd + d.credits_posted,
      credits_pending_nano_usd = a.credits_pending_nano_usd + d.credits_pending
  FROM jsonb_to_recordset(%(accounts)s::jsonb)
    AS d(id int, debits_posted bigint, debits_pending bigint, credits_posted bigint, credits_pending bigint)
  WHERE a.id = d.id
  RETURNING a.id, a.credits_posted_nano_usd, a.debits_posted_nano_usd, a.debits_pending_nano_usd
)
-- The accounts' new totals, then a row that checks every CTE's row count. A count that differs
-- from the expected one fails the statement itself (the division is by zero then), so the write
-- rolls back whole, without a round trip to compare the counts.
SELECT id, credits_posted_nano_usd, debits_posted_nano_usd, debits_pending_nano_usd FROM moved
UNION ALL
SELECT 0, 1 / (
  (SELECT count(*) FROM new_generations) = %(n_new)s AND (SELECT count(*) FROM reopened) = %(n_reopened)s
  AND (SELECT count(*) FROM finished) = %(n_finished)s AND (SELECT count(*) FROM transfers) = %(n_transfers)s
  AND (SELECT count(*) FROM spent) = %(n_spent)s AND (SELECT count(*) FROM moved) = %(n_moved)s
)::int, 0, 0
"""


class _AllRefused(Exception):
    """Every hold of the batch was refused: roll back, so not even an account row is written."""


class PostgresBatcher(MeteringBatcher):
    """Apply the batches on the event loop through one psycopg connection."""

    def __init__(self, db: Any, **options: Any) -> None:
        super().__init__(db, **options)
        self._waiting: collections.deque[Pending] = collections.deque()
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._connection: psycopg.AsyncConnection | None = None
        self._conninfo = db.engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
        # The buyers' [credits_posted, debits_posted, debits_pending] as the last batch that
        # touched them read or wrote them. Only a guess about the shared rows: see
        # `_write_optimistically` for why a stale guess can never let a buyer overdraw.
        self._balances: dict[int, list[int]] = {}
        # Batches written in one statement, and optimistic writes the database refused.
        self.optimistic = 0
        self.stale = 0

    def start(self) -> None:
        if self._task is None:
            self._wakeup = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(self._run(), name="metering-batcher")

    def _enqueue(self, pending: Pending) -> None:
        if self._closing:
            raise RuntimeError("the metering writer is closed")
        self._waiting.append(pending)
        if self._wakeup is not None:
            self._wakeup.set()

    async def close(self) -> None:
        self._closing = True
        if self._task is not None:
            assert self._wakeup is not None
            self._wakeup.set()
            await self._task
            self._task = None
        if self._connection is not None:
            await self._connection.close()
            self._connection = None

    async def _run(self) -> None:
        assert self._wakeup is not None
        while True:
            if not self._waiting:
                if self._closing:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            batch = [self._waiting.popleft() for _ in range(min(self.max_batch, len(self._waiting)))]
            try:
                await self._apply_batch(batch)
            except Exception as exc:  # noqa: BLE001 - the writer must outlive any one batch
                logger.exception("metering batch could not be applied", extra={"operations": len(batch)})
                for pending in batch:
                    resolve_pending(pending, exc)

    async def _apply_batch(self, batch: list[Pending]) -> None:
        try:
            outcomes = await self._write_batch([pending.operation for pending in batch])
        except Exception:
            logger.warning("metering batch failed; applying its operations one by one", exc_info=True, extra={"operations": len(batch)})
            await self._drop_connection()
            self.fallbacks += 1
            for pending in batch:
                try:
                    outcome: Any = await asyncio.to_thread(self._apply_alone, pending.operation)
                except Exception as exc:  # noqa: BLE001 - handed to the waiting caller
                    outcome = exc
                resolve_pending(pending, outcome)
            return
        self.batches += 1
        self.operations += len(batch)
        for pending, outcome in zip(batch, outcomes, strict=True):
            resolve_pending(pending, outcome)

    async def _drop_connection(self) -> None:
        if self._connection is not None:
            try:
                await self._connection.close()
            except Exception:  # noqa: BLE001 - the connection is discarded either way
                logger.debug("closing a failed metering connection failed", exc_info=True)
            self._connection = None

    async def _connect(self) -> psycopg.AsyncConnection:
        if self._connection is None or self._connection.closed:
            self._connection = await psycopg.AsyncConnection.connect(self._conninfo, autocommit=True)
            # The statements are the same in every batch; only their parameters change. One
            # generic plan serves them all, which saved about 0.1 ms of planning per batch here.
            await self._connection.execute("SET plan_cache_mode = force_generic_plan")
        return self._connection

    async def _write_batch(self, operations: list[Operation]) -> list[Any]:
        now = utcnow()
        connection = await self._connect()
        outcomes = await self._write_optimistically(connection, operations, now)
        if outcomes is not None:
            self.optimistic += 1
            return outcomes
        return await self._write_locked(connection, operations, now)

    async def _write_optimistically(self, connection: psycopg.AsyncConnection, operations: list[Operation], now: Any) -> list[Any] | None:
        """Decide against the balances the last batches returned and write in one statement.

        The balances may be stale when another process moved the same accounts since, so they
        only ever admit holds: a batch that would refuse a hold goes the locked way, where the
        current rows decide. Admitting one too many can never commit: the buyer's row would break
        its CHECK constraint (debits posted and pending within credits posted), the statement
        fails whole, and the batch goes the locked way. Returns None when the batch must go
        that way; a hold that spends against a key's limit always does.
        """
        specs = account_specs(operations)
        if any(name not in self._account_ids for name, *_ in specs):
            return None
        if any(isinstance(operation, OpenRequest) and spend_key_of(operation, now) is not None for operation in operations):
            return None
        ids = {name: self._account_ids[name] for name, *_ in specs}
        buyers = [ids[name] for name, code, *_ in specs if code == "buyer"]
        if any(buyer not in self._balances for buyer in buyers):
            return None
        balances = {buyer: list(self._balances[buyer]) for buyer in buyers}
        batch = Batch(now, set(buyers))
        # Settling and failing only release spend reservations; no decision reads these rows.
        spend_rows: dict[tuple[int, str], list[int]] = collections.defaultdict(lambda: [0, 0])
        outcomes = self._decide(batch, operations, ids, spend_rows, balances)
        if any(isinstance(outcome, Exception) for outcome in outcomes):
            return None
        try:
            moved = await self._write(connection, batch)
        except psycopg.errors.CheckViolation:
            self.stale += 1
            return None
        self._remember(moved)
        return _correct_balances(operations, outcomes, balances, moved, ids)

    async def _write_locked(self, connection: psycopg.AsyncConnection, operations: list[Operation], now: Any) -> list[Any]:
        """Lock the batch's accounts, decide against their current rows, and write, in one transaction."""
        self._new_account_ids = {}
        outcomes: list[Any] = []
        try:
            async with connection.transaction():
                specs = account_specs(operations)
                ids = await self._account_ids_of(connection, specs)
                spend_keys = sorted({key for key in (spend_key_of(operation, now) for operation in operations) if key is not None})
                spend_rows = await self._lock_spend(connection, spend_keys)
                buyers = [ids[name] for name, code, *_ in specs if code == "buyer"]
                cursor = await connection.execute(_LOCK_ACCOUNTS, {"ids": list(ids.values()), "buyers": buyers})
                buyer_ids = set(buyers)
                balances = {row[0]: [row[1], row[2], row[3]] for row in await cursor.fetchall() if row[0] in buyer_ids}
                self._remember({buyer: list(balance) for buyer, balance in balances.items()})
                batch = Batch(now, buyer_ids)
                outcomes = self._decide(batch, operations, ids, spend_rows, balances)
                if all(isinstance(outcome, Exception) for outcome in outcomes):
                    raise _AllRefused
                moved = await self._write(connection, batch)
        except _AllRefused:
            return outcomes
        self._account_ids.update(self._new_account_ids)
        self._remember(moved)
        return outcomes

    def _remember(self, balances: dict[int, list[int]]) -> None:
        if len(self._balances) > 100_000:
            self._balances.clear()
        self._balances.update(balances)

    async def _account_ids_of(self, connection: psycopg.AsyncConnection, specs: list[tuple[str, str, int | None, bool]]) -> dict[str, int]:
        ids = {name: self._account_ids[name] for name, *_ in specs if name in self._account_ids}
        missing = [spec for spec in specs if spec[0] not in ids]
        if missing:
            for name, code, owner, constrained in missing:
                await connection.execute(_CREATE_ACCOUNT, (name, code, owner, constrained))
            cursor = await connection.execute(_FIND_ACCOUNTS, ([name for name, *_ in missing],))
            found = dict(await cursor.fetchall())
            ids.update(found)
            # Known for good only once the batch commits: a rolled-back batch takes the rows with it.
            self._new_account_ids.update(found)
        return ids

    @staticmethod
    async def _lock_spend(connection: psycopg.AsyncConnection, keys: list[tuple[int, str]]) -> dict[tuple[int, str], list[int]]:
        if not keys:
            return {}
        columns = ([key for key, _ in keys], [period for _, period in keys])
        await connection.execute(_CREATE_SPEND, columns)
        cursor = await connection.execute(_LOCK_SPEND, columns)
        return {(row[0], row[1]): [row[2], row[3]] for row in await cursor.fetchall()}

    @staticmethod
    async def _write(connection: psycopg.AsyncConnection, batch: Batch) -> dict[int, list[int]]:
        """Write the batch in one statement; return the new [credits_posted, debits_posted, debits_pending] of each account moved."""
        new, reopened, finished, transfers = batch.new_generations, batch.reopened_generations, batch.finished_generations, batch.transfers
        spend = [
            {"key": key, "period": period, "reserved": reserved, "spent": spent}
            for (key, period), (reserved, spent) in sorted(batch.spend_deltas.items())
            if reserved or spent
        ]
        accounts = [
            {"id": account_id, "debits_posted": deltas[0], "debits_pending": deltas[1], "credits_posted": deltas[2], "credits_pending": deltas[3]}
            for account_id, deltas in sorted(batch.account_deltas.items())
            if any(deltas)
        ]
        # Each table's rows travel as one JSON parameter: json.dumps runs in C, where psycopg's
        # adaptation of some forty arrays took about a tenth of a call's CPU time.
        parameters = {
            "now": batch.now,
            "new": _json(new),
            "reopened": _json(reopened),
            "finished": _json(finished),
            "transfers": _json(transfers),
            "spend": _json(spend),
            "accounts": _json(accounts),
            "n_new": len(new),
            "n_reopened": len(reopened),
            "n_finished": len(finished),
            "n_transfers": len(transfers),
            "n_spent": len(spend),
            "n_moved": len(accounts),
        }
        cursor = await connection.execute(_WRITE, parameters)
        # Account ids start at 1, so id 0 is the row that checked the counts.
        return {row[0]: [row[1], row[2], row[3]] for row in await cursor.fetchall() if row[0] != 0}


def _correct_balances(
    operations: list[Operation], outcomes: list[Any], guessed: dict[int, list[int]], moved: dict[int, list[int]], ids: dict[str, int]
) -> list[Any]:
    """Shift each settled call's balance by how far the guess was from the rows written.

    Another process's writes since the guess move every balance of the batch by the same amount.
    """
    corrected = []
    for operation, outcome in zip(operations, outcomes, strict=True):
        if isinstance(outcome, metering.SettledCall):
            buyer = ids[ledger.buyer_account_name(owner_of(operation))]
            shift = available_nano_usd(moved[buyer]) - available_nano_usd(guessed[buyer]) if buyer in moved else 0
            outcome = dataclasses.replace(outcome, balance_nano_usd=outcome.balance_nano_usd + shift)
        corrected.append(outcome)
    return corrected


def _json(rows: list[dict[str, Any]]) -> str:
    """Serialize row dicts for `jsonb_to_recordset`; timestamps as ISO 8601 with their offset."""
    return json.dumps(rows, separators=(",", ":"), default=_timestamp)


def _timestamp(value: Any) -> str:
    if isinstance(value, dt.datetime):
        return value.isoformat()
    raise TypeError(f"cannot write {type(value).__name__} to a metering batch")

