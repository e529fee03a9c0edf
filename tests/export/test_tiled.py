"""Export of the tiled-inference graphs (emostyle_export.tiled): geometry from the graph, parity that can fail.

A small InstanceNorm network of another shape than the paper's (5x5 and 3x3
convs, a stride-2 conv, a residual block, a nearest x2 upsample) shows the
geometry is read from the graph, not assumed; the demo bundle's own style graphs
are covered by tests/runtime/test_tiling.py.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")

from torch import nn  # noqa: E402

from emostyle_export.errors import ExportError, ParityError  # noqa: E402
from emostyle_export.styles import export_style  # noqa: E402
from emostyle_export.tiled import build_tiled, check_tiled, receptive_field  # noqa: E402
from emostyle_rt.fsutil import sha256_file  # noqa: E402
from emostyle_rt.manifest import StyleSpec  # noqa: E402


class _Conv(nn.Module):
    def __init__(self, cin: int, cout: int, k: int, stride: int = 1) -> None:
        super().__init__()
        self.pad, self.conv = nn.ReflectionPad2d(k // 2), nn.Conv2d(cin, cout, k, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.pad(x))


class SmallStyleNet(nn.Module):
    """conv5 -> IN -> conv3 s2 -> IN -> residual(conv3, IN, conv3, IN) -> nearest x2 -> conv3 -> IN -> conv5."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.n1 = _Conv(3, 8, 5), nn.InstanceNorm2d(8, affine=True)
        self.c2, self.n2 = _Conv(8, 16, 3, 2), nn.InstanceNorm2d(16, affine=True)
        self.r1, self.rn1 = _Conv(16, 16, 3), nn.InstanceNorm2d(16, affine=True)
        self.r2, self.rn2 = _Conv(16, 16, 3), nn.InstanceNorm2d(16, affine=True)
        self.c3, self.n3 = _Conv(16, 8, 3), nn.InstanceNorm2d(8, affine=True)
        self.c4 = _Conv(8, 3, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.n1(self.c1(x)))
        y = torch.relu(self.n2(self.c2(y)))
        y = y + self.rn2(self.r2(torch.relu(self.rn1(self.r1(y)))))
        y = nn.functional.interpolate(y, scale_factor=2.0, mode="nearest")
        return self.c4(torch.relu(self.n3(self.c3(y))))


def _bundle(tmp_path: Path, net: nn.Module) -> tuple[Path, StyleSpec]:
    torch.manual_seed(0)
    for p in net.parameters():  # varied affine parameters, so a wrong statistic would show
        nn.init.normal_(p, 0.0, 0.3) if p.dim() == 1 else None
    (tmp_path / "styles").mkdir()
    export_style(net.eval(), "imagenet", tmp_path / "styles" / "small.onnx")
    spec = StyleSpec(style_id="small", onnx="styles/small.onnx", sha256=sha256_file(tmp_path / "styles" / "small.onnx"),
                     input_name="image", output_name="styled", convention="imagenet")
    return tmp_path, spec


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, StyleSpec]:
    torch.manual_seed(1)
    return _bundle(tmp_path_factory.mktemp("small"), SmallStyleNet())


def test_graphs_written_and_checked(small: tuple[Path, StyleSpec]) -> None:
    root, style = small
    spec = build_tiled(root, style)
    # geometry from the graph: 3 scales of 1 and 2 px -> align 2; reach 2 + 1 + 1 (stride) ... -> halo >= it
    assert spec.align == 2 and spec.halo >= spec.receptive_field > 0 and spec.halo % spec.align == 0
    assert len(spec.norms) == 5 and [n.channels for n in spec.norms] == [8, 16, 16, 16, 8]
    assert [n.scale for n in spec.norms] == [1, 2, 2, 2, 1]
    assert len(spec.segments) == 6 and spec.segments[0].stats_only and not spec.segments[1].stats_only
    assert spec.segments[1].inputs[0].name == "image"  # the first conv is recomputed, not stored
    # the residual skip crosses the cut before the second norm of the block: it is stored and read back
    skip_readers = [g for g in spec.segments if len(g.inputs) == 2]
    assert skip_readers and all(t.channels == 16 and t.scale == 2 for t in skip_readers[0].inputs)
    for g in spec.graphs:
        assert (root / g.onnx).is_file() and sha256_file(root / g.onnx) == g.sha256
        onnx.checker.check_model(str(root / g.onnx))
    assert spec.parity["max_abs_diff"] <= 1 and spec.parity["checks"]["exact"] <= 1
    assert json.loads(json.dumps(spec.to_json()))["segments"][0]["stats_only"] is True


def test_parity_check_fails_when_the_halo_is_too_small(small: tuple[Path, StyleSpec]) -> None:
    """The check is not vacuous: tiles with a 0 px halo disagree with the untiled graph and the export fails."""
    root, style = small
    spec = build_tiled(root, style, check=False)
    broken = replace(spec, halo=0, segments=tuple(replace(g, halo=0) for g in spec.segments))
    with pytest.raises(ParityError, match="disagree"):
        check_tiled(root, style, broken)


def test_global_ops_cannot_be_tiled(tmp_path: Path) -> None:
    """A network with a global op (mean over the image) outside InstanceNorm is refused with the op named."""

    class Global(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c, self.n = _Conv(3, 4, 3), nn.InstanceNorm2d(4, affine=True)
            self.out = _Conv(4, 3, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = torch.relu(self.n(self.c(x)))
            return self.out(y * torch.sigmoid(nn.functional.adaptive_avg_pool2d(y, 1)))

    root, style = _bundle(tmp_path, Global())
    with pytest.raises(ExportError, match="GlobalAveragePool|ReduceMean") as err:
        build_tiled(root, style)
    assert "Note: expected" in str(err.value)
    assert not (root / "styles" / "small.tiled").exists()  # nothing left behind


def test_receptive_field_of_a_conv_chain() -> None:
    """Two 3x3 convs at full scale, one 3x3 stride 2: 1 + 1 + (1 + 1 stride slack) = 4 px."""
    from onnx import TensorProto, helper, numpy_helper

    from emostyle_export.tiled import _Tensor

    w = numpy_helper.from_array(np.zeros((1, 1, 3, 3), np.float32), "w")
    nodes = [helper.make_node("Conv", ["x", "w"], ["a"], kernel_shape=[3, 3]),
             helper.make_node("Conv", ["a", "w"], ["b"], kernel_shape=[3, 3]),
             helper.make_node("Conv", ["b", "w"], ["c"], kernel_shape=[3, 3], strides=[2, 2])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 8, 8])],
                          [helper.make_tensor_value_info("c", TensorProto.FLOAT, None)], [w])
    t = {n: _Tensor(np.dtype("float32"), 1, s, "NCHW", 4.0) for n, s in (("x", 1), ("a", 1), ("b", 1), ("c", 2))}
    assert receptive_field(helper.make_model(g), t, ["x"], nodes) == 4


def test_cli_flags(demo_bundle: Path, capsys) -> None:
    from emostyle_export.bundle import add_to_bundle
    from emostyle_export.cli import main

    assert main(["--bundle", str(demo_bundle), "--no-tiled"]) == 2
    assert "--no-tiled is for new exports" in capsys.readouterr().err
    assert main(["--bundle", str(demo_bundle)]) == 2
    assert "--tiled" in capsys.readouterr().err
    with pytest.raises(ExportError, match="no style"):
        add_to_bundle(demo_bundle, fp16=False, tiled=["no-such-style"])
