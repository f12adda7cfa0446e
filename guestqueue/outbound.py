"""Where guestqueue may send what strangers point it at (a tenant's upstream URL, its webhooks).

The operator's own URLs (``GUEST_CONFIG``'s file, ``GUEST_*``) may reach any address. A URL set
through the admin API may not reach loopback, link-local, private, reserved or multicast
addresses, nor this server's own addresses, unless ``GUEST_OUTBOUND_ALLOW`` lists them (CIDRs, or
``*``): otherwise a tenant could read an internal service through its line, or aim a webhook at
guestqueue's own admin API. ::

    policy = OutboundPolicy.from_settings(settings)
    policy.refuses_url("http://10.0.0.7/chat")   # "10.0.0.7 is a private address ..." (422 at once)
    client = guarded_http_client(policy, ...)    # checks every address it actually connects to

:func:`url_problem` says what makes a URL unusable and :func:`mask_url` how a
reader without the line's secrets sees it. The check that counts is made on
the address connected to, not on the name: the guarded
client's resolver drops every address the rule refuses (DNS can answer differently between a
check and the connect), and an address written in the URL is checked before the request.
"""

from __future__ import annotations

import functools
import ipaddress
import socket
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import httpx
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.helpers import is_ip_address
from aiohttp.resolver import DefaultResolver
from httpx_aiohttp import AiohttpTransport

from .config import Settings

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
# Sent with every request guestqueue makes: such a request is never a local caller of guestqueue
# (web/access.py), even when it reaches it through an address the operator allowed.
OUTBOUND_HEADER = "x-guestqueue-outbound"
MAX_URL_CHARS = 2048
# Incoming webhooks whose URL path is their secret (webhooks.py posts them {"text": ...}).
CHAT_HOSTS = ("hooks.slack.com", "webhook.office.com")


def url_problem(url: Any) -> str | None:
    """Why ``url`` is not an http(s) URL we would send anything to, or None."""
    if not isinstance(url, str) or len(url) > MAX_URL_CHARS:
        return f"must be an http:// or https:// URL of at most {MAX_URL_CHARS} characters"
    if any(ord(c) < 33 or ord(c) == 127 for c in url):
        return "must not hold spaces or control characters (CR, LF, tab)"
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as exc:
        return f"not a URL ({exc})"
    if parsed.scheme not in ("http", "https") or not parsed.host:
        return "must be an http:// or https:// URL with a host"
    return None


def mask_url(url: str) -> str:
    """``url`` as a reader without the line's secrets may see it: the password of ``user:pass@``,
    every query value (``?key=...``) and the path of a chat service's hook (the path is the secret)."""
    try:
        parsed = urlsplit(url)
    except ValueError:
        return "***"
    netloc = parsed.netloc
    if "@" in netloc:
        user, _, host = netloc.rpartition("@")
        netloc = f"{user.partition(':')[0]}:***@{host}"
    query = "&".join(f"{part.partition('=')[0]}=***" for part in parsed.query.split("&") if part)
    path = parsed.path
    if (parsed.hostname or "").endswith(CHAT_HOSTS):
        path = "/***"
    return urlunsplit((parsed.scheme, netloc, path, query, ""))


class OutboundPolicy:
    """Which addresses a tenant's URL may reach."""

    __slots__ = ("_allowed", "_everything", "_own")

    def __init__(self, allow: Iterable[Network] = (), *, everything: bool = False, own: Iterable[Address] = ()) -> None:
        self._allowed = tuple(allow)
        self._everything = everything
        self._own = frozenset(own)

    def __repr__(self) -> str:
        allowed = "*" if self._everything else ",".join(map(str, self._allowed))
        return f"OutboundPolicy(allow={allowed!r}, own={len(self._own)})"

    @classmethod
    def from_settings(cls, settings: Settings) -> OutboundPolicy:
        items = [item.strip() for item in settings.outbound_allow.split(",") if item.strip()]
        networks = [ipaddress.ip_network(item, strict=False) for item in items if item != "*"]
        return cls(networks, everything="*" in items, own=_own_addresses(settings.host))

    def refusal(self, address: Address) -> str | None:
        """Why ``address`` may not be reached, or None."""
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped  # ::ffff:127.0.0.1 is 127.0.0.1
        if self._everything or any(address in network for network in self._allowed):
            return None
        if address in self._own:
            return f"{address} is this server's own address"
        if address.is_multicast or not address.is_global:
            kind = (
                "loopback" if address.is_loopback else "link-local" if address.is_link_local else "private or reserved"
            )
            return f"{address} is a {kind} address"
        return None

    def refuses_url(self, url: str) -> str | None:
        """Why a tenant may not set ``url``, as far as the URL alone tells (an address in it, or
        ``localhost``); names are checked again at every connect."""
        host = httpx.URL(url).host if url else ""
        if not host:
            return None
        if host.lower() == "localhost" or host.lower().endswith(".localhost"):
            host = "127.0.0.1"  # RFC 6761: always loopback, whatever DNS says
        address = literal_address(host)
        refused = self.refusal(address) if address is not None else None
        return _words(refused) if refused else None


def literal_address(host: str) -> Address | None:
    """The address a host written as one means, in any form the C library takes (``127.1``,
    ``2130706433``, ``0x7f.1`` are all 127.0.0.1, and are connected to without a lookup)."""
    try:
        return ipaddress.ip_address(host.strip("[]").split("%")[0])
    except ValueError:
        pass
    try:
        return ipaddress.IPv4Address(socket.inet_aton(host))
    except OSError:
        return None


def _words(why: str) -> str:
    return f"{why}: a URL set through the admin API may reach it only if GUEST_OUTBOUND_ALLOW lists it"


@functools.cache
def _own_addresses(host: str) -> frozenset[Address]:
    """The addresses this machine answers on, as far as it knows them (its name's, and the bound one)."""
    found: set[Address] = set()
    names = [socket.gethostname(), host]
    for name in names:
        try:
            infos = socket.getaddrinfo(name, None)
        except (OSError, UnicodeError):
            continue
        for info in infos:
            try:
                found.add(ipaddress.ip_address(str(info[4][0]).split("%")[0]))
            except ValueError:
                continue
    # 0.0.0.0 and :: are "every address here"; loopback is refused by kind already.
    return frozenset(address for address in found if not address.is_unspecified)


class GuardedResolver(AbstractResolver):
    """aiohttp's resolver, keeping only the addresses the policy allows: aiohttp connects to what
    this returns and nothing else, so the address checked is the address connected to."""

    def __init__(self, policy: OutboundPolicy) -> None:
        self._policy = policy
        self._resolver = DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._resolver.resolve(host, port, family)
        allowed = [result for result in results if self._policy.refusal(ipaddress.ip_address(result["host"])) is None]
        if not allowed:
            why = self._policy.refusal(ipaddress.ip_address(results[0]["host"])) if results else "no address"
            raise OSError(
                f"{host} is not reachable from a line or webhook set through the admin API ({why}; "
                "GUEST_OUTBOUND_ALLOW lists what is)"
            )
        return allowed

    async def close(self) -> None:
        await self._resolver.close()


class GuardedTransport(AiohttpTransport):
    """The shared transport, with the policy's resolver; an address written in the URL (which
    aiohttp connects to without resolving) is checked here."""

    def __init__(self, policy: OutboundPolicy, **kwargs: Any) -> None:
        self._policy = policy
        super().__init__(**kwargs)

    def get_client(self) -> aiohttp.ClientSession:
        limit = self.limits.max_connections or 0
        connector = aiohttp.TCPConnector(
            resolver=GuardedResolver(self._policy),
            limit=limit,
            keepalive_timeout=self.limits.keepalive_expiry,
            ssl=self.ssl_context,
        )
        return aiohttp.ClientSession(connector=connector)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        host = request.url.host
        address = literal_address(host)
        if address is None and is_ip_address(host):
            refused: str | None = f"{host} is an address in a form we do not read"
        elif address is None:
            return await super().handle_async_request(request)  # a name: the resolver checks it
        else:
            refused = self._policy.refusal(address)
        if refused:
            raise httpx.ConnectError(f"not reachable from a URL set through the admin API: {refused}", request=request)
        return await super().handle_async_request(request)
