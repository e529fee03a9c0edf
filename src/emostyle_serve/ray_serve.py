"""Scale-out: the same ASGI app as a Ray Serve application (replicas, each with its Stylizer and batcher).

    from emostyle_serve import ServeConfig
    from emostyle_serve.ray_serve import application
    from ray import serve

    serve.run(application(ServeConfig(bundle="/models/mine"), num_replicas=4, num_gpus=1), route_prefix="/")

or from a config file: ``serve run emostyle_serve.ray_serve:app bundle=/models/mine num_replicas=2``
(``app`` is the builder Ray Serve's CLI calls with those arguments).

Ray's HTTP proxy spreads requests over the replicas; inside a replica the app
batches what reaches it, exactly as under uvicorn (``max_ongoing_requests`` is
set to the config's ``queue``, so enough requests reach one replica to batch).
Needs ``pip install "ray[serve]"`` (not part of the ``serve`` extra); the
module imports Ray only when called.
"""

from __future__ import annotations

from typing import Any

from emostyle_rt.errors import BackendError, InvalidArgumentError, note

from .config import ServeConfig


def _serve_module() -> Any:
    try:
        from ray import serve
    except ImportError as exc:
        raise BackendError(f"Ray Serve is not installed ({exc}); the scale-out deployment needs it."
                           + note('pip install "ray[serve]"', "no ray.serve")) from exc
    return serve


def application(config: ServeConfig, *, num_replicas: int | str = 1, num_cpus: float = 1.0, num_gpus: float = 0.0,
                name: str = "emostyle", max_ongoing_requests: int | None = None,
                env_vars: dict[str, str] | None = None) -> Any:
    """A bound Ray Serve application serving ``create_app(config)`` from ``num_replicas`` replicas.

    ``num_replicas``: a number or "auto" (Ray Serve's autoscaling). ``num_cpus`` /
    ``num_gpus``: each replica's share (a fraction of a GPU lets replicas share one).
    ``env_vars``: environment of each replica, e.g. ``{"EMOSTYLE_CPU_THREADS": "2"}`` so that
    CPU replicas sharing a node do not each start one onnxruntime thread per core.
    The bundle path must exist on every node that runs a replica.
    """
    serve = _serve_module()
    config = config.check()
    if not (num_replicas == "auto" or isinstance(num_replicas, int) and not isinstance(num_replicas, bool)
            and num_replicas >= 1):
        raise InvalidArgumentError("num_replicas must be an integer >= 1 or 'auto'." + note(">= 1 or 'auto'", num_replicas))

    def build_app() -> Any:  # evaluated on each replica: the bundle loads there
        from emostyle_serve.app import create_app

        return create_app(config)

    ingress = serve.ingress(build_app)()
    deployment = serve.deployment(
        ingress, name=name, num_replicas=num_replicas,
        ray_actor_options={"num_cpus": num_cpus, "num_gpus": num_gpus,
                           **({"runtime_env": {"env_vars": dict(env_vars)}} if env_vars else {})},
        max_ongoing_requests=max_ongoing_requests or config.queue)
    return deployment.bind()


def app(args: dict[str, str]) -> Any:
    """Builder for ``serve run emostyle_serve.ray_serve:app bundle=DIR [num_replicas=N num_gpus=G ...]``."""
    known = {"num_replicas", "num_cpus", "num_gpus", "name"}
    fields = {k: v for k, v in args.items() if k not in known}
    flag = lambda v: v.lower() in ("1", "true", "yes")  # noqa: E731
    conversions = {"max_batch": int, "queue": int, "max_body": int, "max_wait_ms": float,
                   "header_timeout": float, "body_timeout": float, "quality": int, "strip_metadata": flag,
                   "warmup": flag, "ui": flag,
                   # the Stylizer's options (StylizerOptions; the others are text)
                   "max_pixels": int, "margin": float, "verify": flag, "cuda_graph": flag}
    try:
        cfg = ServeConfig(**{k: conversions.get(k, str)(v) for k, v in fields.items()})
        replicas = args.get("num_replicas", "1")
        return application(cfg, num_replicas=replicas if replicas == "auto" else int(replicas),
                           num_cpus=float(args.get("num_cpus", 1)), num_gpus=float(args.get("num_gpus", 0)),
                           name=args.get("name", "emostyle"))
    except (TypeError, ValueError) as exc:
        raise InvalidArgumentError(f"Bad Ray Serve arguments: {exc}."
                                   + note("bundle=DIR, ServeConfig fields and StylizerOptions names, num_replicas, "
                                          "num_cpus, num_gpus",
                                          sorted(args))) from exc
