"""Runtime backends: one small runner interface over onnxruntime and TensorRT.

A runner loads one graph and runs it: ``run({input_name: array}) -> {output_name: array}``;
``close()`` frees what it holds. ``runner_for(manifest, key)`` is what the Stylizer
calls. It first asks the optional native TensorRT module
(``emostyle_rt.backends.tensorrt``) for an engine and falls back to onnxruntime,
whose providers, precision and memory strategy are chosen in
``emostyle_rt.backends.onnxruntime``.

The TensorRT module plugs in by providing::

    def find_runner(manifest: Manifest, key: str, *, required: bool = False) -> Runner | None

``key`` is ``"classifier"`` or a style id. It returns None (after logging why at
INFO) when it has no usable engine for this machine: no ``tensorrt`` package, no
GPU, no engine for this GPU architecture / TensorRT version, or a failed
deserialisation. It must import ``tensorrt`` only inside that function. With
``required=True`` (``backend="tensorrt"``) it may raise ``BackendError`` instead
of returning None, to say exactly what is missing. With ``backend="auto"`` the
engine runner is wrapped in a :class:`FallbackRunner`: an input outside the
engine's profiles runs in onnxruntime instead (one warning per shape).
"""

from __future__ import annotations

import importlib
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Mapping, Protocol, runtime_checkable

import numpy as np

from ..errors import BackendError, InvalidImageError, note

if TYPE_CHECKING:
    from ..manifest import ClassifierSpec, Manifest, StyleSpec

log = logging.getLogger(__name__)

BACKENDS = ("auto", "onnxruntime", "tensorrt")
#: "auto": the bundle's verified FP16 graph on a GPU provider when it has one, else FP32.
PRECISIONS = ("auto", "fp32", "fp16")
#: Key of the classifier graph in ``runner_for``; style graphs use their style id.
CLASSIFIER = "classifier"
#: Environment variable that moves the user cache (TensorRT EP engines); see :func:`cache_dir`.
CACHE_ENV = "EMOSTYLE_CACHE_DIR"
_TRT_MODULE = __name__ + ".tensorrt"


class OutsideProfileError(BackendError, InvalidImageError):
    """An input shape lies outside every optimization profile of a TensorRT engine."""


@dataclass(frozen=True)
class TensorInfo:
    """Name, shape (ints, or str/None for dynamic dims) and numpy dtype name of a graph input/output."""

    name: str
    shape: tuple[int | str | None, ...]
    dtype: str


@runtime_checkable
class Runner(Protocol):
    """One loaded graph. ``run`` must be safe to call from several threads at once."""

    name: str  # e.g. "onnxruntime:CPUExecutionProvider", "onnxruntime:CUDAExecutionProvider:fp16", "tensorrt:sm90-..."

    @property
    def inputs(self) -> tuple[TensorInfo, ...]: ...

    @property
    def outputs(self) -> tuple[TensorInfo, ...]: ...

    def run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    def close(self) -> None:
        """Free sessions, device buffers and streams. Idempotent; ``run`` after ``close`` raises BackendError."""
        ...


def cache_dir(explicit: str | os.PathLike | None = None) -> Path:
    """The user cache folder: ``explicit``, else $EMOSTYLE_CACHE_DIR, else $XDG_CACHE_HOME/emostyle-rt, else ~/.cache/emostyle-rt.

    Caches (the TensorRT EP's engines) never go into a bundle: a bundle is a
    verified artifact and may be read-only. Nothing is created here.
    """
    if explicit is not None:
        return Path(explicit)
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".cache") / "emostyle-rt"


def make_runner(
    onnx_path: str | os.PathLike,
    *,
    provider: str | None = None,
    provider_options: dict[str, dict] | None = None,
    precision: str = "fp32",
    cpu_fallback_path: str | os.PathLike | None = None,
    cuda_graph: bool = False,
) -> Runner:
    """An onnxruntime runner for one ONNX file.

    ``provider`` forces "tensorrt", "cuda" or "cpu" (onnxruntime execution
    providers); None picks the best usable one. ``provider_options`` maps a full
    provider name to its options. ``precision`` names the graph's precision (it is
    part of the runner's name); ``cpu_fallback_path`` is the graph to load instead
    if a GPU provider fails and onnxruntime falls back to CPU. ``cuda_graph``:
    replay CUDA graphs for repeated input shapes (CUDA EP only; see ``OrtRunner``).
    """
    from .onnxruntime import OrtRunner

    return OrtRunner(onnx_path, provider=provider, provider_options=provider_options, precision=precision,
                     cpu_fallback_path=cpu_fallback_path, cuda_graph=cuda_graph)


def choose_precision(precision: str, provider: str, spec: ClassifierSpec | StyleSpec) -> str:
    """"fp32" or "fp16" for a graph run by onnxruntime ``provider`` (its full name).

    "auto": the verified FP16 graph on the CUDA or TensorRT EP when the bundle has
    one (FP16 on CPU is slower than FP32), else FP32. "fp16" without an FP16 graph
    is an error naming the export command that adds one.
    """
    if precision not in PRECISIONS:
        raise BackendError(f"Unknown precision {precision!r}." + note(" or ".join(PRECISIONS), precision))
    if precision == "fp16" and spec.fp16 is None:
        raise BackendError(
            f"precision='fp16' was asked for but the bundle has no FP16 graph for {spec.onnx}."
            + note("an fp16 block (emostyle-export --bundle DIR --fp16)", "FP32 only")
        )
    if precision == "auto":
        gpu = provider in ("CUDAExecutionProvider", "TensorrtExecutionProvider")
        return "fp16" if gpu and spec.fp16 is not None else "fp32"
    return precision


def _spec(manifest: Manifest, key: str) -> ClassifierSpec | StyleSpec:
    if key == CLASSIFIER:
        return manifest.classifier
    if key in manifest.styles:
        return manifest.styles[key]
    raise BackendError(
        f"Bundle {manifest.root} has no graph {key!r}." + note(f"{CLASSIFIER!r} or a style id", sorted(manifest.styles))
    )


def ort_runner_for(
    manifest: Manifest,
    key: str,
    *,
    provider: str | None = None,
    precision: str = "auto",
    cuda_graph: bool = False,
    cache: str | os.PathLike | None = None,
) -> Runner:
    """The onnxruntime runner of one graph: provider, precision (FP16 graph or FP32) and TensorRT EP caches decided here."""
    from .onnxruntime import PROVIDERS, choose_providers, trt_ep_options

    spec = _spec(manifest, key)
    providers = choose_providers(provider)
    chosen = choose_precision(precision, providers[0], spec)
    fp32_path = manifest.path(spec.onnx)
    path = manifest.path(spec.fp16.onnx) if chosen == "fp16" and spec.fp16 else fp32_path
    sha = spec.fp16.sha256 if chosen == "fp16" and spec.fp16 else spec.sha256
    options: dict[str, dict] = {}
    if PROVIDERS["tensorrt"] in providers:
        options[PROVIDERS["tensorrt"]] = trt_ep_options(cache_dir(cache), graph_sha256=sha)
    return make_runner(path, provider=provider, provider_options=options or None, precision=chosen,
                       cpu_fallback_path=fp32_path if chosen == "fp16" and precision == "auto" else None,
                       cuda_graph=cuda_graph)


def _tensorrt_runner(manifest: Manifest, key: str, required: bool) -> Runner | None:
    """Ask the optional native TensorRT module for an engine; None if it has none."""
    try:
        module = importlib.import_module(_TRT_MODULE)
    except ModuleNotFoundError as exc:
        if exc.name != _TRT_MODULE:
            raise
        if required:
            raise BackendError(
                "The native TensorRT backend is not part of this emostyle-rt installation."
                + note(f"module {_TRT_MODULE}", "none")
            ) from None
        return None
    return module.find_runner(manifest, key, required=required)


class FallbackRunner:
    """A native TensorRT runner with onnxruntime behind it (``backend="auto"``).

    An input outside every profile of the engine (a 5 px image, a side over the
    profile's maximum) runs in onnxruntime instead: one warning per input shape,
    never an error. The onnxruntime runner is created on first need.
    """

    def __init__(self, primary: Runner, make_fallback: Callable[[], Runner], key: str) -> None:
        self.name = primary.name
        self.key = key
        self._primary = primary
        self._make_fallback = make_fallback
        self._fallback: Runner | None = None
        self._warned: set[tuple[tuple[int, ...], ...]] = set()
        self._lock = threading.Lock()

    @property
    def inputs(self) -> tuple[TensorInfo, ...]:
        return self._primary.inputs

    @property
    def outputs(self) -> tuple[TensorInfo, ...]:
        return self._primary.outputs

    def run(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            return self._primary.run(dict(feed))
        except OutsideProfileError as exc:
            shape = tuple(tuple(np.shape(a)[1:]) for a in feed.values())  # the batch is split, not a reason
            with self._lock:
                if shape not in self._warned:
                    self._warned.add(shape)
                    log.warning("%s: input %s is outside the TensorRT engine's profiles; running it in onnxruntime. %s",
                                self.key, " ".join("x".join(map(str, s)) for s in shape), exc)
                if self._fallback is None:
                    self._fallback = self._make_fallback()
                fallback = self._fallback
            return fallback.run(dict(feed))

    def close(self) -> None:
        with self._lock:
            runners = [self._primary] + ([self._fallback] if self._fallback is not None else [])
            self._fallback = None
        for r in runners:
            r.close()


def runner_for(
    manifest: Manifest,
    key: str,
    *,
    backend: str = "auto",
    provider: str | None = None,
    precision: str = "auto",
    cuda_graph: bool = False,
    cache: str | os.PathLike | None = None,
) -> Runner:
    """The runner for the classifier (``key="classifier"``) or a style id of a bundle.

    ``backend="auto"``: a native TensorRT engine from the bundle when one fits this
    machine (onnxruntime behind it for shapes outside its profiles), else
    onnxruntime. ``"tensorrt"``: a native engine or an error. ``"onnxruntime"``:
    onnxruntime only, with ``provider`` as in ``make_runner``. ``precision``:
    "auto" | "fp32" | "fp16" for onnxruntime (engines are FP16). ``cache``: the
    user cache folder (default :func:`cache_dir`).
    """
    if backend not in BACKENDS:
        raise BackendError(f"Unknown backend {backend!r}." + note(" or ".join(BACKENDS), backend))
    if precision not in PRECISIONS:
        raise BackendError(f"Unknown precision {precision!r}." + note(" or ".join(PRECISIONS), precision))
    if backend == "tensorrt" and provider is not None:
        raise BackendError(
            "An onnxruntime provider was given with backend='tensorrt'."
            + note("provider=None, or backend='onnxruntime'", provider)
        )
    _spec(manifest, key)
    if backend == "tensorrt" or backend == "auto" and provider is None:
        runner = _tensorrt_runner(manifest, key, required=backend == "tensorrt")
        if runner is not None:
            log.info("%s: using %s", key, runner.name)
            if backend == "tensorrt":
                return runner
            return FallbackRunner(runner, lambda: ort_runner_for(manifest, key, precision=precision,
                                                                 cuda_graph=cuda_graph, cache=cache), key)
        if backend == "tensorrt":
            raise BackendError(f"No usable TensorRT engine for {key!r} in bundle {manifest.root}.")
    return ort_runner_for(manifest, key, provider=provider, precision=precision, cuda_graph=cuda_graph, cache=cache)
