"""emostyle-bench's video stage (per-frame vs coherent, E_warp in the output check), on the demo bundle at a
small size (the coherence study's picture: tests/studies/test_coherence_study.py)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from emostyle_bench import cli


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
