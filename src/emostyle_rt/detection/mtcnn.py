"""MTCNN face detection in numpy + onnxruntime (or OpenVINO), as the ``mtcnn`` package (1.0) runs it.

The cascade (Zhang et al. 2016): an image pyramid through P-Net (proposals),
non-maximum suppression, R-Net on 24x24 patches (refinement), O-Net on 48x48
patches (boxes and five landmarks). Every convention comes from the bundle's
``detector`` block (:class:`~emostyle_rt.manifest.DetectorSpec`); the steps are
those of the package's stages, reproduced here without TensorFlow:

- pyramid scales ``min_size / min_face_size * scale_factor**k`` for
  ``k < round(-(log(min_side / min_size) / log(scale_factor) + 1))``; each
  level's sides are the image sides times the scale, truncated; area resize;
- P-Net windows ``stride * (x, y) + 1 .. stride * (x, y) + cell``, regressed in units
  of ``cell - 1`` before NMS;
- NMS as the package does it: a box is dropped when any higher-scored box
  overlaps it beyond the threshold, suppressed or not ("fast NMS");
- patches cut like ``tf.image.crop_and_resize`` of ``box / (H, W)`` (bilinear,
  samples outside the image get ``pad_value``);
- refinements with widths ``x2 - x1 + 1``, squares with ``x2 - x1``.

Each pyramid level is one P-Net run; R-Net and O-Net each run once on all
candidates of the image. The pyramid is built from a copy whose longer side is
at most ``detect_side`` (default 640), so its cost does not grow with
megapixels: faces are searched for down to ``min_face_size`` pixels of that
copy. R-Net and O-Net cut their patches from the full image, as the package does.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ..backends import LOADERS, Lazy, Runner
from ..errors import BundleError, InvalidArgumentError, InvalidImageError, note
from ..manifest import DetectorGraph, DetectorSpec
from ..metrics import DETECTOR_TOLERANCE
from .faces import Face, downscale

log = logging.getLogger(__name__)

#: Detection runs on a copy whose longer side is at most this many pixels (None: the full image).
MTCNN_DETECT_SIDE = 640
#: Rows of the pairwise-IoU matrix computed at once by :func:`fast_nms` (bounds its memory).
_NMS_BLOCK = 1024


def pyramid_scales(height: int, width: int, min_face_size: float, min_size: int, factor: float) -> np.ndarray:
    """The package's pyramid scales for an image (``build_scale_pyramid``); empty when it is too small."""
    min_dim = min(height, width)
    if min_dim < min_size:
        return np.empty(0)
    count = round(-((np.log(min_dim / min_size) / np.log(factor)) + 1))
    return (min_size / min_face_size) * factor ** np.arange(max(0, count))


def level_shape(height: int, width: int, scale: float) -> tuple[int, int]:
    """A pyramid level's (height, width): the sides times the scale, truncated (as ``tf.image.resize`` is given them)."""
    h, w = (np.asarray([height, width]) * scale).astype(np.int64)
    return int(h), int(w)


def fast_nms(boxes: np.ndarray, threshold: float, method: str = "union") -> np.ndarray:
    """Indices kept by the package's NMS of ``boxes`` (N x 4 x1, y1, x2, y2, sorted by score, best first).

    Box i is dropped when a box before it overlaps it by more than ``threshold``:
    intersection over union ("union") or over the smaller area ("min").
    """
    n = len(boxes)
    if n == 0:
        return np.empty(0, np.int64)
    x1, y1, x2, y2 = (boxes[:, k] for k in range(4))
    area = (x2 - x1) * (y2 - y1)
    keep = np.ones(n, bool)
    for start in range(0, n, _NMS_BLOCK):
        stop = min(n, start + _NMS_BLOCK)
        cols = slice(start, stop)  # boxes judged; rows: every box before the last of them
        w = np.maximum(0.0, np.minimum(x2[:stop, None], x2[None, cols]) - np.maximum(x1[:stop, None], x1[None, cols]))
        h = np.maximum(0.0, np.minimum(y2[:stop, None], y2[None, cols]) - np.maximum(y1[:stop, None], y1[None, cols]))
        inter = w * h
        if method == "union":
            denom = area[:stop, None] + area[None, cols] - inter
        else:
            denom = np.minimum(area[:stop, None], area[None, cols])
        with np.errstate(divide="ignore", invalid="ignore"):
            over = inter / denom > threshold
        before = np.arange(stop)[:, None] < np.arange(start, stop)[None, :]
        keep[cols] = ~(over & before).any(axis=0)
    return np.flatnonzero(keep)


def by_score(rows: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """``rows`` sorted by score, best first (the package's ``sort_by_scores``: argsort reversed)."""
    return rows[np.argsort(scores)[::-1]]


def square(boxes: np.ndarray) -> np.ndarray:
    """Boxes grown to squares of their longer side about their centres (``resize_to_square``)."""
    out = boxes.copy()
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    side = np.maximum(w, h)
    out[:, 0] = boxes[:, 0] + w * 0.5 - side * 0.5
    out[:, 1] = boxes[:, 1] + h * 0.5 - side * 0.5
    out[:, 2] = out[:, 0] + side
    out[:, 3] = out[:, 1] + side
    return out


def crop_and_resize(image: np.ndarray, boxes: np.ndarray, size: int, pad_value: float) -> np.ndarray:
    """N x size x size x C float32 patches of ``image`` (H x W x C, uint8 or float32) in ``boxes`` (N x 4 x1, y1, x2, y2).

    Exactly ``tf.image.crop_and_resize(image, box / (H, W), size)`` as the package
    calls it: the normalised box (float32) is mapped onto pixel centres
    ``0..H-1``, sampled bilinearly; a sample outside the image is ``pad_value``.
    """
    ih, iw = image.shape[:2]
    n = len(boxes)
    norm = (boxes[:, [1, 0, 3, 2]] / np.asarray([ih, iw, ih, iw], np.float64)).astype(np.float32)
    steps = np.arange(size, dtype=np.float32)

    def axis(lo: np.ndarray, hi: np.ndarray, extent: int) -> tuple[np.ndarray, ...]:
        if size > 1:
            pos = lo[:, None] * np.float32(extent - 1) + steps[None, :] * ((hi - lo) * np.float32(extent - 1)
                                                                         / np.float32(size - 1))[:, None]
        else:
            pos = (np.float32(0.5) * (lo + hi) * np.float32(extent - 1))[:, None]
        inside = (pos >= 0) & (pos <= extent - 1)
        low = np.clip(np.floor(pos), 0, extent - 1).astype(np.intp)
        high = np.clip(np.ceil(pos), 0, extent - 1).astype(np.intp)
        return low, high, (pos - np.floor(pos)).astype(np.float32), inside

    top, bottom, y_lerp, y_in = axis(norm[:, 0], norm[:, 2], ih)
    left, right, x_lerp, x_in = axis(norm[:, 1], norm[:, 3], iw)
    flat = image.reshape(ih * iw, -1)

    def pick(rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        return flat[(rows * iw)[:, :, None] + cols[:, None, :]].astype(np.float32, copy=False)

    xl = x_lerp[:, None, :, None]
    upper = pick(top, left) + (pick(top, right) - pick(top, left)) * xl
    lower = pick(bottom, left) + (pick(bottom, right) - pick(bottom, left)) * xl
    out = upper + (lower - upper) * y_lerp[:, :, None, None]
    inside = (y_in[:, :, None] & x_in[:, None, :])[..., None]
    return np.where(inside, out, np.float32(pad_value)).astype(np.float32).reshape(n, size, size, -1)


def _finite(rows: np.ndarray) -> np.ndarray:
    """Only the rows whose every value is finite (a graph never hands NaN or inf on)."""
    return rows[np.isfinite(rows).all(axis=1)] if len(rows) else rows


def graph_provider(provider: str | None) -> str:
    """The onnxruntime provider of the MTCNN graphs for the Stylizer's ``provider``.

    The CUDA EP where the other graphs would use a GPU, else CPU. Not the
    TensorRT EP: P-Net's input shape changes with every pyramid level and image
    size, and the TensorRT EP builds an engine for each new shape.
    """
    from ..backends.ort import changing_shapes_provider

    chosen = changing_shapes_provider(provider)
    if provider == "tensorrt":
        log.info("MTCNN runs on the %s EP: P-Net's shapes change per pyramid level (a TensorRT engine each).",
                 chosen.upper())
    return chosen


class MtcnnDetector:
    """The bundle's MTCNN face detector: boxes, scores and five landmarks per face.

    ``spec`` and ``root``: the manifest's detector block and the bundle folder.
    ``provider`` as for the other graphs (None: CUDA when there is a GPU, else CPU;
    see :func:`graph_provider`). ``backend``: "auto" (the default; the Stylizer
    passes its own): on a CPU-only machine with OpenVINO installed, the graphs
    that ``backends.openvino.auto_uses`` names (none today: measured slower on new
    shapes) run in OpenVINO, gated against onnxruntime on their first input, the
    rest in onnxruntime; a ``provider`` given means onnxruntime. "openvino": all
    three in OpenVINO, gated (a failed gate raises). "onnxruntime" or another
    loader of ``backends.LOADERS``: that one.
    ``min_face_size`` replaces the bundle's (pixels of the detection copy, at
    least the spec's ``min_size``); ``detect_side`` caps the detection copy's
    longer side (None: the full image, like the package). Thread-safe: graphs
    load once on first use (``preload()``: now), every call works on its own
    arrays.
    """

    def __init__(
        self,
        spec: DetectorSpec,
        root: str | os.PathLike,
        *,
        provider: str | None = None,
        min_face_size: float | None = None,
        detect_side: int | None = MTCNN_DETECT_SIDE,
        backend: str = "auto",
    ) -> None:
        if backend != "auto" and backend not in LOADERS:
            raise InvalidArgumentError(f"Unknown backend {backend!r} for the face detector's graphs."
                                       + note(" or ".join(("auto", *LOADERS)), repr(backend)))
        if min_face_size is not None and (isinstance(min_face_size, bool) or not isinstance(min_face_size, (int, float))
                                          or not spec.min_size <= min_face_size <= 1e5):
            raise InvalidArgumentError("min_face_size is out of range; the pyramid only shrinks the image."
                               + note(f"a number from {spec.min_size} (P-Net's window) up", repr(min_face_size)))
        if detect_side is not None and (isinstance(detect_side, bool) or not isinstance(detect_side, int)
                                        or detect_side < spec.min_size):
            raise InvalidArgumentError(
                "detect_side is out of range." + note(f"None or an int >= {spec.min_size}", repr(detect_side)))
        self.spec, self.root = spec, Path(root)
        if backend == "auto" and provider is not None:
            backend = "onnxruntime"  # a provider is onnxruntime's, as for the other graphs (runner_for)
        self.backend = backend
        self.provider = graph_provider(provider) if backend in ("auto", "onnxruntime") else None
        self.min_face_size = float(spec.min_face_size if min_face_size is None else min_face_size)
        self.detect_side = detect_side
        self._lock = threading.Lock()
        # loaded on first use (damaged files fail the bundle's sha256 check at open)
        self._runners: Lazy[str, Runner] = Lazy(self._lock)

    # -- graphs --------------------------------------------------------------

    def _runner(self, name: str) -> Runner:
        return self._runners.load(name, lambda: self._load(name, self.spec.graphs[name]))

    def _load(self, name: str, graph: DetectorGraph) -> Any:
        from ..backends import load_graph, openvino

        path = self.root / graph.onnx

        def onnxruntime() -> Runner:  # a few ms per run: no spinning threads
            return load_graph(path, backend="onnxruntime", provider=self.provider or "cpu", small=True)

        tolerance = float(graph.parity.get("tolerance", DETECTOR_TOLERANCE))
        if self.backend in ("auto", "openvino"):
            runner = openvino.detector_runner(path, name, onnxruntime, required=self.backend == "openvino",
                                              tolerance=tolerance) or onnxruntime()
        elif self.backend == "onnxruntime":
            runner = onnxruntime()
        else:
            runner = load_graph(path, backend=self.backend, small=True)
        ins, outs = {t.name: t for t in runner.inputs}, {t.name for t in runner.outputs}
        missing = [n for n in graph.output_names if n not in outs] + [graph.input_name] * (graph.input_name not in ins)
        shape = ins[graph.input_name].shape if graph.input_name in ins else ()
        want = (graph.size, graph.size, 3)
        bad_shape = len(shape) != 4 or any(isinstance(d, int) and d != w for d, w in zip(shape[1:], want) if w)
        if missing or bad_shape:
            runner.close()
            raise BundleError(
                f"Face detector graph {path} ({name}) does not match its manifest."
                + note(f"input {graph.input_name!r} [N, {graph.size or 'H'}, {graph.size or 'W'}, 3], outputs "
                       f"{list(graph.output_names)}", f"inputs {[(t.name, list(t.shape)) for t in runner.inputs]}, "
                       f"outputs {sorted(outs)}"))
        return runner

    def _run(self, name: str, batch: np.ndarray) -> list[np.ndarray]:
        graph = self.spec.graphs[name]
        out = self._runner(name).run({graph.input_name: np.ascontiguousarray(batch, np.float32)})
        return [np.asarray(out[n], np.float64) for n in graph.output_names]

    def preload(self) -> None:
        """Load and check the three graphs now instead of on first use."""
        for name in self.spec.graphs:
            self._runner(name)

    def close(self) -> None:
        """Free the graphs' sessions; they load again on next use."""
        for r in self._runners.drain():
            r.close()

    # -- detection -----------------------------------------------------------

    def detect(self, rgb: np.ndarray) -> list[Face]:
        """Faces in an HxWx3 uint8 RGB image, largest first, each with its score and five landmarks.

        Landmarks, in full-image pixels: image-left eye, image-right eye, nose,
        image-left mouth corner, image-right mouth corner (the package's
        left_eye, right_eye, nose, mouth_left, mouth_right).
        """
        if not isinstance(rgb, np.ndarray) or rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
            got = f"{rgb.dtype} {rgb.shape}" if isinstance(rgb, np.ndarray) else type(rgb).__name__
            raise InvalidImageError("MTCNN detects faces in HxWx3 uint8 RGB images." + note("uint8 HxWx3", got))
        faces = []
        for r in self.detect_rows(rgb):
            # The package's box: x1, y1 and the width and height, each rounded (half to even).
            x, y, w, h = (int(np.round(v)) for v in (r[0], r[1], r[2] - r[0], r[3] - r[1]))
            w, h = min(w, rgb.shape[1] - x), min(h, rgb.shape[0] - y)
            if w > 0 and h > 0:
                faces.append(Face(x, y, w, h, float(r[4]), tuple((float(r[5 + k]), float(r[10 + k])) for k in range(5))))
        return sorted(faces, key=lambda f: f.area, reverse=True)

    def detect_rows(self, rgb: np.ndarray) -> np.ndarray:
        """The cascade on one image: rows ``x1, y1, x2, y2, score, lx1..lx5, ly1..ly5`` (pixels of ``rgb``).

        P-Net runs on the detection copy (longer side at most ``detect_side``);
        R-Net and O-Net cut their patches from the full image, as the package
        does. Boxes are clipped to the image (``0..W-1``, ``0..H-1``) as the
        package's ``fit_to_image`` does; landmarks are not. Best score first.
        """
        spec = self.spec
        img = rgb[..., ::-1] if spec.color == "BGR" else rgb
        if spec.transposed:
            img = img.transpose(1, 0, 2)
        img = np.ascontiguousarray(img)
        small, factor = downscale(img, self.detect_side) if self.detect_side else (img, 1.0)
        proposals = self._pnet(small.astype(np.float32))
        proposals[:, :4] *= factor
        rows = self._onet(img, self._rnet(img, proposals))
        if len(rows) == 0:
            return np.empty((0, 15))
        h, w = img.shape[:2]
        rows[:, [0, 2]] = np.clip(rows[:, [0, 2]], 0, w - 1)
        rows[:, [1, 3]] = np.clip(rows[:, [1, 3]], 0, h - 1)
        if spec.transposed:  # back to the image's x, y
            rows = rows[:, [1, 0, 3, 2, 4, *range(10, 15), *range(5, 10)]]
        return rows

    def _pnet(self, img: np.ndarray) -> np.ndarray:
        """P-Net proposals: squared boxes ``x1, y1, x2, y2, score``."""
        spec = self.spec
        h, w = img.shape[:2]
        found = []
        for scale in pyramid_scales(h, w, self.min_face_size, spec.min_size, spec.scale_factor):
            lh, lw = level_shape(h, w, scale)
            if min(lh, lw) < spec.min_size:
                continue
            level = cv2.resize(img, (lw, lh), interpolation=cv2.INTER_AREA)
            reg, prob = self._run("pnet", level[None])
            ys, xs = np.nonzero(prob[0] > spec.thresholds[0])
            if len(ys) == 0:
                continue
            # The window of cell (y, x): pixels stride * (y, x) + 1 .. stride * (y, x) + cell, regressed in
            # units of cell - 1 (the package's generate_bounding_box).
            r, unit = reg[0, ys, xs], spec.cell - 1
            x0, y0 = xs * spec.stride + 1, ys * spec.stride + 1
            boxes = np.stack([x0 + r[:, 0] * unit, y0 + r[:, 1] * unit,
                              x0 + unit + r[:, 2] * unit, y0 + unit + r[:, 3] * unit, prob[0, ys, xs]], axis=1)
            boxes[:, :4] /= scale
            boxes = _finite(by_score(boxes, boxes[:, 4]))
            found.append(boxes[fast_nms(boxes, spec.nms[0])])
        if not found:
            return np.empty((0, 5))
        boxes = np.concatenate(found)
        boxes = by_score(boxes, boxes[:, 4])
        boxes = boxes[fast_nms(boxes, spec.nms[1])]
        return np.concatenate([square(boxes[:, :4]), boxes[:, 4:]], axis=1)

    def _rnet(self, img: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        """R-Net on every proposal in one run: refined, squared boxes ``x1, y1, x2, y2, score``."""
        if len(boxes) == 0:
            return boxes
        spec = self.spec
        reg, prob = self._run("rnet", crop_and_resize(img, boxes[:, :4], spec.rnet.size, spec.pad_value))
        out = np.concatenate([_refine(boxes[:, :4], reg), prob[:, None]], axis=1)
        out = _finite(out[out[:, 4] > spec.thresholds[1]])
        out = by_score(out, out[:, 4])
        out = out[fast_nms(out, spec.nms[2])]
        return np.concatenate([square(out[:, :4]), out[:, 4:]], axis=1)

    def _onet(self, img: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        """O-Net on every R-Net box in one run: rows ``x1, y1, x2, y2, score, lx1..lx5, ly1..ly5``."""
        if len(boxes) == 0:
            return np.empty((0, 15))
        spec = self.spec
        reg, marks, prob = self._run("onet", crop_and_resize(img, boxes[:, :4], spec.onet.size, spec.pad_value))
        w = boxes[:, 2:3] - boxes[:, 0:1] + 1
        h = boxes[:, 3:4] - boxes[:, 1:2] + 1
        lx = w * marks[:, :5] + boxes[:, 0:1] - 1
        ly = h * marks[:, 5:] + boxes[:, 1:2] - 1
        out = np.concatenate([_refine(boxes[:, :4], reg), prob[:, None], lx, ly], axis=1)
        out = _finite(out[out[:, 4] > spec.thresholds[2]])
        out = by_score(out, out[:, 4])
        return out[fast_nms(out, spec.nms[3], "min")]


def _refine(boxes: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Boxes moved by regression offsets in units of their size ``x2 - x1 + 1`` (``adjust_bboxes``)."""
    w = boxes[:, 2] - boxes[:, 0] + 1
    h = boxes[:, 3] - boxes[:, 1] + 1
    return boxes + offsets * np.stack([w, h, w, h], axis=1)
