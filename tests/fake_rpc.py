"""Fake RPC providers that behave like capped or faulty commercial endpoints.

`LogCaps` rejects `eth_getLogs` over more than `max_block_range` blocks, or with more than
`max_results` logs, with a JSON-RPC error of code -32005 as Infura does. It records every range
that it served. Two front ends apply it:

- `capped_logs_middleware(caps)`, a web3 middleware for an in-process chain such as eth-tester;
- `CappedRpcProxy`, an HTTP JSON-RPC server on 127.0.0.1 that forwards to a real node such as
  anvil, so that another process can use it through its URL.

`response_rewrite_middleware` changes chosen responses, to play a provider that lies.
"""

from __future__ import annotations

import json
import threading
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from web3 import Web3
from web3.middleware import Web3Middleware

from chain.rpc import connect
from marketplace.settings import ChainSettings

LIMIT_EXCEEDED = -32005


def _block_number(value: Any) -> int | None:
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.startswith("0x"):
        return int(value, 16)
    return None


@dataclass
class LogCaps:
    """The limits of a capped provider, and what it served and rejected."""

    max_block_range: int
    max_results: int
    served: list[tuple[int, int]] = field(default_factory=list)
    range_rejections: int = 0
    result_rejections: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def check_request(self, params: list[Any]) -> dict | None:
        """Return a JSON-RPC error when the requested range is too large, else None."""
        query = params[0] if params else {}
        start, end = _block_number(query.get("fromBlock")), _block_number(query.get("toBlock"))
        if start is None or end is None or end - start + 1 <= self.max_block_range:
            return None
        with self._lock:
            self.range_rejections += 1
        return {"code": LIMIT_EXCEEDED, "message": f"block range exceeds the limit of {self.max_block_range} blocks"}

    def check_result(self, params: list[Any], result: Any) -> dict | None:
        """Return a JSON-RPC error when the result has too many logs; else record the served range."""
        if isinstance(result, list) and len(result) > self.max_results:
            with self._lock:
                self.result_rejections += 1
            return {"code": LIMIT_EXCEEDED, "message": f"query returned more than {self.max_results} results"}
        query = params[0] if params else {}
        start, end = _block_number(query.get("fromBlock")), _block_number(query.get("toBlock"))
        if start is not None and end is not None:
            with self._lock:
                self.served.append((start, end))
        return None

    def covered_blocks(self) -> set[int]:
        return {block for start, end in self.served for block in range(start, end + 1)}


def capped_logs_middleware(caps: LogCaps) -> type[Web3Middleware]:
    """Return a web3 middleware class that applies `caps` to every `eth_getLogs` call."""

    class CappedLogsMiddleware(Web3Middleware):
        def wrap_make_request(self, make_request):  # type: ignore[no-untyped-def]
            def middleware(method, params):  # type: ignore[no-untyped-def]
                if method != "eth_getLogs":
                    return make_request(method, params)
                error = caps.check_request(params)
                if error is not None:
                    return {"jsonrpc": "2.0", "id": 0, "error": error}
                response = make_request(method, params)
                error = caps.check_result(params, response.get("result"))
                if error is not None:
                    return {"jsonrpc": "2.0", "id": response.get("id", 0), "error": error}
                return response

            return middleware

    return CappedLogsMiddleware


def response_rewrite_middleware(rewrites: dict[str, Callable[[list[Any], Any], Any]]) -> type[Web3Middleware]:
    """Return a web3 middleware class that passes the result of each named method through its function."""

    class ResponseRewriteMiddleware(Web3Middleware):
        def wrap_make_request(self, make_request):  # type: ignore[no-untyped-def]
            def middleware(method, params):  # type: ignore[no-untyped-def]
                response = make_request(method, params)
                rewrite = rewrites.get(method)
                if rewrite is not None and "result" in response:
                    response = {**response, "result": rewrite(params, response["result"])}
                return response

            return middleware

    return ResponseRewriteMiddleware


# Requests to the node go straight to 127.0.0.1, never through an HTTP proxy from the environment.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class CappedRpcProxy:
    """An HTTP JSON-RPC server on 127.0.0.1 that forwards to `upstream_url` and applies `caps`.

    A rejection is a JSON-RPC error sent with HTTP status `rejection_http_status`: 200 by
    default, or another status such as 413 to test a client against an HTTP-level rejection.
    Each element of a batch request is handled on its own. Use it as a context manager.
    """

    def __init__(self, upstream_url: str, caps: LogCaps, *, rejection_http_status: int = 200) -> None:
        self.upstream_url = upstream_url
        self.caps = caps
        self.rejection_http_status = rejection_http_status
        self.requests = 0
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        assert self._server is not None, "the proxy is not running"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def _forward(self, request: dict) -> dict:
        body = json.dumps(request).encode()
        upstream = urllib.request.Request(self.upstream_url, data=body, headers={"Content-Type": "application/json"})
        with _DIRECT.open(upstream, timeout=60) as response:
            return json.loads(response.read())

    def handle(self, request: dict) -> tuple[dict, bool]:
        """Return the response to one JSON-RPC request, and whether the caps rejected it."""
        self.requests += 1
        if request.get("method") != "eth_getLogs":
            return self._forward(request), False
        params = request.get("params") or []
        error = self.caps.check_request(params)
        if error is not None:
            return {"jsonrpc": "2.0", "id": request.get("id"), "error": error}, True
        response = self._forward(request)
        error = self.caps.check_result(params, response.get("result"))
        if error is not None:
            return {"jsonrpc": "2.0", "id": request.get("id"), "error": error}, True
        return response, False

    def start(self) -> CappedRpcProxy:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802  (the name http.server calls)
                request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if isinstance(request, list):
                    answers = [proxy.handle(item) for item in request]
                    body: Any = [answer for answer, _ in answers]
                    rejected = any(flag for _, flag in answers)
                else:
                    body, rejected = proxy.handle(request)
                payload = json.dumps(body).encode()
                self.send_response(proxy.rejection_http_status if rejected else 200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002  (the signature http.server defines)
                return

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="capped-rpc-proxy", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def web3(self) -> Web3:
        """Return a Web3 on the proxy, connected the way the watcher connects to a chain."""
        return connect(ChainSettings(chain_id=1, rpc_url=self.url, treasury_address="0x" + "00" * 20))

    def __enter__(self) -> CappedRpcProxy:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
