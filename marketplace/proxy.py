"""The metering proxy for OpenAI Chat Completions.

One call: route to a listing, hold the largest possible cost, call the upstream, then charge
the metered cost and release the rest. The response's `usage` is exactly what was charged.
"""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import anyio
import httpx
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from marketplace import listings, metering
from marketplace.credentials import decrypt_credential
from marketplace.db import Database
from marketplace.errors import Forbidden, InvalidRequest, RateLimited, UpstreamFailed, UpstreamUnavailable
from marketplace.models import Listing
from marketplace.pricing import cost_nano_usd, max_cost_nano_usd
from marketplace.ratelimit import RateLimiter, Reservation
from marketplace.settings import Settings
from providers import openai_compat
from providers.errors import UpstreamError
from providers.tokens import count_prompt_tokens, count_text_tokens
from providers.usage import InvalidUsageError, Usage, usage_from_openai

logger = logging.getLogger(__name__)

# Every tokenizer we meter with spends at least one byte of UTF-8 per token, so the byte length
# of the serialized messages bounds their token count; chat templates add a few tokens per message.
TEMPLATE_TOKENS_PER_MESSAGE = 8
TEMPLATE_TOKENS_PER_REQUEST = 16


@dataclass(frozen=True)
class OpenCall:
    """A call with its listing chosen and its hold placed, ready for the upstream."""

    listing: Listing
    call: metering.OpenedCall
    body: dict[str, Any]
    tokens_reserved: Reservation | None


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

    model: str = Field(min_length=1)
    messages: list[dict[str, Any]] = Field(min_length=1)
    stream: bool = False
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    n: int = Field(default=1, ge=1, le=16)


def parse_chat_request(body: Any) -> ChatCompletionRequest:
    if not isinstance(body, dict):
        raise InvalidRequest("request body must be a JSON object", param=None)
    try:
        request = ChatCompletionRequest.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = ".".join(str(part) for part in first["loc"])
        raise InvalidRequest(f"{param}: {first['msg']}", param=param) from exc
    for index, message in enumerate(request.messages):
        if "role" not in message:
            raise InvalidRequest(f"messages.{index}.role is missing", param=f"messages.{index}.role")
    return request


def new_generation_id() -> str:
    return "gen-" + secrets.token_hex(12)


def prompt_token_bound(messages: list[dict[str, Any]]) -> int:
    serialized = json.dumps(messages, ensure_ascii=False, separators=(",", ":")).encode()
    return len(serialized) + TEMPLATE_TOKENS_PER_MESSAGE * len(messages) + TEMPLATE_TOKENS_PER_REQUEST


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


def _upstream_error(exc: UpstreamError) -> Exception:
    message = f"upstream failed: {exc.message}"
    if exc.kind == "rate_limited":
        return RateLimited(f"upstream rate limit reached: {exc.message}", retry_after_s=exc.retry_after_s, code="upstream_rate_limited")
    if exc.kind in ("timeout", "connection"):
        return UpstreamUnavailable(message, code=f"upstream_{exc.kind}")
    return UpstreamFailed(message, code=f"upstream_{exc.kind}")


class MeteringProxy:
    def __init__(self, db: Database, settings: Settings, client: httpx.AsyncClient, limiter: RateLimiter) -> None:
        self.db = db
        self.settings = settings
        self.client = client
        self.limiter = limiter

    def _check_model_allowed(self, caller: Caller, model: str) -> None:
        if caller.allowed_models is not None and model not in caller.allowed_models:
            raise Forbidden(f"model {model!r} is not in this API key's allowlist", param="model", code="model_not_allowed")

    def _choose_listing(self, model: str) -> Listing:
        with self.db.session() as session:
            return listings.choose_listing(session, model)

    def _upstream_body(self, request: ChatCompletionRequest, listing: Listing, max_completion_tokens: int) -> dict[str, Any]:
        body = request.model_dump(exclude_none=True)
        body["model"] = listing.upstream_model
        if request.max_tokens is None and request.max_completion_tokens is None:
            # The hold assumes this bound, so the upstream must be told it too.
            body["max_tokens"] = max_completion_tokens
        return body

    async def _check_rate_limits(self, caller: Caller, request: ChatCompletionRequest, max_completion: int) -> Reservation | None:
        """Count the call against the key's request and token limits; returns the token reservation."""
        if caller.requests_per_minute is not None:
            decision = await self.limiter.acquire(f"rpm:{caller.api_key_id}", 1, caller.requests_per_minute)
            if not decision.allowed:
                raise RateLimited(
                    f"API key limit of {caller.requests_per_minute} requests per minute reached",
                    retry_after_s=decision.retry_after_s,
                    code="requests_per_minute_exceeded",
                )
        if caller.tokens_per_minute is None:
            return None
        tokens = count_prompt_tokens(request.messages) + max_completion * request.n
        decision = await self.limiter.acquire(f"tpm:{caller.api_key_id}", tokens, caller.tokens_per_minute)
        if not decision.allowed:
            raise RateLimited(
                f"API key limit of {caller.tokens_per_minute} tokens per minute reached; this call may use {tokens} tokens",
                retry_after_s=decision.retry_after_s,
                code="tokens_per_minute_exceeded",
            )
        return decision.reservation

    async def _open(self, caller: Caller, request: ChatCompletionRequest) -> OpenCall:
        self._check_model_allowed(caller, request.model)
        listing = await anyio.to_thread.run_sync(self._choose_listing, request.model)

        max_completion = request.max_tokens or request.max_completion_tokens or listing.max_output_tokens or self.settings.default_max_output_tokens
        if listing.max_output_tokens is not None and max_completion > listing.max_output_tokens:
            raise InvalidRequest(
                f"max_tokens {max_completion} exceeds this model's limit of {listing.max_output_tokens}", param="max_tokens"
            )
        hold = max_cost_nano_usd(prompt_token_bound(request.messages), max_completion * request.n, listings.listing_prices(listing))
        tokens_reserved = await self._check_rate_limits(caller, request, max_completion)
        try:
            call = await anyio.to_thread.run_sync(
                lambda: metering.open_call(
                    self.db,
                    generation_id=new_generation_id(),
                    account_id=caller.account_id,
                    api_key_id=caller.api_key_id,
                    listing_id=listing.id,
                    model=request.model,
                    stream=request.stream,
                    hold_nano_usd=hold,
                    hold_ttl_s=self.settings.hold_ttl_s,
                    spend_limit_nano_usd=caller.spend_limit_nano_usd,
                    spend_limit_period=caller.spend_limit_period,
                )
            )
        except BaseException:
            if tokens_reserved is not None:
                await self.limiter.adjust(tokens_reserved, -tokens_reserved.amount)
            raise
        return OpenCall(listing, call, self._upstream_body(request, listing, max_completion), tokens_reserved)

    async def _correct_token_reservation(self, opened: OpenCall, usage: Usage | None) -> None:
        if opened.tokens_reserved is None:
            return
        used = usage.total_tokens if usage is not None else 0
        with anyio.CancelScope(shield=True):
            await self.limiter.adjust(opened.tokens_reserved, used - opened.tokens_reserved.amount)

    async def _fail(self, opened: OpenCall, exc: UpstreamError) -> None:
        call = opened.call
        logger.warning(
            "upstream call failed before any output",
            extra={"generation_id": call.generation_id, "listing_id": opened.listing.id, "kind": exc.kind, "status": exc.status_code},
        )
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(lambda: metering.fail_call(self.db, call, error=f"{exc.kind}: {exc.message}"))
        await self._correct_token_reservation(opened, None)

    async def _settle(self, opened: OpenCall, usage: Usage, status: str, error: str | None = None) -> metering.SettledCall:
        listing = opened.listing
        cost = cost_nano_usd(usage, listings.listing_prices(listing))
        with anyio.CancelScope(shield=True):
            settled = await anyio.to_thread.run_sync(
                lambda: metering.settle_call(
                    self.db,
                    opened.call,
                    usage=usage,
                    cost_nano_usd=cost,
                    supplier_id=listing.supplier_id,
                    fee_bps=self.settings.platform_fee_bps,
                    status=status,
                    error=error,
                )
            )
        await self._correct_token_reservation(opened, usage)
        return settled

    def _credential(self, listing: Listing) -> str:
        return decrypt_credential(self.settings, listing.upstream_credential_encrypted)

    async def complete(self, caller: Caller, request: ChatCompletionRequest) -> tuple[dict[str, Any], str]:
        opened = await self._open(caller, request)
        call, listing = opened.call, opened.listing
        try:
            result = await openai_compat.complete(
                self.client, listing.upstream_base_url, self._credential(listing), opened.body, self.settings.upstream_timeout_s
            )
        except UpstreamError as exc:
            await self._fail(opened, exc)
            raise _upstream_error(exc) from exc

        usage = result.usage
        if usage is None:
            completion_text = "".join(_text_of_choice(choice) for choice in result.body.get("choices") or [])
            usage = Usage(
                prompt_tokens=count_prompt_tokens(request.messages),
                completion_tokens=count_text_tokens(completion_text),
                estimated=True,
            )
        settled = await self._settle(opened, usage, "completed")

        response = dict(result.body)
        response["id"] = call.generation_id
        response["model"] = listing.model
        response["usage"] = usage_body(usage, settled.charged_nano_usd)
        return response, call.generation_id

    async def open_stream(self, caller: Caller, request: ChatCompletionRequest) -> tuple[AsyncIterator[bytes], str]:
        """Start a streamed call. Errors before the first upstream chunk raise here, costing nothing."""
        opened = await self._open(caller, request)
        listing = opened.listing
        upstream = openai_compat.stream(
            self.client, listing.upstream_base_url, self._credential(listing), opened.body, self.settings.upstream_timeout_s
        )
        try:
            first = await upstream.__anext__()
        except UpstreamError as exc:
            await upstream.aclose()
            await self._fail(opened, exc)
            raise _upstream_error(exc) from exc
        except StopAsyncIteration:
            exc = UpstreamError("bad_response", "upstream closed the stream before sending any chunk")
            await self._fail(opened, exc)
            raise _upstream_error(exc) from None
        return self._relay(request, opened, first, upstream), opened.call.generation_id

    async def _relay(
        self,
        request: ChatCompletionRequest,
        opened: OpenCall,
        first: dict[str, Any],
        upstream: AsyncIterator[dict[str, Any]],
    ) -> AsyncIterator[bytes]:
        """Relay upstream chunks as SSE and settle the call exactly once, however the stream ends."""
        call, listing = opened.call, opened.listing
        delivered: list[str] = []
        reported: Usage | None = None
        finished = False
        settled = False
        error: UpstreamError | None = None

        def estimate() -> Usage:
            return Usage(
                prompt_tokens=count_prompt_tokens(request.messages),
                completion_tokens=count_text_tokens("".join(delivered)),
                estimated=True,
            )

        async def chunks() -> AsyncIterator[dict[str, Any]]:
            yield first
            async for chunk in upstream:
                yield chunk

        try:
            try:
                async for chunk in chunks():
                    if chunk.get("usage"):
                        reported = self._reported_usage(chunk["usage"], call.generation_id)
                    choices = chunk.get("choices") or []
                    if not choices:
                        continue
                    chunk["id"] = call.generation_id
                    chunk["model"] = listing.model
                    chunk.pop("usage", None)
                    text = "".join(_text_of_choice(choice) for choice in choices)
                    finished = finished or any(choice.get("finish_reason") for choice in choices)
                    yield b"data: " + json.dumps(chunk, separators=(",", ":")).encode() + b"\n\n"
                    # Counted only once the chunk was handed to the client, so a disconnect
                    # never bills a chunk the client did not get.
                    delivered.append(text)
            except UpstreamError as exc:
                error = exc
                logger.warning("upstream stream failed after output began", extra={"generation_id": call.generation_id, "kind": exc.kind})

            complete = finished and error is None
            usage = reported if (reported is not None and complete) else estimate()
            status = "completed" if complete else "incomplete"
            settled_call = await self._settle(opened, usage, status, error.message if error else None)
            settled = True

            if error is not None:
                yield b"data: " + json.dumps(_upstream_error(error).body(), separators=(",", ":")).encode() + b"\n\n"
            final = {
                "id": call.generation_id,
                "object": "chat.completion.chunk",
                "created": first.get("created", 0),
                "model": listing.model,
                "choices": [],
                "usage": usage_body(usage, settled_call.charged_nano_usd),
            }
            yield b"data: " + json.dumps(final, separators=(",", ":")).encode() + b"\n\n"
            yield b"data: [DONE]\n\n"
        finally:
            if not settled:
                # The client went away mid-stream: charge the prompt and what was delivered.
                await self._settle(opened, estimate(), "client_disconnected")
            with anyio.CancelScope(shield=True):
                await upstream.aclose()  # type: ignore[attr-defined]

    def _reported_usage(self, raw: Any, generation_id: str) -> Usage | None:
        if not isinstance(raw, dict):
            return None
        try:
            return usage_from_openai(raw)
        except InvalidUsageError as exc:
            logger.warning("upstream usage is invalid; counting locally", extra={"generation_id": generation_id, "error": str(exc)})
            return None
