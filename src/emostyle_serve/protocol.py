"""uvicorn's HTTP protocols with a deadline for each request's line and headers.

uvicorn has no such deadline: a client that connects and sends half a request
line (or nothing) keeps its connection open for as long as it likes, and
enough of them exhaust the process' file descriptors. ``emostyle serve`` uses
uvicorn's own h11 or httptools protocol with this one addition: the request
line and headers must arrive within ``header_timeout`` seconds of the
connection opening (or, on a kept-alive connection, of the next request's
first byte). Then the client gets ``408 Request Timeout`` and the connection is
closed; a connection that sent nothing at all is closed without an answer (a
408 there could be read as the answer to a request the client sends just
then). The body's deadline is the app's (``emostyle_serve.app``): it holds a
queue slot, which only the app knows about.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import logging
from typing import Any, Callable

from uvicorn.protocols.http.h11_impl import H11Protocol

from emostyle_rt.errors import InvalidArgumentError, note

log = logging.getLogger("emostyle_serve")

#: uvicorn's HTTP parsers (``--http``).
KINDS = ("auto", "h11", "httptools")


def timeout_answer(seconds: float) -> bytes:
    """The raw ``408`` the protocol writes (JSON like the app's errors; the connection closes after it)."""
    body = json.dumps({"error": "RequestTimeoutError",
                       "message": f"The request line and headers did not arrive within {seconds:g} s."
                                  + note(f"the whole header within {seconds:g} s (--header-timeout)",
                                         "a partial request")}).encode()
    return (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\n"
            b"content-length: %d\r\n\r\n" % len(body)) + body


class HeaderDeadline:
    """Mixin over a uvicorn HTTP protocol (h11 or httptools; both keep the request in ``self.cycle``): the timer
    starts when the connection opens, or at the first byte after an answer, and stops when a request's headers
    are in (a new cycle)."""

    def __init__(self, *args: Any, header_timeout: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.header_timeout = header_timeout
        self._timer: Any = None
        self._waiting_since: Any = None  # the request cycle current when the timer started
        self._got_bytes = False

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)  # type: ignore[misc]
        self._start()

    def data_received(self, data: bytes) -> None:
        if self._timer is None and self._idle() and data:  # a kept-alive connection's next request begins
            self._start()
        if self._timer is not None and data:
            self._got_bytes = True
        super().data_received(data)  # type: ignore[misc]
        self._headers_in()

    def on_response_complete(self) -> None:
        super().on_response_complete()  # type: ignore[misc]
        self._headers_in()  # a pipelined request may have started

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop()
        super().connection_lost(exc)  # type: ignore[misc]

    def _idle(self) -> bool:
        cycle = self.cycle  # type: ignore[attr-defined]
        return cycle is None or cycle.response_complete

    def _start(self) -> None:
        self._stop()
        self._waiting_since, self._got_bytes = self.cycle, False  # type: ignore[attr-defined]
        self._timer = self.loop.call_later(self.header_timeout, self._expired)  # type: ignore[attr-defined]

    def _stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _headers_in(self) -> None:
        if self._timer is not None and self.cycle is not self._waiting_since:  # type: ignore[attr-defined]
            self._stop()

    def _expired(self) -> None:
        self._timer = None
        transport = self.transport  # type: ignore[attr-defined]
        if transport.is_closing() or self.cycle is not self._waiting_since:  # type: ignore[attr-defined]
            return
        if self._got_bytes:
            log.info("408: %s sent no complete request line and headers in %g s.",
                     "%s:%d" % self.client if self.client else "a client", self.header_timeout)  # type: ignore[attr-defined]
            transport.write(timeout_answer(self.header_timeout))
        transport.close()


class TimedH11Protocol(HeaderDeadline, H11Protocol):
    """uvicorn's h11 protocol with the header deadline."""


try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # httptools is optional (uvicorn[standard])
    HttpToolsProtocol = None  # type: ignore[assignment,misc]
else:

    class TimedHttpToolsProtocol(HeaderDeadline, HttpToolsProtocol):
        """uvicorn's httptools protocol with the header deadline."""


def http_protocol(kind: str, header_timeout: float) -> Callable[..., Any]:
    """uvicorn's ``http`` argument: the ``kind`` parser ("auto": httptools when installed, as uvicorn picks, else
    h11) with the header deadline. A partial of a module-level class, so ``--workers N`` can pickle it."""
    if kind == "auto":
        kind = "httptools" if importlib.util.find_spec("httptools") is not None else "h11"
    if kind == "httptools" and HttpToolsProtocol is None:
        raise InvalidArgumentError("--http httptools needs the httptools package." + note("httptools installed", "none"))
    cls = TimedH11Protocol if kind == "h11" else globals()["TimedHttpToolsProtocol"]
    return functools.partial(cls, header_timeout=header_timeout)
