"""Output agreement: an optimized path must give the eager output before its time counts."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from emostyle_rt.metrics import BENCH_MIN_PSNR_DB, BENCH_PROB_TOLERANCE, psnr

#: Classifier: max |p - p_eager| allowed, per precision (emostyle_rt.metrics owns the figures).
PROB_TOLERANCE = BENCH_PROB_TOLERANCE
#: Style and chain images: minimum PSNR (dB) against the eager output, per precision.
PSNR_MIN_DB = BENCH_MIN_PSNR_DB


@dataclass(frozen=True)
class Agreement:
    """How a path's output compares with the eager reference; ``ok`` False means "wrong"."""

    ok: bool
    summary: str  # short text for tables, e.g. "top-1 4/4, max diff 3e-08" or "PSNR 58.1 dB"
    max_abs_diff: float | None = None
    psnr_db: float | None = None  # None when identical (infinite PSNR)
    top1_agree: bool | None = None


def compare_probs(ref: np.ndarray, out: Any, precision: str = "fp32") -> Agreement:
    """Classifier outputs: same top-1 per face (ties within tolerance count as agreeing) and max diff."""
    tol = PROB_TOLERANCE.get(precision, PROB_TOLERANCE["fp32"])
    ref = np.asarray(ref, np.float64)
    out = np.asarray(out, np.float64)
    if out.shape != ref.shape:
        return Agreement(False, f"shape {out.shape} != {ref.shape}")
    if not np.all(np.isfinite(out)):
        return Agreement(False, "non-finite outputs")
    diff = float(np.max(np.abs(out - ref))) if ref.size else 0.0
    top_ref, top_out = ref.argmax(axis=1), out.argmax(axis=1)
    rows = np.arange(len(ref))
    # a flip between two classes the reference itself scores within tolerance is not a disagreement
    same = (top_ref == top_out) | (ref[rows, top_ref] - ref[rows, top_out] <= tol)
    ok = bool(same.all()) and diff <= tol
    text = f"top-1 {int(same.sum())}/{len(same)}, max diff {diff:.1e}"
    return Agreement(ok, text if ok else f"{text} (tolerance {tol:g})", max_abs_diff=diff, top1_agree=bool(same.all()))


def compare_images(ref: np.ndarray, out: Any, precision: str = "fp32") -> Agreement:
    """Style outputs: same shape and dtype, PSNR at least the precision's minimum."""
    floor = PSNR_MIN_DB.get(precision, PSNR_MIN_DB["fp32"])
    out = np.asarray(out)
    if out.shape != ref.shape:
        return Agreement(False, f"shape {out.shape} != {ref.shape}")
    if out.dtype != np.uint8:
        return Agreement(False, f"dtype {out.dtype}, expected uint8")
    p = psnr(ref, out)
    diff = float(np.max(np.abs(out.astype(np.int16) - ref.astype(np.int16)))) if ref.size else 0.0
    ok = p >= floor
    text = "identical" if math.isinf(p) else f"PSNR {p:.1f} dB"
    return Agreement(ok, text if ok else f"{text} (< {floor:g} dB)", max_abs_diff=diff,
                     psnr_db=None if math.isinf(p) else p)


def compare_chain(ref: Any, out: Any, precision: str = "fp32") -> Agreement:
    """Whole chain: the same emotion for every image, and the images as for ``compare_images``."""
    if tuple(out.emotions) != tuple(ref.emotions):
        return Agreement(False, f"emotions {list(out.emotions)} != {list(ref.emotions)}", top1_agree=False)
    img = compare_images(ref.images, out.images, precision)
    names = ", ".join(dict.fromkeys(out.emotions))
    return Agreement(img.ok, f"same emotion ({names}), {img.summary}", max_abs_diff=img.max_abs_diff,
                     psnr_db=img.psnr_db,
                     top1_agree=True)


def compare_video(ref: Any, out: Any, precision: str = "fp32") -> Agreement:
    """Video paths: the warping error of ``out`` (and of its input), its cut against ``ref`` (the per-frame path),
    and the first frame, which no coherence changes, identical to the reference's."""
    from emostyle_rt.video.coherence import warping_error

    out_imgs = np.asarray(out.images)
    if out_imgs.shape != np.asarray(ref.images).shape:
        return Agreement(False, f"shape {out_imgs.shape} != {np.asarray(ref.images).shape}")
    e = warping_error(list(out.inputs), list(out_imgs))
    text = f"E_warp {e.styled:.2f} (input {e.input:.2f})"
    if ref is out:
        return Agreement(True, text)
    r = warping_error(list(ref.inputs), list(ref.images))
    first = compare_images(np.asarray(ref.images)[:1], out_imgs[:1], precision)
    change = e.styled / r.styled - 1.0 if r.styled else 0.0
    return Agreement(first.ok, f"{text}, {change:+.0%} vs {r.styled:.2f} per-frame; first frame {first.summary}",
                     max_abs_diff=first.max_abs_diff, psnr_db=first.psnr_db)


COMPARE = {"classify": compare_probs, "style": compare_images, "chain": compare_chain, "video": compare_video}
