"""Tiled style inference in bounded memory, with the InstanceNorm statistics of the whole image.

A style network's memory grows with the pixels (about 1.1 kB per pixel on CPU:
12 MP needs 13 GB). Cut into tiles, each tile would get its own InstanceNorm
statistics and the tiles would differ in tone (seams). So every tile is given
the same statistics, in one of two ways (:data:`TILE_MODES`):

- ``"exact"``: the graph runs layer by layer (``segments``: the style graph cut
  before each InstanceNorm), each over the whole image in strips with that
  layer's small halo; the per-channel sums and sums of squares of the next
  InstanceNorm's input are accumulated over the strips (float64). Whole-image
  activations are spooled to a temporary folder on disk (float32 files read and
  written with ``pread``/``pwrite``, never mapped, removed at the end, also on
  error). The result equals the untiled run up to float error.
- ``"fast"``: the statistics are those of a sample of the image about
  :data:`STATS_SIDE` px on its long side: full-resolution crops of
  :data:`STATS_CROP` px from a regular grid, side by side (:func:`stats_sample`),
  taken in one run of the ``stats`` graph when the budget allows, else like the
  exact mode in strips. The ``tile`` graph (statistics as inputs) then runs on
  overlapping full-resolution tiles of one fixed shape with a halo of the
  network's receptive field, whose interiors are stitched. InstanceNorm
  statistics depend on the scale of the content, so a sample at the image's own
  scale gives closer ones than a downscaled copy of the same size (measured at
  12 MP: 34-35.5 dB PSNR against untiled, where a 1536 px copy gave 28.6-29.4
  dB; docs/tiling.md); both are approximations.

:func:`plan` decides: a run whose estimate fits the memory budget goes whole
(unchanged); one that does not is tiled with tiles sized to the budget; one that
cannot be made to fit is refused with :class:`MemoryBudgetError` naming the
minimum, before anything runs. Estimates: activation bytes per pixel come from
the graphs (``bytes_per_pixel`` in the manifest's ``tiled`` blocks, the largest
set of tensors alive at once), times :data:`CALIBRATION` (measured against
onnxruntime's peak RSS on CPU), plus the image buffers.

Only numpy, OpenCV and onnxruntime are used. See docs/tiling.md.
"""

from __future__ import annotations

import logging
import math
import os
import re
import shutil
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping

import numpy as np

from .backends import LOADERS, Lazy, load_graph
from .backends.base import Runner
from .bundle.files import bundle_path, check_sha256
from .cuda import free_memory as gpu_free  # free bytes of a CUDA device, from the driver
from .errors import BundleError, EmostyleError, InvalidArgumentError, MemoryBudgetError, note
from .manifest import StyleSpec, TiledGraph, TiledSpec

log = logging.getLogger(__name__)

#: The two ways tiles share statistics. The default is chosen by measurement (docs/tiling.md, studies/tiling/tiling.py).
TILE_MODES = ("exact", "fast")
DEFAULT_TILE_MODE = "exact"
#: Long side of the sample the fast mode takes its statistics from: at 12 MP, 1536 px (24 crops) gave 34-35.5 dB
#: against untiled where 1024 px (12 crops) gave 26-29 dB (studies/tiling_stats/tiling_stats.py, docs/tiling.md).
STATS_SIDE = 1536
#: The smallest statistics sample the fast mode shrinks to when the budget is small.
MIN_STATS_SIDE = 256
#: Side of the full-resolution crops of the fast mode's statistics sample (measured best of 128, 256, 512 px:
#: smaller crops sample the image more evenly but their borders, which the network sees, weigh more).
STATS_CROP = 256
#: The exact mode's strips hold the working set of this many pixels of its heaviest segment (lighter segments
#: get taller strips; all get smaller ones when the budget asks): big enough that onnxruntime runs at full
#: speed, small enough to leave most of the budget to the spool's RAM part.
STRIP_PIXELS = 1 << 18
#: The same for the fast mode's statistics sample: a quarter, so that the working set onnxruntime's arena keeps
#: after it is small and the tiles get most of the budget (the sample is a few % of a large photo's pixels,
#: so recomputing more halo rows there costs little).
SAMPLE_STRIP_PIXELS = STRIP_PIXELS // 4
#: Peak RSS growth of an onnxruntime CPU run per byte of the graph's live activations (``bytes_per_pixel``):
#: onnxruntime's arena rounding and convolution buffers. Measured on the demo style graph (517 B/px of live
#: activations; studies/tiling/tiling.py --calibrate): untiled 2.14x at 0.26-2.1 MP, 2.52x at 4.2 MP (the arena
#: grows by powers of two); the tile graph 2.0x (slope) at 0.26-1 MP. Rounded up, so estimates err high.
CALIBRATION = 2.5
#: The same for the exact mode's segments (one or two convolutions each, plus the strip buffers numpy holds:
#: input copy, output, statistics temporaries): 3.2x slope + 78 MB measured for one strip shape (64-256 rows
#: of 2048 px), but 4.4x in whole runs, whose segments' strips have different shapes (onnxruntime's arena
#: keeps chunks of each): 579 MB for 458 MB estimated at 3.5 (2 MP, 500 MB budget), 660 for 515 (12 MP).
SEGMENT_CALIBRATION = 4.5
#: The same for the stats graph (whose reductions keep more alive than its nodes' order shows): 4.21x at
#: 0.26 MP, 4.4x at 1 MP (studies/tiling/tiling.py --calibrate).
STATS_CALIBRATION = 4.5
#: Bytes per pixel of the image buffers a style run holds besides the graph's activations:
#: the padded input copy, the output and its cropped copy (uint8 RGB each).
IMAGE_BYTES_PER_PIXEL = 9
#: Memory a run needs whatever its size (session buffers, arena chunks, numpy temporaries).
RUN_OVERHEAD = 64 << 20
#: Activation bytes per pixel assumed for a style graph whose bundle has no tiled graphs (the
#: TransformerNet of src/emostyle_export/models, as the export measures it).
FALLBACK_BYTES_PER_PIXEL = 517.0
#: The default budget is at most this fraction of the memory available when the run starts.
BUDGET_FRACTION = 0.75
#: ... and at most what keeps the process' peak RSS at about this (the process' RSS when its Stylizer opened, plus
#: the run): a 12 MP photo no longer takes 10 GB untiled because the machine has them. Chosen by measurement at 2,
#: 12 and 48 MP (docs/tiling.md, studies/tiling/results/memory-defaults.md): with OpenVINO (557 B/px) photos up to about
#: 3.5 MP still run whole, where tiling costs the most time; larger ones go in tiles.
DEFAULT_PEAK_RSS = 2_500_000_000
#: The least budget of a worker's share (``worker_budget``; tiles of the exact mode need about 200 MB).
MIN_DEFAULT_BUDGET = 512 << 20
#: The least default budget of one process, whatever it already holds, when the machine has the room (75% of
#: MemAvailable still caps it): what a 2 MP photo (1920x1080: 1.37 GB) needs whole on the default CPU engine
#: (OpenVINO, 1.2 x 517 B/px), so such photos and 720p on onnxruntime (1.26 GB) never go to disk tiles because
#: the process is large (a notebook with torch loaded holds 2 GB and more: the 512 MB floor sent 720p to tiles).
HELD_FLOOR_BUDGET = 1_500_000_000
#: What a process holds besides a run, for budgets planned before it exists (a Stylizer with its classifier,
#: detector and a style loaded: 200-300 MB measured).
TYPICAL_HELD = 300 << 20
#: Device budget when a GPU provider runs and its free memory cannot be read.
GPU_DEFAULT_BUDGET = 4 << 30
#: A read buffer of the exact mode's spool is kept for the next segment's strips when it is at most this many
#: times what they read (so held memory stays near what the strips need; res-block strips alternate 1.48x sizes).
READ_SLACK = 1.5
#: Where the exact mode spools activations ($EMOSTYLE_SPOOL_DIR, else the system's temp folder).
SPOOL_ENV = "EMOSTYLE_SPOOL_DIR"
#: Square fast-mode windows (tile interior + halo on both sides, px) that ``plan(..., fixed_windows=True)`` snaps
#: to, so that a compiled engine (a TensorRT EP engine with a static profile) is built once per window and reused
#: for every photo size: interiors of 512, 1024 and 2048 px plus the paper network's 64 px halo each side. Three
#: sides, each about 3.5x the pixels of the one below: at most three engines per style (a build takes minutes),
#: and the recomputed halo costs 1.56x / 1.27x / 1.13x the interior's pixels. Larger windows save little (13%
#: at 2176) and need ~6 GB per tile at CALIBRATION (517 B/px); below 640 the halo would be most of the work.
#: Multiples of 64, so of any align the export finds (4 for the TransformerNet); a graph whose halo leaves no
#: align cell in a side does not use that side.
FIXED_WINDOWS = (640, 1152, 2176)

_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9,
          "t": 10**12, "tb": 10**12, "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40}


def parse_memory(value: int | float | str) -> int:
    """A memory size in bytes: an int, or text such as "2GB", "512MiB", "1.5G", "3000000000"."""
    if isinstance(value, bool):
        raise MemoryBudgetError("A memory size cannot be a bool." + note('bytes, or text such as "2GB"', repr(value)))
    if isinstance(value, (int, float)):
        if not math.isfinite(value) or value <= 0:
            raise MemoryBudgetError("A memory size must be positive." + note("bytes > 0", repr(value)))
        return int(value)
    if isinstance(value, str):
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", value)
        unit = m.group(2).lower() if m else ""
        if m and unit in _UNITS and float(m.group(1)) > 0:
            return int(float(m.group(1)) * _UNITS[unit])
    raise MemoryBudgetError(f"Cannot read the memory size {value!r}."
                            + note('a positive size such as "2GB", "512MiB", "1.5G" or bytes', repr(value)))


def format_bytes(n: float) -> str:
    """``n`` bytes for people: "1.9 GB", "412 MB"."""
    return f"{n / 1e9:.2f} GB" if n >= 1e9 else f"{n / 1e6:.0f} MB"


def host_available() -> int | None:
    """MemAvailable of /proc/meminfo in bytes (Linux); None elsewhere."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def process_rss() -> int | None:
    """This process' resident memory (VmRSS of /proc/self/status) in bytes; None where it cannot be read."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def default_budget(gpu: bool = False, *, held: int | None = None) -> int:
    """The budget when none is given.

    Host: :data:`DEFAULT_PEAK_RSS` less ``held`` (what the process held when its
    Stylizer opened; default: its RSS now), at least :data:`HELD_FLOOR_BUDGET`,
    and at most :data:`BUDGET_FRACTION` of the memory available now. So a
    large process (a notebook with torch loaded) still runs photos up to about
    2 MP whole where the machine has room; what the machine has, not what the
    process holds, decides below that. Without /proc (not Linux) only the peak
    rule applies, with ``held`` 0 unless given. GPU: :data:`BUDGET_FRACTION` of
    the device's free memory, or :data:`GPU_DEFAULT_BUDGET` when it cannot be read.
    """
    if gpu:
        free = gpu_free()
        return int(free * BUDGET_FRACTION) if free else GPU_DEFAULT_BUDGET
    held = process_rss() if held is None else held
    budget = max(HELD_FLOOR_BUDGET, DEFAULT_PEAK_RSS - (held or 0))
    avail = host_available()
    return min(budget, int(avail * BUDGET_FRACTION)) if avail else budget


def worker_budget(workers: int, available: int | None = None) -> int:
    """The default budget of each of ``workers`` processes sharing one machine (``emostyle serve --workers``, Ray
    actors): :data:`BUDGET_FRACTION` of ``available`` (default: MemAvailable now) split between them, at most what
    one process gets by default (:data:`DEFAULT_PEAK_RSS` less a typical 300 MB held), at least
    :data:`MIN_DEFAULT_BUDGET`; so the workers' budgets add up to what the machine has."""
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise InvalidArgumentError("workers must be an integer >= 1." + note(">= 1", repr(workers)))
    one = DEFAULT_PEAK_RSS - TYPICAL_HELD
    avail = host_available() if available is None else available
    if not avail:
        return one
    return max(MIN_DEFAULT_BUDGET, min(one, int(avail * BUDGET_FRACTION) // workers))


# -- planning -----------------------------------------------------------------


@dataclass(frozen=True)
class TilePlan:
    """How one style run goes: ``mode`` "whole", "fast" or "exact"; estimates in bytes.

    ``window``: the fast mode's fixed tile shape (h, w) incl. halos; ``strips``:
    the exact mode's rows per strip, one per segment; ``tiles``: runs of the tile
    graph (fast) or of all segments (exact); ``minimum``: the smallest budget
    this image runs in with ``mode`` (0 for "whole").
    """

    mode: str
    height: int  # padded to the graph's size multiple
    width: int
    estimate: int
    budget: int
    window: tuple[int, int] | None = None
    strips: tuple[int, ...] = ()
    tiles: int = 1
    halo: int = 0
    minimum: int = 0
    spool_ram: int = 0  # exact: bytes of whole-image activations kept in RAM (the rest goes to disk)
    spool_disk: int = 0  # exact: bytes written to the spool folder
    stats_side: int | None = None  # fast: long side of the statistics sample
    stats_plan: TilePlan | None = None  # fast: the exact-mode plan of its statistics sample (None: one stats run)
    working: int = 0  # exact: the strips' working set (onnxruntime's arena keeps it after the run)

    def summary(self) -> str:
        """One line for logs: mode, tiles, estimate against budget."""
        if self.mode == "fast" and self.window:
            how = f"in {self.stats_plan.tiles} strip runs" if self.stats_plan else "in one run"
            what = (f"fast, {self.tiles} tiles of {self.window[0]}x{self.window[1]}, statistics from a "
                    f"{self.stats_side} px sample {how}")
        elif self.mode == "exact":
            what = f"exact, {self.tiles} strip runs, spool {format_bytes(self.spool_disk)} on disk"
        else:
            what = "untiled"
        return (f"{self.width}x{self.height}: {what}, estimate {format_bytes(self.estimate)} of a "
                f"{format_bytes(self.budget)} budget")


def activation_bytes(bytes_per_pixel: float, pixels: int, calibration: float = CALIBRATION) -> int:
    """Estimated peak memory of one onnxruntime run of a graph with ``bytes_per_pixel`` live activations."""
    return int(calibration * bytes_per_pixel * pixels) + RUN_OVERHEAD


def estimate_whole(style: StyleSpec, height: int, width: int, batch: int = 1, calibration: float = CALIBRATION) -> int:
    """Estimated peak memory (bytes) of running ``style`` untiled on ``batch`` padded images of height x width.

    ``calibration``: the engine's peak RSS per byte of live activations (:data:`CALIBRATION` for onnxruntime;
    a runner may say its own as ``memory_calibration``, e.g. OpenVINO's 1.2).
    """
    bpp = style.tiled.bytes_per_pixel if style.tiled else FALLBACK_BYTES_PER_PIXEL
    px = height * width * batch
    return activation_bytes(bpp, px, calibration) + IMAGE_BYTES_PER_PIXEL * px


def cells(length: int, window: int, halo: int, align: int) -> list[tuple[int, int, int]]:
    """Split ``length`` into cells (start, end) and a window start each: windows of ``window`` px hold cell + halo.

    Cells are multiples of ``align`` (so are ``length``, ``window`` and ``halo``);
    every window has the same size (shifted inward at the borders), unless it
    covers the whole length. Deterministic: it depends on the sizes only.
    """
    if window >= length:
        return [(0, length, 0)]
    units = length // align
    for n in range(2, units + 1):
        base, rem = divmod(units, n)
        bounds = [0]
        for i in range(n):
            bounds.append(bounds[-1] + (base + (i < rem)) * align)
        spans = [(max(0, a - halo), min(length, b + halo)) for a, b in zip(bounds, bounds[1:])]
        if all(e - s <= window for s, e in spans):
            return [(a, b, min(max(0, a - halo), length - window)) for a, b in zip(bounds, bounds[1:])]
    raise MemoryBudgetError(f"A tile of {window} px cannot hold one {align} px cell with a {halo} px halo on each side."
                            + note(f"tiles >= {align + 2 * halo} px", window))


def _floor(x: float, align: int) -> int:
    return int(x // align) * align


def _window(height: int, width: int, room: float, halo: int, align: int, smallest: tuple[int, int]) -> tuple[int, int]:
    """The fast mode's window (h, w) of at most ``room`` pixels that computes the fewest pixels in all.

    For each number of tile rows: the window height those rows need, the widest
    window the room then allows, shrunk to what its columns need (a window larger
    than its cells plus halos only recomputes more). Deterministic; checked
    against :func:`cells`, the tiler's own split.
    """
    def span(length: int, n: int) -> int:  # the window n cells need (edge cells have one halo)
        if n == 1:
            return length
        return min(length, math.ceil(length / align / n) * align + (halo if n == 2 else 2 * halo))

    def count(length: int, window: int) -> int | None:  # cells of at most ``window`` px with their halos
        if window >= length:
            return 1
        if span(length, 2) <= window:
            return 2
        per = (window - 2 * halo) // align
        return max(3, math.ceil(length / align / per)) if per > 0 else None

    best: tuple[int, int, int] | None = None
    for rows in range(1, height // align + 1):
        wh = span(height, rows)
        if wh < smallest[0]:
            break
        cols = count(width, min(width, _floor(room / wh, align)))
        if cols is None or wh * smallest[1] > room:
            continue
        ww = span(width, cols)
        if best is None or rows * cols * wh * ww < best[0]:
            best = (rows * cols * wh * ww, wh, ww)
    if best is not None:
        wh, ww = best[1], best[2]
        try:
            if wh * ww <= room and wh >= smallest[0] and ww >= smallest[1]:
                cells(height, wh, halo, align), cells(width, ww, halo, align)
                return wh, ww
        except MemoryBudgetError:
            pass
    side = max(_floor(math.sqrt(max(room, 0)), align), smallest[0], smallest[1])  # the plain square fallback
    wh = min(height, side)
    ww = min(width, max(_floor(room / wh, align), smallest[1]))
    while wh > smallest[0] and wh * ww > room:
        wh -= align
    return wh, ww


def fixed_window(room: float, align: int, halo: int) -> int | None:
    """The largest of :data:`FIXED_WINDOWS` whose square fits ``room`` pixels and holds an ``align`` cell with its
    ``halo`` each side; None when none does."""
    fits = [s for s in FIXED_WINDOWS if s * s <= room and s % align == 0 and s >= align + 2 * halo]
    return max(fits, default=None)


def is_fixed_window(window: tuple[int, int]) -> bool:
    """Whether a tile shape (h, w) is one of the fixed square windows (a TensorRT EP engine is built for those)."""
    return window[0] == window[1] and window[0] in FIXED_WINDOWS


def plan(style: StyleSpec, height: int, width: int, budget: int, mode: str = DEFAULT_TILE_MODE, *,
         force: bool = False, stats_side: int = STATS_SIDE, fixed_windows: bool = False,
         strip_pixels: int = STRIP_PIXELS, whole_calibration: float = CALIBRATION) -> TilePlan:
    """The plan for one padded ``height`` x ``width`` image: whole if it fits ``budget`` (and not ``force``), else tiled.

    ``fixed_windows`` (fast mode; for compiled engines such as the TensorRT EP's):
    the tile window snaps down to the largest of :data:`FIXED_WINDOWS` that fits
    the budget, so every photo size uses one of a few shapes; an image smaller
    than that window in a direction, or a budget no fixed window fits, keeps the
    window it would get without. Ignored by the exact mode. ``whole_calibration``:
    the whole-graph engine's calibration (see :func:`estimate_whole`).

    MemoryBudgetError, naming the smallest budget that works, when neither fits;
    also when the bundle has no tiled graphs for ``style`` and the whole run does not fit.
    """
    if mode not in TILE_MODES:
        raise InvalidArgumentError(f"Unknown tile mode {mode!r}." + note(" or ".join(TILE_MODES), repr(mode)))
    whole = estimate_whole(style, height, width, calibration=whole_calibration)
    if whole <= budget and not force:
        return TilePlan("whole", height, width, whole, budget)
    spec = style.tiled
    if spec is None:
        raise MemoryBudgetError(
            f"A {width}x{height} image needs about {format_bytes(whole)} untiled, over the memory budget of "
            f"{format_bytes(budget)}, and style {style.style_id!r} has no tiled graphs to run it in tiles. Add them "
            f"with: emostyle-export --bundle DIR --tiled (or pass max_side / --max-side)."
            + note(f"a budget >= {format_bytes(whole)}, or tiled graphs", format_bytes(budget)))
    images = IMAGE_BYTES_PER_PIXEL * height * width
    a, h = spec.align, spec.halo
    if mode == "fast":
        # The statistics of the sample come from one run of the stats graph when that takes at most a quarter
        # of the budget (fast, but 4.5x its activations), else from the exact mode run on the sample (strips,
        # bounded memory; its spool is freed before the tiles run). What stays is onnxruntime's arena holding
        # that run's working set, so the tiles get the budget less the images and that. The exact run gets half
        # the budget (its strips shrink to fit), and the sample shrinks (from stats_side down to
        # MIN_STATS_SIDE) only when even its smallest strips do not fit in that.
        side = stats_side
        while True:
            s = stats_shape(height, width, side, a)
            try:
                sp = plan(style, s[0], s[1], (budget - images) // 2, "exact", force=True,
                          strip_pixels=SAMPLE_STRIP_PIXELS)
                break
            except MemoryBudgetError:
                if side <= MIN_STATS_SIDE:
                    raise _too_small(height, width, budget, images + 2 * _exact_minimum(spec, *s), mode) from None
                side = max(MIN_STATS_SIDE, side * 3 // 4)
        one_run = activation_bytes(spec.stats.bytes_per_pixel, s[0] * s[1], STATS_CALIBRATION)
        kept, stats_est, stats_plan = sp.working, sp.estimate, sp
        if one_run <= (budget - images) // 4:
            kept, stats_est, stats_plan = one_run, one_run, None
        min_win = (min(height, a + 2 * h), min(width, a + 2 * h))
        s_min = stats_shape(height, width, MIN_STATS_SIDE, a)
        minimum = images + max(2 * _exact_minimum(spec, *s_min), _exact_minimum(spec, *s_min)
                               + activation_bytes(spec.tile.bytes_per_pixel, min_win[0] * min_win[1]))
        room = (budget - images - kept - RUN_OVERHEAD) / (CALIBRATION * max(spec.tile.bytes_per_pixel, 1.0))
        if budget < minimum:
            raise _too_small(height, width, budget, minimum, mode)
        fixed = fixed_window(room, a, h) if fixed_windows else None
        if fixed is not None and fixed <= min(height, width):  # one engine per fixed window, for every photo size
            wh = ww = fixed
        else:
            wh, ww = _window(height, width, room, h, a, min_win)
        ys, xs = cells(height, wh, h, a), cells(width, ww, h, a)
        est = max(images + stats_est, images + kept + activation_bytes(spec.tile.bytes_per_pixel, wh * ww))
        if est > budget:  # the smallest tile beside the statistics run's arena does not fit
            raise _too_small(height, width, budget, max(minimum, est), mode)
        return TilePlan("fast", height, width, est, budget, window=(wh, ww), tiles=len(ys) * len(xs), halo=h,
                        minimum=minimum, stats_side=max(s), stats_plan=stats_plan)
    strips, worst, runs = [], 0, 0
    # Every segment's strip (halos included) holds about the working set of strip_pixels of the heaviest
    # segment: light ones (quarter resolution, most of the arithmetic) get taller strips, so their halo
    # rows are recomputed less often (64-row strips with 4-row halos recompute 12.5%).
    cap = SEGMENT_CALIBRATION * max(max(g.bytes_per_pixel, 1.0) for g in spec.segments) * strip_pixels
    for g in spec.segments:
        per_row = SEGMENT_CALIBRATION * max(g.bytes_per_pixel, 1.0) * width
        target = _floor(cap / per_row - 2 * g.halo, a)
        rows = min(height, target, _floor((budget - images - RUN_OVERHEAD) / per_row - 2 * g.halo, a))
        rows = max(rows, a)
        strips.append(rows)
        runs += math.ceil(height / rows)
        worst = max(worst, activation_bytes(g.bytes_per_pixel, width * min(height, rows + 2 * g.halo),
                                            SEGMENT_CALIBRATION))
    minimum = _exact_minimum(spec, height, width)
    if budget < minimum:
        raise _too_small(height, width, budget, minimum, mode)
    ram = max(0, budget - images - worst)
    peak, disk, _ = spool_layout(spec, height, width, ram)
    return TilePlan("exact", height, width, images + worst + peak, budget, strips=tuple(strips), tiles=runs, halo=h,
                    minimum=minimum, spool_ram=ram, spool_disk=disk, working=worst)


def _exact_minimum(spec: TiledSpec, height: int, width: int) -> int:
    """The smallest budget the exact mode runs a padded ``height`` x ``width`` image in (its thinnest strips)."""
    return IMAGE_BYTES_PER_PIXEL * height * width + max(
        activation_bytes(g.bytes_per_pixel, width * min(height, spec.align + 2 * g.halo), SEGMENT_CALIBRATION)
        for g in spec.segments)


def _too_small(height: int, width: int, budget: int, minimum: int, mode: str) -> MemoryBudgetError:
    return MemoryBudgetError(
        f"The memory budget of {format_bytes(budget)} is too small to style a {width}x{height} image, even in the "
        f"smallest tiles ({mode} mode)." + note(f"a budget of at least {format_bytes(minimum)} ({minimum} bytes)",
                                                format_bytes(budget)))


def stats_shape(height: int, width: int, side: int | None, align: int) -> tuple[int, int]:
    """The size of the fast mode's statistics sample: long side about ``side`` (None or larger: the image itself).

    A grid of :func:`stats_crop` px crops, as many rows and columns as the image's
    shape scaled to a long side of ``side`` holds (at least one each).
    """
    if side is None or max(height, width) <= side:
        return height, width
    crop = stats_crop(height, width, side, align)
    s = side / max(height, width)
    return max(1, round(height * s / crop)) * crop, max(1, round(width * s / crop)) * crop


def stats_crop(height: int, width: int, side: int, align: int) -> int:
    """Side of the statistics sample's crops: :data:`STATS_CROP`, less when the image or ``side`` is smaller."""
    return max(align, _floor(min(STATS_CROP, side, height, width), align))


def stats_sample(image: np.ndarray, side: int | None, align: int) -> np.ndarray:
    """The fast mode's statistics image: full-resolution crops from a regular grid over ``image``, side by side.

    Crop (i, j) is the one centred in cell (i, j) of a rows x columns grid over
    the image, so neighbouring crops come from neighbouring places. The image
    itself when it is no larger than ``side``. Deterministic (sizes only).
    """
    hgt, wid = image.shape[:2]
    sh, sw = stats_shape(hgt, wid, side, align)
    if (sh, sw) == (hgt, wid):
        return image
    crop = stats_crop(hgt, wid, side or max(hgt, wid), align)
    rows, cols = sh // crop, sw // crop
    out = np.empty((sh, sw) + image.shape[2:], image.dtype)
    for i in range(rows):
        y = min(max(0, round((i + 0.5) * hgt / rows) - crop // 2), hgt - crop)
        for j in range(cols):
            x = min(max(0, round((j + 0.5) * wid / cols) - crop // 2), wid - crop)
            out[i * crop:(i + 1) * crop, j * crop:(j + 1) * crop] = image[y:y + crop, x:x + crop]
    return out


# -- the spool (exact mode) ---------------------------------------------------


class _Spool:
    """Whole-image float32 activations (C x H x W each): in RAM up to ``ram_limit`` bytes, else in files.

    A tensor goes to RAM when it fits beside those already there when it is
    created, else to a file in a temporary folder, written and read by rows with
    pwrite/preadv (not memory-mapped: mapped pages would count in the process'
    RSS). The decision depends on the sizes only (:func:`spool_layout` predicts
    it). :meth:`close` removes the folder (also on error).
    """

    def __init__(self, ram_limit: int = 0, root: str | None = None) -> None:
        self.ram_limit, self.ram_used, self.ram_peak, self.disk_bytes = ram_limit, 0, 0, 0
        self._root = root
        self.dir: str | None = None
        self._ram: dict[str, np.ndarray] = {}
        self._free: list[np.ndarray] = []  # dropped RAM tensors' buffers, kept for reuse within the limit
        self._files: dict[str, tuple[int, int, int, int]] = {}  # name -> (fd, C, H, W)
        self._reads: dict[str, np.ndarray] = {}  # name -> the flat buffer its strips are read into (this segment)
        self._read_pool: list[np.ndarray] = []  # the last segment's read buffers, kept for the next one
        self._made = 0

    def create(self, name: str, channels: int, height: int, width: int) -> None:
        size = 4 * channels * height * width
        shape = (channels, height, width)
        if self.ram_used + size <= self.ram_limit:
            # a dropped tensor's buffer of the same shape is reused (its pages are mapped already: a fresh one
            # costs a page fault per 4 kB); others are let go, oldest first, while they and the new one would not
            # fit (held memory never exceeds the limit)
            buf = next((b for b in self._free if b.shape == shape), None)
            self._free = [b for b in self._free if b is not buf]
            while self._free and sum(b.nbytes for b in self._free) + self.ram_used + size > self.ram_limit:
                self._free.pop(0)
            self._ram[name] = buf if buf is not None else np.empty(shape, np.float32)
            self.ram_used += size
            self.ram_peak = max(self.ram_peak, self.ram_used)
            return
        if self.dir is None:
            self.dir = tempfile.mkdtemp(prefix="emostyle-tiles-", dir=spool_root(self._root))
        path = os.path.join(self.dir, f"t{self._made}.f32")
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        self._made += 1
        try:  # unlinked at once: its space comes back when it is dropped, or when the process dies
            os.unlink(path)
        except OSError:  # Windows cannot unlink an open file: close() removes the folder
            pass
        self.disk_bytes += size
        self._files[name] = (fd, channels, height, width)

    def __contains__(self, name: str) -> bool:
        return name in self._files or name in self._ram

    def write(self, name: str, row: int, block: np.ndarray) -> None:
        """Rows ``row:row + block.shape[1]`` of every channel from ``block`` (C x rows x W, float32)."""
        if name in self._ram:
            self._ram[name][:, row:row + block.shape[1]] = block
            return
        fd, c, h, w = self._files[name]
        for ch in range(c):
            data = memoryview(np.ascontiguousarray(block[ch], np.float32)).cast("B")
            offset, done = (ch * h + row) * w * 4, 0
            while done < len(data):
                done += os.pwrite(fd, data[done:], offset + done)

    def read(self, name: str, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop`` of every channel as a 1 x C x rows x W float32 array.

        The array is a view of a buffer that this tensor's next read reuses (a
        strip's input is used before the next strip is read), and, after
        :meth:`release_reads`, the next segment's reads: a fresh buffer of a
        strip's size costs a page fault per page on every read (measured on this
        project's KVM machine: 0.9 s for 384 MB fresh, 0.06 s mapped). A kept
        buffer is at most :data:`READ_SLACK` times the read it serves.
        """
        src = self._ram.get(name)
        c, w = (src.shape[0], src.shape[2]) if src is not None else self._files[name][1::2]
        shape = (1, c, stop - start, w)
        out = self._read_buffer(name, c * (stop - start) * w)[:c * (stop - start) * w].reshape(shape)
        if src is not None:
            np.copyto(out[0], src[:, start:stop])
            return out
        fd, c, h, w = self._files[name]
        for ch in range(c):
            view = memoryview(out[0, ch]).cast("B")
            offset, done = (ch * h + start) * w * 4, 0
            while done < len(view):
                n = os.preadv(fd, [view[done:]], offset + done)
                if n <= 0:
                    raise EmostyleError(f"The tile spool {self.dir} was truncated while running (disk full?)."
                                        + note(f"{len(view)} bytes", done))
                done += n
        return out

    def drop(self, name: str) -> None:
        if name in self._ram:
            buf = self._ram.pop(name)
            self.ram_used -= buf.nbytes
            self._free.append(buf)  # kept for reuse; create() lets it go before the limit is passed
        else:
            os.close(self._files.pop(name)[0])

    def _read_buffer(self, name: str, count: int) -> np.ndarray:
        """A flat float32 buffer of at least ``count`` items for reads of ``name``: its own, a kept one, or new."""
        buf = self._reads.get(name)
        if buf is None or buf.size < count:
            fits = [b for b in self._read_pool if b.size >= count]
            buf = min(fits, key=lambda b: b.size) if fits else np.empty(count, np.float32)
            self._read_pool = [b for b in self._read_pool if b is not buf]
            self._reads[name] = buf  # a smaller one of this name is let go
        return buf

    def release_reads(self, sizes: Iterable[int] = ()) -> None:
        """End of a segment: its read buffers are let go, but for one per item count in ``sizes`` (the next
        segment's reads of one strip) of at least that and at most :data:`READ_SLACK` times it, kept for them."""
        pool, self._reads = list(self._read_pool) + list(self._reads.values()), {}
        self._read_pool = []
        for count in sorted(sizes, reverse=True):
            fits = [b for b in pool if count <= b.size <= READ_SLACK * count]
            if fits:
                buf = min(fits, key=lambda b: b.size)
                pool = [b for b in pool if b is not buf]
                self._read_pool.append(buf)

    def close(self) -> None:
        for name in list(self._files) + list(self._ram):
            self.drop(name)
        self._free, self._reads, self._read_pool = [], {}, []
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)


def _row_sums(block: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel sum and sum of squares (float64) of a C x rows x W float32 block.

    Each row's sums are taken in float32 (numpy's pairwise sum; an einsum for the
    squares, which makes no squared copy), then added up in float64: one pass
    over the block instead of three, and as accurate as the pairwise sum over the
    whole strip (measured: relative error 2e-8 against float64 sums).
    """
    rows = block.reshape(block.shape[0], -1, block.shape[-1])
    s1 = rows.sum(axis=2, dtype=np.float32).sum(axis=1, dtype=np.float64)
    s2 = np.einsum("crw,crw->cr", rows, rows).sum(axis=1, dtype=np.float64)
    return s1, s2


def _spool_events(spec: TiledSpec) -> Iterator[tuple[int, str, Any]]:
    """(segment, "create" | "drop", tensor) in the order the exact mode does them."""
    segs = spec.segments
    last_use = {t.name: i for i, g in enumerate(segs) for t in g.inputs}
    for i, g in enumerate(segs):
        if i < len(segs) - 1 and not g.stats_only:
            for t in g.outputs:
                yield i, "create", t
        for t in g.inputs:
            if last_use.get(t.name) == i and t.name != segs[0].inputs[0].name:
                yield i, "drop", t


def spool_layout(spec: TiledSpec, height: int, width: int, ram_limit: int) -> tuple[int, int, int]:
    """(peak RAM, bytes written to disk, peak bytes on disk) of the exact mode's spool, as :class:`_Spool` places it."""
    used = peak = disk = on_disk = disk_peak = 0
    where: dict[str, int] = {}
    files: dict[str, int] = {}
    for _, what, t in _spool_events(spec):
        size = 4 * t.channels * (height // t.scale) * (width // t.scale)
        if what == "create":
            if used + size <= ram_limit:
                used += size
                peak = max(peak, used)
                where[t.name] = size
            else:
                disk += size
                on_disk += size
                files[t.name] = size
                disk_peak = max(disk_peak, on_disk)
        elif t.name in where:
            used -= where.pop(t.name)
        elif t.name in files:
            on_disk -= files.pop(t.name)
    return peak, disk, disk_peak


def spool_root(spool_dir: str | None = None) -> str:
    """The folder the spool's temporary folder goes into: ``spool_dir``, else $EMOSTYLE_SPOOL_DIR, else the temp folder."""
    return spool_dir or os.environ.get(SPOOL_ENV) or tempfile.gettempdir()


# -- running ------------------------------------------------------------------


#: ``progress(done, total)``: the steps of one tiled image.
Progress = Callable[[int, int], None]


class _Ticks:
    """Counts steps and tells ``progress(done, total)`` after each."""

    def __init__(self, progress: Progress, total: int) -> None:
        self.progress, self.total, self.done = progress, total, 0

    def __call__(self) -> None:
        self.done += 1
        self.progress(self.done, self.total)


class TiledStyle:
    """The tiled graphs of one style, loaded on first use (onnxruntime; sha256 checked when a graph loads).

    ``provider``: as ``make_runner`` ("cpu", "cuda", None: the best usable, the
    TensorRT EP aside), or "tensorrt": the tile graph runs on onnxruntime's
    TensorRT EP at the fixed windows (:data:`FIXED_WINDOWS`), one engine per
    window with a static profile, cached under ``cache_dir`` (the user cache
    folder, never the bundle); every other window, the stats graph and the exact
    mode's segments (shapes that change with each photo) run on the CUDA EP.
    Without a usable TensorRT EP: one warning, and all run on CUDA (else CPU).
    ``threads``: onnxruntime intra-op threads (0: onnxruntime's default).
    ``engine``: "onnxruntime" (what the Stylizer uses), or "openvino" (CPU: the
    stats, tile and segment graphs on OpenVINO's CPU plugin at f32; the GPU
    providers are then not used). Not the default: measured at 12 MP, exact
    mode, 2.33 GB budget, OpenVINO peaked at 5.8 GB RSS (its dynamic-shape
    strip runs keep far more than the calibrated estimate) and took 2.0x the
    untiled run's CPU time; results within 1 grey level of untiled.
    """

    def __init__(self, bundle: str | os.PathLike, style: StyleSpec, *, provider: str | None = None,
                 threads: int = 0, verify: bool = True, cache_dir: str | os.PathLike | None = None,
                 engine: str = "onnxruntime") -> None:
        if engine not in LOADERS:
            raise InvalidArgumentError(f"Unknown engine {engine!r} for tiled graphs."
                                       + note(" or ".join(LOADERS), repr(engine)))
        self.engine = engine
        if style.tiled is None:
            raise BundleError(f"Style {style.style_id!r} has no tiled graphs."
                              + note("a tiled block (emostyle-export --bundle DIR --tiled)", "none"))
        self.root, self.style, self.spec = Path(bundle), style, style.tiled
        self.tensorrt = provider == "tensorrt"  # tile graph at fixed windows on the TensorRT EP
        if provider in (None, "tensorrt"):
            from .backends.ort import changing_shapes_provider, tensorrt_ep_refusal

            rest = changing_shapes_provider(provider)
            if self.tensorrt:
                exc = tensorrt_ep_refusal()
                if exc is None:
                    log.info("Tiled graphs of %s: the tile graph at fixed windows (%s px squares) on the TensorRT "
                             "EP; other windows, the statistics graph and the exact mode's segments on %s (their "
                             "shapes change with each photo: an engine each would be rebuilt for every size).",
                             style.style_id, ", ".join(map(str, FIXED_WINDOWS)), rest)
                else:
                    log.warning("The TensorRT EP is not usable for the tiled graphs of %s (%s); they run on %s.",
                                style.style_id, exc, rest)
                    self.tensorrt = False
            provider = rest
        self.provider, self.threads, self.verify, self.cache_dir = provider, threads, verify, cache_dir
        self._lock = threading.RLock()
        self._runners: Lazy[str, Runner] = Lazy(self._lock)
        self._tile_runners: Lazy[tuple[int, int], Runner] = Lazy(self._lock)  # TensorRT EP, one per fixed window
        self._verified: set[str] = set()
        self.last_spool: tuple[int, int] = (0, 0)  # (peak RAM, bytes on disk) of the last exact run

    def _path(self, graph: TiledGraph) -> Path:
        """The graph's file, its sha256 checked against the manifest once (when ``verify``)."""
        path = bundle_path(self.root, graph.onnx)  # the bundle format's path rule and sha256 check
        if self.verify and graph.onnx not in self._verified:
            check_sha256(path, graph.sha256)
            self._verified.add(graph.onnx)
        return path

    def runner(self, graph: TiledGraph) -> Runner:
        # onnxruntime's provider; another engine (OpenVINO: its CPU plugin) chooses its own device
        return self._runners.load(graph.onnx, lambda: load_graph(
            self._path(graph), backend=self.engine, threads=self.threads, cache=self.cache_dir,
            provider=self.provider if self.engine == "onnxruntime" else None))

    def tile_runner(self, window: tuple[int, int]) -> Runner:
        """The tile graph's runner for tiles of ``window`` (h, w): a TensorRT EP engine for a fixed window, else
        :meth:`runner`'s (CUDA EP or CPU)."""
        if not (self.tensorrt and is_fixed_window(window)):
            return self.runner(self.spec.tile)
        r = self._tile_runners.load(window, lambda: self._tensorrt_runner(window) if self.tensorrt else None)
        return r if r is not None else self.runner(self.spec.tile)

    def _tensorrt_runner(self, window: tuple[int, int]) -> Runner | None:
        """The tile graph on the TensorRT EP with the static profile min = opt = max = (1, h, w, C); None (one
        warning, and the TensorRT EP is not tried again) when onnxruntime cannot create it."""
        from .backends import FailoverRunner
        from .backends import ort as ortb
        from .backends.base import cache_dir
        from .engines import Profile

        g = self.spec.tile
        path = self._path(g)
        shape = (1, window[0], window[1], g.inputs[0].channels)
        opts = ortb.trt_ep_options(cache_dir(self.cache_dir), graph_sha256=g.sha256,
                                   profile=Profile(g.inputs[0].name, shape, shape, shape))
        # one engine file per window: the EP's cache key is the graph, not its input shapes, so windows sharing a
        # prefix would overwrite (and rebuild) each other's engine
        opts["trt_engine_cache_prefix"] += f"_{window[0]}x{window[1]}"
        try:
            engine = load_graph(path, provider="tensorrt", threads=self.threads,
                                provider_options={ortb.PROVIDERS["tensorrt"]: opts})
            # the TensorRT EP may build (and fail) on the first run, not at load: then the tiles go to runner()
            return FailoverRunner(engine, lambda: self.runner(g), on_failover=self._tensorrt_failed, logger=log,
                                  what=f"The TensorRT EP failed to run the tile graph of {self.style.style_id} at "
                                       f"{window[1]}x{window[0]}", fallback_name=f"the tiles run on {self.provider}")
        except EmostyleError as exc:
            log.warning("The TensorRT EP cannot run the tile graph of %s at %dx%d (%s); the tiles run on %s.",
                        self.style.style_id, window[1], window[0], exc, self.provider)
            self.tensorrt = False
            return None

    def close(self) -> None:
        with self._lock:
            runners = self._runners.drain() + self._tile_runners.drain()
        for r in runners:
            r.close()

    def run(self, padded: np.ndarray, p: TilePlan, progress: Progress | None = None) -> np.ndarray:
        """Style one padded HxWx3 uint8 image as planned (``p.mode`` "fast" or "exact"). ``progress(done, total)``
        after each step (a tile, or a strip of a segment; the statistics' strips included)."""
        if p.mode == "fast":
            return self.run_fast(padded, window=p.window, stats_side=p.stats_side, stats_plan=p.stats_plan,
                                 progress=progress)
        if p.mode == "exact":
            return self.run_exact(padded, strips=p.strips, spool_ram=p.spool_ram, progress=progress)
        raise InvalidArgumentError(f"A {p.mode!r} plan is not a tiled one." + note("fast or exact", p.mode))

    # fast ------------------------------------------------------------------

    def statistics(self, padded: np.ndarray, stats_side: int | None = STATS_SIDE) -> dict[str, np.ndarray]:
        """Mean and variance of every InstanceNorm input, from :func:`stats_sample` (``stats_side`` None: the image)."""
        spec = self.spec
        sample = stats_sample(padded, stats_side, spec.align)
        outs = self.runner(spec.stats).run({spec.stats.inputs[0].name: np.ascontiguousarray(sample)[None]})
        return {name: outs[name].astype(np.float32).reshape(1, -1, 1, 1) for n in spec.norms for name in (n.mean, n.var)}

    def sample_statistics(self, padded: np.ndarray, stats_side: int | None = STATS_SIDE,
                          stats_plan: TilePlan | None = None, tick: Callable[[], None] | None = None
                          ) -> dict[str, np.ndarray]:
        """The fast mode's statistics: those of :func:`stats_sample`.

        ``stats_plan``: the exact-mode plan for the sample (a fast plan's: strips,
        bounded memory); None: one run of the stats graph. ``tick()`` after each step.
        """
        if stats_plan is None:
            stats = self.statistics(padded, stats_side)
            if tick is not None:
                tick()
            return stats
        sample = stats_sample(padded, stats_side, self.spec.align)
        if stats_plan is not None and (stats_plan.height, stats_plan.width) != sample.shape[:2]:
            raise InvalidArgumentError("The statistics plan is for another sample size."
                                       + note(f"{sample.shape[1]}x{sample.shape[0]}",
                                              f"{stats_plan.width}x{stats_plan.height}"))
        return self.exact_statistics(sample, strips=stats_plan.strips, spool_ram=stats_plan.spool_ram, tick=tick)

    def _strip_count(self, hgt: int, strips: tuple[int, ...] | None, strip_rows: int | None, output: bool) -> int:
        """How many strips :meth:`_layers` runs (its steps)."""
        a = self.spec.align
        segs = self.spec.segments if output else self.spec.segments[:-1]
        rows_per = strips if strips is not None else (max(a, _floor(strip_rows or hgt, a)),) * len(segs)
        return sum(math.ceil(hgt / min(hgt, rows_per[i])) for i in range(len(segs)))

    def run_fast(self, padded: np.ndarray, *, window: tuple[int, int] | None = None, tile: int | None = None,
                 stats_side: int | None = STATS_SIDE, stats: Mapping[str, np.ndarray] | None = None,
                 stats_plan: TilePlan | None = None, progress: Progress | None = None) -> np.ndarray:
        """Tiles of one fixed ``window`` (or interiors of about ``tile`` px), statistics of :func:`stats_sample`.
        ``progress(done, total)`` after each tile and each step of the statistics."""
        spec, g = self.spec, self.spec.tile
        hgt, wid = padded.shape[:2]
        if window is None:
            t = max(spec.align, _floor(tile or STATS_SIDE, spec.align)) + 2 * spec.halo
            window = (min(hgt, t), min(wid, t))
        grid = list(self._grid(hgt, wid, window))
        tick = None
        if progress is not None:
            side = stats_sample(padded, stats_side, spec.align).shape[0] if stats_plan is not None else 0
            first = 0 if stats is not None else self._strip_count(side, stats_plan.strips, None, False) \
                if stats_plan is not None else 1
            tick = _Ticks(progress, first + len(grid))
        stats = dict(stats) if stats is not None else self.sample_statistics(padded, stats_side, stats_plan, tick)
        shape = (min(window[0], hgt), min(window[1], wid))
        runner = self.tile_runner(shape)
        name_in, name_out = g.inputs[0].name, g.outputs[0].name
        out = np.empty_like(padded)
        for (y0, y1, wy), (x0, x1, wx) in grid:
            tile_in = np.ascontiguousarray(padded[wy:wy + shape[0], wx:wx + shape[1]])[None]
            res = runner.run({name_in: tile_in, **stats})[name_out][0]  # a TensorRT EP runner fails over itself
            out[y0:y1, x0:x1] = res[y0 - wy:y1 - wy, x0 - wx:x1 - wx]
            if tick is not None:
                tick()
        return out

    def _tensorrt_failed(self) -> None:
        """After a TensorRT EP tile run failed (its :class:`FailoverRunner` warned once): no TensorRT EP from now
        on, the other windows' engine runners closed."""
        with self._lock:
            self.tensorrt = False
            runners = self._tile_runners.drain()
        for r in runners:
            r.close()

    def _grid(self, hgt: int, wid: int, window: tuple[int, int]) -> Iterator[tuple[tuple[int, int, int], ...]]:
        a, h = self.spec.align, self.spec.halo
        for ycell in cells(hgt, window[0], h, a):
            for xcell in cells(wid, window[1], h, a):
                yield ycell, xcell

    # exact -----------------------------------------------------------------

    def run_exact(self, padded: np.ndarray, *, strips: tuple[int, ...] | None = None, strip_rows: int | None = None,
                  spool_ram: int = 0, spool_dir: str | None = None, progress: Progress | None = None) -> np.ndarray:
        """Layer by layer over the whole image in full-width strips, statistics accumulated exactly.

        ``strips``: rows per strip for each segment (a plan's); ``strip_rows``: the
        same for all. ``spool_ram``: bytes of activations kept in RAM (the rest
        goes to files in ``spool_dir``). ``progress(done, total)``: after each strip of each segment.
        """
        tick = None if progress is None else _Ticks(
            progress, self._strip_count(padded.shape[0], strips, strip_rows, True))
        return self._layers(padded, strips, strip_rows, spool_ram, spool_dir, tick, output=True)[0]

    def exact_statistics(self, padded: np.ndarray, *, strips: tuple[int, ...] | None = None,
                         strip_rows: int | None = None, spool_ram: int = 0, spool_dir: str | None = None,
                         tick: Callable[[], None] | None = None) -> dict[str, np.ndarray]:
        """The exact mode up to the last InstanceNorm: every one's mean and variance, as the tile graph's feed
        (``tick()`` after each strip)."""
        stats = self._layers(padded, strips, strip_rows, spool_ram, spool_dir, tick, output=False)[1]
        return {name: value for k, n in enumerate(self.spec.norms) for name, value in zip((n.mean, n.var), stats[k])}

    def _layers(self, padded: np.ndarray, strips: tuple[int, ...] | None, strip_rows: int | None, spool_ram: int,
                spool_dir: str | None, progress: Callable[[], None] | None, *, output: bool
                ) -> tuple[np.ndarray | None, dict[int, tuple[np.ndarray, np.ndarray]]]:
        """Run the segments in strips (all, or without the last when not ``output``): (styled image, statistics)."""
        spec = self.spec
        hgt, wid = padded.shape[:2]
        a = spec.align
        segs = spec.segments if output else spec.segments[:-1]
        rows_per = strips if strips is not None else (max(a, _floor(strip_rows or hgt, a)),) * len(segs)
        image = segs[0].inputs[0].name
        norm_of = {n.tensor: k for k, n in enumerate(spec.norms)}
        stats: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        disk_peak = spool_layout(spec, hgt, wid, spool_ram)[2]
        if disk_peak:
            root = spool_root(spool_dir)
            try:
                free = shutil.disk_usage(root).free
            except OSError as exc:
                raise MemoryBudgetError(f"The spool folder {root} cannot be used: {exc}."
                                        + note(f"a writable folder ({SPOOL_ENV})", "none")) from exc
            if free < disk_peak + (256 << 20):
                raise MemoryBudgetError(
                    f"The exact mode needs {format_bytes(disk_peak)} of spool space in {root} for a {wid}x{hgt} image "
                    f"within this memory budget, and the disk has less free. Set {SPOOL_ENV} to a larger disk, or "
                    f"give a larger memory budget (more of the spool stays in RAM)."
                    + note(format_bytes(disk_peak + (256 << 20)), f"{format_bytes(free)} free"))
        out = np.empty_like(padded) if output else None
        spool = _Spool(spool_ram, spool_dir)
        events = list(_spool_events(spec))
        try:
            for i, g in enumerate(segs):
                runner = self.runner(g)
                # statistics only: the last segment run gives the last statistics; nothing reads its outputs
                store = not g.stats_only and (output or i < len(segs) - 1)
                feed_stats: dict[str, np.ndarray] = {}
                if g.norm is not None:
                    n = spec.norms[g.norm]
                    feed_stats = dict(zip((n.mean, n.var), stats[g.norm]))
                for _, what, t in (e for e in events if e[0] == i and e[1] == "create" and store):
                    spool.create(t.name, t.channels, hgt // t.scale, wid // t.scale)
                sums = {t.name: [0.0, 0.0] for t in g.outputs if t.name in norm_of}
                step = min(hgt, rows_per[i])
                for y0 in range(0, hgt, step):
                    y1 = min(hgt, y0 + step)
                    ya, yb = max(0, y0 - g.halo), min(hgt, y1 + g.halo)
                    feed = dict(feed_stats)
                    for t in g.inputs:
                        feed[t.name] = (np.ascontiguousarray(padded[ya:yb])[None] if t.name == image
                                        else spool.read(t.name, ya // t.scale, yb // t.scale))
                    res = runner.run(feed)
                    del feed
                    for t in g.outputs:
                        r0, r1 = (y0 - ya) // t.scale, (y1 - ya) // t.scale
                        if out is not None and i == len(segs) - 1:  # the styled image (NHWC uint8)
                            out[y0:y1] = res[t.name][0, r0:r1]
                            continue
                        block = res[t.name][0, :, r0:r1]
                        if t.name in sums:  # float32 sums per row (no temporaries), accumulated in float64
                            s1, s2 = _row_sums(block)
                            sums[t.name][0] += s1
                            sums[t.name][1] += s2
                        if store:
                            spool.write(t.name, y0 // t.scale, block)
                    del res
                    if progress is not None:
                        progress()
                for name, (s1, s2) in sums.items():
                    t = next(t for t in g.outputs if t.name == name)
                    count = (hgt // t.scale) * (wid // t.scale)
                    mean = s1 / count
                    var = np.maximum(s2 / count - mean * mean, 0.0)
                    stats[norm_of[name]] = (mean.astype(np.float32).reshape(1, -1, 1, 1),
                                            var.astype(np.float32).reshape(1, -1, 1, 1))
                for _, what, t in (e for e in events if e[0] == i and e[1] == "drop"):
                    if t.name in spool:
                        spool.drop(t.name)
                if i + 1 < len(segs):  # keep read buffers for the next segment's strips (same sizes, mostly)
                    nxt = segs[i + 1]
                    rows = min(hgt, min(hgt, rows_per[i + 1]) + 2 * nxt.halo)
                    spool.release_reads(t.channels * (rows // t.scale) * (wid // t.scale)
                                        for t in nxt.inputs if t.name != image)
                log.debug("exact mode: segment %d/%d done (%s in RAM, %s on disk)", i + 1, len(segs),
                          format_bytes(spool.ram_used), format_bytes(spool.disk_bytes))
            log.debug("exact mode: spool peak %s in RAM, %s on disk", format_bytes(spool.ram_peak),
                      format_bytes(spool.disk_bytes))
            self.last_spool = (spool.ram_peak, spool.disk_bytes)
        finally:
            spool.close()
        return out, stats
