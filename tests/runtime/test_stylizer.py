"""The Stylizer on real photos: faces, sizes, colour orders, policies, batches, threads."""

from __future__ import annotations

import dataclasses
import json
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import pytest
from skimage import data

import emostyle_rt.stylizer as stylizer_mod
from emostyle_rt import Face, Stylizer
from emostyle_rt.backends import runner_for
from emostyle_rt.errors import (
    BackendError,
    BundleError,
    ImageReadError,
    InvalidArgumentError,
    InvalidImageError,
    NoFaceError,
)

ASTRONAUT = data.astronaut()
SMALL_FACE = cv2.resize(ASTRONAUT, (192, 192), interpolation=cv2.INTER_AREA)  # face still found
NO_FACE = cv2.resize(data.coffee(), (90, 60), interpolation=cv2.INTER_AREA)


@pytest.fixture(scope="module")
def st(demo_bundle: Path) -> Stylizer:
    return Stylizer(demo_bundle)


def _reference(st: Stylizer, rgb: np.ndarray, emotion: str) -> np.ndarray:
    """What the style graph gives for ``rgb``: reflect-pad to 4, run, crop back."""
    spec = st.manifest.style_for(emotion)
    h, w = rgb.shape[:2]
    padded = np.pad(rgb, ((0, -h % 4), (0, -w % 4), (0, 0)), mode="reflect")
    # The engine the Stylizer itself picked (OpenVINO or onnxruntime): the Stylizer's geometry is what is tested.
    engine = st._style_runner(spec.style_id)
    out = engine.run({spec.input_name: np.ascontiguousarray(padded[None])})
    return out[spec.output_name][0, :h, :w]


def test_classify_finds_the_astronaut(st: Stylizer) -> None:
    c = st.classify(ASTRONAUT)
    assert c.source == "face" and c.face is not None
    # The bundle's MTCNN finds the mtcnn package's box; bundles without a detector use Haar.
    want = (182, 64, 83, 107) if st.manifest.detector is not None else (177, 66, 95, 95)
    assert all(abs(a - b) <= 6 for a, b in zip(c.face.box, want))
    assert list(c.scores) == list(st.labels)
    assert sum(c.scores.values()) == pytest.approx(1.0, abs=1e-4)
    assert c.emotion == max(c.scores, key=c.scores.get)
    assert len(c.faces) == 1 and c.faces[0].face == c.face and c.faces[0].scores == c.scores


def test_stylize_matches_the_graph_and_keeps_odd_sizes(st: Stylizer) -> None:
    rgb = ASTRONAUT[60:161, 150:253]  # 101 x 103, face inside
    res = st.stylize(rgb)
    assert res.image.shape == rgb.shape and res.image.dtype == np.uint8
    assert res.style == st.manifest.emotions[res.emotion]
    np.testing.assert_array_equal(res.image, _reference(st, rgb, res.emotion))


@pytest.mark.parametrize("hw", [(5, 5), (5, 9), (9, 6), (13, 17), (64, 64), (33, 130)])
def test_output_size_equals_input_size(st: Stylizer, hw: tuple[int, int]) -> None:
    rgb = np.ascontiguousarray(ASTRONAUT[200 : 200 + hw[0], 200 : 200 + hw[1]])
    res = st.stylize(rgb, emotion="sad")
    assert res.image.shape == rgb.shape
    np.testing.assert_array_equal(res.image, _reference(st, rgb, "sad"))


def test_forced_emotion_skips_classification(st: Stylizer) -> None:
    res = st.stylize(SMALL_FACE, emotion="fear")
    assert (res.emotion, res.source, res.scores, res.face, res.faces) == ("fear", "given", {}, None, ())
    with pytest.raises(InvalidArgumentError, match="Unknown emotion 'joy'.*Note: expected"):
        st.stylize(SMALL_FACE, emotion="joy")


def test_colour_orders_and_channel_counts(st: Stylizer, tmp_path: Path) -> None:
    rgb = ASTRONAUT[::4, ::4]
    ref = st.stylize(rgb, emotion="happy").image
    bgr_out = st.stylize(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), emotion="happy", bgr=True).image
    np.testing.assert_array_equal(bgr_out, cv2.cvtColor(ref, cv2.COLOR_RGB2BGR))
    rgba = np.dstack([rgb, np.zeros(rgb.shape[:2], np.uint8)])
    out = st.stylize(rgba, emotion="happy").image
    np.testing.assert_array_equal(out[..., :3], ref)  # alpha does not change the styling
    np.testing.assert_array_equal(out[..., 3], rgba[..., 3])  # and comes back unchanged
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    assert st.stylize(grey, emotion="happy").image.shape == rgb.shape
    p = tmp_path / "a.png"
    cv2.imwrite(str(p), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    np.testing.assert_array_equal(st.stylize(p, emotion="happy").image, ref)
    np.testing.assert_array_equal(st.stylize(str(p), emotion="happy").image, ref)


def test_max_side_runs_smaller_and_returns_full_size(st: Stylizer, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[int, ...]] = []
    runner = st._style_runner(st.manifest.emotions["angry"])
    real_run = runner.run
    monkeypatch.setattr(runner, "run", lambda feed: (seen.append(next(iter(feed.values())).shape), real_run(feed))[1])
    rgb = ASTRONAUT[:150, :301]
    res = st.stylize(rgb, emotion="angry", max_side=64)
    assert res.image.shape == rgb.shape
    assert seen == [(1, 32, 64, 3)]
    with pytest.raises(InvalidArgumentError, match="max_side"):
        st.stylize(rgb, max_side=2)


def test_no_face_policies(demo_bundle: Path, st: Stylizer) -> None:
    whole = st.stylize(NO_FACE)
    assert whole.face is None and whole.faces == () and whole.source == "whole"
    assert list(whole.scores) == list(st.labels) and whole.image.shape == NO_FACE.shape
    fixed = Stylizer(demo_bundle, no_face="neutral").stylize(NO_FACE)
    assert (fixed.emotion, fixed.source, fixed.scores) == ("neutral", "policy", {})
    strict = Stylizer(demo_bundle, no_face="error")
    with pytest.raises(NoFaceError, match="no-face policy"):
        strict.classify(NO_FACE)
    assert strict.classify(SMALL_FACE).face is not None
    with pytest.raises(InvalidArgumentError, match="no-face policy"):
        Stylizer(demo_bundle, no_face="smile")


class _TwoFaces:
    def detect(self, rgb: np.ndarray) -> list[Face]:
        return [Face(10, 10, 40, 40), Face(60, 60, 20, 20)]


def test_every_face_is_classified_and_the_largest_decides(demo_bundle: Path, st: Stylizer) -> None:
    c = Stylizer(demo_bundle, detector=_TwoFaces()).classify(SMALL_FACE)
    assert [f.face for f in c.faces] == [Face(10, 10, 40, 40), Face(60, 60, 20, 20)]
    assert c.face == c.faces[0].face and c.scores == c.faces[0].scores and c.emotion == c.faces[0].emotion
    json.dumps(c.summary())


@pytest.mark.parametrize(
    ("image", "error", "match"),
    [
        (np.zeros((4, 40, 3), np.uint8), InvalidImageError, "too small.*Note: expected height and width >= 5"),
        (np.zeros((40, 40, 3), np.float32), InvalidImageError, "dtype"),
        (np.zeros((40, 40, 2), np.uint8), InvalidImageError, "shape"),
        (np.zeros((0, 0, 3), np.uint8), InvalidImageError, "empty"),
        ("definitely/missing.jpg", ImageReadError, "does not exist"),
        (12, InvalidImageError, "numpy array or a path"),
    ],
)
def test_bad_inputs(st: Stylizer, image: object, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        st.stylize(image)  # type: ignore[arg-type]


def test_results_are_frozen(st: Stylizer) -> None:
    res = st.stylize(SMALL_FACE, emotion="sad")
    with pytest.raises(dataclasses.FrozenInstanceError):
        res.emotion = "happy"  # type: ignore[misc]
    assert json.loads(json.dumps(res.summary()))["style"] == res.style


def test_batch_runs_each_style_once_per_group(demo_bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    runs: list[tuple[str, tuple[int, ...]]] = []

    def counting(manifest, key, **kw):
        runner = runner_for(manifest, key, **kw)
        real = runner.run
        runner.run = lambda feed: (runs.append((key, next(iter(feed.values())).shape)), real(feed))[1]
        return runner

    monkeypatch.setattr(stylizer_mod, "runner_for", counting)
    st = Stylizer(demo_bundle)
    images = [SMALL_FACE, NO_FACE, SMALL_FACE[:, ::-1], NO_FACE[:51], SMALL_FACE]
    results = st.stylize_batch(images)
    assert [r.image.shape for r in results] == [im.shape for im in images]
    c = st.manifest.classifier
    assert runs[0] == ("classifier", (5, c.height, c.width, c.channels))  # every crop in one run
    style_runs = runs[1:]
    assert len(style_runs) == len({(k, s[1:]) for k, s in style_runs})  # one run per style and size
    assert sum(s[0] for _, s in style_runs) == len(images)
    for im, res in zip(images, results):
        single = st.stylize(im)
        assert single.emotion == res.emotion
        if st._styles[res.style].name.startswith("onnxruntime:"):
            np.testing.assert_array_equal(single.image, res.image)
        else:  # OpenVINO's kernels differ with the batch size: within the bundle's 1 grey level, not bit for bit
            assert np.abs(single.image.astype(int) - res.image).max() <= 1
    forced = st.stylize_batch(images[:2], emotion="disgust")
    assert {r.style for r in forced} == {st.manifest.emotions["disgust"]}


def test_threads_agree_with_serial_runs(demo_bundle: Path) -> None:
    images = [
        np.ascontiguousarray(ASTRONAUT[y : y + 70 + 7 * i, x : x + 60 + 5 * i])
        for i, (y, x) in enumerate([(0, 0), (60, 160), (300, 20), (200, 300), (40, 100), (100, 400)])
    ]
    jobs = [(im, e) for im in images for e in (None, "sad", "angry")]
    ref_st = Stylizer(demo_bundle)
    serial = [ref_st.stylize(im, emotion=e) for im, e in jobs]
    shared = Stylizer(demo_bundle)  # cold: style graphs load under concurrency
    barrier = threading.Barrier(4)  # all four threads start together
    with ThreadPoolExecutor(4, initializer=barrier.wait) as pool:
        concurrent = list(pool.map(lambda job: shared.stylize(job[0], emotion=job[1]), jobs))
    for a, b in zip(serial, concurrent):
        assert (a.emotion, a.face, a.scores) == (b.emotion, b.face, b.scores)
        np.testing.assert_array_equal(a.image, b.image)


def test_backend_and_bundle_errors(demo_bundle: Path, tmp_path: Path) -> None:
    with pytest.raises(BackendError, match="Unknown backend"):
        Stylizer(demo_bundle, backend="magic")
    with pytest.raises(BackendError, match="TensorRT"):
        Stylizer(demo_bundle, backend="tensorrt")
    with pytest.raises(BackendError, match="provider"):
        Stylizer(demo_bundle, provider="npu")
    with pytest.raises(BundleError, match="does not exist"):
        Stylizer(tmp_path / "nothing")


@pytest.fixture()
def fake_gpu_build(monkeypatch: pytest.MonkeyPatch):
    """onnxruntime-gpu's provider list, with the GPU probes under the test's control."""
    import onnxruntime as ort

    from emostyle_rt.backends import ort as ortb

    full = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    monkeypatch.setattr(ort, "get_available_providers", lambda: full)
    ortb._auto_providers.cache_clear()
    yield ortb
    ortb._auto_providers.cache_clear()


def test_gpu_build_without_a_gpu_falls_back_quietly(fake_gpu_build, monkeypatch: pytest.MonkeyPatch,
                                                    capfd: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(fake_gpu_build, "cuda_device_count", lambda: 0)
    assert fake_gpu_build.choose_providers() == ["CPUExecutionProvider"]
    with pytest.raises(BackendError, match="no CUDA GPU"):
        fake_gpu_build.choose_providers("cuda")
    assert capfd.readouterr().out == ""


def test_provider_order_with_a_gpu(fake_gpu_build, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fake_gpu_build, "cuda_device_count", lambda: 1)
    monkeypatch.setattr(fake_gpu_build, "tensorrt_libraries", lambda: True)
    assert fake_gpu_build.choose_providers() == [
        "TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert fake_gpu_build.choose_providers("cuda") == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    fake_gpu_build._auto_providers.cache_clear()
    monkeypatch.setattr(fake_gpu_build, "tensorrt_libraries", lambda: False)
    assert fake_gpu_build.choose_providers() == ["CUDAExecutionProvider", "CPUExecutionProvider"]


def test_runners_share_one_cpu_arena_without_per_run_shrinkage(demo_bundle: Path) -> None:
    st = Stylizer(demo_bundle, backend="onnxruntime")  # auto runs style graphs in OpenVINO where it is installed
    runner = st._style_runner(st.manifest.emotions["happy"])
    assert runner.name == "onnxruntime:CPUExecutionProvider"
    for r in (runner, st._classifier):  # memory strategy: see emostyle_rt.backends.ort.CPU_MEMORY_MODES
        assert r._run_options is None and r._memory == "shared"
        assert r._session.get_session_options().get_session_config_entry("session.use_env_allocators") == "1"
    assert [t.name for t in runner.inputs] == ["image"] and runner.inputs[0].dtype == "uint8"
