"""The graphs tiled style inference needs, made from a bundle's style graph and checked.

A style network normalises every layer with InstanceNorm: statistics of the
whole image. Tiles run alone would each get their own statistics (tone jumps,
visible seams), so every tile must be given the same ones. From one style
graph (uint8 NHWC in and out) this module writes, into ``styles/<id>.tiled/``:

- ``stats.onnx``: the style graph up to its last InstanceNorm, returning the
  per-channel mean and (population) variance of every InstanceNorm input
  (``in<k>.mean``, ``in<k>.var``, shape [N, C, 1, 1]). The fast mode runs it once
  on a sample of the image (full-resolution crops, ``emostyle_rt.tiling.stats_sample``).
- ``tile.onnx``: the style graph with every InstanceNormalization replaced by
  ``(x - mean) * scale / sqrt(var + eps) + bias``, mean and var taken as inputs
  ([1, C, 1, 1]). Run on overlapping tiles with a halo of at least the network's
  receptive field, whose interiors are stitched.
- ``seg00.onnx`` ... : ``tile.onnx`` cut just before each InstanceNorm. Segment
  ``s`` takes the activations live across cut ``s-1`` (residual skips cross
  cuts) and the statistics of the InstanceNorm it starts with, and returns the
  activations live across cut ``s``. The exact mode runs them layer by layer over
  the whole image, accumulating the next InstanceNorm's statistics.

Geometry comes from the graph, not from the network's name: the spatial scale of
every tensor (probed by running the graph at two sizes), the receptive field of
the tile graph and of each segment (from Conv kernels, strides and dilations
and Resize nodes), and the activation bytes per pixel (the largest set of
tensors alive at once). Then the tiled runs (the runtime's own code) are checked
against the untiled graph on real photos with small forced tiles: the export
fails beyond 1 grey level.
"""

from __future__ import annotations

import logging
import math
import shutil
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from emostyle_rt.errors import note, sentence
from emostyle_rt.fsutil import sha256_file
from emostyle_rt.manifest import STYLE_SIZE_MULTIPLE, StyleSpec, TiledGraph, TiledNorm, TiledSpec, TiledTensor

from . import ONNX_OPSET
from .errors import ExportError, ParityError
from .parity import STYLE_TOLERANCE, astronaut, psnr

log = logging.getLogger(__name__)

#: Ops that work pixel by pixel (or only on channels): no spatial reach. Pad only moves borders (a tile's
#: reflected border lies in its halo), the following valid Conv's reach is counted centred.
POINTWISE = frozenset({
    "Identity", "Cast", "Transpose", "Add", "Sub", "Mul", "Div", "Relu", "LeakyRelu", "PRelu", "Sigmoid", "Tanh",
    "Clip", "Round", "Floor", "Ceil", "Sqrt", "Reciprocal", "Neg", "Abs", "Exp", "Log", "Pow", "Max", "Min", "Erf",
    "Softplus", "HardSigmoid", "Elu", "Selu", "BatchNormalization", "Pad", "Concat",
})
SPATIAL = frozenset({"Conv", "ConvTranspose", "MaxPool", "AveragePool", "Resize", "Upsample"})
NORM = "InstanceNormalization"
#: Probe sizes (H, W): the graph is run at both to tell spatial dims and scales from channels.
PROBES = ((64, 96), (128, 160))
#: Tiled-vs-untiled parity: forced tile interiors (px) and the photos.
PARITY_TILE = 96
PARITY_STRIP = 32


@dataclass(frozen=True)
class _Tensor:
    """A probed activation: element type, channels, scale (input px per tensor px), layout, bytes per input px."""

    dtype: np.dtype
    channels: int
    scale: float
    layout: str  # "NCHW" or "NHWC"
    bytes_per_pixel: float


def _onnx() -> Any:
    try:
        import onnx
    except ImportError as exc:  # pragma: no cover - export extra
        raise ExportError("Tiled graphs need the onnx package." + note("pip install 'emostyle-rt[cpu,export]'", exc)) from exc
    return onnx


def _session(model: Any) -> Any:
    from emostyle_rt.backends.ort import import_onnxruntime

    ort = import_onnxruntime()

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), sess_options=opts, providers=["CPUExecutionProvider"])


def _dynamic(model: Any) -> set[str]:
    """Tensors that depend on the graph's inputs (the image); constants and their chains are not."""
    dyn = {i.name for i in model.graph.input}
    for n in model.graph.node:
        if any(t in dyn for t in n.input if t):
            dyn.update(o for o in n.output if o)
    return dyn


def probe(model: Any) -> dict[str, _Tensor]:
    """Every 4-D activation of ``model`` (uint8 NHWC image in): channels, scale, layout, bytes per input pixel."""
    onnx = _onnx()
    dyn = _dynamic(model)
    inp = model.graph.input[0].name
    probe_model = onnx.ModelProto()
    probe_model.CopyFrom(model)
    have = {o.name for o in probe_model.graph.output}
    for t in sorted(dyn - have - {inp}):
        probe_model.graph.output.append(onnx.ValueInfoProto(name=t))
    sess = _session(probe_model)
    names = [o.name for o in sess.get_outputs()]
    runs = []
    for h, w in PROBES:
        x = np.zeros((1, h, w, 3), np.uint8)
        runs.append(dict(zip(names, sess.run(names, {inp: x}))) | {inp: x})
    out: dict[str, _Tensor] = {}
    (h1, w1), (h2, w2) = PROBES
    for name in runs[0]:
        a, b = np.asarray(runs[0][name]), np.asarray(runs[1][name])
        if a.ndim != 4:
            continue
        changed = [d for d in range(4) if a.shape[d] != b.shape[d]]
        if changed == [2, 3]:
            layout, ch, dh = "NCHW", a.shape[1], b.shape[2] - a.shape[2]
        elif changed == [1, 2]:
            layout, ch, dh = "NHWC", a.shape[3], b.shape[1] - a.shape[1]
        else:
            continue
        bpp = (b.nbytes - a.nbytes) / (h2 * w2 - h1 * w1)
        # from the difference of the two probes: a padded tensor (H/s + 2p) has the scale of what it pads
        out[name] = _Tensor(a.dtype, int(ch), (h2 - h1) / dh, layout, bpp)
    return out


def _attr(node: Any, name: str, default: Any = None) -> Any:
    onnx = _onnx()
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _reach(model: Any, node: Any, tensors: dict[str, _Tensor], inits: dict[str, Any]) -> float:
    """How far (input px) a spatial node looks beyond the pixel it computes, at its input's scale."""
    scale = max((tensors[t].scale for t in node.input if t in tensors), default=1.0)
    if node.op_type in ("Resize", "Upsample"):
        return scale  # nearest: within the footprint; linear/cubic: one input pixel (conservative for both)
    kernel = _attr(node, "kernel_shape")
    if kernel is None and len(node.input) > 1 and node.input[1] in inits:
        kernel = list(inits[node.input[1]].dims[2:])
    if kernel is None:
        raise ExportError(f"{node.op_type} node {node.name!r} has no kernel shape; its reach is unknown."
                          + note("kernel_shape or a weight initializer", "neither"))
    dil = _attr(node, "dilations") or [1] * len(kernel)
    strides = _attr(node, "strides") or [1] * len(kernel)
    half = max(math.ceil((k - 1) * d / 2) for k, d in zip(kernel, dil))
    return (half + max(strides) - 1) * scale


def receptive_field(model: Any, tensors: dict[str, _Tensor], start: Iterable[str], nodes: Iterable[Any]) -> float:
    """Largest reach (input px) from the ``start`` tensors to anything ``nodes`` compute; ExportError on global ops."""
    inits = {i.name: i for i in model.graph.initializer}
    rad: dict[str, float] = {t: 0.0 for t in start}
    worst = 0.0
    for n in nodes:
        ins = [rad[t] for t in n.input if t in rad]
        if not ins:
            continue
        r = max(ins)
        if n.op_type in SPATIAL:
            r += _reach(model, n, tensors, inits)
        elif n.op_type not in POINTWISE:
            raise ExportError(
                f"Style graph node {n.name or n.op_type!r} ({n.op_type}) is neither pointwise nor a known spatial op, "
                "so tiles cannot reproduce it." + note(f"{sorted(SPATIAL)} or pointwise ops", n.op_type))
        for o in n.output:
            if o:
                rad[o] = r
                worst = max(worst, r)
    return worst


def _peak_bytes_per_pixel(nodes: list[Any], tensors: dict[str, _Tensor], inputs: Iterable[str],
                          outputs: Iterable[str]) -> float:
    """Largest sum of activations alive at once (bytes per input pixel), nodes run in order, buffers freed after last use."""
    last: dict[str, int] = {}
    for i, n in enumerate(nodes):
        for t in n.input:
            last[t] = i
    for t in outputs:
        last[t] = len(nodes)
    live = {t: tensors[t].bytes_per_pixel for t in inputs if t in tensors}
    peak = sum(live.values())
    for i, n in enumerate(nodes):
        new = {o: tensors[o].bytes_per_pixel for o in n.output if o in tensors}
        peak = max(peak, sum(live.values()) + sum(new.values()))
        live.update(new)
        for t in [t for t in live if last.get(t, -1) <= i]:
            del live[t]
    return round(peak, 1)


def _value_info(name: str, dtype: np.dtype, layout: str, channels: int) -> Any:
    onnx = _onnx()
    elem = onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    shape = ["batch", channels, "height", "width"] if layout == "NCHW" else ["batch", "height", "width", channels]
    return onnx.helper.make_tensor_value_info(name, elem, shape)


def _stat_names(k: int) -> tuple[str, str]:
    return f"in{k}.mean", f"in{k}.var"


def _reduce_mean(x: str, out: str, opset: int) -> list[Any]:
    return _reduce("ReduceMean", x, out, opset)


def _reduce(op: str, x: str, out: str, opset: int) -> list[Any]:
    """``op`` over the spatial axes (2, 3) of ``x``, keeping dims: axes as an input from opset 18 (ReduceSumSquare
    and ReduceMean alike), an attribute before."""
    onnx = _onnx()
    if opset >= 18:
        axes = f"{out}.axes"
        return [onnx.helper.make_node("Constant", [], [axes], value=onnx.numpy_helper.from_array(np.array([2, 3], np.int64))),
                onnx.helper.make_node(op, [x, axes], [out], keepdims=1)]
    return [onnx.helper.make_node(op, [x], [out], axes=[2, 3], keepdims=1)]


def _opset(model: Any) -> int:
    return max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=ONNX_OPSET)


def stats_model(model: Any, norms: list[Any]) -> Any:
    """The style graph returning the mean and variance of every InstanceNorm input (and nothing after the last)."""
    onnx = _onnx()
    from onnx.utils import Extractor

    m = onnx.ModelProto()
    m.CopyFrom(model)
    opset = _opset(m)
    outs = []
    index = {id(n): k for k, n in enumerate(norms)}
    nodes = []
    for n in model.graph.node:
        nodes.append(n)
        k = index.get(id(n))
        if k is None:
            continue
        # right after the InstanceNorm, so its input is freed as early as in the style graph
        x = n.input[0]
        mean, var = _stat_names(k)
        nodes += _reduce_mean(x, mean, opset)
        # var = sum((x - mean)^2) / (H * W): one full-size temporary (x - mean), squared and summed in one
        # reduction (ReduceMean of Mul(d, d) held two)
        nodes += [onnx.helper.make_node("Sub", [x, mean], [f"{var}.d"]),
                  *_reduce("ReduceSumSquare", f"{var}.d", f"{var}.ss", opset),
                  onnx.helper.make_node("Shape", [x], [f"{var}.shape"]),
                  onnx.helper.make_node("Constant", [], [f"{var}.hw"],
                                        value=onnx.numpy_helper.from_array(np.array([2, 3], np.int64))),
                  onnx.helper.make_node("Gather", [f"{var}.shape", f"{var}.hw"], [f"{var}.dims"]),
                  onnx.helper.make_node("ReduceProd", [f"{var}.dims"], [f"{var}.n"], keepdims=0),
                  onnx.helper.make_node("Cast", [f"{var}.n"], [f"{var}.nf"], to=onnx.TensorProto.FLOAT),
                  onnx.helper.make_node("Div", [f"{var}.ss", f"{var}.nf"], [var])]
        outs += [mean, var]
    del m.graph.node[:]
    m.graph.node.extend(nodes)
    m = onnx.shape_inference.infer_shapes(m)
    extracted = Extractor(m).extract_model([m.graph.input[0].name], outs)
    extracted.ir_version = m.ir_version
    del extracted.opset_import[:]
    extracted.opset_import.extend(m.opset_import)
    return extracted


def tile_model(model: Any, norms: list[Any]) -> tuple[Any, dict[int, int]]:
    """The style graph with each InstanceNorm taking its statistics as inputs; and, per norm, its first node's index."""
    onnx = _onnx()
    from onnx import numpy_helper

    m = onnx.ModelProto()
    m.CopyFrom(model)
    inits = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    for n in model.graph.node:  # the exporter shares equal parameters through Identity nodes
        if n.op_type == "Identity" and n.input[0] in inits:
            inits[n.output[0]] = inits[n.input[0]]
    by_node = {id(n): k for k, n in enumerate(norms)}
    new_nodes, starts = [], {}
    for n in model.graph.node:
        k = by_node.get(id(n))
        if k is None:
            new_nodes.append(n)
            continue
        x, scale, bias = n.input
        if scale not in inits or bias not in inits:
            raise ExportError(f"InstanceNormalization {n.name!r} takes scale/bias that are not initializers."
                              + note("constant scale and bias", f"{scale}, {bias}"))
        c = inits[scale].size
        mean, var = _stat_names(k)
        p = f"tiled.in{k}"
        eps = float(_attr(n, "epsilon", 1e-5))
        m.graph.initializer.extend([
            numpy_helper.from_array(inits[scale].astype(np.float32).reshape(c), f"{p}.scale"),
            numpy_helper.from_array(inits[bias].astype(np.float32).reshape(c), f"{p}.bias"),
            numpy_helper.from_array(np.array([c], np.int64), f"{p}.shape"),
        ])
        m.graph.input.extend([onnx.helper.make_tensor_value_info(s, onnx.TensorProto.FLOAT, [1, c, 1, 1])
                              for s in (mean, var)])
        starts[k] = len(new_nodes)
        # BatchNormalization in inference mode is exactly InstanceNorm with given statistics, in one pass over
        # the activation (Sub, Mul, Add took three, each with a full-size temporary).
        new_nodes += [
            onnx.helper.make_node("Reshape", [mean, f"{p}.shape"], [f"{p}.mean"]),
            onnx.helper.make_node("Reshape", [var, f"{p}.shape"], [f"{p}.var"]),
            onnx.helper.make_node("BatchNormalization", [x, f"{p}.scale", f"{p}.bias", f"{p}.mean", f"{p}.var"],
                                  [n.output[0]], name=f"{p}.norm", epsilon=eps),
        ]
    del m.graph.node[:]
    m.graph.node.extend(new_nodes)
    return m, starts


def _segment(model: Any, nodes: list[Any], inputs: list[str], outputs: list[str], tensors: dict[str, _Tensor]) -> Any:
    """A model of ``nodes`` with ``inputs`` (activations or stats) and ``outputs``, keeping the initializers it uses."""
    onnx = _onnx()
    used = {t for n in nodes for t in n.input}
    graph_inputs = {i.name: i for i in model.graph.input}
    ins = []
    for t in inputs:
        if t in graph_inputs:
            ins.append(graph_inputs[t])
        else:
            info = tensors[t]
            ins.append(_value_info(t, info.dtype, info.layout, info.channels))
    outs = [_value_info(t, tensors[t].dtype, tensors[t].layout, tensors[t].channels) for t in outputs]
    inits = [i for i in model.graph.initializer if i.name in used]
    graph = onnx.helper.make_graph(nodes, "segment", ins, outs, inits)
    seg = onnx.helper.make_model(graph, opset_imports=list(model.opset_import))
    seg.ir_version = model.ir_version
    onnx.checker.check_model(seg)
    return seg


@dataclass(frozen=True)
class _Cut:
    nodes: list[Any]
    inputs: list[str]  # activations (from earlier segments or the image) and stats inputs
    outputs: list[str]  # activations live across the next cut that this segment produces, or the graph output
    norm: int | None
    stats_only: bool = False


def cut_segments(tile: Any, starts: dict[int, int], dyn: set[str]) -> list[_Cut]:
    """``tile`` cut just before each InstanceNorm replacement: each segment's nodes, inputs and outputs.

    When the first segment reads only the image (which the runtime holds in
    memory), its outputs are not stored: it runs once for the first
    InstanceNorm's statistics only (``stats_only``), and the second segment
    recomputes it from the image. That trades a few percent of arithmetic (the
    first conv) for the largest write and read of the spool (a full-resolution
    activation).
    """
    nodes = list(tile.graph.node)
    bounds = [0, *[starts[k] for k in sorted(starts)], len(nodes)]
    graph_out = [o.name for o in tile.graph.output]
    producer = {o: i for i, n in enumerate(nodes) for o in n.output if o}
    consumers: dict[str, list[int]] = defaultdict(list)
    for i, n in enumerate(nodes):
        for t in n.input:
            consumers[t].append(i)
    image = tile.graph.input[0].name
    stat_inputs = {i.name for i in tile.graph.input[1:]}

    def make(lo: int, hi: int, norm: int | None, stats_only: bool = False) -> _Cut:
        seg_nodes = nodes[lo:hi]
        # Activations crossing into this segment: produced before it (or the image), consumed inside.
        ins = [t for t in dict.fromkeys(t for n in seg_nodes for t in n.input if t)
               if t in dyn and t not in stat_inputs and (t == image or producer.get(t, -1) < lo)]
        stats = [t for t in dict.fromkeys(t for n in seg_nodes for t in n.input) if t in stat_inputs]
        outs = [t for n in seg_nodes for t in n.output
                if t in dyn and (t in graph_out or any(c >= hi for c in consumers.get(t, [])))]
        # Constant chains (Pad sizes) are computed inside the segment that uses them: pull them in.
        needed: list[Any] = []
        want = {t for n in seg_nodes for t in n.input}
        for _ in range(16):
            extra = [n for n in nodes[:lo] if n not in needed and not any(o in dyn for o in n.output)
                     and any(o in want for o in n.output)]
            if not extra:
                break
            needed += extra
            want |= {t for n in extra for t in n.input}
        needed.sort(key=nodes.index)
        return _Cut(needed + seg_nodes, ins + stats, outs, norm, stats_only)

    cuts = [make(bounds[s], bounds[s + 1], s - 1 if s > 0 else None) for s in range(len(bounds) - 1)]
    if len(cuts) > 2 and all(t == image for t in cuts[0].inputs):
        cuts[0] = make(bounds[0], bounds[1], None, stats_only=True)
        cuts[1] = make(bounds[0], bounds[2], 0)
    return cuts


def build_tiled(bundle: Path, style: StyleSpec, step: Callable[..., None] | None = None, *,
                check: bool = True) -> TiledSpec:
    """Write ``styles/<id>.tiled/`` next to ``style``'s graph in ``bundle`` and check it; its spec.

    A failed check removes the folder again and raises ParityError.
    """
    onnx = _onnx()
    say = step or (lambda *a: None)
    src = bundle / style.onnx
    model = onnx.load(str(src))
    if len(model.graph.input) != 1 or len(model.graph.output) != 1:
        raise ExportError(f"Style graph {src} is not one image in, one image out."
                          + note("1 input, 1 output", f"{len(model.graph.input)} inputs, {len(model.graph.output)} outputs"))
    norms = [n for n in model.graph.node if n.op_type == NORM]
    if not norms:
        raise ExportError(f"Style graph {src} has no InstanceNormalization: it needs no shared statistics."
                          + note("an InstanceNorm style network", "none"))
    image, styled = model.graph.input[0].name, model.graph.output[0].name
    tensors = probe(model)
    if tensors.get(image) is None or tensors[image].layout != "NHWC":
        raise ExportError(f"Style graph {src} input is not an NHWC image." + note("uint8 NHWC", image))
    for n in norms:
        t = tensors.get(n.input[0])
        if t is None or t.layout != "NCHW":
            raise ExportError(f"InstanceNorm {n.name!r} input is not an NCHW activation." + note("NCHW", n.input[0]))
    tile, starts = tile_model(model, norms)
    dyn = _dynamic(tile) - {i.name for i in tile.graph.input[1:]}
    # The stats inputs do not depend on the image: their chains are per-run constants.
    dyn = {t for t in dyn if t in tensors or t == image}
    scales = sorted({t.scale for t in tensors.values()})
    if any(abs(s - round(s)) > 1e-6 for s in scales):
        raise ExportError(f"Style graph {src} has activations at a non-integer fraction of the input size."
                          + note("scales 1, 2, 4, ... (input px per activation px)", scales))
    align = int(np.lcm.reduce([int(round(s)) for s in scales]))
    rf = receptive_field(tile, tensors, [image], tile.graph.node)
    halo = int(math.ceil(rf / align) * align)
    say("style %s: %d InstanceNorms, receptive field %.0f px, halo %d px, alignment %d",
        style.style_id, len(norms), rf, halo, align)

    rel = Path(style.onnx).with_suffix("").as_posix() + ".tiled"
    folder = bundle / rel
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    try:
        def save(m: Any, name: str) -> tuple[str, str]:
            path = folder / name
            onnx.save(m, str(path))
            return f"{rel}/{name}", sha256_file(path)

        def tt(name: str) -> TiledTensor:
            t = tensors[name]
            return TiledTensor(name, t.channels, int(round(t.scale)))

        stats = stats_model(model, norms)
        for k, n in enumerate(norms):  # the variance's temporaries are as large as the InstanceNorm input
            var = _stat_names(k)[1]
            tensors[f"{var}.d"] = tensors[n.input[0]]
        s_onnx, s_sha = save(stats, "stats.onnx")
        stats_nodes = list(stats.graph.node)
        # the stats graph keeps its means/vars as 1x1 tensors (not probed): count the activations only
        stats_graph = TiledGraph(s_onnx, s_sha, (tt(image),), (), 0,
                                 _peak_bytes_per_pixel(stats_nodes, tensors, [image], []), None)
        t_onnx, t_sha = save(tile, "tile.onnx")
        tile_graph = TiledGraph(t_onnx, t_sha, (tt(image),), (tt(styled),), halo,
                                _peak_bytes_per_pixel(list(tile.graph.node), tensors, [image], [styled]), None)
        segments = []
        for s, cut in enumerate(cut_segments(tile, starts, dyn)):
            acts = [t for t in cut.inputs if t in tensors]
            for t in acts + cut.outputs:
                if t not in (image, styled) and (tensors[t].layout != "NCHW" or tensors[t].dtype != np.float32):
                    raise ExportError(f"Activation {t} crosses an InstanceNorm cut but is not float32 NCHW."
                                      + note("float32 NCHW", f"{tensors[t].dtype} {tensors[t].layout}"))
            seg = _segment(tile, cut.nodes, cut.inputs, cut.outputs, tensors)
            seg_rf = receptive_field(tile, tensors, acts, cut.nodes)
            p, sha = save(seg, f"seg{s:02d}.onnx")
            segments.append(TiledGraph(
                p, sha, tuple(tt(t) for t in acts), tuple(tt(t) for t in cut.outputs),
                int(math.ceil(seg_rf / align) * align),
                _peak_bytes_per_pixel(cut.nodes, tensors, acts, cut.outputs), cut.norm, cut.stats_only))
        spec = TiledSpec(
            source_sha256=style.sha256, align=align, halo=halo, receptive_field=round(rf, 1),
            bytes_per_pixel=_peak_bytes_per_pixel(list(model.graph.node), tensors, [image], [styled]),
            norms=tuple(TiledNorm(n.input[0], tensors[n.input[0]].channels, int(round(tensors[n.input[0]].scale)),
                                  *_stat_names(k)) for k, n in enumerate(norms)),
            stats=stats_graph, tile=tile_graph, segments=tuple(segments))
        say("style %s: tiled graphs written (%d segments); activations %.0f B/px untiled, %.0f B/px per tile",
            style.style_id, len(segments), spec.bytes_per_pixel, tile_graph.bytes_per_pixel)
        if check:
            spec = check_tiled(bundle, style, spec)
            say("style %s: tiled parity ok: %s", style.style_id, spec.parity.get("summary", ""))
        return spec
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise


def parity_images(seed: int = 0) -> list[tuple[str, np.ndarray]]:
    """Real photos (and one seeded random image) as the runtime hands them over: HxWx3 uint8, odd sizes too."""
    import cv2

    photo = astronaut()
    rng = np.random.default_rng(seed)
    wide = cv2.resize(photo, (301, 255), interpolation=cv2.INTER_AREA)
    return [("astronaut 255x301", wide), ("random 150x222", rng.integers(0, 256, (150, 222, 3), dtype=np.uint8))]


def check_tiled(bundle: Path, style: StyleSpec, spec: TiledSpec) -> TiledSpec:
    """Run the tiled graphs with the runtime's own tiler against the untiled style graph; the spec with ``parity``.

    Checked, each on every parity image, with tiles far smaller than the image
    (interiors of 96 px; strips of 32 rows): the tile graph with the image's own
    statistics; the exact mode (segments, accumulated statistics); the fast mode
    with statistics from a copy that is the image itself. All must agree with the
    untiled graph within 1 grey level; a fast-mode figure with statistics from a
    half-size sample is reported (it is the approximation the fast mode makes).
    """
    from dataclasses import replace

    from emostyle_rt.backends import make_runner
    from emostyle_rt.imaging.io import pad_to_multiple
    from emostyle_rt.tiling import TiledStyle

    whole = make_runner(bundle / style.onnx, provider="cpu")
    tiled = TiledStyle(bundle, replace(style, tiled=spec), provider="cpu", verify=False)
    rows: dict[str, float] = {}
    names = []
    worst = 0.0
    try:
        for name, rgb in parity_images():
            padded = pad_to_multiple(rgb, STYLE_SIZE_MULTIPLE)
            ref = whole.run({style.input_name: padded[None]})[style.output_name][0]
            got = {
                "tile graph, own statistics": tiled.run_fast(padded, tile=PARITY_TILE, stats_side=None),
                "exact": tiled.run_exact(padded, strip_rows=PARITY_STRIP),
            }
            for key, out in got.items():
                d = float(np.max(np.abs(out.astype(np.int16) - ref.astype(np.int16))))
                rows[key] = max(rows.get(key, 0.0), d)
                worst = max(worst, d)
            if not names:  # the approximation the fast mode makes, reported (not checked): on the photo
                half = tiled.run_fast(padded, tile=PARITY_TILE, stats_side=max(rgb.shape[:2]) // 2)
                rows["fast, statistics from a half-size sample (PSNR dB)"] = round(psnr(half, ref), 2)
            names.append(name)
    finally:
        whole.close()
        tiled.close()
    summary = ", ".join(f"{k} {v:g}" for k, v in rows.items())
    parity = {"max_abs_diff": worst, "tolerance": STYLE_TOLERANCE, "tile": PARITY_TILE, "strip_rows": PARITY_STRIP,
              "inputs": names, "checks": rows, "summary": summary}
    if not worst <= STYLE_TOLERANCE:
        raise ParityError(f"Tiled graphs of style {style.style_id} disagree with the untiled graph: {summary}."
                          + note(f"<= {STYLE_TOLERANCE} grey level", f"{worst:g}"))
    return replace(spec, parity=parity)


def add_tiled(bundle: Path, style: StyleSpec, step: Callable[..., None] | None = None) -> StyleSpec:
    """``style`` with freshly built and checked tiled graphs (written into ``bundle``)."""
    from dataclasses import replace

    try:
        return replace(style, tiled=build_tiled(bundle, style, step))
    except (ExportError, ParityError):
        raise
    except Exception as exc:  # onnx / onnxruntime raise their own untyped errors
        raise ExportError(f"Cannot build the tiled graphs of style {style.style_id}: " + sentence(exc)) from exc
