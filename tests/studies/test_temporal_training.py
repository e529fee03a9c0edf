"""The temporal-loss study (studies/temporal_training) at a toy size: figures per weight, a verdict, a merge."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import pytest

from emostyle_bench.coherence_clips import CLIPS

from support.studies import study

pytest.importorskip("torch")


def test_temporal_training_benchmark_runs_end_to_end_and_merges(tmp_path: Path) -> None:
    """python studies/temporal_training/temporal_training.py at a toy size: figures per weight, a verdict, a merge."""
    tt = study("temporal_training")

    clip_set = tt.clips(3, 64, 48)  # the inference side's clips, so the two E_warp figures compare
    assert tuple(clip_set) == CLIPS and all(len(v) == 3 and v[0].shape == (48, 64, 3) for v in clip_set.values())
    assert not set(tt.HELD_OUT) & set(tt.TRAIN_PHOTOS)

    out = tmp_path / "r.json"
    assert tt.main(["--size", "32", "--steps", "2", "--weights", "0,1e4", "--clip-size", "64x48", "--frames", "3",
                    "--json", str(out), "--strip", str(tmp_path / "s.png")]) == 0
    data = json.loads(out.read_text())
    runs = data["runs"]
    assert [r["temporal_weight"] for r in runs] == [0.0, 1e4]
    assert all(r["e_warp"]["pan"] > 0 and r["e_warp_input"]["still"] > 0 for r in runs)
    assert runs[0]["train_temporal_unweighted"] is None and runs[1]["train_temporal_unweighted"] > 0
    assert set(data["verdicts"]["10000"]) == {"lower_e_warp_every_clip_and_seed", "style_within_20pct_held_out",
                                              "style_within_20pct_training", "target_met"}
    assert cv2.imread(str(tmp_path / "s.png")).shape[0] == 5 * 24  # input + 2 x (styled, change) rows, half size

    from dataclasses import replace

    base = tt.RunResult(**runs[0])
    steady = replace(tt.RunResult(**runs[1]), e_warp={k: 0.5 * v for k, v in base.e_warp.items()},
                     held_out_style=1.1 * base.held_out_style, train_style=1.1 * base.train_style)
    assert tt.verdicts([base, steady])["10000"]["target_met"] is True
    assert tt.verdicts([base, replace(steady, train_style=1.3 * base.train_style)])["10000"]["target_met"] is False
    other_seed = [replace(base, seed=1), replace(steady, seed=1, e_warp={k: 2 * v for k, v in base.e_warp.items()})]
    (tmp_path / "b.json").write_text(json.dumps({"meta": data["meta"], "runs": [r.__dict__ for r in other_seed]}))
    (tmp_path / "a.json").write_text(json.dumps({"meta": data["meta"], "runs": [base.__dict__, steady.__dict__]}))
    assert tt.main(["--from-json", str(tmp_path / "a.json"), str(tmp_path / "b.json"), "--json",
                    str(tmp_path / "m.json")]) == 0
    merged = json.loads((tmp_path / "m.json").read_text())
    assert len(merged["runs"]) == 4  # seed 1 flickers more with the term: no longer met on every seed
    assert merged["verdicts"]["10000"]["lower_e_warp_every_clip_and_seed"] is False
