"""Keras emotion classifiers: load any common format and convert to ONNX.

Formats: ``.keras`` (Keras 3), ``.h5`` (Keras 3 or legacy Keras 2) and
SavedModel folders. The input size and channels are read from the model; the
pixel scaling it was trained with is an option (it cannot be read from the
file), and so is its label order. The exported graph takes uint8 NHWC crops,
scales them inside the graph and returns probabilities.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from emostyle_rt.errors import note, sentence
from emostyle_rt.logutil import quiet_tensorflow
from emostyle_rt.manifest import EMOTIONS, is_seven_emotions

from . import ONNX_OPSET
from .errors import CheckpointError, ExportError

__all__ = ["quiet_tensorflow"]  # re-exported: training imports it from here

log = logging.getLogger(__name__)

SCALES = ("0..1", "-1..1", "0..255")
INPUT_NAME = "face"
OUTPUT_NAME = "probs"


def scale_pixels(x: Any, scale: str) -> Any:
    """uint8-range float pixels -> the range the model was trained on (numpy or TF)."""
    if scale == "0..1":
        return x / 255.0
    if scale == "-1..1":
        return x / 127.5 - 1.0
    if scale == "0..255":
        return x
    raise ExportError(f"Unknown classifier pixel scale {scale!r}." + note(list(SCALES), scale))


def check_labels(labels: Sequence[str]) -> tuple[str, ...]:
    """The classifier's output order must be a permutation of the seven emotions."""
    labels = tuple(labels)
    if not is_seven_emotions(labels):
        raise ExportError(
            f"Classifier labels {list(labels)} do not name the seven emotions once each."
            + note(f"a permutation of {list(EMOTIONS)}", list(labels))
        )
    return labels


@dataclass(frozen=True)
class KerasClassifier:
    """A loaded classifier: a callable on scaled float NHWC batches, and its spec."""

    predict: Callable[[Any], Any]  # float32 NHWC (already scaled) -> [N, classes] tensor
    height: int
    width: int
    channels: int
    classes: int
    format: str  # "keras", "h5", "savedmodel" or "demo"
    source: Path | None

    def probabilities(self, x: np.ndarray) -> tuple[np.ndarray, bool]:
        """Eager outputs for a scaled batch; softmax applied if the model outputs logits."""
        out = np.asarray(self.predict(x), dtype=np.float64)
        return (out, False) if looks_like_probabilities(out) else (softmax(out), True)


def looks_like_probabilities(out: np.ndarray) -> bool:
    return bool(np.all(out >= -1e-6) and np.allclose(out.sum(axis=-1), 1.0, atol=1e-3))


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _spec_from_shape(shape: Sequence[Any], path: Path | str) -> tuple[int, int, int]:
    dims = list(shape)
    if len(dims) != 4 or any(d is None for d in dims[1:]) or dims[3] not in (1, 3):
        raise CheckpointError(
            f"Classifier {path} has input shape {tuple(dims)}; a fixed-size image input is needed."
            + note("(batch, height, width, 1 or 3)", tuple(dims))
        )
    return int(dims[1]), int(dims[2]), int(dims[3])


def from_keras_model(model: Any, fmt: str, source: Path | None) -> KerasClassifier:
    """Wrap an in-memory Keras model."""
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise CheckpointError(
            f"Classifier {source or model.name} must have one input and one output."
            + note("1 input, 1 output", f"{len(model.inputs)} inputs, {len(model.outputs)} outputs")
        )
    h, w, c = _spec_from_shape(model.inputs[0].shape, source or model.name)
    classes = model.outputs[0].shape[-1]
    _check_classes(classes, source or model.name)
    # A functional model whose inputs are a list (legacy Keras 2 .h5 files, e.g. fer's) wants a list: a bare tensor
    # works but warns on every call ("The structure of `inputs` doesn't match the expected structure").
    listed = isinstance(getattr(model, "_inputs_struct", None), (list, tuple))
    return KerasClassifier(
        predict=(lambda x: model([x], training=False)) if listed else (lambda x: model(x, training=False)),
        height=h, width=w, channels=c,
        classes=int(classes), format=fmt, source=source,
    )


def _check_classes(classes: Any, where: Any) -> None:
    if classes != len(EMOTIONS):
        raise CheckpointError(
            f"Classifier {where} has {classes} outputs; an emotion classifier needs one per emotion."
            + note(f"{len(EMOTIONS)} outputs ({', '.join(EMOTIONS)})", classes)
        )


_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"


def _looks_like(path: Path) -> str:
    """What a file's first bytes say it is, for error messages."""
    with open(path, "rb") as f:
        head = f.read(16)
    if not head:
        return "an empty file"
    if head.startswith(b"PK\x03\x04"):
        return "a zip archive"
    if head.startswith(_HDF5_MAGIC):
        return "an HDF5 file (a .h5 model: rename it to .h5)"
    if head.startswith(b"\x80") or head.startswith(b"PK"):
        return "a pickle or PyTorch file"
    text = head.decode("ascii", "replace")
    if all(c.isprintable() or c.isspace() for c in text):
        return f"text starting {text.strip()[:12]!r}"
    return f"{path.stat().st_size} bytes starting {head[:8].hex(' ')}"


def _check_container(path: Path, suffix: str) -> None:
    """A .keras must be a zip archive and a .h5 an HDF5 file; Keras' own errors say "File not found"."""
    import zipfile

    if suffix == ".keras" and not zipfile.is_zipfile(path):
        raise CheckpointError(
            f"Classifier {path} is not a Keras zip archive." + note("a .keras zip archive (model.save in Keras 3)",
                                                                    _looks_like(path))
        )
    if suffix in (".h5", ".hdf5"):
        with open(path, "rb") as f:
            if f.read(8) != _HDF5_MAGIC:
                raise CheckpointError(
                    f"Classifier {path} is not an HDF5 file." + note("an HDF5 .h5 model", _looks_like(path))
                )


def load_classifier(path: str | Path) -> KerasClassifier:
    """Load a ``.keras``, ``.h5`` (Keras 2 or 3) or SavedModel classifier."""
    quiet_tensorflow()
    path = Path(path)
    if path.is_dir():
        if not (path / "saved_model.pb").is_file():
            raise CheckpointError(
                f"Classifier folder {path} is not a SavedModel." + note("saved_model.pb inside", sorted(os.listdir(path))[:10])
            )
        return _load_savedmodel(path)
    if not path.is_file():
        raise CheckpointError(f"Classifier file {path} does not exist.")
    suffix = path.suffix.lower()
    if suffix not in (".keras", ".h5", ".hdf5"):
        raise CheckpointError(
            f"Classifier {path} has an unknown format." + note(".keras, .h5 or a SavedModel folder", suffix or "no suffix")
        )
    try:
        _check_container(path, suffix)
    except OSError as exc:
        raise CheckpointError(f"Cannot read classifier {path}: " + sentence(exc)) from exc
    import keras

    try:
        model = keras.models.load_model(path, compile=False)
    except Exception as exc:  # Keras raises ValueError/OSError/TypeError depending on the damage
        raise CheckpointError(f"Keras cannot load classifier {path}: " + sentence(exc)) from exc
    return from_keras_model(model, "keras" if suffix == ".keras" else "h5", path)


def _load_savedmodel(path: Path) -> KerasClassifier:
    import tensorflow as tf

    try:
        loaded = tf.saved_model.load(str(path))
        fn = loaded.signatures["serving_default"]
    except Exception as exc:
        raise CheckpointError(f"TensorFlow cannot load SavedModel {path} (serving_default): " + sentence(exc)) from exc
    _, kwargs = fn.structured_input_signature
    outputs = fn.structured_outputs
    if len(kwargs) != 1 or len(outputs) != 1:
        raise CheckpointError(
            f"SavedModel {path} serving_default must have one input and one output."
            + note("1 input, 1 output", f"{len(kwargs)} inputs, {len(outputs)} outputs")
        )
    (in_name, in_spec), = kwargs.items()
    (out_name, out_spec), = outputs.items()
    h, w, c = _spec_from_shape(in_spec.shape.as_list(), path)
    _check_classes(out_spec.shape[-1], path)

    def predict(x: Any) -> Any:
        return fn(**{in_name: tf.convert_to_tensor(x, tf.float32)})[out_name]

    # keep `loaded` alive: the concrete function refers to its variables
    predict.loaded = loaded  # type: ignore[attr-defined]
    return KerasClassifier(predict=predict, height=h, width=w, channels=c, classes=int(out_spec.shape[-1]),
                           format="savedmodel", source=path)


def convert_classifier(clf: KerasClassifier, scale: str, add_softmax: bool, out_path: Path, opset: int = ONNX_OPSET) -> None:
    """Write the uint8-in, probabilities-out ONNX graph of ``clf`` to ``out_path``.

    tf2onnx's ``from_keras`` fails on Keras 3 models; a ``tf.function`` with an
    explicit signature through ``from_function`` works (field notes).
    """
    quiet_tensorflow()
    import onnx
    import tensorflow as tf
    import tf2onnx

    logging.getLogger("tf2onnx").setLevel(logging.WARNING)
    spec = tf.TensorSpec([None, clf.height, clf.width, clf.channels], tf.uint8, name=INPUT_NAME)

    @tf.function(input_signature=[spec])
    def graph(face: Any) -> Any:
        p = clf.predict(scale_pixels(tf.cast(face, tf.float32), scale))
        return tf.nn.softmax(p) if add_softmax else p

    try:
        proto, _ = tf2onnx.convert.from_function(graph, input_signature=[spec], opset=opset)
    except Exception as exc:
        raise ExportError(f"tf2onnx could not convert classifier {clf.source or 'demo'}: " + sentence(exc)) from exc
    _rename_io(proto, INPUT_NAME, OUTPUT_NAME)
    onnx.checker.check_model(proto)
    onnx.save(proto, str(out_path))


def _rename_io(proto: Any, input_name: str, output_name: str) -> None:
    """Give the graph's single input and output stable names."""
    g = proto.graph
    renames = {g.input[0].name: input_name, g.output[0].name: output_name}
    for node in g.node:
        node.input[:] = [renames.get(n, n) for n in node.input]
        node.output[:] = [renames.get(n, n) for n in node.output]
    g.input[0].name = input_name
    g.output[0].name = output_name
