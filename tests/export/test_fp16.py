"""FP16 variant of the graphs: structure (which ops stay fp32) and numbers on real photos (CPU)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
torch = pytest.importorskip("torch")
pytest.importorskip("onnxconverter_common")
pytest.importorskip("skimage")

from emostyle_export import fp16  # noqa: E402
from emostyle_export.models.transformer import TransformerNet  # noqa: E402
from emostyle_export.errors import ExportError, ParityError  # noqa: E402


class _Style(torch.nn.Module):
    """uint8 NHWC -> 0..255 convention TransformerNet -> uint8 NHWC (the bundle contract)."""

    def __init__(self, conv1_scale: float = 1.0) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.net = TransformerNet().eval()
        with torch.no_grad():
            for name, p in self.net.named_parameters():
                if ".in" in f".{name}" or name.startswith("in"):
                    p.copy_(1 + 0.3 * torch.randn_like(p) if name.endswith("weight") else 0.3 * torch.randn_like(p))
            self.net.conv1.conv2d.weight.mul_(conv1_scale)
            x = torch.randint(0, 256, (1, 3, 96, 96)).float()
            y = self.net(x)  # output spread over 0..255 like a trained model
            k = 60.0 / y.std()
            self.net.deconv3.conv2d.weight.mul_(k)
            b = self.net.deconv3.conv2d.bias
            b.copy_(128.0 - (y.mean(dim=(0, 2, 3)) - b) * k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.net(x.float().permute(0, 3, 1, 2)).clamp(0, 255)
        return torch.round(y).to(torch.uint8).permute(0, 2, 3, 1)


class _Classifier(torch.nn.Module):
    """uint8 NHWC 128x128x3 -> x/255 -> conv/BN/pool blocks -> dense -> softmax [N, 7]."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(2)
        layers: list[torch.nn.Module] = []
        cin = 3
        for cout in (16, 32, 64, 128, 256):
            layers += [torch.nn.Conv2d(cin, cout, 3), torch.nn.ReLU(), torch.nn.BatchNorm2d(cout), torch.nn.MaxPool2d(2)]
            cin = cout
        self.features = torch.nn.Sequential(*layers).eval()
        self.head = torch.nn.Sequential(
            torch.nn.Flatten(), torch.nn.Linear(1024, 512), torch.nn.ReLU(), torch.nn.Linear(512, 256),
            torch.nn.ReLU(), torch.nn.Linear(256, 7), torch.nn.Softmax(-1),
        ).eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x.float().permute(0, 3, 1, 2) / 255.0))


def _export(module: torch.nn.Module, path: Path, inp: str, out: str, shape: tuple[int, ...], spatial: bool) -> Path:
    axes = {inp: {0: "N", 1: "H", 2: "W"}, out: {0: "N", 1: "Ho", 2: "Wo"}} if spatial else {inp: {0: "N"}, out: {0: "N"}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), (torch.zeros(shape, dtype=torch.uint8),), str(path), dynamo=False,
                          opset_version=17, input_names=[inp], output_names=[out], dynamic_axes=axes)
    return path


@pytest.fixture(scope="module")
def style_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _export(_Style(), tmp_path_factory.mktemp("s") / "style.onnx", "image", "styled", (1, 64, 64, 3), True)


@pytest.fixture(scope="module")
def style_report(style_onnx: Path) -> fp16.Fp16Report:
    return fp16.make_fp16(style_onnx, style_onnx.with_suffix(".fp16.onnx"), "style")


def test_style_structure_instancenorm_stays_fp32(style_report: fp16.Fp16Report, style_onnx: Path) -> None:
    m16 = onnx.load(str(style_onnx.with_suffix(".fp16.onnx")))
    pmap = fp16.precision_map(m16)
    op_of = {n.name: n.op_type for n in m16.graph.node}
    assert style_report.fp32_ops == ("InstanceNormalization",)
    assert len(style_report.fp32_nodes) == 15  # every IN of the network, nothing else
    assert {op_of[n] for n in pmap["fp16"]} >= {"Conv", "Relu", "Add", "Resize", "Pad", "Clip", "Round"}
    # weights are fp16, I/O types are the bundle contract
    conv_w = {t.name: t.data_type for t in m16.graph.initializer}
    assert all(conv_w[n.input[1]] == onnx.TensorProto.FLOAT16 for n in m16.graph.node if n.op_type == "Conv")
    assert m16.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert m16.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    onnx.checker.check_model(m16)


def test_style_numbers_on_real_photos(style_report: fp16.Fp16Report) -> None:
    names = [c.name for c in style_report.checks]
    assert names == ["astronaut 256x256", "astronaut 255x301 padded to 256x304", "random 64x96"]
    for c in style_report.checks:
        assert c.finite and c.psnr_db is not None and c.psnr_db >= 40.0, c
        assert c.max_abs_diff <= 2
    assert style_report.passed and style_report.min_psnr_db >= 40.0
    m = style_report.to_manifest()
    json.dumps(m, allow_nan=False)  # strict JSON
    assert m["fp32_ops"] == ["InstanceNormalization"] and m["sha256"] and m["fp16_headroom"] > 4


def test_emulation_matches_true_fp16_reference_evaluator(style_onnx: Path) -> None:
    """The CPU check's emulator vs numpy fp16 (onnx.reference), on a small image."""
    from onnx.reference import ReferenceEvaluator

    m32 = onnx.load(str(style_onnx))
    m16 = fp16.convert_fp16(m32, "style")
    img = fp16.default_style_images()[0][1][:, 96:128, 96:136]
    emu = fp16._session(fp16.fp16_emulation(m16, probe=False), optimize=False).run(None, {"image": img})[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref16 = ReferenceEvaluator(m16).run(None, {"image": img})[0]
    assert np.abs(emu.astype(int) - ref16.astype(int)).max() <= 1


def test_overflow_is_detected_and_moved_to_fp32(tmp_path: Path) -> None:
    """conv1 outputs ~1e5 on 0..255 input: fp16 overflows; that conv alone goes to fp32."""
    src = _export(_Style(conv1_scale=300.0), tmp_path / "hot.onnx", "image", "styled", (1, 64, 64, 3), True)
    small = [("random 64x96", fp16.default_style_images()[2][1])]
    with pytest.raises(ParityError, match="inf/NaN"):
        fp16.make_fp16(src, tmp_path / "never.onnx", "style", images=small, max_escalations=0)
    assert not (tmp_path / "never.onnx").exists()
    rep = fp16.make_fp16(src, tmp_path / "hot.fp16.onnx", "style", images=small)
    assert rep.fp32_ops == ("Conv", "InstanceNormalization")
    assert "/net/conv1/conv2d/Conv" in rep.fp32_nodes and rep.passed


def test_classifier_top1_identical(tmp_path: Path) -> None:
    src = _export(_Classifier(), tmp_path / "classifier.onnx", "face", "probs", (1, 128, 128, 3), False)
    rep = fp16.make_fp16(src, tmp_path / "classifier.fp16.onnx", "classifier")
    assert rep.top1_agree and rep.passed and len(rep.checks) == 5
    assert rep.fp32_ops == ("Softmax",)
    for c in rep.checks:
        assert c.top1_fp32 == c.top1_fp16 and c.max_abs_diff < 1e-2 and c.finite
    m16 = onnx.load(str(tmp_path / "classifier.fp16.onnx"))
    assert m16.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT


def test_refuses_to_overwrite_and_unknown_kind(style_onnx: Path, tmp_path: Path) -> None:
    out = tmp_path / "exists.onnx"
    out.write_bytes(b"user file")
    with pytest.raises(ExportError, match="not overwriting"):
        fp16.make_fp16(style_onnx, out, "style")
    assert out.read_bytes() == b"user file"
    with pytest.raises(ExportError, match="Unknown graph kind"):
        fp16.convert_fp16(onnx.load(str(style_onnx)), "detector")  # type: ignore[arg-type]
