"""Face detection and the classifier's face crop.

The default detector is OpenCV's frontal-face Haar cascade shipped in the
opencv wheel (offline, no download). A YuNet ONNX model (``cv2.FaceDetectorYN``)
is used only when the caller gives its path. Both detect on a downscaled copy so
the cost does not grow with megapixels, and map boxes back to the full image.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import cv2
import numpy as np

from .errors import BackendError, InvalidImageError, note

log = logging.getLogger(__name__)

#: Detection runs on a copy whose longer side is at most this many pixels.
DETECT_SIDE = 512
HAAR_FILE = "haarcascade_frontalface_default.xml"


@dataclass(frozen=True)
class Face:
    """A face box in full-image pixels; ``score`` is the detector's confidence if it has one."""

    x: int
    y: int
    w: int
    h: int
    score: float | None = None

    @property
    def box(self) -> tuple[int, int, int, int]:
        return (self.x, self.y, self.w, self.h)

    @property
    def area(self) -> int:
        return self.w * self.h


@runtime_checkable
class FaceDetector(Protocol):
    """Anything that finds faces in an HxWx3 uint8 RGB image."""

    def detect(self, rgb: np.ndarray) -> list[Face]: ...


def _downscale(image: np.ndarray, side: int) -> tuple[np.ndarray, float]:
    """A copy whose longer side is at most ``side``, and the factor back to full size."""
    h, w = image.shape[:2]
    s = min(1.0, side / max(h, w))
    if s == 1.0:
        return image, 1.0
    small = cv2.resize(image, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)
    return small, w / small.shape[1]


def _map_back(boxes: np.ndarray, factor: float, shape: tuple[int, ...], scores: np.ndarray | None = None) -> list[Face]:
    """Boxes on the small copy -> Faces in full-image pixels, clipped to the image, largest first."""
    h, w = shape[:2]
    faces = []
    for i, (x, y, bw, bh) in enumerate(np.asarray(boxes, np.float64).reshape(-1, 4) * factor):
        x0, y0 = max(0, round(x)), max(0, round(y))
        x1, y1 = min(w, round(x + bw)), min(h, round(y + bh))
        if x1 > x0 and y1 > y0:
            score = None if scores is None else float(scores[i])
            faces.append(Face(x0, y0, x1 - x0, y1 - y0, score))
    return sorted(faces, key=lambda f: f.area, reverse=True)


class HaarDetector:
    """OpenCV's frontal-face Haar cascade on a downscaled, equalised grey copy."""

    def __init__(
        self,
        cascade: str | os.PathLike | None = None,
        *,
        detect_side: int = DETECT_SIDE,
        scale_factor: float = 1.2,
        min_neighbors: int = 5,
        min_size: int = 24,
    ) -> None:
        path = Path(cascade) if cascade else Path(cv2.data.haarcascades) / HAAR_FILE
        self._cascade = cv2.CascadeClassifier(str(path))
        if self._cascade.empty():
            raise BackendError(f"Cannot load the Haar cascade {path}." + note("an OpenCV cascade XML file", path))
        self.detect_side, self.scale_factor, self.min_neighbors, self.min_size = (
            detect_side, scale_factor, min_neighbors, min_size,
        )
        self._lock = threading.Lock()  # CascadeClassifier is not documented as thread-safe

    def detect(self, rgb: np.ndarray) -> list[Face]:
        small, factor = _downscale(rgb, self.detect_side)
        grey = cv2.equalizeHist(cv2.cvtColor(small, cv2.COLOR_RGB2GRAY))
        with self._lock:
            boxes = self._cascade.detectMultiScale(
                grey, self.scale_factor, self.min_neighbors, minSize=(self.min_size, self.min_size)
            )
        return _map_back(boxes, factor, rgb.shape)


class YuNetDetector:
    """OpenCV's YuNet face detector (``cv2.FaceDetectorYN``) from a user-supplied ONNX file."""

    def __init__(
        self, model: str | os.PathLike, *, detect_side: int = DETECT_SIDE, score_threshold: float = 0.7
    ) -> None:
        path = Path(model)
        if not path.is_file():
            raise BackendError(f"YuNet model file {path} does not exist." + note("a face_detection_yunet*.onnx file", path))
        try:
            self._net = cv2.FaceDetectorYN.create(str(path), "", (320, 320), score_threshold)
        except cv2.error as exc:
            raise BackendError(f"OpenCV cannot load {path} as a YuNet face detector: {exc}.") from exc
        self.detect_side = detect_side
        self._lock = threading.Lock()  # setInputSize + detect mutate the detector

    def detect(self, rgb: np.ndarray) -> list[Face]:
        small, factor = _downscale(rgb, self.detect_side)
        bgr = cv2.cvtColor(small, cv2.COLOR_RGB2BGR)
        with self._lock:
            self._net.setInputSize((bgr.shape[1], bgr.shape[0]))
            _, found = self._net.detect(bgr)
        if found is None:
            return []
        return _map_back(found[:, :4], factor, rgb.shape, scores=found[:, -1])


def make_detector(detector: FaceDetector | str | os.PathLike | None = None) -> FaceDetector:
    """None or "haar" -> Haar cascade; a ``.onnx`` path -> YuNet; a detector object as is."""
    if detector is None or detector == "haar":
        return HaarDetector()
    if isinstance(detector, (str, os.PathLike)):
        if str(detector).lower().endswith(".onnx"):
            return YuNetDetector(detector)
        if str(detector).lower().endswith(".xml"):
            return HaarDetector(detector)
        raise BackendError(
            f"Unknown face detector {str(detector)!r}." + note('"haar", a YuNet .onnx path or a Haar .xml path', detector)
        )
    if isinstance(detector, FaceDetector):
        return detector
    raise BackendError("Face detector has no detect(rgb) method." + note("a FaceDetector", type(detector).__name__))


def crop_face(rgb: np.ndarray, face: Face | None, size: tuple[int, int], channels: int = 3, margin: float = 0.2) -> np.ndarray:
    """The classifier's input for one face: HxWxC uint8.

    A square around the box's centre, ``margin`` of the box size larger on each
    side, clipped at the image borders, resized to ``size`` (height, width) and
    turned grey when ``channels`` is 1. ``face=None`` takes the whole image.
    """
    ih, iw = rgb.shape[:2]
    if face is None:
        crop = rgb
    else:
        side = max(face.w, face.h) * (1.0 + 2.0 * margin)
        cx, cy = face.x + face.w / 2.0, face.y + face.h / 2.0
        x0, y0 = max(0, round(cx - side / 2)), max(0, round(cy - side / 2))
        x1, y1 = min(iw, round(cx + side / 2)), min(ih, round(cy + side / 2))
        if x1 <= x0 or y1 <= y0:
            raise InvalidImageError(f"Face box {face.box} lies outside the {iw}x{ih} image.")
        crop = rgb[y0:y1, x0:x1]
    th, tw = size
    shrink = crop.shape[0] > th or crop.shape[1] > tw
    out = cv2.resize(crop, (tw, th), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    if channels == 1:
        out = cv2.cvtColor(out, cv2.COLOR_RGB2GRAY)[:, :, None]
    return out
