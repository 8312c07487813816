"""FastAPI dependencies: the application state and the two kinds of bearer credentials."""

from __future__ import annotations

import time

import anyio
from fastapi import Request

from marketplace import accounts
from marketplace.db import Database
from marketplace.errors import Unauthorized
from marketplace.proxy import Caller
from marketplace.settings import Settings


def get_db(request: Request) -> Database:
    return request.app.state.db


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def _bearer(request: Request, expected: str) -> str:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        api_key = request.headers.get("x-api-key", "")
        if api_key:
            return api_key.strip()
        raise Unauthorized(f"missing {expected}; send it as 'Authorization: Bearer <{expected}>'", code="missing_credentials")
    return token.strip()


class ApiKeyCache:
    """Maps key hashes to callers for a few seconds, so the proxy skips a database read per call.

    A revoked key keeps working for at most `ttl_s` seconds in each process.
    """

    def __init__(self, ttl_s: float) -> None:
        self.ttl_s = ttl_s
        self._entries: dict[str, tuple[float, Caller]] = {}

    def get(self, key_hash: str) -> Caller | None:
        entry = self._entries.get(key_hash)
        if entry is None or entry[0] < time.monotonic():
            return None
        return entry[1]

    def put(self, key_hash: str, caller: Caller) -> None:
        if len(self._entries) > 10_000:
            self._entries.clear()
        self._entries[key_hash] = (time.monotonic() + self.ttl_s, caller)


async def require_api_key(request: Request) -> Caller:
    secret = _bearer(request, "API key")
    cache: ApiKeyCache = request.app.state.api_key_cache
    key_hash = accounts.hash_secret(secret)
    caller = cache.get(key_hash)
    if caller is not None:
        return caller

    def load() -> Caller | None:
        with get_db(request).session() as session:
            key = accounts.find_api_key(session, secret)
            if key is None:
                return None
            allowed = tuple(key.allowed_models) if key.allowed_models is not None else None
            return Caller(
                account_id=key.account_id,
                api_key_id=key.id,
                allowed_models=allowed,
                spend_limit_nano_usd=key.spend_limit_nano_usd,
                spend_limit_period=key.spend_limit_period,
                requests_per_minute=key.requests_per_minute,
                tokens_per_minute=key.tokens_per_minute,
            )

    caller = await anyio.to_thread.run_sync(load)
    if caller is None:
        raise Unauthorized("API key is invalid or revoked; create one at POST /v1/keys", code="invalid_api_key")
    cache.put(key_hash, caller)
    return caller


def require_session(request: Request) -> int:
    """Return the account id of a valid session token."""
    token = _bearer(request, "session token")
    with get_db(request).session() as session:
        return accounts.authenticate_session(session, token)


async def require_account(request: Request) -> int:
    """Return the account id of a session token or an API key, whichever the request carries."""
    token = _bearer(request, "API key or session token")
    if token.startswith(accounts.SESSION_TOKEN_PREFIX):
        return await anyio.to_thread.run_sync(require_session, request)
    return (await require_api_key(request)).account_id
