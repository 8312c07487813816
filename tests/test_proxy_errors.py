"""Bad proxy requests get OpenAI error bodies with a clear message, and write nothing."""

from __future__ import annotations

import httpx
import pytest

from chain.devchain import DEV_BUYER, DEV_SUPPLIER_PAYOUT
from tests.factories import create_api_key, create_listing, credit_without_chain, ledger_counts, sign_in


@pytest.fixture
def buyer_key(marketplace, mock_upstream):
    client = marketplace.client()
    supplier = sign_in(client, marketplace.settings, DEV_SUPPLIER_PAYOUT)
    create_listing(client, supplier["session_token"], DEV_SUPPLIER_PAYOUT.address, upstream_base_url=mock_upstream.base_url, upstream_credential=mock_upstream.api_key)
    buyer = sign_in(client, marketplace.settings, DEV_BUYER)
    return buyer["account_id"], create_api_key(client, buyer["session_token"])


def _post(marketplace, key: str | None, body) -> httpx.Response:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    content = body if isinstance(body, bytes) else None
    json_body = None if isinstance(body, bytes) else body
    return httpx.post(f"{marketplace.url}/v1/chat/completions", json=json_body, content=content, headers=headers, timeout=30, trust_env=False)


GOOD_BODY = {"model": "deepseek/deepseek-chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}


def test_bad_key_gets_401(marketplace, buyer_key):
    before = ledger_counts(marketplace.db)

    response = _post(marketplace, "tp-not-a-real-key", GOOD_BODY)

    assert response.status_code == 401
    assert response.json()["error"]["message"] == "API key is invalid or revoked; create one at POST /v1/keys"
    assert response.json()["error"]["type"] == "authentication_error"
    assert ledger_counts(marketplace.db) == before


def test_missing_key_gets_401(marketplace, buyer_key):
    response = _post(marketplace, None, GOOD_BODY)

    assert response.status_code == 401
    assert response.json()["error"]["message"] == "missing API key; send it as 'Authorization: Bearer <API key>'"


def test_balance_below_hold_gets_402(marketplace, buyer_key):
    account_id, key = buyer_key
    credit_without_chain(marketplace.db, account_id, 1_000)
    before = ledger_counts(marketplace.db)

    response = _post(marketplace, key, GOOD_BODY)

    assert response.status_code == 402
    error = response.json()["error"]
    assert error["code"] == "insufficient_balance"
    # The hold is the byte bound of the prompt (32 bytes of JSON + 8 per message + 16 = 56 tokens)
    # at the input price plus 8 completion tokens at the output price: (56 * 216000 + 8 * 880000) / 1000.
    assert error["message"] == (
        "balance of 1000 nano-USD does not cover this call's hold of 19136 nano-USD; top up, or lower max_tokens"
    )
    assert ledger_counts(marketplace.db) == before


def test_unknown_model_gets_404(marketplace, buyer_key):
    account_id, key = buyer_key
    credit_without_chain(marketplace.db, account_id, 10**9)
    before = ledger_counts(marketplace.db)

    response = _post(marketplace, key, {**GOOD_BODY, "model": "acme/no-such-model"})

    assert response.status_code == 404
    assert response.json()["error"]["message"] == "model 'acme/no-such-model' is not on sale; GET /v1/models lists what is"
    assert response.json()["error"]["param"] == "model"
    assert ledger_counts(marketplace.db) == before


@pytest.mark.parametrize(
    ("body", "message", "param"),
    [
        (b"{not json", "request body is not valid JSON: Expecting property name enclosed in double quotes: line 1 column 2 (char 1)", None),
        ({"model": "deepseek/deepseek-chat"}, "messages: Field required", "messages"),
        ({**GOOD_BODY, "messages": []}, "messages: List should have at least 1 item after validation, not 0", "messages"),
        ({**GOOD_BODY, "max_tokens": 0}, "max_tokens: Input should be greater than or equal to 1", "max_tokens"),
        ({**GOOD_BODY, "messages": [{"content": "no role"}]}, "messages.0.role is missing", "messages.0.role"),
        ([1, 2], "request body must be a JSON object", None),
        ({**GOOD_BODY, "max_tokens": 2**63}, "max_tokens: Input should be less than or equal to 10000000", "max_tokens"),
        ({**GOOD_BODY, "max_tokens": "10"}, "max_tokens: Input should be a valid integer", "max_tokens"),
        ({**GOOD_BODY, "stream": "yes"}, "stream: Input should be a valid boolean", "stream"),
        ({**GOOD_BODY, "stream_options": "x"}, "stream_options: Input should be a valid dictionary", "stream_options"),
        (
            {**GOOD_BODY, "messages": [{"role": "wizard", "content": "hi"}]},
            "messages.0.role 'wizard' is not one of ['assistant', 'developer', 'function', 'system', 'tool', 'user']",
            "messages.0.role",
        ),
        ({**GOOD_BODY, "messages": [{"role": "user", "content": 5}]}, "messages.0.content must be a string or a list of parts", "messages.0.content"),
        (
            b'{"model": "deepseek/deepseek-chat", "max_tokens": 8, "messages": [{"role": "user", "content": "\\ud800"}]}',
            "request body contains text that is not valid Unicode (a lone surrogate)",
            None,
        ),
    ],
)
def test_invalid_body_gets_400(marketplace, buyer_key, body, message, param):
    account_id, key = buyer_key
    credit_without_chain(marketplace.db, account_id, 10**9)
    before = ledger_counts(marketplace.db)

    response = _post(marketplace, key, body)

    assert response.status_code == 400
    assert response.json()["error"]["message"] == message
    assert response.json()["error"]["param"] == param
    assert response.json()["error"]["type"] == "invalid_request_error"
    assert ledger_counts(marketplace.db) == before


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_numbers_get_400_and_write_nothing(marketplace, buyer_key, constant):
    account_id, key = buyer_key
    credit_without_chain(marketplace.db, account_id, 10**9)
    before = ledger_counts(marketplace.db)
    body = b'{"model": "deepseek/deepseek-chat", "messages": [{"role": "user", "content": "hi"}], "temperature": ' + constant.encode() + b"}"

    response = _post(marketplace, key, body)

    assert response.status_code == 400
    assert response.json()["error"]["message"] == (
        f"request body contains {constant}, which JSON does not allow; send a finite number or null"
    )
    assert ledger_counts(marketplace.db) == before


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_oversized_body_gets_413(marketplace, buyer_key, chunked):
    account_id, key = buyer_key
    credit_without_chain(marketplace.db, account_id, 10**9)
    before = ledger_counts(marketplace.db)
    limit = marketplace.settings.max_request_bytes
    assert limit == 32 * 1024 * 1024
    oversized = b'{"model": "deepseek/deepseek-chat", "messages": [{"role": "user", "content": "' + b"a" * limit + b'"}]}'

    def pieces():
        for start in range(0, len(oversized), 1 << 20):
            yield oversized[start : start + (1 << 20)]

    response = httpx.post(
        f"{marketplace.url}/v1/chat/completions",
        content=pieces() if chunked else oversized,
        headers={"authorization": f"Bearer {key}"},
        timeout=60,
        trust_env=False,
    )

    assert response.status_code == 413
    assert response.json()["error"] == {
        "message": f"request body is larger than {limit} bytes; shorten the prompt",
        "type": "invalid_request_error",
        "param": None,
        "code": "request_too_large",
    }
    assert ledger_counts(marketplace.db) == before


def test_non_string_role_gets_400(marketplace, buyer_key):
    _account_id, key = buyer_key

    response = _post(marketplace, key, {**GOOD_BODY, "messages": [{"role": ["user"], "content": "hi"}]})

    assert response.status_code == 400
    assert response.json()["error"]["param"] == "messages.0.role"
    assert response.json()["error"]["message"] == (
        "messages.0.role ['user'] is not one of ['assistant', 'developer', 'function', 'system', 'tool', 'user']"
    )


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
def test_other_methods_get_405(marketplace, method):
    response = httpx.request(method, f"{marketplace.url}/v1/chat/completions", timeout=30, trust_env=False)

    assert response.status_code == 405
    assert response.json()["error"] == {
        "message": f"{method} is not allowed on /v1/chat/completions; send a POST",
        "type": "invalid_request_error",
        "param": None,
        "code": "method_not_allowed",
    }
