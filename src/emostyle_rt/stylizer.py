"""The Stylizer: face crop -> emotion classifier -> that emotion's style graph.

One ``Stylizer`` may be shared by threads: runners are thread-safe, style graphs
load lazily under a lock, and every call works on its own arrays.
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from collections import defaultdict
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Sequence

import cv2
import numpy as np

from .backends import CLASSIFIER, Lazy, Runner, check_engines, is_gpu, runner_for
from .errors import BackendError, BundleError, EmostyleError, InvalidArgumentError, InvalidImageError, NoFaceError, note
from .detection.faces import Face, FaceDetector, crop_face, make_detector
from .imaging.io import ImageInput, load_image, pad_to_multiple
from .manifest import ClassifierInfo, Manifest, load_manifest
from .options import NO_FACE_POLICIES, StylizerOptions
from .tiling import CALIBRATION, TiledStyle, default_budget, estimate_whole, process_rss
from .tiling import plan as tile_plan

if TYPE_CHECKING:
    from .video import StyledFrame

log = logging.getLogger(__name__)

#: Same-size images are stacked into one style run up to this many pixels per run.
BATCH_PIXELS = 1 << 20


def _check_graph(
    runner: Runner, path: os.PathLike, input_name: str, output_name: str, in_tail: tuple[int, ...], out_last: int
) -> None:
    """A loaded graph has the manifest's tensor names, input's trailing dims and output width; else BundleError."""
    ins, outs = {t.name: t for t in runner.inputs}, {t.name: t for t in runner.outputs}
    if input_name not in ins or output_name not in outs:
        raise BundleError(
            f"Graph {path} does not have the tensors its manifest names."
            + note(f"input {input_name!r}, output {output_name!r}", f"inputs {sorted(ins)}, outputs {sorted(outs)}")
        )
    tail = ins[input_name].shape[-len(in_tail):]
    if any(isinstance(d, int) and d != want for d, want in zip(tail, in_tail)):
        raise BundleError(
            f"Graph {path} input {input_name!r} disagrees with the manifest."
            + note(f"[..., {', '.join(map(str, in_tail))}]", list(ins[input_name].shape))
        )
    last = outs[output_name].shape[-1] if outs[output_name].shape else None
    if isinstance(last, int) and last != out_last:
        raise BundleError(
            f"Graph {path} output {output_name!r} has {last} values per item, which disagrees with the manifest"
            + (f" ({out_last} labels)." if out_last != 3 else " (RGB).") + note(out_last, last)
        )


@dataclass(frozen=True)
class FaceEmotion:
    """One detected face and its own classification; ``classifier``: which classifier gave it (name, source)."""

    face: Face
    emotion: str
    scores: dict[str, float]
    classifier: ClassifierInfo | None = None

    def summary(self) -> dict[str, Any]:
        """A JSON-ready dict (the box as [x, y, w, h])."""
        d: dict[str, Any] = {"box": list(self.face.box), "emotion": self.emotion, "scores": self.scores}
        if self.classifier is not None:
            d["classifier"] = self.classifier.summary()
        return d


@dataclass(frozen=True)
class Classification:
    """How an image's emotion was decided.

    ``source``: "face" (the largest face), "whole" (no face; whole image
    classified), "policy" (no face; the fixed no-face emotion) or "given" (the
    caller named the emotion). ``scores`` follow the bundle's label order and are
    empty when nothing was classified. ``classifier``: which classifier produced
    the scores (name and source, from the bundle's manifest); None when none ran.
    """

    emotion: str
    scores: dict[str, float]
    face: Face | None
    faces: tuple[FaceEmotion, ...] = ()
    source: str = "face"
    classifier: ClassifierInfo | None = None

    def summary(self) -> dict[str, Any]:
        """A JSON-ready dict (boxes as [x, y, w, h])."""
        d: dict[str, Any] = {
            "emotion": self.emotion,
            "source": self.source,
            "scores": self.scores,
            "face": list(self.face.box) if self.face else None,
            "faces": [f.summary() for f in self.faces],
        }
        if self.classifier is not None:
            d["classifier"] = self.classifier.summary()
        return d


@dataclass(frozen=True, eq=False)
class StyleResult:
    """A stylised image (same size and colour order as the input) and how its style was chosen.

    ``image`` is HxWx3, or HxWx4 when the input had alpha (an RGBA/BGRA array, or
    a PNG, WebP or TIFF file with transparency): the colour is styled and the
    input's alpha plane is passed through unchanged.
    """

    image: np.ndarray
    emotion: str
    scores: dict[str, float]
    face: Face | None
    faces: tuple[FaceEmotion, ...]
    source: str
    style: str  # the style id that ran
    classifier: ClassifierInfo | None = None  # which classifier chose the emotion (None: it was given)

    def summary(self) -> dict[str, Any]:
        """A JSON-ready dict of everything but the image."""
        c = Classification(self.emotion, self.scores, self.face, self.faces, self.source, self.classifier)
        return {**c.summary(), "style": self.style}


def _close_runners(*holders: dict[str, Runner]) -> None:
    """Empty the runner dicts and close every runner in them (also the Stylizer's finalizer: never raises)."""
    runners = [r for h in holders for r in h.values()]
    for h in holders:
        h.clear()
    for r in runners:
        try:
            r.close()
        except Exception as exc:  # noqa: BLE001 - closing one runner must not keep the others open
            log.warning("Closing %s failed: %s", getattr(r, "name", r), exc)


class Stylizer:
    """Runs a bundle written by ``emostyle-export``.

    Its options are one :class:`~emostyle_rt.options.StylizerOptions`, given as
    ``options=`` or as keywords of the same names (``Stylizer(bundle, backend="onnxruntime")``;
    keywords given with ``options=`` replace those options). ``close()`` (or
    ``with Stylizer(...)``) frees sessions and GPU buffers. A Stylizer pickles as
    its bundle path and options (the receiver re-opens the bundle).

    Args:
        bundle: a bundle folder (str or os.PathLike) or a loaded ``Manifest``.
        options: the options (default: ``StylizerOptions()``).
        **kwargs: options by name, as the fields of ``StylizerOptions``: ``backend``, ``provider``,
            ``detector``, ``no_face``, ``margin``, ``max_pixels``, ``verify``, ``precision``,
            ``cuda_graph``, ``cache_dir``, ``memory_budget``, ``tile_mode`` (each described there).

    Raises:
        BundleError: the bundle cannot be read, or its classifier graph disagrees with its manifest.
        BackendError: a backend, provider or precision that cannot run here (refused now, once).
        InvalidArgumentError: an option's value that cannot work.
        TypeError: an unknown option name.
    """

    def __init__(self, bundle: str | os.PathLike | Manifest, *, options: StylizerOptions | None = None,
                 **kwargs: Any) -> None:
        if isinstance(bundle, bytes) or not isinstance(bundle, (str, os.PathLike, Manifest)):
            raise InvalidArgumentError(
                "A Stylizer's bundle is a bundle folder or a Manifest."
                + note("a path (str or os.PathLike) or a Manifest", f"{bundle!r} ({type(bundle).__name__})"))
        if options is not None and not isinstance(options, StylizerOptions):
            raise InvalidArgumentError("options must be a StylizerOptions."
                                       + note("emostyle_rt.StylizerOptions(...) or None", type(options).__name__))
        options = StylizerOptions(**kwargs) if options is None else options.replace(**kwargs) if kwargs else options
        #: Every option of this Stylizer (what pickling carries).
        self.options = options
        #: Bytes a style run may use (None: from the machine at each run); how over-budget runs share statistics.
        self.memory_budget, self.tile_mode = options.memory_budget, options.tile_mode
        self.manifest = bundle if isinstance(bundle, Manifest) else load_manifest(bundle, verify_files=options.verify)
        if options.no_face not in NO_FACE_POLICIES and options.no_face not in self.manifest.labels:
            raise InvalidArgumentError(
                f"Unknown no-face policy {options.no_face!r}." + note(f"{NO_FACE_POLICIES} or an emotion", options.no_face)
            )
        self.no_face, self.max_pixels, self.margin = options.no_face, options.max_pixels, options.margin
        #: The face crop: the bundle's spec, its margin replaced by ``margin`` (a fraction of the box) when given.
        self.crop = self.manifest.classifier.crop if self.margin is None else replace(
            self.manifest.classifier.crop, margin=self.margin, margin_unit="fraction")
        self._backend, self._provider = options.backend, options.provider
        self._detector_spec, self._verify = options.detector, options.verify
        self._detector = make_detector(options.detector, self.manifest, provider=self._provider,
                                       backend=self._backend)
        # made here (from a name, a file or the bundle): its preload()/close() are the Stylizer's to call
        self._own_detector = self._detector is not options.detector
        self._precision, self._cuda_graph, self._cache_dir = options.precision, options.cuda_graph, options.cache_dir
        self._lock = threading.Lock()
        self._runners: Lazy[str, Runner] = Lazy(self._lock)  # the classifier's runner (key CLASSIFIER)
        self._styles: Lazy[str, Runner] = Lazy(self._lock)
        self._tiled: Lazy[str, TiledStyle] = Lazy(self._lock)  # tiled graphs of a style, loaded when an image needs them
        # Safety net when close() is never called: free every runner when the Stylizer is collected.
        self._finalizer = weakref.finalize(self, _close_runners, self._runners, self._styles, self._tiled)
        self._classifier_runner()  # loaded and checked now: a bad classifier graph fails here
        # backend="tensorrt" / "aoti" without an engine for some style: refused now, once, not at each image
        check_engines(self.manifest, options.backend)
        self._check_precision()
        #: What the process held once this Stylizer opened: the default budget keeps a run's peak RSS at about
        #: this plus the budget (``emostyle_rt.tiling.default_budget``).
        self._held = process_rss()

    def _check_precision(self) -> None:
        """An explicit precision the style graphs cannot run here is refused now, once, not at each image.

        "fp16" on onnxruntime needs every style's FP16 graph (the classifier's was checked as it loaded);
        "bf16" depends on the machine (OpenVINO, the CPU's bfloat16), so the first style graph is loaded now.
        """
        precision = self.options.precision
        if precision == "fp16" and self._backend in ("auto", "onnxruntime"):
            missing = [sid for sid, spec in self.manifest.styles.items() if spec.fp16 is None]
            if missing:
                raise BackendError(
                    f"precision='fp16' was asked for but the bundle has no FP16 graph for {len(missing)} of its "
                    f"{len(self.manifest.styles)} style graphs ({', '.join(missing[:3])}"
                    f"{', ...' if len(missing) > 3 else ''})."
                    + note("an fp16 block for every style (emostyle-export --bundle DIR --fp16)", "FP32 only"))
        if precision == "bf16" and self.manifest.styles:
            self._style_runner(next(iter(self.manifest.styles)))

    # -- public API ---------------------------------------------------------

    @property
    def labels(self) -> tuple[str, ...]:
        """The emotions, in the classifier's output order."""
        return self.manifest.labels

    def classify(self, image: ImageInput, *, bgr: bool = False) -> Classification:
        """Find faces and classify the largest one (or apply the no-face policy)."""
        return self._classify_many([self._load(image, bgr)])[0]

    def classify_batch(self, images: Iterable[ImageInput], *, bgr: bool = False) -> list[Classification]:
        """Classify several images: faces found in each, every crop through the classifier in one run."""
        return self._classify_many(self._load_batch(images, bgr, None, "classify"))

    def stylize(
        self, image: ImageInput, emotion: str | None = None, *, max_side: int | None = None, bgr: bool = False,
        progress: Callable[[int, int], None] | None = None,
    ) -> StyleResult:
        """Stylise one image with its emotion's style (``emotion`` skips classification).

        ``max_side`` runs the style graph on a copy downscaled to that longer side
        and scales the result back. The result has the input's size; ``bgr=True``
        means the input array and the result are in OpenCV's BGR order.
        ``progress(done, total)``: called after each step of an image styled in tiles
        (a tile, or a strip of the exact mode; not called for an image styled whole).
        """
        if progress is not None and not callable(progress):
            raise InvalidArgumentError("progress must be a callable progress(done, total) or None."
                                       + note("a callable", type(progress).__name__))
        return self._stylize_many([image], emotion, max_side, bgr, progress)[0]

    def stylize_batch(
        self,
        images: Iterable[ImageInput],
        *,
        emotion: str | None = None,
        max_side: int | None = None,
        bgr: bool = False,
    ) -> list[StyleResult]:
        """Stylise several images, running each style graph once per group of images that need it.

        Faces of all images go through the classifier in one run; images of the
        same size are stacked into one style run (up to ``BATCH_PIXELS``).
        """
        return self._stylize_many(images, emotion, max_side, bgr, None)

    def _stylize_many(self, images: Iterable[ImageInput], emotion: str | None, max_side: int | None, bgr: bool,
                      progress: Callable[[int, int], None] | None) -> list[StyleResult]:
        self.check_max_side(max_side)
        alphas: list[np.ndarray | None] = []  # alphas[i]: image i's alpha plane, passed through unstyled, or None
        rgbs = self._load_batch(images, bgr, alphas, "stylize")
        if emotion is not None:
            if emotion not in self.manifest.labels:
                raise InvalidArgumentError(f"Unknown emotion {emotion!r}." + note(list(self.labels), emotion))
            found = [Classification(emotion, {}, None, (), "given")] * len(rgbs)
        else:
            found = self._classify_many(rgbs)
        groups: dict[str, list[int]] = defaultdict(list)
        for i, c in enumerate(found):
            groups[self.manifest.emotions[c.emotion]].append(i)
        styled: list[np.ndarray | None] = [None] * len(rgbs)
        for style_id, idx in groups.items():
            for i, out in zip(idx, self._style(style_id, [rgbs[i] for i in idx], max_side, progress)):
                styled[i] = self._finish(out, alphas[i], bgr)
        return [
            StyleResult(img, c.emotion, c.scores, c.face, c.faces, c.source, self.manifest.emotions[c.emotion],
                        c.classifier)
            for img, c in zip(styled, found)
        ]

    def stream(self, frames: Any, *, fps: float | None = None, **kwargs: Any) -> Iterator[StyledFrame]:
        """Style a stream of frames with an emotion that does not flicker; yields ``StyledFrame`` objects.

        ``frames``: HxWx3 uint8 arrays (RGB; BGR with ``bgr=True``), ``(seconds, array)``
        tuples (variable frame rate), PyAV ``VideoFrame`` objects (their pts and
        rotation are used) or a ``cv2.VideoCapture``. ``fps`` times frames that have no
        timestamp. Decoding, classification, styling and the caller overlap in
        threads joined by bounded queues. Options (see ``emostyle_rt.video.stream``):
        ``emotion`` (fixed style), ``max_side``, ``bgr``, ``options``
        (``TemporalOptions``: schedule, smoothing, switching, cross-fade), ``batch``
        (frames per style run), ``live`` (a camera: drop frames while busy), ``initial``,
        ``coherence`` ("off" by default, "flow" or ``emostyle_rt.video.coherence.CoherenceOptions``: blend each
        styled frame with the previous output warped by the input's optical flow, against flicker),
        ``measure`` (each frame's warping error in ``StyledFrame.coherence``).
        """
        from .video import stream

        return stream(self, frames, fps=fps, **kwargs)

    def preload(self) -> None:
        """Load the classifier, every style graph and the bundle's face detector now instead of on first use."""
        self._classifier_runner()
        for style_id in self.manifest.styles:
            self._style_runner(style_id)
        self._detector_call("preload")

    def close(self) -> None:
        """Close every loaded runner: sessions, GPU buffers and streams are freed.

        The Stylizer stays usable: graphs load again on next use. Calls still
        running in other threads finish; ones that start on a closed runner raise
        ``BackendError``.
        """
        with self._lock:
            _close_runners(self._runners, self._styles, self._tiled)
        self._detector_call("close")  # the detector it made (its graphs reload on next use)

    def __getstate__(self) -> dict[str, Any]:
        """Pickle by bundle path and options (for multiprocessing): the receiver re-opens the bundle.

        Loaded graphs and sessions are not pickled; a custom detector object must be picklable itself.
        """
        return {"bundle": str(self.manifest.root), "options": self.options}

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Re-open the bundle with the pickled options (also the older form: the options as keywords)."""
        state = dict(state)
        self.__init__(state.pop("bundle"), **state)  # type: ignore[misc]

    def __enter__(self) -> Stylizer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals ----------------------------------------------------------

    def _load_batch(
        self, images: Iterable[ImageInput], bgr: bool, alphas: list[np.ndarray | None] | None, what: str
    ) -> list[np.ndarray]:
        """The images of ``{what}_batch`` loaded (``_load``; "stylize": size-checked too); a bad one is named by its index."""
        if isinstance(images, (str, bytes, os.PathLike, np.ndarray)):
            raise InvalidArgumentError(
                f"{what}_batch takes a list of images, not one {type(images).__name__}; use {what}() for one image"
                " (list(array) for an NxHxWxC array)." + note("a list or iterable of paths or HxWxC arrays", type(images).__name__)
            )
        images = list(images)
        rgbs = []
        for i, im in enumerate(images):
            try:
                rgb = self._load(im, bgr, alphas)
                rgbs.append(self._check_min_side(rgb) if what == "stylize" else rgb)
            except EmostyleError as exc:
                if len(images) == 1:
                    raise
                raise type(exc)(f"Image {i} of the batch: {exc}") from exc
        return rgbs

    def _load(self, image: ImageInput, bgr: bool, alphas: list[np.ndarray | None] | None = None) -> np.ndarray:
        """HxWx3 RGB; with ``alphas``, the input's alpha plane (or None) is appended to that list."""
        img = load_image(image, bgr=bgr, max_pixels=self.max_pixels, alpha=alphas is not None)
        if alphas is not None:
            alphas.append(img[..., 3].copy() if img.shape[2] == 4 else None)
            img = np.ascontiguousarray(img[..., :3])
        return img

    @staticmethod
    def _finish(out: np.ndarray, alpha: np.ndarray | None, bgr: bool) -> np.ndarray:
        """A styled RGB result with the input's alpha (if any) put back, in the caller's colour order."""
        if alpha is not None:
            out = np.dstack([out, alpha])
        if not bgr:
            return out
        return cv2.cvtColor(out, cv2.COLOR_RGBA2BGRA if alpha is not None else cv2.COLOR_RGB2BGR)

    def _check_min_side(self, rgb: np.ndarray) -> np.ndarray:
        m = self.manifest.min_side
        if min(rgb.shape[:2]) < m:
            raise InvalidImageError(
                f"Image of {rgb.shape[1]}x{rgb.shape[0]} is too small for the style network."
                + note(f"height and width >= {m}", f"{rgb.shape[1]}x{rgb.shape[0]}")
            )
        return rgb

    def check_max_side(self, max_side: int | None) -> None:
        """Refuse a ``max_side`` the style graphs cannot take (``stylize``'s and ``stream``'s rule).

        Args:
            max_side: the longer side the style graph runs at, or None (the image's own size).

        Raises:
            InvalidArgumentError: not an integer, or below the bundle's smallest style input.
        """
        m = self.manifest.min_side
        if max_side is not None and (isinstance(max_side, bool) or not isinstance(max_side, (int, np.integer)) or max_side < m):
            got = repr(max_side) if isinstance(max_side, (int, np.integer)) and not isinstance(max_side, bool) \
                else f"{max_side!r} (a {type(max_side).__name__})"
            raise InvalidArgumentError(f"max_side must be an integer >= {m} or None." + note(f"an int >= {m}", got))

    def _classify_many(self, rgbs: Sequence[np.ndarray]) -> list[Classification]:
        """Detect faces in every image, then classify all crops in one classifier run."""
        spec = self.manifest.classifier
        size = (spec.height, spec.width)
        faces_per_image = [self._detect(rgb) for rgb in rgbs]
        crops: list[np.ndarray] = []
        for rgb, faces in zip(rgbs, faces_per_image):
            if faces:
                crops += [crop_face(rgb, f, size, spec.channels, self.crop) for f in faces]
            elif self.no_face == "whole":
                crops.append(crop_face(rgb, None, size, spec.channels, self.crop))
            elif self.no_face == "error":
                raise NoFaceError(
                    f"No face found in a {rgb.shape[1]}x{rgb.shape[0]} image and the no-face policy is 'error'."
                    + note("at least one face", 0)
                )
        probs = self._classifier_runner().run({spec.input_name: np.stack(crops)})[spec.output_name] if crops else None
        results, k, info = [], 0, spec.info
        for faces in faces_per_image:
            if not faces and self.no_face != "whole":
                results.append(Classification(self.no_face, {}, None, (), "policy"))
                continue
            n = max(1, len(faces))
            scored = [self._scores(p) for p in probs[k : k + n]]
            k += n
            best = max(scored[0], key=scored[0].get)
            per_face = tuple(FaceEmotion(f, max(s, key=s.get), s, info) for f, s in zip(faces, scored))
            results.append(Classification(best, scored[0], faces[0] if faces else None, per_face,
                                          "face" if faces else "whole", info))
        return results

    def _detector_call(self, method: str) -> None:
        """``preload()`` / ``close()`` of a detector this Stylizer made, where it has one (a detector passed in
        stays its caller's)."""
        fn = getattr(self._detector, method, None) if self._own_detector else None
        if callable(fn):
            fn()

    def _detect(self, rgb: np.ndarray) -> list[Face]:
        """The detector's faces, checked: a list of ``Face`` inside the image (a custom detector may return anything)."""
        faces = self._detector.detect(rgb)
        name = type(self._detector).__name__
        if not isinstance(faces, (list, tuple)) or not all(isinstance(f, Face) for f in faces):
            got = type(faces).__name__ if not isinstance(faces, (list, tuple)) else [type(f).__name__ for f in faces][:3]
            raise BackendError(
                f"Face detector {name}.detect() returned something other than a list of Face."
                + note("list[emostyle_rt.Face] (empty when there is no face)", got)
            )
        h, w = rgb.shape[:2]
        bad = [f.box for f in faces if f.w <= 0 or f.h <= 0 or f.x >= w or f.y >= h or f.x + f.w <= 0 or f.y + f.h <= 0]
        if bad:
            raise BackendError(
                f"Face detector {name} returned boxes outside the {w}x{h} image or empty." + note("boxes inside the image", bad[:3])
            )
        return list(faces)

    def _scores(self, p: np.ndarray) -> dict[str, float]:
        return {label: float(v) for label, v in zip(self.manifest.labels, p)}

    def _runner(self, key: str) -> Runner:
        """A new runner for ``key`` with this Stylizer's backend options, checked against the manifest."""
        runner = runner_for(self.manifest, key, backend=self._backend, provider=self._provider,
                            precision=self._precision, cuda_graph=self._cuda_graph, cache=self._cache_dir)
        try:
            if key == CLASSIFIER:
                spec = self.manifest.classifier
                _check_graph(runner, self.manifest.path(spec.onnx), spec.input_name, spec.output_name,
                             (spec.height, spec.width, spec.channels), len(self.manifest.labels))
            else:
                style = self.manifest.styles[key]
                _check_graph(runner, self.manifest.path(style.onnx), style.input_name, style.output_name, (3,), 3)
        except BaseException:
            runner.close()
            raise
        return runner

    def _classifier_runner(self) -> Runner:
        return self._runners.load(CLASSIFIER, lambda: self._runner(CLASSIFIER))

    @property
    def _classifier(self) -> Runner:
        return self._classifier_runner()

    def _style_runner(self, style_id: str) -> Runner:
        return self._styles.load(style_id, lambda: self._runner(style_id))

    def _budget(self, runner: Runner) -> int:
        """The memory budget of a style run: the caller's, else from the machine (GPU memory for a GPU runner)."""
        if self.memory_budget is not None:
            return self.memory_budget
        return default_budget(gpu=is_gpu(runner), held=self._held)

    def _tiled_style(self, style_id: str) -> TiledStyle:
        # "tensorrt": the tile graph at fixed windows on the TensorRT EP, engines in the user cache; the provider
        # was checked when the classifier loaded (onnxruntime decides the rest). Tiled graphs run in onnxruntime,
        # also when OpenVINO runs the whole graph: in OpenVINO the exact mode's 235 strip runs at 12 MP peaked at
        # 5.8 GB for a 2.3 GB budget (onnxruntime: within it)
        return self._tiled.load(style_id, lambda: TiledStyle(self.manifest.root, self.manifest.styles[style_id],
                                                             provider=self._provider, verify=self._verify,
                                                             cache_dir=self._cache_dir))

    def _style(self, style_id: str, rgbs: list[np.ndarray], max_side: int | None,
               progress: Callable[[int, int], None] | None = None) -> list[np.ndarray]:
        """Run one style graph on several images; each comes back at its own size (``progress``: a tiled one's steps)."""
        spec = self.manifest.styles[style_id]
        runner = self._style_runner(style_id)
        inputs = [self._shrink(rgb, max_side) for rgb in rgbs]
        padded = [self._pad(x) for x in inputs]
        by_shape: dict[tuple[int, ...], list[int]] = defaultdict(list)
        outs: list[np.ndarray | None] = [None] * len(rgbs)
        budget = self._budget(runner)
        calibration = getattr(runner, "memory_calibration", CALIBRATION)  # the engine's RSS per activation byte
        # Whole if the estimate fits the budget, else tiled; MemoryBudgetError (before any run) if neither fits.
        plans = [tile_plan(spec, p.shape[0], p.shape[1], budget, self.tile_mode,
                           fixed_windows=self._provider == "tensorrt", whole_calibration=calibration) for p in padded]
        for i, (p, plan) in enumerate(zip(padded, plans)):
            if plan.mode == "whole":
                by_shape[p.shape].append(i)
                continue
            log.info("Style %s in tiles: %s", style_id, plan.summary())
            h, w = inputs[i].shape[:2]
            tiled = self._tiled_style(style_id).run(p, plan, progress)
            outs[i] = self._grow(np.ascontiguousarray(tiled[:h, :w]), rgbs[i].shape)
        for shape, idx in by_shape.items():
            per_run = max(1, min(BATCH_PIXELS // (shape[0] * shape[1]),
                                 budget // estimate_whole(spec, shape[0], shape[1], calibration=calibration)))
            for start in range(0, len(idx), per_run):
                chunk = idx[start : start + per_run]
                # One image: a view, no copy of the (up to 25 MB) frame; several: stacked.
                batch = np.ascontiguousarray(padded[chunk[0]])[None] if len(chunk) == 1 else np.stack(
                    [padded[i] for i in chunk])
                result = runner.run({spec.input_name: batch})[spec.output_name]
                if result.shape != batch.shape or result.dtype != np.uint8:
                    raise BackendError(
                        f"Style graph {style_id!r} broke its contract."
                        + note(f"uint8 {batch.shape}", f"{result.dtype} {result.shape}")
                    )
                for i, out in zip(chunk, result):
                    h, w = inputs[i].shape[:2]
                    outs[i] = self._grow(np.ascontiguousarray(out[:h, :w]), rgbs[i].shape)
        return outs  # type: ignore[return-value]

    def _shrink(self, rgb: np.ndarray, max_side: int | None) -> np.ndarray:
        h, w = rgb.shape[:2]
        if max_side is None or max(h, w) <= max_side:
            return rgb
        s, m = max_side / max(h, w), self.manifest.min_side
        return cv2.resize(rgb, (max(m, round(w * s)), max(m, round(h * s))), interpolation=cv2.INTER_AREA)

    @staticmethod
    def _grow(out: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        if out.shape[:2] == shape[:2]:
            return out
        return cv2.resize(out, (shape[1], shape[0]), interpolation=cv2.INTER_CUBIC)

    def _pad(self, rgb: np.ndarray) -> np.ndarray:
        """Reflect-pad bottom and right to the graph's size multiple."""
        return pad_to_multiple(rgb, self.manifest.size_multiple)
