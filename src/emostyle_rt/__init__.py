"""emostyle-rt: emotion-based style transfer at runtime.

``Stylizer`` runs a bundle written by ``emostyle-export`` (face crop -> emotion
classifier -> that emotion's style graph) with numpy, OpenCV and onnxruntime;
onnxruntime itself is imported when a bundle is opened, not here.

The names below are imported on first use (PEP 562), so that ``import
emostyle_rt.console`` (the ``emostyle`` command's entry point) costs nothing and
a Ctrl-C while the command starts ends it cleanly.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: Public name -> the submodule that defines it.
_EXPORTS = {
    "BackendError": "errors",
    "BundleError": "errors",
    "EmostyleError": "errors",
    "ImageReadError": "errors",
    "InvalidImageError": "errors",
    "MemoryBudgetError": "errors",
    "NoFaceError": "errors",
    "Face": "detection.faces",
    "FaceDetector": "detection.faces",
    "HaarDetector": "detection.faces",
    "YuNetDetector": "detection.faces",
    "EMOTIONS": "manifest",
    "CropSpec": "manifest",
    "DetectorSpec": "manifest",
    "Manifest": "manifest",
    "load_manifest": "manifest",
    "MtcnnDetector": "detection.mtcnn",
    "StylizerOptions": "options",
    "Classification": "stylizer",
    "FaceEmotion": "stylizer",
    "StyleResult": "stylizer",
    "Stylizer": "stylizer",
}

__all__ = sorted([*_EXPORTS, "__version__"])

if TYPE_CHECKING:
    from .errors import (
        BackendError,
        BundleError,
        EmostyleError,
        ImageReadError,
        InvalidImageError,
        MemoryBudgetError,
        NoFaceError,
    )
    from .detection.faces import Face, FaceDetector, HaarDetector, YuNetDetector
    from .manifest import EMOTIONS, CropSpec, DetectorSpec, Manifest, load_manifest
    from .detection.mtcnn import MtcnnDetector
    from .options import StylizerOptions
    from .stylizer import Classification, FaceEmotion, StyleResult, Stylizer


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # once
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
