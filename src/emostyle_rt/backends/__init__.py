"""Runtime backends: one small runner interface over onnxruntime, TensorRT, AOTInductor and OpenVINO.

A runner loads one graph and runs it: ``run({input_name: array}) -> {output_name: array}``;
``close()`` frees what it holds (:mod:`.base`). ``runner_for(manifest, key)`` is
what the Stylizer calls. With ``backend="auto"`` it asks each compiled-engine
backend of :data:`ENGINES` in turn (native TensorRT engine, then AOTInductor
package, then OpenVINO on a CPU-only machine) and falls back to onnxruntime, whose providers, precision and memory
strategy are chosen in :mod:`.ort`.

An engine backend is a module that provides::

    RANGE: str  # how its shape range is called in messages, e.g. "the TensorRT engine's profiles"
    HAS_CLASSIFIER: bool  # False: it builds style graphs only; the classifier always runs in onnxruntime
    def find_runner(manifest: Manifest, key: str, *, required: bool = False) -> Runner | None
    def check(manifest: Manifest, key: str) -> None  # find_runner(required=True)'s refusal, loading nothing
    PRECISIONS: tuple[str, ...]  # optional: the ``precision=`` values it serves, passed to find_runner as
                                 # ``precision=``; absent: auto/fp32/fp16 (its build decides), not passed

``key`` is ``"classifier"`` or a style id. It returns None (after logging why)
when it has no usable engine for this machine, and imports its heavy library
(tensorrt, torch) only once an engine matches. With ``required=True``
(``backend="tensorrt"`` / ``"aoti"``) it raises ``BackendError`` instead, saying
exactly what is missing. With ``backend="auto"`` the engine runner is wrapped in
a :class:`FallbackRunner`: an input outside the engine's range runs in
onnxruntime instead (one warning per shape).
"""

from __future__ import annotations

import logging
import os
import threading
from types import ModuleType
from typing import TYPE_CHECKING, Any, Callable, Mapping

import numpy as np

from ..bundle.compiled import CLASSIFIER_KEY
from ..errors import BackendError, note
from ..logutil import warn_once
from . import aoti, openvino, tensorrt
from . import ort as ort_backend
from .lazy import Lazy
from .base import CACHE_ENV, GraphLoader, OutsideProfileError, Runner, TensorInfo, cache_dir, is_gpu

if TYPE_CHECKING:
    from ..manifest import ClassifierSpec, Manifest, StyleSpec

__all__ = ["BACKENDS", "CACHE_ENV", "CLASSIFIER", "ENGINES", "PRECISIONS", "FailoverRunner", "backend_names", "FallbackRunner", "GraphLoader", "Lazy", "OutsideProfileError",
           "Runner", "TensorInfo", "cache_dir", "check_engines", "is_gpu", "LOADERS", "load_graph", "choose_precision", "make_runner", "ort_runner_for",
           "runner_for"]

log = logging.getLogger(__name__)

#: Compiled-engine backends, in the order ``backend="auto"`` tries them: name -> module (``find_runner``, ``RANGE``).
ENGINES: dict[str, ModuleType] = {"tensorrt": tensorrt, "aoti": aoti, "openvino": openvino}
#: Backends that open one ONNX file as it is (MTCNN's graphs, the tiled graphs, a bundle's graphs with
#: ``backend=<name>``): name -> module with ``load_graph(loader: GraphLoader) -> Runner``. A new one is a module
#: and a line here.
LOADERS: dict[str, ModuleType] = {"onnxruntime": ort_backend, "openvino": openvino}
BACKENDS = ("auto", "onnxruntime", *ENGINES)
#: "auto": the bundle's verified FP16 graph on a GPU provider when it has one, else FP32. "bf16": style graphs in
#: OpenVINO at bfloat16 on a CPU that has it (AVX512-BF16 / AMX), gated at PSNR >= 40 dB against FP32 (the classifier
#: stays FP32: it takes under a millisecond).
PRECISIONS = ("auto", "fp32", "fp16", "bf16")
#: The precisions an engine without a ``PRECISIONS`` attribute serves (its build decides the rest).
_ENGINE_PRECISIONS = ("auto", "fp32", "fp16")
#: Key of the classifier graph in ``runner_for``; style graphs use their style id.
CLASSIFIER = CLASSIFIER_KEY  # the bundle format owns the runtime key (emostyle_rt.bundle.compiled)


def backend_names() -> tuple[str, ...]:
    """Every ``backend=`` value, in order: "auto", "onnxruntime", the engines, then loaders registered in
    :data:`LOADERS` (:data:`BACKENDS` is the built-in ones; this also sees a backend registered later)."""
    return tuple(dict.fromkeys([*BACKENDS, *ENGINES, *LOADERS]))


def load_graph(onnx_path: str | os.PathLike, **options: Any) -> Runner:
    """The one loader of an ONNX file: MTCNN's graphs, the tiled graphs and ``runner_for``'s plain paths.

    Args:
        onnx_path: The graph file.
        **options: The other fields of :class:`GraphLoader` (backend, provider, precision, threads, small,
            provider_options, cpu_fallback_path, cuda_graph, cache).

    Raises:
        BackendError: An unknown backend, or the backend cannot load the graph as asked.
    """
    return GraphLoader(onnx_path, **options)()


def make_runner(
    onnx_path: str | os.PathLike,
    *,
    provider: str | None = None,
    provider_options: dict[str, dict] | None = None,
    precision: str = "fp32",
    cpu_fallback_path: str | os.PathLike | None = None,
    cuda_graph: bool = False,
    small: bool = False,
    threads: int = 0,
) -> Runner:
    """An onnxruntime runner for one ONNX file.

    ``provider`` forces "tensorrt", "cuda" or "cpu" (onnxruntime execution
    providers); None picks the best usable one. ``provider_options`` maps a full
    provider name to its options. ``precision`` names the graph's precision (it is
    part of the runner's name); ``cpu_fallback_path`` is the graph to load instead
    if a GPU provider fails and onnxruntime falls back to CPU. ``cuda_graph``:
    replay CUDA graphs for repeated input shapes (CUDA EP only; see ``OrtRunner``). ``small``: a graph of a
    few ms per run (MTCNN's, the classifier), whose CPU threads do not spin between runs. ``threads``:
    intra-op threads (0: the default). :func:`load_graph` with ``backend="onnxruntime"``.
    """
    return load_graph(onnx_path, backend="onnxruntime", provider=provider, provider_options=provider_options,
                      precision=precision, cpu_fallback_path=cpu_fallback_path, cuda_graph=cuda_graph, small=small,
                      threads=threads)


def choose_precision(precision: str, provider: str, spec: ClassifierSpec | StyleSpec) -> str:
    """"fp32" or "fp16" for a graph run by onnxruntime ``provider`` (its full name).

    "auto": the verified FP16 graph on the CUDA or TensorRT EP when the bundle has
    one (FP16 on CPU is slower than FP32), else FP32. "fp16" without an FP16 graph
    is an error naming the export command that adds one.
    """
    if precision not in PRECISIONS:
        raise BackendError(f"Unknown precision {precision!r}." + note(" or ".join(PRECISIONS), precision))
    if precision == "bf16":
        raise BackendError(
            "precision='bf16' runs in OpenVINO only (style graphs, on a CPU with AVX512-BF16 or AMX), not onnxruntime."
            + note("backend 'auto' or 'openvino' with OpenVINO installed (pip install 'emostyle-rt[cpu]')", provider))
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
    spec = _spec(manifest, key)
    providers = ort_backend.choose_providers(provider)
    chosen = choose_precision(precision, providers[0], spec)
    fp32_path = manifest.path(spec.onnx)
    path = manifest.path(spec.fp16.onnx) if chosen == "fp16" and spec.fp16 else fp32_path
    sha = spec.fp16.sha256 if chosen == "fp16" and spec.fp16 else spec.sha256
    options: dict[str, dict] = {}
    trt_ep = ort_backend.PROVIDERS["tensorrt"]
    if trt_ep in providers:
        options[trt_ep] = ort_backend.trt_ep_options(cache_dir(cache), graph_sha256=sha)
    return make_runner(path, provider=provider, provider_options=options or None, precision=chosen,
                       cpu_fallback_path=fp32_path if chosen == "fp16" and precision == "auto" else None,
                       cuda_graph=cuda_graph, small=key == CLASSIFIER)


class _Wrapper:
    """A runner in front of another (``_primary``): its inputs and outputs are the primary's."""

    _primary: Runner

    @property
    def inputs(self) -> tuple[TensorInfo, ...]:
        return self._primary.inputs

    @property
    def outputs(self) -> tuple[TensorInfo, ...]:
        return self._primary.outputs


class FallbackRunner(_Wrapper):
    """A compiled-engine runner (TensorRT, AOTInductor) with onnxruntime behind it (``backend="auto"``).

    An input outside the engine's range (a 5 px image, a side over the range's
    maximum) runs in onnxruntime instead: one warning per input shape, never an
    error. The onnxruntime runner is created on first need.
    """

    def __init__(self, primary: Runner, make_fallback: Callable[[], Runner], key: str,
                 what: str = "the engine's range") -> None:
        self.name = primary.name
        self.device = getattr(primary, "device", "cpu")
        self.key, self.what = key, what
        self._primary = primary
        self._make_fallback = make_fallback
        self._fallback: Runner | None = None
        self._warned: set[tuple[tuple[int, ...], ...]] = set()
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> object:
        """``memory_calibration`` (the tiling planner's) is the engine's, where it says one."""
        if name == "memory_calibration":
            return getattr(self._primary, name)
        raise AttributeError(name)


    def run(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            return self._primary.run(dict(feed))
        except OutsideProfileError as exc:
            shape = tuple(tuple(np.shape(a)[1:]) for a in feed.values())  # the batch is split, not a reason
            warn_once(log, self._warned, shape, "%s: input %s is outside %s; running it in onnxruntime. %s",
                      self.key, " ".join("x".join(map(str, s)) for s in shape), self.what, exc)
            with self._lock:
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


class FailoverRunner(_Wrapper):
    """A runner on a preferred provider with another behind it, for a provider that may fail at its first run.

    onnxruntime's TensorRT EP may build its engine at the first run, not at load,
    and fail there. The first ``BackendError`` of ``primary`` logs one warning
    (``what`` names the graph and provider, ``fallback_name`` where it goes),
    closes ``primary``, calls ``on_failover()`` and runs that input and every
    later one on ``make_fallback()``'s runner, which this wrapper does not own
    (its creator closes it). Errors of the fallback are raised. ``what`` is the
    warning's subject ("The TensorRT EP failed to run the tile graph of X at WxH").
    """

    def __init__(self, primary: Runner, make_fallback: Callable[[], Runner], *, what: str, fallback_name: str,
                 on_failover: Callable[[], None] | None = None, logger: logging.Logger | None = None) -> None:
        self.name, self.device = primary.name, getattr(primary, "device", "cpu")
        self._primary, self._make_fallback = primary, make_fallback
        self._what, self._fallback_name = what, fallback_name
        self._on_failover, self._log = on_failover, logger or log
        self._failed = False
        self._lock = threading.Lock()


    def run(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if not self._failed:
            try:
                return self._primary.run(dict(feed))
            except BackendError as exc:
                with self._lock:
                    first, self._failed = not self._failed, True
                if first:
                    self._log.warning("%s (%s); %s.", self._what, exc, self._fallback_name)
                    self._primary.close()
                    if self._on_failover is not None:
                        self._on_failover()
        return self._make_fallback().run(dict(feed))

    def close(self) -> None:
        self._primary.close()


def _serves(engine: ModuleType) -> tuple[str, ...]:
    return getattr(engine, "PRECISIONS", _ENGINE_PRECISIONS)


def _precision_arg(engine: ModuleType, precision: str) -> dict[str, str]:
    """``precision=`` for engines that declare ``PRECISIONS`` (they pick their precision at load time)."""
    return {"precision": precision} if hasattr(engine, "PRECISIONS") else {}


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

    ``backend="auto"``: the first compiled engine of :data:`ENGINES` that fits
    this machine (a native TensorRT engine, then an AOTInductor package), with
    onnxruntime behind it for shapes outside its range, else onnxruntime.
    On a machine without a GPU provider, OpenVINO runs the style graphs when it
    is installed (gated against onnxruntime; :mod:`.openvino`).
    ``"tensorrt"`` / ``"aoti"`` / ``"openvino"``: that engine or an error (AOTInductor builds no
    classifier: it runs in onnxruntime). ``"onnxruntime"``:
    onnxruntime only, with ``provider`` as in ``make_runner``. ``precision``:
    "auto" | "fp32" | "fp16" for onnxruntime (TensorRT and AOTInductor have their own, from the
    build); "bf16": style graphs in OpenVINO at bfloat16 (verified at first use).
    ``cache``: the user cache folder (default :func:`cache_dir`).
    """
    known = backend_names()
    if backend not in known:
        raise BackendError(f"Unknown backend {backend!r}." + note(" or ".join(known), backend))
    if precision not in PRECISIONS:
        raise BackendError(f"Unknown precision {precision!r}." + note(" or ".join(PRECISIONS), precision))
    if backend not in ("auto", "onnxruntime") and provider is not None:
        raise BackendError(
            f"An onnxruntime provider was given with backend={backend!r}."
            + note("provider=None, or backend='onnxruntime'", provider)
        )
    _spec(manifest, key)
    if precision == "bf16" and key == CLASSIFIER:
        precision = "auto"  # bf16 is for style graphs; the classifier stays FP32
    if backend in ENGINES and precision not in _serves(ENGINES[backend]):
        raise BackendError(f"backend={backend!r} does not run precision={precision!r}."
                           + note(" or ".join(_serves(ENGINES[backend])), precision))
    if backend not in ENGINES and backend not in ("auto", "onnxruntime"):  # a plain loader of LOADERS
        spec = _spec(manifest, key)
        chosen = precision if precision == "bf16" else choose_precision(precision, ort_backend.PROVIDERS["cpu"], spec)
        path = manifest.path(spec.fp16.onnx if chosen == "fp16" and spec.fp16 else spec.onnx)
        runner = load_graph(path, backend=backend, precision=chosen, small=key == CLASSIFIER, cache=cache)
        log.info("%s: using %s", key, runner.name)
        return runner
    if backend in ENGINES and key == CLASSIFIER and not ENGINES[backend].HAS_CLASSIFIER:
        return ort_runner_for(manifest, key, precision=precision, cuda_graph=cuda_graph, cache=cache)
    if backend in ENGINES:
        runner = ENGINES[backend].find_runner(manifest, key, required=True, **_precision_arg(ENGINES[backend], precision))
        if runner is None:  # a hook that returned None although required
            raise BackendError(f"No usable {backend} engine for {key!r} in bundle {manifest.root}.")
        log.info("%s: using %s", key, runner.name)
        return runner
    if backend == "auto" and provider is None:
        for engine in ENGINES.values():
            if precision not in _serves(engine):
                continue
            runner = engine.find_runner(manifest, key, required=False, **_precision_arg(engine, precision))
            if runner is not None:
                log.info("%s: using %s", key, runner.name)
                return FallbackRunner(runner, lambda: ort_runner_for(manifest, key, precision=precision,
                                                                     cuda_graph=cuda_graph, cache=cache),
                                      key, engine.RANGE)
    return ort_runner_for(manifest, key, provider=provider, precision=precision, cuda_graph=cuda_graph, cache=cache)


def check_engines(manifest: Manifest, backend: str) -> None:
    """Refuse now a required engine backend (``"tensorrt"``, ``"aoti"``) without a usable engine here for every
    graph it would run (each style; the classifier too where it builds one): one ``BackendError`` naming all
    that are missing, before any image, instead of one failure per image. Looked up, not loaded (the same
    lookup as :func:`runner_for`); other backends pass."""
    engine = ENGINES.get(backend)
    if engine is None:
        return
    keys = ([CLASSIFIER] if engine.HAS_CLASSIFIER else []) + list(manifest.styles)
    missing: dict[str, BackendError] = {}
    for key in keys:
        try:
            engine.check(manifest, key)
        except BackendError as exc:
            missing[key] = exc
    if not missing:
        return
    if len(missing) == 1:
        raise next(iter(missing.values()))
    first_key, first = next(iter(missing.items()))
    raise BackendError(f"backend={backend!r} has no usable engine here for {len(missing)} of the bundle's {len(keys)} "
                       f"graphs ({', '.join(repr(k) for k in missing)}); for {first_key!r}: {first}")
