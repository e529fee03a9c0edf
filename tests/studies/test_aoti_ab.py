"""The AOTInductor A/B study (studies/aoti_ab) times its paths with the bench's interleaved loop."""

from __future__ import annotations

import numpy as np
import pytest

from support.studies import study

aoti_ab = study("aoti_ab")


def test_every_round_runs_each_path_in_turn_and_ratios_are_per_round(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []

    def path(name: str, shift: int):
        def run(x: np.ndarray) -> np.ndarray:
            calls.append(name)
            return x.astype(np.int16) + shift
        return run

    monkeypatch.setattr(aoti_ab, "_paths", lambda bundles: {"onnxruntime": path("onnxruntime", 0),
                                                            "aoti": path("aoti", 2)})
    res = aoti_ab.measure([], ["64x48"], rounds=3)
    assert res["rounds"] == 3
    row = res["sizes"]["64x48"]
    assert set(row) == {"onnxruntime", "aoti"}
    assert row["aoti"]["max_abs_diff_vs_onnxruntime"] == 2.0 and row["onnxruntime"]["max_abs_diff_vs_onnxruntime"] == 0
    assert row["onnxruntime"]["ratio_vs_onnxruntime"] == 1.0 and row["aoti"]["ratio_vs_onnxruntime"] > 0
    # one reference call, one agreement call each, then 3 rounds alternating
    assert calls == ["onnxruntime", "onnxruntime", "aoti"] + ["onnxruntime", "aoti"] * 3
