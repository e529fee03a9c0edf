"""Native TensorRT backend: engine lookup, sidecar validation and a Runner.

Engines live in ``<bundle>/trt/<arch-key>/<model-key>.plan`` with a JSON
sidecar ``<model-key>.plan.json`` (written by ``emostyle_export.tensorrt_build``).
The arch key encodes the GPU's compute capability and the exact TensorRT
version (``sm90-trt10.13.3.9``), since a plan runs only where it was built.

Everything here except :class:`TensorRTRunner` and :func:`runtime_identity` is
pure Python, so lookup and validation are tested without a GPU. ``tensorrt``
and ``cuda.bindings`` are imported only when an engine is opened.
"""

from __future__ import annotations

import ctypes
import logging
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ..errors import BackendError, BundleError, InvalidImageError, note
from ..manifest import read_json_object, sha256_file

log = logging.getLogger(__name__)

SIDECAR_FORMAT = 1
TRT_DIR = "trt"
PRECISION = "fp16-strongly-typed"


class OutsideProfileError(BackendError, InvalidImageError):
    """An input shape lies outside the engine's optimization profile."""


def arch_key(trt_version: str, compute_capability: str | tuple[int, int]) -> str:
    """Folder name for one GPU architecture and TensorRT version, e.g. ``sm90-trt10.13.3.9``."""
    cc = compute_capability if isinstance(compute_capability, str) else f"{compute_capability[0]}.{compute_capability[1]}"
    if not re.fullmatch(r"\d+\.\d+", cc) or not re.fullmatch(r"[0-9][0-9A-Za-z.+-]*", trt_version):
        raise BackendError("Bad TensorRT version or compute capability." + note("'10.13.3.9' and '9.0'", (trt_version, cc)))
    return f"sm{cc.replace('.', '')}-trt{trt_version}"


def plan_paths(bundle_root: str | Path, model_key: str, trt_version: str, compute_capability: str) -> tuple[Path, Path]:
    """(plan, sidecar) paths of ``model_key`` (``classifier`` or ``style.<id>``) for this GPU."""
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", model_key) or model_key.startswith("."):
        raise BackendError("Bad engine model key." + note("letters, digits, '_', '.', '-'", model_key))
    folder = Path(bundle_root) / TRT_DIR / arch_key(trt_version, compute_capability)
    return folder / f"{model_key}.plan", folder / f"{model_key}.plan.json"


@dataclass(frozen=True)
class Profile:
    """One optimization profile of one input: min/opt/max shapes."""

    input: str
    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]

    def contains(self, shape: Sequence[int]) -> bool:
        return len(shape) == len(self.min) and all(lo <= s <= hi for lo, s, hi in zip(self.min, shape, self.max))

    def to_json(self) -> dict[str, Any]:
        return {"input": self.input, "min": list(self.min), "opt": list(self.opt), "max": list(self.max)}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "Profile":
        return cls(str(d["input"]), tuple(d["min"]), tuple(d["opt"]), tuple(d["max"]))


def read_sidecar(sidecar: Path) -> dict[str, Any]:
    """The sidecar as a dict; :class:`BundleError` when unreadable."""
    return read_json_object(sidecar, "Engine sidecar")


def sidecar_problems(
    data: Mapping[str, Any],
    plan: Path,
    trt_version: str,
    compute_capability: str,
    *,
    source_sha256: str | None = None,
    check_plan_hash: bool = True,
) -> list[str]:
    """Reasons the plan must not be used here (empty: usable)."""
    problems: list[str] = []
    if data.get("format") != SIDECAR_FORMAT:
        problems.append(f"sidecar format {data.get('format')!r}, expected {SIDECAR_FORMAT}")
    if data.get("tensorrt_version") != trt_version:
        problems.append(f"built with TensorRT {data.get('tensorrt_version')}, running {trt_version}")
    if data.get("compute_capability") != compute_capability:
        problems.append(f"built for compute capability {data.get('compute_capability')} ({data.get('gpu_name')}), "
                        f"this GPU is {compute_capability}")
    if data.get("precision") != PRECISION:
        problems.append(f"precision {data.get('precision')!r}, expected {PRECISION!r}")
    if source_sha256 is not None and data.get("source_onnx_sha256") != source_sha256:
        problems.append("built from a different ONNX file than the bundle holds (stale engine)")
    try:
        profiles = [Profile.from_json(p) for p in data.get("profiles", [])]
    except (KeyError, TypeError):
        profiles = []
    if not profiles:
        problems.append("no valid optimization profiles recorded")
    if not plan.is_file():
        problems.append(f"plan file {plan.name} is missing")
    elif plan.stat().st_size != data.get("plan_bytes"):
        problems.append(f"plan is {plan.stat().st_size} bytes, sidecar says {data.get('plan_bytes')} (truncated?)")
    elif check_plan_hash and sha256_file(plan) != data.get("plan_sha256"):
        problems.append("plan sha256 does not match its sidecar (corrupt or replaced)")
    return problems


def find_engine(
    bundle_root: str | Path,
    model_key: str,
    trt_version: str,
    compute_capability: str,
    *,
    source_sha256: str | None = None,
) -> Path | None:
    """The plan to use for ``model_key`` on this GPU/TensorRT, or None (with a warning saying why)."""
    plan, sidecar = plan_paths(bundle_root, model_key, trt_version, compute_capability)
    if not sidecar.is_file():
        others = sorted(p.parent.name for p in (Path(bundle_root) / TRT_DIR).glob(f"*/{model_key}.plan.json"))
        if others:
            log.warning("No TensorRT engine for %s on %s; falling back to onnxruntime.%s", model_key,
                        arch_key(trt_version, compute_capability),
                        note(arch_key(trt_version, compute_capability), others))
        return None
    try:
        data = read_sidecar(sidecar)
    except BundleError as exc:
        log.warning("%s Falling back to onnxruntime.", exc)
        return None
    problems = sidecar_problems(data, plan, trt_version, compute_capability, source_sha256=source_sha256)
    if problems:
        log.warning("TensorRT engine %s is not usable: %s. Falling back to onnxruntime.", plan, "; ".join(problems))
        return None
    return plan


def trt_ep_options(
    bundle_root: str | Path,
    *,
    fp16: bool = True,
    workspace_mb: int | None = None,
    profile: Profile | None = None,
) -> dict[str, Any]:
    """Provider options for onnxruntime's ``TensorrtExecutionProvider`` with caches inside the bundle.

    The EP keys its cached engines by graph hash and GPU; they go under
    ``<bundle>/trt/ort-ep`` (created here). Pass as
    ``providers=[("TensorrtExecutionProvider", opts), "CUDAExecutionProvider", "CPUExecutionProvider"]``.
    """
    cache = Path(bundle_root) / TRT_DIR / "ort-ep"
    cache.mkdir(parents=True, exist_ok=True)
    opts: dict[str, Any] = {
        "trt_engine_cache_enable": True,
        "trt_engine_cache_path": str(cache),
        "trt_timing_cache_enable": True,
        "trt_timing_cache_path": str(cache),
        "trt_fp16_enable": fp16,
    }
    if workspace_mb is not None:
        opts["trt_max_workspace_size"] = int(workspace_mb) << 20
    if profile is not None:
        def fmt(shape: Sequence[int]) -> str:
            return f"{profile.input}:" + "x".join(str(int(s)) for s in shape)

        opts.update(trt_profile_min_shapes=fmt(profile.min), trt_profile_opt_shapes=fmt(profile.opt),
                    trt_profile_max_shapes=fmt(profile.max))
    return opts


# ---------------------------------------------------------------- GPU part (needs tensorrt + cuda-python)


def _cudart() -> Any:
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
    except ImportError:
        from cuda import cudart  # older cuda-python
    return cudart


def _check(result: Any) -> Any:
    """Unpack a cuda-python call's (err, *values) and raise on error."""
    cudart = _cudart()
    err, *rest = result if isinstance(result, tuple) else (result,)
    if err != cudart.cudaError_t.cudaSuccess:
        raise BackendError(f"CUDA call failed: {cudart.cudaGetErrorString(err)[1]!r}.")
    return rest[0] if len(rest) == 1 else rest


def runtime_identity() -> tuple[str, str, str] | None:
    """(TensorRT version, compute capability 'major.minor', GPU name) or None when unavailable."""
    try:
        import tensorrt as trt

        cudart = _cudart()
        dev = _check(cudart.cudaGetDevice())
        prop = _check(cudart.cudaGetDeviceProperties(dev))
    except (ImportError, OSError, RuntimeError, BackendError) as exc:
        log.debug("TensorRT unavailable: %s", exc)
        return None
    name = prop.name.decode(errors="replace").rstrip("\x00") if isinstance(prop.name, bytes) else str(prop.name)
    return trt.__version__, f"{prop.major}.{prop.minor}", name


class _ThreadState:
    """The engine's execution context, stream and buffers (one per runner; runs hold ``TensorRTRunner._run_lock``).

    The engines have one dynamic-shape optimization profile, and TensorRT requires each execution
    context in concurrent use to have its own profile (NvInferRuntime.h, IExecutionContext), so
    contexts are not created per thread.
    """

    def __init__(self, engine: Any, runner: "TensorRTRunner") -> None:
        cudart = _cudart()
        self.context = engine.create_execution_context()
        if self.context is None:
            raise BackendError(f"TensorRT could not create an execution context for {runner.plan} (out of GPU memory?).")
        self.stream = _check(cudart.cudaStreamCreate())
        self.device: dict[str, int] = {}
        self.host: dict[str, np.ndarray] = {}
        self.host_ptr: dict[str, int] = {}
        for name, nbytes in runner.max_bytes.items():
            self.device[name] = _check(cudart.cudaMalloc(nbytes))
            ptr = _check(cudart.cudaMallocHost(nbytes))
            self.host_ptr[name] = ptr
            self.host[name] = np.ctypeslib.as_array(ctypes.cast(ptr, ctypes.POINTER(ctypes.c_uint8)), (nbytes,))
            self.context.set_tensor_address(name, self.device[name])

    def free(self) -> None:
        cudart = _cudart()
        for p in self.device.values():
            cudart.cudaFree(p)
        for p in self.host_ptr.values():
            cudart.cudaFreeHost(p)
        cudart.cudaStreamDestroy(self.stream)
        self.device, self.host_ptr = {}, {}


class TensorRTRunner:
    """Runner over one serialized engine (``name``, ``inputs``, ``outputs``, ``run``)."""

    name = "tensorrt"

    @property
    def inputs(self) -> tuple[Any, ...]:
        from . import TensorInfo

        return tuple(TensorInfo(n, self._shapes[n], self.dtypes[n].name) for n in self.input_names)

    @property
    def outputs(self) -> tuple[Any, ...]:
        from . import TensorInfo

        return tuple(TensorInfo(n, self._shapes[n], self.dtypes[n].name) for n in self.output_names)

    def __init__(self, plan: str | Path) -> None:
        import tensorrt as trt

        self.plan = Path(plan)
        self._trt = trt
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        engine = self._runtime.deserialize_cuda_engine(self.plan.read_bytes())
        if engine is None:  # TensorRT reports failure this way, not by raising
            raise BackendError(
                f"TensorRT could not deserialize {self.plan} (other TensorRT version or GPU, or a damaged file)."
                + note(f"a plan built by TensorRT {trt.__version__} for this GPU", "see the TensorRT log above")
            )
        self._engine = engine
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        self.input_names = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.output_names = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        self.dtypes = {n: np.dtype(trt.nptype(engine.get_tensor_dtype(n))) for n in names}
        self.profiles = {n: Profile(n, *(tuple(s) for s in engine.get_tensor_profile_shape(n, 0))) for n in self.input_names}
        self.name = f"tensorrt:{self.plan.parent.name}"
        self._shapes = {n: tuple(d if d >= 0 else None for d in engine.get_tensor_shape(n)) for n in names}
        # Output sizes at the profile max: set max input shapes on a scratch context and ask.
        scratch = engine.create_execution_context()
        if scratch is None:
            raise BackendError(f"TensorRT could not create an execution context for {self.plan}.")
        for n in self.input_names:
            if not scratch.set_input_shape(n, self.profiles[n].max):
                raise BackendError(f"TensorRT refused the profile max shape {self.profiles[n].max} for {n!r}.")
        max_shapes = {n: tuple(scratch.get_tensor_shape(n)) for n in names}
        if any(d < 0 for shape in max_shapes.values() for d in shape):
            raise BackendError(f"{self.plan.name} has data-dependent output shapes, which this runner does not support."
                               + note("shapes known from the inputs", max_shapes))
        self.max_bytes = {n: int(np.prod(max_shapes[n])) * self.dtypes[n].itemsize for n in names}
        del scratch
        self._states: list[_ThreadState] = []
        self._lock = threading.Lock()
        self._run_lock = threading.Lock()  # one context, one profile: runs are serialized

    def _state(self) -> _ThreadState:
        """The single shared state (created on first use; call with ``_run_lock`` held)."""
        with self._lock:
            if not self._states:
                self._states.append(_ThreadState(self._engine, self))
            return self._states[0]

    def run(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Copy inputs in, execute on the runner's context and stream (one run at a time), copy outputs out."""
        cudart = _cudart()
        missing = [n for n in self.input_names if n not in feed]
        if missing:
            raise BackendError("Missing engine inputs." + note(self.input_names, sorted(feed)))
        for n in self.input_names:
            arr = feed[n]
            prof = self.profiles[n]
            if arr.dtype != self.dtypes[n]:
                raise InvalidImageError(f"Input {n!r} has the wrong dtype." + note(self.dtypes[n], arr.dtype))
            if not prof.contains(arr.shape):
                raise OutsideProfileError(
                    f"Input {n!r} of shape {tuple(arr.shape)} is outside the TensorRT engine's profile; "
                    "rebuild the engines with a larger range or use onnxruntime."
                    + note(f"{list(prof.min)} .. {list(prof.max)}", list(arr.shape))
                )
        with self._run_lock:
            return self._run_locked(cudart, feed)

    def _run_locked(self, cudart: Any, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        st = self._state()
        H2D, D2H = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        for n in self.input_names:
            arr = np.ascontiguousarray(feed[n])
            if not st.context.set_input_shape(n, arr.shape):
                raise OutsideProfileError(f"TensorRT refused input shape {arr.shape} for {n!r}.")
            st.host[n][: arr.nbytes] = arr.reshape(-1).view(np.uint8)
            _check(cudart.cudaMemcpyAsync(st.device[n], st.host_ptr[n], arr.nbytes, H2D, st.stream))
        if not st.context.execute_async_v3(int(st.stream)):  # stream_handle is a size_t
            raise BackendError(f"TensorRT execution of {self.plan.name} failed (see the TensorRT log).")
        shapes = {n: tuple(st.context.get_tensor_shape(n)) for n in self.output_names}
        for n in self.output_names:
            nbytes = int(np.prod(shapes[n])) * self.dtypes[n].itemsize
            _check(cudart.cudaMemcpyAsync(st.host_ptr[n], st.device[n], nbytes, D2H, st.stream))
        _check(cudart.cudaStreamSynchronize(st.stream))
        return {
            n: st.host[n][: int(np.prod(shapes[n])) * self.dtypes[n].itemsize].view(self.dtypes[n]).reshape(shapes[n]).copy()
            for n in self.output_names
        }

    def close(self) -> None:
        """Free the buffers and stream (waits for a running ``run``)."""
        with self._run_lock, self._lock:
            for st in self._states:
                st.free()
            self._states.clear()


def model_key_for(key: str) -> str:
    """Engine model key of a runtime graph key: ``classifier`` or ``style.<style-id>``."""
    return "classifier" if key == "classifier" else f"style.{key}"


def find_runner(manifest: Any, key: str, *, required: bool = False) -> TensorRTRunner | None:
    """The hook ``emostyle_rt.backends.runner_for`` calls: a runner, or None (or an error when ``required``)."""
    raw = manifest.raw.get("classifier" if key == "classifier" else "styles", {})
    entry = raw if key == "classifier" else raw.get(key, {})
    fp16 = entry.get("fp16", {}) if isinstance(entry, Mapping) else {}
    sha = fp16.get("sha256") if isinstance(fp16, Mapping) else None
    runner = open_engine_runner(manifest.root, model_key_for(key), source_sha256=sha)
    if runner is None and required:
        ident = runtime_identity()
        have = "no tensorrt / cuda-python / GPU" if ident is None else f"TensorRT {ident[0]}, sm {ident[1]}"
        raise BackendError(
            f"No usable TensorRT engine for {key!r} in bundle {manifest.root}."
            + note(f"a valid {TRT_DIR}/<arch-key>/{model_key_for(key)}.plan for this machine", have)
        )
    return runner


def open_engine_runner(
    bundle_root: str | Path, model_key: str, *, source_sha256: str | None = None
) -> TensorRTRunner | None:
    """A TensorRT runner when a valid engine exists for this GPU and TensorRT, else None (caller uses onnxruntime)."""
    ident = runtime_identity()
    if ident is None:
        log.info("No TensorRT (tensorrt, cuda-python, GPU) here; %s uses onnxruntime.", model_key)
        return None
    version, cc, _gpu = ident
    plan = find_engine(bundle_root, model_key, version, cc, source_sha256=source_sha256)
    if plan is None:
        return None
    try:
        return TensorRTRunner(plan)
    except (BackendError, OSError, RuntimeError) as exc:  # RuntimeError: pybind-translated TensorRT errors
        log.warning("%s Falling back to onnxruntime.", exc)
        return None
