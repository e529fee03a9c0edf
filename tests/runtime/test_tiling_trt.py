"""Fixed tile windows for compiled engines: the planner's snapping and the TensorRT EP path of TiledStyle.

TensorRT cannot run here, so the TensorRT EP path is tested around: onnxruntime's
provider probe is replaced by one reporting the TensorRT and CUDA EPs, and the
runner class by one that records what it was asked to build (provider, provider
options) and runs the same graph on the CPU, so the tiled result is real. The
test marked ``tensorrt`` compares the real TensorRT EP against the CUDA EP on a
machine that has both; it skips elsewhere.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from emostyle_rt import Stylizer
from emostyle_rt.backends import ort as ortb
from emostyle_rt.errors import BackendError
from emostyle_rt.imaging.io import pad_to_multiple
from emostyle_rt.manifest import StyleSpec
from emostyle_rt import tiling
from emostyle_rt.tiling import FIXED_WINDOWS, TiledStyle, estimate_whole, is_fixed_window, parse_memory, plan

EMOTION = "angry"  # the style conftest.py gives tiled graphs (TILED_EMOTION)
TRT, CUDA, CPU = "TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"
_PROVIDERS = {None: [TRT, CUDA, CPU], "tensorrt": [TRT, CPU], "cuda": [CUDA, CPU], "cpu": [CPU]}


@pytest.fixture(scope="module")
def photo(astronaut: np.ndarray) -> np.ndarray:
    """A real photo 640 x 704 (h x w): one fixed 640 px window high, two wide."""
    return cv2.resize(astronaut, (704, 640), interpolation=cv2.INTER_AREA)


def _diff(a: np.ndarray, b: np.ndarray) -> int:
    return int(np.abs(a.astype(np.int16) - b.astype(np.int16)).max())


# -- the planner ----------------------------------------------------------------


SIZES = [(3000, 4000), (4000, 3000), (6000, 8000), (1536, 2048), (2000, 9000)]
BUDGETS = [0.8, 1, 1.5, 2, 3, 4, 6, 8, 12, 16, 24]  # GB


def _plans(style: StyleSpec, h: int, w: int, budget: int):
    """(as before, with fixed windows) for one size and budget, tiled in fast mode."""
    return (plan(style, h, w, budget, "fast", force=True),
            plan(style, h, w, budget, "fast", force=True, fixed_windows=True))


def test_fixed_windows_snap_down_to_a_few_shapes_within_the_budget(style: StyleSpec) -> None:
    spec, seen, kept = style.tiled, set(), 0
    for h, w in SIZES:
        for gb in BUDGETS:
            budget = int(gb * 1e9)
            free, fixed = _plans(style, h, w, budget)
            assert fixed.mode == "fast" and fixed.estimate <= budget, (h, w, gb, fixed)  # never above the budget
            if is_fixed_window(fixed.window):
                side = fixed.window[0]
                seen.add(side)
                assert side <= min(h, w) and fixed.tiles == (len(tiling.cells(h, side, spec.halo, spec.align))
                                                             * len(tiling.cells(w, side, spec.halo, spec.align)))
                # the largest fixed side that fits: the next one up (if the image holds it) would pass the budget
                bigger = [s for s in FIXED_WINDOWS if side < s <= min(h, w)]
                if bigger:
                    grow = (tiling.activation_bytes(spec.tile.bytes_per_pixel, bigger[0] ** 2)
                            - tiling.activation_bytes(spec.tile.bytes_per_pixel, side ** 2))
                    assert fixed.estimate + grow > budget, (h, w, gb, fixed)
            else:  # no fixed window fits the budget, or the image is narrower than the one that does: as before
                assert fixed == free, (h, w, gb, fixed)
                kept += 1
    assert seen == set(FIXED_WINDOWS), seen  # every fixed side is reached by some budget
    assert kept  # and some runs keep their window


def test_small_images_and_small_budgets_keep_their_window(style: StyleSpec) -> None:
    for h, w, gb in [(600, 5000, 2), (600, 5000, 8),  # narrower than the smallest fixed window (640)
                     (960, 1280, 64),  # the budget allows 2176 px windows, the image is 960 high
                     (1100, 9000, 64)]:  # allows 2176, the image is 1100 high (1152 and 2176 do not fit it)
        free, fixed = _plans(style, h, w, int(gb * 1e9))
        assert fixed == free and not is_fixed_window(fixed.window), (h, w, gb, fixed)
    for h, w in SIZES:  # a budget that leaves room for less than the smallest fixed window
        budget = plan(style, h, w, 1 << 40, "fast", force=True).minimum
        free, fixed = _plans(style, h, w, int(budget * 1.1))
        assert free.window[0] * free.window[1] < FIXED_WINDOWS[0] ** 2 and fixed == free, (h, w, fixed)
    # whole runs and the exact mode do not change
    small = plan(style, 300, 400, parse_memory("4GB"), "fast", fixed_windows=True)
    assert small.mode == "whole" and small == plan(style, 300, 400, parse_memory("4GB"), "fast")
    exact = plan(style, 3000, 4000, parse_memory("2GB"), "exact", fixed_windows=True)
    assert exact == plan(style, 3000, 4000, parse_memory("2GB"), "exact")


def test_fixed_window_helper() -> None:
    assert tiling.fixed_window(640 * 640, 4, 64) == 640
    assert tiling.fixed_window(640 * 640 - 1, 4, 64) is None
    assert tiling.fixed_window(1e12, 4, 64) == 2176
    assert tiling.fixed_window(1e12, 4, 600) == 2176 and tiling.fixed_window(1200 * 1200, 4, 600) is None
    assert tiling.fixed_window(1e12, 256, 64) is None  # no fixed side is a multiple of 256
    assert all(s % 64 == 0 for s in FIXED_WINDOWS)
    assert is_fixed_window((1152, 1152)) and not is_fixed_window((640, 1152)) and not is_fixed_window((700, 700))


# -- the TensorRT EP path, tested around ------------------------------------------


class _Recorder:
    """Stands in for OrtRunner: records what it was asked to build, runs the graph on the CPU."""

    calls: list[dict[str, Any]] = []
    real = ortb.OrtRunner

    def __init__(self, path: Any, **kw: Any) -> None:
        _Recorder.calls.append({"path": Path(path), **kw})
        self._cpu = _Recorder.real(path, provider="cpu", intra_op_threads=kw.get("intra_op_threads", 0))
        self.name, self.inputs, self.outputs = f"fake:{kw.get('provider')}", self._cpu.inputs, self._cpu.outputs

    def run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self._cpu.run(feed)

    def close(self) -> None:
        self._cpu.close()


@pytest.fixture()
def fake_trt(monkeypatch: pytest.MonkeyPatch) -> type[_Recorder]:
    """onnxruntime reporting the TensorRT and CUDA EPs; runners recorded (and run on the CPU)."""
    _Recorder.calls = []
    monkeypatch.setattr(ortb, "choose_providers", lambda provider=None: list(_PROVIDERS[provider]))
    monkeypatch.setattr(ortb, "OrtRunner", _Recorder)
    return _Recorder


def _graph_calls(calls: list[dict[str, Any]], graph_path: Path) -> list[dict[str, Any]]:
    return [c for c in calls if c["path"] == graph_path]


def test_tensorrt_tile_runner_gets_a_static_profile_per_fixed_window(
        tiled_bundle: Path, style: StyleSpec, photo: np.ndarray, tmp_path: Path,
        fake_trt: type[_Recorder], caplog: pytest.LogCaptureFixture) -> None:
    spec = style.tiled
    padded = pad_to_multiple(photo, spec.align)
    cache = tmp_path / "cache"
    with caplog.at_level(logging.INFO, logger="emostyle_rt.tiling"):
        trt = TiledStyle(tiled_bundle, style, provider="tensorrt", cache_dir=cache)
    assert trt.tensorrt and trt.provider == "cuda"
    assert caplog.text.count("on the TensorRT EP") == 1 and "statistics graph" in caplog.text  # once, says why
    cpu = TiledStyle(tiled_bundle, style, provider="cpu")
    try:
        stats = cpu.statistics(padded, None)  # the image's own statistics: the stitched tiles equal untiled
        window = (640, 640)
        out = trt.run_fast(padded, window=window, stats=stats)
        tile_path = tiled_bundle / spec.tile.onnx
        (call,) = _graph_calls(fake_trt.calls, tile_path)
        assert call["provider"] == "tensorrt"
        opts = call["provider_options"][TRT]
        want = f"{spec.tile.inputs[0].name}:1x640x640x3"
        assert [opts[f"trt_profile_{k}_shapes"] for k in ("min", "opt", "max")] == [want] * 3
        assert opts["trt_engine_cache_prefix"] == f"g{spec.tile.sha256[:16]}_640x640"
        assert opts["trt_engine_cache_enable"] and opts["trt_fp16_enable"] is False
        folder = Path(opts["trt_engine_cache_path"])
        assert folder.is_dir() and folder.is_relative_to(cache) and not folder.is_relative_to(tiled_bundle)
        assert opts["trt_timing_cache_path"] == str(folder)
        # the CPU provider (today's path) runs the same tiles: the same result, and the untiled one within 1
        ref = cpu.run_fast(padded, window=window, stats=stats)
        assert np.array_equal(out, ref)
        whole = ortb.OrtRunner(tiled_bundle / style.onnx, provider="cpu")
        try:
            untiled = whole.run({style.input_name: padded[None]})[style.output_name][0]
        finally:
            whole.close()
        assert _diff(ref, untiled) <= 1 and len(tiling.cells(padded.shape[1], 640, spec.halo, spec.align)) == 2
        assert not any(c.get("provider_options") for c in fake_trt.calls if c["provider"] == "cpu")

        # the same window reuses the engine's runner; another window shape is not a fixed one: CUDA EP
        assert trt.tile_runner(window) is trt.tile_runner(window)
        small = np.ascontiguousarray(padded[:200, :300])
        trt.run_fast(small, window=(200, 64 + 2 * spec.halo), stats=stats)
        tile_calls = [c for c in _graph_calls(fake_trt.calls, tile_path) if c["provider"] != "cpu"]
        assert [c["provider"] for c in tile_calls] == ["tensorrt", "cuda"]
        assert not tile_calls[1].get("provider_options")
        # the statistics graph and the segments run on the CUDA EP too
        trt.statistics(small, None)
        trt.run_exact(small, strip_rows=64)
        others = [c for c in fake_trt.calls if c["path"] != tile_path and c["provider"] != "cpu"]
        assert others and {c["provider"] for c in others} == {"cuda"}
        assert not any(c.get("provider_options") for c in others)
    finally:
        trt.close()
        cpu.close()


def test_tensorrt_unavailable_falls_back_with_one_warning(
        tiled_bundle: Path, style: StyleSpec, tmp_path: Path, fake_trt: type[_Recorder],
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    def no_trt(provider: str | None = None) -> list[str]:
        if provider == "tensorrt":
            raise BackendError("TensorrtExecutionProvider was asked for but no CUDA GPU answers.")
        return [CPU] if provider in (None, "cpu") else [CUDA, CPU]

    monkeypatch.setattr(ortb, "choose_providers", no_trt)
    with caplog.at_level(logging.WARNING, logger="emostyle_rt.tiling"):
        t = TiledStyle(tiled_bundle, style, provider="tensorrt", cache_dir=tmp_path)
        try:
            assert not t.tensorrt and t.provider == "cpu"
            assert t.tile_runner((640, 640)) is t.runner(style.tiled.tile)
        finally:
            t.close()
    assert caplog.text.count("not usable for the tiled graphs") == 1
    assert {c["provider"] for c in fake_trt.calls} == {"cpu"}
    assert not any(c.get("provider_options") for c in fake_trt.calls)

    # the EP is there but cannot build the engine: one warning, the tiles run on the CUDA EP
    fake_trt.calls = []
    monkeypatch.setattr(ortb, "choose_providers", lambda provider=None: list(_PROVIDERS[provider]))

    class Refusing(_Recorder):
        def __init__(self, path: Any, **kw: Any) -> None:
            if kw.get("provider") == "tensorrt":
                raise BackendError("onnxruntime cannot load tile.onnx: TensorRT build failed")
            super().__init__(path, **kw)

    monkeypatch.setattr(ortb, "OrtRunner", Refusing)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="emostyle_rt.tiling"):
        t = TiledStyle(tiled_bundle, style, provider="tensorrt", cache_dir=tmp_path)
        try:
            for _ in range(2):
                assert t.tile_runner((640, 640)).name == "fake:cuda"
            assert not t.tensorrt
        finally:
            t.close()
    assert caplog.text.count("cannot run the tile graph") == 1


def test_tensorrt_failing_at_its_first_run_falls_back_with_one_warning(
        tiled_bundle: Path, style: StyleSpec, photo: np.ndarray, tmp_path: Path, fake_trt: type[_Recorder],
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """The TensorRT EP may build its engine at the first run and fail there: the tiles then run on the CUDA EP
    (here the CPU stand-in), with one warning, and the result is the same."""
    class FailsToRun(_Recorder):
        def run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            if self.name == "fake:tensorrt":
                raise BackendError("onnxruntime failed to run tile.onnx: TensorRT engine build failed")
            return super().run(feed)

    monkeypatch.setattr(ortb, "OrtRunner", FailsToRun)
    padded = pad_to_multiple(photo, style.tiled.align)
    cpu = TiledStyle(tiled_bundle, style, provider="cpu")
    t = TiledStyle(tiled_bundle, style, provider="tensorrt", cache_dir=tmp_path)
    try:
        stats = cpu.statistics(padded, None)
        with caplog.at_level(logging.WARNING, logger="emostyle_rt.tiling"):
            for _ in range(2):  # the second run goes to the CUDA EP at once
                out = t.run_fast(padded, window=(640, 640), stats=stats)
                assert np.array_equal(out, cpu.run_fast(padded, window=(640, 640), stats=stats))
        assert caplog.text.count("failed to run the tile graph") == 1 and not t.tensorrt
        assert [c["provider"] for c in fake_trt.calls if c["path"] == tiled_bundle / style.tiled.tile.onnx
                and c["provider"] != "cpu"] == ["tensorrt", "cuda"]
    finally:
        t.close()
        cpu.close()


@pytest.mark.filterwarnings("ignore:Specified provider 'TensorrtExecutionProvider'")  # this onnxruntime has none
def test_stylizer_with_tensorrt_plans_fixed_windows_and_passes_the_cache(
        tiled_bundle: Path, style: StyleSpec, astronaut: np.ndarray, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """provider="tensorrt": TiledStyle gets "tensorrt" and the cache folder, the plan fixed windows."""
    monkeypatch.setattr(ortb, "choose_providers", lambda provider=None: list(_PROVIDERS[provider]))
    seen: list[tuple[TiledStyle, Any]] = []

    def record(self: TiledStyle, padded: np.ndarray, p: Any, progress: Any = None) -> np.ndarray:
        seen.append((self, p))
        return padded.copy()

    monkeypatch.setattr(TiledStyle, "run", record)
    photo = cv2.resize(astronaut, (1280, 960), interpolation=cv2.INTER_AREA)
    budget = parse_memory("1.5GB")
    assert estimate_whole(style, 960, 1280) > budget  # goes tiled
    for provider, fixed in (("tensorrt", True), ("cpu", False)):
        seen.clear()
        with Stylizer(tiled_bundle, provider=provider, cache_dir=tmp_path / "cache", memory_budget=budget,
                         tile_mode="fast") as st:
            st.stylize(photo, emotion=EMOTION)
        ((tiled, p),) = seen
        assert p.mode == "fast" and is_fixed_window(p.window) is fixed, (provider, p)
        assert p == plan(style, 960, 1280, budget, "fast", fixed_windows=fixed)
        assert tiled.tensorrt is fixed and tiled.cache_dir == tmp_path / "cache"


# -- on a machine with the TensorRT EP ------------------------------------------------


def _trt_ep_usable() -> bool:
    try:
        return TRT in ortb.choose_providers(None) and CUDA in ortb.choose_providers(None)
    except Exception:  # noqa: BLE001 - no onnxruntime-gpu, no driver: skip
        return False


@pytest.mark.gpu
@pytest.mark.tensorrt
@pytest.mark.skipif(not _trt_ep_usable(), reason="needs onnxruntime-gpu with a usable TensorRT EP and a CUDA GPU")
def test_tensorrt_ep_tiles_match_cuda(tiled_bundle: Path, style: StyleSpec, photo: np.ndarray,
                                      tmp_path: Path) -> None:
    padded = pad_to_multiple(photo, style.tiled.align)
    trt = TiledStyle(tiled_bundle, style, provider="tensorrt", cache_dir=tmp_path)
    cuda = TiledStyle(tiled_bundle, style, provider="cuda")
    try:
        stats = cuda.statistics(padded, 512)
        out = trt.run_fast(padded, window=(640, 640), stats=stats)
        assert TRT in trt.tile_runner((640, 640)).name  # really the TensorRT EP, not a fallback
        assert any(tmp_path.rglob("*.engine"))  # the engine went to the user cache
        assert _diff(out, cuda.run_fast(padded, window=(640, 640), stats=stats)) <= 1
    finally:
        trt.close()
        cuda.close()
