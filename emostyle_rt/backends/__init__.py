"""Runtime backends: one small runner interface over onnxruntime and TensorRT.

A runner loads one graph and runs it: ``run({input_name: array}) -> {output_name: array}``.
``runner_for(manifest, key)`` is what the Stylizer calls. It first asks the
optional native TensorRT module (``emostyle_rt.backends.tensorrt``) for an engine
and falls back to onnxruntime, whose providers are chosen in
``emostyle_rt.backends.onnxruntime``.

The TensorRT module plugs in by providing::

    def find_runner(manifest: Manifest, key: str, *, required: bool = False) -> Runner | None

``key`` is ``"classifier"`` or a style id. It returns None (after logging why at
INFO) when it has no usable engine for this machine: no ``tensorrt`` package, no
GPU, no engine for this GPU architecture / TensorRT version, or a failed
deserialisation. It must import ``tensorrt`` only inside that function. With
``required=True`` (``backend="tensorrt"``) it may raise ``BackendError`` instead
of returning None, to say exactly what is missing.
"""

from __future__ import annotations

import importlib
import logging
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np

from ..errors import BackendError, note

if TYPE_CHECKING:
    from ..manifest import Manifest

log = logging.getLogger(__name__)

BACKENDS = ("auto", "onnxruntime", "tensorrt")
#: Key of the classifier graph in ``runner_for``; style graphs use their style id.
CLASSIFIER = "classifier"
_TRT_MODULE = __name__ + ".tensorrt"


@dataclass(frozen=True)
class TensorInfo:
    """Name, shape (ints, or str/None for dynamic dims) and numpy dtype name of a graph input/output."""

    name: str
    shape: tuple[int | str | None, ...]
    dtype: str


@runtime_checkable
class Runner(Protocol):
    """One loaded graph. ``run`` must be safe to call from several threads at once."""

    name: str  # e.g. "onnxruntime:CPUExecutionProvider" or "tensorrt:sm90"

    @property
    def inputs(self) -> tuple[TensorInfo, ...]: ...

    @property
    def outputs(self) -> tuple[TensorInfo, ...]: ...

    def run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...


def make_runner(
    onnx_path: str | os.PathLike,
    *,
    provider: str | None = None,
    low_memory: bool = False,
    provider_options: dict[str, dict] | None = None,
) -> Runner:
    """An onnxruntime runner for one ONNX file.

    ``provider`` forces "tensorrt", "cuda" or "cpu" (onnxruntime execution
    providers); None picks the best usable one. ``low_memory`` trades the CPU
    memory arena for bounded memory (used for the large style graphs).
    ``provider_options`` maps a full provider name to its options.
    """
    from .onnxruntime import OrtRunner

    return OrtRunner(onnx_path, provider=provider, low_memory=low_memory, provider_options=provider_options)


def _trt_ep_options(manifest: Manifest, provider: str | None) -> dict[str, dict] | None:
    """Options for onnxruntime's TensorRT EP, when it will be used: engine and timing caches in the bundle."""
    from .onnxruntime import PROVIDERS, choose_providers

    if PROVIDERS["tensorrt"] not in choose_providers(provider):
        return None
    from .tensorrt import trt_ep_options

    try:
        return {PROVIDERS["tensorrt"]: trt_ep_options(manifest.root)}
    except OSError as exc:  # a read-only bundle: the EP still works, it just rebuilds its engines
        log.warning("Cannot keep TensorRT EP caches in %s (%s); engines will be rebuilt each start.", manifest.root, exc)
        return None


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


def runner_for(
    manifest: Manifest, key: str, *, backend: str = "auto", provider: str | None = None
) -> Runner:
    """The runner for the classifier (``key="classifier"``) or a style id of a bundle.

    ``backend="auto"``: a native TensorRT engine from the bundle when one fits this
    machine, else onnxruntime. ``"tensorrt"``: a native engine or an error.
    ``"onnxruntime"``: onnxruntime only, with ``provider`` as in ``make_runner``.
    """
    if backend not in BACKENDS:
        raise BackendError(f"Unknown backend {backend!r}." + note(" or ".join(BACKENDS), backend))
    if backend == "tensorrt" and provider is not None:
        raise BackendError(
            "An onnxruntime provider was given with backend='tensorrt'."
            + note("provider=None, or backend='onnxruntime'", provider)
        )
    if key == CLASSIFIER:
        rel, low_memory = manifest.classifier.onnx, False
    elif key in manifest.styles:
        rel, low_memory = manifest.styles[key].onnx, True
    else:
        raise BackendError(
            f"Bundle {manifest.root} has no graph {key!r}." + note(f"{CLASSIFIER!r} or a style id", sorted(manifest.styles))
        )
    if backend == "tensorrt" or backend == "auto" and provider is None:
        runner = _tensorrt_runner(manifest, key, required=backend == "tensorrt")
        if runner is not None:
            log.info("%s: using %s", key, runner.name)
            return runner
        if backend == "tensorrt":
            raise BackendError(f"No usable TensorRT engine for {key!r} in bundle {manifest.root}.")
    return make_runner(manifest.path(rel), provider=provider, low_memory=low_memory,
                       provider_options=_trt_ep_options(manifest, provider))
