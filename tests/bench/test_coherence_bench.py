"""emostyle-bench's video stage (per-frame vs coherent, E_warp in the output check) and the coherence study's
picture, on the demo bundle at a small size."""

from __future__ import annotations

import json
import re
from pathlib import Path

import cv2
import numpy as np
import pytest

from emostyle_bench import cli
from emostyle_bench.coherence import STRIP_FRAMES, strip
from emostyle_bench.images import Size
from emostyle_rt import Stylizer
from emostyle_rt.coherence import CoherenceOptions


def test_video_stage_reports_each_paths_warping_error(demo_bundle: Path, tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    rc = cli.main(["--bundle", str(demo_bundle), "--stages", "video", "--sizes", "128x72", "--no-coldstart",
                   "--repeat", "1", "--json", str(out), "-q"])
    assert rc == 0
    rows = {r["path"]: r for r in json.loads(out.read_text())["rows"]}
    per, coh = rows["per-frame"], rows["coherent"]
    assert per["status"] == coh["status"] == "ok" and per["batch"] == coh["batch"] == 8  # frames of the clip
    e_per = float(re.match(r"E_warp ([\d.]+) \(input ([\d.]+)\)$", per["agreement"]["summary"]).group(1))
    m = re.match(r"E_warp ([\d.]+) \(input [\d.]+\), ([+-]\d+)% vs ([\d.]+) per-frame; first frame identical$",
                 coh["agreement"]["summary"])
    assert m, coh["agreement"]["summary"]
    assert float(m.group(3)) == pytest.approx(e_per, abs=0.01)
    assert float(m.group(1)) <= 0.5 * e_per and int(m.group(2)) <= -50
    assert dict(map(tuple, coh["speedups"]))["per-frame"] > 0  # its time against the per-frame path's


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
