"""The Ray Data job behind ``emostyle DIR -o OUT --ray [ADDRESS]``.

The command checks its arguments, plans the outputs and opens the bundle
exactly as without ``--ray`` (``emostyle_rt.cli.run``), then hands over here:

    driver: plan -> skip outputs that exist (resume) -> rows of the files to do
    Ray Data: read + decode (parallel tasks) -> stylizer actors (one Stylizer each; 1 intra-op thread
              on a CPU, one GPU each where the cluster has GPUs) -> a result row per file
    driver: report entries in plan order, state file compacted, report written (emostyle_rt.cli)

Each actor writes as the local command writes (``cli.stylize_image_file``: the
image written to a temporary name and renamed, then the file's state line
appended), so an output is whole or absent, and the state file never says "ok"
for an output that was not written. A killed
actor is restarted by Ray and its files are redone (the same bytes renamed over
the same names: nothing lost, nothing twice); the temporary file it was writing
is removed when the job ends. Outputs are byte-identical to the local
command's: the pixels a decode task gives the actor are the ones
``Stylizer.stylize(path)`` reads, and every file is styled on its own.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import logging
import math
import os
import pickle
import re
import select
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from emostyle_rt import cli
from emostyle_rt.backends.ort import CPU_THREADS_ENV
from emostyle_rt.errors import (
    BackendError,
    EmostyleError,
    ImageEncodeError,
    ImageWriteError,
    InvalidArgumentError,
    note,
    sentence,
)
from emostyle_rt.imaging.io import MAX_PIXELS, OPENCV_MAX_PIXELS, clean_stale_parts, read_image, read_image_meta
from emostyle_rt.manifest import Manifest
from emostyle_rt.tiling import worker_budget
from emostyle_rt.video.io import VIDEO_SUFFIXES

log = logging.getLogger("emostyle")

#: ``--ray`` without an address: a Ray started for this job on this machine (and stopped after it).
LOCAL = "local"
#: CPU a decode task asks for where the actors leave some (decoding is cheap next to styling); else 0.
DECODE_CPUS = 0.25
#: Photos per Ray Data task (decode and actor): fewer, larger tasks cost Ray less; each photo is still
#: styled on its own. Measured on 2 shared cores, 96 photos of 256x256: driver CPU 1.2 s -> 0.5 s and steady
#: throughput +5% (2 actors) / +18% (1 actor) with 4 instead of 1. A job with videos uses 1 (a video is long).
PHOTOS_PER_TASK = 4
#: Most Ray Data blocks the file list is cut into (more blocks: finer load balance).
MAX_BLOCKS = 1024
#: Ray's own loggers: quiet unless -v.
RAY_LOGGERS = ("ray", "ray.data", "ray.serve")
#: Lines Ray's C++ core worker writes to the driver's stderr that tell a user of this job nothing: Ray Data puts
#: every actor's constructor arguments in the object store, which Ray 2.60 reports as an error once per actor
#: (ray issue 53727; harmless here: the arguments stay referenced for the job's life). Dropped unless -v.
RAY_NOISE = (re.compile(rb"core_worker\.cc:\d+\S? Actor with class name: .* has constructor arguments in the "
                        rb"object store and max_restarts > 0"),)


@dataclass(frozen=True)
class Placement:
    """How the job sits on the cluster: ``actors`` stylizer actors of ``actor_cpus`` CPUs and ``actor_gpus``
    GPUs each, running ``threads`` intra-op threads; decode tasks of ``decode_cpus``, at most ``decode_tasks`` at once.
    ``memory_budget``: bytes one style run of a CPU actor may use (the cluster's memory split between the actors,
    ``emostyle_rt.tiling.worker_budget``); None for GPU actors (their budget is the GPU's free memory)."""

    actors: int
    actor_cpus: float
    actor_gpus: float
    threads: int
    decode_cpus: float
    decode_tasks: int
    memory_budget: int | None = None


def placement(cpus: float, gpus: float, files: int, actors: int | None = None, memory: float | None = None) -> Placement:
    """The placement for a cluster of ``cpus`` CPUs and ``gpus`` GPUs and ``files`` files to do.

    Actors: ``actors``, else one per GPU, else one per CPU; never more than files.
    With GPUs each actor takes one (a share when there are more actors than GPUs);
    on CPUs each takes one CPU (a share when there are more actors than CPUs, so
    that all of them start: Ray would otherwise wait for CPUs that never free up)
    and runs one intra-op thread per CPU it holds. ``memory``: the cluster's memory in bytes (Ray's ``memory``
    resource; None: this machine's available memory), split between CPU actors as their memory budgets.
    """
    if actors is not None and actors < 1:
        raise InvalidArgumentError(f"actors={actors} is below 1." + note("an integer >= 1", actors))
    if cpus <= 0:
        raise BackendError("The Ray cluster has no CPUs." + note("at least 1 CPU", cpus))
    gpu = gpus >= 1
    n = actors if actors is not None else int(gpus) if gpu else max(1, int(cpus))
    n = max(1, min(n, max(files, 1)))
    actor_gpus = (1.0 if n <= gpus else gpus / n) if gpu else 0.0
    actor_cpus = min(1.0, cpus / n)
    free = cpus - n * actor_cpus
    return Placement(actors=n, actor_cpus=actor_cpus, actor_gpus=actor_gpus, threads=max(1, int(actor_cpus)),
                     decode_cpus=DECODE_CPUS if free >= DECODE_CPUS else 0.0,
                     decode_tasks=max(1, min(max(files, 1), max(2, math.ceil(cpus)))),
                     memory_budget=None if gpu else worker_budget(n, int(memory) if memory else None))


@dataclass(frozen=True)
class FolderResult:
    """What a ``--ray`` run did: ``files`` are the report's entries in plan order (dicts as in the JSON report:
    input, output, status "ok" / "exists" / "error", emotion, scores, faces, error). ``seconds``: the whole
    call; ``styling_seconds``: the pipeline alone, actors' start included (Ray's start-up not), of which
    ``startup_seconds`` passed before the first file came back."""

    files: tuple[dict[str, Any], ...]
    done: int
    existed: int
    failed: int
    interrupted: bool
    stopped: bool
    seconds: float
    styling_seconds: float
    startup_seconds: float
    placement: Placement | None
    address: str
    exit_status: int


# -- Ray Data stages (run in Ray workers) ---------------------------------------------------------------------


def _decode(batch: dict[str, np.ndarray], strip_metadata: bool, max_pixels: int = MAX_PIXELS) -> dict[str, np.ndarray]:
    """Read and decode the photos of ``batch`` (a Ray Data task): the pixels ``Stylizer.stylize(path)`` would
    read (alpha kept; at most ``max_pixels``, the command's --max-pixels), their metadata (pickled
    ``ImageMeta``), or the typed error's message."""
    if max_pixels > OPENCV_MAX_PIXELS:  # OpenCV's own limit, read at the first decode of this worker
        os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", str(max_pixels))
    n = len(batch["i"])
    images, metas, errors = np.empty(n, dtype=object), np.empty(n, dtype=object), np.empty(n, dtype=object)
    for k in range(n):
        images[k], metas[k], errors[k] = np.zeros((0, 0, 3), np.uint8), b"", ""
        if batch["video"][k]:
            continue
        src = str(batch["src"][k])
        try:
            images[k] = read_image(src, max_pixels=max_pixels, alpha=True)
            if not strip_metadata:
                metas[k] = pickle.dumps(read_image_meta(src))
        except EmostyleError as exc:
            errors[k] = str(exc)
    return {**batch, "image": images, "meta": metas, "error": errors}


class StyleActor:
    """A stylizer actor: one ``Stylizer`` for its life, each file written as the local command writes it."""

    def __init__(self, args: argparse.Namespace, bundle: str, state: str | None, threads: int) -> None:
        os.environ[CPU_THREADS_ENV] = str(threads)  # before the first session is made
        for name in ("emostyle", "emostyle_rt"):
            logging.getLogger(name).setLevel(logging.DEBUG if args.verbose else logging.WARNING)
        # The driver planned these files as not done: a retried task may find its own finished output.
        self.args = copy.copy(args)
        self.args.force, self.args.quiet = True, True
        self.st = cli.make_stylizer(args, bundle)
        self.states = cli.StateLog(Path(state) if state else None, read=False)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = [self._one({k: v[j] for k, v in batch.items()}) for j in range(len(batch["i"]))]
        return {k: np.array([r[k] for r in rows], dtype=object if k == "entry" else None) for k in rows[0]}

    def _one(self, row: dict[str, Any]) -> dict[str, Any]:
        entry: dict[str, Any] = {"input": str(row["input"]), "output": str(row["output"])}
        rel, dst = str(row["rel"]), Path(str(row["dst"]))
        fatal = False
        try:
            if row["error"]:
                raise _Failed(str(row["error"]))
            if row["video"]:
                cli.stylize_video_file(self.st, Path(str(row["src"])), dst, self.args, False, entry,
                                         lambda e: self.states.add(rel, e))
            else:
                meta = pickle.loads(row["meta"]) if len(row["meta"]) else None
                cli.stylize_image_file(self.st, row["image"], dst, entry, self.args,
                                       lambda e: self.states.add(rel, e), meta=meta)
        except (EmostyleError, _Failed) as exc:
            fatal = isinstance(exc, ImageWriteError) and not isinstance(exc, ImageEncodeError)
            entry = {"input": entry["input"], "output": entry["output"], "status": "error", "error": str(exc)}
        return {"i": int(row["i"]), "entry": json.dumps(entry), "fatal": fatal}


class _Failed(Exception):
    """A file the decode task could not read (its message is the typed error's)."""


# -- the driver --------------------------------------------------------------------------------------------------


def _quiet_ray(verbose: bool) -> None:
    """Ray's loggers: INFO with -v, else errors only (start-up notes and Ray Data's plan lines are not for users)."""
    for name in RAY_LOGGERS:
        logging.getLogger(name).setLevel(logging.INFO if verbose else logging.ERROR)


@contextlib.contextmanager
def ray_session(address: str | None, *, verbose: bool = False) -> Iterator[str]:
    """Ray for the job: the session this process already has, else a local Ray started here (``address``
    None or "local"; stopped afterwards), else the cluster at ``address`` ("auto", "host:6379",
    "ray://host:10001"; disconnected afterwards). Yields a description of it."""
    import ray

    if ray.is_initialized():
        yield "the Ray session of this process"
        return
    os.environ.setdefault("RAY_DISABLE_USAGE_STATS", "1")
    local = address in (None, LOCAL)
    kwargs: dict[str, Any] = {"logging_level": logging.INFO if verbose else logging.ERROR, "log_to_driver": verbose}
    try:
        if local:
            ray.init(address=LOCAL, include_dashboard=False, **kwargs)
        else:
            ray.init(address=address, **kwargs)
    except (OSError, RuntimeError, ValueError) as exc:  # OSError: ConnectionError, TimeoutError, a socket path too long
        what = "start a local Ray" if local else f"connect to the Ray cluster at {address}"
        raise BackendError(f"Cannot {what}: {sentence(exc)}" + note(
            "a running cluster ('ray start --head' there; 'auto' for one on this machine)" if not local
            else "a machine where Ray can start", address or LOCAL)) from exc
    _quiet_ray(verbose)
    try:
        yield "a local Ray" if local else f"the Ray cluster at {address}"
    finally:
        ray.shutdown()


@contextlib.contextmanager
def filtered_stderr(patterns: Sequence[re.Pattern[bytes]], *, enabled: bool = True) -> Iterator[None]:
    """File descriptor 2 of this process through a filter thread for the block: complete lines that match one of
    ``patterns`` are dropped, everything else is passed on as it comes (a partial line at once, unless it could
    be the start of a C++ log line, which waits at most 0.1 s for its end). Native code (Ray's core worker)
    writes there directly, so the filter has to sit on the descriptor, not on ``sys.stderr``. Enter it after
    Ray has started its processes, so that they keep the real stderr."""
    if not enabled or os.name != "posix":
        yield
        return
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):  # no stderr to filter
        yield
        return
    r, w = os.pipe()
    os.dup2(w, 2)
    os.close(w)

    def out(data: bytes) -> None:
        try:
            os.write(saved, data)
        except OSError:
            pass

    def pump() -> None:
        pending = b""
        while True:
            ready, _, _ = select.select([r], [], [], 0.1 if pending else None)
            if not ready:  # a partial line waited long enough: it is not a log line of Ray's
                out(pending)
                pending = b""
                continue
            chunk = os.read(r, 1 << 16)
            if not chunk:
                break
            *lines, pending = re.split(rb"(?<=[\n\r])", pending + chunk)
            keep = b"".join(x for x in lines if not any(p.search(x) for p in patterns))
            if pending and not pending.startswith(b"["):  # a progress bar's text: at once
                keep, pending = keep + pending, b""
            if keep:
                out(keep)
        if pending and not any(p.search(pending) for p in patterns):
            out(pending)

    thread = threading.Thread(target=pump, name="emostyle-stderr-filter", daemon=True)
    thread.start()
    try:
        yield
    finally:
        try:
            sys.stderr.flush()
        except (OSError, ValueError):
            pass
        os.dup2(saved, 2)  # closes the pipe's last write end: the thread drains it and ends
        thread.join(2)
        os.close(saved)
        if not thread.is_alive():
            os.close(r)


def _rows(pairs: Sequence[tuple[Path, Path]], todo: Sequence[int], out_root: Path | None) -> list[dict[str, Any]]:
    """One row per file to do: absolute paths for the workers (their working folder is not ours), the names
    the report and state file use."""
    return [{"i": i, "src": str(pairs[i][0].resolve()), "dst": str(pairs[i][1].resolve()),
             "input": str(pairs[i][0]), "output": str(pairs[i][1]),
             "rel": pairs[i][1].relative_to(out_root).as_posix() if out_root is not None else "",
             "video": pairs[i][0].suffix.lower() in VIDEO_SUFFIXES} for i in todo]


def build_dataset(rows: list[dict[str, Any]], args: argparse.Namespace, bundle: str, state: Path | None,
                  place: Placement) -> Any:
    """The Ray Data pipeline over ``rows``: decode tasks, then the stylizer actor pool; one result row per file."""
    import ray.data

    _quiet_ray(args.verbose)  # ray.data sets up its own loggers on import
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # the command has its own bar
    per_task = 1 if any(r["video"] for r in rows) else PHOTOS_PER_TASK
    blocks = max(1, min(math.ceil(len(rows) / per_task), MAX_BLOCKS))
    ds = ray.data.from_items(rows, override_num_blocks=blocks)
    ds = ds.map_batches(_decode, batch_size=per_task, fn_kwargs={"strip_metadata": bool(args.strip_metadata),
                                                                  "max_pixels": int(args.max_pixels)},
                        compute=ray.data.TaskPoolStrategy(size=min(place.decode_tasks, blocks)),
                        num_cpus=place.decode_cpus)
    gpus = {"num_gpus": place.actor_gpus} if place.actor_gpus else {}
    return ds.map_batches(StyleActor, batch_size=per_task,
                          fn_constructor_args=(args, bundle, str(state.resolve()) if state else None, place.threads),
                          compute=ray.data.ActorPoolStrategy(size=place.actors), num_cpus=place.actor_cpus, **gpus)


def local_actor_pids() -> list[int]:
    """Pids of the stylizer actors of a local Ray this process started (descendants of it; psutil needed):
    for tests and benchmarks that kill one."""
    import psutil

    found = []
    for p in psutil.Process().children(recursive=True):
        try:
            if StyleActor.__name__ in " ".join(p.cmdline()):
                found.append(p.pid)
        except psutil.Error:
            continue
    return found


def cluster_size() -> tuple[float, float]:
    """(CPUs, GPUs) of the connected Ray cluster."""
    import ray

    res = ray.cluster_resources()
    return float(res.get("CPU", 0)), float(res.get("GPU", 0))


def cluster_memory() -> float | None:
    """The connected Ray cluster's ``memory`` resource in bytes (what Ray lets tasks and actors use), or None."""
    import ray

    return ray.cluster_resources().get("memory") or None


def _progress(total: int, quiet: bool) -> Any:
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, unit="file", disable=True if quiet else None, file=sys.stderr)


def run_cli(args: argparse.Namespace, pairs: list[tuple[Path, Path]], manifest: Manifest, started: float) -> int:
    """Run the checked, planned files of ``emostyle ... --ray`` on Ray; the exit status. The run's
    :class:`FolderResult` is left in ``args.ray_result`` (for :func:`emostyle_ray.stylize_folder`)."""
    t0 = time.perf_counter()
    out_root = Path(args.output) if args.input.is_dir() else None
    state = out_root / cli.STATE_NAME if out_root is not None else None
    folders = list(dict.fromkeys(o.parent for _, o in pairs))
    states, old, fresh = cli.begin_run(args, folders, state, started)
    entries: dict[int, dict[str, Any]] = {}
    todo = []
    for i, (src, dst) in enumerate(pairs):
        skipped = cli.skip_entry(src, dst, out_root, args.force, states, old)
        if skipped is None:
            todo.append(i)
        else:
            entries[i] = skipped
    interrupted = stopped = False
    place: Placement | None = None
    styling = startup = 0.0
    address = args.ray or LOCAL
    if todo:
        with ray_session(args.ray, verbose=args.verbose) as address, \
                filtered_stderr(RAY_NOISE, enabled=not args.verbose):  # Ray's processes keep the real stderr
            place = placement(*cluster_size(), len(todo), args.actors, cluster_memory())
            if getattr(args, "memory_budget", None) is None and place.memory_budget is not None:
                args = copy.copy(args)  # each actor's share of the cluster's memory (they add up to what it has)
                args.memory_budget = place.memory_budget
            log.info("Styling %d file(s) on %s: %d actor(s) (%.2g CPU, %.2g GPU, %d thread(s), memory budget %s each).",
                     len(todo), address, place.actors, place.actor_cpus, place.actor_gpus, place.threads,
                     args.memory_budget or "the GPU's")
            t1 = time.perf_counter()
            ds = build_dataset(_rows(pairs, todo, out_root), args, str(manifest.root.resolve()), state, place)
            bar, rows = _progress(len(todo), args.quiet), None
            try:
                rows = ds.iter_rows()
                for row in rows:
                    i, entry = int(row["i"]), json.loads(row["entry"])
                    if i in entries:  # never twice (a retried task's second answer)
                        continue
                    entries[i] = entry
                    startup = startup or time.perf_counter() - t1
                    if bar is not None:
                        bar.update(1)
                    if entry["status"] == "ok":
                        log.log(logging.DEBUG if bar is not None and not bar.disable else logging.INFO,
                                "[%d/%d] %s -> %s (%s)", len(entries), len(pairs), entry["input"], entry["output"],
                                entry.get("emotion"))
                    elif row["fatal"]:  # the destination is unusable (not writable, full): stop
                        stopped = True
                        log.error("Stopping after %d of %d files: %s", len(entries) - 1, len(pairs), entry["error"])
                        break
                    else:
                        log.error("Skipping %s: %s", entry["input"], entry["error"])
            except KeyboardInterrupt:
                interrupted = True
                log.warning("Interrupted after %d of %d files; a rerun finishes the rest.", len(entries), len(pairs))
            except Exception as exc:
                if isinstance(exc, EmostyleError):
                    raise
                raise BackendError(f"The Ray job failed: {sentence(exc)}"
                                   + note("every file done or refused by its own typed error", type(exc).__name__)) from exc
            finally:
                if rows is not None and hasattr(rows, "close"):
                    rows.close()  # stops the pipeline: its actors go before the state file is compacted
                if bar is not None:
                    bar.close()
                styling = time.perf_counter() - t1
        # The actors are gone: their state lines (also of files whose answer never came back) are kept by the
        # compaction, and a killed actor's temporary file is removed (outputs themselves are whole or absent).
        states.reread()
        clean_stale_parts([*folders, *([args.report.parent] if args.report is not None else [])], started=time.time())
    ordered = [entries[i] for i in sorted(entries)]
    status = cli.finish_run(args, manifest, states, ordered, interrupted=interrupted, stopped=stopped, fresh=fresh)
    done, failed = (sum(e["status"] == s for e in ordered) for s in ("ok", "error"))
    args.ray_result = FolderResult(tuple(ordered), done, len(ordered) - done - failed, failed, interrupted, stopped,
                                   time.perf_counter() - t0, styling, startup, place, address, status)
    return status
