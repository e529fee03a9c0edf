"""OpenVINO against onnxruntime on CPU, interleaved: style, classifier, detector graphs, the chain; cold start, RSS;
bf16 and int8 against fp32 on a trained style network.

    python -m emostyle_bench.openvino_cpu --bundle bundles/demo --trained trained.onnx \\
        --json benchmarks/results/openvino-cpu.json --markdown benchmarks/results/openvino-cpu.md \\
        --picture benchmarks/results/openvino-precision.png

One command, re-runnable on a quiet machine. Every case times its paths round
by round in one process (the order rotates each round), so load from other
processes hits all of them alike; medians, and the median of the per-round
ratios, are reported, with each path's max |diff| against onnxruntime. Cold
start and peak RSS run in fresh processes, paths alternating. ``--trained``: a
trained style network, the ``.pth`` of ``emostyle-train style`` (exported here
as ``emostyle-export`` would) or its ONNX graph; without it the precision study
is skipped.
int8 is onnxruntime's post-training static quantization (QDQ, per-channel
weights, Conv only), calibrated on scikit-image photos (``CALIBRATION``), and
judged on other real photos (``HELD_OUT``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

SIZES = {"512": (512, 512), "720p": (1280, 720), "1080p": (1920, 1080)}
#: Style cases with more pixels than this per run are left out (1080p at batch 4: onnxruntime's arena alone takes
#: about 11 GB there, and the Stylizer never runs such a batch: it stacks images up to 1 MP per run).
MAX_CASE_PIXELS = 4_000_000
#: Real photos the int8 graph is calibrated on (scikit-image), and others (not among them) it is judged on.
CALIBRATION = ("astronaut", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field", "retina", "colorwheel")
HELD_OUT = ("coffee", "cat")


def _photo(name: str) -> np.ndarray:
    from skimage import data

    im = getattr(data, name)()
    return np.ascontiguousarray(im[..., :3] if im.ndim == 3 else np.dstack([im] * 3))


def _resized(im: np.ndarray, w: int, h: int) -> np.ndarray:
    import cv2

    return cv2.resize(im, (w, h), interpolation=cv2.INTER_AREA if w * h < im.shape[0] * im.shape[1] else cv2.INTER_CUBIC)


def interleave(paths: dict[str, Callable[[], Any]], rounds: int, calls: int = 1) -> dict[str, list[float]]:
    """Seconds per call of each path, ``rounds`` rounds, every path once per round (order rotated), after one warm-up."""
    for fn in paths.values():
        fn()
    names = list(paths)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        for n in names[r % len(names):] + names[: r % len(names)]:
            t0 = time.perf_counter()
            for _ in range(calls):
                paths[n]()
            times[n].append((time.perf_counter() - t0) / calls)
    return times


def summarize(times: dict[str, list[float]], base: str) -> dict[str, Any]:
    """Medians (ms) and the median per-round speed-up of each path over ``base`` (> 1: faster than base)."""
    out: dict[str, Any] = {}
    for n, ts in times.items():
        ratio = statistics.median(b / t for b, t in zip(times[base], ts))
        out[n] = {"median_ms": round(statistics.median(ts) * 1000, 3), "speedup_vs_" + base: round(ratio, 3),
                  "runs_ms": [round(t * 1000, 2) for t in ts]}
    return out


def _maxdiff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max())


# ---------------------------------------------------------------- stages


def bench_style(m: Any, sizes: list[str], batches: list[int], rounds: int, bf16: bool) -> list[dict[str, Any]]:
    from emostyle_rt.backends import load_graph

    sid = m.emotions[m.labels[0]]
    spec = m.styles[sid]
    path = m.path(spec.onnx)
    runners = {"onnxruntime": load_graph(path, backend="onnxruntime", provider="cpu"), "openvino-fp32": load_graph(path, backend="openvino")}
    if bf16:
        runners["openvino-bf16"] = load_graph(path, backend="openvino", precision="bf16")
    rows = []
    base = _photo("astronaut")
    for size in sizes:
        w, h = SIZES[size]
        for b in batches:
            if w * h * b > MAX_CASE_PIXELS:
                continue
            x = np.stack([np.roll(_resized(base, w, h), 37 * i, axis=1) for i in range(b)])
            outs = {n: r.run({spec.input_name: x})[spec.output_name] for n, r in runners.items()}
            t = interleave({n: (lambda r=r: r.run({spec.input_name: x})) for n, r in runners.items()}, rounds)
            rows.append({"stage": "style", "size": size, "batch": b, "paths": summarize(t, "onnxruntime"),
                         "max_abs_diff_vs_onnxruntime": {n: _maxdiff(o, outs["onnxruntime"]) for n, o in outs.items()}})
            _say(rows[-1])
    for r in runners.values():
        r.close()
    return rows


def bench_small_graphs(m: Any, rounds: int, calls: int) -> list[dict[str, Any]]:
    """The classifier (batch 1 and 4) and MTCNN's three graphs at the shapes of a 512x512 photo."""
    from emostyle_rt.backends import load_graph

    rng = np.random.default_rng(0)
    face = _resized(_photo("astronaut")[40:200, 150:290], 128, 128)
    cases: list[tuple[str, str, Path, dict[str, np.ndarray]]] = []
    c = m.classifier
    for b in (1, 4):
        cases.append(("classifier", f"{b}x128x128", m.path(c.onnx), {c.input_name: np.stack([face] * b)}))
    if m.detector is not None:
        d = m.detector
        level = (_resized(_photo("astronaut"), 307, 307).astype(np.float32) - 127.5) / 128.0
        cases += [
            ("detector pnet", "1x307x307", m.path(d.pnet.onnx), {d.pnet.input_name: level[None]}),
            ("detector rnet", "16x24x24", m.path(d.rnet.onnx),
             {d.rnet.input_name: rng.uniform(-1, 1, (16, 24, 24, 3)).astype(np.float32)}),
            ("detector onet", "4x48x48", m.path(d.onet.onnx),
             {d.onet.input_name: rng.uniform(-1, 1, (4, 48, 48, 3)).astype(np.float32)}),
        ]
    rows = []
    for stage, shape, path, feed in cases:
        runners = {"onnxruntime": load_graph(path, backend="onnxruntime", provider="cpu"), "openvino-fp32": load_graph(path, backend="openvino")}
        outs = {n: r.run(feed) for n, r in runners.items()}
        t = interleave({n: (lambda r=r: r.run(feed)) for n, r in runners.items()}, rounds, calls)
        diff = {n: max(_maxdiff(o[k], outs["onnxruntime"][k]) for k in o) for n, o in outs.items()}
        rows.append({"stage": stage, "size": shape, "batch": int(shape.split("x")[0]),
                     "paths": summarize(t, "onnxruntime"), "max_abs_diff_vs_onnxruntime": diff})
        _say(rows[-1])
        for r in runners.values():
            r.close()
    return rows


#: Chain paths of the fresh process: (label, Stylizer backend, MTCNN's backend; None: the Stylizer's).
#: "default, MTCNN in OpenVINO": the default with the detector's graphs in OpenVINO (``auto`` keeps them in
#: onnxruntime: benchmarks/results/openvino-cpu-mtcnn.md).
CHAIN_PATHS = (("onnxruntime", "onnxruntime", None), ("default (auto)", "auto", None),
               ("default, MTCNN in OpenVINO", "auto", "openvino"))


class _Plans:
    """Counts the Stylizer's "Style ... in tiles" log records, so each chain row says whether a path ran tiled."""

    def __init__(self) -> None:
        import logging

        self.tiled: list[str] = []
        self.handler = logging.Handler()
        self.handler.emit = lambda rec: self.tiled.append(rec.getMessage()) if "in tiles" in rec.getMessage() else None
        log = logging.getLogger("emostyle_rt.stylizer")
        log.addHandler(self.handler)
        log.setLevel(logging.INFO)


def bench_chain(bundle: Path, sizes: list[str], rounds: int, eager: bool) -> list[dict[str, Any]]:
    """The whole chain in a fresh process (``_chain_child``): ``CHAIN_PATHS`` and the eager chain, interleaved.

    Fresh because a Stylizer's default memory budget is 2.5 GB less what its process held when it opened: opened
    after the style stage above (5.4 GB held, mostly onnxruntime's shared arena), every path got the 512 MB floor
    and 720p and 1080p ran in exact tiles with their activations spooled to disk, which is not what a user's process
    (one that opens its Stylizer first) does.
    """
    cmd = [sys.executable, "-m", "emostyle_bench.openvino_cpu", "--chain-child", "--bundle", str(bundle),
           "--sizes", ",".join(sizes), "--rounds", str(rounds)] + (["--no-eager"] if not eager else [])
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"the chain's child process failed ({done.returncode}): {done.stderr[-2000:]}")
    rows = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    for row in rows:
        _say(row)
    return rows


def _chain_child(bundle: Path, sizes: list[str], rounds: int, eager: bool) -> None:
    """In a fresh process: open every path's Stylizer first (each plans its budget as a user's process would), then
    time them interleaved; one JSON row per size on stdout, with each path's plan (whole, or how it was tiled)."""
    from emostyle_rt import Stylizer
    from emostyle_rt.manifest import load_manifest
    from emostyle_rt.detection.mtcnn import MtcnnDetector
    from emostyle_rt.tiling import process_rss

    plans = _Plans()
    stylizers: dict[str, Any] = {}
    held: dict[str, float] = {}
    for label, backend, detector_backend in CHAIN_PATHS:
        held[label] = round((process_rss() or 0) / 1e6)
        detector = None
        if detector_backend is not None:
            m = load_manifest(bundle)
            detector = MtcnnDetector(m.detector, m.root, backend=detector_backend)  # type: ignore[arg-type]
        st = stylizers[label] = Stylizer(bundle, backend=backend, detector=detector)
        st._detector.preload()  # the detector's sessions are made now
    fns: dict[str, Callable[[np.ndarray], tuple[str, np.ndarray]]] = {}

    def ours(st: Any) -> Callable[[np.ndarray], tuple[str, np.ndarray]]:
        def run(x: np.ndarray) -> tuple[str, np.ndarray]:
            r = st.stylize(x)
            return r.emotion, r.image
        return run

    for label, st in stylizers.items():
        fns[label] = ours(st)
    if eager:
        from emostyle_bench.paths import Context, _eager_chain

        chain = _eager_chain(Context(bundle))

        def eager_run(x: np.ndarray) -> tuple[str, np.ndarray]:
            out = chain(x[None])
            return out.emotions[0], out.images[0]

        fns["eager (Keras + PyTorch)"] = eager_run
    for size in sizes:
        x = _resized(_photo("astronaut"), *SIZES[size])
        tiled: dict[str, list[str]] = {}
        outs = {}
        for n, f in fns.items():
            plans.tiled.clear()
            outs[n] = f(x)
            tiled[n] = list(plans.tiled)
        t = interleave({n: (lambda f=f: f(x)) for n, f in fns.items()}, rounds)
        default = stylizers["default (auto)"]
        style_runner = next(iter(default._styles.values())).name
        print(json.dumps({
            "stage": "chain", "size": size, "batch": 1, "default_style_engine": style_runner,
            "fresh_process": True, "rss_mb_when_opened": held,
            "plan": {n: ("; ".join(dict.fromkeys(v)) or "whole") if n in stylizers else "whole (no budget)"
                     for n, v in tiled.items()},
            "paths": summarize(t, "onnxruntime"), "emotions": {n: o[0] for n, o in outs.items()},
            "max_abs_diff_vs_onnxruntime": {n: _maxdiff(o[1], outs["onnxruntime"][1]) for n, o in outs.items()}}),
            flush=True)
    for st in stylizers.values():
        st.close()


_COLD = """
import json, sys, time
t0 = time.perf_counter()
import numpy as np
from emostyle_rt import Stylizer
t_import = time.perf_counter() - t0
st = Stylizer(sys.argv[1], backend=sys.argv[2])
t_open = time.perf_counter() - t0
x = np.load(sys.argv[3])
st.stylize(x, emotion=st.labels[0])
t_first = time.perf_counter() - t0
print(json.dumps({"import_s": t_import, "open_s": t_open, "first_result_s": t_first,
                  "openvino_imported": "openvino" in sys.modules,
                  "peak_rss_mb": int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM")).split()[1]) / 1024}))
"""


def bench_coldstart(bundle: Path, size: str, pairs: int) -> dict[str, Any]:
    """Fresh processes, one photo each: onnxruntime; OpenVINO with an empty user cache (compile + gate); warm cache."""
    runs: dict[str, list[dict[str, float]]] = {"onnxruntime": [], "openvino (empty cache)": [], "openvino (warm cache)": []}
    with tempfile.TemporaryDirectory(prefix="emostyle-ov-bench-") as tmp:
        photo = Path(tmp) / "photo.npy"
        np.save(photo, _resized(_photo("astronaut"), *SIZES[size]))
        for i in range(pairs):
            cache = Path(tmp) / f"cache{i}"
            for name, backend in (("onnxruntime", "onnxruntime"), ("openvino (empty cache)", "openvino"),
                                  ("openvino (warm cache)", "openvino")):
                env = {**os.environ, "EMOSTYLE_CACHE_DIR": str(cache)}
                done = subprocess.run([sys.executable, "-c", _COLD, str(bundle), backend, str(photo)], env=env,
                                      capture_output=True, text=True, check=True)
                runs[name].append(json.loads(done.stdout.strip().splitlines()[-1]))
    out = {n: {k: round(statistics.median(r[k] for r in rs), 3) for k in rs[0] if k != "openvino_imported"}
           for n, rs in runs.items()}
    result = {"stage": "coldstart", "size": size, "pairs": pairs, "medians": out, "runs": runs}
    _say(result)
    return result


def bench_rss(bundle: Path, photos: int, size: str) -> dict[str, Any]:
    """studies/peak_rss/peak_rss.py per backend (photos cycling through all seven emotions), fresh processes.

    The study is not installed: this stage runs from a source checkout only.
    """
    w, h = SIZES[size]
    script = Path(__file__).resolve().parents[2] / "studies" / "peak_rss" / "peak_rss.py"  # src/emostyle_bench/ -> repo
    if not script.is_file():
        raise SystemExit(f"The rss stage runs the peak_rss study, which is not installed; {script} does not exist. "
                         "Note: expected a source checkout of emostyle-rt (studies/ beside src/), "
                         "available: an installed emostyle_bench only.")
    out = {}
    for backend in ("onnxruntime", "auto"):
        done = subprocess.run([sys.executable, str(script), "--bundle", str(bundle),
                               "--photos", str(photos), "--size", f"{w}x{h}", "--backend", backend],
                              capture_output=True, text=True, check=True)
        out[backend] = json.loads(done.stdout.strip().splitlines()[-1])
    result = {"stage": "rss", "size": size, "photos": photos, "runs": out}
    _say(result)
    return result


# ---------------------------------------------------------------- precision on a trained network


def quantize_int8(onnx_path: Path, out: Path, size: int = 256) -> Path:
    """onnxruntime's static PTQ: QDQ, per-channel int8 weights, uint8 activations, Conv only, on CALIBRATION photos."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    feeds = iter([{"image": _resized(_photo(n), size, size)[None]} for n in CALIBRATION])

    class Reader(CalibrationDataReader):
        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(feeds, None)

    pre = out.with_name(out.stem + "-pre.onnx")
    quant_pre_process(str(onnx_path), str(pre), skip_symbolic_shape=True)
    quantize_static(str(pre), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, op_types_to_quantize=["Conv"])
    pre.unlink()
    return out


def bench_precision(trained: Path, sizes: list[str], rounds: int, picture: Path | None) -> list[dict[str, Any]]:
    from emostyle_rt.backends import load_graph
    from emostyle_rt.metrics import psnr

    with tempfile.TemporaryDirectory(prefix="emostyle-int8-") as tmp:
        if trained.suffix == ".pth":  # a checkpoint of emostyle-train style: its ONNX graph as emostyle-export writes it
            from emostyle_export.checkpoints import load_style_checkpoint
            from emostyle_export.styles import export_style

            ckpt = load_style_checkpoint(trained)
            export_style(ckpt.model, ckpt.convention, Path(tmp) / "trained.onnx")
            trained = Path(tmp) / "trained.onnx"
        int8 = quantize_int8(trained, Path(tmp) / "int8.onnx")
        runners = {"onnxruntime-fp32": load_graph(trained, backend="onnxruntime", provider="cpu"),
                   "openvino-fp32": load_graph(trained, backend="openvino"), "openvino-bf16": load_graph(trained, backend="openvino", precision="bf16"),
                   "openvino-int8": load_graph(int8, backend="openvino"), "onnxruntime-int8": load_graph(int8, backend="onnxruntime", provider="cpu")}
        rows = []
        for size in sizes:
            w, h = SIZES[size]
            for name in HELD_OUT:
                x = _resized(_photo(name), w, h)[None]
                outs = {n: r.run({"image": x})["styled"] for n, r in runners.items()}
                t = interleave({n: (lambda r=r: r.run({"image": x})) for n, r in runners.items()}, rounds)
                ref = outs["openvino-fp32"]
                rows.append({"stage": "precision", "size": size, "photo": name, "batch": 1,
                             "paths": summarize(t, "openvino-fp32"),
                             "psnr_db_vs_openvino_fp32": {n: round(psnr(o, ref, cap=99.0), 2) for n, o in outs.items()},
                             "max_abs_diff_vs_openvino_fp32": {n: _maxdiff(o, ref) for n, o in outs.items()}})
                _say(rows[-1])
                if picture is not None and size == sizes[0] and name == HELD_OUT[0]:
                    _picture(picture, x[0], [("fp32", ref[0]), ("bf16", outs["openvino-bf16"][0]),
                                             ("int8", outs["openvino-int8"][0])])
        for r in runners.values():
            r.close()
    return rows


def _picture(path: Path, src: np.ndarray, outs: list[tuple[str, np.ndarray]]) -> None:
    """Input | fp32 | bf16 | int8, each labelled, and the same order for |diff| x8 against fp32 underneath."""
    import cv2

    tiles = [("input", src)] + outs
    top = [cv2.putText(im.copy(), lab, (8, 28), cv2.FONT_HERSHEY_SIMPLEX, 0.9, (255, 255, 255), 2) for lab, im in tiles]
    ref = outs[0][1].astype(int)
    bottom = [np.zeros_like(src)] + [np.clip(np.abs(im.astype(int) - ref) * 8, 0, 255).astype(np.uint8)
                                     for _, im in outs]
    grid = np.vstack([np.hstack(top), np.hstack(bottom)])
    cv2.imwrite(str(path), cv2.cvtColor(grid, cv2.COLOR_RGB2BGR))


# ---------------------------------------------------------------- report


def _say(row: dict[str, Any]) -> None:
    print(json.dumps({k: v for k, v in row.items() if k not in ("runs",)}), flush=True)


def lscpu() -> dict[str, str]:
    """Model name and flags, as ``lscpu`` prints them (``/proc/cpuinfo`` where lscpu is missing)."""
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
        return {k: fields.get(k, "").strip() for k in ("Model name", "CPU(s)", "Thread(s) per core", "Flags")}
    except (OSError, subprocess.SubprocessError):
        from emostyle_bench.machine import cpu_model

        return {"Model name": cpu_model()}


def markdown(result: dict[str, Any]) -> str:
    cpu = result["lscpu"]
    flags = set(cpu.get("Flags", "").split())
    notable = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8", "avx512_fp16")
               if f in flags]
    lines = [f"# OpenVINO against onnxruntime on CPU ({cpu.get('Model name')}, {cpu.get('CPU(s)')} cores)", "",
             f"CPU: {cpu.get('Model name')}, {cpu.get('CPU(s)')} logical CPUs, flags of note: {' '.join(notable)} "
             f"(full `lscpu` flags in the JSON). OpenVINO {result['versions'].get('openvino')}, onnxruntime "
             f"{result['versions'].get('onnxruntime')}. Load average at start / end: {result['load_start']} / "
             f"{result['load_end']}.", "", f"Command: `{result['command']}`", ""]
    lines += ["| stage | size | batch | path | median ms | speed-up vs baseline | max diff |", "|---|---|---:|---|---:|---:|---:|"]
    for row in result["rows"]:
        if "paths" not in row:
            continue
        diffs = row.get("max_abs_diff_vs_onnxruntime") or row.get("max_abs_diff_vs_openvino_fp32") or {}
        psnrs = row.get("psnr_db_vs_openvino_fp32", {})
        for n, p in row["paths"].items():
            ratio = next(v for k, v in p.items() if k.startswith("speedup_vs_"))
            extra = f"{diffs.get(n, 0):g}" + (f" ({psnrs[n]} dB)" if n in psnrs else "")
            where = row["size"] + (f" {row['photo']}" if "photo" in row else "")
            lines.append(f"| {row['stage']} | {where} | {row['batch']} | {n} | {p['median_ms']:.1f} | {ratio:.2f}x | {extra} |")
    chains = [row for row in result["rows"] if row["stage"] == "chain" and "plan" in row]
    if chains:
        lines += ["", "Chain rows: each path's Stylizer opened in one fresh process (RSS when each opened, MB: "
                      + ", ".join(f"{n} {v}" for n, v in chains[0]["rss_mb_when_opened"].items())
                      + "); how each path ran the style graph:", ""]
        for row in chains:
            lines.append(f"- {row['size']}: " + "; ".join(f"{n}: {p}" for n, p in row["plan"].items()))
    for row in result["rows"]:
        if row["stage"] == "coldstart":
            lines += ["", f"Cold start, fresh processes, one {row['size']} photo (medians of {row['pairs']}):", "",
                      "| path | import s | open s | first result s | peak RSS MB |", "|---|---:|---:|---:|---:|"]
            for n, v in row["medians"].items():
                lines.append(f"| {n} | {v['import_s']:.2f} | {v['open_s']:.2f} | {v['first_result_s']:.2f} | "
                             f"{v['peak_rss_mb']:.0f} |")
        if row["stage"] == "rss":
            lines += ["", f"Peak RSS over {row['photos']} photos of {row['size']} cycling through the seven emotions "
                          "(studies/peak_rss/peak_rss.py):", ""]
            for n, v in row["runs"].items():
                lines.append(f"- backend {n}: peak {v['peak_rss_mb']} MB, end {v['rss_end_mb']} MB, "
                             f"median {v.get('median_photo_after_first_pass_s', '?')} s per photo after the first pass, style engines {', '.join(v.get('style_engines', []))}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m emostyle_bench.openvino_cpu", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", type=Path, required=True)
    ap.add_argument("--trained", type=Path, default=None,
                    help="a trained style network for the precision study: its .pth (emostyle-train style) or .onnx")
    ap.add_argument("--sizes", default="512,720p,1080p")
    ap.add_argument("--batches", default="1,4")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--calls", type=int, default=20, help="calls per timed run of the small graphs")
    ap.add_argument("--stages", default="style,small,chain,coldstart,rss,precision")
    ap.add_argument("--no-eager", action="store_true", help="leave the eager Keras + PyTorch chain out")
    ap.add_argument("--coldstart-pairs", type=int, default=3)
    ap.add_argument("--rss-photos", type=int, default=50)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--markdown", type=Path, default=None)
    ap.add_argument("--picture", type=Path, default=None, help="PNG: input | fp32 | bf16 | int8 and |diff| x8")
    ap.add_argument("--chain-child", action="store_true", help=argparse.SUPPRESS)  # the chain's fresh process
    a = ap.parse_args(argv)
    if a.chain_child:
        _chain_child(a.bundle, a.sizes.split(","), a.rounds, not a.no_eager)
        return 0
    from importlib import metadata

    from emostyle_rt.backends import openvino as ovb
    from emostyle_rt.manifest import load_manifest

    if not ovb.installed():
        print("OpenVINO is not installed: pip install 'emostyle-rt[cpu]'", file=sys.stderr)
        return 2
    m = load_manifest(a.bundle)
    sizes, batches, stages = a.sizes.split(","), [int(b) for b in a.batches.split(",")], a.stages.split(",")
    bf16 = "BF16" in ovb.core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    result: dict[str, Any] = {
        "command": "python -m emostyle_bench.openvino_cpu " + " ".join(argv if argv is not None else sys.argv[1:]),
        "lscpu": lscpu(), "load_start": os.getloadavg(), "threads": os.environ.get("EMOSTYLE_CPU_THREADS") or "default",
        "versions": {d: metadata.version(d) for d in ("openvino", "onnxruntime", "numpy") if _has(d)}, "rows": []}
    rows = result["rows"]
    if "style" in stages:
        rows += bench_style(m, sizes, batches, a.rounds, bf16)
    if "small" in stages:
        rows += bench_small_graphs(m, a.rounds, a.calls)
    if "chain" in stages:
        rows += bench_chain(a.bundle, sizes, a.rounds, not a.no_eager)
    if "coldstart" in stages:
        rows.append(bench_coldstart(a.bundle, "512", a.coldstart_pairs))
    if "rss" in stages and a.rss_photos > 0:
        rows.append(bench_rss(a.bundle, a.rss_photos, "720p"))
    if "precision" in stages and a.trained is not None:
        rows += bench_precision(a.trained, [s for s in sizes if s != "1080p"] or sizes, a.rounds, a.picture)
    result["load_end"] = os.getloadavg()
    if a.json:
        a.json.write_text(json.dumps(result, indent=1) + "\n")
    if a.markdown:
        a.markdown.write_text(markdown(result))
    return 0


def _has(dist: str) -> bool:
    from importlib import metadata

    try:
        metadata.version(dist)
        return True
    except metadata.PackageNotFoundError:
        return False


if __name__ == "__main__":
    raise SystemExit(main())
