"""Build strongly typed FP16 TensorRT engines from a bundle's FP16 ONNX graphs.

The precision lives in the ONNX graph (see ``fp16.py``), so the network is
created with ``NetworkDefinitionCreationFlag.STRONGLY_TYPED`` and no precision
flags: the same code works on TensorRT 10 and 11. ``tensorrt`` is imported
inside the functions. Engines and JSON sidecars go to
``<bundle>/trt/<arch-key>/`` (``emostyle_rt.backends.tensorrt`` reads them).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import json
import logging
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from emostyle_rt.bundle.compiled import TRT_DIR, TRT_TIMING_CACHE, Profile, TrtEngine, TrtSidecar, arch_key, plan_paths
from emostyle_rt.errors import note
from emostyle_rt.fsutil import sha256_file, write_bytes_atomic
from emostyle_rt.manifest import STYLE_SIZE_MULTIPLE

from .errors import ExportError

log = logging.getLogger(__name__)

TIMING_CACHE = TRT_TIMING_CACHE  # the name is the bundle format's (emostyle_rt.bundle.compiled)


@dataclass(frozen=True)
class ShapeRange:
    """User-declared range for the style graphs: batch and image size (H, W multiples of 4).

    The default covers both orientations and squares: sides 64..1920 (a portrait
    1080x1920 photo as well as a landscape one). Batches of up to ``max_batch``
    images run for sides up to ``batch_max_hw``; larger images run one at a time.
    That takes two optimization profiles (:meth:`style_profiles`), and an
    engine's activation memory is that of its largest profile: max(4 x 1024 x 1024,
    1 x 1920 x 1920) = 4.2 Mpx, where one profile of 4 x 1080 x 1920 needed 8.3
    Mpx and still refused portraits. The runtime picks the profile per input and
    splits larger batches; anything outside runs in onnxruntime (backend="auto").
    """

    min_batch: int = 1
    opt_batch: int = 1
    max_batch: int = 4
    min_hw: tuple[int, int] = (64, 64)
    opt_hw: tuple[int, int] = (720, 1280)
    max_hw: tuple[int, int] = (1920, 1920)
    multiple: int = STYLE_SIZE_MULTIPLE
    batch_max_hw: tuple[int, int] | None = (1024, 1024)  # None: one profile, max_batch at every size

    def _sides(self) -> tuple[list[int], list[int], list[int]]:
        def up(v: int) -> int:
            return -(-v // self.multiple) * self.multiple

        if not (1 <= self.min_batch <= self.opt_batch <= self.max_batch):
            raise ExportError("Batch range must satisfy 1 <= min <= opt <= max."
                              + note("1 <= min <= opt <= max", (self.min_batch, self.opt_batch, self.max_batch)))
        mn, op, mx = ([up(v) for v in hw] for hw in (self.min_hw, self.opt_hw, self.max_hw))
        if not all(a <= b <= c for a, b, c in zip(mn, op, mx)) or min(mn) < 8:
            raise ExportError("Image size range must satisfy 8 <= min <= opt <= max per side."
                              + note("min <= opt <= max", (self.min_hw, self.opt_hw, self.max_hw)))
        return mn, op, mx

    def style_profile(self, input_name: str) -> Profile:
        """One NHWC uint8 profile over the whole range (batch up to ``max_batch`` at every size)."""
        mn, op, mx = self._sides()
        return Profile(input_name, (self.min_batch, *mn, 3), (self.opt_batch, *op, 3), (self.max_batch, *mx, 3))

    def style_profiles(self, input_name: str) -> list[Profile]:
        """The style graphs' profiles: batches up to ``batch_max_hw``, then single images up to ``max_hw``."""
        mn, op, mx = self._sides()
        if self.batch_max_hw is None or self.max_batch == self.min_batch:
            return [self.style_profile(input_name)]
        bmx = [-(-v // self.multiple) * self.multiple for v in self.batch_max_hw]
        if not all(a <= b for a, b in zip(mn, bmx)):
            raise ExportError("The batched profile's largest image must not be smaller than the smallest one."
                              + note(f">= {mn}", self.batch_max_hw))
        if all(b >= c for b, c in zip(bmx, mx)):
            return [self.style_profile(input_name)]
        batched = Profile(input_name, (self.min_batch, *mn, 3), (self.opt_batch, *(min(a, b) for a, b in zip(op, bmx)), 3),
                          (self.max_batch, *bmx, 3))
        single = Profile(input_name, (self.min_batch, *mn, 3), (self.min_batch, *op, 3), (self.min_batch, *mx, 3))
        return [batched, single]

    def classifier_profile(self, input_name: str, hwc: tuple[int, int, int], max_faces: int = 16) -> Profile:
        """Fixed face size, batch 1..``max_faces``."""
        return Profile(input_name, (1, *hwc), (1, *hwc), (max_faces, *hwc))


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Exclusive advisory lock on ``<path>.lock`` (timing cache shared by concurrent builds)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{path}.lock", "a+") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def atomic_write(path: Path, data: bytes, *, overwrite: bool) -> None:
    """Write ``data`` to ``path`` via a temp file + rename; refuse to replace unless ``overwrite``."""
    if path.exists() and not overwrite:
        raise ExportError(f"{path} already exists; not overwriting it." + note("a new path or force", path))
    write_bytes_atomic(path, data)


def write_sidecar(path: Path, sidecar: TrtSidecar, *, overwrite: bool) -> None:
    """Write ``sidecar`` (stamped with the current UTC time) as the JSON next to its plan.

    The runtime reads it back with ``emostyle_rt.bundle.compiled.sidecar_problems``.
    """
    stamped = replace(sidecar, created=_dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"))
    atomic_write(path, json.dumps(stamped.to_json(), indent=2).encode(), overwrite=overwrite)


def _progress_monitor(trt: Any) -> Any:
    """An IProgressMonitor that prints phases to stderr (terminal only)."""

    class Monitor(trt.IProgressMonitor):
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)
            self._steps: dict[str, int] = {}

        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
            self._steps[phase_name] = num_steps
            sys.stderr.write(f"[trt] {phase_name} (0/{num_steps})\n")

        def step_complete(self, phase_name: str, step: int) -> bool:
            sys.stderr.write(f"\r[trt] {phase_name} ({step + 1}/{self._steps.get(phase_name, '?')})")
            return True  # False would cancel the build

        def phase_finish(self, phase_name: str) -> None:
            sys.stderr.write(f"\r[trt] {phase_name} done\n")

    return Monitor()


def build_engine(
    onnx_path: Path,
    profiles: Sequence[Profile],
    *,
    timing_cache: Path,
    workspace_mb: int | None = None,
    progress: bool | None = None,
) -> bytes:
    """Serialized strongly typed engine for ``onnx_path`` (not written; see :func:`build_engines`)."""
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    try:
        builder = trt.Builder(logger)
    except TypeError as exc:  # pybind11: "factory function returned nullptr" (no GPU, driver or CUDA runtime)
        raise ExportError(f"TensorRT could not create a builder ({exc})."
                          + note("a CUDA driver and GPU that this TensorRT supports", "trt.Builder() returned nullptr")
                          ) from exc
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    if network is None:
        raise ExportError("TensorRT could not create a strongly typed network." + note("a network", "None"))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise ExportError(f"TensorRT's ONNX parser rejected {onnx_path}." + note("a parseable graph", errors))
    config = builder.create_builder_config()
    if config is None:
        raise ExportError("TensorRT could not create a builder config (out of memory?)." + note("a config", "None"))
    if workspace_mb is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mb) << 20)
    for prof in profiles:
        p = builder.create_optimization_profile()
        try:
            p.set_shape(prof.input, prof.min, prof.opt, prof.max)
        except (RuntimeError, TypeError) as exc:  # RuntimeError: min/opt/max of different ranks or out of order
            raise ExportError(f"TensorRT refused the optimization profile for {onnx_path}: {exc}"
                              + note("min <= opt <= max, same rank as the input", prof.to_json())) from exc
        if config.add_optimization_profile(p) < 0:  # -1: profile invalid (e.g. a dynamic input left unset)
            raise ExportError(f"TensorRT rejected the optimization profile for {onnx_path}."
                              + note("every dynamic input of the graph", prof.to_json()))
    if sys.stderr.isatty() if progress is None else progress:
        config.progress_monitor = _progress_monitor(trt)
    with locked(timing_cache):
        cache = config.create_timing_cache(timing_cache.read_bytes() if timing_cache.is_file() else b"")
        # set_timing_cache returns False (cache not attached) when the cache came from another device;
        # create_timing_cache may return None for a damaged file. Either way: start an empty cache.
        if cache is None or not config.set_timing_cache(cache, ignore_mismatch=False):
            log.warning("Timing cache %s is unusable here (other GPU or damaged); starting an empty one.", timing_cache)
            cache = config.create_timing_cache(b"")
            config.set_timing_cache(cache, ignore_mismatch=False)
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise ExportError(f"TensorRT failed to build an engine for {onnx_path} (see the TensorRT log above).")
        updated = config.get_timing_cache()
        if updated is not None:
            atomic_write(timing_cache, bytes(updated.serialize()), overwrite=True)
    return bytes(serialized)


def build_engines(
    bundle: str | Path,
    models: Mapping[str, tuple[str, Sequence[Profile]]],
    *,
    workspace_mb: int | None = None,
    force: bool = False,
    progress: bool | None = None,
) -> list[TrtEngine]:
    """Build one engine per ``model_key -> (fp16 onnx path relative to bundle, profiles)``; their manifest entries.

    Model keys are ``classifier`` and ``style.<id>``. Existing plans are kept
    unless ``force``. Needs TensorRT and a GPU.
    """
    import time

    from emostyle_rt.backends.tensorrt import runtime_identity

    root = Path(bundle)
    ident = runtime_identity()
    if ident is None:
        raise ExportError("TensorRT engines need the tensorrt and cuda-python packages and an NVIDIA GPU."
                          + note("pip install 'emostyle-rt[tensorrt]' on a CUDA machine", "no TensorRT/GPU here"))
    version, cc, gpu = ident
    key = arch_key(version, cc)
    timing_cache = root / TRT_DIR / key / TIMING_CACHE
    entries: list[TrtEngine] = []
    for model_key, (onnx_rel, profiles) in models.items():
        plan, sidecar = plan_paths(root, model_key, version, cc)
        if (plan.exists() or sidecar.exists()) and not force:
            raise ExportError(f"Engine {plan} already exists; not overwriting it." + note("force=True", "existing plan"))
        src = root / onnx_rel
        t0 = time.perf_counter()
        log.info("Building TensorRT engine %s from %s on %s (TensorRT %s)", model_key, onnx_rel, gpu, version)
        data = build_engine(src, profiles, timing_cache=timing_cache, workspace_mb=workspace_mb, progress=progress)
        atomic_write(plan, data, overwrite=force)
        side = TrtSidecar(
            model_key=model_key, plan=plan.name, plan_sha256=sha256_file(plan), plan_bytes=plan.stat().st_size,
            tensorrt_version=version, gpu_name=gpu, compute_capability=cc, source_onnx=onnx_rel,
            source_onnx_sha256=sha256_file(src), profiles=tuple(profiles), workspace_mb=workspace_mb,
            build_seconds=round(time.perf_counter() - t0, 1))
        write_sidecar(sidecar, side, overwrite=force)
        entries.append(side.entry(str(plan.relative_to(root)), str(sidecar.relative_to(root)), key))
    return entries
