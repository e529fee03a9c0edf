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

The package, one concern per module:

- :mod:`.memory`: memory sizes ("2GB"), what the machine has (/proc), the default
  budget of a process and of each of several workers;
- :mod:`.planner`: :func:`plan` and its estimates, windows, strips and the fast
  mode's statistics sample;
- :mod:`.spool`: the exact mode's whole-image activations, in RAM up to a limit,
  the rest in files;
- :mod:`.executor`: :class:`TiledStyle`, which loads one style's tiled graphs and
  runs a plan.

Every name is importable from ``emostyle_rt.tiling`` as before. Patch a name in
the module that uses it (``emostyle_rt.tiling.memory.host_available``), not here.
Only numpy, OpenCV and onnxruntime are used. See docs/tiling.md.
"""

from __future__ import annotations

from ..errors import MemoryBudgetError  # the error this package raises, importable here as before
from .memory import BUDGET_FRACTION, DEFAULT_PEAK_RSS, GPU_DEFAULT_BUDGET, HELD_FLOOR_BUDGET, MIN_DEFAULT_BUDGET, TYPICAL_HELD, default_budget, format_bytes, gpu_free, host_available, parse_memory, process_rss, worker_budget  # noqa: F401
from .planner import CALIBRATION, DEFAULT_TILE_MODE, FALLBACK_BYTES_PER_PIXEL, FIXED_WINDOWS, IMAGE_BYTES_PER_PIXEL, MIN_STATS_SIDE, RUN_OVERHEAD, SAMPLE_STRIP_PIXELS, SEGMENT_CALIBRATION, STATS_CALIBRATION, STATS_CROP, STATS_SIDE, STRIP_PIXELS, TILE_MODES, TilePlan, activation_bytes, cells, estimate_whole, fixed_window, is_fixed_window, plan, stats_crop, stats_sample, stats_shape  # noqa: F401
from .spool import READ_SLACK, SPOOL_ENV, spool_layout, spool_root  # noqa: F401
from .executor import Progress, TiledStyle  # noqa: F401

__all__ = [
    "MemoryBudgetError",
    "BUDGET_FRACTION",
    "CALIBRATION",
    "DEFAULT_PEAK_RSS",
    "DEFAULT_TILE_MODE",
    "FALLBACK_BYTES_PER_PIXEL",
    "FIXED_WINDOWS",
    "GPU_DEFAULT_BUDGET",
    "HELD_FLOOR_BUDGET",
    "IMAGE_BYTES_PER_PIXEL",
    "MIN_DEFAULT_BUDGET",
    "MIN_STATS_SIDE",
    "Progress",
    "READ_SLACK",
    "RUN_OVERHEAD",
    "SAMPLE_STRIP_PIXELS",
    "SEGMENT_CALIBRATION",
    "SPOOL_ENV",
    "STATS_CALIBRATION",
    "STATS_CROP",
    "STATS_SIDE",
    "STRIP_PIXELS",
    "TILE_MODES",
    "TYPICAL_HELD",
    "TilePlan",
    "TiledStyle",
    "activation_bytes",
    "cells",
    "default_budget",
    "estimate_whole",
    "fixed_window",
    "format_bytes",
    "gpu_free",
    "host_available",
    "is_fixed_window",
    "parse_memory",
    "plan",
    "process_rss",
    "spool_layout",
    "spool_root",
    "stats_crop",
    "stats_sample",
    "stats_shape",
    "worker_budget",
]
