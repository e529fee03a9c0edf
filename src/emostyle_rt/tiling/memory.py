"""Memory sizes and what this machine has: parsing "2GB", /proc probes, the default budgets of a process and of
a worker (the memory side of the tiling planner)."""

from __future__ import annotations

import math
import re

from ..cuda import free_memory as gpu_free  # free bytes of a CUDA device, from the driver
from ..errors import InvalidArgumentError, MemoryBudgetError, note

#: The default budget is at most this fraction of the memory available when the run starts.
BUDGET_FRACTION = 0.75
#: ... and at most what keeps the process' peak RSS at about this (the process' RSS when its Stylizer opened, plus
#: the run): a 12 MP photo no longer takes 10 GB untiled because the machine has them. Chosen by measurement at 2,
#: 12 and 48 MP (docs/tiling.md, studies/tiling/results/memory-defaults.md): with OpenVINO (557 B/px) photos up to about
#: 3.5 MP still run whole, where tiling costs the most time; larger ones go in tiles.
DEFAULT_PEAK_RSS = 2_500_000_000
#: The least budget of a worker's share (``worker_budget``; tiles of the exact mode need about 200 MB).
MIN_DEFAULT_BUDGET = 512 << 20
#: The least default budget of one process, whatever it already holds, when the machine has the room (75% of
#: MemAvailable still caps it): what a 2 MP photo (1920x1080: 1.37 GB) needs whole on the default CPU engine
#: (OpenVINO, 1.2 x 517 B/px), so such photos and 720p on onnxruntime (1.26 GB) never go to disk tiles because
#: the process is large (a notebook with torch loaded holds 2 GB and more: the 512 MB floor sent 720p to tiles).
HELD_FLOOR_BUDGET = 1_500_000_000
#: What a process holds besides a run, for budgets planned before it exists (a Stylizer with its classifier,
#: detector and a style loaded: 200-300 MB measured).
TYPICAL_HELD = 300 << 20
#: Device budget when a GPU provider runs and its free memory cannot be read.
GPU_DEFAULT_BUDGET = 4 << 30

_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9,
          "t": 10**12, "tb": 10**12, "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40}


def parse_memory(value: int | float | str) -> int:
    """A memory size in bytes: an int, or text such as "2GB", "512MiB", "1.5G", "3000000000"."""
    if isinstance(value, bool):
        raise MemoryBudgetError("A memory size cannot be a bool." + note('bytes, or text such as "2GB"', repr(value)))
    if isinstance(value, (int, float)):
        if not math.isfinite(value) or value <= 0:
            raise MemoryBudgetError("A memory size must be positive." + note("bytes > 0", repr(value)))
        return int(value)
    if isinstance(value, str):
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", value)
        unit = m.group(2).lower() if m else ""
        if m and unit in _UNITS and float(m.group(1)) > 0:
            return int(float(m.group(1)) * _UNITS[unit])
    raise MemoryBudgetError(f"Cannot read the memory size {value!r}."
                            + note('a positive size such as "2GB", "512MiB", "1.5G" or bytes', repr(value)))


def format_bytes(n: float) -> str:
    """``n`` bytes for people: "1.9 GB", "412 MB"."""
    return f"{n / 1e9:.2f} GB" if n >= 1e9 else f"{n / 1e6:.0f} MB"


def host_available() -> int | None:
    """MemAvailable of /proc/meminfo in bytes (Linux); None elsewhere."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def process_rss() -> int | None:
    """This process' resident memory (VmRSS of /proc/self/status) in bytes; None where it cannot be read."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def default_budget(gpu: bool = False, *, held: int | None = None) -> int:
    """The budget when none is given.

    Host: :data:`DEFAULT_PEAK_RSS` less ``held`` (what the process held when its
    Stylizer opened; default: its RSS now), at least :data:`HELD_FLOOR_BUDGET`,
    and at most :data:`BUDGET_FRACTION` of the memory available now. So a
    large process (a notebook with torch loaded) still runs photos up to about
    2 MP whole where the machine has room; what the machine has, not what the
    process holds, decides below that. Without /proc (not Linux) only the peak
    rule applies, with ``held`` 0 unless given. GPU: :data:`BUDGET_FRACTION` of
    the device's free memory, or :data:`GPU_DEFAULT_BUDGET` when it cannot be read.
    """
    if gpu:
        free = gpu_free()
        return int(free * BUDGET_FRACTION) if free else GPU_DEFAULT_BUDGET
    held = process_rss() if held is None else held
    budget = max(HELD_FLOOR_BUDGET, DEFAULT_PEAK_RSS - (held or 0))
    avail = host_available()
    return min(budget, int(avail * BUDGET_FRACTION)) if avail else budget


def worker_budget(workers: int, available: int | None = None) -> int:
    """The default budget of each of ``workers`` processes sharing one machine (``emostyle serve --workers``, Ray
    actors): :data:`BUDGET_FRACTION` of ``available`` (default: MemAvailable now) split between them, at most what
    one process gets by default (:data:`DEFAULT_PEAK_RSS` less a typical 300 MB held), at least
    :data:`MIN_DEFAULT_BUDGET`; so the workers' budgets add up to what the machine has."""
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise InvalidArgumentError("workers must be an integer >= 1." + note(">= 1", repr(workers)))
    one = DEFAULT_PEAK_RSS - TYPICAL_HELD
    avail = host_available() if available is None else available
    if not avail:
        return one
    return max(MIN_DEFAULT_BUDGET, min(one, int(avail * BUDGET_FRACTION) // workers))

