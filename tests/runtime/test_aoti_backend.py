"""AOTInductor backend without compiling: layout, sidecars, machine checks, selection, probe, runner, registry.

The package build itself (torch.export + AOTInductor, ~20-60 s on the dev CPU)
runs once in tests/export/test_aoti.py; here packages are fake files and the
loaded model a fake callable, so every branch runs in seconds.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from emostyle_rt.bundle import compiled as eng
from emostyle_rt.backends import CLASSIFIER, FallbackRunner, OutsideProfileError, runner_for
from emostyle_rt.backends import aoti
from emostyle_rt.errors import BackendError, BundleError, InvalidImageError
from emostyle_rt.fsutil import sha256_file
from emostyle_rt.manifest import Manifest, load_manifest

TORCH = "2.13.0+cpu"
HOST = eng.AotiHost(TORCH, ("avx512", "avx2", "default"), None, None,
                    frozenset({"avx512f", "avx512bw", "avx512vl", "avx512dq", "fma", "avx2", "avx512_vnni"}))
PROFILE = eng.Profile("image", (1, 64, 64, 3), (1, 128, 128, 3), (2, 256, 256, 3))


def _write_package(root: Path, sid: str, *, key: str | None = None, payload: bytes = b"pt2" * 1000,
                   **over: Any) -> tuple[Path, eng.AotiSidecar]:
    """A fake package + a sidecar as export writes them."""
    side = eng.AotiSidecar(style_id=sid, package=f"{sid}.pt2", package_sha256="", package_bytes=0, device="cpu",
                           arch="avx512", torch_version=TORCH, precision="fp32", profile=PROFILE,
                           source_onnx=f"styles/{sid}.onnx", source_onnx_sha256="ab" * 32, convention="imagenet",
                           cpu_isa="avx512 avx512_vnni")
    side = dataclasses.replace(side, **over)
    pkg, sidecar = eng.package_paths(root, sid, key or side.key)
    pkg.parent.mkdir(parents=True, exist_ok=True)
    pkg.write_bytes(payload)
    side = dataclasses.replace(side, package_sha256=sha256_file(pkg), package_bytes=pkg.stat().st_size)
    sidecar.write_text(json.dumps(side.to_json()))
    return pkg, side


# ---------------------------------------------------------------- the format: layout, sidecars, checks


def test_keys_paths_and_roundtrips(tmp_path: Path) -> None:
    assert eng.aoti_key("cpu", "avx512", "2.13.0+cpu") == "cpu-avx512-torch2.13.0+cpu"
    assert eng.aoti_key("cuda", "sm90", "2.11.0+cu130") == "cuda-sm90-torch2.11.0+cu130"
    for bad in (("tpu", "x", "2.0"), ("cpu", "AVX-512", "2.0"), ("cpu", "avx2", "../2")):
        with pytest.raises(BackendError):
            eng.aoti_key(*bad)
    pkg, side = eng.package_paths(tmp_path, "candy-1234", "cpu-avx2-torch2.13.0")
    assert pkg == tmp_path / "aoti" / "cpu-avx2-torch2.13.0" / "candy-1234.pt2" and side.name == "candy-1234.pt2.json"
    with pytest.raises(BackendError):
        eng.package_paths(tmp_path, "../x", "cpu-avx2-torch2.13.0")
    _, s = _write_package(tmp_path, "candy", parity={"psnr_db": 90.0})
    assert eng.AotiSidecar.from_json(json.loads(json.dumps(s.to_json()))) == s
    entry = eng.AotiEntry("candy", "aoti/k/candy.pt2", "aoti/k/candy.pt2.json", "k", "cpu", "fp32", "ab" * 32, {"x": 1})
    assert eng.AotiEntry.from_json(entry.to_json()) == entry
    with pytest.raises(BundleError, match=r"lacks \['package'"):
        eng.AotiSidecar.from_json({k: v for k, v in s.to_json().items() if k != "package"})
    with pytest.raises(BundleError, match="malformed"):
        eng.AotiSidecar.from_json(s.to_json() | {"profile": {"input": "image", "min": [1], "opt": [2, 2], "max": [3]}})


def test_trt_entries_roundtrip() -> None:
    p = eng.Profile("image", (1, 64, 64, 3), (1, 720, 1024, 3), (4, 1024, 1024, 3))
    entry = eng.TrtEngine("style.a", "trt/sm90-trt10/style.a.plan", "trt/sm90-trt10/style.a.plan.json", "sm90-trt10",
                          "10.13.3.9", "NVIDIA H200", "9.0", "cd" * 32, (p,))
    assert eng.TrtEngine.from_json(json.loads(json.dumps(entry.to_json()))) == entry
    side = eng.TrtSidecar("style.a", "style.a.plan", "cd" * 32, 10, "10.13.3.9", "NVIDIA H200", "9.0",
                          "styles/a.fp16.onnx", "ef" * 32, (p,), workspace_mb=2048)
    assert eng.TrtSidecar.from_json(side.to_json()) == side


def test_cpu_isa_flags() -> None:
    assert eng.cpu_isas({"avx2", "fma"}) == ("avx2", "default")
    assert eng.isa_flags("avx512 avx512_vnni") >= {"avx512f", "avx512_vnni"}
    assert aoti.host().torch_version == aoti.torch_version()  # read without importing torch


@pytest.mark.parametrize(("over", "host", "why"), [
    ({}, dataclasses.replace(HOST, torch_version="2.12.0"), "built with torch 2.13.0+cpu, this machine has 2.12.0"),
    ({}, dataclasses.replace(HOST, torch_version=None), "no torch"),
    ({"cpu_isa": "avx512 avx512_bf16"}, HOST, "lacks ['avx512_bf16']"),
    ({"arch": "avx2", "cpu_isa": "avx2"}, dataclasses.replace(HOST, cpu_isas=("default",)), "lacks"),
    ({"device": "cuda", "arch": "sm90", "compute_capability": "9.0", "gpu_name": "NVIDIA H200"}, HOST,
     "built for compute capability 9.0 (NVIDIA H200), this machine has no CUDA GPU"),
    ({"precision": "fp8"}, HOST, "precision 'fp8' unknown"),
])
def test_aoti_problems(tmp_path: Path, over: dict, host: eng.AotiHost, why: str) -> None:
    pkg, side = _write_package(tmp_path, "candy", key="k", **over)
    assert any(why in p for p in eng.aoti_problems(side, pkg, host)), eng.aoti_problems(side, pkg, host)


def test_damaged_or_stale_packages(tmp_path: Path) -> None:
    pkg, side = _write_package(tmp_path, "candy")
    assert eng.aoti_problems(side, pkg, HOST, source_sha256="ab" * 32) == []
    assert "stale package" in " ".join(eng.aoti_problems(side, pkg, HOST, source_sha256="cd" * 32))
    data = pkg.read_bytes()
    pkg.write_bytes(data[:-3])
    assert "truncated" in " ".join(eng.aoti_problems(side, pkg, HOST))
    pkg.write_bytes(data[:5] + b"X" + data[6:])
    assert "corrupt" in " ".join(eng.aoti_problems(side, pkg, HOST))
    pkg.unlink()
    assert "missing" in " ".join(eng.aoti_problems(side, pkg, HOST))


def test_find_package_picks_a_fitting_one_and_warns_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    eng._WARNED.clear()
    pkg, _ = _write_package(tmp_path, "candy")
    assert eng.find_package(tmp_path, "candy", HOST, ["cpu"])[0] == pkg  # type: ignore[index]
    assert eng.find_package(tmp_path, "candy", HOST, ["cuda"]) is None  # no GPU: no key, silent
    assert eng.find_package(tmp_path, "other", HOST, ["cpu"]) is None and not caplog.records
    pkg.write_bytes(b"damaged")
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            assert eng.find_package(tmp_path, "candy", HOST, ["cpu"], source_sha256="ab" * 32) is None
    warned = [r.getMessage() for r in caplog.records]
    assert len(warned) == 1 and "truncated" in warned[0] and "Falling back" in warned[0]
    caplog.clear()
    with caplog.at_level(logging.WARNING):  # built for another torch only: said once, naming what exists
        assert eng.find_package(tmp_path, "candy", dataclasses.replace(HOST, torch_version="2.14.0"), ["cpu"]) is None
    assert "none was built for this machine" in caplog.text and "cpu-avx512-torch2.13.0+cpu" in caplog.text


# ---------------------------------------------------------------- the probe (child process)


def test_probe_crash_is_a_typed_error_not_a_dead_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pkg, side = _write_package(tmp_path, "candy")
    crash = [sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)"]
    monkeypatch.setattr(aoti, "probe_command", lambda *a: crash)
    with pytest.raises(BackendError, match=r"killed by signal 11"):
        aoti.probe(pkg, side)
    monkeypatch.setattr(aoti, "probe_command", lambda *a: [sys.executable, "-c", "import time; time.sleep(30)"])
    with pytest.raises(BackendError, match="did not finish"):
        aoti.probe(pkg, side, timeout_s=1)


def test_probe_of_a_damaged_package_fails_in_the_child(tmp_path: Path) -> None:
    pkg, side = _write_package(tmp_path, "candy", payload=b"not a zip")
    with pytest.raises(BackendError, match=r"failed its probe run in a child process \(exit status 1\)"):
        aoti.probe(pkg, side)


def test_probe_runs_once_per_machine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pkg, side = _write_package(tmp_path, "candy")
    monkeypatch.setenv("EMOSTYLE_CACHE_DIR", str(tmp_path / "cache"))
    calls: list[Path] = []
    monkeypatch.setattr(aoti, "probe", lambda p, s, *a, **k: calls.append(p) or {})
    aoti.ensure_probed(pkg, side)
    aoti.ensure_probed(pkg, side)
    assert calls == [pkg] and list((tmp_path / "cache" / "aoti-probed").iterdir())
    monkeypatch.setenv("EMOSTYLE_AOTI_PROBE", "0")
    aoti.ensure_probed(pkg, dataclasses.replace(side, package_sha256="ef" * 32))
    assert calls == [pkg]


# ---------------------------------------------------------------- the runner, over a fake loaded package


class _FakeModel:
    """What load_package returns: a callable on uint8 NHWC tensors (+1 per pixel)."""

    def __init__(self) -> None:
        self.batches: list[int] = []
        self.active = 0
        self.overlap = False

    def __call__(self, x: Any) -> Any:
        self.active += 1
        self.overlap |= self.active > 1
        self.batches.append(int(x.shape[0]))
        try:
            return x + 1
        finally:
            self.active -= 1


@pytest.fixture
def fake_runner(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[aoti.AotiRunner, _FakeModel]:
    pytest.importorskip("torch")
    model = _FakeModel()
    monkeypatch.setattr(aoti, "load_package", lambda torch, path: model)
    pkg, side = _write_package(tmp_path, "candy")
    return aoti.AotiRunner(pkg, side), model


def test_runner_contract_range_and_batch_split(fake_runner: tuple[aoti.AotiRunner, _FakeModel]) -> None:
    runner, model = fake_runner
    assert runner.name == "aoti:cpu-avx512-torch2.13.0+cpu:fp32"
    assert [t.name for t in runner.inputs] == ["image"] and runner.outputs[0].dtype == "uint8"
    x = np.arange(5 * 64 * 96 * 3, dtype=np.uint8).reshape(5, 64, 96, 3)
    np.testing.assert_array_equal(runner.run({"image": x})["styled"], x + 1)
    assert model.batches == [2, 2, 1]  # split by the range's max batch
    for bad in (np.zeros((1, 60, 64, 3), np.uint8), np.zeros((1, 64, 66, 3), np.uint8),
                np.zeros((1, 64, 260, 3), np.uint8)):
        with pytest.raises(OutsideProfileError, match=r"\[1, 64, 64, 3\]\.\.\[2, 256, 256, 3\]"):
            runner.run({"image": bad})
    with pytest.raises(InvalidImageError):
        runner.run({"image": np.zeros((1, 64, 64, 3), np.float32)})
    with pytest.raises(BackendError, match="Missing"):
        runner.run({"x": x})
    runner.close()
    runner.close()
    with pytest.raises(BackendError, match="closed"):
        runner.run({"image": x})


def test_runner_is_thread_safe(fake_runner: tuple[aoti.AotiRunner, _FakeModel]) -> None:
    runner, model = fake_runner
    x = np.full((1, 64, 64, 3), 7, np.uint8)
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(20):
                assert int(runner.run({"image": x})["styled"][0, 0, 0, 0]) == 8
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and not model.overlap and len(model.batches) == 80


# ---------------------------------------------------------------- selection: registry, auto order, fallbacks


@pytest.fixture
def manifest(demo_bundle: Path) -> Manifest:
    return load_manifest(demo_bundle)


def test_aoti_find_runner_without_packages(manifest: Manifest, caplog: pytest.LogCaptureFixture) -> None:
    sid = manifest.emotions["happy"]
    with caplog.at_level(logging.WARNING):
        assert aoti.find_runner(manifest, sid) is None and not caplog.records  # nothing built: silent
        assert aoti.find_runner(manifest, CLASSIFIER) is None
    with pytest.raises(BackendError, match=rf"No usable AOTInductor package for '{sid}'.*--aoti"):
        aoti.find_runner(manifest, sid, required=True)


def test_registry_order_and_fallback(manifest: Manifest, monkeypatch: pytest.MonkeyPatch) -> None:
    """auto: TensorRT first, then AOTInductor (wrapped in a FallbackRunner), then OpenVINO, then onnxruntime."""
    from emostyle_rt.backends import ENGINES, tensorrt

    assert list(ENGINES) == ["tensorrt", "aoti", "openvino"]
    asked: list[str] = []

    class _Fake:
        name = "aoti:fake"
        inputs = outputs = ()

        def run(self, feed: dict) -> dict:
            raise OutsideProfileError("outside")

        def close(self) -> None:
            pass

    monkeypatch.setattr(tensorrt, "find_runner", lambda m, k, required=False: asked.append("tensorrt"))
    monkeypatch.setattr(aoti, "find_runner", lambda m, k, required=False: asked.append("aoti") or _Fake())
    sid = manifest.emotions["happy"]
    r = runner_for(manifest, sid)
    assert isinstance(r, FallbackRunner) and r.name == "aoti:fake" and asked == ["tensorrt", "aoti"]
    out = r.run({"image": np.zeros((1, 8, 8, 3), np.uint8)})  # outside: onnxruntime runs it
    assert out["styled"].shape == (1, 8, 8, 3)
    r.close()
    # backend="aoti": the classifier has no package and runs in onnxruntime, without asking for one
    asked.clear()
    clf = runner_for(manifest, CLASSIFIER, backend="aoti")
    assert clf.name.startswith("onnxruntime:") and asked == []
    clf.close()
    with pytest.raises(BackendError, match="provider"):
        runner_for(manifest, sid, backend="aoti", provider="cpu")


def test_stylizer_auto_with_a_mismatched_package_loads_no_torch(demo_bundle: Path, tmp_path: Path) -> None:
    """A package for another machine: one warning, onnxruntime, and torch is never imported (slim rule)."""
    import importlib.util
    import shutil

    if importlib.util.find_spec("torch") is None:  # without torch no package is considered, so nothing to warn
        pytest.skip("needs torch installed (the [aoti] extra)")

    bundle = tmp_path / "b"
    shutil.copytree(demo_bundle, bundle)
    m = load_manifest(bundle)
    sid = m.emotions["happy"]
    _write_package(bundle, sid, torch_version="0.0.1", source_onnx_sha256=m.styles[sid].sha256)
    code = ("import sys, logging, numpy as np; from emostyle_rt import Stylizer; logging.basicConfig(); "
            f"st = Stylizer({str(bundle)!r}); r = st.stylize(np.zeros((64, 64, 3), np.uint8), emotion='happy'); "
            "print(st._style_runner(st.manifest.emotions['happy']).name); print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    # the package is skipped: onnxruntime, or OpenVINO where it is installed (the next engine of auto)
    assert out.stdout.split()[-2].startswith(("onnxruntime:", "openvino:")) and out.stdout.split()[-1] == "False"
    assert out.stderr.count("none was built for this machine") == 1 and "cpu-avx512-torch0.0.1" in out.stderr


def test_load_package_falls_back_to_aoti_load_package(monkeypatch: pytest.MonkeyPatch) -> None:
    """A torch whose C++ loader has another signature: torch._inductor.aoti_load_package, outputs unwrapped."""
    torch = pytest.importorskip("torch")

    def other_signature(*args: Any) -> None:
        raise TypeError("incompatible function arguments")

    monkeypatch.setattr(torch._C._aoti, "AOTIModelPackageLoader", other_signature)
    monkeypatch.setattr(torch._inductor, "aoti_load_package", lambda path: lambda t: [t + 1])
    run = aoti.load_package(torch, "x.pt2")
    assert int(run(torch.zeros(1, dtype=torch.uint8))[0]) == 1
