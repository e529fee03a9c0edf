"""Agreement figures and their thresholds, one owner: PSNR, box IoU and the parity tolerances.

The export's parity checks, the OpenVINO / bf16 gates of the runtime and the
benchmarks' output checks all measure with these functions against these
thresholds, so "within tolerance" means one thing everywhere. Standard library and numpy (imported
when numpy arrays are compared) only: the standalone GPU scripts import this file by path next to torch.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

#: Max abs difference of the classifier's probabilities (FP32 graph against its source; also the detector's graphs).
CLASSIFIER_TOLERANCE = 1e-4
#: Max abs difference of a style graph's output, grey levels on 0..255 (FP32 graph against its source).
STYLE_TOLERANCE = 1
#: Max abs difference of any output of the face detector's graphs (offsets, landmarks, probabilities).
DETECTOR_TOLERANCE = 1e-4
#: Least PSNR of a lower-precision style graph (FP16, bf16) against FP32, in dB.
MIN_PSNR_DB = 40.0
#: The benchmark's output check against the eager frameworks, per precision of our path: the classifier's max
#: |p - p_eager| and the least PSNR (dB) of style and chain images (FP16 graphs drift more from FP32 eager).
BENCH_PROB_TOLERANCE = {"fp32": CLASSIFIER_TOLERANCE, "fp16": 1e-2}
BENCH_MIN_PSNR_DB = {"fp32": MIN_PSNR_DB, "fp16": 30.0}
#: PSNR reported for identical outputs where the figure goes to JSON (which has no inf).
PSNR_CAP_DB = 100.0


def mse(a: Any, b: Any) -> float:
    """Mean squared difference of two images (numpy arrays, or torch tensors where they are: a GPU stays a GPU).

    Args:
        a: An image or batch.
        b: Another of the same shape.
    """
    if hasattr(a, "double") and hasattr(b, "double"):  # torch tensors
        return float(((a.double() - b.double()) ** 2).mean().item())
    import numpy as np

    return float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))


def psnr(a: Any, b: Any, *, cap: float | None = None) -> float:
    """PSNR in dB of two images on the 0..255 scale; inf for identical ones.

    Args:
        a: An image or batch (numpy array or torch tensor).
        b: Another of the same shape.
        cap: At most this many dB (``PSNR_CAP_DB`` where the figure goes to JSON); None: uncapped.
    """
    m = mse(a, b)
    db = math.inf if m == 0 else 10.0 * math.log10(255.0**2 / m)
    return db if cap is None else min(cap, db)


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two (x, y, w, h) boxes; 0 when both are empty.

    Args:
        a: A box (``Face.box`` is one).
        b: Another.
    """
    iw = max(0.0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union > 0 else 0.0
