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
    """The crop ``spec`` documents, written apart from ``emostyle_rt.detection.faces``: plain numpy index maths.

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
        rnd = round if spec.rounding == "half-even" else (lambda v: int(np.floor(v + 0.5)))
        x0, x1, y0, y1 = rnd(cx - half_w), rnd(cx + half_w), rnd(cy - half_h), rnd(cy + half_h)
    if spec.border_width is not None:
        b = spec.border_width
        x0, y0, x1, y1 = max(x0, -b), max(y0, -b), min(x1, iw + b), min(y1, ih + b)
    ys, xs = np.arange(y0, y1), np.arange(x0, x1)
    if spec.border == "clip":
        ys, xs = ys[(ys >= 0) & (ys < ih)], xs[(xs >= 0) & (xs < iw)]
        crop = px[ys][:, xs]
    elif spec.border == "reflect":
        crop = px[_reflect101(ys, ih)][:, _reflect101(xs, iw)]
    else:
        if spec.border == "constant":
            fill = [spec.border_value] * px.shape[2]
        else:  # "mean" of the image, "bottom-rows-mean" of its last two rows
            fill = np.rint((px if spec.border == "mean" else px[-2:]).mean(axis=(0, 1)))
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


#: Real faces and the boxes MTCNN gives them (x, y, w, h): long sides, odd and even squaring differences.
REAL_FACES = {"astronaut": (182, 64, 83, 107), "camera": (197, 116, 58, 81)}
#: Fractions of the face a window cuts off at one side (the detector's box then is clipped at that edge).
CUTS = (0.4, 0.6)


def _real_photo(name: str) -> np.ndarray:
    import cv2
    from emostyle_export.parity import astronaut

    if name == "astronaut":
        return astronaut()
    from skimage import data

    return cv2.cvtColor(np.ascontiguousarray(data.camera()), cv2.COLOR_GRAY2RGB)


def pipeline_faces() -> list[tuple[str, np.ndarray, tuple[int, int, int, int]]]:
    """(name, image, face box) for checking a classifier's own pipeline: :func:`border_faces`, then real photos
    (astronaut, cameraman) with their detector boxes, whole (not at an edge), at each border and corner, and
    cut by each border (40% and 60% of the face outside the window, the box clipped there, as MTCNN clips)."""
    out = border_faces()
    for name, (x, y, w, h) in REAL_FACES.items():
        img = _real_photo(name)
        ih, iw = img.shape[:2]
        out.append((f"{name} {iw}x{ih}", img, (x, y, w, h)))
        pad = w // 2
        windows = {"left": (x, max(0, y - pad), min(iw, x + w + 3 * pad), min(ih, y + h + pad)),
                   "right": (max(0, x - 3 * pad), max(0, y - pad), x + w, min(ih, y + h + pad)),
                   "top": (max(0, x - pad), y, min(iw, x + w + pad), min(ih, y + h + 3 * pad)),
                   "bottom": (max(0, x - pad), max(0, y - 3 * pad), min(iw, x + w + pad), y + h),
                   "top-left": (x, y, min(iw, x + w + 2 * pad), min(ih, y + h + 2 * pad))}
        for side, (x0, y0, x1, y1) in windows.items():
            out.append((f"{name} at {side}", np.ascontiguousarray(img[y0:y1, x0:x1]), (x - x0, y - y0, w, h)))
        for cut in CUTS:
            cx, cy = round(w * cut), round(h * cut)
            for side, (x0, y0, x1, y1) in {
                    "left": (x + cx, max(0, y - pad), min(iw, x + w + 2 * pad), min(ih, y + h + pad)),
                    "right": (max(0, x - 2 * pad), max(0, y - pad), x + w - cx, min(ih, y + h + pad)),
                    "top": (max(0, x - pad), y + cy, min(iw, x + w + pad), min(ih, y + h + 2 * pad)),
                    "bottom": (max(0, x - pad), max(0, y - 2 * pad), min(iw, x + w + pad), y + h - cy)}.items():
                bx0, by0 = max(x, x0), max(y, y0)
                bx1, by1 = min(x + w, x1), min(y + h, y1)
                box = (bx0 - x0, by0 - y0, bx1 - bx0, by1 - by0)
                out.append((f"{name} cut {cut:.0%} at {side}", np.ascontiguousarray(img[y0:y1, x0:x1]), box))
    return out


# ---------------------------------------------------------------- the classifiers' own pipelines
#
# Written from each package's own code, not from CropSpec: the runtime's crop spec for that classifier is
# checked against these (``check_own_pipeline``), so a spec that only resembles the pipeline fails.

#: fer 25.10.3 (fer/fer.py): FER.pad's frame, __apply_offsets' default offsets, the model's input size.
FER_PADDING = 40
FER_OFFSETS = (10, 10)
FER_SIZE = (64, 64)


def fer_inputs(image_rgb: np.ndarray, boxes: Sequence[tuple[int, int, int, int]]) -> np.ndarray:
    """The model inputs fer's ``FER.detect_emotions`` makes for ``boxes`` of one RGB image: float32 [N, 64, 64, 1].

    Transcribed from fer 25.10.3 (``detect_emotions``, ``pad``, ``tosquare``,
    ``__apply_offsets``), step for step: the BGR image it is given turned grey;
    a 40 px border of the mean of its bottom two grey rows on every side; each
    box squared by growing its short side (start moved back by half the
    difference, rounded down), 10 px added on each side, shifted into the
    padded image and clipped at 0 on the left and top only (numpy slicing cuts
    the rest); ``cv2.resize`` to 64x64 (bilinear); /255, -0.5, x2. What is left
    out: fer's Haar/MTCNN detection (both pipelines get the same boxes), its
    quantized TFLite default (this is the ``use_tflite=False`` path, the Keras
    ``emotion_model.hdf5``) and the rounding of the returned scores to 2 digits.
    """
    import cv2

    img = np.ascontiguousarray(image_rgb[..., ::-1])  # fer takes OpenCV BGR images
    gray_img = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
    # FER.pad
    row, col = gray_img.shape[:2]
    bottom = gray_img[row - 2: row, 0:col]
    mean = cv2.mean(bottom)[0]
    gray_img = cv2.copyMakeBorder(gray_img, top=FER_PADDING, bottom=FER_PADDING, left=FER_PADDING,
                                  right=FER_PADDING, borderType=cv2.BORDER_CONSTANT, value=[mean, mean, mean])
    gray_faces = []
    for face_coordinates in boxes:
        # FER.tosquare
        x, y, w, h = face_coordinates
        if h > w:
            diff = h - w
            x -= diff // 2
            w += diff
        elif w > h:
            diff = w - h
            y -= diff // 2
            h += diff
        # FER.__apply_offsets
        x_off, y_off = FER_OFFSETS
        x1, x2, y1, y2 = x - x_off, x + w + x_off, y - y_off, y + h + y_off
        x1 += FER_PADDING
        y1 += FER_PADDING
        x2 += FER_PADDING
        y2 += FER_PADDING
        x1 = max(0, x1)
        y1 = max(0, y1)
        gray_face = gray_img[y1:y2, x1:x2]
        gray_faces.append(cv2.resize(gray_face, FER_SIZE))
    gray_faces = np.array(gray_faces, dtype="float32")
    gray_faces = gray_faces / 255.0
    gray_faces = (gray_faces - 0.5) * 2.0
    return gray_faces[..., None]


#: ``classifier.source.pipeline`` -> that classifier's own preprocessing (image, boxes -> scaled model inputs).
OWN_PIPELINES: dict[str, Callable[[np.ndarray, Sequence[tuple[int, int, int, int]]], np.ndarray]] = {
    "fer": fer_inputs,
}


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
        from emostyle_rt.detection.faces import Face

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


def own_pipeline(manifest: Any) -> str | None:
    """The name of the classifier's own pipeline this module reproduces (``classifier.source.pipeline``), or None."""
    name = dict(manifest.classifier.source).get("pipeline")
    return name if name in OWN_PIPELINES else None


def check_own_pipeline(bundle: Any, predict_scaled: Callable[[np.ndarray], np.ndarray]) -> CropAgreement | None:
    """The runtime (bundle's crop spec, onnxruntime) against the classifier's own pipeline (its preprocessing
    written from its code, then ``predict_scaled``: the eager model on scaled inputs) on
    :func:`pipeline_faces`; None when the bundle's classifier names no pipeline known here."""
    from emostyle_rt import Stylizer
    from emostyle_rt.manifest import load_manifest

    manifest = bundle if hasattr(bundle, "classifier") else load_manifest(bundle)
    name = own_pipeline(manifest)
    if name is None:
        return None
    det = _Fixed()
    st = Stylizer(manifest, backend="onnxruntime", provider="cpu", detector=det)
    faces = pipeline_faces()
    ours, ref = [], []
    for _, img, box in faces:
        det.box = box
        scores = st.classify(img).scores
        ours.append([scores[label] for label in st.labels])
        ref.append(np.asarray(predict_scaled(OWN_PIPELINES[name](img, [box])), np.float64)[0])
    n = len(faces)
    runtime, reference = np.asarray(ours, np.float64), np.asarray(ref)
    agree = int((runtime.argmax(axis=1) == reference.argmax(axis=1)).sum())
    diff = float(np.abs(runtime - reference).max())
    ok = agree >= MIN_TOP1 * n and diff <= MAX_PROB_DIFF
    text = f"top-1 {agree}/{n} ({100.0 * agree / n:.1f}%), max abs p diff {diff:.1e}"
    result = CropAgreement(st.crop.summary(), f"{name}'s own pipeline", True, n, agree, diff, ok, text)
    log.info("crop agreement, %s's own pipeline: %s", name, text)
    return result


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


__all__ = ["CropAgreement", "border_faces", "check_crop_agreement", "check_own_pipeline", "compare", "fer_inputs",
           "own_pipeline", "pipeline_faces", "reference_crop"]
