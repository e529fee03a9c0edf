"""Benchmark results: frozen dataclasses, target checks, Markdown, JSON and a PNG chart."""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .agreement import Agreement
from .crop_agreement import MAX_PROB_DIFF, MIN_TOP1, CropAgreement
from .images import Size
from .machine import MachineInfo
from .stats import Timing

#: A target needs at least this many timed runs of both paths for a yes/no.
MIN_RUNS_FOR_VERDICT = 3
#: Row statuses. Only "ok" rows are ranked and get speedups.
STATUSES = ("ok", "wrong", "unavailable", "error", "skipped")


@dataclass(frozen=True)
class Case:
    """One measurement setting: a stage, an image size (None: the classifier's face crop) and a batch."""

    stage: str
    size: Size | None
    batch: int

    def input_name(self, face: str = "face crop") -> str:
        return self.size.name if self.size is not None else face


@dataclass(frozen=True)
class Row:
    """One path measured (or not) in one case."""

    stage: str
    path: str
    label: str
    role: str  # "baseline", "extra" or "ours"
    device: str
    input: str  # "512x512", "1920x1080" or "128x128 face"
    batch: int
    status: str  # one of STATUSES ("skipped": the run's time limit was reached)
    reason: str = ""
    agreement: Agreement | None = None
    timing: Timing | None = None
    rank: int | None = None  # 1 = fastest ok path in its case
    speedups: tuple[tuple[str, float], ...] = ()  # (baseline path, baseline median / this median)

    def speedup(self, baseline: str) -> float | None:
        return dict(self.speedups).get(baseline)


@dataclass(frozen=True)
class ColdStart:
    """Import + load + first result of one path in a fresh subprocess, and its peak RSS."""

    stage: str
    path: str
    label: str
    role: str
    input: str
    status: str  # "ok", "unavailable" or "error"
    reason: str = ""
    wall_s: float | None = None  # process start to exit, as a user waits for it
    load_s: float | None = None  # imports + model/graph loading, inside the process
    first_s: float | None = None  # the first result, inside the process
    peak_rss_mb: float | None = None
    modules: tuple[str, ...] = ()  # heavy frameworks the process had imported


@dataclass(frozen=True)
class Target:
    """One of the issue's targets, as measured in this run."""

    name: str
    required: str
    measured: str
    met: bool | None  # None: not measured in this run
    note: str = ""


@dataclass(frozen=True)
class Settings:
    """What was asked for (recorded with the results)."""

    bundle: str
    quick: bool
    stages: tuple[str, ...]
    sizes: tuple[str, ...]
    batches: tuple[int, ...]
    paths: tuple[str, ...] | None
    repeat: tuple[tuple[str, int], ...]  # stage -> most timed calls per row
    warmup: int
    budget_s: float
    coldstart: tuple[str, ...]  # stages measured for cold start
    coldstart_input: str
    time_limit_s: float | None = None  # no new measurement starts after this many seconds


@dataclass(frozen=True)
class Report:
    """Everything one benchmark run produced."""

    machine: MachineInfo
    settings: Settings
    rows: tuple[Row, ...]
    coldstarts: tuple[ColdStart, ...]
    targets: tuple[Target, ...]
    started: str
    duration_s: float
    load_avg_end: tuple[float, float, float]
    demo_bundle: bool
    notes: tuple[str, ...] = ()
    crop_checks: tuple[CropAgreement, ...] = ()  # classification agreement by crop spec (with the classify stage)

    def to_dict(self) -> dict[str, Any]:
        return _clean(dataclasses.asdict(self))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, allow_nan=False)


def _clean(obj: Any) -> Any:
    """JSON-safe: tuples -> lists, non-finite floats -> None."""
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


# ---------------------------------------------------------------- ranking and speedups


def rank_rows(rows: Sequence[Row], baselines: Sequence[tuple[str, str]]) -> list[Row]:
    """Rank the ok rows of one case by median and add speedups against the ok baselines.

    Wrong, unavailable and failed rows get neither rank nor speedups.
    """
    ok = [r for r in rows if r.status == "ok" and r.timing is not None]
    order = sorted(ok, key=lambda r: r.timing.median_ms)  # type: ignore[union-attr]
    ranks = {id(r): i + 1 for i, r in enumerate(order)}
    base = {name: r.timing.median_ms for r in ok for name, _ in baselines if r.path == name}  # type: ignore[union-attr]
    out = []
    for r in rows:
        if id(r) not in ranks:
            out.append(dataclasses.replace(r, rank=None, speedups=()))
            continue
        med = r.timing.median_ms  # type: ignore[union-attr]
        sp = tuple((name, base[name] / med) for name, _ in baselines if name in base and med > 0)
        out.append(dataclasses.replace(r, rank=ranks[id(r)], speedups=sp))
    return out


# ---------------------------------------------------------------- targets


def _find(rows: Iterable[Row], stage: str, path: str, input_: str | None, batch: int = 1) -> Row | None:
    for r in rows:
        if r.stage == stage and r.path == path and r.batch == batch and (input_ is None or r.input == input_):
            return r
    return None


def _ratio_target(rows: Sequence[Row], name: str, stage: str, input_: str | None, ours: str, base: str,
                  need: float, strict: bool = False) -> Target:
    required = f"> {need:g}x" if strict else f">= {need:g}x"
    r, b = _find(rows, stage, ours, input_), _find(rows, stage, base, input_)
    if r is None or b is None:
        return Target(name, required, "not measured", None, "not in this run (the full run measures it)")
    if r.status != "ok" or b.status != "ok":
        bad = r if r.status != "ok" else b
        return Target(name, required, f"{bad.path}: {bad.status}", False, bad.reason)
    ratio = r.speedup(base)
    if ratio is None:
        return Target(name, required, "no ratio", None)
    met = ratio > need if strict else ratio >= need
    measured = f"{ratio:.2f}x ({b.timing.median_ms:.1f} ms -> {r.timing.median_ms:.1f} ms)"  # type: ignore[union-attr]
    runs = min(r.timing.n, b.timing.n)  # type: ignore[union-attr]
    if runs < MIN_RUNS_FOR_VERDICT:
        return Target(name, required, measured + f", {runs} run(s)", None,
                      f"too few runs for a verdict (< {MIN_RUNS_FOR_VERDICT}; time limit?)")
    return Target(name, required, measured, met, "" if met else f"short by {need / ratio:.2f}x")


def _cold(cs: Sequence[ColdStart], path: str) -> ColdStart | None:
    return next((c for c in cs if c.stage == "chain" and c.path == path), None)


def compute_targets(rows: Sequence[Row], coldstarts: Sequence[ColdStart], ours: str = "ort-cpu",
                    crop_checks: Sequence[CropAgreement] = ()) -> tuple[Target, ...]:
    """The issue's CPU targets, with ``ours`` as "our runtime" (onnxruntime CPU on this machine)."""
    t = [
        _ratio_target(rows, "classifier per face vs eager Keras model(x)", "classify", None, ours, "keras-eager", 10),
        _ratio_target(rows, "classifier per face vs Keras tf.function", "classify", None, ours, "keras-tf-function",
                      1, strict=True),
    ]
    for size in ("512x512", "1920x1080"):
        t.append(_ratio_target(rows, f"style network {size} vs eager PyTorch", "style", size, ours, "torch-eager", 1.5))
    for size in ("512x512", "1920x1080"):
        t.append(_ratio_target(rows, f"whole chain {size} vs eager chain", "chain", size, ours, "eager-chain", 1.5))
    e, o = _cold(coldstarts, "eager-chain"), _cold(coldstarts, ours)
    if e is None or o is None or e.status != "ok" or o.status != "ok":
        t.append(Target("cold start vs eager stack", ">= 4x", "not measured", None, "cold start of the chain"))
        t.append(Target("peak RSS vs eager stack", ">= 2x lower", "not measured", None, "cold start of the chain"))
    else:
        cr = e.wall_s / o.wall_s  # type: ignore[operator]
        rr = e.peak_rss_mb / o.peak_rss_mb  # type: ignore[operator]
        t.append(Target("cold start vs eager stack", ">= 4x", f"{cr:.2f}x ({e.wall_s:.2f} s -> {o.wall_s:.2f} s)",
                        cr >= 4, "" if cr >= 4 else f"short by {4 / cr:.2f}x"))
        t.append(Target("peak RSS vs eager stack", ">= 2x lower",
                        f"{rr:.2f}x ({e.peak_rss_mb:.0f} MB -> {o.peak_rss_mb:.0f} MB)", rr >= 2,
                        "" if rr >= 2 else f"short by {2 / rr:.2f}x"))
    # the classifier's own pipeline (written from its package's code) when measured, else the spec's reference
    matched = next((c for c in crop_checks if c.matched and c.reference_spec.endswith("own pipeline")),
                   next((c for c in crop_checks if c.matched), None))
    t.append(Target("classifier crop: runtime vs the classifier's own pipeline",
                    f">= {MIN_TOP1:.0%} top-1, max abs p diff <= {MAX_PROB_DIFF:g}",
                    matched.summary if matched else "not measured", matched.ok if matched else None,
                    "" if matched else "measured with the classify stage"))
    t.append(_time_target(rows, "face detection 1280x720, the bundle's MTCNN", "detect", "1280x720", "mtcnn", 30.0))
    return tuple(t)


def _time_target(rows: Sequence[Row], name: str, stage: str, input_: str, path: str, max_ms: float) -> Target:
    """A median time limit for one path on one input (batch 1)."""
    required = f"<= {max_ms:g} ms median"
    r = _find(rows, stage, path, input_)
    if r is None:
        return Target(name, required, "not measured", None, "not in this run (--stages detect --sizes 720p)")
    if r.status != "ok" or r.timing is None:
        return Target(name, required, f"{r.path}: {r.status}", False, r.reason)
    med = r.timing.median_ms
    if r.timing.n < MIN_RUNS_FOR_VERDICT:
        return Target(name, required, f"{med:.1f} ms, {r.timing.n} run(s)", None,
                      f"too few runs for a verdict (< {MIN_RUNS_FOR_VERDICT}; time limit?)")
    return Target(name, required, f"{med:.1f} ms", med <= max_ms, "" if med <= max_ms else f"{med / max_ms:.2f}x over")


# ---------------------------------------------------------------- Markdown


def _ms(x: float) -> str:
    return f"{x:.0f}" if x >= 100 else f"{x:.1f}" if x >= 10 else f"{x:.2f}"


def _speedups(r: Row, titles: dict[str, str]) -> str:
    return ", ".join(f"{v:.2f}x vs {titles.get(k, 'x ' + k)[2:]}" for k, v in r.speedups if k != r.path)


def _pixels(input_: str) -> int:
    w, _, h = input_.partition("x")
    return int(w) * int(h.split()[0]) if w.isdigit() and h.split() and h.split()[0].isdigit() else 0


def _table_order(r: Row) -> tuple[int, int, int]:
    order = ("detect", "classify", "style", "chain")
    return (order.index(r.stage) if r.stage in order else len(order), _pixels(r.input), r.batch)


def markdown(report: Report, titles: dict[str, str] | None = None, *, details: bool = True) -> str:
    """The results as Markdown: one latency table, cold starts, targets, unavailable paths."""
    from .paths import BASELINES

    titles = titles or {name: title for pairs in BASELINES.values() for name, title in pairs}
    m = report.machine
    lines = [
        "## emostyle-bench results",
        "",
        f"Machine: {m.cpu}, {m.usable_cores}/{m.logical_cores} cores usable, {m.memory_gb:g} GB, GPU: {m.gpu}; "
        f"Python {m.python}; " + ", ".join(f"{k} {v}" for k, v in m.libraries) + ".",
        (f"Load average at start {m.load_avg_start[0]:.2f}, at end {report.load_avg_end[0]:.2f} "
         f"(on a shared machine CPU timings are noisy: compare ratios within one run). "
         f"Run {report.started}, {report.duration_s:.0f} s{', --quick' if report.settings.quick else ''}"
         f"{', DEMO bundle (untrained style networks)' if report.demo_bundle else ''}."),
        "",
        "| stage | input | batch | path | median ms | p90 ms | spread | runs | img/s | speedup | output check |",
        "|---|---|---:|---|---:|---:|---:|---:|---:|---|---|",
    ]
    for r in sorted(report.rows, key=_table_order):
        if r.status == "unavailable":
            continue
        name = f"**{r.label}**" if r.role == "ours" else r.label
        if r.status == "ok" and r.timing is not None:
            t = r.timing
            check = r.agreement.summary if r.agreement else "unchecked"
            lines.append(f"| {r.stage} | {r.input} | {r.batch} | {name} | {_ms(t.median_ms)} | {_ms(t.p90_ms)} | "
                         f"{t.spread_pct:.0f}% | {t.n} | {t.throughput:.3g} | {_speedups(r, titles)} | {check} |")
        else:
            what = {"wrong": "WRONG (not ranked)", "skipped": "skipped"}.get(r.status, "ERROR")
            lines.append(f"| {r.stage} | {r.input} | {r.batch} | {name} | - | - | - | - | - | {what} | {r.reason} |")
    if report.coldstarts:
        lines += ["", "Cold start (fresh process: interpreter + imports + load + first result) and peak RSS:", "",
                  "| stage | path | input | cold start s | load s | first result s | peak RSS MB | frameworks loaded |",
                  "|---|---|---|---:|---:|---:|---:|---|"]
        for c in report.coldstarts:
            if c.status == "ok":
                lines.append(f"| {c.stage} | {c.label} | {c.input} | {c.wall_s:.2f} | {c.load_s:.2f} | "
                             f"{c.first_s:.2f} | {c.peak_rss_mb:.0f} | {', '.join(c.modules)} |")
            elif c.status != "unavailable":
                lines.append(f"| {c.stage} | {c.label} | {c.input} | {c.status}: {c.reason} | | | | |")
    if report.crop_checks:
        lines += ["", "Classification agreement by crop spec: the runtime (bundle's crop spec) against eager Keras on "
                  "crops cut by an independent reference (the classifier's own pipeline written from its code, "
                  "when known; then the spec's), faces at every image border and inside:", "",
                  "| reference pipeline's crop | same spec as the bundle | result | verdict |", "|---|---|---|---|"]
        for c in report.crop_checks:
            verdict = ("ok" if c.ok else "NO") if c.matched else "mismatched spec: disagreement expected"
            same = "its own code" if c.reference_spec.endswith("own pipeline") else "yes" if c.matched else "no"
            lines.append(f"| {c.reference_spec} | {same} | {c.summary} | {verdict} |")
        lines.append(f"\nBundle's crop spec: {report.crop_checks[0].runtime_spec}.")
    if report.targets:
        lines += ["", "Targets (CPU, ratios within this run):", "", "| target | required | measured | met |",
                  "|---|---|---|---|"]
        for t in report.targets:
            met = "n/a" if t.met is None else "yes" if t.met else "NO"
            lines.append(f"| {t.name} | {t.required} | {t.measured} | {met}{' - ' + t.note if t.note and t.met is not True else ''} |")
    if details:
        unavailable: dict[str, tuple[list[str], str]] = {}
        for r in report.rows:
            if r.status == "unavailable":
                stages, _ = unavailable.setdefault(r.path, ([], r.reason))
                if r.stage not in stages:
                    stages.append(r.stage)
        if unavailable:
            lines += ["", "Paths not run here:"] + [f"- {name} ({', '.join(st)}): unavailable: {why}"
                                                   for name, (st, why) in unavailable.items()]
        if report.notes:
            lines += [""] + [f"- {n}" for n in report.notes]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- chart


def write_chart(report: Report, path: str | Path) -> Path:
    """A PNG: median latency by image size and path (one panel per stage; classifier by batch)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    ok = [r for r in report.rows if r.status == "ok" and r.timing is not None]
    stages = [s for s in ("detect", "classify", "style", "chain") if any(r.stage == s for r in ok)]
    if not stages:
        stages = ["style"]
    cols = min(2, len(stages))
    nrows = (len(stages) + cols - 1) // cols
    fig, axes = plt.subplots(nrows, cols, figsize=(6.4 * cols, 4.6 * nrows), squeeze=False)
    for ax in axes.flat[len(stages):]:
        ax.set_visible(False)
    for ax, stage in zip(axes.flat, stages, strict=False):
        rows = [r for r in ok if r.stage == stage]
        if stage == "classify":
            labels = sorted({r.label for r in rows}, key=lambda s: [r.label for r in rows].index(s))
            batches = sorted({r.batch for r in rows})
            width = 0.8 / max(1, len(batches))
            for j, b in enumerate(batches):
                vals = [next((r.timing.median_ms / r.batch for r in rows if r.label == lab and r.batch == b),
                             float("nan")) for lab in labels]
                ax.bar([i + j * width for i in range(len(labels))], vals, width, label=f"batch {b}")
            ax.set_xticks([i + 0.4 - width / 2 for i in range(len(labels))])
            ax.set_xticklabels([lab.replace("ours: ", "") for lab in labels], rotation=25, ha="right", fontsize=7)
            ax.set_ylabel("median ms per face")
            ax.set_yscale("log")
        else:
            series: dict[tuple[str, int], list[tuple[int, float, str]]] = {}
            for r in rows:
                w, h = (int(v) for v in r.input.split("x"))
                series.setdefault((r.label, r.batch), []).append((w * h, r.timing.median_ms / r.batch, r.input))
            for (label, b), pts in series.items():
                pts.sort()
                ax.plot([p[0] / 1e6 for p in pts], [p[1] for p in pts], marker="o",
                        linestyle="-" if "ours" in label or stage == "detect" else "--",
                        label=f"{label}{'' if b == 1 else f' (batch {b})'}")
            ax.set_xscale("log")
            ax.set_yscale("log")
            ticks = sorted({(p[0], p[2]) for pts in series.values() for p in pts})
            ax.set_xticks([t[0] / 1e6 for t in ticks], [t[1] for t in ticks], fontsize=7)
            ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
            ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
            ax.yaxis.set_minor_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
            ax.set_xlabel("image size (log of pixels)")
            ax.set_ylabel("median ms per image")
        ax.set_title(stage)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=6)
    m = report.machine
    fig.suptitle(f"emostyle-bench: {m.cpu}, {m.usable_cores} cores, GPU {m.gpu}", fontsize=9)
    fig.tight_layout()
    import io

    from emostyle_rt.fsutil import write_bytes_atomic

    out = Path(path)
    buf = io.BytesIO()
    fig.savefig(buf, dpi=110, format=out.suffix.lstrip(".").lower() or "png")
    plt.close(fig)
    return write_bytes_atomic(out, buf.getvalue())  # whole or not at all, Ctrl-C included


# ---------------------------------------------------------------- reading results back


def _tuples(v: Any) -> Any:
    return tuple(_tuples(x) for x in v) if isinstance(v, list) else v


def _build(cls: type, d: dict[str, Any] | None) -> Any:
    return None if d is None else cls(**{k: _tuples(v) for k, v in d.items()})


def report_from_dict(d: Any) -> Report:
    """A Report from ``Report.to_dict()`` / the ``--json`` file (to re-render tables and charts).

    Anything else (another JSON shape, missing or unknown keys) is an ``InvalidArgumentError``.
    """
    from emostyle_rt.errors import InvalidArgumentError, note, sentence

    expected = "a --json result of emostyle-bench (an object with machine, settings, rows, ...)"
    if not isinstance(d, dict):
        kind = {list: "an array", str: "a string", type(None): "null", bool: "a boolean"}.get(type(d), "a number")
        raise InvalidArgumentError(f"Not an emostyle-bench result: the top level is {kind}." + note(expected, kind))
    try:
        rows = tuple(
            Row(**{**{k: _tuples(v) for k, v in r.items()},
                   "agreement": _build(Agreement, r.get("agreement")),
                   "timing": _build(Timing, r.get("timing"))})
            for r in d["rows"]
        )
        return Report(
            machine=_build(MachineInfo, d["machine"]),
            settings=_build(Settings, d["settings"]),
            rows=rows,
            coldstarts=tuple(_build(ColdStart, c) for c in d["coldstarts"]),
            targets=tuple(_build(Target, t) for t in d["targets"]),
            started=d["started"], duration_s=d["duration_s"], load_avg_end=_tuples(d["load_avg_end"]),
            demo_bundle=d["demo_bundle"], notes=_tuples(d.get("notes", [])),
            crop_checks=tuple(_build(CropAgreement, c) for c in d.get("crop_checks", [])),
        )
    except KeyError as exc:
        raise InvalidArgumentError(f"Not an emostyle-bench result: no key {exc}." + note(expected, sorted(d))) from None
    except (TypeError, AttributeError, ValueError) as exc:
        raise InvalidArgumentError("Not an emostyle-bench result: " + sentence(exc)
                                   + note(expected, "other JSON")) from None
