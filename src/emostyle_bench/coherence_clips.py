"""Synthetic clips with known motion for temporal-coherence checks (real photos, never noise alone).

Each clip is built from scikit-image's photos and carries its exact backward flow
(frame i+1 back to frame i, as ``emostyle_rt.video.coherence.Flow``), so a metric or a
blend can be checked against the truth, not against another flow estimate:

- :func:`still_noise`: the astronaut, still, with fresh sensor-like noise on every frame
  (the hardest case for per-frame styling: the network amplifies the noise into shimmer);
- :func:`slow_pan`: a camera panning slowly (sub-pixel steps) across the astronaut;
- :func:`moving_face`: the astronaut's face crossing a still photo (coffee); ``boxes`` gives
  where the face is in every frame (the pixels it uncovers are marked occluded in the flow).

Used by ``studies/coherence/coherence.py``, ``tests/runtime/test_coherence.py`` and the training
side's temporal checks.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from emostyle_rt.video.coherence import Flow
from emostyle_rt.errors import InvalidArgumentError, note

from .images import Size, photo

#: Clip names -> builder (see :func:`build`).
CLIPS = ("still", "pan", "face")


@dataclass(frozen=True, eq=False)
class Clip:
    """Frames (HxWx3 uint8 RGB) with their true flows (``flows[i]``: frame i+1 back to frame i) and, for a
    moving object, its box (x, y, w, h) in every frame."""

    name: str
    frames: tuple[np.ndarray, ...]
    flows: tuple[Flow, ...]
    boxes: tuple[tuple[int, int, int, int], ...] | None = None


def _noisy(img: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    if sigma <= 0:
        return np.ascontiguousarray(img)
    return np.clip(img.astype(np.float32) + rng.normal(0.0, sigma, img.shape).astype(np.float32), 0, 255).astype(np.uint8)


def _check(size: Size, n: int) -> None:
    if n < 2 or size.width < 32 or size.height < 32:
        raise InvalidArgumentError("A clip needs >= 2 frames of >= 32x32." + note(">= 2 frames, >= 32x32",
                                                                                  f"{n} frames of {size.name}"))


def still_noise(size: Size, n: int = 8, sigma: float = 6.0, seed: int = 0) -> Clip:
    """A still scene with independent Gaussian noise (``sigma`` 8-bit levels) on every frame; the flow is zero."""
    _check(size, n)
    rng = np.random.default_rng(seed)
    base = photo(size)
    frames = tuple(_noisy(base, sigma, rng) for _ in range(n))
    zero = Flow.from_field(np.zeros((size.height, size.width, 2), np.float32))
    return Clip("still", frames, (zero,) * (n - 1))


def slow_pan(size: Size, n: int = 8, speed: tuple[float, float] = (0.004, 0.0015), sigma: float = 2.0,
             seed: int = 0) -> Clip:
    """A camera panning across the astronaut by ``speed`` x width pixels per frame (x, y), with light noise."""
    _check(size, n)
    rng = np.random.default_rng(seed)
    vx, vy = speed[0] * size.width, speed[1] * size.width
    pad_x, pad_y = int(np.ceil(abs(vx) * n)) + 2, int(np.ceil(abs(vy) * n)) + 2
    canvas = photo(Size(size.height + pad_y, size.width + pad_x))
    frames = []
    for t in range(n):
        m = np.float32([[1, 0, t * vx], [0, 1, t * vy]])  # frame_t(x) = canvas(x + t v)
        f = cv2.warpAffine(canvas, m, (size.width, size.height), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                           borderMode=cv2.BORDER_REFLECT_101)
        frames.append(_noisy(f, sigma, rng))
    flow = Flow.from_field(np.broadcast_to(np.float32([vx, vy]), (size.height, size.width, 2)).copy())
    return Clip("pan", tuple(frames), (flow,) * (n - 1))


def moving_face(size: Size, n: int = 8, speed: float = 0.01, sigma: float = 2.0, seed: int = 0) -> Clip:
    """The astronaut's face (a square of 0.45 x height) crossing a still photo left to right at ``speed`` x width
    pixels per frame (whole pixels), with light noise; ``boxes`` holds the face's box per frame."""
    _check(size, n)
    from skimage import data

    rng = np.random.default_rng(seed)
    bg = cv2.resize(np.ascontiguousarray(data.coffee()), (size.width, size.height), interpolation=cv2.INTER_AREA)
    side = max(8, round(0.45 * size.height))
    face = cv2.resize(np.ascontiguousarray(data.astronaut()[30:250, 120:340]), (side, side),
                      interpolation=cv2.INTER_AREA)
    step = max(1, round(speed * size.width))
    y = (size.height - side) // 2
    x0 = max(0, min(size.width - side - step * (n - 1), round(0.15 * size.width)))
    frames, boxes, flows = [], [], []
    for t in range(n):
        x = x0 + t * step
        f = bg.copy()
        f[y:y + side, x:x + side] = face
        frames.append(_noisy(f, sigma, rng))
        boxes.append((x, y, side, side))
        if t:
            fld = np.zeros((size.height, size.width, 2), np.float32)
            fld[y:y + side, x:x + side, 0] = -step  # the face came from step pixels to the left
            known = Flow.from_field(fld)
            valid = known.valid.copy()
            px = x - step  # background the face covered in the previous frame and uncovered now: occluded
            valid[y:y + side, px:x] = False
            flows.append(Flow(fld, valid, valid.astype(np.float32), (size.height, size.width), float(valid.mean())))
    return Clip("face", tuple(frames), tuple(flows), tuple(boxes))


def build(name: str, size: Size, n: int = 8, seed: int = 0) -> Clip:
    """The clip called ``name`` (one of :data:`CLIPS`) at ``size`` with ``n`` frames."""
    builders = {"still": still_noise, "pan": slow_pan, "face": moving_face}
    if name not in builders:
        raise InvalidArgumentError(f"Unknown clip {name!r}." + note(list(CLIPS), name))
    return builders[name](size, n, seed=seed)
