"""``StylizerOptions``: every option a ``Stylizer`` takes, in one frozen, validated value.

The one place the options are written down: ``Stylizer(bundle, **kwargs)`` builds
one from its keywords, ``Stylizer(bundle, options=...)`` takes one, a pickled
Stylizer carries one, and every front end (``emostyle``, ``emostyle serve``, Ray
Serve, ``emostyle --ray``) builds its Stylizer from one. The command-line flags
of the options are added to a parser by :func:`add_stylizer_arguments` (used by
``emostyle`` and ``emostyle serve``) and read back by :func:`options_from_args`;
their choice lists come from the registries (:func:`emostyle_rt.backends.backend_names`,
:data:`~emostyle_rt.backends.PRECISIONS`, the onnxruntime providers,
:data:`emostyle_rt.tiling.TILE_MODES`), never copied.

Options that need the bundle (``no_face`` naming an emotion, a ``detector`` the
bundle must have) are checked by the Stylizer once the bundle is open.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from dataclasses import dataclass, fields
from typing import Any

from .backends import PRECISIONS, backend_names
from .backends.ort import PROVIDERS
from .errors import BackendError, InvalidArgumentError, note
from .imaging.io import MAX_PIXELS
from .tiling import DEFAULT_TILE_MODE, TILE_MODES, parse_memory

__all__ = ["MAX_MARGIN", "NO_FACE_POLICIES", "StylizerOptions", "add_stylizer_arguments", "options_from_args"]

#: No-face policies besides a fixed emotion name.
NO_FACE_POLICIES = ("whole", "error")
#: Largest face-crop margin (a fraction of the box size added on each side).
MAX_MARGIN = 2.0


@dataclass(frozen=True)
class StylizerOptions:
    """How a :class:`~emostyle_rt.Stylizer` runs a bundle; checked when made (a typed error for a bad value).

    Args:
        backend: "auto" (a native TensorRT engine when one fits, else an AOTInductor package, else OpenVINO for
            the style graphs on a machine without a GPU provider where it is installed, else onnxruntime; the
            face detector's graphs stay in onnxruntime), "onnxruntime" (every graph), "tensorrt", "aoti"
            (style graphs from AOTInductor packages; the classifier in onnxruntime) or "openvino" (every graph,
            the detector's three too, in OpenVINO's CPU plugin). The list:
            :func:`emostyle_rt.backends.backend_names`.
        provider: None (the best usable one), or force an onnxruntime provider: "tensorrt", "cuda" or "cpu".
        detector: None (the bundle's MTCNN; Haar for bundles without one), "mtcnn", "haar" (where this OpenCV
            has it), a YuNet ``.onnx`` path, or any object with ``detect(rgb) -> list[Face]``.
        no_face: what an image without a face gets: "whole" (classify the whole image), "error" (raise
            ``NoFaceError``) or an emotion of the bundle (checked when the bundle is open).
        margin: None crops faces as the bundle's crop spec says (``manifest.classifier.crop``); a number
            (0 to :data:`MAX_MARGIN`) replaces only its margin, a fraction of the box on each side.
        max_pixels: largest image read, in pixels, checked from its header before decoding.
        verify: check the bundle's files against the manifest's sha256 when opening it.
        precision: "auto" (the bundle's verified FP16 graph on a GPU provider when it has one, else FP32),
            "fp32", "fp16" or "bf16" (style graphs in OpenVINO at bfloat16 on a CPU with AVX512-BF16 / AMX, gated
            at PSNR >= 40 dB against FP32). The list: :data:`emostyle_rt.backends.PRECISIONS`. An explicit
            precision this machine or bundle cannot run is refused when the Stylizer opens.
        cuda_graph: replay CUDA graphs for repeated input shapes (video; CUDA EP only).
        cache_dir: the user cache for compiled engines (default $EMOSTYLE_CACHE_DIR, else
            $XDG_CACHE_HOME/emostyle-rt or ~/.cache/emostyle-rt; never the bundle).
        memory_budget: bytes (or text such as "2GB", "512MiB"; kept as bytes) one style run may use on top of
            what the process holds; None: what keeps the process' peak RSS at about 2.5 GB, at most 75% of the
            memory available when the run starts (for a GPU provider: of the GPU's free memory). A larger run
            goes in tiles; one that cannot fit raises ``MemoryBudgetError`` before it starts.
        tile_mode: how tiles share InstanceNorm statistics: "exact" or "fast" (:mod:`emostyle_rt.tiling`).

    Raises:
        BackendError: an unknown backend, provider or precision, or a provider given with an engine backend.
        InvalidArgumentError: any other value of the wrong type or out of range.
        MemoryBudgetError: a memory budget that is not a size.
    """

    backend: str = "auto"
    provider: str | None = None
    detector: Any = None
    no_face: str = "whole"
    margin: float | None = None
    max_pixels: int = MAX_PIXELS
    verify: bool = True
    precision: str = "auto"
    cuda_graph: bool = False
    cache_dir: str | os.PathLike | None = None
    memory_budget: int | None = None
    tile_mode: str = DEFAULT_TILE_MODE

    def __post_init__(self) -> None:
        if self.backend not in backend_names():  # a backend registered in backends.LOADERS counts
            raise BackendError(f"Unknown backend {self.backend!r}." + note(" or ".join(backend_names()), self.backend))
        if self.provider is not None and self.provider not in PROVIDERS:
            raise BackendError(f"Unknown onnxruntime provider {self.provider!r}."
                               + note(" or ".join(PROVIDERS), self.provider))
        if self.precision not in PRECISIONS:
            raise BackendError(f"Unknown precision {self.precision!r}." + note(" or ".join(PRECISIONS), self.precision))
        if self.tile_mode not in TILE_MODES:
            raise InvalidArgumentError(f"Unknown tile_mode {self.tile_mode!r}."
                                       + note(" or ".join(TILE_MODES), repr(self.tile_mode)))
        if not isinstance(self.no_face, str):
            raise InvalidArgumentError(f"Unknown no-face policy {self.no_face!r}."
                                       + note(f"{NO_FACE_POLICIES} or an emotion", repr(self.no_face)))
        m = self.margin
        if m is not None and (isinstance(m, bool) or not isinstance(m, (int, float)) or not 0.0 <= m <= MAX_MARGIN):
            raise InvalidArgumentError(
                "margin must be a number from 0 to the box size's multiple around the face."
                + note(f"0 <= margin <= {MAX_MARGIN} (a float such as 0.2), or None for the bundle's crop spec",
                       repr(m)))
        if isinstance(self.max_pixels, bool) or not isinstance(self.max_pixels, int) or self.max_pixels < 1:
            raise InvalidArgumentError("max_pixels must be a positive integer." + note("an int >= 1", repr(self.max_pixels)))
        for name in ("verify", "cuda_graph"):
            if not isinstance(getattr(self, name), bool):
                raise InvalidArgumentError(f"{name} must be True or False." + note("a bool", repr(getattr(self, name))))
        if self.cache_dir is not None and (isinstance(self.cache_dir, bytes)
                                           or not isinstance(self.cache_dir, (str, os.PathLike))):
            raise InvalidArgumentError("cache_dir must be a folder path or None."
                                       + note("a str or os.PathLike", repr(self.cache_dir)))
        if m is not None:
            object.__setattr__(self, "margin", float(m))
        if self.memory_budget is not None:
            object.__setattr__(self, "memory_budget", parse_memory(self.memory_budget))

    def replace(self, **changes: Any) -> StylizerOptions:
        """A copy with ``changes`` (option names as keywords), checked again.

        Args:
            **changes: option names and their new values.

        Raises:
            TypeError: an unknown option name.
        """
        return dataclasses.replace(self, **changes)

    def as_dict(self) -> dict[str, Any]:
        """The options as keywords (``Stylizer(bundle, **options.as_dict())`` opens the same Stylizer)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


#: The option names, in declaration order.
OPTION_NAMES = tuple(f.name for f in fields(StylizerOptions))


def add_stylizer_arguments(parser: argparse.ArgumentParser | Any, *, max_pixels: int = MAX_PIXELS,
                           memory_budget_help: str | None = None, max_pixels_help: str | None = None) -> None:
    """Add the Stylizer's command-line flags to ``parser`` (``emostyle`` and ``emostyle serve`` share them).

    The flags: ``--backend``, ``--provider``, ``--precision``, ``--detector``, ``--no-face``,
    ``--memory-budget``, ``--tile-mode``, ``--max-pixels``; :func:`options_from_args` reads them back.
    ``margin``, ``verify``, ``cuda_graph`` and ``cache_dir`` are not flags (docs/serving.md says why).

    Args:
        parser: an ``argparse.ArgumentParser`` or an argument group of one.
        max_pixels: the default of ``--max-pixels`` (the service's is lower than the library's).
        memory_budget_help: the help of ``--memory-budget`` (a front end says whose budget it is).
        max_pixels_help: the help of ``--max-pixels``.
    """
    d = StylizerOptions()
    parser.add_argument("--backend", default=d.backend, choices=backend_names(),
                        help="runtime backend (default auto: TensorRT engine, AOTInductor package, OpenVINO on a "
                             "CPU-only machine, onnxruntime)")
    parser.add_argument("--provider", default=d.provider, choices=tuple(PROVIDERS),
                        help="force an onnxruntime provider")
    parser.add_argument("--precision", default=d.precision, choices=PRECISIONS,
                        help="auto (default: the bundle's FP16 graph on a GPU provider when it has one, else FP32), "
                             "fp32, fp16, or bf16 (style graphs in OpenVINO on a CPU with AVX512-BF16 / AMX); one "
                             "this machine or bundle cannot run is refused at start")
    parser.add_argument("--detector", default=d.detector,
                        help="face detector: the bundle's MTCNN (default), 'mtcnn', 'haar' (OpenCV 4 only) "
                             "or a YuNet .onnx file")
    parser.add_argument("--no-face", default=d.no_face,
                        help="'whole' (classify the whole image), 'error' (refused; the service answers 422), "
                             "or an emotion")
    parser.add_argument("--memory-budget", metavar="SIZE", default=None,
                        help=memory_budget_help or "memory one style run may use, e.g. 2GB or 512MiB (default: what "
                        "keeps the process near 2.5 GB peak RSS, at most 75%% of the available memory); larger photos "
                        "are styled in tiles, a budget too small for any tile is refused before anything runs")
    parser.add_argument("--tile-mode", choices=TILE_MODES, default=d.tile_mode,
                        help=f"how tiles share statistics: exact (= untiled, layer by layer) or fast (from a sample "
                             f"of full-resolution crops) (default {d.tile_mode}; docs/tiling.md)")
    parser.add_argument("--max-pixels", type=int, default=max_pixels, metavar="N",
                        help=max_pixels_help or f"largest image in pixels, checked from its header before decoding "
                        f"(default {max_pixels})")


def options_from_args(args: argparse.Namespace, **overrides: Any) -> StylizerOptions:
    """The ``StylizerOptions`` of parsed command-line flags (those :func:`add_stylizer_arguments` adds).

    A Namespace made by hand may lack some flags: they take the options' defaults.

    Args:
        args: the parsed flags.
        **overrides: options set by the front end itself (e.g. a worker's share of the memory).

    Raises:
        BackendError, InvalidArgumentError, MemoryBudgetError: a flag's value that cannot work.
    """
    given = {name: getattr(args, name) for name in OPTION_NAMES if hasattr(args, name)}
    if given.get("max_pixels") is None:
        given.pop("max_pixels", None)
    return StylizerOptions(**{**given, **overrides})
