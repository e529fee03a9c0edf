"""Parity checks: every ONNX graph against its source model, on real-looking inputs.

The inputs are a real photo (scikit-image's astronaut, offline) at several
sizes, odd ones included, plus seeded random images. The figures are kept in
the manifest; a graph beyond tolerance fails the export.
"""

from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from emostyle_rt import metrics
from emostyle_rt.errors import note

from .errors import ExportError, ParityError

CLASSIFIER_TOLERANCE = metrics.CLASSIFIER_TOLERANCE  # max abs diff of probabilities
STYLE_TOLERANCE = metrics.STYLE_TOLERANCE  # grey levels on the 0..255 output
ASTRONAUT_FACE = (177, 66, 95, 95)  # x, y, w, h of the face in skimage.data.astronaut()


@dataclass(frozen=True)
class ParityReport:
    """What a parity check measured; stored in the manifest as a dict."""

    max_abs_diff: float
    tolerance: float
    inputs: tuple[str, ...]
    psnr_db: float | None = None  # styles only; None when the outputs are identical
    top1_agree: bool | None = None  # classifier only

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["inputs"] = list(self.inputs)
        del d["psnr_db" if self.top1_agree is not None else "top1_agree"]
        return d


@functools.lru_cache(maxsize=1)
def astronaut() -> np.ndarray:
    """scikit-image's astronaut: a real 512x512 RGB photo with a face, offline (read-only)."""
    try:
        from skimage import data
    except ImportError as exc:
        raise ExportError(
            "scikit-image is needed for checks on real photos." + note("pip install 'emostyle-rt[cpu,export]'", exc)
        ) from exc
    img = np.ascontiguousarray(data.astronaut())
    img.flags.writeable = False
    return img


def _resize(img: np.ndarray, h: int, w: int) -> np.ndarray:
    import cv2

    return cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA)


def classifier_inputs(height: int, width: int, channels: int, seed: int = 0) -> tuple[np.ndarray, list[str]]:
    """uint8 NHWC crops as the runtime hands them to the classifier."""
    import cv2

    photo = astronaut()
    x, y, w, h = ASTRONAUT_FACE
    m = w // 4
    face = photo[max(0, y - m): y + h + m, max(0, x - m): x + w + m]
    crops = [face, face[:, ::-1], photo]
    names = ["astronaut face", "astronaut face mirrored", "astronaut whole photo"]
    rng = np.random.default_rng(seed)
    crops += [rng.integers(0, 256, (height, width, 3), dtype=np.uint8) for _ in range(3)]
    names += ["random uniform"] * 3
    batch = [_resize(np.ascontiguousarray(c), height, width) for c in crops]
    if channels == 1:
        batch = [cv2.cvtColor(c, cv2.COLOR_RGB2GRAY)[..., None] for c in batch]
    return np.stack(batch), [f"{n} {height}x{width}x{channels}" for n in names]


def style_inputs(seed: int = 0) -> list[tuple[str, np.ndarray]]:
    """Batches of uint8 NHWC RGB images, odd sizes included."""
    photo = astronaut()
    rng = np.random.default_rng(seed)
    return [
        ("astronaut 512x512", photo[None]),
        ("astronaut 255x301", _resize(photo, 255, 301)[None]),
        ("random 2x64x96", rng.integers(0, 256, (2, 64, 96, 3), dtype=np.uint8)),
    ]


psnr = metrics.psnr  # the one PSNR (emostyle_rt.metrics), under the name the export and the bench import


def _session(path: Path) -> Any:
    from emostyle_rt.backends.ort import import_onnxruntime

    ort = import_onnxruntime()

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def check_classifier(clf: Any, onnx_path: Path, scale: str, add_softmax: bool) -> ParityReport:
    """Eager Keras (``model(x, training=False)``) vs the ONNX graph in onnxruntime."""
    from .classifiers import INPUT_NAME, OUTPUT_NAME, scale_pixels, softmax

    batch, names = classifier_inputs(clf.height, clf.width, clf.channels)
    expected = np.asarray(clf.predict(scale_pixels(batch.astype(np.float32), scale)), np.float64)
    if add_softmax:
        expected = softmax(expected)
    got = _session(onnx_path).run([OUTPUT_NAME], {INPUT_NAME: batch})[0]
    diff = float(np.max(np.abs(got - expected)))
    top1 = bool(np.all(got.argmax(-1) == expected.argmax(-1)))
    report = ParityReport(max_abs_diff=diff, tolerance=CLASSIFIER_TOLERANCE, inputs=tuple(names), top1_agree=top1)
    if not diff <= CLASSIFIER_TOLERANCE:  # also catches NaN
        raise ParityError(
            f"Classifier graph {onnx_path.name} disagrees with the Keras model: max abs diff {diff:.3g}."
            + note(f"<= {CLASSIFIER_TOLERANCE}", f"{diff:.3g} on {len(names)} inputs")
        )
    return report


def check_style(model: Any, convention: str, onnx_path: Path, label: str) -> ParityReport:
    """Eager PyTorch with the convention's pre/post-processing vs the ONNX graph."""
    from .styles import INPUT_NAME, OUTPUT_NAME, reference_stylize

    sess = _session(onnx_path)
    worst, worst_psnr, names = 0.0, None, []
    for name, batch in style_inputs():
        expected = np.round(reference_stylize(model, batch, convention))  # the source pipeline's uint8 image
        got = sess.run([OUTPUT_NAME], {INPUT_NAME: batch})[0]
        if got.shape != expected.shape:
            raise ParityError(
                f"Style graph {label} returned shape {got.shape} for {name}." + note(expected.shape, got.shape)
            )
        worst = max(worst, float(np.max(np.abs(got.astype(np.float64) - expected))))
        p = psnr(got, expected)
        if math.isfinite(p):
            worst_psnr = p if worst_psnr is None else min(worst_psnr, p)
        names.append(name)
    report = ParityReport(max_abs_diff=round(worst, 4), tolerance=STYLE_TOLERANCE, inputs=tuple(names),
                          psnr_db=None if worst_psnr is None else round(worst_psnr, 2))
    if not worst <= STYLE_TOLERANCE:
        raise ParityError(
            f"Style graph {label} disagrees with eager PyTorch: max abs diff {worst:.2f} grey levels."
            + note(f"<= {STYLE_TOLERANCE} grey level", f"{worst:.2f} on {', '.join(names)}")
        )
    return report
