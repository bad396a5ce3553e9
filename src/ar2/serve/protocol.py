"""uvicorn's HTTP protocol (httptools) with a deadline for a request's head, and JSON errors.

uvicorn closes a kept-alive connection that stays idle, but it waits for ever for the rest of a
request line or of the headers, and for the first byte of a new connection: 200 clients that
each send half a request hold 200 connections for good (Slowloris). Here a request's line and
headers must arrive within ``header_timeout`` seconds of the connection opening or of the
request's first byte. Past that, a connection holding part of a request gets 408
``{"detail": ...}``; one that sent nothing is closed without a word (a browser's unused
pre-connection). uvicorn's 400 for a request that is not HTTP is JSON too.

The body is not under this deadline: the app reads it and limits its size.
"""

from __future__ import annotations

import asyncio
from http import HTTPStatus

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from ar2.serve.security import error_body, security_headers
from ar2.serve.server import HEADER_TIMEOUT_SECONDS

TIMED_OUT = "request headers not received in time"


class HeaderTimeoutProtocol(HttpToolsProtocol):
    """:class:`HttpToolsProtocol` that closes a connection whose request head is late."""

    header_timeout: float = HEADER_TIMEOUT_SECONDS
    """Seconds for a request's line and headers (see :func:`with_header_timeout`)."""

    _header_timer: asyncio.TimerHandle | None = None
    _request_begun = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._request_begun = True
        if self._header_timer is None:  # a new request on a kept-alive connection
            self._arm()

    def on_headers_complete(self) -> None:
        self._disarm()
        self._request_begun = False
        super().on_headers_complete()

    def send_400_response(self, msg: str) -> None:
        self._disarm()
        self._send_error(400, msg)

    def _arm(self) -> None:
        self._header_timer = self.loop.call_later(self.header_timeout, self._timed_out)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _timed_out(self) -> None:
        self._header_timer = None
        if self.transport.is_closing():
            return
        if self._request_begun:
            self._send_error(408, TIMED_OUT)
        else:
            self.transport.close()

    def _send_error(self, status: int, detail: str) -> None:
        """Answer ``{"detail": detail}`` and close the connection."""
        self.transport.write(error_response(status, detail))
        self.transport.close()


def error_response(status: int, detail: str) -> bytes:
    """A whole HTTP/1.1 answer ``{"detail": detail}`` that closes the connection.

    Example:
        >>> error_response(408, "late").split(b"\\r\\n")[0]
        b'HTTP/1.1 408 Request Timeout'
    """
    body = error_body(detail)
    headers = {
        "content-type": "application/json",
        "content-length": str(len(body)),
        "connection": "close",
        **security_headers(),
    }
    head = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}"]
    head += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(head) + "\r\n\r\n").encode("ascii") + body


def with_header_timeout(seconds: float) -> type[HeaderTimeoutProtocol]:
    """:class:`HeaderTimeoutProtocol` with a ``seconds`` deadline, for ``uvicorn.Config(http=)``.

    Example:
        >>> with_header_timeout(1.5).header_timeout
        1.5
    """
    attributes = {"header_timeout": float(seconds), "__doc__": HeaderTimeoutProtocol.__doc__}
    return type("HeaderTimeoutProtocol", (HeaderTimeoutProtocol,), attributes)
