"""Python API: :func:`stylize_folder`, the ``emostyle DIR -o OUT --ray`` job from a program."""

from __future__ import annotations

import os
from pathlib import Path

from emostyle_rt import cli

from .job import FolderResult


def stylize_folder(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    *,
    bundle: str | os.PathLike | None = None,
    ray_address: str | None = None,
    actors: int | None = None,
    emotion: str | None = None,
    max_side: int | None = None,
    quality: int | None = None,
    strip_metadata: bool = False,
    no_face: str = "whole",
    detector: str | None = None,
    backend: str = "auto",
    provider: str | None = None,
    force: bool = False,
    report: str | os.PathLike | None = None,
) -> FolderResult:
    """Stylise a folder of photos and videos (or one file) into ``dst`` on Ray, as ``emostyle SRC -o DST --ray``.

    The same checks, outputs, resume (outputs that exist are skipped unless
    ``force``), state file and ``report`` as the command; its refusals raise the
    same typed errors. ``ray_address``: None starts a local Ray for the call (and
    stops it); "auto", "host:6379" or "ray://host:10001" joins a cluster; a
    process that already called ``ray.init()`` keeps its session. ``actors``:
    default one per GPU, else one per CPU. Ctrl-C stops the job, writes the
    report of what was done and re-raises ``KeyboardInterrupt``.

    >>> r = stylize_folder("photos", "styled", bundle="bundles/demo", actors=2)
    >>> r.done, r.failed, r.files[0]["emotion"]
    """
    args = cli.parser().parse_args([os.fspath(src), "-o", os.fspath(dst), f"--ray={ray_address or 'local'}"])
    args.bundle = Path(bundle) if bundle is not None else None
    args.report = Path(report) if report is not None else None
    args.actors, args.emotion, args.max_side, args.quality = actors, emotion, max_side, quality
    args.strip_metadata, args.no_face, args.detector = strip_metadata, no_face, detector
    args.backend, args.provider, args.force = backend, provider, force
    args.quiet = True  # a library: no progress bar; logging says the rest
    cli.run(args)  # checks and plans (typed errors), then emostyle_ray.job.run_cli leaves its result here
    result: FolderResult = args.ray_result
    if result.interrupted:
        raise KeyboardInterrupt
    return result
