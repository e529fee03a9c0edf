"""``emostyle DIR -o OUT --ray`` on this machine: the same outputs as the local command, scaling, a killed actor.

    python studies/ray_scaling/ray_scaling.py --bundle bundles/demo                  # 200 photos, 2 rounds
    python studies/ray_scaling/ray_scaling.py --bundle bundles/demo --photos 48 --rounds 1 --json ray.json

A folder of ``--photos`` real photos (crops of scikit-image's astronaut, ``--side``
px, JPEG / PNG / WebP, some in a subfolder) is styled:

1. by the local command (``emostyle DIR -o OUT``), the reference;
2. on a local Ray with 1 and with 2 stylizer actors (one CPU and one intra-op
   thread each), alternated A B B A over ``--rounds`` (a shared machine drifts), each
   output tree checked byte for byte against the reference. Throughput is steady
   files per second, from the first file back to the last (the actors' start-up, a
   fixed few seconds, is reported apart); the ratio of the medians is the scaling.
   The CPU cores the actors got (their CPU time over the wall time) say how
   much of the machine other jobs left them;
3. with 2 actors, one of them SIGKILLed once a quarter of the outputs exist: every
   output must still be there, byte-identical, with no temporary file left and one
   state line per output.

Targets (issue 14): outputs identical; 2 actors >= 1.6x 1 actor; the killed run complete.
Exit status 1 when one is missed.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

TARGET_SCALING = 1.6


def make_photos(folder: Path, n: int, side: int) -> None:
    """``n`` crops of the astronaut photo (most show the face), three formats, every fourth in ``sub/``."""
    from skimage import data

    from emostyle_rt.imaging.io import write_image

    photo, rng = data.astronaut(), np.random.default_rng(0)
    for k in range(n):
        y, x = (int(v) for v in rng.integers(0, 512 - side, 2))
        name = f"p{k:03d}{('.jpg', '.png', '.webp')[k % 3]}"
        write_image(folder / ("sub" if k % 4 == 0 else "") / name, np.ascontiguousarray(photo[y:y + side, x:x + side]))


def tree(folder: Path) -> dict[str, bytes]:
    """Every output file's bytes, by relative path (the state file aside)."""
    from emostyle_rt.cli import STATE_NAME

    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*")
            if p.is_file() and p.name != STATE_NAME}


def temp_files(folder: Path) -> list[Path]:
    from emostyle_rt.fsutil import TEMP_NAME

    return [p for p in folder.rglob("*") if TEMP_NAME.match(p.name)]


def ray_run(src: Path, out: Path, bundle: str, actors: int) -> tuple[float, float, float, float]:
    """One run on a fresh local Ray: (steady files per second: from the first file back to the last; files per
    second of the whole pipeline, actors' start-up included; wall seconds of the call, Ray's start-up included;
    CPU cores the actors got, on average over the pipeline: their CPU time / its wall time)."""
    import psutil

    from emostyle_ray import stylize_folder
    from emostyle_ray.job import local_actor_pids

    cpu: dict[int, float] = {}
    stop = threading.Event()

    def sample() -> None:  # each actor's CPU time, last seen (they are gone when the call returns)
        while not stop.is_set():
            for pid in local_actor_pids():
                try:
                    cpu[pid] = max(cpu.get(pid, 0.0), sum(psutil.Process(pid).cpu_times()[:2]))
                except psutil.Error:
                    pass
            time.sleep(0.25)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    try:
        r = stylize_folder(src, out, bundle=bundle, actors=actors)
    finally:
        stop.set()
        t.join()
    if r.failed or r.done != len(tree(out)):
        raise SystemExit(f"Ray run with {actors} actor(s) failed {r.failed} file(s).")
    return ((r.done - 1) / (r.styling_seconds - r.startup_seconds), r.done / r.styling_seconds, r.seconds,
            sum(cpu.values()) / r.styling_seconds)


def killed_run(src: Path, out: Path, bundle: str, n: int) -> dict[str, object]:
    """2 actors; one SIGKILLed once n/4 outputs exist. What happened."""
    from emostyle_ray import stylize_folder
    from emostyle_ray.job import local_actor_pids

    killed: dict[str, object] = {}

    def kill_one() -> None:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and not killed:
            if out.is_dir() and len(tree(out)) >= n // 4 and (pids := local_actor_pids()):
                os.kill(pids[0], signal.SIGKILL)
                killed.update(pid=pids[0], outputs_at_kill=len(tree(out)))
            time.sleep(0.05)

    t = threading.Thread(target=kill_one, daemon=True)
    t.start()
    r = stylize_folder(src, out, bundle=bundle, actors=2)
    t.join(5)
    return {**killed, "done": r.done, "failed": r.failed, "seconds": round(r.seconds, 1)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", default="bundles/demo")
    ap.add_argument("--photos", type=int, default=200)
    ap.add_argument("--side", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=2, help="A B B A rounds of 1 vs 2 actors")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = ap.parse_args(argv)
    from emostyle_rt.cli import main as emostyle

    from emostyle_bench.machine import load_average

    work = Path(tempfile.mkdtemp(prefix="ray-scaling-"))
    src = work / "photos"
    make_photos(src, args.photos, args.side)
    t = time.perf_counter()
    if emostyle([str(src), "-o", str(work / "local"), "--bundle", args.bundle, "-q"]) != 0:
        raise SystemExit("The local command failed.")
    local_s = time.perf_counter() - t
    reference = tree(work / "local")
    rates: dict[int, list[float]] = {1: [], 2: []}
    pipes: dict[int, list[float]] = {1: [], 2: []}
    cores: dict[int, list[float]] = {1: [], 2: []}
    walls: dict[int, list[float]] = {1: [], 2: []}
    identical = True
    k = 0
    for _ in range(args.rounds):
        for actors in (1, 2, 2, 1):
            k += 1
            out = work / f"ray{k}-{actors}"
            rate, pipe, wall, got = ray_run(src, out, args.bundle, actors)
            same = tree(out) == reference and not temp_files(out)
            identical &= same
            rates[actors].append(rate)
            pipes[actors].append(pipe)
            cores[actors].append(got)
            walls[actors].append(wall)
            print(f"  run {k}: {actors} actor(s): {rate:.2f} files/s steady, {pipe:.2f} files/s with the actors' "
                  f"start-up, {wall:.1f} s wall, actors got {got:.2f} cores, identical={same}", flush=True)
    kill = killed_run(src, work / "killed", args.bundle, args.photos)
    out = work / "killed"
    state_lines = (out / ".emostyle-state.jsonl").read_text().splitlines()
    kill.update(identical=tree(out) == reference, temp_files=len(temp_files(out)),
                state_lines=len(state_lines), outputs=len(tree(out)))
    kill_ok = (kill["identical"] and not kill["temp_files"] and kill["state_lines"] == args.photos
               and "pid" in kill and int(kill["outputs_at_kill"]) < args.photos)
    m1, m2 = statistics.median(rates[1]), statistics.median(rates[2])
    result = {
        "photos": args.photos, "side": args.side, "rounds": args.rounds, "cpus": os.cpu_count(),
        "load_average": load_average(),
        "local_command": {"seconds": round(local_s, 1), "files_per_s": round(args.photos / local_s, 2)},
        "ray_files_per_s": {str(a): [round(r, 2) for r in v] for a, v in rates.items()},
        "ray_files_per_s_with_actor_startup": {str(a): [round(r, 2) for r in v] for a, v in pipes.items()},
        "actor_cores": {str(a): [round(c, 2) for c in v] for a, v in cores.items()},
        "ray_wall_s": {str(a): [round(w, 1) for w in v] for a, v in walls.items()},
        "median_files_per_s": {"1": round(m1, 2), "2": round(m2, 2)},
        "scaling_2_over_1": round(m2 / m1, 2),
        "scaling_with_actor_startup": round(statistics.median(pipes[2]) / statistics.median(pipes[1]), 2),
        "identical_to_local": identical,
        "killed_actor": kill,
    }
    print(json.dumps(result, indent=2))
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    misses = [what for what, ok in (("outputs identical to the local command", identical),
                                    (f"2 actors >= {TARGET_SCALING}x 1 actor", m2 / m1 >= TARGET_SCALING),
                                    ("killed-actor run complete and correct", kill_ok)) if not ok]
    for what in misses:
        print(f"MISSED: {what}", file=sys.stderr)
    import shutil

    shutil.rmtree(work, ignore_errors=True)
    return 1 if misses else 0


if __name__ == "__main__":
    sys.exit(main())
