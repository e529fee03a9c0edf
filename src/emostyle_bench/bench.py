"""Run a benchmark: every selected path on every case, agreement first, then timing."""

from __future__ import annotations

import datetime as _dt
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import coldstart as cold
from .agreement import COMPARE, Agreement
from .crop_agreement import CropAgreement
from .images import Size, face_crops, photo
from .machine import collect, load_average
from .paths import (
    BASELINES,
    REFERENCE,
    STAGES,
    BenchPath,
    Context,
    PathUnavailable,
    availability,
    bundle_availability,
    default_paths,
)
from .report import Case, ColdStart, Report, Row, Settings, compute_targets, rank_rows
from .stats import measure_interleaved

log = logging.getLogger(__name__)

#: Frames of the ``video`` stage's clip (its "batch" in the tables; img/s is frames per second).
VIDEO_FRAMES = 8


@dataclass(frozen=True)
class _Built:
    fn: Callable[[Any], Any] | None
    status: str  # "ok", "unavailable" or "error"
    reason: str = ""


def make_cases(stages: Sequence[str], sizes: Sequence[Size], batches: Sequence[int],
               style_batches: Sequence[int] | None = None) -> tuple[Case, ...]:
    """Cases in run order, cheapest first (so a time limit cuts the most expensive ones).

    The classifier once per batch (its input is a face crop), video once per size (a clip of
    ``VIDEO_FRAMES`` frames: its batch), the other stages per size and batch; ``style_batches``
    narrows the batches of the image stages.
    """
    out: list[Case] = []
    for stage in STAGES:
        if stage not in stages:
            continue
        if stage == "classify":
            out += [Case(stage, None, b) for b in batches]
        elif stage == "video":
            out += [Case(stage, s, VIDEO_FRAMES) for s in sizes]
        else:
            out += [Case(stage, s, b) for s in sizes for b in (style_batches or batches)]
    return tuple(sorted(out, key=lambda c: ((c.size.pixels if c.size else 0) * c.batch, STAGES.index(c.stage))))


def make_input(ctx: Context, case: Case) -> Any:
    """The batch a case feeds every path: real photo(s) or face crops, uint8 NHWC."""
    import numpy as np

    if case.stage == "classify":
        spec = ctx.manifest.classifier
        return face_crops(spec.height, spec.width, spec.channels, case.batch)
    if case.stage == "video":  # a face crossing a still photo, with sensor noise (emostyle_bench.coherence_clips)
        from .coherence_clips import moving_face

        return np.stack(moving_face(case.size, case.batch).frames)  # type: ignore[arg-type]
    img = photo(case.size)  # type: ignore[arg-type]
    return np.ascontiguousarray(np.repeat(img[None], case.batch, axis=0))


class Runner:
    """Builds each path once, checks its output against the eager reference, times it."""

    def __init__(self, ctx: Context, paths: Sequence[BenchPath], *, repeat: dict[str, int], warmup: int,
                 budget_s: float, deadline: float | None = None) -> None:
        self.ctx, self.paths = ctx, tuple(paths)
        self.repeat, self.warmup, self.budget_s = repeat, warmup, budget_s
        self.deadline = deadline  # time.perf_counter() value after which nothing new starts
        self._built: dict[tuple[str, str], _Built] = {}

    def build(self, p: BenchPath) -> _Built:
        key = (p.stage, p.name)
        if key not in self._built:
            why = availability(p) or bundle_availability(p, self.ctx.manifest, self.ctx.style_id)
            if why is not None:  # cannot run here: said as such, never an ERROR row
                self._built[key] = _Built(None, "unavailable", why)
                return self._built[key]
            try:
                t0 = time.perf_counter()
                self._built[key] = _Built(p.build(self.ctx), "ok")
                log.info("  loaded %s / %s in %.1f s", p.stage, p.name, time.perf_counter() - t0)
            except PathUnavailable as exc:
                self._built[key] = _Built(None, "unavailable", str(exc))
            except Exception as exc:  # any library failure becomes an "error" row, not a crash
                log.warning("%s / %s failed to load: %s: %s", p.stage, p.name, type(exc).__name__, exc)
                self._built[key] = _Built(None, "error", f"{type(exc).__name__}: {exc}")
        return self._built[key]

    @staticmethod
    def _base(case: Case, p: BenchPath, input_name: str) -> dict[str, Any]:
        return dict(stage=case.stage, path=p.name, label=p.label, role=p.role, device=p.device, input=input_name,
                    batch=case.batch)

    def _late(self) -> bool:
        return self.deadline is not None and time.perf_counter() > self.deadline

    def _reference(self, case: Case, x: Any) -> tuple[Any, str]:
        """The eager output for ``x`` when the reference path was not among the selected ones."""
        ref_name = REFERENCE.get(case.stage)
        ref = next((p for p in self.paths if p.stage == case.stage and p.name == ref_name), None)
        if ref is None:
            return None, "no eager reference path"
        b = self.build(ref)
        if b.fn is None:
            return None, f"eager reference {ref_name} {b.status}: {b.reason}"
        return b.fn(x), ""

    def run_case(self, case: Case, selected: Sequence[BenchPath]) -> list[Row]:
        """All selected paths of ``case.stage`` on one input; ranked rows.

        First every path runs once and its output is checked against the eager
        reference (this run also warms it up); then the paths that agree are timed
        together, interleaved round by round, so all of them see the same load.
        """
        x = make_input(self.ctx, case)
        ref_name = REFERENCE.get(case.stage)
        mine = sorted((p for p in selected if p.stage == case.stage), key=lambda p: p.name != ref_name)
        spec = self.ctx.manifest.classifier
        input_name = case.input_name(f"{spec.width}x{spec.height} face")
        ref_out: Any = None
        ref_note = ""
        done: dict[str, Row] = {}  # path name -> final row (not timed)
        to_time: dict[str, tuple[BenchPath, Callable[[Any], Any], Agreement | None]] = {}
        for p in mine:
            base = self._base(case, p, input_name)
            if self._late():
                done[p.name] = Row(**base, status="skipped", reason="time limit reached")
                continue
            built = self.build(p)
            if built.fn is None:
                done[p.name] = Row(**base, status=built.status, reason=built.reason)
                continue
            log.info("%s %s batch %d: %s (output check)", case.stage, input_name, case.batch, p.name)
            try:
                out = built.fn(x)  # the agreement run doubles as the first warm-up
            except Exception as exc:
                log.warning("%s / %s failed: %s: %s", case.stage, p.name, type(exc).__name__, exc)
                done[p.name] = Row(**base, status="error", reason=f"{type(exc).__name__}: {exc}")
                continue
            agreement: Agreement | None
            if case.stage == "detect":  # nothing to compare with: say what it found
                agreement = Agreement(True, f"{sum(len(f) for f in out)} face(s) in {len(out)} image(s)")
            elif case.stage not in COMPARE:
                agreement = None
            elif p.name == ref_name:  # a video path's check is its warping error: the reference has one too
                ref_out = out
                agreement = COMPARE["video"](out, out) if case.stage == "video" else Agreement(True, "reference")
            else:
                if ref_out is None and not ref_note:
                    try:
                        ref_out, ref_note = self._reference(case, x)
                    except Exception as exc:
                        ref_note = f"eager reference failed: {type(exc).__name__}: {exc}"
                agreement = COMPARE[case.stage](ref_out, out, p.precision) if ref_out is not None else None
            if agreement is not None and not agreement.ok:
                log.warning("%s / %s disagrees with the eager output: %s", case.stage, p.name, agreement.summary)
                done[p.name] = Row(**base, status="wrong", reason=agreement.summary, agreement=agreement)
                continue
            to_time[p.name] = (p, built.fn, agreement)
        if to_time and not self._late():
            log.info("%s %s batch %d: timing %s, interleaved", case.stage, input_name, case.batch,
                     ", ".join(to_time))
            try:
                timings = measure_interleaved(
                    {name: (lambda fn=fn: fn(x)) for name, (_, fn, _) in to_time.items()},
                    batch=case.batch, warmup=self.warmup, repeat=self.repeat.get(case.stage, 10),
                    budget_s=self.budget_s, deadline=self.deadline)
            except Exception as exc:
                log.warning("%s timing failed: %s: %s", case.stage, type(exc).__name__, exc)
                timings, failure = {}, f"{type(exc).__name__}: {exc}"
            for name, (p, _, agreement) in to_time.items():
                base = self._base(case, p, input_name)
                if name not in timings:
                    done[name] = Row(**base, status="error", reason=failure)
                    continue
                t = timings[name]
                reason = "" if agreement is not None or case.stage not in COMPARE else f"unchecked: {ref_note}"
                done[name] = Row(**base, status="ok", reason=reason, agreement=agreement, timing=t)
                log.info("  %s: median %.1f ms (%d runs)", name, t.median_ms, t.n)
        else:
            for name, (p, _, _) in to_time.items():
                done[name] = Row(**self._base(case, p, input_name), status="skipped", reason="time limit reached")
        rows = [done[p.name] for p in mine]
        return rank_rows(rows, BASELINES.get(case.stage, ()))


def run_coldstarts(ctx: Context, stages: Sequence[str], selected: Sequence[BenchPath], size: Size,
                   skip: dict[tuple[str, str], str]) -> list[ColdStart]:
    """Cold start + peak RSS of the selected baseline and ours paths of ``stages``, one subprocess each."""
    out: list[ColdStart] = []
    bundle = ctx.bundle
    cold.clean_stale_inputs()  # what killed runs left in the temporary folder (ours exactly, writer gone)
    for stage in stages:
        if stage == "classify":
            spec = ctx.manifest.classifier
            x, input_name = face_crops(spec.height, spec.width, spec.channels, 1), f"{spec.width}x{spec.height} face"
        else:
            import numpy as np

            x, input_name = np.ascontiguousarray(photo(size)[None]), size.name
        npy = None
        try:
            npy = cold.save_input(x)
            for p in selected:
                if p.stage != stage or p.role == "extra":
                    continue
                base = dict(stage=stage, path=p.name, label=p.label, role=p.role, input=input_name)
                if (stage, p.name) in skip:
                    out.append(ColdStart(**base, status="unavailable", reason=skip[(stage, p.name)]))
                    continue
                log.info("cold start: %s / %s", stage, p.name)
                r = cold.run_one(stage, p.name, bundle, npy)
                status = str(r.get("status"))
                if status != "ok":
                    out.append(ColdStart(**base, status=status, reason=str(r.get("reason", ""))))
                    continue
                out.append(ColdStart(**base, status="ok", wall_s=float(r["wall_s"]), load_s=float(r["load_s"]),
                                     first_s=float(r["first_s"]), peak_rss_mb=float(r["peak_rss_mb"]),
                                     modules=tuple(r.get("modules", ()))))
                log.info("  %.2f s, peak RSS %.0f MB", out[-1].wall_s, out[-1].peak_rss_mb)
        finally:
            if npy is not None:
                npy.unlink(missing_ok=True)
            cold.remove_own_inputs()  # a Ctrl-C inside save_input, before ``npy`` was set
    return out


def run_benchmark(settings: Settings, cases: Sequence[Case], *, paths: Sequence[BenchPath] | None = None,
                  coldstart_size: Size | None = None) -> Report:
    """Measure ``cases`` with the paths named in ``settings`` (all when None) and build the report."""
    started = _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()
    t0 = time.perf_counter()
    all_paths = tuple(paths) if paths is not None else default_paths()
    wanted = set(settings.paths) if settings.paths else None
    selected = [p for p in all_paths if wanted is None or p.name in wanted]
    machine = collect()
    ctx = Context(Path(settings.bundle))
    demo = bool(ctx.manifest.demo)  # opens and verifies the bundle before anything is measured
    deadline = t0 + settings.time_limit_s if settings.time_limit_s else None
    runner = Runner(ctx, all_paths, repeat=dict(settings.repeat), warmup=settings.warmup, budget_s=settings.budget_s,
                    deadline=deadline)
    cold_rows: list[ColdStart] = []
    if settings.coldstart:
        # Cold starts first: their subprocesses then share the CPU with nothing of this process.
        # GPU paths learn their availability in-process instead of spawning a process to fail.
        skip = {}
        for p in selected:
            if p.stage not in settings.coldstart:
                continue
            why = availability(p) or bundle_availability(p, ctx.manifest, ctx.style_id)  # no process to fail
            if why is None and p.device != "cpu" and (b := runner.build(p)).status == "unavailable":
                why = b.reason
            if why is not None:
                skip[(p.stage, p.name)] = why
        cold_rows = run_coldstarts(ctx, settings.coldstart, selected, coldstart_size or Size(512, 512), skip)
    rows: list[Row] = []
    for case in cases:
        rows += runner.run_case(case, selected)
    crop_checks = crop_agreement(ctx) if "classify" in settings.stages and not runner._late() else ()
    if any(r.status == "skipped" for r in rows):
        log.warning("time limit of %.0f s reached: some rows were skipped (raise --time-limit)", settings.time_limit_s)
    notes = []
    if demo:
        notes.append("Demo bundle: untrained seeded style networks (same architecture and cost as trained ones); "
                     f"its classifier is trained: {ctx.manifest.classifier.describe()}."
                     if ctx.manifest.classifier.info.trained else
                     "Demo bundle: untrained seeded weights (same architectures and cost as trained models).")
    notes.append("Agreement: classifier top-1 and max |p - p_eager| <= 1e-4 (fp16 paths 1e-2); images PSNR >= 40 dB "
                 "(fp16 paths 30 dB) against the eager output; a path that disagrees is WRONG and not ranked.")
    report = Report(machine=machine, settings=settings, rows=tuple(rows), coldstarts=tuple(cold_rows),
                    targets=compute_targets(rows, cold_rows, crop_checks=crop_checks), started=started,
                    duration_s=time.perf_counter() - t0, load_avg_end=load_average(), demo_bundle=demo,
                    notes=tuple(notes), crop_checks=crop_checks)
    return report


def crop_agreement(ctx: Context) -> tuple[CropAgreement, ...]:
    """Classification agreement by crop spec: the runtime against the classifier's own pipeline (when this bench
    knows it: ``crop_agreement.OWN_PIPELINES``), then against eager Keras on reference crops of the bundle's spec
    and of a mismatched one; () if Keras cannot run."""
    from .crop_agreement import check_crop_agreement, check_own_pipeline
    from .paths import _as_probs, _keras_eager

    log.info("classification agreement by crop spec (faces at every image border)")
    try:
        own = check_own_pipeline(ctx.manifest, lambda x: _as_probs(ctx, ctx.keras()[1].predict(x)))
        return (*(() if own is None else (own,)), *check_crop_agreement(ctx.manifest, _keras_eager(ctx)))
    except Exception as exc:  # a missing Keras or a failing model is reported, not a crash
        log.warning("crop agreement check not run: %s: %s", type(exc).__name__, exc)
        return ()


__all__ = ["Runner", "make_cases", "run_benchmark", "run_coldstarts"]
