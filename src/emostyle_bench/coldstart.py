"""Cold start and peak RSS of one path, each in a fresh Python process.

The parent runs ``python -m emostyle_bench.coldstart --stage S --path P --bundle B
--input X.npy`` and times it from spawn to exit (interpreter start, imports,
model loading and the first result: what a user waits for). The child reports
its own load / first-result split and its peak RSS (``getrusage``) as one JSON
line on stdout.
"""

from __future__ import annotations

import time

_T0 = time.perf_counter()

import argparse
import json
import logging
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

log = logging.getLogger(__name__)

_MARK = "EMOSTYLE_COLDSTART "


def _peak_rss_mb() -> float:
    """Peak RSS of this process: VmHWM on Linux (``ru_maxrss`` keeps the parent's peak across fork + exec)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    import resource

    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 1024.0 if sys.platform != "darwin" else kb / (1024.0 * 1024.0)


def child(argv: Sequence[str] | None = None) -> int:
    """Entry point of the measured process: load one path, run it once, report."""
    ap = argparse.ArgumentParser(prog="python -m emostyle_bench.coldstart")
    ap.add_argument("--stage", required=True)
    ap.add_argument("--path", required=True)
    ap.add_argument("--bundle", required=True)
    ap.add_argument("--input", required=True)
    a = ap.parse_args(argv)
    from emostyle_rt.logutil import quiet_tensorflow

    quiet_tensorflow()
    result: dict[str, object]
    try:
        import numpy as np

        from .paths import Context, PathUnavailable, default_paths, find_path

        spec = find_path(default_paths(), a.stage, a.path)
        x = np.load(a.input)
        t_load = time.perf_counter()
        try:
            fn = spec.build(Context(Path(a.bundle)))
        except PathUnavailable as exc:
            result = {"status": "unavailable", "reason": str(exc)}
        else:
            t_first = time.perf_counter()
            fn(x)
            t_end = time.perf_counter()
            heavy = sorted(m for m in ("torch", "tensorflow", "keras", "onnxruntime", "tensorrt") if m in sys.modules)
            result = {"status": "ok", "load_s": t_first - t_load, "first_s": t_end - t_first,
                      "before_load_s": t_load - _T0, "peak_rss_mb": _peak_rss_mb(), "modules": heavy}
    except Exception as exc:  # reported to the parent, which turns it into an "error" row
        result = {"status": "error", "reason": f"{type(exc).__name__}: {exc}"}
    sys.stdout.write(_MARK + json.dumps(result) + "\n")
    sys.stdout.flush()
    return 0


def run_one(stage: str, path: str, bundle: Path, input_npy: Path, timeout_s: float = 600.0) -> dict[str, object]:
    """Spawn the child for one path; its JSON result plus ``wall_s`` (spawn to exit)."""
    from emostyle_rt.logutil import quiet_tensorflow

    env = quiet_tensorflow(dict(os.environ))
    cmd = [sys.executable, "-m", "emostyle_bench.coldstart", "--stage", stage, "--path", path,
           "--bundle", str(bundle), "--input", str(input_npy)]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=env, check=False)
    except subprocess.TimeoutExpired:
        return {"status": "error", "reason": f"timed out after {timeout_s:.0f} s"}
    wall = time.perf_counter() - t0
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(_MARK):
            out: dict[str, object] = json.loads(line[len(_MARK):])
            out["wall_s"] = wall
            return out
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
    return {"status": "error", "reason": f"exit {proc.returncode}: {' | '.join(tail)}"}


#: The inputs :func:`save_input` writes (``emostyle-bench-<pid>-<random>.npy`` in the temporary folder).
INPUT_NAME = re.compile(r"^emostyle-bench-(?P<pid>[1-9][0-9]{0,9})-[A-Za-z0-9_]{1,16}\.npy$")


def save_input(array: object, folder: str | None = None) -> Path:
    """Write a benchmark input where the child can ``np.load`` it (removed again on any failure, Ctrl-C too)."""
    import numpy as np

    fd, name = tempfile.mkstemp(prefix=f"emostyle-bench-{os.getpid()}-", suffix=".npy", dir=folder)
    try:
        os.close(fd)
        np.save(name, array)
    except BaseException:
        os.unlink(name)
        raise
    return Path(name)


def remove_own_inputs(folder: str | None = None) -> None:
    """Remove every input this process wrote (its pid in the name): also one a Ctrl-C caught between the file's
    creation and its registration."""
    where = Path(folder or tempfile.gettempdir())
    for p in where.glob(f"emostyle-bench-{os.getpid()}-*.npy"):
        if INPUT_NAME.match(p.name) and p.is_file() and not p.is_symlink():
            p.unlink(missing_ok=True)


def clean_stale_inputs(folder: str | None = None) -> list[Path]:
    """Remove inputs that killed benchmarks left in ``folder`` (default: the temporary folder): exactly
    :data:`INPUT_NAME`, regular files of this user whose writer pid is gone."""
    from emostyle_rt.fsutil import pid_alive

    where = Path(folder or tempfile.gettempdir())
    removed = []
    try:
        entries = list(os.scandir(where))
    except OSError:
        return removed
    for e in entries:
        m = INPUT_NAME.match(e.name)
        try:
            if (m and e.is_file(follow_symlinks=False) and e.stat(follow_symlinks=False).st_uid == os.getuid()
                    and not pid_alive(int(m["pid"]))):
                os.unlink(e.path)
                removed.append(Path(e.path))
        except OSError:
            continue
    return removed


if __name__ == "__main__":
    raise SystemExit(child())
