"""The HTTP client interface of the provider adapters, over httpx or over aiohttp.

The adapters make two kinds of request: a JSON POST whose whole response is read
(`HttpClient.post_json`) and a JSON POST whose response is read as it arrives
(`HttpClient.open_stream`). `HttpxClient` sends them with an `httpx.AsyncClient`, which tests
drive with `httpx.MockTransport`. `AiohttpClient` sends them with an `aiohttp.ClientSession`,
which the proxy uses: relaying through a bare Starlette app on 2 cores, aiohttp reached 6,417
requests/s and httpx 801 (`bench/passthrough.py`, docs/benchmarks.md). Every adapter function
accepts either an `httpx.AsyncClient` or an `HttpClient` and converts it with `as_http_client`.

Both implementations send the same request bytes, follow no redirects, retry nothing, decode
gzip and deflate bodies, and raise the `TransportError` subclasses below in place of their
library's exceptions. `HttpxClient` applies `timeout_s` as `httpx.Timeout(timeout_s)` does, to
the wait for a pooled connection, to connecting, and to each write and each read.
`AiohttpClient` comes as close as aiohttp allows, as described in its docstring. Both bound
each wait for response data by `timeout_s`, so a stream that goes silent fails. A deadline for
a whole call is the caller's to set.

    client = as_http_client(httpx_client_or_http_client)
    response = await client.post_json(url, {"model": "m"}, {"authorization": "Bearer k"}, 30.0)
    async with await client.open_stream(url, body, headers, 30.0) as stream:
        async for line in stream.aiter_lines():
            ...
"""

from __future__ import annotations

import abc
import asyncio
import codecs
import json
import re
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from email.message import Message
from types import TracebackType
from typing import Any

import aiohttp
import httpx

JSON_CONTENT_TYPE = "application/json"

# aiohttp has no timeout for sending the request body, and its read timeout starts only once
# the body is sent. So `AiohttpClient` gives the whole opening of a request (the wait for a
# connection, connecting, sending and waiting for the response headers) a deadline of this many
# timeouts, one per phase that httpx bounds separately.
# NOTE: a large request body that keeps uploading past this deadline fails here, where httpx
# would go on as long as each write finished within the timeout.
AIOHTTP_OPENING_TIMEOUTS = 3
# httpcore 1.0.9, under httpx, accepts a response header block of up to 100 KiB. aiohttp's
# default limit is 8190 bytes per header line, which would reject upstreams that httpx accepts.
MAX_RESPONSE_HEADER_BYTES = 100 * 1024
# A server-sent event stream ends its lines with CRLF, LF or CR, and with no other character
# (WHATWG HTML, "Parsing an event stream"). httpx's aiter_lines splits as str.splitlines does,
# also at U+2028, U+2029 and U+0085, which JSON allows unescaped inside a string.
_SSE_LINE_END = re.compile(rb"\r\n|\r|\n")
# Request header values may contain only printable ASCII, space and tab. Checking before
# sending keeps a credential out of messages, because httpx rejects a control character with an
# error that repeats the value, and aiohttp sends non-ASCII text as UTF-8, which upstreams echo.
_INVALID_HEADER_VALUE_CHARACTER = re.compile(r"[^\t\x20-\x7e]")


class TransportError(Exception):
    """A request that failed before a complete response arrived.

    `cause` is the library's exception. The message names its class and repeats its text.
    """

    def __init__(self, cause: BaseException) -> None:
        super().__init__(f"{type(cause).__name__}: {cause}")
        self.cause = cause


class TransportTimeout(TransportError):
    """Waiting for a connection, for sending or for response data took longer than allowed."""


class TransportInvalidURL(TransportError):
    """A URL that cannot be requested, because it does not parse, has no host or is not HTTP."""


class TransportConnectionError(TransportError):
    """Connecting failed, or the connection broke or carried something that is not HTTP."""


class InvalidHeaderValueError(ValueError):
    """A request header value that HTTP cannot carry. The message names the header only."""


@dataclass(frozen=True)
class Response:
    """A response whose body has been read whole. `headers` is case-insensitive."""

    status_code: int
    headers: Mapping[str, str]
    content: bytes

    @property
    def is_success(self) -> bool:
        return 200 <= self.status_code <= 299

    @property
    def text(self) -> str:
        """The body decoded with the charset of Content-Type, else UTF-8, replacing bad bytes."""
        return self.content.decode(_charset(self.headers), errors="replace")

    def json(self) -> Any:
        """Parse the body as JSON (UTF-8, UTF-16 or UTF-32, as `json.loads` detects)."""
        return json.loads(self.content)


class StreamResponse(abc.ABC):
    """A response whose body is read as it arrives. Close it with `aclose` or `async with`.

    The iterators raise TransportTimeout when the upstream sends nothing for `timeout_s`, and
    TransportConnectionError when the connection breaks before the body is complete.
    """

    status_code: int
    headers: Mapping[str, str]

    @property
    def is_success(self) -> bool:
        return 200 <= self.status_code <= 299

    @abc.abstractmethod
    def aiter_bytes(self) -> AsyncIterator[bytes]:
        """Yield the body, decompressed, in the pieces in which it arrives."""

    @abc.abstractmethod
    async def aclose(self) -> None:
        """Close the response. A connection whose body was not read to its end is closed too."""

    async def aiter_lines(self) -> AsyncIterator[str]:
        """Yield the lines of the body, decoded as UTF-8, without their line ends.

        A line ends at CRLF, LF or CR, as in a server-sent event stream, which is always UTF-8.
        Bytes that are not UTF-8 become U+FFFD. A last line without a line end is yielded too.
        """
        # NOTE: a line is buffered whole, without a size limit, so an upstream that never ends
        # a line grows this buffer until the read timeout or the end of the body.
        pending = bytearray()
        # A CR at the end of one piece and an LF at the start of the next are one line end.
        after_cr = False
        async for piece in self.aiter_bytes():
            if not piece:
                continue
            start = 1 if after_cr and piece[:1] == b"\n" else 0
            after_cr = False
            for line_end in _SSE_LINE_END.finditer(piece, start):
                pending += piece[start : line_end.start()]
                yield pending.decode("utf-8", errors="replace")
                pending.clear()
                start = line_end.end()
                after_cr = start == len(piece) and line_end.group() == b"\r"
            pending += piece[start:]
        if pending:
            yield pending.decode("utf-8", errors="replace")

    async def __aenter__(self) -> StreamResponse:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()


class HttpClient(abc.ABC):
    """The two requests of the adapters. Neither follows redirects or retries."""

    @abc.abstractmethod
    async def post_json(
        self, url: str, json_body: Any, headers: Mapping[str, str], timeout_s: float
    ) -> Response:
        """POST `json_body` as JSON and return the response with its whole body.

        Raises TransportError for a failure before the whole body arrived, and ValueError or
        TypeError when `json_body` cannot be encoded as JSON (NaN and infinities included).
        """

    @abc.abstractmethod
    async def open_stream(
        self, url: str, json_body: Any, headers: Mapping[str, str], timeout_s: float
    ) -> StreamResponse:
        """POST `json_body` as JSON and return the response once its headers have arrived.

        The caller must close the returned response. Raises as `post_json` does.
        """


HttpClientLike = httpx.AsyncClient | HttpClient


def as_http_client(client: HttpClientLike) -> HttpClient:
    """Return `client` itself when it is an HttpClient, else wrap an httpx.AsyncClient."""
    if isinstance(client, HttpClient):
        return client
    if isinstance(client, httpx.AsyncClient):
        return HttpxClient(client)
    raise TypeError(
        f"expected an httpx.AsyncClient or a providers.http.HttpClient, got {type(client).__name__}"
    )


def encode_json(json_body: Any) -> bytes:
    """Encode a request body as httpx 0.29 does for `json=`, as compact UTF-8 without NaN."""
    return json.dumps(
        json_body, ensure_ascii=False, separators=(",", ":"), allow_nan=False
    ).encode("utf-8")


def _request_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """Add Content-Type to `headers`, checking every value first.

    Raises TransportConnectionError for a value with a character other than printable ASCII,
    space or tab, because HTTP cannot carry it. The message names the header, not the value.
    """
    for name, value in headers.items():
        if _INVALID_HEADER_VALUE_CHARACTER.search(value):
            raise TransportConnectionError(
                InvalidHeaderValueError(
                    f"the value of header {name!r} contains a control or non-ASCII character; "
                    "check the credential it carries"
                )
            )
    if any(name.lower() == "content-type" for name in headers):
        return dict(headers)
    return {"content-type": JSON_CONTENT_TYPE, **headers}


def _charset(headers: Mapping[str, str]) -> str:
    content_type = headers.get("content-type")
    if content_type:
        message = Message()
        message["content-type"] = content_type
        charset = message.get_content_charset()
        if charset:
            try:
                return codecs.lookup(charset).name
            except LookupError:
                pass
    return "utf-8"


# The httpx implementation.


class HttpxClient(HttpClient):
    """Requests over an `httpx.AsyncClient`.

    Redirects are never followed, whatever the client's `follow_redirects`. Proxies from the
    environment, retries and connection limits are the client's own settings.
    """

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client

    async def post_json(
        self, url: str, json_body: Any, headers: Mapping[str, str], timeout_s: float
    ) -> Response:
        content = encode_json(json_body)
        with _httpx_errors():
            response = await self.client.post(
                url,
                content=content,
                headers=_request_headers(headers),
                timeout=httpx.Timeout(timeout_s),
                follow_redirects=False,
            )
        return Response(response.status_code, response.headers, response.content)

    async def open_stream(
        self, url: str, json_body: Any, headers: Mapping[str, str], timeout_s: float
    ) -> StreamResponse:
        content = encode_json(json_body)
        with _httpx_errors():
            request = self.client.build_request(
                "POST",
                url,
                content=content,
                headers=_request_headers(headers),
                timeout=httpx.Timeout(timeout_s),
            )
            response = await self.client.send(request, stream=True, follow_redirects=False)
        return _HttpxStreamResponse(response)


class _HttpxStreamResponse(StreamResponse):
    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self.status_code = response.status_code
        self.headers = response.headers

    async def aiter_bytes(self) -> AsyncIterator[bytes]:
        with _httpx_errors():
            async for piece in self.response.aiter_bytes():
                yield piece

    async def aclose(self) -> None:
        await self.response.aclose()


@contextmanager
def _httpx_errors() -> Iterator[None]:
    """Raise the TransportError subclass for an httpx exception, chained to it."""
    try:
        yield
    except httpx.TimeoutException as exc:
        raise TransportTimeout(exc) from exc
    except (httpx.InvalidURL, httpx.UnsupportedProtocol) as exc:
        # httpx raises UnsupportedProtocol for a URL without a scheme or a host, too.
        raise TransportInvalidURL(exc) from exc
    except httpx.TransportError as exc:
        raise TransportConnectionError(exc) from exc


# The aiohttp implementation.


def create_aiohttp_session(
    *, max_connections: int, max_connections_per_host: int, keepalive_s: float
) -> aiohttp.ClientSession:
    """Create a session for `AiohttpClient`, inside the running event loop. Close it when done.

    The session reads no proxy settings from the environment. It stores no cookies, because a
    cookie set by one supplier's upstream must not reach another supplier's calls to the same
    host. It resolves host names for every new connection instead of caching them. It verifies TLS
    certificates against the CA bundle that httpx uses (certifi, or SSL_CERT_FILE and
    SSL_CERT_DIR when set), and accepts response header blocks as large as httpx does.
    """
    connector = aiohttp.TCPConnector(
        limit=max_connections,
        limit_per_host=max_connections_per_host,
        keepalive_timeout=keepalive_s,
        use_dns_cache=False,
        ssl=httpx.create_ssl_context(),
    )
    return aiohttp.ClientSession(
        connector=connector,
        cookie_jar=aiohttp.DummyCookieJar(),
        trust_env=False,
        auto_decompress=True,
        max_line_size=MAX_RESPONSE_HEADER_BYTES,
        max_field_size=MAX_RESPONSE_HEADER_BYTES,
    )


class AiohttpClient(HttpClient):
    """Requests over an `aiohttp.ClientSession`, ideally one from `create_aiohttp_session`.

    The wait for a pooled connection, resolving and connecting share one `timeout_s`, where
    httpx gives the pool wait its own. Each wait for response data gets `timeout_s`. Sending has
    no timeout of its own, so the opening of a request gets a deadline of
    AIOHTTP_OPENING_TIMEOUTS * `timeout_s`.
    """

    def __init__(self, session: aiohttp.ClientSession) -> None:
        self.session = session

    async def post_json(
        self, url: str, json_body: Any, headers: Mapping[str, str], timeout_s: float
    ) -> Response:
        response = await self._open(url, json_body, headers, timeout_s)
        try:
            with _aiohttp_errors():
                content = await response.read()
        finally:
            response.release()
        return Response(response.status, response.headers, content)

    async def open_stream(
        self, url: str, json_body: Any, headers: Mapping[str, str], timeout_s: float
    ) -> StreamResponse:
        return _AiohttpStreamResponse(await self._open(url, json_body, headers, timeout_s))

    async def _open(
        self, url: str, json_body: Any, headers: Mapping[str, str], timeout_s: float
    ) -> aiohttp.ClientResponse:
        content = encode_json(json_body)
        timeout = aiohttp.ClientTimeout(
            total=None, connect=timeout_s, sock_connect=timeout_s, sock_read=timeout_s
        )
        with _aiohttp_errors():
            async with asyncio.timeout(AIOHTTP_OPENING_TIMEOUTS * timeout_s):
                return await self.session.post(
                    url,
                    data=content,
                    headers=_request_headers(headers),
                    timeout=timeout,
                    allow_redirects=False,
                )


class _AiohttpStreamResponse(StreamResponse):
    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self.response = response
        self.status_code = response.status
        self.headers = response.headers

    async def aiter_bytes(self) -> AsyncIterator[bytes]:
        with _aiohttp_errors():
            async for piece in self.response.content.iter_any():
                yield piece

    async def aclose(self) -> None:
        if self.response.content.at_eof():
            self.response.release()
        else:
            # A connection with an unread body cannot be reused. Closing it also lets the
            # upstream see the disconnect and stop generating.
            self.response.close()


@contextmanager
def _aiohttp_errors() -> Iterator[None]:
    """Raise the TransportError subclass for an aiohttp exception, chained to it."""
    try:
        yield
    except TimeoutError as exc:
        # aiohttp's read and connect timeouts are also ClientErrors, so they are caught first.
        raise TransportTimeout(exc) from exc
    except (aiohttp.InvalidURL, aiohttp.NonHttpUrlClientError) as exc:
        raise TransportInvalidURL(exc) from exc
    except aiohttp.ClientError as exc:
        raise TransportConnectionError(exc) from exc
