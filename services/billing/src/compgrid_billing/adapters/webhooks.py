"""Outgoing webhooks signed per the Standard Webhooks specification.

Every request carries ``webhook-id``, ``webhook-timestamp`` (unix seconds) and
``webhook-signature`` (``v1,<base64 HMAC-SHA256>`` over ``"{id}.{timestamp}.{body}"``, keyed
with the base64-decoded part of a ``whsec_`` secret), so receivers can check them with any
Standard Webhooks library. See https://www.standardwebhooks.com/.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import ipaddress
import secrets
import time
from dataclasses import dataclass
from types import TracebackType
from urllib.parse import urlsplit

import httpx

SECRET_PREFIX = "whsec_"
MIN_KEY_BYTES = 24
MAX_KEY_BYTES = 64
MAX_URL_LENGTH = 2000
SNIPPET_CHARS = 200
_SNIPPET_READ_BYTES = 4096


def new_secret() -> str:
    """Return a fresh signing secret: ``whsec_`` and the base64 of 32 random bytes."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode("ascii")


def _key(secret: str) -> bytes:
    """Return the HMAC key inside a ``whsec_`` secret, or raise ValueError."""
    if not secret.startswith(SECRET_PREFIX):
        raise ValueError(f"webhook secret must start with {SECRET_PREFIX!r}")
    encoded = secret.removeprefix(SECRET_PREFIX)
    try:
        key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"webhook secret after {SECRET_PREFIX!r} is not valid base64") from None
    if not MIN_KEY_BYTES <= len(key) <= MAX_KEY_BYTES:
        raise ValueError(
            f"webhook secret must decode to {MIN_KEY_BYTES}-{MAX_KEY_BYTES} bytes, not {len(key)}"
        )
    return key


def sign(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    """Return the ``webhook-signature`` header value (``v1,<base64>``) for one message.

    Raises ValueError when the secret is malformed or the message id is empty or not
    printable ASCII without spaces.
    """
    key = _key(secret)
    if not message_id or not message_id.isascii() or not message_id.isprintable():
        raise ValueError("webhook message id must be non-empty printable ASCII")
    if " " in message_id:
        raise ValueError("webhook message id must not contain spaces")
    signed = f"{message_id}.{timestamp}.".encode() + body
    digest = hmac.new(key, signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")


def validate_url(url: str, *, allow_http: bool) -> str:
    """Return the normalised form of a webhook endpoint URL, or raise ValueError.

    The URL must be absolute, use https (or http when ``allow_http``, for development and
    tests), name a host, carry no user name or password and no fragment, and be at most
    2000 characters long.
    """
    text = url.strip()
    if not text:
        raise ValueError("webhook URL is empty")
    if len(text) > MAX_URL_LENGTH:
        raise ValueError(f"webhook URL is longer than {MAX_URL_LENGTH} characters")
    try:
        parsed = httpx.URL(text)
        port = parsed.port
    except (httpx.InvalidURL, ValueError) as exc:
        raise ValueError(f"webhook URL is not valid: {exc}") from None
    allowed = ("https", "http") if allow_http else ("https",)
    if not parsed.is_absolute_url or not parsed.scheme:
        raise ValueError("webhook URL must be absolute, like https://example.org/hooks")
    if parsed.scheme not in allowed:
        raise ValueError(f"webhook URL must use {' or '.join(allowed)}, not {parsed.scheme!r}")
    if not parsed.host:
        raise ValueError("webhook URL has no host")
    if parsed.userinfo or "@" in urlsplit(text).netloc:
        raise ValueError("webhook URL must not contain a user name or password")
    if port is not None and not 0 < port < 65536:
        raise ValueError(f"webhook URL port {port} is out of range")
    if parsed.fragment or text.endswith("#"):
        raise ValueError("webhook URL must not contain a fragment (#...)")
    normalised = str(parsed)
    if len(normalised) > MAX_URL_LENGTH:
        raise ValueError(f"webhook URL is longer than {MAX_URL_LENGTH} characters")
    return normalised


@dataclass(frozen=True)
class Outcome:
    """The result of one delivery attempt."""

    delivered: bool
    status: int | None
    detail: str
    retryable: bool
    duration_ms: int


METADATA_NETWORKS = tuple(
    ipaddress.ip_network(network)
    for network in (
        "169.254.0.0/16",  # IPv4 link-local: AWS, GCP, Azure, OpenStack metadata at .169.254
        "fe80::/10",  # IPv6 link-local
        "fd00:ec2::/32",  # AWS metadata and DNS over IPv6 (fd00:ec2::254)
        "100.100.100.200/32",  # Alibaba Cloud metadata
        "168.63.129.16/32",  # Azure wire server
        "192.0.0.192/32",  # Oracle Cloud metadata
    )
)
"""Link-local and cloud metadata addresses: never an endpoint, in any environment (they hand
out the machine's cloud credentials)."""


def _ip(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """An address, with an IPv4 address carried inside an IPv6 one (mapped, NAT64, 6to4)
    taken out, so it cannot dodge the IPv4 rules."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = ip.ipv4_mapped or ip.sixtofour
        if embedded is not None:
            return embedded
        if ip in ipaddress.ip_network("64:ff9b::/96"):
            return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return ip


def metadata(address: str) -> bool:
    """Whether an IP address is link-local or a cloud metadata service."""
    ip = _ip(address)
    return ip.is_link_local or any(ip in network for network in METADATA_NETWORKS)


def internal(address: str) -> bool:
    """Whether an IP address is not on the public internet (loopback, private, link-local...)."""
    ip = _ip(address)
    return not ip.is_global or ip.is_multicast or metadata(address)


def _refused(address: str, allow_internal: bool) -> str | None:
    """Why an endpoint may not be at ``address``, or None."""
    if metadata(address):
        return f"the link-local or cloud metadata address {address}, never allowed"
    if not allow_internal and internal(address):
        return f"the internal address {address}"
    return None


async def refused_address(host: str, *, allow_internal: bool) -> str | None:
    """Why ``host`` may not be an endpoint: it is or resolves to a link-local or metadata
    address (always refused) or, unless ``allow_internal``, to any internal one; None when
    every address it resolves to is allowed.

    Checked at registration and before each send, so an endpoint cannot reach the cluster's
    own network; a host that changes its answer between this check and the connection is
    not caught.
    """
    try:
        return _refused(host, allow_internal)
    except ValueError:
        pass  # a name, not an address
    found = await asyncio.get_running_loop().getaddrinfo(host, None)
    for *_, sockaddr in found:
        if reason := _refused(str(sockaddr[0]), allow_internal):
            return reason
    return None


class WebhookSender:
    """Posts signed webhooks and reports each attempt as an Outcome; never follows redirects.

    Every non-2xx answer and every network failure is treated as retryable, as Standard
    Webhooks senders commonly do; the caller's retry schedule decides when to give up.
    Redirects are not followed, because the body could then reach a host nobody approved.
    """

    def __init__(
        self,
        timeout_s: float = 10.0,
        user_agent: str = "CompGrid-Webhooks/1",
        *,
        allow_internal: bool = True,
    ) -> None:
        if timeout_s <= 0:
            raise ValueError("webhook timeout must be positive")
        self._timeout_s = timeout_s
        self._user_agent = user_agent
        self._allow_internal = allow_internal
        self._client = httpx.AsyncClient(timeout=httpx.Timeout(timeout_s), follow_redirects=False)

    async def __aenter__(self) -> WebhookSender:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the underlying HTTP connections."""
        await self._client.aclose()

    async def post(
        self, url: str, secret: str, message_id: str, body: bytes, *, now: int | None = None
    ) -> Outcome:
        """POST a JSON body signed with ``secret`` and report what happened.

        ``now`` overrides the signed timestamp (unix seconds). Network problems are
        reported in the Outcome; a malformed secret, message id or URL raises ValueError.
        """
        timestamp = int(time.time()) if now is None else now
        headers = {
            "content-type": "application/json",
            "user-agent": self._user_agent,
            "webhook-id": message_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": sign(secret, message_id, timestamp, body),
        }
        started = time.monotonic()

        def failed(detail: str) -> Outcome:
            return Outcome(False, None, detail, True, _elapsed_ms(started))

        try:
            host = httpx.URL(url).host
            refused = await refused_address(host, allow_internal=self._allow_internal)
        except OSError as exc:
            return failed(_shorten(f"cannot resolve the host: {exc}"))
        if refused is not None:
            detail = f"refused: the host is or resolves to {refused}"
            return Outcome(False, None, detail, False, _elapsed_ms(started))
        try:
            async with asyncio.timeout(self._timeout_s):
                status, location, snippet = await self._send(url, headers, body)
        except (TimeoutError, httpx.TimeoutException):
            return failed(f"timed out after {self._timeout_s:g} s")
        except httpx.UnsupportedProtocol as exc:
            raise ValueError(f"webhook URL is not usable: {exc}") from None
        except httpx.InvalidURL as exc:
            raise ValueError(f"webhook URL is not valid: {exc}") from None
        except httpx.ConnectError as exc:
            if _caused_by(exc, ConnectionRefusedError):
                return failed("connection refused")
            return failed(_shorten(f"connection failed: {_describe(exc)}"))
        except httpx.TransportError as exc:
            return failed(_shorten(f"network error: {_describe(exc)}"))

        duration_ms = _elapsed_ms(started)
        if 200 <= status < 300:
            return Outcome(True, status, f"HTTP {status}", False, duration_ms)
        if 300 <= status < 400:
            target = _shorten(location) if location else "an unspecified location"
            detail = f"HTTP {status}: redirect to {target} not followed"
        else:
            detail = f"HTTP {status}: {snippet}" if snippet else f"HTTP {status}"
        return Outcome(False, status, detail, True, duration_ms)

    async def _send(
        self, url: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, str | None, str]:
        """Send one request; return its status, Location header and a body snippet."""
        async with self._client.stream("POST", url, content=body, headers=headers) as response:
            status = response.status_code
            if 200 <= status < 400:
                return status, response.headers.get("location"), ""
            head = bytearray()
            try:
                async for chunk in response.aiter_bytes():
                    head += chunk
                    if len(head) >= _SNIPPET_READ_BYTES:
                        break
            except (httpx.TransportError, httpx.DecodingError):
                pass  # the snippet is only detail: what was read so far will do
            return status, None, _snippet(bytes(head[:_SNIPPET_READ_BYTES]))


def _snippet(raw: bytes) -> str:
    """Return the start of a response body as one short line of text."""
    return _shorten(" ".join(raw.decode("utf-8", errors="replace").split()))


def _shorten(text: str) -> str:
    """Cut text to at most SNIPPET_CHARS characters."""
    return text if len(text) <= SNIPPET_CHARS else text[: SNIPPET_CHARS - 3] + "..."


def _describe(exc: BaseException) -> str:
    """Return an exception's message, or its type name when it has none."""
    return str(exc) or type(exc).__name__


def _caused_by(exc: BaseException, kind: type[BaseException]) -> bool:
    """Tell whether ``kind`` appears in the chain of causes behind ``exc``."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, kind):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


def _elapsed_ms(started: float) -> int:
    """Milliseconds since ``started`` (a time.monotonic() reading)."""
    return round((time.monotonic() - started) * 1000)
