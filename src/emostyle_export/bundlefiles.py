"""What in a folder is an emostyle bundle's own, and how new files reach a bundle without touching anything else.

Two rules, one owner:

- **Replacing a bundle** (``emostyle-export -o DIR --force``): only a folder
  whose ``manifest.json`` parses as an emostyle bundle, and only when every
  path in it is the bundle's own (:func:`foreign_paths`): a file its manifest
  names, or a leftover of an emostyle-export killed earlier. A web app's
  ``manifest.json``, or a bundle folder that also holds the user's files, is
  refused. The old bundle's own files are then removed, and nothing else.
- **Adding to a bundle** (``emostyle-export --bundle DIR --fp16/--tiled/...``):
  the new files are made in a :class:`Stage`, a hidden folder inside the
  bundle (``.emostyle-stage-<pid>-<token>``) that mirrors the bundle's own
  files by hard links. :meth:`Stage.commit` moves what is new into place,
  never over a path the old manifest does not name, and writes the manifest
  last (the commit point). A journal written before the first move lets
  :func:`recover` finish or undo a commit that a kill cut short, and a killed
  run's stage (pid gone) is removed whole: nothing of a killed run stays.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

from emostyle_rt.errors import BundleError, note
from emostyle_rt.bundle.files import sha256_problem
from emostyle_rt.bundle.jsonio import read_json_object
from emostyle_rt.bundle.manifest import MANIFEST_NAME, bundle_files, load_manifest
from emostyle_rt.fsutil import (  # the staging folder of ``--bundle`` and the build folders of ``--aoti``: fsutil's
    STAGE_NAME,
    TEMP_NAME,
    make_work_folder,
    pid_alive,
    sha256_file,
    work_match,
    write_bytes_atomic,
)

from .errors import ExportError

log = logging.getLogger("emostyle_export")

JOURNAL = "journal.json"
BACKUP = "replaced"
#: Folders a bundle may hold even when empty (a build removed what was in them).
BUNDLE_DIRS = ("styles", "detector", "trt", "aoti")
_SHOW = 8  # foreign paths named in a message


@contextlib.contextmanager
def quiet_manifest() -> Iterator[None]:
    """Parse a manifest without its notices (demo weights, no crop spec): here it is only being identified."""
    logger = logging.getLogger("emostyle_rt.manifest")
    old, logger.disabled = logger.disabled, True
    try:
        yield
    finally:
        logger.disabled = old


def read_bundle_manifest(folder: Path) -> dict[str, Any]:
    """The raw manifest of ``folder`` when it parses as an emostyle bundle's; BundleError saying why otherwise."""
    with quiet_manifest():
        load_manifest(folder, verify_files=False)
    return read_json_object(folder / MANIFEST_NAME, "Manifest")


def _dead_leftover(rel: str, folder: Path) -> bool:
    """A hidden file or folder a killed emostyle-export left: our exact names, the writer's pid gone."""
    name = Path(rel).name
    m = STAGE_NAME.match(name) or TEMP_NAME.match(name)
    if m is None and Path(rel).parent.as_posix() == "aoti":
        m = work_match(name)  # a build folder of --aoti inside aoti/ (see emostyle_export.aoti)
    if m is None or pid_alive(int(m["pid"])):
        return False
    p = folder / rel
    return not p.is_symlink() and (p.is_dir() if STAGE_NAME.match(name) or work_match(name) else p.is_file())


def foreign_paths(folder: Path, raw: Mapping[str, Any]) -> list[str]:
    """Paths under ``folder`` (relative, sorted) that are not the bundle's own.

    Own: the files the manifest names (:func:`emostyle_rt.manifest.bundle_files`),
    the folders holding them, the bundle's usual folders (styles, detector, trt,
    aoti and the arch folders under trt and aoti), and leftovers of killed
    exports (our exact hidden names, the writer gone). Anything else (a link, a
    user's file, an unknown folder, even an empty one) is foreign.
    """
    own = bundle_files(raw)
    dirs = {q.as_posix() for f in own for q in Path(f).parents if q != Path(".")} | set(BUNDLE_DIRS)
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(folder):
        here = Path(dirpath)
        keep = []
        for name in sorted(dirnames):
            rel = (here / name).relative_to(folder).as_posix()
            if (here / name).is_symlink():
                found.append(rel)
            elif _dead_leftover(rel, folder):
                continue  # ours, whole
            elif rel in dirs or Path(rel).parent.as_posix() in ("trt", "aoti"):
                keep.append(name)
            else:
                found.append(rel)
        dirnames[:] = keep
        for name in sorted(filenames):
            rel = (here / name).relative_to(folder).as_posix()
            if (here / name).is_symlink() or not (here / name).is_file():
                found.append(rel)
            elif rel not in own and not _dead_leftover(rel, folder):
                found.append(rel)
    return sorted(found)


def _listing(paths: list[str]) -> str:
    shown = ", ".join(paths[:_SHOW])
    return shown + (f" and {len(paths) - _SHOW} more" if len(paths) > _SHOW else "")


def check_replaceable(dest: Path) -> None:
    """``--force``: refuse ``dest`` unless it is an empty folder or a bundle holding only its own files."""
    if dest.is_symlink() or not dest.is_dir():
        raise ExportError(
            f"{dest} exists and is not an emostyle bundle; --force only replaces bundles, never other files."
            + note(f"a bundle folder (its {MANIFEST_NAME} written by emostyle-export) or an empty folder",
                   "a link" if dest.is_symlink() else "a file"))
    if not any(dest.iterdir()):
        return
    try:
        raw = read_bundle_manifest(dest)
    except BundleError as exc:
        raise ExportError(
            f"{dest} exists and is not an emostyle bundle ({exc}); --force only replaces bundles, never other "
            "folders. Pick another -o, or move that folder away yourself."
            + note(f"a bundle folder (its {MANIFEST_NAME} written by emostyle-export) or an empty folder",
                   "a folder whose manifest is not a bundle's" if (dest / MANIFEST_NAME).exists()
                   else f"a folder without {MANIFEST_NAME}")) from None
    foreign = foreign_paths(dest, raw)
    if foreign:
        raise ExportError(
            f"Bundle {dest} also holds {len(foreign)} path(s) that are not the bundle's (its manifest does not name "
            f"them): {_listing(foreign)}. --force replaces only a bundle's own files, and it cannot replace the "
            "folder without losing these. Move them out of it, or pick another -o."
            + note("a bundle holding only the files its manifest names", _listing(foreign)))


def remove_own(folder: Path, raw: Mapping[str, Any] | None = None) -> list[str]:
    """Remove the bundle's own files from ``folder`` (and the folder when it ends up empty); what was kept.

    ``raw``: the manifest that names them (default: the folder's own). Without a
    readable manifest nothing is removed.
    """
    if folder.is_dir() and not folder.is_symlink() and not any(folder.iterdir()):
        folder.rmdir()
        return []
    if raw is None:
        try:
            raw = read_bundle_manifest(folder)
        except BundleError:
            return ["(no readable manifest)"]
    foreign = set(foreign_paths(folder, raw))
    own = bundle_files(raw)
    for rel in sorted(own - {MANIFEST_NAME}) + [MANIFEST_NAME]:  # the manifest last: a cut-short removal
        p = folder / rel                                          # stays recognisable
        if p.is_file() and not p.is_symlink():
            p.unlink()
    for entry in list(folder.rglob("*")) if folder.is_dir() else []:
        rel = entry.relative_to(folder).as_posix()
        if rel not in foreign and entry.exists() and _dead_leftover(rel, folder):
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
    _prune(folder, keep=foreign)
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")) if folder.exists() else []


def _prune(folder: Path, keep: set[str]) -> None:
    """Remove empty folders under ``folder`` (deepest first; not those in ``keep``) and ``folder`` when empty."""
    if not folder.is_dir():
        return
    for dirpath, _, _ in sorted(os.walk(folder), key=lambda w: -len(w[0])):
        rel = Path(dirpath).relative_to(folder).as_posix()
        if rel in keep:
            continue
        with contextlib.suppress(OSError):
            os.rmdir(dirpath)  # only empty ones go


def check_targets(bundle: Path, raw: Mapping[str, Any], targets: Iterable[str]) -> None:
    """Before any work: each path a --bundle addition will write must be free or one of the bundle's own.

    A target folder (``styles/<id>.tiled``) must hold only own files.
    """
    own = bundle_files(raw)
    blocked = []
    for rel in targets:
        p = bundle / rel
        for q in [*reversed(Path(rel).parents[:-1]), Path(rel)]:
            at = bundle / q
            if at.is_symlink() or (at.exists() and q != Path(rel) and not at.is_dir()):
                blocked.append(q.as_posix())
                break
        else:
            if p.is_dir():
                for sub in sorted(p.rglob("*")):
                    full = f"{rel}/{sub.relative_to(p).as_posix()}"
                    if sub.is_symlink() or (full not in own if not sub.is_dir()
                                            else not any(o.startswith(full + "/") for o in own)):
                        blocked.append(full)
            elif p.exists() and (rel not in own or not p.is_file()):
                blocked.append(rel)
    if blocked:
        raise ExportError(
            f"Bundle {bundle}: {_listing(sorted(set(blocked)))} stand(s) where this addition writes, and its manifest "
            "does not name them (yours, or left by an emostyle-export older than this one that was killed); they are "
            "not written over. Move or delete them, then rerun." + note("free paths or the bundle's own files",
                                                                        _listing(sorted(set(blocked)))))


def _journal_files(stage: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((stage / JOURNAL).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _same(path: Path, digest: str) -> bool:
    return not path.is_symlink() and sha256_problem(path, digest) is None


def _finish_drops(bundle: Path, drops: Mapping[str, str]) -> None:
    """Remove own files that the committed manifest no longer names (when they are still what was recorded)."""
    for rel, digest in drops.items():
        p = bundle / rel
        if _same(p, digest):
            p.unlink()
            parent = p.parent
            while parent != bundle:
                with contextlib.suppress(OSError):
                    parent.rmdir()
                parent = parent.parent


def recover(bundle: Path) -> None:
    """Finish or undo what killed ``--bundle`` runs left: their stages (pid gone) are removed.

    A stage with a journal was cut short while committing: when the bundle's
    manifest is the journal's new one the commit stands (dropped files are
    removed); otherwise every file it moved in (same sha256 as recorded, so
    provably ours) goes and the file it replaced comes back.
    """
    if not bundle.is_dir():
        return
    for stage in bundle.iterdir():
        m = STAGE_NAME.match(stage.name)
        if not m or stage.is_symlink() or not stage.is_dir() or pid_alive(int(m["pid"])):
            continue
        journal = _journal_files(stage)
        if journal is not None:
            manifest = bundle / MANIFEST_NAME
            if _same(manifest, str(journal.get("manifest_sha256"))):
                _finish_drops(bundle, journal.get("drop", {}))
            else:
                _undo(bundle, stage, journal)
                log.info("undid the unfinished commit of an interrupted emostyle-export in %s", bundle)
        log.info("removing %s left by an interrupted emostyle-export", stage)
        shutil.rmtree(stage, ignore_errors=True)


def _undo(bundle: Path, stage: Path, journal: Mapping[str, Any]) -> None:
    """Take back a commit that did not reach its manifest: files moved in go (only when they are still what the
    journal recorded), the files they replaced come back, folders the commit made and left empty go."""
    for rel, digest in journal.get("files", {}).items():
        final, backup = bundle / rel, stage / BACKUP / rel
        if _same(final, digest):
            final.unlink()
        if backup.is_file() and not final.exists():
            os.replace(backup, final)
    for rel in journal.get("dirs", []):
        with contextlib.suppress(OSError):
            (bundle / rel).rmdir()


class Stage:
    """A hidden work folder inside ``bundle`` holding hard links (copies where links fail) of its own files.

    Build steps take :attr:`root` as the bundle: they read the mirrored files and
    write new ones there (always by rename, so a mirrored file is never changed
    in place). :meth:`commit` publishes what is new; :meth:`discard` removes the
    stage (a failed or interrupted run leaves the bundle as it was).
    """

    def __init__(self, bundle: Path, raw: Mapping[str, Any]) -> None:
        self.bundle, self.raw = bundle, raw
        self.root = make_work_folder(bundle)
        self._mirrored: dict[str, tuple[int, int]] = {}
        try:
            for rel in sorted(bundle_files(raw) - {MANIFEST_NAME}):
                src = bundle / rel
                if not src.is_file() or src.is_symlink():
                    continue
                dst = self.root / rel
                dst.parent.mkdir(parents=True, exist_ok=True)
                try:
                    os.link(src, dst)
                except OSError:
                    shutil.copy2(src, dst)
                st = dst.stat()
                self._mirrored[rel] = (st.st_dev, st.st_ino)
        except BaseException:
            self.discard()
            raise

    def new_files(self) -> list[str]:
        """Files in the stage that the build made or replaced (relative, sorted)."""
        out = []
        for p in self.root.rglob("*"):
            rel = p.relative_to(self.root).as_posix()
            if rel == JOURNAL or rel.startswith(BACKUP + "/") or p.is_symlink() or not p.is_file():
                continue
            if TEMP_NAME.match(p.name):
                continue  # a writer's temporary file (a failed write removes its own)
            st = p.stat()
            if self._mirrored.get(rel) != (st.st_dev, st.st_ino):
                out.append(rel)
        return sorted(out)

    def commit(self, manifest: Any) -> list[str]:
        """Move the new files into the bundle, then write ``manifest`` (a Manifest) there; the files moved."""
        new = self.new_files()
        own = bundle_files(self.raw)
        check_targets(self.bundle, self.raw, new)  # nothing foreign appeared meanwhile
        data = manifest.to_json()
        new_raw = json.loads(json.dumps(data))
        drop = sorted(own - bundle_files(new_raw) - set(new))
        manifest_bytes = (json.dumps(data, indent=2) + "\n").encode()
        dirs = sorted({q.as_posix() for rel in new for q in Path(rel).parents
                       if q != Path(".") and not (self.bundle / q).exists()}, key=len, reverse=True)
        journal = {"manifest_sha256": _sha256_bytes(manifest_bytes),
                   "files": {rel: sha256_file(self.root / rel) for rel in new},
                   "drop": {rel: sha256_file(self.bundle / rel) for rel in drop if (self.bundle / rel).is_file()},
                   "dirs": dirs}
        write_bytes_atomic(self.root / JOURNAL, json.dumps(journal, indent=1).encode())
        try:
            for rel in new:
                final = self.bundle / rel
                final.parent.mkdir(parents=True, exist_ok=True)
                if final.exists():
                    backup = self.root / BACKUP / rel
                    backup.parent.mkdir(parents=True, exist_ok=True)
                    os.replace(final, backup)
                os.replace(self.root / rel, final)
            write_bytes_atomic(self.bundle / MANIFEST_NAME, manifest_bytes)  # the commit point
        except BaseException:
            _undo(self.bundle, self.root, journal)
            self.discard()
            raise
        _finish_drops(self.bundle, journal["drop"])
        self.discard()
        return new

    def discard(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def _sha256_bytes(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()
