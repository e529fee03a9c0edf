"""Classification agreement by crop spec: the runtime against the classifier's own pipeline.

A classifier agrees with its training only on crops cut the same way (issue 17:
57.8% top-1 agreement with a mismatched crop). This check runs the runtime
(``Stylizer.classify`` on fixed face boxes, onnxruntime CPU) and a reference
pipeline (``reference_crop`` below, then the eager Keras classifier) over faces
that touch every image border, and reports top-1 agreement and max |p diff|:
once with the bundle's own crop spec on both sides (must agree), once with a
different spec on the reference side (shows what a wrong spec costs).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from emostyle_rt.manifest import CROP_PRESETS, CV2_GREY, CropSpec

log = logging.getLogger(__name__)

#: Targets with the spec matching the classifier's pipeline (issue 17).
MIN_TOP1 = 0.99
MAX_PROB_DIFF = 1e-3
#: The astronaut's face box (x, y, w, h) in scikit-image's 512x512 photo.
ASTRONAUT_FACE = (177, 66, 95, 95)
#: Windows (x0, y0, x1, y1) of the astronaut, odd sizes, putting its face at each border, in each corner,
#: inside, and one window that is the face box itself (every margin leaves the image).
WINDOWS = (
    (60, 10, 451, 331),                    # inside
    (177, 0, 478, 257), (17, 0, 272, 257),  # left, right border
    (60, 66, 361, 299), (60, 0, 361, 161),  # top, bottom border
    (177, 66, 378, 253), (71, 66, 272, 253), (177, 0, 378, 161), (71, 0, 272, 161),  # corners
    (177, 66, 272, 161),                   # the box itself
)


# ---------------------------------------------------------------- the independent reference crop


def _reflect101(i: np.ndarray, n: int) -> np.ndarray:
    """Indices ``i`` mirrored into 0..n-1 without repeating the edge (dcb|abcd|cba), however far out."""
    if n == 1:
        return np.zeros_like(i)
    period = 2 * (n - 1)
    m = np.mod(i, period)
    return np.where(m >= n, period - m, m)


def reference_crop(image: np.ndarray, box: tuple[int, int, int, int] | None, spec: CropSpec,
                   size: tuple[int, int], channels: int) -> np.ndarray:
    """The crop ``spec`` documents, written apart from ``emostyle_rt.faces``: plain numpy index maths.

    Grey is OpenCV's 15-bit fixed-point formula for its weights (else the rounded
    weighted sum), padding is index arithmetic, and only the last resize is
    ``cv2.resize``, the resampler both pipelines share. Returns HxWxC uint8.
    """
    import cv2

    px = image.astype(np.int64)
    if channels == 1:
        if tuple(spec.grey_weights) == CV2_GREY:
            px = (px[..., 0] * 9798 + px[..., 1] * 19235 + px[..., 2] * 3735 + (1 << 14)) >> 15
        else:
            px = np.rint(px.astype(np.float64) @ np.asarray(spec.grey_weights)).astype(np.int64)
        px = px[:, :, None]
    ih, iw = px.shape[:2]
    if box is None:
        x0, y0, x1, y1 = 0, 0, iw, ih
    else:
        x, y, w, h = box
        sw, sh = (max(w, h), max(w, h)) if spec.square == "expand" else (w, h)
        if spec.margin_unit == "px":
            half_w, half_h = sw / 2 + spec.margin, sh / 2 + spec.margin
        else:
            half_w, half_h = sw * (1.0 + 2.0 * spec.margin) / 2, sh * (1.0 + 2.0 * spec.margin) / 2
        cx, cy = x + w / 2.0, y + h / 2.0
        x0, x1, y0, y1 = round(cx - half_w), round(cx + half_w), round(cy - half_h), round(cy + half_h)
    ys, xs = np.arange(y0, y1), np.arange(x0, x1)
    if spec.border == "clip":
        ys, xs = ys[(ys >= 0) & (ys < ih)], xs[(xs >= 0) & (xs < iw)]
        crop = px[ys][:, xs]
    elif spec.border == "reflect":
        crop = px[_reflect101(ys, ih)][:, _reflect101(xs, iw)]
    else:
        fill = [spec.border_value] * px.shape[2] if spec.border == "constant" else np.rint(px.mean(axis=(0, 1)))
        crop = np.empty((len(ys), len(xs), px.shape[2]), np.int64)
        crop[:] = np.asarray(fill, np.int64)
        iny, inx = (ys >= 0) & (ys < ih), (xs >= 0) & (xs < iw)
        crop[np.ix_(iny, inx)] = px[ys[iny]][:, xs[inx]]
    crop = crop.astype(np.uint8)
    th, tw = size
    interp = spec.interpolation
    if interp == "auto":
        interp = "area" if crop.shape[0] > th or crop.shape[1] > tw else "linear"
    flag = {"area": cv2.INTER_AREA, "linear": cv2.INTER_LINEAR, "cubic": cv2.INTER_CUBIC, "nearest": cv2.INTER_NEAREST}
    out = cv2.resize(np.ascontiguousarray(crop), (tw, th), interpolation=flag[interp])
    return out.reshape(th, tw, -1)


# ---------------------------------------------------------------- faces at the borders


def border_faces() -> list[tuple[str, np.ndarray, tuple[int, int, int, int]]]:
    """(name, image, face box) with the astronaut's face at every border and corner, full and half scale."""
    import cv2
    from emostyle_export.parity import astronaut

    full = astronaut()
    half = cv2.resize(full, (256, 256), interpolation=cv2.INTER_AREA)
    out = []
    for scale, img in ((1, full), (2, half)):
        x, y, w, h = ASTRONAUT_FACE
        fx, fy, fx1, fy1 = (round(v / scale) for v in (x, y, x + w, y + h))  # edges scaled as the windows' are
        fw, fh = fx1 - fx, fy1 - fy
        for x0, y0, x1, y1 in WINDOWS:
            x0, y0, x1, y1 = (round(v / scale) for v in (x0, y0, x1, y1))
            win = np.ascontiguousarray(img[y0:y1, x0:x1])
            out.append((f"{x1 - x0}x{y1 - y0}@1/{scale}", win, (fx - x0, fy - y0, fw, fh)))
    return out


# ---------------------------------------------------------------- the check


@dataclass(frozen=True)
class CropAgreement:
    """Runtime vs reference pipeline on the same face boxes; ``ok`` None for the mismatched (informational) row."""

    runtime_spec: str  # CropSpec.summary() of the bundle's spec
    reference_spec: str  # the reference pipeline's spec
    matched: bool  # the reference uses the bundle's own spec
    faces: int
    top1_agree: int
    max_abs_diff: float
    ok: bool | None
    summary: str


class _Fixed:
    """A detector that returns the box it is told (so both pipelines see the same face)."""

    box: tuple[int, int, int, int] = (0, 0, 1, 1)

    def detect(self, rgb: np.ndarray) -> list[Any]:
        from emostyle_rt.faces import Face

        return [Face(*self.box)]


def compare(runtime: np.ndarray, reference: np.ndarray, runtime_spec: CropSpec, reference_spec: CropSpec,
            matched: bool) -> CropAgreement:
    """Top-1 agreement and max |p diff| of two [N, classes] probability arrays."""
    n = len(runtime)
    agree = int((runtime.argmax(axis=1) == reference.argmax(axis=1)).sum())
    diff = float(np.abs(runtime.astype(np.float64) - reference).max()) if n else 0.0
    ok = (agree >= MIN_TOP1 * n and diff <= MAX_PROB_DIFF) if matched else None
    text = f"top-1 {agree}/{n} ({100.0 * agree / max(n, 1):.1f}%), max abs p diff {diff:.1e}"
    return CropAgreement(runtime_spec.summary(), reference_spec.summary(), matched, n, agree, diff, ok, text)


def check_crop_agreement(bundle: Any, keras_probs: Callable[[np.ndarray], np.ndarray],
                         reference_specs: Sequence[CropSpec] | None = None) -> list[CropAgreement]:
    """The runtime (bundle's spec) against Keras on ``reference_crop`` crops of each reference spec.

    ``keras_probs`` maps uint8 NHWC crops to probabilities (the eager reference).
    Default reference specs: the bundle's own, then a mismatched preset.
    """
    from emostyle_rt import Stylizer

    det = _Fixed()
    st = Stylizer(bundle, backend="onnxruntime", provider="cpu", detector=det)
    spec, c = st.crop, st.manifest.classifier
    if reference_specs is None:
        other = CROP_PRESETS["fer-style"] if spec != CROP_PRESETS["fer-style"] else CROP_PRESETS["default"]
        reference_specs = (spec, other)
    faces = border_faces()
    ours = []
    for _, img, box in faces:
        det.box = box
        scores = st.classify(img).scores
        ours.append([scores[label] for label in st.labels])
    runtime = np.asarray(ours, np.float64)
    out = []
    for ref_spec in reference_specs:
        crops = np.stack([reference_crop(img, box, ref_spec, (c.height, c.width), c.channels) for _, img, box in faces])
        result = compare(runtime, np.asarray(keras_probs(crops), np.float64), spec, ref_spec, ref_spec == spec)
        log.info("crop agreement, reference %s: %s", ref_spec.summary(), result.summary)
        out.append(result)
    return out


__all__ = ["CropAgreement", "border_faces", "check_crop_agreement", "compare", "reference_crop"]
