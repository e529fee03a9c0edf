"""The fast mode's statistics study (studies/tiling_stats/tiling_stats.py) on the demo bundle at a small size."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from emostyle_rt.manifest import load_manifest

from support.studies import study

tiling_stats = study("tiling_stats")


def test_study_compares_statistics_sources_against_untiled(demo_bundle: Path, tmp_path: Path) -> None:
    if load_manifest(demo_bundle).style_for("angry").tiled is None:
        pytest.skip("the test bundle has no tiled graphs (an older EMOSTYLE_TEST_BUNDLE)")
    out = tmp_path / "study.json"
    assert tiling_stats.main(["--bundle", str(demo_bundle), "--size", "1280x720", "--photo", "collage",
                              "--out", str(out)]) == 0
    rows = {r["statistics"]: r for r in json.loads(out.read_text())["rows"]}
    assert set(rows) == {"whole image (exact)", "downscaled copy, 1024 px", "full-resolution crop sample, 1024 px"}
    exact = rows["whole image (exact)"]
    assert exact["max_abs_diff"] <= 1 and exact["source_px"] == [720, 1280]  # tiling adds only float error
    for name in ("downscaled copy, 1024 px", "full-resolution crop sample, 1024 px"):
        assert rows[name]["source_px"][1] == 1024 and 10 < rows[name]["psnr_db"] < exact["psnr_db"]
