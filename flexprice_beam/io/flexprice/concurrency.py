"""``AdaptiveLimit``: ``max_in_flight: adaptive``, concurrency that follows the API's capacity.

Why: a fixed ``max_in_flight`` is right for one capacity only.  Too low wastes a fast API
(events in flight = rate × latency); too high, against a slow or shrunken one, only queues
requests on the server (latency rises, throughput does not) and then draws 429s, each of
which costs a retry and a process-wide pause.  This is Vector's Adaptive Request Concurrency
(an AIMD loop, as TCP congestion control): per window of about one round trip,

* **additive increase** (+1) when the window was full (the limit was reached, so more
  concurrency was wanted), nothing was overloaded and the mean RTT is not above its moving
  baseline (EWMA) plus one deviation.  Until the first cut it doubles instead (TCP's slow
  start), so a run reaches a large API's capacity in a few round trips from a small start;
* **multiplicative decrease** on overload.  An explicit one (429, 5xx, a timeout or a
  connection error: the server says it is past capacity) halves the limit at once, as TCP
  does on loss: from the high phase to a tenth of its capacity in three steps, not twenty.
  An implicit one, queueing, cuts by ×0.9 (Vector's value), latency being a noisier
  signal -- or, past the no-load target below, by target / RTT (Little's law; at most
  halved), so a deep queue is left in one step, not ten.  Queueing is a window's mean RTT
  either clearly above the moving baseline (mean + 2.5 deviations: a sudden rise) or above
  1.5 × the lowest window mean seen (the no-load RTT, as TCP Vegas and Netflix's Gradient
  keep).  The second stops a slow creep: against a large capacity one more request adds
  too little latency for the moving baseline to notice, and that baseline follows the queue
  up.  The lowest mean drifts up slowly (a time constant of ~500 windows), so a lasting
  change of the API's own latency is learnt rather than read as queueing forever.
* Answers to requests that started before the last cut are not counted again: they were sent
  at the old limit and say nothing about the new one (TCP cuts once per window likewise).

Bounded by ``[1, cap]``; starts at ``min(4, cap)``: low, so the first windows measure the
no-load RTT rather than a queue this client built itself.
One instance per worker process and endpoint; the hot path is one lock and a few floats.
"""

from __future__ import annotations

import math
import threading
import time

#: EWMA weight of each window's mean RTT in the baseline (Vector's ``ewma_alpha``)
EWMA_ALPHA = 0.4
#: a window's mean RTT above baseline + this many deviations means queueing (Vector: 2.5)
RTT_DEVIATION_SCALE = 2.5
#: ... and at least this fraction above it, so perfectly steady latencies (deviation ~0)
#: do not read scheduling jitter as queueing
RTT_TOLERANCE = 0.05
#: a window mean this many times the lowest one seen means queueing
QUEUE_FACTOR = 1.5
#: per window, how far the lowest mean moves toward a higher one (~500-window time constant)
FLOOR_DRIFT = 0.002
#: the limit after an explicit overload (429/5xx/timeout/connection error)
OVERLOAD_RATIO = 0.5
#: the limit after the RTT rose clearly above baseline
LATENCY_RATIO = 0.9
INITIAL = 4


class AdaptiveLimit:
    """An AIMD concurrency limit: ``try_acquire`` before a request, ``release`` after it."""

    def __init__(self, cap: int = 64, initial: int | None = None, clock=time.monotonic):
        if cap < 1:
            raise ValueError("cap must be ≥ 1")
        self.cap = cap
        self._limit = max(1, min(cap, INITIAL if initial is None else initial))
        self._clock = clock
        self._lock = threading.Lock()
        self._in_flight = 0
        self._cut_at = -math.inf  # when the limit was last lowered
        # the current window: answers counted, their summed RTT, whether the limit was hit
        self._n = 0
        self._rtt_sum = 0.0
        self._reached = False
        # the baseline: EWMA of window mean RTTs and of their squared deviation
        self._mean: float | None = None
        self._var = 0.0
        self._floor = math.inf  # the lowest window mean RTT: the no-load estimate
        self._slow_start = True

    @property
    def limit(self) -> int:
        return self._limit

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def baseline(self) -> float | None:
        """The moving baseline RTT in seconds (None before the first window closed)."""
        return self._mean

    def try_acquire(self) -> bool:
        """May one more request start now?  Never blocks."""
        with self._lock:
            if self._in_flight >= self._limit:
                self._reached = True  # demand beyond the limit: evidence to grow on
                return False
            self._in_flight += 1
            if self._in_flight >= self._limit:
                self._reached = True
            return True

    def release(self, latency: float, overloaded: bool) -> None:
        """One request finished after ``latency`` seconds; ``overloaded``: its answer was
        429, 5xx, a timeout or a connection error."""
        with self._lock:
            self._in_flight = max(0, self._in_flight - 1)
            now = self._clock()
            if now - latency < self._cut_at:
                return  # sent at the old limit: already acted on
            if overloaded:
                self._cut(OVERLOAD_RATIO, now)
                return
            self._n += 1
            self._rtt_sum += latency
            if self._n >= self._limit:
                self._close_window(now)

    def _close_window(self, now: float) -> None:
        rtt = self._rtt_sum / self._n
        reached = self._reached
        self._n, self._rtt_sum, self._reached = 0, 0.0, False
        floor = self._floor = (rtt if rtt < self._floor
                               else self._floor + (rtt - self._floor) * FLOOR_DRIFT)
        mean = self._mean
        if mean is None:
            self._mean = rtt
            return
        dev = math.sqrt(self._var)
        if rtt > floor * QUEUE_FACTOR:
            # Little's law: at the same throughput, latency scales with what is in flight,
            # so this many fewer would bring the RTT back to the target (at most halved)
            self._cut(min(LATENCY_RATIO, max(OVERLOAD_RATIO, floor * QUEUE_FACTOR / rtt)), now)
        elif rtt > mean + max(RTT_DEVIATION_SCALE * dev, RTT_TOLERANCE * mean):
            self._cut(LATENCY_RATIO, now)
        elif reached and rtt <= mean + dev and self._limit < self.cap:
            self._limit = min(self.cap, self._limit * 2 if self._slow_start else self._limit + 1)
        diff = rtt - mean
        self._mean = mean + EWMA_ALPHA * diff
        self._var = (1 - EWMA_ALPHA) * (self._var + EWMA_ALPHA * diff * diff)

    def _cut(self, ratio: float, now: float) -> None:
        self._limit = max(1, min(self._limit - 1, int(self._limit * ratio)))
        self._cut_at = now
        self._slow_start = False
        self._n, self._rtt_sum, self._reached = 0, 0.0, False


class FixedLimit:
    """``max_in_flight: N``: the same interface as ``AdaptiveLimit``, a limit that stays N."""

    def __init__(self, limit: int):
        self._limit = limit
        self._sem = threading.BoundedSemaphore(limit)

    @property
    def limit(self) -> int:
        return self._limit

    def try_acquire(self) -> bool:
        return self._sem.acquire(blocking=False)

    def release(self, latency: float = 0.0, overloaded: bool = False) -> None:
        self._sem.release()
