"""Backend selection and the onnxruntime runner: precision, memory strategy, transfers, CUDA graphs,
TensorRT EP gating and caches, the TensorRT fallback wrapper, and the Stylizer closing its runners.

Everything runs on CPU: GPU sessions, libnvinfer and onnxruntime's provider
libraries are faked where a decision depends on them.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import os
import stat
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

import emostyle_rt.stylizer as stylizer_mod
from emostyle_rt import Stylizer
from emostyle_rt.backends import (
    FallbackRunner,
    OutsideProfileError,
    cache_dir,
    choose_precision,
    make_runner,
    ort_runner_for,
    runner_for,
)
from emostyle_rt.backends import ort as ortb
from emostyle_rt.backends.ort import import_onnxruntime
from emostyle_rt.errors import BackendError
from emostyle_rt.manifest import Fp16Graph, Manifest, load_manifest

CUDA, TRT, CPU = "CUDAExecutionProvider", "TensorrtExecutionProvider", "CPUExecutionProvider"


def test_missing_onnxruntime_is_a_typed_error_naming_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # what a base install without [cpu]/[gpu] has
    with pytest.raises(BackendError, match=r"emostyle-rt\[cpu\]"):
        import_onnxruntime()


@pytest.fixture(scope="module")
def manifest(demo_bundle: Path) -> Manifest:
    return load_manifest(demo_bundle)


def _with_fp16(m: Manifest) -> Manifest:
    """The manifest as if ``emostyle-export --fp16`` had run (files not needed by the fakes)."""
    styles = {sid: dataclasses.replace(s, fp16=Fp16Graph(f"styles/{sid}.fp16.onnx", "cd" * 32, s.sha256))
              for sid, s in m.styles.items()}
    clf = dataclasses.replace(m.classifier, fp16=Fp16Graph("classifier.fp16.onnx", "ef" * 32, m.classifier.sha256))
    return dataclasses.replace(m, styles=styles, classifier=clf)


def test_precision_choice(manifest: Manifest) -> None:
    sid = next(iter(manifest.styles))
    plain, with16 = manifest.styles[sid], _with_fp16(manifest).styles[sid]
    assert choose_precision("auto", CUDA, with16) == "fp16"
    assert choose_precision("auto", TRT, with16) == "fp16"
    assert choose_precision("auto", CPU, with16) == "fp32"  # FP16 on CPU is slower than FP32
    assert choose_precision("auto", CUDA, plain) == "fp32"  # no FP16 graph
    assert choose_precision("fp32", CUDA, with16) == "fp32"
    assert choose_precision("fp16", CPU, with16) == "fp16"  # asked for: honoured
    with pytest.raises(BackendError, match="no FP16 graph.*--fp16"):
        choose_precision("fp16", CUDA, plain)
    with pytest.raises(BackendError, match="Unknown precision"):
        choose_precision("half", CUDA, with16)


class _Recorder:
    """Stands in for OrtRunner: records what it was asked to load."""

    calls: list[dict[str, Any]] = []

    def __init__(self, path: Any, **kw: Any) -> None:
        _Recorder.calls.append({"path": Path(path), **kw})
        self.name, self.inputs, self.outputs = "fake", (), ()

    def close(self) -> None:
        pass


@pytest.fixture()
def recorder(monkeypatch: pytest.MonkeyPatch) -> type[_Recorder]:
    _Recorder.calls = []
    monkeypatch.setattr(ortb, "OrtRunner", _Recorder)
    return _Recorder


@pytest.mark.parametrize(("providers", "precision", "want"), [
    ([CUDA, CPU], "auto", "fp16"), ([CUDA, CPU], "fp32", "fp32"), ([CPU], "auto", "fp32")])
def test_runner_for_loads_the_fp16_graph_on_the_gpu(manifest: Manifest, recorder: type[_Recorder],
                                                     monkeypatch: pytest.MonkeyPatch, providers: list[str],
                                                     precision: str, want: str) -> None:
    monkeypatch.setattr(ortb, "choose_providers", lambda provider=None: providers)
    m = _with_fp16(manifest)
    sid = next(iter(m.styles))
    runner_for(m, sid, backend="onnxruntime", precision=precision)
    (call,) = recorder.calls
    assert call["precision"] == want
    assert call["path"] == m.path(m.styles[sid].fp16.onnx if want == "fp16" else m.styles[sid].onnx)
    # auto-FP16 keeps the FP32 graph for a CPU fallback of the session
    assert call["cpu_fallback_path"] == (m.path(m.styles[sid].onnx) if want == "fp16" else None)


def test_cpu_runner_name_memory_and_plain_run(demo_bundle: Path, manifest: Manifest,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    trims = []
    monkeypatch.setattr(ortb, "release_free_memory", lambda: trims.append(1))
    r = runner_for(manifest, next(iter(manifest.styles)), backend="onnxruntime")
    assert r.name == "onnxruntime:CPUExecutionProvider" and r.precision == "fp32"
    assert r._session.get_session_options().get_session_config_entry("session.use_env_allocators") == "1"
    x = np.zeros((1, 16, 16, 3), np.uint8)
    assert r.run({"image": x})["styled"].shape == x.shape
    assert r._run_options is None and not trims  # plain session.run: no per-run shrinkage, no malloc_trim
    # a very large run shrinks the shared arena afterwards
    seen = []
    real_run = r._session.run
    r._session = SimpleNamespace(run=lambda names, feed, ro: (seen.append(ro), real_run(names, feed, ro))[1],
                                 get_session_options=r._session.get_session_options)
    monkeypatch.setattr(ortb, "SHRINK_ABOVE_PIXELS", 16 * 16)
    r.run({"image": x})
    r.run({"image": np.zeros((1, 20, 20, 3), np.uint8)})
    assert seen[0] is None and seen[1] is r._shrink_big
    r.close()
    with pytest.raises(BackendError, match="closed"):
        r.run({"image": x})
    labelled = make_runner(demo_bundle / manifest.classifier.onnx, provider="cpu", precision="fp16")
    assert labelled.name == "onnxruntime:CPUExecutionProvider:fp16"


def _spinning(runner: Any) -> tuple[str | None, str | None]:
    """The (intra-op, inter-op) allow_spinning entries of an onnxruntime runner's session (None: not set)."""
    opts = runner._session.get_session_options()

    def entry(key: str) -> str | None:
        try:
            return opts.get_session_config_entry(key)
        except RuntimeError:  # "does not have configuration": onnxruntime's default (spinning)
            return None
    return entry("session.intra_op.allow_spinning"), entry("session.inter_op.allow_spinning")


def test_small_graphs_do_not_spin_style_graphs_do(mtcnn_bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """MTCNN's and the classifier's sessions stop their threads spinning between runs (they took the cores from the
    style run after them); a style graph's session keeps onnxruntime's default; results are the same either way."""
    from skimage import data

    photo = np.ascontiguousarray(data.astronaut()[:256, :256])
    with Stylizer(mtcnn_bundle, backend="onnxruntime") as st:
        result = st.stylize(photo)
        assert st.classify(photo).face is not None  # the detector ran (and found the astronaut's face)
        small = [st._classifier_runner(), *st._detector._runners.values()]
        assert len(small) == 4 and all(_spinning(r) == ("0", "0") for r in small)
        assert all(_spinning(r) == (None, None) for r in st._styles.values())
    monkeypatch.setattr(ortb, "SMALL_GRAPH_SPINNING", True)  # as before: onnxruntime's default everywhere
    with Stylizer(mtcnn_bundle, backend="onnxruntime") as st:
        before = st.stylize(photo)
        assert all(_spinning(r) == (None, None) for r in [st._classifier_runner(), *st._detector._runners.values()])
    assert before.emotion == result.emotion and before.face == result.face
    assert np.array_equal(before.image, result.image)


def test_cpu_memory_strategies(manifest: Manifest, monkeypatch: pytest.MonkeyPatch) -> None:
    trims = []
    monkeypatch.setattr(ortb, "release_free_memory", lambda: trims.append(1))
    key = next(iter(manifest.styles))
    monkeypatch.setenv("EMOSTYLE_CPU_MEMORY", "shrink")
    r = runner_for(manifest, key, backend="onnxruntime")
    r.run({"image": np.zeros((1, 8, 8, 3), np.uint8)})
    assert r._run_options is not None and trims == [1]  # 0.1.0's behaviour, kept for measurement
    monkeypatch.setenv("EMOSTYLE_CPU_MEMORY", "session")
    r = runner_for(manifest, key, backend="onnxruntime")
    with pytest.raises(RuntimeError, match="does not have configuration"):  # onnxruntime's own arena per session
        r._session.get_session_options().get_session_config_entry("session.use_env_allocators")
    monkeypatch.setenv("EMOSTYLE_CPU_MEMORY", "tiny")
    with pytest.raises(BackendError, match="EMOSTYLE_CPU_MEMORY"):
        runner_for(manifest, key, backend="onnxruntime")


def test_cpu_runs_share_a_few_slots(manifest: Manifest, monkeypatch: pytest.MonkeyPatch) -> None:
    """The shared arena keeps the high-water mark of concurrent demand: at most 2 CPU runs at once by default."""
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor

    monkeypatch.setattr(ortb, "_cpu_slots", None)
    r = runner_for(manifest, next(iter(manifest.styles)), backend="onnxruntime")
    live, peak, lock = [0], [0], threading.Lock()

    def run(names: list[str], feed: dict[str, np.ndarray], ro: Any) -> list[np.ndarray]:
        with lock:
            live[0] += 1
            peak[0] = max(peak[0], live[0])
        time.sleep(0.02)
        with lock:
            live[0] -= 1
        return [feed["image"]]

    r._session = SimpleNamespace(run=run)
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda _: r.run({"image": np.zeros((1, 8, 8, 3), np.uint8)}), range(32)))
    assert peak[0] == ortb.DEFAULT_CPU_CONCURRENCY == 2
    monkeypatch.setattr(ortb, "_cpu_slots", None)
    monkeypatch.setenv("EMOSTYLE_CPU_CONCURRENCY", "0")
    with pytest.raises(BackendError, match="EMOSTYLE_CPU_CONCURRENCY"):
        r.run({"image": np.zeros((1, 8, 8, 3), np.uint8)})
    monkeypatch.setattr(ortb, "_cpu_slots", None)


class _FakeBinding:
    def __init__(self, session: "_FakeDeviceSession") -> None:
        self.session, self.inputs, self.outputs = session, {}, []

    def bind_cpu_input(self, name: str, arr: np.ndarray) -> None:
        self.inputs[name] = arr

    def bind_output(self, name: str, device: str = "cpu", device_id: int = 0) -> None:
        self.outputs.append((name, device, device_id))

    def copy_outputs_to_cpu(self) -> list[np.ndarray]:
        self.session.d2h += 1
        return [self.session.result]


class _FakeDeviceSession:
    """A CUDA-EP session as IO binding sees it; ``oom`` makes the next run fail like onnxruntime's BFC arena."""

    def __init__(self) -> None:
        self.h2d = self.d2h = 0
        self.bindings: list[_FakeBinding] = []
        self.run_options: list[Any] = []
        self.oom = False
        self.result: Any = None

    def io_binding(self) -> _FakeBinding:
        self.bindings.append(_FakeBinding(self))
        return self.bindings[-1]

    def run_with_iobinding(self, binding: _FakeBinding, run_options: Any = None) -> None:
        self.run_options.append(run_options)
        if self.oom:
            self.oom = False
            raise RuntimeError("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Non-zero status code returned while "
                               "running Conv node. Status Message: bfc_arena.cc:376 Failed to allocate memory for "
                               "requested buffer of size 1073741824")
        self.h2d += len(binding.inputs)
        self.result = next(iter(binding.inputs.values())) + np.uint8(1)


def _as_device_runner(r: Any) -> _FakeDeviceSession:
    fake = _FakeDeviceSession()
    r._session, r._gpu, r._memory = fake, True, "device"
    return fake


def test_device_runs_copy_once_each_way_and_survive_out_of_memory(manifest: Manifest) -> None:
    r = runner_for(manifest, next(iter(manifest.styles)), backend="onnxruntime")
    fake = _as_device_runner(r)
    x = np.arange(2 * 8 * 8 * 3, dtype=np.uint8).reshape(2, 8, 8, 3)
    for _ in range(3):
        np.testing.assert_array_equal(r.run({"image": x})["styled"], x + np.uint8(1))
    assert (fake.h2d, fake.d2h) == (3, 3)  # one H2D and one D2H of uint8 per run
    assert fake.bindings[-1].outputs == [("styled", "cuda", 0)] and fake.run_options == [None] * 3
    fake.oom = True
    with pytest.raises(ortb.OutOfMemoryError, match="ran out of memory.*2x8x8x3") as info:
        r.run({"image": x})
    assert isinstance(info.value, MemoryError) and isinstance(info.value, BackendError)
    np.testing.assert_array_equal(r.run({"image": x[:1]})["styled"], x[:1] + np.uint8(1))  # still usable
    shrink = fake.run_options[-1]
    assert shrink is not None and shrink.get_run_config_entry("memory.enable_memory_arena_shrinkage") == "gpu:0"
    r.run({"image": x[:1]})
    assert fake.run_options[-1] is None  # the arena is given back once, not on every run


class _FakeOrtValue:
    def __init__(self, arr: np.ndarray) -> None:
        self.arr = arr.copy()
        self.updates = 0

    @classmethod
    def ortvalue_from_numpy(cls, arr: np.ndarray, device: str, device_id: int) -> "_FakeOrtValue":
        assert device == "cuda"
        return cls(arr)

    @classmethod
    def ortvalue_from_shape_and_type(cls, shape: tuple, dtype: Any, device: str, device_id: int) -> "_FakeOrtValue":
        return cls(np.zeros(shape, dtype))

    def update_inplace(self, arr: np.ndarray) -> None:
        self.updates += 1
        self.arr[...] = arr


class _FakeGraphSession:
    """A session created with enable_cuda_graph: runs on bound OrtValues, records graph ids."""

    def __init__(self) -> None:
        self.graph_ids: list[str] = []

    def io_binding(self) -> Any:
        b = SimpleNamespace(inputs={}, outputs={})
        b.bind_ortvalue_input = lambda n, v: b.inputs.__setitem__(n, v)
        b.bind_ortvalue_output = lambda n, v: b.outputs.__setitem__(n, v)
        b.copy_outputs_to_cpu = lambda: [v.arr.copy() for v in b.outputs.values()]
        return b

    def run_with_iobinding(self, b: Any, ro: Any) -> None:
        self.graph_ids.append(ro.get_run_config_entry("gpu_graph_id"))
        for out in b.outputs.values():
            out.arr[...] = next(iter(b.inputs.values())).arr + np.uint8(1)


def test_cuda_graphs_replay_per_shape(manifest: Manifest, monkeypatch: pytest.MonkeyPatch) -> None:
    ort = import_onnxruntime()
    fake_ort = SimpleNamespace(OrtValue=_FakeOrtValue, RunOptions=ort.RunOptions)
    r = runner_for(manifest, next(iter(manifest.styles)), backend="onnxruntime")
    fake = _as_device_runner(r)
    graph_session = _FakeGraphSession()
    r._graphs = ortb._CudaGraphs(lambda: graph_session, 0)
    monkeypatch.setattr(ortb, "import_onnxruntime", lambda: fake_ort)
    frames = [np.full((1, 8, 12, 3), i, np.uint8) for i in range(5)]
    for f in frames:  # video: one shape
        np.testing.assert_array_equal(r.run({"image": f})["styled"], f + np.uint8(1))
    assert fake.h2d == 1 and graph_session.graph_ids == ["1"] * 4  # first frame normal, then replays
    for i in range(2, 8):  # more shapes: graphs 2..4, the rest stay on the normal path
        f = np.full((1, 8, 4 * i, 3), i, np.uint8)
        for _ in range(2):
            np.testing.assert_array_equal(r.run({"image": f})["styled"], f + np.uint8(1))
    assert sorted(set(graph_session.graph_ids)) == ["1", "2", "3", "4"] and len(r._graphs._entries) == ortb.MAX_CUDA_GRAPHS


def test_cuda_graphs_that_cannot_be_made_are_dropped_with_one_warning(
        manifest: Manifest, caplog: pytest.LogCaptureFixture) -> None:
    r = runner_for(manifest, next(iter(manifest.styles)), backend="onnxruntime")
    fake = _as_device_runner(r)

    def refuse() -> None:
        raise RuntimeError("This session cannot use the CUDA Graph feature as requested by the user as all the "
                           "graph nodes have not been assigned to CUDA Execution Provider")

    r._graphs = ortb._CudaGraphs(refuse, 0)
    x = np.zeros((1, 8, 8, 3), np.uint8)
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            r.run({"image": x})
    assert r._graphs.disabled and fake.h2d == 3 and caplog.text.count("CUDA graphs are not usable") == 1


def _fake_ort_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, needed: bytes) -> None:
    """An onnxruntime whose TensorRT provider library names ``needed`` (e.g. b"libnvinfer.so.10")."""
    capi = tmp_path / "ort" / "capi"
    capi.mkdir(parents=True)
    (capi / "libonnxruntime_providers_tensorrt.so").write_bytes(b"\x7fELF...\x00libcudart.so.13\x00" + needed + b"\x00")
    fake = SimpleNamespace(__file__=str(tmp_path / "ort" / "__init__.py"), __version__="1.31.1",
                           get_available_providers=lambda: [TRT, CUDA, CPU])
    monkeypatch.setattr(ortb, "import_onnxruntime", lambda: fake)
    for f in (ortb.ort_tensorrt_major, ortb.tensorrt_libraries, ortb.tensorrt_library_version, ortb._auto_providers):
        f.cache_clear()
    monkeypatch.setattr(ortb, "cuda_device_count", lambda: 1)


class _FakeNvinfer:
    def __init__(self, version: int) -> None:
        self.getInferLibVersion = lambda: version


@pytest.fixture()
def clear_gpu_probes():
    yield
    for f in (ortb.ort_tensorrt_major, ortb.tensorrt_libraries, ortb.tensorrt_library_version, ortb._auto_providers):
        f.cache_clear()


@pytest.mark.parametrize(("needed", "installed", "use_trt_ep"), [
    (b"libnvinfer.so.10", {"libnvinfer.so.10": 101303}, True),
    (b"libnvinfer.so.10", {"libnvinfer.so.11": 110400}, False),  # TensorRT 11 next to an EP built for 10
    (b"libnvinfer.so.11", {"libnvinfer.so.11": 110400}, True),  # a later onnxruntime built for 11: derived, not tabled
    (b"libnvinfer.so.10\x00libnvinfer.so.8", {"libnvinfer.so.10": 101303}, False),  # ambiguous: not used
])
def test_tensorrt_ep_only_with_the_libnvinfer_major_onnxruntime_was_built_for(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clear_gpu_probes: None,
        needed: bytes, installed: dict[str, int], use_trt_ep: bool) -> None:
    _fake_ort_install(tmp_path, monkeypatch, needed)
    monkeypatch.setattr(ortb, "_load_library", lambda names: next(
        (_FakeNvinfer(installed[n]) for n in names if n in installed), None))
    assert (TRT in ortb.choose_providers()) is use_trt_ep
    assert ortb.choose_providers()[-2:] == [CUDA, CPU]
    if use_trt_ep:
        assert ortb.tensorrt_library_version() == {101303: "10.13.3", 110400: "11.4.0"}[next(iter(installed.values()))]
    else:
        with pytest.raises(BackendError, match="TensorRT it was built for does not load"):
            ortb.choose_providers("tensorrt")


def test_cache_dir_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EMOSTYLE_CACHE_DIR", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert cache_dir() == Path.home() / ".cache" / "emostyle-rt"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "emostyle-rt"
    monkeypatch.setenv("EMOSTYLE_CACHE_DIR", str(tmp_path / "mine"))
    assert cache_dir() == tmp_path / "mine"
    assert cache_dir(tmp_path / "explicit") == tmp_path / "explicit"


def test_tensorrt_ep_caches_go_to_the_user_cache_keyed_by_versions(
        demo_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, recorder: type[_Recorder],
        clear_gpu_probes: None) -> None:
    """The bundle is never written (it may be read-only); caches are keyed by onnxruntime + TensorRT version and graph."""
    import shutil

    bundle = tmp_path / "bundle"
    shutil.copytree(demo_bundle, bundle)
    before = sorted(p.relative_to(bundle) for p in bundle.rglob("*"))
    for p in [bundle, *bundle.rglob("*")]:
        p.chmod(p.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    try:
        _fake_ort_install(tmp_path, monkeypatch, b"libnvinfer.so.10")
        monkeypatch.setattr(ortb, "_load_library", lambda names: _FakeNvinfer(101303) if "libnvinfer.so.10" in names else None)
        monkeypatch.setenv("EMOSTYLE_CACHE_DIR", str(tmp_path / "cache"))
        m = _with_fp16(load_manifest(bundle, verify_files=False))
        sid = next(iter(m.styles))
        ort_runner_for(m, sid)
        opts = recorder.calls[-1]["provider_options"][TRT]
        folder = tmp_path / "cache" / "ort-trt-ep" / "ort1.31.1-trt10.13.3"
        assert opts["trt_engine_cache_path"] == opts["trt_timing_cache_path"] == str(folder) and folder.is_dir()
        assert opts["trt_engine_cache_enable"] and opts["trt_engine_cache_prefix"] == "g" + "cd" * 8  # the FP16 graph
        assert opts["trt_fp16_enable"] is False and recorder.calls[-1]["precision"] == "fp16"
        ort_runner_for(m, sid, precision="fp32", cache=tmp_path / "elsewhere")
        opts = recorder.calls[-1]["provider_options"][TRT]
        assert opts["trt_engine_cache_prefix"] == "g" + m.styles[sid].sha256[:16]
        assert opts["trt_engine_cache_path"].startswith(str(tmp_path / "elsewhere"))
        assert sorted(p.relative_to(bundle) for p in bundle.rglob("*")) == before
    finally:
        for p in [bundle, *bundle.rglob("*")]:
            p.chmod(p.stat().st_mode | stat.S_IWUSR)


class _Primary:
    """A native runner whose profile takes sides 16..64."""

    name = "tensorrt:fake"
    inputs = outputs = ()

    def __init__(self) -> None:
        self.closed = False

    def run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        x = feed["image"]
        if not all(16 <= d <= 64 for d in x.shape[1:3]):
            raise OutsideProfileError(f"{x.shape} is outside the profile.")
        return {"styled": x + np.uint8(1)}

    def close(self) -> None:
        self.closed = True


def test_fallback_runner_warns_once_per_shape(caplog: pytest.LogCaptureFixture) -> None:
    made: list[_Primary] = []

    class Ort(_Primary):
        name = "onnxruntime:fake"

        def run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            return {"styled": feed["image"] + np.uint8(2)}

    def make() -> Ort:
        made.append(Ort())
        return made[-1]

    primary = _Primary()
    r = FallbackRunner(primary, make, "happy")
    assert r.name == "tensorrt:fake"
    with caplog.at_level(logging.WARNING):
        for shape in [(1, 32, 32, 3), (1, 8, 8, 3), (3, 8, 8, 3), (1, 100, 40, 3), (1, 8, 8, 3), (1, 32, 32, 3)]:
            x = np.zeros(shape, np.uint8)
            want = 1 if shape[1:3] == (32, 32) else 2
            np.testing.assert_array_equal(r.run({"image": x})["styled"], x + np.uint8(want))
    warned = [rec.getMessage() for rec in caplog.records]
    assert len(warned) == 2 and "8x8x3" in warned[0] and "100x40x3" in warned[1]  # per shape, batch ignored
    assert len(made) == 1  # one onnxruntime runner, created on first need
    r.close()
    assert primary.closed and made[0].closed


class _Counting:
    """Wraps a real runner and counts close()."""

    closed: list[str] = []

    def __init__(self, inner: Any, key: str) -> None:
        self._inner, self.key = inner, key
        self.name, self.inputs, self.outputs = inner.name, inner.inputs, inner.outputs

    def run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self._inner.run(feed)

    def close(self) -> None:
        _Counting.closed.append(self.key)
        self._inner.close()


@pytest.fixture()
def counting(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    _Counting.closed = []
    seen_kw: list[dict[str, Any]] = []

    def wrapped(manifest: Manifest, key: str, **kw: Any) -> _Counting:
        seen_kw.append(kw)
        return _Counting(runner_for(manifest, key, **kw), key)

    monkeypatch.setattr(stylizer_mod, "runner_for", wrapped)
    _Counting.seen_kw = seen_kw  # type: ignore[attr-defined]
    return _Counting.closed


def test_stylizer_close_exit_and_finalizer_close_every_runner(demo_bundle: Path, counting: list[str],
                                                              astronaut: np.ndarray) -> None:
    small = astronaut[::8, ::8]
    with Stylizer(demo_bundle, precision="fp32") as st:
        st.stylize(small)
        st.stylize(small, emotion="sad")
        loaded = sorted(st._styles) + ["classifier"]
    assert sorted(counting) == sorted(loaded)  # __exit__ closed the classifier and every style runner
    assert all(kw["precision"] == "fp32" and kw["cuda_graph"] is False for kw in _Counting.seen_kw)  # type: ignore
    assert st.stylize(small, emotion="sad").image.shape == small.shape  # usable again: graphs reload
    counting.clear()
    st.close()
    st.close()
    assert counting == [st.manifest.emotions["sad"]]  # the emotion was given: the classifier did not reload
    counting.clear()
    st2 = Stylizer(demo_bundle)
    st2.stylize(small, emotion="happy")
    del st2
    gc.collect()
    assert sorted(counting) == sorted(["classifier", st.manifest.emotions["happy"]])  # the finalizer


def test_stylizer_rejects_an_unknown_precision(demo_bundle: Path) -> None:
    with pytest.raises(BackendError, match="Unknown precision"):
        Stylizer(demo_bundle, precision="int8")
    with pytest.raises(BackendError, match="no FP16 graph"):  # the demo bundle has none
        Stylizer(demo_bundle, precision="fp16")


def test_style_run_of_one_image_does_not_copy_it(demo_bundle: Path, monkeypatch: pytest.MonkeyPatch,
                                                 astronaut: np.ndarray) -> None:
    fed: list[np.ndarray] = []

    def spy(manifest: Manifest, key: str, **kw: Any) -> Any:
        r = runner_for(manifest, key, **kw)
        real = r.run
        r.run = lambda feed: (fed.append(next(iter(feed.values()))), real(feed))[1]
        return r

    monkeypatch.setattr(stylizer_mod, "runner_for", spy)
    st = Stylizer(demo_bundle)
    img = np.ascontiguousarray(astronaut[:64, :64])
    st.stylize(img, emotion="happy")
    assert fed[-1].shape == (1, 64, 64, 3) and np.shares_memory(fed[-1], img)
    assert os.environ.get("EMOSTYLE_CPU_MEMORY") in (None, "", "shared")
