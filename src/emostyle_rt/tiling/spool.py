"""The exact mode's spool: whole-image activations kept in RAM up to a limit, the rest in float32 files read and
written with ``pread``/``pwrite`` (never mapped), removed at the end, also on error."""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any, Iterable, Iterator

import numpy as np

from ..errors import EmostyleError, note
from ..manifest import TiledSpec

#: A read buffer of the exact mode's spool is kept for the next segment's strips when it is at most this many
#: times what they read (so held memory stays near what the strips need; res-block strips alternate 1.48x sizes).
READ_SLACK = 1.5
#: Where the exact mode spools activations ($EMOSTYLE_SPOOL_DIR, else the system's temp folder).
SPOOL_ENV = "EMOSTYLE_SPOOL_DIR"


class _Spool:
    """Whole-image float32 activations (C x H x W each): in RAM up to ``ram_limit`` bytes, else in files.

    A tensor goes to RAM when it fits beside those already there when it is
    created, else to a file in a temporary folder, written and read by rows with
    pwrite/preadv (not memory-mapped: mapped pages would count in the process'
    RSS). The decision depends on the sizes only (:func:`spool_layout` predicts
    it). :meth:`close` removes the folder (also on error).
    """

    def __init__(self, ram_limit: int = 0, root: str | None = None) -> None:
        self.ram_limit, self.ram_used, self.ram_peak, self.disk_bytes = ram_limit, 0, 0, 0
        self._root = root
        self.dir: str | None = None
        self._ram: dict[str, np.ndarray] = {}
        self._free: list[np.ndarray] = []  # dropped RAM tensors' buffers, kept for reuse within the limit
        self._files: dict[str, tuple[int, int, int, int]] = {}  # name -> (fd, C, H, W)
        self._reads: dict[str, np.ndarray] = {}  # name -> the flat buffer its strips are read into (this segment)
        self._read_pool: list[np.ndarray] = []  # the last segment's read buffers, kept for the next one
        self._made = 0

    def create(self, name: str, channels: int, height: int, width: int) -> None:
        size = 4 * channels * height * width
        shape = (channels, height, width)
        if self.ram_used + size <= self.ram_limit:
            # a dropped tensor's buffer of the same shape is reused (its pages are mapped already: a fresh one
            # costs a page fault per 4 kB); others are let go, oldest first, while they and the new one would not
            # fit (held memory never exceeds the limit)
            buf = next((b for b in self._free if b.shape == shape), None)
            self._free = [b for b in self._free if b is not buf]
            while self._free and sum(b.nbytes for b in self._free) + self.ram_used + size > self.ram_limit:
                self._free.pop(0)
            self._ram[name] = buf if buf is not None else np.empty(shape, np.float32)
            self.ram_used += size
            self.ram_peak = max(self.ram_peak, self.ram_used)
            return
        if self.dir is None:
            self.dir = tempfile.mkdtemp(prefix="emostyle-tiles-", dir=spool_root(self._root))
        path = os.path.join(self.dir, f"t{self._made}.f32")
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        self._made += 1
        try:  # unlinked at once: its space comes back when it is dropped, or when the process dies
            os.unlink(path)
        except OSError:  # Windows cannot unlink an open file: close() removes the folder
            pass
        self.disk_bytes += size
        self._files[name] = (fd, channels, height, width)

    def __contains__(self, name: str) -> bool:
        return name in self._files or name in self._ram

    def write(self, name: str, row: int, block: np.ndarray) -> None:
        """Rows ``row:row + block.shape[1]`` of every channel from ``block`` (C x rows x W, float32)."""
        if name in self._ram:
            self._ram[name][:, row:row + block.shape[1]] = block
            return
        fd, c, h, w = self._files[name]
        for ch in range(c):
            data = memoryview(np.ascontiguousarray(block[ch], np.float32)).cast("B")
            offset, done = (ch * h + row) * w * 4, 0
            while done < len(data):
                done += os.pwrite(fd, data[done:], offset + done)

    def read(self, name: str, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop`` of every channel as a 1 x C x rows x W float32 array.

        The array is a view of a buffer that this tensor's next read reuses (a
        strip's input is used before the next strip is read), and, after
        :meth:`release_reads`, the next segment's reads: a fresh buffer of a
        strip's size costs a page fault per page on every read (measured on this
        project's KVM machine: 0.9 s for 384 MB fresh, 0.06 s mapped). A kept
        buffer is at most :data:`READ_SLACK` times the read it serves.
        """
        src = self._ram.get(name)
        c, w = (src.shape[0], src.shape[2]) if src is not None else self._files[name][1::2]
        shape = (1, c, stop - start, w)
        out = self._read_buffer(name, c * (stop - start) * w)[:c * (stop - start) * w].reshape(shape)
        if src is not None:
            np.copyto(out[0], src[:, start:stop])
            return out
        fd, c, h, w = self._files[name]
        for ch in range(c):
            view = memoryview(out[0, ch]).cast("B")
            offset, done = (ch * h + start) * w * 4, 0
            while done < len(view):
                n = os.preadv(fd, [view[done:]], offset + done)
                if n <= 0:
                    raise EmostyleError(f"The tile spool {self.dir} was truncated while running (disk full?)."
                                        + note(f"{len(view)} bytes", done))
                done += n
        return out

    def drop(self, name: str) -> None:
        if name in self._ram:
            buf = self._ram.pop(name)
            self.ram_used -= buf.nbytes
            self._free.append(buf)  # kept for reuse; create() lets it go before the limit is passed
        else:
            os.close(self._files.pop(name)[0])

    def _read_buffer(self, name: str, count: int) -> np.ndarray:
        """A flat float32 buffer of at least ``count`` items for reads of ``name``: its own, a kept one, or new."""
        buf = self._reads.get(name)
        if buf is None or buf.size < count:
            fits = [b for b in self._read_pool if b.size >= count]
            buf = min(fits, key=lambda b: b.size) if fits else np.empty(count, np.float32)
            self._read_pool = [b for b in self._read_pool if b is not buf]
            self._reads[name] = buf  # a smaller one of this name is let go
        return buf

    def release_reads(self, sizes: Iterable[int] = ()) -> None:
        """End of a segment: its read buffers are let go, but for one per item count in ``sizes`` (the next
        segment's reads of one strip) of at least that and at most :data:`READ_SLACK` times it, kept for them."""
        pool, self._reads = list(self._read_pool) + list(self._reads.values()), {}
        self._read_pool = []
        for count in sorted(sizes, reverse=True):
            fits = [b for b in pool if count <= b.size <= READ_SLACK * count]
            if fits:
                buf = min(fits, key=lambda b: b.size)
                pool = [b for b in pool if b is not buf]
                self._read_pool.append(buf)

    def close(self) -> None:
        for name in list(self._files) + list(self._ram):
            self.drop(name)
        self._free, self._reads, self._read_pool = [], {}, []
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)


def _spool_events(spec: TiledSpec) -> Iterator[tuple[int, str, Any]]:
    """(segment, "create" | "drop", tensor) in the order the exact mode does them."""
    segs = spec.segments
    last_use = {t.name: i for i, g in enumerate(segs) for t in g.inputs}
    for i, g in enumerate(segs):
        if i < len(segs) - 1 and not g.stats_only:
            for t in g.outputs:
                yield i, "create", t
        for t in g.inputs:
            if last_use.get(t.name) == i and t.name != segs[0].inputs[0].name:
                yield i, "drop", t


def spool_layout(spec: TiledSpec, height: int, width: int, ram_limit: int) -> tuple[int, int, int]:
    """(peak RAM, bytes written to disk, peak bytes on disk) of the exact mode's spool, as :class:`_Spool` places it."""
    used = peak = disk = on_disk = disk_peak = 0
    where: dict[str, int] = {}
    files: dict[str, int] = {}
    for _, what, t in _spool_events(spec):
        size = 4 * t.channels * (height // t.scale) * (width // t.scale)
        if what == "create":
            if used + size <= ram_limit:
                used += size
                peak = max(peak, used)
                where[t.name] = size
            else:
                disk += size
                on_disk += size
                files[t.name] = size
                disk_peak = max(disk_peak, on_disk)
        elif t.name in where:
            used -= where.pop(t.name)
        elif t.name in files:
            on_disk -= files.pop(t.name)
    return peak, disk, disk_peak


def spool_root(spool_dir: str | None = None) -> str:
    """The folder the spool's temporary folder goes into: ``spool_dir``, else $EMOSTYLE_SPOOL_DIR, else the temp folder."""
    return spool_dir or os.environ.get(SPOOL_ENV) or tempfile.gettempdir()

