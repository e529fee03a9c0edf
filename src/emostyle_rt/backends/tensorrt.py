"""Native TensorRT backend: the runner over one serialized engine, and its loader.

Engines live in ``<bundle>/trt/<arch-key>/<model-key>.plan`` with a JSON
sidecar; the layout and the checks that decide whether a plan fits this machine
belong to the bundle format (:mod:`emostyle_rt.bundle.compiled`). ``tensorrt`` and
``cuda.bindings`` are imported only when an engine is opened.
"""

from __future__ import annotations

import ctypes
import logging
import threading
import weakref
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ..bundle.compiled import CLASSIFIER_KEY, TRT_DIR, Profile, find_engine, model_key_for
from ..errors import BackendError, InvalidImageError, note
from .base import OutsideProfileError, TensorInfo

log = logging.getLogger(__name__)

#: How this backend's shape range is called in messages (see ``emostyle_rt.backends``).
RANGE = "the TensorRT engine's profiles"
#: Whether it builds the classifier too (see ``emostyle_rt.backends``).
HAS_CLASSIFIER = True


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
        text = cudart.cudaGetErrorString(err)[1]
        text = text.decode(errors="replace") if isinstance(text, bytes) else str(text)
        raise BackendError(f"CUDA call failed: {text} ({err}).")
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


def numpy_dtype(trt: Any, dtype: Any, tensor: str) -> np.dtype:
    """The numpy dtype of a TensorRT tensor type; BackendError for types numpy cannot hold (BF16, FP8, INT4, FP4)."""
    try:
        return np.dtype(trt.nptype(dtype))
    except TypeError as exc:  # trt.nptype raises TypeError for types without a numpy equivalent
        raise BackendError(
            f"TensorRT tensor {tensor!r} has type {dtype}, which numpy cannot hold, so this runner cannot feed or read it."
            + note("uint8, int8, int32, int64, bool, float16 or float32 at the engine's inputs and outputs", dtype)
        ) from exc


class _DeviceState:
    """The execution context, stream and device/pinned buffers of one runner (used under its run lock).

    The engines have dynamic shapes, and TensorRT requires each execution context
    in concurrent use to have its own optimization profile (NvInferRuntime.h,
    IExecutionContext), so there is one context and runs are serialized. Buffers
    grow to the largest input/output seen and are then reused: no allocation per run.
    """

    def __init__(self, engine: Any, plan_name: str) -> None:
        cudart = _cudart()
        self.context = engine.create_execution_context()
        if self.context is None:
            raise BackendError(f"TensorRT could not create an execution context for {plan_name} (out of GPU memory?).")
        self.stream = _check(cudart.cudaStreamCreate())
        self.profile = 0
        self.device: dict[str, int] = {}
        self.host_ptr: dict[str, int] = {}
        self.host: dict[str, np.ndarray] = {}
        self.capacity: dict[str, int] = {}

    def ensure(self, name: str, nbytes: int) -> None:
        """Device and pinned host buffers of at least ``nbytes`` for tensor ``name`` (the stream must be idle)."""
        if self.capacity.get(name, -1) >= nbytes:
            return
        cudart = _cudart()
        self._free_one(name)
        size = max(int(nbytes), 1)
        self.device[name] = _check(cudart.cudaMalloc(size))
        self.host_ptr[name] = _check(cudart.cudaMallocHost(size))
        self.host[name] = np.ctypeslib.as_array(ctypes.cast(self.host_ptr[name], ctypes.POINTER(ctypes.c_uint8)), (size,))
        self.capacity[name] = size

    def _free_one(self, name: str) -> None:
        cudart = _cudart()
        self.capacity.pop(name, None)
        self.host.pop(name, None)
        if (ptr := self.device.pop(name, None)) is not None:
            cudart.cudaFree(ptr)
        if (ptr := self.host_ptr.pop(name, None)) is not None:
            cudart.cudaFreeHost(ptr)

    def synchronize(self) -> bool:
        """Wait for everything queued on the stream; False if CUDA reports an error."""
        cudart = _cudart()
        result = cudart.cudaStreamSynchronize(self.stream)
        err = result[0] if isinstance(result, tuple) else result
        return err == cudart.cudaError_t.cudaSuccess

    def free(self) -> None:
        """Free buffers and the stream (best effort: also called at interpreter exit)."""
        try:
            self.synchronize()
            for name in list(self.device) + list(self.host_ptr):
                self._free_one(name)
            if self.stream is not None:
                _cudart().cudaStreamDestroy(self.stream)
        except Exception as exc:  # noqa: BLE001 - freeing must not raise (finalizers, error paths)
            log.debug("Freeing TensorRT buffers failed: %s", exc)
        self.stream, self.context = None, None


def _free_states(states: list[_DeviceState]) -> None:
    while states:
        states.pop().free()


def _nbytes(shape: Sequence[int], dtype: np.dtype) -> int:
    return int(np.prod(shape, dtype=np.int64)) * dtype.itemsize


class TensorRTRunner:
    """Runner over one serialized engine (``name``, ``inputs``, ``outputs``, ``run``, ``close``).

    A batch larger than the chosen profile's maximum is split into runs of that
    size; an input outside every profile raises :class:`OutsideProfileError`
    before any GPU work (``backend="auto"`` then uses onnxruntime). An error in
    the middle of a run synchronizes the stream and leaves the runner usable.
    """

    name = "tensorrt"
    device = "cuda:0"  # engines run on the CUDA runtime's current device (this package never selects another)

    def __init__(self, plan: str | Path) -> None:
        import tensorrt as trt

        self.plan = Path(plan)
        logger = trt.Logger(trt.Logger.WARNING)
        try:
            runtime = trt.Runtime(logger)
        except TypeError as exc:  # pybind11: "factory function returned nullptr" (no GPU, driver or CUDA runtime)
            raise BackendError(
                f"TensorRT could not create a runtime ({exc})."
                + note("a CUDA driver and GPU that this TensorRT supports", "trt.Runtime() returned nullptr")
            ) from exc
        engine = runtime.deserialize_cuda_engine(self.plan.read_bytes())
        if engine is None:  # TensorRT reports failure this way, not by raising
            raise BackendError(
                f"TensorRT could not deserialize {self.plan} (other TensorRT version or GPU, or a damaged file)."
                + note(f"a plan built by TensorRT {trt.__version__} for this GPU", "see the TensorRT log above")
            )
        self._runtime = runtime  # the engine must not outlive its runtime
        self._setup(trt, engine, f"tensorrt:{self.plan.parent.name}")

    @classmethod
    def from_engine(cls, trt: Any, engine: Any, name: str = "tensorrt:engine") -> "TensorRTRunner":
        """A runner over an engine object that is already deserialized (loader/runner split; tests)."""
        self = cls.__new__(cls)
        self.plan, self._runtime = Path(name.replace(":", "-")), None
        self._setup(trt, engine, name)
        return self

    def _setup(self, trt: Any, engine: Any, name: str) -> None:
        self._engine = engine
        self.name = name
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        self.input_names = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.output_names = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        self.dtypes = {n: numpy_dtype(trt, engine.get_tensor_dtype(n), n) for n in names}
        self._shapes = {n: tuple(int(d) if d >= 0 else None for d in engine.get_tensor_shape(n)) for n in names}
        #: One {input name: Profile} per optimization profile of the engine.
        self.profiles = [{n: self._profile(engine, n, k) for n in self.input_names}
                         for k in range(max(1, int(engine.num_optimization_profiles)))]
        self._states: list[_DeviceState] = []  # at most one; a list so the finalizer can free it
        self._finalizer = weakref.finalize(self, _free_states, self._states)
        self._run_lock = threading.Lock()  # one context: runs are serialized
        self._closed = False

    def _profile(self, engine: Any, name: str, k: int) -> Profile:
        static = tuple(int(d) for d in engine.get_tensor_shape(name))
        if all(d >= 0 for d in static):
            return Profile(name, static, static, static)
        lo, opt, hi = (tuple(int(d) for d in s) for s in engine.get_tensor_profile_shape(name, k))
        return Profile(name, lo, opt, hi)

    @property
    def inputs(self) -> tuple[TensorInfo, ...]:
        return tuple(TensorInfo(n, self._shapes[n], self.dtypes[n].name) for n in self.input_names)

    @property
    def outputs(self) -> tuple[TensorInfo, ...]:
        return tuple(TensorInfo(n, self._shapes[n], self.dtypes[n].name) for n in self.output_names)

    def choose_profile(self, shapes: Mapping[str, Sequence[int]]) -> tuple[int, int]:
        """(profile index, batch per run) for these input shapes: the profile taking them with the largest batch.

        :class:`OutsideProfileError` when no profile takes one item of each input
        (or the batch's last split run would be smaller than the profile's minimum).
        """
        sizes = {int(s[0]) if len(s) else 0 for s in shapes.values()}
        n = sizes.pop() if len(sizes) == 1 else 0
        best: tuple[int, int] | None = None
        for k, prof in enumerate(self.profiles):
            if not all(prof[name].fits_item(s) for name, s in shapes.items()):
                continue
            cap = min(prof[name].max[0] for name in shapes)
            least = max(prof[name].min[0] for name in shapes)
            last = n if n <= cap else (n % cap or cap)  # size of the last run after splitting
            if n >= 1 and last >= least and (best is None or cap > best[1]):
                best = (k, cap)
        if best is None:
            ranges = " or ".join(", ".join(f"{list(p.min)}..{list(p.max)}" for p in prof.values()) for prof in self.profiles)
            got = ", ".join(str(list(s)) for s in shapes.values())
            raise OutsideProfileError(
                f"Input shape {got} is outside every optimization profile of {self.name}; rebuild the engines with "
                "a larger range, or use onnxruntime." + note(ranges, got)
            )
        return best

    def run(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Copy inputs in, execute (split by the profile's max batch), copy outputs out; one run at a time."""
        missing = [n for n in self.input_names if n not in feed]
        if missing:
            raise BackendError("Missing engine inputs." + note(self.input_names, sorted(feed)))
        arrays = {n: np.asarray(feed[n]) for n in self.input_names}
        for n, arr in arrays.items():
            if arr.dtype != self.dtypes[n]:
                raise InvalidImageError(f"Input {n!r} has the wrong dtype." + note(self.dtypes[n], arr.dtype))
        if len({a.shape[:1] for a in arrays.values()}) > 1:
            raise InvalidImageError("Engine inputs disagree on the batch size."
                                    + note("one batch size", {n: a.shape for n, a in arrays.items()}))
        k, per_run = self.choose_profile({n: a.shape for n, a in arrays.items()})
        total = next(iter(arrays.values())).shape[0]
        chunks = [{n: a[i : i + per_run] for n, a in arrays.items()} for i in range(0, total, per_run)]
        with self._run_lock:
            if self._closed:
                raise BackendError(f"The TensorRT runner {self.name} is closed." + note("an open runner", "closed"))
            parts = [self._run_locked(k, c) for c in chunks]
        if len(parts) == 1:
            return parts[0]
        return {n: np.concatenate([p[n] for p in parts]) for n in self.output_names}

    def _state(self) -> _DeviceState:
        if not self._states:
            self._states.append(_DeviceState(self._engine, self.plan.name))
        return self._states[0]

    def _run_locked(self, k: int, arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        cudart = _cudart()
        st = self._state()
        try:
            return self._execute(cudart, st, k, arrays)
        except BaseException:
            # Nothing may stay queued on the stream that uses these buffers; a stream that cannot be
            # synchronized (a sticky CUDA error) is dropped and the next run starts a fresh context.
            if not st.synchronize():
                log.warning("%s: CUDA stream error after a failed run; resetting the runner's context.", self.name)
                self._states.remove(st)
                st.free()
            raise

    def _execute(self, cudart: Any, st: _DeviceState, k: int, arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        h2d, d2h = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        ctx = st.context
        if st.profile != k:
            if not ctx.set_optimization_profile_async(k, int(st.stream)):
                raise BackendError(f"TensorRT refused optimization profile {k} of {self.name}.")
            st.profile = k
        for n, a in arrays.items():
            a = np.ascontiguousarray(a)
            if not ctx.set_input_shape(n, a.shape):
                raise OutsideProfileError(f"TensorRT refused input shape {a.shape} for {n!r}."
                                          + note(f"{list(self.profiles[k][n].min)}..{list(self.profiles[k][n].max)}",
                                                 list(a.shape)))
            st.ensure(n, a.nbytes)
            st.host[n][: a.nbytes] = a.reshape(-1).view(np.uint8)
            if not ctx.set_tensor_address(n, st.device[n]):
                raise BackendError(f"TensorRT refused the buffer of input {n!r}.")
            _check(cudart.cudaMemcpyAsync(st.device[n], st.host_ptr[n], a.nbytes, h2d, st.stream))
        planned: dict[str, tuple[int, ...]] = {}
        for n in self.output_names:
            shape = tuple(int(d) for d in ctx.get_tensor_shape(n))
            if any(d < 0 for d in shape):
                raise BackendError(f"{self.name}: output {n!r} has a data-dependent shape, which this runner does not "
                                   "support." + note("shapes known from the inputs", shape))
            planned[n] = shape
            st.ensure(n, _nbytes(shape, self.dtypes[n]))
            if not ctx.set_tensor_address(n, st.device[n]):
                raise BackendError(f"TensorRT refused the buffer of output {n!r}.")
        if not ctx.execute_async_v3(int(st.stream)):  # stream_handle is a size_t
            raise BackendError(f"TensorRT execution of {self.name} failed (see the TensorRT log).")
        sizes: dict[str, tuple[tuple[int, ...], int]] = {}
        for n in self.output_names:
            shape = tuple(int(d) for d in ctx.get_tensor_shape(n))
            nbytes = _nbytes(shape, self.dtypes[n]) if all(d >= 0 for d in shape) else -1
            if shape != planned[n] or not 0 <= nbytes <= st.capacity[n]:
                raise BackendError(f"{self.name}: output {n!r} came back as {shape}, which does not fit its buffer."
                                   + note(f"{planned[n]}, at most {st.capacity[n]} bytes", f"{shape}, {nbytes} bytes"))
            sizes[n] = (shape, nbytes)
            _check(cudart.cudaMemcpyAsync(st.host_ptr[n], st.device[n], nbytes, d2h, st.stream))
        _check(cudart.cudaStreamSynchronize(st.stream))
        return {n: st.host[n][:nbytes].view(self.dtypes[n]).reshape(shape).copy() for n, (shape, nbytes) in sizes.items()}

    def close(self) -> None:
        """Free the buffers, stream and context (waits for a running ``run``); idempotent."""
        with self._run_lock:
            self._closed = True
            _free_states(self._states)
            self._engine = None
            self._runtime = None


def _missing(manifest: Any, key: str) -> BackendError:
    """The error of a required engine that is not there for this machine."""
    ident = runtime_identity()
    have = "no tensorrt / cuda-python / GPU" if ident is None else f"TensorRT {ident[0]}, sm {ident[1]}"
    return BackendError(
        f"No usable TensorRT engine for {key!r} in bundle {manifest.root}."
        + note(f"a valid {TRT_DIR}/<arch-key>/{model_key_for(key)}.plan for this machine", have)
    )


def check(manifest: Any, key: str) -> None:
    """Raise the ``BackendError`` that ``find_runner(required=True)`` would for a missing engine, loading nothing
    (``backend="tensorrt"`` is refused when a Stylizer is made, not at the first image of a style)."""
    spec = manifest.classifier if key == CLASSIFIER_KEY else manifest.styles[key]
    ident = runtime_identity()
    if spec.fp16 is None or ident is None or find_engine(manifest.root, model_key_for(key), ident[0], ident[1],
                                                         source_sha256=spec.fp16.sha256) is None:
        raise _missing(manifest, key)


def find_runner(manifest: Any, key: str, *, required: bool = False) -> TensorRTRunner | None:
    """The hook ``emostyle_rt.backends.runner_for`` calls: a runner, or None (or an error when ``required``).

    Engines are built from the bundle's FP16 graphs; a graph without one has no engine to use.
    """
    spec = manifest.classifier if key == CLASSIFIER_KEY else manifest.styles[key]
    runner = None
    if spec.fp16 is None:
        log.info("%s has no FP16 graph in the bundle, so no TensorRT engine; it uses onnxruntime.", key)
    else:
        runner = open_engine_runner(manifest.root, model_key_for(key), source_sha256=spec.fp16.sha256,
                                    required=required)
    if runner is None and required:
        raise _missing(manifest, key)
    return runner


def open_engine_runner(
    bundle_root: str | Path, model_key: str, *, source_sha256: str | None = None, required: bool = False
) -> TensorRTRunner | None:
    """A TensorRT runner when a valid engine exists for this GPU and TensorRT, else None (caller uses onnxruntime).

    A failure to open a plan that looked valid is a warning and None, or with
    ``required`` a :class:`BackendError` saying why.
    """
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
    # RuntimeError: pybind-translated TensorRT errors; TypeError/AttributeError: a TensorRT whose Python API differs.
    except (BackendError, OSError, RuntimeError, TypeError, AttributeError) as exc:
        if required:
            raise BackendError(f"TensorRT engine {plan} cannot be opened: {exc}") from exc
        log.warning("%s (%s) Falling back to onnxruntime.", exc, type(exc).__name__)
        return None
