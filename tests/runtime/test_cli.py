"""The ``emostyle`` command: files, folders, reports, no overwrite, atomic writes, resume."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import pytest
from skimage import data

from emostyle_rt.cli import main
from emostyle_rt.imageio import read_image, write_image

FACE = cv2.resize(data.astronaut(), (192, 192), interpolation=cv2.INTER_AREA)
NO_FACE = cv2.resize(data.coffee(), (90, 60), interpolation=cv2.INTER_AREA)


@pytest.fixture()
def photos(tmp_path: Path) -> Path:
    """in/a.png (a face), in/sub/b.jpg (no face), in/bad.jpg (not an image), in/notes.txt."""
    src = tmp_path / "in"
    write_image(src / "a.png", FACE)
    write_image(src / "sub" / "b.jpg", NO_FACE)
    (src / "bad.jpg").write_bytes(b"not a jpeg")
    (src / "notes.txt").write_text("ignored")
    return src


def _snapshot(folder: Path) -> dict[str, tuple[int, bytes]]:
    return {str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.read_bytes()) for p in folder.rglob("*") if p.is_file()}


def test_single_file_with_report(demo_bundle: Path, tmp_path: Path) -> None:
    src = write_image(tmp_path / "photo.png", FACE)
    out, report = tmp_path / "out" / "styled.jpg", tmp_path / "report.json"
    assert main([str(src), "-o", str(out), "--bundle", str(demo_bundle), "--report", str(report), "-q"]) == 0
    assert read_image(out).shape == FACE.shape
    (entry,) = json.loads(report.read_text())["files"]
    assert entry["status"] == "ok" and entry["source"] == "face" and entry["face"] is not None
    assert entry["emotion"] in entry["scores"]


def test_folder_skips_bad_files_and_resumes(demo_bundle: Path, photos: Path, tmp_path: Path) -> None:
    out, report = tmp_path / "out", tmp_path / "r.json"
    args = [str(photos), "-o", str(out), "--bundle", str(demo_bundle), "--report", str(report), "-q"]
    before = _snapshot(photos)
    assert main(args) == 1  # bad.jpg failed, the rest were done
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()) == ["a.png", "sub/b.jpg"]
    assert read_image(out / "sub" / "b.jpg").shape == NO_FACE.shape
    entries = {Path(e["input"]).name: e for e in json.loads(report.read_text())["files"]}
    assert entries["bad.jpg"]["status"] == "error" and "not an image" in entries["bad.jpg"]["error"]
    assert entries["a.png"]["source"] == "face" and entries["b.jpg"]["source"] == "whole"
    assert _snapshot(photos) == before  # inputs untouched

    done = _snapshot(out)
    (out / "a.png").unlink()  # as if the first run had been interrupted before a.png
    assert main(args) == 1
    again = _snapshot(out)
    assert again["sub/b.jpg"] == done["sub/b.jpg"]  # not redone
    assert "a.png" in again
    entries = {Path(e["input"]).name: e for e in json.loads(report.read_text())["files"]}
    assert entries["b.jpg"]["status"] == "exists" and entries["b.jpg"]["emotion"]  # kept from the first report
    assert entries["a.png"]["status"] == "ok"


def test_never_writes_over_inputs(demo_bundle: Path, photos: Path, tmp_path: Path) -> None:
    before = _snapshot(photos)
    b = ["--bundle", str(demo_bundle), "-q"]
    assert main([str(photos), "-o", str(photos), *b]) == 2
    assert main([str(photos / "a.png"), "-o", str(photos / "a.png"), *b]) == 2
    assert main([str(photos / "a.png"), "-o", str(photos), *b]) == 2  # same name in the same folder
    assert _snapshot(photos) == before
    # An output folder inside the input folder is not read back as input on a rerun.
    assert main([str(photos), "-o", str(photos / "styled"), "--emotion", "sad", *b]) == 1
    assert main([str(photos), "-o", str(photos / "styled"), "--emotion", "sad", *b]) == 1
    assert sorted(p.name for p in (photos / "styled").rglob("*") if p.is_file()) == ["a.png", "b.jpg"]


def test_options_and_usage_errors(demo_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    src = write_image(tmp_path / "p.png", NO_FACE)
    report = tmp_path / "r.json"
    monkeypatch.setenv("EMOSTYLE_BUNDLE", str(demo_bundle))  # the default bundle
    monkeypatch.setitem(sys.modules, "tqdm", None)  # no progress bar: plain log lines
    assert main([str(src), "-o", str(tmp_path / "o.png"), "--emotion", "fear", "--max-side", "32", "--report", str(report)]) == 0
    assert "[1/1]" in capsys.readouterr().err
    (entry,) = json.loads(report.read_text())["files"]
    assert (entry["emotion"], entry["source"]) == ("fear", "given")
    assert read_image(tmp_path / "o.png").shape == NO_FACE.shape
    assert main([str(src), "-o", str(tmp_path / "x.png"), "--emotion", "joy"]) == 2
    assert "Unknown emotion 'joy'" in capsys.readouterr().err
    assert main([str(tmp_path / "missing.png"), "-o", str(tmp_path / "y.png")]) == 2
    assert main([str(src), "-o", str(tmp_path / "z.png"), "--bundle", str(tmp_path / "nobundle")]) == 2
    assert main([str(src), "-o", str(tmp_path / "noext")]) == 2
    assert not any(p.name.endswith(".part") for p in tmp_path.rglob("*"))


def test_console_entry_point(demo_bundle: Path, tmp_path: Path) -> None:
    src = write_image(tmp_path / "p.png", NO_FACE)
    env = {**os.environ, "EMOSTYLE_BUNDLE": str(demo_bundle)}
    cmd = [sys.executable, "-m", "emostyle_rt.cli", str(src), "-o", str(tmp_path / "o.jpg"), "--emotion", "happy"]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=Path(__file__).resolve().parents[2])
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "o.jpg").is_file()
    assert done.stdout == ""  # logging goes to stderr, never stdout
