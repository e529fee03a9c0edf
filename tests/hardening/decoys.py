"""Decoy sandboxes shared by the collateral-damage tests: snapshots of every path and the check that only
a run's intended outputs changed.

:func:`sandbox` fills a folder with the inputs of ``emostyle`` runs and decoys around them (look-alikes of
temporary files, files named like outputs, read-only files and folders, links); :func:`snapshot` records
every path (type, mode, sha256 or link target); :func:`check` asserts that only the allowed paths changed.
"""

from __future__ import annotations

import hashlib
import os
import stat
import time
from pathlib import Path

import cv2
import numpy as np

from emostyle_rt.fsutil import TEMP_NAME

Snapshot = dict[str, tuple]
GIF = cv2.haveImageWriter("x.gif")  # OpenCV >= 4.11 writes the GIF input; older ones skip it
TOKEN = "0123456789ab"


def snapshot(root: Path) -> Snapshot:
    """Every path under ``root`` (links not followed) -> (kind, mode, sha256 or link target)."""
    snap: Snapshot = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = p.lstat()
            rel = p.relative_to(root).as_posix()
            if stat.S_ISLNK(st.st_mode):
                snap[rel] = ("link", os.readlink(p))
            elif stat.S_ISDIR(st.st_mode):
                snap[rel] = ("dir", st.st_mode)
            else:
                snap[rel] = ("file", st.st_mode, hashlib.sha256(p.read_bytes()).hexdigest())
    return snap


def changed_paths(before: Snapshot, after: Snapshot) -> set[str]:
    return {p for p in before.keys() | after.keys() if before.get(p) != after.get(p)}


def own_temp(rel: str) -> bool:
    """A temporary file a run wrote (a random token; the sandbox's look-alikes all use TOKEN)."""
    m = TEMP_NAME.match(Path(rel).name)
    return m is not None and m["token"] != TOKEN


def check(before: Snapshot, after: Snapshot, allowed: set[str], what: str, *, temps: bool = False) -> set[str]:
    """Assert that only ``allowed`` paths changed, besides new folders above them and, with ``temps`` (a
    killed run, or a rerun cleaning after one), temporary files of runs in their folders; the changed paths."""
    changed = changed_paths(before, after)
    folders = {Path(a).parent.as_posix() for a in allowed}
    above = folders | {q.as_posix() for f in folders for q in Path(f).parents}
    bad = {p for p in changed - allowed
           if not (p in above and p not in before and after[p][0] == "dir")
           and not (temps and own_temp(p) and Path(p).parent.as_posix() in folders)}
    assert not bad, f"{what}: collateral changes {sorted(bad)}"
    assert temps or not [p for p in after if own_temp(p)], f"{what}: a temporary file was left"
    return changed


#: Inputs of the folder ``photos`` -> the output each gets (relative to the output folder).
FOLDER_OUTPUTS = {"p0.png": "p0.png", "p1.jpg": "p1.jpg", "sub/p2.jpg": "sub/p2.jpg", "ro.png": "ro.png",
                  "sub/deeper/p3.png": "sub/deeper/p3.png", "link_file.png": "link_file.png",
                  **({"anim.gif": "anim.png"} if GIF else {})}


def sandbox(box: Path, dead: int, astronaut: np.ndarray) -> dict[str, str]:
    """Fill ``box``; the stale temporary files (ours, dead writer, old) by the folder they sit in."""
    def img(rel: str, y: int, x: int, side: int = 96) -> None:
        p = box / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        crop = cv2.resize(astronaut[y : y + 256, x : x + 256], (side, side), interpolation=cv2.INTER_AREA)
        assert cv2.imwrite(str(p), np.ascontiguousarray(crop[:, :, ::-1]))

    def put(rel: str, data: bytes = b"decoy", mode: int | None = None, old: bool = True) -> None:
        p = box / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data + rel.encode())
        if old:
            os.utime(p, (time.time() - 3600,) * 2)
        if mode is not None:
            p.chmod(mode)

    img("photos/p0.png", 100, 140)
    img("photos/p1.jpg", 0, 0)
    img("photos/sub/p2.jpg", 60, 200)
    img("photos/sub/deeper/p3.png", 250, 250)
    img("photos/ro.png", 30, 90)
    (box / "photos/ro.png").chmod(0o444)
    if GIF:
        img("photos/anim.gif", 100, 100, 64)
    img("photos/.hidden.png", 10, 10)
    img("photos/.hiddendir/h.png", 20, 20)
    img("single.png", 120, 150, 128)
    img("elsewhere/e.png", 200, 10)
    put("photos/notes.txt")
    (box / "photos/link_dir").symlink_to(box / "elsewhere", target_is_directory=True)
    (box / "photos/link_file.png").symlink_to(box / "single.png")
    # Other programs' look-alikes and near misses of our name, all with a dead "pid" and old.
    looks = [".mydata.99999.backup.part", ".photo.2024.jpg.part", f".single.png.{dead}.abc123.part",
             f".emostyle-{dead}-{TOKEN.upper()}.x.part", f".emostyle-{dead}-{TOKEN[:-1]}.x.part",
             f".emostyle-{dead}-{TOKEN}.part", f".emostyle-0-{TOKEN}.x.part", f".emostyle-{dead}-{TOKEN}.x.part.bak",
             f"emostyle-{dead}-{TOKEN}.x.part", f".emostyle-{dead}-{TOKEN}.x.PART", f".emostyle--{TOKEN}.x.part"]
    for folder in ("", "styled/", "out/", "keep/deep/"):
        for name in looks:
            put(folder + name)
    # Exact names that must stay: a live writer's, a newer one, nested ones (no output goes there), a link, a folder.
    for folder in ("", "styled/", "out/"):
        put(f"{folder}.emostyle-{os.getpid()}-{TOKEN}.live.png.part")
        put(f"{folder}.emostyle-{dead}-{TOKEN}.newer.png.part", old=False)
        os.utime(box / f"{folder}.emostyle-{dead}-{TOKEN}.newer.png.part", (time.time() + 3600,) * 2)
        (box / f"{folder}.emostyle-{dead}-{TOKEN}.dir.part").mkdir(parents=True)
        (box / f"{folder}.emostyle-{dead}-{TOKEN}.link.part").symlink_to(box / "keep/ro.txt")
    for rel in ("styled/sub/", "out/unrelated/", "keep/deep/"):
        put(f"{rel}.emostyle-{dead}-{TOKEN}.nested.png.part")
    # Files named like outputs, read-only files, nested folders.
    put("existing.png", b"\x89PNG not ours", 0o444)
    put("out/p1.jpg", b"\xff\xd8 a user's file where an output goes")
    put("keep/ro.txt", mode=0o444)
    put("keep/deep/deeper/data.bin")
    put("notes.json", b'{"mine": true}')
    (box / "keep/ro_dir").mkdir()
    put("keep/ro_dir/f.txt")
    (box / "keep/ro_dir").chmod(0o555)
    # Stale temporary files of a killed emostyle, where runs below write: the only files a run may remove.
    stale = {f: f"{f}.emostyle-{dead}-{TOKEN}.x.jpg.part" for f in ("", "styled/", "out/")}
    for rel in stale.values():
        put(rel, b"half")
    return stale
