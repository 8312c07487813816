"""The ledger and the money side of a metered call, on SQLite and on PostgreSQL.

Balances are read back in a fresh session after each commit, so every check reads what the
database stored, not values an ORM object cached before an UPDATE.
"""

from __future__ import annotations

import datetime as dt
import threading
import time

import pytest
from sqlalchemy import func, select, text

from chain.devchain import DEV_SUPPLIER_PAYOUT
from marketplace import accounts, ledger, listings, metering
from marketplace.db import Database
from marketplace.errors import InsufficientBalance
from marketplace.models import Account, Generation, LedgerAccount, LedgerTransfer
from marketplace.settings import Settings
from providers.usage import Usage

CHAIN_ASSET = ledger.chain_asset_account_name(31337, "0x" + "11" * 20)
# Expiry times are fixed and far from the wall clock, so each sweep names its own `now`.
BASE_TIME = dt.datetime(2031, 1, 1, tzinfo=dt.UTC)


def create_buyer(db: Database) -> int:
    """Create an account with its buyer ledger account and return the account id."""
    with db.transaction() as session:
        account = Account()
        session.add(account)
        session.flush()
        ledger.get_buyer_account(session, account.id)
        return account.id


def deposit(db: Database, account_id: int, amount_nano_usd: int, transfer_id: str) -> None:
    with db.transaction() as session:
        source = ledger.get_or_create_account(session, CHAIN_ASSET, "chain_asset")
        buyer = ledger.get_buyer_account(session, account_id)
        ledger.transfer(session, transfer_id, source, buyer, amount_nano_usd, "deposit")


def place_hold(db: Database, account_id: int, hold_id: str, amount_nano_usd: int, expires_at: dt.datetime = BASE_TIME) -> None:
    with db.transaction() as session:
        buyer = ledger.get_buyer_account(session, account_id)
        clearing = ledger.get_or_create_account(session, ledger.USAGE_CLEARING, "usage_clearing")
        ledger.place_hold(session, hold_id, buyer, clearing, amount_nano_usd, expires_at)


def read_account(db: Database, name: str) -> LedgerAccount:
    with db.session() as session:
        account = session.scalar(select(LedgerAccount).where(LedgerAccount.name == name))
        assert account is not None, f"ledger account {name} does not exist"
        return account


def read_buyer(db: Database, account_id: int) -> LedgerAccount:
    return read_account(db, ledger.buyer_account_name(account_id))


def read_balance(db: Database, account_id: int) -> ledger.Balance:
    with db.session() as session:
        return ledger.read_balance(session, read_buyer(db, account_id).id)


def read_totals(db: Database) -> ledger.LedgerTotals:
    with db.session() as session:
        return ledger.read_totals(session)


def read_transfer(db: Database, transfer_id: str) -> LedgerTransfer | None:
    with db.session() as session:
        return session.get(LedgerTransfer, transfer_id)


def count_transfers(db: Database) -> int:
    with db.session() as session:
        return session.scalar(select(func.count()).select_from(LedgerTransfer))


def count_resolutions(db: Database, hold_id: str) -> int:
    with db.session() as session:
        return session.scalar(select(func.count()).select_from(LedgerTransfer).where(LedgerTransfer.pending_id == hold_id))


# Transfers


def test_transfer_moves_exact_amount(db):
    buyer_id = create_buyer(db)

    deposit(db, buyer_id, 1_234_567, "deposit-1")

    buyer = read_buyer(db, buyer_id)
    source = read_account(db, CHAIN_ASSET)
    assert buyer.credits_posted_nano_usd == 1_234_567
    assert buyer.debits_posted_nano_usd == 0
    assert buyer.credits_pending_nano_usd == 0
    assert buyer.debits_pending_nano_usd == 0
    assert source.debits_posted_nano_usd == 1_234_567
    assert source.credits_posted_nano_usd == 0
    assert read_balance(db, buyer_id).posted_nano_usd == 1_234_567


def test_transfers_keep_ledger_totals_balanced(db):
    buyer_id = create_buyer(db)

    deposit(db, buyer_id, 1_000, "deposit-1")
    deposit(db, buyer_id, 2_500, "deposit-2")
    place_hold(db, buyer_id, "hold-1", 700)

    totals = read_totals(db)
    assert totals.debits_posted_nano_usd == 3_500
    assert totals.credits_posted_nano_usd == 3_500
    assert totals.debits_pending_nano_usd == 700
    assert totals.credits_pending_nano_usd == 700
    assert totals.balanced
    assert totals.negative_constrained_accounts == 0


def test_transfer_id_is_idempotent(db):
    buyer_id = create_buyer(db)

    deposit(db, buyer_id, 5_000, "deposit-1")
    deposit(db, buyer_id, 5_000, "deposit-1")

    with db.session() as session:
        rows = session.scalar(select(func.count()).select_from(LedgerTransfer).where(LedgerTransfer.id == "deposit-1"))
    assert rows == 1
    assert count_transfers(db) == 1
    assert read_buyer(db, buyer_id).credits_posted_nano_usd == 5_000
    assert read_account(db, CHAIN_ASSET).debits_posted_nano_usd == 5_000


def test_repeated_transfer_returns_first_row(db):
    buyer_id = create_buyer(db)
    deposit(db, buyer_id, 5_000, "deposit-1")

    with db.transaction() as session:
        source = ledger.get_or_create_account(session, CHAIN_ASSET, "chain_asset")
        buyer = ledger.get_buyer_account(session, buyer_id)
        again = ledger.transfer(session, "deposit-1", source, buyer, 5_000, "deposit")
        again_id = again.id
        again_amount = again.amount_nano_usd

    assert again_id == "deposit-1"
    assert again_amount == 5_000


@pytest.mark.parametrize("change", ["amount", "code", "credit_account"])
def test_reused_transfer_id_raises_conflict(db, change):
    buyer_id = create_buyer(db)
    other_buyer_id = create_buyer(db)
    deposit(db, buyer_id, 5_000, "deposit-1")

    with pytest.raises(ledger.TransferConflict, match="transfer id deposit-1 already names a different movement"):
        with db.transaction() as session:
            source = ledger.get_or_create_account(session, CHAIN_ASSET, "chain_asset")
            credit_id = other_buyer_id if change == "credit_account" else buyer_id
            credit = ledger.get_buyer_account(session, credit_id)
            amount = 5_001 if change == "amount" else 5_000
            code = "refund" if change == "code" else "deposit"
            ledger.transfer(session, "deposit-1", source, credit, amount, code)

    assert read_buyer(db, buyer_id).credits_posted_nano_usd == 5_000
    assert read_buyer(db, other_buyer_id).credits_posted_nano_usd == 0
    assert count_transfers(db) == 1


def test_transfer_from_buyer_beyond_balance_is_rejected(db):
    buyer_id = create_buyer(db)
    deposit(db, buyer_id, 1_000, "deposit-1")

    with pytest.raises(ledger.InsufficientFunds):
        with db.transaction() as session:
            buyer = ledger.get_buyer_account(session, buyer_id)
            source = ledger.get_or_create_account(session, CHAIN_ASSET, "chain_asset")
            ledger.transfer(session, "withdrawal-1", buyer, source, 1_001, "payout")

    assert read_buyer(db, buyer_id).debits_posted_nano_usd == 0
    assert count_transfers(db) == 1


# Holds


def test_hold_larger_than_available_is_rejected(db):
    buyer_id = create_buyer(db)
    deposit(db, buyer_id, 1_000, "deposit-1")
    place_hold(db, buyer_id, "hold-1", 600)
    transfers_before = count_transfers(db)

    with pytest.raises(ledger.InsufficientFunds) as raised:
        place_hold(db, buyer_id, "hold-2", 401)

    assert raised.value.available_nano_usd == 400
    assert raised.value.requested_nano_usd == 401
    assert count_transfers(db) == transfers_before
    assert read_transfer(db, "hold-2") is None
    buyer = read_buyer(db, buyer_id)
    assert buyer.debits_pending_nano_usd == 600
    assert buyer.debits_posted_nano_usd == 0
    assert read_account(db, ledger.USAGE_CLEARING).credits_pending_nano_usd == 600


def test_hold_of_exact_available_balance_is_accepted(db):
    buyer_id = create_buyer(db)
    deposit(db, buyer_id, 1_000, "deposit-1")
    place_hold(db, buyer_id, "hold-1", 600)

    place_hold(db, buyer_id, "hold-2", 400)

    assert read_balance(db, buyer_id).available_nano_usd == 0


def test_hold_on_unfunded_buyer_is_rejected(db):
    buyer_id = create_buyer(db)

    with pytest.raises(ledger.InsufficientFunds) as raised:
        place_hold(db, buyer_id, "hold-1", 1)

    assert raised.value.available_nano_usd == 0
    assert count_transfers(db) == 0


def test_partial_post_posts_part_and_releases_rest(db):
    buyer_id = create_buyer(db)
    deposit(db, buyer_id, 1_000, "deposit-1")
    place_hold(db, buyer_id, "hold-1", 600)

    with db.transaction() as session:
        ledger.post_hold(session, "hold-1", 250)

    buyer = read_buyer(db, buyer_id)
    assert buyer.debits_pending_nano_usd == 0
    assert buyer.debits_posted_nano_usd == 250
    assert buyer.credits_posted_nano_usd == 1_000
    clearing = read_account(db, ledger.USAGE_CLEARING)
    assert clearing.credits_pending_nano_usd == 0
    assert clearing.credits_posted_nano_usd == 250
    assert read_balance(db, buyer_id).available_nano_usd == 750
    assert read_totals(db).balanced


def test_partial_post_writes_one_resolving_transfer(db):
    buyer_id = create_buyer(db)
    deposit(db, buyer_id, 1_000, "deposit-1")
    place_hold(db, buyer_id, "hold-1", 600)

    with db.transaction() as session:
        ledger.post_hold(session, "hold-1", 250)

    resolution = read_transfer(db, "hold-1:post")
    assert resolution is not None
    assert resolution.pending_id == "hold-1"
    assert resolution.amount_nano_usd == 250
    assert resolution.code == "post"
    assert resolution.is_pending is False
    assert count_resolutions(db, "hold-1") == 1


def test_post_of_whole_hold_releases_nothing_extra(db):
    buyer_id = create_buyer(db)
    deposit(db, buyer_id, 1_000, "deposit-1")
    place_hold(db, buyer_id, "hold-1", 600)

    with db.transaction() as session:
        ledger.post_hold(session, "hold-1", 600)

    buyer = read_buyer(db, buyer_id)
    assert buyer.debits_pending_nano_usd == 0
    assert buyer.debits_posted_nano_usd == 600


def test_post_larger_than_hold_is_rejected(db):
    buyer_id = create_buyer(db)
    deposit(db, buyer_id, 1_000, "deposit-1")
    place_hold(db, buyer_id, "hold-1", 600)

    with pytest.raises(ledger.LedgerError, match="post of 601 nano-USD is outside hold hold-1 of 600 nano-USD"):
        with db.transaction() as session:
            ledger.post_hold(session, "hold-1", 601)

    buyer = read_buyer(db, buyer_id)
    assert buyer.debits_pending_nano_usd == 600
    assert buyer.debits_posted_nano_usd == 0
    assert count_resolutions(db, "hold-1") == 0


def test_void_releases_whole_hold(db):
    buyer_id = create_buyer(db)
    deposit(db, buyer_id, 1_000, "deposit-1")
    place_hold(db, buyer_id, "hold-1", 600)

    with db.transaction() as session:
        ledger.void_hold(session, "hold-1")

    buyer = read_buyer(db, buyer_id)
    assert buyer.debits_pending_nano_usd == 0
    assert buyer.debits_posted_nano_usd == 0
    clearing = read_account(db, ledger.USAGE_CLEARING)
    assert clearing.credits_pending_nano_usd == 0
    assert clearing.credits_posted_nano_usd == 0
    assert read_balance(db, buyer_id).available_nano_usd == 1_000
    resolution = read_transfer(db, "hold-1:void")
    assert resolution is not None
    assert resolution.amount_nano_usd == 0
    assert resolution.pending_id == "hold-1"


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("post", "void"),
        ("post", "expire"),
        ("void", "post"),
        ("void", "expire"),
        ("expire", "post"),
        ("expire", "void"),
    ],
)
def test_hold_resolves_once(db, first, second):
    resolve = {
        "post": lambda session: ledger.post_hold(session, "hold-1", 100),
        "void": lambda session: ledger.void_hold(session, "hold-1"),
        "expire": lambda session: ledger.expire_hold(session, "hold-1"),
    }
    buyer_id = create_buyer(db)
    deposit(db, buyer_id, 1_000, "deposit-1")
    place_hold(db, buyer_id, "hold-1", 600)
    with db.transaction() as session:
        resolve[first](session)
    balance_after_first = read_balance(db, buyer_id)

    with pytest.raises(ledger.HoldAlreadyResolved, match=f"hold hold-1 was already resolved by {first}"):
        with db.transaction() as session:
            resolve[second](session)

    assert read_balance(db, buyer_id) == balance_after_first
    assert count_resolutions(db, "hold-1") == 1


def test_post_repeated_with_same_amount_is_idempotent(db):
    buyer_id = create_buyer(db)
    deposit(db, buyer_id, 1_000, "deposit-1")
    place_hold(db, buyer_id, "hold-1", 600)
    with db.transaction() as session:
        ledger.post_hold(session, "hold-1", 250)

    with db.transaction() as session:
        again = ledger.post_hold(session, "hold-1", 250)
        again_id = again.id

    assert again_id == "hold-1:post"
    assert count_resolutions(db, "hold-1") == 1
    buyer = read_buyer(db, buyer_id)
    assert buyer.debits_posted_nano_usd == 250
    assert buyer.debits_pending_nano_usd == 0
    assert read_account(db, ledger.USAGE_CLEARING).credits_posted_nano_usd == 250


def test_post_repeated_with_other_amount_is_rejected(db):
    buyer_id = create_buyer(db)
    deposit(db, buyer_id, 1_000, "deposit-1")
    place_hold(db, buyer_id, "hold-1", 600)
    with db.transaction() as session:
        ledger.post_hold(session, "hold-1", 250)

    with pytest.raises(ledger.HoldAlreadyResolved):
        with db.transaction() as session:
            ledger.post_hold(session, "hold-1", 300)

    assert read_buyer(db, buyer_id).debits_posted_nano_usd == 250


def test_resolving_unknown_hold_raises_ledger_error(db):
    with pytest.raises(ledger.LedgerError, match="hold missing does not exist"):
        with db.transaction() as session:
            ledger.void_hold(session, "missing")


def test_resolving_plain_transfer_raises_ledger_error(db):
    buyer_id = create_buyer(db)
    deposit(db, buyer_id, 1_000, "deposit-1")

    with pytest.raises(ledger.LedgerError, match="hold deposit-1 does not exist"):
        with db.transaction() as session:
            ledger.post_hold(session, "deposit-1", 0)

    assert count_transfers(db) == 1


# Expiry


def test_find_expired_holds_skips_resolved_and_unexpired(db):
    buyer_id = create_buyer(db)
    deposit(db, buyer_id, 10_000, "deposit-1")
    place_hold(db, buyer_id, "expired-open", 100, BASE_TIME + dt.timedelta(minutes=10))
    place_hold(db, buyer_id, "expired-posted", 200, BASE_TIME + dt.timedelta(minutes=10))
    place_hold(db, buyer_id, "expired-voided", 300, BASE_TIME + dt.timedelta(minutes=5))
    place_hold(db, buyer_id, "expires-at-now", 400, BASE_TIME + dt.timedelta(minutes=30))
    place_hold(db, buyer_id, "expires-later", 500, BASE_TIME + dt.timedelta(minutes=60))
    with db.transaction() as session:
        ledger.post_hold(session, "expired-posted", 150)
        ledger.void_hold(session, "expired-voided")

    with db.session() as session:
        expired = ledger.find_expired_holds(session, now=BASE_TIME + dt.timedelta(minutes=30))

    assert expired == ["expired-open"]


def test_expire_sweep_releases_only_expired_holds(db):
    buyer_id = create_buyer(db)
    deposit(db, buyer_id, 10_000, "deposit-1")
    place_hold(db, buyer_id, "expired-open", 100, BASE_TIME + dt.timedelta(minutes=10))
    place_hold(db, buyer_id, "expired-posted", 200, BASE_TIME + dt.timedelta(minutes=10))
    place_hold(db, buyer_id, "expires-later", 500, BASE_TIME + dt.timedelta(minutes=60))
    with db.transaction() as session:
        ledger.post_hold(session, "expired-posted", 150)

    with db.transaction() as session:
        expired_count = metering.expire_holds(session, now=BASE_TIME + dt.timedelta(minutes=30))

    assert expired_count == 1
    resolution = read_transfer(db, "expired-open:expire")
    assert resolution is not None
    assert resolution.amount_nano_usd == 0
    assert count_resolutions(db, "expired-posted") == 1
    assert read_transfer(db, "expired-posted:expire") is None
    assert count_resolutions(db, "expires-later") == 0
    buyer = read_buyer(db, buyer_id)
    assert buyer.debits_pending_nano_usd == 500
    assert buyer.debits_posted_nano_usd == 150
    assert read_totals(db).balanced


def test_second_expire_sweep_releases_nothing(db):
    buyer_id = create_buyer(db)
    deposit(db, buyer_id, 10_000, "deposit-1")
    place_hold(db, buyer_id, "hold-1", 100, BASE_TIME)
    sweep_time = BASE_TIME + dt.timedelta(minutes=1)
    with db.transaction() as session:
        metering.expire_holds(session, now=sweep_time)

    with db.transaction() as session:
        expired_count = metering.expire_holds(session, now=sweep_time)

    assert expired_count == 0
    assert count_resolutions(db, "hold-1") == 1
    assert read_balance(db, buyer_id).available_nano_usd == 10_000


# Metered calls


def create_caller(db: Database) -> tuple[int, int, int, int]:
    """Create a buyer with an API key, and a supplier with one listing.

    Returns (buyer account id, API key id, supplier id, listing id).
    """
    settings = Settings(database_url=db.url)
    buyer_id = create_buyer(db)
    with db.transaction() as session:
        api_key = accounts.create_api_key(session, buyer_id, "test").key
        supplier_account = Account()
        session.add(supplier_account)
        session.flush()
        supplier = listings.register_supplier(session, supplier_account.id, "Test Supplier", DEV_SUPPLIER_PAYOUT.address)
        listing = listings.create_listing(
            session,
            settings,
            supplier,
            listings.ListingInput(
                model="deepseek/deepseek-chat",
                upstream_base_url="http://127.0.0.1:9",
                upstream_credential="upstream-secret",
                upstream_model="mock-1",
                upstream_protocol="openai",
                list_input_micro_usd_per_mtok=270_000,
                list_output_micro_usd_per_mtok=1_100_000,
                offer_input_micro_usd_per_mtok=216_000,
                offer_output_micro_usd_per_mtok=880_000,
            ),
        )
        return buyer_id, api_key.id, supplier.id, listing.id


def open_call(db: Database, generation_id: str, buyer_id: int, api_key_id: int, listing_id: int, hold_nano_usd: int, hold_ttl_s: int = 600) -> metering.OpenedCall:
    return metering.open_call(
        db,
        generation_id=generation_id,
        account_id=buyer_id,
        api_key_id=api_key_id,
        listing_id=listing_id,
        model="deepseek/deepseek-chat",
        stream=False,
        hold_nano_usd=hold_nano_usd,
        hold_ttl_s=hold_ttl_s,
    )


def read_generation(db: Database, generation_id: str) -> Generation | None:
    with db.session() as session:
        return session.get(Generation, generation_id)


def test_settle_call_splits_cost_with_platform(db):
    buyer_id, api_key_id, supplier_id, listing_id = create_caller(db)
    deposit(db, buyer_id, 10_000_000, "deposit-1")
    call = open_call(db, "gen-1", buyer_id, api_key_id, listing_id, hold_nano_usd=1_000_000)

    settled = metering.settle_call(
        db,
        call,
        usage=Usage(prompt_tokens=100, completion_tokens=50),
        cost_nano_usd=123_457,
        supplier_id=supplier_id,
        fee_bps=500,
        status="completed",
    )

    # The fee is 123,457 x 5% = 6,172.85, rounded down to 6,172. The supplier gets the rest.
    assert settled.cost_nano_usd == 123_457
    assert settled.charged_nano_usd == 123_457
    assert settled.balance_nano_usd == 9_876_543
    buyer = read_buyer(db, buyer_id)
    assert buyer.debits_posted_nano_usd == 123_457
    assert buyer.debits_pending_nano_usd == 0
    supplier = read_account(db, ledger.supplier_account_name(supplier_id))
    assert supplier.credits_posted_nano_usd == 117_285
    assert supplier.debits_posted_nano_usd == 0
    revenue = read_account(db, ledger.PLATFORM_REVENUE)
    assert revenue.credits_posted_nano_usd == 6_172
    clearing = read_account(db, ledger.USAGE_CLEARING)
    assert clearing.credits_posted_nano_usd == 123_457
    assert clearing.debits_posted_nano_usd == 123_457
    assert clearing.credits_pending_nano_usd == 0
    assert read_totals(db).balanced


def test_settle_call_records_usage_and_cost(db):
    buyer_id, api_key_id, supplier_id, listing_id = create_caller(db)
    deposit(db, buyer_id, 10_000_000, "deposit-1")
    call = open_call(db, "gen-1", buyer_id, api_key_id, listing_id, hold_nano_usd=1_000_000)

    metering.settle_call(
        db,
        call,
        usage=Usage(prompt_tokens=100, completion_tokens=50, cached_prompt_tokens=40, cache_write_tokens=10, reasoning_tokens=20),
        cost_nano_usd=123_457,
        supplier_id=supplier_id,
        fee_bps=500,
        status="completed",
    )

    generation = read_generation(db, "gen-1")
    assert generation is not None
    assert generation.status == "completed"
    assert generation.cost_nano_usd == 123_457
    assert generation.hold_nano_usd == 1_000_000
    assert generation.prompt_tokens == 100
    assert generation.completion_tokens == 50
    assert generation.cached_prompt_tokens == 40
    assert generation.cache_write_tokens == 10
    assert generation.reasoning_tokens == 20
    assert generation.finished_at is not None


def test_settle_call_charges_at_most_the_hold(db):
    buyer_id, api_key_id, supplier_id, listing_id = create_caller(db)
    deposit(db, buyer_id, 10_000_000, "deposit-1")
    call = open_call(db, "gen-1", buyer_id, api_key_id, listing_id, hold_nano_usd=1_000)

    settled = metering.settle_call(
        db,
        call,
        usage=Usage(prompt_tokens=100, completion_tokens=50),
        cost_nano_usd=1_500,
        supplier_id=supplier_id,
        fee_bps=500,
        status="completed",
    )

    assert settled.cost_nano_usd == 1_500
    assert settled.charged_nano_usd == 1_000
    assert read_buyer(db, buyer_id).debits_posted_nano_usd == 1_000
    assert read_account(db, ledger.supplier_account_name(supplier_id)).credits_posted_nano_usd == 950
    assert read_account(db, ledger.PLATFORM_REVENUE).credits_posted_nano_usd == 50


def test_open_call_beyond_balance_writes_nothing(db):
    buyer_id, api_key_id, _supplier_id, listing_id = create_caller(db)
    deposit(db, buyer_id, 999, "deposit-1")
    transfers_before = count_transfers(db)

    with pytest.raises(InsufficientBalance) as raised:
        open_call(db, "gen-1", buyer_id, api_key_id, listing_id, hold_nano_usd=1_000)

    assert raised.value.code == "insufficient_balance"
    assert read_generation(db, "gen-1") is None
    assert count_transfers(db) == transfers_before
    assert read_buyer(db, buyer_id).debits_pending_nano_usd == 0


def test_fail_call_charges_nothing(db):
    buyer_id, api_key_id, supplier_id, listing_id = create_caller(db)
    deposit(db, buyer_id, 10_000_000, "deposit-1")
    call = open_call(db, "gen-1", buyer_id, api_key_id, listing_id, hold_nano_usd=1_000_000)

    metering.fail_call(db, call, error="upstream returned 500")

    buyer = read_buyer(db, buyer_id)
    assert buyer.debits_posted_nano_usd == 0
    assert buyer.debits_pending_nano_usd == 0
    assert read_balance(db, buyer_id).available_nano_usd == 10_000_000
    assert read_account(db, ledger.supplier_account_name(supplier_id)).credits_posted_nano_usd == 0
    resolution = read_transfer(db, "hold:gen-1:void")
    assert resolution is not None
    assert resolution.amount_nano_usd == 0
    generation = read_generation(db, "gen-1")
    assert generation is not None
    assert generation.status == "failed"
    assert generation.cost_nano_usd == 0
    assert generation.error == "upstream returned 500"


def test_expire_sweep_marks_pending_generation_expired(db):
    buyer_id, api_key_id, _supplier_id, listing_id = create_caller(db)
    deposit(db, buyer_id, 10_000_000, "deposit-1")
    open_call(db, "gen-1", buyer_id, api_key_id, listing_id, hold_nano_usd=1_000_000, hold_ttl_s=60)
    after_expiry = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)

    with db.transaction() as session:
        expired_count = metering.expire_holds(session, now=after_expiry)

    assert expired_count == 1
    generation = read_generation(db, "gen-1")
    assert generation is not None
    assert generation.status == "expired"
    assert read_balance(db, buyer_id).available_nano_usd == 10_000_000


# Concurrency. Only PostgreSQL runs these, because SQLite serializes every writer with BEGIN IMMEDIATE.


def skip_unless_postgres(database_url: str) -> None:
    if not database_url.startswith("postgresql"):
        pytest.skip("needs concurrent writers, which only PostgreSQL runs")


@pytest.mark.postgres
def test_concurrent_holds_never_overdraw(db, database_url):
    skip_unless_postgres(database_url)
    thread_count = 20
    balance = 1_000_000
    hold_amount = balance // 10
    buyer_id = create_buyer(db)
    deposit(db, buyer_id, balance, "deposit-1")
    with db.transaction() as session:
        ledger.get_or_create_account(session, ledger.USAGE_CLEARING, "usage_clearing")

    start = threading.Barrier(thread_count + 1)
    outcomes: list[str] = []
    outcomes_lock = threading.Lock()

    def place(index: int) -> None:
        start.wait()
        try:
            place_hold(db, buyer_id, f"hold-{index}", hold_amount)
            outcome = "placed"
        except ledger.InsufficientFunds:
            outcome = "insufficient"
        except Exception as exc:  # recorded so that the test reports it instead of losing it in a thread
            outcome = f"error: {exc!r}"
        with outcomes_lock:
            outcomes.append(outcome)

    # A reader samples the available balance while the holds race, to catch a transient overdraft.
    observed_available: list[int] = []
    workers_done = threading.Event()

    def observe() -> None:
        start.wait()
        while not workers_done.is_set():
            observed_available.append(read_balance(db, buyer_id).available_nano_usd)

    workers = [threading.Thread(target=place, args=(index,)) for index in range(thread_count)]
    reader = threading.Thread(target=observe)
    for thread in [*workers, reader]:
        thread.start()
    for thread in workers:
        thread.join()
    workers_done.set()
    reader.join()

    assert outcomes.count("placed") == 10
    assert outcomes.count("insufficient") == 10
    assert len(outcomes) == thread_count
    assert read_balance(db, buyer_id).available_nano_usd == 0
    assert read_buyer(db, buyer_id).debits_pending_nano_usd == balance
    assert min(observed_available, default=0) >= 0
    assert read_totals(db).negative_constrained_accounts == 0
    with db.session() as session:
        holds = session.scalar(select(func.count()).select_from(LedgerTransfer).where(LedgerTransfer.code == "hold"))
    assert holds == 10


def wait_until_backend_waits_on_lock(db: Database, backend_pid: int, deadline_s: float = 30.0) -> None:
    """Block until PostgreSQL backend backend_pid waits on a lock. Fail the test after deadline_s seconds."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        with db.session() as session:
            wait_event_type = session.scalar(
                text("SELECT wait_event_type FROM pg_stat_activity WHERE pid = :pid"), {"pid": backend_pid}
            )
        if wait_event_type == "Lock":
            return
        time.sleep(0.01)
    pytest.fail(f"backend {backend_pid} did not wait on a lock within {deadline_s} s")


@pytest.mark.postgres
def test_concurrent_account_creation_returns_one_account(db, database_url):
    skip_unless_postgres(database_url)
    name = ledger.PLATFORM_REVENUE
    second_result: dict[str, object] = {}
    second_backend: list[int] = []
    second_started = threading.Event()

    def create_in_second_transaction() -> None:
        try:
            with db.transaction() as session:
                second_backend.append(session.scalar(text("SELECT pg_backend_pid()")))
                second_started.set()
                second_result["id"] = ledger.get_or_create_account(session, name, "platform_revenue").id
        except Exception as exc:  # recorded for the assert below
            second_result["error"] = exc
        finally:
            second_started.set()

    with db.session() as first:
        first.begin()
        first_id = ledger.get_or_create_account(first, name, "platform_revenue").id
        second = threading.Thread(target=create_in_second_transaction)
        second.start()
        second_started.wait()
        assert second_backend, f"second transaction failed to start: {second_result.get('error')!r}"
        # The second transaction found no row and now waits on the uncommitted insert's unique key.
        wait_until_backend_waits_on_lock(db, second_backend[0])
        first.commit()
    second.join()

    assert second_result.get("error") is None, f"second transaction failed: {second_result.get('error')!r}"
    assert second_result.get("id") == first_id


def _post_and_split(db: Database, hold_id: str, posted: int, supplier_share: int) -> ledger.Balance:
    with db.transaction() as session:
        supplier = ledger.get_or_create_account(session, "supplier:77", "supplier_payable")
        revenue = ledger.get_or_create_account(session, ledger.PLATFORM_REVENUE, "platform_revenue")
        splits = [
            ledger.Split(f"{hold_id}:supplier", supplier, supplier_share, "usage_supplier"),
            ledger.Split(f"{hold_id}:fee", revenue, posted - supplier_share, "usage_fee"),
        ]
        return ledger.post_hold_and_split(session, hold_id, posted, splits)


def test_post_and_split_moves_exact_amounts(db):
    buyer_id = create_buyer(db)
    deposit(db, buyer_id, 1_000, "deposit-1")
    place_hold(db, buyer_id, "hold-1", 600)

    balance = _post_and_split(db, "hold-1", 400, 380)

    assert balance.posted_nano_usd == 600
    assert balance.pending_debits_nano_usd == 0
    assert read_account(db, "supplier:77").credits_posted_nano_usd == 380
    assert read_account(db, ledger.PLATFORM_REVENUE).credits_posted_nano_usd == 20
    clearing = read_account(db, ledger.USAGE_CLEARING)
    assert clearing.credits_posted_nano_usd - clearing.debits_posted_nano_usd == 0
    assert read_totals(db).balanced is True


def test_post_and_split_repeated_changes_nothing(db):
    buyer_id = create_buyer(db)
    deposit(db, buyer_id, 1_000, "deposit-1")
    place_hold(db, buyer_id, "hold-1", 600)
    _post_and_split(db, "hold-1", 400, 380)

    balance = _post_and_split(db, "hold-1", 400, 380)

    assert balance.posted_nano_usd == 600
    assert read_account(db, "supplier:77").credits_posted_nano_usd == 380
    assert count_resolutions(db, "hold-1") == 1
    assert read_totals(db).balanced is True


def test_post_and_split_after_void_is_rejected(db):
    buyer_id = create_buyer(db)
    deposit(db, buyer_id, 1_000, "deposit-1")
    place_hold(db, buyer_id, "hold-1", 600)
    with db.transaction() as session:
        ledger.void_hold(session, "hold-1")

    with pytest.raises(ledger.HoldAlreadyResolved):
        _post_and_split(db, "hold-1", 400, 380)

    assert read_buyer(db, buyer_id).debits_posted_nano_usd == 0
    assert read_buyer(db, buyer_id).debits_pending_nano_usd == 0
    assert count_resolutions(db, "hold-1") == 1
    assert read_totals(db).balanced is True
