"""``emostyle serve``: the HTTP service (Starlette app on uvicorn), reached through the ``emostyle`` command.

    emostyle serve --bundle bundles/mine --port 8000
    curl --data-binary @photo.jpg -H 'Content-Type: image/jpeg' localhost:8000/v1/stylize -o styled.jpg

Everything is checked before the port is opened: the bundle is loaded (one
Stylizer; with ``--workers 1`` it is the one that serves), options and the
address. Exit status: 0 after a clean shutdown (SIGTERM / Ctrl-C: the requests
in flight are finished first), 2 for bad arguments, bundle or address.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shutil
import signal
import threading
import socket
import sys
import tempfile
from typing import Iterator, Sequence

from emostyle_rt.errors import BundleError, EmostyleError, InvalidArgumentError, note, sentence
from emostyle_rt.cli import nonempty_path
from emostyle_rt.logutil import setup_cli_logging
from emostyle_rt.options import add_stylizer_arguments, options_from_args
from emostyle_rt.console import DEFAULT_BUNDLE, bundle_hint, default_bundle
from emostyle_rt.manifest import MANIFEST_NAME, load_manifest

from .config import CONFIG_ENV, SERVE_MAX_BODY, SERVE_MAX_PIXELS, ServeConfig

log = logging.getLogger("emostyle_serve")

EXAMPLES = """examples:
  emostyle serve --bundle bundles/mine                        # http://127.0.0.1:8000, one process
  emostyle serve --bundle bundles/mine --host 0.0.0.0 --port 8080 --max-batch 16 --max-wait-ms 10

  curl --data-binary @photo.jpg -H 'Content-Type: image/jpeg' localhost:8000/v1/stylize -o styled.jpg -D -
  curl -F image=@photo.png -F emotion=happy localhost:8000/v1/stylize -o styled.png
  curl --data-binary @photo.jpg -H 'Content-Type: image/jpeg' -H 'Accept: application/json' \\
       'localhost:8000/v1/stylize?max_side=512&format=webp'       # JSON: emotion, scores, faces, base64 image
  curl --data-binary @photo.jpg -H 'Content-Type: image/jpeg' localhost:8000/v1/classify
  curl localhost:8000/readyz ; curl localhost:8000/metrics
  open http://localhost:8000/ in a browser: photo (pick, drop or paste) and webcam, side by side (--no-ui: none)

batching: requests that arrive within --max-wait-ms of each other (up to --max-batch) share one
classifier run and one style run per style. --queue bounds the requests held at once (reading,
waiting, running); one more gets 429 with Retry-After, so memory stays bounded under any load.
A client that stalls gets 408 and frees its connection and slot: its request line and headers must
arrive within --header-timeout s, its body within --body-timeout s (/readyz says 503 "busy" while the
queue is full; behind nginx and other proxies: docs/serving.md).
SIGTERM or Ctrl-C stops taking connections and finishes the requests in flight (up to
--graceful-timeout seconds). A file literally named "serve" is stylised with: emostyle ./serve -o ...
Scale-out with Ray Serve (replicas of the same app): see docs/serving.md.
"""


def _parser() -> argparse.ArgumentParser:
    d = ServeConfig(bundle="")
    p = argparse.ArgumentParser(prog="emostyle serve", description="Serve a bundle over HTTP: POST /v1/stylize, "
                                "POST /v1/classify, GET /healthz, /readyz, /metrics, and a page to try it at GET /.",
                                epilog=EXAMPLES,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", type=nonempty_path, default=None,
                   help=f"bundle folder (default: $EMOSTYLE_BUNDLE or {DEFAULT_BUNDLE})")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; 0.0.0.0 for all)")
    p.add_argument("--port", type=int, default=8000, help="TCP port (default 8000)")
    p.add_argument("--workers", type=int, default=1,
                   help="processes, each with its own Stylizer, batcher and queue (default 1: one onnxruntime run "
                        "uses every core; more pay with several GPUs, or with EMOSTYLE_CPU_THREADS=1 and one worker "
                        "per core on a machine shared with other jobs: docs/serving.md)")
    p.add_argument("--max-batch", type=int, default=d.max_batch, help=f"requests per batch (default {d.max_batch})")
    p.add_argument("--max-wait-ms", type=float, default=d.max_wait_ms,
                   help=f"how long a batch waits for more requests after its first (default {d.max_wait_ms} ms)")
    p.add_argument("--queue", type=int, default=d.queue,
                   help=f"requests held at once per process before 429 (default {d.queue})")
    p.add_argument("--max-body-mb", type=float, default=SERVE_MAX_BODY / (1 << 20),
                   help=f"largest request body in MiB (default {SERVE_MAX_BODY >> 20}; more: 413)")
    add_stylizer_arguments(
        p.add_argument_group("the Stylizer of each worker (as emostyle; emostyle_rt.StylizerOptions)"),
        max_pixels=SERVE_MAX_PIXELS,
        max_pixels_help=f"largest image in pixels, checked from its header before decoding (default {SERVE_MAX_PIXELS})",
        memory_budget_help="memory one style run of each worker may use, e.g. 2GB (default: the machine's available "
                           "memory split between the workers, at most what keeps a worker near 2.5 GB peak RSS; larger "
                           "photos go in tiles)")
    p.add_argument("--quality", type=int, default=None, help="JPEG / WebP quality of answers 1..100 (default: the library's)")
    p.add_argument("--strip-metadata", action="store_true", help="do not copy the upload's EXIF and ICC profile")
    p.add_argument("--no-ui", action="store_true",
                   help="no page at GET / (by default a browser there gets a page to try photos and the webcam)")
    p.add_argument("--no-warmup", action="store_true", help="say ready without running every graph once first")
    p.add_argument("--header-timeout", type=float, default=d.header_timeout, metavar="S",
                   help=f"seconds a client has to send a request's line and headers, from the connection (or the "
                        f"next request's first byte); then 408 and the connection closes (default {d.header_timeout:g})")
    p.add_argument("--body-timeout", type=float, default=d.body_timeout, metavar="S",
                   help=f"seconds a client has to send a request's whole body once its headers are in; then 408, and "
                        f"its --queue slot is free (default {d.body_timeout:g}: 32 MiB at 4.5 MB/s)")
    p.add_argument("--keep-alive", type=float, default=5.0, metavar="S",
                   help="seconds an idle kept-alive connection stays open (uvicorn's timeout_keep_alive; default 5; "
                        "behind a proxy that keeps upstream connections, more than its idle timeout: docs/serving.md)")
    p.add_argument("--graceful-timeout", type=float, default=30.0,
                   help="seconds a shutdown waits for requests in flight (default 30)")
    p.add_argument("--access-log", action="store_true", help="log every request (uvicorn's access log)")
    p.add_argument("--http", default="auto", choices=("auto", "h11", "httptools"),
                   help="uvicorn's HTTP parser (auto: httptools when installed, else h11)")
    p.add_argument("--loop", default="auto", choices=("auto", "asyncio", "uvloop"),
                   help="uvicorn's event loop (auto: uvloop when installed, else asyncio)")
    p.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def _check_address(host: str, port: int) -> None:
    """Refuse a port out of range or an address that cannot be bound (in use, not ours) before anything loads."""
    if not 0 <= port <= 65535:
        raise InvalidArgumentError(f"--port {port} is out of range." + note("0..65535", port))
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise InvalidArgumentError(f"--host {host!r} is not an address here: {exc.strerror}."
                                   + note("an IP address or host name of this machine", host)) from None
    family, kind, proto, _, addr = infos[0]
    with socket.socket(family, kind, proto) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(addr)
        except OSError as exc:
            raise InvalidArgumentError(f"Cannot listen on {host}:{port}: " + sentence(exc.strerror or exc)
                                       + note("a free port on an address of this machine", f"{host}:{port}")) from None


@contextlib.contextmanager
def _clean_exit_on_signals() -> Iterator[None]:
    """After a graceful shutdown uvicorn re-raises the signal that stopped it; with these no-op handlers that
    ends in a normal return (cleanup runs, exit status 0) instead of the process being killed by the signal."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {sig: signal.signal(sig, lambda *_: None) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


def _config(args: argparse.Namespace) -> ServeConfig:
    if args.workers < 1:
        raise InvalidArgumentError(f"--workers {args.workers} is below 1." + note("an integer >= 1", args.workers))
    if not args.max_body_mb > 0:
        raise InvalidArgumentError(f"--max-body-mb {args.max_body_mb} must be positive." + note("> 0", args.max_body_mb))
    if not args.graceful_timeout >= 0:
        raise InvalidArgumentError(f"--graceful-timeout {args.graceful_timeout} is negative." + note(">= 0", args.graceful_timeout))
    if not args.keep_alive > 0:
        raise InvalidArgumentError(f"--keep-alive {args.keep_alive} must be positive." + note("> 0", args.keep_alive))
    from emostyle_rt.tiling import worker_budget

    options = options_from_args(args)
    if options.memory_budget is None and args.workers > 1:
        # Each worker's share of the machine (they add up to what it has); one worker: the library's own default.
        options = options.replace(memory_budget=worker_budget(args.workers))
    bundle = default_bundle(args.bundle)
    try:
        load_manifest(bundle)
    except BundleError as exc:
        if (bundle / MANIFEST_NAME).is_file():
            raise
        raise BundleError(f"No bundle at {bundle}." + bundle_hint()) from exc
    return ServeConfig(bundle=str(bundle), max_batch=args.max_batch, max_wait_ms=args.max_wait_ms, queue=args.queue,
                       max_body=int(args.max_body_mb * (1 << 20)), quality=args.quality,
                       strip_metadata=args.strip_metadata, warmup=not args.no_warmup,
                       header_timeout=args.header_timeout, body_timeout=args.body_timeout, ui=not args.no_ui,
                       options=options).check()


def main(argv: Sequence[str] | None = None) -> int:
    """``emostyle serve`` entry point; the exit status."""
    args = _parser().parse_args(argv)
    setup_cli_logging(args.quiet, log.name, library=("emostyle_rt",), verbose=args.verbose)
    try:
        config = _config(args)
        _check_address(args.host, args.port)
        from .protocol import http_protocol

        http = http_protocol(args.http, config.header_timeout)  # uvicorn's parser with the header deadline
        from emostyle_rt.stylizer import Stylizer

        # Opened here so that a bad bundle, detector or --no-face fails now, with exit status 2.
        stylizer = Stylizer(config.bundle, options=config.options)
    except EmostyleError as exc:
        log.error("%s", exc)
        return 2
    import uvicorn

    level = "debug" if args.verbose else "warning" if args.quiet else "info"
    common = dict(host=args.host, port=args.port, lifespan="on", log_level=level, access_log=args.access_log,
                  timeout_graceful_shutdown=args.graceful_timeout, http=http, loop=args.loop,
                  timeout_keep_alive=args.keep_alive)
    if args.workers == 1:
        from .app import create_app

        log.info("Serving %s on http://%s:%d (max batch %d, max wait %g ms, queue %d).", config.bundle, args.host,
                 args.port, config.max_batch, config.max_wait_ms, config.queue)
        try:
            with _clean_exit_on_signals():
                uvicorn.Server(uvicorn.Config(create_app(config, stylizer=stylizer), **common)).run()
        finally:
            stylizer.close()
        return 0
    stylizer.close()
    from .app import QUIET_ENV
    from .metrics import MULTIPROC_ENV

    metrics_dir = tempfile.mkdtemp(prefix="emostyle-serve-metrics-")
    os.environ.update({CONFIG_ENV: config.to_env(), MULTIPROC_ENV: metrics_dir, QUIET_ENV: "1" if args.quiet else "0"})
    log.info("Serving %s on http://%s:%d with %d worker processes (memory budget %s each).", config.bundle, args.host,
             args.port, args.workers, "default" if config.memory_budget is None else f"{config.memory_budget / 1e9:.2f} GB")
    try:
        with _clean_exit_on_signals():
            uvicorn.run("emostyle_serve.app:app_from_env", factory=True, workers=args.workers, **common)
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
