"""Per-call lookup, paginated usage history and the CSV export."""

from __future__ import annotations

import csv
import io

import httpx
import openai

from chain.devchain import DEV_BUYER, DEV_SUPPLIER_PAYOUT
from tests.factories import create_api_key, create_listing, credit_without_chain, sign_in


def test_history_pages_and_exports_every_call(marketplace, fresh_mock_upstream):
    client = marketplace.client()
    supplier = sign_in(client, marketplace.settings, DEV_SUPPLIER_PAYOUT)
    listing = create_listing(client, supplier["session_token"], DEV_SUPPLIER_PAYOUT.address, upstream_base_url=fresh_mock_upstream.base_url, upstream_credential=fresh_mock_upstream.api_key)
    buyer = sign_in(client, marketplace.settings, DEV_BUYER)
    credit_without_chain(marketplace.db, buyer["account_id"], 10**9)
    key = create_api_key(client, buyer["session_token"])
    sdk = openai.OpenAI(base_url=f"{marketplace.url}/v1", api_key=key)
    ids = [
        sdk.chat.completions.create(model="deepseek/deepseek-chat", messages=[{"role": "user", "content": "hi"}], max_tokens=index + 1).id
        for index in range(5)
    ]
    headers = {"authorization": f"Bearer {key}"}

    first = httpx.get(f"{marketplace.url}/v1/usage", params={"limit": 2}, headers=headers, trust_env=False).json()
    second = httpx.get(f"{marketplace.url}/v1/usage", params={"limit": 2, "cursor": first["next_cursor"]}, headers=headers, trust_env=False).json()
    third = httpx.get(f"{marketplace.url}/v1/usage", params={"limit": 2, "cursor": second["next_cursor"]}, headers=headers, trust_env=False).json()
    lookup = httpx.get(f"{marketplace.url}/v1/generation", params={"id": ids[2]}, headers=headers, trust_env=False).json()["data"]
    exported = httpx.get(f"{marketplace.url}/v1/usage/export.csv", headers={"authorization": f"Bearer {buyer['session_token']}"}, trust_env=False)
    rows = list(csv.DictReader(io.StringIO(exported.text)))

    paged = [row["id"] for page in (first, second, third) for row in page["data"]]
    assert paged == list(reversed(ids))
    assert third["next_cursor"] is None
    assert lookup["status"] == "completed"
    assert lookup["listing_id"] == listing["listing_id"]
    assert lookup["prompt_tokens"] == 4
    assert lookup["completion_tokens"] == 3
    assert lookup["cost_nano_usd"] == -(-(4 * 216_000 + 3 * 880_000) // 1000)
    assert lookup["latency_ms"] >= 0
    assert [row["id"] for row in rows] == list(reversed(ids))
    assert rows[-1]["completion_tokens"] == "1"
    assert rows[-1]["cost_nano_usd"] == str(-(-(4 * 216_000 + 1 * 880_000) // 1000))


def test_bad_cursor_and_limit_get_400(marketplace, fresh_mock_upstream):
    client = marketplace.client()
    buyer = sign_in(client, marketplace.settings, DEV_BUYER)
    headers = {"authorization": f"Bearer {buyer['session_token']}"}

    bad_cursor = httpx.get(f"{marketplace.url}/v1/usage", params={"cursor": "yesterday"}, headers=headers, trust_env=False)
    bad_limit = httpx.get(f"{marketplace.url}/v1/usage", params={"limit": 0}, headers=headers, trust_env=False)
    other = httpx.get(f"{marketplace.url}/v1/generation", params={"id": "gen-unknown"}, headers=headers, trust_env=False)

    assert bad_cursor.status_code == 400
    assert bad_cursor.json()["error"]["message"] == "cursor 'yesterday' is invalid; pass next_cursor from the previous page"
    assert bad_limit.status_code == 400
    assert bad_limit.json()["error"]["message"] == "limit must be between 1 and 500, got 0"
    assert other.status_code == 404
    assert other.json()["error"]["message"] == "generation 'gen-unknown' not found for this account"
