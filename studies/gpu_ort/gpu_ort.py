"""The runtime's onnxruntime CUDA path against eager PyTorch on one GPU (issue 9's table).

    python studies/gpu_ort/gpu_ort.py --bundle bundles/demo            # on a CUDA machine; writes studies/gpu_ort/results/gpu-<gpu>.{md,json}
    python studies/gpu_ort/gpu_ort.py --dry-run --out-dir /tmp/x       # CPU only: every code path but CUDA, tiny sizes

At 512x512, 1280x720 and 1920x1080 (batch 1, uint8 HxWx3 in host memory in and
out), median of ``--repeat`` runs after ``--warmup``, it times

- ``style``: the style graph alone (``runner.run`` on the padded uint8 batch);
- ``chain``: ``Stylizer.stylize`` with a fixed face (detection excluded, the
  classifier included), as in issue 9's table;

for our variants ``ort-cuda-fp32``, ``ort-cuda-fp16`` (the bundle's verified
FP16 graph; FP32 when it has none), ``ort-cuda-fp16-graph`` (CUDA graphs, the
shape repeats) and ``ort-cuda-fp16-nhwc`` (the CUDA EP's ``prefer_nhwc``), and
eager PyTorch fp32/fp16 end to end (uint8 host in, network, uint8 host out:
the baseline of both stages). Every output is compared with eager fp32 first
(PSNR; below 40 dB the row is marked wrong) and ratios are eager fp32 time /
our time (> 1: we are faster). Needs emostyle-rt, onnxruntime-gpu and a CUDA
build of PyTorch (import torch first so onnxruntime finds cuDNN, see
../shared/DEVICE.md); the export extra is not needed.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from emostyle_rt import metrics

SIZES = {"512x512": (512, 512), "1280x720": (720, 1280), "1920x1080": (1080, 1920)}
OURS = ("ort-cuda-fp32", "ort-cuda-fp16", "ort-cuda-fp16-graph", "ort-cuda-fp16-nhwc")
EAGER = ("torch-eager-fp32", "torch-eager-fp16")
MIN_PSNR_DB = metrics.MIN_PSNR_DB


class FixedFace:
    """A detector that always returns the same box (the chain then times classification, not Haar)."""

    def __init__(self, h: int, w: int) -> None:
        from emostyle_rt.detection.faces import Face

        s = min(h, w) // 3
        self.faces = [Face(w // 2 - s // 2, max(0, h // 3 - s // 2), s, s)]

    def detect(self, rgb: np.ndarray) -> list:
        return list(self.faces)


psnr = metrics.psnr  # the one PSNR (emostyle_rt.metrics)


def photo(h: int, w: int) -> np.ndarray:
    """scikit-image's astronaut resized (a real photo), else a smooth synthetic one."""
    try:
        import cv2
        from skimage import data

        return cv2.resize(data.astronaut(), (w, h), interpolation=cv2.INTER_AREA)
    except ImportError:
        yy, xx = np.mgrid[0:h, 0:w]
        return np.stack([xx * 255 // max(1, w - 1), yy * 255 // max(1, h - 1), (xx + yy) % 256], -1).astype(np.uint8)


def timed(fn: Callable[[], Any], warmup: int, repeat: int) -> tuple[dict[str, float], Any]:
    out = None
    for _ in range(warmup):
        out = fn()
    ms = []
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        ms.append((time.perf_counter() - t) * 1000)
    ms.sort()
    return {"median_ms": statistics.median(ms), "p10_ms": ms[len(ms) // 10], "p90_ms": ms[min(len(ms) - 1, len(ms) * 9 // 10)],
            "n": len(ms)}, out


def _ours(bundle: str, variant: str, provider: str, h: int, w: int) -> Any:
    """A Stylizer for one of our variants (CUDA EP options are read when its graphs load: preload now)."""
    from emostyle_rt import Stylizer
    from emostyle_rt.backends import ort as ortb

    saved = dict(ortb.CUDA_OPTIONS)
    if variant.endswith("-nhwc"):
        ortb.CUDA_OPTIONS["prefer_nhwc"] = "1"
    try:
        st = Stylizer(bundle, backend="onnxruntime", provider=provider, detector=FixedFace(h, w),
                      precision="fp32" if variant == "ort-cuda-fp32" else "auto", cuda_graph=variant.endswith("-graph"))
        st.preload()
    finally:
        ortb.CUDA_OPTIONS.clear()
        ortb.CUDA_OPTIONS.update(saved)
    return st


def _eager(bundle: str, device: str, half: bool) -> tuple[Callable[[np.ndarray], np.ndarray], str]:
    import copy

    import torch
    from emostyle_bench.paths import _load_torch_style, torch_stylize
    from emostyle_rt.manifest import load_manifest

    m = load_manifest(bundle)
    sid = m.emotions["happy"]
    model = copy.deepcopy(_load_torch_style(m, sid)).to(device)
    if half:
        model = model.half()
    torch.backends.cudnn.benchmark = device == "cuda"
    conv = m.styles[sid].convention
    return (lambda batch: torch_stylize(model, batch, conv, device=device, half=half)), sid


def bench(args: argparse.Namespace) -> dict[str, Any]:
    provider, device = ("cpu", "cpu") if args.dry_run else ("cuda", "cuda")
    if not args.dry_run:
        import torch  # first: onnxruntime then finds the CUDA/cuDNN libraries PyTorch ships

        if not torch.cuda.is_available():
            raise RuntimeError("no CUDA GPU (torch.cuda.is_available() is False); use --dry-run on a CPU machine")
    sizes = {s: SIZES.get(s) or tuple(int(v) for v in reversed(s.split("x"))) for s in args.sizes.split(",") if s}
    rows: list[dict[str, Any]] = []
    for size, (h, w) in sizes.items():
        img = photo(h, w)
        padded = np.pad(img, ((0, -h % 4), (0, -w % 4), (0, 0)), mode="reflect")[None]  # the graphs' multiple of 4
        ref = None
        for name in EAGER if args.eager else ():
            row: dict[str, Any] = {"size": size, "path": name, "stage": "style+chain"}
            try:
                fn, _sid = _eager(args.bundle, device, name.endswith("fp16"))
                row["style"], out = timed(lambda: fn(padded), args.warmup, args.repeat)
                out = out[0, :h, :w]
                ref = out if ref is None else ref
                row["psnr_vs_eager_fp32_db"] = None if out is ref else round(psnr(ref, out), 2)
            except Exception as exc:  # noqa: BLE001 - a path that cannot run is a result, not a crash
                row["error"] = f"{type(exc).__name__}: {exc}"
            rows.append(row)
            print(json.dumps(row), flush=True)
        for name in args.variants.split(","):
            row = {"size": size, "path": name}
            try:
                st = _ours(args.bundle, name, provider, h, w)
                runner = st._style_runner(st.manifest.emotions["happy"])
                row["runner"] = runner.name
                spec = st.manifest.styles[st.manifest.emotions["happy"]]
                row["style"], out = timed(lambda: runner.run({spec.input_name: padded})[spec.output_name],
                                          args.warmup, args.repeat)
                row["chain"], res = timed(lambda: st.stylize(img), args.warmup, args.repeat)
                row["emotion"] = res.emotion
                happy = st.stylize(img, emotion="happy").image
                if ref is not None:
                    row["psnr_vs_eager_fp32_db"] = round(psnr(ref, happy), 2)
                    row["wrong"] = row["psnr_vs_eager_fp32_db"] < MIN_PSNR_DB
                st.close()
            except Exception as exc:  # noqa: BLE001
                row["error"] = f"{type(exc).__name__}: {exc}"
            rows.append(row)
            print(json.dumps({k: v for k, v in row.items()}), flush=True)
    return {"rows": rows, "machine": machine(device), "settings": {k: str(v) for k, v in vars(args).items()}}


def ratios(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Eager fp32 time / our time per size and stage (> 1: ours is faster)."""
    out = []
    base = {r["size"]: r["style"]["median_ms"] for r in result["rows"] if r["path"] == "torch-eager-fp32" and "style" in r}
    for r in result["rows"]:
        if r["path"] in OURS and r["size"] in base:
            for stage in ("style", "chain"):
                if stage in r:
                    out.append({"size": r["size"], "path": r["path"], "stage": stage,
                                "ratio_vs_eager_fp32": round(base[r["size"]] / r[stage]["median_ms"], 2)})
    return out


def machine(device: str) -> dict[str, Any]:
    info: dict[str, Any] = {"python": sys.version.split()[0], "platform": platform.platform(), "device": device}
    try:
        from emostyle_rt.backends.ort import import_onnxruntime
        from emostyle_rt.errors import BackendError

        ort = import_onnxruntime()
        info |= {"onnxruntime": ort.__version__, "providers": ort.get_available_providers()}
    except (ImportError, BackendError):
        pass
    try:
        import torch

        info |= {"torch": torch.__version__, "cuda": torch.version.cuda}
        if device == "cuda":
            p = torch.cuda.get_device_properties(0)
            info |= {"gpu": p.name, "compute_capability": f"{p.major}.{p.minor}",
                     "gpu_memory_gb": round(p.total_memory / 1e9, 1)}
    except ImportError:
        pass
    return info


def markdown(result: dict[str, Any]) -> str:
    mach = result["machine"]
    lines = [f"# onnxruntime CUDA path vs eager PyTorch on {mach.get('gpu', mach['device'])}", "",
             f"onnxruntime {mach.get('onnxruntime')}, torch {mach.get('torch')} (CUDA {mach.get('cuda')}). "
             "Batch 1, uint8 HxWx3 host arrays in and out, median of "
             f"{result['settings'].get('repeat')} runs after {result['settings'].get('warmup')} warm-up runs. "
             "`chain`: Stylizer.stylize with a fixed face (classifier included, detection excluded). "
             "Ratio: eager fp32 time / ours (> 1: ours faster).", "",
             "| size | path | runner | style ms | chain ms | PSNR vs eager fp32 (dB) |", "|---|---|---|---:|---:|---:|"]
    for r in result["rows"]:
        style = f"{r['style']['median_ms']:.2f}" if "style" in r else "-"
        chain = f"{r['chain']['median_ms']:.2f}" if "chain" in r else "-"
        note = f" **{r['error']}**" if "error" in r else (" **wrong**" if r.get("wrong") else "")
        lines.append(f"| {r['size']} | {r['path']}{note} | {r.get('runner', '')} | {style} | {chain} | "
                     f"{r.get('psnr_vs_eager_fp32_db', '')} |")
    lines += ["", "| size | path | stage | x eager fp32 |", "|---|---|---|---:|"]
    lines += [f"| {q['size']} | {q['path']} | {q['stage']} | {q['ratio_vs_eager_fp32']:.2f} |" for q in result["ratios"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", default="bundles/demo")
    ap.add_argument("--sizes", default=",".join(SIZES))
    ap.add_argument("--variants", default=",".join(OURS))
    ap.add_argument("--no-eager", dest="eager", action="store_false", help="skip the PyTorch baselines")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--out-dir", type=Path, default=Path(__file__).resolve().parent / "results")
    ap.add_argument("--dry-run", action="store_true",
                    help="CPU only (provider cpu, torch on CPU), 64x64, 1 warm-up + 2 runs: checks the script, not the GPU")
    args = ap.parse_args(argv)
    if args.dry_run:
        args.sizes, args.warmup, args.repeat = "64x64", 1, 2
    try:
        result = bench(args)
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    result["ratios"] = ratios(result)
    gpu = result["machine"].get("gpu", "cpu-dry-run")
    stem = "gpu-" + re.sub(r"[^a-z0-9]+", "-", gpu.lower()).strip("-")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / f"{stem}.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    (args.out_dir / f"{stem}.md").write_text(markdown(result))
    print(f"wrote {args.out_dir / stem}.json and .md")
    return 1 if any("error" in r or r.get("wrong") for r in result["rows"]) else 0


if __name__ == "__main__":
    raise SystemExit(main())
