"""Typed errors of the HTTP service and how every error of the library maps to an HTTP status.

A client's mistake is a 4xx with a JSON body ``{"error": <type>, "message": <text>}``;
the message is the library's own ("what happened. Note: expected X, available Y"),
so the service refuses exactly what the ``emostyle`` command refuses, for the same reasons.
"""

from __future__ import annotations

from emostyle_rt.errors import (
    BackendError,
    BundleError,
    EmostyleError,
    ImageEncodeError,
    ImageReadError,
    InvalidArgumentError,
    InvalidImageError,
    NoFaceError,
)


class ServeError(EmostyleError):
    """An HTTP request the service refuses; ``status`` is the HTTP status it answers."""

    status = 400


class BodyTooLargeError(ServeError):
    """The request body is larger than ``--max-body`` (refused from Content-Length, or while it streams in)."""

    status = 413


class RequestTimeoutError(ServeError):
    """The client did not send its request (line and headers, or body) within the service's deadline: 408, and
    the connection is closed (the rest of the body is not read)."""

    status = 408


class UnsupportedMediaTypeError(ServeError):
    """The request's Content-Type is not an image, application/octet-stream or multipart/form-data."""

    status = 415


class NotAcceptableError(ServeError):
    """The ``Accept`` header names nothing the service answers (an image format or application/json)."""

    status = 406


class ServiceBusyError(ServeError):
    """The request queue is full: answered 429 with ``Retry-After`` instead of queueing without bound."""

    status = 429

    def __init__(self, message: str, retry_after: int = 1) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ServiceUnavailableError(ServeError):
    """The service is not ready (bundle loading, warm-up) or is shutting down: 503, try again or elsewhere."""

    status = 503

    def __init__(self, message: str, retry_after: int = 1) -> None:
        super().__init__(message)
        self.retry_after = retry_after


#: Library errors -> HTTP status, most specific first. A client's input is 4xx; the service's own trouble is 5xx.
STATUS: tuple[tuple[type[BaseException], int], ...] = (
    (ServeError, 0),  # its own ``status``
    (ImageEncodeError, 422),  # the asked-for format cannot hold this image
    (ImageReadError, 422),  # not an image, truncated, decompression bomb
    (InvalidImageError, 422),  # too small for the style network, wrong shape
    (NoFaceError, 422),  # no face and the no-face policy is "error"
    (InvalidArgumentError, 400),  # unknown emotion, bad max_side, bad format
    (BundleError, 500),
    (BackendError, 500),
    (EmostyleError, 500),
)


def http_status(exc: BaseException) -> int:
    """The HTTP status answering ``exc`` (500 for anything the table does not know)."""
    for kind, status in STATUS:
        if isinstance(exc, kind):
            return exc.status if isinstance(exc, ServeError) else status
    return 500


def error_body(exc: BaseException) -> dict[str, str]:
    """The JSON body of an error answer: the error's type name and its message."""
    if isinstance(exc, EmostyleError):
        return {"error": type(exc).__name__, "message": str(exc)}
    return {"error": "InternalError", "message": "The service failed on this request; the error is in its log."}
