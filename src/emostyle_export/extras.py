"""Optional modules of the ``export`` and ``bench`` extras, and the error when one is missing.

The command-line tools check these before any work starts, and turn a
``ModuleNotFoundError`` of one of them that slips through into this typed
error, which names the extra to install.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterable

from emostyle_rt.errors import EmostyleError, note

#: import name -> pip distribution, for what ``emostyle-export`` needs.
EXPORT_MODULES = {
    "torch": "torch",
    "tensorflow": "tensorflow-cpu / tensorflow",
    "keras": "keras",
    "tf2onnx": "tf2onnx",
    "onnx": "onnx",
    "onnxruntime": "onnxruntime",
    "onnxconverter_common": "onnxconverter-common",
    "skimage": "scikit-image",
    "mtcnn": "mtcnn",
}
#: What ``emostyle-bench`` adds to the export stack.
BENCH_MODULES = {**EXPORT_MODULES, "matplotlib": "matplotlib", "psutil": "psutil"}
INSTALL = {
    extra: f'install torch (CPU or CUDA build) first, then pip install "emostyle-rt[cpu,{extra}]" '
           f'("[gpu,{extra}]" on an NVIDIA machine)'
    for extra in ("export", "bench")
}


class MissingExtraError(EmostyleError):
    """A module of an optional extra (export, bench) is not installed."""


def missing(modules: Iterable[str]) -> list[str]:
    """The modules of ``modules`` that cannot be imported here (found without importing them)."""
    out = []
    for name in modules:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):  # a broken parent package, or None in sys.modules
            found = False
        if not found:
            out.append(name)
    return out


def stack_module(exc: ImportError, extra: str) -> str | None:
    """The top-level module of ``exc`` when it belongs to ``extra``'s stack, else None."""
    known = BENCH_MODULES if extra == "bench" else EXPORT_MODULES
    top = (getattr(exc, "name", None) or "").partition(".")[0]
    return top if top in known else None


def missing_error(tool: str, modules: Iterable[str], extra: str) -> MissingExtraError:
    """The typed error for ``modules`` missing from ``extra``, naming what to install."""
    names = list(modules)
    known = BENCH_MODULES if extra == "bench" else EXPORT_MODULES
    dists = ", ".join(known.get(m, m) for m in names)
    return MissingExtraError(
        f"{', '.join(names)} {'is' if len(names) == 1 else 'are'} not installed ({dists}): {tool} needs the "
        f"{extra} extra; {INSTALL[extra]}." + note(f"the {extra} extra installed", "missing " + ", ".join(names))
    )


def require(tool: str, modules: Iterable[str], extra: str) -> None:
    """Raise :class:`MissingExtraError` unless every module of ``modules`` can be imported."""
    gone = missing(modules)
    if gone:
        raise missing_error(tool, gone, extra)
