"""The seams every graph loads through: a runner's device, the provider -> device map, the lazy-loading
wrapper, the one loader and its registry, the libcuda module, the detector registry."""

from __future__ import annotations

import dataclasses
import logging
import threading
from pathlib import Path

import numpy as np
import pytest

import emostyle_rt.stylizer as stylizer_mod
from emostyle_rt import Stylizer
from emostyle_rt.backends import GraphLoader, is_gpu, make_runner
from emostyle_rt.backends import ort as ortb
from emostyle_rt.errors import BackendError
from emostyle_rt.manifest import load_manifest
from emostyle_rt.tiling import default_budget

CUDA, TRT, CPU = "CUDAExecutionProvider", "TensorrtExecutionProvider", "CPUExecutionProvider"


# -- a runner's device -------------------------------------------------------------


def test_the_provider_device_map_is_one_table() -> None:
    assert ortb.provider_device(CPU) == "cpu" and ortb.provider_device("cpu", 3) == "cpu"
    assert ortb.provider_device(CUDA) == "cuda:0" and ortb.provider_device("cuda", 1) == "cuda:1"
    assert ortb.provider_device(TRT, 2) == "cuda:2" and ortb.provider_device("tensorrt") == "cuda:0"
    assert set(ortb.PROVIDER_DEVICES) == set(ortb.PROVIDERS.values())
    with pytest.raises(BackendError, match="Unknown onnxruntime provider 'ROCMExecutionProvider'"):
        ortb.provider_device("ROCMExecutionProvider")


def test_an_onnxruntime_runner_says_its_device(demo_bundle: Path) -> None:
    m = load_manifest(demo_bundle)
    r = make_runner(m.path(m.classifier.onnx), provider="cpu")
    try:
        assert r.device == "cpu" and not is_gpu(r)
    finally:
        r.close()


class _Named:
    """A runner stand-in with a misleading name: the device decides, not the name."""

    def __init__(self, name: str, device: str | None) -> None:
        self.name = name
        if device is not None:
            self.device = device


def test_the_budget_follows_the_runner_device_not_its_name(demo_bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[bool] = []
    monkeypatch.setattr(stylizer_mod, "default_budget", lambda gpu=False, held=None: seen.append(gpu) or 1 << 30)
    with Stylizer(demo_bundle, provider="cpu") as st:
        for name, device in (("onnxruntime:CUDAExecutionProvider", "cpu"), ("my-engine", "cuda:1"),
                             ("tensorrt:plan", None)):
            st._budget(_Named(name, device))  # type: ignore[arg-type]
    assert seen == [False, True, False]
    assert default_budget(gpu=False) > 0


# -- one place decides providers ----------------------------------------------------


@pytest.mark.parametrize(("providers", "forced", "want"), [
    ((TRT, CUDA, CPU), None, "cuda"), ((TRT, CUDA, CPU), "tensorrt", "cuda"), ((CPU,), None, "cpu"),
    ((CPU,), "tensorrt", "cpu"), ((TRT, CUDA, CPU), "cpu", "cpu"), ((CPU,), "cuda", "cuda")])
def test_graphs_with_changing_shapes_never_get_the_tensorrt_ep(
        monkeypatch: pytest.MonkeyPatch, providers: tuple[str, ...], forced: str | None, want: str) -> None:
    from emostyle_rt.detection.mtcnn import graph_provider

    monkeypatch.setattr(ortb, "choose_providers", lambda provider=None: list(providers))
    assert ortb.changing_shapes_provider(forced) == want
    assert graph_provider(forced) == want  # MTCNN asks the same function


class _Failing:
    name, device = "fake:tensorrt", "cuda:0"
    inputs = outputs = ()

    def __init__(self) -> None:
        self.runs = self.closed = 0

    def run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.runs += 1
        raise BackendError("engine build failed")

    def close(self) -> None:
        self.closed += 1


class _Echo:
    name, device = "fake:cuda", "cuda:0"
    inputs = outputs = ()

    def run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"y": feed["x"] + 1}

    def close(self) -> None:
        pass


def test_failover_runner_warns_once_closes_the_primary_and_runs_on_the_fallback(
        caplog: pytest.LogCaptureFixture) -> None:
    from emostyle_rt.backends import FailoverRunner

    primary, fallback, failed = _Failing(), _Echo(), []
    r = FailoverRunner(primary, lambda: fallback, what="The TensorRT EP failed to run g", fallback_name="on cuda",
                       on_failover=lambda: failed.append(1))
    assert r.device == "cuda:0" and r.name == "fake:tensorrt"
    x = np.zeros((1, 2), np.float32)
    with caplog.at_level(logging.WARNING, logger="emostyle_rt.backends"):
        for _ in range(3):
            assert np.array_equal(r.run({"x": x})["y"], x + 1)
    assert primary.runs == 1 and primary.closed == 1 and failed == [1]
    assert caplog.text.count("The TensorRT EP failed to run g (engine build failed); on cuda.") == 1


# -- one loading path: a backend is a module and one registry line ------------------------


class _FakeBackend:
    """A backend module as LOADERS wants one: ``load_graph`` (here: onnxruntime on the CPU, each load recorded)."""

    def __init__(self) -> None:
        self.loaded: list[tuple[Path, GraphLoader]] = []

    def load_graph(self, loader: GraphLoader) -> ortb.OrtRunner:
        self.loaded.append((Path(loader.path), loader))
        runner = ortb.load_graph(dataclasses.replace(loader, backend="onnxruntime", provider="cpu"))
        runner.name, runner.device = "fake:" + Path(loader.path).name, "cpu"
        return runner


def test_a_backend_registered_with_one_line_loads_every_graph(
        mtcnn_bundle: Path, tiled_bundle: Path, astronaut: np.ndarray, monkeypatch: pytest.MonkeyPatch) -> None:
    from emostyle_rt import backends
    from emostyle_rt.imaging.io import pad_to_multiple
    from emostyle_rt.detection.mtcnn import MtcnnDetector
    from emostyle_rt.tiling import TiledStyle

    fake = _FakeBackend()
    monkeypatch.setitem(backends.LOADERS, "fake", fake)  # the one line
    # the Stylizer's classifier and style graphs
    with Stylizer(mtcnn_bundle, backend="fake") as st:
        out = st.stylize(astronaut)
        assert out.image.shape == astronaut.shape and out.face is not None
        assert st._classifier_runner().name == "fake:" + Path(st.manifest.classifier.onnx).name
        assert any(r.name.startswith("fake:") for r in st._styles.values())
    assert fake.loaded[0][1].small is True and fake.loaded[0][1].precision == "fp32"  # the classifier
    # MTCNN's three graphs
    m = load_manifest(mtcnn_bundle)
    fake.loaded.clear()
    det = MtcnnDetector(m.detector, mtcnn_bundle, backend="fake")
    try:
        faces = det.detect(astronaut)
        assert faces and {p.name for p, _ in fake.loaded} == {Path(g.onnx).name for g in m.detector.graphs.values()}
        assert all(g.small and g.provider is None and g.backend == "fake" for _, g in fake.loaded)
    finally:
        det.close()
    # the tiled executor's graphs
    tm = load_manifest(tiled_bundle)
    style = next(s for s in tm.styles.values() if s.tiled is not None)
    fake.loaded.clear()
    tiled = TiledStyle(tiled_bundle, style, engine="fake")
    try:
        small = pad_to_multiple(np.ascontiguousarray(astronaut[:256, :256]), style.tiled.align)
        assert tiled.run_fast(small, window=(128 + 2 * style.tiled.halo,) * 2).shape == small.shape
        assert {p.name for p, _ in fake.loaded} >= {Path(style.tiled.stats.onnx).name, Path(style.tiled.tile.onnx).name}
    finally:
        tiled.close()
    with pytest.raises(BackendError, match="Unknown backend 'nope'"):
        backends.runner_for(m, "classifier", backend="nope")
    with pytest.raises(BackendError, match="No backend 'nope' loads ONNX graphs"):
        backends.load_graph(m.path(m.classifier.onnx), backend="nope")


# -- one lazy-loading wrapper ---------------------------------------------------------------


class _CountingLock:
    """A lock that counts the threads that came to it, so a test can wait for all of them (no sleeps)."""

    def __init__(self) -> None:
        self._lock, self.arrived = threading.Lock(), 0
        self.changed = threading.Condition()

    def __enter__(self) -> None:
        with self.changed:
            self.arrived += 1
            self.changed.notify_all()
        self._lock.acquire()

    def __exit__(self, *exc: object) -> None:
        self._lock.release()


def test_the_lazy_wrapper_loads_once_while_every_thread_asks_at_once() -> None:
    from emostyle_rt.backends import Lazy

    n, lock = 8, _CountingLock()
    lazy: Lazy[str, object] = Lazy(lock)
    made: list[object] = []
    start = threading.Barrier(n)

    def make() -> object:
        # runs in the first thread, holding the lock: return only once every thread has come to the lock
        # (a wrapper without its check under the lock would make one value per thread)
        with lock.changed:
            assert lock.changed.wait_for(lambda: lock.arrived == n, timeout=60)
        made.append(object())
        return made[-1]

    got: list[object] = []

    def ask() -> None:
        start.wait()
        got.append(lazy.load("graph", make))

    threads = [threading.Thread(target=ask) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(made) == 1 and len(got) == n and all(g is made[0] for g in got)
    assert lazy.load("graph", make) is made[0] and lock.arrived == n  # a loaded value takes no lock
    assert lazy.load("none", lambda: None) is None and "none" not in lazy  # None is not kept
    assert lazy.drain() == [made[0]] and lazy == {}


# -- one cuda module ---------------------------------------------------------------------


def test_libcuda_has_one_owner(monkeypatch: pytest.MonkeyPatch) -> None:
    import ctypes

    from emostyle_rt import cuda, tiling
    from emostyle_rt.backends import aoti as aotib

    assert ortb.cuda_device_count is cuda.device_count and aotib.cuda_device is cuda.device_identity
    assert tiling.gpu_free is cuda.free_memory

    class Driver:
        def cuDriverGetVersion(self, out) -> int:  # noqa: ANN001, N802 - the driver's name
            out._obj.value = 13000
            return 0

    monkeypatch.setattr(ctypes, "CDLL", lambda name, *a, **k: Driver())
    assert cuda.driver_version() == "13.0"

    def missing(name, *a, **k):  # noqa: ANN001, ANN002, ANN003, ANN202
        raise OSError(name)

    monkeypatch.setattr(ctypes, "CDLL", missing)
    monkeypatch.setattr(cuda, "_found", lambda: None)
    assert cuda.libcuda() is None and cuda.driver_version() is None and cuda.free_memory() is None


# -- detectors in a registry -------------------------------------------------------------


class _Detector:
    """A detector module as DETECTORS wants one: ``detect``, and ``preload``/``close`` the Stylizer forwards."""

    made: list["_Detector"] = []

    def __init__(self) -> None:
        self.calls: list[str] = []
        _Detector.made.append(self)

    def detect(self, rgb: np.ndarray) -> list:
        from emostyle_rt.detection.faces import Face

        self.calls.append("detect")
        h, w = rgb.shape[:2]
        return [Face(w // 4, h // 4, w // 2, h // 2)]

    def preload(self) -> None:
        self.calls.append("preload")

    def close(self) -> None:
        self.calls.append("close")


def test_a_detector_registered_with_one_line_is_the_stylizers(
        demo_bundle: Path, astronaut: np.ndarray, monkeypatch: pytest.MonkeyPatch) -> None:
    from emostyle_rt.detection import faces

    _Detector.made = []
    monkeypatch.setitem(faces.DETECTORS, "box", lambda manifest, *, provider=None, backend="auto": _Detector())  # the one line
    with Stylizer(demo_bundle, detector="box") as st:
        st.preload()
        res = st.stylize(astronaut)
        assert res.face is not None and res.face.box == (128, 128, 256, 256)
    (det,) = _Detector.made
    assert det.calls == ["preload", "detect", "close"]
    # a detector object passed in stays its caller's: used, never preloaded or closed by the Stylizer
    mine = _Detector()
    with Stylizer(demo_bundle, detector=mine) as st:
        st.preload()
        st.classify(astronaut)
    assert mine.calls == ["detect"]
    with pytest.raises(BackendError, match='Unknown face detector .*"mtcnn", "haar", "box", a YuNet .onnx path or '
                                           'a Haar .xml path'):
        faces.make_detector("nope.txt")


# -- one owner of PSNR, IoU and the tolerances --------------------------------------------


def test_psnr_iou_and_tolerances_have_one_owner() -> None:
    import math

    from emostyle_rt import metrics
    from emostyle_rt.backends import openvino as ovb
    from emostyle_rt.video import iou
    from emostyle_rt.detection.faces import Face

    a = np.zeros((4, 4, 3), np.uint8)
    b = a.copy()
    b[0, 0, 0] = 255  # mse 255^2 / 48
    assert metrics.psnr(a, a) == math.inf and metrics.psnr(a, a, cap=metrics.PSNR_CAP_DB) == 100.0
    assert metrics.psnr(a, b) == pytest.approx(10 * math.log10(48))
    assert metrics.box_iou((0, 0, 10, 10), (5, 0, 10, 10)) == pytest.approx(50 / 150)
    assert metrics.box_iou((0, 0, 0, 0), (0, 0, 0, 0)) == 0.0
    assert iou(Face(0, 0, 10, 10), Face(5, 0, 10, 10)) == pytest.approx(50 / 150)
    assert ovb.psnr is metrics.psnr and ovb.BF16_MIN_PSNR == metrics.MIN_PSNR_DB
    export = pytest.importorskip("emostyle_export.parity")
    from emostyle_export import detectors, fp16

    assert export.psnr is metrics.psnr and detectors.box_iou is metrics.box_iou
    assert (export.CLASSIFIER_TOLERANCE, export.STYLE_TOLERANCE, fp16.MIN_PSNR_DB, fp16.PSNR_CAP_DB,
            detectors.GRAPH_TOLERANCE) == (metrics.CLASSIFIER_TOLERANCE, metrics.STYLE_TOLERANCE,
                                           metrics.MIN_PSNR_DB, metrics.PSNR_CAP_DB, metrics.DETECTOR_TOLERANCE)
    assert fp16.psnr_db(a, a) == 100.0


# -- one warn-once -----------------------------------------------------------------------


def test_warn_once_says_each_key_once_whatever_the_threads(caplog: pytest.LogCaptureFixture) -> None:
    from emostyle_rt.logutil import first_time, warn_once

    seen: set = set()
    logger = logging.getLogger("emostyle_rt.test_once")
    n = 8
    start = threading.Barrier(n)
    said: list[bool] = []

    def say() -> None:
        start.wait()
        said.append(warn_once(logger, seen, ("bundle", "why"), "%s happened", "it"))

    with caplog.at_level(logging.WARNING, logger="emostyle_rt.test_once"):
        threads = [threading.Thread(target=say) for _ in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert sorted(said) == [False] * (n - 1) + [True] and caplog.text.count("it happened") == 1
    assert seen == {("bundle", "why")} and first_time(seen, "other") and not first_time(seen, "other")
