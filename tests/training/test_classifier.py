"""emostyle-train classifier: the paper's recipe on a synthetic 7-class set of coloured shapes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from emostyle_export.classifiers import load_classifier
from emostyle_rt.manifest import EMOTIONS
from emostyle_train.classifier import balance, list_dataset, load_dataset, stratified_split
from emostyle_train.cli import main
from emostyle_train.errors import DatasetError

from trainkit import SHAPE_COUNTS, make_shapes


def test_classifier_reaches_90_percent_on_held_out_test_split(trained_classifier) -> None:
    res = trained_classifier
    assert res.accuracy["test"] >= 0.9, res.accuracy
    assert res.accuracy["validation"] >= 0.9, res.accuracy
    assert len(res.skipped) == 1 and next(iter(res.skipped)).endswith("truncated.jpg")

    report = json.loads((res.work / "report.json").read_text())
    assert report["skipped_images"]["count"] == 1
    sizes = report["split_sizes"]
    assert sizes["train"] + sizes["validation"] + sizes["test"] == sum(SHAPE_COUNTS)
    largest_train = max(n - round(0.2 * n) - round(0.1 * n) for n in SHAPE_COUNTS)
    assert report["balanced_train_size"] == 7 * largest_train  # every class topped up to the largest
    assert set(report["recall"]["test"]) == set(EMOTIONS)
    cm = json.loads((res.work / "confusion.json").read_text())
    assert cm["labels"] == list(EMOTIONS) and np.asarray(cm["matrix"]).shape == (7, 7)
    assert np.trace(cm["matrix"]) / np.sum(cm["matrix"]) == pytest.approx(res.accuracy["test"])
    for png in ("confusion.png", "curves.png"):
        assert (res.work / png).stat().st_size > 1000

    clf = load_classifier(res.output)  # what emostyle-export does with it
    assert (clf.height, clf.width, clf.channels, clf.classes) == (128, 128, 3, 7)


def test_split_is_stratified_seeded_and_balance_tops_up_to_the_largest_class() -> None:
    labels = np.repeat(np.arange(7), [100, 20, 50, 100, 80, 30, 100])
    train, val, test = stratified_split(labels, (0.7, 0.2, 0.1), seed=3)
    assert len(set(train) | set(val) | set(test)) == len(labels)
    assert not (set(train) & set(val) or set(train) & set(test) or set(val) & set(test))
    for c, n in enumerate([100, 20, 50, 100, 80, 30, 100]):
        assert np.sum(labels[val] == c) == round(0.2 * n) and np.sum(labels[test] == c) == round(0.1 * n)
    again = stratified_split(labels, (0.7, 0.2, 0.1), seed=3)
    assert all(np.array_equal(a, b) for a, b in zip((train, val, test), again))
    idx, aug = balance(train, labels, seed=0)
    counts = np.bincount(labels[idx], minlength=7)
    assert (counts == counts.max()).all() and counts.max() == 70
    assert not aug[:len(train)].any() and aug[len(train):].all()  # originals as they are, copies augmented


def test_csv_dataset_with_names_and_indices(tmp_path: Path) -> None:
    root = make_shapes(tmp_path / "imgs", counts=(2,) * 7)
    rows = ["path,label"] + [f"imgs/{e}/000.png,{e}" for e in EMOTIONS] + [f"imgs/{e}/001.png,{i}"
                                                                           for i, e in enumerate(EMOTIONS)]
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    ds = load_dataset(tmp_path / "labels.csv")
    assert ds.images.shape == (14, 128, 128, 3) and np.bincount(ds.labels).tolist() == [2] * 7
    assert root.is_dir()


def test_empty_class_folder_is_refused_before_training(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = make_shapes(tmp_path / "data", counts=(3,) * 7)
    for f in (root / "fear").iterdir():
        f.unlink()
    with pytest.raises(DatasetError, match=r"fear holds no images.*Note: expected"):
        list_dataset(root)
    assert main(["classifier", "--data", str(root), "-o", str(tmp_path / "m.keras"), "-q"]) == 2
    assert "holds no images" in capsys.readouterr().err
    assert not (tmp_path / "m.keras").exists() and not (tmp_path / "m.train").exists()
    (root / "fear").rmdir()
    with pytest.raises(DatasetError, match="lacks a folder for fear"):
        list_dataset(root)
