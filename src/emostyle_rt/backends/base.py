"""The runner interface every backend implements (Polygraphy-like: a loader opens, a runner runs)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from ..errors import BackendError, InvalidImageError, note


class OutsideProfileError(BackendError, InvalidImageError):
    """An input shape lies outside every shape range (TensorRT profile, AOTInductor range) of a compiled engine."""


@dataclass(frozen=True)
class TensorInfo:
    """Name, shape (ints, or str/None for dynamic dims) and numpy dtype name of a graph input/output."""

    name: str
    shape: tuple[int | str | None, ...]
    dtype: str


@runtime_checkable
class Runner(Protocol):
    """One loaded graph. ``run`` must be safe to call from several threads at once."""

    name: str  # e.g. "onnxruntime:CPUExecutionProvider", "tensorrt:sm90-...", "aoti:cpu-avx512-torch2.13.0:fp32"
    #: Where it runs: "cpu" or "cuda:N" (what memory budgets and transfers are decided by, never the name).
    device: str

    @property
    def inputs(self) -> tuple[TensorInfo, ...]: ...

    @property
    def outputs(self) -> tuple[TensorInfo, ...]: ...

    def run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    def close(self) -> None:
        """Free sessions, device buffers and streams. Idempotent; ``run`` after ``close`` raises BackendError."""
        ...


@dataclass(frozen=True)
class GraphLoader:
    """What to open, on which provider and precision, with which fallback (Polygraphy's loader); call it to load.

    ``GraphLoader(path, provider="cuda")()`` is the runner. The backend named
    ``backend`` (a key of ``backends.LOADERS``) reads the fields it serves and
    refuses the ones it cannot (OpenVINO: a GPU provider).

    Args:
        path: The ONNX graph file.
        backend: A name of ``backends.LOADERS`` ("onnxruntime", "openvino", or one registered there).
        provider: onnxruntime's "tensorrt", "cuda" or "cpu"; None: the best usable one.
        precision: The graph's precision, as its runner's name says it ("fp32", "fp16"; "bf16" in OpenVINO).
        threads: Intra-op threads (0: $EMOSTYLE_CPU_THREADS, else the backend's default).
        small: A graph of a few ms per run (MTCNN's, the classifier): its CPU threads do not spin between runs.
        provider_options: Full onnxruntime provider name -> that provider's options.
        cpu_fallback_path: The graph to load instead when a GPU provider fails and onnxruntime falls back to CPU.
        cuda_graph: Replay CUDA graphs for repeated input shapes (onnxruntime's CUDA EP only).
        cache: The user cache folder (default :func:`cache_dir`).
    """

    path: str | os.PathLike
    backend: str = "onnxruntime"
    provider: str | None = None
    precision: str = "fp32"
    threads: int = 0
    small: bool = False
    provider_options: dict[str, dict[str, Any]] | None = field(default=None, hash=False)
    cpu_fallback_path: str | os.PathLike | None = None
    cuda_graph: bool = False
    cache: str | os.PathLike | None = None

    def __call__(self) -> Runner:
        from . import LOADERS  # the registry lives in the package

        module = LOADERS.get(self.backend)
        if module is None:
            raise BackendError(f"No backend {self.backend!r} loads ONNX graphs."
                               + note(" or ".join(LOADERS), self.backend))
        return module.load_graph(self)


def is_gpu(runner: object) -> bool:
    """Whether ``runner`` runs on a GPU (its ``device`` is "cuda:N").

    Args:
        runner: A loaded runner. One without a ``device`` (a third-party runner
            written before runners had one) counts as a CPU runner.
    """
    return str(getattr(runner, "device", "cpu")).startswith("cuda")


#: Environment variable that moves the user cache (TensorRT EP engines, AOTInductor probe markers).
CACHE_ENV = "EMOSTYLE_CACHE_DIR"


def cache_dir(explicit: str | os.PathLike | None = None) -> Path:
    """The user cache folder: ``explicit``, else $EMOSTYLE_CACHE_DIR, else $XDG_CACHE_HOME/emostyle-rt, else ~/.cache/emostyle-rt.

    Caches never go into a bundle: a bundle is a verified artifact and may be
    read-only. Nothing is created here.
    """
    if explicit is not None:
        return Path(explicit)
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".cache") / "emostyle-rt"
