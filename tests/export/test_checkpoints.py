"""Both style-checkpoint families load into one TransformerNet; foreign files fail clearly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from emostyle_export.checkpoints import load_style_checkpoint, save_in_family  # noqa: E402
from emostyle_export.models.transformer import TransformerNet  # noqa: E402
from emostyle_export.errors import CheckpointError  # noqa: E402


@pytest.fixture(scope="module")
def net() -> TransformerNet:
    torch.manual_seed(7)
    return TransformerNet().eval()


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_model_is_the_papers_16_conv_network(net: TransformerNet) -> None:
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 16
    assert 1.6e6 < sum(p.numel() for p in net.parameters()) < 1.75e6
    with torch.inference_mode():
        assert net(torch.rand(1, 3, 255, 301)).shape == (1, 3, 256, 304)


def test_authors_family_detected_with_metadata(net: TransformerNet, tmp_path: Path) -> None:
    path = save_in_family(net, tmp_path / "authors.pth", "authors", content_weight=1e5, style_weight=1e10,
                          commit_hash="abc123", optimizer={"state": {}, "param_groups": [{"lr": 1e-3}]})
    keys = torch.load(path, weights_only=True)["state_dict"].keys()
    assert any(k.startswith("up1.conv2d.conv2d.") for k in keys) and not any(k.startswith("deconv") for k in keys)
    ck = load_style_checkpoint(path)
    assert (ck.family, ck.convention, ck.convention_source) == ("authors", "imagenet", "detected")
    assert ck.metadata["commit_hash"] == "abc123" and ck.metadata["content_weight"] == 1e5
    assert _same_weights(ck.model, net)


def test_examples_family_drops_stale_running_stats(net: TransformerNet, tmp_path: Path) -> None:
    state = dict(net.state_dict())
    for name in ("in1", "in2", "res3.in1"):  # what checkpoints of old PyTorch carry
        state[f"{name}.running_mean"] = torch.zeros(32)
        state[f"{name}.running_var"] = torch.ones(32)
    torch.save(state, tmp_path / "candy.pth")
    ck = load_style_checkpoint(tmp_path / "candy.pth")
    assert (ck.family, ck.convention) == ("pytorch-examples", "0-255")
    assert len(ck.dropped_keys) == 6
    assert _same_weights(ck.model, net)


def test_flag_overrides_detected_convention(net: TransformerNet, tmp_path: Path) -> None:
    path = save_in_family(net, tmp_path / "x.pth", "pytorch-examples")
    ck = load_style_checkpoint(path, convention="imagenet")
    assert (ck.family, ck.convention, ck.convention_source) == ("pytorch-examples", "imagenet", "flag")
    with pytest.raises(CheckpointError, match="Unknown style convention"):
        load_style_checkpoint(path, convention="bgr")


def test_foreign_checkpoint_names_missing_and_unexpected_keys(tmp_path: Path) -> None:
    torch.save(torch.nn.Conv2d(3, 8, 3).state_dict() | {"head.fc.weight": torch.zeros(2)}, tmp_path / "f.pth")
    with pytest.raises(CheckpointError) as err:
        load_style_checkpoint(tmp_path / "f.pth")
    msg = str(err.value)
    assert "Missing keys: [conv1.conv2d.bias" in msg and "Unexpected keys: [bias, head.fc.weight, weight]" in msg
    assert "Note: expected" in msg


def test_wrong_shapes_and_damaged_files(net: TransformerNet, tmp_path: Path) -> None:
    state = dict(net.state_dict())
    state["conv1.conv2d.weight"] = torch.zeros(16, 3, 9, 9)
    torch.save(state, tmp_path / "shape.pth")
    with pytest.raises(CheckpointError, match=r"wrong shape: conv1.conv2d.weight: \(16, 3, 9, 9\)"):
        load_style_checkpoint(tmp_path / "shape.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot be read"):
        load_style_checkpoint(tmp_path / "junk.pth")
    torch.save(net, tmp_path / "pickled.pth")  # a whole pickled module: refused, not executed
    with pytest.raises(CheckpointError, match="pickled"):
        load_style_checkpoint(tmp_path / "pickled.pth")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_style_checkpoint(tmp_path / "missing.pth")
    torch.save([1, 2], tmp_path / "list.pth")
    with pytest.raises(CheckpointError, match="not a dict"):
        load_style_checkpoint(tmp_path / "list.pth")


def test_reference_conventions_differ(net: TransformerNet) -> None:
    """The two conventions give different pictures from the same weights (why detection matters)."""
    from emostyle_export.styles import reference_stylize

    img = np.random.default_rng(0).integers(0, 256, (1, 16, 20, 3), dtype=np.uint8)
    a = reference_stylize(net, img, "imagenet")
    b = reference_stylize(net, img, "0-255")
    assert a.shape == b.shape == (1, 16, 20, 3)
    assert 0 <= a.min() and a.max() <= 255 and np.abs(a - b).mean() > 1
