"""What ``emostyle-train`` may write: its outputs and work folders, never its inputs or the user's files.

One owner for the rules every subcommand follows, checked before any work:

- ``-o`` follows ``emostyle``'s rule (:func:`emostyle_rt.fsutil.check_output_file`):
  never an input (style image, content photo, data image, CSV, config), not
  even with ``--force``; an existing file is replaced only with ``--force``.
- Nothing the tool writes goes inside a folder it reads as data (``--content``,
  ``--data``): it would become training data of the next run (previews and
  plots are PNGs). A work folder that holds a data folder is refused too.
- A work folder is the tool's own: new (or empty), or made by emostyle-train
  (its marker file :data:`MARKER`), or one from before the marker holding only
  the names a run writes. A folder of the user's files is never used.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Iterable, Sequence

from emostyle_rt.errors import note
from emostyle_rt.fsutil import TEMP_NAME, check_output_file, pid_alive, work_match, write_bytes_atomic

from .errors import TrainingError

#: Marks a work folder made by emostyle-train (what made it, for which output).
MARKER = ".emostyle-train.json"
#: The names a run of each kind writes into its work folder (work folders from before the marker hold only these).
WORK_NAMES = {
    "style": {"checkpoint.pth", "preview.png", "previews", "losses.png", "report.json"},
    "classifier": {"report.json", "confusion.png", "confusion.json", "curves.png"},
    "all": {"styles", "emotion.keras", "emotion.train"},
}
_PREVIEW = re.compile(r"^step_\d{7}\.png$")
_SHOW = 6


def _inside(path: Path, folder: Path) -> bool:
    """Whether ``path`` is ``folder`` or under it (both resolved)."""
    p, f = path.resolve(), folder.resolve()
    return p == f or f in p.parents


def _own_entry(work: Path, name: str, kind: str) -> bool:
    """Whether ``work/name`` is something a run of ``kind`` writes there (a folder work marker's contents included)."""
    p = work / name
    if TEMP_NAME.match(name):
        return p.is_file() and not p.is_symlink()  # an atomic write's temporary file
    if name not in WORK_NAMES[kind] or p.is_symlink():
        return False
    if name == "previews":
        return p.is_dir() and all(_PREVIEW.match(q.name) or TEMP_NAME.match(q.name) for q in p.iterdir())
    if kind == "all" and name == "styles":
        return p.is_dir() and all(q.suffix == ".pth" or q.suffix == ".train" or TEMP_NAME.match(q.name)
                                  for q in p.iterdir())
    if kind == "all" and name == "emotion.train":
        return p.is_dir() and all(_own_entry(p, q.name, "classifier") for q in p.iterdir())
    return True


def check_work(work: Path, kind: str, data: Sequence[Path] = ()) -> None:
    """Refuse a work folder that is not the tool's own, or that sits inside (or holds) a data folder."""
    for folder in data:
        if _inside(work, folder):
            raise TrainingError(
                f"The work folder {work} is inside the data folder {folder}, which is read recursively: its previews "
                "and plots would become training data of the next run." + note("--work outside the data folders", work))
        if _inside(folder, work):
            raise TrainingError(f"The work folder {work} holds the data folder {folder}; it is not the tool's to write "
                                "into." + note("--work of its own (default: the output's name + .train)", work))
    if work.is_symlink() or work.exists() and not work.is_dir():
        raise TrainingError(f"The work folder {work} exists and is not a folder." + note("a folder path", "a file"))
    if not work.is_dir() or (work / MARKER).is_file():
        return
    foreign = sorted(p.name for p in work.iterdir() if not _own_entry(work, p.name, kind))
    if foreign:
        shown = ", ".join(foreign[:_SHOW]) + (f" and {len(foreign) - _SHOW} more" if len(foreign) > _SHOW else "")
        raise TrainingError(
            f"The work folder {work} holds files that emostyle-train did not write ({shown}); a run writes "
            "checkpoints, previews and reports there and would mix with them. Pick another --work."
            + note("a new or empty folder, or one made by emostyle-train", shown))


def mark_work(work: Path, kind: str, output: Path) -> None:
    """Create ``work`` (when missing) and its marker: from now on it is the tool's own."""
    work.mkdir(parents=True, exist_ok=True)
    if not (work / MARKER).is_file():
        write_bytes_atomic(work / MARKER, (json.dumps({"tool": "emostyle-train", "kind": kind,
                                                       "output": str(Path(output).resolve())}) + "\n").encode())


def check_output(output: Path, force: bool, inputs: Iterable[Path], data: Sequence[Path] = ()) -> None:
    """``-o``: never an input (even with --force), an existing file only with --force, not inside a data folder."""
    check_output_file(output, force, inputs, label="Output")
    for folder in data:
        if _inside(output, folder):
            raise TrainingError(f"Output {output} is inside the data folder {folder}, which is read recursively."
                                + note("-o outside the data folders", output))


def made_by(work: Path) -> Path | None:
    """The output whose run made the work folder ``work`` (from its marker), or None."""
    try:
        data = json.loads((work / MARKER).read_text(encoding="utf-8"))
        return Path(data["output"]) if isinstance(data, dict) and isinstance(data.get("output"), str) else None
    except (OSError, ValueError, KeyError):
        return None


def check_run(output: Path, force: bool, inputs: Iterable[Path], data: Sequence[Path], work: Path, kind: str,
              resume: bool = False) -> None:
    """Every rule of one training run's outputs (``-o`` and its work folder), before any work.

    ``resume``: an existing ``-o`` written by the run whose work folder this is (its marker says so) is that
    run's own, and a resumed run replaces it without --force.
    """
    ours = resume and output.exists() and made_by(work) == output.resolve()
    check_output(output, force or ours, inputs, data)
    check_work(work, kind, data)
    if _inside(output.parent, work) and output.parent.resolve() == work.resolve() and output.name in WORK_NAMES[kind]:
        raise TrainingError(f"Output {output} is a file the run writes into its work folder {work}."
                            + note(f"-o under another name than {', '.join(sorted(WORK_NAMES[kind]))}", output.name))


def marked_folders(root: Path) -> list[Path]:
    """Work folders of emostyle-train under ``root`` (they hold :data:`MARKER`): never read as data."""
    return sorted(m.parent for m in Path(root).rglob(MARKER) if m.is_file())


def without_work_folders(files: Iterable[Path], root: Path) -> list[Path]:
    """``files`` less those inside emostyle-train work folders under ``root``."""
    marked = marked_folders(root)
    return [f for f in files if not any(w in f.parents for w in marked)]


def clean_partials(folder: Path, stem: str) -> None:
    """Remove ``.<stem>.partial-<pid>[-<token>].keras`` files of killed classifier runs in ``folder`` (pid gone)."""
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return
    for e in entries:
        m = work_match(e.name, stem, kinds=("partial",), suffix=".keras", token=False)
        if m and e.is_file(follow_symlinks=False) and not pid_alive(int(m["pid"])):
            os.unlink(e.path)
