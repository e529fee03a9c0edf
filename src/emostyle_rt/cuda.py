"""The CUDA driver (libcuda) through ctypes: device count, identity, free memory, driver version.

The one place that opens libcuda: onnxruntime's provider choice, the
AOTInductor host check, the tiling budget and the export's engine identity ask
here. Nothing needs the CUDA toolkit, cuda-python or torch; every function
answers None or 0 on a machine without a driver or GPU. The library is opened
at each call (``dlopen`` of a loaded library is cheap), so nothing goes stale.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import sys

#: CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR / _MINOR (cuda.h).
_CC_MAJOR, _CC_MINOR = 75, 76


@functools.lru_cache(maxsize=1)
def _found() -> str | None:
    """The driver library ``ctypes.util.find_library`` finds (it runs ldconfig: asked once)."""
    return ctypes.util.find_library("cuda")


def libcuda() -> ctypes.CDLL | None:
    """The CUDA driver library (``libcuda.so.1``, else what the loader finds; ``nvcuda.dll`` on Windows), or None."""
    names = ["nvcuda.dll"] if sys.platform == "win32" else ["libcuda.so.1"]
    for name in names:
        try:
            return ctypes.CDLL(name)
        except OSError:
            continue
    found = None if sys.platform == "win32" else _found()
    if found is not None:
        try:
            return ctypes.CDLL(found)
        except OSError:
            pass
    return None


def _ok(status: int) -> bool:
    return status == 0


@functools.lru_cache(maxsize=1)
def device_count() -> int:
    """Number of CUDA devices the driver reports; 0 without a driver or GPU (cached for the process)."""
    lib, count = libcuda(), ctypes.c_int(0)
    if lib is None or not _ok(lib.cuInit(0)) or not _ok(lib.cuDeviceGetCount(ctypes.byref(count))):
        return 0
    return count.value


@functools.lru_cache(maxsize=8)
def device_identity(device: int = 0) -> tuple[str, str] | None:
    """(compute capability "major.minor", name) of a CUDA device, or None without one (cached).

    Args:
        device: The device ordinal.
    """
    lib = libcuda()
    if lib is None:
        return None
    dev, major, minor = ctypes.c_int(0), ctypes.c_int(0), ctypes.c_int(0)
    buf = ctypes.create_string_buffer(256)
    if (not _ok(lib.cuInit(0)) or not _ok(lib.cuDeviceGet(ctypes.byref(dev), device))
            or not _ok(lib.cuDeviceGetAttribute(ctypes.byref(major), _CC_MAJOR, dev))
            or not _ok(lib.cuDeviceGetAttribute(ctypes.byref(minor), _CC_MINOR, dev))):
        return None
    lib.cuDeviceGetName(buf, 256, dev)
    return f"{major.value}.{minor.value}", buf.value.decode(errors="replace")


def free_memory(device: int = 0) -> int | None:
    """Free bytes of a CUDA device (``cuMemGetInfo`` in its primary context, always released); None if unknown.

    Args:
        device: The device ordinal.
    """
    lib = libcuda()
    if lib is None:
        return None
    dev, ctx = ctypes.c_int(0), ctypes.c_void_p()
    free, total = ctypes.c_size_t(0), ctypes.c_size_t(0)
    try:
        if lib.cuInit(0) or lib.cuDeviceGet(ctypes.byref(dev), device) \
                or lib.cuDevicePrimaryCtxRetain(ctypes.byref(ctx), dev):
            return None
        try:
            if lib.cuCtxPushCurrent_v2(ctx):
                return None
            ok = lib.cuMemGetInfo_v2(ctypes.byref(free), ctypes.byref(total)) == 0
            lib.cuCtxPopCurrent_v2(ctypes.byref(ctypes.c_void_p()))
            return int(free.value) if ok else None
        finally:
            lib.cuDevicePrimaryCtxRelease_v2(dev)
    except AttributeError:  # a driver without these entry points
        return None


def driver_version() -> str | None:
    """The driver's CUDA version ("13.0", from ``cuDriverGetVersion``), or None without a driver."""
    lib = libcuda()
    v = ctypes.c_int(0)
    if lib is None or not _ok(lib.cuDriverGetVersion(ctypes.byref(v))):
        return None
    return f"{v.value // 1000}.{v.value % 1000 // 10}"
