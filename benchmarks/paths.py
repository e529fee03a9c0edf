"""The path registry: every way of running each stage, and what it needs to run.

A path turns a stage's input batch into its output:

- ``detect``: uint8 NHWC images -> list of face lists (OpenCV Haar, the runtime's detector);
- ``classify``: uint8 NHWC face crops -> float probabilities ``[N, 7]``;
- ``style``: uint8 NHWC RGB images -> uint8 NHWC stylised images;
- ``chain``: uint8 NHWC RGB images -> ``ChainOutput`` (emotions + stylised images).

Eager baselines rebuild the source models from the manifest's ``source`` records
(demo seeds, or the user's Keras / PyTorch checkpoints); "ours" paths run the
bundle's graphs through ``emostyle_rt``. Heavy libraries are imported only inside
the functions that need them, so ``emostyle-bench --help`` stays instant and a
cold-start subprocess imports only what its path uses.
"""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from emostyle_rt.errors import BackendError, note

if TYPE_CHECKING:
    import numpy as np

    from emostyle_rt.manifest import Manifest

log = logging.getLogger(__name__)

STAGES = ("detect", "classify", "style", "chain")
#: role of a path in tables: eager baselines, extra eager rows (not baselines), our runtime
ROLES = ("baseline", "extra", "ours")


class PathUnavailable(BackendError):
    """A path cannot run on this machine or with this bundle (the message says why)."""


@dataclass(frozen=True)
class ChainOutput:
    """What a whole-chain path returns: the emotion chosen for each image and the stylised images."""

    emotions: tuple[str, ...]
    images: np.ndarray  # uint8 NHWC


@dataclass(frozen=True)
class BenchPath:
    """One way of running one stage.

    ``build(ctx)`` loads what the path needs and returns ``fn(batch) -> output``;
    it raises ``PathUnavailable`` when the path cannot run here.
    ``precision`` picks the output-agreement tolerance ("fp32" or "fp16").
    """

    name: str
    stage: str
    label: str
    role: str
    build: Callable[[Context], Callable[[Any], Any]]
    precision: str = "fp32"
    device: str = "cpu"


@dataclass
class Context:
    """Models shared by the paths of one benchmark process, loaded on first use."""

    bundle: Path
    _manifest: Any = None
    _keras: Any = None  # (keras model or None, KerasClassifier)
    _torch: dict[str, Any] = field(default_factory=dict)
    _detector: Any = None

    @property
    def manifest(self) -> Manifest:
        if self._manifest is None:
            from emostyle_rt.manifest import load_manifest

            self._manifest = load_manifest(self.bundle)
        return self._manifest

    @property
    def style_id(self) -> str:
        """The style graph timed by the ``style`` stage: the one serving the first label."""
        m = self.manifest
        return m.emotions[m.labels[0]]

    def detector(self) -> Any:
        if self._detector is None:
            from emostyle_rt.faces import make_detector

            self._detector = make_detector(None)
        return self._detector

    def keras(self) -> tuple[Any, Any]:
        """(Keras model or None for a SavedModel, KerasClassifier) rebuilt from the manifest's source."""
        if self._keras is None:
            self._keras = _load_keras(self.manifest)
        return self._keras

    def torch_model(self, style_id: str) -> Any:
        """The eager PyTorch style network of ``style_id`` (CPU, eval mode)."""
        if style_id not in self._torch:
            self._torch[style_id] = _load_torch_style(self.manifest, style_id)
        return self._torch[style_id]


def _quiet_tf() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")


def _load_keras(manifest: Manifest) -> tuple[Any, Any]:
    """Rebuild the eager classifier: the demo seed, or the user's .keras/.h5/SavedModel."""
    _quiet_tf()
    src = dict(manifest.raw.get("classifier", {}).get("source", {}))
    fmt = src.get("format")
    try:
        import keras
    except ImportError as exc:
        raise PathUnavailable(f"Keras/TensorFlow is not installed ({exc}).") from None
    from emostyle_export.classifiers import from_keras_model, load_classifier

    if fmt == "demo":
        # Same steps as emostyle_export.bundle.demo_classifier, keeping the model object.
        import keras
        from emostyle_export.models.classifier import build_classifier

        keras.utils.set_random_seed(int(src.get("seed", 0)))
        model = build_classifier()
        return model, from_keras_model(model, "demo", None)
    path = src.get("path")
    if not path or not Path(path).exists():
        raise PathUnavailable(
            "The classifier's source checkpoint is not on this machine." + note("the file named in the manifest", path)
        )
    if fmt == "savedmodel":
        return None, load_classifier(path)
    import keras

    model = keras.models.load_model(path, compile=False)
    return model, from_keras_model(model, fmt or "keras", Path(path))


def _load_torch_style(manifest: Manifest, style_id: str) -> Any:
    """Rebuild an eager style network: the demo seed, or the user's checkpoint."""
    try:
        import torch
    except ImportError as exc:
        raise PathUnavailable(f"PyTorch is not installed ({exc}).") from None
    raw = dict(manifest.raw.get("styles", {}).get(style_id, {}))
    src = dict(raw.get("source", {}))
    if src.get("family") == "demo":
        from emostyle_export.models.transformer import TransformerNet

        torch.manual_seed(int(src.get("seed", 0)))
        return TransformerNet().eval()
    path = src.get("path")
    if not path or not Path(path).is_file():
        raise PathUnavailable(
            f"The source checkpoint of style {style_id!r} is not on this machine."
            + note("the file named in the manifest", path)
        )
    from emostyle_export.checkpoints import load_style_checkpoint

    return load_style_checkpoint(path, raw.get("convention")).model.eval()


# ---------------------------------------------------------------- eager Keras (classify)


def _scaled(ctx: Context, crops: np.ndarray) -> np.ndarray:
    import numpy as np
    from emostyle_export.classifiers import scale_pixels

    return np.asarray(scale_pixels(crops.astype(np.float32), ctx.manifest.classifier.scale), np.float32)


def _as_probs(ctx: Context, out: Any) -> np.ndarray:
    import numpy as np
    from emostyle_export.classifiers import softmax

    p = np.asarray(out, np.float32)
    if ctx.manifest.raw.get("classifier", {}).get("output", {}).get("softmax_added"):
        p = softmax(p.astype(np.float64)).astype(np.float32)
    return p


def _keras_eager(ctx: Context) -> Callable[[np.ndarray], np.ndarray]:
    _, clf = ctx.keras()
    return lambda crops: _as_probs(ctx, clf.predict(_scaled(ctx, crops)))


def _keras_tf_function(ctx: Context) -> Callable[[np.ndarray], np.ndarray]:
    _, clf = ctx.keras()
    import tensorflow as tf

    fn = tf.function(clf.predict)  # model(x, training=False) traced once per batch size
    return lambda crops: _as_probs(ctx, fn(tf.constant(_scaled(ctx, crops))))


def _keras_predict(ctx: Context) -> Callable[[np.ndarray], np.ndarray]:
    model, _ = ctx.keras()
    if model is None:
        raise PathUnavailable("A SavedModel classifier has no Keras model.predict.")
    return lambda crops: _as_probs(ctx, model.predict(_scaled(ctx, crops), verbose=0))


# ---------------------------------------------------------------- eager PyTorch (style)


def _torch_device(device: str) -> None:
    try:
        import torch
    except ImportError as exc:
        raise PathUnavailable(f"PyTorch is not installed ({exc}).") from None
    if device == "cuda" and not torch.cuda.is_available():
        raise PathUnavailable("no CUDA GPU (torch.cuda.is_available() is False).")


def torch_stylize(model: Any, images: np.ndarray, convention: str, device: str = "cpu", half: bool = False) -> np.ndarray:
    """Eager PyTorch pipeline (inference_mode): uint8 NHWC -> uint8 NHWC, in the checkpoint's convention."""
    import numpy as np
    import torch
    from emostyle_export.checkpoints import IMAGENET_MEAN, IMAGENET_STD

    dtype = torch.float16 if half else torch.float32
    with torch.inference_mode():
        x = torch.from_numpy(np.ascontiguousarray(images)).to(device).permute(0, 3, 1, 2).float()
        mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)
        if convention == "imagenet":
            x = (x / 255.0 - mean) / std
        y = model(x.to(dtype)).float()
        y = (y * std + mean).clamp(0.0, 1.0) * 255.0 if convention == "imagenet" else y.clamp(0.0, 255.0)
        return y.round().to(torch.uint8).permute(0, 2, 3, 1).contiguous().cpu().numpy()


def _torch_style_fn(device: str, half: bool) -> Callable[[Context], Callable[[np.ndarray], np.ndarray]]:
    def build(ctx: Context) -> Callable[[np.ndarray], np.ndarray]:
        _torch_device(device)
        sid = ctx.style_id
        model = ctx.torch_model(sid)
        if device != "cpu":
            model = copy.deepcopy(model).to(device)
            if half:
                model = model.half()
        convention = ctx.manifest.styles[sid].convention
        return lambda images: torch_stylize(model, images, convention, device, half)

    return build


# ---------------------------------------------------------------- our runtime


def _check_provider(provider: str | None, backend: str) -> None:
    """Raise PathUnavailable unless this backend/provider can run here."""
    from emostyle_rt.backends.onnxruntime import choose_providers, cuda_device_count

    if backend == "tensorrt":
        if cuda_device_count() == 0:
            raise PathUnavailable("no CUDA GPU answers (native TensorRT engines need one).")
        return
    try:
        choose_providers(provider)
    except BackendError as exc:
        raise PathUnavailable(str(exc)) from None


def _runner(ctx: Context, key: str, backend: str, provider: str | None) -> Any:
    from emostyle_rt.backends import runner_for

    _check_provider(provider, backend)
    try:
        return runner_for(ctx.manifest, key, backend=backend, provider=provider)
    except BackendError as exc:
        raise PathUnavailable(str(exc)) from None
    except (ImportError, AttributeError) as exc:  # native module not finished / not installed
        raise PathUnavailable(f"native TensorRT backend not usable: {exc}") from None


def _ours_classify(backend: str, provider: str | None) -> Callable[[Context], Callable[[np.ndarray], np.ndarray]]:
    def build(ctx: Context) -> Callable[[np.ndarray], np.ndarray]:
        spec = ctx.manifest.classifier
        r = _runner(ctx, "classifier", backend, provider)
        return lambda crops: r.run({spec.input_name: crops})[spec.output_name]

    return build


def _ours_style(backend: str, provider: str | None) -> Callable[[Context], Callable[[np.ndarray], np.ndarray]]:
    def build(ctx: Context) -> Callable[[np.ndarray], np.ndarray]:
        spec = ctx.manifest.styles[ctx.style_id]
        r = _runner(ctx, ctx.style_id, backend, provider)
        return lambda images: r.run({spec.input_name: images})[spec.output_name]

    return build


def _ours_chain(backend: str, provider: str | None) -> Callable[[Context], Callable[[np.ndarray], ChainOutput]]:
    def build(ctx: Context) -> Callable[[np.ndarray], ChainOutput]:
        import numpy as np

        from emostyle_rt.stylizer import Stylizer

        _check_provider(provider, backend)
        try:
            st = Stylizer(ctx.manifest, backend=backend, provider=provider)
        except BackendError as exc:
            raise PathUnavailable(str(exc)) from None

        def run(images: np.ndarray) -> ChainOutput:
            results = st.stylize_batch(list(images))
            return ChainOutput(tuple(r.emotion for r in results), np.stack([r.image for r in results]))

        return run

    return build


# ---------------------------------------------------------------- eager chain, detection


def _eager_chain(ctx: Context) -> Callable[[np.ndarray], ChainOutput]:
    """Haar face -> crop -> eager Keras model(x) -> that emotion's eager PyTorch network.

    Same detector, crop, padding and batching rules as the runtime's Stylizer, so
    the two chains do the same work with different inference engines.
    """
    import cv2
    import numpy as np

    from emostyle_rt.faces import crop_face
    from emostyle_rt.stylizer import BATCH_PIXELS

    _torch_device("cpu")
    m = ctx.manifest
    spec = m.classifier
    _, clf = ctx.keras()
    det = ctx.detector()
    mult = m.size_multiple

    def run(images: np.ndarray) -> ChainOutput:
        crops = []
        for rgb in images:
            faces = det.detect(rgb)
            crops.append(crop_face(rgb, faces[0] if faces else None, (spec.height, spec.width), spec.channels, 0.2))
        probs = _as_probs(ctx, clf.predict(_scaled(ctx, np.stack(crops))))
        emotions = tuple(m.labels[int(i)] for i in probs.argmax(axis=1))
        out = np.empty_like(images)
        h, w = images.shape[1:3]
        ph, pw = -h % mult, -w % mult
        per_run = max(1, BATCH_PIXELS // ((h + ph) * (w + pw)))
        for sid in dict.fromkeys(m.emotions[e] for e in emotions):
            idx = [i for i, e in enumerate(emotions) if m.emotions[e] == sid]
            model, conv = ctx.torch_model(sid), m.styles[sid].convention
            for start in range(0, len(idx), per_run):
                chunk = idx[start : start + per_run]
                batch = np.stack([cv2.copyMakeBorder(images[i], 0, ph, 0, pw, cv2.BORDER_REFLECT_101) for i in chunk])
                out[chunk] = torch_stylize(model, batch, conv)[:, :h, :w]
        return ChainOutput(emotions, out)

    return run


def _haar(ctx: Context) -> Callable[[np.ndarray], list]:
    det = ctx.detector()
    return lambda images: [det.detect(rgb) for rgb in images]


# ---------------------------------------------------------------- the registry


def default_paths() -> tuple[BenchPath, ...]:
    """Every path this benchmark knows, in table order (baselines first)."""
    P = BenchPath
    return (
        P("haar", "detect", "OpenCV Haar cascade (runtime detector)", "ours", _haar),
        P("keras-eager", "classify", "Keras eager model(x, training=False)", "baseline", _keras_eager),
        P("keras-tf-function", "classify", "Keras tf.function", "baseline", _keras_tf_function),
        P("keras-predict", "classify", "Keras model.predict", "extra", _keras_predict),
        P("ort-cpu", "classify", "ours: onnxruntime CPU", "ours", _ours_classify("onnxruntime", "cpu")),
        P("ort-cuda", "classify", "ours: onnxruntime CUDA EP", "ours", _ours_classify("onnxruntime", "cuda"),
          device="cuda"),
        P("ort-trt-ep", "classify", "ours: onnxruntime TensorRT EP", "ours",
          _ours_classify("onnxruntime", "tensorrt"), "fp16", "cuda"),
        P("tensorrt", "classify", "ours: native TensorRT", "ours", _ours_classify("tensorrt", None), "fp16", "cuda"),
        P("torch-eager", "style", "PyTorch eager CPU (inference_mode)", "baseline", _torch_style_fn("cpu", False)),
        P("torch-cuda-fp32", "style", "PyTorch eager CUDA fp32", "baseline", _torch_style_fn("cuda", False),
          device="cuda"),
        P("torch-cuda-fp16", "style", "PyTorch eager CUDA fp16", "extra", _torch_style_fn("cuda", True), "fp16",
          "cuda"),
        P("ort-cpu", "style", "ours: onnxruntime CPU", "ours", _ours_style("onnxruntime", "cpu")),
        P("ort-cuda", "style", "ours: onnxruntime CUDA EP", "ours", _ours_style("onnxruntime", "cuda"), device="cuda"),
        P("ort-trt-ep", "style", "ours: onnxruntime TensorRT EP", "ours", _ours_style("onnxruntime", "tensorrt"),
          "fp16", "cuda"),
        P("tensorrt", "style", "ours: native TensorRT", "ours", _ours_style("tensorrt", None), "fp16", "cuda"),
        P("eager-chain", "chain", "eager chain (Haar + Keras model(x) + PyTorch)", "baseline", _eager_chain),
        P("ort-cpu", "chain", "ours: Stylizer, onnxruntime CPU", "ours", _ours_chain("onnxruntime", "cpu")),
        P("ort-cuda", "chain", "ours: Stylizer, onnxruntime CUDA EP", "ours", _ours_chain("onnxruntime", "cuda"),
          device="cuda"),
        P("ort-trt-ep", "chain", "ours: Stylizer, onnxruntime TensorRT EP", "ours",
          _ours_chain("onnxruntime", "tensorrt"), "fp16", "cuda"),
        P("tensorrt", "chain", "ours: Stylizer, native TensorRT", "ours", _ours_chain("tensorrt", None), "fp16",
          "cuda"),
    )


#: Baselines that speedups are computed against, per stage: (path name, column title).
BASELINES: dict[str, tuple[tuple[str, str], ...]] = {
    "detect": (),
    "classify": (("keras-eager", "x eager"), ("keras-tf-function", "x tf.function")),
    "style": (("torch-eager", "x eager"), ("torch-cuda-fp32", "x eager CUDA")),
    "chain": (("eager-chain", "x eager"),),
}
#: The path whose output is the reference for output agreement, per stage.
REFERENCE = {"classify": "keras-eager", "style": "torch-eager", "chain": "eager-chain"}


def find_path(paths: tuple[BenchPath, ...], stage: str, name: str) -> BenchPath:
    """The path ``name`` of ``stage``; a typed error listing the known names otherwise."""
    for p in paths:
        if p.stage == stage and p.name == name:
            return p
    raise PathUnavailable(
        f"No path {name!r} for stage {stage!r}." + note("one of", sorted({p.name for p in paths if p.stage == stage}))
    )
