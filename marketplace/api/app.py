"""The FastAPI application: routers, error bodies and shared clients."""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from marketplace.api.routes_anthropic import anthropic_error_body
from marketplace.api import routes_accounts, routes_anthropic, routes_audit, routes_deposits, routes_market, routes_proxy
from marketplace.api.deps import ApiKeyCache
from marketplace.db import Database
from marketplace.errors import ApiError, RateLimited
from marketplace.proxy import MeteringProxy
from marketplace.ratelimit import create_rate_limiter
from marketplace.schema import upgrade_schema
from marketplace.settings import Settings, get_settings
from providers.http import AiohttpClient, create_aiohttp_session

logger = logging.getLogger(__name__)

ANTHROPIC_PATH = "/v1/messages"


def _error_response(request: Request, exc: ApiError) -> JSONResponse:
    headers = {}
    if isinstance(exc, RateLimited) and exc.retry_after_s is not None:
        headers["retry-after"] = str(max(1, round(exc.retry_after_s)))
    body = anthropic_error_body(exc) if request.url.path.startswith(ANTHROPIC_PATH) else exc.body()
    return JSONResponse(body, status_code=exc.status_code, headers=headers)


def _internal_error_response(request: Request, exc: Exception) -> JSONResponse:
    logger.error("unhandled error", exc_info=exc, extra={"path": request.url.path})
    body = {"error": {"message": "internal error; the request was not completed", "type": "server_error", "param": None, "code": None}}
    return JSONResponse(body, status_code=500)


def _validation_response(exc: RequestValidationError) -> JSONResponse:
    first = exc.errors()[0]
    location = [str(part) for part in first["loc"] if part != "body"]
    param = ".".join(location) or None
    message = f"{param}: {first['msg']}" if param else first["msg"]
    body = {"error": {"message": message, "type": "invalid_request_error", "param": param, "code": None}}
    return JSONResponse(body, status_code=400)


def create_app(settings: Settings | None = None, db: Database | None = None) -> FastAPI:
    settings = settings or get_settings()
    db = db or Database(settings.database_url, settings.database_pool_size, settings.database_max_overflow)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        limiter = create_rate_limiter(settings.redis_url, settings.redis_key_prefix)
        session = create_aiohttp_session(
            max_connections=settings.upstream_max_connections,
            max_connections_per_host=settings.upstream_max_connections_per_host,
            keepalive_s=settings.upstream_keepalive_s,
        )
        async with session:
            client = AiohttpClient(session)
            app.state.proxy = proxy = MeteringProxy(db, settings, client, limiter)
            try:
                yield
            finally:
                await proxy.close()
                await limiter.close()

    upgrade_schema(db)
    app = FastAPI(title="Tokenport", version="0.1.0", lifespan=lifespan)
    app.state.settings = settings
    app.state.db = db
    app.state.api_key_cache = ApiKeyCache(settings.api_key_cache_ttl_s)
    app.state.chain_heads = {}

    app.add_exception_handler(ApiError, _error_response)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, lambda _request, exc: _validation_response(exc))  # type: ignore[arg-type]
    app.add_exception_handler(Exception, _internal_error_response)

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok"}

    for module in (routes_accounts, routes_market, routes_deposits, routes_proxy, routes_anthropic, routes_audit):
        app.include_router(module.router)
    app.add_middleware(routes_proxy.ChatCompletionsFastPath, error_response=_error_response)
    return app
