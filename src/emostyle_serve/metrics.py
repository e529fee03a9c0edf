"""``GET /metrics``: the service's Prometheus metrics, in the text exposition format.

prometheus_client (the Prometheus project's own Python client) writes the
format, and, which a small writer of our own would not, adds the counts of all
``--workers`` processes up: with ``PROMETHEUS_MULTIPROC_DIR`` set (``emostyle serve``
sets it for N > 1) each process writes its values to files there and any one of them
answers the sum. Each app has its own registry, so several apps (tests) can live
in one process.
"""

from __future__ import annotations

import os
from typing import Iterable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

#: Environment variable of prometheus_client's multi-process mode (a folder the worker processes share).
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
#: Request latency buckets, seconds: a 256 px photo on a CPU (~0.1 s) to a queue of 4k photos.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
#: Requests per batch.
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64)


def multiprocess() -> bool:
    """Whether the metrics are kept per process in files and summed (``--workers`` > 1)."""
    return bool(os.environ.get(MULTIPROC_ENV))


class Metrics:
    """The service's metrics (names start with ``emostyle_``)."""

    def __init__(self, labels: Iterable[str] = ()) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("emostyle_requests", "HTTP requests answered, by endpoint and status code.",
                                ["endpoint", "status"], registry=r)
        self.latency = Histogram("emostyle_request_duration_seconds",
                                 "Time from a request's arrival to its answer, by endpoint.", ["endpoint"],
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.queue_depth = Gauge("emostyle_queue_depth", "Requests waiting for the batcher (decoded, not yet running).",
                                 registry=r, multiprocess_mode="livesum")
        self.in_flight = Gauge("emostyle_requests_in_flight",
                               "Requests admitted and not yet answered (reading, decoding, queued, running, encoding).",
                               registry=r, multiprocess_mode="livesum")
        self.emotions = Counter("emostyle_emotions", "Images answered, by emotion and how it was decided "
                                "(face, whole, policy, given).", ["emotion", "source"], registry=r)
        self.batch_size = Histogram("emostyle_batch_size", "Requests per batch (one classifier run, one style run "
                                    "per style).", buckets=BATCH_BUCKETS, registry=r)
        self.batch_seconds = Histogram("emostyle_batch_duration_seconds", "Inference time of one batch.",
                                       buckets=LATENCY_BUCKETS, registry=r)
        self.ready = Gauge("emostyle_ready", "1 when the bundle is loaded and warmed up (what /readyz says).",
                           registry=r, multiprocess_mode="livemin")
        for emotion in labels:  # every emotion present from the start, at 0
            self.emotions.labels(emotion, "face")

    def render(self) -> tuple[bytes, str]:
        """The exposition text and its content type (all workers' sums in multi-process mode)."""
        if multiprocess():
            from prometheus_client import multiprocess as mp

            registry = CollectorRegistry()
            mp.MultiProcessCollector(registry)
            return generate_latest(registry), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    @staticmethod
    def process_exit(pid: int) -> None:
        """Drop this process' live gauges from the multi-process files (at shutdown)."""
        if multiprocess():
            from prometheus_client import multiprocess as mp

            mp.mark_process_dead(pid)
