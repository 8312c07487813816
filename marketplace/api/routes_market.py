"""Suppliers, listings, the public offer board and `/v1/models`."""

from __future__ import annotations

from typing import Annotated

import anyio
from fastapi import APIRouter, Depends, Path, Request
from sqlalchemy import func, select

from marketplace import ledger, listings
from marketplace.api.deps import get_db, get_settings, require_session
from marketplace.api.schemas import ListingBody, ListingUpdateBody, SupplierBody
from marketplace.db import Database
from marketplace.models import Generation, Listing, Payout
from marketplace.payouts import payout_view
from marketplace.settings import Settings

ListingId = Annotated[int, Path(ge=1, le=2**31 - 1)]

# Calls that produced output the supplier is paid for.
SERVED_STATUSES = ("completed", "incomplete", "client_disconnected")

router = APIRouter(prefix="/v1")


@router.post("/supplier", status_code=201)
def register_supplier(body: SupplierBody, account_id: int = Depends(require_session), db: Database = Depends(get_db)) -> dict:
    with db.transaction() as session:
        supplier = listings.register_supplier(session, account_id, body.name, body.payout_address)
        return {"supplier_id": supplier.id, "name": supplier.name, "payout_address": supplier.payout_address}


@router.post("/supplier/listings", status_code=201)
def create_listing(
    body: ListingBody,
    account_id: int = Depends(require_session),
    db: Database = Depends(get_db),
    settings: Settings = Depends(get_settings),
) -> dict:
    with db.transaction() as session:
        supplier = listings.supplier_for_account(session, account_id)
        listing = listings.create_listing(session, settings, supplier, listings.ListingInput(**body.model_dump()))
        return listings.offer_view(listing)


@router.get("/supplier/listings")
def list_own_listings(account_id: int = Depends(require_session), db: Database = Depends(get_db)) -> dict:
    with db.session() as session:
        supplier = listings.supplier_for_account(session, account_id)
        rows = session.query(Listing).filter(Listing.supplier_id == supplier.id, Listing.status != "deleted").order_by(Listing.id)
        return {"data": [listings.offer_view(listing) for listing in rows]}


@router.get("/offers")
def list_offers(model: str | None = None, db: Database = Depends(get_db)) -> dict:
    """Every active listing with its price and its discount against the official list price."""
    with db.session() as session:
        return {"data": [listings.offer_view(listing) for listing in listings.active_listings(session, model)]}


@router.get("/models")
def list_models(db: Database = Depends(get_db)) -> dict:
    """The models on sale, in OpenAI's list format, each with its cheapest offer."""
    with db.session() as session:
        cheapest: dict[str, Listing] = {}
        for listing in listings.active_listings(session):
            current = cheapest.get(listing.model)
            if current is None or listing.offer_output_micro_usd_per_mtok < current.offer_output_micro_usd_per_mtok:
                cheapest[listing.model] = listing
    data = []
    for model, listing in sorted(cheapest.items()):
        data.append(
            {
                "id": model,
                "object": "model",
                "created": int(listing.created_at.timestamp()),
                "owned_by": model.split("/", 1)[0],
                "pricing": {
                    "input_micro_usd_per_mtok": listing.offer_input_micro_usd_per_mtok,
                    "output_micro_usd_per_mtok": listing.offer_output_micro_usd_per_mtok,
                },
            }
        )
    return {"object": "list", "data": data}


@router.patch("/supplier/listings/{listing_id}")
def update_listing(
    listing_id: ListingId,
    body: ListingUpdateBody,
    account_id: int = Depends(require_session),
    db: Database = Depends(get_db),
    settings: Settings = Depends(get_settings),
) -> dict:
    with db.transaction() as session:
        supplier = listings.supplier_for_account(session, account_id)
        listing = listings.update_listing(session, settings, supplier, listing_id, body.model_dump(exclude_unset=True))
        return listings.offer_view(listing)


@router.delete("/supplier/listings/{listing_id}")
def delete_listing(listing_id: ListingId, account_id: int = Depends(require_session), db: Database = Depends(get_db)) -> dict:
    with db.transaction() as session:
        supplier = listings.supplier_for_account(session, account_id)
        return listings.offer_view(listings.delete_listing(session, supplier, listing_id))


@router.get("/supplier/listings/{listing_id}")
async def read_listing(listing_id: ListingId, request: Request, account_id: int = Depends(require_session), db: Database = Depends(get_db)) -> dict:
    """One listing with its health: recent calls and errors, and why it is paused if it is."""

    def load():
        with db.session() as session:
            supplier = listings.supplier_for_account(session, account_id)
            return listings.own_listing(session, supplier, listing_id)

    listing = await anyio.to_thread.run_sync(load)
    health = await request.app.state.proxy.health.snapshot(listing.id)
    return {
        **listings.offer_view(listing),
        "health": {**health, "paused_reason": listing.paused_reason, "paused_at": listing.paused_at.isoformat() if listing.paused_at else None},
    }


@router.get("/supplier/earnings")
def read_earnings(account_id: int = Depends(require_session), db: Database = Depends(get_db)) -> dict:
    """Accrued payable (earnings not yet paid out) and calls served, in total and per listing."""
    with db.transaction() as session:
        supplier = listings.supplier_for_account(session, account_id)
        payable = ledger.get_or_create_account(session, ledger.supplier_account_name(supplier.id), "supplier_payable")
        balance = ledger.read_balance(session, payable.id)
        rows = session.execute(
            select(
                Generation.listing_id,
                func.count(),
                func.coalesce(func.sum(Generation.prompt_tokens), 0),
                func.coalesce(func.sum(Generation.completion_tokens), 0),
                func.coalesce(func.sum(Generation.cost_nano_usd), 0),
            )
            .join(Listing, Listing.id == Generation.listing_id)
            .where(Listing.supplier_id == supplier.id, Generation.status.in_(SERVED_STATUSES))
            .group_by(Generation.listing_id)
            .order_by(Generation.listing_id)
        )
        per_listing = [
            {"listing_id": row[0], "calls": int(row[1]), "prompt_tokens": int(row[2]), "completion_tokens": int(row[3]), "buyer_cost_nano_usd": int(row[4])}
            for row in rows
        ]
    return {
        "supplier_id": supplier.id,
        "payable_nano_usd": balance.posted_nano_usd,
        "earned_nano_usd": int(payable.credits_posted_nano_usd),
        "paid_out_nano_usd": int(payable.debits_posted_nano_usd),
        "calls_served": sum(item["calls"] for item in per_listing),
        "listings": per_listing,
    }


@router.get("/supplier/payouts")
def list_payouts(account_id: int = Depends(require_session), db: Database = Depends(get_db)) -> dict:
    """The supplier's on-chain payouts, newest first, each with its status and transaction hash."""
    with db.session() as session:
        supplier = listings.supplier_for_account(session, account_id)
        rows = session.scalars(select(Payout).where(Payout.supplier_id == supplier.id).order_by(Payout.id.desc()).limit(500))
        return {"data": [payout_view(payout) for payout in rows]}
