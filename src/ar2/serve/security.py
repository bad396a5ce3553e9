"""What guards the HTTP service before a request reaches an endpoint: the Host check (against
DNS rebinding), the body-size limit and the security headers. Plain ASGI middleware, whose
errors are JSON ``{"detail": ...}`` like every other answer of the service.

A page on an attacker's site can make a browser send requests to ``127.0.0.1`` by pointing its
own host name there (DNS rebinding); the browser then sends that foreign name as ``Host``. A
service on loopback therefore answers only the names a local client uses.

Example:
    >>> host_allowed("localhost:8000", LOOPBACK_HOSTS), host_allowed("[::1]", LOOPBACK_HOSTS)
    (True, True)
    >>> host_allowed("evil.example:8000", LOOPBACK_HOSTS), host_allowed("a.lan", ("*.lan",))
    (False, True)
    >>> parse_allowed_hosts("Search.example, ::1,*.corp.example")
    ('search.example', '[::1]', '*.corp.example')
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Awaitable, Callable, Iterable, MutableMapping, Sequence
from typing import Any

from ar2.errors import Ar2Error

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]

LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "[::1]")
"""Host names answered by a service bound to loopback (any port)."""

ANY_HOST = ("*",)
"""Every Host answered: the default on a non-loopback address."""

PAGE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
"""The page's scripts and styles are files of this service; nothing inline, nothing remote."""

DOCS_CSP = (
    "default-src 'none'; script-src 'unsafe-inline' https://cdn.jsdelivr.net; "
    "style-src 'unsafe-inline' https://cdn.jsdelivr.net https://fonts.googleapis.com; "
    "font-src https://fonts.gstatic.com; img-src 'self' data: https://fastapi.tiangolo.com "
    "https://cdn.redoc.ly; worker-src blob:; connect-src 'self'; base-uri 'none'; "
    "frame-ancestors 'none'"
)
"""``/docs`` and ``/redoc`` (``ar2 serve --docs``) load Swagger UI and ReDoc from a CDN."""

DOCS_PATHS = ("/docs", "/redoc", "/docs/oauth2-redirect")

SECURITY_HEADERS = {
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
}
"""Sent with every answer, with a Content-Security-Policy."""

BAD_HOST = "Invalid host header: not a name this service answers (ar2 serve --allowed-hosts)"
TOO_LARGE = "Content Too Large"

_NAME = re.compile(r"(\*\.)?[a-z0-9_-]+(\.[a-z0-9_-]+)*\.?")
_HOST = re.compile(r"(?P<name>\[[0-9a-f:.]+\]|[^:\[\]]*)(:[0-9]{1,5})?")


def parse_allowed_hosts(text: str) -> tuple[str, ...]:
    """``--allowed-hosts``: comma-separated names, ``*.domain`` for its subdomains, IP
    addresses, or ``*`` for any; lower-cased, IPv6 addresses in brackets."""
    hosts = tuple(_host_pattern(part.strip().lower()) for part in text.split(",") if part.strip())
    if not hosts:
        raise Ar2Error(
            "--allowed-hosts: no host name given. "
            "Fix: pass comma-separated names (localhost,search.example.com) or * for any."
        )
    return hosts


def _host_pattern(part: str) -> str:
    if part == "*" or _NAME.fullmatch(part):
        return part
    try:
        return f"[{ipaddress.IPv6Address(part.strip('[]'))}]"
    except ValueError:
        raise Ar2Error(
            f"--allowed-hosts: {part!r} is not a host name. Fix: give names or addresses "
            "without scheme or port (any port is accepted), e.g. localhost,search.example.com."
        ) from None


def host_allowed(header: str, allowed: Iterable[str]) -> bool:
    """Whether a ``Host`` header (name and optional port) names one of ``allowed``."""
    match = _HOST.fullmatch(header.lower())
    if match is None or not match["name"]:
        return False
    name = match["name"]
    return any(
        pattern in ("*", name) or (pattern.startswith("*.") and name.endswith(pattern[1:]))
        for pattern in allowed
    )


def error_body(detail: str) -> bytes:
    """``{"detail": detail}`` as the app's own error handlers write it.

    Example:
        >>> error_body("Not Found")
        b'{"detail":"Not Found"}'
    """
    return json.dumps({"detail": detail}, ensure_ascii=False, separators=(",", ":")).encode()


async def send_error(send: Send, status: int, detail: str) -> None:
    """Answer ``{"detail": detail}`` with ``status``."""
    body = error_body(detail)
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return bytes(value).decode("latin-1")
    return None


class HostCheck:
    """400 ``{"detail": ...}`` for a request whose ``Host`` is not one of ``allowed_hosts``."""

    def __init__(self, app: App, allowed_hosts: Sequence[str]) -> None:
        self.app, self.allowed = app, tuple(allowed_hosts)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and "*" not in self.allowed:
            if not host_allowed(_header(scope, b"host") or "", self.allowed):
                await send_error(send, 400, BAD_HOST)
                return
        await self.app(scope, receive, send)


class BodyLimit:
    """413 ``{"detail": "Content Too Large"}`` for a body over ``max_bytes``: at once when
    ``Content-Length`` says so, else once the bytes received pass the limit."""

    def __init__(self, app: App, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = _header(scope, b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            await send_error(send, 413, TOO_LARGE)
            return
        received = 0

        async def limited() -> MutableMapping[str, Any]:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                from starlette.exceptions import HTTPException  # answered by the app's handler

                raise HTTPException(413, TOO_LARGE)
            return message

        await self.app(scope, limited, send)


class SecurityHeaders:
    """Adds :data:`SECURITY_HEADERS` and a Content-Security-Policy to every answer (the
    relaxed :data:`DOCS_CSP` on ``/docs`` and ``/redoc`` when ``docs``)."""

    def __init__(self, app: App, docs: bool = False) -> None:
        self.app, self.docs = app, docs

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        docs = self.docs and scope.get("path") in DOCS_PATHS
        extra = security_headers(DOCS_CSP if docs else PAGE_CSP)
        raw = [(name.encode(), value.encode()) for name, value in extra.items()]

        async def send_with_headers(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), *raw]
            await send(message)

        await self.app(scope, receive, send_with_headers)


def security_headers(csp: str = PAGE_CSP) -> dict[str, str]:
    """:data:`SECURITY_HEADERS` with ``csp`` as the Content-Security-Policy."""
    return {"content-security-policy": csp, **SECURITY_HEADERS}
