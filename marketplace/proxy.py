"""The metering proxy for OpenAI Chat Completions.

One call: route to a listing, hold the largest possible cost, call the upstream, then charge
the metered cost and release the rest. The response's `usage` is exactly what was charged.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import anyio
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, StrictBool, StrictInt, ValidationError
from sqlalchemy import select

from marketplace import listings, metering, metering_batch
from marketplace.credentials import decrypt_credential
from marketplace.db import Database
from marketplace.errors import Forbidden, InvalidRequest, NotFound, RateLimited, UpstreamFailed, UpstreamUnavailable
from marketplace.models import Listing, Supplier
from marketplace.pricing import cost_nano_usd, max_cost_nano_usd
from marketplace.ratelimit import RateLimiter, Reservation
from marketplace.settings import Settings
from marketplace.health import HealthTracker
from marketplace.routing import order_candidates, parse_preferences
from providers.registry import Adapter, get_adapter
from providers.errors import UpstreamError
from providers.http import HttpClient
from providers.tokens import count_prompt_tokens, count_text_tokens
from providers.usage import InvalidUsageError, Usage

logger = logging.getLogger(__name__)

# Every tokenizer we meter with spends at least one byte of UTF-8 per token, so the byte length
# of the serialized messages bounds their token count; chat templates add a few tokens per message.
TEMPLATE_TOKENS_PER_MESSAGE = 8
TEMPLATE_TOKENS_PER_REQUEST = 16
# Worker threads for the proxy's remaining database reads (a model's listings, once per cache
# period), per process. The metering writes go through the batcher instead
# (marketplace/metering_batch.py). 4 stays below the default pool size of 5 connections.
METERING_DB_THREADS = 4
# Larger than any model's output limit, and small enough that costs stay far inside 64 bits.
MAX_OUTPUT_TOKENS = 10_000_000
MESSAGE_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})


@dataclass(frozen=True)
class OpenCall:
    """One attempt of a call: its listing chosen, its limits counted and its hold placed."""

    listing: Listing
    call: metering.OpenedCall
    body: dict[str, Any]
    # Token-count reservations of the supplier's limits, corrected to the real usage later.
    token_reservations: tuple[Reservation, ...]
    # The key's token reservation, shared by every attempt and corrected once, at settlement.
    key_reservations: tuple[Reservation, ...] = ()


@dataclass(frozen=True)
class Caller:
    """The authenticated owner of an API key."""

    account_id: int
    api_key_id: int
    allowed_models: tuple[str, ...] | None = None
    spend_limit_nano_usd: int | None = None
    spend_limit_period: str | None = None
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None


class ChatCompletionRequest(BaseModel):
    """The fields the proxy reads; every other field passes through to the upstream unchanged."""

    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1, max_length=200)
    messages: list[dict[str, Any]] = Field(min_length=1)
    stream: StrictBool = False
    stream_options: dict[str, Any] | None = None
    max_tokens: StrictInt | None = Field(default=None, ge=1, le=MAX_OUTPUT_TOKENS)
    max_completion_tokens: StrictInt | None = Field(default=None, ge=1, le=MAX_OUTPUT_TOKENS)
    n: StrictInt = Field(default=1, ge=1, le=16)
    tools: list[dict[str, Any]] | None = None
    # OpenRouter-style routing preferences; read here, never sent upstream.
    provider: dict[str, Any] | None = None
    _prompt_tokens: int | None = PrivateAttr(default=None)

    def prompt_tokens_estimate(self) -> int:
        """Count the messages' tokens locally, once per request, and return the count."""
        if self._prompt_tokens is None:
            self._prompt_tokens = count_prompt_tokens(self.messages)
        return self._prompt_tokens


def parse_chat_request(body: Any) -> ChatCompletionRequest:
    if not isinstance(body, dict):
        raise InvalidRequest("request body must be a JSON object", param=None)
    try:
        request = ChatCompletionRequest.model_validate(body)
    except RecursionError as exc:
        raise InvalidRequest("request body is nested too deeply") from exc
    except ValidationError as exc:
        first = exc.errors()[0]
        param = ".".join(str(part) for part in first["loc"])
        raise InvalidRequest(f"{param}: {first['msg']}", param=param) from exc
    for index, message in enumerate(request.messages):
        if "role" not in message:
            raise InvalidRequest(f"messages.{index}.role is missing", param=f"messages.{index}.role")
        if not isinstance(message["role"], str) or message["role"] not in MESSAGE_ROLES:
            raise InvalidRequest(
                f"messages.{index}.role {message['role']!r} is not one of {sorted(MESSAGE_ROLES)}", param=f"messages.{index}.role"
            )
        content = message.get("content")
        if content is not None and not isinstance(content, (str, list)):
            raise InvalidRequest(f"messages.{index}.content must be a string or a list of parts", param=f"messages.{index}.content")
    try:
        json.dumps(body, ensure_ascii=False).encode()
    except UnicodeEncodeError as exc:
        raise InvalidRequest("request body contains text that is not valid Unicode (a lone surrogate)") from exc
    except RecursionError as exc:
        raise InvalidRequest("request body is nested too deeply") from exc
    return request


def new_generation_id() -> str:
    return "gen-" + secrets.token_hex(12)


def prompt_token_bound(messages: list[dict[str, Any]], extra: Any = None) -> int:
    """Bound the prompt tokens from above: one per UTF-8 byte of the messages and of whatever
    else the upstream reads as input (tools, response format), plus template overhead."""
    size = len(json.dumps(messages, ensure_ascii=False, separators=(",", ":")).encode())
    if extra:
        size += len(json.dumps(extra, ensure_ascii=False, separators=(",", ":")).encode())
    return size + TEMPLATE_TOKENS_PER_MESSAGE * len(messages) + TEMPLATE_TOKENS_PER_REQUEST


def prompt_input_extras(request: ChatCompletionRequest) -> dict[str, Any]:
    """Request fields besides the messages that upstreams bill as input tokens."""
    extras = request.model_extra or {}
    fields = {
        "tools": request.tools,
        "functions": extras.get("functions"),
        "response_format": extras.get("response_format"),
        "tool_choice": extras.get("tool_choice"),
    }
    return {name: value for name, value in fields.items() if value is not None}


def usage_body(usage: Usage, charged_nano_usd: int) -> dict[str, Any]:
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cached_prompt_tokens, "cache_write_tokens": usage.cache_write_tokens},
        "completion_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
        "cost_nano_usd": charged_nano_usd,
        "cost_usd": f"{charged_nano_usd / 10**9:.9f}" if charged_nano_usd < 2**53 else str(charged_nano_usd),
        "estimated": usage.estimated,
    }


def _text_of_choice(choice: dict[str, Any]) -> str:
    message = choice.get("message") or choice.get("delta") or {}
    parts = [message.get("content") or "", message.get("reasoning_content") or ""]
    for call in message.get("tool_calls") or []:
        function = call.get("function") or {}
        parts.append(function.get("name") or "")
        parts.append(function.get("arguments") or "")
    return "".join(part for part in parts if isinstance(part, str))


def should_fall_back(exc: UpstreamError) -> bool:
    """Return whether another listing may succeed where this one failed.

    A 400 or 422 from the upstream rejects the buyer's request itself, so it is returned as is.
    A 401, 403 or 404 means the supplier's credential or model name is broken. A client error
    without a status is a request this listing's adapter cannot translate, which a listing of
    another protocol may still serve.
    """
    if exc.kind == "client_error":
        return exc.status_code in (None, 401, 403, 404)
    return True


def counts_against_listing(exc: UpstreamError) -> bool:
    """Return whether a failure reflects on the listing's health."""
    return should_fall_back(exc) and not (exc.kind == "client_error" and exc.status_code is None)


def _upstream_error(exc: UpstreamError) -> Exception:
    message = f"upstream failed: {exc.message}"
    if exc.kind == "client_error" and exc.status_code in (400, 422):
        return InvalidRequest(f"upstream rejected the request: {exc.message}", code="upstream_invalid_request")
    if exc.kind == "client_error" and exc.status_code is None:
        return InvalidRequest(f"no listing of this model can take the request: {exc.message}", code="unsupported_by_upstream")
    if exc.kind == "rate_limited":
        return RateLimited(f"upstream rate limit reached: {exc.message}", retry_after_s=exc.retry_after_s, code="upstream_rate_limited")
    if exc.kind in ("timeout", "connection"):
        return UpstreamUnavailable(message, code=f"upstream_{exc.kind}")
    return UpstreamFailed(message, code=f"upstream_{exc.kind}")


class MeteringProxy:
    def __init__(self, db: Database, settings: Settings, client: HttpClient, limiter: RateLimiter) -> None:
        self.db = db
        self.settings = settings
        self.client = client
        self.limiter = limiter
        self.health = HealthTracker(db, settings, limiter)
        self.db_threads = anyio.CapacityLimiter(METERING_DB_THREADS)
        self.metering = metering_batch.create_batcher(db)
        self._listing_cache: dict[str, tuple[float, int, list[tuple[Listing, str]]]] = {}
        self._credentials: dict[str, str] = {}

    async def close(self) -> None:
        """Send the health counts and commit every queued metering write."""
        await self.health.close()
        await self.metering.close()

    # Routing and limits ---------------------------------------------------------------------

    def _load_candidates(self, model: str) -> list[tuple[Listing, str]]:
        with self.db.session() as session:
            rows = session.execute(
                select(Listing, Supplier.name)
                .join(Supplier, Supplier.id == Listing.supplier_id)
                .where(Listing.model == model, Listing.status == "active")
            )
            return [(listing, name) for listing, name in rows]

    async def _candidates(self, model: str) -> list[tuple[Listing, str]]:
        """A model's active listings, read at most once per `listing_cache_ttl_s` per process.

        Entries are dropped when this process writes any listing, so its own pauses and
        supplier edits take effect on the next call.
        """
        now = time.monotonic()
        changes = listings.listing_changes()
        cached = self._listing_cache.get(model)
        if cached is not None and cached[0] > now and cached[1] == changes:
            return cached[2]
        rows = await anyio.to_thread.run_sync(self._load_candidates, model, limiter=self.db_threads)
        if len(self._listing_cache) > 10_000:
            self._listing_cache.clear()
        self._listing_cache[model] = (now + self.settings.listing_cache_ttl_s, changes, rows)
        return rows

    async def _route(self, caller: Caller, request: ChatCompletionRequest) -> list[Listing]:
        if caller.allowed_models is not None and request.model not in caller.allowed_models:
            raise Forbidden(f"model {request.model!r} is not in this API key's allowlist", param="model", code="model_not_allowed")
        preferences = parse_preferences(request.provider)
        available = await self._candidates(request.model)
        if not available:
            raise NotFound(f"model {request.model!r} is not on sale; GET /v1/models lists what is", param="model", code="model_not_found")
        ordered = order_candidates(available, preferences)
        if not ordered:
            raise NotFound(
                f"no listing of {request.model!r} matches the provider preferences; GET /v1/offers?model={request.model} lists them",
                param="provider",
                code="no_matching_listing",
            )
        return ordered[: self.settings.max_fallbacks + 1]

    async def _count_key_limits(self, caller: Caller, request: ChatCompletionRequest) -> list[Reservation]:
        """Count the call against the key's request and token limits, before any upstream call."""
        if caller.requests_per_minute is not None:
            decision = await self.limiter.acquire(f"key:{caller.api_key_id}:rpm", 1, caller.requests_per_minute)
            if not decision.allowed:
                raise RateLimited(
                    f"API key limit of {caller.requests_per_minute} requests per minute reached",
                    retry_after_s=decision.retry_after_s,
                    code="requests_per_minute_exceeded",
                )
        if caller.tokens_per_minute is None:
            return []
        tokens = self._token_estimate(request, request.max_tokens or request.max_completion_tokens or self.settings.default_max_output_tokens)
        decision = await self.limiter.acquire(f"key:{caller.api_key_id}:tpm", tokens, caller.tokens_per_minute)
        if not decision.allowed:
            raise RateLimited(
                f"API key limit of {caller.tokens_per_minute} tokens per minute reached; this call may use {tokens} tokens",
                retry_after_s=decision.retry_after_s,
                code="tokens_per_minute_exceeded",
            )
        return [decision.reservation] if decision.reservation else []

    @staticmethod
    def _token_estimate(request: ChatCompletionRequest, max_completion: int) -> int:
        return request.prompt_tokens_estimate() + max_completion * request.n

    async def _count_supplier_limits(self, listing: Listing, tokens: int) -> tuple[list[Reservation], float] | None:
        """Count the call against the listing's supplier limits; None with no change when one is reached."""
        limits = [
            (f"listing:{listing.id}:rpm", 1, listing.requests_per_minute, 60, False),
            (f"listing:{listing.id}:tpm", tokens, listing.tokens_per_minute, 60, True),
            (f"listing:{listing.id}:tpd", tokens, listing.tokens_per_day, 86_400, True),
        ]
        taken: list[tuple[Reservation, bool]] = []
        for subject, amount, limit, window_s, counts_tokens in limits:
            if limit is None:
                continue
            decision = await self.limiter.acquire(subject, amount, limit, window_s)
            if not decision.allowed:
                for reservation, _ in taken:
                    await self.limiter.adjust(reservation, -reservation.amount)
                logger.info("listing skipped at its supplier limit", extra={"listing_id": listing.id, "limit": subject})
                return None
            assert decision.reservation is not None
            taken.append((decision.reservation, counts_tokens))
        return [reservation for reservation, counts_tokens in taken if counts_tokens], 0.0

    def _upstream_body(self, request: ChatCompletionRequest, listing: Listing, max_completion: int) -> dict[str, Any]:
        body = request.model_dump(exclude_none=True, exclude={"provider"})
        body["model"] = listing.upstream_model
        if request.max_tokens is None and request.max_completion_tokens is None:
            # The hold assumes this bound, so the upstream request must carry it too.
            body["max_tokens"] = max_completion
        return body

    async def _open_attempt(
        self,
        caller: Caller,
        request: ChatCompletionRequest,
        listing: Listing,
        generation_id: str,
        attempt: int,
        key_reservations: list[Reservation],
        started_at: dt.datetime | None = None,
    ) -> OpenCall | None:
        """Place the hold for one listing; None when the listing is at its supplier limits."""
        max_completion = request.max_tokens or request.max_completion_tokens or listing.max_output_tokens or self.settings.default_max_output_tokens
        if listing.max_output_tokens is not None and max_completion > listing.max_output_tokens:
            raise InvalidRequest(f"max_tokens {max_completion} exceeds this model's limit of {listing.max_output_tokens}", param="max_tokens")
        # Counting prompt tokens locally costs CPU on every call, so it runs only for a listing
        # that limits tokens.
        limits_tokens = listing.tokens_per_minute is not None or listing.tokens_per_day is not None
        tokens = self._token_estimate(request, max_completion) if limits_tokens else 0
        counted = await self._count_supplier_limits(listing, tokens)
        if counted is None:
            return None
        supplier_reservations, _ = counted

        hold = max_cost_nano_usd(prompt_token_bound(request.messages, prompt_input_extras(request)), max_completion * request.n, listings.listing_prices(listing))
        try:
            call = await self.metering.open(
                metering_batch.OpenRequest(
                    generation_id=generation_id,
                    account_id=caller.account_id,
                    api_key_id=caller.api_key_id,
                    listing_id=listing.id,
                    model=request.model,
                    stream=request.stream,
                    hold_nano_usd=hold,
                    hold_ttl_s=self.settings.hold_ttl_s,
                    spend_limit_nano_usd=caller.spend_limit_nano_usd,
                    spend_limit_period=caller.spend_limit_period,
                    attempt=attempt,
                    started_at=started_at,
                )
            )
        except BaseException:
            await self._release_reservations(supplier_reservations)
            raise
        body = self._upstream_body(request, listing, max_completion)
        return OpenCall(listing, call, body, tuple(supplier_reservations), tuple(key_reservations))

    async def _release_reservations(self, reservations) -> None:  # type: ignore[no-untyped-def]
        with anyio.CancelScope(shield=True):
            for reservation in reservations:
                await self.limiter.adjust(reservation, -reservation.amount)

    async def _correct_token_reservations(self, reservations: tuple[Reservation, ...], usage: Usage | None) -> None:
        used = usage.total_tokens if usage is not None else 0
        with anyio.CancelScope(shield=True):
            for reservation in reservations:
                await self.limiter.adjust(reservation, used - reservation.amount)

    # Settlement ------------------------------------------------------------------------------

    async def _fail(self, opened: OpenCall, exc: UpstreamError) -> None:
        call = opened.call
        logger.warning(
            "upstream call failed before any output",
            extra={"generation_id": call.generation_id, "listing_id": opened.listing.id, "kind": exc.kind, "status": exc.status_code},
        )
        with anyio.CancelScope(shield=True):
            await self.metering.fail(metering_batch.FailRequest(call, f"{exc.kind}: {exc.message}"))
            await self._correct_token_reservations(opened.token_reservations, None)
            if counts_against_listing(exc):
                await self.health.record(opened.listing.id, ok=False, detail=f"{exc.kind} {exc.status_code or ''}".strip())

    async def _abandon(self, opened: OpenCall) -> None:
        """Release the hold of an attempt that failed on an error of ours, not the upstream's."""
        logger.exception("call failed on an internal error; releasing its hold", extra={"generation_id": opened.call.generation_id})
        with anyio.CancelScope(shield=True):
            await self.metering.fail(metering_batch.FailRequest(opened.call, "internal error"))
            await self._correct_token_reservations(opened.token_reservations, None)

    async def _settle(self, opened: OpenCall, usage: Usage, status: str, error: str | None = None) -> metering.SettledCall:
        listing = opened.listing
        cost = cost_nano_usd(usage, listings.listing_prices(listing))
        with anyio.CancelScope(shield=True):
            settled = await self.metering.settle(
                metering_batch.SettleRequest(
                    opened.call,
                    usage=usage,
                    cost_nano_usd=cost,
                    supplier_id=listing.supplier_id,
                    fee_bps=self.settings.platform_fee_bps,
                    status=status,
                    error=error,
                )
            )
            await self._correct_token_reservations(opened.token_reservations + opened.key_reservations, usage)
        return settled

    def _credential(self, listing: Listing) -> str:
        encrypted = listing.upstream_credential_encrypted
        plaintext = self._credentials.get(encrypted)
        if plaintext is None:
            plaintext = decrypt_credential(self.settings, encrypted)
            if len(self._credentials) > 10_000:
                self._credentials.clear()
            self._credentials[encrypted] = plaintext
        return plaintext

    # Calls -----------------------------------------------------------------------------------

    async def _prepare(self, caller: Caller, request: ChatCompletionRequest) -> tuple[list[Listing], list[Reservation], str]:
        candidates = await self._route(caller, request)
        if caller.tokens_per_minute is not None or any(item.tokens_per_minute or item.tokens_per_day for item in candidates):
            # Counting is CPU work on long prompts; it runs off the event loop.
            await anyio.to_thread.run_sync(request.prompt_tokens_estimate)
        key_reservations = await self._count_key_limits(caller, request)
        return candidates, key_reservations, new_generation_id()

    def _exhausted(self, request: ChatCompletionRequest, last_error: UpstreamError | None) -> Exception:
        """Build the error for a call whose every candidate failed or was at its supplier limits."""
        if last_error is not None:
            return _upstream_error(last_error)
        return RateLimited(
            f"every listing of {request.model!r} is at its supplier's rate limit; retry shortly",
            retry_after_s=60,
            code="supplier_limits_reached",
        )

    async def complete(self, caller: Caller, request: ChatCompletionRequest) -> tuple[dict[str, Any], str]:
        candidates, key_reservations, generation_id = await self._prepare(caller, request)
        last_error: UpstreamError | None = None
        attempt = 0
        started_at: dt.datetime | None = None
        try:
            for listing in candidates:
                opened = await self._open_attempt(caller, request, listing, generation_id, attempt, key_reservations, started_at)
                if opened is None:
                    continue
                attempt += 1
                started_at = opened.call.started_at
                adapter = get_adapter(listing.upstream_protocol)
                try:
                    result = await adapter.complete(
                        self.client,
                        listing.upstream_base_url,
                        self._credential(listing),
                        opened.body,
                        min(self.settings.upstream_timeout_s, self.settings.max_call_s),
                    )
                except UpstreamError as exc:
                    await self._fail(opened, exc)
                    last_error = exc
                    if not should_fall_back(exc):
                        break
                    continue
                except Exception:
                    await self._abandon(opened)
                    raise
                await self.health.record(listing.id, ok=True)
                return await self._finish_completion(request, opened, result), generation_id
        except BaseException:
            await self._release_reservations(key_reservations)
            raise
        await self._release_reservations(key_reservations)
        raise self._exhausted(request, last_error)

    async def _finish_completion(self, request: ChatCompletionRequest, opened: OpenCall, result) -> dict[str, Any]:  # type: ignore[no-untyped-def]
        usage = result.usage
        if usage is None:
            completion_text = "".join(_text_of_choice(choice) for choice in result.body.get("choices") or [])
            usage = await anyio.to_thread.run_sync(
                lambda: Usage(prompt_tokens=request.prompt_tokens_estimate(), completion_tokens=count_text_tokens(completion_text), estimated=True)
            )
        settled = await self._settle(opened, usage, "completed")

        response = dict(result.body)
        response["id"] = opened.call.generation_id
        response["model"] = opened.listing.model
        response["usage"] = usage_body(usage, settled.charged_nano_usd)
        return response

    async def open_stream(self, caller: Caller, request: ChatCompletionRequest) -> tuple[AsyncIterator[dict[str, Any]], str]:
        """Start a streamed call and return its events: OpenAI chunk dicts, then an error dict if
        the upstream failed mid-stream, then a final chunk with the charged usage.

        A failure before the first upstream chunk falls back to the next listing and costs
        nothing; when every listing fails, the error is raised here, before any output.
        """
        candidates, key_reservations, generation_id = await self._prepare(caller, request)
        last_error: UpstreamError | None = None
        attempt = 0
        started_at: dt.datetime | None = None
        try:
            for listing in candidates:
                opened = await self._open_attempt(caller, request, listing, generation_id, attempt, key_reservations, started_at)
                if opened is None:
                    continue
                attempt += 1
                started_at = opened.call.started_at
                adapter = get_adapter(listing.upstream_protocol)
                upstream = adapter.stream(
                    self.client, listing.upstream_base_url, self._credential(listing), opened.body, self.settings.upstream_timeout_s
                )
                deadline = time.monotonic() + self.settings.max_call_s
                try:
                    # Chunks before the first output (a role announcement, say) are held back:
                    # a failure before output still costs nothing and falls back.
                    leading = await self._leading_chunks(upstream, deadline)
                except (UpstreamError, StopAsyncIteration) as caught:
                    await upstream.aclose()
                    exc = caught if isinstance(caught, UpstreamError) else UpstreamError("bad_response", "upstream closed the stream before sending any output")
                    await self._fail(opened, exc)
                    last_error = exc
                    if not should_fall_back(exc):
                        break
                    continue
                except Exception:
                    await self._abandon(opened)
                    raise
                await self.health.record(listing.id, ok=True)
                return self._relay(request, opened, leading, upstream, deadline), generation_id
        except BaseException:
            await self._release_reservations(key_reservations)
            raise
        await self._release_reservations(key_reservations)
        raise self._exhausted(request, last_error)

    async def _leading_chunks(self, upstream: AsyncIterator[dict[str, Any]], deadline: float) -> list[dict[str, Any]]:
        """Read chunks up to and including the first that carries output, usage or a finish."""
        leading: list[dict[str, Any]] = []
        while True:
            chunk = await _next_before(upstream, deadline, self.settings.max_call_s)
            leading.append(chunk)
            choices = chunk.get("choices") or []
            if chunk.get("usage") or any(_text_of_choice(choice) or choice.get("finish_reason") for choice in choices):
                return leading

    async def _relay(
        self,
        request: ChatCompletionRequest,
        opened: OpenCall,
        leading: list[dict[str, Any]],
        upstream: AsyncIterator[dict[str, Any]],
        deadline: float,
    ) -> AsyncIterator[dict[str, Any]]:
        """Relay upstream chunks and settle the call exactly once, however the stream ends.

        The stream is cut at `deadline`, before the call's hold can expire, and the call is
        charged for what was delivered.
        """
        call, listing = opened.call, opened.listing
        first = leading[0]
        delivered: list[str] = []
        reported: Usage | None = None
        finished = False
        settled = False
        error: UpstreamError | None = None

        async def estimate() -> Usage:
            text = "".join(delivered)
            with anyio.CancelScope(shield=True):
                return await anyio.to_thread.run_sync(
                    lambda: Usage(prompt_tokens=request.prompt_tokens_estimate(), completion_tokens=count_text_tokens(text), estimated=True)
                )

        async def chunks() -> AsyncIterator[dict[str, Any]]:
            for chunk in leading:
                yield chunk
            while True:
                try:
                    chunk = await _next_before(upstream, deadline, self.settings.max_call_s)
                except StopAsyncIteration:
                    return
                yield chunk

        try:
            try:
                async for chunk in chunks():
                    if chunk.get("usage"):
                        reported = self._reported_usage(get_adapter(listing.upstream_protocol), chunk, call.generation_id)
                    choices = chunk.get("choices") or []
                    if not choices:
                        continue
                    chunk["id"] = call.generation_id
                    chunk["model"] = listing.model
                    chunk.pop("usage", None)
                    text = "".join(_text_of_choice(choice) for choice in choices)
                    finished = finished or any(choice.get("finish_reason") for choice in choices)
                    yield chunk
                    # Counted only once the chunk was handed on, so a disconnect never bills
                    # a chunk the client did not get.
                    delivered.append(text)
            except UpstreamError as exc:
                error = exc
                logger.warning("upstream stream failed after output began", extra={"generation_id": call.generation_id, "kind": exc.kind})

            complete = finished and error is None
            usage = reported if (reported is not None and complete) else await estimate()
            status = "completed" if complete else "incomplete"
            settled_call = await self._settle(opened, usage, status, error.message if error else None)
            settled = True

            if error is not None:
                yield _upstream_error(error).body()
            yield {
                "id": call.generation_id,
                "object": "chat.completion.chunk",
                "created": first.get("created", 0),
                "model": listing.model,
                "choices": [],
                "usage": usage_body(usage, settled_call.charged_nano_usd),
            }
        finally:
            if not settled:
                # The client went away mid-stream: charge the prompt and what was delivered.
                await self._settle(opened, await estimate(), "client_disconnected")
            with anyio.CancelScope(shield=True):
                await upstream.aclose()  # type: ignore[attr-defined]

    def _reported_usage(self, adapter: Adapter, chunk: dict[str, Any], generation_id: str) -> Usage | None:
        """Read the usage of an adapter's chunk the adapter's way, so cache writes are kept."""
        try:
            return adapter.usage_from_chunk(chunk)
        except InvalidUsageError as exc:
            logger.warning("upstream usage is invalid; counting locally", extra={"generation_id": generation_id, "error": str(exc)})
            return None


async def _next_before(upstream: AsyncIterator[dict[str, Any]], deadline: float, max_call_s: float) -> dict[str, Any]:
    """Return the upstream's next chunk, or raise UpstreamError once the call would outlive its hold."""
    remaining = deadline - time.monotonic()
    if remaining > 0:
        with anyio.move_on_after(remaining):
            return await upstream.__anext__()
    raise UpstreamError(
        "timeout", f"the call ran for its longest allowed time of {max_call_s:g} s (80% of TOKENPORT_HOLD_TTL_S) and was cut"
    )


async def openai_sse(events: AsyncIterator[dict[str, Any]]) -> AsyncIterator[bytes]:
    """Serialize relay events as OpenAI's server-sent events, ending with `data: [DONE]`."""
    async for event in events:
        yield b"data: " + json.dumps(event, separators=(",", ":")).encode() + b"\n\n"
    yield b"data: [DONE]\n\n"
