"""The bundle manifest: the one place the runtime learns what a bundle holds.

A bundle is a folder written by ``emostyle-export``::

    manifest.json
    classifier.onnx
    styles/<style-id>.onnx
    trt/<arch-key>/...          (optional, TensorRT engines + sidecars)

Nothing is guessed from file names or tensor shapes: labels, the classifier's
input spec, which style serves which emotion and the style graphs' contract all
come from ``manifest.json`` (documented in ``engines/README.md``).
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from .errors import BundleError, note

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"

#: Label order of ExpW / FER2013 style datasets; the default classifier order.
EMOTIONS: tuple[str, ...] = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class ClassifierSpec:
    """The classifier graph: uint8 NHWC face crops in, probabilities out."""

    onnx: str
    sha256: str
    input_name: str
    output_name: str
    height: int
    width: int
    channels: int  # 3 (RGB) or 1 (grey)
    scale: str  # pixel scaling baked into the graph: "0..1", "-1..1" or "0..255"
    parity: Mapping[str, Any] = field(default_factory=dict)

    @property
    def color(self) -> str:
        return "RGB" if self.channels == 3 else "GRAY"


@dataclass(frozen=True)
class StyleSpec:
    """One style graph: uint8 NHWC RGB in, uint8 NHWC RGB out (same padded size)."""

    style_id: str
    onnx: str
    sha256: str
    input_name: str
    output_name: str
    convention: str  # the source checkpoint's convention, baked into the graph
    parity: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Manifest:
    """A parsed, validated ``manifest.json``."""

    root: Path
    format_version: int
    demo: bool
    labels: tuple[str, ...]
    classifier: ClassifierSpec
    styles: Mapping[str, StyleSpec]  # style id -> spec
    emotions: Mapping[str, str]  # emotion -> style id
    size_multiple: int
    min_side: int
    raw: Mapping[str, Any] = field(repr=False, default_factory=dict)

    def style_for(self, emotion: str) -> StyleSpec:
        """The style spec serving ``emotion``; a typed error for unknown names."""
        try:
            return self.styles[self.emotions[emotion]]
        except KeyError:
            raise BundleError(
                f"No style for emotion {emotion!r} in bundle {self.root}."
                + note("one of the bundle's emotions", sorted(self.emotions))
            ) from None

    def path(self, relative: str) -> Path:
        return self.root / relative


def _get(d: Mapping[str, Any], key: str, where: str, kind: type | tuple[type, ...]) -> Any:
    if not isinstance(d, Mapping) or key not in d:
        raise BundleError(f"Manifest is missing {where}.{key}.")
    value = d[key]
    if not isinstance(value, kind) or isinstance(value, bool) and kind is int:
        raise BundleError(
            f"Manifest field {where}.{key} has the wrong type."
            + note(getattr(kind, "__name__", str(kind)), type(value).__name__)
        )
    return value


#: Largest value a manifest may give for a tensor side or size multiple.
MAX_SIDE = 4096


def _side(value: int, where: str, mpath: Path) -> int:
    """A tensor side or multiple from the manifest: 1..MAX_SIDE, or a typed error."""
    if not 1 <= value <= MAX_SIDE:
        raise BundleError(f"Manifest {mpath}: {where} is out of range." + note(f"1..{MAX_SIDE}", value))
    return value


def read_json_object(path: Path, what: str) -> dict[str, Any]:
    """A JSON file that must hold an object; :class:`BundleError` naming ``what`` otherwise."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{what} {path} cannot be read as JSON: {exc}.") from exc
    if not isinstance(data, dict):
        raise BundleError(f"{what} {path} is not a JSON object.")
    return data


def load_manifest(bundle: str | Path, *, verify_files: bool = True) -> Manifest:
    """Read and validate a bundle's manifest.

    With ``verify_files`` every ONNX file the manifest names must exist and match
    its recorded sha256, so a damaged bundle fails when it is opened, not on the
    hundredth image.
    """
    root = Path(bundle)
    mpath = root / MANIFEST_NAME
    if not root.is_dir():
        raise BundleError(f"Bundle folder {root} does not exist or is not a folder.")
    if not mpath.is_file():
        raise BundleError(
            f"Bundle {root} has no {MANIFEST_NAME}; it was not written by emostyle-export."
            + note(MANIFEST_NAME, sorted(p.name for p in root.iterdir())[:20])
        )
    raw = read_json_object(mpath, "Manifest")

    version = _get(raw, "format_version", "manifest", int)
    if version != FORMAT_VERSION:
        raise BundleError(
            f"Manifest {mpath} has format version {version}, which this emostyle-rt cannot read"
            + (" (made by a newer release; upgrade emostyle-rt)." if version > FORMAT_VERSION else ".")
            + note(f"format_version {FORMAT_VERSION}", version)
        )

    labels = tuple(_get(raw, "labels", "manifest", list))
    if not all(isinstance(label, str) for label in labels) or sorted(labels) != sorted(EMOTIONS):
        raise BundleError(
            f"Manifest {mpath} labels {list(labels)} are not the seven emotions."
            + note(f"a permutation of {list(EMOTIONS)}", list(labels))
        )

    c = _get(raw, "classifier", "manifest", dict)
    cin = _get(c, "input", "classifier", dict)
    cout = _get(c, "output", "classifier", dict)
    n_out = _get(cout, "classes", "classifier.output", int)
    if n_out != len(labels):
        raise BundleError(
            f"Manifest {mpath}: the classifier has {n_out} outputs but {len(labels)} labels."
            + note(f"{len(labels)} outputs", n_out)
        )
    channels = _get(cin, "channels", "classifier.input", int)
    if channels not in (1, 3):
        raise BundleError(f"Manifest {mpath}: classifier input channels must be 1 or 3." + note("1 or 3", channels))
    classifier = ClassifierSpec(
        onnx=_get(c, "onnx", "classifier", str),
        sha256=_get(c, "sha256", "classifier", str),
        input_name=_get(cin, "name", "classifier.input", str),
        output_name=_get(cout, "name", "classifier.output", str),
        height=_side(_get(cin, "height", "classifier.input", int), "classifier.input.height", mpath),
        width=_side(_get(cin, "width", "classifier.input", int), "classifier.input.width", mpath),
        channels=channels,
        scale=_get(c, "scale", "classifier", str),
        parity=c.get("parity", {}),
    )

    sin = _get(raw, "style_input", "manifest", dict)
    styles: dict[str, StyleSpec] = {}
    for sid, s in _get(raw, "styles", "manifest", dict).items():
        where = f"styles.{sid}"
        styles[sid] = StyleSpec(
            style_id=sid,
            onnx=_get(s, "onnx", where, str),
            sha256=_get(s, "sha256", where, str),
            input_name=_get(sin, "name", "style_input", str),
            output_name=_get(sin, "output_name", "style_input", str),
            convention=_get(s, "convention", where, str),
            parity=s.get("parity", {}),
        )

    emotions = dict(_get(raw, "emotions", "manifest", dict))
    missing = [e for e in labels if e not in emotions]
    if missing:
        raise BundleError(
            f"Manifest {mpath} has no style for {missing}; every emotion needs one."
            + note(list(labels), sorted(emotions))
        )
    for emotion, sid in emotions.items():
        if not isinstance(sid, str) or sid not in styles:
            raise BundleError(
                f"Manifest {mpath}: emotion {emotion!r} points at style {sid!r}, which is not in 'styles'."
                + note("a style id", sorted(styles))
            )

    manifest = Manifest(
        root=root,
        format_version=version,
        demo=bool(raw.get("demo", False)),
        labels=labels,
        classifier=classifier,
        styles=styles,
        emotions=emotions,
        size_multiple=_side(_get(sin, "size_multiple", "style_input", int), "style_input.size_multiple", mpath),
        min_side=_side(_get(sin, "min_side", "style_input", int), "style_input.min_side", mpath),
        raw=raw,
    )
    if manifest.demo:
        log.warning("Bundle %s holds UNTRAINED demo weights: emotions and styles are not meaningful.", root)
    if verify_files:
        verify_bundle_files(manifest)
    return manifest


def verify_bundle_files(manifest: Manifest) -> None:
    """Check that every ONNX file exists and matches its recorded sha256."""
    entries = [(manifest.classifier.onnx, manifest.classifier.sha256)]
    entries += [(s.onnx, s.sha256) for s in manifest.styles.values()]
    for rel, digest in entries:
        p = manifest.path(rel)
        if not p.is_file():
            raise BundleError(f"Bundle {manifest.root} is missing {rel}, named in its manifest.")
        actual = sha256_file(p)
        if actual != digest:
            raise BundleError(
                f"Bundle file {p} does not match its manifest (damaged, truncated or replaced)."
                + note(f"sha256 {digest[:16]}...", f"sha256 {actual[:16]}...")
            )
