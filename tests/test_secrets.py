"""No API key, session token or supplier credential appears in logs, error bodies or exports."""

from __future__ import annotations

import logging

import httpx
import openai
import pytest

from chain.devchain import DEV_BUYER, DEV_SUPPLIER_PAYOUT
from tests.factories import create_api_key, create_listing, credit_without_chain, sign_in

SUPPLIER_CREDENTIAL = "sk-supplier-secret-5b8f2c0e9d7a41"


class RecordEverything(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.texts: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        # Every attribute, so secrets in `extra=` fields and exception text are caught too.
        self.texts.append(repr(record.__dict__))
        if record.exc_info:
            self.texts.append(logging.Formatter().formatException(record.exc_info))


@pytest.fixture
def all_logs():
    handler = RecordEverything()
    root = logging.getLogger()
    previous = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    yield handler
    root.removeHandler(handler)
    root.setLevel(previous)


def test_secrets_never_leave_the_server(marketplace, fresh_mock_upstream, all_logs):
    client = marketplace.client()
    supplier = sign_in(client, marketplace.settings, DEV_SUPPLIER_PAYOUT)
    # The wrong credential makes the mock answer 401 and echo it back in its error body.
    create_listing(client, supplier["session_token"], DEV_SUPPLIER_PAYOUT.address, upstream_base_url=fresh_mock_upstream.base_url, upstream_credential=SUPPLIER_CREDENTIAL)
    create_listing(
        client, supplier["session_token"], DEV_SUPPLIER_PAYOUT.address,
        model="qwen/qwen-max", upstream_base_url=fresh_mock_upstream.base_url, upstream_credential=fresh_mock_upstream.api_key,
    )
    buyer = sign_in(client, marketplace.settings, DEV_BUYER)
    credit_without_chain(marketplace.db, buyer["account_id"], 10**9)
    key = create_api_key(client, buyer["session_token"])
    sdk = openai.OpenAI(base_url=f"{marketplace.url}/v1", api_key=key, max_retries=0)
    seen: list[str] = []

    with pytest.raises(openai.APIStatusError) as failed:
        sdk.chat.completions.create(model="deepseek/deepseek-chat", messages=[{"role": "user", "content": "hi"}])
    seen.append(failed.value.response.text)
    list(sdk.chat.completions.create(model="qwen/qwen-max", messages=[{"role": "user", "content": "hi"}], stream=True))
    sdk.chat.completions.create(model="qwen/qwen-max", messages=[{"role": "user", "content": "hi"}])
    for path in ("/v1/usage", "/v1/usage/export.csv", "/v1/keys", "/v1/supplier/listings", "/v1/offers", "/v1/account"):
        for token in (buyer["session_token"], supplier["session_token"]):
            seen.append(httpx.get(f"{marketplace.url}{path}", headers={"authorization": f"Bearer {token}"}, trust_env=False).text)
    seen.append(httpx.post(f"{marketplace.url}/v1/chat/completions", json={}, headers={"authorization": f"Bearer {key}x"}, trust_env=False).text)

    everything = "\n".join(seen + all_logs.texts)
    assert failed.value.status_code == 502
    assert "[REDACTED]" in failed.value.response.text
    assert len(all_logs.texts) > 0
    for secret in (SUPPLIER_CREDENTIAL, key, buyer["session_token"], supplier["session_token"], fresh_mock_upstream.api_key):
        assert secret not in everything
