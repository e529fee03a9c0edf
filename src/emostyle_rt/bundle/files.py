"""The path rule for every file a bundle names, and the one sha256 check.

Rule: a file the manifest names (``classifier.onnx``, a style graph, an
``onnx_fp16``, a tiled or detector graph, a TensorRT plan, an AOTInductor
package, their sidecars) lies inside the bundle, ever. Its name is relative,
has no ``..`` part and, once symlinks are followed, still lies under the bundle
root: a bundle cannot make a tool read or replace a file elsewhere.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

from ..errors import BundleError, note
from ..fsutil import sha256_file

EXPECTED = "a relative path inside the bundle (no absolute path, no '..')"


def inside_bundle(rel: object) -> bool:
    """Whether a name the manifest gives may name a bundle file: a non-empty relative path without ``..``.

    Args:
        rel: The name as the manifest writes it (any JSON value).
    """
    if not isinstance(rel, str) or not rel or "\\" in rel or "\0" in rel:
        return False
    p = PurePosixPath(rel)
    return not p.is_absolute() and not os.path.isabs(rel) and ".." not in p.parts


def check_name(rel: object, where: str, source: str | Path) -> str:
    """``rel`` if it may name a bundle file (see :func:`inside_bundle`).

    Args:
        rel: The name from the manifest.
        where: The field that gives it, e.g. ``styles.candy.onnx``.
        source: The manifest's path, named in the error.

    Raises:
        BundleError: ``rel`` is absolute, has a ``..`` part or is not a string.
    """
    if not inside_bundle(rel):
        raise BundleError(f"Manifest {source}: {where} is not valid: not a path inside the bundle."
                          + note(EXPECTED, repr(rel)))
    return rel  # type: ignore[return-value]


def bundle_path(root: str | Path, rel: str, where: str = "a file") -> Path:
    """The path of bundle file ``rel`` under ``root``, refused when it leaves the bundle.

    Args:
        root: The bundle folder.
        rel: The file's name, relative to the bundle.
        where: The manifest field that names it, for the error.

    Returns:
        ``root / rel`` (not resolved: messages keep the bundle's own spelling).

    Raises:
        BundleError: ``rel`` is absolute, has ``..`` or resolves (through a symlink) outside ``root``.
    """
    if not inside_bundle(rel):
        raise BundleError(f"Bundle {root}: {where} is not valid: not a path inside the bundle." + note(EXPECTED, repr(rel)))
    path = Path(root) / rel
    top = Path(root).resolve()
    real = path.resolve()
    if real != top and top not in real.parents:
        raise BundleError(f"Bundle {root}: {where} ({rel}) is a symlink that leads outside the bundle, to {real}."
                          + note("a file inside the bundle folder (copy it in)", str(real)))
    return path


def sha256_problem(path: str | Path, digest: object) -> str | None:
    """Why ``path`` does not hold the bytes a manifest or sidecar recorded, or None when it does.

    Args:
        path: The file.
        digest: The recorded hex sha256.
    """
    p = Path(path)
    if not p.is_file():
        return "missing"
    actual = sha256_file(p)
    return None if actual == digest else f"sha256 {actual[:16]}..., recorded {str(digest)[:16]}..."


def check_sha256(path: str | Path, digest: str, what: str = "Bundle file") -> None:
    """The one sha256 check: ``path`` must hold exactly the bytes recorded as ``digest``.

    Args:
        path: The file.
        digest: The recorded hex sha256.
        what: How the error names the file.

    Raises:
        BundleError: The file is missing, or its bytes differ (damaged, truncated or replaced).
    """
    p = Path(path)
    if not p.is_file():
        raise BundleError(f"{what} {p} is missing.")
    actual = sha256_file(p)
    if actual != digest:
        raise BundleError(f"{what} {p} does not match its manifest (damaged, truncated or replaced)."
                          + note(f"sha256 {digest[:16]}...", f"sha256 {actual[:16]}..."))
