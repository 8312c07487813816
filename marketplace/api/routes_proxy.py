"""The OpenAI-compatible proxy endpoints and the per-call lookup."""

from __future__ import annotations

import json
from collections.abc import Callable

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from marketplace import usage
from marketplace.api.deps import get_db, require_account, require_api_key
from marketplace.db import Database
from marketplace.errors import ApiError, InvalidRequest, MethodNotAllowed, NotFound, PayloadTooLarge
from marketplace.models import Generation
from marketplace.proxy import Caller, MeteringProxy, openai_sse, parse_chat_request

router = APIRouter(prefix="/v1")

GENERATION_HEADER = "x-tokenport-generation-id"


async def _read_body(request: Request) -> bytes:
    """Read the body, refusing it as soon as it passes `max_request_bytes`."""
    limit = request.app.state.settings.max_request_bytes
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"request body is larger than {limit} bytes; shorten the prompt", code="request_too_large")


def _reject_constant(name: str) -> None:
    raise InvalidRequest(f"request body contains {name}, which JSON does not allow; send a finite number or null")


async def _json_body(request: Request) -> object:
    raw = await _read_body(request)
    try:
        return json.loads(raw, parse_constant=_reject_constant)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidRequest(f"request body is not valid JSON: {exc}") from exc
    except RecursionError as exc:
        raise InvalidRequest("request body is nested too deeply") from exc


@router.post("/chat/completions")
async def chat_completions(request: Request, caller: Caller = Depends(require_api_key)):
    return await complete_chat(request, caller)


async def complete_chat(request: Request, caller: Caller) -> Response:
    """Meter one Chat Completions call and build its response, plain or streamed."""
    chat_request = parse_chat_request(await _json_body(request))
    proxy: MeteringProxy = request.app.state.proxy

    if chat_request.stream:
        events, generation_id = await proxy.open_stream(caller, chat_request)
        return StreamingResponse(
            openai_sse(events),
            media_type="text/event-stream",
            headers={GENERATION_HEADER: generation_id, "cache-control": "no-cache"},
        )
    body, generation_id = await proxy.complete(caller, chat_request)
    return JSONResponse(body, headers={GENERATION_HEADER: generation_id})


class ChatCompletionsFastPath:
    """ASGI middleware that serves POST /v1/chat/completions without FastAPI's routing.

    Every metered call passes here, and FastAPI's exception, routing and dependency layers cost
    about a quarter of a call's CPU time (measured with bench/, see docs/benchmarks.md). The
    call runs the same code as the FastAPI route above: the same key check, the same handler,
    the same error bodies. Any other request, and the OpenAPI description of this one, stay
    with FastAPI. An unexpected exception propagates to the app's server error handler, as it
    does from a route.
    """

    def __init__(self, app: ASGIApp, error_response: Callable[[Request, ApiError], Response]) -> None:
        self.app = app
        self.error_response = error_response

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != "/v1/chat/completions":
            await self.app(scope, receive, send)
            return
        request = Request(scope, receive)
        try:
            if scope["method"] != "POST":
                raise MethodNotAllowed(f"{scope['method']} is not allowed on /v1/chat/completions; send a POST", code="method_not_allowed")
            response = await complete_chat(request, await require_api_key(request))
        except ApiError as exc:
            response = self.error_response(request, exc)
        await response(scope, receive, send)


def generation_view(generation: Generation) -> dict:
    return {
        "id": generation.id,
        "model": generation.model,
        "listing_id": generation.listing_id,
        "api_key_id": generation.api_key_id,
        "stream": generation.stream,
        "status": generation.status,
        "prompt_tokens": generation.prompt_tokens,
        "completion_tokens": generation.completion_tokens,
        "cached_prompt_tokens": generation.cached_prompt_tokens,
        "cache_write_tokens": generation.cache_write_tokens,
        "reasoning_tokens": generation.reasoning_tokens,
        "usage_estimated": generation.usage_estimated,
        "hold_nano_usd": generation.hold_nano_usd,
        "cost_nano_usd": generation.cost_nano_usd,
        "latency_ms": generation.latency_ms,
        "error": generation.error,
        "created_at": generation.created_at.isoformat(),
        "finished_at": generation.finished_at.isoformat() if generation.finished_at else None,
    }


@router.get("/generation")
def read_generation(id: str, account_id: int = Depends(require_account), db: Database = Depends(get_db)) -> dict:
    """One call's tokens, cost, listing, latency and status."""
    with db.session() as session:
        generation = session.get(Generation, id)
        if generation is None or generation.account_id != account_id:
            raise NotFound(f"generation {id!r} not found for this account", param="id")
        return {"data": generation_view(generation)}


@router.get("/usage")
def list_usage(
    limit: int = 50, cursor: str | None = None, account_id: int = Depends(require_account), db: Database = Depends(get_db)
) -> dict:
    """The account's calls, newest first. Pass `next_cursor` back as `cursor` for the next page."""
    with db.session() as session:
        rows, next_cursor = usage.list_usage(session, account_id, limit, cursor)
        return {"data": [generation_view(row) for row in rows], "next_cursor": next_cursor}


@router.get("/usage/export.csv")
def export_usage(account_id: int = Depends(require_account), db: Database = Depends(get_db)) -> StreamingResponse:
    def rows():
        with db.session() as session:
            yield from usage.export_csv(session, account_id)

    return StreamingResponse(
        rows(), media_type="text/csv", headers={"content-disposition": 'attachment; filename="tokenport-usage.csv"'}
    )
