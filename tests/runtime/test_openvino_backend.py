"""OpenVINO backend: parity with onnxruntime on real photos, explicit fp32, the gate, fallbacks, caches, threads.

Tests that run OpenVINO skip cleanly where the ``openvino`` package is absent
(the ``cpu`` extra installs it); the ones about its absence run everywhere.
"""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path

import numpy as np
import pytest

from emostyle_rt import Stylizer
from emostyle_rt.backends import BACKENDS, CLASSIFIER, ENGINES, FallbackRunner, runner_for
from emostyle_rt.backends import ort as ortb
from emostyle_rt.backends import openvino as ovb
from emostyle_rt.errors import BackendError
from emostyle_rt.imaging.io import pad_to_multiple
from emostyle_rt.manifest import Manifest, load_manifest

needs_openvino = pytest.mark.skipif(not ovb.installed(), reason="openvino is not installed (the cpu extra brings it)")


@pytest.fixture(scope="module")
def manifest(demo_bundle: Path) -> Manifest:
    return load_manifest(demo_bundle)


def _sid(m: Manifest) -> str:
    return m.emotions[m.labels[0]]


def _listing(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}


def test_registered_as_one_engine() -> None:
    assert ENGINES["openvino"] is ovb and "openvino" in BACKENDS
    assert ovb.PRECISIONS == ("auto", "fp32", "bf16")


@needs_openvino
def test_fp32_equals_onnxruntime_on_real_photos_and_is_explicit(manifest: Manifest, astronaut: np.ndarray,
                                                                cache: Path) -> None:
    import cv2
    from skimage import data

    spec = manifest.styles[_sid(manifest)]
    ov = ovb.OvRunner(manifest.path(spec.onnx))
    ort = ortb.OrtRunner(manifest.path(spec.onnx), provider="cpu")
    photos = [astronaut, cv2.resize(data.coffee(), (320, 240))]  # two real photos (a face, a cup)
    odd = pad_to_multiple(np.ascontiguousarray(astronaut[:255, :301]), manifest.size_multiple)
    for batch in [p[None] for p in photos] + [np.stack([odd, odd[::-1].copy()])]:
        got = ov.run({spec.input_name: batch})[spec.output_name]
        want = ort.run({spec.input_name: batch})[spec.output_name]
        assert got.dtype == np.uint8 and got.shape == batch.shape
        assert np.abs(got.astype(int) - want).max() <= 1
    # The CPU plugin's own default may be bf16 (AVX512-BF16 / AMX CPUs); the runner asks for f32 and gets it.
    assert "float32" in str(ov._compiled.get_property("INFERENCE_PRECISION_HINT")).lower()
    assert ov.name == "openvino:CPU:fp32"
    assert [t.name for t in ov.inputs] == [spec.input_name] and ov.inputs[0].dtype == "uint8"
    assert ov.inputs[0].shape[-1] == 3 and ov.inputs[0].shape[0] is None  # dynamic batch
    ov.close()
    ov.close()  # idempotent
    with pytest.raises(BackendError, match="closed"):
        ov.run({spec.input_name: photos[0][None]})


@needs_openvino
def test_auto_uses_it_for_styles_on_cpu_only_and_gates_once(demo_bundle: Path, manifest: Manifest,
                                                            astronaut: np.ndarray, cache: Path) -> None:
    before = _listing(demo_bundle)
    with Stylizer(demo_bundle) as st, Stylizer(demo_bundle, backend="onnxruntime") as ref:
        a, b = st.stylize(astronaut), ref.stylize(astronaut)
        assert st._styles[a.style].name == "openvino:CPU:fp32"
        assert st._runners[CLASSIFIER].name.startswith("onnxruntime:")  # tiny graph: onnxruntime is faster
        assert isinstance(st._styles[a.style], FallbackRunner)
        assert (a.emotion, a.style) == (b.emotion, b.style)
        assert np.abs(a.image.astype(int) - b.image).max() <= 1
    assert _listing(demo_bundle) == before  # nothing written into the bundle
    markers = list((cache / ovb.VERIFIED_DIR).glob("*.json"))
    assert len(markers) == 1 and json.loads(markers[0].read_text())["max_abs_diff"] <= 1
    assert any((cache / ovb.BLOBS_DIR).iterdir())  # OpenVINO's compiled blob, in the user cache
    # A marker means the gate is not run again (no onnxruntime reference session).
    made = []
    orig = ortb.OrtRunner.__init__

    def spy(self, *a, **k):  # noqa: ANN001, ANN002, ANN003
        made.append(a[0])
        orig(self, *a, **k)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ortb.OrtRunner, "__init__", spy)
        runner_for(manifest, a.style).close()
    assert made == []


@needs_openvino
def test_a_graph_that_fails_the_gate_falls_back_with_one_warning(manifest: Manifest, cache: Path,
                                                                 monkeypatch: pytest.MonkeyPatch,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    orig = ovb.OvRunner.run

    def off_by_three(self, feed):  # noqa: ANN001
        return {k: np.clip(v.astype(int) + 3, 0, 255).astype(np.uint8) for k, v in orig(self, feed).items()}

    monkeypatch.setattr(ovb.OvRunner, "run", off_by_three)
    sid = _sid(manifest)
    with caplog.at_level(logging.WARNING):
        first = runner_for(manifest, sid)
        second = runner_for(manifest, sid)  # not tried again in this process
    assert first.name.startswith("onnxruntime:") and second.name.startswith("onnxruntime:")
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1 and "disagrees with onnxruntime" in warned[0] and "max |diff| <= 1" in warned[0]
    assert not (cache / ovb.VERIFIED_DIR).exists() or not any((cache / ovb.VERIFIED_DIR).iterdir())
    with pytest.raises(BackendError, match="disagrees"):
        runner_for(manifest, sid, backend="openvino")


@needs_openvino
def test_compile_failure_falls_back_and_required_raises(manifest: Manifest, cache: Path,
                                                        monkeypatch: pytest.MonkeyPatch,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    class Broken:
        def compile_model(self, *a, **k):  # noqa: ANN002, ANN003
            raise RuntimeError("Exception from src/inference: unsupported op")

    monkeypatch.setattr(ovb, "core", lambda: Broken())
    with caplog.at_level(logging.WARNING):
        r = runner_for(manifest, _sid(manifest))
    assert r.name.startswith("onnxruntime:") and caplog.text.count("cannot compile") == 1
    monkeypatch.setattr(ovb, "_FAILED", {})
    with pytest.raises(BackendError, match="cannot compile"):
        runner_for(manifest, _sid(manifest), backend="openvino")


def test_without_openvino_auto_is_onnxruntime_and_openvino_is_a_typed_error(
        manifest: Manifest, cache: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(ovb, "installed", lambda: False)

    def no_module():  # noqa: ANN202
        raise BackendError("OpenVINO is not installed (No module named 'openvino')."
                           " Note: expected pip install 'emostyle-rt[cpu]' (or '[openvino]').")

    monkeypatch.setattr(ovb, "import_openvino", no_module)
    with caplog.at_level(logging.WARNING):
        r = runner_for(manifest, _sid(manifest))
    assert r.name.startswith("onnxruntime:") and not caplog.records  # silently: it is optional
    with pytest.raises(BackendError, match=r"emostyle-rt\[cpu\]"):
        runner_for(manifest, _sid(manifest), backend="openvino")


def test_not_used_where_onnxruntime_has_a_gpu(manifest: Manifest, cache: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ovb, "installed", lambda: True)
    monkeypatch.setattr(ortb, "choose_providers", lambda provider=None: ("CUDAExecutionProvider", "CPUExecutionProvider"))
    monkeypatch.setattr(ovb, "verified_runner", lambda *a, **k: pytest.fail("OpenVINO was tried on a GPU machine"))
    assert ovb.find_runner(manifest, _sid(manifest)) is None
    assert ovb.find_runner(manifest, CLASSIFIER) is None  # auto: the classifier stays in onnxruntime


def test_precisions(manifest: Manifest, cache: Path) -> None:
    sid = _sid(manifest)
    with pytest.raises(BackendError, match="does not run precision='fp16'"):
        runner_for(manifest, sid, backend="openvino", precision="fp16")
    with pytest.raises(BackendError, match="OpenVINO only"):
        runner_for(manifest, sid, backend="onnxruntime", precision="bf16")
    with pytest.raises(BackendError, match="Unknown precision"):
        runner_for(manifest, sid, precision="int8")
    # bf16 is for style graphs: the classifier runs FP32 (onnxruntime with auto).
    assert runner_for(manifest, CLASSIFIER, precision="bf16").name == "onnxruntime:CPUExecutionProvider"


@needs_openvino
def test_bf16_is_gated_and_close_to_fp32_on_a_real_photo(manifest: Manifest, astronaut: np.ndarray,
                                                         cache: Path) -> None:
    sid = _sid(manifest)
    spec = manifest.styles[sid]
    try:
        r = runner_for(manifest, sid, backend="openvino", precision="bf16")
    except BackendError as exc:  # a CPU without AVX512-BF16 / AMX: refused, never run at another precision
        assert "another precision" in str(exc)
        pytest.skip(f"this CPU runs no bf16: {exc}")
    assert r.name == "openvino:CPU:bf16"
    marker = json.loads(next((cache / ovb.VERIFIED_DIR).glob("*-bf16.json")).read_text())
    assert marker["psnr_db"] >= ovb.BF16_MIN_PSNR
    ref = ortb.OrtRunner(manifest.path(spec.onnx), provider="cpu")
    got = r.run({spec.input_name: astronaut[None]})[spec.output_name]
    want = ref.run({spec.input_name: astronaut[None]})[spec.output_name]
    assert ovb.psnr(got, want) >= ovb.BF16_MIN_PSNR
    assert np.abs(got.astype(int) - want).max() > 1  # really bf16: not the fp32 result


@needs_openvino
def test_threads_and_concurrency(manifest: Manifest, astronaut: np.ndarray, cache: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    spec = manifest.styles[_sid(manifest)]
    monkeypatch.setenv(ortb.CPU_THREADS_ENV, "1")
    r = ovb.OvRunner(manifest.path(spec.onnx))
    assert int(r._compiled.get_property("INFERENCE_NUM_THREADS")) == 1
    images = [np.ascontiguousarray(np.roll(astronaut[:128, :160], 9 * i, axis=1))[None] for i in range(4)]
    want = [r.run({spec.input_name: x})[spec.output_name] for x in images]
    got: dict[int, np.ndarray] = {}

    def work(i: int) -> None:
        got[i] = r.run({spec.input_name: images[i]})[spec.output_name]

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(np.array_equal(got[i], want[i]) for i in range(4))
    assert r._requests.qsize() <= ortb.DEFAULT_CPU_CONCURRENCY  # one request per concurrent run, reused
    with pytest.raises(BackendError, match="Wrong inputs"):
        r.run({"nope": images[0]})


def test_probe_images_are_deterministic() -> None:
    a, b = ovb.probe_images(), ovb.probe_images()
    assert a.dtype == np.uint8 and a.shape == (2, 96, 128, 3) and np.array_equal(a, b)
    assert a[1].std() > 50 and len(np.unique(a[0][..., 0])) > 100  # texture and gradients, not flat


@needs_openvino
def test_kept_activations_are_bounded_process_wide(manifest: Manifest, cache: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Compiled models keep a run's activations; only the latest runners' up to KEEP_PIXELS stay, the rest released."""
    spec = manifest.styles[_sid(manifest)]
    runners = [ovb.OvRunner(manifest.path(spec.onnx)) for _ in range(3)]
    released: list[int] = []
    for i, r in enumerate(runners):
        real = r._compiled
        r._compiled = type("Spy", (), {"create_infer_request": real.create_infer_request,
                                       "release_memory": lambda self, i=i: released.append(i)})()
    monkeypatch.setattr(ovb, "_kept_runs", {})
    monkeypatch.setattr(ovb, "KEEP_PIXELS", 2 * 64 * 64)
    x = np.full((1, 64, 64, 3), 90, np.uint8)
    runners[0].run({spec.input_name: x})
    runners[1].run({spec.input_name: x})
    assert released == []  # two 64x64 runs fit
    runners[2].run({spec.input_name: x})
    assert released == [0]  # the oldest gives its memory back
    runners[0].run({spec.input_name: x})  # and allocates it again on its next run
    assert released == [0, 1]
    monkeypatch.setattr(ortb, "SHRINK_ABOVE_PIXELS", 64 * 64 - 1)  # a "huge" run releases its own at once
    runners[1].run({spec.input_name: x})
    assert released[-1] == 1 and id(runners[1]) not in ovb._kept_runs
    for r in runners:
        r.close()
    assert ovb._kept_runs == {}
