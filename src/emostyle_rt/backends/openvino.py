"""OpenVINO backend: the bundle's own ONNX graphs compiled by OpenVINO's CPU plugin.

No new artifact: ``read_model`` takes the style graph (uint8 NHWC, dynamic
shapes) as exported. What OpenVINO compiles is cached in the user cache
(``<cache>/openvino/blobs``, OpenVINO's ``CACHE_DIR``), never in the bundle.

Precision is explicit: ``INFERENCE_PRECISION_HINT`` f32. The CPU plugin's
default is bf16 on CPUs with AVX512-BF16 or AMX (measured: a 2-core Xeon with
AMX reports ``bfloat16``), which changes the picture by up to 5-6 grey levels
and would break the bundle's 1-grey-level contract.

Threads and memory follow the onnxruntime backend: ``$EMOSTYLE_CPU_THREADS``
intra-op threads (0: OpenVINO's default, one per core), at most
``$EMOSTYLE_CPU_CONCURRENCY`` runs at once in the process (the same slots), and
the activations compiled models keep are bounded process-wide (:data:`KEEP_PIXELS`;
a run over ``SHRINK_ABOVE_PIXELS`` gives its own back at once), so one huge
photo, or seven styles in turn, do not pin gigabytes.

Gate: the first time a graph is used on a machine (per OpenVINO version and
CPU), it runs next to onnxruntime on probe images and must agree within the
bundle's parity tolerance (1 grey level for styles; ``precision="bf16"``:
PSNR >= :data:`BF16_MIN_PSNR` dB against onnxruntime FP32); a marker in the user cache
(``<cache>/openvino/verified``) remembers that it passed. Any failure (compile,
gate) with ``backend="auto"`` logs one warning and onnxruntime runs instead.

``backend="auto"`` uses it on a machine whose onnxruntime has no GPU
provider, when the ``openvino`` package is installed, for the graphs that
:func:`auto_uses` names (measured faster here): the style graphs. The classifier
and MTCNN's graphs stay in onnxruntime (tiny graphs: per-call and per-shape
overhead decide, and onnxruntime's is lower); ``backend="openvino"`` runs every
graph in OpenVINO.

MTCNN's graphs (:func:`detector_runner`) have no probe images: each is gated on
its first real input (a pyramid level, the image's candidates) against
onnxruntime, within the graph's parity tolerance (``DETECTOR_TOLERANCE``); a
failed gate logs one warning and onnxruntime runs that graph from then on.
P-Net's input shape changes with every pyramid level, so it runs with dynamic
shapes (one compiled model; compiling a static model per shape costs ~40-54 ms a
shape, which a photo's 9-level pyramid does not pay back: see
benchmarks/results/openvino-cpu-mtcnn.md).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import logging
import os
import queue
import sys
import threading
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from ..bundle.compiled import CLASSIFIER_KEY
from ..errors import BackendError, note
from ..metrics import CLASSIFIER_TOLERANCE, DETECTOR_TOLERANCE, MIN_PSNR_DB, STYLE_TOLERANCE, psnr  # psnr: also here
from . import ort as ort_backend
from .base import GraphLoader, TensorInfo, cache_dir

log = logging.getLogger(__name__)

#: How this backend's shape range is called in messages (see ``emostyle_rt.backends``): it has none (dynamic shapes).
RANGE = "OpenVINO"
#: Whether it runs the classifier too (with ``backend="openvino"``; ``"auto"`` keeps it in onnxruntime).
HAS_CLASSIFIER = True
#: ``precision=`` values it serves ("auto" is fp32; the bundle's FP16 graphs are for GPUs). bf16: style graphs only,
#: on a CPU that has it, gated at :data:`BF16_MIN_PSNR` against onnxruntime's FP32.
PRECISIONS = ("auto", "fp32", "bf16")
#: The bf16 gate: PSNR of the style output against onnxruntime FP32 on the probe images. A briefly trained style
#: network gave 48.7-51.9 dB on real photos (benchmarks/results/openvino-cpu.md); 40 dB is the project's bar.
BF16_MIN_PSNR = MIN_PSNR_DB
#: The precision hint given to the CPU plugin (its own default is bf16 on AVX512-BF16 / AMX CPUs).
INFERENCE_PRECISION = "f32"
#: Peak RSS growth of a whole-graph run per byte of the graph's live activations (the tiling planner's estimate,
#: ``emostyle_rt.tiling.estimate_whole``): 557 B/px measured for the paper's network (517 B/px live) at 1.0, 2.0 and
#: 4.2 MP alike, i.e. 1.08 (onnxruntime's arena: 833-1302 B/px, calibrated at 2.5). Rounded up.
MEMORY_CALIBRATION = 1.2
#: MTCNN's graphs that ``backend="auto"`` runs in OpenVINO on a CPU-only machine: none, by measurement (2-core Xeon
#: with AMX, shared; benchmarks/results/openvino-cpu-mtcnn.md, OpenVINO 2026.4 with dynamic shapes). Where every
#: shape repeats (the same photo sizes, 7 rounds), OpenVINO is faster: P-Net 1.16x onnxruntime, R-Net 1.61x, O-Net
#: 0.97x, whole detect 1.16x. But each new input shape costs OpenVINO a first run several times the graph's time,
#: and P-Net's shapes change with every image size, R-Net's and O-Net's batch with every image: on 20 photo sizes
#: seen once the whole detect ran at 0.47x onnxruntime all in OpenVINO (0.78x with P-Net and R-Net only; P-Net
#: 0.39x, R-Net 0.50x), and whatever ran right after OpenVINO paid about 20% more while its threads held the cores.
#: ``backend="openvino"`` runs all three there (for a video at one resolution, where shapes repeat).
AUTO_DETECTOR_GRAPHS: frozenset[str] = frozenset()
#: Folders under the user cache: OpenVINO's compiled blobs, and the markers of graphs that passed the gate.
BLOBS_DIR, VERIFIED_DIR = "openvino/blobs", "openvino/verified"
#: Graphs whose compile or gate failed in this process: path -> why (tried once, warned once).
_FAILED: dict[str, str] = {}
_FAILED_LOCK = threading.Lock()


def installed() -> bool:
    """Whether the ``openvino`` package is importable (found, not imported)."""
    return importlib.util.find_spec("openvino") is not None


def import_openvino() -> Any:
    """The openvino module, or a typed error naming the extra that installs it.

    OpenVINO's telemetry is kept off: reading an ONNX graph initialises it, which
    writes ``~/intel/openvino_ga_cid`` and ``~/intel/stats`` (and would send usage
    data) unless a consent file or CI=true says no. With ``openvino_telemetry``
    made unimportable (unless the process imported it already), OpenVINO uses its
    own no-op stub (``openvino.tools.ovc.telemetry_stub``), so a Stylizer writes
    nothing in the user's home, as with onnxruntime (ORT_DISABLE_TELEMETRY).
    """
    sys.modules.setdefault("openvino_telemetry", None)  # type: ignore[arg-type]
    try:
        import openvino
    except ImportError as exc:
        raise BackendError(f"OpenVINO is not installed ({exc})."
                           + note("pip install 'emostyle-rt[cpu]' (or '[openvino]')", "no openvino module")) from exc
    return openvino


@functools.lru_cache(maxsize=1)
def core() -> Any:
    """One ``openvino.Core`` for the process (it owns the CPU plugin and its thread pool)."""
    return import_openvino().Core()


@functools.lru_cache(maxsize=1)
def version() -> str:
    """OpenVINO's version, e.g. "2026.4.1-22982-..."."""
    return str(import_openvino().get_version())


@functools.lru_cache(maxsize=1)
def _cpu_key() -> str:
    """A short hash of this CPU's feature flags: OpenVINO picks kernels by ISA, so a gate passed here holds here."""
    flags = ""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            flags = next((line for line in f if line.startswith(("flags", "Features"))), "")
    except OSError:
        pass
    return hashlib.sha256(" ".join(sorted(flags.split(":", 1)[-1].split())).encode()).hexdigest()[:12]


def _numpy_dtype(ov_type: Any) -> str:
    try:
        return np.dtype(ov_type.to_dtype()).name
    except (AttributeError, TypeError):
        return str(ov_type)


def _info(ports: Any) -> tuple[TensorInfo, ...]:
    out = []
    for p in ports:
        shape = tuple(d.get_length() if d.is_static else None for d in p.get_partial_shape())
        out.append(TensorInfo(p.get_any_name(), shape, _numpy_dtype(p.get_element_type())))
    return tuple(out)


class OvRunner:
    """One compiled OpenVINO model behind the ``Runner`` interface (CPU plugin, LATENCY hint, f32).

    ``run`` is safe from several threads: each run takes one of the process' CPU
    slots (``EMOSTYLE_CPU_CONCURRENCY``, shared with onnxruntime) and an infer
    request of its own from a small pool. ``precision``: "fp32" (the default) or "bf16"
    (``INFERENCE_PRECISION_HINT`` bf16; refused where the CPU plugin would run
    it at another precision). Not gated here: :func:`verified_runner` gates.
    """

    def __init__(self, onnx_path: str | os.PathLike, *, precision: str = "fp32", threads: int | None = None,
                 cache: str | os.PathLike | None = None, use_cache: bool = True) -> None:
        hints = {"fp32": "f32", "bf16": "bf16"}
        if precision not in hints:
            raise BackendError(f"Unknown OpenVINO precision {precision!r}." + note(" or ".join(hints), precision))
        self.path, self.precision = Path(onnx_path), precision
        config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": hints[precision]}
        n = ort_backend.cpu_threads() if threads is None else threads
        if n:
            config["INFERENCE_NUM_THREADS"] = n
        blobs = cache_dir(cache) / BLOBS_DIR
        if use_cache:
            try:
                blobs.mkdir(parents=True, exist_ok=True)
                config["CACHE_DIR"] = str(blobs)
            except OSError as exc:  # a read-only cache costs the compile time only
                log.debug("No OpenVINO blob cache at %s: %s", blobs, exc)
        try:
            self._compiled = core().compile_model(str(self.path), "CPU", config)
        except BackendError:
            raise
        except Exception as exc:  # noqa: BLE001 - OpenVINO raises RuntimeError and its own types
            raise BackendError(f"OpenVINO cannot compile {self.path}: {exc}") from exc
        got = str(self._compiled.get_property("INFERENCE_PRECISION_HINT"))
        if {"fp32": "float32", "bf16": "bfloat16"}[precision] not in got.lower():
            raise BackendError(f"OpenVINO compiled {self.path.name} at another precision than asked."
                               + note(hints[precision], got))
        self._inputs = _info(self._compiled.inputs)
        self._outputs = _info(self._compiled.outputs)
        self._output_names = [o.name for o in self._outputs]
        self._requests: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._closed = False
        self._active = 0  # runs in flight (memory is released only when none is)
        self._lock = threading.Lock()
        self.name = f"openvino:CPU:{precision}"
        self.device = "cpu"
        self.memory_calibration = MEMORY_CALIBRATION
        log.info("Loaded %s with OpenVINO %s (CPU, %s, %s threads).", self.path.name, version(), precision, n or "all")

    @property
    def inputs(self) -> tuple[TensorInfo, ...]:
        return self._inputs

    @property
    def outputs(self) -> tuple[TensorInfo, ...]:
        return self._outputs

    def run(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the graph; outputs are copies (the infer request's buffers are reused)."""
        if self._closed:
            raise BackendError(f"The runner of {self.path.name} is closed." + note("an open runner", "closed"))
        names = {t.name for t in self._inputs}
        if set(feed) != names:
            raise BackendError(f"Wrong inputs for {self.path.name}." + note(sorted(names), sorted(feed)))
        with ort_backend.cpu_slots():
            with self._lock:
                if self._compiled is None:
                    raise BackendError(f"The runner of {self.path.name} is closed." + note("an open runner", "closed"))
                self._active += 1
                compiled = self._compiled
            request = None
            try:
                try:
                    request = self._requests.get_nowait()
                except queue.Empty:
                    request = compiled.create_infer_request()
                request.infer({k: np.ascontiguousarray(v) for k, v in feed.items()})
                out = {n: np.array(request.get_tensor(n).data) for n in self._output_names}
            except Exception as exc:  # noqa: BLE001 - OpenVINO raises RuntimeError for everything
                if isinstance(exc, MemoryError) or "bad_alloc" in str(exc) or "out of memory" in str(exc).lower():
                    shape = " ".join("x".join(map(str, np.shape(a))) for a in feed.values())
                    raise ort_backend.OutOfMemoryError(
                        f"OpenVINO ran out of memory running {self.path.name} on {shape}: {exc}"
                        + note("a smaller input (max_side=...) or a memory budget (tiles)", "not enough")) from exc
                raise BackendError(f"OpenVINO failed to run {self.path.name}: {exc}") from exc
            finally:
                with self._lock:
                    self._active -= 1
            if not self._closed:
                self._requests.put(request)
        if not self._closed:
            _kept(self, sum(np.size(a) // max(1, np.shape(a)[-1]) for a in feed.values()))
        return out

    def release_memory(self) -> bool:
        """Give the activations the compiled model keeps back to the OS (OpenVINO's ``release_memory``), unless a run
        is in flight; True when released. The next run allocates them again."""
        with self._lock:
            if self._active or self._compiled is None:
                return False
            self._compiled.release_memory()
            return True

    def close(self) -> None:
        """Drop the compiled model, its infer requests and the memory they hold; idempotent."""
        self._closed = True
        _forget(self)
        while True:
            try:
                self._requests.get_nowait()
            except queue.Empty:
                break
        with self._lock:
            if not self._active:
                self._compiled = None


#: What compiled models keep between runs. OpenVINO keeps a run's activations in its compiled model (dropping the
#: infer request frees nothing): seven style graphs run at 720p held 3.7 GB over 21 photos, where onnxruntime's
#: one shared arena held 1.2 GB. So the process keeps the activations of its most recently used runners only, while
#: the pixels of their largest runs add up to at most this (1 Mpx, the Stylizer's BATCH_PIXELS: one 720p run, or
#: four of the exact mode's strips; the latest runner always keeps its own); older ones release theirs
#: (``release_memory``), and a run over ``SHRINK_ABOVE_PIXELS`` (the onnxruntime backend's threshold) releases its
#: own at once. 14 photos of 720p over the seven styles: peak RSS 1951 MB with 2 Mpx kept, onnxruntime 1242 MB.
KEEP_PIXELS = 1 << 20
_kept_lock = threading.Lock()
_kept_runs: dict[int, tuple[OvRunner, int]] = {}  # id(runner) -> (runner, largest input pixels), oldest first


def load_graph(loader: GraphLoader) -> OvRunner:
    """This backend's loader (``backends.LOADERS["openvino"]``): ``loader``'s graph on OpenVINO's CPU plugin, not
    gated (``threads`` 0: $EMOSTYLE_CPU_THREADS, else OpenVINO's default; ``small`` needs nothing here: the CPU
    plugin's threads do not spin).

    Args:
        loader: What to open and how: provider None or "cpu", precision "fp32" or "bf16", no provider options,
            no CUDA graphs.

    Raises:
        BackendError: A GPU provider, provider options or CUDA graphs were asked for.
    """
    if loader.provider not in (None, "cpu") or loader.provider_options or loader.cuda_graph:
        raise BackendError("OpenVINO runs graphs on its CPU plugin only." + note(
            "provider None or 'cpu', no provider_options, cuda_graph=False",
            f"provider={loader.provider!r}, provider_options={loader.provider_options!r}, "
            f"cuda_graph={loader.cuda_graph}"))
    return OvRunner(loader.path, precision=loader.precision, threads=loader.threads or None, cache=loader.cache)


def _kept(runner: OvRunner, pixels: int) -> None:
    """Record a finished run and release what the budget of :data:`KEEP_PIXELS` no longer covers."""
    release = []
    with _kept_lock:
        _, before = _kept_runs.pop(id(runner), (runner, 0))
        if pixels > ort_backend.SHRINK_ABOVE_PIXELS:
            release.append(runner)
        else:
            _kept_runs[id(runner)] = (runner, max(before, pixels))
            total = sum(p for _, p in _kept_runs.values())
            for key in list(_kept_runs):
                if total <= KEEP_PIXELS or key == id(runner):
                    break
                old, p = _kept_runs.pop(key)
                total -= p
                release.append(old)
    for r in release:
        if not r.release_memory():  # in flight elsewhere: it is recorded again when that run ends
            log.debug("%s: not released (a run is in flight).", r.path.name)


def _forget(runner: OvRunner) -> None:
    with _kept_lock:
        _kept_runs.pop(id(runner), None)


# ---------------------------------------------------------------- the gate against onnxruntime


def probe_images(height: int = 96, width: int = 128) -> np.ndarray:
    """Two deterministic uint8 RGB probe images (gradients, edges, texture; no clock-seeded randomness)."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    smooth = np.stack([255 * x / (width - 1), 255 * y / (height - 1),
                       127.5 + 127.5 * np.sin((x * x + y * y) / 300.0)], axis=-1)
    smooth[height // 3 : height // 2, width // 4 : width // 2] = (250, 20, 40)  # a hard-edged block
    texture = np.random.default_rng(0).integers(0, 256, (height, width, 3)).astype(np.float32)
    return np.clip(np.stack([smooth, texture]), 0, 255).astype(np.uint8)


def _marker(spec: Any, precision: str) -> Path:
    return cache_dir() / VERIFIED_DIR / f"{spec.sha256[:32]}-ov{version().split('-')[0]}-{_cpu_key()}-{precision}.json"


def gate(runner: OvRunner, reference: Any, spec: Any, *, style: bool) -> dict[str, Any]:
    """Run ``runner`` and the onnxruntime ``reference`` on the probes; BackendError if they disagree.

    Styles: max |diff| of the uint8 outputs <= the bundle's parity tolerance
    (1 grey level); bf16: PSNR >= :data:`BF16_MIN_PSNR`. The classifier: max
    |diff| of the probabilities <= its tolerance, and the same top class.
    """
    if style:
        feed = {spec.input_name: probe_images()}
        tol = float(spec.parity.get("tolerance", STYLE_TOLERANCE))
    else:
        side = probe_images(spec.height, spec.width)
        feed = {spec.input_name: side if spec.channels == 3 else np.ascontiguousarray(side[..., :1])}
        tol = float(spec.parity.get("tolerance", CLASSIFIER_TOLERANCE))
    got = runner.run(feed)[spec.output_name]
    want = reference.run(feed)[spec.output_name]
    if got.shape != want.shape or got.dtype != want.dtype:
        raise BackendError(f"OpenVINO's {runner.path.name} broke the graph's contract on the probe images."
                           + note(f"{want.dtype} {list(want.shape)}", f"{got.dtype} {list(got.shape)}"))
    diff = float(np.abs(got.astype(np.float64) - want.astype(np.float64)).max())
    result = {"max_abs_diff": diff, "tolerance": tol, "openvino": version(), "precision": runner.precision}
    if style and runner.precision == "bf16":
        db = psnr(got, want)
        if db < BF16_MIN_PSNR:
            raise BackendError(f"OpenVINO's {runner.path.name} at bf16 is too far from onnxruntime FP32 on the probe "
                               f"images ({db:.1f} dB)." + note(f"PSNR >= {BF16_MIN_PSNR:g} dB", f"{db:.1f} dB"))
        return {**result, "psnr_db": round(db, 2), "min_psnr_db": BF16_MIN_PSNR}
    top1 = style or bool((got.argmax(-1) == want.argmax(-1)).all())
    if diff > tol or not top1:
        raise BackendError(f"OpenVINO's {runner.path.name} disagrees with onnxruntime on the probe images "
                           f"(max |diff| {diff:g}{'' if top1 else ', another top class'})."
                           + note(f"max |diff| <= {tol:g}", f"{diff:g}"))
    return result


def verified_runner(manifest: Any, key: str, spec: Any, *, style: bool, precision: str = "fp32") -> OvRunner:
    """A compiled runner for one graph, gated against onnxruntime unless this machine passed it before."""
    runner = OvRunner(manifest.path(spec.onnx), precision=precision)
    marker = _marker(spec, runner.precision)
    if marker.is_file():
        return runner
    if spec.input_name not in {t.name for t in runner.inputs} or spec.output_name not in {t.name for t in runner.outputs}:
        return runner  # nothing to gate by: the caller's graph check refuses it (BundleError naming the tensors)
    reference = ort_backend.OrtRunner(manifest.path(spec.onnx), provider="cpu")
    try:
        result = gate(runner, reference, spec, style=style)
    except BaseException:
        runner.close()
        raise
    finally:
        reference.close()
    try:
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(json.dumps({"graph": str(manifest.path(spec.onnx)), "sha256": spec.sha256, **result}) + "\n")
    except OSError as exc:  # a read-only cache only costs the gate next time
        log.debug("Cannot write gate marker %s: %s", marker, exc)
    log.info("%s: OpenVINO %s agrees with onnxruntime (max |diff| %g%s).", key, precision, result["max_abs_diff"],
             f", {result['psnr_db']} dB" if "psnr_db" in result else "")
    return runner


def auto_uses(key: str, *, style: bool) -> bool:
    """Whether ``backend="auto"`` runs graph ``key`` in OpenVINO on a CPU-only machine (where it is installed).

    The one rule, by measurement on this project's CPU: style graphs yes (1.26-1.78x onnxruntime,
    benchmarks/results/openvino-cpu.md); the classifier no (0.88-0.98x); MTCNN's graphs those of
    :data:`AUTO_DETECTOR_GRAPHS` (none: new input shapes cost OpenVINO more than it saves; "pnet", "rnet",
    "onet" are their keys).
    """
    return style or key in AUTO_DETECTOR_GRAPHS


def _cpu_only() -> bool:
    """Whether onnxruntime has no GPU provider here (the CUDA and TensorRT EPs beat any CPU)."""
    return ort_backend.choose_providers()[0] == ort_backend.PROVIDERS["cpu"]


def check(manifest: Any, key: str) -> None:
    """Raise the ``BackendError`` that ``find_runner(required=True)`` would for a graph it cannot serve, loading
    nothing (``backend="openvino"`` is refused when a Stylizer is made): OpenVINO missing, or no such graph."""
    if key not in manifest.styles and key != CLASSIFIER_KEY:
        raise BackendError(f"Bundle {manifest.root} has no graph {key!r}."
                           + note(f"{CLASSIFIER_KEY!r} or a style id", sorted(manifest.styles)))
    if not installed():
        import_openvino()


def find_runner(manifest: Any, key: str, *, required: bool = False, precision: str = "auto") -> OvRunner | None:
    """The hook ``runner_for`` calls: a gated runner, or None (or an error when ``required``).

    Not required (``backend="auto"``): style graphs only, and only when
    OpenVINO is installed and onnxruntime has no GPU provider here (the CUDA and
    TensorRT EPs beat any CPU). ``precision``: "auto"/"fp32" or "bf16" (style graphs).
    """
    if precision not in PRECISIONS:
        raise BackendError(f"OpenVINO does not run precision={precision!r}." + note(" or ".join(PRECISIONS), precision))
    chosen = "bf16" if precision == "bf16" else "fp32"
    style = key in manifest.styles
    if chosen == "bf16" and not style:
        raise BackendError("precision='bf16' is for style graphs; the classifier runs FP32." + note("a style id", key))
    if not style and key != CLASSIFIER_KEY:
        raise BackendError(f"Bundle {manifest.root} has no graph {key!r}."
                           + note(f"{CLASSIFIER_KEY!r} or a style id", sorted(manifest.styles)))
    if not installed():
        if required:
            import_openvino()  # raises the typed error naming the extra
        log.debug("OpenVINO is not installed; %s uses onnxruntime.", key)
        return None
    if not required:
        if not auto_uses(key, style=style):
            return None  # onnxruntime is faster on the classifier (tiny graph): see auto_uses
        if not _cpu_only():
            log.debug("onnxruntime has a GPU provider here; %s does not use OpenVINO.", key)
            return None
    spec = manifest.styles[key] if style else manifest.classifier
    path = f"{manifest.path(spec.onnx)}:{chosen}"
    with _FAILED_LOCK:
        failed = _FAILED.get(path)
    try:
        if failed is not None:
            raise BackendError(failed)
        return verified_runner(manifest, key, spec, style=style, precision=chosen)
    except BackendError as exc:
        if required:
            raise
        with _FAILED_LOCK:
            first = path not in _FAILED
            _FAILED[path] = str(exc)
        if first:
            log.warning("%s. Using onnxruntime for %s.", str(exc).rstrip("."), key)
        return None


# ---------------------------------------------------------------- MTCNN's graphs: gated on their first real input


class GatedRunner:
    """An OpenVINO runner of one detector graph, checked against onnxruntime on its first real input.

    The first ``run`` runs the same feed in onnxruntime (``make_reference()``) too: every output must have the
    reference's shape and dtype and lie within ``tolerance`` (max |diff|). Passed: OpenVINO serves, the reference
    is closed. Failed, or OpenVINO raised: with ``required`` a ``BackendError``; else one warning (per graph file
    and process) and onnxruntime serves this graph from then on (its output for the gate's feed is returned).
    """

    def __init__(self, primary: OvRunner, make_reference: Any, key: str, *, tolerance: float,
                 required: bool = False) -> None:
        self.key, self.tolerance, self.required = key, tolerance, required
        self._primary: OvRunner | None = primary
        self._make_reference = make_reference
        self._fallback: Any = None
        self._verified = False
        self._lock = threading.Lock()
        self._name, self.device = primary.name, "cpu"
        self.inputs: tuple[TensorInfo, ...] = primary.inputs  # the graph's, whichever runtime serves it
        self.outputs: tuple[TensorInfo, ...] = primary.outputs
        self.gate_result: dict[str, Any] | None = None  # the gate's figures once it ran

    @property
    def name(self) -> str:
        """The serving runner's name ("openvino:CPU:fp32", or onnxruntime's after a failed gate)."""
        return self._fallback.name if self._fallback is not None else self._name

    @property
    def serving(self) -> str:
        """Which runtime serves this graph now: "openvino", "onnxruntime" (the gate failed) or "unverified"."""
        return "onnxruntime" if self._fallback is not None else "openvino" if self._verified else "unverified"

    def run(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if not self._verified and self._fallback is None:
            with self._lock:
                if not self._verified and self._fallback is None:
                    return self._gate(feed)
        if self._fallback is not None:
            return self._fallback.run(feed)
        return self._primary.run(feed)  # type: ignore[union-attr]

    def _gate(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        primary: OvRunner = self._primary  # type: ignore[assignment]  # set until a failed gate sets _fallback
        reference = self._make_reference()
        want = reference.run(feed)
        try:
            got = primary.run(feed)
            why, diff = "", 0.0
            for name, w in want.items():
                g = got.get(name)
                if g is None or g.shape != w.shape or g.dtype != w.dtype:
                    why = (f"output {name!r} broke the graph's contract."
                           + note(f"{w.dtype} {list(w.shape)}", "missing" if g is None else f"{g.dtype} {list(g.shape)}"))
                    break
                d = float(np.abs(g.astype(np.float64) - w.astype(np.float64)).max()) if w.size else 0.0
                diff = max(diff, d if np.isfinite(d) else np.inf)
            if not why and not diff <= self.tolerance:
                why = (f"max |diff| {diff:g} against onnxruntime on its first input."
                       + note(f"max |diff| <= {self.tolerance:g}", f"{diff:g}"))
            if why:
                raise BackendError(f"OpenVINO's {primary.path.name} ({self.key}) disagrees with onnxruntime: {why}")
        except BackendError as exc:
            if self.required:
                reference.close()
                raise
            self._fail(exc)
            self._fallback = reference
            return want
        self.gate_result = {"max_abs_diff": diff, "tolerance": self.tolerance, "openvino": version(),
                            "shape": [list(np.shape(a)) for a in feed.values()]}
        log.info("%s: OpenVINO agrees with onnxruntime on its first input (max |diff| %g).", self.key, diff)
        reference.close()
        self._verified = True
        return got

    def _fail(self, exc: BackendError) -> None:
        """Record the failure, warn once per graph file, close OpenVINO's runner."""
        path = f"{self._primary.path}:detector" if self._primary is not None else self.key
        with _FAILED_LOCK:
            first = path not in _FAILED
            _FAILED[path] = str(exc)
        if first:
            log.warning("%s. Using onnxruntime for %s.", str(exc).rstrip("."), self.key)
        if self._primary is not None:
            self._primary.close()

    def close(self) -> None:
        for r in (self._primary, self._fallback):
            if r is not None:
                r.close()


def detector_runner(path: str | os.PathLike, key: str, make_reference: Any, *, required: bool = False,
                    tolerance: float = DETECTOR_TOLERANCE, threads: int = 0,
                    cache: str | os.PathLike | None = None) -> GatedRunner | None:
    """MTCNN graph ``key`` ("pnet", "rnet", "onet") of ``path`` in OpenVINO, gated on its first real input.

    Not required (``backend="auto"``): None unless :func:`auto_uses` names the graph, OpenVINO is installed and
    onnxruntime has no GPU provider here; a compile failure, or a graph that failed in this process before, is
    one warning and None. ``make_reference()``: the graph's onnxruntime runner (the gate's reference and the
    fallback). ``tolerance``: the graph's parity tolerance (the manifest's, else ``DETECTOR_TOLERANCE``).

    Raises:
        BackendError: ``required`` and OpenVINO is missing or cannot compile the graph.
    """
    if not required:
        if not auto_uses(key, style=False) or not installed() or not _cpu_only():
            return None
        with _FAILED_LOCK:
            if f"{Path(path)}:detector" in _FAILED:
                return None
    try:
        runner = OvRunner(path, threads=threads or None, cache=cache)
    except BackendError as exc:
        if required:
            raise
        with _FAILED_LOCK:
            first = f"{Path(path)}:detector" not in _FAILED
            _FAILED[f"{Path(path)}:detector"] = str(exc)
        if first:
            log.warning("%s. Using onnxruntime for %s.", str(exc).rstrip("."), key)
        return None
    return GatedRunner(runner, make_reference, key, tolerance=tolerance, required=required)
