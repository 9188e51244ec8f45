"""Where a webhook may go: no loopback, private, link-local or metadata addresses.

A webhook URL is typed by a person, and a worker POSTs to it from inside our network, so an
unchecked URL would let anyone with the console reach the database's admin port or the
cloud's metadata service (server-side request forgery). The check runs when the endpoint
is added and again before every attempt, on the addresses the name resolves to then (a
name can be re-pointed between the two: DNS rebinding), and the attempt connects to the
address that was checked, never resolving the name a second time.
"""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit


class AddressRefused(ValueError):
    """The URL may not be used: the message says why, for the person who typed it."""


def _blocked(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return _blocked(ip.ipv4_mapped)
    if ip.is_loopback:
        return "a loopback address"
    if ip.is_link_local:  # also 169.254.169.254, the cloud metadata service
        return "a link-local address"
    if ip.is_private:  # 10/8, 172.16/12, 192.168/16, fc00::/7 and other reserved nets
        return "a private address"
    if ip.is_unspecified or ip.is_multicast or ip.is_reserved:
        return "a reserved address"
    return None


def check_url(url: str, *, allow_http: bool) -> tuple[str, str, int]:
    """(scheme, host, port) of a URL we may POST to, or AddressRefused; no DNS lookup."""
    if len(url) > 2000:
        raise AddressRefused("The URL is longer than 2000 characters.")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as e:
        raise AddressRefused(f"That is not a URL: {e}.") from None
    schemes = ("https", "http") if allow_http else ("https",)
    if parts.scheme not in schemes:
        raise AddressRefused(
            "The URL must start with https:// (MAILER_WEBHOOK_ALLOW_HTTP=on allows http://)."
            if parts.scheme == "http" else "The URL must start with https://."
        )
    if not parts.hostname:
        raise AddressRefused("The URL has no host name.")
    if parts.username or parts.password:
        raise AddressRefused("The URL may not carry a user name or password.")
    return parts.scheme, parts.hostname, port or (443 if parts.scheme == "https" else 80)


def resolve(host: str, port: int, *, allow_private: bool) -> str:
    """The address to connect to for `host`: every address it resolves to must be allowed
    (one bad answer among good ones is refused: the resolver may hand it out next time)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as e:
        raise AddressRefused(f"The host name {host!r} does not resolve: {e}.") from None
    addresses = []
    for *_, sockaddr in infos:
        ip = ipaddress.ip_address(sockaddr[0].split("%")[0])
        why = None if allow_private else _blocked(ip)
        if why:
            shown = host if host == str(ip) else f"{host} ({ip})"
            raise AddressRefused(
                f"{shown} is {why}; webhooks may only go to public addresses "
                "(MAILER_WEBHOOK_ALLOW_PRIVATE=on allows them)."
            )
        addresses.append(str(ip))
    if not addresses:
        raise AddressRefused(f"The host name {host!r} has no address.")
    return addresses[0]
