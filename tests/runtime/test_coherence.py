"""Temporal coherence: the warping-error metric, the flow-guided blend, coherent streams and the video command.

Clips come from ``emostyle_bench.coherence_clips``: real photos with known motion (a still scene with
sensor noise, a slow pan, a face crossing a still photo), so the metric is checked against the true flow.
The demo bundle's style networks are untrained: their output flickers (a fine texture that changes from
frame to frame), which is what the metric and the blend must see and remove.
"""

from __future__ import annotations

import json
import math
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest

from emostyle_bench.coherence_clips import build, moving_face, slow_pan, still_noise
from emostyle_bench.images import Size
from emostyle_rt import Stylizer
from emostyle_rt.video.coherence import (
    Blender,
    CoherenceLog,
    CoherenceOptions,
    Flow,
    FlowTracker,
    estimate_flow,
    warp,
    warping_error,
)
from emostyle_rt.errors import FlowError, InvalidArgumentError, InvalidImageError
from emostyle_rt.stylizer import Classification

LABELS = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
SMALL = Size(108, 192)  # the clips, small enough for the untrained networks to run quickly here


@pytest.fixture(scope="module")
def st(demo_bundle: Path) -> Stylizer:
    return Stylizer(demo_bundle)


# -- the metric ---------------------------------------------------------------------------------------


def test_flow_recovers_a_known_shift(astronaut: np.ndarray) -> None:
    a = cv2.resize(astronaut, (640, 360), interpolation=cv2.INTER_AREA)
    b = cv2.warpAffine(a, np.float32([[1, 0, 3], [0, 1, 1.5]]), (640, 360), borderMode=cv2.BORDER_REFLECT)
    for side in (None, 320):  # full resolution and the stream's reduced one, upsampled
        f = estimate_flow(a, b, side=side)
        assert f.field.shape == (360, 640, 2) and f.valid.shape == (360, 640)
        assert np.median(f.field[..., 0][f.valid]) == pytest.approx(-3.0, abs=0.2)
        assert np.median(f.field[..., 1][f.valid]) == pytest.approx(-1.5, abs=0.2)
        assert f.valid.mean() > 0.9
        assert f.valid[:, :2].mean() < 0.5  # those pixels came from outside the previous frame
        # the warped previous frame is the current one, except the reflected border
        d = np.abs(warp(a, f).astype(np.int16) - b)[f.valid].mean()
        assert d < 3.0 < np.abs(a.astype(np.int16) - b)[f.valid].mean()


def test_occlusion_mask_marks_what_the_moving_face_uncovers() -> None:
    clip = moving_face(Size(180, 320), 3, speed=0.03, sigma=0)
    f = estimate_flow(clip.frames[1], clip.frames[2], side=None, preset="medium")  # the metric's flow
    x, y, w, h = clip.boxes[2]
    step = x - clip.boxes[1][0]
    assert step >= 8
    assert f.valid[y + 5:y + h - 5, x - step + 2:x - 2].mean() < 0.5  # background the face covered a frame ago
    assert f.valid[:, x + w + 20:].mean() > 0.9  # still background
    assert np.median(f.field[y + 10:y + h - 10, x + 10:x + w - 10, 0]) == pytest.approx(-step, abs=0.5)


def test_warping_error_of_sensor_noise_matches_theory() -> None:
    clip = still_noise(Size(180, 320), 4, sigma=6.0)
    known = warping_error(clip.frames, clip.frames, flows=clip.flows)
    direct = np.mean([np.abs(b.astype(np.int16) - a).mean() for a, b in zip(clip.frames, clip.frames[1:])])
    assert known.input == pytest.approx(direct, rel=1e-4) and known.styled == known.input and known.pairs == 3
    # |n1 - n2| for two N(0, 6^2) has mean 2 * 6 / sqrt(pi) = 6.77; clipping at 0 and 255 (the photo's black sky,
    # white suit) and truncation to 8 bits trim it
    assert 5.5 < known.input < 6.9
    est = warping_error(clip.frames, clip.frames)  # the metric's own flow on noisy frames
    assert est.input == pytest.approx(known.input, rel=0.1)


def test_warping_error_sees_flicker_and_not_motion() -> None:
    clip = slow_pan(Size(180, 320), 5, sigma=0)
    rng = np.random.default_rng(1)
    flicker = [np.clip(f + rng.normal(0, 10, f.shape), 0, 255).astype(np.uint8) for f in clip.frames]
    steady = warping_error(clip.frames, clip.frames, flows=clip.flows)
    shaky = warping_error(clip.frames, flicker, flows=clip.flows)
    # sub-pixel steps: warping resamples the photo a second time, which leaves ~2 levels on its texture
    assert steady.styled == steady.input < 3 and shaky.styled > 7 and shaky.ratio > 3
    est = warping_error(clip.frames, flicker)
    assert est.styled == pytest.approx(shaky.styled, rel=0.1) and est.input < 3


def test_bad_input_is_refused_with_a_note(astronaut: np.ndarray) -> None:
    a = np.ascontiguousarray(astronaut[:128, :128])
    flat = np.full_like(a, 128)
    with pytest.raises(FlowError, match="flat.*Note: expected"):
        estimate_flow(a, flat)
    with pytest.raises(FlowError, match="size changed.*Note: expected"):
        estimate_flow(a, np.ascontiguousarray(astronaut[:96, :128]))
    with pytest.raises(InvalidImageError, match="Note: expected"):
        estimate_flow(a, "frame.png")  # type: ignore[arg-type]
    with pytest.raises(InvalidImageError, match="dtype"):
        estimate_flow(a, a.astype(np.int32))
    with pytest.raises(InvalidArgumentError, match=">= 2 frames"):
        warping_error([a], [a])
    with pytest.raises(InvalidArgumentError, match="same count"):
        warping_error([a, a], [a])
    with pytest.raises(InvalidImageError, match="not the size of its input"):
        warping_error([a, a], [a, a[:64]])
    with pytest.raises(FlowError, match="No frame pair"):
        warping_error([flat, flat], [flat, flat])
    f = estimate_flow(a, a)
    with pytest.raises(InvalidImageError, match="flow's size"):
        warp(a[:64], f)
    with pytest.raises(InvalidArgumentError, match="HxWx2"):
        Flow.from_field(np.zeros((4, 4, 3), np.float32))
    for bad in ({"mode": "optical"}, {"strength": 1.5}, {"strength": float("nan")}, {"flow_side": 8}):
        with pytest.raises(InvalidArgumentError, match="Note: expected"):
            CoherenceOptions(**bad)  # type: ignore[arg-type]


# -- the blend, without a network --------------------------------------------------------------------


def test_blender_resets_at_cuts_switches_and_flow_failures(astronaut: np.ndarray) -> None:
    from skimage import data

    rng = np.random.default_rng(0)
    still = still_noise(SMALL, 3).frames
    coffee = cv2.resize(np.ascontiguousarray(data.coffee()), (SMALL.width, SMALL.height), interpolation=cv2.INTER_AREA)
    flat = np.full_like(coffee, 90)
    frames = [*still, coffee, coffee, coffee, flat, coffee, cv2.resize(coffee, (160, 90))]
    emotions = ["a"] * 5 + ["b"] * 4
    want = ["start", "blended", "blended", "cut", "blended", "switch", "flow-failed", "flow-failed", "flow-failed"]
    tracker, blender = FlowTracker(), Blender(CoherenceOptions("flow"), measure=True)
    log = CoherenceLog(blender.o)
    for f, e, action in zip(frames, emotions, want):
        styled = np.clip(f + rng.normal(0, 12, f.shape), 0, 255).astype(np.uint8)  # a flickering "style"
        out, info = blender.apply(styled, f, tracker.step(f), e)
        log.add(info)
        assert info.action == action
        if action == "blended":
            assert 0.3 < info.weight <= 0.8 + 1e-6 and np.abs(out.astype(np.int16) - styled).mean() > 2
        else:
            assert out is styled  # styled on its own
    rep = log.report()
    assert rep.flow_failures == 3 and rep.actions["blended"] == 3 and rep.frames == 9
    reasons = " ".join(rep.summary()["failure_reasons"])
    assert "flat" in reasons and "size changed" in reasons
    assert rep.e_warp is not None and rep.e_warp.pairs == 4  # blended pairs and the switch; no cut, no failure


# -- coherent streams with the demo bundle's networks --------------------------------------------------


def test_coherent_stream_meets_the_targets_on_the_clips(st: Stylizer) -> None:
    """The issue's targets on its three clips: E_warp cut by >= 50% (the metric's own full-resolution flow), and no
    ghost trail: SSIM between the output and the per-frame output inside the moving face >= 0.8."""
    from skimage.metrics import structural_similarity

    for name in ("still", "pan", "face"):
        clip = build(name, SMALL, 8)
        plain = [f.image for f in st.stream(list(clip.frames), fps=30, emotion="happy")]
        coh = list(st.stream(list(clip.frames), fps=30, emotion="happy", coherence="flow"))
        assert [f.coherence.action for f in coh] == ["start"] + ["blended"] * 7
        np.testing.assert_array_equal(coh[0].image, plain[0])
        before, after = warping_error(clip.frames, plain), warping_error(clip.frames, [f.image for f in coh])
        assert before.styled > 1.05 * before.input  # the untrained network flickers: there is something to cut
        assert after.styled <= 0.5 * before.styled, (name, before, after)
        if clip.boxes:
            for f, ref, (x, y, w, h) in zip(coh[1:], plain[1:], clip.boxes[1:]):
                s = structural_similarity(f.image[y:y + h, x:x + w], ref[y:y + h, x:x + w], channel_axis=2,
                                          data_range=255)
                assert s >= 0.8, (f.index, s)


def test_two_streams_at_once_never_mix(st: Stylizer) -> None:
    a, b = build("still", SMALL, 6), build("pan", SMALL, 6)
    alone = {c.name: [f.image for f in st.stream(list(c.frames), fps=30, emotion="sad", coherence="flow")]
             for c in (a, b)}
    results: dict[str, list[np.ndarray]] = {"still": [], "pan": []}
    ia = st.stream(list(a.frames), fps=30, emotion="sad", coherence="flow")
    ib = st.stream(list(b.frames), fps=30, emotion="sad", coherence="flow")
    for fa, fb in zip(ia, ib):  # interleaved in one thread
        results["still"].append(fa.image)
        results["pan"].append(fb.image)

    def other_thread() -> None:  # and a third stream at the same time from another thread
        results["third"] = [f.image for f in st.stream(list(a.frames), fps=30, emotion="sad", coherence="flow")]

    th = threading.Thread(target=other_thread)
    th.start()
    results["pan2"] = [f.image for f in st.stream(list(b.frames), fps=30, emotion="sad", coherence="flow")]
    th.join()
    for name, ref in (("still", alone["still"]), ("pan", alone["pan"]), ("third", alone["still"]),
                      ("pan2", alone["pan"])):
        assert len(results[name]) == 6
        for x, y in zip(results[name], ref):
            np.testing.assert_array_equal(x, y)
    # batched style runs: the blend still runs per frame, in order, after each run
    batched = [f.image for f in st.stream(list(a.frames), fps=30, emotion="sad", coherence="flow", batch=4)]
    for x, y in zip(batched, alone["still"]):
        np.testing.assert_allclose(x, y, atol=2)


def test_stream_falls_back_on_flow_failures_and_resets_at_switches(st: Stylizer,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    clip = build("still", SMALL, 4)
    flat = np.full_like(clip.frames[0], 100)
    small = cv2.resize(clip.frames[3], (160, 90), interpolation=cv2.INTER_AREA)
    frames = [*clip.frames[:3], flat, clip.frames[3], small]
    out = list(st.stream(frames, fps=30, emotion="fear", coherence="flow", measure=True))
    assert [f.coherence.action for f in out] == ["start", "blended", "blended"] + ["flow-failed"] * 3
    for f, src in zip(out[3:], frames[3:]):
        np.testing.assert_array_equal(f.image, st.stylize(src, emotion="fear").image)
    log = CoherenceLog(CoherenceOptions("flow"))
    for f in out:
        log.add(f.coherence)
    assert log.report().flow_failures == 3 and log.report().e_warp.pairs == 2

    seq = iter(["happy"] * 4 + ["sad"] * 100)  # the classifier changes its mind: the style switches

    def fake(rgb: np.ndarray) -> Classification:
        e = next(seq)
        return Classification(e, {k: float(k == e) for k in LABELS}, None, (), "whole")

    monkeypatch.setattr(st, "classify", fake)
    from emostyle_rt.video import TemporalOptions

    o = TemporalOptions(classify_every=1, smooth_seconds=0, switch_seconds=0)
    still = build("still", SMALL, 8).frames
    out = list(st.stream(list(still), fps=30, options=o, coherence="flow"))
    k = next(i for i, f in enumerate(out) if f.state.switched)
    assert out[k].coherence.action == "switch" and out[k + 1].coherence.action == "blended"
    np.testing.assert_array_equal(out[k].image, st.stylize(still[k], emotion=out[k].state.emotion).image)


def test_video_command_blends_by_default_and_reports_e_warp(tmp_path: Path, demo_bundle: Path) -> None:
    av = pytest.importorskip("av")
    from emostyle_rt.cli import main

    clip = build("still", Size(72, 128), 8)
    src = tmp_path / "still.mp4"
    with av.open(str(src), "w") as c:
        vs = c.add_stream("libx264", rate=30, options={"crf": "10"})
        vs.width, vs.height, vs.pix_fmt = 128, 72, "yuv420p"
        for i, f in enumerate(clip.frames):
            vf = av.VideoFrame.from_ndarray(f, format="rgb24")
            vf.pts = i
            c.mux(vs.encode(vf))
        c.mux(vs.encode())
    b = ["--bundle", str(demo_bundle), "--emotion", "happy", "-q"]
    reports = {}
    for mode in ("flow", "off"):
        extra = [] if mode == "flow" else ["--coherence", "off"]  # flow is the default
        r = tmp_path / f"{mode}.json"
        assert main([str(src), "-o", str(tmp_path / f"{mode}.mp4"), "--report", str(r), *b, *extra]) == 0
        reports[mode] = json.loads(r.read_text())["files"][0]["coherence"]
    flow, off = reports["flow"], reports["off"]
    assert flow["mode"] == "flow" and flow["actions"] == {"start": 1, "blended": 7} and flow["flow_failures"] == 0
    assert off["mode"] == "off" and off["actions"] == {"off": 8}
    assert flow["e_warp"]["input"] == pytest.approx(off["e_warp"]["input"], rel=1e-6)
    assert flow["e_warp"]["styled"] <= 0.5 * off["e_warp"]["styled"]
    assert math.isfinite(off["e_warp"]["styled"]) and off["e_warp"]["styled"] > off["e_warp"]["input"]
    assert main([str(src), "-o", str(tmp_path / "bad.mp4"), *b, "--coherence-strength", "1.5"]) == 2
    with pytest.raises(SystemExit) as exc:  # argparse refuses an unknown mode itself
        main([str(src), "-o", str(tmp_path / "bad.mp4"), *b, "--coherence", "warp"])
    assert exc.value.code == 2 and not (tmp_path / "bad.mp4").exists()
