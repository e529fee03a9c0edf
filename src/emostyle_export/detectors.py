"""The MTCNN face detector of the ``mtcnn`` package (MIT) -> three ONNX graphs in the bundle, verified.

P-Net (any height and width), R-Net (24x24) and O-Net (48x48) are the
package's Keras networks with their trained weights, converted with tf2onnx the
way the classifier is (a ``tf.function`` with an input signature through
``from_function``). Each graph takes float32 NHWC pixels 0..255 and normalises
them inside, as the package does before its networks.

Conventions are read from the installed package, never assumed: the stages'
default thresholds and pyramid settings from their signatures, the
normalisation by calling its ``normalize_images``, the patch sizes from the
networks' ``build`` defaults. Colour order (RGB: the package decodes files with
``tf.image.decode_image``) and orientation (no transpose: its stages feed the
images as they are) are then proven by running the runtime's cascade on the new
graphs against the package's own ``detect_faces`` on real photos. The export
fails when a graph differs from its Keras network by more than 1e-4 or the
cascade finds other faces than the package.
"""

from __future__ import annotations

import hashlib
import inspect
import logging
import math
from importlib import metadata, resources
from pathlib import Path
from typing import Any, Callable

import numpy as np

from emostyle_rt import metrics
from emostyle_rt.errors import note, sentence
from emostyle_rt.manifest import MTCNN_CASCADE, MTCNN_GRAPHS, DetectorGraph, DetectorSpec, detector_from_json, sha256_file

from . import ONNX_OPSET, parity
from .errors import ExportError, ParityError

log = logging.getLogger("emostyle_export")

DETECTOR_DIR = "detector"
INPUT_NAME = "image"
GRAPH_TOLERANCE = metrics.DETECTOR_TOLERANCE  # max abs diff of any output (offsets, landmarks, probabilities)
MIN_IOU = 0.9  # every face the package finds, found by the runtime cascade with at least this IoU


def _defaults(fn: Callable[..., Any]) -> dict[str, Any]:
    return {k: p.default for k, p in inspect.signature(fn).parameters.items() if p.default is not inspect.Parameter.empty}


def mtcnn_conventions() -> dict[str, Any]:
    """What the installed ``mtcnn`` package does around its networks, read from its code."""
    from mtcnn.network.onet import ONet
    from mtcnn.network.rnet import RNet
    from mtcnn.stages import StageONet, StagePNet, StageRNet
    from mtcnn.utils.bboxes import generate_bounding_box
    from mtcnn.utils.images import build_scale_pyramid, normalize_images

    p, r, o = _defaults(StagePNet.__call__), _defaults(StageRNet.__call__), _defaults(StageONet.__call__)
    g, pyr = _defaults(generate_bounding_box), _defaults(build_scale_pyramid)
    probe = np.asarray([0.0, 255.0, 100.0])
    lo, hi, mid = normalize_images(probe)
    divisor = 255.0 / (hi - lo)
    offset = -lo * divisor
    if abs((mid * divisor + offset) - 100.0) > 1e-6:
        raise ExportError("The mtcnn package's normalize_images is not an affine map of the pixels."
                          + note("(x - offset) / divisor", f"f(0, 255, 100) = {lo}, {hi}, {mid}"))
    return {
        "min_face_size": float(p["min_face_size"]), "min_size": int(p.get("min_size", pyr["min_size"])),
        "scale_factor": float(p["scale_factor"]), "cell": int(g["cell_size"]), "stride": int(g["strides"]),
        "thresholds": (float(p["threshold_pnet"]), float(r["threshold_rnet"]), float(o["threshold_onet"])),
        "nms": (float(p["nms_pnet1"]), float(p["nms_pnet2"]), float(r["nms_rnet"]), float(o["nms_onet"])),
        "offset": float(offset), "divisor": float(divisor),
        # crop_and_resize pads with 0 after normalisation: the pixel that normalises to 0.
        "pad_value": float(offset),
        "rnet_size": int(_defaults(RNet.build)["input_shape"][1]),
        "onet_size": int(_defaults(ONet.build)["input_shape"][1]),
    }


def load_mtcnn() -> dict[str, Any]:
    """The package's three Keras networks with their trained weights: {"pnet": model, ...}."""
    from .classifiers import quiet_tensorflow

    quiet_tensorflow()
    try:
        from mtcnn.stages import StageONet, StagePNet, StageRNet
    except ImportError as exc:
        raise ExportError(f"The mtcnn package is not installed ({exc})."
                          + note('pip install "emostyle-rt[cpu,export]" (it brings mtcnn)', "no mtcnn module")) from exc
    return {"pnet": StagePNet().model, "rnet": StageRNet().model, "onet": StageONet().model}


def _weights_record() -> dict[str, Any]:
    files = resources.files("mtcnn.assets.weights")
    digests = {}
    for name in ("pnet.lz4", "rnet.lz4", "onet.lz4"):
        digests[name] = hashlib.sha256((files / name).read_bytes()).hexdigest()
    return {"package": "mtcnn", "version": metadata.version("mtcnn"), "license": "MIT",
            "url": "https://github.com/ipazc/mtcnn", "weights_sha256": digests}


def convert_net(model: Any, name: str, size: int | None, conv: dict[str, Any], out_path: Path, opset: int = ONNX_OPSET) -> None:
    """Write one network as a float32-pixels-in ONNX graph (normalisation inside; outputs named as MTCNN_GRAPHS)."""
    import onnx
    import tensorflow as tf
    import tf2onnx

    logging.getLogger("tf2onnx").setLevel(logging.WARNING)
    spec = tf.TensorSpec([None, size, size, 3], tf.float32, name=INPUT_NAME)
    offset, divisor = conv["offset"], conv["divisor"]

    @tf.function(input_signature=[spec])
    def graph(image: Any) -> dict[str, Any]:
        outs = model((image - offset) / divisor)
        face = outs[-1][..., 1]  # softmax [not face, face] -> P(face)
        return dict(zip(MTCNN_GRAPHS[name], [*outs[:-1], face]))

    try:
        proto, _ = tf2onnx.convert.from_function(graph, input_signature=[spec], opset=opset)
    except Exception as exc:
        raise ExportError(f"tf2onnx could not convert MTCNN {name}: " + sentence(exc)) from exc
    names = [o.name for o in proto.graph.output]
    if sorted(names) != sorted(MTCNN_GRAPHS[name]) or proto.graph.input[0].name != INPUT_NAME:
        raise ExportError(f"The converted MTCNN {name} has unexpected tensors."
                          + note(f"input {INPUT_NAME!r}, outputs {list(MTCNN_GRAPHS[name])}",
                                 f"input {proto.graph.input[0].name!r}, outputs {names}"))
    onnx.checker.check_model(proto)
    onnx.save(proto, str(out_path))


def _keras_outputs(model: Any, name: str, x: np.ndarray, conv: dict[str, Any]) -> list[np.ndarray]:
    outs = [np.asarray(o) for o in model((x - conv["offset"]) / conv["divisor"])]
    return [*outs[:-1], outs[-1][..., 1]]


def _parity_inputs(name: str, conv: dict[str, Any]) -> list[tuple[str, np.ndarray]]:
    """Real inputs for one network: astronaut pyramid levels (P-Net) or astronaut patches (R-Net, O-Net)."""
    import cv2

    from emostyle_rt.detection.mtcnn import crop_and_resize, level_shape, pyramid_scales

    photo = parity.astronaut().astype(np.float32)
    if name == "pnet":
        out = []
        for img, label in ((photo, "astronaut 512x512"), (cv2.resize(photo, (255, 301), interpolation=cv2.INTER_AREA),
                                                          "astronaut 301x255")):
            scales = pyramid_scales(*img.shape[:2], conv["min_face_size"], conv["min_size"], conv["scale_factor"])
            for s in scales[[0, 1, len(scales) // 2, -1]]:
                lh, lw = level_shape(*img.shape[:2], s)
                out.append((f"{label} level {lh}x{lw}", cv2.resize(img, (lw, lh), interpolation=cv2.INTER_AREA)[None]))
        return out
    size = conv[f"{name}_size"]
    x, y, w, h = parity.ASTRONAUT_FACE
    rng = np.random.default_rng(0)
    # The face, shifted and scaled boxes about it, boxes anywhere (some leaving the image: padded samples).
    jitter = rng.uniform(-0.3, 0.3, (24, 4)) * [w, h, w, h] + [x, y, x + w, y + h]
    anywhere = rng.uniform(-40, 552, (24, 2))
    sides = rng.uniform(12, 200, (24, 1))
    boxes = np.concatenate([[[x, y, x + w, y + h]], jitter, np.hstack([anywhere, anywhere + sides])])
    patches = crop_and_resize(photo, boxes, size, conv["pad_value"])
    return [(f"astronaut patches {size}x{size} (face, jittered, anywhere)", patches),
            ("random uniform", rng.uniform(0, 255, (4, size, size, 3)).astype(np.float32))]


def check_net(model: Any, name: str, path: Path, conv: dict[str, Any]) -> dict[str, Any]:
    """Max abs diff of every output, onnxruntime vs the Keras network, on real inputs; ParityError beyond 1e-4."""
    from emostyle_rt.backends import make_runner

    runner = make_runner(path, provider="cpu")
    worst, names = 0.0, []
    try:
        for label, x in _parity_inputs(name, conv):
            got = runner.run({INPUT_NAME: x})
            want = _keras_outputs(model, name, x, conv)
            for out, ref in zip(MTCNN_GRAPHS[name], want):
                diff = float(np.max(np.abs(got[out].astype(np.float64) - ref))) if ref.size else 0.0
                if not np.all(np.isfinite(got[out])):
                    diff = math.inf
                worst = max(worst, diff)
            names.append(label)
    finally:
        runner.close()
    if not worst <= GRAPH_TOLERANCE:
        raise ParityError(f"MTCNN {name} in onnxruntime differs from the package's Keras network by {worst:.3g}."
                          + note(f"max abs diff <= {GRAPH_TOLERANCE:g}", f"{worst:.3g}"))
    return {"max_abs_diff": worst, "tolerance": GRAPH_TOLERANCE, "inputs": names}


def _photos() -> list[tuple[str, np.ndarray]]:
    """Real photos for the cascade check: faces large and small, several faces, none."""
    import cv2
    from skimage import data

    photo = parity.astronaut()
    small = cv2.resize(photo, (160, 160), interpolation=cv2.INTER_AREA)
    group = np.ascontiguousarray(data.chelsea())  # 300x451, a cat: no human face
    group[10:170, 280:440] = small
    group[200:280, 20:100] = cv2.resize(photo, (80, 80), interpolation=cv2.INTER_AREA)
    return [("astronaut 512x512", photo),
            ("astronaut 301x255", cv2.resize(photo, (255, 301), interpolation=cv2.INTER_AREA)),
            ("chelsea + two astronauts 300x451", group),
            ("coffee 400x600 (no face)", np.ascontiguousarray(data.coffee()))]


box_iou = metrics.box_iou  # the one IoU of two x, y, w, h boxes (emostyle_rt.metrics)


def check_cascade(spec: DetectorSpec, root: Path) -> dict[str, Any]:
    """The runtime's cascade on the new graphs vs the package's ``detect_faces`` on real photos.

    Same number of faces, each package face matched with IoU >= 0.9. Proves the
    colour order, orientation and every step around the networks.
    """
    from mtcnn import MTCNN

    from emostyle_rt.detection.mtcnn import MtcnnDetector

    ours = MtcnnDetector(spec, root, provider="cpu", detect_side=None)
    package = MTCNN()
    min_iou, max_mark, faces, names = 1.0, 0.0, 0, []
    try:
        for label, rgb in _photos():
            want = package.detect_faces(rgb)
            got = ours.detect(rgb)
            if len(got) != len(want):
                raise ParityError(f"MTCNN in onnxruntime finds {len(got)} faces in {label}, the mtcnn package "
                                  f"{len(want)}." + note([w["box"] for w in want], [f.box for f in got]))
            for w in want:
                best = max(got, key=lambda f: box_iou(f.box, tuple(w["box"])))
                iou = box_iou(best.box, tuple(w["box"]))
                if iou < MIN_IOU:
                    raise ParityError(f"MTCNN in onnxruntime places a face in {label} elsewhere than the mtcnn "
                                      f"package." + note(f"{w['box']} (IoU >= {MIN_IOU})", f"{best.box} (IoU {iou:.3f})"))
                keys = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")
                marks = [np.hypot(*(np.subtract(p, w["keypoints"][k]))) for p, k in zip(best.landmarks or (), keys)]
                min_iou, max_mark = min(min_iou, iou), max([max_mark, *marks])
            faces += len(want)
            names.append(label)
    finally:
        ours.close()
    return {"faces": faces, "min_iou": round(min_iou, 4), "max_landmark_px": round(max_mark, 2), "tolerance_iou": MIN_IOU,
            "images": names, "reference": "mtcnn.MTCNN().detect_faces"}


def export_mtcnn(root: Path, step: Callable[..., None] = lambda *a: None, opset: int = ONNX_OPSET) -> dict[str, Any]:
    """Export, check and describe the MTCNN detector into bundle folder ``root``; returns the manifest block."""
    nets = load_mtcnn()
    conv = mtcnn_conventions()
    (root / DETECTOR_DIR).mkdir(exist_ok=True)
    graphs = {}
    for name, model in nets.items():
        rel = f"{DETECTOR_DIR}/{name}.onnx"
        size = None if name == "pnet" else conv[f"{name}_size"]
        step("face detector: converting MTCNN %s with tf2onnx", name)
        convert_net(model, name, size, conv, root / rel, opset)
        report = check_net(model, name, root / rel, conv)
        step("face detector: %s ok, max abs diff %.2g vs Keras", name, report["max_abs_diff"])
        graphs[name] = DetectorGraph(rel, sha256_file(root / rel), INPUT_NAME, MTCNN_GRAPHS[name], size, report)
    spec = DetectorSpec(
        **graphs, color="RGB", transposed=False, offset=conv["offset"], divisor=conv["divisor"],
        pad_value=conv["pad_value"], min_face_size=conv["min_face_size"], min_size=conv["min_size"],
        scale_factor=conv["scale_factor"], cell=conv["cell"], stride=conv["stride"],
        thresholds=conv["thresholds"], nms=conv["nms"], kind="mtcnn", cascade=MTCNN_CASCADE, source=_weights_record(),
    )
    spec = detector_from_json(spec.to_json(), root / "manifest.json")  # what the runtime will read
    step("face detector: cascade check (onnxruntime vs the mtcnn package's detect_faces on real photos)")
    cascade = check_cascade(spec, root)
    step("face detector ok: %d faces, min IoU %.3f, landmarks within %.1f px", cascade["faces"], cascade["min_iou"],
         cascade["max_landmark_px"])
    worst = max(g.parity["max_abs_diff"] for g in graphs.values())
    block = spec.to_json()
    block["parity"] = {"max_abs_diff": worst, "tolerance": GRAPH_TOLERANCE, "cascade": cascade}
    return block

