"""Atomic file writes and the cleanup of their temporary files.

A reader sees the old file or the complete new one, never a part. This module
owns the rule for a file a tool creates (:func:`check_output_file`: never an
input, an existing file replaced only with ``--force``), and every temporary
name a tool writes: a file's ``.emostyle-<pid>-<token>.<name>.part`` (pid of the
writer, 12 random hex digits, at most 96 bytes of the target's name; removed by
the one rule :func:`stale_temp_files`), a folder or file being built beside its
target ``.<name>.partial-<pid>-<token>`` and the one it replaces
``.<name>.old-<pid>-<token>`` (:func:`work_name`, matched by :func:`work_match`),
and a tool's stage folder inside a bundle ``.emostyle-stage-<pid>-<token>``
(:func:`stage_name`). A folder is published whole with :func:`publish_folder`.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import shutil
from pathlib import Path
from typing import Callable, Collection, Iterable

from .bundle.jsonio import read_json_object  # noqa: F401  (its 0.1.0 home; the bundle format's reader owns it)
from .errors import InvalidArgumentError, note

PART_SUFFIX = ".part"
TEMP_PREFIX = ".emostyle-"
#: Exactly the names :func:`write_bytes_atomic` creates; nothing else is ever removed.
TEMP_NAME = re.compile(r"^\.emostyle-(?P<pid>[1-9][0-9]{0,9})-(?P<token>[0-9a-f]{12})\.(?P<name>.+)\.part$", re.DOTALL)
_NAME_BYTES = 96  # keeps the temporary name under the usual 255-byte limit
#: Work paths beside a target ``<name>`` (a bundle, an ``aoti/<key>`` folder, a classifier file), made by
#: :func:`work_name`. Older releases wrote the start time in seconds as the token (bundles, AOTInductor folders)
#: or none (a classifier's ``.<stem>.partial-<pid>.keras``): those still match.
WORK_NAME = re.compile(r"^\.(?P<name>.+)\.(?P<kind>partial|old)-(?P<pid>[1-9][0-9]{0,9})(?:-(?P<token>[0-9a-f]+))?"
                       r"(?P<suffix>\.[A-Za-z0-9]+)?$", re.DOTALL)
#: A tool's hidden stage folder inside a bundle, made by :func:`stage_name`.
STAGE_NAME = re.compile(r"^\.emostyle-stage-(?P<pid>[1-9][0-9]{0,9})-(?P<token>[0-9a-f]{12})$")


def path_argument(text: str) -> Path:
    """The argparse type of a path option: an empty string (an unset shell variable) is refused, not read as "."."""
    import argparse

    if not text.strip():
        raise argparse.ArgumentTypeError("an empty path (an unset variable?); give a file or folder name")
    return Path(text)


def refuse_input(path: str | os.PathLike, inputs: Collection[Path]) -> None:
    """Refuse ``path`` as an output when it is one of ``inputs`` (resolved paths): never, even with --force."""
    if Path(path).resolve() in inputs:
        raise InvalidArgumentError(f"Refusing to write over the input {path}. Choose another output.")


def check_replace(path: str | os.PathLike, force: bool, label: str = "Output") -> None:
    """An existing ``path`` is written over only with ``force`` and only when it is a regular file.

    ``label`` names the path in the message (``Output``, ``--markdown``, ...).
    """
    p = Path(path)
    if p.exists() and (not p.is_file() or not force):
        what = "a regular file" if p.is_file() else "not a regular file"
        raise InvalidArgumentError(
            f"{label} {p} already exists; a single file is never written over without --force."
            + note("a new path (or --force for a regular file)", f"an existing path, {what}"))


def check_output_file(path: str | os.PathLike, force: bool, inputs: Iterable[str | os.PathLike] = (),
                      label: str = "Output") -> None:
    """The one rule for a file a command creates (``emostyle``, ``emostyle-train -o``, ``emostyle-bench --json``):
    never one of ``inputs`` (not even with ``force``), an existing path replaced only with ``force`` and only
    when it is a regular file. InvalidArgumentError otherwise; checked before any work."""
    refuse_input(path, {Path(i).resolve() for i in inputs})
    check_replace(path, force, label)


def temp_name(target: str) -> str:
    """A fresh temporary name for writing ``target`` (a file name) in the same folder."""
    short = os.fsdecode(os.fsencode(target)[:_NAME_BYTES]) or "_"
    return f"{TEMP_PREFIX}{os.getpid()}-{secrets.token_hex(6)}.{short}{PART_SUFFIX}"


def work_name(name: str, kind: str = "partial", suffix: str = "") -> str:
    """The hidden name of a folder or file built (or set aside) beside ``name`` in the same folder.

    Args:
        name: The target's name (a bundle folder, an ``aoti/<key>`` folder, a file stem).
        kind: "partial" (being built; renamed onto the target when complete) or "old" (the target it replaces,
            removed once the new one is in place).
        suffix: Kept at the end (``.keras``: the saver picks the format from it).

    Returns:
        ``.<name>.<kind>-<pid>-<token><suffix>``, which :func:`work_match` recognises.
    """
    if kind not in ("partial", "old"):
        raise ValueError(f"kind must be 'partial' or 'old', not {kind!r}")
    return f".{name}.{kind}-{os.getpid()}-{secrets.token_hex(6)}{suffix}"


def work_match(entry: str, name: str | None = None, *, kinds: tuple[str, ...] = ("partial", "old"),
               suffix: str = "", token: bool = True) -> re.Match[str] | None:
    """Whether ``entry`` (a file or folder name) is a work path of :func:`work_name`; its match (``kind``, ``pid``).

    Args:
        entry: The name found in a folder.
        name: The target it must belong to (None: any, then ``m["name"]`` says which).
        kinds: The kinds accepted.
        suffix: The suffix it must end in ("" for none).
        token: Require the ``-<token>`` part (False also accepts the old ``.<stem>.partial-<pid>.keras``).
    """
    m = WORK_NAME.match(entry)
    if (m is None or (name is not None and m["name"] != name) or m["kind"] not in kinds
            or (m["suffix"] or "") != suffix or (token and m["token"] is None)):
        return None
    return m


def stage_name() -> str:
    """A fresh name for a tool's hidden stage folder inside a bundle: ``.emostyle-stage-<pid>-<token>``."""
    return f"{TEMP_PREFIX}stage-{os.getpid()}-{secrets.token_hex(6)}"


def make_work_folder(parent: Path, name: str | None = None, *, parents: bool = False) -> Path:
    """Create a fresh work folder in ``parent``: :func:`work_name` of ``name``, or a :func:`stage_name` for None.

    Args:
        parent: The folder that holds it.
        name: The target it is built for; None for a stage folder.
        parents: Create ``parent`` too.

    Returns:
        The new, empty folder (created exclusively: a name drawn twice is drawn again). OS errors propagate.
    """
    if parents:
        parent.mkdir(parents=True, exist_ok=True)
    while True:
        folder = parent / (stage_name() if name is None else work_name(name))
        try:
            folder.mkdir()
            return folder
        except FileExistsError:  # 48 random bits collided: draw again
            continue


def fsync_tree(root: Path) -> None:
    """Flush every file under ``root`` to disk (before the folder is published with :func:`publish_folder`).

    Args:
        root: The folder.
    """
    for p in root.rglob("*"):
        if p.is_file():
            with open(p, "rb") as f:
                os.fsync(f.fileno())


def publish_folder(tmp: Path, dest: Path,
                   remove_old: Callable[[Path], list[str]] | None = None) -> tuple[Path | None, list[str]]:
    """Move the finished folder ``tmp`` onto ``dest``; an old ``dest`` goes only after the new one is there.

    The old one is first renamed to ``work_name(dest.name, "old")`` beside it, so a
    kill at any point leaves the old folder or the new one (a tool's next run
    restores or removes what a killed one left).

    Args:
        tmp: The complete new folder (in ``dest``'s parent, so the rename is atomic).
        dest: Where it goes.
        remove_old: Removes the old folder and returns what it kept (a bundle: only its own files go);
            None: all of it (a folder that is ours whole).

    Returns:
        The old folder's path (None: there was none) and what ``remove_old`` kept of it (there, for the caller
        to report).
    """
    old = None
    if dest.exists():
        old = dest.parent / work_name(dest.name, "old")
        os.replace(dest, old)
    try:
        os.replace(tmp, dest)
    except OSError:
        if old is not None:
            os.replace(old, dest)
        raise
    if old is None:
        return None, []
    if remove_old is None:
        shutil.rmtree(old, ignore_errors=True)
        return old, []
    return old, remove_old(old)


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` via a temporary file in the same folder, fsync and ``os.replace``.

    The temporary file (see :func:`temp_name`) is created exclusively with mode
    0o666 & ~umask, and removed on any failure. OS errors propagate.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        tmp = path.parent / temp_name(path.name)
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
            break
        except FileExistsError:  # 48 random bits collided: draw again
            continue
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists (ours or someone else's)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OverflowError:  # larger than any pid: no such process
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


def stale_temp_files(folders: Iterable[str | os.PathLike], started: float) -> list[Path]:
    """Temporary files of killed writers in ``folders`` (not their subfolders).

    Only a regular file (not a link) named exactly like :func:`temp_name`'s,
    owned by this user, whose writer pid is gone and that was last modified
    before ``started`` (the caller's start, a ``time.time()``) qualifies: a look-alike
    of another program, a live writer's or a newer file is never listed.
    """
    found: list[Path] = []
    uid = os.getuid() if hasattr(os, "getuid") else None
    for folder in dict.fromkeys(Path(f) for f in folders):
        try:
            entries = list(os.scandir(folder))
        except OSError:  # missing or unreadable: nothing of ours there
            continue
        for e in entries:
            m = TEMP_NAME.match(e.name)
            if not m:
                continue
            try:
                st = e.stat(follow_symlinks=False)
            except OSError:
                continue
            if (e.is_file(follow_symlinks=False) and (uid is None or st.st_uid == uid)
                    and st.st_mtime < started and not pid_alive(int(m["pid"]))):
                found.append(Path(e.path))
    return sorted(found)
