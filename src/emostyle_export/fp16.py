"""Mixed-precision FP16 variants of the bundle's graphs, verified on CPU.

TensorRT 11 builds strongly typed networks only, so the precision decision is
made in the ONNX graph: weights and activations in fp16, with fp32 islands
where fp16 breaks. The conversion itself is onnxconverter-common's
``convert_float_to_float16`` (``keep_io_types``, an op block list); two small
fix-ups follow for what it leaves inconsistent (``Cast`` nodes that produce
the graph's first float tensor keep ``to=FLOAT``; ``Resize`` scales must stay
float32).

Verification runs on CPU without fp16 kernels: :func:`fp16_emulation` turns
the fp16 graph back into an fp32 graph that rounds every fp16 tensor to fp16
(Cast to fp16 and back) right after the node that produces it, which is what a
GPU does (fp32 accumulation, fp16 storage). onnxruntime runs that graph at fp32
speed; the rounding, the overflow to inf and the fp32 islands are all kept.
Every fp16 tensor's largest magnitude is reported, so headroom is measured, not
hoped for.
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Sequence

import numpy as np

from emostyle_rt import metrics
from emostyle_rt.errors import note
from emostyle_rt.fsutil import write_bytes_atomic
from emostyle_rt.imaging.io import pad_to_multiple
from emostyle_rt.manifest import STYLE_SIZE_MULTIPLE, sha256_file

from .errors import ExportError, ParityError
from .parity import ASTRONAUT_FACE, astronaut

if TYPE_CHECKING:  # pragma: no cover
    import onnx

log = logging.getLogger(__name__)

Kind = Literal["style", "classifier"]

FP16_MAX = 65504.0
#: Op types computed in fp32 per graph kind (on top of onnxconverter-common's
#: default block list, minus Resize/Upsample, which are exact in fp16).
KEEP_FP32: dict[str, tuple[str, ...]] = {
    # Variance of 0..255-scale activations overflows fp16; statistics stay fp32.
    "style": ("InstanceNormalization",),
    # Cheap, and probabilities are the graph's float32 output anyway.
    "classifier": ("Softmax",),
}
#: Ops whose extra inputs must stay float32 in any graph: (op type, input index).
_FLOAT32_ONLY_INPUTS = {("Resize", 2), ("Upsample", 1)}
#: Ops that reduce internally; the emulator computes their internals in fp32.
_EMULATED_IN_FP32 = {"InstanceNormalization", "LayerNormalization", "Softmax", "ReduceMean",
                     "ReduceSum", "ReduceSumSquare", "ReduceL2", "GlobalAveragePool", "AveragePool"}
MIN_PSNR_DB = metrics.MIN_PSNR_DB
PSNR_CAP_DB = metrics.PSNR_CAP_DB  # reported for identical outputs (JSON has no inf)


@dataclass(frozen=True)
class ImageCheck:
    """One verification input: FP16 graph vs FP32 graph."""

    name: str
    shape: tuple[int, ...]
    max_abs_diff: float
    psnr_db: float | None  # style graphs: on the uint8 0..255 output
    top1_fp32: tuple[int, ...] | None  # classifier graphs
    top1_fp16: tuple[int, ...] | None
    finite: bool  # every fp16 tensor and every output finite
    max_abs_activation: float  # largest |value| of any fp16 tensor


@dataclass(frozen=True)
class Fp16Report:
    """What :func:`make_fp16` did and measured; :meth:`to_manifest` gives the JSON."""

    kind: str
    onnx_fp16: str
    sha256: str  # of the fp16 ONNX
    source_sha256: str  # of the fp32 ONNX it was made from
    converter: str
    fp32_ops: tuple[str, ...]  # op types computed in fp32 (Cast, Constant and shape ops excluded)
    fp32_nodes: tuple[str, ...]
    fp16_node_count: int
    cast_count: int
    evaluator: str
    checks: tuple[ImageCheck, ...]
    min_psnr_db: float | None
    tolerance_db: float | None
    top1_agree: bool | None
    max_abs_activation: float
    max_abs_activation_tensor: str
    seconds: float

    @property
    def passed(self) -> bool:
        ok = all(c.finite for c in self.checks)
        if self.kind == "style":
            ok = ok and self.min_psnr_db is not None and self.min_psnr_db >= (self.tolerance_db or MIN_PSNR_DB)
        else:
            ok = ok and bool(self.top1_agree)
        return ok

    def to_manifest(self) -> dict[str, Any]:
        """The ``fp16`` block for a manifest entry (paths relative to the bundle are set by the caller)."""
        d = asdict(self)
        d["checks"] = [
            {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(c).items() if v is not None}
            for c in self.checks
        ]
        d["fp32_ops"], d["fp32_nodes"] = list(self.fp32_ops), list(self.fp32_nodes)
        d["fp16_headroom"] = round(FP16_MAX / self.max_abs_activation, 2) if self.max_abs_activation else None
        return {k: v for k, v in d.items() if v is not None}


# ---------------------------------------------------------------- conversion


def convert_fp16(
    model: "onnx.ModelProto",
    kind: Kind,
    *,
    keep_fp32_ops: Sequence[str] | None = None,
    keep_fp32_nodes: Sequence[str] = (),
) -> "onnx.ModelProto":
    """The mixed-precision fp16 graph of ``model`` (I/O types unchanged)."""
    import onnx
    from onnxconverter_common import float16

    if kind not in KEEP_FP32:
        raise ExportError(f"Unknown graph kind {kind!r} for the FP16 conversion." + note(sorted(KEEP_FP32), kind))
    extra = KEEP_FP32[kind] if keep_fp32_ops is None else tuple(keep_fp32_ops)
    block = [op for op in float16.DEFAULT_OP_BLOCK_LIST if op not in ("Resize", "Upsample")] + list(extra)
    model = _inline_initializer_identities(model)
    with warnings.catch_warnings():
        # "the float32 number 1e-9 will be truncated to 1e-07": tiny weights, harmless.
        warnings.simplefilter("ignore", UserWarning)
        m16 = float16.convert_float_to_float16(
            model, keep_io_types=True, op_block_list=block, node_block_list=list(keep_fp32_nodes)
        )
    _fix_casts(m16)
    _fix_float32_only_inputs(m16)
    _restore_output_types(model, m16)
    try:
        onnx.checker.check_model(m16)
        onnx.shape_inference.infer_shapes(m16, check_type=True, strict_mode=True)
    except Exception as exc:  # onnx raises several unrelated types here
        raise ExportError(f"The FP16 graph is not a valid ONNX model: {exc}") from exc
    return m16


def _inline_initializer_identities(model: "onnx.ModelProto") -> "onnx.ModelProto":
    """A copy of ``model`` with ``Identity(initializer)`` nodes replaced by initializer copies.

    The TorchScript exporter shares equal weights (e.g. InstanceNorm biases that
    are all zero) through Identity nodes; the fp16 converter then leaves those
    outputs typed float32 while their input became fp16, an invalid graph.
    """
    import onnx

    out = onnx.ModelProto()
    out.CopyFrom(model)
    inits = {t.name: t for t in out.graph.initializer}
    keep = []
    for node in out.graph.node:
        if node.op_type == "Identity" and node.input[0] in inits and node.output[0] not in inits:
            copy = onnx.TensorProto()
            copy.CopyFrom(inits[node.input[0]])
            copy.name = node.output[0]
            out.graph.initializer.append(copy)
            inits[copy.name] = copy
        else:
            keep.append(node)
    del out.graph.node[:]
    out.graph.node.extend(keep)
    return out


def _value_types(model: "onnx.ModelProto") -> dict[str, int]:
    g = model.graph
    types = {v.name: v.type.tensor_type.elem_type for v in [*g.value_info, *g.input, *g.output]}
    types.update({t.name: t.data_type for t in g.initializer})
    return types


def _fix_casts(model: "onnx.ModelProto") -> None:
    """Cast nodes the converter retyped in value_info but not in their ``to`` attribute."""
    from onnx import TensorProto

    types = _value_types(model)
    for node in model.graph.node:
        if node.op_type != "Cast" or types.get(node.output[0]) != TensorProto.FLOAT16:
            continue
        for attr in node.attribute:
            if attr.name == "to" and attr.i == TensorProto.FLOAT:
                attr.i = TensorProto.FLOAT16


def _restore_output_types(model32: "onnx.ModelProto", m16: "onnx.ModelProto") -> None:
    """keep_io_types misses outputs made by a blocked (fp32) node: it casts them to fp16."""
    from onnx import helper

    want = {o.name: o.type.tensor_type.elem_type for o in model32.graph.output}
    for out in m16.graph.output:
        t = want.get(out.name)
        if t is None or out.type.tensor_type.elem_type == t:
            continue
        producer = next(n for n in m16.graph.node if out.name in n.output)
        if producer.op_type == "Cast":
            for attr in producer.attribute:
                if attr.name == "to":
                    attr.i = t
        else:
            tmp = f"{out.name}__fp16"
            producer.output[list(producer.output).index(out.name)] = tmp
            m16.graph.node.append(helper.make_node("Cast", [tmp], [out.name], to=t, name=f"{out.name}__restore_type"))
        out.type.tensor_type.elem_type = t


def _fix_float32_only_inputs(model: "onnx.ModelProto") -> None:
    """Restore float32 for inputs the spec allows in float32 only (Resize scales)."""
    from onnx import TensorProto, numpy_helper

    g = model.graph
    consts = {n.output[0]: n for n in g.node if n.op_type == "Constant"}
    inits = {t.name: t for t in g.initializer}
    for node in g.node:
        for op, idx in _FLOAT32_ONLY_INPUTS:
            if node.op_type != op or len(node.input) <= idx or not node.input[idx]:
                continue
            name = node.input[idx]
            tensors = [a.t for a in consts[name].attribute if a.name == "value"] if name in consts else []
            tensors += [inits[name]] if name in inits else []
            for t in tensors:
                if t.data_type == TensorProto.FLOAT16:
                    t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float32), t.name))
            for v in g.value_info:
                if v.name == name:
                    v.type.tensor_type.elem_type = TensorProto.FLOAT


def precision_map(model: "onnx.ModelProto") -> dict[str, list[str]]:
    """Node names grouped by compute precision: ``fp16``, ``fp32``, ``cast``, ``other``.

    A node counts by the float type of its outputs; Cast and Constant nodes and
    nodes with no float output (shape arithmetic, uint8) are ``cast``/``other``.
    """
    import onnx
    from onnx import TensorProto

    types = _value_types(onnx.shape_inference.infer_shapes(model))
    out: dict[str, list[str]] = {"fp16": [], "fp32": [], "cast": [], "other": []}
    for i, node in enumerate(model.graph.node):
        name = node.name or f"{node.op_type}_{i}"
        ts = {types.get(o) for o in node.output}
        if node.op_type == "Cast":
            out["cast"].append(name)
        elif node.op_type == "Constant":
            out["other"].append(name)
        elif TensorProto.FLOAT16 in ts:
            out["fp16"].append(name)
        elif TensorProto.FLOAT in ts:
            out["fp32"].append(name)
        else:
            out["other"].append(name)
    return out


# ---------------------------------------------------------------- CPU evaluation


def fp16_emulation(model16: "onnx.ModelProto", *, probe: bool = True) -> "onnx.ModelProto":
    """An fp32 graph that computes like ``model16`` on a GPU, for CPU onnxruntime.

    Every fp16 initializer and constant becomes fp32 (exactly), and every fp16
    tensor a node produces is rounded through Cast(fp16)->Cast(fp32). With
    ``probe`` each rounded tensor also gets an output ``probe:<name>`` holding
    max(|x|), so overflow (inf) and headroom are visible.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    m = onnx.shape_inference.infer_shapes(model16)
    types = _value_types(m)
    g = m.graph
    for t in g.initializer:
        if t.data_type == TensorProto.FLOAT16:
            t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float32), t.name))
    nodes: list[onnx.NodeProto] = []
    probes: list[onnx.ValueInfoProto] = []
    for i, node in enumerate(g.node):
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value" and a.t.data_type == TensorProto.FLOAT16:
                    a.t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(a.t).astype(np.float32), a.t.name))
            nodes.append(node)
            continue
        half_out = [o for o in node.output if o and types.get(o) == TensorProto.FLOAT16]
        if node.op_type == "Cast":
            for a in node.attribute:
                if a.name == "to" and a.i == TensorProto.FLOAT16:
                    a.i = TensorProto.FLOAT
        renamed = {o: f"{o}__f32" for o in half_out}
        node.output[:] = [renamed.get(o, o) for o in node.output]
        nodes.append(node)
        for o in half_out:
            tag = f"{node.name or i}:{o}"
            nodes.append(helper.make_node("Cast", [renamed[o]], [f"{o}__h"], to=TensorProto.FLOAT16, name=f"emu_h:{tag}"))
            nodes.append(helper.make_node("Cast", [f"{o}__h"], [o], to=TensorProto.FLOAT, name=f"emu_f:{tag}"))
            if probe:
                nodes.append(helper.make_node("Abs", [o], [f"{o}__abs"], name=f"emu_abs:{tag}"))
                nodes.append(helper.make_node("ReduceMax", [f"{o}__abs"], [f"probe:{o}"], keepdims=0, name=f"emu_max:{tag}"))
                probes.append(helper.make_tensor_value_info(f"probe:{o}", TensorProto.FLOAT, []))
    del g.node[:]
    g.node.extend(nodes)
    del g.value_info[:]
    for v in [*g.input, *g.output]:
        if v.type.tensor_type.elem_type == TensorProto.FLOAT16:
            v.type.tensor_type.elem_type = TensorProto.FLOAT
    g.output.extend(probes)
    return m


def _session(model: "onnx.ModelProto", optimize: bool) -> Any:
    from emostyle_rt.backends.ort import import_onnxruntime

    ort = import_onnxruntime()

    so = ort.SessionOptions()
    so.log_severity_level = 3
    if not optimize:  # keep every rounding Cast exactly where it is
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def psnr_db(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR on the 0..255 scale, capped at :data:`PSNR_CAP_DB` (the manifest is JSON: no inf)."""
    return metrics.psnr(a, b, cap=PSNR_CAP_DB)


def default_style_images() -> list[tuple[str, np.ndarray]]:
    """Astronaut 256x256, astronaut 255x301 padded to 256x304, seeded noise 64x96 (NHWC uint8, N=1)."""
    import cv2

    astro = astronaut()
    rng = np.random.default_rng(0)
    imgs = [
        ("astronaut 256x256", cv2.resize(astro, (256, 256), interpolation=cv2.INTER_AREA)),
        ("astronaut 255x301 padded to 256x304", pad_to_multiple(
            cv2.resize(astro, (301, 255), interpolation=cv2.INTER_AREA), STYLE_SIZE_MULTIPLE)),
        ("random 64x96", rng.integers(0, 256, (64, 96, 3), dtype=np.uint8)),
    ]
    return [(n, np.ascontiguousarray(i)[None]) for n, i in imgs]


def default_faces(height: int, width: int, channels: int) -> list[tuple[str, np.ndarray]]:
    """Astronaut face crops (plain, mirrored, shifted, darker) and seeded noise, as one batch each."""
    import cv2

    astro = astronaut()
    x, y, w, h = ASTRONAUT_FACE

    def crop(dx: int, dy: int) -> np.ndarray:
        return cv2.resize(astro[y + dy : y + dy + h, x + dx : x + dx + w], (width, height), interpolation=cv2.INTER_AREA)

    face = crop(0, 0)
    faces = [
        ("astronaut face", face),
        ("astronaut face mirrored", face[:, ::-1]),
        ("astronaut face shifted", crop(-8, 6)),
        ("astronaut face darker", (face * 0.6).astype(np.uint8)),
        ("random", np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)),
    ]
    out = []
    for name, f in faces:
        if channels == 1:
            f = cv2.cvtColor(np.ascontiguousarray(f), cv2.COLOR_RGB2GRAY)[..., None]
        out.append((name, np.ascontiguousarray(f)[None]))
    return out


def _classifier_input_hwc(model: "onnx.ModelProto") -> tuple[int, int, int]:
    dims = model.graph.input[0].type.tensor_type.shape.dim
    vals = [d.dim_value if d.HasField("dim_value") else 0 for d in dims]
    if len(vals) != 4 or min(vals[1:]) <= 0:
        raise ExportError(
            "The classifier graph's input must be [N, H, W, C] with fixed H, W, C."
            + note("[N, H, W, C]", [d.dim_param or d.dim_value for d in dims])
        )
    return vals[1], vals[2], vals[3]


def verify_fp16(
    model32: "onnx.ModelProto",
    model16: "onnx.ModelProto",
    kind: Kind,
    images: Sequence[tuple[str, np.ndarray]] | None = None,
) -> tuple[list[ImageCheck], dict[str, float]]:
    """Run both graphs on CPU; per-image checks and each fp16 tensor's largest |value| (inf on overflow)."""
    s32 = _session(model32, optimize=True)
    s16 = _session(fp16_emulation(model16), optimize=False)
    in_name = model32.graph.input[0].name
    n_out = len(model32.graph.output)
    if images is None:
        images = default_style_images() if kind == "style" else default_faces(*_classifier_input_hwc(model32))
    checks: list[ImageCheck] = []
    tensor_max: dict[str, float] = {}
    probe_names = [o.name for o in s16.get_outputs()][n_out:]
    for name, img in images:
        ref = s32.run(None, {in_name: img})
        got = s16.run(None, {in_name: img})
        outs, probes = got[:n_out], got[n_out:]
        finite = all(np.isfinite(p) for p in probes) and all(
            np.isfinite(o).all() for o in outs if np.issubdtype(o.dtype, np.floating)
        )
        for pn, pv in zip(probe_names, probes):
            key = pn.removeprefix("probe:")
            tensor_max[key] = max(tensor_max.get(key, 0.0), float(pv) if np.isfinite(pv) else math.inf)
        a, b = ref[0], outs[0]
        diff = float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)))) if a.size else 0.0
        mx = max((float(p) if np.isfinite(p) else math.inf) for p in probes) if probes else 0.0
        if kind == "style":
            checks.append(ImageCheck(name, tuple(img.shape), diff, round(psnr_db(a, b), 2), None, None, finite, mx))
        else:
            t32 = tuple(int(i) for i in np.argmax(a, axis=-1))
            t16 = tuple(int(i) for i in np.argmax(b, axis=-1))
            checks.append(ImageCheck(name, tuple(img.shape), diff, None, t32, t16, finite, mx))
    return checks, tensor_max


# ---------------------------------------------------------------- public entry


def make_fp16(
    onnx_in: str | Path,
    onnx_out: str | Path,
    kind: Kind,
    *,
    images: Sequence[tuple[str, np.ndarray]] | None = None,
    min_psnr_db: float = MIN_PSNR_DB,
    keep_fp32_ops: Sequence[str] | None = None,
    keep_fp32_nodes: Sequence[str] = (),
    headroom: float = 4.0,
    max_escalations: int = 3,
    overwrite: bool = False,
) -> Fp16Report:
    """Write the verified mixed-precision FP16 variant of ``onnx_in`` to ``onnx_out``.

    Nodes whose fp16 output exceeds 65504/``headroom`` on the check images are
    moved to fp32 and the graph is converted again (at most ``max_escalations``
    times). Raises :class:`ParityError` (and writes nothing) when the FP16 graph misses
    ``min_psnr_db`` (styles), changes a top-1 class (classifier) or produces
    inf/NaN; :class:`ExportError` when ``onnx_out`` exists and not ``overwrite``.
    """
    import onnx
    import onnxconverter_common

    t0 = time.perf_counter()
    src, dst = Path(onnx_in), Path(onnx_out)
    if dst.exists() and not overwrite:
        raise ExportError(f"{dst} already exists; not overwriting it." + note("a new path or overwrite=True", dst))
    model32 = onnx.load(str(src))
    blocked = list(keep_fp32_nodes)
    limit = FP16_MAX / headroom
    for _ in range(max_escalations + 1):
        model16 = convert_fp16(model32, kind, keep_fp32_ops=keep_fp32_ops, keep_fp32_nodes=blocked)
        checks, tensor_max = verify_fp16(model32, model16, kind, images)
        hot = _overflow_origins(model16, {t for t, v in tensor_max.items() if not v < limit}, set(blocked))
        if not hot:
            break
        # Decided from measurement: a node whose fp16 output overflows (or nears 65504) computes in fp32.
        log.warning("FP16 %s: %s exceed %.0f (1/%g of the fp16 range); keeping them in fp32.", src.name, hot, limit, headroom)
        blocked += hot
    worst_tensor = max(tensor_max, key=lambda t: tensor_max[t]) if tensor_max else ""
    pmap = precision_map(model16)
    op_of = {(n.name or f"{n.op_type}_{i}"): n.op_type for i, n in enumerate(model16.graph.node)}
    worst = max(c.max_abs_activation for c in checks) if checks else 0.0
    half_reductions = sorted({op_of[n] for n in pmap["fp16"]} & _EMULATED_IN_FP32)
    evaluator = "onnxruntime CPU, fp32 graph rounding every fp16 tensor (fp16_emulation)"
    if half_reductions:
        # The emulator rounds outputs only; these ops' internal sums run in fp32 there but not on a GPU.
        log.warning("FP16 %s: %s run in fp16; the CPU check underestimates their error.", src.name, half_reductions)
        evaluator += f"; fp16 {'/'.join(half_reductions)} internals not emulated"
    style = kind == "style"
    min_psnr = min(c.psnr_db for c in checks if c.psnr_db is not None) if style and checks else None
    top1 = None if style else all(c.top1_fp32 == c.top1_fp16 for c in checks)
    report = Fp16Report(
        kind=kind,
        onnx_fp16=dst.name,
        sha256="",
        source_sha256=sha256_file(src),
        converter=f"onnxconverter-common {onnxconverter_common.__version__} convert_float_to_float16(keep_io_types=True)",
        fp32_ops=tuple(sorted({op_of[n] for n in pmap["fp32"]})),
        fp32_nodes=tuple(pmap["fp32"]),
        fp16_node_count=len(pmap["fp16"]),
        cast_count=len(pmap["cast"]),
        evaluator=evaluator,
        checks=tuple(checks),
        min_psnr_db=min_psnr,
        tolerance_db=min_psnr_db if style else None,
        top1_agree=top1,
        max_abs_activation=worst,
        max_abs_activation_tensor=worst_tensor,
        seconds=0.0,
    )
    for c in checks:
        log.debug("fp16 %s %s: max|diff| %.4g psnr %s top1 %s/%s max|act| %.4g", kind, c.name, c.max_abs_diff,
                 c.psnr_db, c.top1_fp32, c.top1_fp16, c.max_abs_activation)
    if not report.passed:
        bad = [c for c in checks if not c.finite or (style and (c.psnr_db or 0) < min_psnr_db)
               or (not style and c.top1_fp32 != c.top1_fp16)]
        raise ParityError(
            f"The FP16 variant of {src.name} disagrees with the FP32 graph on {[c.name for c in bad]}."
            + note(
                f"PSNR >= {min_psnr_db} dB and finite" if style else "identical top-1 and finite",
                [(c.name, c.psnr_db if style else c.top1_fp16, "finite" if c.finite else "inf/NaN") for c in bad],
            )
        )
    _atomic_save(model16, dst)
    return _replace(report, sha256=sha256_file(dst), seconds=round(time.perf_counter() - t0, 2))


def _overflow_origins(model16: "onnx.ModelProto", hot_tensors: set[str], blocked: set[str]) -> list[str]:
    """Nodes that make a too-large fp16 tensor from inputs that are not (inf spreads downstream)."""
    tainted: set[str] = set()
    origins: list[str] = []
    for node in model16.graph.node:
        if any(i in tainted for i in node.input):
            tainted.update(node.output)
            continue
        if any(o in hot_tensors for o in node.output):
            tainted.update(node.output)
            if node.op_type not in ("Cast", "Constant") and node.name and node.name not in blocked:
                origins.append(node.name)
    return origins


def _replace(report: Fp16Report, **kw: Any) -> Fp16Report:
    from dataclasses import replace

    return replace(report, **kw)


def _atomic_save(model: "onnx.ModelProto", dst: Path) -> None:
    write_bytes_atomic(dst, model.SerializeToString())
