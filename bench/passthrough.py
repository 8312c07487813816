"""A bare pass-through proxy: the fastest a Python proxy in this ASGI server can relay a call.

It forwards `POST /v1/chat/completions` to the upstream unchanged, with no authentication, no
parsing and no metering, and relays the answer, streaming it when the upstream streams. Run it
as a uvicorn factory: `uvicorn bench.passthrough:create_app --factory`, with the upstream's base
URL in BENCH_UPSTREAM_URL (for example http://127.0.0.1:9000/v1) and the HTTP client in
BENCH_PASSTHROUGH_CLIENT: "aiohttp" (the default) or "httpx".
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

FORWARDED_HEADERS = ("authorization", "content-type")


def create_app() -> Starlette:
    upstream_url = os.environ["BENCH_UPSTREAM_URL"].rstrip("/") + "/chat/completions"
    client_name = os.environ.get("BENCH_PASSTHROUGH_CLIENT", "aiohttp")
    if client_name not in ("aiohttp", "httpx"):
        raise ValueError(f"BENCH_PASSTHROUGH_CLIENT={client_name!r} is invalid; use aiohttp or httpx")
    state: dict = {}

    @asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        if client_name == "aiohttp":
            import aiohttp

            connector = aiohttp.TCPConnector(limit=200)
            async with aiohttp.ClientSession(connector=connector) as session:
                state["send"] = _aiohttp_sender(session, upstream_url)
                yield
        else:
            import httpx

            limits = httpx.Limits(max_connections=200, max_keepalive_connections=100)
            async with httpx.AsyncClient(limits=limits, timeout=120) as client:
                state["send"] = _httpx_sender(client, upstream_url)
                yield

    async def chat_completions(request: Request) -> Response:
        headers = {name: request.headers[name] for name in FORWARDED_HEADERS if name in request.headers}
        return await state["send"](await request.body(), headers)

    return Starlette(routes=[Route("/v1/chat/completions", chat_completions, methods=["POST"])], lifespan=lifespan)


def _aiohttp_sender(session, upstream_url: str):  # type: ignore[no-untyped-def]
    async def send(body: bytes, headers: dict[str, str]) -> Response:
        response = await session.post(upstream_url, data=body, headers=headers)
        content_type = response.headers.get("content-type", "")
        if content_type.startswith("text/event-stream"):

            async def relay() -> AsyncIterator[bytes]:
                try:
                    async for part in response.content.iter_any():
                        yield part
                finally:
                    response.release()

            return StreamingResponse(relay(), status_code=response.status, media_type=content_type)
        content = await response.read()
        response.release()
        return Response(content, status_code=response.status, media_type=content_type)

    return send


def _httpx_sender(client, upstream_url: str):  # type: ignore[no-untyped-def]
    async def send(body: bytes, headers: dict[str, str]) -> Response:
        request = client.build_request("POST", upstream_url, content=body, headers=headers)
        response = await client.send(request, stream=True)
        content_type = response.headers.get("content-type", "")
        if content_type.startswith("text/event-stream"):

            async def relay() -> AsyncIterator[bytes]:
                try:
                    async for part in response.aiter_raw():
                        yield part
                finally:
                    await response.aclose()

            return StreamingResponse(relay(), status_code=response.status_code, media_type=content_type)
        content = await response.aread()
        await response.aclose()
        return Response(content, status_code=response.status_code, media_type=content_type)

    return send
