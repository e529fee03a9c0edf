"""Train the paper's emotion classifier (21-layer Keras CNN, 128x128 RGB, seven emotions).

The recipe: a stratified, seeded 70/20/10 train/validation/test split; the
minority classes of the training split topped up to the largest one with
augmented copies (flip, small rotation/shift/zoom, brightness; drawn afresh
every epoch); Adam, learning rate 0.001, batch 16, 50 epochs; the weights of the
epoch with the best validation accuracy are kept (the lowest validation loss
among equal accuracies). Pixels are scaled to 0..1,
which is ``emostyle-export``'s default ``--classifier-scale``.

One addition: at the end of each epoch, before validation, the BatchNorm
population statistics are recomputed over up to 1024 training images
("precise BN"). Keras' moving averages (momentum 0.99) need thousands of steps
to forget their initial values; on a small dataset they leave the model
predicting garbage at inference while it is right in training. On a large
dataset (ExpW: ~4,000 steps an epoch) the two agree. Training itself is
unchanged (it uses batch statistics); ``bn_images=0`` turns this off.

Data: a folder with one sub-folder per emotion (``angry/``, ``happy/``, ...) or
a CSV file of ``path,label`` rows (label: an emotion name or its index in
angry, disgust, fear, happy, sad, surprise, neutral; paths relative to the
CSV). Images should be face crops cut the way the runtime cuts them (see
``emostyle-export --classifier-crop``); they are resized to 128x128.

Written next to the model (default ``<output>.train/``): ``report.json``
(accuracy per split, recall per class, skipped files), ``confusion.png`` and
``confusion.json`` (test split), ``curves.png``.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import math
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np

from emostyle_rt.errors import note, sentence
from emostyle_rt.fsutil import work_name, write_bytes_atomic
from emostyle_rt.manifest import EMOTIONS

from .data import IMAGE_SUFFIXES, try_read
from .errors import DatasetError, TrainingError
from .outputs import check_run, clean_partials, mark_work, without_work_folders

log = logging.getLogger(__name__)

INPUT_SIZE = 128  # the paper's model input: 128x128x3
SPLIT = (0.7, 0.2, 0.1)
SCALE = "0..1"  # pixels / 255, emostyle-export's --classifier-scale default


@dataclass(frozen=True)
class ClassifierConfig:
    """The paper's classifier recipe; every value is an option of ``emostyle-train classifier``."""

    data: Path
    epochs: int = 50
    batch: int = 16
    lr: float = 1e-3
    seed: int = 0
    split: tuple[float, float, float] = SPLIT
    augment: bool = True  # top minority classes up to the largest with augmented copies
    keep: str = "best"  # "best" validation accuracy or "last" epoch
    bn_images: int = 1024  # training images for the BatchNorm statistics each epoch; 0: Keras' moving averages
    threads: int | None = None  # image decoding threads; None: all cores

    def to_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["data"], out["split"] = str(self.data), list(self.split)
        return out


@dataclass
class Dataset:
    """Decoded images (N x 128 x 128 x 3 uint8) with labels (indices into EMOTIONS)."""

    images: np.ndarray
    labels: np.ndarray
    paths: list[str]
    skipped: dict[str, str] = field(default_factory=dict)


@dataclass
class ClassifierResult:
    output: Path
    work: Path
    accuracy: dict[str, float]
    recall: dict[str, dict[str, float]]
    confusion: list[list[int]]
    skipped: dict[str, str]
    best_epoch: int
    seconds: float


# ---------------------------------------------------------------- data


def _label_index(value: str, where: str) -> int:
    v = value.strip()
    if v.lower() in EMOTIONS:
        return EMOTIONS.index(v.lower())
    if v.isdigit() and int(v) < len(EMOTIONS):
        return int(v)
    raise DatasetError(f"Unknown emotion label {value!r} at {where}."
                       + note(f"one of {', '.join(EMOTIONS)} or 0..{len(EMOTIONS) - 1}", value))


def list_dataset(data: Path) -> list[tuple[Path, int]]:
    """(path, label) of every image of a per-emotion folder tree or a ``path,label`` CSV."""
    data = Path(data)
    if data.is_file():
        return _list_csv(data)
    if not data.is_dir():
        raise DatasetError(f"Classifier data {data} does not exist."
                           + note("a folder with one sub-folder per emotion, or a CSV of path,label", "nothing"))
    folders = {p.name.lower(): p for p in data.iterdir() if p.is_dir()}
    missing = [e for e in EMOTIONS if e not in folders]
    if missing:
        raise DatasetError(f"Classifier data {data} lacks a folder for {', '.join(missing)}: the classifier needs "
                           "examples of all seven emotions."
                           + note(f"sub-folders {', '.join(EMOTIONS)}", sorted(folders) or "no sub-folders"))
    items: list[tuple[Path, int]] = []
    for i, emotion in enumerate(EMOTIONS):
        files = without_work_folders(sorted(p for p in folders[emotion].rglob("*")
                                            if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()), data)
        if not files:
            raise DatasetError(f"Class folder {folders[emotion]} holds no images."
                               + note(f"images ({', '.join(sorted(IMAGE_SUFFIXES))}) of {emotion} faces", "none"))
        items += [(p, i) for p in files]
    return items


def _list_csv(path: Path) -> list[tuple[Path, int]]:
    try:
        rows = list(csv.reader(path.read_text(encoding="utf-8-sig").splitlines()))
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"Cannot read the CSV {path}: " + sentence(exc)) from exc
    rows = [r for r in rows if r and any(c.strip() for c in r)]
    if rows and [c.strip().lower() for c in rows[0][:2]] == ["path", "label"]:
        rows = rows[1:]
    items = []
    for n, row in enumerate(rows, start=1):
        if len(row) < 2:
            raise DatasetError(f"Row {n} of {path} is not path,label." + note("path,label", ",".join(row)))
        items.append((path.parent / row[0].strip(), _label_index(row[1], f"{path} row {n}")))
    counts = np.bincount([label for _, label in items], minlength=len(EMOTIONS))
    empty = [EMOTIONS[i] for i in range(len(EMOTIONS)) if counts[i] == 0]
    if empty:
        raise DatasetError(f"The CSV {path} has no rows for {', '.join(empty)}: the classifier needs examples of "
                           "all seven emotions." + note("rows for each emotion", dict(zip(EMOTIONS, counts.tolist()))))
    return items


def fit_input(image: np.ndarray, size: int = INPUT_SIZE) -> np.ndarray:
    """Any RGB face crop -> size x size RGB (area filter down, bilinear up)."""
    h, w = image.shape[:2]
    return cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA if min(h, w) > size else cv2.INTER_LINEAR)


def load_dataset(data: Path, threads: int | None = None) -> Dataset:
    """Decode and resize every image (unreadable ones skipped and counted)."""
    items = list_dataset(data)

    def read(item: tuple[Path, int]) -> tuple[np.ndarray | None, str]:
        image, why = try_read(item[0])
        return (None if image is None else fit_input(image)), why

    with ThreadPoolExecutor(max_workers=threads or os.cpu_count() or 1) as pool:
        decoded = list(pool.map(read, items))
    skipped = {str(p): why for (p, _), (img, why) in zip(items, decoded) if img is None}
    for why in skipped.values():
        log.warning("skipped an unreadable image: %s", why)
    keep = [i for i, (img, _) in enumerate(decoded) if img is not None]
    labels = np.asarray([items[i][1] for i in keep], np.int64)
    counts = np.bincount(labels, minlength=len(EMOTIONS))
    empty = [EMOTIONS[i] for i in range(len(EMOTIONS)) if counts[i] == 0]
    if empty:
        raise DatasetError(f"No readable images of {', '.join(empty)} in {data}."
                           + note("at least one readable image per emotion", f"{len(skipped)} unreadable files"))
    images = np.stack([decoded[i][0] for i in keep]) if keep else np.zeros((0, INPUT_SIZE, INPUT_SIZE, 3), np.uint8)
    return Dataset(images, labels, [str(items[i][0]) for i in keep], skipped)


def stratified_split(labels: np.ndarray, fractions: Sequence[float], seed: int) -> list[np.ndarray]:
    """Per class, a seeded shuffle cut into train/validation/test by ``fractions``.

    Each class keeps at least one training image; validation and test get
    ``round(fraction * n)`` of each class.
    """
    rng = np.random.default_rng(seed)
    parts: list[list[int]] = [[], [], []]
    for c in range(len(EMOTIONS)):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n = len(idx)
        n_val = min(round(fractions[1] * n), max(0, n - 1))
        n_test = min(round(fractions[2] * n), max(0, n - 1 - n_val))
        parts[1] += idx[:n_val].tolist()
        parts[2] += idx[n_val:n_val + n_test].tolist()
        parts[0] += idx[n_val + n_test:].tolist()
    return [np.sort(np.asarray(p, np.int64)) for p in parts]


def balance(train: np.ndarray, labels: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Top every class up to the largest: (indices, augment flags); extra copies drawn seeded, round-robin."""
    rng = np.random.default_rng([seed, 1])
    counts = np.bincount(labels[train], minlength=len(EMOTIONS))
    target = counts.max()
    idx, aug = [train], [np.zeros(len(train), bool)]
    for c in range(len(EMOTIONS)):
        members = train[labels[train] == c]
        extra = target - len(members)
        if extra > 0 and len(members):
            reps = np.concatenate([rng.permutation(members) for _ in range(math.ceil(extra / len(members)))])
            idx.append(reps[:extra])
            aug.append(np.ones(extra, bool))
    return np.concatenate(idx), np.concatenate(aug)


def augment(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random variant: horizontal flip, rotation +-10 deg, shift +-10%, zoom 0.9..1.1, brightness x0.8..1.2."""
    h, w = image.shape[:2]
    if rng.random() < 0.5:
        image = image[:, ::-1]
    angle = rng.uniform(-10, 10)
    zoom = rng.uniform(0.9, 1.1)
    m = cv2.getRotationMatrix2D((w / 2, h / 2), angle, zoom)
    m[:, 2] += rng.uniform(-0.1, 0.1, 2) * (w, h)
    out = cv2.warpAffine(np.ascontiguousarray(image), m, (w, h), flags=cv2.INTER_LINEAR,
                         borderMode=cv2.BORDER_REFLECT_101)
    return np.clip(out.astype(np.float32) * rng.uniform(0.8, 1.2), 0, 255).astype(np.uint8)


def _batches(ds: Dataset, idx: np.ndarray, aug: np.ndarray, batch: int, seed: int) -> Any:
    """A keras ``PyDataset``: shuffled each epoch (seeded), augmented copies redrawn each epoch."""
    import keras

    class Batches(keras.utils.PyDataset):
        def __init__(self) -> None:
            super().__init__()
            self.epoch = 0
            self._order()

        def _order(self) -> None:
            rng = np.random.default_rng([seed, 2, self.epoch])
            self.perm = rng.permutation(len(idx))
            self.aug_seed = int(rng.integers(2**31))

        def __len__(self) -> int:
            return math.ceil(len(idx) / batch)

        def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
            sel = self.perm[i * batch:(i + 1) * batch]
            rng = np.random.default_rng([self.aug_seed, i])
            x = np.stack([augment(ds.images[idx[j]], rng) if aug[j] else ds.images[idx[j]] for j in sel])
            return x.astype(np.float32) / 255.0, ds.labels[idx[sel]]

        def on_epoch_end(self) -> None:
            self.epoch += 1
            self._order()

    return Batches()


# ---------------------------------------------------------------- training


def _tqdm_callback(epochs: int, steps: int, progress: bool) -> Any:
    """Keras callback: one tqdm bar over all batches, with loss/accuracy and validation accuracy."""
    import keras
    from tqdm import tqdm

    class Progress(keras.callbacks.Callback):
        def on_train_begin(self, logs: Any = None) -> None:
            self.bar = tqdm(total=epochs * steps, unit="batch", desc="classifier", dynamic_ncols=True,
                            disable=None if progress else True)
            self.epoch, self.val = 0, ""

        def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
            self.epoch = epoch + 1

        def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
            logs = logs or {}
            self.bar.update(1)
            self.bar.set_postfix_str(f"epoch {self.epoch}/{epochs} loss {logs.get('loss', math.nan):.3f} "
                                     f"acc {logs.get('accuracy', math.nan):.3f}{self.val}", refresh=False)

        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            logs = logs or {}
            self.val = f" val_acc {logs.get('val_accuracy', math.nan):.3f}"
            log.info("epoch %d/%d: loss %.4f, accuracy %.4f, val_loss %.4f, val_accuracy %.4f", epoch + 1, epochs,
                     logs.get("loss", math.nan), logs.get("accuracy", math.nan), logs.get("val_loss", math.nan),
                     logs.get("val_accuracy", math.nan))

        def on_train_end(self, logs: Any = None) -> None:
            self.bar.close()

    return Progress()


def recalibrate_batchnorm(model: Any, images: np.ndarray, batch: int = 64) -> None:
    """Set every BatchNorm layer's moving mean/variance to the average over ``images`` ("precise BN").

    The model runs in training mode (batch statistics) with dropout off, and each
    BatchNorm layer's momentum is set so that its moving statistics become the
    equal-weight mean of the batch statistics.
    """
    import keras

    bns = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    drops = [layer for layer in model.layers if isinstance(layer, keras.layers.Dropout)]
    momenta, rates = [b.momentum for b in bns], [d.rate for d in drops]
    try:
        for d in drops:
            d.rate = 0.0
        for k, start in enumerate(range(0, len(images), batch)):
            for b in bns:
                b.momentum = k / (k + 1)  # k=0: take the first batch's statistics outright
            model(images[start:start + batch].astype(np.float32) / 255.0, training=True)
    finally:
        for b, m in zip(bns, momenta):
            b.momentum = m
        for d, r in zip(drops, rates):
            d.rate = r


def _epoch_end(ds: Dataset, val: np.ndarray, bn_sample: np.ndarray) -> Any:
    """Keras callback: precise BN, validation, history, and the best epoch's weights.

    Best: the highest validation accuracy; among equal accuracies the lowest validation
    loss (a small validation split saturates at 100% early, and the first epoch to get
    there is rarely the best model); earliest on exact ties.
    """
    import keras

    class EpochEnd(keras.callbacks.Callback):
        def on_train_begin(self, logs: Any = None) -> None:
            self.best: tuple[float, float] = (-1.0, -math.inf)
            self.best_epoch, self.weights = 0, None
            self.history: dict[str, list[float]] = {"loss": [], "accuracy": [], "val_loss": [], "val_accuracy": []}

        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            logs = logs if logs is not None else {}
            if len(bn_sample):
                recalibrate_batchnorm(self.model, ds.images[bn_sample])
            probs = self.model.predict(ds.images[val].astype(np.float32) / 255.0, batch_size=64, verbose=0)
            truth = ds.labels[val]
            logs["val_loss"] = float(-np.mean(np.log(np.clip(probs[np.arange(len(val)), truth], 1e-7, 1.0))))
            logs["val_accuracy"] = float(np.mean(np.argmax(probs, axis=1) == truth))
            for key in self.history:
                self.history[key].append(float(logs.get(key, math.nan)))
            score = (logs["val_accuracy"], -logs["val_loss"])
            if score > self.best:
                self.best, self.best_epoch = score, epoch + 1
                self.weights = self.model.get_weights()

    return EpochEnd()


def _metrics(model: Any, ds: Dataset, idx: np.ndarray) -> tuple[float, np.ndarray]:
    """(accuracy, 7x7 confusion matrix: rows true, columns predicted) on ``idx``."""
    cm = np.zeros((len(EMOTIONS), len(EMOTIONS)), np.int64)
    if len(idx) == 0:
        return math.nan, cm
    probs = model.predict(ds.images[idx].astype(np.float32) / 255.0, batch_size=64, verbose=0)
    pred = np.argmax(probs, axis=1)
    np.add.at(cm, (ds.labels[idx], pred), 1)
    return float(np.mean(pred == ds.labels[idx])), cm


def _recall(cm: np.ndarray) -> dict[str, float]:
    rows = cm.sum(axis=1)
    return {e: (float(cm[i, i] / rows[i]) if rows[i] else math.nan) for i, e in enumerate(EMOTIONS)}


def check_config(cfg: ClassifierConfig) -> None:
    for name in ("epochs", "batch"):
        v = getattr(cfg, name)
        if not isinstance(v, int) or v < 1:
            raise TrainingError(f"--{name} must be a positive integer." + note(">= 1", v))
    if not (cfg.lr > 0 and math.isfinite(cfg.lr)):
        raise TrainingError("--lr must be a positive number." + note("> 0", cfg.lr))
    if len(cfg.split) != 3 or min(cfg.split) < 0 or cfg.split[0] <= 0 or not math.isclose(sum(cfg.split), 1.0):
        raise TrainingError("The split must be three fractions (train, validation, test) adding up to 1."
                            + note("e.g. 0.7,0.2,0.1", ",".join(str(s) for s in cfg.split)))
    if not isinstance(cfg.bn_images, int) or cfg.bn_images < 0:
        raise TrainingError("--bn-images must be an integer >= 0." + note(">= 0 (0: off)", cfg.bn_images))
    if cfg.keep not in ("best", "last"):
        raise TrainingError("--keep must be best or last." + note("best or last", cfg.keep))


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def train_classifier(config: ClassifierConfig, output: str | Path, *, work: str | Path | None = None,
                     progress: bool = True, force: bool = False) -> ClassifierResult:
    """Train the paper's classifier on ``config.data`` and save it as a ``.keras`` file.

    An existing ``output`` is replaced only with ``force``; an input never
    (:mod:`emostyle_train.outputs`)."""
    from emostyle_export.classifiers import quiet_tensorflow

    t0 = time.perf_counter()
    check_config(config)
    output = Path(output)
    if output.suffix.lower() != ".keras":
        raise TrainingError(f"The classifier is saved in Keras 3's format; {output} does not end in .keras."
                            + note("a file name ending in .keras", output.suffix or "no suffix"))
    work = Path(work) if work else output.with_name(output.stem + ".train")
    data = Path(config.data)
    items = list_dataset(data)  # inputs, checked before anything is decoded or written
    inputs = [path for path, _ in items] + ([data] if data.is_file() else [])
    check_run(output, force, inputs, [data] if data.is_dir() else [], work, "classifier")
    clean_partials(output.parent, output.stem)
    ds = load_dataset(config.data, config.threads)
    counts = np.bincount(ds.labels, minlength=len(EMOTIONS))
    log.info("classifier data: %d images (%s), %d unreadable skipped", len(ds.labels),
             ", ".join(f"{e} {n}" for e, n in zip(EMOTIONS, counts)), len(ds.skipped))
    train, val, test = stratified_split(ds.labels, config.split, config.seed)
    if len(val) == 0:
        raise DatasetError("The validation split is empty: too few images to train and select a model."
                           + note("at least a few images per emotion", dict(zip(EMOTIONS, counts.tolist()))))
    idx, aug = balance(train, ds.labels, config.seed) if config.augment else (train, np.zeros(len(train), bool))
    log.info("split %d/%d/%d (train/validation/test); training set balanced to %d with %d augmented copies",
             len(train), len(val), len(test), len(idx), int(aug.sum()))
    try:
        mark_work(work, "classifier", output)
        output.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise TrainingError(f"Cannot create {work} or the folder of {output}: " + sentence(exc)) from exc

    quiet_tensorflow()
    import keras

    from emostyle_export.models.classifier import build_classifier

    keras.utils.set_random_seed(config.seed)
    model = build_classifier()
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=config.lr), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    batches = _batches(ds, idx, aug, config.batch, config.seed)
    bn_sample = np.sort(np.random.default_rng([config.seed, 3]).permutation(train)[:config.bn_images])
    keeper = _epoch_end(ds, val, bn_sample)
    from tqdm.contrib.logging import logging_redirect_tqdm

    with logging_redirect_tqdm([logging.getLogger("emostyle_train")]):  # epoch lines above the bar
        model.fit(batches, epochs=config.epochs, verbose=0,
                  callbacks=[keeper, _tqdm_callback(config.epochs, len(batches), progress)])
    history = keeper.history
    best_epoch = config.epochs
    if config.keep == "best" and keeper.weights is not None:
        model.set_weights(keeper.weights)
        best_epoch = keeper.best_epoch
    log.info("kept the weights of epoch %d (%s)", best_epoch, config.keep)

    accuracy, cms = {}, {}
    for name, part in (("train", train), ("validation", val), ("test", test)):
        accuracy[name], cms[name] = _metrics(model, ds, part)
    recall = {name: _recall(cm) for name, cm in cms.items()}
    eval_split = "test" if len(test) else "validation"
    cm = cms[eval_split]

    from .plots import classifier_curves, confusion_matrix_png

    tmp = output.with_name(work_name(output.stem, suffix=".keras"))  # the saver picks the format from the suffix
    try:
        model.save(tmp)
        os.replace(tmp, output)
    except BaseException as exc:  # Ctrl-C too: no partial file stays
        tmp.unlink(missing_ok=True)
        if not isinstance(exc, Exception):
            raise
        raise TrainingError(f"Cannot save the classifier to {output}: " + sentence(exc)) from exc
    classifier_curves(work / "curves.png", history)
    confusion_matrix_png(work / "confusion.png", cm, EMOTIONS,
                         f"{eval_split} split: accuracy {accuracy[eval_split]:.3f} (n={int(cm.sum())})")
    cm_json = {"split": eval_split, "labels": list(EMOTIONS), "rows": "true", "columns": "predicted",
               "matrix": cm.tolist()}
    write_bytes_atomic(work / "confusion.json", (json.dumps(cm_json, indent=2) + "\n").encode())
    report = {
        "output": str(output), "config": config.to_json(), "input": {"height": INPUT_SIZE, "width": INPUT_SIZE,
                                                                     "channels": 3, "scale": SCALE},
        "labels": list(EMOTIONS), "images": int(len(ds.labels)), "class_counts": dict(zip(EMOTIONS, counts.tolist())),
        "split_sizes": {"train": len(train), "validation": len(val), "test": len(test)},
        "balanced_train_size": int(len(idx)), "augmented_copies": int(aug.sum()),
        "accuracy": accuracy, "recall": recall, "best_epoch": best_epoch,
        "history": history,
        "skipped_images": {"count": len(ds.skipped), "files": ds.skipped},
        "seconds": round(time.perf_counter() - t0, 2),
    }
    write_bytes_atomic(work / "report.json", (json.dumps(_json_safe(report), indent=2) + "\n").encode())
    log.info("accuracy: train %.3f, validation %.3f, test %.3f; wrote %s and %s", accuracy["train"],
             accuracy["validation"], accuracy["test"], output, work / "report.json")
    if ds.skipped:
        log.warning("%d unreadable image(s) skipped; listed in %s", len(ds.skipped), work / "report.json")
    return ClassifierResult(output, work, accuracy, recall, cm.tolist(), ds.skipped, best_epoch,
                            time.perf_counter() - t0)
