"""MTCNN's graphs on OpenVINO: gated on their first real input, one warning and onnxruntime on a failed gate, the
``auto`` rule per graph (today: none, measured), and the Stylizer's ``backend=`` reaching the detector.

Real photos only (scikit-image's astronaut and camera, coffee without a face). Tests that run OpenVINO skip
cleanly where the ``openvino`` package is absent.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from skimage import data

from emostyle_rt import Stylizer
from emostyle_rt.backends import ort as ortb
from emostyle_rt.backends import openvino as ovb
from emostyle_rt.errors import BackendError
from emostyle_rt.manifest import Manifest, load_manifest
from emostyle_rt.metrics import DETECTOR_TOLERANCE
from emostyle_rt.detection.mtcnn import MtcnnDetector

needs_openvino = pytest.mark.skipif(not ovb.installed(), reason="openvino is not installed (the cpu extra brings it)")
PHOTOS = {"astronaut": data.astronaut(), "camera": np.ascontiguousarray(np.dstack([data.camera()] * 3)),
          "coffee": np.ascontiguousarray(data.coffee())}


@pytest.fixture(scope="module")
def manifest(mtcnn_bundle: Path) -> Manifest:
    return load_manifest(mtcnn_bundle)


@pytest.fixture(scope="module")
def ort_faces(manifest: Manifest) -> dict[str, list]:
    det = MtcnnDetector(manifest.detector, manifest.root, backend="onnxruntime")  # type: ignore[arg-type]
    faces = {name: det.detect(im) for name, im in PHOTOS.items()}
    det.close()
    return faces


def _serving(det: MtcnnDetector) -> dict[str, str]:
    det.preload()
    return {g: getattr(r, "serving", r.name) for g, r in det._runners.items()}


def _same_faces(got: list, want: list) -> None:
    """Same count, same boxes; scores and landmarks within float noise."""
    assert [f.box for f in got] == [f.box for f in want]
    for g, w in zip(got, want):
        assert abs(g.score - w.score) < 1e-4
        assert np.abs(np.subtract(g.landmarks, w.landmarks)).max() < 0.01


@needs_openvino
def test_the_gate_passes_on_the_bundles_mtcnn_and_the_boxes_are_onnxruntimes(
        manifest: Manifest, ort_faces: dict[str, list], cache: Path, caplog: pytest.LogCaptureFixture) -> None:
    det = MtcnnDetector(manifest.detector, manifest.root, backend="openvino")  # type: ignore[arg-type]
    with caplog.at_level(logging.WARNING):
        faces = {name: det.detect(im) for name, im in PHOTOS.items()}
    assert not caplog.records
    assert [f.box for f in faces["astronaut"]] == [(182, 64, 83, 107)] and faces["coffee"] == []
    for name, want in ort_faces.items():
        _same_faces(faces[name], want)
    for g, r in det._runners.items():
        assert isinstance(r, ovb.GatedRunner) and r.serving == "openvino", g
        assert r.gate_result is not None and r.gate_result["max_abs_diff"] <= DETECTOR_TOLERANCE
    det.close()


@needs_openvino
@pytest.mark.parametrize("backend", ["auto", "openvino"])
def test_a_broken_openvino_graph_falls_back_with_one_warning_and_onnxruntimes_boxes(
        backend: str, manifest: Manifest, ort_faces: dict[str, list], cache: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    orig = ovb.OvRunner.run

    def wrong_pnet(self, feed):  # noqa: ANN001 - P-Net's scores off by 0.01, R-Net untouched
        out = orig(self, feed)
        return {k: v + np.float32(0.01) if self.path.name == "pnet.onnx" else v for k, v in out.items()}

    monkeypatch.setattr(ovb.OvRunner, "run", wrong_pnet)
    monkeypatch.setattr(ovb, "AUTO_DETECTOR_GRAPHS", frozenset({"pnet", "rnet"}))  # a rule that uses OpenVINO
    det = MtcnnDetector(manifest.detector, manifest.root, backend=backend)  # type: ignore[arg-type]
    if backend == "openvino":  # asked for explicitly: the gate's failure is an error, not a fallback
        with pytest.raises(BackendError, match=r"pnet\.onnx \(pnet\) disagrees with onnxruntime.*max \|diff\| <= 0\.0001"):
            det.detect(PHOTOS["astronaut"])
        return
    with caplog.at_level(logging.WARNING):
        faces = {name: det.detect(im) for name, im in PHOTOS.items()}
        again = MtcnnDetector(manifest.detector, manifest.root, backend=backend)  # type: ignore[arg-type]
        faces_again = again.detect(PHOTOS["astronaut"])  # not tried again in this process: no second warning
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1 and "pnet.onnx (pnet) disagrees with onnxruntime" in warned[0], warned
    assert "Using onnxruntime for pnet" in warned[0]
    for name, want in ort_faces.items():  # onnxruntime's boxes (R-Net still runs in OpenVINO: floats within noise)
        _same_faces(faces[name], want)
    _same_faces(faces_again, ort_faces["astronaut"])
    assert _serving(det) == {"pnet": "onnxruntime", "rnet": "openvino", "onet": "onnxruntime:CPUExecutionProvider"}
    assert det._runners["pnet"].name == "onnxruntime:CPUExecutionProvider"  # the name says who serves
    assert _serving(again)["pnet"] == "onnxruntime:CPUExecutionProvider"
    det.close()
    again.close()


@needs_openvino
def test_auto_on_cpu_picks_what_the_rule_says(manifest: Manifest, cache: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    # the measured rule (benchmarks/results/openvino-cpu-mtcnn.md): no detector graph, new shapes cost OpenVINO more
    assert ovb.AUTO_DETECTOR_GRAPHS == frozenset()
    det = MtcnnDetector(manifest.detector, manifest.root)  # type: ignore[arg-type]  # the default is auto
    assert det.backend == "auto"
    ort = "onnxruntime:CPUExecutionProvider"
    assert _serving(det) == dict.fromkeys(("pnet", "rnet", "onet"), ort)
    det.close()
    monkeypatch.setattr(ovb, "AUTO_DETECTOR_GRAPHS", frozenset({"pnet", "rnet"}))  # per graph, as the set says
    det = MtcnnDetector(manifest.detector, manifest.root)  # type: ignore[arg-type]
    assert _serving(det) == {"pnet": "unverified", "rnet": "unverified", "onet": ort}
    det.detect(PHOTOS["astronaut"])
    assert _serving(det) == {"pnet": "openvino", "rnet": "openvino", "onet": ort}
    det.close()
    forced = MtcnnDetector(manifest.detector, manifest.root, provider="cpu")  # type: ignore[arg-type]
    assert forced.backend == "onnxruntime" and set(_serving(forced).values()) == {ort}  # a provider: onnxruntime's
    forced.close()
    monkeypatch.setattr(ortb, "choose_providers", lambda provider=None: ("CUDAExecutionProvider", "CPUExecutionProvider"))
    monkeypatch.setattr(ovb, "OvRunner", lambda *a, **k: pytest.fail("OpenVINO was tried on a GPU machine"))
    assert all(ovb.detector_runner(manifest.root / g.onnx, name, lambda: None) is None
               for name, g in manifest.detector.graphs.items())  # type: ignore[union-attr]


def test_without_openvino_auto_is_onnxruntime_silently(manifest: Manifest, cache: Path,
                                                       monkeypatch: pytest.MonkeyPatch,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(ovb, "installed", lambda: False)
    monkeypatch.setattr(ovb, "AUTO_DETECTOR_GRAPHS", frozenset({"pnet", "rnet", "onet"}))
    with caplog.at_level(logging.WARNING):
        det = MtcnnDetector(manifest.detector, manifest.root)  # type: ignore[arg-type]
        assert set(_serving(det).values()) == {"onnxruntime:CPUExecutionProvider"}
    assert not caplog.records
    det.close()


@needs_openvino
def test_the_stylizers_backend_reaches_the_detector(mtcnn_bundle: Path, cache: Path) -> None:
    for backend, want in (("auto", "auto"), ("onnxruntime", "onnxruntime"), ("openvino", "openvino")):
        st = Stylizer(mtcnn_bundle, backend=backend)
        assert st._detector.backend == want, backend
        st.close()
    st = Stylizer(mtcnn_bundle, backend="openvino")
    st._detector.preload()
    assert all(isinstance(r, ovb.GatedRunner) for r in st._detector._runners.values())
    st.close()
