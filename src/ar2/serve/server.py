"""Run an app with uvicorn: in the foreground (``ar2 serve``) or in a background thread.

Example:
    >>> from ar2.index import BM25Index
    >>> from ar2.pipeline import BM25Retriever
    >>> from ar2.serve import SearchService, create_app
    >>> from ar2.types import Doc
    >>> import json, urllib.request
    >>> docs = [Doc("d1", "cats eat fish", "Cats")]
    >>> app = create_app(SearchService(docs, {"bm25": BM25Retriever(BM25Index.build(docs))}))
    >>> with in_background(app) as url:
    ...     json.load(urllib.request.urlopen(url + "/health"))["status"]
    'ok'
"""

from __future__ import annotations

import ipaddress
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ar2._optional import require
from ar2.errors import Ar2Error

GRACE_SECONDS = 10
"""On Ctrl-C or SIGTERM, requests already running get this long to finish."""

HEADER_TIMEOUT_SECONDS = 10.0
"""A request's line and headers must arrive within this long of the connection opening (or of
the request's first byte on a kept-alive connection); else the connection is closed (see
:mod:`ar2.serve.protocol`)."""


def listen(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port`` (port 0: any free port), or a clear error.

    The socket is made with ``IPPROTO_TCP`` as its protocol: asyncio sets TCP_NODELAY only on
    connections from such sockets, and without it a keep-alive connection waits about 40 ms
    per response (Nagle's algorithm against the client's delayed ACK).
    """
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
        )[0]
        sock = socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
            sock.listen(2048)
        except OSError:
            sock.close()
            raise
        return sock
    except OSError as err:
        raise Ar2Error(
            f"cannot listen on {host}:{port} ({err.strerror or err}). "
            "Fix: choose another --port (0 picks a free one) or stop what is using it"
        ) from err


def is_loopback(sock: socket.socket) -> bool:
    """Whether ``sock`` listens on a loopback address only (127.0.0.0/8, ::1).

    Example:
        >>> with socket.create_server(("127.0.0.1", 0)) as s:
        ...     is_loopback(s)
        True
    """
    return ipaddress.ip_address(sock.getsockname()[0]).is_loopback


def url_of(sock: socket.socket) -> str:
    """``http://host:port`` of a listening socket."""
    host, port = sock.getsockname()[:2]
    return f"http://{f'[{host}]' if ':' in host else host}:{port}"


def default_allowed_hosts(sock: socket.socket) -> tuple[str, ...]:
    """The ``Host`` names answered without ``--allowed-hosts``: on loopback, the loopback names
    and the address listened on; elsewhere any.

    Example:
        >>> with socket.create_server(("127.0.0.2", 0)) as s:
        ...     default_allowed_hosts(s)
        ('localhost', '127.0.0.1', '[::1]', '127.0.0.2')
    """
    from ar2.serve.security import ANY_HOST, LOOPBACK_HOSTS

    if not is_loopback(sock):
        return ANY_HOST
    address = url_of(sock).removeprefix("http://").rsplit(":", 1)[0]
    return LOOPBACK_HOSTS + (() if address in LOOPBACK_HOSTS else (address,))


def server(app: Any, quiet: bool = False, header_timeout: float = HEADER_TIMEOUT_SECONDS) -> Any:
    """A ``uvicorn.Server`` for ``app`` that shuts down gracefully and closes connections whose
    request headers take longer than ``header_timeout`` seconds."""
    uvicorn = require("uvicorn", "serve")
    require("httptools", "serve")
    from ar2.serve.protocol import with_header_timeout

    config = uvicorn.Config(
        app,
        http=with_header_timeout(header_timeout),
        log_level="warning" if quiet else "info",
        access_log=not quiet,
        timeout_graceful_shutdown=GRACE_SECONDS,
    )
    return uvicorn.Server(config)


@contextmanager
def in_background(
    app: Any,
    host: str = "127.0.0.1",
    port: int = 0,
    header_timeout: float = HEADER_TIMEOUT_SECONDS,
) -> Iterator[str]:
    """Serve ``app`` from a thread while the block runs; yields the base URL. On exit the server
    finishes the requests in flight and stops."""
    sock = listen(host, port)
    srv = server(app, quiet=True, header_timeout=header_timeout)
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not srv.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.01)
        yield url_of(sock)
    finally:
        srv.should_exit = True
        thread.join(GRACE_SECONDS + 5)
        sock.close()
