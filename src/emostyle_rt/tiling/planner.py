"""The tiling planner: whole, fast or exact, with tiles or strips sized to a memory budget, refused before
anything runs when nothing fits (see the package docstring for the two modes)."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np

from ..errors import InvalidArgumentError, MemoryBudgetError, note
from ..manifest import StyleSpec, TiledSpec
from .memory import format_bytes
from .spool import spool_layout

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
#: Square fast-mode windows (tile interior + halo on both sides, px) that ``plan(..., fixed_windows=True)`` snaps
#: to, so that a compiled engine (a TensorRT EP engine with a static profile) is built once per window and reused
#: for every photo size: interiors of 512, 1024 and 2048 px plus the paper network's 64 px halo each side. Three
#: sides, each about 3.5x the pixels of the one below: at most three engines per style (a build takes minutes),
#: and the recomputed halo costs 1.56x / 1.27x / 1.13x the interior's pixels. Larger windows save little (13%
#: at 2176) and need ~6 GB per tile at CALIBRATION (517 B/px); below 640 the halo would be most of the work.
#: Multiples of 64, so of any align the export finds (4 for the TransformerNet); a graph whose halo leaves no
#: align cell in a side does not use that side.
FIXED_WINDOWS = (640, 1152, 2176)


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

