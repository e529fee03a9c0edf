"""Damaged bundles fail when they are opened, with an error naming the file and the problem.

Each test copies the demo bundle (styles and detector graphs are hard links: a
symlink out of the bundle is refused by the path rule; a file is damaged only
after its link is replaced by a real copy, so the shared bundle is never touched).
"""

from __future__ import annotations

import copy
import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hs

from emostyle_rt import Stylizer
from emostyle_rt.errors import BundleError, EmostyleError
from emostyle_rt.manifest import load_manifest, sha256_file


def _copy_bundle(src: Path, dst: Path) -> Path:
    dst.mkdir(parents=True)
    shutil.copy2(src / "manifest.json", dst / "manifest.json")
    shutil.copy2(src / "classifier.onnx", dst / "classifier.onnx")
    shutil.copytree(src / "styles", dst / "styles", copy_function=_link)
    if (src / "detector").is_dir():  # the face detector's graphs (bundles since issue 11)
        shutil.copytree(src / "detector", dst / "detector", copy_function=_link)
    return dst


def _link(src: str, dst: str) -> None:
    """A hard link (same file system), else a copy: never a symlink, which would lead outside the bundle."""
    try:
        os.link(Path(src).resolve(), dst)
    except OSError:
        shutil.copy2(src, dst)


def _own(path: Path) -> Path:
    """Replace a link (hard or symbolic) by a private copy so it can be damaged."""
    if path.is_symlink() or path.stat().st_nlink > 1:
        data = path.read_bytes()
        path.unlink()
        path.write_bytes(data)
    return path


def _manifest(b: Path) -> dict[str, Any]:
    return json.loads((b / "manifest.json").read_text())


def _write_manifest(b: Path, m: dict[str, Any]) -> None:
    (b / "manifest.json").write_text(json.dumps(m, indent=1))


@pytest.fixture()
def bundle(demo_bundle: Path, tmp_path: Path) -> Path:
    return _copy_bundle(demo_bundle, tmp_path / "bundle")


def _open_fails(b: Path, *words: str, error: type[EmostyleError] = BundleError, **kw: Any) -> str:
    with pytest.raises(error) as info:
        Stylizer(b, **kw)
    msg = str(info.value)
    for w in words:
        assert w in msg, f"{w!r} not in {msg!r}"
    return msg


def test_the_copy_opens(bundle: Path) -> None:
    """The baseline: an undamaged copy opens and runs (so the failures below are the damage's)."""
    st = Stylizer(bundle)
    assert st.stylize(np.full((9, 9, 3), 128, np.uint8), emotion="sad").image.shape == (9, 9, 3)


def test_missing_style_onnx(bundle: Path) -> None:
    rel = _manifest(bundle)["styles"]["demo-sad"]["onnx"]
    (bundle / rel).unlink()
    _open_fails(bundle, str(bundle), rel, "missing")


def test_missing_classifier_onnx(bundle: Path) -> None:
    (bundle / "classifier.onnx").unlink()
    _open_fails(bundle, "classifier.onnx", "missing")


@pytest.mark.parametrize("which", ["classifier", "style"])
def test_truncated_onnx(bundle: Path, which: str) -> None:
    m = _manifest(bundle)
    rel = m["classifier"]["onnx"] if which == "classifier" else m["styles"]["demo-happy"]["onnx"]
    p = _own(bundle / rel)
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 3])
    _open_fails(bundle, str(p), "does not match its manifest", "sha256")


def test_truncated_classifier_without_verification(bundle: Path) -> None:
    """verify=False skips the hashes; the classifier still fails at open, typed and naming the file."""
    p = bundle / "classifier.onnx"
    p.write_bytes(p.read_bytes()[:5000])
    msg = _open_fails(bundle, "classifier.onnx", error=EmostyleError, verify=False)
    assert "onnxruntime cannot load" in msg


def test_wrong_sha256_in_manifest(bundle: Path) -> None:
    m = _manifest(bundle)
    m["styles"]["demo-fear"]["sha256"] = "0" * 64
    _write_manifest(bundle, m)
    _open_fails(bundle, "demo-fear.onnx", "does not match its manifest", "sha256 0000000000000000")


def test_future_format_version(bundle: Path) -> None:
    m = _manifest(bundle)
    m["format_version"] = 2
    _write_manifest(bundle, m)
    _open_fails(bundle, "manifest.json", "format version 2", "newer release", "expected format_version 1")


def test_an_emotion_missing(bundle: Path) -> None:
    m = _manifest(bundle)
    del m["emotions"]["surprise"]
    _write_manifest(bundle, m)
    _open_fails(bundle, "manifest.json", "no style for ['surprise']")


@pytest.mark.parametrize("labels", [
    ["angry", "disgust", "fear", "happy", "sad", "surprise"],  # six
    ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral", "contempt"],  # eight
    ["angry", "disgust", "fear", "happy", "sad", "surprise", "surprise"],  # a duplicate
    ["angry", "disgust", "fear", "happy", "sad", "surprise", 7],  # not a name
])
def test_labels_that_are_not_the_seven_emotions(bundle: Path, labels: list[Any]) -> None:
    m = _manifest(bundle)
    m["labels"] = labels
    _write_manifest(bundle, m)
    _open_fails(bundle, "manifest.json", "labels", "not the seven emotions")


def test_manifest_output_count_disagrees_with_labels(bundle: Path) -> None:
    m = _manifest(bundle)
    m["classifier"]["output"]["classes"] = 6
    _write_manifest(bundle, m)
    _open_fails(bundle, "manifest.json", "6 outputs but 7 labels")


def _six_class_classifier(path: Path, height: int, width: int, channels: int) -> None:
    """A tiny valid classifier graph with the demo's tensor names and input but 6 probabilities out."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    weights = numpy_helper.from_array(np.full((channels, 6), 0.01, np.float32), "w")
    nodes = [
        helper.make_node("Cast", ["face"], ["f"], to=TensorProto.FLOAT),
        helper.make_node("ReduceMean", ["f", "axes"], ["m"], keepdims=0),
        helper.make_node("MatMul", ["m", "w"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probs"], axis=-1),
    ]
    axes = numpy_helper.from_array(np.array([1, 2], np.int64), "axes")
    graph = helper.make_graph(
        nodes, "six", [helper.make_tensor_value_info("face", TensorProto.UINT8, ["n", height, width, channels])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["n", 6])], [weights, axes],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def test_classifier_graph_disagrees_with_labels(bundle: Path) -> None:
    """Manifest consistent with itself, but the graph gives 6 values: refused at open, not a silent zip()."""
    p = bundle / "classifier.onnx"
    m = _manifest(bundle)
    c = m["classifier"]["input"]
    _six_class_classifier(p, c["height"], c["width"], c["channels"])
    m["classifier"]["sha256"] = sha256_file(p)
    _write_manifest(bundle, m)
    _open_fails(bundle, str(p), "6 values per item", "7 labels")


def test_manifest_names_tensors_the_graph_does_not_have(bundle: Path) -> None:
    m = _manifest(bundle)
    m["classifier"]["output"]["name"] = "scores"
    _write_manifest(bundle, m)
    _open_fails(bundle, "classifier.onnx", "'scores'", "outputs ['probs']")


def test_style_graph_names_checked_when_it_loads(bundle: Path) -> None:
    m = _manifest(bundle)
    m["style_input"]["output_name"] = "stylised"
    _write_manifest(bundle, m)
    st = Stylizer(bundle)
    with pytest.raises(BundleError, match="does not have the tensors its manifest names"):
        st.preload()
    with pytest.raises(BundleError, match="'stylised'"):
        st.stylize(np.zeros((8, 8, 3), np.uint8), emotion="angry")


def test_truncated_manifest(bundle: Path) -> None:
    text = (bundle / "manifest.json").read_text()
    (bundle / "manifest.json").write_text(text[: len(text) // 2])
    _open_fails(bundle, "manifest.json", "cannot be read as JSON")


def test_no_manifest_and_not_a_folder(bundle: Path, tmp_path: Path) -> None:
    (bundle / "manifest.json").unlink()
    _open_fails(bundle, "no manifest.json")
    _open_fails(tmp_path / "nowhere", "does not exist")


# -- property: any single damaged manifest field is a BundleError or a working bundle ---------------

_VALUES = [None, 0, -1, 1, 7, 2.5, True, "", "x", "classifier.onnx", [], [1], ["happy"], {}, {"a": 1}, 10**30]


def _field_paths(obj: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [path] if path else []
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += _field_paths(v, path + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out += _field_paths(v, path + (i,))
    return out


@pytest.fixture(scope="module")
def fuzz_bundle(demo_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    b = _copy_bundle(demo_bundle, tmp_path_factory.mktemp("fuzz") / "bundle")
    return b, _manifest(b)


def _mutate(m: dict[str, Any], path: tuple[Any, ...], value: Any, delete: bool) -> dict[str, Any]:
    m = copy.deepcopy(m)
    target = m
    for k in path[:-1]:
        target = target[k]
    if delete:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return m


def _check_mutation(b: Path, m: dict[str, Any]) -> None:
    _write_manifest(b, m)
    try:
        load_manifest(b, verify_files=False)
    except BundleError:
        return
    try:  # the manifest passed validation: the bundle opens and runs, or fails typed
        st = Stylizer(b, verify=False)
        st.stylize(np.full((9, 11, 3), 60, np.uint8))
        st.stylize(np.full((9, 11, 3), 60, np.uint8), emotion="neutral")
    except EmostyleError:
        pass


_STYLE_FIELDS = ("classifier", "style_input", "styles", "emotions", "labels", "format_version")


@settings(deadline=None, max_examples=40, suppress_health_check=list(HealthCheck))
@given(data=hs.data())
def test_any_damaged_manifest_field_is_typed(fuzz_bundle: tuple[Path, dict[str, Any]], data: hs.DataObject) -> None:
    b, m = fuzz_bundle
    paths = [p for p in _field_paths(m) if p[0] in _STYLE_FIELDS and "parity" not in p and "source" not in p]
    path = data.draw(hs.sampled_from(paths))
    delete = data.draw(hs.booleans()) and not isinstance(path[-1], int)
    value = data.draw(hs.sampled_from(_VALUES))
    _check_mutation(b, _mutate(m, path, value, delete))


@pytest.mark.slow
def test_every_damaged_manifest_field_is_typed(fuzz_bundle: tuple[Path, dict[str, Any]]) -> None:
    """Exhaustive: every kind of manifest field, deleted or replaced by each odd value.

    Repeated structures (the seven styles, list items such as the tiled graphs' sixteen
    segments) are the same kind of field: each kind is damaged once, at its first place.
    """
    b, m = fuzz_bundle
    n, kinds = 0, set()
    for path in _field_paths(m):
        if "parity" in path or "source" in path or "tools" in path:
            continue
        kind = tuple("*" if isinstance(k, int) or (i == 1 and path[0] == "styles") else k for i, k in enumerate(path))
        if kind in kinds:
            continue
        kinds.add(kind)
        for value in _VALUES:
            _check_mutation(b, _mutate(m, path, value, False))
            n += 1
        if not isinstance(path[-1], int):
            _check_mutation(b, _mutate(m, path, None, True))
            n += 1
    assert n > 500 and any("tiled" in k for k in kinds) and any(k[0] == "detector" for k in kinds)
