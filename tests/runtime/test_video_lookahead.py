"""Emotion over time with lookahead (video files): the offline planner, the two-pass file pipeline, the command.

The planner's invariants are checked on seeded random score tracks, its optimality against brute force on small
ones; the file tests use clips made from the astronaut photo (test_video.py's helpers), with test_video.py's
content-following fake classifier where a change of expression is needed, and the demo bundle's real classifier
in the command test.
"""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
from test_video import LABELS, face_frame, fake_classifier, jittered, st, write_clip  # noqa: F401 (fixtures)

from emostyle_rt import Stylizer
from emostyle_rt.cli import main
from emostyle_rt.errors import InvalidArgumentError
from emostyle_rt.video.lookahead import LookaheadOptions, plan_segments
from emostyle_rt.video import SegmentLog, analyse, plan_emotions, stylize_video

pytest.importorskip("av")


def random_track(rng: np.random.Generator, n: int, k: int) -> np.ndarray:
    """Scores with regimes of random lengths and labels, Dirichlet noise of random strength, rows without a face."""
    p = np.empty((n, k))
    i = 0
    while i < n:
        m = int(rng.integers(1, max(2, n // 4)))
        base = rng.dirichlet(np.full(k, 0.3))
        p[i:i + m] = rng.dirichlet(base * rng.uniform(1, 30) + 0.05, size=min(m, n - i))
        i += m
    p[rng.random(n) < rng.uniform(0, 0.6)] = np.nan  # not on the schedule, or no face
    return p


def check_plan(segs: tuple, p: np.ndarray, labels: tuple[str, ...], bounds: np.ndarray, min_s: float) -> None:
    assert segs[0].first == 0 and segs[-1].stop == len(p)
    assert all(a.stop == b.first and a.emotion != b.emotion for a, b in zip(segs, segs[1:]))
    for s in segs:
        assert s.start == bounds[s.first] and s.end == bounds[s.stop]
        if len(segs) > 1:
            assert s.end - s.start >= min_s - 1e-9, (s, min_s)
        rows = p[s.first:s.stop]
        rows = rows[np.isfinite(rows).all(axis=1)]
        assert s.classifications == len(rows)
        if len(rows):
            mean = rows.mean(axis=0)  # an independent mean (pairwise sums): agrees to rounding
            assert mean[labels.index(s.emotion)] >= mean.max() - 1e-12, (s.emotion, mean)
            assert np.allclose([s.scores[c] for c in labels], mean, atol=1e-12)
            assert max(s.scores, key=s.scores.get) == s.emotion  # the report's own scores say the same


@pytest.mark.parametrize("seed", range(40))
def test_every_label_is_its_highest_mean_and_no_segment_is_short(seed: int) -> None:
    rng = np.random.default_rng(seed)
    k = int(rng.choice([2, 3, 7]))
    labels = LABELS[:k] if k < 7 else LABELS
    fps = float(rng.choice([10, 15, 29.97, 60]))
    n = int(rng.integers(1, 400))
    p = random_track(rng, n, k)
    o = LookaheadOptions(float(rng.choice([0.0, 0.05, 0.25, 1.0])), float(rng.choice([0.0, 0.5, 1.5])),
                         str(rng.choice(["prob", "log"])))
    variable = bool(rng.integers(0, 2))
    times = np.cumsum(rng.uniform(0.5, 1.5, n)) / fps if variable else None
    segs = plan_segments(p, fps, labels=labels, times=times, options=o, initial=labels[-1])
    bounds = np.append(times, 2 * times[-1] - times[-2] if n > 1 else times[-1] + 1 / fps) if variable \
        else np.arange(n + 1) / fps
    check_plan(segs, p, labels, bounds, o.min_segment_seconds)
    if not np.isfinite(p).all(axis=1).any():
        assert [s.emotion for s in segs] == [labels[-1]]


def _objective(p: np.ndarray, cuts: list[tuple[int, int, int]], penalty: float) -> float:
    return sum(float(p[s:e, k].sum()) for s, e, k in cuts) - penalty * (len(cuts) - 1)


@pytest.mark.parametrize("seed", range(6))
def test_the_plan_is_the_best_segmentation(seed: int) -> None:
    """Brute force over every segmentation of a short clip (all frames classified, fixed rate: the evidence is the
    probabilities themselves, so relabelling changes nothing): the planner finds the best value."""
    rng = np.random.default_rng(100 + seed)
    n, k, fps, min_frames, penalty = 12, 3, 10.0, 3, 0.15
    p = random_track(rng, n, k)
    p[~np.isfinite(p)] = rng.dirichlet(np.ones(k), size=int((~np.isfinite(p[:, 0])).sum())).ravel()
    best = -math.inf
    for m in range(1, n // min_frames + 1):
        for cut in itertools.combinations(range(1, n), m - 1):
            edges = (0, *cut, n)
            if min(b - a for a, b in zip(edges, edges[1:])) < min_frames:
                continue
            for labs in itertools.product(range(k), repeat=m):
                if any(a == b for a, b in zip(labs, labs[1:])):
                    continue
                best = max(best, _objective(p, list(zip(edges, edges[1:], labs)), penalty))
    # the evidence of a frame is its probability times its 1 / fps seconds: the penalty in those units
    segs = plan_segments(p, fps, labels=LABELS[:k], options=LookaheadOptions(penalty / fps, min_frames / fps))
    got = _objective(p, [(s.first, s.stop, LABELS.index(s.emotion)) for s in segs], penalty)
    assert got == pytest.approx(best, abs=1e-9)


def test_boundaries_fall_where_the_evidence_changes() -> None:
    """A clean change at 4 s is a boundary at 4 s (no smoothing delay); an excursion of 1 s led by 0.3 (less evidence
    than the issue's sustained change, 0.3 for 2 s) is not followed; frames without a face keep the segment around
    them; the times do not depend on the frame rate."""
    for fps in (15.0, 30.0, 60.0):
        t = np.arange(int(10 * fps)) / fps
        p = np.full((len(t), 7), 0.02)
        happy, neutral, sad = LABELS.index("happy"), LABELS.index("neutral"), LABELS.index("sad")
        p[:, happy] = np.where(t < 4, 0.88, 0.02)
        p[:, neutral] = np.where(t >= 4, 0.88, 0.02)
        p[(t >= 6) & (t < 7), neutral], p[(t >= 6) & (t < 7), sad] = 0.27, 0.57  # a 1 s excursion, led by 0.3
        p[(t >= 2) & (t < 3.5)] = np.nan  # no face for 1.5 s
        p[1::2] = np.nan  # classified every other frame
        segs = plan_segments(p, fps, labels=LABELS)
        assert [(s.emotion, s.start) for s in segs] == [("happy", 0.0), ("neutral", 4.0)], fps
        assert segs[-1].end == pytest.approx(10.0)


def test_a_clip_without_a_face_is_one_segment_of_the_initial_emotion() -> None:
    p = np.full((40, 7), np.nan)
    (s,) = plan_segments(p, 20, labels=LABELS, initial="neutral")
    assert (s.emotion, s.first, s.stop, s.classifications, s.scores) == ("neutral", 0, 40, 0, {})
    assert plan_segments(np.zeros((0, 7)), 20, labels=LABELS) == ()


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(InvalidArgumentError, match="switch_penalty"):
        LookaheadOptions(switch_penalty=-1)
    with pytest.raises(InvalidArgumentError, match="evidence"):
        LookaheadOptions(evidence="ema")
    with pytest.raises(InvalidArgumentError, match=r"\[frames, labels\]"):
        plan_segments(np.zeros((5, 3)), 10, labels=LABELS)
    with pytest.raises(InvalidArgumentError, match="fps"):
        plan_segments(np.zeros((5, 7)), labels=LABELS)
    with pytest.raises(InvalidArgumentError, match="non-decreasing"):
        plan_segments(np.zeros((3, 7)), labels=LABELS, times=[0.0, 0.2, 0.1])


# -- the file pipeline ------------------------------------------------------------------------------


def test_file_is_analysed_first_then_styled_with_the_plan(st: Stylizer, face_frame: np.ndarray, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    other = np.ascontiguousarray(face_frame[:, :, ::-1])  # the fake classifier says sad
    frames = [f for k in range(4) for f in jittered(face_frame if k % 2 == 0 else other, 45, seed=k)]
    src = write_clip(tmp_path / "in.mp4", frames, fps=15)  # happy, sad, happy, sad: 3 s each
    fake = fake_classifier(2)
    calls: list[int] = []
    monkeypatch.setattr(st, "classify", lambda rgb: (calls.append(1), fake(rgb))[1])
    at_first_styled: list[int] = []
    segs = SegmentLog()

    def progress(frame, total: int) -> None:  # noqa: ANN001 - a StyledFrame
        if not at_first_styled:
            at_first_styled.append(len(calls))
        segs.add(frame)

    res = stylize_video(st, src, tmp_path / "out.mp4", progress=progress)
    # every classification was made in the analysis pass, before the first frame was styled; none after
    assert at_first_styled == [len(calls)] and len(calls) >= 180 / 2
    assert res.decision == "lookahead" and res.plan == LookaheadOptions() and 0 < res.analysis_seconds < res.wall_seconds
    # each switch at the first classification of the new expression (classified every 2 frames / 0.2 s)
    assert [s.emotion for s in res.segments] == ["happy", "sad", "happy", "sad"] and res.segments[0].start == 0.0
    assert all(0 <= s.start - c < 0.2 for s, c in zip(res.segments[1:], (3.0, 6.0, 9.0))), res.segments
    assert [s.summary() for s in segs.segments()] == [s.summary() for s in res.segments]
    for s in res.segments:
        assert max(s.scores, key=s.scores.get) == s.emotion and s.classifications >= 20
    d = res.summary()
    assert d["decision"] == "lookahead" and d["plan"]["switch_penalty"] == LookaheadOptions().switch_penalty
    json.dumps(d)
    # the causal rule on the same file: it switches after each change, not at it
    causal = stylize_video(st, src, tmp_path / "causal.mp4", decision="causal")
    assert causal.decision == "causal" and causal.plan is None
    for p in res.segments[1:]:
        assert any(p.start < c.start <= p.start + 1.5 and c.emotion == p.emotion for c in causal.segments), p


def test_plan_of_a_file_matches_its_analysis(st: Stylizer, face_frame: np.ndarray, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """The public pieces: ``analyse`` keeps only scores (one row per frame), ``plan_emotions`` plans them, and
    ``stream(plan=...)`` refuses what it cannot serve."""
    monkeypatch.setattr(st, "classify", fake_classifier(3))
    frames = jittered(face_frame, 30)
    track = analyse(st, frames, fps=15)
    assert track.scores.shape == (30, 7) and len(track.reasons) == len(track.faces) == 30
    assert track.reasons[0] == "start" and np.isfinite(track.scores[0]).all()
    plan = plan_emotions(track)
    out = list(st.stream(frames, fps=15, plan=plan))
    assert [f.state.emotion for f in out] == ["happy"] * 30 and not any(f.state.switched for f in out)
    assert [f.state.observed is not None for f in out] == list(np.isfinite(track.scores).all(axis=1))
    for bad in ({"live": True}, {"emotion": "sad"}):
        with pytest.raises(InvalidArgumentError, match="plan"):
            list(st.stream(frames, fps=15, plan=plan, **bad))
    with pytest.raises(InvalidArgumentError, match="decision"):
        stylize_video(st, tmp_path / "x.mp4", tmp_path / "y.mp4", decision="offline")


# -- the command ------------------------------------------------------------------------------------


def test_command_plans_a_real_clip_and_reports_its_segments(tmp_path: Path, demo_bundle: Path,
                                                            astronaut: np.ndarray) -> None:
    """The demo bundle's real classifier on a clip of the astronaut under changing light, mirrored half-way: two
    passes, the report shows the planned segments; --emotion-decision causal decides as the frames come."""
    face = astronaut[0:384, 96:480]
    frames = []
    for i in range(45):  # 3 s at 15 fps
        f = face[:, ::-1] if i >= 22 else face
        gain = 0.6 + 0.5 * abs(math.sin(i / 9))  # exposure drift
        f = cv2.resize(np.clip(f * gain, 0, 255).astype(np.uint8), (128, 128), interpolation=cv2.INTER_AREA)
        frames.append(np.ascontiguousarray(f))
    src = write_clip(tmp_path / "talk.mp4", frames, fps=15)
    b = ["--bundle", str(demo_bundle.resolve()), "-q"]
    assert main([str(src), "-o", str(tmp_path / "out.mp4"), "--report", str(tmp_path / "r.json"), *b]) == 0
    (e,) = json.loads((tmp_path / "r.json").read_text())["files"]
    assert e["decision"] == "lookahead" and e["plan"]["min_segment_seconds"] == 1.5
    assert 0 < e["plan"]["analysis_seconds"]
    segs = e["segments"]
    assert segs[0]["start"] == 0.0 and segs[-1]["end"] == pytest.approx(3.0) and sum(s["frames"] for s in segs) == 45
    for s in segs:
        assert max(s["scores"], key=s["scores"].get) == s["emotion"] and s["classifications"] >= 1
    assert e["emotion"] == "happy"  # she smiles throughout
    assert main([str(src), "-o", str(tmp_path / "causal.mp4"), "--report", str(tmp_path / "c.json"),
                 "--emotion-decision", "causal", "--smooth", "0.3", *b]) == 0
    (c,) = json.loads((tmp_path / "c.json").read_text())["files"]
    assert c["decision"] == "causal" and "plan" not in c and c["frames"] == 45


def test_webcam_refuses_lookahead_and_lookahead_refuses_causal_options(tmp_path: Path, demo_bundle: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    b = ["--bundle", str(demo_bundle.resolve())]
    assert main(["--webcam", "0", "-o", str(tmp_path / "w.mp4"), "--emotion-decision", "lookahead", *b]) == 2
    err = capsys.readouterr().err
    assert "the webcam is live" in err and "Note: expected --emotion-decision causal" in err
    src = tmp_path / "v.mp4"
    src.write_bytes(b"not read: refused before")
    for flag in (["--switch-margin", "0.3"], ["--smooth", "0.5"], ["--switch-after", "0.2"]):
        assert main([str(src), "-o", str(tmp_path / "o.mp4"), *flag, *b]) == 2
        assert "tunes the causal rule" in capsys.readouterr().err
    photo = tmp_path / "p.png"
    cv2.imwrite(str(photo), np.zeros((64, 64, 3), np.uint8))
    assert main([str(photo), "-o", str(tmp_path / "q.png"), "--emotion-decision", "causal", *b]) == 2
    assert "--emotion-decision is for videos" in capsys.readouterr().err
    assert not (tmp_path / "o.mp4").exists() and not (tmp_path / "w.mp4").exists()
