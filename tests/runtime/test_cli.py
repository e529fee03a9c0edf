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

from emostyle_rt import cli
from emostyle_rt.cli import STATE_NAME, main
from emostyle_rt.imaging.io import read_image, write_image

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


def _outputs(out: Path) -> list[str]:
    return sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file() and p.name != STATE_NAME)


def test_folder_skips_bad_files_and_resumes(demo_bundle: Path, photos: Path, tmp_path: Path) -> None:
    out, report = tmp_path / "out", tmp_path / "r.json"
    args = [str(photos), "-o", str(out), "--bundle", str(demo_bundle), "-q"]
    before = _snapshot(photos)
    assert main(args) == 1  # bad.jpg failed, the rest were done; no report asked for
    assert _outputs(out) == ["a.png", "sub/b.jpg"]
    assert read_image(out / "sub" / "b.jpg").shape == NO_FACE.shape
    assert _snapshot(photos) == before  # inputs untouched

    done = _snapshot(out)
    (out / "a.png").unlink()  # as if the first run had been interrupted before a.png
    assert main([*args, "--report", str(report)]) == 1
    again = _snapshot(out)
    assert again["sub/b.jpg"] == done["sub/b.jpg"]  # not redone
    assert "a.png" in again
    entries = {Path(e["input"]).name: e for e in json.loads(report.read_text())["files"]}
    assert entries["bad.jpg"]["status"] == "error" and "not an image" in entries["bad.jpg"]["error"]
    # b.jpg's emotion comes from the first run (the output folder's state file), though it had no report.
    assert entries["b.jpg"]["status"] == "exists" and entries["b.jpg"]["source"] == "whole"
    assert entries["b.jpg"]["emotion"] in entries["b.jpg"]["scores"]
    assert entries["a.png"]["status"] == "ok" and entries["a.png"]["source"] == "face"
    state = [json.loads(line) for line in (out / STATE_NAME).read_text().splitlines()]
    assert sorted(e["output"] for e in state) == ["a.png", "sub/b.jpg"]  # compacted: one line per output


def test_never_writes_over_inputs(demo_bundle: Path, photos: Path, tmp_path: Path) -> None:
    before = _snapshot(photos)
    b = ["--bundle", str(demo_bundle), "-q"]
    assert main([str(photos), "-o", str(photos), *b]) == 2
    assert main([str(photos / "a.png"), "-o", str(photos / "a.png"), *b]) == 2
    assert main([str(photos / "a.png"), "-o", str(photos), *b]) == 2  # same name in the same folder
    assert _snapshot(photos) == before
    # The input and output trees are kept apart: an output folder inside the input folder (whose files would be
    # taken for outputs, and whose outputs the next run would read) or above it (outputs mixed with what is
    # around the input folder) is refused, and nothing is created.
    for out in (photos / "styled", photos / "sub", photos / "sub" / "deep", photos.parent, photos.parent.parent):
        assert main([str(photos), "-o", str(out), "--emotion", "sad", *b]) == 2, out
    assert _snapshot(photos) == before and not (photos / "styled").exists() and not (photos / "sub" / "deep").exists()
    assert sorted(p.name for p in photos.parent.iterdir()) == ["in"]


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


GIF = cv2.haveImageWriter("x.gif")  # OpenCV >= 4.11 can make the GIF input


def test_folder_rule_hidden_symlinks_gif(demo_bundle: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Hidden files and folders are skipped, symlinked folders not followed, symlinked files read; a GIF
    is read (first frame) and written as a PNG; each skip is logged."""
    src = tmp_path / "in"
    for rel in ("a.png", "sub/b.png", ".h.png", ".hd/x.png", "../other/c.png", "../single.png"):
        write_image(src / rel, NO_FACE)
    (src / "linkdir").symlink_to(tmp_path / "other", target_is_directory=True)
    (src / "link.png").symlink_to(tmp_path / "single.png")
    if GIF:
        assert cv2.imwrite(str(src / "g.gif"), NO_FACE[:, :, ::-1])
    out = tmp_path / "out"
    with caplog.at_level("INFO", logger="emostyle"):
        assert main([str(src), "-o", str(out), "--bundle", str(demo_bundle), "--emotion", "sad"]) == 0
    assert _outputs(out) == ["a.png", *(["g.png"] if GIF else []), "link.png", "sub/b.png"]
    assert read_image(out / "link.png").shape == NO_FACE.shape and not (out / "link.png").is_symlink()
    assert "Skipped 2 hidden file(s) or folder(s)" in caplog.text
    assert "Did not follow 1 symlinked folder(s)" in caplog.text


def test_single_file_into_a_new_folder(demo_bundle: Path, tmp_path: Path) -> None:
    """``-o newdir/`` (trailing slash) is a folder: the output takes the input's name (a GIF's: .png)."""
    src = write_image(tmp_path / "p.jpg", NO_FACE)
    b = ["--bundle", str(demo_bundle), "--emotion", "sad", "-q"]
    assert main([str(src), "-o", str(tmp_path / "newdir") + "/", *b]) == 0
    assert read_image(tmp_path / "newdir" / "p.jpg").shape == NO_FACE.shape
    if GIF:
        assert cv2.imwrite(str(tmp_path / "g.gif"), NO_FACE[:, :, ::-1])
        assert main([str(tmp_path / "g.gif"), "-o", str(tmp_path / "newdir"), *b]) == 0
        assert read_image(tmp_path / "newdir" / "g.png").shape == NO_FACE.shape


def test_quality_and_metadata_flags_reach_the_writer(demo_bundle: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    src = write_image(tmp_path / "p.jpg", NO_FACE)
    calls: list[dict] = []
    monkeypatch.setattr(cli, "read_image_meta", lambda p: ("meta of", Path(p).name))
    monkeypatch.setattr(cli, "write_image", lambda p, image, **kw: calls.append(kw))
    b = ["--bundle", str(demo_bundle), "--emotion", "sad", "-q"]
    assert main([str(src), "-o", str(tmp_path / "a.jpg"), *b]) == 0
    assert main([str(src), "-o", str(tmp_path / "b.webp"), "--quality", "40", "--strip-metadata", *b]) == 0
    assert calls == [{"quality": None, "meta": ("meta of", "p.jpg")}, {"quality": 40, "meta": None}]


def test_max_pixels_is_a_flag_and_the_message_names_it(demo_bundle: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """The 100 MP guard of the library was fixed in the command, while tiling styles any size: --max-pixels sets
    it, and the refusal says so."""
    src = write_image(tmp_path / "p.png", NO_FACE)  # 90x60 = 5400 pixels
    b = ["--bundle", str(demo_bundle), "--emotion", "sad", "-q"]
    assert main([str(src), "-o", str(tmp_path / "small.png"), "--max-pixels", "5000", *b]) == 1
    err = capsys.readouterr().err
    assert "too large to read (90x60 = 5400 pixels)" in err and "--max-pixels" in err, err
    assert not (tmp_path / "small.png").exists()
    assert main([str(src), "-o", str(tmp_path / "ok.png"), "--max-pixels", "5400", *b]) == 0
    assert read_image(tmp_path / "ok.png").shape == NO_FACE.shape
