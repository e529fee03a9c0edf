"""Helpers of the training tests: drawn style images, synthetic classifier data (no ../shared)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from emostyle_rt.manifest import EMOTIONS

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")
REPO = Path(__file__).resolve().parents[2]
#: per-class image counts of the synthetic classifier set: imbalanced on purpose (augmentation tops it up)
SHAPE_COUNTS = (24, 10, 16, 24, 20, 14, 24)


def write_rgb(path: Path, rgb: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), np.ascontiguousarray(rgb[:, :, ::-1]))
    return path


def stripes_style(side: int = 96) -> np.ndarray:
    """A bold texture: diagonal red/yellow/blue bands with white dots (a strong, easy Gram signature)."""
    yy, xx = np.mgrid[0:side, 0:side]
    img = np.zeros((side, side, 3), np.uint8)
    band = ((xx + yy) // 8) % 3
    img[band == 0], img[band == 1], img[band == 2] = (230, 40, 40), (250, 220, 30), (30, 60, 200)
    for cy in range(8, side, 24):
        for cx in range(8, side, 24):
            cv2.circle(img, (cx, cy), 5, (255, 255, 255), -1)
    return img


def make_shapes(root: Path, counts: tuple[int, ...] = SHAPE_COUNTS, seed: int = 0) -> Path:
    """Seven classes of coloured shapes on noisy dark backgrounds, one folder per emotion."""
    rng = np.random.default_rng(seed)
    colours = [(220, 40, 40), (40, 180, 40), (40, 60, 220), (230, 200, 30), (200, 40, 200), (30, 200, 210),
               (240, 140, 20)]
    for c, emotion in enumerate(EMOTIONS):
        for i in range(counts[c]):
            img = (rng.integers(0, 60, 3) + rng.integers(0, 25, (96, 96, 3))).astype(np.uint8)
            cx, cy, r = int(rng.integers(30, 66)), int(rng.integers(30, 66)), int(rng.integers(14, 24))
            col = tuple(int(v) for v in np.clip(np.array(colours[c]) + rng.integers(-25, 25, 3), 0, 255))
            if c == 0:
                cv2.circle(img, (cx, cy), r, col, -1)
            elif c == 1:
                cv2.rectangle(img, (cx - r, cy - r), (cx + r, cy + r), col, -1)
            elif c == 2:
                cv2.fillPoly(img, [np.array([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)])], col)
            elif c == 3:
                cv2.line(img, (cx - r, cy - r), (cx + r, cy + r), col, 5)
                cv2.line(img, (cx - r, cy + r), (cx + r, cy - r), col, 5)
            elif c == 4:
                cv2.ellipse(img, (cx, cy), (r, r // 2), 0, 0, 360, col, -1)
            elif c == 5:
                cv2.circle(img, (cx, cy), r, col, 4)
            else:
                cv2.rectangle(img, (cx - r, cy - r // 3), (cx + r, cy + r // 3), col, -1)
            write_rgb(root / emotion / f"{i:03d}.png", img)
    return root


def demo_driver():  # noqa: ANN201
    """scripts/gpu/train_demo_styles.py as a module (it is a script, not a package)."""
    import importlib.util
    import sys

    if "train_demo_styles" in sys.modules:
        return sys.modules["train_demo_styles"]
    spec = importlib.util.spec_from_file_location("train_demo_styles", REPO / "scripts/gpu/train_demo_styles.py")
    mod = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules["train_demo_styles"] = mod
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod
