"""studies/gpu_ort/gpu_ort.py (the GPU comparison for issue 9) runs its CPU-only dry run end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


def test_gpu_ort_dry_run_writes_tables(demo_bundle: Path, tmp_path: Path) -> None:
    pytest.importorskip("torch")
    from support.studies import study

    gpu_ort = study("gpu_ort")

    rc = gpu_ort.main(["--dry-run", "--bundle", str(demo_bundle), "--out-dir", str(tmp_path),
                       "--variants", "ort-cuda-fp32,ort-cuda-fp16-nhwc"])
    data = json.loads((tmp_path / "gpu-cpu-dry-run.json").read_text())
    assert rc == 0, [r.get("error") for r in data["rows"]]
    paths = [r["path"] for r in data["rows"]]
    assert paths == ["torch-eager-fp32", "torch-eager-fp16", "ort-cuda-fp32", "ort-cuda-fp16-nhwc"]
    ours = data["rows"][2]
    assert ours["runner"] == "onnxruntime:CPUExecutionProvider" and ours["psnr_vs_eager_fp32_db"] >= 40
    assert {q["stage"] for q in data["ratios"]} == {"style", "chain"}
    assert "| 64x64 | ort-cuda-fp32 |" in (tmp_path / "gpu-cpu-dry-run.md").read_text()
