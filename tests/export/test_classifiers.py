"""Keras classifiers in every format -> uint8-in ONNX graphs that match Keras."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tensorflow")
pytest.importorskip("tf2onnx")

import keras  # noqa: E402

from emostyle_export.classifiers import convert_classifier, load_classifier  # noqa: E402
from emostyle_export.models.classifier import build_classifier  # noqa: E402
from emostyle_export.parity import check_classifier  # noqa: E402
from emostyle_export.errors import CheckpointError, ExportError  # noqa: E402


def tiny(shape: tuple[int, int, int], classes: int = 7, activation: str = "softmax") -> keras.Model:
    keras.utils.set_random_seed(3)
    return keras.Sequential([
        keras.Input(shape=shape),
        keras.layers.Conv2D(4, 3, activation="relu"),
        keras.layers.BatchNormalization(),
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(classes, activation=activation),
    ])


def write_keras2_h5(path: Path, model: keras.Model, batch_shape: list) -> Path:
    """Write ``model`` the way Keras 2 (tf.keras 2.x) wrote .h5 files."""
    import h5py

    layers_cfg = [{"class_name": "InputLayer", "config": {"batch_input_shape": batch_shape, "dtype": "float32",
                                                          "sparse": False, "ragged": False, "name": "input_1"}}]
    names = []
    for layer in model.layers:
        cfg = {k: v for k, v in layer.get_config().items() if k not in ("dtype",)}
        cfg["dtype"] = "float32"
        for key in [k for k, v in cfg.items() if isinstance(v, dict) and "module" in v]:
            cfg[key] = {"class_name": cfg[key]["class_name"], "config": cfg[key]["config"]}  # Keras 2 style
        layers_cfg.append({"class_name": type(layer).__name__, "config": cfg})
        names.append(layer.name)
    config = {"class_name": "Sequential", "config": {"name": "sequential", "layers": layers_cfg}}
    with h5py.File(path, "w") as f:
        f.attrs["keras_version"] = "2.13.1"
        f.attrs["backend"] = "tensorflow"
        f.attrs["model_config"] = json.dumps(config)
        g = f.create_group("model_weights")
        g.attrs["layer_names"] = [n.encode() for n in names]
        g.attrs["backend"] = "tensorflow"
        g.attrs["keras_version"] = "2.13.1"
        for layer in model.layers:
            lg = g.create_group(layer.name)
            wnames = [f"{layer.name}/{w.name}:0" for w in layer.weights]
            lg.attrs["weight_names"] = [w.encode() for w in wnames]
            for wn, w in zip(wnames, layer.weights):
                lg.create_dataset(wn, data=np.asarray(w))
    return path


def roundtrip(path: Path, tmp_path: Path, scale: str) -> tuple:
    clf = load_classifier(path)
    out = tmp_path / "c.onnx"
    convert_classifier(clf, scale, False, out)
    return clf, check_classifier(clf, out, scale, False)


def test_papers_classifier_has_21_layers() -> None:
    m = build_classifier()
    assert len(m.layers) == 21 and m.count_params() == 1_052_519
    assert tuple(m.inputs[0].shape) == (None, 128, 128, 3)


def test_papers_classifier_exports_with_parity(tmp_path: Path) -> None:
    """The paper's 21-layer model (what emostyle-train classifier trains) through the ordinary export path."""
    keras.utils.set_random_seed(0)
    build_classifier().save(tmp_path / "paper.keras")
    clf, rep = roundtrip(tmp_path / "paper.keras", tmp_path, "0..1")
    assert (clf.height, clf.width, clf.channels) == (128, 128, 3)
    assert rep.max_abs_diff <= 1e-4 and rep.top1_agree and "astronaut face 128x128x3" in rep.inputs


def test_keras_v3_file(tmp_path: Path) -> None:
    tiny((128, 128, 3)).save(tmp_path / "m.keras")
    clf, rep = roundtrip(tmp_path / "m.keras", tmp_path, "0..1")
    assert (clf.format, clf.height, clf.width, clf.channels) == ("keras", 128, 128, 3)
    assert rep.max_abs_diff <= 1e-4 and rep.top1_agree


def test_grayscale_64_scaled_minus1_1_h5(tmp_path: Path) -> None:
    tiny((64, 64, 1)).save(tmp_path / "g.h5")
    clf, rep = roundtrip(tmp_path / "g.h5", tmp_path, "-1..1")
    assert (clf.format, clf.height, clf.width, clf.channels) == ("h5", 64, 64, 1)
    assert rep.max_abs_diff <= 1e-4 and "astronaut face 64x64x1" in rep.inputs


def test_legacy_keras2_h5(tmp_path: Path) -> None:
    model = tiny((48, 48, 1))
    path = write_keras2_h5(tmp_path / "legacy.h5", model, [None, 48, 48, 1])
    clf, rep = roundtrip(path, tmp_path, "0..255")
    assert (clf.height, clf.channels) == (48, 1)
    x = np.random.default_rng(0).uniform(0, 255, (2, 48, 48, 1)).astype("float32")
    np.testing.assert_allclose(np.asarray(clf.predict(x)), np.asarray(model(x)), atol=1e-6)  # weights really loaded
    assert rep.max_abs_diff <= 1e-4


def test_savedmodel_folder(tmp_path: Path) -> None:
    tiny((96, 96, 3)).export(tmp_path / "sm", verbose=False)
    clf, rep = roundtrip(tmp_path / "sm", tmp_path, "0..1")
    assert (clf.format, clf.height) == ("savedmodel", 96)
    assert rep.max_abs_diff <= 1e-4


def test_logits_model_gets_softmax_in_graph(tmp_path: Path) -> None:
    from emostyle_export.parity import classifier_inputs

    tiny((32, 32, 3), activation=None).save(tmp_path / "logits.keras")
    clf = load_classifier(tmp_path / "logits.keras")
    batch, _ = classifier_inputs(32, 32, 3)
    probs, added = clf.probabilities(batch / 255.0)
    assert added and np.allclose(probs.sum(-1), 1)
    convert_classifier(clf, "0..1", True, tmp_path / "c.onnx")
    assert check_classifier(clf, tmp_path / "c.onnx", "0..1", True).max_abs_diff <= 1e-4


def test_bad_classifiers_fail_clearly(tmp_path: Path) -> None:
    tiny((32, 32, 3), classes=5).save(tmp_path / "five.keras")
    with pytest.raises(CheckpointError, match=r"has 5 outputs.*expected 7 outputs"):
        load_classifier(tmp_path / "five.keras")
    keras.Sequential([keras.Input((None, None, 3)), keras.layers.GlobalAveragePooling2D(),
                      keras.layers.Dense(7)]).save(tmp_path / "anysize.keras")
    with pytest.raises(CheckpointError, match="fixed-size image input"):
        load_classifier(tmp_path / "anysize.keras")
    (tmp_path / "x.onnx").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"unknown format.*\.keras, \.h5 or a SavedModel"):
        load_classifier(tmp_path / "x.onnx")
    (tmp_path / "bad.h5").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match=r"not an HDF5 file.*available text starting 'garbage'"):
        load_classifier(tmp_path / "bad.h5")
    (tmp_path / "bad.keras").write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(8))
    with pytest.raises(CheckpointError, match=r"not a Keras zip archive.*an HDF5 file \(a \.h5 model: rename it"):
        load_classifier(tmp_path / "bad.keras")
    (tmp_path / "damaged.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(8))
    with pytest.raises(CheckpointError, match="Keras cannot load"):
        load_classifier(tmp_path / "damaged.h5")
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(CheckpointError, match="not a SavedModel"):
        load_classifier(tmp_path / "empty_dir")


def test_labels_must_be_the_seven_emotions() -> None:
    from emostyle_export.bundle import parse_labels

    assert parse_labels("neutral,angry,disgust,fear,happy,sad,surprise")[0] == "neutral"
    with pytest.raises(ExportError, match="do not name the seven emotions"):
        parse_labels("angry,disgust,fear,happy,sad,surprise,calm")
    with pytest.raises(ExportError, match="do not name the seven emotions"):
        parse_labels("angry,angry,fear,happy,sad,surprise,neutral")
