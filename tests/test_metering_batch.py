"""The proxy's group commit: holds and settlements queued together land exactly as one by one."""

from __future__ import annotations

import asyncio
import datetime as dt

import pytest
from sqlalchemy import func, select

from marketplace import ledger, metering
from marketplace.errors import InsufficientBalance, RateLimited
from marketplace.metering_batch import FailRequest, MeteringBatcher, OpenRequest, SettleRequest, create_batcher
from marketplace.models import ApiKeySpend, Generation, LedgerAccount, LedgerTransfer
from providers.usage import Usage
from tests.test_ledger import count_transfers, create_caller, deposit, open_call, read_account, read_buyer, read_generation, read_totals


def _open(generation_id: str, buyer_id: int, api_key_id: int, listing_id: int, hold: int, **extra) -> OpenRequest:
    return OpenRequest(
        generation_id=generation_id,
        account_id=buyer_id,
        api_key_id=api_key_id,
        listing_id=listing_id,
        model="deepseek/deepseek-chat",
        stream=False,
        hold_nano_usd=hold,
        hold_ttl_s=600,
        **extra,
    )


def _settle(call: metering.OpenedCall, supplier_id: int, cost: int) -> SettleRequest:
    return SettleRequest(
        call, usage=Usage(prompt_tokens=100, completion_tokens=50), cost_nano_usd=cost, supplier_id=supplier_id, fee_bps=500, status="completed"
    )


async def _gather(batcher: MeteringBatcher, requests: list) -> list:
    """Queue every request, then let the writer run, so they all land in one batch."""
    tasks = [asyncio.ensure_future(batcher.submit(request)) for request in requests]
    await asyncio.sleep(0)
    batcher.start()
    return await asyncio.gather(*tasks, return_exceptions=True)


def run(db, scenario) -> None:
    """Run `scenario(batcher)` on one event loop with a writer that starts on `start()`, then close it."""

    async def main() -> None:
        writer = create_batcher(db, autostart=False)
        try:
            await scenario(writer)
        finally:
            await writer.close()

    asyncio.run(main())


def test_each_database_gets_its_writer(db):
    writer = create_batcher(db)
    assert type(writer).__name__ == ("PostgresBatcher" if db.is_postgres else "ThreadedBatcher")


def test_batch_holds_stop_at_balance(db):
    async def scenario(batcher: MeteringBatcher) -> None:
        buyer_id, api_key_id, supplier_id, listing_id = create_caller(db)
        deposit(db, buyer_id, 100_000, "deposit-1")

        opened = await _gather(batcher, [_open(f"gen-{n}", buyer_id, api_key_id, listing_id, 12_000) for n in range(10)])

        assert (batcher.batches, batcher.operations) == (1, 10)
        # Queued in order, decided in order: 8 holds of 12,000 fit in 100,000, the last two do not.
        calls = opened[:8]
        assert all(isinstance(call, metering.OpenedCall) for call in calls)
        for refused in opened[8:]:
            assert isinstance(refused, InsufficientBalance)
            assert refused.message == "balance of 4000 nano-USD does not cover this call's hold of 12000 nano-USD; top up, or lower max_tokens"
        assert read_buyer(db, buyer_id).debits_pending_nano_usd == 96_000
        assert read_generation(db, "gen-8") is None

        settled = await _gather(batcher, [_settle(call, supplier_id, 10_001) for call in calls])

        assert (batcher.batches, batcher.operations) == (2, 18)
        assert [item.charged_nano_usd for item in settled] == [10_001] * 8
        buyer = read_buyer(db, buyer_id)
        assert buyer.debits_posted_nano_usd == 80_008
        assert buyer.debits_pending_nano_usd == 0
        # 5% of 10,001 rounds down to 500; the supplier gets 9,501 per call.
        assert read_account(db, ledger.supplier_account_name(supplier_id)).credits_posted_nano_usd == 8 * 9_501
        assert read_account(db, ledger.PLATFORM_REVENUE).credits_posted_nano_usd == 8 * 500
        clearing = read_account(db, ledger.USAGE_CLEARING)
        assert (clearing.credits_posted_nano_usd, clearing.debits_posted_nano_usd, clearing.credits_pending_nano_usd) == (80_008, 80_008, 0)
        assert settled[-1].balance_nano_usd == 100_000 - 80_008
        totals = read_totals(db)
        assert totals.balanced
        assert totals.negative_constrained_accounts == 0
        generation = read_generation(db, "gen-3")
        assert generation is not None
        assert (generation.status, generation.cost_nano_usd, generation.prompt_tokens, generation.completion_tokens) == ("completed", 10_001, 100, 50)
        with db.session() as session:
            codes = session.execute(select(LedgerTransfer.code, func.count()).group_by(LedgerTransfer.code)).all()
        assert dict(codes) == {"deposit": 1, "hold": 8, "post": 8, "usage_supplier": 8, "usage_fee": 8}

    run(db, scenario)


def test_spend_limit_is_checked_in_queue_order(db):
    async def scenario(batcher: MeteringBatcher) -> None:
        buyer_id, api_key_id, supplier_id, listing_id = create_caller(db)
        deposit(db, buyer_id, 1_000_000, "deposit-1")
        limit = {"spend_limit_nano_usd": 30_000, "spend_limit_period": "total"}

        opened = await _gather(batcher, [_open(f"gen-{n}", buyer_id, api_key_id, listing_id, 10_000, **limit) for n in range(4)])

        assert all(isinstance(call, metering.OpenedCall) for call in opened[:3])
        assert isinstance(opened[3], RateLimited)
        assert opened[3].message == (
            "API key spend limit of 30000 nano-USD for period total would be exceeded: "
            "30000 nano-USD spent or held, this call holds 10000 nano-USD"
        )
        await _gather(batcher, [_settle(opened[0], supplier_id, 4_000), FailRequest(opened[1], "upstream returned 500")])

        with db.session() as session:
            row = session.get(ApiKeySpend, (api_key_id, "total"))
            assert row is not None
            assert (row.reserved_nano_usd, row.spent_nano_usd) == (10_000, 4_000)
        failed = read_generation(db, "gen-1")
        assert failed is not None
        assert (failed.status, failed.error, failed.cost_nano_usd) == ("failed", "upstream returned 500", 0)
        assert read_buyer(db, buyer_id).debits_pending_nano_usd == 10_000

    run(db, scenario)


def test_batch_swept_hold_fails_alone(db):
    async def scenario(batcher: MeteringBatcher) -> None:
        buyer_id, api_key_id, supplier_id, listing_id = create_caller(db)
        deposit(db, buyer_id, 100_000, "deposit-1")
        first, second = await _gather(batcher, [_open(f"gen-{n}", buyer_id, api_key_id, listing_id, 20_000) for n in range(2)])
        with db.transaction() as session:
            # The sweep runs as if both holds had outlived their calls, and reaches the first only.
            assert metering.expire_holds(session, now=dt.datetime.now(dt.UTC) + dt.timedelta(hours=1), limit=1) == 1

        outcomes = await _gather(batcher, [_settle(first, supplier_id, 5_000), _settle(second, supplier_id, 7_000)])

        # The settling batch failed on the resolved hold and was applied again one operation at a time.
        assert (batcher.batches, batcher.operations, batcher.fallbacks) == (1, 2, 1)

        expired, settled = (outcomes[0], outcomes[1]) if first.hold_id < second.hold_id else (outcomes[1], outcomes[0])
        assert isinstance(expired, ledger.HoldAlreadyResolved)
        assert str(expired) == f"hold {min(first.hold_id, second.hold_id)} was already resolved by expire"
        assert isinstance(settled, metering.SettledCall)
        buyer = read_buyer(db, buyer_id)
        assert buyer.debits_pending_nano_usd == 0
        assert buyer.debits_posted_nano_usd == settled.charged_nano_usd
        assert read_totals(db).balanced

    run(db, scenario)


def test_batch_rejected_holds_write_nothing(db):
    async def scenario(batcher: MeteringBatcher) -> None:
        buyer_id, api_key_id, _supplier_id, listing_id = create_caller(db)
        deposit(db, buyer_id, 999, "deposit-1")
        with db.session() as session:
            accounts_before = session.scalar(select(func.count()).select_from(LedgerAccount))
        transfers_before = count_transfers(db)

        outcomes = await _gather(batcher, [_open(f"gen-{n}", buyer_id, api_key_id, listing_id, 1_000) for n in range(3)])

        assert all(isinstance(outcome, InsufficientBalance) for outcome in outcomes)
        assert count_transfers(db) == transfers_before
        with db.session() as session:
            # Not even the clearing account, which the first hold of a database creates.
            assert session.scalar(select(func.count()).select_from(LedgerAccount)) == accounts_before
            assert session.scalar(select(func.count()).select_from(Generation)) == 0

    run(db, scenario)


def test_close_commits_what_is_queued(db):
    buyer_id, api_key_id, _supplier_id, listing_id = create_caller(db)
    deposit(db, buyer_id, 100_000, "deposit-1")
    writer = create_batcher(db, autostart=False)

    async def open_then_stop() -> metering.OpenedCall:
        pending = asyncio.ensure_future(writer.open(_open("gen-1", buyer_id, api_key_id, listing_id, 1_000)))
        await asyncio.sleep(0)
        writer.start()
        await writer.close()
        return await pending

    call = asyncio.run(open_then_stop())

    assert call.hold_nano_usd == 1_000
    assert read_buyer(db, buyer_id).debits_pending_nano_usd == 1_000


def test_stale_balance_never_overdraws(db):
    if not db.is_postgres:
        pytest.skip("only the PostgreSQL writer decides against the balances it last saw")

    async def scenario(batcher: MeteringBatcher) -> None:
        buyer_id, api_key_id, supplier_id, listing_id = create_caller(db)
        deposit(db, buyer_id, 100_000, "deposit-1")
        batcher.start()
        first = await batcher.open(_open("gen-1", buyer_id, api_key_id, listing_id, 10_000))
        # Another process holds most of the rest; this writer still believes 90,000 is free.
        open_call(db, "gen-other", buyer_id, api_key_id, listing_id, hold_nano_usd=85_000)

        refused = (await _gather(batcher, [_open("gen-2", buyer_id, api_key_id, listing_id, 20_000)]))[0]

        assert isinstance(refused, InsufficientBalance)
        assert refused.message == "balance of 5000 nano-USD does not cover this call's hold of 20000 nano-USD; top up, or lower max_tokens"
        assert batcher.stale == 1
        assert read_buyer(db, buyer_id).debits_pending_nano_usd == 95_000
        settled = await batcher.settle(_settle(first, supplier_id, 4_000))
        assert settled.balance_nano_usd == 100_000 - 85_000 - 4_000
        assert batcher.optimistic == 0
        # Every account is known now and the guess is fresh: one statement, no locking read.
        third = await batcher.open(_open("gen-3", buyer_id, api_key_id, listing_id, 1_000))
        await batcher.settle(_settle(third, supplier_id, 1_000))
        assert batcher.optimistic == 2
        buyer = read_buyer(db, buyer_id)
        assert (buyer.debits_posted_nano_usd, buyer.debits_pending_nano_usd) == (5_000, 85_000)
        assert read_totals(db).balanced

    run(db, scenario)


def test_low_balance_guess_rechecked_under_lock(db):
    if not db.is_postgres:
        pytest.skip("only the PostgreSQL writer decides against the balances it last saw")

    async def scenario(batcher: MeteringBatcher) -> None:
        buyer_id, api_key_id, _supplier_id, listing_id = create_caller(db)
        deposit(db, buyer_id, 10_000, "deposit-1")
        batcher.start()
        await batcher.open(_open("gen-1", buyer_id, api_key_id, listing_id, 8_000))
        # A deposit this writer has not seen: its remembered balance shows 2,000 available.
        deposit(db, buyer_id, 50_000, "deposit-2")

        call = await batcher.open(_open("gen-2", buyer_id, api_key_id, listing_id, 20_000))

        assert call.hold_nano_usd == 20_000
        assert batcher.optimistic == 0
        assert read_buyer(db, buyer_id).debits_pending_nano_usd == 28_000

    run(db, scenario)


def test_writer_survives_raising_batch(db, monkeypatch):
    async def scenario(batcher: MeteringBatcher) -> None:
        buyer_id, api_key_id, _supplier_id, listing_id = create_caller(db)
        deposit(db, buyer_id, 100_000, "deposit-1")
        real_apply = batcher._apply_batch
        calls = []

        def broken_once(batch):
            calls.append(len(batch))
            if len(calls) == 1:
                raise RuntimeError("the batch broke")
            return real_apply(batch)

        monkeypatch.setattr(batcher, "_apply_batch", broken_once)
        batcher.start()

        failed = (await _gather(batcher, [_open("gen-1", buyer_id, api_key_id, listing_id, 1_000)]))[0]
        call = await batcher.open(_open("gen-2", buyer_id, api_key_id, listing_id, 2_000))

        assert isinstance(failed, RuntimeError)
        assert str(failed) == "the batch broke"
        assert call.hold_nano_usd == 2_000
        assert read_buyer(db, buyer_id).debits_pending_nano_usd == 2_000

    run(db, scenario)
