"""The page of ``emostyle serve`` (``GET /``): one static HTML / CSS / JavaScript page shipped in the package.

    GET /                 the page (``static/index.html``)
    GET /ui/<file>        its script (``app.js``, ``smoother.js``), style sheet (``style.css``) and icon
    GET /ui/config.json   what the page takes from the service: labels, emotion -> style, the video path's
                          ``TemporalOptions``, the body limit, how many webcam frames it keeps in flight

No build step, no framework, nothing from another host. The page calls the
public API only (``POST v1/stylize``, ``POST v1/classify``, by URLs relative to
itself, so it works under a Ray Serve route prefix too): it gets no way around
the body, pixel and queue limits. Every answer here carries :data:`HEADERS`: a
Content-Security-Policy that allows this origin only (no inline script or style,
no other host), no framing, no sniffing. ``emostyle serve --no-ui``
(``ServeConfig.ui = False``) leaves these routes out.
"""

from __future__ import annotations

import dataclasses
from importlib import resources
from typing import TYPE_CHECKING, Any, Awaitable, Callable

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from emostyle_rt.errors import note
from emostyle_rt.manifest import Manifest, load_manifest
from emostyle_rt.video import TemporalOptions, default_initial

if TYPE_CHECKING:
    from .app import Service

#: The files the page is made of -> their Content-Type. Nothing else under ``static/`` is served.
FILES = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "smoother.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
    "icon.svg": "image/svg+xml",
}
#: Webcam frames the page has in flight at most (sent, answer not yet shown): 2 keeps the service busy
#: (one frame uploads while the other runs) without a queue that grows.
WEBCAM_IN_FLIGHT = 2
#: This origin only: scripts and styles from files here (no inline code), images from here or the page's own
#: blob: URLs (answers it downloaded), fetch() to here only, no plugins, no framing, no form posts elsewhere.
CSP = "; ".join([
    "default-src 'none'",
    "script-src 'self'",
    "style-src 'self'",
    "img-src 'self' blob:",
    "media-src 'self' blob:",
    "connect-src 'self'",
    "base-uri 'none'",
    "form-action 'none'",
    "frame-ancestors 'none'",
])
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Cache-Control": "no-cache",
}


def _read(name: str) -> bytes:
    return (resources.files(__package__) / "static" / name).read_bytes()


class Page:
    """The page's files (read once) and its config answer, for one ``Service``."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self.files = {name: _read(name) for name in FILES}
        self._manifest: Manifest | None = None

    async def index(self, service: Service, request: Request) -> Response:
        # (Under a route prefix, /emostyle is redirected to /emostyle/ by Starlette: the page's URLs are relative.)
        return Response(self.files["index.html"], media_type=FILES["index.html"], headers=HEADERS)

    async def asset(self, service: Service, request: Request) -> Response:
        name = request.path_params["name"]
        if name not in FILES or name == "index.html":
            return JSONResponse({"error": "HTTPException", "message": f"The page has no file ui/{name}."
                                 + note([n for n in FILES if n != "index.html"], name)},
                                status_code=404, headers=HEADERS)
        return Response(self.files[name], media_type=FILES[name], headers=HEADERS)

    async def config(self, service: Service, request: Request) -> Response:
        if service.stylizer is not None:
            manifest = service.stylizer.manifest
        else:  # the bundle is still loading (Ray Serve replicas open it themselves): its manifest answers
            if self._manifest is None:
                self._manifest = await run_in_threadpool(load_manifest, service.config.bundle, verify_files=False)
            manifest = self._manifest
        return JSONResponse(page_config(service, manifest), headers=HEADERS)


def demo_notice(manifest: Manifest) -> str:
    """The page's line on a demo bundle's untrained parts ("" when nothing is untrained), from the manifest."""
    return f"This service runs a demo bundle that holds {s}." if (s := manifest.untrained_sentence()) else ""


def page_config(service: Service, manifest: Manifest) -> dict[str, Any]:
    """What ``/ui/config.json`` answers (the page keeps no copy of any of it)."""
    labels = tuple(manifest.labels)
    return {
        "labels": list(labels),
        "emotions": {e: manifest.emotions[e] for e in labels},
        "initial": default_initial(labels),  # what the video path styles before its first classification
        "temporal": dataclasses.asdict(TemporalOptions()),  # the video path's defaults, one owner
        "demo": bool(manifest.demo),
        "demo_note": demo_notice(manifest),
        "ready": bool(service.ready),
        "max_body": service.config.max_body,
        "in_flight": WEBCAM_IN_FLIGHT,
    }


Handler = Callable[["Service", Request], Awaitable[Response]]


def routes(service: Service) -> list[tuple[str, str, Handler]]:
    """(path, metrics name, handler) of the page's GET routes; ``create_app`` wraps and mounts them."""
    page = Page(service)
    return [("/", "ui", page.index), ("/ui/config.json", "ui", page.config), ("/ui/{name}", "ui", page.asset)]
