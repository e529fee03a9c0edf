"""No collateral damage: every ``emostyle`` mode, run in a sandbox full of decoys, touches only its own files.

The sandbox holds the inputs (one read-only, a GIF, a symlinked file and
folder, hidden ones), look-alikes of temporary files (other programs' names,
0.1.0's name, near misses of ours, exact ones that are live, newer or nested),
files named like outputs, read-only files and nested folders. Every path is
snapshotted (type, mode, sha256 or link target) before each run; afterwards the
only new, changed or removed paths may be that run's outputs, its report, the
output folder's state file, the folders holding them and the stale temporary
files of dead writers in the folders the run writes into. Single file, folder,
resume, --force, refused arguments, Ctrl-C and SIGKILL at random points.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from decoys import FOLDER_OUTPUTS
from decoys import check as _check
from decoys import own_temp as _own_temp
from decoys import sandbox as _sandbox
from decoys import snapshot as _snapshot

from emostyle_rt.cli import STATE_NAME, main

#: A slow disk (each fsync waits) spreads a run out, so that random signals land inside the work.
SLOW_FSYNC_S = 0.12
_SLOW_DISK = ("import os, sys, time; _f = os.fsync; os.fsync = lambda fd: (time.sleep({s}), _f(fd))[1]; "
              "from emostyle_rt.cli import main; sys.exit(main(sys.argv[1:]))").format(s=SLOW_FSYNC_S)


def _cli(box: Path, bundle: Path, *argv: str, slow: bool = False) -> list[str]:
    head = ["-c", _SLOW_DISK] if slow else ["-m", "emostyle_rt.cli"]
    return [sys.executable, *head, *argv, "--bundle", str(bundle.resolve()), "-q"]


def _report(path: Path) -> dict[str, dict]:
    return {Path(e["output"]).name: e for e in json.loads(path.read_text())["files"]}


def test_no_collateral_damage(tmp_path: Path, demo_bundle: Path, astronaut: np.ndarray, dead_pid: int,
                              monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    box = tmp_path / "box"
    stale = _sandbox(box, dead_pid, astronaut)
    decoys = _snapshot(box)
    b = ["--bundle", str(demo_bundle.resolve()), "-q"]
    monkeypatch.chdir(box)
    outs = {f"out/{o}" for o in FOLDER_OUTPUTS.values() if o != "p1.jpg"}  # out/p1.jpg exists: a folder run skips it

    def step(argv: list[str], rc: int, allowed: set[str], what: str) -> set[str]:
        before = _snapshot(box)
        got = main([*argv, *b])
        err = capsys.readouterr().err
        assert got == rc, f"{what}: exit {got}\n{err}"
        assert "Traceback" not in err
        return _check(before, _snapshot(box), allowed, what)

    # One file; the report and the output go where killed runs left temporary files: those (only) are removed.
    changed = step(["single.png", "-o", "styled/one.jpg", "--report", "report.json"], 0,
                   {"styled/one.jpg", "report.json", stale[""], stale["styled/"]}, "single file")
    assert {"styled/one.jpg", "report.json", stale[""], stale["styled/"]} <= changed
    assert not (box / stale[""]).exists() and not (box / stale["styled/"]).exists()
    step(["single.png", "-o", "styled/one.jpg"], 2, set(), "existing single output")
    step(["single.png", "-o", "existing.png"], 2, set(), "existing unrelated file")
    inode = (box / "styled/one.jpg").stat().st_ino
    step(["single.png", "-o", "styled/one.jpg", "--force"], 0, {"styled/one.jpg"}, "--force")
    assert (box / "styled/one.jpg").stat().st_ino != inode  # written again (the same bytes: the run is deterministic)
    assert step(["single.png", "-o", "newdir/"], 0, {"newdir/single.png"}, "-o newdir/") \
        == {"newdir", "newdir/single.png"}
    # Refused before anything is created.
    for argv in (["photos", "-o", "rin_out", "--report", "photos/p0.png"], ["single.png", "-o", "r.jpg", "--report", "r.jpg"],
                 ["photos", "-o", "rin_out", "--report", "keep"], ["photos", "-o", "rin_out", "--report", "notes.json"],
                 ["photos", "-o", "rin_out", "--report", "single.png/r.json"], ["photos", "-o", "photos"],
                 ["photos", "-o", "rin_out", "--emotion", "joy"], ["photos", "-o", "rin_out", "--max-side", "4"],
                 ["single.png", "-o", "photos/link_file.png", "--force"], ["single.png", "-o", "single.png", "--force"]):
        step(argv, 2, set(), " ".join(argv))

    # A folder, into an output folder holding decoys; then a resume, then --force.
    step(["photos", "-o", "out", "--report", "report.json"], 0, outs | {"report.json", f"out/{STATE_NAME}", stale["out/"]},
         "folder")
    assert not (box / stale["out/"]).exists() and all((box / o).is_file() for o in outs)
    entries = _report(box / "report.json")
    assert entries["p1.jpg"]["status"] == "exists" and "emotion" not in entries["p1.jpg"]  # the user's file
    step(["photos", "-o", "out", "--report", "report.json"], 0, {"report.json"}, "resume")
    entries = _report(box / "report.json")
    assert {n for n, e in entries.items() if e["status"] == "exists" and "emotion" in e} \
        == {Path(o).name for o in outs}  # emotions kept across runs
    step(["photos", "-o", "out", "--report", "report.json", "--force"], 0,
         outs | {"out/p1.jpg", "report.json", f"out/{STATE_NAME}"}, "folder --force")
    assert cv2.imread(str(box / "out/p1.jpg")) is not None  # --force redid the output over the user's file

    # Every decoy is byte-identical (mode included): all but the two files --force and the cleanup may change.
    after = _snapshot(box)
    assert {p for p, e in decoys.items() if after.get(p) != e} == {"out/p1.jpg", *stale.values()}


def _signal_run(box: Path, bundle: Path, argv: list[str], sig: int, rng: random.Random, span: float) -> int:
    """Start a slow-disk run, send ``sig`` at a random moment once its work has begun; its exit status."""
    def temps() -> set[Path]:
        return {p for p in box.glob("sig_out/**/.emostyle-*") if _own_temp(p.name)}

    earlier = temps()  # left by a killed run; the new run removes them
    proc = subprocess.Popen(_cli(box, bundle, *argv, slow=True), cwd=box, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None and not temps() - earlier:
        time.sleep(0.005)  # until its first write: the signal lands in the work, not in Python's start-up
    try:
        proc.wait(timeout=rng.uniform(0.0, span))
    except subprocess.TimeoutExpired:
        proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    if sig == signal.SIGINT:
        assert "Traceback" not in err, err
    return proc.returncode


def _signal_cycle(box: Path, bundle: Path, rng: random.Random, sig: int, folder: bool, n: int,
                  stale: str, late: float = 0.8) -> dict[str, int]:
    """``n`` interrupted runs then a clean one, each checked for collateral changes; counts of outcomes.
    ``stale``: the old temporary file by the report, which (only) a run may remove. Signals come up to
    ``late`` times the slow disk's time for the outputs left (below 1: nearly always inside the work)."""
    out = "sig_out" if folder else "sig_out/one.png"
    argv = ["photos" if folder else "single.png", "-o", out, "--report", "sig_report.json"]
    outputs = {f"sig_out/{o}" for o in FOLDER_OUTPUTS.values()} if folder else {"sig_out/one.png"}
    allowed = outputs | {"sig_report.json", stale} | ({f"sig_out/{STATE_NAME}"} if folder else set())
    stats = {"interrupted": 0, "finished": 0}
    for k in range(n):
        before = _snapshot(box)
        left = sum(not (box / o).exists() for o in outputs)
        rc = _signal_run(box, bundle, argv, sig, rng, span=max(1, left) * SLOW_FSYNC_S * late)
        what = f"{signal.Signals(sig).name} run {k} ({'folder' if folder else 'file'})"
        if rc == 0:
            stats["finished"] += 1
        else:
            assert rc == (130 if sig == signal.SIGINT else -signal.SIGKILL), f"{what}: exit {rc}"
            stats["interrupted"] += 1
        after = _snapshot(box)
        _check(before, after, allowed, what, temps=True)
        if sig == signal.SIGINT:  # a clean interrupt removes its temporary file and writes the report
            assert not [p for p in after if _own_temp(p)], what
            if rc == 130:
                assert json.loads((box / "sig_report.json").read_text())["interrupted"] is True
        if not folder and (box / "sig_out/one.png").exists():
            break  # a single file is never redone without --force
    before = _snapshot(box)
    force = ["--force"] if not folder and (box / "sig_out/one.png").exists() else []  # else refused, touching nothing
    done = subprocess.run(_cli(box, bundle, *argv, *force), cwd=box, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    after = _snapshot(box)
    _check(before, after, allowed, "rerun", temps=True)
    assert outputs <= after.keys() and not [p for p in after if _own_temp(p)], "the rerun left work or temporary files"
    if folder:
        report = json.loads((box / "sig_report.json").read_text())
        assert report["interrupted"] is False
        assert all("emotion" in e for e in report["files"]), "emotions of earlier runs were lost"
    return stats


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["ctrl-c", "sigkill"])
def test_interrupted_runs_touch_nothing_else(tmp_path: Path, demo_bundle: Path, astronaut: np.ndarray,
                                             dead_pid: int, sig: int) -> None:
    box = tmp_path / "box"
    stale = _sandbox(box, dead_pid, astronaut)[""]
    decoys = _snapshot(box)
    seed = int(os.environ.get("EMOSTYLE_KILL_SEED", time.time_ns() % 100_000))
    stats = _signal_cycle(box, demo_bundle, random.Random(seed), sig, folder=True, n=2, stale=stale)
    print(f"seed {seed}: {stats}")
    assert stats["interrupted"] >= 1
    after = _snapshot(box)
    assert [p for p, e in decoys.items() if after.get(p) != e] == [stale]


@pytest.mark.slow
def test_interrupted_runs_touch_nothing_else_many(tmp_path: Path, demo_bundle: Path, astronaut: np.ndarray,
                                                  dead_pid: int) -> None:
    box = tmp_path / "box"
    stale = _sandbox(box, dead_pid, astronaut)[""]
    decoys = _snapshot(box)
    seed = int(os.environ.get("EMOSTYLE_KILL_SEED", time.time_ns() % 100_000))
    rng = random.Random(seed)
    total = {"interrupted": 0, "finished": 0}
    for sig, folder in [(signal.SIGKILL, True), (signal.SIGINT, True), (signal.SIGKILL, False),
                        (signal.SIGINT, False)] * 2:
        shutil.rmtree(box / "sig_out", ignore_errors=True)  # each cycle starts afresh
        (box / "sig_report.json").unlink(missing_ok=True)
        stats = _signal_cycle(box, demo_bundle, rng, sig, folder, n=4, stale=stale, late=1.5)
        total = {k: total[k] + stats[k] for k in total}
    print(f"seed {seed}: {total}")
    assert total["interrupted"] >= 8
    after = _snapshot(box)
    assert [p for p, e in decoys.items() if after.get(p) != e] == [stale]


def _clip(path: Path, astronaut: np.ndarray, n: int, side: int = 96) -> None:
    """A small H.264 clip with AAC audio made from the astronaut photo."""
    av = pytest.importorskip("av")
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as out:
        vs = out.add_stream("libx264", rate=24)
        vs.width, vs.height, vs.pix_fmt = side, side * 3 // 4, "yuv420p"
        aus = out.add_stream("aac", rate=48000)
        for i in range(n):
            crop = astronaut[i : i + 384, i : i + 512]
            f = av.VideoFrame.from_ndarray(np.ascontiguousarray(cv2.resize(crop, (vs.width, vs.height))), format="rgb24")
            f.pts = i
            out.mux(vs.encode(f))
        out.mux(vs.encode())
        wave = np.zeros((1, 48000 * n // 24), np.float32)
        af = av.AudioFrame.from_ndarray(wave, format="fltp", layout="mono")
        af.sample_rate, af.pts = 48000, 0
        out.mux(aus.encode(af))
        out.mux(aus.encode())


def test_video_runs_touch_nothing_else(tmp_path: Path, demo_bundle: Path, astronaut: np.ndarray, dead_pid: int,
                                       monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """Videos keep every rule: single file, mixed folder, refusals, a damaged video, Ctrl-C and SIGKILL mid-video
    (nothing at the destination until complete; the rerun removes the killed run's temporary file only)."""
    box = tmp_path / "box"
    stale = _sandbox(box, dead_pid, astronaut)
    _clip(box / "media/v.mp4", astronaut, 8)
    _clip(box / "long.mp4", astronaut, 40, side=160)
    img = cv2.resize(astronaut, (96, 96))[:, :, ::-1]
    (box / "media/sub").mkdir(parents=True)
    assert cv2.imwrite(str(box / "media/sub/p.png"), np.ascontiguousarray(img))
    (box / "media/sub/broken.mkv").write_bytes(b"\x1a\x45\xdf\xa3" + bytes(range(256)) * 4)
    decoys = _snapshot(box)
    bundle = demo_bundle.resolve()
    b = ["--bundle", str(bundle), "-q"]
    monkeypatch.chdir(box)

    def step(argv: list[str], rc: int, allowed: set[str], what: str) -> set[str]:
        before = _snapshot(box)
        got = main([*argv, *b])
        err = capsys.readouterr().err
        assert got == rc, f"{what}: exit {got}\n{err}"
        assert "Traceback" not in err
        return _check(before, _snapshot(box), allowed, what)

    step(["media/v.mp4", "-o", "styled/v.mkv", "--report", "report.json"], 0,
         {"styled/v.mkv", "report.json", stale[""], stale["styled/"]}, "single video")
    step(["media/v.mp4", "-o", "styled/v.mkv"], 2, set(), "existing video output")
    for argv in (["media/v.mp4", "-o", "styled/v.png"], ["single.png", "-o", "styled/s.mp4"],
                 ["media/v.mp4", "-o", "media/v.mp4", "--force"], ["media/v.mp4", "-o", "x.mp4", "--switch-margin", "2"],
                 ["--webcam", "97", "-o", "cam.mp4"], ["media", "-o", "vout", "--batch", "0"]):
        step(argv, 2, set(), " ".join(argv))
    # A mixed folder with a damaged video: that one fails (exit 1) and leaves nothing; the rest is written.
    outs = {"vout/v.mp4", "vout/sub/p.png", f"vout/{STATE_NAME}", "report.json"}
    step(["media", "-o", "vout", "--report", "report.json"], 1, outs, "mixed folder")
    entries = _report(box / "report.json")
    assert entries["broken.mkv"]["status"] == "error" and "broken.mkv" in entries["broken.mkv"]["error"]
    assert entries["v.mp4"]["kind"] == "video" and entries["v.mp4"]["segments"]
    assert not (box / "vout/sub/broken.mkv").exists()

    # Ctrl-C and SIGKILL once the video's temporary file exists: the destination never appears half-written.
    for sig in (signal.SIGINT, signal.SIGKILL):
        before = _snapshot(box)
        proc = subprocess.Popen(_cli(box, bundle, "long.mp4", "-o", "kill/long.mp4"), cwd=box,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None and not [
                p for p in box.glob("kill/.emostyle-*") if _own_temp(p.name)]:
            time.sleep(0.005)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == (130 if sig == signal.SIGINT else -signal.SIGKILL), err
        assert "Traceback" not in err
        assert not (box / "kill/long.mp4").exists()
        _check(before, _snapshot(box), {"kill/long.mp4"}, signal.Signals(sig).name, temps=True)
        if sig == signal.SIGINT:
            assert not [p for p in box.glob("kill/.emostyle-*") if _own_temp(p.name)]
    before = _snapshot(box)
    done = subprocess.run(_cli(box, bundle, "long.mp4", "-o", "kill/long.mp4"), cwd=box, capture_output=True,
                          text=True, check=False)
    assert done.returncode == 0, done.stderr
    after = _snapshot(box)
    _check(before, after, {"kill/long.mp4"}, "rerun after kill", temps=True)
    assert not [p for p in after if _own_temp(p)], "the rerun left the killed run's temporary file"
    after = _snapshot(box)
    assert {p for p, e in decoys.items() if after.get(p) != e} == {stale[""], stale["styled/"]}
