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
    out = p.add_argument_group("output")
    out.add_argument("-o", "--output", type=Path, required=True, metavar="DIR", help="bundle folder to create")
    out.add_argument("--force", action="store_true", help="replace an existing bundle at DIR")
    out.add_argument("-q", "--quiet", action="store_true", help="print only warnings and errors")
    return p


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
                      demo=args.demo, seed=args.seed)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_cli_logging(args.quiet, "emostyle_export", "emostyle_rt")
    from .bundle import export_bundle

    try:
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
