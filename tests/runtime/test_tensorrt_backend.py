"""TensorRT backend without TensorRT: lookup, sidecars, cache keys, corrupt plans, selection.

The GPU path (build -> run -> parity) is in the tests marked ``tensorrt``/``gpu``
at the end; they skip here and run on a CUDA machine with TensorRT.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from emostyle_rt.backends import tensorrt as trtb
from emostyle_rt.errors import BackendError, BundleError
from emostyle_rt.manifest import sha256_file

VERSION, CC = "10.13.3.9", "9.0"
PROFILE = trtb.Profile("image", (1, 64, 64, 3), (1, 720, 1280, 3), (4, 1080, 1920, 3))


def _write_engine(root: Path, key: str = "style.candy", version: str = VERSION, cc: str = CC,
                  payload: bytes = b"\x00plan-bytes" * 100, **over: object) -> tuple[Path, Path]:
    """A fake plan + a sidecar exactly as tensorrt_build.sidecar_dict writes it."""
    from emostyle_export.tensorrt_build import EngineRecord, atomic_write, sidecar_dict

    plan, side = trtb.plan_paths(root, key, version, cc)
    atomic_write(plan, payload, overwrite=True)
    rec = EngineRecord(key, str(plan.relative_to(root)), str(side.relative_to(root)), trtb.arch_key(version, cc),
                       version, "NVIDIA H200", cc, "styles/candy.fp16.onnx", "ab" * 32, sha256_file(plan),
                       plan.stat().st_size, (PROFILE,), 1.0)
    data = sidecar_dict(rec, 2048)
    data.update(over)
    atomic_write(side, json.dumps(data).encode(), overwrite=True)
    return plan, side


def test_arch_key_and_paths(tmp_path: Path) -> None:
    assert trtb.arch_key("10.13.3.9", "9.0") == "sm90-trt10.13.3.9"
    assert trtb.arch_key("11.0.0", (12, 0)) == "sm120-trt11.0.0"
    plan, side = trtb.plan_paths(tmp_path, "classifier", "10.13.3.9", "8.9")
    assert plan == tmp_path / "trt" / "sm89-trt10.13.3.9" / "classifier.plan"
    assert side.name == "classifier.plan.json"
    for bad in ("../x", "a/b", ".hidden", ""):
        with pytest.raises(BackendError):
            trtb.plan_paths(tmp_path, bad, VERSION, CC)
    with pytest.raises(BackendError):
        trtb.arch_key("10.13", "nine")


def test_profile_contains_and_roundtrip() -> None:
    assert PROFILE.contains((1, 1080, 1920, 3)) and PROFILE.contains((4, 64, 64, 3))
    assert not PROFILE.contains((5, 64, 64, 3)) and not PROFILE.contains((1, 2160, 3840, 3))
    assert not PROFILE.contains((1, 64, 64))
    assert trtb.Profile.from_json(json.loads(json.dumps(PROFILE.to_json()))) == PROFILE


def test_shape_range_defaults_and_validation() -> None:
    from emostyle_export.tensorrt_build import ShapeRange
    from emostyle_rt.errors import ExportError

    p = ShapeRange().style_profile("image")
    assert p.min == (1, 64, 64, 3) and p.opt == (1, 720, 1280, 3) and p.max == (4, 1080, 1920, 3)
    odd = ShapeRange(min_hw=(65, 63), opt_hw=(255, 301), max_hw=(1079, 1919)).style_profile("image")
    assert odd.min[1:3] == (68, 64) and odd.opt[1:3] == (256, 304) and odd.max[1:3] == (1080, 1920)
    with pytest.raises(ExportError):
        ShapeRange(min_batch=2, opt_batch=1).style_profile("image")
    with pytest.raises(ExportError):
        ShapeRange(min_hw=(512, 512), opt_hw=(256, 256)).style_profile("image")
    c = ShapeRange().classifier_profile("face", (128, 128, 3))
    assert c.min == (1, 128, 128, 3) and c.max[0] == 16


def test_find_engine_valid(tmp_path: Path) -> None:
    plan, _ = _write_engine(tmp_path)
    assert trtb.find_engine(tmp_path, "style.candy", VERSION, CC) == plan
    assert trtb.find_engine(tmp_path, "style.candy", VERSION, CC, source_sha256="ab" * 32) == plan


@pytest.mark.parametrize(
    ("version", "cc", "why"),
    [("10.14.1.48", CC, "built with TensorRT 10.13.3.9, running 10.14.1.48"), (VERSION, "8.9", None)],
)
def test_other_trt_version_or_gpu_falls_back(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                             version: str, cc: str, why: str | None) -> None:
    _write_engine(tmp_path)
    with caplog.at_level(logging.WARNING):
        assert trtb.find_engine(tmp_path, "style.candy", version, cc) is None
    assert "falling back to onnxruntime" in caplog.text
    assert "sm90-trt10.13.3.9" in caplog.text  # says which engines exist
    # a sidecar copied into the wrong folder is caught by its content
    plan, side = trtb.plan_paths(tmp_path, "style.candy", version, cc)
    plan.parent.mkdir(parents=True)
    src_plan, src_side = trtb.plan_paths(tmp_path, "style.candy", VERSION, CC)
    plan.write_bytes(src_plan.read_bytes())
    side.write_text(src_side.read_text())
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert trtb.find_engine(tmp_path, "style.candy", version, cc) is None
    assert (why or "built for compute capability 9.0 (NVIDIA H200), this GPU is 8.9") in caplog.text


def test_truncated_and_corrupt_plans(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    plan, _ = _write_engine(tmp_path)
    data = plan.read_bytes()
    plan.write_bytes(data[:-7])
    with caplog.at_level(logging.WARNING):
        assert trtb.find_engine(tmp_path, "style.candy", VERSION, CC) is None
    assert "truncated" in caplog.text
    plan.write_bytes(data[:10] + b"X" + data[11:])  # same size, one byte flipped
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert trtb.find_engine(tmp_path, "style.candy", VERSION, CC) is None
    assert "corrupt" in caplog.text
    plan.unlink()
    assert trtb.find_engine(tmp_path, "style.candy", VERSION, CC) is None


def test_stale_engine_and_bad_sidecars(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    _plan, side = _write_engine(tmp_path)
    with caplog.at_level(logging.WARNING):
        assert trtb.find_engine(tmp_path, "style.candy", VERSION, CC, source_sha256="cd" * 32) is None
    assert "stale engine" in caplog.text
    side.write_text("{not json")
    with pytest.raises(BundleError, match="cannot be read"):
        trtb.read_sidecar(side)
    assert trtb.find_engine(tmp_path, "style.candy", VERSION, CC) is None
    _write_engine(tmp_path, precision="fp32", profiles=[])
    probs = trtb.sidecar_problems(trtb.read_sidecar(side), _plan, VERSION, CC)
    assert any("precision" in p for p in probs) and any("profiles" in p for p in probs)
    assert trtb.find_engine(tmp_path, "classifier", VERSION, CC) is None  # nothing built: silent None


def test_never_overwrites_user_files(tmp_path: Path) -> None:
    from emostyle_export.tensorrt_build import atomic_write
    from emostyle_rt.errors import ExportError

    f = tmp_path / "mine.plan"
    f.write_bytes(b"user")
    with pytest.raises(ExportError, match="not overwriting"):
        atomic_write(f, b"new", overwrite=False)
    assert f.read_bytes() == b"user" and not list(tmp_path.glob(".mine.plan.*"))


def test_timing_cache_lock_is_exclusive(tmp_path: Path) -> None:
    import fcntl

    from emostyle_export.tensorrt_build import locked

    cache = tmp_path / "trt" / "sm90-trt10" / "timing.cache"
    with locked(cache):
        with open(f"{cache}.lock", "a+") as f, pytest.raises(BlockingIOError):
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    with open(f"{cache}.lock", "a+") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)  # released


def test_trt_ep_options_point_inside_bundle(tmp_path: Path) -> None:
    opts = trtb.trt_ep_options(tmp_path, workspace_mb=1024, profile=PROFILE)
    assert opts["trt_engine_cache_path"] == opts["trt_timing_cache_path"] == str(tmp_path / "trt" / "ort-ep")
    assert (tmp_path / "trt" / "ort-ep").is_dir() and opts["trt_engine_cache_enable"]
    assert opts["trt_max_workspace_size"] == 1 << 30
    assert opts["trt_profile_max_shapes"] == "image:4x1080x1920x3"


def test_selection_without_tensorrt_returns_none(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No tensorrt module: runtime_identity() is None and the caller keeps onnxruntime."""
    _write_engine(tmp_path)
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import tensorrt -> ImportError
    assert trtb.runtime_identity() is None
    assert trtb.open_engine_runner(tmp_path, "style.candy") is None


def test_selection_with_identity_but_bad_plan_falls_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    """Identity monkeypatched; a plan TensorRT cannot deserialize -> warning + None (no GPU code runs)."""
    _write_engine(tmp_path)
    monkeypatch.setattr(trtb, "runtime_identity", lambda: (VERSION, CC, "NVIDIA H200"))

    def refuse(plan: Path) -> None:
        raise BackendError(f"TensorRT could not deserialize {plan}.")

    monkeypatch.setattr(trtb, "TensorRTRunner", refuse)
    with caplog.at_level(logging.WARNING):
        assert trtb.open_engine_runner(tmp_path, "style.candy") is None
    assert "could not deserialize" in caplog.text and "Falling back" in caplog.text


def test_find_runner_hook_without_tensorrt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The hook runner_for calls: None for auto, a BackendError saying what is missing when required."""
    from types import SimpleNamespace

    _write_engine(tmp_path)
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    m = SimpleNamespace(root=tmp_path, raw={"styles": {"candy": {"fp16": {"sha256": "ab" * 32}}}, "classifier": {}})
    assert trtb.model_key_for("candy") == "style.candy" and trtb.model_key_for("classifier") == "classifier"
    assert trtb.find_runner(m, "candy") is None
    with pytest.raises(BackendError, match="no tensorrt"):
        trtb.find_runner(m, "candy", required=True)


def test_import_stays_slim() -> None:
    code = ("import sys, emostyle_rt, emostyle_rt.backends.tensorrt; "
            "bad = [m for m in ('tensorrt', 'torch', 'onnx', 'tensorflow', 'cuda') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


# ---------------------------------------------------------------- GPU: build -> run -> parity

_HAVE_TRT = importlib.util.find_spec("tensorrt") is not None


@pytest.mark.gpu
@pytest.mark.tensorrt
@pytest.mark.skipif(not _HAVE_TRT, reason="needs the tensorrt package and an NVIDIA GPU")
def test_gpu_build_run_parity_vs_fp32_onnx(tmp_path: Path) -> None:
    """FP16 ONNX -> strongly typed engine -> TensorRTRunner; PSNR >= 40 dB vs the FP32 graph in onnxruntime."""
    import onnxruntime as ort

    from emostyle_export import fp16
    from emostyle_export.tensorrt_build import ShapeRange, build_engines

    if trtb.runtime_identity() is None:
        pytest.skip("tensorrt imports but no CUDA device / cuda-python")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "export"))
    from test_fp16 import _export, _Style  # the same graph the CPU FP16 tests use

    (tmp_path / "styles").mkdir()
    src = _export(_Style(), tmp_path / "styles" / "s.onnx", "image", "styled", (1, 64, 64, 3), True)
    fp16.make_fp16(src, tmp_path / "styles" / "s.fp16.onnx", "style")
    prof = ShapeRange(max_batch=2, opt_hw=(256, 256), max_hw=(512, 512)).style_profile("image")
    (rec,) = build_engines(tmp_path, {"style.s": ("styles/s.fp16.onnx", [prof])}, workspace_mb=2048, progress=False)
    plan = trtb.find_engine(tmp_path, "style.s", rec.tensorrt_version, rec.compute_capability,
                            source_sha256=sha256_file(tmp_path / "styles" / "s.fp16.onnx"))
    assert plan is not None
    runner = trtb.open_engine_runner(tmp_path, "style.s")
    assert runner is not None and runner.input_names == ["image"] and runner.output_names == ["styled"]
    assert [t.name for t in runner.inputs] == ["image"] and runner.inputs[0].dtype == "uint8"
    ref = ort.InferenceSession(str(src), providers=["CPUExecutionProvider"])
    try:
        for name, img in fp16.default_style_images():
            got = runner.run({"image": img})["styled"]
            want = ref.run(None, {"image": img})[0]
            assert got.shape == want.shape and got.dtype == np.uint8
            assert fp16.psnr_db(want, got) >= 40.0, name
        with pytest.raises(trtb.OutsideProfileError):
            runner.run({"image": np.zeros((1, 1024, 1024, 3), np.uint8)})
        # a flipped byte is caught by the sidecar before TensorRT sees the plan
        data = bytearray(plan.read_bytes())
        data[len(data) // 2] ^= 0xFF
        plan.write_bytes(bytes(data))
        assert trtb.open_engine_runner(tmp_path, "style.s") is None
    finally:
        runner.close()


def test_runner_for_gives_the_tensorrt_ep_its_caches_in_the_bundle(demo_bundle, tmp_path, monkeypatch) -> None:
    """With the TensorRT EP chosen, the session gets engine/timing cache paths inside the bundle."""
    import shutil

    from emostyle_rt.backends import onnxruntime as ort_backend
    from emostyle_rt.backends import runner_for
    from emostyle_rt.manifest import load_manifest

    bundle = tmp_path / "b"
    shutil.copytree(demo_bundle, bundle)
    seen = {}

    class FakeRunner:
        def __init__(self, path, *, provider, low_memory, provider_options):
            seen.update(provider_options or {})

    monkeypatch.setattr(ort_backend, "choose_providers", lambda provider=None: [
        "TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(ort_backend, "OrtRunner", FakeRunner)
    runner_for(load_manifest(bundle), "classifier", backend="onnxruntime")
    opts = seen["TensorrtExecutionProvider"]
    assert opts["trt_engine_cache_enable"] and opts["trt_engine_cache_path"] == str(bundle / "trt" / "ort-ep")
    assert (bundle / "trt" / "ort-ep").is_dir()
    monkeypatch.setattr(ort_backend, "choose_providers", lambda provider=None: ["CPUExecutionProvider"])
    seen.clear()
    runner_for(load_manifest(bundle), "classifier", backend="onnxruntime")
    assert seen == {}

