"""emostyle-export --aoti: the network from the bundle's graph, the gate, atomicity, and one real package.

One package is really built (torch.export + AOTInductor, fp32 CPU, a static
96x128 range so it compiles in ~15-40 s on 2 cores) once for this module and
used by the runtime tests at the bottom; everything else fakes the compile.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("onnx")
pytest.importorskip("skimage")

from emostyle_export import aoti as build  # noqa: E402
from emostyle_export.cli import _join_dash_values, build_parser, main  # noqa: E402
from emostyle_export.errors import ExportError, ParityError  # noqa: E402
from emostyle_rt.bundle.compiled import AotiSidecar, package_paths  # noqa: E402
from emostyle_rt.errors import BackendError  # noqa: E402
from emostyle_rt.manifest import MANIFEST_NAME, load_manifest  # noqa: E402

STATIC = build.AotiOptions(device="cpu", precision="fp32", max_batch=1, min_hw=(96, 128), opt_hw=(96, 128),
                           max_hw=(96, 128))


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------- no compile


def test_network_rebuilt_from_the_onnx_graph_matches_it(demo_bundle: Path) -> None:
    import onnxruntime as ort
    import torch

    from emostyle_export.styles import style_contract

    m = load_manifest(demo_bundle)
    spec = m.styles[m.emotions["sad"]]
    net = build.style_net_from_onnx(demo_bundle / spec.onnx)  # shared IN weights come through Identity nodes
    x = np.random.default_rng(3).integers(0, 256, (1, 64, 96, 3), dtype=np.uint8)
    with torch.inference_mode():
        ours = style_contract(net, spec.convention)(torch.from_numpy(x)).numpy()
    ref = ort.InferenceSession(str(demo_bundle / spec.onnx), providers=["CPUExecutionProvider"]).run(
        None, {spec.input_name: x})[0]
    assert np.abs(ours.astype(int) - ref).max() <= 1


def test_a_graph_without_the_networks_weights_is_refused(demo_bundle: Path, tmp_path: Path) -> None:
    import onnx

    m = load_manifest(demo_bundle)
    model = onnx.load(str(demo_bundle / m.styles[m.emotions["sad"]].onnx))
    for t in model.graph.initializer:
        if t.name == "net.conv1.conv2d.weight":
            t.name = "onnx::Conv_1"
    onnx.save(model, str(tmp_path / "renamed.onnx"))
    with pytest.raises(ExportError, match=r"missing \['conv1.conv2d.weight'\]"):
        build.style_net_from_onnx(tmp_path / "renamed.onnx")


def test_options_are_checked_before_any_work() -> None:
    assert build.AotiOptions().chosen_precision == "fp32" and build.AotiOptions(device="cuda").chosen_precision == "fp16"
    with pytest.raises(ExportError, match="not built for cpu"):
        build.AotiOptions(device="cpu", precision="fp16").check()
    with pytest.raises(ExportError, match="8 <= min <= max"):
        build.AotiOptions(min_hw=(512, 512), max_hw=(256, 256)).check()
    p = build.AotiOptions(min_hw=(61, 63), max_hw=(1081, 1919)).profile("image")
    assert p.min == (1, 64, 64, 3) and p.max == (4, 1080, 1916, 3) and p.opt == (1, 720, 1280, 3)
    # the gate's real photos, fitted into a static range; the batch cut to the range's maximum
    shapes = [x.shape for _, x in build.gate_inputs(STATIC.profile("image"))]
    assert shapes == [(1, 96, 128, 3)] * 3


def test_cli_flags_and_the_readme_scale_form(tmp_path: Path) -> None:
    args = build_parser().parse_args(_join_dash_values(["--classifier-scale", "-1..1", "-o", "x"]))
    assert args.classifier_scale == "-1..1"
    args = build_parser().parse_args(["--bundle", "b", "--aoti", "--device", "cpu", "--precision", "bf16",
                                      "--max-size", "1080x1920", "--max-batch", "2"])
    from emostyle_export.cli import aoti_options

    opts = aoti_options(args)
    assert (opts.device, opts.precision, opts.max_hw, opts.max_batch) == ("cpu", "bf16", (1080, 1920), 2)
    assert main(["--bundle", str(tmp_path), "--aoti", "--precision", "fp16", "-q"]) == 2  # fp16 on CPU: refused


def _failing_build(bundle: Path, monkeypatch: pytest.MonkeyPatch, *, garbage: bool) -> None:
    """Make compile_package write garbage (the probe fails) or a fake package with wrong outputs (the gate fails)."""
    monkeypatch.setattr(build, "compile_package", lambda net, conv, opts, profile, out: out.write_bytes(b"x") or 1.0)
    if not garbage:
        monkeypatch.setattr(build.aoti_backend, "probe",
                            lambda pkg, side, inputs: {k: np.zeros_like(v) for k, v in inputs.items()})


@pytest.mark.parametrize(("garbage", "error"), [(True, ExportError), (False, ParityError)])
def test_a_failed_build_leaves_the_bundle_as_it_was(demo_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    garbage: bool, error: type) -> None:
    bundle = _copy(demo_bundle, tmp_path / "b")
    before = _tree(bundle)
    _failing_build(bundle, monkeypatch, garbage=garbage)
    from emostyle_export.bundle import add_to_bundle

    sid = load_manifest(bundle).emotions["sad"]
    with pytest.raises(error, match="probe run in a child process" if garbage else "disagrees with the FP32"):
        add_to_bundle(bundle, fp16=False, aoti=build.AotiOptions(max_batch=1, min_hw=(96, 128), max_hw=(96, 128),
                                                                 styles=(sid,)))
    assert _tree(bundle) == before and not (bundle / "aoti").exists()


# ---------------------------------------------------------------- one real package


@pytest.fixture(scope="module")
def built(demo_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A copy of the demo bundle with one real fp32 CPU package (static 96x128), built by the CLI's code path."""
    from emostyle_export.bundle import add_to_bundle

    cache = tmp_path_factory.mktemp("cache")
    old = os.environ.get("EMOSTYLE_CACHE_DIR")
    os.environ["EMOSTYLE_CACHE_DIR"] = str(cache)  # probe markers of this module's packages
    bundle = _copy(demo_bundle, tmp_path_factory.mktemp("aoti") / "b")
    sid = load_manifest(bundle).emotions["happy"]
    add_to_bundle(bundle, fp16=False, aoti=dataclasses.replace(STATIC, styles=(sid,)))
    yield bundle, sid
    if old is None:
        os.environ.pop("EMOSTYLE_CACHE_DIR", None)
    else:
        os.environ["EMOSTYLE_CACHE_DIR"] = old


def test_package_sidecar_and_manifest(built: tuple[Path, str]) -> None:
    bundle, sid = built
    m = load_manifest(bundle)  # still a valid bundle
    (entry,) = m.aoti
    assert entry.style_id == sid and entry.device == "cpu" and entry.precision == "fp32"
    pkg, side_path = package_paths(bundle, sid, entry.key)
    side = AotiSidecar.from_json(json.loads(side_path.read_text()))
    from emostyle_rt.fsutil import sha256_file

    assert side.package_sha256 == entry.package_sha256 == sha256_file(pkg)
    assert side.source_onnx_sha256 == m.styles[sid].sha256 and side.torch_version and side.cpu_isa
    assert side.parity["max_abs_diff"] <= 1 and side.parity["finite"] and len(side.parity["inputs"]) == 3
    assert json.loads((bundle / MANIFEST_NAME).read_text())["aoti"][0]["parity"] == side.parity
    assert not [p for p in (bundle / "aoti").iterdir() if p.name.startswith(".")]  # no build leftovers


def test_runtime_runs_the_package_and_falls_back_outside_its_range(built: tuple[Path, str], astronaut: np.ndarray,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    from emostyle_rt import Stylizer

    bundle, sid = built
    img = np.ascontiguousarray(astronaut[100:196, 200:328])  # 96x128: inside the static range
    with Stylizer(bundle, backend="onnxruntime") as ref_st:
        ref = ref_st.stylize(img, emotion="happy").image
    with pytest.raises(BackendError, match=r"backend='aoti' has no usable engine here for 6 of the bundle's 7"):
        Stylizer(bundle, backend="aoti")  # refused up front: the other styles have no package (not at their images)
    m = load_manifest(bundle)
    one = dataclasses.replace(m, styles={sid: m.styles[sid]}, emotions={e: sid for e in m.labels})
    with Stylizer(one, backend="aoti") as st:  # every emotion on the packaged style
        out = st.stylize(img, emotion="happy").image
        assert st._style_runner(sid).name.startswith("aoti:cpu-")
    assert np.abs(out.astype(int) - ref).max() <= 1
    with Stylizer(bundle) as st, caplog.at_level(logging.WARNING):  # auto: the package, onnxruntime outside
        assert st._style_runner(sid).name.startswith("aoti:cpu-")
        for _ in range(2):
            assert st.stylize(astronaut[:64, :64], emotion="happy").image.shape == (64, 64, 3)
    assert sum("outside the AOTInductor package's range" in r.getMessage() for r in caplog.records) == 1


def test_a_damaged_package_falls_back_with_a_warning(built: tuple[Path, str], tmp_path: Path,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    from emostyle_rt import Stylizer

    src, sid = built
    bundle = _copy(src, tmp_path / "damaged")
    pkg = next((bundle / "aoti").glob(f"*/{sid}.pt2"))
    data = bytearray(pkg.read_bytes())
    data[len(data) // 2] ^= 0xFF
    pkg.write_bytes(bytes(data))
    with Stylizer(bundle) as st, caplog.at_level(logging.WARNING):
        name = st._style_runner(sid).name  # the next backend: OpenVINO where installed, else onnxruntime
        assert name.startswith(("onnxruntime:", "openvino:")), name
    assert "sha256 does not match" in caplog.text


# ---------------------------------------------------------------- GPU (skips without CUDA)


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


@pytest.mark.gpu
@pytest.mark.skipif(not _cuda(), reason="needs a CUDA build of torch and an NVIDIA GPU")
def test_cuda_fp16_package_builds_passes_the_gate_and_runs(demo_bundle: Path, tmp_path: Path,
                                                           astronaut: np.ndarray) -> None:
    """fp16 CUDA package over both orientations of 1080p: built, probed in a child, gated (>= 40 dB), run."""
    import cv2

    from emostyle_export.bundle import add_to_bundle
    from emostyle_rt import Stylizer

    bundle = _copy(demo_bundle, tmp_path / "b")
    sid = load_manifest(bundle).emotions["happy"]
    opts = build.AotiOptions(device="cuda", precision="fp16", max_batch=2, min_hw=(64, 64), max_hw=(1920, 1920),
                             opt_hw=(1080, 1920), styles=(sid,))
    add_to_bundle(bundle, fp16=False, aoti=opts)
    (entry,) = load_manifest(bundle).aoti
    assert entry.device == "cuda" and entry.parity["psnr_db"] >= 40 and entry.parity["finite"]
    from emostyle_export.parity import psnr

    for h, w in ((1080, 1920), (1920, 1080)):
        img = cv2.resize(astronaut, (w, h), interpolation=cv2.INTER_LINEAR)
        with Stylizer(bundle, backend="onnxruntime", provider="cpu") as ref_st:
            ref = ref_st.stylize(img, emotion="happy").image
        with Stylizer(bundle) as st:
            out = st.stylize(img, emotion="happy").image
            assert st._style_runner(sid).name.startswith("aoti:cuda-")
        assert psnr(out, ref) >= 40
