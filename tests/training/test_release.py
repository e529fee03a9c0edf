"""emostyle_train.release: the shipped checkpoint is the authors' dict with fp16 weights, nothing of the optimizer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from emostyle_export.checkpoints import load_style_checkpoint
from emostyle_train.errors import TrainingError
from emostyle_train.release import release_checkpoint


def test_release_is_fp16_authors_format_and_measures_the_rounding(trained_style, tmp_path: Path,
                                                                   astronaut: np.ndarray) -> None:
    dst = tmp_path / "happy.pth"
    rel = release_checkpoint(trained_style.output, dst, probe=astronaut[::4, ::4], metadata={"gpu": "test"})
    raw = torch.load(dst, weights_only=True)
    src = torch.load(trained_style.output, weights_only=True)
    assert "optimizer_state" not in raw and raw["weights_dtype"] == "float16" and raw["gpu"] == "test"
    assert all(v.dtype == torch.float16 for v in raw["state_dict"].values())
    assert raw["state_dict"].keys() == src["state_dict"].keys()
    assert {k: v for k, v in raw.items() if k not in ("state_dict", "weights_dtype", "gpu")} == \
        {k: v for k, v in src.items() if k not in ("state_dict", "optimizer_state")}
    assert rel.parameters == sum(v.numel() for v in src["state_dict"].values()) > 1_600_000
    assert 3.3e6 < rel.bytes == dst.stat().st_size < 3.5e6  # about 2 bytes a parameter
    assert 0 < rel.max_weight_error < 1e-2
    assert rel.psnr_db is None or rel.psnr_db > 45 and rel.max_abs_diff <= 3
    ckpt = load_style_checkpoint(dst)  # what emostyle-export does with it: fp32 weights, the authors' family
    assert ckpt.family == "authors" and ckpt.convention == "imagenet"
    assert all(p.dtype == torch.float32 for p in ckpt.model.parameters())
    assert ckpt.metadata["weights_dtype"] == "float16" and ckpt.metadata["steps"] == 20


def test_release_never_overwrites_and_checks_its_input(trained_style, tmp_path: Path) -> None:
    dst = tmp_path / "x.pth"
    dst.write_bytes(b"keep me")
    with pytest.raises(TrainingError, match="already exists"):
        release_checkpoint(trained_style.output, dst)
    assert dst.read_bytes() == b"keep me"
    release_checkpoint(trained_style.output, dst, force=True)
    assert torch.load(dst, weights_only=True)["weights_dtype"] == "float16"
    torch.save({"conv1.conv2d.weight": torch.zeros(1)}, tmp_path / "flat.pth")
    with pytest.raises(TrainingError, match="not a style checkpoint in the authors' format"):
        release_checkpoint(tmp_path / "flat.pth", tmp_path / "y.pth")
    with pytest.raises(TrainingError, match="must be a scalar"):
        release_checkpoint(trained_style.output, tmp_path / "z.pth", metadata={"gpu": ["a"]})
    assert not (tmp_path / "y.pth").exists() and not (tmp_path / "z.pth").exists()
