"""The tiled executor: the tiled graphs of one style, loaded on first use, run as a plan says (fast: tiles with
shared statistics; exact: segments in strips over the spool)."""

from __future__ import annotations

import logging
import math
import os
import shutil
import threading
from pathlib import Path
from typing import Callable, Iterator, Mapping

import numpy as np

from ..backends import LOADERS, Lazy, load_graph
from ..backends.base import Runner
from ..bundle.files import bundle_path, check_sha256
from ..errors import BundleError, EmostyleError, InvalidArgumentError, MemoryBudgetError, note
from ..manifest import StyleSpec, TiledGraph
from .memory import format_bytes
from .planner import FIXED_WINDOWS, STATS_SIDE, TilePlan, _floor, cells, is_fixed_window, stats_sample
from .spool import SPOOL_ENV, _Spool, _spool_events, spool_layout, spool_root

log = logging.getLogger(__name__)

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
            from ..backends.ort import changing_shapes_provider, tensorrt_ep_refusal

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
        from ..backends import FailoverRunner
        from ..backends import ort as ortb
        from ..backends.base import cache_dir
        from ..bundle.compiled import Profile

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
