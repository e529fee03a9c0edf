"""Eager PyTorch GPU anchors for the style network, with PyTorch only.

Standalone: ``python studies/gpu_eager/gpu_eager.py --out gpu_eager.json`` on any machine
with a CUDA build of PyTorch (nothing of this project installed: the network is
imported by file path from ``src/emostyle_export/models/transformer.py`` of this checkout).

Measures the demo style network (seeded weights, ImageNet convention) at
256x256, 512x512, 1280x720 and 1920x1080, batch 1 and 4, as

- ``fp32``, ``fp16`` (``model.half()``), ``fp32-channels_last``, ``fp16-channels_last``;
- ``fp32-cudagraph`` / ``fp16-cudagraph``: the fp16/fp32 model captured in a CUDA
  graph (static input buffer), at 1920x1080 only;

each timed two ways with CUDA events after warm-up: ``compute`` (input already on
the GPU, network only) and ``end_to_end`` (uint8 NHWC host array in, normalise,
network, de-normalise, uint8 NHWC host array out). Every fp16 variant's output is
compared with fp32 (PSNR). Writes JSON with the GPU, driver, CUDA, cuDNN and
PyTorch versions. ``--device cpu`` runs a tiny smoke test without a GPU.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
SIZES = {"256x256": (256, 256), "512x512": (512, 512), "1280x720": (720, 1280), "1920x1080": (1080, 1920)}
TRANSFORMER = Path(__file__).resolve().parents[2] / "src" / "emostyle_export" / "models" / "transformer.py"
METRICS = Path(__file__).resolve().parents[2] / "src" / "emostyle_rt" / "metrics.py"


def _by_path(name: str, path: Path) -> Any:
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise FileNotFoundError(f"cannot import {path}")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def load_transformer(path: Path = TRANSFORMER) -> type:
    """TransformerNet from the project's model file, imported by path (needs only torch)."""
    return _by_path("emostyle_transformer", path).TransformerNet


#: The one PSNR (src/emostyle_rt/metrics.py, imported by path: nothing of this project need be installed; torch tensors
#: stay on their device).
psnr = _by_path("emostyle_metrics", METRICS).psnr


def photo(h: int, w: int, seed: int = 0) -> torch.Tensor:
    """A smooth, photo-like uint8 HxWx3 image (gradients, discs, a little texture); no noise field."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    img = torch.stack([0.6 * xx + 0.2, 0.5 * yy + 0.3 * xx, 0.8 - 0.5 * yy], dim=-1)
    for _ in range(12):
        cy, cx, r = torch.rand(3, generator=g).tolist()
        color = torch.rand(3, generator=g)
        mask = (((yy - cy) ** 2 + (xx - cx) ** 2) < (0.05 + 0.2 * r) ** 2).float()[..., None]
        img = img * (1 - 0.7 * mask) + 0.7 * mask * color
    img = img + 0.03 * torch.sin(60 * xx)[..., None] * torch.cos(45 * yy)[..., None]
    return (img.clamp(0, 1) * 255).round().to(torch.uint8)




def stats(ms: list[float], batch: int) -> dict[str, float]:
    s = sorted(ms)
    q = lambda p: s[min(len(s) - 1, max(0, round(p / 100 * (len(s) - 1))))]
    med = statistics.median(s)
    return {"median_ms": med, "p90_ms": q(90), "p10_ms": q(10), "min_ms": s[0], "max_ms": s[-1], "n": len(s),
            "spread_pct": (q(90) - q(10)) / med * 100 if med else 0.0,
            "images_per_s": batch / (med / 1000) if med else math.inf}


def time_fn(fn: Callable[[], Any], device: str, warmup: int, repeat: int) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeat):
        if device == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            out.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            out.append((time.perf_counter() - t0) * 1000)
    return out


class Variant:
    """One way of running the network: dtype, memory format, CUDA graph or not."""

    def __init__(self, net: torch.nn.Module, device: str, half: bool, channels_last: bool) -> None:
        self.half, self.cl = half, channels_last
        self.dtype = torch.float16 if half else torch.float32
        m = net.to(device)
        m = m.half() if half else m.float()
        self.net = m.to(memory_format=torch.channels_last) if channels_last else m
        self.mean = torch.tensor(MEAN, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(STD, device=device).view(1, 3, 1, 1)
        self.device = device

    def prep(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 NHWC (on device) -> normalised NCHW in the variant's dtype and layout."""
        y = ((x.permute(0, 3, 1, 2).float() / 255.0 - self.mean) / self.std).to(self.dtype)
        return y.contiguous(memory_format=torch.channels_last) if self.cl else y.contiguous()

    def post(self, y: torch.Tensor) -> torch.Tensor:
        return ((y.float() * self.std + self.mean).clamp(0, 1) * 255.0).round().to(torch.uint8).permute(0, 2, 3, 1)

    def end_to_end(self, host: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            x = host.to(self.device, non_blocking=True)
            return self.post(self.net(self.prep(x))).cpu()


def bench(args: argparse.Namespace) -> dict[str, Any]:
    device = args.device
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("no CUDA GPU: torch.cuda.is_available() is False (use --device cpu for a smoke test)")
    torch.backends.cudnn.benchmark = True
    TransformerNet = load_transformer()
    torch.manual_seed(args.seed)
    base = TransformerNet().eval()
    sizes = [s for s in args.sizes.split(",") if s]
    variants = {"fp32": (False, False), "fp16": (True, False), "fp32-channels_last": (False, True),
                "fp16-channels_last": (True, True)}
    rows: list[dict[str, Any]] = []
    for size in sizes:
        h, w = SIZES[size] if size in SIZES else tuple(int(v) for v in reversed(size.split("x")))
        img = photo(h, w)
        for batch in (int(b) for b in args.batches.split(",")):
            host = img[None].repeat(batch, 1, 1, 1).contiguous()
            if device == "cuda":
                host = host.pin_memory()
            ref = None
            for name, (half, cl) in variants.items():
                v = Variant(TransformerNet().eval(), device, half, cl)
                v.net.load_state_dict(base.state_dict())
                v.net.to(v.dtype)
                row: dict[str, Any] = {"size": size, "batch": batch, "variant": name}
                try:
                    out = v.end_to_end(host)
                    if ref is None:
                        ref = out
                    row["psnr_vs_fp32_db"] = None if out is ref else _finite(psnr(ref, out))
                    with torch.inference_mode():
                        xin = v.prep(host.to(device))
                        row["compute"] = stats(time_fn(lambda v=v, xin=xin: v.net(xin), device, args.warmup,
                                                       args.repeat), batch)
                    row["end_to_end"] = stats(time_fn(lambda v=v, host=host: v.end_to_end(host), device, args.warmup,
                                                      args.repeat), batch)
                except torch.cuda.OutOfMemoryError as exc:  # type: ignore[attr-defined]
                    row["error"] = f"out of memory: {exc}"
                    torch.cuda.empty_cache()
                rows.append(row)
                print(json.dumps({k: row.get(k) for k in ("size", "batch", "variant", "psnr_vs_fp32_db")}
                                 | {"median_ms": row.get("compute", {}).get("median_ms"),
                                    "e2e_ms": row.get("end_to_end", {}).get("median_ms")}), flush=True)
            if device == "cuda" and size == args.graph_size:
                for half in (False, True):
                    rows.append(_cuda_graph_row(TransformerNet, base, host, ref, half, size, batch, args))
    return {"rows": rows, "machine": machine(device), "settings": vars(args)}


def _finite(x: float) -> float | None:
    return None if math.isinf(x) else x


def _cuda_graph_row(TransformerNet: type, base: torch.nn.Module, host: torch.Tensor, ref: torch.Tensor | None,
                    half: bool, size: str, batch: int, args: argparse.Namespace) -> dict[str, Any]:
    """The network (channels_last) captured once in a CUDA graph; replays on a static input buffer."""
    name = ("fp16" if half else "fp32") + "-cudagraph"
    row: dict[str, Any] = {"size": size, "batch": batch, "variant": name}
    try:
        v = Variant(TransformerNet().eval(), "cuda", half, True)
        v.net.load_state_dict(base.state_dict())
        v.net.to(v.dtype)
        with torch.inference_mode():
            static_in = v.prep(host.to("cuda"))
            s = torch.cuda.Stream()
            s.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(s):
                for _ in range(3):
                    v.net(static_in)
            torch.cuda.current_stream().wait_stream(s)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                static_out = v.net(static_in)

            def e2e() -> torch.Tensor:
                static_in.copy_(v.prep(host.to("cuda", non_blocking=True)))
                graph.replay()
                return v.post(static_out).cpu()

            out = e2e()
            row["psnr_vs_fp32_db"] = _finite(psnr(ref, out)) if ref is not None else None
            row["compute"] = stats(time_fn(graph.replay, "cuda", args.warmup, args.repeat), batch)
            row["end_to_end"] = stats(time_fn(e2e, "cuda", args.warmup, args.repeat), batch)
    except Exception as exc:  # a capture failure is a result, not a crash
        row["error"] = f"{type(exc).__name__}: {exc}"
    print(json.dumps({"size": size, "batch": batch, "variant": name, "e2e_ms": row.get("end_to_end", {}).get(
        "median_ms"), "error": row.get("error")}), flush=True)
    return row


def machine(device: str) -> dict[str, Any]:
    info: dict[str, Any] = {"python": sys.version.split()[0], "platform": platform.platform(),
                            "torch": torch.__version__, "cuda": torch.version.cuda,
                            "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
                            "cpu": platform.processor(), "device": device}
    if device == "cuda":
        p = torch.cuda.get_device_properties(0)
        info |= {"gpu": p.name, "gpu_memory_gb": round(p.total_memory / 1e9, 1),
                 "compute_capability": f"{p.major}.{p.minor}", "gpu_count": torch.cuda.device_count()}
    return info


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("gpu_eager.json"))
    ap.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    ap.add_argument("--sizes", default=",".join(SIZES))
    ap.add_argument("--batches", default="1,4")
    ap.add_argument("--graph-size", default="1920x1080", help="size at which CUDA graphs are measured")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--repeat", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    t0 = time.time()
    try:
        result = bench(args)
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    result["duration_s"] = time.time() - t0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
