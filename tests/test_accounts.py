"""Wallet sign-in, session tokens and API keys, through the HTTP API on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Iterator

import pytest
from sqlalchemy import select, update

from chain.devchain import DEV_BUYER, DEV_SUPPLIER_PAYOUT, DEV_TREASURY
from marketplace import accounts
from marketplace.models import ApiKey, AuthNonce, SessionToken
from marketplace.settings import ChainSettings
from marketplace.wallet_client import build_siwe_message, sign_text
from tests import factories
from tests.fixtures_app import RunningMarketplace, start_marketplace

DEV_CHAIN_ID = 31337
# Well formed (alphanumeric, at least 8 characters) but never issued by the server.
UNISSUED_NONCE = "0123456789abcdef0123456789abcdef"


def request_nonce(marketplace: RunningMarketplace) -> str:
    with marketplace.client() as client:
        response = client.post("/v1/auth/nonce")
    assert response.status_code == 200, response.text
    return response.json()["nonce"]


def siwe_message(marketplace: RunningMarketplace, nonce: str, **overrides) -> str:
    fields = {
        "address": DEV_BUYER.address,
        "nonce": nonce,
        "domain": marketplace.settings.siwe_domain,
        "uri": marketplace.settings.siwe_uri,
        "chain_id": DEV_CHAIN_ID,
        **overrides,
    }
    return build_siwe_message(**fields)


def verify(marketplace: RunningMarketplace, body: dict):
    with marketplace.client() as client:
        return client.post("/v1/auth/verify", json=body)


def sign_in(marketplace: RunningMarketplace, wallet=DEV_BUYER) -> dict:
    with marketplace.client() as client:
        return factories.sign_in(client, marketplace.settings, wallet)


# Sign-in


def test_first_sign_in_creates_account(marketplace):
    result = sign_in(marketplace)

    assert result["created"] is True
    assert result["address"] == DEV_BUYER.address
    assert result["session_token"].startswith(accounts.SESSION_TOKEN_PREFIX)


def test_later_sign_in_reuses_account(marketplace):
    first = sign_in(marketplace)

    second = sign_in(marketplace)

    assert second["created"] is False
    assert second["account_id"] == first["account_id"]
    assert second["session_token"] != first["session_token"]


def test_other_wallet_gets_other_account(marketplace):
    buyer = sign_in(marketplace, DEV_BUYER)

    supplier = sign_in(marketplace, DEV_SUPPLIER_PAYOUT)

    assert supplier["created"] is True
    assert supplier["account_id"] != buyer["account_id"]


def test_session_token_reads_account(marketplace):
    result = sign_in(marketplace)

    with marketplace.client(result["session_token"]) as client:
        response = client.get("/v1/account")

    assert response.status_code == 200
    body = response.json()
    assert body["account_id"] == result["account_id"]
    assert body["wallets"] == [DEV_BUYER.address]
    assert body["available_nano_usd"] == 0


def test_session_token_is_stored_hashed(marketplace):
    result = sign_in(marketplace)

    with marketplace.db.session() as session:
        stored = session.scalars(select(SessionToken.token_hash)).all()

    assert stored == [hashlib.sha256(result["session_token"].encode()).hexdigest()]


def test_plain_signature_sign_in_works(marketplace):
    nonce = request_nonce(marketplace)
    signature = sign_text(DEV_BUYER.private_key, accounts.plain_sign_in_text(nonce, DEV_BUYER.address))

    response = verify(marketplace, {"address": DEV_BUYER.address, "nonce": nonce, "signature": signature})

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["address"] == DEV_BUYER.address
    assert body["created"] is True


def test_plain_signature_accepts_lowercase_address(marketplace):
    nonce = request_nonce(marketplace)
    signature = sign_text(DEV_BUYER.private_key, accounts.plain_sign_in_text(nonce, DEV_BUYER.address))

    response = verify(marketplace, {"address": DEV_BUYER.address.lower(), "nonce": nonce, "signature": signature})

    assert response.status_code == 200, response.text
    assert response.json()["address"] == DEV_BUYER.address


def test_plain_and_siwe_sign_in_share_account(marketplace):
    siwe = sign_in(marketplace)
    nonce = request_nonce(marketplace)
    signature = sign_text(DEV_BUYER.private_key, accounts.plain_sign_in_text(nonce, DEV_BUYER.address))

    plain = verify(marketplace, {"address": DEV_BUYER.address, "nonce": nonce, "signature": signature}).json()

    assert plain["account_id"] == siwe["account_id"]
    assert plain["created"] is False


def assert_unauthorized(response, message: str, code: str) -> None:
    assert response.status_code == 401, response.text
    error = response.json()["error"]
    assert error["message"] == message
    assert error["code"] == code
    assert error["type"] == "authentication_error"


def test_reused_nonce_is_rejected(marketplace):
    nonce = request_nonce(marketplace)
    message = siwe_message(marketplace, nonce)
    body = {"message": message, "signature": sign_text(DEV_BUYER.private_key, message)}
    first = verify(marketplace, body)
    assert first.status_code == 200, first.text

    response = verify(marketplace, body)

    assert_unauthorized(response, f"nonce {nonce!r} was already used; request a new one", "nonce_reused")


def test_unknown_nonce_is_rejected(marketplace):
    message = siwe_message(marketplace, UNISSUED_NONCE)

    response = verify(marketplace, {"message": message, "signature": sign_text(DEV_BUYER.private_key, message)})

    assert_unauthorized(
        response,
        f"nonce {UNISSUED_NONCE!r} was not issued by this server; request one from /v1/auth/nonce",
        "nonce_unknown",
    )


def test_expired_nonce_is_rejected(marketplace):
    nonce = request_nonce(marketplace)
    with marketplace.db.transaction() as session:
        session.execute(
            update(AuthNonce)
            .where(AuthNonce.nonce == nonce)
            .values(expires_at=dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1))
        )
    message = siwe_message(marketplace, nonce)

    response = verify(marketplace, {"message": message, "signature": sign_text(DEV_BUYER.private_key, message)})

    assert_unauthorized(response, f"nonce {nonce!r} expired; request a new one", "nonce_expired")


def test_plain_sign_in_with_reused_nonce_is_rejected(marketplace):
    nonce = request_nonce(marketplace)
    signature = sign_text(DEV_BUYER.private_key, accounts.plain_sign_in_text(nonce, DEV_BUYER.address))
    body = {"address": DEV_BUYER.address, "nonce": nonce, "signature": signature}
    assert verify(marketplace, body).status_code == 200

    response = verify(marketplace, body)

    assert_unauthorized(response, f"nonce {nonce!r} was already used; request a new one", "nonce_reused")


def test_wrong_domain_is_rejected(marketplace):
    nonce = request_nonce(marketplace)
    message = siwe_message(marketplace, nonce, domain="phishing.example")

    response = verify(marketplace, {"message": message, "signature": sign_text(DEV_BUYER.private_key, message)})

    assert_unauthorized(
        response,
        f"message domain 'phishing.example' does not match this server's domain {marketplace.settings.siwe_domain!r}",
        "domain_mismatch",
    )


def test_wrong_uri_is_rejected(marketplace):
    nonce = request_nonce(marketplace)
    message = siwe_message(marketplace, nonce, uri="https://evil.example/login")

    response = verify(marketplace, {"message": message, "signature": sign_text(DEV_BUYER.private_key, message)})

    assert_unauthorized(
        response,
        f"message URI 'https://evil.example/login' does not match this server's URI {marketplace.settings.siwe_uri!r}",
        "uri_mismatch",
    )


def test_message_issued_in_future_is_rejected(marketplace):
    nonce = request_nonce(marketplace)
    issued_at = dt.datetime.now(dt.UTC).replace(microsecond=0) + dt.timedelta(days=365)
    message = siwe_message(marketplace, nonce, issued_at=issued_at)

    response = verify(marketplace, {"message": message, "signature": sign_text(DEV_BUYER.private_key, message)})

    stamp = issued_at.strftime("%Y-%m-%dT%H:%M:%S.000Z")
    assert_unauthorized(response, f"message is issued in the future ({stamp}); check the wallet's clock", "issued_in_future")


@pytest.fixture
def marketplace_on_dev_chain(db) -> Iterator[RunningMarketplace]:
    """The API with chain 31337 configured. Nothing connects to the RPC URL in these tests."""
    chain = ChainSettings(chain_id=DEV_CHAIN_ID, rpc_url="http://127.0.0.1:8545", treasury_address=DEV_TREASURY.address)
    server, running = start_marketplace(db, [chain])
    yield running
    server.stop()


def test_wrong_chain_id_is_rejected(marketplace_on_dev_chain):
    marketplace = marketplace_on_dev_chain
    nonce = request_nonce(marketplace)
    message = siwe_message(marketplace, nonce, chain_id=1)

    response = verify(marketplace, {"message": message, "signature": sign_text(DEV_BUYER.private_key, message)})

    assert_unauthorized(response, "message chain id 1 is not one of this server's chains [31337]", "chain_id_mismatch")


def test_configured_chain_id_is_accepted(marketplace_on_dev_chain):
    result = sign_in(marketplace_on_dev_chain)

    assert result["created"] is True


def test_expired_message_is_rejected(marketplace):
    nonce = request_nonce(marketplace)
    issued_at = dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(hours=1)
    message = siwe_message(marketplace, nonce, issued_at=issued_at, expires_in_s=60)
    expired_at = (issued_at + dt.timedelta(seconds=60)).strftime("%Y-%m-%dT%H:%M:%S.000Z")

    response = verify(marketplace, {"message": message, "signature": sign_text(DEV_BUYER.private_key, message)})

    assert_unauthorized(response, f"message expired at {expired_at}; sign a new one", "message_expired")


def test_expired_message_leaves_nonce_unused(marketplace):
    nonce = request_nonce(marketplace)
    issued_at = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
    expired = siwe_message(marketplace, nonce, issued_at=issued_at, expires_in_s=60)
    verify(marketplace, {"message": expired, "signature": sign_text(DEV_BUYER.private_key, expired)})
    fresh = siwe_message(marketplace, nonce)

    response = verify(marketplace, {"message": fresh, "signature": sign_text(DEV_BUYER.private_key, fresh)})

    assert response.status_code == 200, response.text


def test_signature_by_other_key_is_rejected(marketplace):
    nonce = request_nonce(marketplace)
    message = siwe_message(marketplace, nonce)

    response = verify(marketplace, {"message": message, "signature": sign_text(DEV_SUPPLIER_PAYOUT.private_key, message)})

    assert_unauthorized(
        response,
        f"signature was made by {DEV_SUPPLIER_PAYOUT.address}, not by the message's address {DEV_BUYER.address}",
        "signature_mismatch",
    )


def test_plain_signature_by_other_key_is_rejected(marketplace):
    nonce = request_nonce(marketplace)
    text = accounts.plain_sign_in_text(nonce, DEV_BUYER.address)

    response = verify(
        marketplace,
        {"address": DEV_BUYER.address, "nonce": nonce, "signature": sign_text(DEV_SUPPLIER_PAYOUT.private_key, text)},
    )

    assert_unauthorized(
        response, f"signature was made by {DEV_SUPPLIER_PAYOUT.address}, not by {DEV_BUYER.address}", "signature_mismatch"
    )


def test_rejected_signature_leaves_nonce_unused(marketplace):
    nonce = request_nonce(marketplace)
    message = siwe_message(marketplace, nonce)
    verify(marketplace, {"message": message, "signature": sign_text(DEV_SUPPLIER_PAYOUT.private_key, message)})

    response = verify(marketplace, {"message": message, "signature": sign_text(DEV_BUYER.private_key, message)})

    assert response.status_code == 200, response.text


def test_malformed_signature_is_rejected(marketplace):
    nonce = request_nonce(marketplace)
    message = siwe_message(marketplace, nonce)

    response = verify(marketplace, {"message": message, "signature": "0x1234"})

    assert_unauthorized(
        response, "signature is malformed; send the 65-byte hex signature from personal_sign", "signature_invalid"
    )


def test_malformed_message_is_rejected(marketplace):
    response = verify(marketplace, {"message": "Sign in, please", "signature": "0x" + "00" * 65})

    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == "message"
    assert error["message"].startswith("message is not a valid EIP-4361 message")
    assert error["type"] == "invalid_request_error"


def test_sign_in_without_message_or_nonce_is_rejected(marketplace):
    response = verify(marketplace, {"address": DEV_BUYER.address, "signature": "0x" + "00" * 65})

    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == "message"
    assert error["message"] == "send either an EIP-4361 message, or an address and a nonce"


def test_rejected_sign_in_creates_no_account(marketplace):
    nonce = request_nonce(marketplace)
    message = siwe_message(marketplace, nonce)
    verify(marketplace, {"message": message, "signature": sign_text(DEV_SUPPLIER_PAYOUT.private_key, message)})

    with marketplace.db.session() as session:
        owner = accounts.wallet_owner(session, DEV_BUYER.address)
        tokens = session.scalars(select(SessionToken)).all()

    assert owner is None
    assert tokens == []


# API keys


def create_key(marketplace: RunningMarketplace, session_token: str, **fields) -> dict:
    with marketplace.client(session_token) as client:
        response = client.post("/v1/keys", json={"name": "test", **fields})
    assert response.status_code == 201, response.text
    return response.json()


def test_created_key_is_shown_once(marketplace):
    session_token = sign_in(marketplace)["session_token"]

    created = create_key(marketplace, session_token)
    with marketplace.client(session_token) as client:
        listing = client.get("/v1/keys")

    secret = created["key"]
    assert secret.startswith(accounts.API_KEY_PREFIX)
    assert created["prefix"] == secret[:10]
    assert listing.status_code == 200
    listed = listing.json()["data"]
    assert len(listed) == 1
    assert "key" not in listed[0]
    assert listed[0]["prefix"] == secret[:10]
    assert listed[0]["id"] == created["id"]
    assert secret not in listing.text


def test_key_is_stored_as_sha256_of_secret(marketplace):
    session_token = sign_in(marketplace)["session_token"]

    created = create_key(marketplace, session_token)

    with marketplace.db.session() as session:
        row = session.get(ApiKey, created["id"])
        assert row is not None
        stored_values = [str(getattr(row, column.key)) for column in ApiKey.__table__.columns]
        key_hash = row.key_hash
    secret = created["key"]
    assert key_hash == hashlib.sha256(secret.encode()).hexdigest()
    assert all(secret not in value for value in stored_values)


def chat(marketplace: RunningMarketplace, api_key: str):
    with marketplace.client(api_key) as client:
        return client.post(
            "/v1/chat/completions",
            json={"model": "deepseek/deepseek-chat", "messages": [{"role": "user", "content": "hi"}]},
        )


def test_revoked_key_is_rejected_at_proxy(marketplace):
    session_token = sign_in(marketplace)["session_token"]
    created = create_key(marketplace, session_token)
    # Before revocation the key authenticates: with no listing the call ends in 404, not 401.
    assert chat(marketplace, created["key"]).status_code == 404

    with marketplace.client(session_token) as client:
        revoked = client.delete(f"/v1/keys/{created['id']}")
    response = chat(marketplace, created["key"])

    assert revoked.status_code == 200, revoked.text
    assert revoked.json()["revoked_at"] is not None
    assert response.status_code == 401
    assert response.json() == {
        "error": {
            "message": "API key is invalid or revoked; create one at POST /v1/keys",
            "type": "authentication_error",
            "param": None,
            "code": "invalid_api_key",
        }
    }


def test_unknown_key_is_rejected_at_proxy(marketplace):
    response = chat(marketplace, accounts.API_KEY_PREFIX + "not-a-key")

    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_api_key"


def test_revoking_other_accounts_key_is_not_found(marketplace):
    owner_token = sign_in(marketplace, DEV_BUYER)["session_token"]
    other_token = sign_in(marketplace, DEV_SUPPLIER_PAYOUT)["session_token"]
    created = create_key(marketplace, owner_token)

    with marketplace.client(other_token) as client:
        response = client.delete(f"/v1/keys/{created['id']}")

    assert response.status_code == 404, response.text
    assert response.json()["error"]["param"] == "key_id"
    assert chat(marketplace, created["key"]).status_code == 404


def test_key_list_shows_only_own_keys(marketplace):
    owner_token = sign_in(marketplace, DEV_BUYER)["session_token"]
    other_token = sign_in(marketplace, DEV_SUPPLIER_PAYOUT)["session_token"]
    create_key(marketplace, owner_token)

    with marketplace.client(other_token) as client:
        response = client.get("/v1/keys")

    assert response.json() == {"data": []}


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/v1/keys"), ("POST", "/v1/keys"), ("DELETE", "/v1/keys/1"), ("GET", "/v1/account")],
)
def test_session_routes_require_session_token(marketplace, method, path):
    with marketplace.client() as client:
        response = client.request(method, path, json={"name": "test"} if method == "POST" else None)

    assert response.status_code == 401, response.text
    error = response.json()["error"]
    assert error["code"] == "missing_credentials"
    assert error["message"] == "missing session token; send it as 'Authorization: Bearer <session token>'"


def test_invalid_session_token_is_rejected(marketplace):
    with marketplace.client(accounts.SESSION_TOKEN_PREFIX + "forged") as client:
        response = client.get("/v1/keys")

    assert_unauthorized(
        response, "session token is invalid or expired; sign in again at /v1/auth/verify", "invalid_session"
    )


def test_api_key_is_not_a_session_token(marketplace):
    session_token = sign_in(marketplace)["session_token"]
    api_key = create_key(marketplace, session_token)["key"]

    with marketplace.client(api_key) as client:
        response = client.get("/v1/keys")

    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_session"


def test_expired_session_token_is_rejected(marketplace):
    session_token = sign_in(marketplace)["session_token"]
    with marketplace.db.transaction() as session:
        session.execute(update(SessionToken).values(expires_at=dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)))

    with marketplace.client(session_token) as client:
        response = client.get("/v1/keys")

    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_session"
