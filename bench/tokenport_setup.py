"""A fresh PostgreSQL schema for the benchmark, with one listing, one buyer, an API key and a balance.

Everything goes through the same domain functions as the API, so the benchmarked calls meet the
same rows as production calls. The data is a listing of deepseek/deepseek-chat at a discount,
routed to the mock upstream, and a buyer whose balance covers every call of the run.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from sqlalchemy import text

from chain.devchain import DEV_SUPPLIER_PAYOUT
from marketplace import accounts, ledger, listings
from marketplace.db import Database
from marketplace.models import Account
from marketplace.schema import upgrade_schema
from marketplace.settings import Settings

POSTGRES_BASE_URL = os.environ.get("BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
BENCH_MODEL = "deepseek/deepseek-chat"
# 1,000 USD: the hold of one benchmark call is far below 0.01 USD, so no run exhausts it.
BUYER_BALANCE_NANO_USD = 1_000 * ledger.NANO_USD_PER_USD


def schema_url(schema: str) -> str:
    separator = "&" if "?" in POSTGRES_BASE_URL else "?"
    return f"{POSTGRES_BASE_URL}{separator}options=-csearch_path%3D{schema}"


def reset_schema(schema: str) -> str:
    """Drop and create `schema` in the benchmark database; return a URL whose search path is it."""
    database = Database(POSTGRES_BASE_URL)
    try:
        with database.engine.begin() as connection:
            connection.execute(text(f"DROP SCHEMA IF EXISTS {schema} CASCADE"))
            connection.execute(text(f"CREATE SCHEMA {schema}"))
    finally:
        database.dispose()
    return schema_url(schema)


@dataclass(frozen=True)
class TokenportFixture:
    database_url: str
    api_key: str
    buyer_account_id: int
    listing_id: int


def prepare_tokenport(schema: str, upstream_base_url: str, upstream_api_key: str) -> TokenportFixture:
    """Create the schema's tables, a supplier with one listing, and a funded buyer with an API key."""
    database_url = reset_schema(schema)
    db = Database(database_url)
    settings = Settings(database_url=database_url, mode="development")
    try:
        upgrade_schema(db)
        with db.transaction() as session:
            supplier_account = Account()
            buyer_account = Account()
            session.add_all([supplier_account, buyer_account])
            session.flush()

            supplier = listings.register_supplier(session, supplier_account.id, "Bench Supplier", DEV_SUPPLIER_PAYOUT.address)
            listing = listings.create_listing(
                session,
                settings,
                supplier,
                listings.ListingInput(
                    model=BENCH_MODEL,
                    upstream_base_url=upstream_base_url,
                    upstream_credential=upstream_api_key,
                    upstream_model="mock-1",
                    upstream_protocol="openai",
                    list_input_micro_usd_per_mtok=270_000,
                    list_output_micro_usd_per_mtok=1_100_000,
                    offer_input_micro_usd_per_mtok=216_000,
                    offer_output_micro_usd_per_mtok=880_000,
                ),
            )
            key = accounts.create_api_key(session, buyer_account.id, "bench")
            fund_buyer(session, buyer_account.id, BUYER_BALANCE_NANO_USD, "bench-funding")
            return TokenportFixture(database_url, key.secret, buyer_account.id, listing.id)
    finally:
        db.dispose()


def fund_buyer(session, account_id: int, amount_nano_usd: int, transfer_id: str) -> None:  # type: ignore[no-untyped-def]
    """Credit a buyer from a made-up chain asset account, as a confirmed deposit would."""
    source = ledger.get_or_create_account(session, ledger.chain_asset_account_name(31337, "0x" + "11" * 20), "chain_asset")
    buyer = ledger.get_buyer_account(session, account_id)
    ledger.transfer(session, transfer_id, source, buyer, amount_nano_usd, "deposit", reference=transfer_id)
