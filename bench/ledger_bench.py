"""Holds and posts per second on PostgreSQL, through the same functions the proxy calls.

A hold writes the generation record and the ledger hold; a post posts the hold, releases the
rest, pays the supplier and the fee, and finishes the record. Two writers are measured:

- the baseline, one transaction per operation: `metering.open_call` and `metering.settle_call`
  from worker threads, each with its own connection;
- the proxy's group commit: `metering_batch.create_batcher` on one connection, with the same
  number of operations in flight (and with more), each batch in one transaction.

Each runs either all against one buyer (the hot account every call of a busy buyer locks) or
spread over 1,000 buyers.
"""

from __future__ import annotations

import asyncio
import secrets
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from marketplace import metering
from marketplace.metering_batch import OpenRequest, SettleRequest, create_batcher
from marketplace.db import Database
from marketplace.models import Account
from providers.usage import Usage

from bench.report import table
from bench.tokenport_setup import fund_buyer, prepare_tokenport

SCHEMA = "tokenport_ledger_bench"
WORKERS = 16
OPERATIONS = 2000
HOLD_NANO_USD = 100_000
COST_NANO_USD = 40_000
MANY_ACCOUNTS = 1000
# Operations in flight at once for the group commit: as many as the baseline's threads, and as
# many as a busy proxy process may hold.
IN_FLIGHT = (WORKERS, 256)


def _create_buyers(db: Database, count: int) -> list[int]:
    with db.transaction() as session:
        buyers = [Account() for _ in range(count)]
        session.add_all(buyers)
        session.flush()
        for buyer in buyers:
            fund_buyer(session, buyer.id, 10**12, f"ledger-bench-funding-{buyer.id}")
        return [buyer.id for buyer in buyers]


def _timed(operations: list, work) -> float:  # type: ignore[no-untyped-def]
    """Run `work` on each operation from WORKERS threads; return operations per second."""
    started = time.perf_counter()
    with ThreadPoolExecutor(WORKERS) as pool:
        list(pool.map(work, operations))
    return len(operations) / (time.perf_counter() - started)


def _measure(db: Database, buyer_ids: list[int], api_key_id: int, listing_id: int, supplier_id: int) -> tuple[float, float]:
    counter = iter(range(10**9))
    lock = threading.Lock()

    def open_one(index: int) -> metering.OpenedCall:
        with lock:
            number = next(counter)
        return metering.open_call(
            db,
            generation_id=f"gen-bench-{number}-{secrets.token_hex(4)}",
            account_id=buyer_ids[index % len(buyer_ids)],
            api_key_id=api_key_id,
            listing_id=listing_id,
            model="deepseek/deepseek-chat",
            stream=False,
            hold_nano_usd=HOLD_NANO_USD,
            hold_ttl_s=600,
        )

    opened: list[metering.OpenedCall] = []

    def hold(index: int) -> None:
        call = open_one(index)
        with lock:
            opened.append(call)

    def post(call: metering.OpenedCall) -> None:
        metering.settle_call(
            db,
            call,
            usage=Usage(prompt_tokens=8, completion_tokens=16),
            cost_nano_usd=COST_NANO_USD,
            supplier_id=supplier_id,
            fee_bps=500,
            status="completed",
        )

    holds_per_s = _timed(list(range(OPERATIONS)), hold)
    posts_per_s = _timed(opened, post)
    return holds_per_s, posts_per_s


def _measure_batched(db: Database, buyer_ids: list[int], api_key_id: int, listing_id: int, supplier_id: int, in_flight: int) -> tuple[float, float]:
    async def main() -> tuple[float, float]:
        writer = create_batcher(db)
        gate = asyncio.Semaphore(in_flight)
        run_id = secrets.token_hex(4)

        async def hold(index: int) -> metering.OpenedCall:
            async with gate:
                return await writer.open(
                    OpenRequest(
                        generation_id=f"gen-batch-{run_id}-{index}",
                        account_id=buyer_ids[index % len(buyer_ids)],
                        api_key_id=api_key_id,
                        listing_id=listing_id,
                        model="deepseek/deepseek-chat",
                        stream=False,
                        hold_nano_usd=HOLD_NANO_USD,
                        hold_ttl_s=600,
                    )
                )

        async def post(call: metering.OpenedCall) -> None:
            async with gate:
                await writer.settle(
                    SettleRequest(
                        call,
                        usage=Usage(prompt_tokens=8, completion_tokens=16),
                        cost_nano_usd=COST_NANO_USD,
                        supplier_id=supplier_id,
                        fee_bps=500,
                        status="completed",
                    )
                )

        try:
            started = time.perf_counter()
            opened = await asyncio.gather(*(hold(index) for index in range(OPERATIONS)))
            holds_per_s = OPERATIONS / (time.perf_counter() - started)
            started = time.perf_counter()
            await asyncio.gather(*(post(call) for call in opened))
            posts_per_s = OPERATIONS / (time.perf_counter() - started)
        finally:
            await writer.close()
        return holds_per_s, posts_per_s

    return asyncio.run(main())


def run() -> str:
    fixture = prepare_tokenport(SCHEMA, "http://127.0.0.1:9/v1", "unused")
    db = Database(fixture.database_url, pool_size=WORKERS, max_overflow=0)
    try:
        with db.session() as session:
            from marketplace.models import ApiKey, Listing

            listing = session.get(Listing, fixture.listing_id)
            api_key_id = session.query(ApiKey.id).filter(ApiKey.account_id == fixture.buyer_account_id).scalar()
            supplier_id = listing.supplier_id
        many = _create_buyers(db, MANY_ACCOUNTS)
        # Warm the pool and the prepared statements before timing.
        _measure(db, [fixture.buyer_account_id], api_key_id, fixture.listing_id, supplier_id)
        rows = []
        for label, buyers in (("one hot buyer", [fixture.buyer_account_id]), (f"{MANY_ACCOUNTS:,} buyers", many)):
            holds, posts = _measure(db, buyers, api_key_id, fixture.listing_id, supplier_id)
            rows.append([f"baseline: one transaction per operation, {WORKERS} threads", label, f"{holds:,.0f}", f"{posts:,.0f}"])
            for in_flight in IN_FLIGHT:
                holds, posts = _measure_batched(db, buyers, api_key_id, fixture.listing_id, supplier_id, in_flight)
                rows.append([f"group commit, {in_flight} in flight", label, f"{holds:,.0f}", f"{posts:,.0f}"])
    finally:
        db.dispose()
    return "\n".join(
        [
            "### Ledger on PostgreSQL",
            "",
            f"{OPERATIONS:,} holds, then as many posts, per row. The baseline runs `metering.open_call` and "
            f"`metering.settle_call` from {WORKERS} threads of one process, each with its own connection, one transaction "
            "per hold and per post. The group commit is the proxy's writer (`metering_batch.create_batcher`): one "
            "connection, every operation waiting when a batch starts goes into that batch's transaction.",
            "",
            table(["writer", "buyers", "holds per second", "posts per second"], rows),
        ]
    )
