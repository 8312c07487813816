"""Suppliers, listings, the public offer board and `/v1/models`."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from marketplace import listings
from marketplace.api.deps import get_db, get_settings, require_session
from marketplace.api.schemas import ListingBody, SupplierBody
from marketplace.db import Database
from marketplace.models import Listing
from marketplace.settings import Settings

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
        rows = session.query(Listing).filter_by(supplier_id=supplier.id).order_by(Listing.id)
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
