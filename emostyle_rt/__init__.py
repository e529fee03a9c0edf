"""emostyle-rt: emotion-based style transfer at runtime.

``Stylizer`` runs a bundle written by ``emostyle-export`` (face crop -> emotion
classifier -> that emotion's style graph) with numpy, OpenCV and onnxruntime;
onnxruntime itself is imported when a bundle is opened, not here.
"""

from __future__ import annotations

from .errors import (
    BackendError,
    BundleError,
    EmostyleError,
    ImageReadError,
    InvalidImageError,
    MemoryBudgetError,
    NoFaceError,
)
from .faces import Face, FaceDetector, HaarDetector, YuNetDetector
from .manifest import EMOTIONS, CropSpec, DetectorSpec, Manifest, load_manifest
from .mtcnn import MtcnnDetector
from .stylizer import Classification, FaceEmotion, StyleResult, Stylizer

__version__ = "0.1.0"

__all__ = [
    "EMOTIONS",
    "BackendError",
    "BundleError",
    "Classification",
    "CropSpec",
    "DetectorSpec",
    "EmostyleError",
    "Face",
    "FaceDetector",
    "FaceEmotion",
    "HaarDetector",
    "ImageReadError",
    "InvalidImageError",
    "Manifest",
    "MemoryBudgetError",
    "MtcnnDetector",
    "NoFaceError",
    "StyleResult",
    "Stylizer",
    "YuNetDetector",
    "__version__",
    "load_manifest",
]
