"""The onnxruntime runner: provider choice, quiet CPU fallback, memory per provider, transfers.

Providers are tried in the order TensorRT EP -> CUDA EP -> CPU. The GPU ones are
asked for only when the installed onnxruntime offers them *and* a CUDA driver
with a device answers; the TensorRT EP also needs the libnvinfer major version
its onnxruntime build links to (read from the provider library, see
:func:`ort_tensorrt_major`). Otherwise onnxruntime-gpu on a GPU-less machine would
print an error block and fall back by itself.

Memory, per provider:

- CPU: every session allocates from one CPU arena shared by the process
  (``create_and_register_allocator`` once + ``session.use_env_allocators``), so
  seven style sessions do not keep seven arenas, and nothing is freed and
  re-allocated per run. Measured on the 2-core dev CPU, 7 style sessions of the
  demo bundle (figures in :data:`CPU_MEMORY_MODES`' comment).
- CUDA / TensorRT EP: onnxruntime's default device arena, never shrunk per run
  (shrinking "gpu:0" after each run made a 1080p style run 72 ms instead of
  18.6 ms on an H200), no ``malloc_trim``. One H2D and one D2H copy of uint8 per
  run through IO binding; CUDA graphs per input shape as an opt-in.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import io
import logging
import os
import re
import sys
import threading
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from ..cuda import device_count as cuda_device_count  # the process' one libcuda probe (kept under this name)
from ..errors import BackendError, note
from .base import GraphLoader, TensorInfo

log = logging.getLogger(__name__)

#: Short provider names the user can force, and onnxruntime's names for them.
PROVIDERS = {
    "tensorrt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "cpu": "CPUExecutionProvider",
}
#: The device kind each provider runs on (onnxruntime's names): the one provider -> device map.
PROVIDER_DEVICES = {
    "TensorrtExecutionProvider": "cuda",
    "CUDAExecutionProvider": "cuda",
    "CPUExecutionProvider": "cpu",
}
_GPU = tuple(short for short, full in PROVIDERS.items() if PROVIDER_DEVICES[full] != "cpu")
_GPU_FULL = tuple(PROVIDERS[short] for short in _GPU)
_ORT_DTYPES = {"tensor(uint8)": "uint8", "tensor(float)": "float32", "tensor(float16)": "float16", "tensor(int64)": "int64"}

#: CPU memory strategies ($EMOSTYLE_CPU_MEMORY; default "shared"). Measured with
#: studies/peak_rss/peak_rss.py and two interleaved A/B scripts on the 2-core dev CPU
#: (demo bundle, 7 style sessions, 1280x720 photos cycling through the emotions),
#: while three other jobs loaded the same two cores (single runs varied +-45-160%,
#: so only medians of interleaved runs are compared):
#:
#: - "shared": one arena for the process (FIELD-NOTES: 36.3 s / 1.15 GB for 14
#:   runs). 50 photos: peak RSS 1254 MB. One style graph at 720p, 16 interleaved
#:   pairs against "session": median 2.02 s vs 2.18 s wall (ratio 0.93), 2.10 s
#:   vs 2.19 s CPU time (0.96). Five ABBA pairs of fresh processes, 14 photos:
#:   median per photo 2.29 s vs 2.70 s, peak RSS 1250 MB vs 7336 MB. Against
#:   "shrink" at 512x512, 20 interleaved pairs: 570 ms vs 659 ms wall (0.87),
#:   CPU time 0.85.
#: - "session": onnxruntime's default arena per session: 7.3 GB over 7 styles.
#: - "shrink" (emostyle-rt 0.1.0): per-session arena shrunk after every run plus
#:   glibc malloc_trim: ~1.0 GB, but it frees and re-allocates every run (13-15%
#:   slower here, 22% at 1080p on 16 CPU cores, 3.9x on an H200's CUDA arena).
CPU_MEMORY_MODES = ("shared", "shrink", "session")
CPU_MEMORY_ENV = "EMOSTYLE_CPU_MEMORY"
#: With the shared arena, at most this many CPU runs execute at once in the process
#: ($EMOSTYLE_CPU_CONCURRENCY). The arena keeps the high-water mark of concurrent
#: demand: 8 threads running freely grew it by 131-184 MB over the heavy soak's
#: 25 rounds (tests/hardening/test_soak.py; malloc_trim did not help: 174 MB);
#: with 2 slots it grew 29 MB (RSS ~400 MB), with 1 slot 4 MB. Each run already
#: uses every core (intra-op threads), so 2 at a time loses no throughput.
DEFAULT_CPU_CONCURRENCY = 2
CPU_CONCURRENCY_ENV = "EMOSTYLE_CPU_CONCURRENCY"
#: Intra-op threads of each session ($EMOSTYLE_CPU_THREADS; unset or 0: onnxruntime's default, one per
#: physical core). Processes that share the cores set a share each: emostyle_ray's CPU actors set 1.
CPU_THREADS_ENV = "EMOSTYLE_CPU_THREADS"
#: Whether the intra-op (and inter-op) threads of the small graphs' sessions (MTCNN's three, the classifier:
#: ``OrtRunner(small=True)``) spin while they wait for work (onnxruntime's ``session.intra_op.allow_spinning``,
#: default on). Off: a face detection is a dozen runs of a few ms each, and the spinning threads of four such
#: sessions compete for the cores with the style run that follows. 2-core dev CPU, shared (load 3-4), default
#: backend, 10 interleaved rounds, spinning / not spinning: detection 1.60x / 0.99x / 1.16x the time at 512 / 720p /
#: 1080p, the whole chain 1.19x / 0.97x / 1.07x (another run, 4 rounds at load 5-6: 1.18x / 1.00x / 0.92x). Same
#: outputs. Style graphs keep spinning: one long run, whose own threads wait between its nodes.
SMALL_GRAPH_SPINNING = False
#: With the shared arena, a run with more input pixels than this shrinks the arena
#: afterwards, so one huge photo does not pin gigabytes for the process' life.
SHRINK_ABOVE_PIXELS = 1 << 23  # 8.4 Mpx, e.g. 3840x2160; a 1080p run keeps its memory
#: Most distinct input shapes one runner keeps CUDA graphs for (each holds its buffers).
MAX_CUDA_GRAPHS = 4
#: Options for the CUDA EP of every session, in onnxruntime's names (e.g. "gpu_mem_limit",
#: "prefer_nhwc", "cudnn_conv_algo_search"); empty: onnxruntime's defaults. Per-call
#: ``provider_options`` override these.
CUDA_OPTIONS: dict[str, str] = {}


def provider_device(provider: str, device_id: int = 0) -> str:
    """The device an onnxruntime provider runs on: "cuda:N" (CUDA and TensorRT EPs) or "cpu".

    Args:
        provider: A provider's full name ("CUDAExecutionProvider") or short name ("cuda").
        device_id: The provider's ``device_id`` option (GPU providers only).

    Raises:
        BackendError: ``provider`` is none of :data:`PROVIDERS`.
    """
    full = PROVIDERS.get(provider, provider)
    kind = PROVIDER_DEVICES.get(full)
    if kind is None:
        raise BackendError(f"Unknown onnxruntime provider {provider!r}."
                           + note(" or ".join([*PROVIDERS, *PROVIDER_DEVICES]), provider))
    return "cpu" if kind == "cpu" else f"{kind}:{int(device_id)}"


class OutOfMemoryError(BackendError, MemoryError):
    """A run needed more (device) memory than there is; smaller inputs still run."""


_OOM = re.compile(r"Failed to allocate memory|out of memory|Available memory of \d+ is smaller than requested|"
                  r"cudaErrorMemoryAllocation|CUBLAS_STATUS_ALLOC_FAILED|CUDNN_STATUS_ALLOC_FAILED|bad_alloc|"
                  r"bad allocation", re.IGNORECASE)


#: onnxruntime (1.32 seen) writes a device id and an event store to ~/.cache/Microsoft/DeveloperTools/.onnxruntime
#: when it is imported, for its telemetry; the runtime writes nothing but what its caller asked for, so it is off
#: unless the environment says otherwise (as the --ray job does with Ray's usage statistics).
TELEMETRY_ENV = "ORT_DISABLE_TELEMETRY"


def telemetry_off() -> None:
    """Turn onnxruntime's telemetry off (unless $ORT_DISABLE_TELEMETRY says otherwise) for this process and the
    processes it starts: read when onnxruntime is first imported, by us or by a library (onnxconverter-common's
    mixed-precision tools import it themselves), so the command-line tools call this first."""
    os.environ.setdefault(TELEMETRY_ENV, "1")


def import_onnxruntime() -> Any:
    """The onnxruntime module (its telemetry off unless $ORT_DISABLE_TELEMETRY is set), or a typed error saying
    which extra installs it."""
    telemetry_off()
    try:
        import onnxruntime
    except ImportError as exc:
        raise BackendError(
            f"onnxruntime is not installed ({exc})."
            + note("pip install 'emostyle-rt[cpu]' (or '[gpu]' on an NVIDIA machine)", "no onnxruntime module")
        ) from exc
    return onnxruntime


def _load_library(names: list[str | None]) -> ctypes.CDLL | None:
    """The first of ``names`` that loads, or None."""
    for name in filter(None, names):
        try:
            return ctypes.CDLL(name)
        except OSError:
            continue
    return None


@functools.lru_cache(maxsize=1)
def ort_tensorrt_major() -> int | None:
    """The libnvinfer major version the installed onnxruntime's TensorRT EP was built for, or None.

    Read from the EP's provider library (``libonnxruntime_providers_tensorrt.so``
    names ``libnvinfer.so.<major>`` as a dependency; ``nvinfer_<major>.dll`` on
    Windows): onnxruntime-gpu 1.31 gives 10. Derived, not tabled, so a later
    onnxruntime built for TensorRT 11 is gated on 11 without a code change.
    """
    try:
        capi = Path(import_onnxruntime().__file__).parent / "capi"
        libs = [p for p in capi.glob("*onnxruntime_providers_tensorrt*") if p.is_file()]
        majors = {int(m) for p in libs for m in re.findall(rb"(?:libnvinfer\.so\.|nvinfer_)(\d+)", p.read_bytes())}
    except (OSError, BackendError) as exc:
        log.debug("Cannot read onnxruntime's TensorRT provider library: %s", exc)
        return None
    return majors.pop() if len(majors) == 1 else None


def _nvinfer_names(major: int) -> list[str]:
    return [f"nvinfer_{major}.dll"] if sys.platform == "win32" else [f"libnvinfer.so.{major}"]


@functools.lru_cache(maxsize=1)
def tensorrt_libraries() -> bool:
    """Whether libnvinfer of the major version onnxruntime's TensorRT EP was built for loads here.

    TensorRT 11 next to an onnxruntime built for 10 does not count: the EP would
    fail to load it (and print an error block) at session creation.
    """
    major = ort_tensorrt_major()
    if major is None:
        log.info("Not using TensorrtExecutionProvider: cannot tell which TensorRT this onnxruntime was built for.")
        return False
    if _load_library(_nvinfer_names(major)) is None:
        log.info("Not using TensorrtExecutionProvider: it needs libnvinfer %d, which does not load here.", major)
        return False
    return True


@functools.lru_cache(maxsize=1)
def tensorrt_library_version() -> str | None:
    """"major.minor.patch" of the libnvinfer the TensorRT EP uses (``getInferLibVersion``), or None."""
    major = ort_tensorrt_major()
    lib = _load_library(_nvinfer_names(major)) if major is not None else None
    if lib is None:
        return None
    try:
        fn = lib.getInferLibVersion
    except AttributeError:
        return None
    fn.restype = ctypes.c_int32
    v = int(fn())
    # NV_TENSORRT_VERSION: major*10000 + minor*100 + patch from TensorRT 10 on, major*1000 + minor*100 + patch before.
    base = 10000 if v >= 100000 else 1000
    return f"{v // base}.{v % base // 100}.{v % 100}"


def _torch_imported() -> bool:
    return "torch" in sys.modules


def _site_with_nvidia_wheels(ort: Any) -> tuple[Path | None, bool]:
    """(site folder holding pip's ``nvidia/`` CUDA wheels, whether it is onnxruntime's own) or (None, False)."""
    own = Path(ort.__file__).resolve().parent.parent
    if (own / "nvidia").is_dir():
        return own, True
    for entry in sys.path:
        site = Path(entry or ".").resolve()
        if site != own and (site / "nvidia").is_dir():
            return site, False
    return None, False


@functools.lru_cache(maxsize=1)
def preload_cuda_libraries() -> str:
    """Load the CUDA and cuDNN libraries of the GPU providers once, before the first GPU session; what was done.

    onnxruntime-gpu's provider library (``libonnxruntime_providers_cuda.so``)
    finds libcublas, libcudart and cuDNN on the default library path only. pip
    puts them in ``nvidia-*`` wheels (``onnxruntime-gpu[cuda,cudnn]``, or
    PyTorch's) under a site folder, so without this a process that never
    imported torch got an error block from onnxruntime and ran on the CPU.
    ``onnxruntime.preload_dlls`` (1.21+) loads them from the wheels beside
    onnxruntime; when they sit in another folder of ``sys.path`` (onnxruntime-gpu
    on PYTHONPATH over a Python whose site-packages has PyTorch's wheels), each
    of its ``nvidia/*/lib`` folders is given to it in turn. Nothing is done
    when torch is imported (it loaded its own). Its printed notes go to the log
    (DEBUG), not to stdout.
    """
    if _torch_imported():
        what = "torch is imported (its CUDA libraries are loaded)"
    else:
        ort = import_onnxruntime()
        preload = getattr(ort, "preload_dlls", None)
        if preload is None:
            return f"onnxruntime {getattr(ort, '__version__', '?')} has no preload_dlls: the default library path"
        site, own = _site_with_nvidia_wheels(ort)
        printed = io.StringIO()
        try:
            with contextlib.redirect_stdout(printed):
                if site is None or own:
                    preload()
                else:
                    folders = sorted(str(d) for d in (site / "nvidia").glob("*/lib") if d.is_dir())
                    for _ in range(2):  # twice: a library whose dependency sorts after it loads on the second pass
                        for folder in folders:
                            preload(directory=folder)
        except Exception as exc:  # noqa: BLE001 - a failed preload leaves onnxruntime's own search
            log.warning("Could not preload the CUDA libraries for onnxruntime (%s); it searches the default library "
                        "path.", exc)
            return f"preload failed: {exc}"
        if printed.getvalue().strip():
            log.debug("onnxruntime.preload_dlls said: %s", printed.getvalue().strip())
        what = (f"onnxruntime.preload_dlls from {site / 'nvidia'}" if site is not None
                else "onnxruntime.preload_dlls from the default library path")
    log.info("CUDA libraries for onnxruntime: %s.", what)
    return what


def trt_ep_options(
    cache: Path,
    *,
    graph_sha256: str,
    workspace_mb: int | None = None,
    profile: Any = None,
) -> dict[str, Any]:
    """Provider options for onnxruntime's ``TensorrtExecutionProvider``: caches in the user cache folder.

    Engines and the timing cache go to ``<cache>/ort-trt-ep/ort<version>-trt<version>/``:
    an engine only loads in the onnxruntime and TensorRT it was built with, so
    each pair gets its own folder. Engine files are prefixed with the graph's
    sha256 (the EP's own cache key uses the model's file name, which two bundles
    can share). Give it the FP16 graph for FP16: ``trt_fp16_enable`` stays off,
    since it would let TensorRT run the FP16 graph's fp32 islands (InstanceNorm
    statistics) in fp16, which export measured as breaking them. Created here.
    """
    ort = import_onnxruntime()
    folder = Path(cache) / "ort-trt-ep" / f"ort{ort.__version__}-trt{tensorrt_library_version() or 'unknown'}"
    folder.mkdir(parents=True, exist_ok=True)
    opts: dict[str, Any] = {
        "trt_engine_cache_enable": True,
        "trt_engine_cache_path": str(folder),
        "trt_engine_cache_prefix": f"g{graph_sha256[:16]}",
        "trt_timing_cache_enable": True,
        "trt_timing_cache_path": str(folder),
        "trt_fp16_enable": False,
    }
    if workspace_mb is not None:
        opts["trt_max_workspace_size"] = int(workspace_mb) << 20
    if profile is not None:
        def fmt(shape: Any) -> str:
            return f"{profile.input}:" + "x".join(str(int(s)) for s in shape)

        opts.update(trt_profile_min_shapes=fmt(profile.min), trt_profile_opt_shapes=fmt(profile.opt),
                    trt_profile_max_shapes=fmt(profile.max))
    return opts


def choose_providers(provider: str | None = None) -> list[str]:
    """onnxruntime providers to ask for, best first; ``provider`` forces one (CPU as fallback)."""
    if provider is None:
        return list(_auto_providers())
    ort = import_onnxruntime()

    if provider not in PROVIDERS:
        raise BackendError(f"Unknown onnxruntime provider {provider!r}." + note(" or ".join(PROVIDERS), provider))
    full = PROVIDERS[provider]
    available = ort.get_available_providers()
    if full not in available:
        raise BackendError(f"The installed onnxruntime has no {full}." + note(full, available))
    if provider in _GPU and cuda_device_count() == 0:
        raise BackendError(f"{full} was asked for but no CUDA GPU answers." + note("a CUDA device", "none"))
    if provider == "tensorrt" and not tensorrt_libraries():
        raise BackendError(
            f"{full} was asked for but the TensorRT it was built for does not load here."
            + note(f"libnvinfer {ort_tensorrt_major() or '?'}", "none (see the log at INFO)")
        )
    return [full] if provider == "cpu" else [full, PROVIDERS["cpu"]]


def changing_shapes_provider(provider: str | None) -> str:
    """The provider of graphs whose input shapes change from run to run: "cuda" or "cpu", never "tensorrt".

    MTCNN's P-Net (a shape per pyramid level and image size) and the tiled
    executor's statistics graph, free windows and exact-mode segments: the
    TensorRT EP would build an engine for every new shape, so they run on the
    CUDA EP where the other graphs would use a GPU, else on the CPU.

    Args:
        provider: The caller's forced provider ("tensorrt", "cuda", "cpu") or
            None (the best usable one). "cuda" and "cpu" are kept as given.
    """
    if provider not in (None, "tensorrt"):
        return provider  # type: ignore[return-value]
    return "cuda" if PROVIDERS["cuda"] in choose_providers(None) else "cpu"


def tensorrt_ep_refusal() -> BackendError | None:
    """Why the TensorRT EP cannot be forced here (the error ``choose_providers("tensorrt")`` raises), or None."""
    try:
        choose_providers("tensorrt")
    except BackendError as exc:
        return exc
    return None


@functools.lru_cache(maxsize=1)
def _auto_providers() -> tuple[str, ...]:
    """The best usable providers, decided (and logged) once per process."""
    ort = import_onnxruntime()

    available = set(ort.get_available_providers())
    chosen = []
    for short in _GPU:
        full = PROVIDERS[short]
        if full not in available:
            log.info("Not using %s: this onnxruntime build does not have it.", full)
        elif cuda_device_count() == 0:
            log.info("Not using %s: no CUDA GPU answers.", full)
        elif short == "tensorrt" and not tensorrt_libraries():
            pass  # tensorrt_libraries() logged why
        else:
            chosen.append(full)
    chosen.append(PROVIDERS["cpu"])
    log.info("onnxruntime providers: %s.", ", ".join(chosen))
    return tuple(chosen)


def cpu_memory_mode() -> str:
    """The CPU memory strategy: $EMOSTYLE_CPU_MEMORY or "shared"."""
    mode = os.environ.get(CPU_MEMORY_ENV) or "shared"
    if mode not in CPU_MEMORY_MODES:
        raise BackendError(f"Unknown {CPU_MEMORY_ENV}={mode!r}." + note(" or ".join(CPU_MEMORY_MODES), mode))
    return mode


_cpu_slots_lock = threading.Lock()
_cpu_slots: threading.BoundedSemaphore | None = None


def cpu_threads() -> int:
    """Intra-op threads for sessions that were given none: $EMOSTYLE_CPU_THREADS, else 0 (onnxruntime's default)."""
    text = os.environ.get(CPU_THREADS_ENV) or "0"
    if not text.isdigit():
        raise BackendError(f"Bad {CPU_THREADS_ENV}={text!r}." + note("an integer >= 0 (0: one per core)", text))
    return int(text)


def cpu_slots() -> threading.BoundedSemaphore:
    """The process' CPU run slots (created on first use from $EMOSTYLE_CPU_CONCURRENCY)."""
    global _cpu_slots
    with _cpu_slots_lock:
        if _cpu_slots is None:
            text = os.environ.get(CPU_CONCURRENCY_ENV) or str(DEFAULT_CPU_CONCURRENCY)
            if not text.isdigit() or int(text) < 1:
                raise BackendError(f"Bad {CPU_CONCURRENCY_ENV}={text!r}." + note("an integer >= 1", text))
            _cpu_slots = threading.BoundedSemaphore(int(text))
        return _cpu_slots


_shared_arena_lock = threading.Lock()
_shared_arena: bool | None = None  # None: not tried yet


def shared_cpu_arena() -> bool:
    """Register the process' shared CPU arena once; False (with a warning) if onnxruntime refuses it."""
    global _shared_arena
    with _shared_arena_lock:
        if _shared_arena is None:
            ort = import_onnxruntime()
            try:
                info = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
                # max_mem 0 (no cap), default extend strategy, chunk size and dead bytes.
                ort.create_and_register_allocator(info, ort.OrtArenaCfg(0, -1, -1, -1))
                _shared_arena = True
            except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own untyped errors
                if "already" in str(exc).lower():  # registered by someone else in this process: share it too
                    _shared_arena = True
                else:
                    log.warning("No shared CPU arena (%s); shrinking per-session arenas after each run instead.", exc)
                    _shared_arena = False
        return _shared_arena


@functools.lru_cache(maxsize=1)
def _malloc_trim() -> ctypes._CFuncPtr | None:
    """glibc's ``malloc_trim`` if this process uses glibc; None elsewhere."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):  # musl and others have no malloc_trim
        return None


def release_free_memory() -> None:
    """Give freed heap pages back to the OS (glibc only; a no-op elsewhere). Used by the "shrink" CPU strategy only."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def _info(args) -> tuple[TensorInfo, ...]:
    return tuple(TensorInfo(a.name, tuple(a.shape), _ORT_DTYPES.get(a.type, a.type)) for a in args)


def _shrink_options(ort: Any, arenas: str) -> Any:
    ro = ort.RunOptions()
    ro.add_run_config_entry("memory.enable_memory_arena_shrinkage", arenas)
    return ro


class _CudaGraphs:
    """CUDA-graph replays of one graph, one per input shape (opt-in: video, where the shape repeats).

    onnxruntime captures a graph on the first runs of a ``gpu_graph_id`` and then
    replays it; shapes and buffer addresses must stay fixed per id, every node
    must run on the CUDA EP, and a session may not run from two threads at once
    (onnxruntime's CUDA EP docs). So: its own session, one device input/output
    buffer and IO binding per shape (at most ``MAX_CUDA_GRAPHS``; later shapes run
    the normal path), runs under a lock; each call copies the uint8 input into
    the bound buffer (``update_inplace``) and the output back
    (``copy_outputs_to_cpu``). Not measured here (no GPU); the GPU tests compare
    it bit for bit with the normal path.
    """

    def __init__(self, make_session: Any, device_id: int) -> None:
        self._make_session = make_session
        self._device_id = device_id
        self._session: Any = None
        self._entries: dict[tuple, tuple[Any, Any, dict[str, Any], Any]] = {}
        self._lock = threading.Lock()
        self.disabled = False

    @staticmethod
    def key(feed: Mapping[str, np.ndarray]) -> tuple:
        return tuple((n, a.shape, a.dtype.str) for n, a in sorted(feed.items()))

    def run(self, feed: Mapping[str, np.ndarray]) -> list[np.ndarray] | None:
        """Outputs from the graph captured for this shape; None when there is none (yet)."""
        entry = self._entries.get(self.key(feed))
        if entry is None:
            return None
        with self._lock:
            _session, binding, inputs, run_options = entry
            for name, value in inputs.items():
                value.update_inplace(np.ascontiguousarray(feed[name]))
            _session.run_with_iobinding(binding, run_options)
            return list(binding.copy_outputs_to_cpu())

    def add(self, feed: Mapping[str, np.ndarray], outputs: Mapping[str, np.ndarray]) -> None:
        """Prepare a graph for this shape (buffers shaped like ``outputs`` of a normal run); captured on its first run."""
        ort = import_onnxruntime()
        with self._lock:
            key = self.key(feed)
            if self.disabled or key in self._entries or len(self._entries) >= MAX_CUDA_GRAPHS:
                return
            try:
                if self._session is None:
                    self._session = self._make_session()
                binding = self._session.io_binding()
                inputs = {n: ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(a), "cuda", self._device_id)
                          for n, a in feed.items()}
                for n, v in inputs.items():
                    binding.bind_ortvalue_input(n, v)
                for n, a in outputs.items():
                    binding.bind_ortvalue_output(
                        n, ort.OrtValue.ortvalue_from_shape_and_type(a.shape, a.dtype, "cuda", self._device_id))
                run_options = ort.RunOptions()
                run_options.add_run_config_entry("gpu_graph_id", str(len(self._entries) + 1))
            except Exception as exc:  # noqa: BLE001 - e.g. a node the CUDA EP cannot run: no graphs for this runner
                log.warning("CUDA graphs are not usable for this graph (%s); running without them.", exc)
                self.disabled = True
                return
            self._entries[key] = (self._session, binding, inputs, run_options)


class OrtRunner:
    """One onnxruntime ``InferenceSession`` behind the ``Runner`` interface.

    CPU: plain ``session.run`` on the process' shared CPU arena (see the module
    docstring). CUDA / TensorRT EP: IO binding, the input bound from host memory
    (one H2D copy of uint8), the output bound to the device and copied back once
    (one D2H copy of uint8); with ``cuda_graph``, repeated shapes replay a
    captured CUDA graph (:class:`_CudaGraphs`). ``small``: a graph of a few ms per run (MTCNN's, the
    classifier): its threads do not spin between runs (:data:`SMALL_GRAPH_SPINNING`).
    """

    def __init__(
        self,
        onnx_path: str | os.PathLike,
        *,
        provider: str | None = None,
        intra_op_threads: int = 0,
        provider_options: dict[str, dict] | None = None,
        precision: str = "fp32",
        cpu_fallback_path: str | os.PathLike | None = None,
        cuda_graph: bool = False,
        small: bool = False,
    ) -> None:
        ort = import_onnxruntime()

        path = Path(onnx_path)
        providers = choose_providers(provider)
        memory = cpu_memory_mode()
        if memory == "shared" and not shared_cpu_arena():
            memory = "shrink"
        opts = ort.SessionOptions()
        opts.log_severity_level = 3  # errors only: no per-node placement warnings
        opts.intra_op_num_threads = intra_op_threads or cpu_threads()
        if memory == "shared":
            opts.add_session_config_entry("session.use_env_allocators", "1")
        if small and not SMALL_GRAPH_SPINNING:  # the CPU thread pools only (a GPU session's kernels do not spin)
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
            opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
        provider_options = dict(provider_options or {})
        if CUDA_OPTIONS and PROVIDERS["cuda"] in providers:
            provider_options[PROVIDERS["cuda"]] = {**CUDA_OPTIONS, **provider_options.get(PROVIDERS["cuda"], {})}
        with_options = [(p, provider_options[p]) if p in provider_options else p for p in providers]
        if providers[0] in _GPU_FULL:
            preload_cuda_libraries()
        try:
            self._session = ort.InferenceSession(str(path), sess_options=opts, providers=with_options)
        except Exception as exc:  # onnxruntime raises its own untyped errors
            if providers[0] == PROVIDERS["cpu"] or provider is not None:
                raise BackendError(f"onnxruntime cannot load {path}: {exc}") from exc
            log.warning("onnxruntime failed with %s (%s); using CPUExecutionProvider.", providers[0], exc)
            if cpu_fallback_path is not None:
                path, precision = Path(cpu_fallback_path), "fp32"
            self._session = ort.InferenceSession(str(path), sess_options=opts, providers=[PROVIDERS["cpu"]])
        used = self._session.get_providers()
        if used[0] != providers[0]:
            log.warning("onnxruntime fell back from %s to %s for %s.", providers[0], used[0], path.name)
        self._ort = ort
        self._gpu = used[0] in _GPU_FULL
        self._device_id = int(provider_options.get(used[0], {}).get("device_id", 0)) if self._gpu else 0
        self._memory = "device" if self._gpu else memory
        self._run_options = _shrink_options(ort, "cpu:0") if memory == "shrink" and not self._gpu else None
        self._shrink_big = _shrink_options(ort, "cpu:0") if memory == "shared" and not self._gpu else None
        self._shrink_device_next = False  # after an out-of-memory error on the GPU: give the arena back once
        self._graphs: _CudaGraphs | None = None
        if cuda_graph and used[0] == PROVIDERS["cuda"]:
            cuda_opts = {**provider_options.get(used[0], {}), "enable_cuda_graph": "1"}
            self._graphs = _CudaGraphs(
                lambda: ort.InferenceSession(str(path), sess_options=opts, providers=[(used[0], cuda_opts)]),
                self._device_id)
        elif cuda_graph:
            log.info("cuda_graph needs the CUDA EP; %s runs without CUDA graphs.", used[0])
        self.precision = precision
        gpu_suffix = f":{precision}" if self._gpu or precision != "fp32" else ""
        self.name = f"onnxruntime:{used[0]}{gpu_suffix}" + (":cuda-graph" if self._graphs else "")
        self.device = provider_device(used[0], self._device_id)
        self.path = path
        self._inputs = _info(self._session.get_inputs())
        self._outputs = _info(self._session.get_outputs())
        self._output_names = [o.name for o in self._outputs]
        log.info("Loaded %s with %s (%s, memory %s).", path.name, used[0], precision, self._memory)

    @property
    def inputs(self) -> tuple[TensorInfo, ...]:
        return self._inputs

    @property
    def outputs(self) -> tuple[TensorInfo, ...]:
        return self._outputs

    def run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the graph; safe from several threads at once."""
        session = self._session
        if session is None:
            raise BackendError(f"The runner of {self.path.name} is closed." + note("an open runner", "closed"))
        try:
            if self._gpu:
                values = self._run_device(session, feed)
            elif self._memory == "shared":
                with cpu_slots():
                    values = session.run(self._output_names, feed, self._cpu_run_options(feed))
            else:
                values = session.run(self._output_names, feed, self._run_options)
        except Exception as exc:
            if isinstance(exc, BackendError):
                raise
            if _OOM.search(str(exc)):
                self._shrink_device_next = self._gpu
                shape = " ".join("x".join(map(str, np.shape(a))) for a in feed.values())
                raise OutOfMemoryError(
                    f"onnxruntime ran out of memory running {self.path.name} on {shape}: {exc}"
                    + note("a smaller input (max_side=...) or a GPU with more free memory", "not enough")
                ) from exc
            raise BackendError(f"onnxruntime failed to run {self.path.name}: {exc}") from exc
        finally:
            if self._memory == "shrink":
                release_free_memory()
        return dict(zip(self._output_names, values))

    def _cpu_run_options(self, feed: Mapping[str, np.ndarray]) -> Any:
        if self._shrink_big is not None and sum(np.size(a) // max(1, np.shape(a)[-1]) for a in feed.values()) \
                > SHRINK_ABOVE_PIXELS:
            return self._shrink_big
        return self._run_options

    def _run_device(self, session: Any, feed: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """One H2D copy of each input, one D2H copy of each output (IO binding); a CUDA graph if one is captured."""
        if self._graphs is not None and not self._graphs.disabled:
            out = self._graphs.run(feed)
            if out is not None:
                return out
        binding = session.io_binding()
        for name, arr in feed.items():
            binding.bind_cpu_input(name, np.ascontiguousarray(arr))
        for name in self._output_names:
            binding.bind_output(name, "cuda", self._device_id)
        run_options = None
        if self._shrink_device_next:  # once, after an out-of-memory error: hand the grown arena back
            self._shrink_device_next = False
            run_options = _shrink_options(self._ort, f"gpu:{self._device_id}")
        session.run_with_iobinding(binding, run_options)
        values = list(binding.copy_outputs_to_cpu())
        if self._graphs is not None and not self._graphs.disabled:
            self._graphs.add(feed, dict(zip(self._output_names, values)))
        return values

    def close(self) -> None:
        """Drop the session (and its CUDA graphs); onnxruntime frees its memory when the last run ends."""
        self._session = None
        self._graphs = None


def load_graph(loader: GraphLoader) -> OrtRunner:
    """This backend's loader (``backends.LOADERS["onnxruntime"]``): ``loader``'s graph in an :class:`OrtRunner`.

    Args:
        loader: What to open and how (its ``cache`` is unused here: the TensorRT EP's cache folder travels in
            ``provider_options``).
    """
    return OrtRunner(loader.path, provider=loader.provider, intra_op_threads=loader.threads,
                     provider_options=loader.provider_options, precision=loader.precision,
                     cpu_fallback_path=loader.cpu_fallback_path, cuda_graph=loader.cuda_graph, small=loader.small)
