"""Anthropic Messages ingress: `/v1/messages` for clients of the `anthropic` SDK.

Requests are translated into Chat Completions, metered by the same proxy, and the answer is
translated back, streamed events included. Errors use Anthropic's error body.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

import anyio
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, StreamingResponse

from marketplace.api.deps import require_api_key
from marketplace.api.routes_proxy import GENERATION_HEADER, _json_body
from marketplace.errors import ApiError, InvalidRequest
from marketplace.proxy import Caller, MeteringProxy, parse_chat_request
from providers.anthropic_ingress import (
    InvalidMessagesRequest,
    message_id_for,
    messages_request_to_openai,
    openai_chunks_to_message_events,
    openai_response_to_messages,
)

router = APIRouter(prefix="/v1")

# OpenAI error types as Anthropic's, for clients that branch on `error.type`.
ANTHROPIC_ERROR_TYPES = {
    "invalid_request_error": "invalid_request_error",
    "authentication_error": "authentication_error",
    "permission_error": "permission_error",
    "not_found_error": "not_found_error",
    "rate_limit_error": "rate_limit_error",
    "insufficient_quota": "billing_error",
    "upstream_error": "api_error",
    "conflict_error": "invalid_request_error",
}


def anthropic_error_body(exc: ApiError) -> dict[str, Any]:
    return {"type": "error", "error": {"type": ANTHROPIC_ERROR_TYPES.get(exc.error_type, "api_error"), "message": exc.message}}


def _usage_with_cost(message: dict[str, Any], openai_usage: dict[str, Any]) -> dict[str, Any]:
    message["usage"]["cost_nano_usd"] = openai_usage["cost_nano_usd"]
    message["usage"]["estimated"] = openai_usage["estimated"]
    return message


async def _sse(events: AsyncIterator[tuple[str, dict[str, Any]]]) -> AsyncIterator[bytes]:
    async for name, data in events:
        yield f"event: {name}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


@router.post("/messages")
async def create_message(request: Request, caller: Caller = Depends(require_api_key)):
    try:
        openai_body = messages_request_to_openai(await _json_body(request))
    except InvalidMessagesRequest as exc:
        raise InvalidRequest(exc.message, param=exc.param) from exc
    chat_request = parse_chat_request(openai_body)
    proxy: MeteringProxy = request.app.state.proxy

    if not chat_request.stream:
        body, generation_id = await proxy.complete(caller, chat_request)
        message = _usage_with_cost(openai_response_to_messages(body, None), body["usage"])
        message["id"] = message_id_for(generation_id)
        return JSONResponse(message, headers={GENERATION_HEADER: generation_id})

    events, generation_id = await proxy.open_stream(caller, chat_request)
    input_tokens = await anyio.to_thread.run_sync(chat_request.prompt_tokens_estimate)

    async def translated() -> AsyncIterator[bytes]:
        async with aclosing(events):
            message_events = openai_chunks_to_message_events(
                events, chat_request.model, message_id_for(generation_id), input_tokens=input_tokens
            )
            async for chunk in _sse(message_events):
                yield chunk

    return StreamingResponse(translated(), media_type="text/event-stream", headers={GENERATION_HEADER: generation_id, "cache-control": "no-cache"})
