"""``emostyle photos/ -o styled/`` under faults: SIGKILL at random points, unusable or full output.

After any kill: every output that exists decodes and is byte-identical to an
uninterrupted run's, inputs are byte-identical to before, and a rerun finishes
the rest without redoing what was done.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from emostyle_rt import imageio
from emostyle_rt.cli import main

CROPS = [(0, 0, 256, 256), (40, 120, 200, 180), (100, 50, 240, 260), (256, 256, 256, 256),
         (10, 300, 230, 200), (200, 0, 250, 250), (60, 150, 180, 180), (300, 100, 200, 260)]


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory, astronaut: np.ndarray) -> Path:
    """Eight real crops of the astronaut photo, JPEG and PNG, one in a subfolder."""
    d = tmp_path_factory.mktemp("photos") / "photos"
    (d / "sub").mkdir(parents=True)
    for i, (y, x, h, w) in enumerate(CROPS):
        name = f"sub/p{i}.jpg" if i == 7 else f"p{i}.jpg" if i % 2 else f"p{i}.png"
        assert cv2.imwrite(str(d / name), np.ascontiguousarray(astronaut[y : y + h, x : x + w, ::-1]))
    return d


def _digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _planned(photos: Path) -> list[str]:
    return sorted(str(p.relative_to(photos)) for p in photos.rglob("*") if p.is_file())


#: A slow disk: each fsync of the atomic writer waits, so random kills often land between writing and renaming.
SLOW_FSYNC_S = 0.15
_SLOW_DISK = (
    "import os, sys, time; _f = os.fsync; os.fsync = lambda fd: (time.sleep({s}), _f(fd))[1]; "
    "from emostyle_rt.cli import main; sys.exit(main(sys.argv[1:]))"
)


def _cmd(photos: Path, out: Path, bundle: Path, report: Path, slow_disk: bool = False) -> list[str]:
    head = ["-c", _SLOW_DISK.format(s=SLOW_FSYNC_S)] if slow_disk else ["-m", "emostyle_rt.cli"]
    return [sys.executable, *head, str(photos), "-o", str(out), "--bundle", str(bundle), "--report", str(report), "-q"]


@pytest.fixture(scope="module")
def reference(photos: Path, demo_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, str], float]:
    """Outputs of one uninterrupted run (digests) and how long that run took."""
    d = tmp_path_factory.mktemp("reference")
    t0 = time.monotonic()
    done = subprocess.run(_cmd(photos, d / "out", demo_bundle, d / "report.json"), capture_output=True, text=True, check=False)
    took = time.monotonic() - t0
    assert done.returncode == 0, done.stderr
    ref = _digests(d / "out")
    assert sorted(ref) == _planned(photos)
    return ref, took


def _check_after_kill(out: Path, report: Path, ref: dict[str, str], inputs: dict[str, str], photos: Path,
                      what: str) -> None:
    assert _digests(photos) == inputs, f"inputs changed ({what})"
    for p in sorted(out.rglob("*")) if out.exists() else []:
        if p.is_dir():
            continue
        rel = str(p.relative_to(out))
        if p.name.startswith("."):  # a killed writer's temporary file: never an output name
            assert p.name.endswith(imageio.PART_SUFFIX), f"unexpected hidden file {rel} ({what})"
            continue
        assert rel in ref, f"unexpected output {rel} ({what})"
        image = cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
        assert image is not None and image.ndim == 3, f"{rel} does not decode ({what})"
        assert hashlib.sha256(p.read_bytes()).hexdigest() == ref[rel], f"{rel} differs from the reference ({what})"
    if report.exists():
        json.loads(report.read_text())  # a report is written atomically: complete JSON or absent


def _kill_cycles(photos: Path, bundle: Path, tmp_path: Path, reference: tuple[dict[str, str], float],
                 cycles: int, kills_per_cycle: int, seed: int, slow_disk: bool) -> dict[str, int]:
    ref, full = reference
    full += (len(ref) + 1) * SLOW_FSYNC_S if slow_disk else 0.0
    rng = random.Random(seed)
    inputs = _digests(photos)
    stats = {"killed": 0, "finished_before_kill": 0, "resumes": 0, "temp_file_left": 0}
    for cycle in range(cycles):
        out, report = tmp_path / f"styled{cycle}", tmp_path / f"report{cycle}.json"
        for k in range(kills_per_cycle):
            left = len(ref) - sum(1 for q in out.rglob("*") if q.is_file() and not q.name.startswith(".")) \
                if out.exists() else len(ref)
            delay = rng.uniform(0.1, 1.0) * full * max(0.35, left / len(ref))  # aim inside the remaining work
            what = f"seed {seed}, cycle {cycle}, kill {k} after {delay:.2f}s"
            proc = subprocess.Popen(_cmd(photos, out, bundle, report, slow_disk), stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL)
            try:
                proc.wait(timeout=delay)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
            rc = proc.wait()
            if rc == -signal.SIGKILL:
                stats["killed"] += 1
            else:
                assert rc == 0, what
                stats["finished_before_kill"] += 1
            _check_after_kill(out, report, ref, inputs, photos, what)
            stats["temp_file_left"] += bool(out.exists() and list(out.rglob(f".*{imageio.PART_SUFFIX}")))
        # The rerun: finishes the rest, leaves finished outputs alone, removes the killed runs' temporary files.
        before = {str(p.relative_to(out)): p.stat().st_mtime_ns
                  for p in out.rglob("*") if p.is_file() and not p.name.startswith(".")} if out.exists() else {}
        done = subprocess.run(_cmd(photos, out, bundle, report), capture_output=True, text=True, check=False)
        assert done.returncode == 0, done.stderr
        stats["resumes"] += 1
        assert _digests(out) == ref, f"seed {seed}, cycle {cycle}: the resumed outputs differ from the reference"
        assert not [p for p in out.rglob(".*")], "temporary files survived the rerun"
        after = {rel: (out / rel).stat().st_mtime_ns for rel in before}
        assert after == before, "finished outputs were redone"
        status = {Path(e["output"]).relative_to(out).as_posix(): e["status"]
                  for e in json.loads(report.read_text())["files"]}
        assert {r for r, s in status.items() if s == "exists"} == set(before)
        assert {r for r, s in status.items() if s == "ok"} == set(ref) - set(before)
        assert _digests(photos) == inputs
    return stats


def test_sigkill_loop_loses_nothing(photos: Path, demo_bundle: Path, tmp_path: Path,
                                    reference: tuple[dict[str, str], float]) -> None:
    seed = int(os.environ.get("EMOSTYLE_KILL_SEED", time.time_ns() % 100_000))
    stats = _kill_cycles(photos, demo_bundle, tmp_path, reference, cycles=1, kills_per_cycle=3, seed=seed,
                         slow_disk=True)
    print(f"kill loop seed={seed}: {stats}")
    assert stats["killed"] >= 1  # at least one run was really interrupted


@pytest.mark.slow
def test_sigkill_loop_loses_nothing_many(photos: Path, demo_bundle: Path, tmp_path: Path,
                                         reference: tuple[dict[str, str], float]) -> None:
    seed = int(os.environ.get("EMOSTYLE_KILL_SEED", time.time_ns() % 100_000))
    stats = _kill_cycles(photos, demo_bundle, tmp_path, reference, cycles=6, kills_per_cycle=3, seed=seed,
                         slow_disk=False)
    slow = _kill_cycles(photos, demo_bundle, tmp_path / "slow", reference, cycles=6, kills_per_cycle=3,
                        seed=seed + 1, slow_disk=True)
    print(f"kill loop seed={seed}: normal disk {stats}, slow disk {slow}")
    assert stats["killed"] + slow["killed"] >= 20


def _decodes(out: Path, photos: Path) -> dict[str, str]:
    """Digests of the outputs, after checking each decodes at its input's size."""
    found = _digests(out)
    for rel in found:
        image, src = cv2.imread(str(out / rel)), cv2.imread(str(photos / rel))
        assert image is not None and image.shape == src.shape, rel
    return found


FAST = ["--emotion", "happy", "--max-side", "48", "-q"]  # style on a 48 px copy: the fault tests need no more


def test_killed_mid_write_leftover_is_cleaned(photos: Path, demo_bundle: Path, tmp_path: Path) -> None:
    """A temporary file of a dead writer is removed by the next run; one of a live process is kept."""
    out = tmp_path / "styled"
    out.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=False)
    stale = out / f".p0.png.{int(dead.stdout)}.abc123{imageio.PART_SUFFIX}"
    live = out / f".p1.jpg.{os.getpid()}.xyz789{imageio.PART_SUFFIX}"
    stale.write_bytes(b"\x89PNG half")
    live.write_bytes(b"\xff\xd8 half")
    assert main([str(photos), "-o", str(out), "--bundle", str(demo_bundle), *FAST]) == 0
    assert not stale.exists() and live.exists()
    live.unlink()
    assert sorted(_decodes(out, photos)) == _planned(photos)


# -- output folder unusable or full -------------------------------------------------------------


def test_output_under_a_regular_file(photos: Path, demo_bundle: Path, tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    """As root no permission bit stops a write; a path under a regular file fails for everyone."""
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file")
    inputs = _digests(photos)
    for src, dst in ((photos, blocker / "styled"), (photos / "p0.png", blocker / "out.png")):
        capsys.readouterr()
        assert main([str(src), "-o", str(dst), "--bundle", str(demo_bundle), "-q"]) == 2
        err = capsys.readouterr().err
        assert "Cannot create the output folder" in err and str(blocker) in err, err
        assert "Traceback" not in err
    assert blocker.read_text() == "a file"
    assert _digests(photos) == inputs


class _FullDisk:
    """os.fsync that fails with ENOSPC after ``ok`` successful calls (where a full disk surfaces)."""

    def __init__(self, ok: int) -> None:
        self.ok, self.calls = ok, 0
        self._fsync = os.fsync

    def __call__(self, fd: int) -> None:
        self.calls += 1
        if self.calls > self.ok:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self._fsync(fd)


@pytest.mark.parametrize("ok", [0, 3])
def test_disk_full(photos: Path, demo_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                   capsys: pytest.CaptureFixture[str], ok: int) -> None:
    out = tmp_path / "styled"
    n = len(_planned(photos))
    inputs = _digests(photos)
    full = _FullDisk(ok)
    monkeypatch.setattr(imageio.os, "fsync", full)
    capsys.readouterr()
    assert main([str(photos), "-o", str(out), "--bundle", str(demo_bundle), *FAST]) == 1
    err = capsys.readouterr().err
    assert "No space left on device" in err and f"Stopping after {ok} of {n}" in err, err
    assert "Traceback" not in err
    assert full.calls == ok + 1, "it kept trying after the disk was full"
    written = _decodes(out, photos)
    assert len(written) == ok and not list(out.rglob(".*"))  # complete files only, no temporary file left
    assert _digests(photos) == inputs
    # Space freed: the rerun completes the rest and leaves the finished ones alone.
    monkeypatch.undo()
    before = {p: (out / p).stat().st_mtime_ns for p in written}
    assert main([str(photos), "-o", str(out), "--bundle", str(demo_bundle), *FAST]) == 0
    final = _decodes(out, photos)
    assert sorted(final) == _planned(photos) and all(final[p] == d for p, d in written.items())
    assert {p: (out / p).stat().st_mtime_ns for p in written} == before
    assert _digests(photos) == inputs
