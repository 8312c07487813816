"""Checks on a supplier's upstream URL, which is untrusted input.

Outside development mode, the URL must use http or https and every address its host resolves
to must be a public unicast address: no loopback, private, link-local (which includes the
cloud metadata address 169.254.169.254), carrier-grade NAT, multicast, reserved or unspecified
address. Otherwise a supplier could make the proxy call services inside our own network.
"""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit

from marketplace.errors import InvalidRequest

# Cloud metadata services reachable at addresses that the ipaddress flags do not all cover.
METADATA_ADDRESSES = frozenset({ipaddress.ip_address("169.254.169.254"), ipaddress.ip_address("fd00:ec2::254")})


def _unsafe_reason(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if address in METADATA_ADDRESSES:
        return "a cloud metadata address"
    if address.is_loopback:
        return "a loopback address"
    if address.is_link_local:
        return "a link-local address"
    if address.is_private:
        return "a private address"
    if address.is_multicast:
        return "a multicast address"
    if address.is_unspecified or address.is_reserved:
        return "a reserved address"
    if isinstance(address, ipaddress.IPv4Address) and address in ipaddress.ip_network("100.64.0.0/10"):
        return "a carrier-grade NAT address"
    return None


def resolve_host(host: str, port: int) -> list[str]:
    try:
        return sorted({info[4][0] for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)})
    except socket.gaierror as exc:
        raise InvalidRequest(f"upstream_base_url host {host!r} does not resolve: {exc.strerror}", param="upstream_base_url") from exc


def check_upstream_url(url: str, *, development: bool, resolve=resolve_host) -> None:  # type: ignore[no-untyped-def]
    """Raise InvalidRequest naming the rule when a supplier's upstream URL is not allowed."""
    if any(character.isspace() for character in url):
        raise InvalidRequest(f"upstream_base_url {url!r} must not contain whitespace", param="upstream_base_url")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidRequest(f"upstream_base_url {url!r} must be an http or https URL with a host", param="upstream_base_url")
    if parts.username or parts.password:
        raise InvalidRequest("upstream_base_url must not contain a user name or password; send the credential as upstream_credential", param="upstream_base_url")
    if development:
        return

    port = parts.port or (443 if parts.scheme == "https" else 80)
    for text in resolve(parts.hostname, port):
        reason = _unsafe_reason(ipaddress.ip_address(text.split("%", 1)[0]))
        if reason is not None:
            raise InvalidRequest(
                f"upstream_base_url {url!r} resolves to {text}, {reason}; upstreams must be public "
                "addresses (rule: no loopback, private, link-local or metadata addresses outside development mode)",
                param="upstream_base_url",
                code="unsafe_upstream_url",
            )
