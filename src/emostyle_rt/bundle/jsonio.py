"""The bundle format's JSON reader and its one policy for unknown keys.

Policy: an object the runtime acts on (the classifier, a style, ``style_input``,
a crop, the face detector, a tiled graph, an engine entry, an engine sidecar)
holds only the keys this release knows. An unknown key is a :class:`BundleError`
naming the key, the file and the allowed keys: a key the runtime skipped could
change what the bundle means (a crop turned, a plan built another way), and a
user would rather hear so than get other emotions. What a newer writer must add
is announced by ``format_version``. Records the runtime keeps but never acts on
hold anything and are written back as read: ``source``, ``parity``, ``tools``,
an FP16 block's check report, and the manifest's top level, where tools add
their own blocks (``emostyle-train`` writes ``training``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Collection, Mapping

from ..errors import BundleError, note


def read_json_object(path: str | Path, what: str) -> dict[str, Any]:
    """A JSON file that must hold an object (a manifest, a sidecar).

    Args:
        path: The file to read.
        what: How errors name it ("Manifest", "Engine sidecar").

    Returns:
        The object, as a dict.

    Raises:
        BundleError: The file cannot be read, is not JSON or holds no object.
    """
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{what} {path} cannot be read as JSON: {exc}.") from exc
    if not isinstance(data, dict):
        raise BundleError(f"{what} {path} is not a JSON object.")
    return data


def unknown_keys_problem(data: Mapping[str, Any], known: Collection[str], where: str) -> str | None:
    """The policy's sentence about ``data``'s unknown keys, or None when it holds only ``known`` ones.

    Args:
        data: The JSON object.
        known: The keys this release reads in it.
        where: The object's place, e.g. ``classifier.crop`` or ``TensorRT engine sidecar``.
    """
    unknown = sorted(map(str, set(data) - set(known)))
    if not unknown:
        return None
    return (f"{where} has fields this emostyle-rt does not know: {unknown}."
            + note(f"only the fields {sorted(known)}", f"unknown {unknown}"))


def check_keys(data: Mapping[str, Any], known: Collection[str], where: str, source: str | Path | None = None) -> None:
    """Apply the unknown-key policy to one object.

    Args:
        data: The JSON object.
        known: The keys this release reads in it.
        where: The object's place in its file, e.g. ``classifier.crop``.
        source: The file (``manifest.json``, a sidecar), named first in the error.

    Raises:
        BundleError: ``data`` has a key outside ``known``, naming it, the file and the allowed keys.
    """
    problem = unknown_keys_problem(data, known, where)
    if problem:
        raise BundleError(f"{source}: {problem}" if source is not None else problem[0].upper() + problem[1:])


class StrictObject:
    """Strict reading of one JSON object: typed fields, known keys only, errors naming the file and field.

    Args:
        data: The object.
        where: Its place in the file, e.g. ``detector.pyramid``.
        source: The file, e.g. the manifest's path.
        known: The keys it may hold (the unknown-key policy).
    """

    def __init__(self, data: Any, where: str, source: str | Path, known: Collection[str]) -> None:
        if not isinstance(data, Mapping):
            raise BundleError(f"Manifest {source}: {where} has the wrong type." + note("an object", type(data).__name__))
        check_keys(data, known, where, f"Manifest {source}")
        self.data, self.where, self.source = data, where, source

    def bad(self, key: str, expected: str) -> BundleError:
        """The error for ``key``'s value (missing, or not ``expected``)."""
        return BundleError(f"Manifest {self.source}: {self.where}.{key} is not valid."
                           + note(expected, repr(self.data.get(key, "<missing>"))[:80]))

    def get(self, key: str, kind: type | tuple[type, ...], expected: str, ok: Any = None) -> Any:
        """``key``'s value if it has type ``kind`` (a bool only where ``kind`` is bool) and passes ``ok``."""
        value = self.data.get(key)
        wrong_bool = isinstance(value, bool) and kind is not bool
        if key not in self.data or wrong_bool or not isinstance(value, kind) or (ok is not None and not ok(value)):
            raise self.bad(key, expected)
        return value

    def number(self, key: str, lo: float, hi: float, *, open_lo: bool = False) -> float:
        """``key``'s finite number in ``lo..hi`` (``lo`` excluded with ``open_lo``)."""
        def ok(v: Any) -> bool:
            return math.isfinite(v) and (lo < v if open_lo else lo <= v) and v <= hi
        return float(self.get(key, (int, float), f"a number {'>' if open_lo else '>='} {lo:g} and <= {hi:g}", ok))

    def choice(self, key: str, choices: tuple[str, ...]) -> str:
        """``key``'s value, one of ``choices``."""
        return self.get(key, str, f"one of {list(choices)}", lambda v: v in choices)

    def block(self, key: str, known: Collection[str]) -> StrictObject:
        """The object under ``key``, read strictly with its own ``known`` keys."""
        if key not in self.data:
            raise self.bad(key, "an object")
        return StrictObject(self.data[key], f"{self.where}.{key}", self.source, known)
