"""What the GPU paths do at first contact with a GPU machine, checked on the CPU with fakes.

- the CUDA and cuDNN libraries are preloaded from pip's ``nvidia-*`` wheels before the first GPU session
  (onnxruntime-gpu's provider library looks only on the default library path: a process that never imported
  torch got CPU), also when the wheels sit in another site folder than onnxruntime (the GPU machine:
  onnxruntime-gpu on PYTHONPATH over a Python whose site-packages holds PyTorch's wheels);
- an AOTInductor package whose probe child dies says how (the signal's name) and where (faulthandler's
  traceback, the C++ stack), instead of "no message".
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from emostyle_rt.backends import aoti as aotib
from emostyle_rt.backends import ort as ortb
from emostyle_rt.errors import BackendError

CUDA, CPU = "CUDAExecutionProvider", "CPUExecutionProvider"


class _FakeOrt:
    """An onnxruntime-gpu as the preload sees it: a package folder, preload_dlls recording its calls."""

    def __init__(self, site: Path, preload: bool = True) -> None:
        (site / "onnxruntime").mkdir(parents=True, exist_ok=True)
        self.__file__ = str(site / "onnxruntime" / "__init__.py")
        self.__version__ = "1.31.1"
        self.calls: list[dict[str, Any]] = []
        if preload:
            self.preload_dlls = self._preload

    def _preload(self, cuda: bool = True, cudnn: bool = True, msvc: bool = True, directory: str | None = None) -> None:
        print("Failed to load libcufft.so.12: not found")  # what the real one prints for what is missing
        self.calls.append({"directory": directory})


@pytest.fixture()
def fresh_preload(monkeypatch: pytest.MonkeyPatch):
    ortb.preload_cuda_libraries.cache_clear()
    monkeypatch.setattr(ortb, "_torch_imported", lambda: False)
    yield
    ortb.preload_cuda_libraries.cache_clear()


def _nvidia(site: Path, *libs: str) -> None:
    for name in libs:
        (site / "nvidia" / name / "lib").mkdir(parents=True)


def test_wheels_beside_onnxruntime_are_preloaded_once_and_its_notes_stay_off_stdout(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fresh_preload: None, capsys: pytest.CaptureFixture) -> None:
    _nvidia(tmp_path, "cu13", "cudnn")
    fake = _FakeOrt(tmp_path)
    monkeypatch.setattr(ortb, "import_onnxruntime", lambda: fake)
    assert "preload_dlls from" in ortb.preload_cuda_libraries()
    ortb.preload_cuda_libraries()
    assert fake.calls == [{"directory": None}]  # onnxruntime's own search, once per process
    assert capsys.readouterr().out == ""  # an image piped to stdout must not get "Failed to load ..." lines


def test_wheels_in_another_site_folder_are_preloaded_folder_by_folder(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fresh_preload: None) -> None:
    ort_site, torch_site = tmp_path / "ort-site", tmp_path / "torch-site"
    _nvidia(torch_site, "cu13", "cudnn")
    fake = _FakeOrt(ort_site)
    monkeypatch.setattr(ortb, "import_onnxruntime", lambda: fake)
    monkeypatch.setattr(sys, "path", [str(ort_site), str(torch_site)])
    what = ortb.preload_cuda_libraries()
    assert str(torch_site / "nvidia") in what
    want = [str(torch_site / "nvidia" / "cu13" / "lib"), str(torch_site / "nvidia" / "cudnn" / "lib")]
    assert [c["directory"] for c in fake.calls] == want * 2  # two passes: dependencies in any folder order


def test_no_preload_when_torch_is_imported_or_onnxruntime_is_too_old(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fresh_preload: None) -> None:
    fake = _FakeOrt(tmp_path)
    monkeypatch.setattr(ortb, "import_onnxruntime", lambda: fake)
    monkeypatch.setattr(ortb, "_torch_imported", lambda: True)
    assert "torch is imported" in ortb.preload_cuda_libraries() and fake.calls == []
    ortb.preload_cuda_libraries.cache_clear()
    monkeypatch.setattr(ortb, "_torch_imported", lambda: False)
    old = _FakeOrt(tmp_path / "old", preload=False)
    monkeypatch.setattr(ortb, "import_onnxruntime", lambda: old)
    assert "no preload_dlls" in ortb.preload_cuda_libraries()


def test_a_gpu_session_is_created_after_the_preload_a_cpu_session_without_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, demo_bundle: Path) -> None:
    real = ortb.import_onnxruntime()
    events: list[str] = []

    class Session:
        def __init__(self, path: str, sess_options: Any = None, providers: Any = None) -> None:
            first = providers[0][0] if isinstance(providers[0], tuple) else providers[0]
            events.append(f"session {first}")
            self._inner = real.InferenceSession(path, sess_options=sess_options, providers=[CPU])
            self._providers = [first, CPU]

        def get_providers(self) -> list[str]:
            return self._providers

        def __getattr__(self, name: str) -> Any:
            return getattr(self._inner, name)

    fake = SimpleNamespace(**{k: getattr(real, k) for k in ("SessionOptions", "RunOptions", "OrtMemoryInfo",
                                                             "OrtAllocatorType", "OrtMemType", "OrtArenaCfg",
                                                             "create_and_register_allocator", "__version__")},
                           InferenceSession=Session, get_available_providers=lambda: [CUDA, CPU])
    monkeypatch.setattr(ortb, "import_onnxruntime", lambda: fake)
    monkeypatch.setattr(ortb, "cuda_device_count", lambda: 1)
    monkeypatch.setattr(ortb, "preload_cuda_libraries", lambda: events.append("preload") or "done")
    graph = demo_bundle / "classifier.onnx"
    ortb.OrtRunner(graph, provider="cpu")
    assert events == [f"session {CPU}"]
    ortb.OrtRunner(graph, provider="cuda")
    assert events[1:] == ["preload", f"session {CUDA}"]


# ---------------------------------------------------------------- AOTInductor probe children that die


def _side(device: str = "cuda") -> Any:
    from emostyle_rt.bundle.compiled import Profile

    return SimpleNamespace(device=device, profile=Profile("image", (1, 8, 8, 3), (1, 8, 8, 3), (1, 8, 8, 3)))


def test_a_probe_child_killed_by_a_signal_names_it_and_shows_where(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A segfault in the child (what the H200 showed as "no message") comes back with SIGSEGV and a traceback."""
    crash = tmp_path / "crash.py"
    crash.write_text("import faulthandler, os, sys\n"
                     "print('step: load package', file=sys.stderr, flush=True)\n"
                     "assert os.environ.get('TORCH_SHOW_CPP_STACKTRACES') == '1'\n"
                     "assert faulthandler.is_enabled()\n"
                     "faulthandler._sigsegv()\n")
    monkeypatch.setattr(aotib, "probe_command",
                        lambda package, device, src, dst: [*aotib.child_interpreter(), str(crash)])
    package = tmp_path / "build" / "style.pt2"
    package.parent.mkdir()
    package.write_bytes(b"a package")
    monkeypatch.setenv(aotib.KEEP_FAILED_ENV, str(tmp_path / "kept"))
    with pytest.raises(BackendError) as info:
        aotib.probe(package, _side(), {"probe": np.zeros((1, 8, 8, 3), np.uint8)}, timeout_s=60)
    text = str(info.value)
    assert "SIGSEGV" in text and "step: load package" in text and "Fatal Python error" in text
    assert "crash.py" in text  # faulthandler's traceback names the file and line that crashed
    # kept for a closer look (a failed build removes its folder), with everything the child said
    assert (tmp_path / "kept" / "style.pt2").read_bytes() == b"a package" and str(tmp_path / "kept") in text
    assert "Fatal Python error" in (tmp_path / "kept" / "style.pt2.probe.log").read_text()


def test_a_probe_child_that_fails_gives_its_python_traceback(tmp_path: Path) -> None:
    if importlib.util.find_spec("torch") is None:  # the child would stop at "import torch", not at the package
        pytest.skip("needs torch installed (the [aoti] extra)")
    bogus = tmp_path / "style.pt2"
    bogus.write_bytes(b"not a package")
    with pytest.raises(BackendError) as info:
        aotib.probe(bogus, _side("cpu"), {"probe": np.zeros((1, 8, 8, 3), np.uint8)}, timeout_s=120)
    text = str(info.value)
    assert "exit status 1" in text and "load package" in text  # the step it was at
    assert "Error" in text  # the exception's type and message, not only "no message"


# ---------------------------------------------------------------- the driver calls, against a fake libcuda


class _FakeCuda:
    """libcuda.so.1 as ctypes sees it: each call recorded, pointers filled like the driver's."""

    def __init__(self, free: int = 5 << 30, fail: str | None = None) -> None:
        self.calls: list[str] = []
        self.free, self.fail = free, fail

    def __getattr__(self, name: str) -> Any:
        if not name.startswith("cu"):
            raise AttributeError(name)

        def call(*args: Any) -> int:
            self.calls.append(name)
            if name == self.fail:
                return 201  # CUDA_ERROR_INVALID_CONTEXT
            if name == "cuDeviceGetCount":
                args[0]._obj.value = 1
            elif name == "cuDevicePrimaryCtxRetain":
                args[0]._obj.value = 0x1234
            elif name == "cuMemGetInfo_v2":
                args[0]._obj.value, args[1]._obj.value = self.free, 80 << 30
            elif name == "cuDeviceGetAttribute":
                args[0]._obj.value = {75: 9, 76: 0}[args[1]]
            elif name == "cuDeviceGetName":
                args[0].value = b"NVIDIA H100 80GB HBM3"
            return 0

        return call


def test_tiling_reads_free_gpu_memory_in_the_primary_context_and_always_releases_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import ctypes

    from emostyle_rt import tiling

    fake = _FakeCuda()
    monkeypatch.setattr(ctypes, "CDLL", lambda name, *a, **k: fake)
    assert tiling.gpu_free() == 5 << 30
    assert fake.calls == ["cuInit", "cuDeviceGet", "cuDevicePrimaryCtxRetain", "cuCtxPushCurrent_v2",
                          "cuMemGetInfo_v2", "cuCtxPopCurrent_v2", "cuDevicePrimaryCtxRelease_v2"]
    assert tiling.default_budget(gpu=True) == int((5 << 30) * tiling.BUDGET_FRACTION)
    fake = _FakeCuda(fail="cuCtxPushCurrent_v2")
    monkeypatch.setattr(ctypes, "CDLL", lambda name, *a, **k: fake)
    assert tiling.gpu_free() is None and fake.calls[-1] == "cuDevicePrimaryCtxRelease_v2"  # retained, so released
    assert tiling.default_budget(gpu=True) == tiling.GPU_DEFAULT_BUDGET


def test_the_gpu_identity_comes_from_the_driver_without_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    import ctypes

    fake = _FakeCuda()
    monkeypatch.setattr(ctypes, "CDLL", lambda name, *a, **k: fake)
    aotib.cuda_device.cache_clear()
    ortb.cuda_device_count.cache_clear()
    try:
        assert aotib.cuda_device() == ("9.0", "NVIDIA H100 80GB HBM3")
        assert ortb.cuda_device_count() == 1
    finally:
        aotib.cuda_device.cache_clear()
        ortb.cuda_device_count.cache_clear()
