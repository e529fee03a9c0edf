"""``emostyle``: stylise a photo or a folder of photos with a bundle.

    emostyle photo.jpg -o out.jpg
    emostyle photos/ -o styled/ --report report.json

Outputs are written atomically and never over an input; a rerun skips outputs
that already exist (complete, thanks to the atomic writes), so an interrupted
folder run finishes the rest. Exit status: 0 all done, 1 some files failed,
2 bad arguments or bundle.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any, Iterable, Sequence

from .errors import EmostyleError, ImageWriteError, InvalidArgumentError, note
from .imageio import clean_stale_parts, write_bytes_atomic, write_image
from .logutil import setup_cli_logging

log = logging.getLogger("emostyle")

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
DEFAULT_BUNDLE = "engines/demo"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="emostyle", description="Emotion-based style transfer for a photo or a folder.")
    p.add_argument("input", type=Path, help="an image file or a folder of images (searched recursively)")
    p.add_argument("-o", "--output", type=Path, required=True, help="output file (for a file) or folder")
    p.add_argument("--bundle", type=Path, default=None,
                   help=f"bundle folder (default: $EMOSTYLE_BUNDLE or {DEFAULT_BUNDLE})")
    p.add_argument("--emotion", help="use this emotion's style instead of classifying")
    p.add_argument("--max-side", type=int, default=None, help="run the style network at most this many pixels wide/high")
    p.add_argument("--no-face", default="whole", help="'whole' (classify the whole image), 'error', or an emotion")
    p.add_argument("--detector", default=None, help="'haar' (default) or a YuNet .onnx file")
    p.add_argument("--backend", default="auto", choices=("auto", "onnxruntime", "tensorrt"))
    p.add_argument("--provider", default=None, choices=("tensorrt", "cuda", "cpu"), help="force an onnxruntime provider")
    p.add_argument("--report", type=Path, default=None, help="write a JSON report of each file's emotion and faces")
    p.add_argument("--force", action="store_true", help="redo outputs that already exist (inputs are never overwritten)")
    p.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def plan(src: Path, dst: Path) -> list[tuple[Path, Path]]:
    """(input, output) pairs; refuses any pair whose output is an input."""
    if src.is_dir():
        if dst.exists() and not dst.is_dir():
            raise InvalidArgumentError(f"Output {dst} must be a folder when the input {src} is a folder.")
        out_root = dst.resolve()
        if out_root == src.resolve():
            raise InvalidArgumentError(f"Output folder {dst} is the input folder; outputs would replace the inputs.")
        pairs = [
            (f, dst / f.relative_to(src))
            for f in sorted(src.rglob("*"))
            if f.suffix.lower() in IMAGE_SUFFIXES
            and f.is_file()
            and not f.name.startswith(".")
            and out_root not in f.resolve().parents
        ]
    elif src.is_file():
        out = dst / src.name if dst.is_dir() else dst
        if out.suffix.lower() not in IMAGE_SUFFIXES:
            raise InvalidArgumentError(f"Output {out} has no image extension." + note(IMAGE_SUFFIXES, out.suffix or "none"))
        pairs = [(src, out)]
    else:
        raise InvalidArgumentError(f"Input {src} does not exist.")
    if not pairs:
        log.warning("No images found in %s." + note(IMAGE_SUFFIXES, "none"), src)
    inputs = {f.resolve() for f, _ in pairs}
    clashes = [str(o) for _, o in pairs if o.resolve() in inputs]
    if clashes:
        raise InvalidArgumentError(f"Refusing to write over inputs: {clashes[:3]}. Choose another output.")
    return pairs


def _progress(items: Sequence[Any], quiet: bool) -> tuple[Iterable[Any], bool]:
    """A tqdm progress bar over ``items`` if tqdm is installed (not a dependency); whether it is one."""
    try:
        from tqdm import tqdm
    except ImportError:
        return items, False
    return tqdm(items, unit="img", disable=True if quiet else None, file=sys.stderr), True


def _old_report(path: Path | None) -> dict[str, dict[str, Any]]:
    """Entries of a previous report, by input path, so a resumed run keeps them."""
    if path is None or not path.is_file():
        return {}
    try:
        return {e["input"]: e for e in json.loads(path.read_text(encoding="utf-8"))["files"]}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def run(args: argparse.Namespace) -> int:
    """Process every planned file; the exit status."""
    from .stylizer import Stylizer

    pairs = plan(args.input, args.output)
    out_dir = args.output if args.input.is_dir() else pairs[0][1].parent
    try:  # fail before any work when the output folder cannot exist (e.g. a path under a file)
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ImageWriteError(
            f"Cannot create the output folder {out_dir}: {exc.strerror or exc}." + note("a writable folder", out_dir)
        ) from exc
    clean_stale_parts(out_dir)  # temporary files of killed runs; outputs themselves are always complete
    bundle = args.bundle or Path(os.environ.get("EMOSTYLE_BUNDLE", DEFAULT_BUNDLE))
    st = Stylizer(bundle, backend=args.backend, provider=args.provider, detector=args.detector, no_face=args.no_face)
    if args.emotion is not None and args.emotion not in st.labels:
        raise InvalidArgumentError(f"Unknown emotion {args.emotion!r}." + note(list(st.labels), args.emotion))
    old = _old_report(args.report)
    entries, failed = [], 0
    items, bar = _progress(pairs, args.quiet)
    for i, (src, dst) in enumerate(items, 1):
        entry: dict[str, Any] = {"input": str(src), "output": str(dst)}
        if dst.exists() and not args.force:
            entry = {**old.get(str(src), entry), "status": "exists"}
        else:
            try:
                res = st.stylize(src, emotion=args.emotion, max_side=args.max_side)
                write_image(dst, res.image)
                entry.update(status="ok", **res.summary())
                log.log(logging.DEBUG if bar else logging.INFO, "[%d/%d] %s -> %s (%s)", i, len(pairs), src, dst, res.emotion)
            except ImageWriteError as exc:  # the destination is unusable (not writable, full): stop, do not retry each file
                failed += 1
                entry.update(status="error", error=str(exc))
                entries.append(entry)
                log.error("Stopping after %d of %d files: %s", i - 1, len(pairs), exc)
                break
            except EmostyleError as exc:
                failed += 1
                entry.update(status="error", error=str(exc))
                log.error("Skipping %s: %s", src, exc)
        entries.append(entry)
    if args.report is not None:
        report = {"bundle": str(bundle), "demo": st.manifest.demo, "files": entries}
        write_bytes_atomic(args.report, json.dumps(report, indent=2).encode("utf-8"))
    done = sum(e["status"] == "ok" for e in entries)
    log.log(logging.WARNING if failed else logging.INFO,
            "%d stylised, %d already done, %d failed.", done, len(entries) - done - failed, failed)
    return 1 if failed else 0


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point; returns the exit status."""
    args = _parser().parse_args(argv)
    setup_cli_logging(args.quiet, log.name, "emostyle_rt")
    if args.verbose:
        for name in (log.name, "emostyle_rt"):
            logging.getLogger(name).setLevel(logging.DEBUG)
    try:
        return run(args)
    except EmostyleError as exc:
        log.error("%s", exc)
        return 2


if __name__ == "__main__":
    sys.exit(main())
