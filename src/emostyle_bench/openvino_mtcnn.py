"""MTCNN on OpenVINO against onnxruntime on CPU, interleaved: whole detect and each graph, real photos, same boxes.

    python -m emostyle_bench.openvino_mtcnn --bundle bundles/demo --extra /work/shared/data/amber.jpg \\
        --json benchmarks/results/openvino-cpu-mtcnn.json --markdown benchmarks/results/openvino-cpu-mtcnn.md

Three detectors of the bundle's MTCNN run the same photos in one process:
"onnxruntime" (all three graphs there), "openvino" (all three in OpenVINO, gated)
and "auto" (what ``backend="auto"`` picks on this machine). Each round runs every
path once on every photo at every size, the order rotating per round, so load
from other processes hits all alike; medians and the median per-round ratio over
onnxruntime are reported, for the whole ``detect`` and for each graph (the time
inside its runner, summed over the calls of one detect). Boxes are compared with
onnxruntime's: count, and the IoU of each box with its match.

``--static``: P-Net on the pyramid of a 720p photo, with dynamic shapes (one
compiled model, what the detector does) against one static model compiled per
level, and what compiling those costs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from emostyle_bench.openvino_cpu import SIZES, _photo, _resized, lscpu

#: scikit-image photos: two with a face (astronaut, camera), two without (coffee, chelsea: a cat).
PHOTOS = ("astronaut", "camera", "coffee", "chelsea")
GRAPHS = ("pnet", "rnet", "onet")


class _Timed:
    """A runner whose run time is added to ``spent[key]``."""

    def __init__(self, runner: Any, key: str, spent: dict[str, float]) -> None:
        self.runner, self.key, self.spent = runner, key, spent
        self.inputs, self.outputs, self.name = runner.inputs, runner.outputs, runner.name

    def run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        t0 = time.perf_counter()
        out = self.runner.run(feed)
        self.spent[self.key] += time.perf_counter() - t0
        return out

    def close(self) -> None:
        self.runner.close()


def _iou(a: tuple[int, ...], b: tuple[int, ...]) -> float:
    from emostyle_rt.metrics import box_iou

    return box_iou(a, b)


def compare_boxes(ref: list[Any], got: list[Any]) -> dict[str, Any]:
    """Count of each, and the least IoU of a reference box with its best match (1.0 when both are empty)."""
    ious = [max((_iou(r.box, g.box) for g in got), default=0.0) for r in ref]
    return {"count_onnxruntime": len(ref), "count": len(got), "min_iou": round(min(ious, default=1.0), 4),
            "same_boxes": [f.box for f in ref] == [f.box for f in got]}


def _timed_detect(det: Any, im: np.ndarray, spent: dict[str, float], times: dict[str, list[float]]) -> None:
    """One detect: its time to ``times["detect"]``, each graph's runner time to ``times[graph]``."""
    for g in GRAPHS:
        spent[g] = 0.0
    t0 = time.perf_counter()
    det.detect(im)
    times["detect"].append(time.perf_counter() - t0)
    for g in GRAPHS:
        times[g].append(spent[g])


def bench_detect(bundle: Path, photos: dict[str, np.ndarray], sizes: list[str], rounds: int) -> list[dict[str, Any]]:
    dets, spent = _detectors(bundle)
    cases = [(name, size, _resized(im, *SIZES[size])) for size in sizes for name, im in photos.items()]
    rows = []
    for name, size, im in cases:
        faces = {label: d.detect(im) for label, d in dets.items()}  # warm-up (and the gates, on first use)
        times: dict[str, dict[str, list[float]]] = {label: {k: [] for k in ("detect", *GRAPHS)} for label in dets}
        labels = list(dets)
        for r in range(rounds):
            for label in labels[r % len(labels):] + labels[: r % len(labels)]:
                _timed_detect(dets[label], im, spent[label], times[label])
        row: dict[str, Any] = {"photo": name, "size": size, "paths": {}}
        for label in dets:
            row["paths"][label] = {
                k: {"median_ms": round(statistics.median(v) * 1000, 3),
                    "speedup_vs_onnxruntime": round(statistics.median(
                        b / t for b, t in zip(times["onnxruntime"][k], v) if t > 0), 3) if all(v) else None}
                for k, v in times[label].items()}
            row["paths"][label]["boxes"] = compare_boxes(faces["onnxruntime"], faces[label])
        rows.append(row)
        print(json.dumps({"photo": name, "size": size, **{lab: {k: v["speedup_vs_onnxruntime"] for k, v in p.items()
                                                                 if k != "boxes"} for lab, p in row["paths"].items()}}),
              flush=True)
    serving = {label: {g: getattr(d._runners[g].runner, "serving", d._runners[g].runner.name) for g in GRAPHS}
               for label, d in dets.items()}
    for d in dets.values():
        d.close()
    return [{"serving": serving}, *rows]


def _detectors(bundle: Path) -> tuple[dict[str, Any], dict[str, dict[str, float]]]:
    """The three paths' detectors, graphs loaded, each graph's runner timed into ``spent[path][graph]``."""
    from emostyle_rt.manifest import load_manifest
    from emostyle_rt.detection.mtcnn import MtcnnDetector

    m = load_manifest(bundle)
    dets, spent = {}, {}
    for label in ("onnxruntime", "openvino", "auto"):
        det = MtcnnDetector(m.detector, m.root, backend=label)  # type: ignore[arg-type]
        det.preload()
        spent[label] = dict.fromkeys(GRAPHS, 0.0)
        for g in GRAPHS:
            det._runners[g] = _Timed(det._runners[g], g, spent[label])
        dets[label] = det
    return dets, spent


#: Image sizes no path has seen (``--new-sizes``): 20 sizes from 301x257 to 624x580, each its own pyramid.
NEW_SIZES = tuple(zip(range(301, 641, 17), range(257, 597, 17)))


def bench_new_sizes(bundle: Path, passes: int) -> list[dict[str, Any]]:
    """Each path detects astronaut at ``NEW_SIZES`` in turn (order alternating), ``passes`` times over: pass 1 is
    what a folder of photos of different sizes sees (every shape new), later passes a repeat of the same sizes."""
    dets, spent = _detectors(bundle)
    base = _photo("astronaut")
    for d in dets.values():
        d.detect(base)  # the gates, at 512x512
    out = []
    for k in range(passes):
        times: dict[str, dict[str, list[float]]] = {lab: {g: [] for g in ("detect", *GRAPHS)} for lab in dets}
        for i, (w, h) in enumerate(NEW_SIZES):
            im = _resized(base, w, h)
            labels = list(dets)
            for lab in labels[i % 3:] + labels[: i % 3]:
                _timed_detect(dets[lab], im, spent[lab], times[lab])
        row = {"pass": k + 1, "paths": {lab: {g: {
            "total_ms": round(sum(v) * 1000, 1),
            "speedup_vs_onnxruntime": round(statistics.median(b / t for b, t in zip(times["onnxruntime"][g], v) if t > 0), 3)
            if all(v) else None} for g, v in tt.items()} for lab, tt in times.items()}}
        out.append(row)
        print(json.dumps({"pass": k + 1, **{lab: {g: v["speedup_vs_onnxruntime"] for g, v in p.items()}
                                            for lab, p in row["paths"].items()}}), flush=True)
    for d in dets.values():
        d.close()
    return out


def bench_static(bundle: Path, rounds: int) -> dict[str, Any]:
    """P-Net on a 720p photo's pyramid: dynamic shapes (one model) against a static model per level."""
    import cv2

    from emostyle_rt.backends import ort as ortb
    from emostyle_rt.backends import openvino as ovb
    from emostyle_rt.detection.faces import downscale
    from emostyle_rt.manifest import load_manifest
    from emostyle_rt.detection.mtcnn import MTCNN_DETECT_SIDE, level_shape, pyramid_scales

    m = load_manifest(bundle)
    d = m.detector
    small, _ = downscale(_resized(_photo("astronaut"), *SIZES["720p"]), MTCNN_DETECT_SIDE)
    levels = []
    for s in pyramid_scales(*small.shape[:2], d.min_face_size, d.min_size, d.scale_factor):  # type: ignore[union-attr]
        lh, lw = level_shape(*small.shape[:2], s)
        if min(lh, lw) >= d.min_size:  # type: ignore[union-attr]
            levels.append(cv2.resize(small.astype(np.float32), (lw, lh), interpolation=cv2.INTER_AREA)[None])
    path, name = str(m.path(d.pnet.onnx)), d.pnet.input_name  # type: ignore[union-attr]
    ort = ortb.OrtRunner(path, provider="cpu", small=True)
    dyn = ovb.OvRunner(path, use_cache=False)
    core = ovb.core()
    t0 = time.perf_counter()
    static = {}
    for lv in levels:
        model = core.read_model(path)
        model.reshape({name: list(lv.shape)})
        static[lv.shape] = core.compile_model(model, "CPU", {"PERFORMANCE_HINT": "LATENCY",
                                                             "INFERENCE_PRECISION_HINT": ovb.INFERENCE_PRECISION,
                                                             "INFERENCE_NUM_THREADS": ortb.cpu_threads()
                                                             }).create_infer_request()
    compile_ms = (time.perf_counter() - t0) * 1000

    def run_static() -> None:
        for lv in levels:
            static[lv.shape].infer({0: lv})

    fns = {"onnxruntime": lambda: [ort.run({name: lv}) for lv in levels],
           "openvino dynamic": lambda: [dyn.run({name: lv}) for lv in levels], "openvino static per level": run_static}
    from emostyle_bench.openvino_cpu import interleave, summarize

    out = summarize(interleave(fns, rounds * 5), "onnxruntime")
    for v in out.values():
        v.pop("runs_ms")
    ort.close()
    dyn.close()
    return {"levels": [list(lv.shape[1:3]) for lv in levels], "static_compile_ms_all_levels": round(compile_ms, 1),
            "paths": out}


def _x(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"  # None: the graph did not run (no candidates)


def markdown(result: dict[str, Any]) -> str:
    cpu = result["lscpu"]
    flags = set(cpu.get("Flags", "").split())
    notable = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8", "avx512_fp16")
               if f in flags]
    lines = ["# MTCNN on OpenVINO against onnxruntime (CPU)", "",
             f"Command: `{result['command']}`", "",
             f"Machine: {cpu.get('Model name', '?')}, {cpu.get('CPU(s)', '?')} CPUs (flags: {', '.join(notable)}); "
             f"{result['note']}", "",
             f"OpenVINO {result['openvino']}, onnxruntime {result['onnxruntime']}; {result['rounds']} interleaved "
             "rounds, medians; speed-up = median per-round ratio onnxruntime / path (> 1: faster).", "",
             f"Graphs serving each path: {json.dumps(result.get('serving'))}"
             + (f" ({result['paths_note']})" if result.get("paths_note") else ""), "",
             "| photo | size | detect ort ms | openvino ms (x) | P-Net, R-Net in OV ms (x) | P-Net ov x | R-Net ov x | O-Net ov x "
             "| faces ort / ov | min IoU |" , "|---|---|---:|---:|---:|---:|---:|---:|---|---:|"]
    for r in result["detect"]:
        p = r["paths"]
        lines.append(
            f"| {r['photo']} | {r['size']} | {p['onnxruntime']['detect']['median_ms']:.1f} | "
            f"{p['openvino']['detect']['median_ms']:.1f} ({p['openvino']['detect']['speedup_vs_onnxruntime']:.2f}) | "
            f"{p['auto']['detect']['median_ms']:.1f} ({p['auto']['detect']['speedup_vs_onnxruntime']:.2f}) | "
            + " | ".join(_x(p['openvino'][g]['speedup_vs_onnxruntime']) for g in GRAPHS)
            + f" | {p['openvino']['boxes']['count_onnxruntime']} / {p['openvino']['boxes']['count']} | "
            f"{p['openvino']['boxes']['min_iou']:.3f} |")
    s = result.get("summary")
    if s:
        lines += ["", "Medians over all photos and sizes of the per-case speed-ups (openvino path over onnxruntime): "
                  + ", ".join(f"{k} {v:.2f}x" for k, v in s.items())]
    st = result.get("static")
    if st:
        lines += ["", f"P-Net on a 720p photo's pyramid ({len(st['levels'])} levels, {st['levels'][0]} down to "
                  f"{st['levels'][-1]}): compiling a static model per level took {st['static_compile_ms_all_levels']} "
                  "ms in all.", "", "| P-Net path | ms per pyramid | x onnxruntime |", "|---|---:|---:|"]
        lines += [f"| {k} | {v['median_ms']:.2f} | {v['speedup_vs_onnxruntime']:.2f} |" for k, v in st["paths"].items()]
    ns = result.get("new_sizes")
    if ns:
        lines += ["", f"New sizes: astronaut at {len(NEW_SIZES)} image sizes no path had seen ({NEW_SIZES[0][0]}x"
                  f"{NEW_SIZES[0][1]} to {NEW_SIZES[-1][0]}x{NEW_SIZES[-1][1]}), paths alternating; pass 1 is every "
                  "shape new, passes 2+ the same sizes again"
                  + (f" (`{result['new_sizes_command']}`)" if result.get("new_sizes_command") else "") + ".", "",
                  "| pass | path | detect total ms | detect x | P-Net x | R-Net x | O-Net x |",
                  "|---|---|---:|---:|---:|---:|---:|"]
        for r in ns:
            for lab, p in r["paths"].items():
                lines.append(f"| {r['pass']} | {lab} | {p['detect']['total_ms']:.0f} | "
                             + " | ".join(_x(p[g]["speedup_vs_onnxruntime"]) for g in ("detect", *GRAPHS)) + " |")
    ch = result.get("chain")
    if ch:  # the whole chain, measured by emostyle_bench.openvino_cpu and kept here beside the detector's figures
        tried, kept = ("auto, P-Net and R-Net in OpenVINO (the rule first tried)",
                       "auto, MTCNN in onnxruntime (the rule kept: as on main)")
        lines += ["", f"Whole chain, MTCNN in onnxruntime against P-Net and R-Net in OpenVINO, one fresh process, "
                  f"interleaved: `{ch['command']}` ({ch['note']}).", "",
                  "| size | onnxruntime ms | P-Net, R-Net in OpenVINO ms | MTCNN in onnxruntime ms | speed-up of the "
                  "former | eager ms |", "|---|---:|---:|---:|---:|---:|"]
        for r in ch["rows"]:
            p = r["paths"]
            after, before = p[tried]["median_ms"], p[kept]["median_ms"]
            eager = p.get("eager (Keras + PyTorch)", {}).get("median_ms")
            lines.append(f"| {r['size']} | {p['onnxruntime']['median_ms']:.0f} | {after:.0f} | {before:.0f} | "
                         f"{before / after:.2f} | {'-' if eager is None else f'{eager:.0f}'} |")
    if result.get("reading"):
        lines += ["", "## Reading", "", result["reading"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m emostyle_bench.openvino_mtcnn", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", type=Path, required=True)
    ap.add_argument("--sizes", default="512,720p,1080p")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--extra", type=Path, nargs="*", default=[], help="more photos (JPEG/PNG files)")
    ap.add_argument("--static", action="store_true", help="also P-Net dynamic shapes against static per level")
    ap.add_argument("--new-sizes", type=int, default=0, metavar="PASSES",
                    help="also 20 image sizes never seen before, this many passes (0: not run)")
    ap.add_argument("--stages", default="detect", help="detect (the photos at --sizes), or none")
    ap.add_argument("--note", default="", help="what the machine was doing (load, other runs)")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--markdown", type=Path, default=None)
    args = ap.parse_args(argv)
    import onnxruntime

    from emostyle_rt.backends import openvino as ovb
    from emostyle_rt.imaging.io import read_image

    photos = {n: _photo(n) for n in PHOTOS}
    photos.update({p.stem: read_image(p) for p in args.extra})
    result = {"command": "python -m emostyle_bench.openvino_mtcnn " + " ".join(sys.argv[1:] if argv is None else argv),
              "lscpu": lscpu(), "note": args.note, "openvino": ovb.version(), "onnxruntime": onnxruntime.__version__,
              "rounds": args.rounds}
    if "detect" in args.stages.split(","):
        rows = bench_detect(args.bundle, photos, args.sizes.split(","), args.rounds)
        serving, rows = rows[0]["serving"], rows[1:]
        summary = {k: round(statistics.median(x for r in rows if (x := r["paths"]["openvino"][k]["speedup_vs_onnxruntime"])
                                              is not None), 3) for k in ("detect", *GRAPHS)}
        summary["auto detect"] = round(statistics.median(r["paths"]["auto"]["detect"]["speedup_vs_onnxruntime"]
                                                         for r in rows), 3)
        result.update(serving=serving, detect=rows, summary=summary)
        print(json.dumps(summary))
    if args.new_sizes:
        result["new_sizes"] = bench_new_sizes(args.bundle, args.new_sizes)
    if args.static:
        result["static"] = bench_static(args.bundle, args.rounds)
        print(json.dumps(result["static"]), flush=True)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    if args.markdown:
        args.markdown.write_text(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
