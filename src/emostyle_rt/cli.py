"""``emostyle``: stylise a photo, a video, a folder of both, or a webcam with a bundle.

    emostyle photo.jpg -o out.jpg
    emostyle video.mp4 -o out.mp4
    emostyle photos/ -o styled/ --report report.json
    emostyle --webcam 0 -o webcam.mp4 --seconds 30

Nothing but the planned outputs, the report and (folder runs) the output
folder's ``.emostyle-state.jsonl`` is ever written, and every argument is
checked before anything is created. Each output is written atomically; a
single file is never written over without ``--force``; a folder run skips the
outputs that exist, so an interrupted run finishes the rest. Exit status: 0 all
done, 1 some files failed, 2 bad arguments, bundle or output folder, 130
interrupted (Ctrl-C; the report of what was done is written).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from .errors import (
    BackendError,
    BundleError,
    EmostyleError,
    ImageEncodeError,
    ImageWriteError,
    InvalidArgumentError,
    note,
    sentence,
)
from .imaging.formats import READ_SUFFIXES as FORMAT_READ_SUFFIXES
from .imaging.formats import WRITE_SUFFIXES, output_name
from .fsutil import check_replace, refuse_input
from .imaging.io import MAX_PIXELS, OPENCV_MAX_PIXELS, clean_stale_parts, read_image_meta, write_bytes_atomic, write_image
from .logutil import setup_cli_logging
from .options import StylizerOptions, add_stylizer_arguments, options_from_args
from .console import DEFAULT_BUNDLE, bundle_hint, default_bundle
from .manifest import MANIFEST_NAME, Manifest, load_manifest
from .video.coherence import DEFAULT_STRENGTH, MODES, CoherenceOptions
from .video import DECISIONS, TemporalOptions
from .video.io import VIDEO_SUFFIXES

log = logging.getLogger("emostyle")

#: Output formats, by extension (``emostyle_rt.imaging.formats``).
IMAGE_SUFFIXES = WRITE_SUFFIXES
#: Inputs: the output formats and GIF (first frame; a GIF's output is a PNG, OpenCV's GIF writer quantises).
READ_SUFFIXES = FORMAT_READ_SUFFIXES
#: What a folder walk picks up: photos and videos (mp4, mov, mkv, webm, avi; the output keeps the container).
MEDIA_SUFFIXES = (*READ_SUFFIXES, *VIDEO_SUFFIXES)
#: Per output folder: each stylised file's emotion and scores, one JSON line each, so a resumed run reports them.
STATE_NAME = ".emostyle-state.jsonl"
INTERRUPTED = 130


EXAMPLES = """examples:
  emostyle photo.jpg -o styled.jpg
  emostyle video.mp4 -o styled.mp4 --report segments.json    # keeps timing, size, audio, rotation
  emostyle clip.mov -o styled.mkv --max-side 512 --crossfade 8
  emostyle big.jpg -o styled.jpg --memory-budget 2GB         # any photo size: tiled, same result, bounded memory
  emostyle clip.mp4 -o styled.mp4 --coherence off            # each frame styled on its own (flickers)
  emostyle media/ -o styled/                                 # photos and videos, recursively; resumable
  emostyle media/ -o styled/ --ray [--actors 2]              # the same on Ray Data (ray extra; docs/ray.md)
  emostyle --webcam 0 -o webcam.mp4 --seconds 30 [--preview]  # Ctrl-C stops and keeps the recording
  emostyle serve --bundle bundles/mine --port 8000           # HTTP service (serve extra): emostyle serve --help
                                                             # (a file named "serve" is given as ./serve)

videos: the style follows the face's emotion over time without flickering: a frame is classified
every --classify-every frames (and at once when the tracked face moves or is lost). A video file is
classified first (a pass that keeps only the scores), its segments are planned on the whole clip (none
shorter than --min-segment seconds, each labelled with its highest mean score, switches where the face
changes), then it is styled (--emotion-decision lookahead, the default for files). The webcam decides
as the frames come (causal): the scores are smoothed over --smooth seconds, and the style switches only when
another emotion leads by --switch-margin for --switch-after seconds, and not sooner than --min-segment seconds
after the last switch; --emotion-decision causal does the same for files
(docs/emotion-over-time.md says how the defaults were measured). The report lists each video's segments (start, end,
emotion, mean scores) and how they were decided. Outputs appear only when complete; a killed run leaves nothing behind.
Textures are kept steady (--coherence flow, the default): each styled frame is blended with the
previous output, warped along the input's optical flow, where that flow is reliable; the report's
"coherence" gives the output's and the input's warping error (E_warp, 8-bit levels; lower is steadier).
"""


def nonempty_path(value: str) -> Path:
    """An argparse type: a path, never the empty string (``Path("")`` is the working folder: what a script with
    an unset variable passes, and a folder run would then walk the whole working folder)."""
    return Path(nonempty(value))


def nonempty(value: str) -> str:
    """An argparse type: any text but the empty (or all-blank) string, refused with exit status 2."""
    if not value.strip():
        raise argparse.ArgumentTypeError(f"an empty path ({value!r}) is refused: it would mean the working folder "
                                         "(an unset shell variable?); give the path itself, or . for the working folder")
    return value


#: Options of videos and the webcam only: given for a run without any, they are refused (see check_applies).
VIDEO_OPTIONS = {"classify_every": "--classify-every", "smooth": "--smooth", "switch_margin": "--switch-margin",
                 "switch_after": "--switch-after", "min_segment": "--min-segment", "crossfade": "--crossfade",
                 "emotion_decision": "--emotion-decision",
                 "batch": "--batch",
                 "coherence": "--coherence", "coherence_strength": "--coherence-strength"}
#: Options of photos only (a video keeps its own encoding and metadata): refused for a run without photos.
PHOTO_OPTIONS = {"quality": "--quality", "strip_metadata": "--strip-metadata"}


def parser() -> argparse.ArgumentParser:
    """The ``emostyle`` command's argument parser (also what ``emostyle_ray.api`` parses its call with)."""
    p = argparse.ArgumentParser(prog="emostyle", description="Emotion-based style transfer for photos, videos, "
                                "folders of both, and webcams.", epilog=EXAMPLES,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("input", type=nonempty_path, nargs="?",
                   help="an image or video file, or a folder of them (searched recursively); not with --webcam")
    p.add_argument("-o", "--output", required=True, type=nonempty,
                   help="output file (for a file; an existing folder or a path ending in / takes the input's name) "
                        "or folder; a video's output is a video (.mp4 .mov .mkv .webm .avi, any of them)")
    p.add_argument("--bundle", type=nonempty_path, default=None,
                   help=f"bundle folder (default: $EMOSTYLE_BUNDLE or {DEFAULT_BUNDLE})")
    p.add_argument("--emotion", help="use this emotion's style instead of classifying")
    p.add_argument("--max-side", type=int, default=None, help="run the style network at most this many pixels wide/high")
    p.add_argument("--quality", type=int, default=None, help="photos: JPEG / WebP quality 1..100 (default: the library's)")
    p.add_argument("--strip-metadata", action="store_true", default=None,
                   help="photos: do not copy the input's EXIF and ICC profile")
    add_stylizer_arguments(
        p.add_argument_group("the Stylizer (as emostyle serve; emostyle_rt.StylizerOptions)"),
        max_pixels_help=f"largest photo in pixels, checked from its header before decoding (default {MAX_PIXELS}, "
                        "a guard against decompression bombs; tiling styles any size within --memory-budget)")
    p.add_argument("--report", type=nonempty_path, default=None,
                   help="write a JSON report of each file's emotion and faces (an existing file is replaced only "
                        "if it is an emostyle report, or with --force)")
    p.add_argument("--force", action="store_true",
                   help="redo outputs that exist and replace an existing single-file output or non-report --report "
                        "file (inputs are never written over)")
    p.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    r = p.add_argument_group("distributed (the ray extra; docs/ray.md)")
    r.add_argument("--ray", nargs="?", const="local", metavar="ADDRESS",
                   help="run the files on Ray Data: parallel decoding, stylizer actors (one GPU each when the "
                        "cluster has GPUs), the same outputs, resume and report; no ADDRESS starts a local Ray, "
                        "'auto' joins one started with 'ray start', host:port or ray://host:10001 a cluster "
                        "(put --ray after the input, or write --ray=ADDRESS)")
    r.add_argument("--actors", type=int, default=None, metavar="N",
                   help="--ray: stylizer actors (default: one per GPU, else one per CPU, each with 1 thread)")
    d = TemporalOptions()
    v = p.add_argument_group("video and webcam (refused for a run without a video)")
    v.add_argument("--webcam", type=int, metavar="N", help="record OpenCV camera N into -o (a video file)")
    v.add_argument("--seconds", type=float, help="--webcam: stop after this many seconds (default: at Ctrl-C)")
    v.add_argument("--preview", action="store_true", help="--webcam: show the styled frames in a window (needs a display)")
    v.add_argument("--emotion-decision", choices=DECISIONS, default=None,
                   help="how a video's segments are decided: 'lookahead' (the default for files: classified first, "
                        "planned on the whole clip, then styled) or 'causal' (as the frames come: the webcam's only "
                        "rule; --smooth, --switch-margin and --switch-after tune it)")
    v.add_argument("--classify-every", type=int, default=None, metavar="K",
                   help=f"classify every K frames (and at least every {d.classify_seconds} s; default {d.classify_every})")
    v.add_argument("--smooth", type=float, default=None, metavar="S",
                   help=f"time constant of the score smoothing, seconds (default {d.smooth_seconds})")
    v.add_argument("--switch-margin", type=float, default=None, metavar="P",
                   help=f"probability lead a new emotion needs to switch the style (default {d.switch_margin})")
    v.add_argument("--switch-after", type=float, default=None, metavar="S",
                   help=f"seconds the lead must hold (default {d.switch_seconds})")
    v.add_argument("--min-segment", type=float, default=None, metavar="S",
                   help=f"keep a style at least S seconds after a switch (default {d.min_segment_seconds})")
    v.add_argument("--crossfade", type=int, default=None, metavar="N",
                   help="blend old and new style over N frames at a switch (default: cut)")
    v.add_argument("--batch", type=int, default=None, metavar="N",
                   help="frames per style run (default 1: batching did not pay on CPU; may on a GPU)")
    v.add_argument("--coherence", choices=MODES, default=None,
                   help="'flow' (default): blend each styled frame with the previous output warped by the "
                        "optical flow, against texture flicker (measured: about 1%% more CPU per frame); 'off': each frame on its own")
    v.add_argument("--coherence-strength", type=float, default=None, metavar="A",
                   help=f"0..1: the previous output's weight where the flow is reliable (default {DEFAULT_STRENGTH}; "
                        "lower keeps fast motion crisper, higher is steadier)")
    return p


def option_defaults() -> dict[str, Any]:
    """The values the video and photo options take when not given."""
    d = TemporalOptions()
    return {"classify_every": d.classify_every, "smooth": d.smooth_seconds, "switch_margin": d.switch_margin,
            "switch_after": d.switch_seconds, "min_segment": d.min_segment_seconds, "crossfade": d.crossfade_frames,
            "batch": 1, "coherence": "flow",
            "coherence_strength": DEFAULT_STRENGTH, "quality": None, "strip_metadata": False}


def fill_defaults(args: argparse.Namespace) -> None:
    """Record which video / photo options were given (``args.given``), then give the others their defaults.
    Idempotent: a Namespace made by hand (the Python API) may lack some of them."""
    if hasattr(args, "given"):
        return
    args.given = {name for name in (*VIDEO_OPTIONS, *PHOTO_OPTIONS) if getattr(args, name, None) is not None
                  and not (name == "strip_metadata" and getattr(args, name) is False)}
    for name, value in option_defaults().items():
        if getattr(args, name, None) is None:
            setattr(args, name, value)
    if getattr(args, "max_pixels", None) is None:
        args.max_pixels = MAX_PIXELS


def check_applies(args: argparse.Namespace, pairs: Sequence[tuple[Path, Path]]) -> None:
    """One rule for options that do not apply: a video option given for a run without a video (or the webcam), or a
    photo option for a run without a photo, is refused (as --seconds is without --webcam), never ignored."""
    given = getattr(args, "given", set())
    if getattr(args, "webcam", None) is not None:
        kinds = {"video"}
    else:
        kinds = {"video" if src.suffix.lower() in VIDEO_SUFFIXES else "photo" for src, _ in pairs}
    if not kinds:  # nothing to do: nothing to refuse
        return
    source = "the webcam" if getattr(args, "webcam", None) is not None else f"the input {args.input}"
    for kind, options, users in (("video", VIDEO_OPTIONS, "videos and the webcam"), ("photo", PHOTO_OPTIONS, "photos")):
        bad = [flag for name, flag in options.items() if name in given]
        if kind not in kinds and bad:
            raise InvalidArgumentError(
                f"{', '.join(bad)} {'is' if len(bad) == 1 else 'are'} for {users}, and {source} has no {kind}; "
                "an option that does not apply is refused, not ignored."
                + note(f"a {kind} input" + (" (or --webcam)" if kind == "video" else ""), f"no {kind}"))


def coherence_options(args: argparse.Namespace) -> CoherenceOptions:
    """The coherence options of the command line (a typed error for a bad value)."""
    fill_defaults(args)
    return CoherenceOptions(args.coherence, args.coherence_strength)


#: Options of the causal rule only (the lookahead plan of a file does not use them).
CAUSAL_OPTIONS = {"smooth": "--smooth", "switch_margin": "--switch-margin", "switch_after": "--switch-after"}


def emotion_decision(args: argparse.Namespace) -> str:
    """How this run's videos are decided: --emotion-decision, else lookahead for files and causal for the webcam."""
    given = getattr(args, "emotion_decision", None)
    return given or ("causal" if getattr(args, "webcam", None) is not None else "lookahead")


def check_decision(args: argparse.Namespace) -> None:
    """The webcam cannot look ahead; the causal rule's options are refused for a lookahead plan (not ignored)."""
    fill_defaults(args)
    decision = emotion_decision(args)
    if getattr(args, "webcam", None) is not None and decision != "causal":
        raise InvalidArgumentError(
            f"--emotion-decision {decision} needs the whole video before styling it, and the webcam is live: its "
            "emotion is decided as the frames come." + note("--emotion-decision causal (or none) with --webcam",
                                                             decision))
    bad = [flag for name, flag in CAUSAL_OPTIONS.items() if name in getattr(args, "given", set())]
    if decision == "lookahead" and bad:
        raise InvalidArgumentError(
            f"{', '.join(bad)} tune{'s' if len(bad) == 1 else ''} the causal rule, and video files are planned with "
            "lookahead; an option that does not apply is refused, not ignored."
            + note("--emotion-decision causal with " + ", ".join(bad), "--emotion-decision lookahead"))


def temporal_options(args: argparse.Namespace) -> TemporalOptions:
    """The video options of the command line (a typed error for a bad value)."""
    fill_defaults(args)
    return TemporalOptions(classify_every=args.classify_every, smooth_seconds=args.smooth,
                           switch_margin=args.switch_margin, switch_seconds=args.switch_after,
                           min_segment_seconds=args.min_segment, crossfade_frames=args.crossfade)


# -- planning: pure, nothing is created ---------------------------------------------------------


def _walk(src: Path) -> list[Path]:
    """Image files under ``src``, sorted. Hidden files and folders are skipped, symlinked folders not
    followed, symlinked files read; skips are logged. (The output folder is never inside ``src``: plan refuses it.)"""
    found, hidden, linked = [], [], []
    for dirpath, dirnames, filenames in os.walk(src):  # followlinks=False
        d = Path(dirpath)
        keep = []
        for name in sorted(dirnames):
            p = d / name
            if name.startswith("."):
                hidden.append(p)
            elif p.is_symlink():
                linked.append(p)
            else:
                keep.append(name)
        dirnames[:] = keep
        for name in sorted(filenames):
            p = d / name
            if not name.lower().endswith(MEDIA_SUFFIXES):
                continue
            if name.startswith("."):
                hidden.append(p)
            elif p.is_file():
                found.append(p)
    if hidden:
        log.info("Skipped %d hidden file(s) or folder(s), e.g. %s.", len(hidden), hidden[0])
    if linked:
        log.info("Did not follow %d symlinked folder(s), e.g. %s.", len(linked), linked[0])
    return found


def check_output_folder(src: Path, dst: Path, raw: str) -> None:
    """Refuse an output folder that is the input folder, lies inside it, or holds it, and a new output folder
    named like a file: the input and output trees must be apart, so an output is never read as an input."""
    s, o = src.resolve(), dst.resolve()
    beside = src.resolve().parent / f"{s.name}-styled"
    if o == s:
        raise InvalidArgumentError(f"Output folder {dst} is the input folder; outputs would replace the inputs.")
    if s in o.parents:
        raise InvalidArgumentError(
            f"Output folder {dst} is inside the input folder {src}: files already there would be taken for outputs "
            f"(skipped as done, or written over with --force) and outputs read as inputs by the next run. Choose a "
            f"folder outside it, such as {beside}." + note("an output folder outside the input folder", "one inside it"))
    if o in s.parents:
        raise InvalidArgumentError(
            f"Output folder {dst} holds the input folder {src}: outputs would be mixed with what lies around the "
            f"inputs (an input subfolder named {s.name!r} would even be mirrored into the input folder). Choose a "
            f"folder outside it, such as {beside}." + note("an output folder outside the input folder", "one above it"))
    if dst.exists() and not dst.is_dir():
        raise InvalidArgumentError(f"Output {dst} must be a folder when the input {src} is a folder.")
    if not dst.exists() and dst.suffix.lower() in MEDIA_SUFFIXES and not raw.endswith(("/", os.sep)):
        raise InvalidArgumentError(
            f"Output {dst} of the folder {src} is named like a file ({dst.suffix}), and a folder run writes a "
            f"folder of outputs; it is not created. Name the folder without an image or video extension (or "
            f"write {raw}/ to mean a folder of that name)."
            + note("a folder name", f"a name ending in {dst.suffix}"))


def plan(src: Path, dst: str | Path, *, force: bool = False) -> list[tuple[Path, Path]]:
    """(input, output) pairs; refuses outputs that are inputs, clash, or (a single file) exist without ``force``, and
    output folders inside, above or equal to the input folder."""
    raw = str(dst)
    if not raw.strip():  # Path("") is the working folder
        raise InvalidArgumentError("An empty output path is refused: it would mean the working folder."
                                   + note("an output path", repr(raw)))
    dst = Path(dst)
    if src.is_dir():
        check_output_folder(src, dst, raw)
        pairs = [(f, dst / f.relative_to(src).with_name(output_name(f.name))) for f in _walk(src)]
    elif src.is_file():
        as_folder = dst.is_dir() or raw.endswith(("/", os.sep))
        out = dst / output_name(src.name) if as_folder else dst
        if src.suffix.lower() in VIDEO_SUFFIXES:
            if out.suffix.lower() not in VIDEO_SUFFIXES:
                raise InvalidArgumentError(
                    f"Output {out} of the video {src} has no video extension we write."
                    + note(VIDEO_SUFFIXES, out.suffix or "none"))
        elif out.suffix.lower() not in IMAGE_SUFFIXES:
            raise InvalidArgumentError(
                f"Output {out} has no image extension we write (GIF inputs are read, not written; "
                f"video outputs need a video input)." + note(IMAGE_SUFFIXES, out.suffix or "none"))
        check_replace(out, force)
        pairs = [(src, out)]
    elif src.exists():
        raise InvalidArgumentError(f"Input {src} is not a regular file or a folder.")
    else:
        raise InvalidArgumentError(f"Input {src} does not exist.")
    if not pairs:
        log.warning("No images or videos found in %s." + note(MEDIA_SUFFIXES, "none"), src)
    inputs = {f.resolve() for f, _ in pairs}
    outputs: dict[Path, Path] = {}
    for f, o in pairs:
        refuse_input(o, inputs)
        if o.resolve() in outputs:
            raise InvalidArgumentError(
                f"Inputs {outputs[o.resolve()]} and {f} would both be written to {o} (a GIF's output is a PNG)."
                + note("one input per output name", "two"))
        outputs[o.resolve()] = f
    return pairs


def _blocked(folder: Path) -> Path | None:
    """The existing ancestor (or ``folder`` itself) that is not a folder, if one would stop creating it."""
    for p in (folder, *folder.parents):
        if p.exists() or p.is_symlink():
            return None if p.is_dir() else p
    return None


def _unwritable(folder: Path) -> Path | None:
    """The existing folder (``folder``, else its nearest existing ancestor, where it would be created) in which
    this process may not create files (permissions, a read-only file system), else None. Asked of the OS
    (``os.access``), so that nothing is written to find out; a path blocked by a file is ``_blocked``'s."""
    for p in (folder, *folder.parents):
        if p.exists():
            return p if p.is_dir() and not os.access(p, os.W_OK | os.X_OK) else None
    return None


def check_output_folders(folders: Iterable[Path]) -> None:
    """Refuse, before any work, output folders that cannot be created or written into."""
    for d in folders:
        if (b := _blocked(d)) is not None:
            raise ImageWriteError(f"Cannot create the output folder {d}: {b} is not a folder." + note("a folder", b))
        if (u := _unwritable(d)) is not None:
            raise ImageWriteError(f"Cannot write into the output folder {d}: {u} is not writable (permissions or a "
                                  "read-only file system)." + note("a writable folder", f"{u}, not writable"))


def _read_report(path: Path) -> dict[str, Any] | None:
    """A previous emostyle report at ``path`` (a JSON object with "bundle" and a "files" list), else None."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    files = data.get("files") if isinstance(data, dict) else None
    if not isinstance(files, list) or "bundle" not in data or not all(isinstance(e, dict) and "input" in e for e in files):
        return None
    return data


def check_report_path(report: Path, pairs: Sequence[tuple[Path, Path]], state: Path | None, force: bool) -> None:
    """Refuse a report path that would destroy anything: an input or output, where an output folder goes,
    an existing folder, under a regular file, or an existing file that is not an emostyle report (without ``force``)."""
    r, outputs = report.resolve(), {o.resolve() for _, o in pairs}
    taken = outputs | {f.resolve() for f, _ in pairs} | {o.parent for o in outputs}
    taken |= {state.resolve(), state.parent.resolve()} if state is not None else set()
    if r in taken or any(q in outputs for q in r.parents):
        raise InvalidArgumentError(
            f"Report {report} is an input, an output, an output folder or the state file; it would be written over."
            + note("a path of its own", report))
    if report.is_dir():
        raise InvalidArgumentError(f"Report {report} is a folder." + note("a file path", "a folder"))
    if (b := _blocked(report.parent)) is not None:
        raise InvalidArgumentError(f"Report {report} cannot be written: {b} is not a folder." + note("a folder", b))
    if (u := _unwritable(report.parent)) is not None:  # found now, not after all the work
        raise InvalidArgumentError(f"Report {report} cannot be written: {u} is not writable (permissions or a "
                                   "read-only file system)." + note("a writable folder", f"{u}, not writable"))
    if report.exists() and not report.is_file():
        raise InvalidArgumentError(f"Report {report} is not a regular file." + note("a file path", "a special file"))
    if report.is_file() and not force and _read_report(report) is None:
        raise InvalidArgumentError(
            f"Report {report} exists and is not an emostyle report; it is not replaced without --force."
            + note("a new path or an earlier report", "another file"))


# -- options and bundle -------------------------------------------------------------------------


def _open_bundle(explicit: Path | None) -> Manifest:
    """The bundle's manifest (files verified); a missing bundle says how to choose or make one."""
    bundle = default_bundle(explicit)
    try:
        manifest = load_manifest(bundle)
    except BundleError as exc:
        if (bundle / MANIFEST_NAME).is_file():
            raise
        raise BundleError(f"No bundle at {bundle}." + bundle_hint()) from exc
    log.info("Classifier: %s.", manifest.classifier.describe())  # where the emotions come from
    return manifest


def check_options(args: argparse.Namespace, manifest: Manifest | None) -> None:
    """Option values that cannot work (with ``manifest``: those that depend on the bundle), refused before
    anything is created."""
    if manifest is None:
        fill_defaults(args)
        if isinstance(args.max_pixels, bool) or not isinstance(args.max_pixels, int) or args.max_pixels < 1:
            raise InvalidArgumentError(f"--max-pixels {args.max_pixels} is below 1." + note("an integer >= 1", args.max_pixels))
        if args.quality is not None and not 1 <= args.quality <= 100:
            raise InvalidArgumentError(f"--quality {args.quality} is out of range." + note("1..100", args.quality))
        stylizer_options(args)  # BackendError / MemoryBudgetError / InvalidArgumentError naming what each takes
        temporal_options(args)
        coherence_options(args)
        if args.batch < 1:
            raise InvalidArgumentError(f"--batch {args.batch} is below 1." + note("an integer >= 1", args.batch))
        ray = getattr(args, "ray", None)
        if ray is not None and args.input is None and args.webcam is None and Path(ray).exists():
            raise InvalidArgumentError(f"--ray took {ray!r} as its address, so there is no input; put --ray after "
                                       "the input or write --ray=ADDRESS." + note("an input", "none"))
        if ray is not None and args.webcam is not None:
            raise InvalidArgumentError("--ray runs files and folders, not --webcam." + note("an input", "--webcam"))
        if getattr(args, "actors", None) is not None and (ray is None or args.actors < 1):
            raise InvalidArgumentError(f"--actors {args.actors} needs --ray and at least 1."
                                       + note("--ray with --actors N >= 1", args.actors if ray else "no --ray"))
        if (args.input is None) == (args.webcam is None):
            raise InvalidArgumentError("Give an input file or folder, or --webcam N, not both."
                                       + note("one of them", "both" if args.input is not None else "neither"))
        check_decision(args)
        if args.webcam is None and (args.seconds is not None or args.preview):
            raise InvalidArgumentError("--seconds and --preview are for --webcam." + note("--webcam N", "none"))
        if args.seconds is not None and not args.seconds > 0:
            raise InvalidArgumentError(f"--seconds {args.seconds} must be positive." + note("> 0", args.seconds))
        if args.preview and not _has_display():
            raise InvalidArgumentError("--preview needs a display and an OpenCV with windows."
                                       + note("a display (DISPLAY / WAYLAND_DISPLAY) and opencv-python", "none"))
        return
    if args.emotion is not None and args.emotion not in manifest.labels:
        raise InvalidArgumentError(f"Unknown emotion {args.emotion!r}." + note(list(manifest.labels), args.emotion))
    m = manifest.min_side
    if args.max_side is not None and args.max_side < m:
        raise InvalidArgumentError(
            f"--max-side {args.max_side} is below the bundle's smallest style input."
            + note(f"an integer >= {m}", args.max_side))


#: The parser's old private name (tests and scripts that call it).
_parser = parser


# -- running ------------------------------------------------------------------------------------


def _has_display() -> bool:
    """Whether ``cv2.imshow`` can open a window here (a display, and an OpenCV built with windows)."""
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return False
    import cv2

    try:
        cv2.namedWindow("emostyle")
        cv2.destroyWindow("emostyle")
    except cv2.error:
        return False
    return True


def _progress(items: Sequence[Any], quiet: bool) -> tuple[Iterable[Any], bool]:
    """A tqdm progress bar over ``items`` (stderr, off when quiet or not a terminal); whether it shows."""
    try:
        from tqdm import tqdm
    except ImportError:  # a dependency; kept lazy so that importing the runtime never loads it
        return items, False
    bar = tqdm(items, unit="file", disable=True if quiet else None, file=sys.stderr)
    return bar, not bar.disable


class _FrameBar:
    """A video's own progress bar in frames per second (stderr; off when quiet or not a terminal)."""

    def __init__(self, name: str, quiet: bool, nested: bool) -> None:
        self.name, self.quiet, self.nested = name, quiet, nested
        self.bar: Any = None

    def __call__(self, frame: Any, total: int) -> None:
        if self.bar is None:
            try:
                from tqdm import tqdm
            except ImportError:
                self.quiet = True
                return
            self.bar = tqdm(total=total or None, unit="frame", desc=self.name, leave=False, position=int(self.nested),
                            disable=True if self.quiet else None, file=sys.stderr)
        self.bar.set_postfix_str(frame.state.emotion, refresh=False)
        self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class _StepBar:
    """The steps of one tiled photo (tiles, or strips of the exact mode's segments): a nested progress bar, shown
    only for a tiled photo (a whole one takes no steps), so that a long photo does not sit at "0/1 file"."""

    def __init__(self, name: str, quiet: bool, nested: bool) -> None:
        self.name, self.quiet, self.nested = name, quiet, nested
        self.bar: Any = None

    def __call__(self, done: int, total: int) -> None:
        if self.bar is None:
            try:
                from tqdm import tqdm
            except ImportError:
                self.quiet = True
                return
            self.bar = tqdm(total=total, unit="step", desc=f"{self.name} (tiled)", leave=False,
                            position=int(self.nested), disable=True if self.quiet else None, file=sys.stderr)
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class StateLog:
    """The output folder's ``.emostyle-state.jsonl``: each stylised file's entry, one JSON line, by output path
    relative to the folder. A line is appended (and flushed) once its output is renamed into place
    (``write_then_record``), so a resumed run reports the emotions of what is done; the file is rewritten whole
    at the end. Shared by the local loop and ``emostyle_ray``'s actors.

    Args:
        path: the state file, or None (a single-file run: nothing is recorded). A link or a non-file there is
            not used (one warning).
        read: False: only append (a Ray actor's writer; the driver reads and compacts).
    """

    def __init__(self, path: Path | None, *, read: bool = True) -> None:
        if path is not None and (path.is_symlink() or path.exists() and not path.is_file()):
            log.warning("Not using %s: it is not a regular file; emotions of earlier runs are not kept.", path)
            path = None  # never append through a link or into something else
        self.path, self.added = path, False
        self.known: dict[str, dict[str, Any]] = {}
        self._file: Any = None
        if read:
            self._read()

    def _read(self) -> None:
        try:
            lines = self.path.read_text(encoding="utf-8", errors="replace").splitlines() if self.path else []
        except OSError:
            lines = []
        for line in lines:
            try:
                e = json.loads(line)
            except ValueError:  # a line torn by a kill
                continue
            if isinstance(e, dict) and isinstance(e.get("output"), str):
                self.known[e["output"]] = e  # the last line wins

    def add(self, rel: str, entry: dict[str, Any]) -> None:
        if self.path is None:
            return
        self.known[rel] = {**entry, "output": rel}
        try:
            self._file = self._file or open(self.path, "a", encoding="utf-8")
            self._file.write(json.dumps(self.known[rel]) + "\n")
            self._file.flush()
            self.added = True
        except OSError as exc:
            log.warning("Cannot record %s in %s: %s", rel, self.path, sentence(exc.strerror or exc))

    def reread(self) -> None:
        """Read the lines other processes appended (Ray actors, once they are gone), so that compaction keeps them."""
        self._read()
        self.added = self.added or bool(self.known)

    def close(self, compact: bool) -> None:
        """Close; with ``compact``, rewrite atomically with one line per output that exists."""
        if self._file is not None:
            self._file.close()
        if self.path is None or not compact or not self.known:
            return
        keep = {rel: e for rel, e in self.known.items() if (self.path.parent / rel).is_file()}
        if self.added or len(keep) < len(self.known):
            try:
                write_bytes_atomic(self.path, "".join(json.dumps(e) + "\n" for e in keep.values()).encode("utf-8"))
            except ImageWriteError as exc:
                log.warning("%s", exc)


@contextlib.contextmanager
def _hold_ctrl_c() -> Iterator[None]:
    """Ctrl-C waits while the report and state file are written, so that they are written whole."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.signal(signal.SIGINT, lambda *_: log.warning("Ctrl-C: finishing the report first."))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)


def _mkdirs(folders: Iterable[Path]) -> None:
    for d in folders:
        try:
            d.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ImageWriteError(
                f"Cannot create the output folder {d}: " + sentence(exc.strerror or exc) + note("a writable folder", d)
            ) from exc


def stylize_video_file(st: Any, src: Path, dst: Path, args: argparse.Namespace, nested: bool,
                   entry: dict[str, Any], record: Any) -> Any:
    """One video file -> ``dst`` (atomic), ``entry`` completed, then ``record(entry)`` (after the rename).

    Shared by the local loop and ``emostyle_ray``'s actors, so both write alike.

    Args:
        st: the Stylizer.
        src: the input video.
        dst: the output video (written atomically; an existing one is replaced only with ``args.force``).
        args: the command line (``--emotion``, ``--max-side``, the video options, ``--force``, ``-q``).
        nested: whether the video's progress bar sits under a folder run's bar.
        entry: the file's report entry, completed with the result's summary.
        record: called with ``entry`` once the output is in place (the state file's line).
    """
    from .video import stylize_video

    fill_defaults(args)
    bar = _FrameBar(src.name, args.quiet, nested)

    def done(result: Any) -> None:  # just before the rename
        entry.update(status="ok", **result.summary())

    try:
        dst.parent.mkdir(parents=True, exist_ok=True)
        return write_then_record(dst, entry, record, lambda: stylize_video(
            st, src, dst, emotion=args.emotion, max_side=args.max_side, options=temporal_options(args),
            batch=args.batch, overwrite=args.force, progress=bar, before_commit=done,
            coherence=coherence_options(args), decision=emotion_decision(args)))
    finally:
        bar.close()


def run_webcam(args: argparse.Namespace, started: float) -> int:
    """``--webcam N -o out.mp4``: record until --seconds or Ctrl-C (which stops and keeps the recording; a
    second Ctrl-C abandons it); the exit status."""
    from .video import open_camera, record_camera

    dst = Path(args.output)
    if dst.suffix.lower() not in VIDEO_SUFFIXES:
        raise InvalidArgumentError(f"--webcam writes a video; {dst} has no video extension."
                                   + note(VIDEO_SUFFIXES, dst.suffix or "none"))
    check_replace(dst, args.force)
    if args.report is not None:
        check_report_path(args.report, [(dst, dst)], None, args.force)
    check_output_folders([dst.parent])
    check_applies(args, [])
    manifest = _open_bundle(args.bundle)
    check_options(args, manifest)
    st = make_stylizer(args, manifest)
    cap = open_camera(args.webcam)  # no camera N: a typed error, before anything is created
    stop = threading.Event()
    entry: dict[str, Any] = {"input": f"camera {args.webcam}", "output": str(dst)}

    def on_sigint(*_: object) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        log.warning("Ctrl-C: stopping the recording and finishing %s (Ctrl-C again abandons it).", dst)
        stop.set()

    bar = _FrameBar(f"camera {args.webcam}", args.quiet, False)
    old = signal.signal(signal.SIGINT, on_sigint) if threading.current_thread() is threading.main_thread() else None
    try:
        _mkdirs([dst.parent])
        clean_stale_parts([dst.parent, *([args.report.parent] if args.report is not None else [])], started=started)
        res = record_camera(st, cap, dst, seconds=args.seconds, stop=stop, preview=args.preview,
                            options=temporal_options(args), emotion=args.emotion, max_side=args.max_side,
                            progress=lambda f: bar(f, 0), coherence=coherence_options(args))
        entry.update(status="ok", **res.summary())
    except KeyboardInterrupt:
        log.warning("Interrupted; nothing was written to %s.", dst)
        return INTERRUPTED
    finally:
        if old is not None:
            signal.signal(signal.SIGINT, old)
        bar.close()
        cap.release()
    if args.report is not None:
        report = {"bundle": str(manifest.root), "demo": manifest.demo, "classifier": manifest.classifier.describe(),
                  "interrupted": False, "files": [entry]}
        with _hold_ctrl_c():
            write_bytes_atomic(args.report, (json.dumps(report, indent=2) + "\n").encode("utf-8"))
    log.info("Recorded %d frames (%.1f s) to %s.", res.frames, res.seconds, dst)
    return 0


def run(args: argparse.Namespace) -> int:
    """Check everything, then process every planned file; the exit status."""
    started = time.time()
    check_options(args, None)
    if args.webcam is not None:
        return run_webcam(args, started)
    pairs = plan(args.input, args.output, force=args.force)
    check_applies(args, pairs)
    out_root = Path(args.output) if args.input.is_dir() else None
    state = out_root / STATE_NAME if out_root is not None else None
    if args.report is not None:
        check_report_path(args.report, pairs, state, args.force)
    folders = list(dict.fromkeys(o.parent for _, o in pairs))
    check_output_folders(folders)
    manifest = _open_bundle(args.bundle)
    check_options(args, manifest)
    st = make_stylizer(args, manifest)  # a backend that cannot run here is refused now (BackendError, exit 2)
    if getattr(args, "ray", None) is not None:  # every check above passed: Ray Data runs the files
        st.close()
        return _ray_job().run_cli(args, pairs, manifest, started)
    states, old, fresh = begin_run(args, folders, state, started)
    entries: list[dict[str, Any]] = []
    interrupted, stopped = False, False
    items, bar = _progress(pairs, args.quiet)
    try:
        for i, (src, dst) in enumerate(items, 1):
            entry: dict[str, Any] = {"input": str(src), "output": str(dst)}
            rel = dst.relative_to(out_root).as_posix() if out_root is not None else ""
            if (skipped := skip_entry(src, dst, out_root, args.force, states, old)) is not None:
                entries.append(skipped)
                continue
            try:
                _mkdirs([dst.parent])  # only now: an interrupted run leaves no empty mirrored folders
                record = lambda e, rel=rel: states.add(rel, e)  # noqa: E731
                if src.suffix.lower() in VIDEO_SUFFIXES:
                    res = stylize_video_file(st, src, dst, args, bar, entry, record)
                else:
                    steps = _StepBar(src.name, args.quiet, bar)
                    try:
                        res = stylize_image_file(st, src, dst, entry, args, record, progress=steps)
                    finally:
                        steps.close()
            except ImageWriteError as exc:
                if isinstance(exc, ImageEncodeError):  # this file's format only: skip it like other bad files
                    entries.append({"input": str(src), "output": str(dst), "status": "error", "error": str(exc)})
                    log.error("Skipping %s: %s", src, exc)
                    continue
                stopped = True  # the destination is unusable (not writable, full): stop, do not retry each file
                entries.append({"input": str(src), "output": str(dst), "status": "error", "error": str(exc)})
                log.error("Stopping after %d of %d files: %s", i - 1, len(pairs), exc)
                break
            except EmostyleError as exc:
                entries.append({"input": str(src), "output": str(dst), "status": "error", "error": str(exc)})
                log.error("Skipping %s: %s", src, exc)
                continue
            entries.append(entry)
            log.log(logging.DEBUG if bar else logging.INFO, "[%d/%d] %s -> %s (%s)", i, len(pairs), src, dst,
                    res.emotion)
    except KeyboardInterrupt:
        interrupted = True
        log.warning("Interrupted after %d of %d files; a rerun finishes the rest.", len(entries), len(pairs))
    finally:
        if hasattr(items, "close"):
            items.close()
    return finish_run(args, manifest, states, entries, interrupted=interrupted, stopped=stopped, fresh=fresh)


# -- the pieces of a run that every executor shares (this module's loop, emostyle_ray's actors) ------------


def stylizer_options(args: argparse.Namespace) -> StylizerOptions:
    """The Stylizer options of the command line (``--backend``, ``--precision``, ``--memory-budget`` ...).

    Args:
        args: the parsed command line (or a Namespace made by hand: missing flags take the defaults).

    Raises:
        BackendError, InvalidArgumentError, MemoryBudgetError: a value that cannot work.
    """
    fill_defaults(args)
    return options_from_args(args)


def make_stylizer(args: argparse.Namespace, bundle: Any) -> Any:
    """The Stylizer the command's options ask for; one place for the local loop and emostyle_ray's actors,
    so both style alike.

    Args:
        args: the parsed command line (its Stylizer options: :func:`stylizer_options`).
        bundle: a Manifest or a bundle folder.
    """
    from .stylizer import Stylizer

    options = stylizer_options(args)
    if options.max_pixels > OPENCV_MAX_PIXELS:  # OpenCV's own decoder limit, read once, at the first decode
        os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", str(options.max_pixels))
    return Stylizer(bundle, options=options)


def _missing_folders(folders: Iterable[Path]) -> list[Path]:
    """The folders among ``folders`` and their ancestors that do not exist yet, deepest first."""
    missing: dict[Path, None] = {}
    for d in folders:
        for p in (d, *d.parents):
            if p.exists() or p.is_symlink():
                break
            missing[p] = None
    return sorted(missing, key=lambda p: len(p.parts), reverse=True)


def _remove_empty(folders: Iterable[Path]) -> None:
    """Remove the folders of ``folders`` (deepest first) that a run created and left empty (interrupted, failed)."""
    for d in folders:
        try:
            d.rmdir()  # only an empty folder goes
        except OSError:
            pass


def begin_run(args: argparse.Namespace, folders: Sequence[Path], state: Path | None,
              started: float) -> tuple[StateLog, dict[str, dict[str, Any]], list[Path]]:
    """Remove temporary files of killed runs where this run writes, open the state file; the state log, the ok
    entries of an earlier report (from before state files) by input, and the output folders that do not exist
    yet (each is created when its first output is written; ``finish_run`` removes those left empty)."""
    fresh = _missing_folders(folders)
    # Temporary files of killed runs, only where this run writes; outputs themselves are always complete.
    clean_stale_parts([*folders, *([args.report.parent] if args.report is not None else [])], started=started)
    states = StateLog(state)
    earlier = (_read_report(args.report) or {}).get("files", []) if args.report is not None else []
    return states, {e["input"]: e for e in earlier if e.get("status") in ("ok", "exists")}, fresh


def skip_entry(src: Path, dst: Path, out_root: Path | None, force: bool, states: StateLog,
               old: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    """The report entry of a planned file that is not done now, else None: a folder run skips an output that
    exists (resuming; its emotion from the state file), and nothing replaces a non-file at an output path."""
    entry: dict[str, Any] = {"input": str(src), "output": str(dst)}
    if out_root is not None and dst.is_file() and not force:
        rel = dst.relative_to(out_root).as_posix()
        return {**old.get(str(src), {}), **states.known.get(rel, {}), **entry, "status": "exists"}
    if dst.exists() and not dst.is_file():  # a folder (or a device) where the output goes: never replaced
        log.error("Skipping %s: %s exists and is not a regular file.", src, dst)
        return {**entry, "status": "error", "error": f"{dst} exists and is not a regular file."}
    return None


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns


def write_then_record(dst: Path, entry: dict[str, Any], record: Any, write: Any) -> Any:
    """``write()`` (which renames ``dst`` into place), then ``record(entry)``: the state file says "ok" only for an
    output that was written (a full disk or a failed rename records nothing). A Ctrl-C that lands after the
    rename still records it; only a kill in the instant between the two leaves an output without its line (a
    resume then reports it as existing, without its emotion)."""
    before = _identity(dst)
    try:
        result = write()
    except KeyboardInterrupt:
        if entry.get("status") == "ok" and _identity(dst) not in (None, before):
            record(entry)
        raise
    record(entry)
    return result


def stylize_image_file(st: Any, image: Any, dst: Path, entry: dict[str, Any], args: argparse.Namespace,
                       record: Any, meta: Any = None, progress: Any = None) -> Any:
    """One photo -> ``dst`` as every run writes it: styled (``image``: its path, or its pixels as
    ``read_image(path, alpha=True)`` gives them, with ``meta`` read from the path), ``entry`` completed, the
    atomic write, then ``record(entry)`` (the state file's line). ``progress(done, total)``: steps of a tiled image."""
    res = st.stylize(image, emotion=args.emotion, max_side=args.max_side, progress=progress)
    if meta is None and not args.strip_metadata:
        meta = read_image_meta(image)
    entry.update(status="ok", **res.summary())
    write_then_record(dst, entry, record, lambda: write_image(
        dst, res.image, quality=args.quality, meta=None if args.strip_metadata else meta))
    return res


def finish_run(args: argparse.Namespace, manifest: Manifest, states: StateLog, entries: list[dict[str, Any]], *,
               interrupted: bool, stopped: bool, fresh: Sequence[Path] = ()) -> int:
    """Compact the state file, remove the ``fresh`` folders left empty, write the report (Ctrl-C waits), log the
    tally; the exit status."""
    no_report = False
    with _hold_ctrl_c():
        states.close(compact=not stopped)  # not when the folder is unusable (full)
        _remove_empty(fresh)
        if args.report is not None:
            report = {"bundle": str(manifest.root), "demo": manifest.demo,
                      "classifier": manifest.classifier.describe(), "interrupted": interrupted, "files": entries}
            try:
                write_bytes_atomic(args.report, (json.dumps(report, indent=2) + "\n").encode("utf-8"))
            except ImageWriteError as exc:
                no_report = True
                log.error("No report: %s", exc)
    done, failed = (sum(e["status"] == s for e in entries) for s in ("ok", "error"))
    log.log(logging.WARNING if failed or interrupted else logging.INFO,
            "%d stylised, %d already done, %d failed.", done, len(entries) - done - failed, failed)
    return INTERRUPTED if interrupted else 1 if failed or no_report else 0


#: What ``--ray`` imports (the ``ray`` extra): emostyle_ray, which imports ray.
RAY_INSTALL = 'pip install "emostyle-rt[cpu,ray]" ("[gpu,ray]" on an NVIDIA machine)'


def _ray_job() -> Any:
    """``emostyle_ray.job``, imported only for ``--ray``; a typed error naming the extra when it is missing."""
    try:
        from emostyle_ray import job
    except ImportError as exc:
        raise BackendError(
            f"--ray needs the ray extra ({exc}). Install it with: {RAY_INSTALL}."
            + note("emostyle_ray and ray installed", f"missing {exc.name or 'a module'}")) from exc
    return job


#: What ``emostyle serve`` imports (the ``serve`` extra); looked up, not imported, before handing over.
SERVE_MODULES = ("emostyle_serve", "starlette", "uvicorn", "multipart", "prometheus_client")


def _serve(argv: Sequence[str]) -> int:
    """``emostyle serve ...``: hand over to the HTTP service (``emostyle_serve``), imported only here."""
    import importlib.util

    gone = [m for m in SERVE_MODULES if importlib.util.find_spec(m) is None]
    if gone:
        setup_cli_logging(False, log.name)
        log.error("%s", BackendError(
            f"emostyle serve needs the serve extra; {', '.join(gone)} {'is' if len(gone) == 1 else 'are'} not "
            'installed. Install it with: pip install "emostyle-rt[cpu,serve]" ("[gpu,serve]" on an NVIDIA machine).'
            + note("the serve extra installed", "missing " + ", ".join(gone))))
        return 2
    from emostyle_serve.cli import main as serve_main

    return serve_main(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point; returns the exit status. ``emostyle serve ...`` runs the HTTP service (a file
    named ``serve`` is given as ``./serve``)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv[:1] == ["serve"]:
            return _serve(argv[1:])
        args = parser().parse_args(argv)
        setup_cli_logging(args.quiet, log.name, library=("emostyle_rt",), verbose=args.verbose)
        return run(args)
    except EmostyleError as exc:
        log.error("%s", exc)
        return 2
    except KeyboardInterrupt:  # at any point, importing the backends included: no traceback
        log.warning("Interrupted.")
        return INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
