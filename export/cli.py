"""``emostyle-export``: trained checkpoints -> a verified ONNX bundle."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any, Sequence

from emostyle_rt.errors import EmostyleError, ExportError, note
from emostyle_rt.logutil import setup_cli_logging
from emostyle_rt.manifest import EMOTIONS

EPILOG = f"""\
examples:
  # the whole pipeline on a fresh machine, with seeded UNTRAINED weights
  emostyle-export --demo -o engines/demo

  # your own models: one style per emotion; a checkpoint may serve several
  emostyle-export --classifier emotion.keras \\
      --style angry=candy.pth --style disgust=mosaic.pth --style fear=mosaic.pth \\
      --style happy=udnie.pth --style sad=rain.pth --style surprise=candy.pth \\
      --style neutral=udnie.pth -o engines/mine

  # the same from a config file (TOML or JSON; paths relative to the file)
  emostyle-export --config export.toml -o engines/mine

  # FP16 graphs + TensorRT engines for this GPU, into an existing bundle
  emostyle-export --bundle engines/mine --engines --max-size 1080x1920 --max-batch 4

config file (TOML):
  classifier = "emotion.h5"
  classifier_scale = "-1..1"          # optional, default 0..1
  labels = ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]   # optional
  [styles]
  angry = "candy.pth"
  happy = {{ path = "udnie.pth", convention = "0-255" }}
  ...

emotions: {", ".join(EMOTIONS)}
style checkpoints: the paper authors' dict with 'state_dict' (convention imagenet) and
pytorch/examples fast_neural_style state_dicts (convention 0-255) are told apart from
the file; --style-convention overrides that for every style.
classifiers: .keras, .h5 (Keras 2 or 3) or a SavedModel folder; input size and channels
are read from the model, the pixel scale it was trained with is --classifier-scale.
Every graph is checked against its source model in onnxruntime; the export fails if
one is off (probabilities > 1e-4, styles > 1 grey level). The bundle appears only
when complete; an existing one is replaced only with --force.
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="emostyle-export",
        description="Convert a Keras emotion classifier and seven PyTorch style networks into a verified "
        "ONNX bundle (manifest.json + graphs) for the emostyle-rt runtime.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    src = p.add_argument_group("what to export")
    src.add_argument("--demo", action="store_true", help="export the paper's architectures with seeded UNTRAINED weights")
    src.add_argument("--classifier", type=Path, metavar="PATH", help="Keras classifier: .keras, .h5 or SavedModel folder")
    src.add_argument("--style", action="append", default=[], metavar="EMOTION=PATH",
                     help="style checkpoint for an emotion (repeat for all seven)")
    src.add_argument("--config", type=Path, metavar="FILE", help="TOML or JSON file with classifier, styles, options")
    opt = p.add_argument_group("model options")
    opt.add_argument("--classifier-scale", choices=("0..1", "-1..1", "0..255"), default=None,
                     help="pixel scaling the classifier was trained with (default 0..1)")
    opt.add_argument("--labels", metavar="A,B,...",
                     help=f"classifier output order (default {','.join(EMOTIONS)})")
    opt.add_argument("--style-convention", choices=("imagenet", "0-255"), default=None,
                     help="override the convention detected from each style checkpoint")
    opt.add_argument("--seed", type=int, default=0, help="seed of the demo weights (default 0)")
    fast = p.add_argument_group("FP16 and TensorRT (see engines/README.md)")
    fast.add_argument("--fp16", action="store_true",
                      help="add mixed-precision FP16 graphs, verified on CPU against FP32 (PSNR >= 40 dB, same top-1)")
    fast.add_argument("--engines", action="store_true",
                      help="build FP16 TensorRT engines for this GPU (implies --fp16; needs the tensorrt extra)")
    fast.add_argument("--bundle", type=Path, metavar="DIR",
                      help="add --fp16 / --engines to this existing bundle instead of exporting a new one")
    fast.add_argument("--min-size", type=_hw, default=None, metavar="HxW", help="smallest image of the engine profile (64x64)")
    fast.add_argument("--opt-size", type=_hw, default=None, metavar="HxW", help="image size TensorRT tunes for (720x1280)")
    fast.add_argument("--max-size", type=_hw, default=None, metavar="HxW", help="largest image of the engine profile (1080x1920)")
    fast.add_argument("--max-batch", type=int, default=4, metavar="N", help="largest style batch of the engines (4)")
    fast.add_argument("--workspace-mb", type=int, default=None, metavar="MB", help="TensorRT builder workspace limit")
    out = p.add_argument_group("output")
    out.add_argument("-o", "--output", type=Path, metavar="DIR", help="bundle folder to create")
    out.add_argument("--force", action="store_true", help="replace an existing bundle at DIR")
    out.add_argument("-q", "--quiet", action="store_true", help="print only warnings and errors")
    return p


def _hw(text: str) -> tuple[int, int]:
    h, sep, w = text.lower().partition("x")
    if not (sep and h.isdigit() and w.isdigit()):
        raise argparse.ArgumentTypeError(f"{text!r} is not HxW, e.g. 1080x1920")
    return int(h), int(w)


def engine_options(args: argparse.Namespace) -> Any:
    """--engines and its profile flags -> EngineOptions (None without --engines)."""
    if not args.engines:
        return None
    from .bundle import EngineOptions
    from .tensorrt_build import ShapeRange

    default = ShapeRange()
    shapes = ShapeRange(max_batch=args.max_batch, min_hw=args.min_size or default.min_hw,
                        opt_hw=args.opt_size or default.opt_hw, max_hw=args.max_size or default.max_hw)
    return EngineOptions(shape_range=shapes, workspace_mb=args.workspace_mb, force=args.force)


def _read_config(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ExportError(f"Cannot read config file {path}: {exc}.") from exc
    try:
        if path.suffix.lower() == ".json":
            return json.loads(text)
        import tomllib

        return tomllib.loads(text)
    except ValueError as exc:  # JSONDecodeError and TOMLDecodeError are ValueErrors
        raise ExportError(f"Config file {path} is not valid {path.suffix.lstrip('.').upper()}: {exc}.") from exc


def plan_from_args(args: argparse.Namespace) -> Any:
    """Merge flags and an optional config file (flags win) into an ExportPlan."""
    from .bundle import ExportPlan, StyleSource, parse_labels

    cfg: dict[str, Any] = _read_config(args.config) if args.config else {}
    base = args.config.parent if args.config else Path.cwd()
    known = {"classifier", "classifier_scale", "labels", "styles"}
    if set(cfg) - known:
        raise ExportError(f"Unknown keys in {args.config}: {sorted(set(cfg) - known)}." + note(sorted(known), sorted(cfg)))

    styles: dict[str, StyleSource] = {}
    for emotion, spec in (cfg.get("styles") or {}).items():
        if isinstance(spec, str):
            spec = {"path": spec}
        if not isinstance(spec, dict) or "path" not in spec:
            raise ExportError(f"Style entry {emotion!r} in {args.config} needs a path." + note("PATH or {path=..., convention=...}", spec))
        styles[emotion] = StyleSource(base / spec["path"], spec.get("convention"))
    for item in args.style:
        emotion, sep, path = item.partition("=")
        if not sep or not emotion or not path:
            raise ExportError(f"--style {item!r} is not EMOTION=PATH." + note("e.g. --style happy=udnie.pth", item))
        styles[emotion.strip()] = StyleSource(Path(path))
    if args.style_convention:
        styles = {e: StyleSource(s.path, args.style_convention) for e, s in styles.items()}

    classifier = args.classifier or (base / cfg["classifier"] if "classifier" in cfg else None)
    labels = parse_labels(args.labels or cfg.get("labels") or list(EMOTIONS))
    scale = args.classifier_scale or cfg.get("classifier_scale") or "0..1"
    if args.demo and (classifier or styles):
        raise ExportError("--demo builds its own models; it takes no --classifier, --style or config styles.")
    return ExportPlan(classifier=classifier, styles=styles, classifier_scale=scale, labels=labels,
                      demo=args.demo, seed=args.seed, fp16=args.fp16, engines=engine_options(args))


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_cli_logging(args.quiet, "emostyle_export", "emostyle_rt")
    from .bundle import add_to_bundle, export_bundle

    try:
        if args.bundle is not None:
            if args.output or args.demo or args.classifier or args.style or args.config:
                raise ExportError("--bundle adds FP16 graphs / engines to an existing bundle; it takes no -o or sources.")
            if not (args.fp16 or args.engines):
                raise ExportError("--bundle needs --fp16 or --engines." + note("--fp16 or --engines", "neither"))
            dest = add_to_bundle(args.bundle, engine_options(args))
        elif args.output is None:
            raise ExportError("No output folder." + note("-o DIR (or --bundle DIR with --fp16/--engines)", "none"))
        else:
            dest = export_bundle(plan_from_args(args), args.output, force=args.force)
    except EmostyleError as exc:
        logging.getLogger("emostyle_export").error("emostyle-export: error: %s", exc)
        return 2
    except KeyboardInterrupt:
        logging.getLogger("emostyle_export").error("emostyle-export: interrupted; nothing was written to %s", args.output)
        return 130
    print(dest)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
