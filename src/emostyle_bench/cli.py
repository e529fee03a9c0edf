"""``emostyle-bench``: eager frameworks vs our runtime, per stage and for the whole chain.

Imports nothing heavy at module level: ``--help`` is instant.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from emostyle_rt.console import INTERRUPTED
from emostyle_rt.fsutil import path_argument
from emostyle_rt.console import BUNDLE_ENV, DEFAULT_BUNDLE, bundle_hint, default_bundle

log = logging.getLogger("emostyle_bench")

STAGE_NAMES = ("detect", "classify", "style", "chain", "video")
COLD_STAGES = ("classify", "style", "chain")
SIZE_NAMES = ("256", "512", "720p", "1080p", "WxH")
#: --quick: what it measures, sized to finish in under 3 minutes on a 2-core CPU (video: ask with --stages video).
QUICK = dict(stages=STAGE_NAMES[:4], sizes=("512", "1080p"), chain_sizes=("512",), batches=(1, 4), image_batches=(1,),
             repeat={"detect": 5, "classify": 30, "style": 3, "chain": 3, "video": 3}, warmup=0, budget_s=6.0,
             coldstart=("chain",), time_limit_s=150.0)
#: Clip size of the video stage when --sizes is not given (the coherence issue's 640x360).
VIDEO_SIZES = ("640x360",)
FULL = dict(stages=STAGE_NAMES, sizes=("256", "512", "720p", "1080p"), batches=(1, 4),
            repeat={"detect": 20, "classify": 100, "style": 10, "chain": 5, "video": 3}, warmup=1, budget_s=60.0,
            coldstart=("classify", "style", "chain"), time_limit_s=None)


def _csv(text: str) -> list[str]:
    return [s.strip() for s in text.split(",") if s.strip()]


EPILOG = """\
examples:
  emostyle-bench --quick                     # under 3 minutes on a 2-core CPU
  emostyle-bench --stages style --sizes 512,1080p --paths ort-cpu,torch-eager --repeat 20
  emostyle-bench --list-paths                # every path, and whether it runs on this machine
  emostyle-bench --quick --json out.json --chart out.png
  emostyle-bench --stages video              # per-frame vs coherent video at 640x360: time and E_warp
  emostyle-bench --from-json out.json --markdown out.md   # re-render, measure nothing

Output paths (--json, --markdown, --chart) are checked before anything is measured:
a file name under a writable folder, not an existing file (unless --force) and never
the --from-json input; --chart's extension picks the format (png, svg, pdf, ... as
matplotlib supports). --from-json X --json Y writes the re-rendered result (targets
re-derived by this version) to Y. Empty lists (--stages ,) are refused.

needs the bench extra: install torch (CPU or CUDA build) first, then
  pip install "emostyle-rt[cpu,bench]"
exit status: 0 done, 1 a write or run failed, 2 bad arguments / bundle / missing extra, 130 interrupted
(Ctrl-C: nothing more is written, no temporary file stays).
"""


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="emostyle-bench",
        description="Benchmark eager Keras / PyTorch against the emostyle runtime on a bundle: face detection, "
                    "classifier, style network and whole chain; outputs are checked against the eager ones "
                    "before timing.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--bundle", type=path_argument, default=None,
                    help=f"bundle folder (default ${BUNDLE_ENV} or {DEFAULT_BUNDLE}; make it with 'emostyle-export --demo -o "
                         f"{DEFAULT_BUNDLE}')")
    ap.add_argument("--quick", action="store_true",
                    help="short run (< 3 min on 2 cores): 512x512 and 1920x1080, style batch 1, chain at 512x512, "
                         "chain cold start only")
    ap.add_argument("--stages", type=_csv, default=None, help=f"comma list of {','.join(STAGE_NAMES)}")
    ap.add_argument("--sizes", type=_csv, default=None,
                    help="comma list: 256, 512, 720p, 1080p or WxH (default: all four)")
    ap.add_argument("--batches", type=_csv, default=None, help="comma list of batch sizes (default 1,4)")
    ap.add_argument("--image-batches", type=_csv, default=None,
                    help="batch sizes for the image stages (detect, style, chain); default: --batches "
                         "(--quick: 1)")
    ap.add_argument("--paths", type=_csv, default=None,
                    help="comma list of path names (see --list-paths); eager references still run once for the "
                         "output check")
    ap.add_argument("--repeat", type=int, default=None, help="most timed runs per row (all stages)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed runs after the output check (which warms up too)")
    ap.add_argument("--budget", type=float, default=None, help="seconds of timed runs per row after the first 3")
    ap.add_argument("--time-limit", type=float, default=None, metavar="S",
                    help="start no new measurement after S seconds; later rows are reported as skipped "
                         "(default: 150 with --quick, none otherwise)")
    ap.add_argument("--no-coldstart", action="store_true", help="skip the cold start / peak RSS subprocesses")
    ap.add_argument("--coldstart-stages", type=_csv, default=None, help="stages measured for cold start")
    ap.add_argument("--json", type=path_argument, default=None, metavar="PATH", help="write the full results as JSON")
    ap.add_argument("--markdown", type=path_argument, default=None, metavar="PATH", help="write the Markdown report")
    ap.add_argument("--chart", type=path_argument, default=None, metavar="PATH",
                    help="write a chart of latency by size; the extension picks the format (.png, .svg, .pdf, ...)")
    ap.add_argument("--from-json", type=path_argument, default=None, metavar="PATH",
                    help="measure nothing: re-render a --json result as table / --markdown / --chart / --json")
    ap.add_argument("--force", action="store_true",
                    help="write over existing --json / --markdown / --chart files (never over --from-json)")
    ap.add_argument("--list-paths", action="store_true",
                    help="list every path, whether it runs on this machine (or why not), and exit")
    ap.add_argument("-q", "--quiet", action="store_true", help="warnings only on stderr")
    return ap


def _given(items: list[str] | None, option: str, available: object) -> list[str] | None:
    """``items`` of a comma-list option; None when the option is absent, an error when it names nothing."""
    from emostyle_rt.errors import InvalidArgumentError, note

    if items is not None and not items:
        names = available if isinstance(available, str) else ", ".join(map(str, available))
        raise InvalidArgumentError(f"{option} names nothing (an empty list would silently mean everything)."
                                   + note(f"a comma list of {names}", "an empty list"))
    return items


def _positive_ints(items: Sequence[str], what: str) -> tuple[int, ...]:
    from emostyle_rt.errors import InvalidArgumentError, note

    try:
        vals = tuple(int(s) for s in items)
    except ValueError:
        raise InvalidArgumentError(f"Bad {what}." + note("positive integers", list(items))) from None
    if not vals or any(v < 1 for v in vals):
        raise InvalidArgumentError(f"Bad {what}." + note("positive integers", list(items)))
    return vals


def _list_paths(bundle_arg: Path | None) -> int:
    """Print every path and whether it runs on this machine with the bundle (when there is one)."""
    from emostyle_export.bundlefiles import quiet_manifest

    from emostyle_rt.errors import BundleError
    from emostyle_rt.manifest import load_manifest

    from .paths import availability, bundle_availability, default_paths

    bundle = default_bundle(bundle_arg)
    manifest = None
    try:
        with quiet_manifest():
            manifest = load_manifest(bundle, verify_files=False)
    except BundleError as exc:
        sys.stdout.write(f"No usable bundle at {bundle} ({exc}); what a path needs from one (mtcnn: its face "
                         "detector, aoti-*: its AOTInductor packages) is not checked.\n")
    else:
        sys.stdout.write(f"Bundle {bundle}: paths are checked against what it holds.\n")
    sys.stdout.write(f"{'stage':9s} {'path':18s} {'role':9s} {'dev':5s} {'what':46s} on this machine\n")
    for p in default_paths():
        why = availability(p) or (bundle_availability(p, manifest) if manifest is not None else None)
        if why is None and manifest is None and (p.name == "mtcnn" or p.name.startswith("aoti-")):
            text = "with a bundle that has " + ("a face detector" if p.name == "mtcnn" else "packages for it") + ": runs here"
        else:
            text = "runs here" if why is None else "not here: " + why
        sys.stdout.write(f"{p.stage:9s} {p.name:18s} {p.role:9s} {p.device:5s} {p.label:46s} {text}\n")
    sys.stdout.write("Eager paths rebuild the bundle's source models: the demo bundle's from its seeds, yours from "
                     "the checkpoints named in its manifest.\n")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; 0 on success, 2 for bad arguments, a missing bundle or extra, 1 on other errors, 130 when
    interrupted."""
    written: list[str] = []
    try:
        return _main(argv, written)
    except KeyboardInterrupt:
        done = f"; written before: {', '.join(written)}" if written else "; no result file was written"
        if log.handlers:
            log.error("emostyle-bench: interrupted%s", done)
        else:  # before logging was set up
            sys.stderr.write(f"emostyle-bench: interrupted{done}\n")
        return INTERRUPTED


def _main(argv: Sequence[str] | None, written: list[str]) -> int:
    args = build_parser().parse_args(argv)
    from emostyle_export.extras import (
        MissingExtraError,
        missing_error,
        require,
        stack_module,
    )

    from emostyle_rt.backends.ort import telemetry_off
    from emostyle_rt.errors import EmostyleError, InvalidArgumentError
    from emostyle_rt.logutil import quiet_tensorflow, setup_cli_logging

    setup_cli_logging(args.quiet, "emostyle_bench", "emostyle_rt", "emostyle_export")
    quiet_tensorflow()
    telemetry_off()  # onnxruntime, here and in the cold-start children: nothing written in the home
    args.written = written
    try:
        if args.list_paths:
            return _list_paths(args.bundle)
        measuring = [] if args.from_json else ["skimage", "onnxruntime"]  # the photos, our runtime
        require("emostyle-bench", measuring + (["matplotlib"] if args.chart else []), "bench")
        _check_outputs(args)
        if args.from_json:
            return _rerender(args)
        return _run(args)
    except (InvalidArgumentError, MissingExtraError) as exc:
        log.error("emostyle-bench: error: %s", exc)
        return 2
    except EmostyleError as exc:
        log.error("emostyle-bench: error: %s", exc)
        return 1
    except ModuleNotFoundError as exc:  # a stack module the check above could not foresee
        module = stack_module(exc, "bench")
        if module is None:
            raise
        log.error("emostyle-bench: error: %s", missing_error("emostyle-bench", [module], "bench"))
        return 2


def chart_formats() -> dict[str, str]:
    """Extension -> description of the image formats matplotlib can save here."""
    from matplotlib.figure import Figure

    return dict(Figure().canvas.get_supported_filetypes())


def _check_output(path: Path, option: str, force: bool = False, inputs: Sequence[Path] = ()) -> None:
    """``path`` must be writable as a file: not a folder, under a folder that exists or can be created; an existing
    file only with ``force`` and never one of ``inputs`` (:func:`emostyle_rt.fsutil.check_output_file`)."""
    from emostyle_rt.errors import InvalidArgumentError, note
    from emostyle_rt.fsutil import check_output_file

    if str(path) == "":
        raise InvalidArgumentError(f"{option} is an empty path." + note("a file path", "''"))

    if path.is_dir():
        raise InvalidArgumentError(f"{option} {path} is a folder; it takes a file name."
                                   + note(f"a file path such as {path / ('results' + _SUFFIX[option])}", "a folder"))
    anc = path.parent
    while not anc.exists() and anc != anc.parent:
        anc = anc.parent
    if not anc.is_dir():
        raise InvalidArgumentError(f"{option} {path} cannot be written: {anc} is a file, not a folder."
                                   + note("a path under a folder", f"{anc}: a file"))
    if not os.access(anc, os.W_OK | os.X_OK) or path.exists() and not os.access(path, os.W_OK):
        where = path if path.exists() else anc
        raise InvalidArgumentError(f"{option} {path} cannot be written: {where} is read-only."
                                   + note("a writable place", f"{where}: read-only"))
    check_output_file(path, force, inputs, label=option)


_SUFFIX = {"--json": ".json", "--markdown": ".md", "--chart": ".png"}


def _check_outputs(args: argparse.Namespace) -> None:
    """Every output path, before anything is measured (a run must not be lost at the end)."""
    from emostyle_rt.errors import InvalidArgumentError, note

    outputs = {"--json": args.json, "--markdown": args.markdown, "--chart": args.chart}
    if args.from_json is not None and str(args.from_json) == "":
        raise InvalidArgumentError("--from-json is an empty path." + note("a --json result of emostyle-bench", "''"))
    paths = [p for p in outputs.values() if p is not None]
    if len({p.resolve() for p in paths if str(p)}) < len(paths) or args.from_json in paths:
        raise InvalidArgumentError("Two outputs (or an output and --from-json) name the same file."
                                   + note("distinct files", [str(p) for p in paths]))
    for option, path in outputs.items():
        if path is not None:
            _check_output(path, option, args.force, [args.from_json] if args.from_json else [])
    if args.chart is not None:
        formats = chart_formats()
        ext = args.chart.suffix.lower().lstrip(".")
        if ext not in formats:
            raise InvalidArgumentError(
                f"--chart {args.chart} has {'the unknown extension .' + ext if ext else 'no extension'}; the extension "
                "picks the image format."
                + note(", ".join(f".{e}" for e in sorted(formats)), f".{ext}" if ext else "none")
            )


def _write_outputs(args: argparse.Namespace, report: object) -> int:
    """Print the table, write the asked-for files; 1 when one of them could not be written (the others are)."""
    from emostyle_rt.errors import sentence
    from emostyle_rt.fsutil import write_bytes_atomic

    from .report import markdown, write_chart

    text = markdown(report)  # type: ignore[arg-type]
    sys.stdout.write(text)
    sys.stdout.flush()
    writes = []
    if args.json:  # with --from-json: the re-rendered result (targets re-derived)
        data = (report.to_json() + "\n").encode()  # type: ignore[attr-defined]
        writes.append(("results", args.json, lambda: write_bytes_atomic(args.json, data)))
    if args.markdown:
        writes.append(("Markdown", args.markdown, lambda: write_bytes_atomic(args.markdown, text.encode())))
    if args.chart:
        writes.append(("chart", args.chart, lambda: write_chart(report, args.chart)))  # type: ignore[arg-type]
    rc = 0
    for what, path, write in writes:
        try:
            write()
        except OSError as exc:
            log.error("emostyle-bench: error: cannot write the %s to %s: %s", what, path, sentence(exc))
            rc = 1
        else:
            getattr(args, "written", []).append(str(path))
            log.info("%s written to %s", what, path)
    return rc


def _rerender(args: argparse.Namespace) -> int:
    import dataclasses
    import json

    from emostyle_rt.errors import InvalidArgumentError, note, sentence

    from .report import compute_targets, markdown, report_from_dict

    try:
        data = json.loads(args.from_json.read_bytes().decode("utf-8"))
    except (OSError, ValueError) as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise InvalidArgumentError(f"Cannot read {args.from_json}: " + sentence(exc)
                                   + note("a --json result of emostyle-bench", "an unreadable file")) from None
    try:
        report = report_from_dict(data)
        # targets are re-derived from the rows with this version's rules
        report = dataclasses.replace(report, targets=compute_targets(report.rows, report.coldstarts,
                                                                     crop_checks=report.crop_checks))
        markdown(report)  # fields of the wrong type fail here, not half-way through the outputs
    except InvalidArgumentError as exc:
        raise InvalidArgumentError(f"{args.from_json}: {exc}") from None
    except (KeyError, TypeError, AttributeError, ValueError, IndexError) as exc:
        raise InvalidArgumentError(f"{args.from_json} is not an emostyle-bench result: {type(exc).__name__}: "
                                   + sentence(exc) + note("a --json result of emostyle-bench", "other JSON")) from None
    return _write_outputs(args, report)


def _check_numbers(args: argparse.Namespace) -> None:
    from emostyle_rt.errors import InvalidArgumentError, note

    checks = (("--repeat", args.repeat, 1, False), ("--warmup", args.warmup, 0, False),
              ("--budget", args.budget, 0, False), ("--time-limit", args.time_limit, 0, True))
    for option, value, least, strict in checks:
        if value is not None and not (value > least if strict else value >= least):  # NaN fails too
            raise InvalidArgumentError(f"{option} {value} cannot work."
                                       + note(f"{'>' if strict else '>='} {least}", value))


def _plan(args: argparse.Namespace, bundle: Path) -> tuple[object, tuple[object, ...]]:
    """(Settings, cases) from the flags; every flag is checked here, before anything is measured."""
    from emostyle_rt.errors import InvalidArgumentError, note

    from .bench import make_cases
    from .images import parse_size
    from .paths import default_paths
    from .report import Settings

    preset = QUICK if args.quick else FULL
    known = sorted({p.name for p in default_paths()})
    for option, value, available in (("--stages", args.stages, STAGE_NAMES), ("--sizes", args.sizes, SIZE_NAMES),
                                     ("--batches", args.batches, "positive integers"),
                                     ("--image-batches", args.image_batches, "positive integers"),
                                     ("--paths", args.paths, known),
                                     ("--coldstart-stages", args.coldstart_stages, COLD_STAGES)):
        _given(value, option, available)
    stages = tuple(args.stages or preset["stages"])
    bad = [s for s in stages if s not in STAGE_NAMES]
    if bad:
        raise InvalidArgumentError(f"Unknown stage(s) {bad}." + note("stage names", ", ".join(STAGE_NAMES)))
    sizes = tuple(parse_size(s) for s in (args.sizes or preset["sizes"]))
    batches = _positive_ints(args.batches, "--batches") if args.batches else tuple(preset["batches"])
    if args.image_batches:
        image_batches: tuple[int, ...] | None = _positive_ints(args.image_batches, "--image-batches")
    else:
        image_batches = None if args.batches else preset.get("image_batches")
    unknown = [p for p in args.paths or () if p not in known]
    if unknown:
        raise InvalidArgumentError(f"Unknown path(s) {unknown}." + note("path names of emostyle-bench --list-paths",
                                                                        ", ".join(known)))
    bad = [s for s in args.coldstart_stages or () if s not in COLD_STAGES]
    if bad:
        raise InvalidArgumentError(f"Unknown cold-start stage(s) {bad}."
                                   + note("stages with a cold start", ", ".join(COLD_STAGES)))
    _check_numbers(args)
    cases = make_cases(stages, sizes, batches, image_batches)
    if not args.sizes and "video" in stages:  # a clip at the size, not at every photo size
        cases = tuple(c for c in cases if c.stage != "video") + make_cases(
            ("video",), tuple(parse_size(s) for s in VIDEO_SIZES), batches)
    if args.quick and not args.sizes and "chain" in stages:  # the quick chain runs at 512x512 only
        chain_sizes = {parse_size(s) for s in preset["chain_sizes"]}
        cases = tuple(c for c in cases if c.stage != "chain" or c.size in chain_sizes)
    repeat = {k: args.repeat for k in preset["repeat"]} if args.repeat is not None else dict(preset["repeat"])
    settings = Settings(
        bundle=str(bundle), quick=args.quick, stages=stages, sizes=tuple(s.name for s in sizes), batches=batches,
        paths=tuple(args.paths) if args.paths else None, repeat=tuple(sorted(repeat.items())),
        warmup=args.warmup if args.warmup is not None else int(preset["warmup"]),
        budget_s=args.budget if args.budget is not None else float(preset["budget_s"]),
        # the preset's cold starts only of the stages asked for (--stages classify runs no style cold start)
        coldstart=() if args.no_coldstart else tuple(args.coldstart_stages
                                                     or [s for s in preset["coldstart"] if s in stages]),
        coldstart_input="512x512",
        time_limit_s=args.time_limit if args.time_limit is not None else preset["time_limit_s"],
    )
    return settings, cases


def _run(args: argparse.Namespace) -> int:
    from emostyle_rt.errors import BundleError

    from .bench import run_benchmark

    bundle = default_bundle(args.bundle)
    settings, cases = _plan(args, bundle)
    if not (bundle / "manifest.json").is_file():
        log.error("emostyle-bench: error: no bundle at %s.%s", bundle, bundle_hint())
        return 2
    try:
        report = run_benchmark(settings, cases)  # type: ignore[arg-type]
    except BundleError as exc:
        log.error("emostyle-bench: error: %s", exc)
        return 2
    return _write_outputs(args, report)


if __name__ == "__main__":
    raise SystemExit(main())
