"""Tiled style inference (emostyle_rt.tiling): same result as untiled, bounded memory, typed refusals.

Small real images (scikit-image's astronaut, odd sizes) with tiles forced far
smaller than the image, against the untiled style graph of the demo bundle.
The bundle's tiled graphs are added to one style of a copy when the session's
bundle has none (an older EMOSTYLE_TEST_BUNDLE). Speed and the 12/48 MP targets
are measured by studies/tiling/tiling.py, not here.
"""

from __future__ import annotations

import importlib.util
import json
import logging
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest

from emostyle_rt import Stylizer
from emostyle_rt.backends import make_runner
from emostyle_rt.errors import EmostyleError, InvalidArgumentError
from emostyle_rt.imaging.io import pad_to_multiple
from emostyle_rt.manifest import StyleSpec, TiledSpec, load_manifest
from emostyle_rt.tiling import (
    CALIBRATION,
    TILE_MODES,
    MemoryBudgetError,
    TiledStyle,
    cells,
    estimate_whole,
    parse_memory,
    plan,
    spool_layout,
    stats_sample,
    stats_shape,
)

from support.seams import naive, seam_ratio

EMOTION = "angry"  # the style conftest.py gives tiled graphs (TILED_EMOTION)


@pytest.fixture(scope="module")
def tiled(tiled_bundle: Path, style: StyleSpec):
    t = TiledStyle(tiled_bundle, style, provider="cpu")
    yield t
    t.close()


@pytest.fixture(scope="module")
def whole(tiled_bundle: Path, style: StyleSpec):
    r = make_runner(tiled_bundle / style.onnx, provider="cpu")
    yield lambda img: r.run({style.input_name: img[None]})[style.output_name][0]
    r.close()


@pytest.fixture(scope="module")
def photo(astronaut: np.ndarray) -> np.ndarray:
    """A real photo of an odd size (301 x 203): the face and its surroundings."""
    return cv2.resize(astronaut, (301, 203), interpolation=cv2.INTER_AREA)


def _diff(a: np.ndarray, b: np.ndarray) -> int:
    return int(np.abs(a.astype(np.int16) - b.astype(np.int16)).max())


def test_manifest_block_round_trips_and_stale_blocks_are_dropped(style: StyleSpec, caplog) -> None:
    spec = style.tiled
    assert spec is not None and spec.halo >= spec.receptive_field and spec.halo % spec.align == 0
    again = TiledSpec.from_json(json.loads(json.dumps(spec.to_json())), "styles.x", style.sha256)
    assert again == spec and again.parity == spec.parity
    assert len(spec.segments) == len(spec.norms) + 1 and spec.segments[0].stats_only
    with caplog.at_level(logging.WARNING):
        assert TiledSpec.from_json(spec.to_json(), "styles.x", "0" * 64) is None  # made from another graph
    assert "another style graph" in caplog.text


def test_exact_mode_equals_untiled(tiled: TiledStyle, whole, photo: np.ndarray) -> None:
    padded = pad_to_multiple(photo, 4)
    ref = whole(padded)
    out = tiled.run_exact(padded, strip_rows=24)  # 9 strips per layer
    assert out.shape == ref.shape and _diff(out, ref) <= 1
    assert np.mean(out != ref) < 0.01  # float error flips a rounding here and there, nothing more


def test_fast_mode_tiles_share_statistics(tiled: TiledStyle, whole, photo: np.ndarray) -> None:
    """Tiles of one fixed shape: with the image's own statistics the stitched result is the untiled one."""
    padded = pad_to_multiple(photo, 4)
    ref = whole(padded)
    a, h = tiled.spec.align, tiled.spec.halo
    window = (min(padded.shape[0], 64 + 2 * h), min(padded.shape[1], 64 + 2 * h))
    out = tiled.run_fast(padded, window=window, stats_side=None)
    assert len(cells(padded.shape[1], window[1], h, a)) > 1  # really tiled
    assert _diff(out, ref) <= 1


def test_seam_metric_sees_naive_tiles_and_none_in_shared_ones(tiled: TiledStyle, whole, astronaut: np.ndarray) -> None:
    """Naive tiles (each its own InstanceNorm statistics) show seams; tiles with shared statistics do not."""
    padded = astronaut  # 2 x 2 tiles
    spec = tiled.spec
    window = (256 + 2 * spec.halo, 256 + 2 * spec.halo)
    ys = cells(padded.shape[0], window[0], spec.halo, spec.align)
    xs = cells(padded.shape[1], window[1], spec.halo, spec.align)
    rows, cols = [c[0] for c in ys[1:]], [c[0] for c in xs[1:]]
    nai_runner = make_runner(tiled.root / tiled.style.onnx, provider="cpu")
    try:
        nai = naive(nai_runner, padded, window, spec.halo, spec.align)
    finally:
        nai_runner.close()
    fast = tiled.run_fast(padded, window=window, stats_side=None)
    seams_naive, seams_fast = seam_ratio(nai, rows, cols), seam_ratio(fast, rows, cols)
    assert max(seams_naive.values()) > 1.10, seams_naive
    assert max(seams_fast.values()) <= 1.10, seams_fast


def test_results_do_not_depend_on_threads(tiled_bundle: Path, style: StyleSpec, photo: np.ndarray) -> None:
    padded = pad_to_multiple(photo[:120, :200], 4)
    outs = {}
    for threads in (1, 2):
        t = TiledStyle(tiled_bundle, style, provider="cpu", threads=threads)
        try:
            outs[threads] = (t.run_exact(padded, strip_rows=32), t.run_fast(padded, tile=64, stats_side=64))
        finally:
            t.close()
    assert np.array_equal(outs[1][0], outs[2][0]) and np.array_equal(outs[1][1], outs[2][1])


def test_spool_on_disk_equals_ram_and_is_removed(tiled: TiledStyle, photo: np.ndarray, tmp_path: Path,
                                                 monkeypatch) -> None:
    padded = pad_to_multiple(photo, 4)
    in_ram = tiled.run_exact(padded, strip_rows=32, spool_ram=1 << 30)
    assert tiled.last_spool[1] == 0
    on_disk = tiled.run_exact(padded, strip_rows=32, spool_ram=0, spool_dir=str(tmp_path))
    assert np.array_equal(in_ram, on_disk)
    assert tiled.last_spool == (0, spool_layout(tiled.spec, *padded.shape[:2], 0)[1]) and tiled.last_spool[1] > 0
    assert list(tmp_path.iterdir()) == []  # the spool folder is gone

    calls = []
    original = type(tiled.runner(tiled.spec.segments[3])).run

    def failing(self, feed):
        calls.append(1)
        if len(calls) > 12:
            raise EmostyleError("simulated failure")
        return original(self, feed)

    monkeypatch.setattr(type(tiled.runner(tiled.spec.segments[3])), "run", failing)
    with pytest.raises(EmostyleError, match="simulated"):
        tiled.run_exact(padded, strip_rows=32, spool_ram=0, spool_dir=str(tmp_path))
    assert list(tmp_path.iterdir()) == []  # removed on error too


def test_plan_whole_when_it_fits_tiles_sized_to_budget(style: StyleSpec) -> None:
    h, w = 3000, 4000
    need = estimate_whole(style, h, w)
    assert plan(style, h, w, need).mode == "whole"
    for mode in TILE_MODES:
        p = plan(style, h, w, parse_memory("1.5GB"), mode)
        assert p.mode == mode and p.estimate <= p.budget and p.minimum <= p.budget
    fast = plan(style, h, w, parse_memory("1.5GB"), "fast")
    small = plan(style, h, w, parse_memory("600MB"), "fast")
    assert small.window[0] * small.window[1] < fast.window[0] * fast.window[1]  # tiles follow the budget
    assert all(x % style.tiled.align == 0 for x in (*fast.window, *small.window))
    # the window shape computes few pixels beyond the photo's: at 1.5 GB the 64 px halos add < 45%, where a
    # square window of the same area would need 1.67x (measured for the fixed squares this replaced)
    computed = fast.tiles * fast.window[0] * fast.window[1]
    assert computed < 1.45 * h * w, (fast.summary(), computed / (h * w))
    assert fast.tiles == len(cells(h, fast.window[0], fast.halo, 4)) * len(cells(w, fast.window[1], fast.halo, 4))
    exact = plan(style, h, w, parse_memory("400MB"), "exact")
    assert exact.spool_disk > 0 and exact.estimate <= exact.budget


def test_statistics_sample_is_full_resolution_crops_from_a_grid(astronaut: np.ndarray) -> None:
    """The fast mode's statistics image: crops of the photo at its own scale (not resized), spread over it."""
    big = cv2.resize(astronaut, (1200, 800), interpolation=cv2.INTER_CUBIC)
    sample = stats_sample(big, 512, 4)
    assert sample.shape == (*stats_shape(800, 1200, 512, 4), 3) == (256, 512, 3)  # 1 x 2 crops of 256 px
    assert sample.dtype == big.dtype and np.array_equal(sample, stats_sample(big, 512, 4))
    # each crop is a block of the photo's own pixels, from its grid cell: the left one from the left half
    for j, (x_lo, x_hi) in enumerate(((0, 600), (600, 1200))):
        crop = sample[:, j * 256:(j + 1) * 256]
        hits = [(y, x) for y in range(0, 800 - 255, 2) for x in range(0, 1200 - 255, 2)
                if np.array_equal(big[y:y + 256, x:x + 256], crop)]
        assert hits and all(x_lo <= x + 128 <= x_hi for _, x in hits), (j, hits[:3])
    wide = stats_sample(big, 1024, 4)  # 3 rows x 4 columns of 256 px
    assert wide.shape == (768, 1024, 3)
    assert stats_sample(astronaut, 1024, 4) is astronaut  # small enough: the image's own statistics
    assert stats_sample(big, None, 4) is big
    tiny = stats_sample(big[:100, :3000 // 10], 64, 4)  # crops shrink to the budgeted side
    assert tiny.shape[0] % 4 == 0 and max(tiny.shape[:2]) <= 128


def test_fast_statistics_in_strips_equal_one_run(tiled: TiledStyle, style: StyleSpec, astronaut: np.ndarray) -> None:
    """The fast mode takes the sample's statistics in one stats-graph run when the budget allows, else in strips:
    both give the same numbers, and the plan says which (a large budget: one run; a small one: strips)."""
    big = cv2.resize(astronaut, (1200, 800), interpolation=cv2.INTER_CUBIC)
    small_budget = plan(style, 800, 1200, parse_memory("250MB"), "fast", force=True, stats_side=512)
    large_budget = plan(style, 800, 1200, parse_memory("8GB"), "fast", force=True, stats_side=512)
    assert small_budget.stats_plan is not None and small_budget.stats_plan.tiles > 2  # several strips
    assert large_budget.stats_plan is None
    in_strips = tiled.sample_statistics(big, 512, small_budget.stats_plan)
    one_run = tiled.sample_statistics(big, 512, None)
    assert in_strips.keys() == one_run.keys() and len(one_run) == 2 * len(tiled.spec.norms)
    for name, value in one_run.items():
        np.testing.assert_allclose(in_strips[name], value, rtol=2e-3, atol=1e-4 * float(np.abs(value).max()), err_msg=name)


def test_cells_cover_every_pixel_once_with_fixed_windows() -> None:
    for length, window, halo in ((1000, 300, 64), (1024, 1024, 64), (204, 136, 32), (4000, 1100, 64)):
        cs = cells(length, window, halo, 4)
        assert cs[0][0] == 0 and cs[-1][1] == length
        assert all(a[1] == b[0] for a, b in zip(cs, cs[1:]))
        for a, b, start in cs:
            size = min(window, length)
            assert 0 <= start and start + size <= length  # every window has the same size, inside the image
            assert start <= max(0, a - halo) and min(length, b + halo) <= start + size  # cell + halo inside it
    with pytest.raises(MemoryBudgetError, match="halo"):
        cells(1000, 100, 64, 4)


def test_budget_too_small_is_refused_before_running(tiled_bundle: Path, astronaut: np.ndarray) -> None:
    st = Stylizer(tiled_bundle, memory_budget="20MB")
    try:
        with pytest.raises(MemoryBudgetError, match=r"at least \d+ MB") as err:
            st.stylize(astronaut, emotion=EMOTION)
        assert "Note: expected" in str(err.value)
        assert not st._tiled  # nothing was loaded, nothing ran
    finally:
        st.close()
    with pytest.raises(MemoryBudgetError, match="at least"):
        plan(load_manifest(tiled_bundle).style_for(EMOTION), 3000, 4000, 10_000_000, "fast")


def test_stylizer_tiles_over_budget_and_keeps_small_images_whole(tiled_bundle: Path, style: StyleSpec, whole,
                                                                  photo: np.ndarray, caplog) -> None:
    ref = whole(pad_to_multiple(photo, 4))[:photo.shape[0], :photo.shape[1]]
    with Stylizer(tiled_bundle, backend="onnxruntime") as st:  # default budget: this small photo goes whole, unchanged
        assert np.array_equal(st.stylize(photo, emotion=EMOTION).image, ref)
        assert not st._tiled
    with Stylizer(tiled_bundle) as st:  # the engine's own estimate (OpenVINO's is lower than onnxruntime's)
        calibration = getattr(st._style_runner(style.style_id), "memory_calibration", CALIBRATION)
    budget = estimate_whole(style, *pad_to_multiple(photo, 4).shape[:2], calibration=calibration) - 1
    with caplog.at_level(logging.INFO, logger="emostyle_rt.stylizer"), \
            Stylizer(tiled_bundle, memory_budget=budget) as st:
        res = st.stylize(photo, emotion=EMOTION)
        assert st._tiled  # went tiled
    assert "in tiles" in caplog.text and res.image.shape == photo.shape
    assert _diff(res.image, ref) <= 1  # exact mode: the untiled result



def test_stylizer_fast_mode_keeps_alpha(tiled_bundle: Path, style: StyleSpec, astronaut: np.ndarray) -> None:
    rgba = np.dstack([astronaut, np.full(astronaut.shape[:2], 77, np.uint8)])
    budget = estimate_whole(style, 512, 512, calibration=1.2) - 1  # under OpenVINO's (and onnxruntime's) estimate
    with Stylizer(tiled_bundle, memory_budget=budget, tile_mode="fast") as st:
        out = st.stylize(rgba, emotion=EMOTION).image
        assert st._tiled  # went tiled
    assert out.shape == rgba.shape and (out[..., 3] == 77).all()


def test_style_without_tiled_graphs_over_budget_names_the_fix(tiled_bundle: Path, astronaut: np.ndarray) -> None:
    m = load_manifest(tiled_bundle)
    m = replace(m, styles={k: replace(v, tiled=None) for k, v in m.styles.items()})
    with Stylizer(m, memory_budget="100MB") as st:
        with pytest.raises(MemoryBudgetError, match="--tiled"):
            st.stylize(astronaut, emotion=EMOTION)


@pytest.mark.parametrize("text,expected", [("2GB", 2 * 10**9), ("512MiB", 512 << 20), ("1.5G", 1_500_000_000),
                                           ("3000000", 3_000_000), (" 64 mib ", 64 << 20)])
def test_parse_memory(text: str, expected: int) -> None:
    assert parse_memory(text) == expected


@pytest.mark.parametrize("bad", ["lots", "-1GB", "0", "2 parsecs", "", True])
def test_parse_memory_refuses(bad) -> None:
    with pytest.raises(MemoryBudgetError, match="Note: expected"):
        parse_memory(bad)
    with pytest.raises(MemoryBudgetError):
        Stylizer.__new__(Stylizer).__init__("unused", memory_budget=bad)


def test_cli_memory_budget(tiled_bundle: Path, tmp_path: Path, astronaut: np.ndarray, capsys) -> None:
    from emostyle_rt.cli import main
    from emostyle_rt.imaging.io import write_image

    src = tmp_path / "in.png"
    write_image(src, cv2.resize(astronaut, (301, 203), interpolation=cv2.INTER_AREA))
    assert main([str(src), "-o", str(tmp_path / "bad.png"), "--bundle", str(tiled_bundle),
                 "--memory-budget", "lots"]) == 2
    assert "memory size" in capsys.readouterr().err and not (tmp_path / "bad.png").exists()
    assert main([str(src), "-o", str(tmp_path / "tiny.png"), "--bundle", str(tiled_bundle), "--emotion", EMOTION,
                 "--memory-budget", "10MB"]) != 0
    assert "at least" in capsys.readouterr().err and not (tmp_path / "tiny.png").exists()
    assert main([str(src), "-o", str(tmp_path / "out.png"), "--bundle", str(tiled_bundle), "--emotion", EMOTION,
                 "--memory-budget", "150MB", "--tile-mode", "fast"]) == 0
    assert (tmp_path / "out.png").is_file()


@pytest.mark.gpu
def test_tiled_on_gpu_matches_cpu(tiled_bundle: Path, style: StyleSpec, photo: np.ndarray) -> None:
    from emostyle_rt.backends.ort import cuda_device_count, import_onnxruntime

    if cuda_device_count() == 0 or "CUDAExecutionProvider" not in import_onnxruntime().get_available_providers():
        pytest.skip("needs onnxruntime-gpu and a CUDA GPU")
    padded = pad_to_multiple(photo, 4)
    gpu, cpu = TiledStyle(tiled_bundle, style, provider="cuda"), TiledStyle(tiled_bundle, style, provider="cpu")
    try:
        assert _diff(gpu.run_exact(padded, strip_rows=48), cpu.run_exact(padded, strip_rows=48)) <= 2
    finally:
        gpu.close()
        cpu.close()


def test_exact_mode_refuses_a_spool_the_disk_cannot_hold(tiled: TiledStyle, photo: np.ndarray, monkeypatch) -> None:
    import shutil as _shutil
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(_shutil, "disk_usage", lambda path: usage(1 << 30, 1 << 30, 1 << 20))
    with pytest.raises(MemoryBudgetError, match="spool space") as err:
        tiled.run_exact(pad_to_multiple(photo, 4), strip_rows=32, spool_ram=0)
    assert "Note: expected" in str(err.value)


@pytest.mark.skipif(importlib.util.find_spec("openvino") is None, reason="openvino is not installed")
def test_tiled_graphs_on_openvino_equal_untiled(tiled_bundle: Path, style: StyleSpec, whole, photo: np.ndarray,
                                                caplog) -> None:
    """OpenVINO runs the tiled graphs where it runs the whole one: exact mode within 1 grey level of untiled."""
    padded = pad_to_multiple(photo, 4)
    ref = whole(padded)
    tiled = TiledStyle(tiled_bundle, style, engine="openvino")
    assert _diff(tiled.run_exact(padded, strip_rows=24), ref) <= 1  # 9 strips per layer
    assert next(iter(tiled._runners.values())).name == "openvino:CPU:fp32"
    ort = TiledStyle(tiled_bundle, style)
    assert _diff(tiled.run_fast(padded, tile=96, stats_side=None), ort.run_fast(padded, tile=96, stats_side=None)) <= 1
    with pytest.raises(InvalidArgumentError, match="engine"):
        TiledStyle(tiled_bundle, style, engine="tvm")
    # The Stylizer runs its tiles in onnxruntime, whatever runs its whole graphs (see TiledStyle's docstring).
    budget = estimate_whole(style, *padded.shape[:2], calibration=1.2) - 1  # OpenVINO's estimate, less 1 byte
    with Stylizer(tiled_bundle, memory_budget=budget) as st:
        out = st.stylize(photo, emotion=EMOTION).image
        assert st._tiled[style.style_id].engine == "onnxruntime"
    assert _diff(out, ref[:photo.shape[0], :photo.shape[1]]) <= 1


def test_default_budget_keeps_a_photo_near_the_peak_target(style: StyleSpec, monkeypatch: pytest.MonkeyPatch) -> None:
    """The default keeps peak RSS at about DEFAULT_PEAK_RSS on a machine with plenty free; 75% of it when not."""
    from emostyle_rt import tiling as t

    monkeypatch.setattr(t.memory, "host_available", lambda: 20 << 30)  # a roomy machine: the peak rule decides
    assert t.default_budget(held=300 << 20) == t.DEFAULT_PEAK_RSS - (300 << 20)
    assert t.default_budget(held=5 << 30) == t.HELD_FLOOR_BUDGET  # a large process: the floor, room permitting
    monkeypatch.setattr(t.memory, "host_available", lambda: 1 << 30)  # a small machine: 75% of what it has
    assert t.default_budget(held=300 << 20) == int(0.75 * (1 << 30))
    monkeypatch.setattr(t.memory, "host_available", lambda: None)  # no /proc/meminfo: the peak rule alone
    assert t.default_budget(held=0) == t.DEFAULT_PEAK_RSS
    # What that means for photos (planner only): with OpenVINO's estimate a 2 MP photo runs whole, 12 MP in tiles.
    budget = t.DEFAULT_PEAK_RSS - (300 << 20)
    assert t.plan(style, 1224, 1632, budget, whole_calibration=1.2).mode == "whole"
    assert t.plan(style, 3000, 4000, budget, whole_calibration=1.2).mode == "exact"
    assert t.plan(style, 6000, 8000, budget).estimate <= budget  # 48 MP: tiled within it


def test_a_large_process_still_runs_photos_up_to_2mp_whole_where_the_machine_has_room(
        style: StyleSpec, monkeypatch: pytest.MonkeyPatch) -> None:
    """A notebook holding 2-5 GB (torch loaded) gets the floor: 720p and 2 MP (1920x1080) whole on OpenVINO's
    estimate, 720p whole on onnxruntime's; 12 MP still tiled. A machine without the room tiles them."""
    from emostyle_rt import tiling as t

    monkeypatch.setattr(t.memory, "host_available", lambda: 16 << 30)
    for held in (2 << 30, 5 << 30):
        budget = t.default_budget(held=held)
        assert budget == t.HELD_FLOOR_BUDGET
        assert t.plan(style, 1080, 1920, budget, whole_calibration=1.2).mode == "whole"
        assert t.plan(style, 720, 1280, budget, whole_calibration=1.2).mode == "whole"
        assert t.plan(style, 720, 1280, budget).mode == "whole"  # onnxruntime's calibration (2.5)
        assert t.plan(style, 3000, 4000, budget, whole_calibration=1.2).mode == "exact"
    monkeypatch.setattr(t.memory, "host_available", lambda: 1 << 30)  # 1 GB available: what the machine has decides
    budget = t.default_budget(held=2 << 30)
    assert budget == int(0.75 * (1 << 30))
    assert t.plan(style, 1080, 1920, budget, whole_calibration=1.2).mode == "exact"


def test_worker_budgets_add_up_to_the_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    from emostyle_rt import tiling as t

    one = t.DEFAULT_PEAK_RSS - t.TYPICAL_HELD
    assert t.worker_budget(1, available=64 << 30) == one  # plenty: each worker as one process alone
    assert t.worker_budget(8, available=8 << 30) == int(0.75 * (8 << 30)) // 8  # shared: a share each
    assert 8 * t.worker_budget(8, available=8 << 30) <= 8 << 30
    assert t.worker_budget(64, available=8 << 30) == t.MIN_DEFAULT_BUDGET
    monkeypatch.setattr(t.memory, "host_available", lambda: 4 << 30)
    assert t.worker_budget(2) == int(0.75 * (4 << 30)) // 2
    with pytest.raises(InvalidArgumentError):
        t.worker_budget(0)


@pytest.mark.parametrize("mode", ["exact", "fast"])
def test_a_tiled_image_reports_its_steps(tiled_bundle: Path, style: StyleSpec, astronaut: np.ndarray,
                                         mode: str) -> None:
    """progress(done, total) after each step of a tiled image (a 24 MP photo took minutes at "0/1 file"):
    every step counted once, in order, ending at the total; a photo styled whole takes no steps."""
    photo = np.ascontiguousarray(astronaut)
    budget = estimate_whole(style, 512, 512, calibration=1.2) - 1  # under OpenVINO's (and onnxruntime's) estimate
    calls: list[tuple[int, int]] = []
    with Stylizer(tiled_bundle, memory_budget=budget, tile_mode=mode) as st:
        st.stylize(photo, emotion=EMOTION, progress=lambda d, t: calls.append((d, t)))
        assert st._tiled  # went tiled
        total = calls[0][1]
        assert total > 1 and calls == [(k, total) for k in range(1, total + 1)], calls
        with pytest.raises(InvalidArgumentError, match="progress must be a callable"):
            st.stylize(photo, emotion=EMOTION, progress="bar")
    calls.clear()
    with Stylizer(tiled_bundle) as st:
        st.stylize(photo, emotion=EMOTION, progress=lambda d, t: calls.append((d, t)))
    assert calls == []


def test_cli_shows_the_steps_of_a_tiled_photo(tiled_bundle: Path, style: StyleSpec, tmp_path: Path,
                                              astronaut: np.ndarray,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from emostyle_rt import cli
    from emostyle_rt.imaging.io import write_image

    seen: list[tuple[str, int, int]] = []
    monkeypatch.setattr(cli._StepBar, "__call__", lambda self, d, t: seen.append((self.name, d, t)))
    src = write_image(tmp_path / "big.png", astronaut)
    assert cli.main([str(src), "-o", str(tmp_path / "out.png"), "--bundle", str(tiled_bundle), "--emotion", EMOTION,
                     "--memory-budget", str(estimate_whole(style, 512, 512, calibration=1.2) - 1),
                     "--tile-mode", "fast", "-q"]) == 0
    assert seen and seen[-1][1] == seen[-1][2] and {n for n, _, _ in seen} == {"big.png"}
