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
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from emostyle_rt import cli, console, fsutil, manifest
from emostyle_rt.imaging import io as image_io
from emostyle_rt.cli import STATE_NAME, main
from emostyle_rt.errors import BackendError, BundleError, ImageWriteError, InvalidArgumentError

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
    """Digests of the files under ``root`` but the output folder's state file."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.name != STATE_NAME}


def _temps(out: Path) -> list[Path]:
    """Temporary files of the atomic writer under ``out``."""
    return [p for p in out.rglob(".*") if fsutil.TEMP_NAME.match(p.name)]


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
        if p.name.startswith("."):  # a killed writer's temporary file (never an output name) or the state file
            assert fsutil.TEMP_NAME.match(p.name) or rel == STATE_NAME, f"unexpected hidden file {rel} ({what})"
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
            stats["temp_file_left"] += bool(_temps(out))
        # The rerun: finishes the rest, leaves finished outputs alone, removes the killed runs' temporary files.
        before = {str(p.relative_to(out)): p.stat().st_mtime_ns
                  for p in out.rglob("*") if p.is_file() and not p.name.startswith(".")} if out.exists() else {}
        done = subprocess.run(_cmd(photos, out, bundle, report), capture_output=True, text=True, check=False)
        assert done.returncode == 0, done.stderr
        stats["resumes"] += 1
        assert _digests(out) == ref, f"seed {seed}, cycle {cycle}: the resumed outputs differ from the reference"
        assert [p.name for p in out.rglob(".*")] == [STATE_NAME], "temporary files survived the rerun"
        after = {rel: (out / rel).stat().st_mtime_ns for rel in before}
        assert after == before, "finished outputs were redone"
        status = {Path(e["output"]).relative_to(out).as_posix(): e["status"]
                  for e in json.loads(report.read_text())["files"]}
        assert {r for r, s in status.items() if s == "exists"} == set(before)
        assert {r for r, s in status.items() if s == "ok"} == set(ref) - set(before)
        lost = [e["output"] for e in json.loads(report.read_text())["files"] if "emotion" not in e]
        assert not lost, f"seed {seed}, cycle {cycle}: emotions of killed runs' outputs were lost: {lost}"
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
    """A temporary file of a dead writer is removed by the next run; a live process's, a newer one, one in a
    folder the run does not write into and look-alikes of other programs are kept."""
    out = tmp_path / "styled"
    (out / "elsewhere").mkdir(parents=True)
    dead = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True, check=False).stdout)
    stale = out / f".emostyle-{dead}-0123456789ab.p0.png.part"
    kept = [out / f".emostyle-{os.getpid()}-0123456789ab.p1.jpg.part",  # live writer
            out / f".emostyle-{dead}-0123456789ab.new.png.part",  # newer than the run (below)
            out / "elsewhere" / f".emostyle-{dead}-0123456789ab.p2.png.part",  # no output goes there
            out / f".p0.png.{dead}.abc123.part",  # 0.1.0's name: not provably ours
            out / f".emostyle-{dead}-0123456789AB.p0.png.part", out / f".emostyle-{dead}-0123456789a.p0.png.part",
            out / f".emostyle-{dead}-0123456789ab.part", out / ".photo.2024.jpg.part", out / ".mydata.99999.backup.part"]
    for p in (stale, *kept):
        p.write_bytes(b"half")
        os.utime(p, (time.time() - 3600,) * 2)
    os.utime(kept[1], (time.time() + 3600,) * 2)
    assert main([str(photos), "-o", str(out), "--bundle", str(demo_bundle), *FAST]) == 0
    assert not stale.exists() and all(p.read_bytes() == b"half" for p in kept)
    for p in kept:
        p.unlink()
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
    monkeypatch.setattr(image_io.os, "fsync", full)
    capsys.readouterr()
    assert main([str(photos), "-o", str(out), "--bundle", str(demo_bundle), *FAST]) == 1
    err = capsys.readouterr().err
    assert "No space left on device" in err and f"Stopping after {ok} of {n}" in err, err
    assert "Traceback" not in err
    assert full.calls == ok + 1, "it kept trying after the disk was full"
    written = _decodes(out, photos)
    assert len(written) == ok and not _temps(out)  # complete files only, no temporary file left
    assert _digests(photos) == inputs
    # Space freed: the rerun completes the rest and leaves the finished ones alone.
    monkeypatch.undo()
    before = {p: (out / p).stat().st_mtime_ns for p in written}
    assert main([str(photos), "-o", str(out), "--bundle", str(demo_bundle), *FAST]) == 0
    final = _decodes(out, photos)
    assert sorted(final) == _planned(photos) and all(final[p] == d for p, d in written.items())
    assert {p: (out / p).stat().st_mtime_ns for p in written} == before
    assert _digests(photos) == inputs


# -- refused up front: typed error, exit 2, nothing created ---------------------------------------

GIF = cv2.haveImageWriter("x.gif")
REFUSED = [
    (["in", "-o", "in_out", "--report", "in/a.jpg"], InvalidArgumentError, "is an input, an output, an output folder"),
    (["a.jpg", "-o", "r.jpg", "--report", "r.jpg"], InvalidArgumentError, "is an input, an output, an output folder"),
    (["in", "-o", "in_out", "--report", "in_out"], InvalidArgumentError, "is an input, an output, an output folder"),
    (["in", "-o", "in_out", "--report", "somedir"], InvalidArgumentError, "Report somedir is a folder"),
    (["in", "-o", "in_out", "--report", "a.jpg/r.json"], InvalidArgumentError, "a.jpg is not a folder"),
    (["in", "-o", "in_out", "--report", "notes.json"], InvalidArgumentError, "exists and is not an emostyle report"),
    (["a.jpg", "-o", "existing.png"], InvalidArgumentError, "already exists; a single file is never written over"),
    (["a.jpg", "-o", "somedir/", "--force"], InvalidArgumentError, "already exists"),  # somedir/a.jpg is a folder
    (["a.jpg", "-o", "a.jpg", "--force"], InvalidArgumentError, "Refusing to write over the input"),
    (["in", "-o", "in"], InvalidArgumentError, "is the input folder"),
    (["in", "-o", "a.jpg"], InvalidArgumentError, "must be a folder"),
    (["in", "-o", "in_out", "--max-side", "0"], InvalidArgumentError, "--max-side 0 is below"),
    (["in", "-o", "in_out", "--max-side", "-1"], InvalidArgumentError, "--max-side -1 is below"),
    (["in", "-o", "in_out", "--max-side", "4"], InvalidArgumentError, "--max-side 4 is below"),
    (["in", "-o", "in_out", "--quality", "0"], InvalidArgumentError, "--quality 0 is out of range"),
    (["in", "-o", "in_out", "--quality", "101"], InvalidArgumentError, "--quality 101 is out of range"),
    (["in", "-o", "in_out", "--emotion", "joy"], InvalidArgumentError, "Unknown emotion 'joy'"),
    (["in", "-o", "in_out", "--no-face", "bogus"], InvalidArgumentError, "Unknown no-face policy"),
    (["a.jpg", "-o", "x.gif"], InvalidArgumentError, "GIF inputs are read, not written"),
    (["a.jpg", "-o", "a.jpg/out.png"], ImageWriteError, "Cannot create the output folder a.jpg"),
    (["missing.jpg", "-o", "o.png"], InvalidArgumentError, "Input missing.jpg does not exist"),
    (["a.jpg", "-o", "o.png", "--bundle", "nobundle"], BundleError,
     "No bundle at nobundle. Choose one with --bundle DIR or EMOSTYLE_BUNDLE=DIR, or make the demo bundle"),
    *([(["gifs", "-o", "g_out"], InvalidArgumentError, "would both be written to g_out/a.png")] if GIF else []),
    # The input and output trees are apart (issue 22): inside, above, and a new folder named like a file.
    (["in", "-o", "in/sub"], InvalidArgumentError, "Output folder in/sub is inside the input folder in"),
    (["in", "-o", "in/.hidden"], InvalidArgumentError, "is inside the input folder in"),
    (["in", "-o", "."], InvalidArgumentError, "Output folder . holds the input folder in"),
    (["in", "-o", "x.jpg"], InvalidArgumentError, "Output x.jpg of the folder in is named like a file (.jpg)"),
    (["in", "-o", "clip.MP4"], InvalidArgumentError, "is named like a file (.MP4)"),
    # One rule for options that do not apply (as --seconds without --webcam).
    (["a.jpg", "-o", "o.png", "--crossfade", "5"], InvalidArgumentError,
     "--crossfade is for videos and the webcam, and the input a.jpg has no video"),
    (["in", "-o", "in_out", "--coherence", "off", "--batch", "2"], InvalidArgumentError,
     "--batch, --coherence are for videos and the webcam"),
    (["a.jpg", "-o", "o.png", "--seconds", "3"], InvalidArgumentError, "--seconds and --preview are for --webcam"),
    (["a.jpg", "-o", "o.png", "--max-pixels", "0"], InvalidArgumentError, "--max-pixels 0 is below 1"),
    # Backends that cannot run here: refused once, before any file.
    (["in", "-o", "in_out", "--backend", "aoti"], BackendError, "backend='aoti' has no usable engine here"),
]


@pytest.fixture()
def sandbox(tmp_path: Path, astronaut: np.ndarray, demo_bundle: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The working folder, with $EMOSTYLE_BUNDLE set: a.jpg, in/a.jpg, in/b.png, somedir/a.jpg/ (a folder),
    gifs/a.gif + gifs/a.png, existing.png, notes.json."""
    monkeypatch.setenv("EMOSTYLE_BUNDLE", str(demo_bundle.resolve()))
    photo = np.ascontiguousarray(cv2.resize(astronaut, (64, 64))[:, :, ::-1])
    for rel in ("a.jpg", "in/a.jpg", "in/b.png", "gifs/a.png", *(["gifs/a.gif"] if GIF else [])):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        assert cv2.imwrite(str(tmp_path / rel), photo)
    (tmp_path / "somedir" / "a.jpg").mkdir(parents=True)
    (tmp_path / "existing.png").write_bytes(b"someone else's file")
    (tmp_path / "notes.json").write_text('{"mine": true}')
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize(("argv", "error", "message"), REFUSED, ids=[" ".join(c[0]) for c in REFUSED])
def test_refused_before_anything_is_created(sandbox: Path, capsys: pytest.CaptureFixture[str],
                                            argv: list[str], error: type, message: str) -> None:
    before = _digests(sandbox), sorted(str(p) for p in sandbox.rglob("*"))
    with pytest.raises(error) as info:
        cli.run(cli._parser().parse_args(argv))
    assert message in str(info.value)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not re.search(r"(?<!\.)\.\.(?=\s|$)", err), f"doubled full stop: {err}"
    assert (_digests(sandbox), sorted(str(p) for p in sandbox.rglob("*"))) == before, "something was created"


def test_default_bundle_missing_says_how_to_get_one(sandbox: Path, monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("EMOSTYLE_BUNDLE", raising=False)
    monkeypatch.setattr(console, "DEFAULT_BUNDLE", Path("bundles") / "no-such-bundle")  # not in the repo either
    monkeypatch.setattr(console, "LEGACY_BUNDLE", Path("engines") / "no-such-bundle")  # nor at the old location
    assert main(["a.jpg", "-o", "o.png"]) == 2
    err = capsys.readouterr().err
    assert "No bundle at bundles/no-such-bundle." in err and "--bundle DIR or EMOSTYLE_BUNDLE=DIR" in err
    assert "emostyle-export --demo -o bundles/no-such-bundle" in err and not (sandbox / "o.png").exists()



def test_default_bundle_from_another_folder_is_the_checkouts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """From a folder without bundles/demo, the default is the source checkout's own (src/emostyle_rt is two below)."""
    from emostyle_rt.bundle import manifest as bundle_manifest

    repo = Path(__file__).resolve().parents[2]
    if repo / "src" not in Path(console.__file__).resolve().parents:
        pytest.skip(f"emostyle_rt is not this checkout's (an installed copy: {console.__file__})")
    monkeypatch.delenv("EMOSTYLE_BUNDLE", raising=False)
    monkeypatch.chdir(tmp_path)
    # a tracked folder of the checkout stands in for bundles/demo (git-ignored, absent before the demo export)
    monkeypatch.setattr(console, "DEFAULT_BUNDLE", Path("weights") / "demo")
    monkeypatch.setattr(console, "LEGACY_BUNDLE", Path("engines") / "no-such-bundle")  # an old engines/demo aside
    monkeypatch.setattr(bundle_manifest, "MANIFEST_NAME", "recipe.toml")
    assert console.default_bundle() == repo / "weights" / "demo"
    monkeypatch.setattr(bundle_manifest, "MANIFEST_NAME", "no-such-manifest.json")  # not a bundle there: the default
    assert console.default_bundle() == Path("weights") / "demo"


def _fake_bundle(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "manifest.json").write_text("{}")
    return folder


def test_default_bundle_at_the_old_location_is_used_with_one_warning(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    """A demo bundle made before the rename (engines/demo) still works, in the working directory and in the
    checkout, with one warning naming bundles/demo; bundles/demo wins once it is there, without a warning."""
    import logging

    checkout = tmp_path / "checkout"  # a source checkout: default_bundle looks two folders above src/emostyle_rt
    monkeypatch.setattr(console, "__file__", str(checkout / "src" / "emostyle_rt" / "console.py"))
    monkeypatch.setattr(console, "_WARNED", set())
    monkeypatch.delenv("EMOSTYLE_BUNDLE", raising=False)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    assert console.default_bundle() == Path("bundles") / "demo"  # nothing anywhere: the new default
    old = _fake_bundle(work / "engines" / "demo")
    with caplog.at_level(logging.WARNING, logger="emostyle_rt.console"):
        assert console.default_bundle() == Path("engines") / "demo"
        assert console.default_bundle() == Path("engines") / "demo"
    (said,) = [r.getMessage() for r in caplog.records if r.name == "emostyle_rt.console"]
    assert "engines/demo, the old default location; the default is now bundles/demo" in said, said
    assert "emostyle-export --demo -o bundles/demo" in said
    assert console.default_bundle("mine") == Path("mine")  # --bundle and $EMOSTYLE_BUNDLE come first, as before
    monkeypatch.setenv("EMOSTYLE_BUNDLE", "env-bundle")
    assert console.default_bundle() == Path("env-bundle")
    monkeypatch.delenv("EMOSTYLE_BUNDLE")

    (work / "bundles" / "demo").mkdir(parents=True)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="emostyle_rt.console"):
        assert console.default_bundle() == Path("bundles") / "demo"
    assert not caplog.records

    # the checkout's own old engines/demo, from a folder without either
    for path in (work / "bundles" / "demo", old):
        path.rename(tmp_path / f"aside-{path.parent.name}")
    _fake_bundle(checkout / "engines" / "demo")
    with caplog.at_level(logging.WARNING, logger="emostyle_rt.console"):
        assert console.default_bundle() == checkout / "engines" / "demo"
    (said,) = [r.getMessage() for r in caplog.records if r.name == "emostyle_rt.console"]
    assert f"the default is now {checkout / 'bundles' / 'demo'}" in said, said
    _fake_bundle(checkout / "bundles" / "demo")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="emostyle_rt.console"):
        assert console.default_bundle() == checkout / "bundles" / "demo"
    assert not caplog.records


def test_old_bundle_location_warns_on_the_commands_stderr(sandbox: Path, demo_bundle: Path,
                                                          monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """``emostyle`` with no --bundle in a folder holding only engines/demo runs it and says where it belongs now."""
    monkeypatch.delenv("EMOSTYLE_BUNDLE", raising=False)
    monkeypatch.setattr(console, "_WARNED", set())
    monkeypatch.setattr(console, "__file__", str(sandbox / "no-checkout" / "src" / "emostyle_rt" / "console.py"))
    (sandbox / "engines").mkdir()
    (sandbox / "engines" / "demo").symlink_to(demo_bundle.resolve(), target_is_directory=True)  # a link: no 180 MB copy
    assert main(["a.jpg", "-o", "o.png", "--emotion", "happy", "-q"]) == 0
    err = capsys.readouterr().err
    assert "Using the bundle at engines/demo, the old default location; the default is now bundles/demo." in err
    assert (sandbox / "o.png").is_file()

def test_report_of_an_earlier_run_or_forced_is_replaced(sandbox: Path) -> None:
    """An emostyle report is replaced by the next run; another file only with --force."""
    b = FAST
    assert main(["in", "-o", "out1", "--report", "r.json", *b]) == 0
    assert main(["in", "-o", "out2", "--report", "r.json", *b]) == 0  # r.json is a report: replaced
    assert json.loads((sandbox / "r.json").read_text())["files"][0]["output"].startswith("out2")
    assert main(["in", "-o", "out3", "--report", "notes.json", "--force", *b]) == 0
    assert len(json.loads((sandbox / "notes.json").read_text())["files"]) == 2


def test_ctrl_c_writes_the_report_and_a_resume_keeps_emotions(photos: Path, demo_bundle: Path, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    from emostyle_rt.stylizer import Stylizer

    real, calls = Stylizer.stylize, []

    def ctrl_c_on_the_third(self: Stylizer, *a: object, **k: object) -> object:
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(self, *a, **k)

    monkeypatch.setattr(Stylizer, "stylize", ctrl_c_on_the_third)
    out, report = tmp_path / "styled", tmp_path / "report.json"
    args = [str(photos), "-o", str(out), "--bundle", str(demo_bundle), "--report", str(report), *FAST]
    capsys.readouterr()
    assert main(args) == 130
    err = capsys.readouterr().err
    assert "Interrupted after 2 of 8 files" in err and "Traceback" not in err
    first = json.loads(report.read_text())
    assert first["interrupted"] is True and [e["status"] for e in first["files"]] == ["ok", "ok"]
    assert len(_digests(out)) == 2 and not _temps(out)
    monkeypatch.undo()
    assert main(args) == 0
    again = json.loads(report.read_text())
    assert again["interrupted"] is False and [e["status"] for e in again["files"]] == ["exists"] * 2 + ["ok"] * 6
    assert [e["emotion"] for e in again["files"][:2]] == ["happy", "happy"]  # kept across the resume


@pytest.mark.parametrize("argv", [["", "-o", "x.jpg"], ["   ", "-o", "out"], ["a.jpg", "-o", ""], ["in", "-o", ""],
                                  ["in", "-o", "out", "--report", ""], ["a.jpg", "-o", "o.png", "--bundle", ""]],
                         ids=["input", "blank-input", "output", "folder-output", "report", "bundle"])
def test_empty_paths_are_refused(sandbox: Path, capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    """An empty path is the working folder to pathlib: `emostyle "" -o x.jpg` walked it (other runs' outputs
    included) into a new folder x.jpg. A script's unset variable is refused at the command line instead."""
    before = _digests(sandbox), sorted(str(p) for p in sandbox.rglob("*"))
    with pytest.raises(SystemExit) as done:
        main(argv)
    err = capsys.readouterr().err
    assert done.value.code == 2 and "an empty path" in err and "Traceback" not in err, err
    assert (_digests(sandbox), sorted(str(p) for p in sandbox.rglob("*"))) == before, "something was created"
    with pytest.raises(InvalidArgumentError, match="An empty output path is refused"):
        cli.plan(Path("in"), "")


def test_a_new_folder_may_be_named_like_a_file_when_written_as_a_folder(sandbox: Path) -> None:
    assert main(["in", "-o", "styled.jpg/", *FAST]) == 0  # the trailing slash says: a folder
    assert sorted(p.name for p in (sandbox / "styled.jpg").iterdir()) == [STATE_NAME, "a.jpg", "b.png"]


@pytest.mark.parametrize("fault", ["fsync", "rename"])
def test_state_file_records_only_outputs_that_were_written(photos: Path, demo_bundle: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture[str], fault: str) -> None:
    """A full disk (ENOSPC at fsync) or a failing rename at the third file: the state file holds a line for
    each output that exists, and none for the one that failed (it once said "ok" with an emotion)."""
    out = tmp_path / "styled"
    if fault == "fsync":
        monkeypatch.setattr(image_io.os, "fsync", _FullDisk(2))
    else:
        real, calls = os.replace, []

        def replace(a: object, b: object) -> None:
            calls.append(b)
            if len(calls) == 3:
                raise OSError(errno.EIO, os.strerror(errno.EIO))
            real(a, b)

        monkeypatch.setattr(fsutil.os, "replace", replace)
    assert main([str(photos), "-o", str(out), "--bundle", str(demo_bundle), *FAST]) == 1
    assert "Stopping after 2 of" in capsys.readouterr().err
    monkeypatch.undo()
    written = sorted(_decodes(out, photos))
    assert len(written) == 2 and not _temps(out)
    lines = [json.loads(x) for x in (out / STATE_NAME).read_text().splitlines()]
    assert sorted(e["output"] for e in lines) == written and all(e["status"] == "ok" for e in lines)


def test_unwritable_report_or_output_folder_is_refused_before_the_work(sandbox: Path, monkeypatch: pytest.MonkeyPatch,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """A --report (or output) in a read-only folder is found before any file is styled, not after all of them.
    The OS is asked (os.access): here it says "read-only" for one folder, as a read-only mount would to root."""
    from emostyle_rt.stylizer import Stylizer

    ro = sandbox / "ro"
    (ro / "deep").mkdir(parents=True)
    real_access, styled = os.access, []
    monkeypatch.setattr(cli.os, "access", lambda p, mode, **k: False if Path(p).resolve() in (ro, ro / "deep")
                        else real_access(p, mode, **k))
    monkeypatch.setattr(Stylizer, "stylize", lambda *a, **k: styled.append(1))
    before = _digests(sandbox), sorted(str(p) for p in sandbox.rglob("*"))
    for argv, message in [
        (["in", "-o", "out", "--report", "ro/r.json"], "Report ro/r.json cannot be written: ro is not writable"),
        (["in", "-o", "out", "--report", "ro/new/r.json"], "Report ro/new/r.json cannot be written: ro is not writable"),
        (["in", "-o", "ro/deep/out"], "Cannot write into the output folder ro/deep/out: ro/deep is not writable"),
        (["a.jpg", "-o", "ro/x.png"], "Cannot write into the output folder ro: ro is not writable"),
    ]:
        assert main([*argv, *FAST]) == 2, argv
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, err
    assert styled == [] and (_digests(sandbox), sorted(str(p) for p in sandbox.rglob("*"))) == before


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a mode-0555 folder; the os.access test above covers it")
def test_read_only_report_folder_is_refused_before_the_work(sandbox: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (sandbox / "ro").mkdir()
    (sandbox / "ro").chmod(0o555)
    try:
        assert main(["in", "-o", "out", "--report", "ro/r.json", *FAST]) == 2
        assert "ro is not writable" in capsys.readouterr().err and not (sandbox / "out").exists()
    finally:
        (sandbox / "ro").chmod(0o755)


def test_a_backend_that_cannot_run_is_refused_once_before_any_file(sandbox: Path, monkeypatch: pytest.MonkeyPatch,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """--backend aoti on a bundle without packages classified each file and skipped it, 1000 failures for 1000
    files; now one error, exit 2, nothing styled or created (as --backend tensorrt always did)."""
    from emostyle_rt.stylizer import Stylizer

    classified: list[int] = []
    monkeypatch.setattr(Stylizer, "classify", lambda *a, **k: classified.append(1))
    before = _digests(sandbox), sorted(str(p) for p in sandbox.rglob("*"))
    assert main(["in", "-o", "in_out", "--backend", "aoti", "--report", "r.json", "-q"]) == 2
    err = capsys.readouterr().err
    assert err.count("No usable AOTInductor package") == 1 and "Traceback" not in err, err
    assert classified == [] and (_digests(sandbox), sorted(str(p) for p in sandbox.rglob("*"))) == before


def test_an_interrupted_folder_run_leaves_no_empty_folders(photos: Path, demo_bundle: Path, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Output folders are made when their first output is written, and a run removes those it made and left
    empty: Ctrl-C on the first file leaves no mirrored sub/ (nor the output folder itself)."""
    from emostyle_rt.stylizer import Stylizer

    def ctrl_c(*a: object, **k: object) -> None:
        raise KeyboardInterrupt

    out = tmp_path / "new" / "styled"
    monkeypatch.setattr(Stylizer, "stylize", ctrl_c)
    assert main([str(photos), "-o", str(out), "--bundle", str(demo_bundle), *FAST]) == 130
    assert not (tmp_path / "new").exists()
    # A failed write (full disk) in a new subfolder: that folder goes too, the ones with outputs stay.
    monkeypatch.undo()
    monkeypatch.setattr(image_io.os, "fsync", _FullDisk(7))  # the 8th file, sub/p7.jpg, fails
    assert main([str(photos), "-o", str(out), "--bundle", str(demo_bundle), *FAST]) == 1
    assert out.is_dir() and not (out / "sub").exists()


#: The console script's two lines, with an import hook that stops the first import of numpy (the command's
#: first second) until the parent has sent Ctrl-C: the interrupt lands inside the imports, by construction.
_GATED_IMPORT = r"""
import importlib.abc, socket, sys
gate = socket.socket(fileno=int(sys.argv[1]))
class Gate(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "numpy":
            sys.meta_path.remove(self)
            gate.sendall(b"importing numpy\n")
            gate.recv(1)  # the parent's SIGINT arrives while this waits
        return None
sys.meta_path.insert(0, Gate())
sys.argv = ["emostyle", *sys.argv[2:]]
from emostyle_rt.console import emostyle
sys.exit(emostyle())
"""


def test_ctrl_c_while_the_command_imports_exits_130_without_a_traceback(sandbox: Path) -> None:
    import socket
    from importlib import metadata

    (script,) = [e for e in metadata.entry_points(group="console_scripts") if e.name == "emostyle"]
    assert script.value == "emostyle_rt.console:emostyle"  # what the gated run below starts
    parent, child = socket.socketpair()
    with parent:
        proc = subprocess.Popen([sys.executable, "-c", _GATED_IMPORT, str(child.fileno()), "a.jpg", "-o", "o.png"],
                                pass_fds=(child.fileno(),), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        child.close()
        parent.settimeout(120)
        assert parent.recv(64) == b"importing numpy\n"  # it is importing now
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err and err.strip() == "Interrupted.", err
    assert not (sandbox / "o.png").exists()
