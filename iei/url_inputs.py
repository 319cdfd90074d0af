"""Fetching images named by URL (`"inputs": ["https://..."]`), for servers started with
`--allow-url-inputs`. Guarded against server-side request forgery:

- only http and https;
- the host is resolved once, the address is checked, and the connection goes to that address (the
  hostname travels only in the Host header and TLS SNI), so a second DNS answer cannot swap it;
- addresses that are not globally routable (loopback, private, link-local and with it cloud metadata
  at 169.254.169.254, carrier-grade NAT, multicast, reserved, IPv4-mapped forms of these) are refused
  unless a network of `--url-allowlist` contains them;
- redirects are followed by hand, each hop checked the same way, at most `MAX_REDIRECTS`;
- the body is read up to a byte cap, the whole fetch has a time limit, and the response must say it is
  an image (`image/*` or `application/octet-stream`).

Owner: the event loop (httpx's async client; resolution through the loop's resolver thread pool).
Every failure raises `InputError` with a message for the client, never library text."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from typing import Sequence
from urllib.parse import urljoin, urlsplit

import httpx

from iei.errors import InputError

log = logging.getLogger("iei.url_inputs")

SCHEMES = ("http", "https")
MAX_REDIRECTS = 5
_REDIRECTS = (301, 302, 303, 307, 308)
_CONTENT_TYPES = ("image/", "application/octet-stream")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


async def resolve_payload(data: bytes | str, encoding: str, fetcher: "UrlFetcher | None") -> tuple[bytes | str, str]:
    """An input as the pool takes it: a base64 string that is a URL is fetched (raw bytes come back);
    anything else is returned as it is. Raises InputError when URL inputs are off (`fetcher` None)."""
    if encoding != "base64" or not isinstance(data, str) or not looks_like_url(data):
        return data, encoding
    if fetcher is None:
        raise InputError("URL inputs are disabled on this server (it must be started with --allow-url-inputs)")
    return await fetcher.fetch(data), "raw"


def looks_like_url(text: str) -> bool:
    """True for `scheme://...` (base64 never contains ':')."""
    head = text[:16].lower()
    return "://" in head


class UrlFetcher:
    def __init__(self, *, allowlist: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network], max_bytes: int,
                 timeout_s: float) -> None:
        self._allowlist = tuple(allowlist)
        self._max_bytes = max_bytes
        self._timeout_s = timeout_s
        # No proxies from the environment (they would bypass the address check), no automatic redirects.
        self._client = httpx.AsyncClient(follow_redirects=False, trust_env=False, timeout=timeout_s)

    async def close(self) -> None:
        await self._client.aclose()

    async def fetch(self, url: str) -> bytes:
        """The image bytes at `url`. Raises InputError."""
        try:
            async with asyncio.timeout(self._timeout_s):
                return await self._follow(url)
        except TimeoutError:
            raise InputError(f"fetching the URL took longer than {self._timeout_s * 1000:g} ms (url_timeout_ms)") from None

    async def _follow(self, url: str) -> bytes:
        for _ in range(MAX_REDIRECTS + 1):
            target = urlsplit(url)
            scheme, host = target.scheme.lower(), target.hostname
            if scheme not in SCHEMES:
                raise InputError(f"URL scheme {scheme!r} is not allowed (allowed: {', '.join(SCHEMES)})")
            if not host:
                raise InputError("the URL has no host")
            port = target.port or (443 if scheme == "https" else 80)
            address = await self._checked_address(host, port)
            status, location, body = await self._get(target, address, port)
            if status in _REDIRECTS and location:
                url = urljoin(url, location)
                continue
            if status != 200:
                raise InputError(f"fetching the URL failed with HTTP status {status}")
            return body
        raise InputError(f"the URL redirected more than {MAX_REDIRECTS} times")

    async def _checked_address(self, host: str, port: int) -> IPAddress:
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError):
            raise InputError(f"the URL's host {host!r} could not be resolved") from None
        address = ipaddress.ip_address(infos[0][4][0])
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        if not address.is_global and not any(address in network for network in self._allowlist):
            raise InputError(f"the URL's host resolves to {address}, a non-public address; "
                             "it is blocked unless --url-allowlist names it")
        return address

    async def _get(self, target, address: IPAddress, port: int) -> tuple[int, str | None, bytes]:
        """GET the URL from `address` (the checked one), with the original host in Host and SNI."""
        literal = f"[{address}]" if address.version == 6 else str(address)
        pinned = target._replace(netloc=f"{literal}:{port}").geturl()
        host_header = target.hostname if target.port is None else f"{target.hostname}:{target.port}"
        request = self._client.build_request("GET", pinned, headers={"host": host_header, "accept": "image/*",
                                                                       "accept-encoding": "identity"},
                                             extensions={"sni_hostname": target.hostname})
        try:
            response = await self._client.send(request, stream=True)
        except httpx.HTTPError:
            raise InputError("the URL could not be fetched (connection failed)") from None
        try:
            if response.status_code != 200:
                return response.status_code, response.headers.get("location"), b""
            self._check_headers(response)
            return 200, None, await self._read_capped(response)
        except httpx.HTTPError:
            raise InputError("the URL could not be fetched (the connection broke)") from None
        finally:
            await response.aclose()

    def _check_headers(self, response: httpx.Response) -> None:
        content_type = response.headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if not content_type.startswith(_CONTENT_TYPES):
            raise InputError(f"the URL's content type is {content_type or 'missing'!r}, not an image")
        length = response.headers.get("content-length", "")
        if length.isdigit() and int(length) > self._max_bytes:
            raise InputError(f"the URL's image is {length} bytes, over the limit of {self._max_bytes} (url_max_bytes)")

    async def _read_capped(self, response: httpx.Response) -> bytes:
        chunks, size = [], 0
        async for chunk in response.aiter_bytes():  # decoded: a compressed body is capped by its real size
            size += len(chunk)
            if size > self._max_bytes:
                raise InputError(f"the URL's image is over the limit of {self._max_bytes} bytes (url_max_bytes)")
            chunks.append(chunk)
        return b"".join(chunks)
