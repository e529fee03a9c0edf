"""The temporal loss of emostyle-train style: exact synthetic motion, a loss that measures flicker, wiring.

The motion is checked against OpenCV (cv2.warpAffine / cv2.remap) on a real
photo; the loss is zero exactly where a network commutes with the motion and
not elsewhere; a training run with --temporal-weight records the term, writes
it into report.json and the checkpoint, and resumes bit for bit.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from emostyle_train.cli import main
from emostyle_train.errors import TrainingError
from emostyle_train.style import StyleConfig, train_style
from emostyle_train.temporal import (
    Motion, MotionRange, affine_flow, sample_params, synthetic_next, temporal_loss, valid_mask, warp,
)


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    """A real photo, 64x80 float32 RGB in [0, 1]."""
    from skimage import data

    return cv2.resize(data.astronaut(), (80, 64), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0


def _nchw(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))[None]


def _hwc(x: torch.Tensor) -> np.ndarray:
    return x[0].numpy().transpose(1, 2, 0)


def test_affine_motion_is_cv2_warp_affine_and_warp_is_cv2_remap(photo: np.ndarray) -> None:
    h, w = photo.shape[:2]
    dx, dy, deg, zoom = 1.3, -0.7, 0.8, 0.015
    flow = affine_flow(torch.tensor([[dx, dy, deg, zoom]]), h, w)
    ours = _hwc(warp(_nchw(photo), flow))
    m = cv2.getRotationMatrix2D(((w - 1) / 2, (h - 1) / 2), deg, 1 + zoom)
    m[:, 2] += (dx, dy)
    theirs = cv2.warpAffine(photo, m, (w, h), flags=cv2.INTER_LINEAR)
    valid = valid_mask(flow)[0, 0].numpy().astype(bool)
    assert 0.9 < valid.mean() < 1.0  # a margin came from outside the frame and is masked
    assert np.abs(ours - theirs)[valid].max() < 1e-4

    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    f = flow[0].numpy()
    remapped = cv2.remap(photo, xs + f[0], ys + f[1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    assert np.abs(ours - remapped)[valid].max() < 1e-4


def test_integer_shift_is_an_exact_shift_with_the_border_masked(photo: np.ndarray) -> None:
    flow = affine_flow(torch.tensor([[3.0, -2.0, 0.0, 0.0]]), 64, 80)  # content moves right 3, up 2
    assert torch.allclose(flow[0, 0], torch.full((64, 80), -3.0), atol=1e-4)
    assert torch.allclose(flow[0, 1], torch.full((64, 80), 2.0), atol=1e-4)
    moved = _hwc(warp(_nchw(photo), flow))
    np.testing.assert_allclose(moved[:62, 3:], photo[2:, :77], atol=1e-5)
    valid = valid_mask(flow)[0, 0].numpy()
    assert valid[:62, 3:].all() and not valid[62:].any() and not valid[:, :3].any()


def test_loss_is_zero_only_where_the_network_commutes_with_the_motion(photo: np.ndarray) -> None:
    torch.manual_seed(0)
    x = _nchw(photo).repeat(2, 1, 1, 1)
    shift = torch.tensor([[2.0, 1.0, 0.0, 0.0], [-1.0, 3.0, 0.0, 0.0]])
    still = MotionRange(noise_std=0.0)
    per_pixel = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 1), torch.nn.ReLU(), torch.nn.Conv2d(8, 3, 1))
    spatial = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 5, padding=2), torch.nn.ReLU(), torch.nn.Conv2d(8, 3, 3,
                                                                                                        padding=1))

    def loss(net: torch.nn.Module, motion: MotionRange, params: torch.Tensor) -> float:
        moved = synthetic_next(x, motion, params=params, generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            return float(temporal_loss(net(moved.next), net(x), moved))

    assert loss(per_pixel, still, shift) < 1e-10  # f(shift(x)) == shift(f(x)) on the pixels kept in view
    assert loss(spatial, still, torch.zeros(2, 4)) < 1e-10  # no motion, no noise
    assert loss(spatial, still, shift) > 1e-6  # borders and padding move with the content: not equivariant
    assert loss(per_pixel, MotionRange(), shift) > 1e-5  # sensor noise changes the output
    # sub-pixel motion: bilinear resampling does not commute with the ReLU (it would with a linear map)
    assert loss(per_pixel, still, torch.tensor([[0.5, 0.0, 0.7, 0.01]] * 2)) > 1e-7


def test_sampled_motion_stays_in_range_and_is_seeded() -> None:
    r = MotionRange(max_shift=0.05, max_rotation_deg=2.0, max_zoom=0.03)
    p = sample_params(500, 100, r, generator=torch.Generator().manual_seed(3))
    assert p.shape == (500, 4)
    limits = torch.tensor([5.0, 5.0, 2.0, 0.03])
    assert (p.abs() <= limits).all() and (p.abs().amax(0) > 0.9 * limits).all()
    assert torch.equal(p, sample_params(500, 100, r, generator=torch.Generator().manual_seed(3)))
    moved = synthetic_next(torch.zeros(2, 3, 16, 16), MotionRange(), generator=torch.Generator().manual_seed(0))
    assert isinstance(moved, Motion) and moved.next.shape == (2, 3, 16, 16) and moved.valid.shape == (2, 1, 16, 16)
    with pytest.raises(TrainingError, match="max_shift.*Note: expected >= 0"):
        MotionRange(max_shift=-0.1)
    with pytest.raises(TrainingError, match="Note: expected"):
        warp(torch.zeros(1, 3, 8, 8), torch.zeros(1, 2, 8, 9))


def test_training_on_the_loss_alone_lowers_it(photo: np.ndarray) -> None:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 5, padding=2), torch.nn.ReLU(), torch.nn.Conv2d(16, 3, 5,
                                                                                                     padding=2))
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    x = _nchw(photo).repeat(2, 1, 1, 1)
    gen = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(25):
        moved = synthetic_next(x, MotionRange(max_shift=0.05), generator=gen)
        loss = temporal_loss(net(moved.next), net(x), moved)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5]), losses


def test_style_run_with_temporal_weight_records_the_term_and_resumes_exactly(content_dir: Path, style_image: Path,
                                                                            tmp_path: Path) -> None:
    def cfg(steps: int) -> StyleConfig:
        return StyleConfig(style=style_image, content=content_dir, size=32, batch=2, steps=steps, temporal_weight=1e4,
                           checkpoint_every=2, preview_every=100)

    straight = train_style(cfg(4), tmp_path / "a.pth", progress=False)
    h = straight.history
    assert set(h) == {"content", "style", "tv", "temporal", "total"}
    assert all(v > 0 and math.isfinite(v) for v in h["temporal"]), h["temporal"]
    assert h["total"][0] == pytest.approx(h["content"][0] + h["style"][0] + h["tv"][0] + h["temporal"][0])
    report = json.loads((straight.work / "report.json").read_text())
    t = report["temporal"]
    assert t["weight"] == 1e4 and t["motion"]["noise_std"] == MotionRange().noise_std
    assert t["unweighted_last"] == pytest.approx(report["last_losses"]["temporal"] / 1e4)
    assert report["config"]["temporal_weight"] == 1e4
    assert torch.load(straight.output, weights_only=True)["temporal_weight"] == 1e4

    train_style(cfg(2), tmp_path / "b.pth", progress=False)
    resumed = train_style(cfg(4), tmp_path / "b.pth", resume=True, progress=False)  # the motion is step-seeded
    a = torch.load(straight.output, weights_only=True)["state_dict"]
    b = torch.load(resumed.output, weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed.history == straight.history

    off = StyleConfig(style=style_image, content=content_dir, size=32, batch=2, steps=5, checkpoint_every=2,
                      preview_every=100)
    with pytest.raises(TrainingError, match="temporal_weight"):  # another weight is another run
        train_style(off, tmp_path / "a.pth", resume=True, progress=False)


def test_temporal_term_runs_in_the_cuda_path_on_cpu(content_dir: Path, style_image: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """bf16 autocast and channels_last (what CUDA uses) with the temporal term, on the CPU."""
    import emostyle_train.style as style_mod

    monkeypatch.setattr(style_mod, "mixed_precision", lambda device: True)
    cfg = StyleConfig(style=style_image, content=content_dir, size=32, batch=2, steps=2, temporal_weight=1e4,
                      preview_every=100)
    res = train_style(cfg, tmp_path / "bf16.pth", progress=False)
    assert all(math.isfinite(v) and v > 0 for v in res.history["temporal"])


def test_bad_temporal_weight_is_refused_before_training(content_dir: Path, style_image: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    base = ["style", "--style", str(style_image), "--content", str(content_dir), "-o", str(tmp_path / "x.pth"),
            "--size", "32", "--batch", "2", "--steps", "1", "-q"]
    for bad in ("-1", "nan", "inf"):
        assert main([*base, "--temporal-weight", bad]) == 2
        assert "--temporal-weight must be a number >= 0. Note: expected >= 0" in capsys.readouterr().err
    assert not (tmp_path / "x.train").exists()

    from emostyle_train.pipeline import options

    assert options(StyleConfig, {"temporal-weight": 100}, "[style]", tmp_path) == {"temporal_weight": 100.0}
    with pytest.raises(TrainingError, match="wrong type"):
        options(StyleConfig, {"temporal_weight": "lots"}, "[style]", tmp_path)


@pytest.mark.gpu
def test_temporal_term_on_cuda(content_dir: Path, style_image: Path, tmp_path: Path) -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    cfg = StyleConfig(style=style_image, content=content_dir, size=64, batch=2, steps=3, temporal_weight=1e4,
                      device="cuda", preview_every=100)
    res = train_style(cfg, tmp_path / "cuda.pth", progress=False)
    assert all(math.isfinite(v) and v > 0 for v in res.history["temporal"])
