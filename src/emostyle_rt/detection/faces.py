"""Face detection and the classifier's face crop.

The default detector is the bundle's MTCNN (``emostyle_rt.detection.mtcnn``: boxes, scores
and five landmarks, run by the Stylizer's backend like the other graphs). OpenCV's
frontal-face Haar cascade is used when asked for ("haar"), or for bundles made
before the detector travelled in them, and only where this OpenCV has it
(OpenCV 5 removed ``CascadeClassifier`` and its files). A YuNet ONNX model
(``cv2.FaceDetectorYN``) is used only when the caller gives its path. Each
detects on a downscaled copy so the cost does not grow with megapixels, and
maps boxes back to the full image.
"""

from __future__ import annotations

import logging
import math
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol, runtime_checkable

import cv2
import numpy as np

from ..logutil import warn_once
from ..errors import BackendError, InvalidImageError, note
from ..manifest import CV2_GREY, DEFAULT_CROP, CropSpec, Manifest

log = logging.getLogger(__name__)

#: Detection runs on a copy whose longer side is at most this many pixels.
DETECT_SIDE = 512
HAAR_FILE = "haarcascade_frontalface_default.xml"


#: Five (x, y) points: image-left eye, image-right eye, nose, image-left and image-right mouth corners.
Landmarks = tuple[tuple[float, float], tuple[float, float], tuple[float, float], tuple[float, float],
                  tuple[float, float]]


@dataclass(frozen=True)
class Face:
    """A face box in full-image pixels.

    ``score`` is the detector's confidence if it has one; ``landmarks`` the five
    points of :data:`Landmarks` in full-image pixels (MTCNN), None for detectors
    without them (Haar).
    """

    x: int
    y: int
    w: int
    h: int
    score: float | None = None
    landmarks: Landmarks | None = None

    @property
    def box(self) -> tuple[int, int, int, int]:
        return (self.x, self.y, self.w, self.h)

    @property
    def area(self) -> int:
        return self.w * self.h


@runtime_checkable
class FaceDetector(Protocol):
    """Anything that finds faces in an HxWx3 uint8 RGB image.

    A detector that loads graphs may also have ``preload()`` (load them now) and
    ``close()`` (free them; they load again on next use): the Stylizer calls them
    on the detectors it makes (:func:`make_detector` from a name, file or the bundle).
    """

    def detect(self, rgb: np.ndarray) -> list[Face]: ...


def downscale(image: np.ndarray, side: int) -> tuple[np.ndarray, float]:
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
        haar_ok, why = haar_available()
        if not haar_ok:
            raise BackendError(why)
        path = Path(cascade) if cascade else Path(cv2.data.haarcascades) / HAAR_FILE
        self._cascade = cv2.CascadeClassifier(str(path))
        if self._cascade.empty():
            raise BackendError(f"Cannot load the Haar cascade {path}." + note("an OpenCV cascade XML file", path))
        self.detect_side, self.scale_factor, self.min_neighbors, self.min_size = (
            detect_side, scale_factor, min_neighbors, min_size,
        )
        self._lock = threading.Lock()  # CascadeClassifier is not documented as thread-safe

    def detect(self, rgb: np.ndarray) -> list[Face]:
        small, factor = downscale(rgb, self.detect_side)
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
        small, factor = downscale(rgb, self.detect_side)
        bgr = cv2.cvtColor(small, cv2.COLOR_RGB2BGR)
        with self._lock:
            self._net.setInputSize((bgr.shape[1], bgr.shape[0]))
            _, found = self._net.detect(bgr)
        if found is None:
            return []
        return _map_back(found[:, :4], factor, rgb.shape, scores=found[:, -1])


def haar_available() -> tuple[bool, str]:
    """Whether this OpenCV has the Haar cascade detector and its files; if not, a message saying why."""
    if hasattr(cv2, "CascadeClassifier") and hasattr(getattr(cv2, "data", None), "haarcascades"):
        return True, ""
    return False, (
        f"OpenCV {cv2.__version__} has no Haar face detector (cv2.CascadeClassifier and the cv2.data Haar files; "
        "OpenCV 5 removed them). Use the bundle's MTCNN detector (detector=None or \"mtcnn\"; add one to an older "
        "bundle with: emostyle-export --bundle DIR --detector mtcnn), or a YuNet .onnx file."
        + note("cv2.CascadeClassifier (opencv-python-headless 4.x) or a bundle with a face detector",
               f"OpenCV {cv2.__version__} without it"))


#: Bundles already reported as having no face detector (said once per bundle and process).
_NO_DETECTOR_REPORTED: set[str] = set()


def _bundle_mtcnn(manifest: Manifest | None, *, provider: str | None = None, backend: str = "auto") -> FaceDetector:
    """The bundle's MTCNN (``detector="mtcnn"``); BackendError for a bundle without one.

    ``backend``: the Stylizer's; one that loads no plain ONNX file (TensorRT, AOTInductor engines) means "auto"
    for MTCNN's graphs (see :class:`~emostyle_rt.detection.mtcnn.MtcnnDetector`).
    """
    if manifest is None or manifest.detector is None:
        which = "no bundle was given" if manifest is None else f"bundle {manifest.root} has none"
        raise BackendError(
            f"detector='mtcnn' needs a bundle with a face detector; {which}."
            + note("a manifest with a detector block (emostyle-export --bundle DIR --detector mtcnn)", "none"))
    from ..backends import LOADERS
    from .mtcnn import MtcnnDetector

    return MtcnnDetector(manifest.detector, manifest.root, provider=provider,
                         backend=backend if backend in LOADERS else "auto")


def _haar(manifest: Manifest | None, *, provider: str | None = None, backend: str = "auto") -> FaceDetector:
    """OpenCV's Haar cascade (``detector="haar"``)."""
    return HaarDetector()


#: Detectors by name: name -> ``factory(manifest, *, provider, backend) -> FaceDetector``. A new detector is a module
#: (a class with ``detect(rgb) -> list[Face]``, optionally ``preload()`` and ``close()``) and a line here.
DETECTORS: dict[str, Callable[..., FaceDetector]] = {"mtcnn": _bundle_mtcnn, "haar": _haar}
#: Detectors given as a model file: file suffix -> (what it is, ``factory(path) -> FaceDetector``).
DETECTOR_FILES: dict[str, tuple[str, Callable[[str | os.PathLike], FaceDetector]]] = {
    ".onnx": ("a YuNet .onnx path", YuNetDetector),
    ".xml": ("a Haar .xml path", HaarDetector),
}


def _no_bundle_detector(manifest: Manifest | None) -> FaceDetector:
    """Detector for a bundle without one (made before the detector travelled in bundles): Haar, if this OpenCV has it."""
    where = f"Bundle {manifest.root} has no face detector" if manifest is not None else "No bundle was given"
    haar_ok, why = haar_available()
    if not haar_ok:
        raise BackendError(f"{where}, and {why}")
    key = str(manifest.root.resolve()) if manifest is not None else ""
    if manifest is not None:
        warn_once(log, _NO_DETECTOR_REPORTED, key, "%s (made before emostyle-rt carried MTCNN): using OpenCV's Haar "
                  "cascade. Add MTCNN with: emostyle-export --bundle %s --detector mtcnn", where, manifest.root)
    return HaarDetector()


def make_detector(
    detector: FaceDetector | str | os.PathLike | None = None,
    manifest: Manifest | None = None,
    *,
    provider: str | None = None,
    backend: str = "auto",
) -> FaceDetector:
    """The face detector to use with ``manifest``'s bundle.

    Names and model-file suffixes come from :data:`DETECTORS` and
    :data:`DETECTOR_FILES`.

    Args:
        detector: None: the bundle's MTCNN when it has one, else OpenCV's Haar
            cascade (a warning; BackendError where this OpenCV has none).
            "mtcnn": the bundle's MTCNN (BackendError without one). "haar" or a
            ``.xml`` path: a Haar cascade (BackendError where this OpenCV has
            none). A ``.onnx`` path: YuNet. A detector object (anything with
            ``detect(rgb) -> list[Face]``): as is.
        manifest: The bundle whose detector block "mtcnn" (and None) use.
        provider: The onnxruntime provider of the MTCNN graphs (as for the other graphs).
        backend: The Stylizer's ``backend=``, which the MTCNN graphs follow ("auto": OpenVINO for those
            measured faster there on a CPU-only machine; "onnxruntime"; "openvino": all three).
    """
    if detector is None:
        if manifest is not None and manifest.detector is not None:
            return DETECTORS["mtcnn"](manifest, provider=provider, backend=backend)
        return _no_bundle_detector(manifest)
    if isinstance(detector, str) and detector in DETECTORS:
        return DETECTORS[detector](manifest, provider=provider, backend=backend)
    if isinstance(detector, (str, os.PathLike)):
        suffix = os.path.splitext(str(detector))[1].lower()
        if suffix in DETECTOR_FILES:
            return DETECTOR_FILES[suffix][1](detector)
        wanted = [f'"{name}"' for name in DETECTORS] + [what for what, _ in DETECTOR_FILES.values()]
        raise BackendError(
            f"Unknown face detector {str(detector)!r}."
            + note(", ".join(wanted[:-1]) + " or " + wanted[-1], detector)
        )
    if isinstance(detector, FaceDetector):
        return detector
    raise BackendError("Face detector has no detect(rgb) method." + note("a FaceDetector", type(detector).__name__))


#: Crop-spec interpolation -> OpenCV flag ("auto" is decided per crop).
_INTERP = {"area": cv2.INTER_AREA, "linear": cv2.INTER_LINEAR, "cubic": cv2.INTER_CUBIC, "nearest": cv2.INTER_NEAREST}


def crop_rect(face: Face, spec: CropSpec) -> tuple[int, int, int, int]:
    """The crop ``(x0, y0, x1, y1)`` around ``face`` in image pixels (it may extend past the image).

    Square (if "expand"), then the margin on each side, about the box's centre;
    each edge is rounded as ``spec.rounding`` says: half to even, or half up
    (which is what integer code like fer's ``x -= (h - w) // 2`` gives: the odd
    pixel of a squared box goes to its right / bottom).
    """
    bw, bh = (max(face.w, face.h),) * 2 if spec.square == "expand" else (face.w, face.h)
    if spec.margin_unit == "px":
        hw, hh = bw / 2 + spec.margin, bh / 2 + spec.margin
    else:
        hw, hh = bw * (1.0 + 2.0 * spec.margin) / 2, bh * (1.0 + 2.0 * spec.margin) / 2
    cx, cy = face.x + face.w / 2.0, face.y + face.h / 2.0
    r = round if spec.rounding == "half-even" else (lambda v: math.floor(v + 0.5))
    return r(cx - hw), r(cy - hh), r(cx + hw), r(cy + hh)


def _span(lo: int, hi: int, n: int, reflect: bool) -> tuple[int, int, int, int]:
    """Along an axis of length ``n``: the image range [s0, s1) to cut and the pads (before, after) [lo, hi) needs.

    Reflection needs image pixels up to as far inside as the pad reaches out.
    """
    before, after = max(0, -lo), max(0, hi - n)
    s0, s1 = max(0, lo), min(n, hi)
    if reflect:
        s1 = max(s1, min(n, before + 1)) if before else s1
        s0 = min(s0, max(0, n - 1 - after)) if after else s0
    return s0, s1, before, after


def to_grey(rgb: np.ndarray, weights: tuple[float, float, float]) -> np.ndarray:
    """HxW grey: OpenCV's own conversion for its weights (bit-exact), else the rounded weighted sum."""
    if weights == CV2_GREY:
        return cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    return np.clip(np.rint(rgb.astype(np.float64) @ np.asarray(weights)), 0, 255).astype(np.uint8)


def crop_face(
    rgb: np.ndarray, face: Face | None, size: tuple[int, int], channels: int = 3, spec: CropSpec = DEFAULT_CROP
) -> np.ndarray:
    """The classifier's input for one face: HxWxC uint8, cut as ``spec`` says (see ``CropSpec``).

    ``size`` is (height, width); ``channels`` 1 turns the photo grey first.
    ``face=None`` takes the whole image (only resized and, if asked, greyed).
    With ``spec.alignment`` "eyes", a face with landmarks is cut from the photo
    turned about its box centre so that its eyes are level.
    """
    ih, iw = rgb.shape[:2]
    x0, y0, x1, y1 = (0, 0, iw, ih) if face is None else crop_rect(face, spec)
    if spec.border_width is not None:  # the padding reaches this far; the crop is cut beyond it
        b = spec.border_width
        x0, y0, x1, y1 = max(x0, -b), max(y0, -b), min(x1, iw + b), min(y1, ih + b)
    if min(x1, iw) <= max(x0, 0) or min(y1, ih) <= max(y0, 0):
        raise InvalidImageError(f"Face box {face.box if face else None} lies outside the {iw}x{ih} image.")
    if spec.alignment == "eyes" and face is not None and face.landmarks is not None:
        return _resize(_levelled_crop(rgb, face, (x0, y0, x1, y1), channels, spec), size, spec)
    reflect = spec.border == "reflect"
    sx0, sx1, left, right = _span(x0, x1, iw, reflect)
    sy0, sy1, top, bottom = _span(y0, y1, ih, reflect)
    crop = rgb[sy0:sy1, sx0:sx1]
    if channels == 1:
        crop = to_grey(crop, spec.grey_weights)
    if spec.border != "clip" and (left or right or top or bottom):
        if reflect:
            crop = cv2.copyMakeBorder(crop, top, bottom, left, right, cv2.BORDER_REFLECT_101)
        else:
            value = _pad_value(rgb, channels, spec)
            crop = cv2.copyMakeBorder(crop, top, bottom, left, right, cv2.BORDER_CONSTANT, value=value)
        ox, oy = x0 - (sx0 - left), y0 - (sy0 - top)  # reflection may have cut more image than the crop covers
        crop = crop[oy : oy + (y1 - y0), ox : ox + (x1 - x0)]
    return _resize(crop, size, spec)


def eye_angle(face: Face) -> float:
    """The angle (degrees) of the line from the image-left to the image-right eye; positive when it falls (y down)."""
    (lx, ly), (rx, ry) = face.landmarks[0], face.landmarks[1]  # type: ignore[index]
    return math.degrees(math.atan2(ry - ly, rx - lx))


def _levelled_crop(rgb: np.ndarray, face: Face, rect: tuple[int, int, int, int], channels: int,
                   spec: CropSpec) -> np.ndarray:
    """``rect`` cut from ``rgb`` turned about the box centre so the eyes are level, at image resolution, padded.

    Only the window of the photo the turned crop reaches is greyed and warped
    (bilinear); where the crop leaves the photo it is padded as ``spec.border``
    says. With level eyes this is exactly the unaligned crop.
    """
    x0, y0, x1, y1 = rect
    ih, iw = rgb.shape[:2]
    m = cv2.getRotationMatrix2D((face.x + face.w / 2, face.y + face.h / 2), eye_angle(face), 1.0)  # photo -> level
    inv = cv2.invertAffineTransform(m)
    corners = np.array([[x0, y0], [x1, y0], [x0, y1], [x1, y1]], np.float64) @ inv[:, :2].T + inv[:, 2]
    reflect = spec.border == "reflect"
    (ax0, ay0), (ax1, ay1) = np.floor(corners.min(0)).astype(int) - 1, np.ceil(corners.max(0)).astype(int) + 2
    sx0, sx1, _, _ = _span(int(ax0), int(ax1), iw, reflect)
    sy0, sy1, _, _ = _span(int(ay0), int(ay1), ih, reflect)
    sx0, sy0 = min(sx0, iw - 1), min(sy0, ih - 1)  # never an empty window: the warp pads the rest
    window = rgb[sy0 : max(sy1, sy0 + 1), sx0 : max(sx1, sx0 + 1)]
    if channels == 1:
        window = to_grey(window, spec.grey_weights)
    m[:, 2] += m[:, :2] @ np.array([sx0, sy0], np.float64) - (x0, y0)  # window pixels -> crop pixels
    if reflect:
        border, value = cv2.BORDER_REFLECT_101, (0, 0, 0, 0)
    else:
        border, value = cv2.BORDER_CONSTANT, _pad_value(rgb, channels, spec)
    return cv2.warpAffine(window, m, (x1 - x0, y1 - y0), flags=cv2.INTER_LINEAR, borderMode=border, borderValue=value)


def _resize(crop: np.ndarray, size: tuple[int, int], spec: CropSpec) -> np.ndarray:
    """A cut crop resized to the classifier's (height, width) with the spec's interpolation; HxWxC."""
    th, tw = size
    interp = spec.interpolation
    if interp == "auto":
        interp = "area" if crop.shape[0] > th or crop.shape[1] > tw else "linear"
    out = cv2.resize(crop, (tw, th), interpolation=_INTERP[interp])
    return out[:, :, None] if out.ndim == 2 else out


def _pad_value(rgb: np.ndarray, channels: int, spec: CropSpec) -> tuple[int, ...]:
    """The constant, or the mean colour (mean grey for grey crops) of the image ("mean") or of its bottom two
    rows ("bottom-rows-mean"), rounded half to even as OpenCV does, for the constant-value pads."""
    if spec.border == "constant":
        return (spec.border_value,) * 4
    src = rgb[max(0, rgb.shape[0] - 2):] if spec.border == "bottom-rows-mean" else rgb
    mean = cv2.mean(to_grey(src, spec.grey_weights) if channels == 1 else src)[: channels]
    return tuple(int(v) for v in np.rint(mean)) + (0,) * (4 - channels)
