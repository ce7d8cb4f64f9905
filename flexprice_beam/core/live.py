"""A process-local mirror of the pipeline's Beam metrics, readable while the run goes on.

Beam metrics are only queryable from the ``PipelineResult`` once FnApiRunner has finished,
so the DoFns also count here (``live.counter(...)`` increments both).  In-process runners
run DoFns in this process, so ``/metrics``, ``/stats`` and the progress bar see numbers
move; on a distributed runner the workers' copies are simply never read.
"""

from __future__ import annotations

import bisect
import re
import threading
import time
from typing import Any

from apache_beam.metrics import Metrics

NAMESPACE = "flexprice"
#: accepted events remembered for ``run --read-back`` (one per accepted batch, the first ones)
SAMPLE = 50
_DEAD_BY_STAGE = re.compile(r"^dead_lettered_([a-z]+)_(\w+)$")
#: request latency bucket bounds in seconds (Prometheus ``le``), 1 ms – 30 s: a local
#: stand-in answers in ~1 ms, the API in tens of ms, a timeout ends at ``timeout`` (10 s)
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                   10.0, 30.0)


class LiveRegistry:
    """Thread-safe counters, gauges and distributions plus the run's state."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self._counters: dict[str, int] = {}
            self._gauges: dict[str, float] = {}
            self._dists: dict[str, list[float]] = {}  # name → [count, sum, min, max]
            #: name → (bucket bounds, count per bucket (the last is +Inf), [sum])
            self._hists: dict[str, tuple[tuple[float, ...], list[int], list[float]]] = {}
            self._state = "idle"
            self._error: str | None = None
            self._stopped: str | None = None
            self._started = time.monotonic()
            self._total: int | None = None
            self._final: dict[str, Any] | None = None
            self._sample: list[tuple[str, str]] = []

    # -- updates (called from DoFns, any thread) --------------------------------------------

    def inc(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._counters[name] = self._counters.get(name, 0) + n

    def set_gauge(self, name: str, value: float) -> None:
        with self._lock:
            self._gauges[name] = value

    def observe(self, name: str, value: float) -> None:
        with self._lock:
            d = self._dists.get(name)
            if d is None:
                self._dists[name] = [1, value, value, value]
            else:
                d[0] += 1
                d[1] += value
                d[2] = min(d[2], value)
                d[3] = max(d[3], value)

    def observe_histogram(self, name: str, value: float,
                          bounds: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        """One observation into its bucket (the first bound ≥ value): a bisect and two adds."""
        i = bisect.bisect_left(bounds, value)
        with self._lock:
            h = self._hists.get(name)
            if h is None:
                h = self._hists[name] = (bounds, [0] * (len(bounds) + 1), [0.0])
            h[1][i] += 1
            h[2][0] += value

    def sample_accepted(self, event_id: str, timestamp: str) -> None:
        """Remember an accepted (event_id, timestamp) for read-back, up to ``SAMPLE``."""
        if len(self._sample) < SAMPLE:
            with self._lock:
                if len(self._sample) < SAMPLE:
                    self._sample.append((event_id, timestamp))

    @property
    def sampling(self) -> bool:
        return len(self._sample) < SAMPLE

    def accepted_sample(self) -> list[tuple[str, str]]:
        with self._lock:
            return list(self._sample)

    def stop(self, reason: str) -> None:
        """The sink stopped for good (401/403): health checks must fail from now on."""
        with self._lock:
            if self._stopped is None:
                self._stopped = reason

    # -- run lifecycle (called by the runner) ------------------------------------------------

    def begin(self, total: int | None = None) -> None:
        self.reset()
        with self._lock:
            self._state = "running"
            self._total = total

    def end(self, state: str, error: str | None = None,
            final: dict[str, Any] | None = None) -> None:
        with self._lock:
            self._state = state
            self._error = error
            self._final = final

    # -- reading ------------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "state": self._state,
                "error": self._error,
                "stopped": self._stopped,
                "uptime_s": round(time.monotonic() - self._started, 3),
                "total": self._total,
                "counters": dict(self._counters),
                "gauges": dict(self._gauges),
                "distributions": {k: {"count": int(v[0]), "sum": v[1], "min": v[2], "max": v[3]}
                                  for k, v in self._dists.items()},
                "histograms": {k: _cumulative(*v) for k, v in self._hists.items()},
                "final": self._final,
            }

    @property
    def healthy(self) -> bool:
        with self._lock:
            return self._stopped is None and self._state != "failed"


def _cumulative(bounds: tuple[float, ...], counts: list[int], total: list[float]) -> dict:
    """Prometheus' shape: ``buckets`` [(le, observations ≤ le)], ``le`` as its text says it
    ("0.005"), ending with "+Inf" = count (also valid JSON for /stats)."""
    running, buckets = 0, []
    for le, n in zip((*map(repr, bounds), "+Inf"), counts, strict=True):
        running += n
        buckets.append((le, running))
    return {"buckets": buckets, "count": running, "sum": total[0]}


LIVE = LiveRegistry()


def dead_letters_by_stage(counters: dict[str, int]) -> dict[str, dict[str, int]]:
    """``dead_lettered_<stage>_<status>`` counters → {stage: {status: n}}."""
    out: dict[str, dict[str, int]] = {}
    for name, value in counters.items():
        m = _DEAD_BY_STAGE.match(name)
        if m and value:
            out.setdefault(m.group(1), {})[m.group(2)] = value
    return out


def stage_counts(counters: dict[str, int]) -> dict[str, Any]:
    """Per-stage counts and the reconciliation ``read = accepted + dead-lettered + filtered``.

    Dead letters are counted where they arise (mapping, validation, the sink): on
    FnApiRunner the writer is a later stage that only runs once the main one finished, so
    its ``events_dead_lettered`` (``written``) catches up at the end.
    """
    c = counters.get
    by_stage = dead_letters_by_stage(counters)
    read, accepted, filtered = c("records_read", 0), c("events_accepted", 0), c("events_filtered", 0)
    arisen = {"mapping": c("mapping_failed", 0), "validation": c("events_invalid", 0),
              "delivery": c("events_dead_lettered_delivery", 0)}
    written, dry = c("events_dead_lettered", 0), c("events_dry_run", 0)
    dead = max(sum(arisen.values()), written)
    accounted = accepted + dead + filtered + dry
    return {
        "stages": {
            "read": read, "mapped": c("events_mapped", 0), "filtered": filtered,
            "mapping_failed": c("mapping_failed", 0), "valid": c("events_valid", 0),
            "invalid": c("events_invalid", 0), "accepted": accepted, "dry_run": dry,
            "dead_lettered": {"total": dead, **arisen, "written": written},
            "dead_lettered_by_status": by_stage,
            "retries": c("retries", 0), "requests": c("requests_sent", 0),
            "batches": c("batches_sent", 0),
        },
        "reconciliation": {
            "read": read, "accepted": accepted, "dead_lettered": dead, "filtered": filtered,
            "dry_run": dry, "accounted": accounted, "in_flight": read - accounted,
            "balanced": read == accounted,
        },
    }


class Counter:
    """A Beam counter that also counts in ``LIVE`` (picklable: DoFns hold these)."""

    def __init__(self, name: str):
        self.name = name
        self._beam = Metrics.counter(NAMESPACE, name)

    def inc(self, n: int = 1) -> None:
        self._beam.inc(n)
        LIVE.inc(self.name, n)


class Distribution:
    """A Beam distribution, plus ``<name>_sum`` / ``<name>_count`` Beam counters: Flink's
    metric reporters (Prometheus) export a Beam distribution as a non-numeric gauge (0), the
    counters as numbers, so rates and means survive there (docs/runners.md, "Metrics")."""

    def __init__(self, name: str):
        self.name = name
        self._beam = Metrics.distribution(NAMESPACE, name)
        self._sum = Metrics.counter(NAMESPACE, f"{name}_sum")
        self._count = Metrics.counter(NAMESPACE, f"{name}_count")

    def update(self, value: int) -> None:
        self._beam.update(value)
        self._sum.inc(value)
        self._count.inc()
        LIVE.observe(self.name, value)


class Histogram:
    """Latencies in seconds: bucketed in ``LIVE`` for ``/metrics`` (a Prometheus histogram,
    so p99 can be computed), and, when ``ms`` names one, also a Beam distribution in
    milliseconds (Beam's hold integers): what Flink's and Dataflow's metrics show."""

    def __init__(self, name: str, buckets: tuple[float, ...] = LATENCY_BUCKETS,
                 ms: str | None = None):
        self.name = name
        self.buckets = tuple(sorted(buckets))
        self._ms = Distribution(ms) if ms else None

    def observe(self, seconds: float) -> None:
        LIVE.observe_histogram(self.name, seconds, self.buckets)
        if self._ms is not None:
            self._ms.update(int(seconds * 1000))


class Gauge:
    def __init__(self, name: str):
        self.name = name
        self._beam = Metrics.gauge(NAMESPACE, name)

    def set(self, value: int) -> None:
        self._beam.set(value)
        LIVE.set_gauge(self.name, value)


def counter(name: str) -> Counter:
    return Counter(name)


def distribution(name: str) -> Distribution:
    return Distribution(name)


def histogram(name: str, buckets: tuple[float, ...] = LATENCY_BUCKETS,
              ms: str | None = None) -> Histogram:
    return Histogram(name, buckets, ms)


def gauge(name: str) -> Gauge:
    return Gauge(name)
