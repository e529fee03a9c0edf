"""Interleaved A/B of AOTInductor packages against onnxruntime on one style network.

``python studies/aoti_ab/aoti_ab.py BUNDLE [BUNDLE ...] --sizes 512,1080p --rounds 15``

Each BUNDLE holds packages of the style serving the first label (``emostyle-export
--bundle B --aoti [--precision bf16]``); the first bundle's FP32 ONNX graph runs
in onnxruntime (the runtime's own runner). Every round runs each path once on the
same real photo, in turn, so all of them see the same load on a shared machine;
the report gives each path's median and the median of the per-round ratios to
onnxruntime (ratio > 1: faster than onnxruntime).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np


def _paths(bundles: list[Path]) -> dict[str, Callable[[np.ndarray], np.ndarray]]:
    from emostyle_rt.backends import aoti, ort_runner_for
    from emostyle_rt.manifest import load_manifest

    out: dict[str, Callable[[np.ndarray], np.ndarray]] = {}
    first = load_manifest(bundles[0], verify_files=False)
    sid = first.emotions[first.labels[0]]
    spec = first.styles[sid]
    ort = ort_runner_for(first, sid, provider="cpu", precision="fp32")
    out["onnxruntime"] = lambda x: ort.run({spec.input_name: x})[spec.output_name]
    for b in bundles:
        m = load_manifest(b, verify_files=False)
        r = aoti.find_runner(m, sid, required=True, device="cpu")
        assert r is not None
        out[f"{r.name} ({b.name})"] = lambda x, r=r: r.run({spec.input_name: x})[spec.output_name]
    return out


def measure(bundles: list[Path], sizes: list[str], rounds: int) -> dict[str, Any]:
    from emostyle_bench.images import parse_size, photo
    from emostyle_bench.stats import measure_interleaved

    paths = _paths(bundles)
    result: dict[str, Any] = {"rounds": rounds, "sizes": {}}
    for text in sizes:
        size = parse_size(text)
        x = np.ascontiguousarray(photo(size)[None])
        ref = paths["onnxruntime"](x)
        agree = {k: float(np.abs(f(x).astype(int) - ref).max()) for k, f in paths.items()}  # also warms up
        timed = measure_interleaved({k: (lambda f=f: f(x)) for k, f in paths.items()}, repeat=rounds,
                                    min_repeat=rounds)  # every round runs each path once, in turn
        times = {k: [ms / 1e3 for ms in t.samples_ms] for k, t in timed.items()}
        base = times["onnxruntime"]
        result["sizes"][size.name] = {
            name: {"median_ms": round(statistics.median(ts) * 1e3, 1),
                   "ratio_vs_onnxruntime": round(statistics.median(b / t for b, t in zip(base, ts)), 3),
                   "max_abs_diff_vs_onnxruntime": agree[name]}
            for name, ts in times.items()}
        print(json.dumps({size.name: result["sizes"][size.name]}, indent=1), flush=True)
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python studies/aoti_ab/aoti_ab.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("bundles", nargs="+", type=Path)
    ap.add_argument("--sizes", default="512,1080p")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args(argv)
    res = measure(a.bundles, a.sizes.split(","), a.rounds)
    from emostyle_bench.machine import load_average

    res["load_average_end"] = load_average()
    if a.json:
        a.json.write_text(json.dumps(res, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
