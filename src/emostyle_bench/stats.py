"""Latency statistics and the timing loop (warm-up, repeats, time budget)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from emostyle_rt.errors import InvalidArgumentError, note


@dataclass(frozen=True)
class Timing:
    """Latency of one call (one batch) in milliseconds, and throughput in images per second.

    ``spread_pct`` is (p90 - p10) / median in percent: how much the samples move
    around the median (high on a busy machine).
    """

    samples_ms: tuple[float, ...]
    batch: int
    median_ms: float
    p90_ms: float
    p10_ms: float
    min_ms: float
    max_ms: float
    spread_pct: float
    throughput: float  # images per second at the median

    @property
    def n(self) -> int:
        return len(self.samples_ms)


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default method), ``q`` in 0..100."""
    if not values:
        raise InvalidArgumentError("percentile of no values." + note("at least one value", 0))
    if not 0.0 <= q <= 100.0:
        raise InvalidArgumentError("Percentile out of range." + note("0..100", q))
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def summarize(samples_ms: Sequence[float], batch: int = 1) -> Timing:
    """Statistics of per-call latencies (milliseconds) for calls of ``batch`` images."""
    if batch < 1:
        raise InvalidArgumentError("Batch must be positive." + note(">= 1", batch))
    if any(not math.isfinite(s) or s < 0 for s in samples_ms):
        raise InvalidArgumentError("Latencies must be finite and non-negative." + note(">= 0", list(samples_ms)))
    med = percentile(samples_ms, 50)
    p90, p10 = percentile(samples_ms, 90), percentile(samples_ms, 10)
    return Timing(
        samples_ms=tuple(float(s) for s in samples_ms),
        batch=batch,
        median_ms=med,
        p90_ms=p90,
        p10_ms=p10,
        min_ms=min(samples_ms),
        max_ms=max(samples_ms),
        spread_pct=(p90 - p10) / med * 100.0 if med > 0 else 0.0,
        throughput=batch / (med / 1000.0) if med > 0 else math.inf,
    )


def measure(
    fn: Callable[[], Any],
    *,
    batch: int = 1,
    warmup: int = 1,
    repeat: int = 10,
    min_repeat: int = 3,
    budget_s: float = math.inf,
    deadline: float | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> Timing:
    """Time ``fn()`` after ``warmup`` untimed calls.

    At least ``min(min_repeat, repeat)`` and at most ``repeat`` timed calls; after
    the minimum, stops once ``budget_s`` seconds of timed calls have passed.
    ``deadline`` (a ``clock()`` value) is harder: after the first timed call, no
    call starts that would end past it (judged by the median so far).
    """
    if repeat < 1 or warmup < 0:
        raise InvalidArgumentError("repeat must be >= 1 and warmup >= 0." + note("repeat >= 1", repeat))
    for _ in range(warmup):
        fn()
    floor = min(min_repeat, repeat)
    samples: list[float] = []
    spent = 0.0
    while len(samples) < repeat and (len(samples) < floor or spent < budget_s):
        if samples and deadline is not None and clock() + percentile(samples, 50) / 1000.0 > deadline:
            break
        t0 = clock()
        fn()
        dt = clock() - t0
        samples.append(dt * 1000.0)
        spent += dt
    return summarize(samples, batch)


def measure_interleaved(
    fns: Mapping[str, Callable[[], Any]],
    *,
    batch: int = 1,
    warmup: int = 0,
    repeat: int = 10,
    min_repeat: int = 3,
    budget_s: float = math.inf,
    deadline: float | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, Timing]:
    """Time several functions in rounds (A, B, C, A, B, C, ...) so they share the machine's load.

    On a shared machine the load drifts over seconds; timing one path after the
    other would hand each a different machine. Each round calls every function
    once. At least ``min(min_repeat, repeat)`` and at most ``repeat`` rounds;
    after the minimum, stops once the rounds took ``budget_s`` per function, or
    when the next round (judged by the last one) would end past ``deadline``.
    """
    if repeat < 1 or warmup < 0:
        raise InvalidArgumentError("repeat must be >= 1 and warmup >= 0." + note("repeat >= 1", repeat))
    if not fns:
        return {}
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    floor = min(min_repeat, repeat)
    samples: dict[str, list[float]] = {name: [] for name in fns}
    spent, rounds, last = 0.0, 0, 0.0
    while rounds < repeat and (rounds < floor or spent < budget_s * len(fns)):
        if rounds and deadline is not None and clock() + last > deadline:
            break
        r0 = clock()
        for name, fn in fns.items():
            t0 = clock()
            fn()
            samples[name].append((clock() - t0) * 1000.0)
        last = clock() - r0
        spent += last
        rounds += 1
    return {name: summarize(s, batch) for name, s in samples.items()}
