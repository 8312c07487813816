"""Suppliers and their listings, and the offers buyers compare against list prices."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from marketplace import ledger
from marketplace.accounts import checksum_address
from marketplace.credentials import encrypt_credential
from marketplace.errors import Conflict, Forbidden, InvalidRequest, NotFound
from marketplace.models import Listing, Supplier
from marketplace.pricing import Prices, discount_bps
from marketplace.settings import Settings

logger = logging.getLogger(__name__)

SUPPORTED_PROTOCOLS = ("openai",)


def register_supplier(session: Session, account_id: int, name: str, payout_address: str) -> Supplier:
    if session.scalar(select(Supplier).where(Supplier.account_id == account_id)) is not None:
        raise Conflict("this account is already registered as a supplier", param="name")
    supplier = Supplier(account_id=account_id, name=name, payout_address=checksum_address(payout_address, "payout_address"))
    session.add(supplier)
    session.flush()
    ledger.get_or_create_account(session, ledger.supplier_account_name(supplier.id), "supplier_payable", account_id=account_id)
    logger.info("supplier registered", extra={"supplier_id": supplier.id, "account_id": account_id})
    return supplier


def supplier_for_account(session: Session, account_id: int) -> Supplier:
    supplier = session.scalar(select(Supplier).where(Supplier.account_id == account_id))
    if supplier is None:
        raise Forbidden("this account is not a supplier; register at POST /v1/supplier first")
    return supplier


@dataclass(frozen=True)
class ListingInput:
    model: str
    upstream_base_url: str
    upstream_credential: str
    upstream_model: str | None
    upstream_protocol: str
    list_input_micro_usd_per_mtok: int
    list_output_micro_usd_per_mtok: int
    offer_input_micro_usd_per_mtok: int
    offer_output_micro_usd_per_mtok: int
    offer_cached_input_micro_usd_per_mtok: int | None = None
    offer_cache_write_micro_usd_per_mtok: int | None = None
    max_output_tokens: int | None = None


def validate_model_name(model: str) -> None:
    vendor, _, name = model.partition("/")
    if not vendor or not name:
        raise InvalidRequest(f"model {model!r} must be written vendor/model, for example deepseek/deepseek-chat", param="model")


def create_listing(session: Session, settings: Settings, supplier: Supplier, data: ListingInput) -> Listing:
    validate_model_name(data.model)
    if data.upstream_protocol not in SUPPORTED_PROTOCOLS:
        raise InvalidRequest(
            f"upstream_protocol {data.upstream_protocol!r} is not supported; use one of {list(SUPPORTED_PROTOCOLS)}",
            param="upstream_protocol",
        )
    listing = Listing(
        supplier_id=supplier.id,
        model=data.model,
        upstream_protocol=data.upstream_protocol,
        upstream_base_url=data.upstream_base_url.rstrip("/"),
        upstream_model=data.upstream_model or data.model.split("/", 1)[1],
        upstream_credential_encrypted=encrypt_credential(settings, data.upstream_credential),
        list_input_micro_usd_per_mtok=data.list_input_micro_usd_per_mtok,
        list_output_micro_usd_per_mtok=data.list_output_micro_usd_per_mtok,
        offer_input_micro_usd_per_mtok=data.offer_input_micro_usd_per_mtok,
        offer_cached_input_micro_usd_per_mtok=(
            data.offer_cached_input_micro_usd_per_mtok
            if data.offer_cached_input_micro_usd_per_mtok is not None
            else data.offer_input_micro_usd_per_mtok
        ),
        offer_cache_write_micro_usd_per_mtok=(
            data.offer_cache_write_micro_usd_per_mtok
            if data.offer_cache_write_micro_usd_per_mtok is not None
            else data.offer_input_micro_usd_per_mtok
        ),
        offer_output_micro_usd_per_mtok=data.offer_output_micro_usd_per_mtok,
        max_output_tokens=data.max_output_tokens,
        status="active",
    )
    session.add(listing)
    session.flush()
    logger.info("listing created", extra={"listing_id": listing.id, "supplier_id": supplier.id, "model": data.model})
    return listing


def listing_prices(listing: Listing) -> Prices:
    return Prices(
        input_micro_usd_per_mtok=listing.offer_input_micro_usd_per_mtok,
        cached_input_micro_usd_per_mtok=listing.offer_cached_input_micro_usd_per_mtok,
        cache_write_micro_usd_per_mtok=listing.offer_cache_write_micro_usd_per_mtok,
        output_micro_usd_per_mtok=listing.offer_output_micro_usd_per_mtok,
    )


def active_listings(session: Session, model: str | None = None) -> list[Listing]:
    query = select(Listing).where(Listing.status == "active")
    if model is not None:
        query = query.where(Listing.model == model)
    return list(session.scalars(query.order_by(Listing.model, Listing.offer_input_micro_usd_per_mtok, Listing.id)))


def choose_listing(session: Session, model: str) -> Listing:
    """The cheapest active listing of the model, by output price then input price."""
    candidates = active_listings(session, model)
    if not candidates:
        raise NotFound(f"model {model!r} is not on sale; GET /v1/models lists what is", param="model", code="model_not_found")
    return min(
        candidates,
        key=lambda item: (item.offer_output_micro_usd_per_mtok, item.offer_input_micro_usd_per_mtok, item.id),
    )


def offer_view(listing: Listing) -> dict:
    return {
        "listing_id": listing.id,
        "model": listing.model,
        "supplier_id": listing.supplier_id,
        "status": listing.status,
        "max_output_tokens": listing.max_output_tokens,
        "list_price": {
            "input_micro_usd_per_mtok": listing.list_input_micro_usd_per_mtok,
            "output_micro_usd_per_mtok": listing.list_output_micro_usd_per_mtok,
        },
        "offer_price": {
            "input_micro_usd_per_mtok": listing.offer_input_micro_usd_per_mtok,
            "cached_input_micro_usd_per_mtok": listing.offer_cached_input_micro_usd_per_mtok,
            "cache_write_micro_usd_per_mtok": listing.offer_cache_write_micro_usd_per_mtok,
            "output_micro_usd_per_mtok": listing.offer_output_micro_usd_per_mtok,
        },
        "discount_bps": {
            "input": discount_bps(listing.list_input_micro_usd_per_mtok, listing.offer_input_micro_usd_per_mtok),
            "output": discount_bps(listing.list_output_micro_usd_per_mtok, listing.offer_output_micro_usd_per_mtok),
        },
    }
