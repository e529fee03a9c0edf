"""The path registry: every way of running each stage, and what it needs to run.

A path turns a stage's input batch into its output:

- ``detect``: uint8 NHWC images -> list of face lists (the bundle's MTCNN in onnxruntime, OpenCV Haar);
- ``classify``: uint8 NHWC face crops -> float probabilities ``[N, 7]``;
- ``style``: uint8 NHWC RGB images -> uint8 NHWC stylised images;
- ``chain``: uint8 NHWC RGB images -> ``ChainOutput`` (emotions + stylised images);
- ``video``: the frames of a clip (uint8 NHWC) -> ``VideoOutput`` (``Stylizer.stream``, one style, coherence off
  or flow; the output check reports each path's warping error, ``emostyle_rt.video.coherence``).

Eager baselines rebuild the source models from the manifest's ``source`` records
(demo seeds, or the user's Keras / PyTorch checkpoints); "ours" paths run the
bundle's graphs through ``emostyle_rt``. Heavy libraries are imported only inside
the functions that need them, so ``emostyle-bench --help`` stays instant and a
cold-start subprocess imports only what its path uses.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from emostyle_rt.errors import BackendError, note, sentence
from emostyle_rt.logutil import quiet_tensorflow

if TYPE_CHECKING:
    import numpy as np

    from emostyle_rt.manifest import Manifest

log = logging.getLogger(__name__)

STAGES = ("detect", "classify", "style", "chain", "video")
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
class VideoOutput:
    """What a video path returns: the clip's frames and the styled frames (the warping error needs both)."""

    inputs: np.ndarray  # uint8 NHWC
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
    needs: tuple[str, ...] = ()  # modules it imports (checked by ``availability`` without importing them)


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
        """The runtime's default detector for this bundle (its MTCNN; Haar for bundles without one)."""
        if self._detector is None:
            from emostyle_rt.detection.faces import make_detector

            self._detector = make_detector(None, self.manifest, provider="cpu")
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


def _not_installed(what: str, exc: ImportError) -> PathUnavailable:
    from emostyle_export.extras import INSTALL

    return PathUnavailable(f"{what} is not installed ({exc}); {INSTALL['bench']}.")


def _load_keras(manifest: Manifest) -> tuple[Any, Any]:
    """Rebuild the eager classifier: an old demo's seed, a vendored model (the demo's fer classifier), or the
    user's .keras/.h5/SavedModel."""
    quiet_tensorflow()
    src = dict(manifest.classifier.source)
    fmt = src.get("format")
    try:
        import keras
    except ImportError as exc:
        raise _not_installed("Keras/TensorFlow", exc) from None
    from emostyle_export.classifiers import from_keras_model, load_classifier

    if fmt == "demo":
        # Same steps as emostyle_export.bundle.demo_classifier, keeping the model object.
        import keras
        from emostyle_export.models.classifier import build_classifier

        keras.utils.set_random_seed(int(src.get("seed", 0)))
        model = build_classifier()
        return model, from_keras_model(model, "demo", None)
    path = src.get("path")
    if src.get("pretrained"):  # vendored with emostyle-export (the demo's fer classifier): found by key
        from emostyle_export.pretrained import classifier as pretrained

        try:
            path = str(pretrained(str(src["pretrained"])).checked_path())
        except Exception as exc:  # an unknown key (a newer bundle) or a damaged file
            raise PathUnavailable(f"The bundle's vendored classifier cannot be loaded: {exc}") from None
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
        raise _not_installed("PyTorch", exc) from None
    spec = manifest.styles[style_id]
    src = dict(spec.source)
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

    return load_style_checkpoint(path, spec.convention).model.eval()


# ---------------------------------------------------------------- eager Keras (classify)


def _scaled(ctx: Context, crops: np.ndarray) -> np.ndarray:
    import numpy as np
    from emostyle_export.classifiers import scale_pixels

    return np.asarray(scale_pixels(crops.astype(np.float32), ctx.manifest.classifier.scale), np.float32)


def _as_probs(ctx: Context, out: Any) -> np.ndarray:
    import numpy as np
    from emostyle_export.classifiers import softmax

    p = np.asarray(out, np.float32)
    if ctx.manifest.classifier.softmax_added:
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
        raise _not_installed("PyTorch", exc) from None
    if device == "cuda" and not torch.cuda.is_available():
        raise PathUnavailable("no CUDA GPU (torch.cuda.is_available() is False).")


def torch_stylize(model: Any, images: np.ndarray, convention: str, device: str = "cpu", half: bool = False) -> np.ndarray:
    """Eager PyTorch pipeline (inference_mode): uint8 NHWC -> uint8 NHWC, in the checkpoint's convention.

    The bundle's style contract (``emostyle_export.styles.style_contract``) around
    ``model``; ``half``: ``model`` is already in fp16 (its parameters' dtype decides).
    """
    import numpy as np
    import torch
    from emostyle_export.styles import style_contract

    with torch.inference_mode():
        graph = style_contract(model, convention).to(device)
        x = torch.from_numpy(np.ascontiguousarray(images)).to(device)
        return graph(x).contiguous().cpu().numpy()


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


def _torch_compile(device: str) -> Callable[[Context], Callable[[np.ndarray], np.ndarray]]:
    """The anchor: the eager network compiled in-process by ``torch.compile`` (what a PyTorch user would do).

    CPU: fp32, default mode with inductor's freezing (weights prepacked, like
    the AOTInductor CPU packages). CUDA: fp16 with fp32 instance norms (like the
    fp16 packages), ``mode="max-autotune-no-cudagraphs"``. Compiled on the first
    call (the output check), which is not timed.
    """

    def build(ctx: Context) -> Callable[[np.ndarray], np.ndarray]:
        _torch_device(device)
        import torch
        from emostyle_export.styles import lower_precision, style_contract

        sid = ctx.style_id
        model = copy.deepcopy(ctx.torch_model(sid))
        graph = style_contract(lower_precision(model, "fp16" if device == "cuda" else "fp32"),
                               ctx.manifest.styles[sid].convention).to(device).eval()
        if device == "cpu":
            import torch._inductor.config as inductor_config

            inductor_config.freezing = True
        compiled = torch.compile(graph, mode="max-autotune-no-cudagraphs" if device == "cuda" else None)

        def run(images: np.ndarray) -> np.ndarray:
            import numpy as np

            with torch.no_grad():
                x = torch.from_numpy(np.ascontiguousarray(images)).to(device)
                return compiled(x).cpu().numpy()

        return run

    return build


def _aoti_style(device: str) -> Callable[[Context], Callable[[np.ndarray], np.ndarray]]:
    """The bundle's AOTInductor package for ``device`` (emostyle-export --bundle DIR --aoti)."""

    def build(ctx: Context) -> Callable[[np.ndarray], np.ndarray]:
        from emostyle_rt.backends import aoti

        spec = ctx.manifest.styles[ctx.style_id]
        why = aoti_missing(ctx.manifest, [ctx.style_id], device)
        if why:
            raise PathUnavailable(why)
        try:
            r = aoti.find_runner(ctx.manifest, ctx.style_id, required=True, device=device)
        except BackendError as exc:
            raise PathUnavailable(str(exc)) from None
        assert r is not None
        return lambda images: r.run({spec.input_name: images})[spec.output_name]

    return build


def aoti_missing(manifest: Manifest, style_ids: list[str], device: str) -> str | None:
    """Why the bundle cannot run ``style_ids`` as AOTInductor packages on ``device`` here (None: it can).

    Looks at sidecars only (nothing is loaded); names this device's package keys, never another's.
    """
    from emostyle_rt.backends.aoti import host
    from emostyle_rt.bundle.compiled import find_package

    if device == "cuda":
        from emostyle_rt.backends.ort import cuda_device_count

        if cuda_device_count() == 0:
            return "no CUDA GPU answers"
    here = host()
    if here.torch_version is None:
        return "torch is not installed (AOTInductor packages run under torch)"
    gone = [sid for sid in style_ids
            if find_package(manifest.root, sid, here, [device], source_sha256=manifest.styles[sid].sha256) is None]
    if not gone:
        return None
    keys = " or ".join(here.keys(device)) or "none for this machine"
    build = "emostyle-export --bundle DIR --aoti" + (" --device cuda" if device == "cuda" else "")
    held = sorted({e.key for e in manifest.aoti if e.device == device})  # this device's: a CUDA row names no CPU key
    return (f"the bundle has no {device.upper()} AOTInductor package for this machine for "
            f"{'style ' + gone[0] if len(gone) == 1 else f'{len(gone)} styles'} (build them with: {build})."
            + note(f"aoti/<{keys}>/<style>.pt2", ", ".join(held) if held else f"no {device.upper()} packages"))


def bundle_availability(p: BenchPath, manifest: Manifest, style_id: str | None = None) -> str | None:
    """Why ``p`` cannot run with this bundle (None: nothing in the bundle stops it); nothing is loaded."""
    if p.name == "mtcnn" and manifest.detector is None:
        return f"bundle {manifest.root} has no face detector (emostyle-export --bundle DIR --detector mtcnn)"
    if p.name.startswith("aoti-"):
        sids = [style_id or manifest.emotions[manifest.labels[0]]] if p.stage == "style" else list(manifest.styles)
        return aoti_missing(manifest, sids, p.device)
    return None


def _check_provider(provider: str | None, backend: str) -> None:
    """Raise PathUnavailable unless this backend/provider can run here."""
    from emostyle_rt.backends.ort import choose_providers, cuda_device_count

    if backend == "tensorrt":
        if cuda_device_count() == 0:
            raise PathUnavailable("no CUDA GPU answers (native TensorRT engines need one).")
        return
    if backend == "aoti":
        return
    try:
        choose_providers(provider)
    except BackendError as exc:
        raise PathUnavailable(str(exc)) from None


def _runner(ctx: Context, key: str, backend: str, provider: str | None, precision: str = "auto") -> Any:
    from emostyle_rt.backends import runner_for

    _check_provider(provider, backend)
    try:
        return runner_for(ctx.manifest, key, backend=backend, provider=provider, precision=precision)
    except BackendError as exc:
        raise PathUnavailable(str(exc)) from None
    except (ImportError, AttributeError) as exc:  # native module not finished / not installed
        raise PathUnavailable("native TensorRT backend not usable: " + sentence(exc)) from None


def _ours_classify(backend: str, provider: str | None, precision: str = "auto",
                   ) -> Callable[[Context], Callable[[np.ndarray], np.ndarray]]:
    def build(ctx: Context) -> Callable[[np.ndarray], np.ndarray]:
        spec = ctx.manifest.classifier
        r = _runner(ctx, "classifier", backend, provider, precision)
        return lambda crops: r.run({spec.input_name: crops})[spec.output_name]

    return build


def _ours_style(backend: str, provider: str | None, precision: str = "auto",
                ) -> Callable[[Context], Callable[[np.ndarray], np.ndarray]]:
    def build(ctx: Context) -> Callable[[np.ndarray], np.ndarray]:
        spec = ctx.manifest.styles[ctx.style_id]
        r = _runner(ctx, ctx.style_id, backend, provider, precision)
        return lambda images: r.run({spec.input_name: images})[spec.output_name]

    return build


def _ours_chain(backend: str, provider: str | None, precision: str = "auto", device: str = "cpu",
                ) -> Callable[[Context], Callable[[np.ndarray], ChainOutput]]:
    def build(ctx: Context) -> Callable[[np.ndarray], ChainOutput]:
        import numpy as np

        from emostyle_rt.stylizer import Stylizer

        from emostyle_rt.tiling import worker_budget

        _check_provider(provider, backend)
        if backend == "aoti":  # the Stylizer would fail on the first image, not here: say so now
            why = aoti_missing(ctx.manifest, list(ctx.manifest.styles), device)
            if why:
                raise PathUnavailable(why)
        try:
            # The budget of a process that opens its Stylizer first (as a user's does): left to the default, a
            # Stylizer opened here, after other stages grew this process (onnxruntime's arena, torch), would get
            # the 512 MB floor and run 720p and 1080p in tiles spooled to disk (benchmarks/results/openvino-cpu.md).
            st = Stylizer(ctx.manifest, backend=backend, provider=provider, precision=precision,
                          memory_budget=None if provider in ("cuda", "tensorrt") else worker_budget(1))
        except BackendError as exc:
            raise PathUnavailable(str(exc)) from None

        def run(images: np.ndarray) -> ChainOutput:
            results = st.stylize_batch(list(images))
            return ChainOutput(tuple(r.emotion for r in results), np.stack([r.image for r in results]))

        return run

    return build


def _ours_video(coherence: str) -> Callable[[Context], Callable[[np.ndarray], VideoOutput]]:
    """``Stylizer.stream`` (onnxruntime CPU) over a clip with the ``style`` stage's style and ``coherence``."""
    def build(ctx: Context) -> Callable[[np.ndarray], VideoOutput]:
        import numpy as np

        from emostyle_rt.stylizer import Stylizer

        _check_provider("cpu", "onnxruntime")
        st = Stylizer(ctx.manifest, backend="onnxruntime", provider="cpu")
        emotion = ctx.manifest.labels[0]

        def run(frames: np.ndarray) -> VideoOutput:
            out = [f.image for f in st.stream(list(frames), fps=30, emotion=emotion, coherence=coherence)]
            return VideoOutput(frames, np.stack(out))

        return run

    return build


# ---------------------------------------------------------------- eager chain, detection


def _eager_chain(ctx: Context) -> Callable[[np.ndarray], ChainOutput]:
    """The runtime's face detector -> the classifier's own preprocessing -> eager Keras model(x) -> that emotion's
    eager PyTorch network.

    The classifier's own preprocessing is its package's (``crop_agreement.OWN_PIPELINES``: fer's code, for the
    demo's classifier) when the manifest names one, so "same emotion" checks the runtime's crop too; otherwise
    the runtime's crop spec. Same detector, padding and batching rules as the runtime's Stylizer.
    """
    import numpy as np

    from emostyle_rt.detection.faces import crop_face
    from emostyle_rt.imaging.io import pad_to_multiple
    from emostyle_rt.stylizer import BATCH_PIXELS

    from .crop_agreement import OWN_PIPELINES, own_pipeline

    _torch_device("cpu")
    m = ctx.manifest
    spec = m.classifier
    _, clf = ctx.keras()
    det = ctx.detector()
    mult = m.size_multiple
    own = OWN_PIPELINES.get(own_pipeline(m) or "")

    def run(images: np.ndarray) -> ChainOutput:
        inputs = []
        for rgb in images:
            faces = det.detect(rgb)
            if faces and own is not None:
                inputs.append(np.asarray(own(rgb, [faces[0].box]), np.float32)[0])
            else:
                crop = crop_face(rgb, faces[0] if faces else None, (spec.height, spec.width), spec.channels, spec.crop)
                inputs.append(_scaled(ctx, crop[None])[0])
        probs = _as_probs(ctx, clf.predict(np.stack(inputs)))
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
                batch = np.stack([pad_to_multiple(images[i], mult) for i in chunk])
                out[chunk] = torch_stylize(model, batch, conv)[:, :h, :w]
        return ChainOutput(emotions, out)

    return run


def _haar(ctx: Context) -> Callable[[np.ndarray], list]:
    from emostyle_rt.detection.faces import HaarDetector, haar_available

    ok, why = haar_available()
    if not ok:
        raise PathUnavailable(why)
    det = HaarDetector()
    return lambda images: [det.detect(rgb) for rgb in images]


def _mtcnn(ctx: Context) -> Callable[[np.ndarray], list]:
    """The bundle's MTCNN (P-Net per pyramid level, R-Net and O-Net once each) in onnxruntime CPU."""
    from emostyle_rt.detection.faces import make_detector

    if ctx.manifest.detector is None:
        raise PathUnavailable(f"bundle {ctx.bundle} has no face detector (emostyle-export --bundle DIR --detector mtcnn)")
    det = make_detector("mtcnn", ctx.manifest, provider="cpu")
    return lambda images: [det.detect(rgb) for rgb in images]


# ---------------------------------------------------------------- the registry


def default_paths() -> tuple[BenchPath, ...]:
    """Every path this benchmark knows, in table order (baselines first)."""
    P = BenchPath
    keras, torch, ort, trt = ("tensorflow", "keras"), ("torch",), ("onnxruntime",), ("tensorrt", "onnxruntime")
    aoti = ("torch", "onnxruntime")
    return (
        P("mtcnn", "detect", "ours: MTCNN (bundle), onnxruntime CPU", "ours", _mtcnn, needs=("onnxruntime",)),
        P("haar", "detect", "OpenCV Haar cascade (4.x only)", "ours", _haar, needs=("cv2",)),
        P("keras-eager", "classify", "Keras eager model(x, training=False)", "baseline", _keras_eager, needs=keras),
        P("keras-tf-function", "classify", "Keras tf.function", "baseline", _keras_tf_function, needs=keras),
        P("keras-predict", "classify", "Keras model.predict", "extra", _keras_predict, needs=keras),
        P("ort-cpu", "classify", "ours: onnxruntime CPU", "ours", _ours_classify("onnxruntime", "cpu"), needs=ort),
        P("ort-cuda", "classify", "ours: onnxruntime CUDA EP, FP32 graph", "ours",
          _ours_classify("onnxruntime", "cuda", "fp32"), device="cuda", needs=ort),
        P("ort-cuda-fp16", "classify", "ours: onnxruntime CUDA EP, FP16 graph", "ours",
          _ours_classify("onnxruntime", "cuda", "fp16"), "fp16", "cuda", needs=ort),
        P("ort-trt-ep", "classify", "ours: onnxruntime TensorRT EP", "ours",
          _ours_classify("onnxruntime", "tensorrt"), "fp16", "cuda", needs=ort),
        P("tensorrt", "classify", "ours: native TensorRT", "ours", _ours_classify("tensorrt", None), "fp16", "cuda",
          needs=trt),
        P("torch-eager", "style", "PyTorch eager CPU (inference_mode)", "baseline", _torch_style_fn("cpu", False),
          needs=torch),
        P("torch-cuda-fp32", "style", "PyTorch eager CUDA fp32", "baseline", _torch_style_fn("cuda", False),
          device="cuda", needs=torch),
        P("torch-cuda-fp16", "style", "PyTorch eager CUDA fp16", "extra", _torch_style_fn("cuda", True), "fp16",
          "cuda", needs=torch),
        P("ort-cpu", "style", "ours: onnxruntime CPU", "ours", _ours_style("onnxruntime", "cpu"), needs=ort),
        P("ort-cuda", "style", "ours: onnxruntime CUDA EP, FP32 graph", "ours", _ours_style("onnxruntime", "cuda", "fp32"),
          device="cuda", needs=ort),
        P("ort-cuda-fp16", "style", "ours: onnxruntime CUDA EP, FP16 graph", "ours",
          _ours_style("onnxruntime", "cuda", "fp16"), "fp16", "cuda", needs=ort),
        P("ort-trt-ep", "style", "ours: onnxruntime TensorRT EP", "ours", _ours_style("onnxruntime", "tensorrt"),
          "fp16", "cuda", needs=ort),
        P("tensorrt", "style", "ours: native TensorRT", "ours", _ours_style("tensorrt", None), "fp16", "cuda",
          needs=trt),
        P("aoti-cpu", "style", "ours: AOTInductor package, CPU", "ours", _aoti_style("cpu"), needs=aoti),
        P("aoti-cuda", "style", "ours: AOTInductor package, CUDA", "ours", _aoti_style("cuda"), "fp16", "cuda",
          needs=aoti),
        P("torch-compile", "style", "PyTorch torch.compile CPU (in-process, freezing)", "extra", _torch_compile("cpu"),
          needs=torch),
        P("torch-compile-cuda", "style", "PyTorch torch.compile CUDA fp16 (max-autotune-no-cudagraphs)", "extra",
          _torch_compile("cuda"), "fp16", "cuda", needs=torch),
        P("eager-chain", "chain", "eager chain (runtime detector + Keras model(x) + PyTorch)", "baseline", _eager_chain,
          needs=keras + torch),
        P("ort-cpu", "chain", "ours: Stylizer, onnxruntime CPU", "ours", _ours_chain("onnxruntime", "cpu"), needs=ort),
        P("ort-cuda", "chain", "ours: Stylizer, onnxruntime CUDA EP, FP32 graphs", "ours",
          _ours_chain("onnxruntime", "cuda", "fp32"), device="cuda", needs=ort),
        P("ort-cuda-fp16", "chain", "ours: Stylizer, onnxruntime CUDA EP, FP16 graphs (default on a GPU)", "ours",
          _ours_chain("onnxruntime", "cuda", "fp16"), "fp16", "cuda", needs=ort),
        P("ort-trt-ep", "chain", "ours: Stylizer, onnxruntime TensorRT EP", "ours",
          _ours_chain("onnxruntime", "tensorrt"), "fp16", "cuda", needs=ort),
        P("tensorrt", "chain", "ours: Stylizer, native TensorRT", "ours", _ours_chain("tensorrt", None), "fp16",
          "cuda", needs=trt),
        P("aoti-cpu", "chain", "ours: Stylizer, AOTInductor packages, CPU", "ours",
          _ours_chain("aoti", None, device="cpu"), needs=aoti),
        P("aoti-cuda", "chain", "ours: Stylizer, AOTInductor packages, CUDA", "ours",
          _ours_chain("aoti", None, device="cuda"), "fp16", "cuda", needs=aoti),
        P("per-frame", "video", "ours: Stylizer.stream, coherence off", "baseline",
          _ours_video("off"), needs=ort),
        P("coherent", "video", "ours: Stylizer.stream, coherence flow", "ours",
          _ours_video("flow"), needs=ort),
    )


#: onnxruntime execution provider of each "ours" onnxruntime path.
_ORT_PROVIDER = {"ort-cpu": "cpu", "ort-cuda": "cuda", "ort-cuda-fp16": "cuda", "ort-trt-ep": "tensorrt"}


def availability(p: BenchPath) -> str | None:
    """None when ``p`` can run on this machine, else why not (no bundle is opened: :func:`bundle_availability`).

    Cheap: modules are looked up without importing them, and PyTorch is imported
    only when a CUDA GPU answers.
    """
    from emostyle_export.extras import INSTALL, missing

    from emostyle_rt.backends.ort import cuda_device_count, tensorrt_libraries

    if p.device == "cuda" and cuda_device_count() == 0:
        return "no CUDA GPU answers"
    gone = missing(p.needs)
    if p.name == "haar" and not gone:
        from emostyle_rt.detection.faces import haar_available

        ok, why = haar_available()
        if not ok:
            return why
    if gone:
        how = 'pip install "emostyle-rt[gpu,tensorrt]"' if "tensorrt" in gone else INSTALL["bench"]
        return f"{', '.join(gone)} not installed; {how}"
    if p.name in _ORT_PROVIDER:
        try:
            _check_provider(_ORT_PROVIDER[p.name], "onnxruntime")
        except PathUnavailable as exc:
            return str(exc)
        if p.name == "ort-trt-ep" and not tensorrt_libraries():
            return "the TensorRT libraries (libnvinfer) are not installed"
    if p.name == "tensorrt":
        from emostyle_rt.backends.tensorrt import runtime_identity

        if runtime_identity() is None:
            return "TensorRT or cuda-python cannot reach the GPU; pip install \"emostyle-rt[gpu,tensorrt]\""
    if p.name == "aoti-cpu" and p.stage == "chain" and cuda_device_count() > 0:
        return "on a CUDA machine backend='aoti' runs the CUDA packages (see aoti-cuda)"
    if p.name.startswith(("torch-cuda", "torch-compile-cuda")):
        import torch

        if not torch.cuda.is_available():
            return "this PyTorch build has no CUDA (torch.cuda.is_available() is False)"
    return None


#: Baselines that speedups are computed against, per stage: (path name, column title).
BASELINES: dict[str, tuple[tuple[str, str], ...]] = {
    "detect": (),
    "classify": (("keras-eager", "x eager"), ("keras-tf-function", "x tf.function")),
    "style": (("torch-eager", "x eager"), ("torch-cuda-fp32", "x eager CUDA")),
    "chain": (("eager-chain", "x eager"),),
    "video": (("per-frame", "x per-frame"),),
}
#: The path whose output is the reference for output agreement, per stage.
REFERENCE = {"classify": "keras-eager", "style": "torch-eager", "chain": "eager-chain", "video": "per-frame"}


def find_path(paths: tuple[BenchPath, ...], stage: str, name: str) -> BenchPath:
    """The path ``name`` of ``stage``; a typed error listing the known names otherwise."""
    for p in paths:
        if p.stage == stage and p.name == name:
            return p
    raise PathUnavailable(
        f"No path {name!r} for stage {stage!r}." + note("one of", sorted({p.name for p in paths if p.stage == stage}))
    )
