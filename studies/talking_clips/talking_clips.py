"""Real classifier outputs on real frames of a simulated talking head: the noise model's raw material.

A person talking to a camera moves, speaks, smiles a little more or less and is
lit unevenly; a per-frame emotion classifier answers each frame a little
differently. No such clip is available offline, so this module makes its frames
from real face photos (scikit-image's astronaut and cameraman, matplotlib's Grace
Hopper portrait) and records what the runtime says about each one:

- **head motion**: the photo turned, scaled and moved about the face centre
  (slow Ornstein-Uhlenbeck processes: +-4 deg, +-5%, +-6% of the face; plus a
  little hand-held shake);
- **talking**: the jaw dropped (everything under the mouth stretched down, up to
  ``JAW`` of the mouth's width) with syllables at about 4 Hz inside phrases of
  2-4 s, and the mouth corners raised or lowered slowly (a smile coming and going);
- **the camera**: gain and gamma drifting (+-12%), sensor noise (sigma 2-4 levels),
  defocus and motion blur that follow the motion, JPEG compression (quality 55-90).

Each frame (640x360, the face about 130 px high) goes through the runtime's own
path, ``Stylizer.classify`` (the bundle's MTCNN detector, its crop spec, its
classifier in onnxruntime), so the recorded scores are this classifier's real
answers to these frames. ``studies/video_sweep/video_sweep.py`` builds its noise model
from the tracks (``record`` writes them to ``studies/talking_clips/data/emotion_tracks.npz``).

Limits: three identities, one expression each (the astronaut's smile, the
cameraman's and Grace Hopper's neutral-to-stern looks); the talking is a warp,
not a real mouth; no head turns beyond +-4 degrees in the image plane.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

log = logging.getLogger(__name__)

#: Frame rate and size of the recorded clips.
FPS = 30.0
FRAME = (360, 640)  # height, width
#: Face height in the frame (pixels) at scale 1.
FACE_PX = 130
#: Largest jaw drop, as a fraction of the mouth's width.
JAW = 0.45
#: The photos, by name (how to load each is in :func:`source_photo`).
SOURCES = ("astronaut", "hopper", "camera")
TRACKS = Path(__file__).resolve().parent / "data" / "emotion_tracks.npz"


def source_photo(name: str) -> np.ndarray:
    """A real face photo, RGB uint8: "astronaut", "camera" (scikit-image), "hopper" (matplotlib's sample data)."""
    from skimage import data

    if name == "astronaut":
        return np.ascontiguousarray(data.astronaut())
    if name == "camera":
        return cv2.cvtColor(np.ascontiguousarray(data.camera()), cv2.COLOR_GRAY2RGB)
    if name == "hopper":
        import matplotlib.cbook as cbook

        path = cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
        return np.ascontiguousarray(cv2.imread(str(path))[..., ::-1])
    raise ValueError(f"unknown source photo {name!r}; known: {SOURCES}")


def ou(n: int, tau_s: float, sigma: float, rng: np.random.Generator, fps: float = FPS) -> np.ndarray:
    """An Ornstein-Uhlenbeck process of ``n`` samples: stationary std ``sigma``, correlation time ``tau_s``."""
    r = math.exp(-1.0 / (fps * tau_s))
    out = np.empty(n)
    x = rng.normal(0.0, sigma)
    for i in range(n):
        x = r * x + math.sqrt(1.0 - r * r) * rng.normal(0.0, sigma)
        out[i] = x
    return out


def speech(n: int, rng: np.random.Generator, fps: float = FPS) -> np.ndarray:
    """Jaw opening 0..1 per frame: phrases of 2-4 s (pauses of 0.4-1.5 s) with syllables at 3-5 Hz."""
    out = np.zeros(n)
    i = int(rng.uniform(0, 1.0) * fps)
    while i < n:
        k = int(rng.uniform(2.0, 4.0) * fps)
        t = np.arange(k) / fps
        f = rng.uniform(3.0, 5.0)
        phase = 2 * np.pi * f * t + np.cumsum(rng.normal(0, 0.25, k))
        amp = np.clip(rng.normal(0.7, 0.2, k), 0.2, 1.0)
        out[i: i + k] = (amp * (0.5 + 0.5 * np.sin(phase)) ** 2)[: n - i]
        i += k + int(rng.uniform(0.4, 1.5) * fps)
    return out


@dataclass(frozen=True)
class Motion:
    """Per-frame parameters of one clip (arrays of n)."""

    angle: np.ndarray  # degrees
    scale: np.ndarray
    dx: np.ndarray  # in face heights
    dy: np.ndarray
    jaw: np.ndarray  # 0..1
    smile: np.ndarray  # mouth-corner shift, fraction of the mouth width (+: down)
    gain: np.ndarray
    gamma: np.ndarray
    noise: np.ndarray  # sigma, levels
    blur: np.ndarray  # defocus sigma, px
    quality: np.ndarray  # JPEG quality


def motion(n: int, seed: int) -> Motion:
    """Seeded per-frame parameters of a talking-head clip."""
    rng = np.random.default_rng(seed)
    shake = lambda s: ou(n, 0.08, s, rng)  # noqa: E731 - hand-held camera
    return Motion(angle=ou(n, 1.5, 4.0, rng) + shake(0.3), scale=1.0 + ou(n, 2.0, 0.05, rng),
                  dx=ou(n, 1.2, 0.06, rng) + shake(0.006), dy=ou(n, 1.2, 0.04, rng) + shake(0.006),
                  jaw=speech(n, rng), smile=ou(n, 2.0, 0.08, rng), gain=1.0 + ou(n, 3.0, 0.12, rng),
                  gamma=np.exp(ou(n, 3.0, 0.10, rng)), noise=np.clip(3.0 + ou(n, 4.0, 0.7, rng), 1.5, 5.0),
                  blur=np.clip(ou(n, 1.0, 0.5, rng), 0.0, None),
                  quality=np.clip(72 + ou(n, 3.0, 10.0, rng), 55, 90).round())


class Renderer:
    """Frames of one source photo under a :class:`Motion`: one remap per frame (pose and talking warp together)."""

    def __init__(self, photo: np.ndarray, box: tuple[int, int, int, int], landmarks: Any) -> None:
        self.photo = photo
        x, y, w, h = box
        self.cx, self.cy, self.h = x + w / 2.0, y + h / 2.0, float(h)
        (lx, ly), (rx, ry) = landmarks[3], landmarks[4]
        self.mouth = ((lx, ly), (rx, ry))
        self.mw = float(np.hypot(rx - lx, ry - ly))
        oh, ow = FRAME
        self.v, self.u = np.mgrid[0:oh, 0:ow].astype(np.float32)

    def frame(self, m: Motion, i: int, rng: np.random.Generator) -> np.ndarray:
        oh, ow = FRAME
        s = FACE_PX / self.h * float(m.scale[i])
        a = math.radians(float(m.angle[i]))
        # output pixel -> photo pixel: inverse of (rotate by a, scale s about the face centre, move to the target)
        tx, ty = ow / 2 + float(m.dx[i]) * FACE_PX, oh * 0.45 + float(m.dy[i]) * FACE_PX
        du, dv = self.u - tx, self.v - ty
        ca, sa = math.cos(a) / s, math.sin(a) / s
        X = self.cx + ca * du + sa * dv
        Y = self.cy - sa * du + ca * dv
        (lx, ly), (rx, ry) = self.mouth
        mx, my, mw = (lx + rx) / 2, (ly + ry) / 2, self.mw
        # talking: below the mouth line the face is pulled down (sample from above); the corners move with the smile
        jaw = JAW * float(m.jaw[i]) * mw
        below = 1.0 / (1.0 + np.exp(np.clip(-(Y - my) / (0.06 * mw), -60.0, 60.0)))
        chin = np.exp(-np.maximum(0.0, Y - my - 0.9 * mw) ** 2 / (2 * (0.6 * mw) ** 2))
        across = np.exp(-((X - mx) ** 2) / (2 * (0.75 * mw) ** 2))
        dy = jaw * below * chin * across
        for px, py in self.mouth:
            dy += float(m.smile[i]) * mw * np.exp(-((X - px) ** 2 + (Y - py) ** 2) / (2 * (0.22 * mw) ** 2))
        img = cv2.remap(self.photo, X, (Y - dy).astype(np.float32), cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        # the camera: exposure, blur (defocus + motion), sensor noise, compression
        x = img.astype(np.float32) / 255.0
        x = np.clip(float(m.gain[i]) * x ** float(m.gamma[i]), 0.0, 1.0) * 255.0
        speed = 0.0 if i == 0 else math.hypot(m.dx[i] - m.dx[i - 1], m.dy[i] - m.dy[i - 1]) * FACE_PX
        sigma = float(m.blur[i]) + 0.3 * speed
        if sigma > 0.3:
            x = cv2.GaussianBlur(x, (0, 0), sigma)
        x = x + rng.normal(0.0, float(m.noise[i]), x.shape).astype(np.float32)
        out = np.clip(x, 0, 255).astype(np.uint8)
        ok, buf = cv2.imencode(".jpg", out[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, int(m.quality[i])])
        return np.ascontiguousarray(cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1]) if ok else out


def record(bundle: Path, seconds: float, seeds: int, out: Path = TRACKS,
           sources: tuple[str, ...] = SOURCES) -> dict[str, np.ndarray]:
    """Render ``seeds`` clips of ``seconds`` per source, classify every frame with the runtime; save the tracks.

    The npz holds, per ``<source>-<seed>``, the [n, 7] scores (NaN rows where no face was found) and the
    labels; also the bundle's classifier description.
    """
    from emostyle_rt import Stylizer

    st = Stylizer(bundle, backend="onnxruntime", provider="cpu", no_face="error")
    n = int(round(seconds * FPS))
    tracks: dict[str, np.ndarray] = {}
    for name in sources:
        photo = source_photo(name)
        face = st.classify(photo).face
        if face is None or face.landmarks is None:
            raise RuntimeError(f"no face with landmarks found in {name}")
        r = Renderer(photo, face.box, face.landmarks)
        for seed in range(seeds):
            m, rng = motion(n, seed * 101 + SOURCES.index(name)), np.random.default_rng(seed + 7)
            scores = np.full((n, len(st.labels)), np.nan, np.float32)
            t0 = time.perf_counter()
            for i in range(n):
                try:
                    c = st.classify(r.frame(m, i, rng))
                except Exception:  # noqa: BLE001 - NoFaceError: the frame brings no evidence
                    continue
                scores[i] = [c.scores[k] for k in st.labels]
            tracks[f"{name}-{seed}"] = scores
            found = np.isfinite(scores[:, 0])
            top = scores[found].argmax(1)
            log.info("%s seed %d: %d frames in %.0f s, face in %.1f%%, top-1 %s", name, seed, n,
                     time.perf_counter() - t0, 100 * found.mean(),
                     {st.labels[k]: round(float((top == k).mean()), 3) for k in np.unique(top)})
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, labels=np.array(st.labels), fps=np.array(FPS),
                        classifier=np.array(st.manifest.classifier.describe()), **tracks)
    return tracks


def save_strip(path: Path, bundle: Path, seed: int = 0, frames: int = 6) -> None:
    """A strip of frames of each source (the talking-head frames the tracks were recorded on), for the docs."""
    from emostyle_rt import Stylizer

    st = Stylizer(bundle, backend="onnxruntime", provider="cpu")
    rows = []
    n = int(4 * FPS)
    for name in SOURCES:
        photo = source_photo(name)
        face = st.classify(photo).face
        r = Renderer(photo, face.box, face.landmarks)  # type: ignore[union-attr]
        m, rng = motion(n, seed * 101 + SOURCES.index(name)), np.random.default_rng(seed + 7)
        picks = np.linspace(0, n - 1, frames).round().astype(int)
        tiles = []
        for i in range(n):
            f = r.frame(m, i, rng)
            if i in picks:
                tiles.append(cv2.resize(f[40:320, 160:480], (160, 140), interpolation=cv2.INTER_AREA))
        rows.append(np.concatenate(tiles, axis=1))
    cv2.imwrite(str(path), np.concatenate(rows, axis=0)[..., ::-1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bundle", type=Path, default=Path("bundles/demo"), help="bundle whose classifier is recorded")
    p.add_argument("--seconds", type=float, default=30.0, help="length of each clip (default 30)")
    p.add_argument("--seeds", type=int, default=2, help="clips per source photo (default 2)")
    p.add_argument("--out", type=Path, default=TRACKS, help=f"npz to write (default {TRACKS})")
    p.add_argument("--strip", type=Path, help="also write a strip of frames (PNG) for the docs")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.strip:
        save_strip(args.strip, args.bundle)
    record(args.bundle, args.seconds, args.seeds, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
