"""emostyle-serve: the HTTP service of emostyle-rt (``emostyle serve``; the ``serve`` extra).

``create_app(ServeConfig(bundle=...))`` is a Starlette ASGI app: batched
stylize / classify endpoints over one ``Stylizer``, health, readiness and
Prometheus metrics. uvicorn runs it (``emostyle serve``); Ray Serve deploys the
same app as replicas (``emostyle_serve.ray_serve``). The runtime ``emostyle_rt``
never imports this package.
"""

from __future__ import annotations

from .app import create_app
from .batcher import Batcher, Job
from .config import ServeConfig

__all__ = ["Batcher", "Job", "ServeConfig", "create_app"]
