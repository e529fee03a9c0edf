"""Benchmark inputs: a real photo (scikit-image's astronaut) at every size, and its face crops."""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

import numpy as np
from emostyle_export.parity import astronaut

from emostyle_rt.errors import InvalidArgumentError, note


@dataclass(frozen=True)
class Size:
    """An image size; ``name`` is how tables show it (e.g. "1920x1080", width first)."""

    height: int
    width: int

    @property
    def name(self) -> str:
        return f"{self.width}x{self.height}"

    @property
    def pixels(self) -> int:
        return self.height * self.width


#: The issue's sizes, smallest first.
SIZES: tuple[Size, ...] = (Size(256, 256), Size(512, 512), Size(720, 1280), Size(1080, 1920))
_ALIASES = {"256": Size(256, 256), "512": Size(512, 512), "720p": Size(720, 1280), "1080p": Size(1080, 1920)}


def parse_size(text: str) -> Size:
    """"512", "720p", "1080p" or "WIDTHxHEIGHT" -> Size."""
    t = text.strip().lower()
    if t in _ALIASES:
        return _ALIASES[t]
    m = re.fullmatch(r"(\d+)x(\d+)", t)
    if not m or int(m.group(1)) < 5 or int(m.group(2)) < 5:
        raise InvalidArgumentError(f"Bad image size {text!r}." + note('"256", "512", "720p", "1080p" or WxH (>= 5)', text))
    return Size(height=int(m.group(2)), width=int(m.group(1)))


@functools.lru_cache(maxsize=8)
def photo(size: Size) -> np.ndarray:
    """The astronaut photo at ``size``: scaled so its square fits the shorter side, then
    reflect-padded to the longer one (a real photo with a face, never noise). Read-only."""
    import cv2

    src = astronaut()
    side = min(size.height, size.width)
    interp = cv2.INTER_AREA if side < src.shape[0] else cv2.INTER_CUBIC
    sq = cv2.resize(src, (side, side), interpolation=interp)
    dh, dw = size.height - side, size.width - side
    out = cv2.copyMakeBorder(sq, dh // 2, dh - dh // 2, dw // 2, dw - dw // 2, cv2.BORDER_REFLECT_101)
    out = np.ascontiguousarray(out)
    out.setflags(write=False)
    return out


#: The astronaut's face box (x, y, w, h) as MTCNN (the mtcnn package and the bundle's detector) finds it.
ASTRONAUT_MTCNN_BOX = (182, 64, 83, 107)


def mosaic(width: int, height: int) -> np.ndarray:
    """A width x height RGB mosaic of four real photos (scikit-image), each resized (cubic) to a quarter.

    The tiling studies' photo: four photos, so tiles meet over different content.
    """
    import cv2
    from skimage import data

    parts = [data.astronaut(), data.coffee(), data.chelsea(), data.rocket()]
    h2, w2 = height // 2, width // 2
    sizes = [(w2, h2), (width - w2, h2), (w2, height - h2), (width - w2, height - h2)]
    tiles = [cv2.resize(np.ascontiguousarray(p[..., :3]), s, interpolation=cv2.INTER_CUBIC) for p, s in zip(parts, sizes)]
    return np.ascontiguousarray(np.vstack([np.hstack(tiles[:2]), np.hstack(tiles[2:])]))


def face_crops(height: int, width: int, channels: int, n: int) -> np.ndarray:
    """``n`` classifier inputs (uint8 NHWC) cut around the astronaut's face with different margins."""
    from dataclasses import replace

    from emostyle_rt.detection.faces import Face, crop_face
    from emostyle_rt.manifest import DEFAULT_CROP

    rgb = astronaut()
    face = Face(*ASTRONAUT_MTCNN_BOX)  # fixed: the crops must not depend on which detector this OpenCV has
    margins = [0.2, 0.1, 0.3, 0.4, 0.15, 0.25, 0.35, 0.05]
    crops = [crop_face(rgb, face, (height, width), channels, replace(DEFAULT_CROP, margin=margins[i % len(margins)]))
             for i in range(n)]
    return np.ascontiguousarray(np.stack(crops))
