"""The request batcher: requests that arrive together share one classifier run and one style run per style.

Requests are put on a bounded queue (full: ``ServiceBusyError``, answered 429
with Retry-After; memory never grows with the load). One thread takes up to
``max_batch`` of them, waiting at most ``max_wait`` after the oldest arrived, and
runs them through the ``Stylizer``'s batch APIs: every image that needs its
emotion goes into one ``classify_batch`` (all face crops in one classifier
run), then each group of images with the same style and ``max_side`` into one
``stylize_batch`` (same-size images stacked into one run). One thread, because
one onnxruntime run already uses every core (and on a GPU runs serialize anyway);
decoding and encoding happen in the app's thread pool meanwhile.

A bad image fails only its own request: a group whose batch call raises a typed
error is rerun one image at a time, so each request gets its own result or its
own typed error. ``close()`` stops taking new requests and finishes the queued ones.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import defaultdict, deque
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Sequence

import numpy as np

from emostyle_rt.errors import EmostyleError, note
from emostyle_rt.stylizer import Classification, StyleResult, Stylizer

from .errors import ServiceBusyError, ServiceUnavailableError

log = logging.getLogger(__name__)

#: Retry-After is this estimate clamped to [1, MAX_RETRY_AFTER] seconds.
MAX_RETRY_AFTER = 60


@dataclass(eq=False)
class Job:
    """One request's work: classify only, or stylize (``emotion`` None: classify first)."""

    image: np.ndarray
    emotion: str | None = None
    max_side: int | None = None
    classify_only: bool = False
    future: Future = field(default_factory=Future)
    queued: float = field(default_factory=time.monotonic)


@dataclass(frozen=True)
class BatchStats:
    """What one batch did (passed to ``on_batch``; the metrics observe it)."""

    size: int
    classified: int
    style_runs: int
    seconds: float


class Batcher:
    """Runs queued requests in batches on one thread. ``submit`` is thread-safe and never blocks."""

    def __init__(self, stylizer: Stylizer, *, max_batch: int = 8, max_wait: float = 0.005, capacity: int = 32,
                 on_batch: Callable[[BatchStats], None] | None = None,
                 on_depth: Callable[[int], None] | None = None) -> None:
        self.stylizer, self.max_batch, self.max_wait, self.capacity = stylizer, max_batch, max_wait, capacity
        self._on_batch, self._on_depth = on_batch, on_depth
        self._queue: deque[Job] = deque()
        self._cond = threading.Condition()
        self._closing = False
        self._per_image = 0.0  # moving average of seconds per image, for Retry-After
        self._settled: dict[Job, tuple[bool, Any]] = {}  # this batch's answers (the batcher thread's own)
        self._thread = threading.Thread(target=self._loop, name="emostyle-batcher", daemon=True)
        self._thread.start()

    # -- producer side -------------------------------------------------------------------------

    @property
    def depth(self) -> int:
        """Requests waiting (not yet taken into a batch)."""
        return len(self._queue)

    def retry_after(self, waiting: int | None = None) -> int:
        """Seconds a refused client should wait: the queue's drain time as measured so far, at least 1."""
        n = self.depth if waiting is None else waiting
        return int(min(MAX_RETRY_AFTER, max(1, math.ceil(n * self._per_image))))

    def submit(self, job: Job) -> Future:
        """Queue ``job``; its ``future`` gets a ``StyleResult`` / ``Classification`` or the typed error."""
        with self._cond:
            if self._closing:
                raise ServiceUnavailableError("The service is shutting down and takes no new requests."
                                              + note("a running service", "one draining its queue"))
            if len(self._queue) >= self.capacity:
                raise ServiceBusyError(
                    f"The request queue is full ({self.capacity} waiting); try again after Retry-After seconds."
                    + note(f"fewer than {self.capacity} waiting requests", len(self._queue)),
                    retry_after=self.retry_after(len(self._queue)))
            self._queue.append(job)
            depth = len(self._queue)
            self._cond.notify()
        if self._on_depth:
            self._on_depth(depth)
        return job.future

    def close(self, timeout: float | None = None) -> bool:
        """Take no new requests, finish the queued ones, stop the thread; whether it stopped within ``timeout``."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._thread.join(timeout)
        return not self._thread.is_alive()

    # -- the batching thread -------------------------------------------------------------------

    def _take(self) -> list[Job]:
        """The next batch: waits for a first job, then up to ``max_wait`` after it arrived for more."""
        with self._cond:
            while not self._queue and not self._closing:
                self._cond.wait()
            if not self._queue:
                return []
            deadline = self._queue[0].queued + self.max_wait
            while len(self._queue) < self.max_batch and not self._closing:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            jobs = [self._queue.popleft() for _ in range(min(self.max_batch, len(self._queue)))]
            depth = len(self._queue)
        if self._on_depth:
            self._on_depth(depth)
        return [j for j in jobs if j.future.set_running_or_notify_cancel()]  # a cancelled request is skipped

    def _loop(self) -> None:
        while True:
            jobs = self._take()
            if not jobs:
                with self._cond:
                    if self._closing and not self._queue:
                        return
                continue
            started = time.perf_counter()
            self._settled = {}
            try:
                classified, runs = self._run(jobs)
            except BaseException as exc:  # noqa: BLE001 - the thread must survive anything one batch does
                log.exception("A batch of %d request(s) failed.", len(jobs))
                classified, runs = 0, 0
                for j in jobs:
                    self._fail(j, exc)
            took = time.perf_counter() - started
            per = took / len(jobs)
            self._per_image = per if not self._per_image else 0.8 * self._per_image + 0.2 * per
            if self._on_batch:  # before the answers go out, so that a client reading /metrics next sees this batch
                try:
                    self._on_batch(BatchStats(len(jobs), classified, runs, took))
                except Exception:  # noqa: BLE001 - metrics must never stop the batcher
                    log.exception("Batch metrics failed.")
            for j in jobs:
                ok, value = self._settled.get(j, (False, RuntimeError("The batcher left this request unanswered.")))
                if not j.future.done():
                    j.future.set_result(value) if ok else j.future.set_exception(value)

    def _done(self, job: Job, value: Any) -> None:
        self._settled.setdefault(job, (True, value))

    def _fail(self, job: Job, exc: BaseException) -> None:
        self._settled.setdefault(job, (False, exc))

    def _run(self, jobs: Sequence[Job]) -> tuple[int, int]:
        """Classify what needs it in one run, then one style run per (style, max_side); (classified, style runs)."""
        need = [j for j in jobs if j.emotion is None]
        found = self._classify(need)
        for j in jobs:
            if j.classify_only and j in found:
                self._done(j, found[j])
        groups: dict[tuple[str, int | None], list[Job]] = defaultdict(list)
        for j in jobs:
            if j.classify_only or j in self._settled:
                continue
            emotion = j.emotion if j.emotion is not None else found[j].emotion
            style = self.stylizer.manifest.emotions.get(emotion, f"?{emotion}")  # unknown: its own group, refused
            groups[(style, j.max_side)].append(j)
        for group in groups.values():
            self._stylize(group, found)
        return len(need), len(groups)

    def _classify(self, jobs: list[Job]) -> dict[Job, Classification]:
        if not jobs:
            return {}
        try:
            return dict(zip(jobs, self.stylizer.classify_batch([j.image for j in jobs])))
        except EmostyleError as exc:
            if len(jobs) == 1:
                self._fail(jobs[0], exc)
                return {}
        out = {}
        for j in jobs:  # one bad image (or a NoFaceError) must not fail the others
            try:
                out[j] = self.stylizer.classify(j.image)
            except EmostyleError as exc:
                self._fail(j, exc)
        return out

    def _stylize(self, group: list[Job], found: dict[Job, Classification]) -> None:
        emotion = group[0].emotion if group[0].emotion is not None else found[group[0]].emotion
        try:
            results = self.stylizer.stylize_batch([j.image for j in group], emotion=emotion, max_side=group[0].max_side)
        except EmostyleError as exc:
            if len(group) == 1:
                self._fail(group[0], exc)
                return
            for j in group:  # each alone, so each request gets its own result or its own error
                try:
                    e = j.emotion if j.emotion is not None else found[j].emotion
                    self._done(j, _as_found(self.stylizer.stylize(j.image, e, max_side=j.max_side), j, found))
                except EmostyleError as one:
                    self._fail(j, one)
            return
        for j, r in zip(group, results):
            self._done(j, _as_found(r, j, found))


def _as_found(r: StyleResult, job: Job, found: dict[Job, Classification]) -> StyleResult:
    """A result styled with a given emotion, told as what it is: classified (scores, faces) or given."""
    c = found.get(job)
    if c is not None:
        return replace(r, emotion=c.emotion, scores=c.scores, face=c.face, faces=c.faces, source=c.source)
    return r if r.emotion == job.emotion else replace(r, emotion=job.emotion)  # same style, another emotion
