"""``emostyle-export``: trained checkpoints -> a verified ONNX bundle."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any, Sequence

from emostyle_rt.console import INTERRUPTED
from emostyle_rt.errors import EmostyleError, note
from emostyle_rt.fsutil import path_argument
from emostyle_rt.logutil import setup_cli_logging
from emostyle_rt.manifest import EMOTIONS

from .errors import ExportError

EPILOG = f"""\
examples:
  # the whole pipeline on a fresh machine: fer's trained classifier, style networks with seeded UNTRAINED weights
  emostyle-export --demo -o bundles/demo

  # your own models: one style per emotion; a checkpoint may serve several
  emostyle-export --classifier emotion.keras \\
      --style angry=candy.pth --style disgust=mosaic.pth --style fear=mosaic.pth \\
      --style happy=udnie.pth --style sad=rain.pth --style surprise=candy.pth \\
      --style neutral=udnie.pth -o bundles/mine

  # the same from a config file (TOML or JSON; paths relative to the file)
  emostyle-export --config export.toml -o bundles/mine

  # a classifier trained on FER-style face crops: say so (the runtime cuts its crops the same way)
  emostyle-export --config export.toml --classifier-crop fer-style -o bundles/mine
  emostyle-export --bundle bundles/mine --classifier-crop margin=10px,border=mean,interp=linear

  # FP16 graphs + TensorRT engines for this GPU, into an existing bundle
  emostyle-export --bundle bundles/mine --tensorrt --max-size 1080x1920 --max-batch 4

  # the MTCNN face detector into a bundle made without one (the runtime then needs no Haar / OpenCV 4)
  emostyle-export --bundle bundles/mine --detector mtcnn

  # tiled-inference graphs (any photo size in bounded memory) into a bundle made without them
  emostyle-export --bundle bundles/mine --tiled

  # AOTInductor packages of the style networks for this machine (needs torch: the aoti extra)
  emostyle-export --bundle bundles/mine --aoti                                  # CPU, fp32
  emostyle-export --bundle bundles/mine --aoti --device cuda --precision fp16   # this GPU

config file (TOML):
  classifier = "emotion.h5"
  classifier_scale = "-1..1"          # optional, default 0..1
  labels = ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]   # optional
  classifier_crop = "fer-style"       # optional, default "default"; or {{ preset = "tight", margin = "4px" }}
  [styles]
  angry = "candy.pth"
  happy = {{ path = "udnie.pth", convention = "0-255" }}
  ...

emotions: {", ".join(EMOTIONS)} (one --style each; naming an emotion twice with two paths is an
error; a --style flag replaces that emotion's entry of the config file)
style checkpoints: the paper authors' dict with 'state_dict' (convention imagenet) and
pytorch/examples fast_neural_style state_dicts (convention 0-255) are told apart from
the file; --style-convention overrides that for every style.
classifiers: .keras, .h5 (Keras 2 or 3) or a SavedModel folder; input size and channels
are read from the model, the pixel scale it was trained with is --classifier-scale.
Every graph is checked against its source model in onnxruntime; the export fails if
one is off (probabilities > 1e-4, styles > 1 grey level). The bundle appears only
when complete; an existing one is replaced only with --force.
face detector (--detector, default mtcnn): MTCNN's P-Net, R-Net and O-Net from the mtcnn
package, each within 1e-4 of its Keras network, the whole cascade finding the package's
faces (IoU >= 0.9) on real photos; "none" leaves it out (the runtime then uses Haar).
tiled graphs (default; --no-tiled leaves them out): per style, the graph cut at its InstanceNorms
and with their statistics as inputs, so photos larger than the memory budget run in tiles with
the whole image's statistics (no seams); checked tiled vs untiled on real photos (<= 1 grey level).

classifier crop (--classifier-crop): how the classifier's TRAINING faces were cut; the
runtime cuts its crops the same way. A preset, or key=value pairs over one
(preset "default" when none is named). Presets:
  default    square, +20% of the box each side, clipped at the image, area/linear resize
  fer-style  square, +10 px each side, padded with the image's mean grey/colour, linear
  tight      the detector's box itself: no margin, not squared, clipped
keys: margin=0.2 (of the box) or 10px, square=expand|none, border=clip|constant|mean|reflect,
value=0..255 (constant pad), interp=auto|area|linear|cubic|nearest, grey=R/G/B weights or cv2.

needs the export extra: install torch (CPU or CUDA build) first, then
  pip install "emostyle-rt[cpu,export]"
exit status: 0 done, 2 bad arguments / inputs / missing extra / failed check, 130 interrupted.
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
    src.add_argument("--demo", action="store_true",
                     help="the demo bundle: fer's trained emotion classifier (vendored, MIT) and the paper's style "
                          "networks, with the trained demo styles of weights/demo/styles where present and seeded "
                          "UNTRAINED weights elsewhere")
    src.add_argument("--classifier", type=path_argument, metavar="PATH", help="Keras classifier: .keras, .h5 or SavedModel folder")
    src.add_argument("--style", action="append", default=[], metavar="EMOTION=PATH",
                     help="style checkpoint for an emotion (repeat for all seven)")
    src.add_argument("--config", type=path_argument, metavar="FILE", help="TOML or JSON file with classifier, styles, options")
    opt = p.add_argument_group("model options")
    opt.add_argument("--classifier-scale", choices=("0..1", "-1..1", "0..255"), default=None,
                     help="pixel scaling the classifier was trained with (default 0..1; --demo: its model's, -1..1)")
    opt.add_argument("--classifier-crop", metavar="SPEC", default=None,
                     help="how the classifier's training face crops were cut: a preset (default, fer-style, tight) "
                          "or key=value pairs, e.g. margin=10px,border=mean,interp=linear (see below)")
    opt.add_argument("--labels", metavar="A,B,...",
                     help=f"classifier output order (default {','.join(EMOTIONS)})")
    opt.add_argument("--style-convention", choices=("imagenet", "0-255"), default=None,
                     help="override the convention detected from each style checkpoint")
    opt.add_argument("--seed", type=int, default=0, help="seed of the demo weights (default 0)")
    opt.add_argument("--detector", choices=("mtcnn", "none"), default=None,
                     help="face detector to put into the bundle (default mtcnn; with --bundle: add it)")
    opt.add_argument("--tiled", action="store_true",
                     help="with --bundle: add the tiled-inference graphs to styles without them (new exports "
                          "have them by default)")
    opt.add_argument("--no-tiled", action="store_true",
                     help="new export without tiled-inference graphs (images over the memory budget then fail)")
    fast = p.add_argument_group("FP16 and TensorRT (see bundles/README.md)")
    fast.add_argument("--fp16", action="store_true",
                      help="add mixed-precision FP16 graphs, verified on CPU against FP32 (PSNR >= 40 dB, same top-1)")
    fast.add_argument("--tensorrt", action="store_true",
                      help="build FP16 TensorRT engines for this GPU (implies --fp16; needs the tensorrt extra)")
    fast.add_argument("--engines", action=_DeprecatedFlag, dest="tensorrt", new="--tensorrt",
                      help=argparse.SUPPRESS)  # the 0.1.0 name of --tensorrt
    fast.add_argument("--aoti", action="store_true",
                      help="build AOTInductor packages of the style networks for this machine from the bundle's "
                           "graphs, each checked against its FP32 graph (needs torch: the aoti extra)")
    fast.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="--aoti: device of the packages (cpu)")
    fast.add_argument("--precision", choices=("fp32", "fp16", "bf16"), default=None,
                      help="--aoti: compute precision inside the packages (default fp16 on cuda, fp32 on cpu; "
                           "I/O stays uint8)")
    fast.add_argument("--max-autotune", action="store_true", help="--aoti: inductor max-autotune (slower build)")
    fast.add_argument("--bundle", type=path_argument, metavar="DIR",
                      help="add --fp16 / --tensorrt / --aoti / --detector / --classifier-crop to this existing bundle "
                           "instead of exporting a new one")
    fast.add_argument("--min-size", type=_hw, default=None, metavar="HxW",
                      help="smallest image of the engine profiles / AOTI range (64x64)")
    fast.add_argument("--opt-size", type=_hw, default=None, metavar="HxW",
                      help="image size TensorRT tunes for / torch.export traces with (720x1280)")
    fast.add_argument("--max-size", type=_hw, default=None, metavar="HxW",
                      help="largest image of the engine profiles / AOTI range, either orientation (1920x1920)")
    fast.add_argument("--max-batch", type=int, default=4, metavar="N", help="largest style batch of the engines (4)")
    fast.add_argument("--workspace-mb", type=int, default=None, metavar="MB", help="TensorRT builder workspace limit")
    out = p.add_argument_group("output")
    out.add_argument("-o", "--output", type=path_argument, metavar="DIR", help="bundle folder to create")
    out.add_argument("--force", action="store_true", help="replace an existing bundle at DIR")
    out.add_argument("-q", "--quiet", action="store_true", help="print only warnings and errors")
    out.add_argument("-v", "--verbose", action="store_true",
                     help="debug logging, with the runtime's own lines (graphs loaded, providers) and the "
                          "frameworks' warnings")
    return p


#: Modules whose Python warnings (Keras' UserWarnings, say) an export shows only with -v: they are about the
#: frameworks' internals, not about the user's models (the parity checks report on those).
FRAMEWORK_WARNINGS = r"(keras|tf_keras|tensorflow|tf2onnx|onnxconverter_common|google\.protobuf)(\..*)?$"


def quiet_frameworks(verbose: bool) -> None:
    """Hide the frameworks' Python warnings unless ``verbose``."""
    import warnings

    if not verbose:
        warnings.filterwarnings("ignore", module=FRAMEWORK_WARNINGS)


class _DeprecatedFlag(argparse.Action):
    """A flag's old name: sets what ``new`` sets (``dest``) and says once on stderr that it is deprecated."""

    def __init__(self, option_strings: Sequence[str], dest: str, new: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)
        self.new = new
        self.warned = False

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        setattr(namespace, self.dest, True)
        if not self.warned:
            self.warned = True
            sys.stderr.write(f"{parser.prog}: warning: {option_string} is deprecated; use {self.new}\n")


def _hw(text: str) -> tuple[int, int]:
    h, sep, w = text.lower().partition("x")
    if not (sep and h.isdigit() and w.isdigit()):
        raise argparse.ArgumentTypeError(f"{text!r} is not HxW, e.g. 1080x1920")
    return int(h), int(w)


def engine_options(args: argparse.Namespace) -> Any:
    """--tensorrt and its profile flags -> EngineOptions (None without --tensorrt)."""
    if not args.tensorrt:
        return None
    from .bundle import EngineOptions
    from .tensorrt_build import ShapeRange

    default = ShapeRange()
    shapes = ShapeRange(max_batch=args.max_batch, min_hw=args.min_size or default.min_hw,
                        opt_hw=args.opt_size or default.opt_hw, max_hw=args.max_size or default.max_hw)
    return EngineOptions(shape_range=shapes, workspace_mb=args.workspace_mb, force=args.force)


def aoti_options(args: argparse.Namespace) -> Any:
    """--aoti and its flags -> AotiOptions (None without --aoti)."""
    if not args.aoti:
        return None
    from .aoti import AotiOptions

    default = AotiOptions()
    opts = AotiOptions(device=args.device, precision=args.precision, max_batch=args.max_batch,
                       min_hw=args.min_size or default.min_hw, opt_hw=args.opt_size or default.opt_hw,
                       max_hw=args.max_size or default.max_hw, max_autotune=args.max_autotune)
    opts.check()
    return opts


#: Options whose values may start with "-" (``--classifier-scale -1..1``), which argparse takes for options.
_DASH_VALUES = ("--classifier-scale",)


def _join_dash_values(argv: Sequence[str]) -> list[str]:
    """``--classifier-scale -1..1`` -> ``--classifier-scale=-1..1`` (the form argparse accepts), as the README writes it."""
    out: list[str] = []
    it = iter(argv)
    for arg in it:
        if arg in _DASH_VALUES:
            value = next(it, None)
            out.append(arg if value is None else f"{arg}={value}")
        else:
            out.append(arg)
    return out


#: config key -> what its value must be (as TOML / JSON name it)
CONFIG_KEYS = {
    "classifier": "a string (path of the .keras, .h5 or SavedModel folder)",
    "classifier_scale": 'a string: "0..1", "-1..1" or "0..255"',
    "labels": 'an array of strings, or one comma-separated string',
    "classifier_crop": 'a string (preset or key=value,...) or a table {preset = "...", margin = "10px", ...}',
    "detector": 'a string: "mtcnn" or "none"',
    "styles": "a table of EMOTION = PATH (or EMOTION = {path = ..., convention = ...})",
}
_KINDS = {bool: "boolean", int: "integer", float: "number", str: "string", list: "array", dict: "table",
          type(None): "null"}


def _got(value: Any) -> str:
    """A config value as a message shows it: its TOML/JSON type and a short repr."""
    if value is None or isinstance(value, bool):
        return "null" if value is None else f"boolean {str(value).lower()}"
    text = repr(value)
    return f"{_KINDS.get(type(value), type(value).__name__)} {text[:60] + '...' if len(text) > 60 else text}"


def _wrong_type(path: Path, key: str, expected: str, value: Any) -> ExportError:
    return ExportError(f"Config file {path}: {key} has the wrong type." + note(expected, _got(value)))


def _read_config(path: Path) -> dict[str, Any]:
    """The config file as a dict whose values have the types in ``CONFIG_KEYS`` (a typed error otherwise)."""
    from .configfile import read_config_file

    cfg = read_config_file(path, ExportError)
    if not isinstance(cfg, dict):
        raise _wrong_type(path, "the top level", "a TOML table / JSON object of settings (classifier, styles, ...)",
                          cfg)
    _check_config_types(path, cfg)
    return cfg


def _check_config_types(path: Path, cfg: dict[str, Any]) -> None:
    unknown = sorted(set(cfg) - set(CONFIG_KEYS))
    if unknown:
        raise ExportError(f"Unknown keys in {path}: {unknown}." + note(sorted(CONFIG_KEYS), sorted(cfg)))
    for key in ("classifier", "classifier_scale", "detector"):
        if key in cfg and not (isinstance(cfg[key], str) and cfg[key].strip()):
            raise _wrong_type(path, f"key {key!r}", CONFIG_KEYS[key], cfg[key])
    if "classifier_crop" in cfg and not isinstance(cfg["classifier_crop"], (str, dict)):
        raise _wrong_type(path, "key 'classifier_crop'", CONFIG_KEYS["classifier_crop"], cfg["classifier_crop"])
    labels = cfg.get("labels", "")
    if not (isinstance(labels, str) or isinstance(labels, list) and all(isinstance(x, str) for x in labels)):
        raise _wrong_type(path, "key 'labels'", CONFIG_KEYS["labels"], labels)
    styles = cfg.get("styles", {})
    if not isinstance(styles, dict):
        raise _wrong_type(path, "key 'styles'", CONFIG_KEYS["styles"], styles)
    for emotion, spec in styles.items():
        where = f"key 'styles.{emotion}'"
        if isinstance(spec, str) and spec.strip():
            continue
        if not isinstance(spec, dict) or not isinstance(spec.get("path"), str) or not spec["path"].strip():
            raise _wrong_type(path, where, 'a path string or a table {path = "...", convention = "..."}', spec)
        extra = sorted(set(spec) - {"path", "convention"})
        if extra:
            raise ExportError(f"Config file {path}: {where} has unknown keys {extra}."
                              + note("path and convention", sorted(spec)))
        if "convention" in spec and not isinstance(spec["convention"], str):
            raise _wrong_type(path, f"{where}.convention", 'a string: "imagenet" or "0-255"', spec["convention"])


def _flag_styles(items: Sequence[str]) -> dict[str, Path]:
    """--style EMOTION=PATH flags -> {emotion: path}; an emotion named twice with two paths is an error."""
    out: dict[str, Path] = {}
    for item in items:
        emotion, sep, path = item.partition("=")
        emotion, path = emotion.strip(), path.strip()
        if not sep or not emotion or not path:
            raise ExportError(f"--style {item!r} is not EMOTION=PATH." + note("e.g. --style happy=udnie.pth", item))
        if emotion in out and out[emotion] != Path(path):
            raise ExportError(
                f"--style {emotion}= is given twice, with {str(out[emotion])!r} and {path!r}; each emotion takes "
                "one style." + note(f"one --style {emotion}=PATH", f"{out[emotion]} and {path}")
            )
        out[emotion] = Path(path)
    return out


def plan_from_args(args: argparse.Namespace) -> Any:
    """Merge flags and an optional config file (flags win) into an ExportPlan."""
    from .bundle import ExportPlan, StyleSource, parse_labels

    cfg: dict[str, Any] = _read_config(args.config) if args.config else {}
    base = args.config.parent if args.config else Path.cwd()
    styles: dict[str, StyleSource] = {}
    for emotion, spec in cfg.get("styles", {}).items():
        if isinstance(spec, str):
            spec = {"path": spec}
        styles[emotion] = StyleSource(base / spec["path"], spec.get("convention"))
    styles |= {emotion: StyleSource(path) for emotion, path in _flag_styles(args.style).items()}
    if args.style_convention:
        styles = {e: StyleSource(s.path, args.style_convention) for e, s in styles.items()}

    classifier = args.classifier or (base / cfg["classifier"] if "classifier" in cfg else None)
    labels = parse_labels(args.labels or cfg.get("labels") or list(EMOTIONS))
    scale = args.classifier_scale or cfg.get("classifier_scale")  # None: the demo's own, else 0..1
    if args.demo and (classifier or styles):
        raise ExportError("--demo builds its own models; it takes no --classifier, --style or config styles.")
    detector = args.detector or cfg.get("detector") or "mtcnn"
    if detector not in ("mtcnn", "none"):
        raise ExportError(f"Config file {args.config}: key 'detector' must be \"mtcnn\" or \"none\"."
                          + note('"mtcnn" or "none"', repr(detector)))
    return ExportPlan(classifier=classifier, styles=styles, classifier_scale=scale, labels=labels,
                      demo=args.demo, seed=args.seed, fp16=args.fp16, engines=engine_options(args),
                      aoti=aoti_options(args), tiled=not args.no_tiled,
                      classifier_crop=classifier_crop(args, cfg), detector=None if detector == "none" else detector)


def classifier_crop(args: argparse.Namespace, cfg: dict[str, Any] | None = None) -> Any:
    """--classifier-crop, else the config's classifier_crop (a CropSpec), else None (the demo classifier's own crop,
    the default spec for others)."""
    from .crop import parse_crop

    if args.classifier_crop is not None:
        return parse_crop(args.classifier_crop)
    if "classifier_crop" not in (cfg or {}):
        return None
    try:
        return parse_crop((cfg or {})["classifier_crop"])
    except EmostyleError as exc:
        raise ExportError(f"Config file {args.config}: key 'classifier_crop': {exc}") from None


def needed_modules(args: argparse.Namespace) -> list[str]:
    """The export-stack modules this command line needs (checked before any work)."""
    fp16 = ["onnx", "onnxruntime", "onnxconverter_common", "skimage"]
    detector = ["tensorflow", "keras", "tf2onnx", "onnx", "onnxruntime", "skimage", "mtcnn"]
    aoti = ["torch", "onnx", "onnxruntime", "skimage"] if args.aoti else []
    tiled = ["onnx", "onnxruntime", "skimage"] if args.tiled else []
    if args.bundle is not None:
        wanted = (fp16 if args.fp16 or args.tensorrt else []) + (detector if args.detector == "mtcnn" else []) + aoti
        wanted += tiled
        return list(dict.fromkeys(wanted))
    full = ["torch", "tensorflow", "keras", "tf2onnx", "onnx", "onnxruntime", "skimage"]
    full += ["mtcnn"] if args.detector != "none" else []
    return full + (["onnxconverter_common"] if args.fp16 or args.tensorrt else [])


def main(argv: Sequence[str] | None = None) -> int:
    """Run the export; 0 on success, 2 for any refused input or failed check, 130 when interrupted."""
    log = logging.getLogger("emostyle_export")
    try:
        args = build_parser().parse_args(_join_dash_values(sys.argv[1:] if argv is None else argv))
        setup_cli_logging(args.quiet, "emostyle_export", library=("emostyle_rt",), verbose=args.verbose)
        quiet_frameworks(args.verbose)
        from emostyle_rt.backends.ort import telemetry_off

        telemetry_off()  # onnxruntime (ours, and onnxconverter-common's own import): nothing written in the home
        from .bundle import add_to_bundle, export_bundle
        from .extras import missing_error, require, stack_module
    except KeyboardInterrupt:  # before any work (logging may not be set up: Python's last-resort handler says it)
        log.error("emostyle-export: interrupted; nothing was written")
        return INTERRUPTED
    try:
        if args.bundle is not None:
            if args.output or args.demo or args.classifier or args.style or args.config:
                raise ExportError("--bundle adds FP16 graphs / engines / AOTInductor packages / a face detector / tiled "
                                  "graphs / a crop spec to an existing bundle; it takes no -o or sources.")
            if args.no_tiled:
                raise ExportError("--no-tiled is for new exports; with --bundle, tiled graphs are only added (--tiled)."
                                  + note("--tiled or nothing", "--no-tiled"))
            if not (args.fp16 or args.tensorrt or args.aoti or args.classifier_crop is not None
                    or args.detector == "mtcnn" or args.tiled):
                raise ExportError("--bundle needs --fp16, --tensorrt, --aoti, --detector mtcnn, --tiled or --classifier-crop."
                                  + note("--fp16, --tensorrt, --aoti, --detector mtcnn, --tiled or --classifier-crop SPEC",
                                         "none of them"))
            crop = classifier_crop(args) if args.classifier_crop is not None else None
            aoti = aoti_options(args)
            require("emostyle-export", needed_modules(args), "export")
            dest = add_to_bundle(args.bundle, engine_options(args), fp16=args.fp16, crop=crop,
                                 detector=args.detector if args.detector == "mtcnn" else None, aoti=aoti,
                                 tiled=args.tiled)
        elif args.output is None:
            raise ExportError("No output folder." + note("-o DIR (or --bundle DIR with --fp16/--tensorrt)", "none"))
        else:
            plan = plan_from_args(args)
            require("emostyle-export", needed_modules(args), "export")
            dest = export_bundle(plan, args.output, force=args.force)
    except EmostyleError as exc:
        log.error("emostyle-export: error: %s", exc)
        return 2
    except ModuleNotFoundError as exc:  # a stack module that the check above could not foresee (broken install)
        module = stack_module(exc, "export")
        if module is None:
            raise
        log.error("emostyle-export: error: %s", missing_error("emostyle-export", [module], "export"))
        return 2
    except KeyboardInterrupt:
        if args.bundle is not None:
            log.error("emostyle-export: interrupted; %s keeps its previous manifest", args.bundle)
        else:
            log.error("emostyle-export: interrupted; nothing was written to %s", args.output)
        return INTERRUPTED
    print(dest)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
