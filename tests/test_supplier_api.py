"""The supplier API: listing CRUD, earnings, health, and the upstream URL rule in production mode."""

from __future__ import annotations

import openai
import pytest

from chain.devchain import DEV_BUYER, DEV_SUPPLIER_PAYOUT
from marketplace.upstream_safety import check_upstream_url
from marketplace.errors import InvalidRequest
from tests.factories import create_api_key, create_listing, credit_without_chain, sign_in
from tests.fixtures_app import start_marketplace

LISTING = {
    "model": "deepseek/deepseek-chat",
    "upstream_credential": "sk-upstream",
    "list_input_micro_usd_per_mtok": 270_000,
    "list_output_micro_usd_per_mtok": 1_100_000,
    "offer_input_micro_usd_per_mtok": 216_000,
    "offer_output_micro_usd_per_mtok": 880_000,
}


@pytest.mark.parametrize(
    ("url", "address", "reason"),
    [
        ("http://169.254.169.254/", "169.254.169.254", "a cloud metadata address"),
        ("http://127.0.0.1:9000/v1", "127.0.0.1", "a loopback address"),
        ("http://localhost:9000/v1", "127.0.0.1", "a loopback address"),
        ("http://10.1.2.3/v1", "10.1.2.3", "a private address"),
        ("http://[::1]:9000/v1", "::1", "a loopback address"),
    ],
)
def test_production_rejects_internal_upstream(db, url, address, reason):
    server, market = start_marketplace(db, [], mode="production", credential_key="x" * 43 + "=")
    try:
        client = market.client()
        supplier = sign_in(client, market.settings, DEV_SUPPLIER_PAYOUT)
        headers = {"authorization": f"Bearer {supplier['session_token']}"}
        client.post("/v1/supplier", json={"name": "S", "payout_address": DEV_SUPPLIER_PAYOUT.address}, headers=headers)

        response = client.post("/v1/supplier/listings", json={**LISTING, "upstream_base_url": url}, headers=headers)
        listed = client.get("/v1/supplier/listings", headers=headers).json()["data"]
    finally:
        server.stop()

    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == "upstream_base_url"
    assert error["code"] == "unsafe_upstream_url"
    assert error["message"] == (
        f"upstream_base_url {url!r} resolves to {address}, {reason}; upstreams must be public addresses "
        "(rule: no loopback, private, link-local or metadata addresses outside development mode)"
    )
    assert listed == []


def test_public_upstream_is_accepted_in_production():
    check_upstream_url("https://api.deepseek.com/v1", development=False, resolve=lambda host, port: ["104.18.26.90"])


def test_upstream_url_with_credentials_is_rejected():
    with pytest.raises(InvalidRequest) as raised:
        check_upstream_url("https://user:secret@api.example.com/v1", development=True)
    assert raised.value.param == "upstream_base_url"


def test_listing_crud_and_earnings(marketplace, fresh_mock_upstream):
    client = marketplace.client()
    supplier = sign_in(client, marketplace.settings, DEV_SUPPLIER_PAYOUT)
    headers = {"authorization": f"Bearer {supplier['session_token']}"}
    listing = create_listing(client, supplier["session_token"], DEV_SUPPLIER_PAYOUT.address, upstream_base_url=fresh_mock_upstream.base_url, upstream_credential=fresh_mock_upstream.api_key)
    listing_id = listing["listing_id"]

    updated = client.patch(f"/v1/supplier/listings/{listing_id}", json={"offer_output_micro_usd_per_mtok": 770_000, "requests_per_minute": 100}, headers=headers)
    frozen = client.patch(f"/v1/supplier/listings/{listing_id}", json={"model": "other/model"}, headers=headers)
    buyer = sign_in(client, marketplace.settings, DEV_BUYER)
    credit_without_chain(marketplace.db, buyer["account_id"], 10**9)
    sdk = openai.OpenAI(base_url=f"{marketplace.url}/v1", api_key=create_api_key(client, buyer["session_token"]))
    reply = sdk.chat.completions.create(model="deepseek/deepseek-chat", messages=[{"role": "user", "content": "hi"}], max_tokens=12)
    earnings = client.get("/v1/supplier/earnings", headers=headers).json()
    detail = client.get(f"/v1/supplier/listings/{listing_id}", headers=headers).json()
    deleted = client.delete(f"/v1/supplier/listings/{listing_id}", headers=headers)
    after = client.get("/v1/offers").json()["data"]
    missing = client.get(f"/v1/supplier/listings/{listing_id}", headers=headers)

    charged = reply.usage.model_extra["cost_nano_usd"]
    assert updated.status_code == 200
    assert updated.json()["offer_price"]["output_micro_usd_per_mtok"] == 770_000
    assert updated.json()["limits"]["requests_per_minute"] == 100
    assert frozen.status_code == 400
    assert frozen.json()["error"]["param"] == "model"
    assert charged == -(-(4 * 216_000 + 12 * 770_000) // 1000) == 10_104
    # The platform keeps 5% (500 bps) rounded down; the supplier earns the rest.
    assert earnings["earned_nano_usd"] == charged - charged * 500 // 10_000 == 9_599
    assert earnings["payable_nano_usd"] == 9_599
    assert earnings["calls_served"] == 1
    assert earnings["listings"] == [{"listing_id": listing_id, "calls": 1, "prompt_tokens": 4, "completion_tokens": 12, "buyer_cost_nano_usd": charged}]
    assert detail["health"]["calls"] == 1
    assert detail["health"]["errors"] == 0
    assert detail["health"]["paused_reason"] is None
    assert "upstream_credential" not in detail
    assert deleted.status_code == 200
    assert after == []
    assert missing.status_code == 404
