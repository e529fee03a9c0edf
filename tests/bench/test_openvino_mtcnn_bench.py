"""emostyle_bench.openvino_mtcnn: every path detects the same faces, each graph's time is its runner's, the report
renders (one photo, one round: what it measures is for the results file, not for a test)."""

from __future__ import annotations

from pathlib import Path

import pytest

from emostyle_bench import openvino_mtcnn
from emostyle_bench.openvino_cpu import _photo
from emostyle_rt.backends import openvino as ovb

needs_openvino = pytest.mark.skipif(not ovb.installed(), reason="openvino is not installed (the cpu extra brings it)")


@needs_openvino
def test_detect_rows_compare_boxes_and_time_each_graph(mtcnn_bundle: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EMOSTYLE_CACHE_DIR", str(tmp_path / "cache"))
    head, *rows = openvino_mtcnn.bench_detect(mtcnn_bundle, {"astronaut": _photo("astronaut"),
                                                             "coffee": _photo("coffee")}, ["512"], rounds=1)
    assert head["serving"]["openvino"] == dict.fromkeys(openvino_mtcnn.GRAPHS, "openvino")  # gated, passed
    assert set(head["serving"]["onnxruntime"].values()) == {"onnxruntime:CPUExecutionProvider"}
    face, none = rows
    assert face["paths"]["openvino"]["boxes"] == {"count_onnxruntime": 1, "count": 1, "min_iou": 1.0, "same_boxes": True}
    assert none["paths"]["openvino"]["boxes"]["count"] == 0
    graphs = face["paths"]["onnxruntime"]
    assert all(graphs[g]["median_ms"] > 0 for g in openvino_mtcnn.GRAPHS)
    assert sum(graphs[g]["median_ms"] for g in openvino_mtcnn.GRAPHS) < graphs["detect"]["median_ms"]
    assert none["paths"]["onnxruntime"]["onet"]["speedup_vs_onnxruntime"] is None  # no candidate reached O-Net
    text = openvino_mtcnn.markdown({"command": "c", "lscpu": {"Model name": "cpu"}, "note": "", "openvino": "v",
                                    "onnxruntime": "v", "rounds": 1, "serving": head["serving"], "detect": rows})
    assert "| astronaut | 512 |" in text and "| 1 / 1 | 1.000 |" in text
