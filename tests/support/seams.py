"""Seams of tiled style inference: the seam metric and naive tiling (the case it must catch).

Used by tests/runtime/test_tiling.py and the tiling study (studies/tiling).
"""

from __future__ import annotations

from typing import Any, Iterable

import numpy as np


def seam_ratio(image: np.ndarray, rows: Iterable[int] = (), cols: Iterable[int] = ()) -> dict[str, float | None]:
    """Mean |difference| across tile borders over the same one pixel away, per direction (None: no border).

    ``rows``: border rows y (the border lies between y-1 and y); ``cols`` the same
    for columns. 1.0 means the borders are invisible in this statistic; a seam
    (tone step) makes the ratio grow.
    """
    img = image.astype(np.float32)

    def ratio(a: np.ndarray, where: list[int]) -> float | None:
        where = [b for b in where if 2 <= b <= a.shape[0] - 2]
        if not where:
            return None
        across = np.mean([np.abs(a[b] - a[b - 1]).mean() for b in where])
        beside = np.mean([(np.abs(a[b + 1] - a[b]).mean() + np.abs(a[b - 1] - a[b - 2]).mean()) / 2 for b in where])
        return float(across / max(beside, 1e-9))

    return {"horizontal_borders": ratio(img, list(rows)), "vertical_borders": ratio(img.transpose(1, 0, 2), list(cols))}


def naive(runner: Any, padded: np.ndarray, window: tuple[int, int], halo: int, align: int,
          region: tuple[int, int, int, int] | None = None) -> np.ndarray:
    """Naive tiling: the untiled style graph on each tile (its own statistics), interiors stitched.

    ``region`` (y0, y1, x0, x1): only the cells that touch it are run (the rest stays 0).
    """
    from emostyle_rt.tiling import cells

    out = np.zeros_like(padded)
    for y0, y1, wy in cells(padded.shape[0], window[0], halo, align):
        for x0, x1, wx in cells(padded.shape[1], window[1], halo, align):
            if region and (y1 <= region[0] or y0 >= region[1] or x1 <= region[2] or x0 >= region[3]):
                continue
            tile = np.ascontiguousarray(padded[wy:wy + window[0], wx:wx + window[1]])[None]
            res = runner.run({"image": tile})["styled"][0]
            out[y0:y1, x0:x1] = res[y0 - wy:y1 - wy, x0 - wx:x1 - wx]
    return out
