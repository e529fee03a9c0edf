"""The coherence study's picture (studies/coherence), on the demo bundle at a small size."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from emostyle_bench.images import Size
from emostyle_rt import Stylizer
from emostyle_rt.video.coherence import CoherenceOptions

from support.studies import study

coherence = study("coherence")
STRIP_FRAMES, strip = coherence.STRIP_FRAMES, coherence.strip


def test_strip_shows_six_frames_in_five_rows(demo_bundle: Path, tmp_path: Path) -> None:
    st = Stylizer(demo_bundle)
    tile = Size(54, 96)
    path = strip(st, tmp_path / "img" / "strip.png", "happy", CoherenceOptions("flow"), tile)
    img = cv2.imread(str(path))
    assert img.shape == (5 * (tile.height + 4), STRIP_FRAMES * (tile.width + 4), 3)
    rows = [img[r * (tile.height + 4) + 2:(r + 1) * (tile.height + 4) - 2].astype(float) for r in range(5)]
    assert np.abs(rows[1] - rows[2]).mean() > 1  # per-frame and coherent differ
    assert rows[4].mean() < 0.7 * rows[3].mean()  # the coherent frames change less from frame to frame
    assert list(path.parent.iterdir()) == [path]  # written atomically: no temporary file left
