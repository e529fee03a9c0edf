"""The ASGI app of ``emostyle serve`` (Starlette): stylize and classify over HTTP, health, readiness, metrics.

    POST /v1/stylize   an image (raw body with an image Content-Type, or multipart field ``image``);
                       ``emotion``, ``max_side``, ``format`` as query parameters or form fields.
                       Answers the styled image (the upload's format, or ``format`` / ``Accept``) with
                       X-Emotion, X-Emotion-Source, X-Emotion-Scores, X-Style, X-Face headers; or, with
                       ``Accept: application/json``, JSON with the image in base64.
    POST /v1/classify  the same upload; JSON: emotion, scores, faces.
    GET  /healthz      200 while the process answers (liveness).
    GET  /readyz       200 once the bundle is loaded and every graph has run once, and while a request would be
                       admitted; else 503 (loading, failed, shutting down, or busy: --queue requests held).
    GET  /metrics      Prometheus text format.
    GET  /             a page to try it in a browser (photo and webcam; ``emostyle_serve.ui``); not with ``ui=False``.

Errors are JSON ``{"error": type, "message": ...}`` with the status of ``errors.http_status``.
Nothing blocks the event loop: decoding and encoding run in the thread pool,
inference on the batcher's thread. ``create_app(config)`` is also what Ray Serve
deploys (``emostyle_serve.ray_serve``).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import os
import threading
import time
from typing import Any, AsyncIterator, Awaitable, Callable

import numpy as np
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from emostyle_rt.errors import InvalidArgumentError, note
from emostyle_rt.stylizer import StyleResult, Stylizer

from . import codec, ui
from .batcher import Batcher, BatchStats, Job
from .config import ServeConfig
from .errors import (
    BodyTooLargeError,
    RequestTimeoutError,
    ServeError,
    ServiceBusyError,
    ServiceUnavailableError,
    error_body,
    http_status,
)
from .metrics import Metrics

log = logging.getLogger("emostyle_serve")

#: Form fields and query parameters a request may carry besides the image.
PARAMS = ("emotion", "max_side", "format")
#: Set to "1" for worker processes of ``emostyle serve -q``.
QUIET_ENV = "EMOSTYLE_SERVE_QUIET"
#: Size of the synthetic warm-up image (every graph runs once on it before /readyz says ready).
WARMUP_SIDE = 64


class Service:
    """The app's state: config, Stylizer, batcher, admission count and readiness."""

    def __init__(self, config: ServeConfig, stylizer: Stylizer | None = None) -> None:
        self.config = config.check()
        self.stylizer = stylizer
        self._owns_stylizer = stylizer is None  # a Stylizer handed in is the caller's to close
        self.metrics = Metrics()
        self.batcher: Batcher | None = None
        self.ready = False
        self.closing = False
        self.error: str | None = None
        self.admitted = 0
        self.warmup_seconds: float | None = None
        self._loader: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    def load(self) -> None:
        """Open the bundle, warm every graph up, start the batcher (the loader thread; errors go to /readyz)."""
        try:
            started = time.perf_counter()
            c = self.config
            if self.stylizer is None:
                self.stylizer = Stylizer(c.bundle, options=c.options)
            for label in self.stylizer.labels:
                self.metrics.emotions.labels(label, "face")
            if c.warmup:
                self._warm_up(self.stylizer)
            self.batcher = Batcher(self.stylizer, max_batch=c.max_batch, max_wait=c.max_wait_ms / 1000,
                                   capacity=c.queue, on_batch=self._observe_batch,
                                   on_depth=self.metrics.queue_depth.set)
            self.warmup_seconds = time.perf_counter() - started
            self.ready = not self.closing
            self.metrics.ready.set(1 if self.ready else 0)
            log.info("Ready: bundle %s loaded and warmed up in %.1f s.", self.stylizer.manifest.root,
                     self.warmup_seconds)
        except Exception as exc:  # noqa: BLE001 - reported by /readyz and the log; the process stays up to say so
            self.error = f"{type(exc).__name__}: {exc}"
            log.error("The service cannot start: %s", self.error)

    @staticmethod
    def _warm_up(st: Stylizer) -> None:
        """Every graph loaded (face detector too), then one classification and one run of every style graph
        on a small synthetic image (first runs allocate; a client should not pay for them)."""
        st.preload()
        side = max(WARMUP_SIDE, st.manifest.min_side)
        ramp = np.linspace(0, 255, side, dtype=np.float32)
        image = np.dstack([np.add.outer(ramp, ramp) / 2, np.tile(ramp, (side, 1)), np.tile(ramp[:, None], (1, side))])
        image = image.astype(np.uint8)
        st.classify_batch([image])
        first_emotion: dict[str, str] = {}
        for emotion, style in st.manifest.emotions.items():
            first_emotion.setdefault(style, emotion)
        for emotion in first_emotion.values():
            st.stylize_batch([image], emotion=emotion)

    def _observe_batch(self, s: BatchStats) -> None:
        self.metrics.batch_size.observe(s.size)
        self.metrics.batch_seconds.observe(s.seconds)

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        """Load in the background (so /healthz answers at once and /readyz says 503 until ready); drain at exit."""
        self._loader = threading.Thread(target=self.load, name="emostyle-loader", daemon=True)
        self._loader.start()
        try:
            yield
        finally:
            await run_in_threadpool(self.shutdown)

    def shutdown(self, timeout: float | None = None) -> None:
        """Stop admitting, finish what is queued, close the Stylizer. Blocking: call from a thread."""
        self.closing, self.ready = True, False
        self.metrics.ready.set(0)
        if self._loader is not None:
            self._loader.join(timeout)
        if self.batcher is not None:
            self.batcher.close(timeout)
        if self.stylizer is not None and self._owns_stylizer:
            self.stylizer.close()
        Metrics.process_exit(os.getpid())

    # -- admission ---------------------------------------------------------------------------

    @property
    def saturated(self) -> bool:
        """Whether the next request would be refused with 429 (``queue`` requests held)."""
        return self.admitted >= self.config.queue

    @contextlib.contextmanager
    def admit(self) -> Any:
        """Count a request in, or refuse it at once: 503 (not ready, shutting down), 429 (``queue`` admitted)."""
        if self.closing:
            raise ServiceUnavailableError("The service is shutting down." + note("a running service", "shutdown"))
        if not self.ready or self.batcher is None:
            what = f"failed to start ({self.error})" if self.error else "loading the bundle and warming up"
            raise ServiceUnavailableError(f"The service is not ready: {what}." + note("GET /readyz = 200", "503"),
                                          retry_after=5)
        if self.saturated:
            raise ServiceBusyError(
                f"Too many requests at once ({self.admitted} admitted); try again after Retry-After seconds."
                + note(f"at most {self.config.queue} at once (--queue)", self.admitted + 1),
                retry_after=self.batcher.retry_after(self.admitted))
        self.admitted += 1
        self.metrics.in_flight.inc()
        try:
            yield
        finally:
            self.admitted -= 1
            self.metrics.in_flight.dec()


# -- request reading ---------------------------------------------------------------------------


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 once it passes ``limit`` bytes (from Content-Length before reading)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.strip().isdigit() and int(declared) > limit:
        raise BodyTooLargeError(f"The request body of {int(declared)} bytes is too large."
                                + note(f"at most {limit} bytes (--max-body)", int(declared)))
    # One growing buffer, not a list of chunks: a refused body's memory goes back to the OS in one piece
    # (realloc'd past malloc's mmap threshold) instead of fragmenting the heap with thousands of 64 kB chunks.
    body = bytearray()
    async for chunk in request.stream():
        if len(body) + len(chunk) > limit:
            raise BodyTooLargeError(f"The request body is larger than {limit} bytes."
                                    + note(f"at most {limit} bytes (--max-body)", f"more than {limit}"))
        body += chunk
    return bytes(body)


async def read_upload(request: Request, limit: int, timeout: float | None = None) -> tuple[bytes, dict[str, str]]:
    """(image bytes, parameters) of a raw or multipart upload; query parameters, then form fields over them.
    ``timeout``: seconds the client has to send the whole body (``RequestTimeoutError``, 408, after that)."""
    kind = codec.check_content_type(request.headers.get("content-type"))
    try:
        body = await asyncio.wait_for(read_body(request, limit), timeout)
    except asyncio.TimeoutError:
        raise RequestTimeoutError(
            f"The request body did not arrive within {timeout:g} s." + note(
                f"the whole body within {timeout:g} s (--body-timeout)",
                f"{request.headers.get('content-length') or 'an unknown number of'} bytes announced, not all sent")
        ) from None
    params = {k: request.query_params[k] for k in PARAMS if k in request.query_params}
    if kind == "raw":
        return body, params

    async def replay() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    try:  # two files allowed by the parser, so that a second one is named in the refusal below
        form = await Request(request.scope, replay).form(max_files=2, max_fields=len(PARAMS) + 2,
                                                         max_part_size=64 << 10)
    except HTTPException as exc:
        more = "Too many files" in str(exc.detail)
        raise InvalidArgumentError(
            ("The multipart body has more than one file; send one image per request."
             if more else f"The multipart body cannot be parsed: {str(exc.detail).rstrip('.')}.")
            + note("multipart/form-data with one file, in a field 'image'",
                   "3 or more files" if more else "a malformed body")) from None
    try:
        files = [(k, v) for k, v in form.multi_items() if isinstance(v, UploadFile)]
        if len(files) > 1:
            raise InvalidArgumentError("The multipart body has more than one file; send one image per request."
                                       + note("multipart/form-data with one file, in a field 'image'",
                                              f"{len(files)} files (fields {', '.join(repr(k) for k, _ in files)})"))
        if not files:
            raise InvalidArgumentError("The multipart body has no file." + note("a file field 'image'",
                                                                                 sorted(k for k, _ in form.multi_items())))
        data = await files[0][1].read()
        params.update({k: v for k, v in form.multi_items() if k in PARAMS and isinstance(v, str)})
        return data, params
    finally:
        await form.close()


# -- answers -------------------------------------------------------------------------------------


def _scores(scores: dict[str, float]) -> str:
    return ",".join(f"{k}={v:.6f}" for k, v in scores.items())


def result_headers(res: StyleResult) -> dict[str, str]:
    """X- headers carrying what the JSON answer would: emotion, how it was decided, scores, style, face box."""
    h = {"X-Emotion": res.emotion, "X-Emotion-Source": res.source, "X-Style": res.style}
    if res.scores:
        h["X-Emotion-Scores"] = _scores(res.scores)
    if res.face is not None:
        h["X-Face"] = ",".join(str(int(v)) for v in res.face.box)
    return h


def error_response(exc: BaseException) -> JSONResponse:
    status = http_status(exc)
    headers = {"Retry-After": str(exc.retry_after)} if isinstance(exc, (ServiceBusyError, ServiceUnavailableError)) else None
    if isinstance(exc, RequestTimeoutError):  # the rest of the body is never read: the connection cannot be reused
        headers = {"Connection": "close"}
    return JSONResponse(error_body(exc), status_code=status, headers=headers)


Handler = Callable[[Service, Request], Awaitable[Response]]


def endpoint(service: Service, name: str, handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    """``handler`` with errors turned into JSON answers and its requests counted and timed."""

    async def run(request: Request) -> Response:
        started = time.perf_counter()
        try:
            response = await handler(service, request)
        except ClientDisconnect:
            response = JSONResponse({"error": "ClientDisconnect", "message": "The client went away."}, status_code=499)
        except ServeError as exc:
            response = error_response(exc)
        except Exception as exc:  # noqa: BLE001 - a request never takes the worker down
            if http_status(exc) >= 500:
                log.error("%s failed: %s", name, exc, exc_info=not isinstance(exc, ServeError))
            response = error_response(exc)
        service.metrics.requests.labels(name, str(response.status_code)).inc()
        service.metrics.latency.labels(name).observe(time.perf_counter() - started)
        return response

    return run


async def _infer(service: Service, request: Request, classify_only: bool) -> tuple[Any, bytes, codec.Answer]:
    c = service.config
    data, params = await read_upload(request, c.max_body, c.body_timeout)
    accept = None if classify_only else request.headers.get("accept")  # classify always answers JSON
    answer = codec.negotiate(accept, codec.sniff_format(data), codec.parse_format(params.get("format")))
    max_side = codec.parse_max_side(params.get("max_side"))
    image = await run_in_threadpool(codec.decode, data, c.max_pixels)
    batcher = service.batcher
    if batcher is None:  # admit() let it in, so the service is closing under it
        raise ServiceUnavailableError("The service is shutting down." + note("a running service", "shutdown"))
    job = Job(image, emotion=params.get("emotion") or None, max_side=max_side, classify_only=classify_only)
    result = await asyncio.wrap_future(batcher.submit(job))
    return result, data, answer


async def stylize(service: Service, request: Request) -> Response:
    with service.admit():
        res, data, answer = await _infer(service, request, classify_only=False)
        c = service.config
        body = await run_in_threadpool(codec.encode, res.image, answer, None if c.strip_metadata else data, c.quality)
        service.metrics.emotions.labels(res.emotion, res.source).inc()
        if answer.json:
            payload = {**res.summary(), "format": answer.format, "content_type": answer.mime,
                       "width": int(res.image.shape[1]), "height": int(res.image.shape[0]),
                       "image": await run_in_threadpool(lambda: base64.b64encode(body).decode("ascii"))}
            return JSONResponse(payload)
        return Response(body, media_type=answer.mime, headers=result_headers(res))


async def classify(service: Service, request: Request) -> Response:
    with service.admit():
        res, _, _ = await _infer(service, request, classify_only=True)  # a Classification
        service.metrics.emotions.labels(res.emotion, res.source).inc()
        return JSONResponse(res.summary())


async def healthz(service: Service, request: Request) -> Response:
    return JSONResponse({"status": "shutting down" if service.closing else "ok"})


async def readyz(service: Service, request: Request) -> Response:
    if service.ready and service.saturated:  # a request now would get 429: say so, a balancer sends it elsewhere
        retry = service.batcher.retry_after(service.admitted) if service.batcher is not None else 1
        return JSONResponse({"status": "busy", "admitted": service.admitted, "queue": service.config.queue,
                             "error": None}, status_code=503, headers={"Retry-After": str(retry)})
    if service.ready:
        st = service.stylizer
        return JSONResponse({"status": "ready", "bundle": str(st.manifest.root) if st else None,
                             "demo": bool(st.manifest.demo) if st else None, "labels": list(st.labels) if st else [],
                             "warmup_seconds": service.warmup_seconds})
    status = "shutting down" if service.closing else "failed" if service.error else "loading"
    return JSONResponse({"status": status, "error": service.error}, status_code=503,
                        headers={"Retry-After": "5"})


async def metrics(service: Service, request: Request) -> Response:
    if service.batcher is not None:
        service.metrics.queue_depth.set(service.batcher.depth)
    body, content_type = await run_in_threadpool(service.metrics.render)
    return Response(body, media_type=content_type)


async def _not_found(request: Request, exc: HTTPException) -> Response:
    return JSONResponse({"error": "HTTPException", "message": f"{request.method} {request.url.path}: {exc.detail}."
                         + note("POST /v1/stylize, POST /v1/classify, GET /healthz, /readyz, /metrics",
                                request.url.path)}, status_code=exc.status_code, headers=exc.headers)


def create_app(config: ServeConfig, *, stylizer: Stylizer | None = None) -> Starlette:
    """The service as an ASGI app; the bundle loads in the background when the app starts (lifespan).

    ``stylizer``: use this one instead of opening ``config.bundle`` (tests, or a caller that already has one;
    it stays open at shutdown).
    ``app.state.service`` is the ``Service``.
    """
    service = Service(config, stylizer)
    routes = [
        Route("/v1/stylize", endpoint(service, "stylize", stylize), methods=["POST"]),
        Route("/v1/classify", endpoint(service, "classify", classify), methods=["POST"]),
        Route("/healthz", endpoint(service, "healthz", healthz), methods=["GET"]),
        Route("/readyz", endpoint(service, "readyz", readyz), methods=["GET"]),
        Route("/metrics", endpoint(service, "metrics", metrics), methods=["GET"]),
    ]
    if config.ui:
        routes += [Route(path, endpoint(service, name, h), methods=["GET"]) for path, name, h in ui.routes(service)]
    app = Starlette(routes=routes, lifespan=service.lifespan, exception_handlers={HTTPException: _not_found})
    app.state.service = service
    return app


def app_from_env() -> Starlette:
    """The app of a ``--workers N`` process: the config comes from ``$EMOSTYLE_SERVE_CONFIG`` (uvicorn's factory)."""
    from emostyle_rt.logutil import setup_cli_logging

    setup_cli_logging(os.environ.get(QUIET_ENV) == "1", log.name, library=("emostyle_rt",))
    return create_app(ServeConfig.from_env())
