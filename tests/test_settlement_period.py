"""Closing a period from the database: which records it holds, its balances, and stored proofs."""

from __future__ import annotations

import datetime as dt
import math

import pytest
from sqlalchemy import update
from web3 import Web3

from marketplace import ledger, metering
from marketplace.db import Database
from marketplace.models import Account, ApiKey, LedgerTransfer, Listing, SettlementPeriod, Supplier
from marketplace.settlement import store
from marketplace.settlement.encoding import ZERO_BYTES32
from marketplace.settlement.export import parse_header_line
from marketplace.settlement.leaves import ADJUSTMENT, BALANCE, Leaf
from marketplace.settlement.period import EPOCH, BuiltPeriod, PeriodBounds, SettlementError, build_period, next_bounds, to_microseconds
from marketplace.settlement.tree import MerkleSumTree, MerkleTree, balances_root_from_proof, records_root_from_proof
from providers.usage import Usage
from tests.factories import credit_without_chain

FEE_BPS = 500


def checksum(address: str) -> str:
    return Web3.to_checksum_address(address)


REGISTRY = checksum("0x" + "5f" * 20)


def seed_market(db: Database) -> dict:
    """A buyer with an API key, and a supplier with one listing, written straight to the tables."""
    with db.transaction() as session:
        buyer = Account()
        supplier_owner = Account()
        session.add_all([buyer, supplier_owner])
        session.flush()
        supplier = Supplier(account_id=supplier_owner.id, name="Supplier", payout_address=checksum("0x" + "90" * 20))
        key = ApiKey(account_id=buyer.id, name="test", key_prefix="tp-test", key_hash="f" * 64)
        session.add_all([supplier, key])
        session.flush()
        listing = Listing(
            supplier_id=supplier.id,
            model="deepseek/deepseek-chat",
            upstream_base_url="http://127.0.0.1:9/v1",
            upstream_model="mock-1",
            upstream_credential_encrypted="unused",
            list_input_micro_usd_per_mtok=270_000,
            list_output_micro_usd_per_mtok=1_100_000,
            offer_input_micro_usd_per_mtok=216_000,
            offer_cached_input_micro_usd_per_mtok=216_000,
            offer_cache_write_micro_usd_per_mtok=216_000,
            offer_output_micro_usd_per_mtok=880_000,
        )
        session.add(listing)
        session.flush()
        return {"buyer": buyer.id, "supplier": supplier.id, "supplier_owner": supplier_owner.id, "key": key.id, "listing": listing.id}


def make_call(db: Database, market: dict, generation_id: str, cost_nano_usd: int) -> None:
    call = metering.open_call(
        db,
        generation_id=generation_id,
        account_id=market["buyer"],
        api_key_id=market["key"],
        listing_id=market["listing"],
        model="deepseek/deepseek-chat",
        stream=False,
        hold_nano_usd=cost_nano_usd * 2,
        hold_ttl_s=600,
    )
    metering.settle_call(
        db, call, usage=Usage(prompt_tokens=7, completion_tokens=12), cost_nano_usd=cost_nano_usd, supplier_id=market["supplier"], fee_bps=FEE_BPS, status="completed"
    )


def now_seconds() -> int:
    return math.ceil(dt.datetime.now(dt.UTC).timestamp()) + 1


def build(db: Database, period_id: int, from_timestamp: int, to_timestamp: int) -> BuiltPeriod:
    with db.session() as session:
        return build_period(session, PeriodBounds(period_id, from_timestamp, to_timestamp), chain_id=31337, registry_address=REGISTRY, chains=[])


def build_and_store(db: Database, period_id: int, from_timestamp: int, to_timestamp: int) -> BuiltPeriod:
    with db.transaction() as session:
        built = build_period(session, PeriodBounds(period_id, from_timestamp, to_timestamp), chain_id=31337, registry_address=REGISTRY, chains=[])
        store.store_period(session, built, batch_size=100)
    return built


def balances_of(built: BuiltPeriod) -> dict[str, int]:
    return {leaf.values["account"]: leaf.values["balance_nano_usd"] for leaf in built.balances}


def test_period_holds_usage_and_ledger_balances(db: Database):
    market = seed_market(db)
    credit_without_chain(db, market["buyer"], 1_000_000_000)
    make_call(db, market, "gen-a", 12_072)
    make_call(db, market, "gen-b", 11_856)

    built = build(db, 1, 0, now_seconds())

    usage = [leaf for leaf in built.records if leaf.kind.name == "usage"]
    assert [leaf.values["generation_id"] for leaf in usage] == ["gen-a", "gen-b"]
    assert [(leaf.values["supplier_credit_nano_usd"], leaf.values["platform_fee_nano_usd"]) for leaf in usage] == [(11_469, 603), (11_264, 592)]
    assert balances_of(built) == {f"buyer:{market['buyer']}": 1_000_000_000 - 23_928, f"supplier:{market['supplier']}": 22_733}
    assert built.total_usage_nano_usd == 23_928
    assert built.buyer_liabilities_nano_usd == 1_000_000_000 - 23_928
    assert built.supplier_liabilities_nano_usd == 22_733


def test_deposit_transfer_without_deposit_row_is_an_adjustment(db: Database):
    market = seed_market(db)
    credit_without_chain(db, market["buyer"], 5_000)

    built = build(db, 1, 0, now_seconds())

    assert [leaf.kind for leaf in built.records] == [ADJUSTMENT]
    assert built.records[0].values["code"] == "deposit"
    assert built.records[0].values["credit_account"] == f"buyer:{market['buyer']}"
    assert built.total_deposits_nano_usd == 0


def test_failed_call_is_a_record_that_costs_nothing(db: Database):
    market = seed_market(db)
    credit_without_chain(db, market["buyer"], 1_000_000)
    call = metering.open_call(
        db, generation_id="gen-failed", account_id=market["buyer"], api_key_id=market["key"], listing_id=market["listing"],
        model="deepseek/deepseek-chat", stream=True, hold_nano_usd=50_000, hold_ttl_s=600,
    )
    metering.fail_call(db, call, error="upstream returned 503")

    built = build(db, 1, 0, now_seconds())

    usage = next(leaf for leaf in built.records if leaf.kind.name == "usage")
    assert (usage.values["status"], usage.values["cost_nano_usd"], usage.values["supplier_credit_nano_usd"]) == ("failed", 0, 0)
    assert balances_of(built)[f"buyer:{market['buyer']}"] == 1_000_000


def test_late_supplier_credit_stays_with_call(db: Database):
    market = seed_market(db)
    credit_without_chain(db, market["buyer"], 1_000_000_000)
    make_call(db, market, "gen-late", 12_072)
    with db.transaction() as session:
        settled_at = session.get(LedgerTransfer, "hold:gen-late:post").created_at
        later = settled_at + dt.timedelta(seconds=10)
        session.execute(update(LedgerTransfer).where(LedgerTransfer.id.in_(["gen-late:supplier", "gen-late:fee"])).values(created_at=later))
    to_timestamp = math.floor(settled_at.timestamp()) + 1

    first = build_and_store(db, 1, 0, to_timestamp)
    second = build(db, 2, to_timestamp, now_seconds() + 20)

    assert [leaf.values["generation_id"] for leaf in first.records if leaf.kind.name == "usage"] == ["gen-late"]
    assert balances_of(first)[f"supplier:{market['supplier']}"] == 11_469
    assert second.records == []
    assert balances_of(second) == balances_of(first)


def test_other_transfer_to_a_buyer_is_an_adjustment(db: Database):
    market = seed_market(db)
    with db.transaction() as session:
        revenue = ledger.get_or_create_account(session, ledger.PLATFORM_REVENUE, "platform_revenue")
        buyer = ledger.get_buyer_account(session, market["buyer"])
        ledger.transfer(session, "promo-1", revenue, buyer, 2_500, "promo")

    built = build(db, 1, 0, now_seconds())

    assert [(leaf.kind, leaf.values["transfer_id"], leaf.values["amount_nano_usd"]) for leaf in built.records] == [(ADJUSTMENT, "promo-1", 2_500)]
    assert balances_of(built) == {f"buyer:{market['buyer']}": 2_500}


def test_backdated_transfer_stops_next_close(db: Database):
    market = seed_market(db)
    credit_without_chain(db, market["buyer"], 1_000)
    to_timestamp = now_seconds()
    build_and_store(db, 1, 0, to_timestamp)
    with db.transaction() as session:
        revenue = ledger.get_or_create_account(session, ledger.PLATFORM_REVENUE, "platform_revenue")
        buyer = ledger.get_buyer_account(session, market["buyer"])
        ledger.transfer(session, "late-1", revenue, buyer, 7, "promo")
        session.execute(update(LedgerTransfer).where(LedgerTransfer.id == "late-1").values(created_at=EPOCH + dt.timedelta(seconds=to_timestamp - 1)))

    with pytest.raises(SettlementError, match=rf"buyer:{market['buyer']}: \(1000, 1007\)"):
        build(db, 2, to_timestamp, to_timestamp + 3_600)


def test_next_bounds_alignment_and_delay():
    now = EPOCH + dt.timedelta(seconds=10_000)

    assert next_bounds(None, now, period_s=3_600, close_delay_s=300) == PeriodBounds(1, 0, 7_200)
    assert next_bounds(None, now, period_s=3_600, close_delay_s=3_000) == PeriodBounds(1, 0, 3_600)
    assert next_bounds(None, EPOCH + dt.timedelta(seconds=3_700), period_s=3_600, close_delay_s=300) is None
    last = SettlementPeriod(period_id=4, to_timestamp=7_200)
    assert next_bounds(last, now, period_s=3_600, close_delay_s=300) is None
    assert next_bounds(last, now + dt.timedelta(hours=5), period_s=3_600, close_delay_s=300) == PeriodBounds(5, 7_200, 25_200)


def test_to_microseconds_is_exact():
    moment = dt.datetime(2026, 12, 4, 20, 0, 0, 123_457, tzinfo=dt.UTC)

    assert to_microseconds(moment) == 1_796_414_400_123_457


def synthetic_period(record_count: int, balance_count: int) -> BuiltPeriod:
    records = [
        Leaf(ADJUSTMENT, {"transfer_id": f"t-{index:06d}", "code": "promo", "debit_account": "platform:revenue", "credit_account": "buyer:1", "amount_nano_usd": 1, "created_at_us": index})
        for index in range(record_count)
    ]
    balances = [Leaf(BALANCE, {"account": f"buyer:{index + 1}", "balance_nano_usd": index * 7}) for index in range(balance_count)]
    balance_tree = MerkleSumTree([(leaf.hash(), leaf.sum_nano_usd) for leaf in balances])
    owners = {(store.BALANCES_TREE, index): index + 1 for index in range(balance_count)}
    owners.update({(store.RECORDS_TREE, index): 1 for index in range(record_count)})
    return BuiltPeriod(
        bounds=PeriodBounds(1, 0, 10),
        chain_id=31337,
        registry_address=REGISTRY,
        previous_ledger_root=ZERO_BYTES32,
        reserve_sources=(),
        balances=balances,
        records=records,
        owners=owners,
        balance_tree=balance_tree,
        record_tree=MerkleTree([leaf.hash() for leaf in records]),
        buyer_liabilities_nano_usd=balance_tree.total,
        supplier_liabilities_nano_usd=0,
        total_usage_nano_usd=0,
        total_deposits_nano_usd=0,
        total_payouts_nano_usd=0,
    )


def test_stored_proofs_equal_tree_proofs_across_chunks(db: Database):
    built = synthetic_period(store.CHUNK_NODES + 905, store.CHUNK_NODES + 3)
    with db.transaction() as session:
        store.store_period(session, built, batch_size=2_000)

    with db.session() as session:
        period = session.get(SettlementPeriod, 1)
        for index in (0, 1, store.CHUNK_NODES - 1, store.CHUNK_NODES, store.CHUNK_NODES + 904):
            row = session.get(store.SettlementLeaf, (1, store.RECORDS_TREE, index))
            proof = store.proof_for_leaf(session, period, row)
            assert [digest for digest, _ in proof.siblings] == built.record_tree.proof(index)
            assert records_root_from_proof(proof.leaf.hash(), index, proof.leaf_count, built.record_tree.proof(index)) == built.record_tree.root
        for index in (0, store.CHUNK_NODES - 1, store.CHUNK_NODES + 2):
            row = session.get(store.SettlementLeaf, (1, store.BALANCES_TREE, index))
            proof = store.proof_for_leaf(session, period, row)
            assert list(proof.siblings) == built.balance_tree.proof(index)
            assert balances_root_from_proof(proof.leaf.hash(), proof.leaf.sum_nano_usd, index, proof.leaf_count, list(proof.siblings)) == (
                built.balance_tree.root,
                built.balance_tree.total,
            )


def test_account_proofs_page_through_an_owners_leaves(db: Database):
    built = synthetic_period(7, 3)
    with db.transaction() as session:
        store.store_period(session, built, batch_size=100)

    with db.session() as session:
        period = session.get(SettlementPeriod, 1)
        first, after = store.account_proofs(session, period, 1, store.RECORDS_TREE, limit=4)
        rest, end = store.account_proofs(session, period, 1, store.RECORDS_TREE, after_index=after, limit=4)
        balances, _ = store.account_proofs(session, period, 2, store.BALANCES_TREE)

    assert [proof.leaf_index for proof in first + rest] == list(range(7))
    assert end is None
    assert [proof.leaf.values["account"] for proof in balances] == ["buyer:2"]


def test_stored_export_header_carries_the_ledger_root(db: Database):
    built = synthetic_period(3, 2)
    with db.transaction() as session:
        store.store_period(session, built, batch_size=100)

    with db.session() as session:
        lines = list(store.iter_export_lines(session, 1))

    header = parse_header_line(lines[0])
    assert header.ledger_root == built.ledger_root == header.compute_ledger_root()
    assert len(lines) == 1 + 2 + 3
