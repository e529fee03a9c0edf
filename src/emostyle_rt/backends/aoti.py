"""AOTInductor backend: style networks compiled ahead of time by PyTorch (``.pt2`` packages).

Packages live in ``<bundle>/aoti/<device>-<arch>-torch<version>/<style-id>.pt2``
with a JSON sidecar (layout and checks: :mod:`emostyle_rt.bundle.compiled`; built by
``emostyle-export --bundle DIR --aoti``). Each takes and returns uint8 NHWC
like the style's ONNX graph.

The lookup (:func:`find_runner`) reads the sidecars and this machine's identity
without importing torch: the torch version from the installed distribution's
metadata, the CPU's vector ISAs from /proc/cpuinfo, the GPU's compute capability
from the CUDA driver. torch is imported only when a package matches. A package
that crashed its process once must never take the user's process down, so the
first time a package is used on a machine it is loaded and run once in a child
process (:func:`probe`); a marker in the user cache remembers that it passed.
The classifier has no package: at 0.7-0.8 ms per batch in onnxruntime (CPU or
CUDA) there is nothing left to win.

``python -m emostyle_rt.backends.aoti PACKAGE --device cpu --inputs in.npz --outputs out.npz``
is the probe's child: it loads the package, runs it on every array of
``in.npz`` and writes the outputs; export's parity gate uses it too.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from ..cuda import device_identity as cuda_device  # (capability, name) of device 0, cached
from ..bundle.compiled import AOTI_DIR, CLASSIFIER_KEY, AotiHost, AotiSidecar, cpu_isas, find_package
from ..errors import BackendError, InvalidImageError, note
from .base import OutsideProfileError, TensorInfo, cache_dir

log = logging.getLogger(__name__)

#: How this backend's shape range is called in messages (see ``emostyle_rt.backends``).
RANGE = "the AOTInductor package's range"
#: Whether it builds the classifier too (see ``emostyle_rt.backends``).
HAS_CLASSIFIER = False

#: $EMOSTYLE_AOTI_PROBE=0 skips the child-process probe on first use (the build already probed the package).
PROBE_ENV = "EMOSTYLE_AOTI_PROBE"
#: $EMOSTYLE_AOTI_KEEP_FAILED=DIR: a package that fails its probe is copied into DIR with the child's whole output
#: (``<name>.probe.log``), for a closer look; a failed build otherwise removes it.
KEEP_FAILED_ENV = "EMOSTYLE_AOTI_KEEP_FAILED"
PROBE_TIMEOUT_S = 300.0
_PROBED_DIR = "aoti-probed"
#: Packages whose probe failed in this process: package path -> why (not probed again, warned once).
_FAILED: dict[str, str] = {}


# ---------------------------------------------------------------- this machine, without torch


def torch_version() -> str | None:
    """The installed torch distribution's version (e.g. "2.13.0", "2.11.0+cu130"), or None; torch is not imported."""
    try:
        return metadata.version("torch")
    except metadata.PackageNotFoundError:
        return None


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


@functools.lru_cache(maxsize=1)
def host() -> AotiHost:
    """This machine as AOTInductor packages see it (cached for the process)."""
    gpu, flags = cuda_device(), _cpu_flags()
    return AotiHost(torch_version(), cpu_isas(flags), gpu[0] if gpu else None, gpu[1] if gpu else None,
                    frozenset(flags))


# ---------------------------------------------------------------- the probe (a child process)


def probe(package: Path, side: AotiSidecar, inputs: Mapping[str, np.ndarray] | None = None,
          timeout_s: float = PROBE_TIMEOUT_S) -> dict[str, np.ndarray]:
    """Load ``package`` and run it on ``inputs`` (default: one image of the smallest size) in a child process.

    Returns the outputs; :class:`BackendError` saying how the child ended when it
    crashed, hung or failed (the calling process is never at risk). The child
    runs with faulthandler and ``TORCH_SHOW_CPP_STACKTRACES=1`` and says each
    step on stderr, so a crash comes back with the signal's name, the step it
    was at and the Python (and C++) stack, not "no message".
    """
    if inputs is None:
        _, h, w, c = side.profile.min
        inputs = {"probe": np.full((1, h, w, c), 128, np.uint8)}
    with tempfile.TemporaryDirectory(prefix="emostyle-aoti-probe-") as tmp:
        src, dst = Path(tmp) / "in.npz", Path(tmp) / "out.npz"
        np.savez(src, **inputs)
        cmd = probe_command(package, side.device, src, dst)
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False,
                                  env=child_environment())
        except subprocess.TimeoutExpired as exc:
            said = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else (exc.stderr or "")
            raise BackendError(f"AOTInductor package {package} did not finish its probe run in {timeout_s:.0f} s"
                               f"{'; its last words: ' + tail_text(said) if said.strip() else ''}."
                               + note("load + one run", "a hang")) from None
        if done.returncode != 0 or not dst.is_file():
            how = exit_description(done.returncode)
            kept = _keep_failed(package, f"{' '.join(cmd)}\n{how}\n{done.stdout}\n{done.stderr}")
            raise BackendError(f"AOTInductor package {package} failed its probe run in a child process ({how}): "
                               f"{tail_text(done.stderr or done.stdout) or 'no message'}"
                               f"{f' (package and whole output kept in {kept})' if kept else ''}."
                               + note("load + one run that exit 0", how))
        with np.load(dst) as out:
            return {k: out[k] for k in out.files}


def _keep_failed(package: Path, said: str) -> Path | None:
    """Copy a package that failed its probe, and what the child said, into $EMOSTYLE_AOTI_KEEP_FAILED; best effort."""
    where = os.environ.get(KEEP_FAILED_ENV)
    if not where:
        return None
    try:
        folder = Path(where)
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy2(package, folder / package.name)
        (folder / f"{package.name}.probe.log").write_text(said)
        return folder
    except OSError as exc:
        log.warning("Cannot keep the failed package %s in %s: %s", package, where, exc)
        return None


#: Environment of child processes that load packages: C++ stacks in torch's errors, faulthandler on crashes.
CHILD_ENV = {"TORCH_SHOW_CPP_STACKTRACES": "1", "PYTHONFAULTHANDLER": "1"}


def child_interpreter() -> list[str]:
    """This Python with faulthandler on (a fatal signal prints every thread's Python stack to stderr)."""
    return [sys.executable, "-X", "faulthandler"]


def child_environment() -> dict[str, str]:
    """The environment of a probe child: this one plus :data:`CHILD_ENV`."""
    return {**os.environ, **CHILD_ENV}


def exit_description(returncode: int) -> str:
    """How a child ended, for messages: "killed by signal 11 (SIGSEGV)" or "exit status 1"."""
    if returncode < 0:
        try:
            name = f" ({signal.Signals(-returncode).name})"
        except ValueError:
            name = ""
        return f"killed by signal {-returncode}{name}"
    return f"exit status {returncode}"


_CPP_FRAME = re.compile(r"^\s*(#\d+|frame #\d+)")
_KEY_LINE = re.compile(r"Error|error:|Exception|Fatal Python error|Segmentation|Aborted|what\(\)|CUDA|File \"")


def tail_text(text: str, chars: int = 4000) -> str:
    """What a child said, for one message line: the step it was at, the error lines and the Python frames
    (C++ stack frames left out: ``TORCH_SHOW_CPP_STACKTRACES`` prints dozens), then its last lines.
    Joined with " | ", at most ``chars`` characters (the end kept)."""
    lines = [line.rstrip() for line in (text or "").splitlines() if line.strip()]
    steps = [line for line in lines if line.startswith("step: ")]
    said = [line for line in lines if not line.startswith("step: ") and not _CPP_FRAME.match(line)]
    keys = [line for line in said if _KEY_LINE.search(line)][-12:]
    last = [line for line in said[-6:] if line not in keys]
    kept = " | ".join(([f"at {steps[-1]}"] if steps else []) + keys + last)
    return kept if len(kept) <= chars else "..." + kept[-chars:]


def probe_command(package: Path, device: str, inputs: Path, outputs: Path) -> list[str]:
    """The child process' command line (this module's ``__main__``)."""
    return [*child_interpreter(), "-m", __name__, str(package), "--device", device, "--inputs", str(inputs),
            "--outputs", str(outputs)]


def _marker(side: AotiSidecar) -> Path:
    return cache_dir() / _PROBED_DIR / f"{side.package_sha256[:32]}-{side.key}"


def ensure_probed(package: Path, side: AotiSidecar) -> None:
    """Probe ``package`` in a child process unless this machine has passed it before (marker in the user cache)."""
    if os.environ.get(PROBE_ENV) == "0":
        return
    marker = _marker(side)
    if marker.is_file():
        return
    log.info("Probing %s in a child process (first use on this machine).", package)
    probe(package, side)
    mark_probed(package, side)


def mark_probed(package: Path, side: AotiSidecar) -> None:
    """Remember that ``package`` loaded and ran here (export's gate probes it too); best effort."""
    marker = _marker(side)
    try:
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(json.dumps({"package": str(package), "sha256": side.package_sha256}) + "\n")
    except OSError as exc:  # a read-only cache only costs the probe next time
        log.debug("Cannot write probe marker %s: %s", marker, exc)


def load_package(torch: Any, path: str | Path) -> Callable[[Any], Any]:
    """The package's run function (one uint8 NHWC tensor in, one out).

    torch's C++ package loader directly: about 0.01 s, where
    ``torch._inductor.aoti_load_package`` first imports torch._inductor (about
    2 s of cold start on the dev CPU) for the same loader. A torch whose
    loader has another signature gets ``aoti_load_package``.
    """
    try:
        loader = torch._C._aoti.AOTIModelPackageLoader(str(path), "model", False, 1, -1)
    except (AttributeError, TypeError):
        model = torch._inductor.aoti_load_package(str(path))
        return lambda t: _first(model(t))
    return lambda t: loader.boxed_run([t])[0]


def cuda_context(torch: Any, device: Any) -> None:
    """Make the device's primary CUDA context current in this thread before a package is loaded onto it.

    A CUDA package's constants are copied and its kernels loaded into the current
    context; creating it first (as any torch tensor on the device does) keeps a
    load from being the process' first CUDA call.
    """
    torch.zeros(1, device=device)


def _first(y: Any) -> Any:
    return y[0] if isinstance(y, (list, tuple)) else y


def _step(text: str) -> None:
    """Say on stderr what the child does next (the last line before a crash says where it died)."""
    print(f"step: {text}", file=sys.stderr, flush=True)


def _child(argv: Sequence[str] | None = None) -> int:
    import faulthandler

    faulthandler.enable()
    ap = argparse.ArgumentParser(prog=f"python -m {__name__}")
    ap.add_argument("package")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--inputs", required=True)
    ap.add_argument("--outputs", required=True)
    a = ap.parse_args(argv)
    _step("import torch")
    import torch

    if a.device == "cuda":
        _step("create the CUDA context")
        cuda_context(torch, torch.device("cuda"))
    _step(f"load package {a.package}")
    run = load_package(torch, a.package)
    out: dict[str, np.ndarray] = {}
    with np.load(a.inputs) as feed, torch.inference_mode():
        for name in feed.files:
            _step(f"run {name} {list(feed[name].shape)} on {a.device}")
            y = run(torch.from_numpy(feed[name]).to(a.device))
            _step(f"copy {name}'s output to the host")
            out[name] = y.cpu().numpy()
    _step("write outputs")
    np.savez(a.outputs, **out)
    return 0


# ---------------------------------------------------------------- the runner


class AotiRunner:
    """Runner over one AOTInductor package (``name``, ``inputs``, ``outputs``, ``run``, ``close``).

    Inputs outside the package's range (or sides that are not multiples of its
    ``multiple``) raise :class:`OutsideProfileError` before any work
    (``backend="auto"`` then runs them in onnxruntime); a batch larger than the
    range's maximum is split. Runs are serialized: one run already uses every
    CPU core or the whole GPU.
    """

    def __init__(self, package: str | Path, side: AotiSidecar, input_name: str = "image",
                 output_name: str = "styled") -> None:
        try:
            import torch
        except ImportError as exc:
            raise BackendError("AOTInductor packages need torch." + note("pip install 'emostyle-rt[aoti]'", exc)) from exc
        self.package, self.side = Path(package), side
        self.name = f"aoti:{side.key}:{side.precision}"
        self._torch = torch
        self._device = torch.device(side.device)
        self.device = "cpu" if self._device.type == "cpu" else f"{self._device.type}:{self._device.index or 0}"
        try:
            if self._device.type == "cuda":
                cuda_context(torch, self._device)
            self._model: Any = load_package(torch, self.package)
        except Exception as exc:  # torch raises RuntimeError and others for packages it cannot load
            raise BackendError(f"torch cannot load AOTInductor package {self.package}: {exc}") from exc
        self._in, self._out = input_name, output_name
        self._pinned: Any = None  # CUDA: pinned staging buffer of the last input shape
        self._lock = threading.Lock()

    @property
    def inputs(self) -> tuple[TensorInfo, ...]:
        return (TensorInfo(self._in, ("batch", "height", "width", 3), "uint8"),)

    @property
    def outputs(self) -> tuple[TensorInfo, ...]:
        return (TensorInfo(self._out, ("batch", "height", "width", 3), "uint8"),)

    def run(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """uint8 NHWC in, uint8 NHWC out; safe from several threads (runs one at a time)."""
        if self._in not in feed:
            raise BackendError("Missing package input." + note(self._in, sorted(feed)))
        x = np.asarray(feed[self._in])
        if x.dtype != np.uint8 or x.ndim != 4 or x.shape[3] != 3:
            raise InvalidImageError(f"Input {self._in!r} of {self.name} must be uint8 NHWC RGB."
                                    + note("uint8 [N, H, W, 3]", f"{x.dtype} {list(x.shape)}"))
        if not self.side.accepts(x.shape) or x.shape[0] < 1:
            raise OutsideProfileError(
                f"Input shape {list(x.shape)} is outside the range of {self.name} (sides multiples of "
                f"{self.side.multiple}); rebuild the packages with a larger range, or use onnxruntime."
                + note(self.side.profile.describe(), list(x.shape)))
        step = self.side.profile.max[0]
        torch = self._torch
        with self._lock:
            if self._model is None:
                raise BackendError(f"The AOTInductor runner {self.name} is closed." + note("an open runner", "closed"))
            parts = []
            with torch.inference_mode():
                for i in range(0, x.shape[0], step):
                    parts.append(self._model(self._tensor(x[i : i + step])).cpu().numpy())
        return {self._out: parts[0] if len(parts) == 1 else np.concatenate(parts)}

    def _tensor(self, a: np.ndarray) -> Any:
        """The input on the package's device: CPU shares the array's memory (copied only when read-only); CUDA goes
        through a pinned host buffer kept for the last shape, one asynchronous H2D copy (called under the lock)."""
        torch = self._torch
        if self._device.type == "cpu":
            return torch.from_numpy(a if a.flags.writeable and a.flags.c_contiguous else np.array(a, order="C"))
        if self._pinned is None or tuple(self._pinned.shape) != a.shape:
            self._pinned = torch.empty(a.shape, dtype=torch.uint8, pin_memory=True)
        self._pinned.numpy()[...] = a
        return self._pinned.to(self._device, non_blocking=True)

    def close(self) -> None:
        """Drop the loaded package (waits for a running ``run``); idempotent."""
        with self._lock:
            model, self._model, self._pinned = self._model, None, None
        if model is not None and self._device.type == "cuda":
            del model
            self._torch.cuda.empty_cache()


def _locate(manifest: Any, key: str, *, required: bool, device: str | None = None) -> tuple[Path, AotiSidecar] | None:
    """The package (and its sidecar) ``find_runner`` would load, found without importing torch; None (or, when
    ``required``, the ``BackendError`` saying what is missing)."""
    if key == CLASSIFIER_KEY or key not in manifest.styles:
        if required:
            raise BackendError(f"AOTInductor packages exist for style graphs only, not {key!r}."
                               + note("a style id", key))
        return None
    spec = manifest.styles[key]
    here = host()
    devices = ["cuda"] if here.compute_capability else []
    if required or not devices:
        devices.append("cpu")
    if device is not None:
        devices = [device]
    found = find_package(manifest.root, key, here, devices, source_sha256=spec.sha256) if here.torch_version else None
    if found is None:
        if required:
            raise BackendError(
                f"No usable AOTInductor package for {key!r} in bundle {manifest.root}."
                + note(f"aoti/{' or '.join(here.keys(devices[0])) or '<key>'}/{key}.pt2 (emostyle-export --bundle DIR "
                       "--aoti)", f"torch {here.torch_version}, CPU {list(here.cpu_isas)}, GPU "
                                  f"{here.compute_capability or 'none'}; " + (
                                      "see the warnings above" if any(Path(manifest.root).glob(f"{AOTI_DIR}/*/{key}.pt2.json"))
                                      else "the bundle has no package for it")))
        if here.torch_version is None:
            log.debug("No torch here; %s uses onnxruntime.", key)
        return None
    return found


def check(manifest: Any, key: str) -> None:
    """Raise the ``BackendError`` that ``find_runner(required=True)`` would for a missing package, loading nothing
    (``backend="aoti"`` is refused when a Stylizer is made, not at the first image of that style)."""
    _locate(manifest, key, required=True)


def find_runner(manifest: Any, key: str, *, required: bool = False, device: str | None = None) -> AotiRunner | None:
    """The hook ``runner_for`` calls: a runner, or None (or an error when ``required``).

    A CUDA package is looked for when a CUDA GPU answers; a CPU package only
    without one (onnxruntime's GPU providers beat a CPU package) or when
    ``required`` (``backend="aoti"``). ``device`` ("cpu", "cuda") looks for that
    device's package only (benchmarks).
    """
    found = _locate(manifest, key, required=required, device=device)
    if found is None:
        return None
    package, side = found
    spec = manifest.styles[key]
    try:
        if str(package) in _FAILED:
            raise BackendError(_FAILED[str(package)])
        ensure_probed(package, side)
        return AotiRunner(package, side, spec.input_name, spec.output_name)
    except BackendError as exc:
        if required:
            raise
        if str(package) not in _FAILED:
            _FAILED[str(package)] = str(exc)
            log.warning("%s Falling back.", exc)
        return None


if __name__ == "__main__":
    raise SystemExit(_child())
