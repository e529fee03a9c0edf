"""Compiled artifacts of the bundle format: TensorRT plans and AOTInductor packages.

Part of the bundle format (:mod:`emostyle_rt.bundle`; the manifest, in
:mod:`.manifest`, lists these entries under ``engines`` and ``aoti``). In 0.1.0
this module was ``emostyle_rt.engines``; that path still imports it, with a
``DeprecationWarning``. Layout::

    trt/<arch-key>/<model-key>.plan    + <model-key>.plan.json   arch key:  sm90-trt10.13.3.9
    aoti/<aoti-key>/<style-id>.pt2     + <style-id>.pt2.json     aoti key:  cpu-avx512-torch2.13.0,
                                                                            cuda-sm90-torch2.11.0+cu130

An engine runs only where it was built, so each sits in a folder named after
the machine it needs, and its JSON sidecar (a separate file, so ``trtexec``,
Polygraphy or ``torch._inductor.aoti_load_package`` take the artifact as is)
says exactly what it was built for and from. The checks that decide whether an
engine may run here (:func:`sidecar_problems`, :func:`aoti_problems`) are pure
Python: nothing here imports tensorrt or torch.
"""

from __future__ import annotations

import logging
import re
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from ..errors import BackendError, BundleError, note
from ..logutil import warn_once
from .files import bundle_path, check_name, sha256_problem
from .jsonio import check_keys, read_json_object, unknown_keys_problem

log = logging.getLogger(__name__)

SIDECAR_FORMAT = 1
TRT_DIR = "trt"
#: The TensorRT timing cache of one arch folder (``trt/<arch-key>/``), kept between engine builds.
TRT_TIMING_CACHE = "timing.cache"
TRT_PRECISION = "fp16-strongly-typed"
AOTI_DIR = "aoti"
AOTI_DEVICES = ("cpu", "cuda")
AOTI_PRECISIONS = ("fp32", "fp16", "bf16")
#: CPU vector ISAs (inductor's names, best first) and the /proc/cpuinfo flags a package built for each needs.
CPU_ISA_FLAGS: dict[str, tuple[str, ...]] = {
    "avx512": ("avx512f", "avx512bw", "avx512vl", "avx512dq", "fma"),
    "avx2": ("avx2", "fma"),
    "asimd": ("asimd",),
    "default": (),
}
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+-]*")
_VERSION = re.compile(r"[0-9][0-9A-Za-z.+-]*")


@dataclass(frozen=True)
class Profile:
    """One shape range of one input: min/opt/max shapes (a TensorRT optimization profile; an AOTI package's range)."""

    input: str
    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]

    def contains(self, shape: Sequence[int]) -> bool:
        return len(shape) == len(self.min) and all(lo <= s <= hi for lo, s, hi in zip(self.min, shape, self.max))

    def fits_item(self, shape: Sequence[int]) -> bool:
        """Whether one item of ``shape`` (all dims but the batch) lies inside the range."""
        return len(shape) == len(self.min) and all(lo <= d <= hi for lo, d, hi in zip(self.min[1:], shape[1:], self.max[1:]))

    def describe(self) -> str:
        return f"{list(self.min)}..{list(self.max)}"

    def to_json(self) -> dict[str, Any]:
        return {"input": self.input, "min": list(self.min), "opt": list(self.opt), "max": list(self.max)}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Profile:
        """KeyError / TypeError / ValueError on a malformed object (callers turn it into their error)."""
        dims = [tuple(int(v) for v in d[k]) for k in ("min", "opt", "max")]
        if not (len(dims[0]) == len(dims[1]) == len(dims[2])) or not all(
                0 <= a <= b <= c for a, b, c in zip(*dims)):
            raise ValueError(f"profile {dict(d)} is not min <= opt <= max of one rank")
        return cls(str(d["input"]), *dims)


def _required(cls: type) -> set[str]:
    return {f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING}


def _from_json(cls: type, d: Any, what: str, convert: Mapping[str, Any] | None = None) -> Any:
    """``cls(**d)`` for a JSON object holding the dataclass' fields (defaults may be left out; an unknown key is
    refused, the policy of :mod:`emostyle_rt.bundle.jsonio`); :class:`BundleError` naming ``what`` otherwise."""
    convert = convert or {}
    if not isinstance(d, Mapping):
        raise BundleError(f"{what} is not a JSON object." + note("an object", type(d).__name__))
    names = {f.name for f in fields(cls)}
    check_keys(d, names, what)
    missing = sorted(_required(cls) - set(d))
    if missing:
        raise BundleError(f"{what} lacks {missing}." + note(sorted(_required(cls)), sorted(d)))
    try:
        return cls(**{k: convert[k](v) if k in convert else v for k, v in d.items()})
    except (KeyError, TypeError, ValueError) as exc:
        raise BundleError(f"{what} has a malformed field ({exc}).") from exc


def _entry_from_json(cls: type, d: Any, block: str, files: tuple[str, ...], source: str | Path | None,
                     convert: Mapping[str, Any] | None = None) -> Any:
    """One entry of the manifest's ``engines`` or ``aoti`` list.

    Args:
        cls: The entry's dataclass.
        d: The JSON object.
        block: The list's name in the manifest.
        files: The entry's fields that name bundle files (the path rule).
        source: The manifest's path, named in errors.
        convert: Field converters.

    Raises:
        BundleError: A field is missing, unknown or malformed, or a file name leaves the bundle.
    """
    what = f"Manifest {source}: {block} entry" if source is not None else f"Manifest {block} entry"
    entry = _from_json(cls, d, what, convert)
    for key in files:
        check_name(getattr(entry, key), f"{block} entry {key}", source or "manifest.json")
    return entry


def _profiles(v: Any) -> tuple[Profile, ...]:
    return tuple(Profile.from_json(p) for p in v)


# ---------------------------------------------------------------- TensorRT


def arch_key(trt_version: str, compute_capability: str | tuple[int, int]) -> str:
    """Folder name for one GPU architecture and TensorRT version, e.g. ``sm90-trt10.13.3.9``."""
    cc = compute_capability if isinstance(compute_capability, str) else f"{compute_capability[0]}.{compute_capability[1]}"
    if not re.fullmatch(r"\d+\.\d+", cc) or not _VERSION.fullmatch(trt_version):
        raise BackendError("Bad TensorRT version or compute capability." + note("'10.13.3.9' and '9.0'", (trt_version, cc)))
    return f"sm{cc.replace('.', '')}-trt{trt_version}"


def _check_name(name: str, what: str) -> str:
    if not _NAME.fullmatch(name):
        raise BackendError(f"Bad {what}." + note("letters, digits, '_', '.', '+', '-', not starting with '.'", name))
    return name


def plan_paths(bundle_root: str | Path, model_key: str, trt_version: str, compute_capability: str) -> tuple[Path, Path]:
    """(plan, sidecar) paths of ``model_key`` (``classifier`` or ``style.<id>``) for this GPU."""
    _check_name(model_key, "engine model key")
    folder = Path(bundle_root) / TRT_DIR / arch_key(trt_version, compute_capability)
    return folder / f"{model_key}.plan", folder / f"{model_key}.plan.json"


#: The runtime graph key of the classifier; every other graph key is a style id.
CLASSIFIER_KEY = "classifier"


def model_key_for(key: str) -> str:
    """Engine model key of a runtime graph key: ``classifier`` or ``style.<style-id>``.

    The one owner of that naming (plan files ``trt/<arch-key>/<model-key>.plan``, the
    manifest's ``engines[].model_key``).

    Args:
        key: :data:`CLASSIFIER_KEY` or a style id.
    """
    return CLASSIFIER_KEY if key == CLASSIFIER_KEY else f"style.{key}"


@dataclass(frozen=True)
class TrtSidecar:
    """The ``<model-key>.plan.json`` next to a TensorRT plan."""

    model_key: str
    plan: str  # file name, in the sidecar's folder
    plan_sha256: str
    plan_bytes: int
    tensorrt_version: str
    gpu_name: str
    compute_capability: str
    source_onnx: str  # the FP16 graph it was built from, relative to the bundle
    source_onnx_sha256: str
    profiles: tuple[Profile, ...]
    precision: str = TRT_PRECISION
    workspace_mb: int | None = None
    build_seconds: float = 0.0
    created: str = ""
    format: int = SIDECAR_FORMAT

    def to_json(self) -> dict[str, Any]:
        return {"format": self.format, "model_key": self.model_key, "plan": self.plan, "plan_sha256": self.plan_sha256,
                "plan_bytes": self.plan_bytes, "precision": self.precision, "tensorrt_version": self.tensorrt_version,
                "gpu_name": self.gpu_name, "compute_capability": self.compute_capability,
                "source_onnx": self.source_onnx, "source_onnx_sha256": self.source_onnx_sha256,
                "profiles": [p.to_json() for p in self.profiles], "workspace_mb": self.workspace_mb,
                "build_seconds": self.build_seconds, "created": self.created}

    def entry(self, plan: str, sidecar: str, arch_key: str) -> TrtEngine:
        """The manifest's ``engines`` entry for this sidecar (``plan``/``sidecar`` relative to the bundle)."""
        return TrtEngine(self.model_key, plan, sidecar, arch_key, self.tensorrt_version, self.gpu_name,
                         self.compute_capability, self.plan_sha256, self.profiles)

    @classmethod
    def from_json(cls, d: Any) -> TrtSidecar:
        return _from_json(cls, d, "TensorRT engine sidecar", {"profiles": _profiles})


@dataclass(frozen=True)
class TrtEngine:
    """One entry of the manifest's ``engines`` list (the sidecar holds the rest)."""

    model_key: str
    plan: str  # relative to the bundle
    sidecar: str
    arch_key: str
    tensorrt_version: str
    gpu_name: str
    compute_capability: str
    plan_sha256: str
    profiles: tuple[Profile, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"model_key": self.model_key, "plan": self.plan, "sidecar": self.sidecar, "arch_key": self.arch_key,
                "tensorrt_version": self.tensorrt_version, "gpu_name": self.gpu_name,
                "compute_capability": self.compute_capability, "plan_sha256": self.plan_sha256,
                "profiles": [p.to_json() for p in self.profiles]}

    @classmethod
    def from_json(cls, d: Any, source: str | Path | None = None) -> TrtEngine:
        """One entry of the manifest's ``engines`` list (see :func:`_entry_from_json`)."""
        return _entry_from_json(cls, d, "engines", ("plan", "sidecar"), source, {"profiles": _profiles})


def read_sidecar(sidecar: Path) -> dict[str, Any]:
    """The sidecar as a dict; :class:`BundleError` when unreadable."""
    return read_json_object(sidecar, "Engine sidecar")


def _inside(bundle_root: str | Path, *paths: Path) -> None:
    """The path rule for engine files found by name: BundleError when one leads (a symlink) outside the bundle."""
    for path in paths:
        bundle_path(bundle_root, path.relative_to(bundle_root).as_posix())


def _file_problems(path: Path, size: Any, digest: Any, check_hash: bool, what: str) -> list[str]:
    """The artifact named by a sidecar: present, of the recorded size and sha256."""
    if not path.is_file():
        return [f"{what} file {path.name} is missing"]
    if path.stat().st_size != size:
        return [f"{what} is {path.stat().st_size} bytes, sidecar says {size} (truncated?)"]
    if check_hash and sha256_problem(path, digest):
        return [f"{what} sha256 does not match its sidecar (corrupt or replaced)"]
    return []


def sidecar_problems(
    data: Mapping[str, Any],
    plan: Path,
    trt_version: str,
    compute_capability: str,
    *,
    source_sha256: str | None = None,
    check_plan_hash: bool = True,
) -> list[str]:
    """Reasons the plan must not be used here (empty: usable).

    Args:
        data: The sidecar as read from JSON (an unknown key is one of the reasons: the bundle format's policy).
        plan: The plan file it describes.
        trt_version: This machine's TensorRT version.
        compute_capability: This GPU's, e.g. "9.0".
        source_sha256: The FP16 graph the plan must have been built from (None: not compared).
        check_plan_hash: Compare the plan's sha256 too (its size always).
    """
    problems: list[str] = []
    unknown = unknown_keys_problem(data, {f.name for f in fields(TrtSidecar)}, "the sidecar")
    if unknown:
        problems.append(unknown.rstrip("."))
    if data.get("format") != SIDECAR_FORMAT:
        problems.append(f"sidecar format {data.get('format')!r}, expected {SIDECAR_FORMAT}")
    if data.get("tensorrt_version") != trt_version:
        problems.append(f"built with TensorRT {data.get('tensorrt_version')}, running {trt_version}")
    if data.get("compute_capability") != compute_capability:
        problems.append(f"built for compute capability {data.get('compute_capability')} ({data.get('gpu_name')}), "
                        f"this GPU is {compute_capability}")
    if data.get("precision") != TRT_PRECISION:
        problems.append(f"precision {data.get('precision')!r}, expected {TRT_PRECISION!r}")
    if source_sha256 is not None and data.get("source_onnx_sha256") != source_sha256:
        problems.append("built from a different ONNX file than the bundle holds (stale engine)")
    try:
        profiles = _profiles(data.get("profiles", []))
    except (KeyError, TypeError, ValueError):
        profiles = ()
    if not profiles:
        problems.append("no valid optimization profiles recorded")
    return problems + _file_problems(plan, data.get("plan_bytes"), data.get("plan_sha256"), check_plan_hash, "plan")


def find_engine(
    bundle_root: str | Path,
    model_key: str,
    trt_version: str,
    compute_capability: str,
    *,
    source_sha256: str | None = None,
) -> Path | None:
    """The plan to use for ``model_key`` on this GPU/TensorRT, or None (with a warning saying why).

    Args:
        bundle_root: The bundle folder (a plan or sidecar that leads out of it is not used).
        model_key: ``classifier`` or ``style.<id>`` (:func:`model_key_for`).
        trt_version: This machine's TensorRT version.
        compute_capability: This GPU's, e.g. "9.0".
        source_sha256: The FP16 graph the plan must have been built from (None: not compared).
    """
    plan, sidecar = plan_paths(bundle_root, model_key, trt_version, compute_capability)
    here = arch_key(trt_version, compute_capability)
    if not sidecar.is_file():
        others = sorted(p.parent.name for p in (Path(bundle_root) / TRT_DIR).glob(f"*/{model_key}.plan.json"))
        if others:
            log.warning("No TensorRT engine for %s on %s; falling back to onnxruntime.%s", model_key, here,
                        note(here, others))
        return None
    try:
        _inside(bundle_root, plan, sidecar)
        data = read_sidecar(sidecar)
    except BundleError as exc:
        log.warning("%s Falling back to onnxruntime.", exc)
        return None
    problems = sidecar_problems(data, plan, trt_version, compute_capability, source_sha256=source_sha256)
    if problems:
        log.warning("TensorRT engine %s is not usable: %s. Falling back to onnxruntime.", plan, "; ".join(problems))
        return None
    return plan


# ---------------------------------------------------------------- AOTInductor


def aoti_key(device: str, arch: str, torch_version: str) -> str:
    """Folder name for one device kind, architecture and torch build, e.g. ``cpu-avx512-torch2.13.0``."""
    if device not in AOTI_DEVICES or not re.fullmatch(r"[a-z0-9_]+", arch) or not _VERSION.fullmatch(torch_version):
        raise BackendError("Bad AOTInductor device, architecture or torch version."
                           + note(f"device in {list(AOTI_DEVICES)}, arch like 'sm90' or 'avx2', version like '2.13.0'",
                                  (device, arch, torch_version)))
    return f"{device}-{arch}-torch{torch_version}"


def package_paths(bundle_root: str | Path, style_id: str, key: str) -> tuple[Path, Path]:
    """(package, sidecar) paths of style ``style_id`` in the AOTI folder ``key``."""
    _check_name(style_id, "style id")
    _check_name(key, "AOTInductor folder key")
    folder = Path(bundle_root) / AOTI_DIR / key
    return folder / f"{style_id}.pt2", folder / f"{style_id}.pt2.json"


@dataclass(frozen=True)
class AotiSidecar:
    """The ``<style-id>.pt2.json`` next to an AOTInductor package: what it was built for and from, and its gate."""

    style_id: str
    package: str  # file name, in the sidecar's folder
    package_sha256: str
    package_bytes: int
    device: str  # "cpu" or "cuda"
    arch: str  # "sm90" (CUDA) or the CPU vector ISA ("avx512", "avx2", ...)
    torch_version: str  # the torch distribution's version, e.g. "2.11.0+cu130"
    precision: str  # compute precision inside: fp32, fp16 or bf16 (I/O is uint8 either way)
    profile: Profile  # NHWC uint8 range: batch, height and width
    source_onnx: str  # the FP32 graph its weights came from, relative to the bundle
    source_onnx_sha256: str
    convention: str
    multiple: int = 4  # height and width must be multiples of this
    cuda_version: str | None = None
    driver_version: str | None = None
    gpu_name: str | None = None
    compute_capability: str | None = None
    cpu_isa: str | None = None
    parity: Mapping[str, Any] = field(default_factory=dict)
    build_seconds: float = 0.0
    created: str = ""
    format: int = SIDECAR_FORMAT

    @property
    def key(self) -> str:
        return aoti_key(self.device, self.arch, self.torch_version)

    def accepts(self, shape: Sequence[int]) -> bool:
        """Whether one item of an NHWC input of ``shape`` runs in this package (the batch is split by the runner)."""
        return (self.profile.fits_item(shape) and len(shape) == 4
                and shape[1] % self.multiple == 0 and shape[2] % self.multiple == 0)

    def to_json(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["profile"], d["parity"] = self.profile.to_json(), dict(self.parity)
        return d

    @classmethod
    def from_json(cls, d: Any) -> AotiSidecar:
        return _from_json(cls, d, "AOTInductor package sidecar", {"profile": Profile.from_json})


@dataclass(frozen=True)
class AotiEntry:
    """One entry of the manifest's ``aoti`` list (the sidecar holds the rest)."""

    style_id: str
    package: str  # relative to the bundle
    sidecar: str
    key: str
    device: str
    precision: str
    package_sha256: str
    parity: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"style_id": self.style_id, "package": self.package, "sidecar": self.sidecar, "key": self.key,
                "device": self.device, "precision": self.precision, "package_sha256": self.package_sha256,
                "parity": dict(self.parity)}

    @classmethod
    def from_json(cls, d: Any, source: str | Path | None = None) -> AotiEntry:
        """One entry of the manifest's ``aoti`` list (see :func:`_entry_from_json`)."""
        return _entry_from_json(cls, d, "aoti", ("package", "sidecar"), source)


@dataclass(frozen=True)
class AotiHost:
    """What a machine offers AOTInductor packages (read without importing torch)."""

    torch_version: str | None  # None: no torch installed
    cpu_isas: tuple[str, ...] = ("default",)  # every ISA of CPU_ISA_FLAGS this CPU runs
    compute_capability: str | None = None  # None: no CUDA GPU
    gpu_name: str | None = None
    cpu_flags: frozenset[str] = frozenset()  # /proc/cpuinfo flags

    def keys(self, device: str) -> list[str]:
        """Folder keys a package for ``device`` may sit in here, best first."""
        if self.torch_version is None:
            return []
        if device == "cuda":
            cc = self.compute_capability
            return [] if cc is None else [aoti_key("cuda", "sm" + cc.replace(".", ""), self.torch_version)]
        return [aoti_key("cpu", isa, self.torch_version) for isa in self.cpu_isas]


def cpu_isas(flags: Iterable[str]) -> tuple[str, ...]:
    """The CPU vector ISAs (best first) a CPU with these /proc/cpuinfo ``flags`` runs."""
    have = set(flags)
    return tuple(isa for isa, need in CPU_ISA_FLAGS.items() if set(need) <= have)


def isa_flags(isa: str) -> set[str]:
    """The /proc/cpuinfo flags code built for inductor's vector ISA ``isa`` needs.

    ``isa`` is inductor's name, e.g. "avx512 avx512_vnni": a base ISA of
    :data:`CPU_ISA_FLAGS`, then extensions named like their cpuinfo flags.
    """
    out: set[str] = set()
    for token in isa.split():
        out |= set(CPU_ISA_FLAGS.get(token, (token,)))
    return out


def aoti_problems(
    side: AotiSidecar, package: Path, host: AotiHost, *, source_sha256: str | None = None, check_hash: bool = True
) -> list[str]:
    """Reasons the package must not be used on ``host`` (empty: usable)."""
    problems: list[str] = []
    if side.format != SIDECAR_FORMAT:
        problems.append(f"sidecar format {side.format!r}, expected {SIDECAR_FORMAT}")
    if side.torch_version != host.torch_version:
        problems.append(f"built with torch {side.torch_version}, this machine has "
                        f"{host.torch_version or 'no torch (pip install emostyle-rt[aoti])'}")
    if side.device == "cuda" and side.compute_capability != host.compute_capability:
        problems.append(f"built for compute capability {side.compute_capability} ({side.gpu_name}), "
                        f"this machine has {host.compute_capability or 'no CUDA GPU'}")
    if side.device == "cpu":
        lacking = sorted(isa_flags(side.cpu_isa or side.arch) - host.cpu_flags)
        if side.arch not in host.cpu_isas or lacking:
            problems.append(f"built for CPU ISA {side.cpu_isa or side.arch}, this CPU lacks {lacking or side.arch}")
    if side.device not in AOTI_DEVICES or side.precision not in AOTI_PRECISIONS:
        problems.append(f"device {side.device!r} / precision {side.precision!r} unknown")
    if source_sha256 is not None and side.source_onnx_sha256 != source_sha256:
        problems.append("built from a different ONNX file than the bundle holds (stale package)")
    return problems + _file_problems(package, side.package_bytes, side.package_sha256, check_hash, "package")


#: (path, reason) pairs already warned about: each is said once per process.
_WARNED: set[tuple[str, str]] = set()


def _warn_once(path: Path, reason: str) -> None:
    warn_once(log, _WARNED, (str(path), reason), "AOTInductor package %s is not usable: %s. Falling back.", path, reason)


def find_package(
    bundle_root: str | Path, style_id: str, host: AotiHost, devices: Sequence[str], *, source_sha256: str | None = None
) -> tuple[Path, AotiSidecar] | None:
    """The package to run ``style_id`` on the first of ``devices`` that has a usable one, or None.

    Packages built for other machines are skipped silently when one fits; when
    none does, each reason is warned about once per process.

    Args:
        bundle_root: The bundle folder (a package or sidecar that leads out of it is not used).
        style_id: The style.
        host: What this machine offers.
        devices: The devices to try, in order ("cpu", "cuda").
        source_sha256: The FP32 style graph the package must have been built from (None: not compared).
    """
    rejected: list[tuple[Path, str]] = []
    for device in devices:
        for key in host.keys(device):
            pkg, sidecar = package_paths(bundle_root, style_id, key)
            if not sidecar.is_file():
                continue
            try:
                _inside(bundle_root, pkg, sidecar)
                side = AotiSidecar.from_json(read_json_object(sidecar, "AOTInductor sidecar"))
            except BundleError as exc:
                rejected.append((pkg, str(exc)))
                continue
            problems = aoti_problems(side, pkg, host, source_sha256=source_sha256)
            if not problems and side.style_id == style_id and side.device == device:
                return pkg, side
            rejected.append((pkg, "; ".join(problems) or "sidecar names another style or device"))
    others = sorted(p.parent.name for p in (Path(bundle_root) / AOTI_DIR).glob(f"*/{style_id}.pt2.json")
                    if p.parent.name.split("-")[0] in devices)
    for pkg, why in rejected:
        _warn_once(pkg, why)
    if others and not rejected:
        here = [k for d in devices for k in host.keys(d)]
        _warn_once(Path(bundle_root) / AOTI_DIR / "*" / f"{style_id}.pt2",
                   f"none was built for this machine ({' or '.join(here) or 'no torch here'}; the bundle has "
                   f"{', '.join(others)})")
    return None
