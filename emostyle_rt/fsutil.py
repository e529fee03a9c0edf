"""Atomic file writes and the cleanup of their temporary files.

A reader sees the old file or the complete new one, never a part. This module
owns the rule for a file a tool creates (:func:`check_output_file`: never an
input, an existing file replaced only with ``--force``), the temporary-file name, ``.emostyle-<pid>-<token>.<name>.part`` (pid of
the writer, 12 random hex digits, at most 96 bytes of the target's name), and
the one rule for removing them: :func:`stale_temp_files`.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
from pathlib import Path
from typing import Collection, Iterable

from .bundle.jsonio import read_json_object  # noqa: F401  (its 0.1.0 home; the bundle format's reader owns it)
from .errors import InvalidArgumentError, note

PART_SUFFIX = ".part"
TEMP_PREFIX = ".emostyle-"
#: Exactly the names :func:`write_bytes_atomic` creates; nothing else is ever removed.
TEMP_NAME = re.compile(r"^\.emostyle-(?P<pid>[1-9][0-9]{0,9})-(?P<token>[0-9a-f]{12})\.(?P<name>.+)\.part$", re.DOTALL)
_NAME_BYTES = 96  # keeps the temporary name under the usual 255-byte limit


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
