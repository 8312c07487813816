"""Accounts, wallet sign-in, session tokens and API keys.

An account is created by proving control of a wallet, either with a Sign-In with Ethereum
(EIP-4361) message or with an EIP-191 signature over the plain sign-in text for a server nonce.
Session tokens (account management) and API keys (the proxy) are random bearer secrets shown
once and stored as SHA-256 hashes.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import secrets
from dataclasses import dataclass

from eth_account import Account as EthAccount
from eth_account.messages import encode_defunct
from siwe import SiweMessage
from sqlalchemy import select, update
from sqlalchemy.orm import Session
from web3 import Web3

from marketplace.errors import InvalidRequest, NotFound, Unauthorized
from marketplace.models import Account, ApiKey, AuthNonce, SessionToken, Wallet, utcnow
from marketplace.settings import Settings

logger = logging.getLogger(__name__)

API_KEY_PREFIX = "tp-"
SESSION_TOKEN_PREFIX = "tps-"
# How far ahead of the server's clock a wallet's Issued At may be.
SIWE_CLOCK_SKEW_S = 300


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def checksum_address(value: str, field: str = "address") -> str:
    try:
        return Web3.to_checksum_address(value)
    except (ValueError, TypeError) as exc:
        raise InvalidRequest(f"{field} {value!r} is not a 20-byte hex address", param=field) from exc


def issue_nonce(session: Session, settings: Settings) -> AuthNonce:
    now = utcnow()
    nonce = AuthNonce(
        nonce=secrets.token_hex(16),
        created_at=now,
        expires_at=now + dt.timedelta(seconds=settings.siwe_nonce_ttl_s),
    )
    session.add(nonce)
    session.flush()
    return nonce


def plain_sign_in_text(nonce: str, address: str) -> str:
    """The text a wallet signs (EIP-191 personal_sign) when it does not use Sign-In with Ethereum."""
    return f"Sign in to Tokenport\nAddress: {address}\nNonce: {nonce}"


def _consume_nonce(session: Session, nonce: str) -> None:
    # The conditional UPDATE makes the nonce single-use even when two sign-ins race.
    now = utcnow()
    result = session.execute(
        update(AuthNonce)
        .where(AuthNonce.nonce == nonce, AuthNonce.used_at.is_(None), AuthNonce.expires_at > now)
        .values(used_at=now)
    )
    if result.rowcount == 1:
        return
    row = session.get(AuthNonce, nonce)
    if row is None:
        raise Unauthorized(f"nonce {nonce!r} was not issued by this server; request one from /v1/auth/nonce", code="nonce_unknown")
    if row.used_at is not None:
        raise Unauthorized(f"nonce {nonce!r} was already used; request a new one", code="nonce_reused")
    raise Unauthorized(f"nonce {nonce!r} expired; request a new one", code="nonce_expired")


def _recover_signer(text: str, signature: str) -> str:
    try:
        return EthAccount.recover_message(encode_defunct(text=text), signature=signature)
    except Exception as exc:  # eth-account raises several types for malformed signatures
        raise Unauthorized("signature is malformed; send the 65-byte hex signature from personal_sign", code="signature_invalid") from exc


def _verify_siwe(message: str, signature: str, settings: Settings) -> tuple[str, str]:
    """Check a Sign-In with Ethereum message and return (address, nonce)."""
    try:
        parsed = SiweMessage.from_message(message)
    except Exception as exc:  # siwe raises its own parse errors and ValueError
        reason = str(exc) or "it does not follow the EIP-4361 message format"
        raise InvalidRequest(f"message is not a valid EIP-4361 message: {reason}", param="message") from exc

    if parsed.domain != settings.siwe_domain:
        raise Unauthorized(
            f"message domain {parsed.domain!r} does not match this server's domain {settings.siwe_domain!r}",
            code="domain_mismatch",
        )
    if parsed.uri != settings.siwe_uri:
        raise Unauthorized(f"message URI {parsed.uri!r} does not match this server's URI {settings.siwe_uri!r}", code="uri_mismatch")
    allowed_chain_ids = {chain.chain_id for chain in settings.chains}
    if allowed_chain_ids and parsed.chain_id not in allowed_chain_ids:
        raise Unauthorized(
            f"message chain id {parsed.chain_id} is not one of this server's chains {sorted(allowed_chain_ids)}",
            code="chain_id_mismatch",
        )
    now = utcnow()
    if parsed.expiration_time is not None and _parse_time(parsed.expiration_time) <= now:
        raise Unauthorized(f"message expired at {parsed.expiration_time}; sign a new one", code="message_expired")
    issued_at = _parse_time(parsed.issued_at)
    if issued_at > now + dt.timedelta(seconds=SIWE_CLOCK_SKEW_S):
        raise Unauthorized(f"message is issued in the future ({parsed.issued_at}); check the wallet's clock", code="issued_in_future")
    if issued_at < now - dt.timedelta(seconds=settings.siwe_nonce_ttl_s):
        raise Unauthorized(f"message was issued at {parsed.issued_at}, before its nonce could exist; sign a new one", code="message_expired")
    if parsed.not_before is not None and _parse_time(parsed.not_before) > now:
        raise Unauthorized(f"message is not valid before {parsed.not_before}", code="message_not_yet_valid")

    signer = _recover_signer(message, signature)
    address = Web3.to_checksum_address(parsed.address)
    if signer != address:
        raise Unauthorized(
            f"signature was made by {signer}, not by the message's address {address}", code="signature_mismatch"
        )
    return address, parsed.nonce


def _parse_time(value: object) -> dt.datetime:
    if isinstance(value, dt.datetime):
        parsed = value
    else:
        parsed = dt.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


@dataclass(frozen=True)
class SignInResult:
    account_id: int
    address: str
    session_token: str
    expires_at: dt.datetime
    created: bool


def sign_in(
    session: Session,
    settings: Settings,
    *,
    signature: str,
    message: str | None = None,
    address: str | None = None,
    nonce: str | None = None,
) -> SignInResult:
    """Verify a wallet signature, create the account on first sign-in, and issue a session token."""
    if message is not None:
        wallet_address, used_nonce = _verify_siwe(message, signature, settings)
    else:
        if address is None or nonce is None:
            raise InvalidRequest("send either an EIP-4361 message, or an address and a nonce", param="message")
        wallet_address = checksum_address(address)
        signer = _recover_signer(plain_sign_in_text(nonce, wallet_address), signature)
        if signer != wallet_address:
            raise Unauthorized(f"signature was made by {signer}, not by {wallet_address}", code="signature_mismatch")
        used_nonce = nonce
    _consume_nonce(session, used_nonce)

    wallet = session.scalar(select(Wallet).where(Wallet.address == wallet_address))
    created = wallet is None
    if wallet is None:
        account = Account()
        session.add(account)
        session.flush()
        wallet = Wallet(account_id=account.id, address=wallet_address)
        session.add(wallet)
        session.flush()
        logger.info("account created", extra={"account_id": account.id, "address": wallet_address})

    token = SESSION_TOKEN_PREFIX + secrets.token_urlsafe(32)
    expires_at = utcnow() + dt.timedelta(seconds=settings.session_ttl_s)
    session.add(SessionToken(account_id=wallet.account_id, token_hash=hash_secret(token), expires_at=expires_at))
    session.flush()
    return SignInResult(wallet.account_id, wallet_address, token, expires_at, created)


def authenticate_session(session: Session, token: str) -> int:
    row = session.scalar(select(SessionToken).where(SessionToken.token_hash == hash_secret(token)))
    if row is None or row.expires_at <= utcnow():
        raise Unauthorized("session token is invalid or expired; sign in again at /v1/auth/verify", code="invalid_session")
    return row.account_id


@dataclass(frozen=True)
class CreatedApiKey:
    key: ApiKey
    secret: str


def create_api_key(
    session: Session,
    account_id: int,
    name: str,
    *,
    spend_limit_nano_usd: int | None = None,
    spend_limit_period: str | None = None,
    requests_per_minute: int | None = None,
    tokens_per_minute: int | None = None,
    allowed_models: list[str] | None = None,
) -> CreatedApiKey:
    secret = API_KEY_PREFIX + secrets.token_urlsafe(32)
    key = ApiKey(
        account_id=account_id,
        name=name,
        key_prefix=secret[:10],
        key_hash=hash_secret(secret),
        spend_limit_nano_usd=spend_limit_nano_usd,
        spend_limit_period=spend_limit_period,
        requests_per_minute=requests_per_minute,
        tokens_per_minute=tokens_per_minute,
        allowed_models=allowed_models,
    )
    session.add(key)
    session.flush()
    logger.info("api key created", extra={"account_id": account_id, "api_key_id": key.id})
    return CreatedApiKey(key, secret)


def revoke_api_key(session: Session, account_id: int, key_id: int) -> ApiKey:
    key = session.get(ApiKey, key_id)
    if key is None or key.account_id != account_id:
        raise NotFound(f"API key {key_id} not found on this account", param="key_id")
    if key.revoked_at is None:
        key.revoked_at = utcnow()
    return key


def find_api_key(session: Session, secret: str) -> ApiKey | None:
    key = session.scalar(select(ApiKey).where(ApiKey.key_hash == hash_secret(secret)))
    if key is None or key.revoked_at is not None:
        return None
    return key


def wallet_owner(session: Session, address: str) -> int | None:
    return session.scalar(select(Wallet.account_id).where(Wallet.address == address))
