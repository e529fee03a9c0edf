"""TensorRT backend without TensorRT: lookup, sidecars, corrupt plans, selection, and the runner itself.

The runner runs here against fake ``tensorrt`` and ``cuda.bindings`` modules
(:class:`FakeCudart` keeps "device" memory in host buffers, :class:`FakeEngine`
runs a +1 kernel): batch splitting by profile, profile choice, typed errors, the
output-size check, recovery after a failed run, close(). The GPU path (build ->
run -> parity) is in the tests marked ``tensorrt``/``gpu``; they skip here and run
on a CUDA machine with TensorRT (tests/runtime/test_gpu.py reuses these fakes
with real cuda-bindings).
"""

from __future__ import annotations

import ctypes
import gc
import importlib.util
import json
import logging
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

import numpy as np
import pytest

from emostyle_rt.bundle import compiled as eng
from emostyle_rt.backends import tensorrt as trtb
from emostyle_rt.errors import BackendError, BundleError, InvalidImageError
from emostyle_rt.manifest import sha256_file

VERSION, CC = "10.13.3.9", "9.0"
PROFILE = eng.Profile("image", (1, 64, 64, 3), (1, 720, 1280, 3), (4, 1080, 1920, 3))


def _write_engine(root: Path, key: str = "style.candy", version: str = VERSION, cc: str = CC,
                  payload: bytes = b"\x00plan-bytes" * 100, **over: object) -> tuple[Path, Path]:
    """A fake plan + a sidecar exactly as tensorrt_build.write_sidecar writes it."""
    from emostyle_export.tensorrt_build import atomic_write, write_sidecar

    plan, side = eng.plan_paths(root, key, version, cc)
    atomic_write(plan, payload, overwrite=True)
    record = eng.TrtSidecar(key, plan.name, sha256_file(plan), plan.stat().st_size, version, "NVIDIA H200", cc,
                            "styles/candy.fp16.onnx", "ab" * 32, (PROFILE,), workspace_mb=2048, build_seconds=1.0)
    write_sidecar(side, record, overwrite=True)
    if over:
        data = json.loads(side.read_text())
        data.update(over)
        atomic_write(side, json.dumps(data).encode(), overwrite=True)
    return plan, side


def test_arch_key_and_paths(tmp_path: Path) -> None:
    assert eng.arch_key("10.13.3.9", "9.0") == "sm90-trt10.13.3.9"
    assert eng.arch_key("11.0.0", (12, 0)) == "sm120-trt11.0.0"
    plan, side = eng.plan_paths(tmp_path, "classifier", "10.13.3.9", "8.9")
    assert plan == tmp_path / "trt" / "sm89-trt10.13.3.9" / "classifier.plan"
    assert side.name == "classifier.plan.json"
    for bad in ("../x", "a/b", ".hidden", ""):
        with pytest.raises(BackendError):
            eng.plan_paths(tmp_path, bad, VERSION, CC)
    with pytest.raises(BackendError):
        eng.arch_key("10.13", "nine")


def test_profile_contains_and_roundtrip() -> None:
    assert PROFILE.contains((1, 1080, 1920, 3)) and PROFILE.contains((4, 64, 64, 3))
    assert not PROFILE.contains((5, 64, 64, 3)) and not PROFILE.contains((1, 2160, 3840, 3))
    assert not PROFILE.contains((1, 64, 64))
    assert eng.Profile.from_json(json.loads(json.dumps(PROFILE.to_json()))) == PROFILE


def test_shape_range_defaults_and_validation() -> None:
    from emostyle_export.tensorrt_build import ShapeRange
    from emostyle_export.errors import ExportError

    p = ShapeRange().style_profile("image")
    assert p.min == (1, 64, 64, 3) and p.opt == (1, 720, 1280, 3) and p.max == (4, 1920, 1920, 3)
    batched, single = ShapeRange().style_profiles("image")
    assert batched.max == (4, 1024, 1024, 3) and batched.opt == (1, 720, 1024, 3)
    assert single.min == (1, 64, 64, 3) and single.max == (1, 1920, 1920, 3)
    for shape in [(1, 1080, 1920, 3), (1, 1920, 1080, 3), (1, 1920, 1920, 3), (1, 64, 64, 3)]:  # both orientations
        assert batched.contains(shape) or single.contains(shape), shape
    # activation memory follows the largest profile: 4.2 Mpx instead of 4 x 1080 x 1920 = 8.3 Mpx
    assert max(np.prod(q.max[:3]) for q in (batched, single)) == 4 * 1024 * 1024
    assert ShapeRange(batch_max_hw=None).style_profiles("image") == [p]
    assert len(ShapeRange(max_batch=1, opt_batch=1).style_profiles("image")) == 1
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
    assert eng.find_engine(tmp_path, "style.candy", VERSION, CC) == plan
    assert eng.find_engine(tmp_path, "style.candy", VERSION, CC, source_sha256="ab" * 32) == plan


@pytest.mark.parametrize(
    ("version", "cc", "why"),
    [("10.14.1.48", CC, "built with TensorRT 10.13.3.9, running 10.14.1.48"), (VERSION, "8.9", None)],
)
def test_other_trt_version_or_gpu_falls_back(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                             version: str, cc: str, why: str | None) -> None:
    _write_engine(tmp_path)
    with caplog.at_level(logging.WARNING):
        assert eng.find_engine(tmp_path, "style.candy", version, cc) is None
    assert "falling back to onnxruntime" in caplog.text
    assert "sm90-trt10.13.3.9" in caplog.text  # says which engines exist
    # a sidecar copied into the wrong folder is caught by its content
    plan, side = eng.plan_paths(tmp_path, "style.candy", version, cc)
    plan.parent.mkdir(parents=True)
    src_plan, src_side = eng.plan_paths(tmp_path, "style.candy", VERSION, CC)
    plan.write_bytes(src_plan.read_bytes())
    side.write_text(src_side.read_text())
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert eng.find_engine(tmp_path, "style.candy", version, cc) is None
    assert (why or "built for compute capability 9.0 (NVIDIA H200), this GPU is 8.9") in caplog.text


def test_truncated_and_corrupt_plans(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    plan, _ = _write_engine(tmp_path)
    data = plan.read_bytes()
    plan.write_bytes(data[:-7])
    with caplog.at_level(logging.WARNING):
        assert eng.find_engine(tmp_path, "style.candy", VERSION, CC) is None
    assert "truncated" in caplog.text
    plan.write_bytes(data[:10] + b"X" + data[11:])  # same size, one byte flipped
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert eng.find_engine(tmp_path, "style.candy", VERSION, CC) is None
    assert "corrupt" in caplog.text
    plan.unlink()
    assert eng.find_engine(tmp_path, "style.candy", VERSION, CC) is None


def test_stale_engine_and_bad_sidecars(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    _plan, side = _write_engine(tmp_path)
    with caplog.at_level(logging.WARNING):
        assert eng.find_engine(tmp_path, "style.candy", VERSION, CC, source_sha256="cd" * 32) is None
    assert "stale engine" in caplog.text
    side.write_text("{not json")
    with pytest.raises(BundleError, match="cannot be read"):
        eng.read_sidecar(side)
    assert eng.find_engine(tmp_path, "style.candy", VERSION, CC) is None
    _write_engine(tmp_path, precision="fp32", profiles=[])
    probs = eng.sidecar_problems(eng.read_sidecar(side), _plan, VERSION, CC)
    assert any("precision" in p for p in probs) and any("profiles" in p for p in probs)
    assert eng.find_engine(tmp_path, "classifier", VERSION, CC) is None  # nothing built: silent None


def test_never_overwrites_user_files(tmp_path: Path) -> None:
    from emostyle_export.tensorrt_build import atomic_write
    from emostyle_export.errors import ExportError

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
    from emostyle_rt.manifest import Fp16Graph

    _write_engine(tmp_path)
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    m = SimpleNamespace(root=tmp_path, styles={"candy": SimpleNamespace(fp16=Fp16Graph("s.fp16.onnx", "ab" * 32, "x"))},
                        classifier=SimpleNamespace(fp16=None))
    assert eng.model_key_for("candy") == "style.candy" and eng.model_key_for("classifier") == "classifier"
    assert trtb.find_runner(m, "candy") is None
    with pytest.raises(BackendError, match="no tensorrt"):
        trtb.find_runner(m, "candy", required=True)
    assert trtb.find_runner(m, "classifier") is None  # no FP16 graph: no engine can match


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
    plan = eng.find_engine(tmp_path, "style.s", rec.tensorrt_version, rec.compute_capability,
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


# ---------------------------------------------------------------- the runner against fake tensorrt / cuda.bindings


class FakeCudart:
    """cuda.bindings.runtime as the runner uses it; "device" memory is host memory, calls are counted."""

    class cudaError_t:  # noqa: N801 - the real enum's name
        cudaSuccess = 0
        cudaErrorMemoryAllocation = 2

    class cudaMemcpyKind:  # noqa: N801
        cudaMemcpyHostToDevice, cudaMemcpyDeviceToHost, cudaMemcpyDeviceToDevice = 1, 2, 3

    def __init__(self) -> None:
        self.buffers: dict[int, Any] = {}
        self.allocs = self.frees = self.syncs = self.streams = 0
        self.fail_memcpy = 0  # fail this many of the next copies

    def _alloc(self, n: int) -> tuple[int, int]:
        buf = ctypes.create_string_buffer(n)
        self.buffers[ctypes.addressof(buf)] = buf
        self.allocs += 1
        return 0, ctypes.addressof(buf)

    cudaMalloc = cudaMallocHost = _alloc

    def _free(self, ptr: int) -> tuple[int]:
        del self.buffers[ptr]
        self.frees += 1
        return (0,)

    cudaFree = cudaFreeHost = _free

    def cudaStreamCreate(self) -> tuple[int, int]:
        self.streams += 1
        return 0, 7

    def cudaStreamDestroy(self, stream: int) -> tuple[int]:
        self.streams -= 1
        return (0,)

    def cudaStreamSynchronize(self, stream: int) -> tuple[int]:
        self.syncs += 1
        return (0,)

    def cudaMemcpyAsync(self, dst: int, src: int, n: int, kind: int, stream: int) -> tuple[int]:
        if self.fail_memcpy:
            self.fail_memcpy -= 1
            return (self.cudaError_t.cudaErrorMemoryAllocation,)
        ctypes.memmove(dst, src, n)
        return (0,)

    def cudaGetErrorString(self, err: int) -> tuple[int, bytes]:
        return 0, b"out of memory"


def plus_one(cudart: Any, src: int, dst: int, nbytes: int, stream: Any) -> None:
    """The fake engine's kernel on host "device" memory: out = in + 1 (uint8, wrapping)."""
    data = (np.frombuffer(ctypes.string_at(src, nbytes), np.uint8) + 1).astype(np.uint8)
    ctypes.memmove(dst, data.ctypes.data, nbytes)


#: A style engine's default profiles (tensorrt_build.ShapeRange().style_profiles).
STYLE_PROFILES = [((1, 64, 64, 3), (1, 720, 1024, 3), (4, 1024, 1024, 3)),
                  ((1, 64, 64, 3), (1, 720, 1280, 3), (1, 1920, 1920, 3))]


class FakeEngine:
    """An ICudaEngine with one uint8 NHWC input "image" and output "styled" of the same shape."""

    def __init__(self, cudart: Any, kernel: Callable[..., None] = plus_one, profiles: list = STYLE_PROFILES,
                 out_dtype: str = "uint8") -> None:
        self.cudart, self.kernel, self._profiles, self.out_dtype = cudart, kernel, profiles, out_dtype
        self.executes = self.switches = 0
        self.fail_execute = False
        self.lie_after_execute: tuple[int, ...] | None = None  # output shape reported after execution
        self.num_io_tensors, self.num_optimization_profiles = 2, len(profiles)

    def get_tensor_name(self, i: int) -> str:
        return ("image", "styled")[i]

    def get_tensor_mode(self, name: str) -> int:
        return FakeTrt.TensorIOMode.INPUT if name == "image" else FakeTrt.TensorIOMode.OUTPUT

    def get_tensor_dtype(self, name: str) -> str:
        return "uint8" if name == "image" else self.out_dtype

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        return (-1, -1, -1, 3)

    def get_tensor_profile_shape(self, name: str, k: int) -> list[tuple[int, ...]]:
        return [tuple(s) for s in self._profiles[k]]

    def create_execution_context(self) -> "FakeContext":
        return FakeContext(self)


class FakeContext:
    def __init__(self, engine: FakeEngine) -> None:
        self.engine, self.profile, self.executed = engine, 0, False
        self.shape: tuple[int, ...] = ()
        self.addr: dict[str, int] = {}

    def set_optimization_profile_async(self, k: int, stream: int) -> bool:
        self.engine.switches += 1
        self.profile = k
        return True

    def set_input_shape(self, name: str, shape: tuple[int, ...]) -> bool:
        lo, _, hi = self.engine._profiles[self.profile]
        self.shape, self.executed = tuple(shape), False
        return all(a <= s <= b for a, s, b in zip(lo, shape, hi))

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        if name == "styled" and self.executed and self.engine.lie_after_execute:
            return self.engine.lie_after_execute
        return self.shape

    def set_tensor_address(self, name: str, ptr: int) -> bool:
        self.addr[name] = ptr
        return True

    def execute_async_v3(self, stream: int) -> bool:
        self.engine.executes += 1
        if self.engine.fail_execute:
            return False
        self.engine.kernel(self.engine.cudart, self.addr["image"], self.addr["styled"], int(np.prod(self.shape)), stream)
        self.executed = True
        return True


class FakeTrt:
    """The parts of the ``tensorrt`` module the runner and the builder touch."""

    __version__ = "10.13.3.9"
    TensorIOMode = SimpleNamespace(INPUT=0, OUTPUT=1)
    runtime_fails = False
    engine: Any = None

    class Logger:
        WARNING = 2

        def __init__(self, level: int) -> None:
            pass

    @staticmethod
    def nptype(dtype: str) -> type:
        if dtype in ("bf16", "fp8"):
            raise TypeError("Could not resolve TensorRT datatype to an equivalent numpy datatype.")
        return np.dtype(dtype).type

    class Runtime:
        def __init__(self, logger: Any) -> None:
            if FakeTrt.runtime_fails:
                raise TypeError("pybind11::init(): factory function returned nullptr")

        def deserialize_cuda_engine(self, data: bytes) -> Any:
            return FakeTrt.engine


@pytest.fixture()
def fake_gpu(monkeypatch: pytest.MonkeyPatch) -> FakeCudart:
    """Fake cuda.bindings.runtime and tensorrt for the runner (restored after the test)."""
    cudart = FakeCudart()
    monkeypatch.setattr(trtb, "_cudart", lambda: cudart)
    monkeypatch.setitem(sys.modules, "tensorrt", FakeTrt)
    monkeypatch.setattr(FakeTrt, "runtime_fails", False)
    monkeypatch.setattr(FakeTrt, "engine", FakeEngine(cudart))
    return cudart


def _runner(cudart: FakeCudart, **kw: Any) -> tuple[trtb.TensorRTRunner, FakeEngine]:
    engine = FakeEngine(cudart, **kw)
    return trtb.TensorRTRunner.from_engine(FakeTrt, engine, "tensorrt:fake"), engine


def _images(*shape: int) -> np.ndarray:
    return np.random.default_rng(sum(shape)).integers(0, 256, shape, dtype=np.uint8)


def test_runner_splits_batches_by_the_profile_and_picks_profiles(fake_gpu: FakeCudart) -> None:
    runner, engine = _runner(fake_gpu)
    assert [t.name for t in runner.inputs] == ["image"] and runner.outputs[0].shape == (None, None, None, 3)
    x = _images(10, 64, 96, 3)  # Stylizer stacks 10+ small images; the profile takes 4 per run
    np.testing.assert_array_equal(runner.run({"image": x})["styled"], x + np.uint8(1))
    assert engine.executes == 3 and engine.switches == 0  # 4 + 4 + 2, profile 0
    for shape, runs in [((1, 1080, 1920, 3), 1), ((1, 1920, 1080, 3), 1), ((2, 1200, 1200, 3), 2)]:
        engine.executes = 0
        x = _images(*shape)
        np.testing.assert_array_equal(runner.run({"image": x})["styled"], x + np.uint8(1))
        assert engine.executes == runs, shape  # too large for profile 0: profile 1, one image per run
    assert runner.choose_profile({"image": (16, 256, 256, 3)}) == (0, 4)
    assert runner.choose_profile({"image": (1, 1920, 1080, 3)}) == (1, 1)
    runner.close()


def test_runner_refuses_shapes_outside_every_profile_before_any_gpu_work(fake_gpu: FakeCudart) -> None:
    runner, engine = _runner(fake_gpu)
    for shape in [(1, 8, 8, 3), (1, 1920, 2000, 3), (1, 64, 64, 4), (64, 64, 3)]:
        with pytest.raises(trtb.OutsideProfileError, match=r"outside every optimization profile.*Note: expected"):
            runner.run({"image": np.zeros(shape, np.uint8)})
    assert engine.executes == 0 and fake_gpu.allocs == 0
    with pytest.raises(InvalidImageError, match="dtype"):
        runner.run({"image": np.zeros((1, 64, 64, 3), np.float32)})


def test_runner_allocates_once_and_close_frees_everything(fake_gpu: FakeCudart) -> None:
    runner, _ = _runner(fake_gpu)
    x = _images(1, 256, 320, 3)
    runner.run({"image": x})
    allocs = fake_gpu.allocs
    for _ in range(10):
        runner.run({"image": x})
        runner.run({"image": x[:, :128]})  # smaller: reuses the buffers
    assert fake_gpu.allocs == allocs == 4  # device + pinned host, input and output
    runner.close()
    runner.close()  # idempotent
    assert fake_gpu.frees == fake_gpu.allocs and fake_gpu.streams == 0 and not fake_gpu.buffers
    with pytest.raises(BackendError, match="closed"):
        runner.run({"image": x})
    # never closed: the finalizer frees the buffers when the runner is collected
    other, _ = _runner(fake_gpu)
    other.run({"image": x})
    del other
    gc.collect()
    assert fake_gpu.frees == fake_gpu.allocs and fake_gpu.streams == 0


def test_output_larger_than_its_buffer_is_refused_before_the_copy(fake_gpu: FakeCudart) -> None:
    runner, engine = _runner(fake_gpu)
    x = _images(1, 64, 64, 3)
    engine.lie_after_execute = (1, 4096, 4096, 3)
    syncs = fake_gpu.syncs
    with pytest.raises(BackendError, match="does not fit its buffer"):
        runner.run({"image": x})
    assert fake_gpu.syncs > syncs  # the stream was synchronized before raising
    engine.lie_after_execute = None
    np.testing.assert_array_equal(runner.run({"image": x})["styled"], x + np.uint8(1))  # still usable


def test_runner_stays_usable_after_a_failure_mid_run(fake_gpu: FakeCudart) -> None:
    runner, engine = _runner(fake_gpu)
    x = _images(2, 64, 64, 3)
    engine.fail_execute = True
    with pytest.raises(BackendError, match="execution of tensorrt:fake failed"):
        runner.run({"image": x})
    engine.fail_execute = False
    fake_gpu.fail_memcpy = 1  # the H2D copy fails
    with pytest.raises(BackendError, match="CUDA call failed: out of memory"):
        runner.run({"image": x})
    syncs = fake_gpu.syncs
    np.testing.assert_array_equal(runner.run({"image": x})["styled"], x + np.uint8(1))
    assert fake_gpu.syncs == syncs + 1  # one synchronize per run: nothing left queued from the failures


def test_typed_errors_for_runtime_nullptr_and_types_numpy_cannot_hold(
        fake_gpu: FakeCudart, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    plan = tmp_path / "sm90-trt10" / "style.x.plan"
    plan.parent.mkdir()
    plan.write_bytes(b"plan")
    FakeTrt.runtime_fails = True
    with pytest.raises(BackendError, match="could not create a runtime.*nullptr"):
        trtb.TensorRTRunner(plan)
    FakeTrt.runtime_fails = False
    FakeTrt.engine = FakeEngine(fake_gpu, out_dtype="bf16")
    with pytest.raises(BackendError, match="'styled' has type bf16, which numpy cannot hold"):
        trtb.TensorRTRunner(plan)
    FakeTrt.engine = None  # deserialize_cuda_engine returns None for a damaged plan
    with pytest.raises(BackendError, match="could not deserialize"):
        trtb.TensorRTRunner(plan)
    # at run time (runner_for): a warning and onnxruntime, or with backend="tensorrt" the reason
    monkeypatch.setattr(trtb, "runtime_identity", lambda: (VERSION, CC, "NVIDIA H200"))
    monkeypatch.setattr(trtb, "find_engine", lambda *a, **k: plan)
    FakeTrt.runtime_fails = True
    with caplog.at_level(logging.WARNING):
        assert trtb.open_engine_runner(tmp_path, "style.x") is None
    assert "nullptr" in caplog.text and "Falling back to onnxruntime" in caplog.text
    with pytest.raises(BackendError, match="cannot be opened.*nullptr"):
        trtb.open_engine_runner(tmp_path, "style.x", required=True)


def test_stylizer_auto_falls_back_to_onnxruntime_outside_the_profile(
        fake_gpu: FakeCudart, demo_bundle: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
        astronaut: np.ndarray) -> None:
    """backend="auto" with an engine: in-profile images run on it, a 5 px or too-wide one in onnxruntime, one warning each."""
    from emostyle_rt import Stylizer

    engines: list[trtb.TensorRTRunner] = []

    def find_runner(manifest: Any, key: str, *, required: bool = False) -> Any:
        if key == "classifier":
            return None
        engines.append(trtb.TensorRTRunner.from_engine(FakeTrt, FakeEngine(fake_gpu), f"tensorrt:fake-{key}"))
        return engines[-1]

    monkeypatch.setattr(trtb, "find_runner", find_runner)
    with Stylizer(demo_bundle) as st, caplog.at_level(logging.WARNING):
        small = astronaut[:64, :72]
        res = st.stylize(small, emotion="happy")
        np.testing.assert_array_equal(res.image, small + np.uint8(1))  # the fake engine ran
        tiny = astronaut[:5, :7]
        for _ in range(3):
            assert st.stylize(tiny, emotion="happy").image.shape == tiny.shape  # onnxruntime: no error
        wide = np.ascontiguousarray(np.tile(astronaut[:64], (1, 4, 1))[:, :2000])
        assert st.stylize(wide, emotion="happy").image.shape == wide.shape
        assert st._style_runner(st.manifest.emotions["happy"]).name == "tensorrt:fake-" + st.manifest.emotions["happy"]
    warned = [r.getMessage() for r in caplog.records if "outside the TensorRT engine's profiles" in r.getMessage()]
    assert len(warned) == 2 and "8x8x3" in warned[0] and "64x2000x3" in warned[1]  # one per shape (5x7 pads to 8x8)
    assert fake_gpu.frees == fake_gpu.allocs and fake_gpu.streams == 0  # closed by __exit__


class _FakeBuilderTrt:
    """A tensorrt module whose Builder fails (``fail="builder"``) or whose profile refuses its shapes."""

    Logger = FakeTrt.Logger
    NetworkDefinitionCreationFlag = SimpleNamespace(STRONGLY_TYPED=0)

    def __init__(self, fail: str) -> None:
        self.fail = fail
        trt = self

        class Profile:
            def set_shape(self, *a: Any) -> None:
                raise RuntimeError("Error Code 3: API Usage Error (minimum dimensions exceed optimum)")

        class Builder:
            def __init__(self, logger: Any) -> None:
                if trt.fail == "builder":
                    raise TypeError("pybind11::init(): factory function returned nullptr")

            def create_network(self, flags: int) -> object:
                return object()

            def create_builder_config(self) -> object:
                return SimpleNamespace()

            def create_optimization_profile(self) -> Profile:
                return Profile()

        self.Builder = Builder
        self.OnnxParser = lambda network, logger: SimpleNamespace(parse_from_file=lambda path: True)


@pytest.mark.parametrize(("fail", "match"), [("builder", "could not create a builder.*nullptr"),
                                             ("profile", "refused the optimization profile.*minimum dimensions")])
def test_build_errors_are_typed(fail: str, match: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from emostyle_export.tensorrt_build import build_engine
    from emostyle_export.errors import ExportError

    monkeypatch.setitem(sys.modules, "tensorrt", _FakeBuilderTrt(fail))
    with pytest.raises(ExportError, match=match):
        build_engine(tmp_path / "s.fp16.onnx", [PROFILE], timing_cache=tmp_path / "timing.cache", progress=False)
