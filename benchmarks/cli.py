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

log = logging.getLogger("emostyle_bench")

STAGE_NAMES = ("detect", "classify", "style", "chain")
DEFAULT_BUNDLE = Path("engines") / "demo"
#: --quick: what it measures, sized to finish in under 3 minutes on a 2-core CPU.
QUICK = dict(stages=STAGE_NAMES, sizes=("512", "1080p"), chain_sizes=("512",), batches=(1, 4), image_batches=(1,),
             repeat={"detect": 5, "classify": 30, "style": 3, "chain": 3}, warmup=0, budget_s=6.0,
             coldstart=("chain",), time_limit_s=150.0)
FULL = dict(stages=STAGE_NAMES, sizes=("256", "512", "720p", "1080p"), batches=(1, 4),
            repeat={"detect": 20, "classify": 100, "style": 10, "chain": 5}, warmup=1, budget_s=60.0,
            coldstart=("classify", "style", "chain"), time_limit_s=None)


def _csv(text: str) -> list[str]:
    return [s.strip() for s in text.split(",") if s.strip()]


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="emostyle-bench",
        description="Benchmark eager Keras / PyTorch against the emostyle runtime on a bundle: face detection, "
                    "classifier, style network and whole chain; outputs are checked against the eager ones "
                    "before timing.",
    )
    ap.add_argument("--bundle", type=Path, default=None,
                    help=f"bundle folder (default {DEFAULT_BUNDLE}; make it with 'emostyle-export --demo -o "
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
    ap.add_argument("--json", type=Path, default=None, metavar="PATH", help="write the full results as JSON")
    ap.add_argument("--markdown", type=Path, default=None, metavar="PATH", help="write the Markdown report")
    ap.add_argument("--chart", type=Path, default=None, metavar="PATH", help="write a PNG chart (latency by size)")
    ap.add_argument("--from-json", type=Path, default=None, metavar="PATH",
                    help="measure nothing: re-render a --json result as table / --markdown / --chart")
    ap.add_argument("--list-paths", action="store_true", help="list the paths and exit")
    ap.add_argument("-q", "--quiet", action="store_true", help="warnings only on stderr")
    return ap


def _default_bundle() -> Path:
    if DEFAULT_BUNDLE.is_dir():
        return DEFAULT_BUNDLE
    repo = Path(__file__).resolve().parent.parent / DEFAULT_BUNDLE  # editable install: the repo's engines/demo
    return repo if repo.is_dir() else DEFAULT_BUNDLE


def _positive_ints(items: Sequence[str], what: str) -> tuple[int, ...]:
    from emostyle_rt.errors import InvalidArgumentError, note

    try:
        vals = tuple(int(s) for s in items)
    except ValueError:
        raise InvalidArgumentError(f"Bad {what}." + note("positive integers", list(items))) from None
    if not vals or any(v < 1 for v in vals):
        raise InvalidArgumentError(f"Bad {what}." + note("positive integers", list(items)))
    return vals


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; 0 on success, 2 for bad arguments or a missing bundle, 1 on other errors."""
    args = build_parser().parse_args(argv)
    from emostyle_rt.errors import EmostyleError, InvalidArgumentError
    from emostyle_rt.logutil import setup_cli_logging

    setup_cli_logging(args.quiet, "emostyle_bench", "emostyle_rt", "emostyle_export")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    from .paths import default_paths

    if args.list_paths:
        for p in default_paths():
            sys.stdout.write(f"{p.stage:9s} {p.name:18s} {p.role:9s} {p.device:5s} {p.label}\n")
        return 0
    try:
        if args.from_json:
            return _rerender(args)
        return _run(args)
    except InvalidArgumentError as exc:
        log.error("%s", exc)
        return 2
    except EmostyleError as exc:
        log.error("%s", exc)
        return 1


def _write_outputs(args: argparse.Namespace, report: object) -> None:
    from .report import markdown, write_chart

    sys.stdout.write(markdown(report))  # type: ignore[arg-type]
    sys.stdout.flush()
    if args.json and not args.from_json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(report.to_json() + "\n", encoding="utf-8")  # type: ignore[attr-defined]
        log.info("results written to %s", args.json)
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(markdown(report), encoding="utf-8")  # type: ignore[arg-type]
        log.info("Markdown written to %s", args.markdown)
    if args.chart:
        write_chart(report, args.chart)  # type: ignore[arg-type]
        log.info("chart written to %s", args.chart)


def _rerender(args: argparse.Namespace) -> int:
    import dataclasses
    import json

    from emostyle_rt.errors import InvalidArgumentError, note

    from .report import compute_targets, report_from_dict

    try:
        data = json.loads(args.from_json.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InvalidArgumentError(f"Cannot read {args.from_json}: {exc}." + note("a --json result", "none")) from None
    report = report_from_dict(data)
    # targets are re-derived from the rows with this version's rules
    report = dataclasses.replace(report, targets=compute_targets(report.rows, report.coldstarts))
    _write_outputs(args, report)
    return 0


def _run(args: argparse.Namespace) -> int:
    from emostyle_rt.errors import BundleError, InvalidArgumentError, note

    from .bench import make_cases, run_benchmark
    from .images import parse_size
    from .paths import default_paths
    from .report import Settings

    bundle = args.bundle or _default_bundle()
    if not (bundle / "manifest.json").is_file():
        log.error("No bundle at %s. Make the demo bundle with:  emostyle-export --demo -o %s  (or pass --bundle DIR)",
                  bundle, bundle)
        return 2
    preset = QUICK if args.quick else FULL
    stages = tuple(args.stages or preset["stages"])
    bad = [s for s in stages if s not in STAGE_NAMES]
    if bad:
        raise InvalidArgumentError(f"Unknown stage(s) {bad}." + note(list(STAGE_NAMES), stages))
    sizes = tuple(parse_size(s) for s in (args.sizes or preset["sizes"]))
    batches = _positive_ints(args.batches, "--batches") if args.batches else tuple(preset["batches"])
    if args.image_batches:
        image_batches: tuple[int, ...] | None = _positive_ints(args.image_batches, "--image-batches")
    else:
        image_batches = None if args.batches else preset.get("image_batches")
    known = {p.name for p in default_paths()}
    if args.paths:
        unknown = [p for p in args.paths if p not in known]
        if unknown:
            raise InvalidArgumentError(f"Unknown path(s) {unknown}." + note(sorted(known), args.paths))
    cases = make_cases(stages, sizes, batches, image_batches)
    if args.quick and not args.sizes and "chain" in stages:  # the quick chain runs at 512x512 only
        chain_sizes = {parse_size(s) for s in preset["chain_sizes"]}
        cases = tuple(c for c in cases if c.stage != "chain" or c.size in chain_sizes)
    repeat = dict(preset["repeat"])
    if args.repeat is not None:
        if args.repeat < 1:
            raise InvalidArgumentError("--repeat must be >= 1." + note(">= 1", args.repeat))
        repeat = {k: args.repeat for k in repeat}
    cold_stages = () if args.no_coldstart else tuple(args.coldstart_stages or preset["coldstart"])
    cold_stages = tuple(s for s in cold_stages if s in ("classify", "style", "chain"))
    settings = Settings(
        bundle=str(bundle), quick=args.quick, stages=stages, sizes=tuple(s.name for s in sizes), batches=batches,
        paths=tuple(args.paths) if args.paths else None, repeat=tuple(sorted(repeat.items())),
        warmup=args.warmup if args.warmup is not None else int(preset["warmup"]),
        budget_s=args.budget if args.budget is not None else float(preset["budget_s"]),
        coldstart=cold_stages, coldstart_input="512x512",
        time_limit_s=args.time_limit if args.time_limit is not None else preset["time_limit_s"],
    )
    try:
        report = run_benchmark(settings, cases)
    except BundleError as exc:
        log.error("%s", exc)
        return 2
    _write_outputs(args, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
