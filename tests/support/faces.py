"""Face-detection recall and false positives on a synthetic set built from real photos (offline).

Faces cut from real photos (scikit-image's astronaut and cameraman, mirrored,
brightness and contrast varied) are pasted with a feathered elliptical mask onto
face-free real photos (coffee, cat, rocket, coins, ...) at 20-400 px face height
(log-uniform) and in-plane rotations up to +-30 degrees; some images hold two
faces, some none. A detection matches a face when its IoU with the face's box
(the source detector's box, scaled, about the rotated face centre) is at least
``MIN_IOU``; each face matches once. Everything else a detector reports is a
false positive.

The test-support owner of the set (tests/runtime/test_mtcnn.py); the study
``studies/face_recall`` prints MTCNN and Haar side by side on it.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
from emostyle_rt import metrics

log = logging.getLogger(__name__)

#: Real photos with a face, and the face box (x, y, w, h) the mtcnn package finds in each.
FACE_SOURCES = (("astronaut", (182, 64, 83, 107)), ("camera", (197, 116, 58, 81)))
#: Real photos without a face (neither MTCNN nor Haar at full size finds one in them, except Haar in coins).
BACKGROUNDS = ("coffee", "chelsea", "rocket", "coins", "page", "text", "hubble_deep_field", "immunohistochemistry",
               "horse", "moon", "brick", "grass", "gravel", "logo", "colorwheel")
MIN_IOU = 0.4
#: Face heights (px) from which recall is judged (the target: recall >= 0.95 from 40 px).
JUDGED_FROM = 40


@dataclass(frozen=True)
class Sample:
    """One synthetic photo and its faces: boxes (x, y, w, h) and in-plane angles (degrees)."""

    image: np.ndarray  # HxWx3 uint8 RGB
    boxes: tuple[tuple[float, float, float, float], ...]
    angles: tuple[float, ...]


def _photo(name: str) -> np.ndarray:
    from skimage import data

    img = getattr(data, name)()
    if img.dtype == bool:
        img = img.astype(np.uint8) * 255
    if img.ndim == 2:
        img = np.dstack([img] * 3)
    return np.ascontiguousarray(img[..., :3])


def _cover(img: np.ndarray, h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """``img`` scaled to cover h x w and cut at a random place."""
    s = max(h / img.shape[0], w / img.shape[1])
    big = cv2.resize(img, (max(w, math.ceil(img.shape[1] * s)), max(h, math.ceil(img.shape[0] * s))),
                     interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR)
    y, x = rng.integers(0, big.shape[0] - h + 1), rng.integers(0, big.shape[1] - w + 1)
    return big[y : y + h, x : x + w].copy()


def _paste(canvas: np.ndarray, src: np.ndarray, box: tuple[float, ...], height: float, angle: float,
           centre: tuple[float, float]) -> tuple[float, float, float, float]:
    """Paste ``src``'s face ``box`` (x, y, w, h) at ``height`` px, turned by ``angle``, centred at ``centre``.

    A feathered ellipse around the face (hair included) is blended in; returns
    the pasted face's upright box (its size, about its centre).
    """
    x, y, w, h = box
    if height < h:  # shrink with area averaging first (a warp alone would alias), then only turn
        k0 = height / h
        small = cv2.resize(src, (max(1, round(src.shape[1] * k0)), max(1, round(src.shape[0] * k0))),
                           interpolation=cv2.INTER_AREA)
        kx, ky = small.shape[1] / src.shape[1], small.shape[0] / src.shape[0]
        src, (x, y, w, h) = small, (x * kx, y * ky, w * kx, h * ky)
    k = height / h
    cx, cy = x + w / 2, y + h / 2
    m = cv2.getRotationMatrix2D((cx, cy), angle, k)
    m[:, 2] += (centre[0] - cx, centre[1] - cy)
    mask = np.zeros(src.shape[:2], np.float32)
    cv2.ellipse(mask, (round(cx), round(cy - 0.05 * h)), (max(1, round(0.8 * w)), max(1, round(0.85 * h))),
                0, 0, 360, 1.0, -1)
    mask = cv2.GaussianBlur(mask, (0, 0), max(0.5, 0.08 * w))
    size = (canvas.shape[1], canvas.shape[0])
    warped = cv2.warpAffine(src, m, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
    alpha = cv2.warpAffine(mask, m, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)[..., None]
    canvas[:] = np.clip(canvas * (1.0 - alpha) + warped * alpha + 0.5, 0, 255).astype(np.uint8)
    fw, fh = w * k, h * k
    return (centre[0] - fw / 2, centre[1] - fh / 2, fw, fh)


def _face_source(rng: np.random.Generator, sources: list[tuple[np.ndarray, tuple[int, ...]]]
                 ) -> tuple[np.ndarray, tuple[float, ...]]:
    """A face photo, perhaps mirrored, with brightness and contrast varied, and its face box."""
    img, (x, y, w, h) = sources[rng.integers(len(sources))]
    if rng.random() < 0.5:
        img, x = img[:, ::-1], img.shape[1] - x - w
    a, b = rng.uniform(0.75, 1.25), rng.uniform(-25, 25)
    img = np.clip(img.astype(np.float32) * a + b, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(img), (x, y, w, h)


def synthetic_set(n_faces: int = 64, n_empty: int = 16, size: tuple[int, int] = (600, 800), seed: int = 0,
                  max_angle: float = 30.0) -> list[Sample]:
    """``n_faces`` photos with one or two pasted faces and ``n_empty`` without (height, width ``size``)."""
    rng = np.random.default_rng(seed)
    sources = [(_photo(name), box) for name, box in FACE_SOURCES]
    backgrounds = [_photo(name) for name in BACKGROUNDS]
    hgt, wid = size
    out = []
    for i in range(n_faces + n_empty):
        bg = backgrounds[rng.integers(len(backgrounds))]
        canvas = _cover(bg[:, ::-1] if rng.random() < 0.5 else bg, hgt, wid, rng)
        boxes: list[tuple[float, ...]] = []
        angles: list[float] = []
        taken: list[tuple[float, float, float]] = []  # centre and head radius of faces already pasted
        for _ in range(0 if i >= n_faces else 1 + int(rng.random() < 0.3)):
            src, box = _face_source(rng, sources)
            height = math.exp(rng.uniform(math.log(20), math.log(400)))
            angle = rng.uniform(-max_angle, max_angle)
            fw = height * box[2] / box[3]
            t = math.radians(abs(angle))
            ex, ey = (fw * math.cos(t) + height * math.sin(t)) / 2, (fw * math.sin(t) + height * math.cos(t)) / 2
            radius = 0.9 * max(fw, height)
            for _try in range(30):
                c = (rng.uniform(ex, max(ex, wid - ex)), rng.uniform(ey, max(ey, hgt - ey)))
                if all(math.hypot(c[0] - tx, c[1] - ty) > radius + tr for tx, ty, tr in taken):
                    break
            else:
                continue
            taken.append((c[0], c[1], radius))
            boxes.append(_paste(canvas, src, box, height, angle, c))
            angles.append(angle)
        out.append(Sample(canvas, tuple(boxes), tuple(angles)))  # type: ignore[arg-type]
    return out


iou = metrics.box_iou  # the one IoU of two (x, y, w, h) boxes (emostyle_rt.metrics)


@dataclass(frozen=True)
class RecallReport:
    """What one detector found on a synthetic set."""

    detector: str
    images: int
    faces: int
    found: int
    judged: int  # faces >= JUDGED_FROM px high
    judged_found: int
    false_positives: int
    median_ms: float
    by_size: tuple[tuple[str, int, int], ...]  # (bin, faces, found)
    by_angle: tuple[tuple[str, int, int], ...]

    @property
    def recall(self) -> float:
        return self.judged_found / self.judged if self.judged else 1.0

    def row(self) -> str:
        sizes = "  ".join(f"{name}: {f}/{n}" for name, n, f in self.by_size)
        angles = "  ".join(f"{name}: {f}/{n}" for name, n, f in self.by_angle)
        return (f"{self.detector:6s} recall >= {JUDGED_FROM} px {self.recall:.3f} ({self.judged_found}/{self.judged}), "
                f"all {self.found}/{self.faces}, false positives {self.false_positives} in {self.images} images, "
                f"median {self.median_ms:.1f} ms/image\n         by face height {sizes}\n         by angle {angles}")


def _bin(value: float, edges: Sequence[float], unit: str) -> tuple[int, str]:
    """(index, label) of the bin of ``value`` between ``edges`` (the last bin is open)."""
    for i, (lo, hi) in enumerate(zip(edges, edges[1:])):
        if lo <= value < hi:
            return i, f"{lo:g}-{hi:g}{unit}"
    return len(edges), f">={edges[-1]:g}{unit}"


def evaluate(name: str, detect: Callable[[np.ndarray], list[Any]], samples: Sequence[Sample]) -> RecallReport:
    """Match ``detect``'s boxes to the faces of ``samples`` (IoU >= MIN_IOU, once each); count the rest."""
    faces = found = judged = judged_found = fps = 0
    sizes: dict[tuple[int, str], list[int]] = {}
    angles: dict[tuple[int, str], list[int]] = {}
    times = []
    for s in samples:
        t0 = time.perf_counter()
        dets = [tuple(f.box) for f in detect(s.image)]
        times.append(time.perf_counter() - t0)
        free = list(range(len(dets)))
        for box, angle in zip(s.boxes, s.angles):
            best = max(free, key=lambda j: iou(dets[j], box), default=None)
            hit = best is not None and iou(dets[best], box) >= MIN_IOU
            if hit:
                free.remove(best)  # type: ignore[arg-type]
            faces, found = faces + 1, found + hit
            if box[3] >= JUDGED_FROM:
                judged, judged_found = judged + 1, judged_found + hit
            for table, key in ((sizes, _bin(box[3], (20, 40, 80, 160), " px")),
                               (angles, _bin(abs(angle), (0, 10, 20), " deg"))):
                table.setdefault(key, [0, 0])
                table[key][0] += 1
                table[key][1] += hit
        fps += len(free)

    def rows(table: dict[tuple[int, str], list[int]]) -> tuple[tuple[str, int, int], ...]:
        return tuple((k[1], v[0], v[1]) for k, v in sorted(table.items()))

    return RecallReport(name, len(samples), faces, found, judged, judged_found, fps,
                        1e3 * float(np.median(times)) if times else 0.0, rows(sizes), rows(angles))
