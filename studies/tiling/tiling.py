"""Tiled style inference: peak RSS, time against untiled, fidelity, seams, and the README picture.

    python studies/tiling/tiling.py --bundle DIR --size 4000x3000 --budget 1.6GB --modes untiled,fast,exact
    python studies/tiling/tiling.py --bundle DIR --size 4000x3000 --modes untiled,default --pairs 2   # the defaults
    python studies/tiling/tiling.py --bundle DIR --size 8000x6000 --budget 2GB --modes exact
    python studies/tiling/tiling.py --bundle DIR --size 1632x1224 --budget 300MB --picture docs/img/tiling-seams.png
    python studies/tiling/tiling.py --bundle DIR --calibrate        # activation bytes/pixel vs measured RSS
    python studies/tiling/tiling.py --bundle DIR --modes untiled,default@base,default --baseline ../main --pairs 2

A mode ending in ``@base`` runs in the ``--baseline`` checkout (its ``.venv``
and code): before/after figures of a change in one interleaved run.

The bundle needs tiled graphs (``emostyle-export --bundle DIR --tiled``). Each
run is a fresh process (``--child``) styling one photo with a ``Stylizer``, so
its peak RSS (VmHWM) is the run's own; runs are interleaved (untiled, fast,
exact, untiled, ...) so load from other processes hits every mode alike. The
photo is a mosaic of four real photos (scikit-image's astronaut, coffee, chelsea
and rocket), resized to the size asked for. Printed (and written to ``--out`` as
JSON): per mode the median wall time, CPU time and peak RSS, the ratio of the
wall times to untiled, and against the untiled output: max |diff|, PSNR, and
the seam metric: the mean absolute difference across tile borders divided by
the same one pixel away (1.0: no seam; the target is <= 1.10).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

if __package__ in (None, ""):  # run as a script: the repository root on sys.path (tests.support)
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from emostyle_bench.images import mosaic as photo  # noqa: E402
from tests.support.seams import naive, seam_ratio  # noqa: E402

#: Tile modes a run can be (untiled: the whole image in one run, the budget set high enough; default: the
#: Stylizer's defaults, no budget given: whole or tiled as the default budget decides).
MODES = ("untiled", "default", "fast", "exact")
SEAM_TARGET = 1.10


def borders(plan: Any, spec: Any) -> tuple[list[int], list[int]]:
    """(rows, cols) where a plan's tiles meet: cell edges of the fast grid, strip edges of the exact mode."""
    from emostyle_rt.tiling import cells

    if plan.mode == "fast":
        ys = cells(plan.height, plan.window[0], spec.halo, spec.align)
        xs = cells(plan.width, plan.window[1], spec.halo, spec.align)
        return [c[0] for c in ys[1:]], [c[0] for c in xs[1:]]
    if plan.mode == "exact":
        rows = sorted({y for r in plan.strips for y in range(r, plan.height, r)})
        return rows, []
    return [], []


def _vm(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def child(args: argparse.Namespace) -> None:
    """One run in this fresh process: style the photo in ``args.child`` mode, print a JSON line, save the output."""
    from emostyle_rt import Stylizer
    from emostyle_rt.tiling import CALIBRATION, DEFAULT_TILE_MODE
    from emostyle_rt.tiling import plan as tile_plan

    w, h = args.size
    img = photo(w, h)
    budget = None if args.child == "default" else args.budget if args.child != "untiled" else 1 << 50
    mode = DEFAULT_TILE_MODE if args.child in ("untiled", "default") else args.child
    st = Stylizer(args.bundle, memory_budget=budget, tile_mode=mode, backend=args.backend)
    style = st.manifest.style_for(args.emotion)
    runner = st._style_runner(style.style_id)
    budget = st._budget(runner) if budget is None else budget
    p = tile_plan(style, h + (-h % 4), w + (-w % 4), budget, st.tile_mode,
                  whole_calibration=getattr(runner, "memory_calibration", CALIBRATION))
    rss_before = _vm("VmRSS")
    t0, c0 = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
    res = st.stylize(img, emotion=args.emotion)
    c1 = resource.getrusage(resource.RUSAGE_SELF)
    wall = time.perf_counter() - t0
    rows, cols = borders(p, style.tiled) if style.tiled else ([], [])
    if args.save:
        np.save(args.save, res.image)
    print(json.dumps({"mode": args.child, "engine": runner.name, "plan": p.mode, "summary": p.summary(),
                      "wall_s": round(wall, 2),
                      "cpu_s": round(c1.ru_utime + c1.ru_stime - c0.ru_utime - c0.ru_stime, 2),
                      "rss_before_mb": round(rss_before / 2**20), "peak_rss_mb": round(_vm("VmHWM") / 2**20),
                      "estimate_mb": round(p.estimate / 2**20), "rows": rows, "cols": cols}))


def _run_child(args: argparse.Namespace, mode: str, save: str | None) -> dict[str, Any]:
    python, cwd, child_mode = sys.executable, None, mode
    if mode.endswith("@base"):  # the baseline checkout's own interpreter and code (run from its root)
        if args.baseline is None:
            raise SystemExit(f"Mode {mode} needs --baseline DIR (a checkout with its .venv).")
        python, cwd, child_mode = str(args.baseline / ".venv" / "bin" / "python"), str(args.baseline), mode[:-5]
    script = [str(Path(__file__).resolve())]  # this file, or the baseline's (where it lived before studies/)
    if cwd is not None:
        old = Path(cwd) / "studies" / "tiling" / "tiling.py"
        script = [str(old)] if old.is_file() else ["-m", "emostyle_bench.tiling"]
    cmd = [python, *script, "--child", child_mode, "--bundle", str(args.bundle.resolve()),
           "--size", f"{args.size[0]}x{args.size[1]}", "--budget", str(args.budget), "--emotion", args.emotion,
           "--backend", args.backend]
    if save:
        cmd += ["--save", save]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=cwd)
    row = json.loads(out.stdout.strip().splitlines()[-1])
    row["mode"] = mode
    print(json.dumps({k: v for k, v in row.items() if k not in ("rows", "cols")}), flush=True)
    return row


def fidelity(ref: np.ndarray, out: np.ndarray, rows: list[int], cols: list[int]) -> dict[str, Any]:
    """Max |diff|, PSNR and seam ratios of ``out`` against the untiled ``ref``."""
    from emostyle_export.parity import psnr

    d = np.abs(out.astype(np.int16) - ref.astype(np.int16))
    seams = seam_ratio(out, rows, cols)
    ref_seams = seam_ratio(ref, rows, cols)
    return {"max_abs_diff": int(d.max()), "psnr_db": round(min(psnr(out, ref), 999.0), 2),
            "share_differing": round(float((d > 0).mean()), 5), "seams": seams, "seams_untiled_same_places": ref_seams}


def compare(args: argparse.Namespace) -> dict[str, Any]:
    """Interleaved runs of every mode; medians, ratios to untiled, fidelity of the last run of each."""
    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in args.modes}
    with tempfile.TemporaryDirectory(prefix="emostyle-bench-tiling-") as tmp:
        saved = {m: os.path.join(tmp, f"{m}.npy") for m in args.modes}
        for i in range(args.pairs):
            for m in args.modes:
                runs[m].append(_run_child(args, m, saved[m] if i == args.pairs - 1 else None))
        from emostyle_bench.openvino_cpu import lscpu

        cpu = lscpu()
        result: dict[str, Any] = {"size": f"{args.size[0]}x{args.size[1]}", "budget": args.budget, "modes": {},
                                  "backend": args.backend, "cpu": cpu.get("Model name"), "cpu_flags": cpu.get("Flags"),
                                  "load_avg_end": os.getloadavg()}
        for m, rs in runs.items():
            result["modes"][m] = {
                "wall_s_median": statistics.median(r["wall_s"] for r in rs),
                "cpu_s_median": statistics.median(r["cpu_s"] for r in rs),
                "peak_rss_mb_max": max(r["peak_rss_mb"] for r in rs), "rss_before_mb": rs[-1]["rss_before_mb"],
                "estimate_mb": rs[-1]["estimate_mb"], "plan": rs[-1]["summary"], "runs": len(rs),
                "engine": rs[-1].get("engine"),
                "wall_s": [r["wall_s"] for r in rs]}
        if "untiled" in runs:
            ref = np.load(saved["untiled"])
            base = result["modes"]["untiled"]
            for m in args.modes:
                if m == "untiled":
                    continue
                r = result["modes"][m]
                r["wall_ratio_to_untiled"] = round(r["wall_s_median"] / base["wall_s_median"], 3)
                r["cpu_ratio_to_untiled"] = round(r["cpu_s_median"] / base["cpu_s_median"], 3)
                r["fidelity"] = fidelity(ref, np.load(saved[m]), runs[m][-1]["rows"], runs[m][-1]["cols"])
    return result


def picture(args: argparse.Namespace) -> dict[str, Any]:
    """A crop around a fast-mode tile corner: untiled | naive per-tile statistics | fast | exact, side by side."""
    import cv2

    from emostyle_rt.backends import make_runner
    from emostyle_rt.imaging.io import pad_to_multiple
    from emostyle_rt.manifest import load_manifest
    from emostyle_rt.tiling import TiledStyle, cells
    from emostyle_rt.tiling import plan as tile_plan

    m = load_manifest(args.bundle)
    style = m.style_for(args.emotion)
    w, h = args.size
    from skimage import data  # one real photo (a mosaic's own joins would look like seams)

    padded = pad_to_multiple(cv2.resize(data.astronaut(), (w, h), interpolation=cv2.INTER_CUBIC), m.size_multiple)
    spec = style.tiled
    fast_plan = tile_plan(style, padded.shape[0], padded.shape[1], args.budget, "fast", force=True)
    ys = cells(padded.shape[0], fast_plan.window[0], spec.halo, spec.align)
    xs = cells(padded.shape[1], fast_plan.window[1], spec.halo, spec.align)
    cy, cx = ys[1][0], xs[1][0]  # the first corner where four cells meet (inside the top-left photo)
    half = args.crop // 2
    region = (cy - half, cy + half, cx - half, cx + half)
    whole = make_runner(m.path(style.onnx), provider="cpu")
    ref = whole.run({style.input_name: padded[None]})[style.output_name][0]
    nai = naive(whole, padded, fast_plan.window, spec.halo, spec.align, region)
    tiled = TiledStyle(m.root, style, provider="cpu")
    fast = tiled.run(padded, fast_plan)
    exact = tiled.run(padded, tile_plan(style, padded.shape[0], padded.shape[1], args.budget, "exact", force=True))
    crops = [x[region[0]:region[1], region[2]:region[3]] for x in (ref, nai, fast, exact)]
    labels = ["untiled", "naive tiles: their own statistics", f"fast: statistics of a {fast_plan.stats_side} px sample",
              "exact: layer by layer"]
    panels = []
    for c, label in zip(crops, labels):
        band = np.full((30, c.shape[1], 3), 255, np.uint8)
        cv2.putText(band, label, (6, 21), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (0, 0, 0), 1, cv2.LINE_AA)
        framed = np.pad(c, ((6, 6), (6, 6), (0, 0)), constant_values=255)
        for pos in (6 + half,):  # ticks outside the crop where the tile borders run
            framed[:5, pos - 1:pos + 1] = framed[-5:, pos - 1:pos + 1] = (255, 0, 0)
            framed[pos - 1:pos + 1, :5] = framed[pos - 1:pos + 1, -5:] = (255, 0, 0)
        panels.append(np.vstack([np.pad(band, ((0, 0), (6, 6), (0, 0)), constant_values=255), framed]))
    sheet = np.hstack(panels)
    out = Path(args.picture)
    out.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(out), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR))
    inside = (slice(region[0], region[1]), slice(region[2], region[3]))
    rows, cols = [cy], [cx]
    return {"picture": str(out), "corner": [cy, cx], "fast_window": list(fast_plan.window),
            "seams": {name: seam_ratio(x[inside], [half], [half]) for name, x in
                      (("untiled", ref), ("naive", nai), ("fast", fast), ("exact", exact))},
            "rows": rows, "cols": cols}


def calibrate(args: argparse.Namespace) -> dict[str, Any]:
    """Measured peak RSS growth / graph activation bytes for the untiled graph, the tile graph and the segments."""
    code = r"""
import json, resource, sys, numpy as np
from emostyle_rt.manifest import load_manifest
from emostyle_rt.tiling import TiledStyle
from emostyle_rt.backends import make_runner
m = load_manifest(sys.argv[1]); st = m.style_for("angry"); kind, side = sys.argv[2], int(sys.argv[3])
img = np.random.default_rng(0).integers(0, 256, (side, side, 3), dtype=np.uint8)
def vm(f):
    return [int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith(f + ":")][0]
t = TiledStyle(m.root, st, provider="cpu")
if kind == "whole":
    r = make_runner(m.path(st.onnx), provider="cpu"); b = vm("VmRSS"); r.run({"image": img[None]}); bpp = st.tiled.bytes_per_pixel; px = side * side
elif kind == "stats":
    r = t.runner(st.tiled.stats); b = vm("VmRSS"); r.run({"image": img[None]}); bpp = st.tiled.stats.bytes_per_pixel; px = side * side
elif kind == "tile":
    stats = t.statistics(img, 64); r = t.runner(st.tiled.tile); b = vm("VmRSS"); r.run({"image": img[None], **stats}); bpp = st.tiled.tile.bytes_per_pixel; px = side * side
else:
    t.runner(st.tiled.segments[0]); b = vm("VmRSS"); t.run_exact(img, strip_rows=64, spool_ram=0)
    bpp = max(g.bytes_per_pixel for g in st.tiled.segments); px = side * (64 + 2 * max(g.halo for g in st.tiled.segments))
print(json.dumps({"kind": kind, "side": side, "delta_mb": round((vm("VmHWM") - b) / 2**20), "ratio": round((vm("VmHWM") - b) / px / bpp, 2)}))
"""
    rows = []
    for kind, side in (("whole", 512), ("whole", 1024), ("whole", 1448), ("tile", 512), ("tile", 1024), ("tile", 1448),
                       ("stats", 512), ("stats", 1024),
                       ("segments", 1024), ("segments", 2048)):
        out = subprocess.run([sys.executable, "-c", code, str(args.bundle), kind, str(side)], check=True,
                             capture_output=True, text=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), flush=True)
    return {"calibration": rows}


def _size(text: str) -> tuple[int, int]:
    w, _, h = text.lower().partition("x")
    return int(w), int(h)


def main(argv: list[str] | None = None) -> int:
    from emostyle_rt.tiling import parse_memory

    p = argparse.ArgumentParser(prog="python studies/tiling/tiling.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", type=Path, required=True, help="a bundle with tiled graphs")
    p.add_argument("--size", type=_size, default=(4000, 3000), help="photo size WxH (default 4000x3000)")
    p.add_argument("--budget", type=parse_memory, default=parse_memory("1.6GB"),
                   help="memory budget of the tiled runs (default 1.6GB)")
    p.add_argument("--modes", default="untiled,fast,exact", help="comma-separated modes, run interleaved")
    p.add_argument("--pairs", type=int, default=1, help="rounds of interleaved runs (default 1)")
    p.add_argument("--emotion", default="angry", help="the style to run (default angry)")
    p.add_argument("--backend", default="auto", help="the Stylizer's backend (auto: OpenVINO on CPU where installed)")
    p.add_argument("--picture", default=None, help="write the README picture (a crop around a tile corner) here")
    p.add_argument("--crop", type=int, default=384, help="side of the picture's crops (default 384)")
    p.add_argument("--calibrate", action="store_true", help="measure RSS per graph activation byte")
    p.add_argument("--out", type=Path, default=None, help="also write the JSON result here")
    p.add_argument("--baseline", type=Path, default=None,
                   help="a checkout (with its .venv) that runs the modes ending in @base, for before/after runs")
    p.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    p.add_argument("--save", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if args.child:
        child(args)
        return 0
    result = calibrate(args) if args.calibrate else picture(args) if args.picture else compare(args)
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
