"""``emostyle-train all``: seven style networks and the classifier from one config file, then a bundle.

The config (TOML or JSON; paths relative to the file)::

    [style]                      # options shared by every style (those of `emostyle-train style`)
    content = "data/faces"       # content photos (the paper: ExpW faces)
    size = 256
    epochs = 5

    [styles]                     # one per emotion: a style image to train, or a trained .pth to use as is
    angry = "styles/candy.jpg"
    fear = { image = "styles/edtaonisl.jpg", style_weight = 6e5 }   # per-style overrides
    neutral = "checkpoints/neutral.pth"
    ...

    [classifier]                 # options of `emostyle-train classifier`, or model = "emotion.keras"
    data = "data/by-emotion"

    [export]                     # optional: classifier_crop (see emostyle-export), fp16
    classifier_crop = "default"

Everything is checked (style images, sizes, folders, option names and types)
before the first step. The same style image with the same options is trained
once, whichever emotions it serves. Trained files go to the work folder
(default ``<bundle>.train``); ``resume=True`` continues interrupted styles and
reuses finished ones.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from emostyle_rt.errors import EmostyleError, note
from emostyle_rt.manifest import EMOTIONS

from .classifier import ClassifierConfig, check_config, list_dataset
from .errors import TrainingError
from .style import StyleConfig, default_work, plan_style

log = logging.getLogger(__name__)

SECTIONS = ("style", "styles", "classifier", "export")
EXPORT_KEYS = {"classifier_crop": (str, dict), "fp16": (bool,)}
STYLE_FILE_SUFFIXES = (".pth", ".pt")
_KINDS = {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "an array",
          dict: "a table"}


@dataclass(frozen=True)
class StyleJob:
    """One style network to train (or one checkpoint to use as is) and the emotions it serves."""

    name: str
    emotions: tuple[str, ...]
    config: StyleConfig | None  # None: ``checkpoint`` is used as is
    checkpoint: Path


@dataclass(frozen=True)
class AllPlan:
    styles: tuple[StyleJob, ...]
    classifier: ClassifierConfig | None  # None: ``classifier_model`` is used as is
    classifier_model: Path
    export: Mapping[str, Any]
    work: Path


def read_config(path: Path) -> dict[str, Any]:
    """A TOML or JSON file as a dict (typed errors for unreadable or invalid files).

    Args:
        path: The config file (read by :func:`emostyle_export.configfile.read_config_file`).

    Raises:
        TrainingError: The file cannot be read or parsed, is not a table, or has unknown sections.
    """
    from emostyle_export.configfile import read_config_file

    cfg = read_config_file(path, TrainingError)
    if not isinstance(cfg, dict):
        raise TrainingError(f"Config file {path} must hold a table of sections." + note(list(SECTIONS), cfg))
    unknown = sorted(set(cfg) - set(SECTIONS))
    if unknown:
        raise TrainingError(f"Unknown sections in {path}: {unknown}." + note(list(SECTIONS), sorted(cfg)))
    return cfg


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _coerce(value: Any, hint: Any, where: str, base: Path) -> Any:
    """A TOML/JSON value -> the dataclass field's type (paths relative to ``base``), or a typed error."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):  # X | None: TOML has no null, so just X
        hint = next(a for a in args if a is not type(None))
        origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Path:
        if isinstance(value, str) and value.strip():
            return base / value
        raise TrainingError(f"{where} must be a path string." + note("a string", repr(value)))
    if origin is tuple:
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, list):
            raise TrainingError(f"{where} must be an array." + note("an array", repr(value)))
        return tuple(_coerce(v.strip() if isinstance(v, str) else v, args[0], f"{where}[{i}]", base)
                     for i, v in enumerate(items))
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    if isinstance(value, hint) and not (hint is int and isinstance(value, bool)):
        return value
    raise TrainingError(f"{where} has the wrong type." + note(_KINDS.get(hint, hint.__name__), repr(value)))


def options(cls: type, table: Mapping[str, Any], where: str, base: Path, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """Check a config table against a dataclass's fields (``-`` or ``_`` in keys) and convert its values."""
    if not isinstance(table, Mapping):
        raise TrainingError(f"{where} must be a table." + note("a table of options", repr(table)))
    hints = _field_types(cls)
    out = {}
    for key, value in table.items():
        name = key.replace("-", "_")
        if name not in hints or name in skip:
            raise TrainingError(f"Unknown option {key!r} in {where}."
                                + note(", ".join(k for k in hints if k not in skip), key))
        out[name] = _coerce(value, hints[name], f"{where}.{key}", base)
    return out


def plan_all(config_path: Path, output: Path, work: Path | None = None) -> AllPlan:
    """Read and check the whole config: every style and the classifier, before any training."""
    config_path = Path(config_path)
    cfg = read_config(config_path)
    base = config_path.parent
    work = Path(work) if work else Path(output).with_name(Path(output).name + ".train")
    shared = options(StyleConfig, cfg.get("style", {}), "[style]", base, skip=("style",))

    styles = cfg.get("styles", {})
    if not isinstance(styles, Mapping):
        raise TrainingError("[styles] must be a table of EMOTION = style image." + note("a table", repr(styles)))
    unknown = sorted(set(styles) - set(EMOTIONS))
    missing = [e for e in EMOTIONS if e not in styles]
    if unknown or missing:
        raise TrainingError(f"[styles] in {config_path} must name each of the seven emotions once."
                            + note(", ".join(EMOTIONS), f"missing {missing}, unknown {unknown}"))
    jobs: dict[Any, list[str]] = {}
    specs: dict[Any, Any] = {}
    for emotion in EMOTIONS:
        spec = styles[emotion]
        where = f"[styles].{emotion}"
        if isinstance(spec, str):
            spec = {"image": spec}
        if not isinstance(spec, Mapping) or ("image" in spec) == ("checkpoint" in spec):
            raise TrainingError(f"{where} must be a style image path, a .pth path, or a table with image = ... "
                                "(and options) or checkpoint = ...." + note('"styles/candy.jpg"', repr(spec)))
        if "checkpoint" in spec or str(spec["image"]).lower().endswith(STYLE_FILE_SUFFIXES):
            path = _coerce(spec.get("checkpoint", spec.get("image")), Path, where, base)
            if not path.is_file():
                raise TrainingError(f"{where}: style checkpoint {path} does not exist.")
            key: Any = ("checkpoint", str(path.resolve()))
            specs[key] = path
        else:
            own = options(StyleConfig, {k: v for k, v in spec.items() if k != "image"}, where, base,
                          skip=("style",))
            image = _coerce(spec["image"], Path, f"{where}.image", base)
            merged = {**shared, **own, "style": image}
            if "content" not in merged:
                raise TrainingError(f"{where}: no content folder." + note("content = ... in [style] or here", "none"))
            key = ("train", str(image.resolve()), tuple(sorted((k, str(v)) for k, v in merged.items())))
            specs[key] = StyleConfig(**merged)
        jobs.setdefault(key, []).append(emotion)

    planned: list[StyleJob] = []
    taken: set[str] = set()
    for key, emotions in jobs.items():
        spec = specs[key]
        if key[0] == "checkpoint":
            planned.append(StyleJob(spec.stem, tuple(emotions), None, spec))
            continue
        name, n = spec.style.stem, 2
        while name in taken:
            name, n = f"{spec.style.stem}-{n}", n + 1
        taken.add(name)
        out = work / "styles" / f"{name}.pth"
        plan_style(spec, out)  # checks the style image, its size and the content folder now
        planned.append(StyleJob(name, tuple(emotions), spec, out))

    table = cfg.get("classifier")
    if not isinstance(table, Mapping):
        raise TrainingError(f"{config_path} has no [classifier] table."
                            + note('[classifier] with data = "..." (or model = "emotion.keras")', repr(table)))
    if "model" in table:
        if len(table) != 1:
            raise TrainingError("[classifier] takes model = ... alone or data = ... with options."
                                + note("one of the two", sorted(table)))
        model = _coerce(table["model"], Path, "[classifier].model", base)
        if not model.exists():
            raise TrainingError(f"[classifier].model {model} does not exist.")
        clf, clf_path = None, model
    else:
        clf = ClassifierConfig(**options(ClassifierConfig, table, "[classifier]", base))
        check_config(clf)
        list_dataset(clf.data)  # class folders present and not empty
        clf_path = work / "emotion.keras"

    export = cfg.get("export", {})
    if not isinstance(export, Mapping):
        raise TrainingError("[export] must be a table." + note(sorted(EXPORT_KEYS), repr(export)))
    for key, value in export.items():
        if key not in EXPORT_KEYS:
            raise TrainingError(f"Unknown option {key!r} in [export]." + note(sorted(EXPORT_KEYS), key))
        if not isinstance(value, EXPORT_KEYS[key]):
            raise TrainingError(f"[export].{key} has the wrong type."
                                + note(" or ".join(_KINDS[t] for t in EXPORT_KEYS[key]), repr(value)))
    return AllPlan(tuple(planned), clf, clf_path, dict(export), work)


def run_all(config_path: str | Path, output: str | Path, *, work: str | Path | None = None, resume: bool = False,
            force: bool = False, progress: bool = True) -> Path:
    """Train what the config asks for, then export the bundle to ``output``; returns the bundle's path."""
    from emostyle_export.bundle import ExportPlan, StyleSource, export_bundle
    from emostyle_export.crop import parse_crop

    from emostyle_export.bundle import check_destination

    from .outputs import check_work, mark_work

    output = Path(output)
    plan = plan_all(Path(config_path), output, Path(work) if work else None)
    # refuse now rather than after hours of training: the bundle (a new path, or with --force a bundle holding only
    # its own files), never inside a folder read as data; the work folder the tool's own
    data = _data_folders(plan)
    for folder in data:
        if output.resolve() == folder.resolve() or folder.resolve() in output.resolve().parents:
            raise TrainingError(f"The bundle {output} is inside the data folder {folder}, which is read recursively."
                                + note("-o outside the data folders", output))
    check_destination(output.absolute(), force)
    check_work(plan.work, "all", data)
    try:
        crop = parse_crop(plan.export.get("classifier_crop", "default"))
    except EmostyleError as exc:
        raise TrainingError(f"[export].classifier_crop: {exc}") from None
    if not resume:  # refuse now rather than after the first styles are trained
        earlier = [str(default_work(j.checkpoint) / "checkpoint.pth") for j in plan.styles
                   if j.config is not None and (default_work(j.checkpoint) / "checkpoint.pth").exists()]
        if plan.classifier is not None and plan.classifier_model.exists():
            earlier.append(str(plan.classifier_model))
        if earlier:
            raise TrainingError(f"The work folder {plan.work} holds an earlier run."
                                + note("--resume to continue it and reuse finished work, or another --work",
                                       ", ".join(earlier)))
    todo = [j for j in plan.styles if j.config is not None]
    log.info("%d style network(s) to train, %d given as checkpoints; classifier: %s", len(todo),
             len(plan.styles) - len(todo), "train" if plan.classifier else plan.classifier_model)

    from .style import train_style

    mark_work(plan.work, "all", output)
    for i, job in enumerate(todo, start=1):
        log.info("style %d/%d: %s for %s", i, len(todo), job.name, ", ".join(job.emotions))
        assert job.config is not None
        # the style files live in this run's own work folder: a resumed run replaces them
        train_style(job.config, job.checkpoint, resume=resume, progress=progress, force=True)
    if plan.classifier is not None:
        done = _classifier_done(plan) if resume else False
        if done:
            log.info("classifier: %s already trained with these settings; kept", plan.classifier_model)
        else:
            from .classifier import train_classifier

            train_classifier(plan.classifier, plan.classifier_model, progress=progress, force=True)

    styles = {e: StyleSource(job.checkpoint) for job in plan.styles for e in job.emotions}
    export_plan = ExportPlan(classifier=plan.classifier_model, styles=styles, classifier_crop=crop,
                             fp16=bool(plan.export.get("fp16", False)),
                             extra={"training": {"config": str(Path(config_path).resolve()),
                                                 "styles": {j.name: list(j.emotions) for j in plan.styles}}})
    log.info("exporting the bundle to %s", output)
    return export_bundle(export_plan, output, force=force)


def _data_folders(plan: AllPlan) -> list[Path]:
    """The folders ``plan`` reads recursively as data (content photos, classifier class folders)."""
    folders = [Path(j.config.content) for j in plan.styles if j.config is not None]
    if plan.classifier is not None and Path(plan.classifier.data).is_dir():
        folders.append(Path(plan.classifier.data))
    return list(dict.fromkeys(folders))


def _classifier_done(plan: AllPlan) -> bool:
    """Whether the work folder holds a classifier trained with exactly these settings."""
    report = plan.classifier_model.with_name(plan.classifier_model.stem + ".train") / "report.json"
    if not (plan.classifier_model.is_file() and report.is_file() and plan.classifier is not None):
        return False
    try:
        old = json.loads(report.read_text())["config"]
    except (OSError, ValueError, KeyError):
        return False
    return bool(old == json.loads(json.dumps(plan.classifier.to_json())))
