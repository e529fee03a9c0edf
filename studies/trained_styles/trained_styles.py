"""Evidence that the demo bundle's style networks are trained, and the figures re-measured on trained nets.

    python studies/trained_styles/trained_styles.py --bundle bundles/demo --baseline untrained \\
        --json studies/trained_styles/results/trained-styles.json --markdown studies/trained_styles/results/trained-styles.md \\
        --sheet docs/img/trained-styles.png

On CPU, from a bundle exported from the trained checkpoints (``emostyle-export
--demo --fp16``: each style's checkpoint is found through the manifest's source
record; without ``--bundle`` the script exports one from ``--weights`` itself):

- **held out**: per style, on the recipe's held-out photos (never used in
  training), the style distance to the style image (mean Gram MSE over the
  style layers, ``emostyle-train evaluate``) of the trained network's output
  against the untrained (seeded) network's: trained/untrained, target <= 0.1;
  and the content distance (feature MSE to the photo at the content layer).
- **distinct**: each trained network's outputs against every style image: its
  own style image must be the nearest (seven distinct styles, the right ones).
- **sheet**: a contact sheet, one row per emotion (its style image, then three
  held-out photos through the runtime with that emotion forced).
- **fp16**: FP16 vs FP32 graph PSNR in onnxruntime on CPU (the figures of the
  bundle's FP16 check, made at export).
- **tiled**: fast tiled mode against untiled at ``--tiled-size`` (default 12 MP,
  ``studies/tiling``, one process per run, about 10 GB for untiled).
- **coherence**: E_warp per frame and with coherence "flow", and the cut, on
  the clips of ``studies/coherence`` (``measure_clip``).

``--baseline untrained`` measures the same on a demo bundle with seeded weights
exported in the same run (``--baseline DIR`` takes an existing bundle), so each
figure has its random-network value beside it. Expect about 30 minutes for all
seven styles with a baseline on a 2-core CPU (tiled and coherence dominate:
``--measures`` and ``--emotions`` choose).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

if __package__ in (None, ""):  # run as a script: the repository root on sys.path (studies.coherence)
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

log = logging.getLogger(__name__)

MEASURES = ("heldout", "distinct", "sheet", "fp16", "tiled", "coherence")
#: The held-out style distance a trained network must reach, as a share of the untrained network's.
HELDOUT_TARGET = 0.1
SHEET_PHOTOS = 3
REPO = Path(__file__).resolve().parents[2]


class NoFaces:
    """A face detector that finds none: every style here is forced by emotion, so faces do not matter."""

    def detect(self, rgb: np.ndarray) -> list[Any]:
        return []


def _recipe() -> Any:
    """scripts/gpu/train_demo_styles.py's recipe reader (one owner of the recipe format)."""
    import importlib.util

    path = REPO / "scripts" / "gpu" / "train_demo_styles.py"
    spec = importlib.util.spec_from_file_location("train_demo_styles", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot load {path}")
    mod = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("train_demo_styles", mod)
    spec.loader.exec_module(mod)
    return mod


def export_from_weights(weights: Path | None, dest: Path) -> Path:
    """The demo bundle from ``weights`` (None: seeded, untrained), with FP16 and tiled graphs, no face detector."""
    from emostyle_export.bundle import ExportPlan, export_bundle

    return export_bundle(ExportPlan(classifier=None, styles={}, demo=True, demo_weights=weights,
                                    demo_trained_styles=weights is not None, fp16=True, detector=None), dest)


def checkpoints(bundle: Path) -> dict[str, Path | None]:
    """emotion -> the trained checkpoint the bundle's style was exported from (None: seeded or missing)."""
    from emostyle_rt.fsutil import sha256_file
    from emostyle_rt.manifest import load_manifest

    m = load_manifest(bundle, verify_files=False)
    out: dict[str, Path | None] = {}
    for e in m.labels:
        src = m.style_for(e).source
        p = Path(src["path"]) if src.get("family") not in (None, "demo") and "path" in src else None
        out[e] = p if p is not None and p.is_file() and sha256_file(p) == src.get("sha256") else None
    return out


def heldout(ckpts: dict[str, Path | None], recipe: Any, photos: Sequence[Path], size: int) -> dict[str, Any]:
    from emostyle_train.evaluate import gram_distances, summary

    out = {}
    for e, path in ckpts.items():
        if path is None:
            continue
        image = recipe.styles[e][0]
        rows = gram_distances(path, image, photos, size=size, style_size=recipe.style_options.get("style_size"))
        out[e] = {"style_image": image.name, **{k: round(v, 6) for k, v in summary(rows).items()},
                  "per_photo": {Path(r.photo).name: round(r.ratio, 4) for r in rows},
                  "meets_target": summary(rows)["ratio_trained_untrained"] <= HELDOUT_TARGET}
        log.warning("held out %s: trained/untrained %.4f", e, out[e]["ratio_trained_untrained"])
    return out


def distinct(ckpts: dict[str, Path | None], recipe: Any, photos: Sequence[Path], size: int) -> dict[str, Any]:
    """Style distance of each trained network's outputs to every style image; the nearest must be its own."""
    import torch

    from emostyle_export.checkpoints import load_style_checkpoint
    from emostyle_train.data import content_crop, resize_short_side, to_tensor, try_read
    from emostyle_train.losses import STYLE_LAYERS, VGG19Features, gram

    vgg = VGG19Features(STYLE_LAYERS)
    images = {e: recipe.styles[e][0] for e in ckpts}
    ss = recipe.style_options.get("style_size")
    targets = {}
    with torch.no_grad():
        for e, p in images.items():
            rgb, _ = try_read(p)
            rgb = resize_short_side(rgb, ss) if ss else rgb
            targets[e] = [gram(f) for f in vgg(to_tensor(rgb).unsqueeze(0)).values()]
        x = torch.stack([to_tensor(content_crop(try_read(p)[0], size)) for p in photos])
        matrix: dict[str, dict[str, float]] = {}
        for e, path in ckpts.items():
            if path is None:
                continue
            net = load_style_checkpoint(path).model
            grams = [gram(f) for f in vgg(net(x)).values()]
            matrix[e] = {s: float(np.mean([float(((g - t) ** 2).mean(dim=(1, 2)).mean()) for g, t in zip(grams, tg)]))
                         for s, tg in targets.items()}
    nearest = {e: min(row, key=row.get) for e, row in matrix.items()}
    return {"matrix": matrix, "nearest": nearest, "all_own_nearest": all(nearest[e] == e for e in nearest)}


def contact_sheet(bundle: Path, emotions: Sequence[str], recipe: Any, photos: Sequence[Path], dest: Path,
                  height: int = 200) -> dict[str, Any]:
    """Rows: emotion | its style image | the photos styled through the runtime with that emotion forced."""
    import cv2

    from emostyle_rt import Stylizer
    from emostyle_rt.fsutil import write_bytes_atomic
    from emostyle_rt.imaging.io import read_image

    def fit(img: np.ndarray, box: int | None = None) -> np.ndarray:
        """Scaled to the row height; with ``box``, into a box x height tile (white margins)."""
        s = height / img.shape[0] if box is None else min(height / img.shape[0], box / img.shape[1])
        out = cv2.resize(img, (max(1, round(img.shape[1] * s)), max(1, round(img.shape[0] * s))),
                         interpolation=cv2.INTER_AREA)
        if box is None:
            return out
        tile = np.full((height, box, 3), 255, np.uint8)
        y, x = (height - out.shape[0]) // 2, (box - out.shape[1]) // 2
        tile[y:y + out.shape[0], x:x + out.shape[1]] = out
        return tile

    def label(text: str, w: int) -> np.ndarray:
        tile = np.full((height, w, 3), 255, np.uint8)
        cv2.putText(tile, text, (8, height // 2), cv2.FONT_HERSHEY_SIMPLEX, 0.8, (0, 0, 0), 2, cv2.LINE_AA)
        return tile

    gap = 6
    pad = np.full((height, gap, 3), 255, np.uint8)
    originals = [read_image(p) for p in photos[:SHEET_PHOTOS]]
    lines = [np.hstack([label("", 130), pad, label("", height), pad, *[t for o in originals for t in (fit(o), pad)]])]
    diffs: dict[str, float] = {}
    outs: dict[str, list[np.ndarray]] = {}
    with Stylizer(bundle, detector=NoFaces()) as st:
        for e in emotions:
            outs[e] = [st.stylize(o, emotion=e).image for o in originals]
            lines.append(np.hstack([label(e, 130), pad, fit(read_image(recipe.styles[e][0]), height), pad,
                                    *[t for o in outs[e] for t in (fit(o), pad)]]))
    sheet = np.vstack([np.pad(ln, ((0, gap), (0, 0), (0, 0)), constant_values=255) for ln in lines])
    ok, png = cv2.imencode(".png", sheet[:, :, ::-1])
    if not ok:
        raise SystemExit(f"cannot encode {dest}")
    write_bytes_atomic(dest, png.tobytes())
    for i, a in enumerate(emotions):  # how different the styles' outputs are on the same photos (grey levels)
        for b in emotions[i + 1:]:
            diffs[f"{a}/{b}"] = round(float(np.mean([np.abs(x.astype(np.int16) - y).mean()
                                                     for x, y in zip(outs[a], outs[b])])), 2)
    return {"path": str(dest), "photos": [p.name for p in photos[:SHEET_PHOTOS]], "rows": list(emotions),
            "min_mean_abs_diff_between_styles": min(diffs.values()) if diffs else None, "pairs": diffs}


def fp16(bundle: Path, emotions: Sequence[str]) -> dict[str, Any]:
    from emostyle_rt.manifest import load_manifest

    m = load_manifest(bundle, verify_files=False)
    out = {}
    for e in emotions:
        spec = m.style_for(e)
        rep = spec.fp16.report if spec.fp16 is not None else None
        out[e] = None if rep is None else {
            **{k: rep.get(k) for k in ("min_psnr_db", "max_abs_activation", "max_abs_activation_tensor",
                                       "fp16_headroom")},
            "checks": {c["name"]: c.get("psnr_db") for c in rep.get("checks", [])}}
    return out


def tiled(bundle: Path, emotions: Sequence[str], size: str, budget: str) -> dict[str, Any]:
    out = {}
    for e in emotions:
        with tempfile.TemporaryDirectory(prefix="emostyle-trained-tiled-") as tmp:
            res = Path(tmp) / "r.json"
            done = subprocess.run([sys.executable, str(REPO / "studies" / "tiling" / "tiling.py"), "--bundle",
                                   str(bundle), "--size", size, "--budget", budget, "--modes", "untiled,fast",
                                   "--emotion", e, "--out", str(res)], capture_output=True, text=True)
            if done.returncode != 0:
                said = [ln for ln in done.stderr.splitlines() if "Error" in ln and "CalledProcessError" not in ln]
                tail = (said or done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
                out[e] = {"error": tail[:300]}
                continue
            r = json.loads(res.read_text())["modes"]["fast"]
        out[e] = {"psnr_db": r["fidelity"]["psnr_db"], "max_abs_diff": r["fidelity"]["max_abs_diff"],
                  "plan": r["plan"], "wall_ratio_to_untiled": r.get("wall_ratio_to_untiled")}
        log.warning("tiled %s at %s: fast %.1f dB", e, size, out[e]["psnr_db"])
    return out


def coherence(bundle: Path, emotions: Sequence[str], size: str, frames: int) -> dict[str, Any]:
    from emostyle_rt import Stylizer
    from emostyle_rt.video.coherence import CoherenceOptions

    from studies.coherence.coherence import CLIPS, measure_clip
    from emostyle_bench.coherence_clips import build
    from emostyle_bench.images import parse_size

    sz = parse_size(size)
    out: dict[str, Any] = {}
    with Stylizer(bundle, detector=NoFaces()) as st:
        clips = [build(c, sz, frames) for c in CLIPS]
        for e in emotions:
            rows = {}
            for clip in clips:
                r = measure_clip(st, clip, e, CoherenceOptions.of("flow"))
                rows[clip.name] = {"input": round(r.per_frame.input, 3), "per_frame": round(r.per_frame.styled, 3),
                                   "flow": round(r.coherent.styled, 3), "cut": round(r.cut, 3),
                                   "ssim_min": None if r.ssim_min is None else round(r.ssim_min, 3)}
            out[e] = rows
    return out


def _mean(vals: Sequence[float | None]) -> float:
    v = [x for x in vals if isinstance(x, (int, float)) and math.isfinite(x)]
    return float(np.mean(v)) if v else math.nan


def render(result: dict[str, Any]) -> str:
    """The markdown report: each figure trained, and untrained where a baseline was measured."""
    t, b = result["trained"], result.get("baseline") or {}
    lines = ["# Trained demo styles: evidence and re-measured figures", "",
             f"Bundle `{result['bundle']}`{', baseline `' + result['baseline_bundle'] + '`' if b else ''}; "
             f"{result['machine']}; {result['seconds']:.0f} s.", ""]
    if "heldout" in t:
        lines += ["## Held-out photos: style distance to the style image, trained / untrained network "
                  f"(target <= {HELDOUT_TARGET}), and content distance", "",
                  "| emotion | style image | trained/untrained | content, untrained | content, trained | per photo |",
                  "|---|---|---:|---:|---:|---|"]
        for e, r in t["heldout"].items():
            lines.append(f"| {e} | {r['style_image']} | {r['ratio_trained_untrained']:.4f} | "
                         f"{r['content_untrained']:.4g} | {r['content_trained']:.4g} | "
                         + ", ".join(f"{k} {v:.3f}" for k, v in r["per_photo"].items()) + " |")
        lines.append("")
    if "distinct" in t:
        d = t["distinct"]
        lines += [f"## Distinct styles: nearest style image of each network's outputs (all own: "
                  f"{d['all_own_nearest']})", "", "| network \\ style image | " + " | ".join(d["matrix"]) + " |",
                  "|---|" + "---:|" * len(d["matrix"])]
        for e, row in d["matrix"].items():
            lines.append(f"| {e} | " + " | ".join(("**%.3g**" if s == d["nearest"][e] else "%.3g") % v
                                                  for s, v in row.items() if s in d["matrix"]) + " |")
        lines.append("")
    if "sheet" in t:
        lines += [f"Contact sheet: `{t['sheet']['path']}` (smallest mean difference between two styles' outputs: "
                  f"{t['sheet']['min_mean_abs_diff_between_styles']} grey levels).", ""]
    if "fp16" in t:
        lines += ["## FP16 vs FP32 graph (onnxruntime, CPU): min PSNR over the export's check inputs, and the "
                  "largest fp16 activation (headroom to 65504)", "",
                  "| emotion | trained PSNR | untrained PSNR | trained max activation (headroom) | untrained |",
                  "|---|---:|---:|---:|---:|"]

        def act(r: Any) -> str:
            return f"{r['max_abs_activation']:.4g} ({r['fp16_headroom']}x)" if r else "no FP16 graph"

        for e, r in t["fp16"].items():
            rb = b.get("fp16", {}).get(e)
            lines.append(f"| {e} | {r['min_psnr_db'] if r else '-'} | {rb['min_psnr_db'] if rb else '-'} | "
                         f"{act(r)} | {act(rb)} |")
        lines.append("")
    if "tiled" in t:
        lines += [f"## Tiled fast mode against untiled, {result['tiled_size']} (budget {result['tiled_budget']})", "",
                  "| emotion | trained PSNR | untrained PSNR | trained max diff |", "|---|---:|---:|---:|"]
        for e, r in t["tiled"].items():
            rb = b.get("tiled", {}).get(e, {})
            got, base = r.get("psnr_db", r.get("error", "-")), rb.get("psnr_db", rb.get("error", "-"))
            lines.append(f"| {e} | {got} | {base} | {r.get('max_abs_diff', '-')} |")
        lines.append("")
    if "coherence" in t:
        lines += [f"## Video coherence, {result['coherence_size']}, {result['frames']} frames: E_warp per frame -> "
                  "with coherence flow (cut)", "", "| emotion | clip | trained | untrained |", "|---|---|---|---|"]
        for e, clips in t["coherence"].items():
            for c, r in clips.items():
                rb = b.get("coherence", {}).get(e, {}).get(c)
                lines.append(f"| {e} | {c} | {r['per_frame']} -> {r['flow']} ({r['cut']:.0%}) | "
                             + (f"{rb['per_frame']} -> {rb['flow']} ({rb['cut']:.0%})" if rb else "-") + " |")
        lines.append("")
    return "\n".join(lines) + "\n"


def measure_bundle(bundle: Path, emotions: Sequence[str], measures: Sequence[str], args: argparse.Namespace,
                   recipe: Any, photos: Sequence[Path], trained: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    ckpts = {e: p for e, p in checkpoints(bundle).items() if e in emotions} if trained else {}
    if trained and "heldout" in measures:
        out["heldout"] = heldout(ckpts, recipe, photos, args.size)
    if trained and "distinct" in measures:
        out["distinct"] = distinct(ckpts, recipe, photos, args.size)
    if trained and "sheet" in measures and args.sheet:
        out["sheet"] = contact_sheet(bundle, emotions, recipe, photos, args.sheet)
    if "fp16" in measures:
        out["fp16"] = fp16(bundle, emotions)
    if "tiled" in measures:
        which = [e for e in emotions if not args.tiled_emotions or e in args.tiled_emotions.split(",")]
        out["tiled"] = tiled(bundle, which, args.tiled_size, args.tiled_budget)
    if "coherence" in measures:
        out["coherence"] = coherence(bundle, emotions, args.coherence_size, args.frames)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python studies/trained_styles/trained_styles.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", type=Path, help="the demo bundle exported from the trained weights (default: export "
                   "one from --weights into --work)")
    p.add_argument("--weights", type=Path, help="trained weights folder (styles/<emotion>.pth; default weights/demo)")
    p.add_argument("--baseline", default="none", help="none, untrained (export a seeded demo bundle), or a bundle")
    p.add_argument("--work", type=Path, help="where bundles this script exports go (default: a temporary folder)")
    p.add_argument("--emotions", default="all", help="comma list, or all (default)")
    p.add_argument("--measures", default=",".join(MEASURES), help=f"comma list of {', '.join(MEASURES)}")
    p.add_argument("--size", type=int, default=256, help="crop of the held-out photos (default 256, the training's)")
    p.add_argument("--style-size", type=int, help="the style images' shorter side (default: the recipe's)")
    p.add_argument("--tiled-size", default="4000x3000", help="photo of the tiled check (default 12 MP)")
    p.add_argument("--tiled-budget", default="1.7GB", help="its memory budget (default 1.7GB, the README's)")
    p.add_argument("--tiled-emotions", help="styles of the tiled check (default: --emotions; each run at 12 MP "
                   "takes about a minute and 10 GB here)")
    p.add_argument("--coherence-size", default="640x360", help="clip size (default 640x360)")
    p.add_argument("--frames", type=int, default=8, help="frames per clip (default 8)")
    p.add_argument("--sheet", type=Path, help="write the contact sheet PNG here")
    p.add_argument("--json", type=Path, help="write the figures here")
    p.add_argument("--markdown", type=Path, help="write the report here")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")

    from emostyle_rt.fsutil import write_bytes_atomic
    from emostyle_rt.manifest import EMOTIONS

    from emostyle_bench.machine import collect

    t0 = time.perf_counter()
    measures = [m.strip() for m in args.measures.split(",") if m.strip()]
    bad = sorted(set(measures) - set(MEASURES))
    emotions = list(EMOTIONS) if args.emotions == "all" else [e.strip() for e in args.emotions.split(",")]
    if bad or set(emotions) - set(EMOTIONS):
        p.error(f"unknown measures {bad} or emotions {sorted(set(emotions) - set(EMOTIONS))}")
    mod = _recipe()
    recipe = mod.load_recipe()
    if args.style_size:
        recipe.style_options["style_size"] = args.style_size
    photos = []
    tmp = tempfile.TemporaryDirectory(prefix="emostyle-trained-")
    work = args.work or Path(tmp.name)
    work.mkdir(parents=True, exist_ok=True)
    for ref in recipe.held_out:  # the held-out photos, as files (what the evaluation and the runtime read)
        image = mod.read_reference(ref)
        path = work / "held_out" / f"{mod._ref_name(ref)}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        import cv2

        cv2.imwrite(str(path), image[:, :, ::-1])
        photos.append(path)
    sheet_photos = [p for p in photos if p.stem != "camera"] or photos  # colour photos in the sheet
    bundle = args.bundle or export_from_weights(args.weights or _default_weights(), work / "trained")
    untrained_here = [e for e, c in checkpoints(bundle).items() if c is None and e in emotions]
    if untrained_here:
        log.warning("bundle %s has no trained checkpoint for %s: held-out, distinct and sheet skip them", bundle,
                    ", ".join(untrained_here))
    trained_emotions = [e for e in emotions if e not in untrained_here]
    result: dict[str, Any] = {"bundle": str(bundle), "machine": _machine_line(collect()), "emotions": emotions,
                              "tiled_size": args.tiled_size, "tiled_budget": args.tiled_budget,
                              "coherence_size": args.coherence_size, "frames": args.frames,
                              "heldout_photos": [p.name for p in photos]}
    # held-out/distinct on every photo; the sheet on the colour ones
    result["trained"] = measure_bundle(bundle, trained_emotions, [m for m in measures if m != "sheet"], args, recipe,
                                       photos, True)
    if "sheet" in measures and args.sheet and trained_emotions:
        result["trained"]["sheet"] = contact_sheet(bundle, trained_emotions, recipe, sheet_photos, args.sheet)
    if args.baseline != "none":
        base = export_from_weights(None, work / "untrained") if args.baseline == "untrained" else Path(args.baseline)
        result["baseline_bundle"] = str(base)
        result["baseline"] = measure_bundle(base, trained_emotions, [m for m in measures if m in
                                                                     ("fp16", "tiled", "coherence")], args, recipe,
                                            photos, False)
    result["seconds"] = time.perf_counter() - t0
    text = render(result)
    sys.stdout.write(text)
    if args.json:
        write_bytes_atomic(args.json, (json.dumps(result, indent=1) + "\n").encode())
    if args.markdown:
        write_bytes_atomic(args.markdown, text.encode())
    tmp.cleanup()
    return 0


def _default_weights() -> Path:
    from emostyle_export.bundle import DEMO_WEIGHTS

    return DEMO_WEIGHTS


def _machine_line(info: Any) -> str:
    return (f"{info.cpu}, {info.usable_cores} usable cores, GPU: {info.gpu}, load average at the start "
            f"{info.load_avg_start[0]:.1f}")


if __name__ == "__main__":
    raise SystemExit(main())
