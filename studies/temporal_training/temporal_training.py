"""Does ``emostyle-train style --temporal-weight`` make a style network steadier on video, and what does it cost?

    python studies/temporal_training/temporal_training.py --style mosaic.jpg --weights 0,3e4,1e5 --size 96 --steps 200 \\
        --seeds 0 --json seed0.json          # and --seeds 1 --json seed1.json in a second process
    python studies/temporal_training/temporal_training.py --from-json seed0.json seed1.json \\
        --json studies/temporal_training/results/temporal-training-cpu.json --markdown studies/temporal_training/results/temporal-training-cpu.md

The same network (same seed: same initial weights, same batches) is trained
once per ``--weights`` entry, 0 being the baseline without the temporal loss.
The runs advance step by step in turn in one process, so their step times see
the same machine (the ratio is meaningful on a shared CPU, the absolute time
less so). The content photos are crops of five scikit-image photos (chelsea,
camera, rocket, hubble_deep_field, immunohistochemistry); the evaluation uses
the two photos the clips are made of, which training never saw (astronaut,
coffee):

- E_warp (``emostyle_rt.video.coherence.warping_error``: DIS flow on the input
  frames, forward-backward occlusion mask; mean |styled_t - warp(styled_t-1)|
  in 8-bit levels) on the clips of ``emostyle_bench.coherence_clips`` (the ones
  the inference-time coherence is measured on): a still scene with sensor-like
  noise, a slow sub-pixel pan, a face moving across a still photo, each
  ``--frames`` frames;
- the style and content loss (weighted as in training) of five crops of each
  held-out photo, and the training loss of the last 10% of steps.

The target (issue 15): the temporal loss lowers E_warp against the baseline
at a style loss within 20% of the baseline's.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np

log = logging.getLogger(__name__)

TRAIN_PHOTOS = ("chelsea", "camera", "rocket", "hubble_deep_field", "immunohistochemistry")
HELD_OUT = ("astronaut", "coffee")  # what coherence_clips makes its clips of
STYLE_LOSS_TOLERANCE = 1.2  # the target: style loss within 20% of the baseline's


def photo(name: str) -> np.ndarray:
    """A scikit-image photo as HxWx3 uint8 RGB (grey ones repeated)."""
    from skimage import data

    img = getattr(data, name)()
    return np.ascontiguousarray(np.dstack([img] * 3) if img.ndim == 2 else img[:, :, :3])


def drawn_style(side: int = 256) -> np.ndarray:
    """A bold texture with fine detail (used when no --style is given): bands, dots and hatching."""
    yy, xx = np.mgrid[0:side, 0:side]
    img = np.zeros((side, side, 3), np.uint8)
    band = ((xx + 2 * yy) // 12) % 4
    for i, c in enumerate([(220, 50, 40), (245, 210, 40), (40, 70, 190), (30, 150, 90)]):
        img[band == i] = c
    img[((xx - yy) % 6) == 0] //= 2
    for cy in range(10, side, 28):
        for cx in range(10 + (cy // 28 % 2) * 14, side, 28):
            cv2.circle(img, (cx, cy), 5, (255, 255, 255), -1)
    return img


def regions(img: np.ndarray) -> list[np.ndarray]:
    """Five overlapping square regions (corners and centre, 60% of the shorter side) of a photo."""
    h, w = img.shape[:2]
    side = int(0.6 * min(h, w))
    out = []
    for fy, fx in [(0, 0), (0, 1), (1, 0), (1, 1), (0.5, 0.5)]:
        y, x = int(fy * (h - side)), int(fx * (w - side))
        out.append(np.ascontiguousarray(img[y:y + side, x:x + side]))
    return out


def write_content(root: Path) -> Path:
    """The regions of each training photo as files (the trainer resizes and centre-crops them)."""
    root.mkdir(parents=True, exist_ok=True)
    for name in TRAIN_PHOTOS:
        for i, region in enumerate(regions(photo(name))):
            cv2.imwrite(str(root / f"{name}_{i}.png"), region[:, :, ::-1])
    return root


def clips(frames: int, width: int, height: int, seed: int = 0) -> dict[str, list[np.ndarray]]:
    """The clips of ``emostyle_bench.coherence_clips`` (still + noise, pan, face) at width x height."""
    from emostyle_bench.coherence_clips import CLIPS, build
    from emostyle_bench.images import Size

    return {name: list(build(name, Size(height, width), frames, seed).frames) for name in CLIPS}


@dataclass(frozen=True)
class RunResult:
    """One trained network's figures (E_warp in 8-bit levels; losses weighted as in training)."""

    temporal_weight: float
    seed: int
    e_warp: dict[str, float]  # clip -> styled E_warp
    e_warp_input: dict[str, float]  # clip -> the input's own E_warp
    held_out_style: float
    held_out_content: float
    train_style: float  # mean of the last 10% of steps
    train_content: float
    train_temporal_unweighted: float | None
    median_step_s: float


def _stylize(run: Any, frames: Sequence[np.ndarray]) -> list[np.ndarray]:
    out = []
    for f in frames:
        out.extend(run.stylize([f]))
    return out


def train_interleaved(style: Path, content: Path, work: Path, weights: Sequence[float], *, size: int, batch: int,
                      steps: int, lr: float, style_weight: float, seed: int) -> list[Any]:
    """One training run per weight, advanced a step each in turn; returns the runs (``_Run``) with step times."""
    import torch
    from tqdm import tqdm

    from emostyle_train.style import StyleConfig, _Run, pick_device, plan_style

    device = pick_device("auto")
    runs = []
    for w in weights:
        cfg = StyleConfig(style=style, content=content, size=size, batch=batch, steps=steps, lr=lr,
                          style_weight=style_weight, temporal_weight=w, seed=seed, workers=0)
        plan = plan_style(cfg, work / f"w{w:g}.pth", work / f"w{w:g}.train")
        runs.append(_Run(plan, device))
    for r in runs:
        r.pick_previews()
    iters = [iter(r.batches()) for r in runs]
    for _ in tqdm(range(steps), desc="training (interleaved)", unit="step"):
        for r, it in zip(runs, iters):
            x, bad = next(it)
            r.skipped.add(bad)
            t0 = time.perf_counter()
            values = r.train_step(x)
            if device.type == "cuda":
                torch.cuda.synchronize()
            r.step_seconds.append(time.perf_counter() - t0)
            r.step += 1
            for k, v in values.items():
                r.history[k].append(v)
    return runs


def evaluate(run: Any, clip_set: dict[str, list[np.ndarray]], held_out: Sequence[np.ndarray]) -> RunResult:
    """E_warp on the clips, losses on the held-out crops (mean), the last training losses, the median step time."""
    import torch

    from emostyle_rt.video.coherence import warping_error
    from emostyle_train.data import content_crop, to_tensor

    ew, ewi = {}, {}
    for name, frames in clip_set.items():
        res = warping_error(frames, _stylize(run, frames))
        ew[name], ewi[name] = res.styled, res.input
    x = torch.stack([to_tensor(content_crop(p, run.cfg.size)) for p in held_out]).to(run.device)
    with torch.no_grad():
        terms = run.loss(run.net(x), x)
    h = run.history
    tail = max(1, len(h["style"]) // 10)
    w = run.cfg.temporal_weight
    return RunResult(
        temporal_weight=w, seed=run.cfg.seed, e_warp=ew, e_warp_input=ewi, held_out_style=float(terms.style),
        held_out_content=float(terms.content), train_style=float(np.mean(h["style"][-tail:])),
        train_content=float(np.mean(h["content"][-tail:])),
        train_temporal_unweighted=float(np.mean(h["temporal"][-tail:])) / w if w else None,
        median_step_s=float(statistics.median(run.step_seconds[2:] or run.step_seconds)),
    )


def _label(img: np.ndarray, text: str) -> np.ndarray:
    out = img.copy()
    (w, h), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 0.4, 1)
    cv2.rectangle(out, (0, 0), (w + 8, h + 8), (0, 0, 0), -1)
    cv2.putText(out, text, (4, h + 4), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1, cv2.LINE_AA)
    return out


def strip(runs: Sequence[Any], frames: Sequence[np.ndarray], path: Path, count: int = 3, scale: float = 0.5) -> Path:
    """PNG: ``count`` input frames, then per run its styled frames and |frame - previous frame| x4, labelled."""
    from emostyle_rt.fsutil import write_bytes_atomic

    frames = list(frames[:count + 1])
    rows = [(np.hstack(frames[1:]), "input: still scene + sensor noise")]
    for r in runs:
        styled = _stylize(r, frames)
        w = r.cfg.temporal_weight
        rows.append((np.hstack(styled[1:]), f"temporal weight {w:g}" if w else "no temporal loss"))
        diffs = [np.clip(cv2.absdiff(b, a).astype(np.int32) * 4, 0, 255).astype(np.uint8)
                 for a, b in zip(styled, styled[1:])]
        rows.append((np.hstack(diffs), "|change from the previous frame| x4"))
    grid = np.vstack([_label(cv2.resize(img, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
                             if scale != 1 else img, text) for img, text in rows])
    ok, png = cv2.imencode(".png", grid[:, :, ::-1], [cv2.IMWRITE_PNG_COMPRESSION, 9])
    if not ok:
        raise RuntimeError("PNG encoding failed")
    write_bytes_atomic(path, png.tobytes())
    return path


def _baseline(results: Sequence[RunResult], r: RunResult) -> RunResult:
    return next(b for b in results if b.seed == r.seed and b.temporal_weight == 0)


def markdown(results: Sequence[RunResult], meta: dict[str, Any]) -> str:
    """The table (ratios against the same seed's baseline) and the run's notes."""
    clips_ = list(results[0].e_warp)
    head = ("| seed | temporal weight | " + " | ".join(
        f"E_warp {c} (input {results[0].e_warp_input[c]:.2f})" for c in clips_)
        + " | style loss, held out | content loss, held out | style loss, training | step time |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in results:
        base = _baseline(results, r)
        cells = [str(r.seed), f"{r.temporal_weight:g}"]
        cells += [f"{r.e_warp[c]:.2f} ({r.e_warp[c] / base.e_warp[c]:.2f}x)" for c in clips_]
        cells += [f"{r.held_out_style:.4g} ({r.held_out_style / base.held_out_style:.2f}x)",
                  f"{r.held_out_content:.4g} ({r.held_out_content / base.held_out_content:.2f}x)",
                  f"{r.train_style:.4g} ({r.train_style / base.train_style:.2f}x)",
                  f"{r.median_step_s:.3f} s ({r.median_step_s / base.median_step_s:.2f}x)"]
        lines.append("| " + " | ".join(cells) + " |")
    notes = [f"- {k}: {v}" for k, v in meta.items()]
    return "\n".join(lines + [""] + notes) + "\n"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python studies/temporal_training/temporal_training.py", description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--style", type=Path, help="style image (default: a drawn texture)")
    p.add_argument("--style-size", type=int, default=256, help="shorter side of the style image (default 256)")
    p.add_argument("--weights", default="0,1e5", help="temporal weights, the first is the baseline (default 0,1e5)")
    p.add_argument("--size", type=int, default=128, help="training crop (default 128)")
    p.add_argument("--batch", type=int, default=2, help="default 2")
    p.add_argument("--steps", type=int, default=300, help="default 300")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--style-weight", type=float, default=4e5)
    p.add_argument("--seeds", default="0", help="comma-separated seeds: every weight is trained from each "
                   "(default 0; two show how much two baselines differ by chance)")
    p.add_argument("--frames", type=int, default=12, help="frames per clip (default 12)")
    p.add_argument("--clip-size", default="256x192", help="clip frames WxH (default 256x192)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1: best on a shared 2-core CPU)")
    p.add_argument("--work", type=Path, help="keep the content crops and the trained checkpoints here")
    p.add_argument("--json", type=Path, help="write the figures here")
    p.add_argument("--markdown", type=Path, help="write the table here")
    p.add_argument("--strip", type=Path, help="PNG: still-clip frames, styled, and frame differences x4 per run")
    p.add_argument("--from-json", type=Path, nargs="+", metavar="JSON", help="measure nothing: merge the results "
                   "of earlier runs (e.g. one process per seed) into one table (with --json / --markdown)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    import torch

    from emostyle_rt.fsutil import write_bytes_atomic
    from emostyle_train.data import resize_short_side, try_read
    from emostyle_train.style import _output_dict, _torch_bytes

    from emostyle_bench.machine import collect

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if args.from_json:
        return combine(args.from_json, args.json, args.markdown)
    weights = [float(w) for w in args.weights.split(",")]
    seeds = [int(v) for v in args.seeds.split(",")]
    if weights[0] != 0:
        print("error: the first --weights entry must be 0 (the baseline)", file=sys.stderr)
        return 2
    cw, ch = (int(v) for v in args.clip_size.lower().split("x"))
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        content = write_content(work / "content")
        if args.style:
            style_rgb, why = try_read(args.style)
            if style_rgb is None:
                print(f"error: {why}", file=sys.stderr)
                return 2
        else:
            style_rgb = drawn_style()
        style_rgb = resize_short_side(style_rgb, args.style_size)
        style = work / "style.png"
        cv2.imwrite(str(style), style_rgb[:, :, ::-1])
        clip_set = clips(args.frames, cw, ch)
        held = [r for n in HELD_OUT for r in regions(photo(n))]
        results = []
        for seed in seeds:
            runs = train_interleaved(style, content, work / f"seed{seed}", weights, size=args.size, batch=args.batch,
                                     steps=args.steps, lr=args.lr, style_weight=args.style_weight, seed=seed)
            if args.work:
                for r in runs:
                    r.plan.work.mkdir(parents=True, exist_ok=True)
                    write_bytes_atomic(r.plan.output, _torch_bytes(_output_dict(r)))
            results += [evaluate(r, clip_set, held) for r in runs]
            if args.strip and seed == seeds[0]:
                strip(runs, clip_set["still"], args.strip)
    machine = collect()
    meta = {
        "command": "python studies/temporal_training/temporal_training.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "style": str(args.style or "drawn texture"), "seeds": args.seeds, "size": args.size, "batch": args.batch,
        "steps": args.steps,
        "clips": f"emostyle_bench.coherence_clips {', '.join(clip_set)}: {args.frames} frames of {cw}x{ch}",
        "held_out": ", ".join(HELD_OUT), "torch_threads": args.threads,
        "machine": f"{machine.cpu}, {machine.usable_cores} usable cores, gpu {machine.gpu}, "
                   f"load avg at start {machine.load_avg_start}",
        "minutes": round((time.perf_counter() - t_start) / 60, 1),
    }
    write(results, meta, args.json, args.markdown)
    return 0


def verdicts(results: Sequence[RunResult]) -> dict[str, dict[str, bool]]:
    """Per temporal weight: E_warp lower on every clip, style loss (held out and training) within 20%, every seed."""
    out = {}
    for w in sorted({r.temporal_weight for r in results} - {0.0}):
        pairs = [(r, _baseline(results, r)) for r in results if r.temporal_weight == w]
        lower = all(r.e_warp[c] < b.e_warp[c] for r, b in pairs for c in b.e_warp)
        held = all(r.held_out_style <= STYLE_LOSS_TOLERANCE * b.held_out_style for r, b in pairs)
        train = all(r.train_style <= STYLE_LOSS_TOLERANCE * b.train_style for r, b in pairs)
        out[f"{w:g}"] = {"lower_e_warp_every_clip_and_seed": lower, "style_within_20pct_held_out": held,
                         "style_within_20pct_training": train, "target_met": lower and held and train}
    return out


def write(results: Sequence[RunResult], meta: dict[str, Any], json_path: Path | None, md_path: Path | None) -> None:
    """Print the table with the verdicts; write it and the JSON where asked."""
    from emostyle_rt.fsutil import write_bytes_atomic

    v = verdicts(results)
    meta = {**meta, "verdicts": json.dumps(v)}
    table = markdown(results, meta)
    print(table)
    if md_path:
        write_bytes_atomic(md_path, table.encode())
    if json_path:
        data = {"meta": meta, "verdicts": v, "runs": [asdict(r) for r in results]}
        write_bytes_atomic(json_path, (json.dumps(data, indent=2) + "\n").encode())


def combine(paths: Sequence[Path], json_path: Path | None, md_path: Path | None) -> int:
    """Merge result files of separate processes (e.g. one per seed) into one table."""
    results: list[RunResult] = []
    metas = []
    for p in paths:
        data = json.loads(Path(p).read_text())
        metas.append(data["meta"])
        results += [RunResult(**r) for r in data["runs"]]
    meta = {k: v for k, v in metas[0].items() if k not in ("verdicts", "command", "minutes", "machine", "seeds")}
    meta["seeds"] = ",".join(str(m["seeds"]) for m in metas)
    meta["commands"] = " ; ".join(m["command"] for m in metas)
    meta["machine"] = " ; ".join(f'{m["machine"]} ({m["minutes"]} min)' for m in metas)
    write(results, meta, json_path, md_path)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(main())
