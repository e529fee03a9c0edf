"""Machine info recorded with every result: CPU, cores, GPU, library versions, load."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
from dataclasses import dataclass
from importlib import metadata

LIBRARIES = ("emostyle-rt", "numpy", "onnxruntime", "onnxruntime-gpu", "opencv-python-headless", "torch",
             "tensorflow-cpu", "tensorflow", "keras", "tensorrt", "scikit-image")


@dataclass(frozen=True)
class MachineInfo:
    """Where a benchmark ran."""

    cpu: str
    logical_cores: int
    usable_cores: int
    memory_gb: float
    gpu: str  # "none" without a CUDA GPU
    os: str
    python: str
    libraries: tuple[tuple[str, str], ...]
    load_avg_start: tuple[float, float, float]


def cpu_model() -> str:
    """The CPU's model name (Linux /proc/cpuinfo, else platform)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def gpu_name() -> str:
    """GPU names from nvidia-smi, or "none"."""
    from emostyle_rt.backends.ort import cuda_device_count

    if cuda_device_count() == 0:
        return "none"
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            out = subprocess.run([smi, "--query-gpu=name,driver_version", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=20, check=False).stdout
            names = [line.strip() for line in out.splitlines() if line.strip()]
            if names:
                return "; ".join(names)
        except (OSError, subprocess.SubprocessError):
            pass
    return f"{cuda_device_count()} CUDA device(s)"


def _memory_gb() -> float:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9
    except (ValueError, OSError, AttributeError):
        return 0.0


def library_versions() -> tuple[tuple[str, str], ...]:
    """Installed versions (from package metadata, nothing imported)."""
    found = []
    for dist in LIBRARIES:
        try:
            found.append((dist, metadata.version(dist)))
        except metadata.PackageNotFoundError:
            continue
    return tuple(found)


def load_average() -> tuple[float, float, float]:
    try:
        return tuple(round(x, 2) for x in os.getloadavg())  # type: ignore[return-value]
    except (OSError, AttributeError):
        return (0.0, 0.0, 0.0)


def collect() -> MachineInfo:
    """Describe this machine."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return MachineInfo(
        cpu=cpu_model(),
        logical_cores=os.cpu_count() or 1,
        usable_cores=usable,
        memory_gb=round(_memory_gb(), 1),
        gpu=gpu_name(),
        os=f"{platform.system()} {platform.release()}",
        python=sys.version.split()[0],
        libraries=library_versions(),
        load_avg_start=load_average(),
    )
