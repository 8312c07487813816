"""Suppliers and their listings, and the offers buyers compare against list prices."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

from sqlalchemy import event, select
from sqlalchemy.orm import Session

from marketplace import ledger
from marketplace.accounts import checksum_address
from marketplace.credentials import encrypt_credential
from marketplace.errors import Conflict, Forbidden, InvalidRequest, NotFound
from marketplace.models import Listing, Supplier
from marketplace.pricing import Prices, discount_bps
from marketplace.settings import Settings
from marketplace.upstream_safety import check_upstream_url
from providers.registry import ALIASES, SUPPORTED_PROTOCOLS

logger = logging.getLogger(__name__)

_changes = 0


def note_listing_change() -> None:
    """Count a listing write of this process, so the proxy's listing cache reads again."""
    global _changes
    _changes += 1


def listing_changes() -> int:
    return _changes


@event.listens_for(Session, "before_flush")
def _mark_listing_writes(session: Session, _context, _instances) -> None:  # type: ignore[no-untyped-def]
    if any(isinstance(item, Listing) for item in (*session.new, *session.dirty, *session.deleted)):
        session.info["listing_written"] = True


@event.listens_for(Session, "after_commit")
def _count_listing_writes(session: Session) -> None:
    # Counted after the commit, so a cache that reloads on the new count reads the new rows.
    if session.info.pop("listing_written", False):
        note_listing_change()


@event.listens_for(Session, "after_rollback")
def _forget_listing_writes(session: Session) -> None:
    session.info.pop("listing_written", None)



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
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    tokens_per_day: int | None = None
    region: str | None = None


MODEL_NAME = re.compile(r"[a-z0-9][a-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._:-]*")


def validate_model_name(model: str) -> None:
    if not MODEL_NAME.fullmatch(model):
        raise InvalidRequest(
            f"model {model!r} must be written vendor/model in letters, digits, '.', '_', '-' or ':', "
            "for example deepseek/deepseek-chat",
            param="model",
        )


def validate_protocol(protocol: str) -> str:
    name = ALIASES.get(protocol.lower(), protocol.lower())
    if name not in SUPPORTED_PROTOCOLS:
        raise InvalidRequest(
            f"upstream_protocol {protocol!r} is not supported; use one of {list(SUPPORTED_PROTOCOLS)}",
            param="upstream_protocol",
        )
    return name


def create_listing(session: Session, settings: Settings, supplier: Supplier, data: ListingInput) -> Listing:
    validate_model_name(data.model)
    protocol = validate_protocol(data.upstream_protocol)
    check_upstream_url(data.upstream_base_url, development=settings.mode == "development")
    listing = Listing(
        supplier_id=supplier.id,
        model=data.model,
        upstream_protocol=protocol,
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
        requests_per_minute=data.requests_per_minute,
        tokens_per_minute=data.tokens_per_minute,
        tokens_per_day=data.tokens_per_day,
        region=data.region,
        status="active",
    )
    session.add(listing)
    session.flush()
    logger.info("listing created", extra={"listing_id": listing.id, "supplier_id": supplier.id, "model": data.model})
    return listing


# Fields a supplier may change on a listing; the model and protocol are fixed once listed.
UPDATABLE_FIELDS = frozenset(
    {
        "upstream_base_url",
        "upstream_credential",
        "upstream_model",
        "list_input_micro_usd_per_mtok",
        "list_output_micro_usd_per_mtok",
        "offer_input_micro_usd_per_mtok",
        "offer_output_micro_usd_per_mtok",
        "offer_cached_input_micro_usd_per_mtok",
        "offer_cache_write_micro_usd_per_mtok",
        "max_output_tokens",
        "requests_per_minute",
        "tokens_per_minute",
        "tokens_per_day",
        "region",
        "status",
    }
)


def own_listing(session: Session, supplier: Supplier, listing_id: int) -> Listing:
    listing = session.get(Listing, listing_id)
    if listing is None or listing.supplier_id != supplier.id or listing.status == "deleted":
        raise NotFound(f"listing {listing_id} not found among this supplier's listings", param="listing_id")
    return listing


def update_listing(session: Session, settings: Settings, supplier: Supplier, listing_id: int, changes: dict) -> Listing:
    listing = own_listing(session, supplier, listing_id)
    unknown = set(changes) - UPDATABLE_FIELDS
    if unknown:
        field = sorted(unknown)[0]
        raise InvalidRequest(f"{field} cannot be changed; create a new listing instead", param=field)
    if "status" in changes and changes["status"] not in ("active", "paused"):
        raise InvalidRequest("status must be active or paused; DELETE the listing to remove it", param="status")
    if "upstream_base_url" in changes:
        check_upstream_url(changes["upstream_base_url"], development=settings.mode == "development")
        changes["upstream_base_url"] = changes["upstream_base_url"].rstrip("/")
    if "upstream_credential" in changes:
        listing.upstream_credential_encrypted = encrypt_credential(settings, changes.pop("upstream_credential"))
    for field, value in changes.items():
        setattr(listing, field, value)
    if changes.get("status") == "active":
        listing.paused_reason = None
        listing.paused_at = None
    session.flush()
    logger.info("listing updated", extra={"listing_id": listing.id, "fields": sorted(changes)})
    return listing


def delete_listing(session: Session, supplier: Supplier, listing_id: int) -> Listing:
    """Withdraw a listing from sale. The row stays, because past calls refer to it."""
    listing = own_listing(session, supplier, listing_id)
    listing.status = "deleted"
    session.flush()
    logger.info("listing deleted", extra={"listing_id": listing.id})
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
        "upstream_protocol": listing.upstream_protocol,
        "region": listing.region,
        "limits": {
            "requests_per_minute": listing.requests_per_minute,
            "tokens_per_minute": listing.tokens_per_minute,
            "tokens_per_day": listing.tokens_per_day,
        },
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
