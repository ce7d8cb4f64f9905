"""How many requests each process may have in flight, and when: ``FixedLimit``, the
process's 429 ``Throttle`` (one per process and endpoint, ``process_limit``/``process_throttle``)
and ``AdaptiveLimit``: ``max_in_flight: adaptive``, concurrency that follows the API's capacity.

Why: a fixed ``max_in_flight`` is right for one capacity only.  Too low wastes a fast API
(events in flight = rate × latency); too high, against a slow or shrunken one, only queues
requests on the server (latency rises, throughput does not) and then draws 429s, each of
which costs a retry and a process-wide pause.  This is Vector's Adaptive Request Concurrency,
an AIMD loop as in TCP congestion control, judged once per window of ``limit`` answers
(about one round trip):

* **additive increase** (+1) when the window was full (the limit was reached: more was
  wanted), nothing was overloaded and its RTT is not above the moving baseline (an EWMA)
  plus one deviation.  Until the first cut it doubles instead (TCP's slow start), and with
  no queue at all (RTT within 10 % of the no-load one) it grows by an eighth, so a run
  reaches a large API's capacity, or gets it back after a drop, in a few round trips.
* **multiplicative decrease** on overload.  An explicit one (429, 5xx, a timeout or a
  connection error: the server says it is past capacity) halves the limit at once, as TCP
  does on loss: from a high phase to a tenth of it in three steps, not twenty as with
  Vector's ×0.9.  An implicit one, queueing (the window's RTT above 1.5 × the no-load RTT),
  cuts by target / RTT (Little's law: at the same throughput, latency follows what is in
  flight), between ×0.5 and ×0.9.
* A window's RTT is its **median** answer time.  A server queue delays most answers, while
  the pipeline reading answers late (its thread busy between elements, or a busy machine)
  delays some: the median follows the first and shrugs off the second.  A window minimum
  (Linux TCP Vegas's choice) missed queues until they were as long as the capacity, since
  with a fixed service time some requests never wait; Vector's extra rule, a cut whenever a
  window's RTT exceeds the moving mean by 2.5 deviations, fired on that pipeline noise and
  held the limit under the API's capacity (docs/benchmarks.md, P6).  The no-load RTT is the
  lowest window RTT seen, drifting up slowly (a time constant of ~500 windows) so a lasting
  change of the API's own latency is learnt rather than read as queueing forever.
* Answers to requests sent before the last cut are not counted again: they went out at the
  old limit and say nothing about the new one (TCP cuts once per window likewise).

Bounded by ``[1, cap]``; starts at ``min(4, cap)``: low, so the first windows measure the
no-load RTT rather than a queue this client built itself.  One instance per worker process
and endpoint; the hot path is one lock and an append (a sort of ``limit`` floats per
window).
"""

from __future__ import annotations

import enum
import math
import threading
import time

from flexprice_beam.core.config import FlexpriceOutput

#: EWMA weight of each window's RTT in the moving baseline (Vector's ``ewma_alpha``)
EWMA_ALPHA = 0.4
#: a window RTT within this factor of the no-load one: no queue, grow by an eighth
HEADROOM_FACTOR = 1.1
#: a window RTT this many times the no-load one means requests queue on the server
QUEUE_FACTOR = 1.5
#: per window, how far the no-load RTT moves toward a higher window RTT
FLOOR_DRIFT = 0.002
#: the limit after an explicit overload (429/5xx/timeout/connection error)
OVERLOAD_RATIO = 0.5
#: the gentlest cut on queueing (Vector's decrease ratio)
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
        # the current window: its answer times, whether the limit was hit
        self._rtts: list[float] = []
        self._reached = False
        # the moving baseline: EWMA of window RTTs and of their squared deviation
        self._mean: float | None = None
        self._var = 0.0
        self._floor = math.inf  # the no-load RTT
        self._slow_start = True

    @property
    def limit(self) -> int:
        return self._limit

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def no_load_rtt(self) -> float | None:
        """The no-load RTT estimate in seconds (None before the first window closed)."""
        return None if self._floor == math.inf else self._floor

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
        429, 5xx, a timeout or a connection error.  ``release(math.inf, False)`` gives the
        slot back without a sample (a request abandoned unanswered)."""
        with self._lock:
            self._in_flight = max(0, self._in_flight - 1)
            now = self._clock()
            if now - latency < self._cut_at:
                return  # sent at the old limit: already acted on
            if overloaded:
                self._cut(OVERLOAD_RATIO, now)
                return
            rtts = self._rtts
            rtts.append(latency)
            if len(rtts) >= self._limit:
                self._close_window(now)

    def _close_window(self, now: float) -> None:
        rtts, reached = sorted(self._rtts), self._reached
        rtt = rtts[len(rtts) // 2]
        self._rtts, self._reached = [], False
        floor = self._floor = (rtt if rtt < self._floor
                               else self._floor + (rtt - self._floor) * FLOOR_DRIFT)
        mean = self._mean
        if mean is None:
            self._mean = rtt
            return
        if rtt > floor * QUEUE_FACTOR:
            self._cut(min(LATENCY_RATIO, max(OVERLOAD_RATIO, floor * QUEUE_FACTOR / rtt)), now)
        elif reached and rtt <= mean + math.sqrt(self._var) and self._limit < self.cap:
            if self._slow_start:
                step = self._limit
            elif rtt <= floor * HEADROOM_FACTOR:
                step = max(1, self._limit // 8)
            else:
                step = 1
            self._limit = min(self.cap, self._limit + step)
        diff = rtt - mean
        self._mean = mean + EWMA_ALPHA * diff
        self._var = (1 - EWMA_ALPHA) * (self._var + EWMA_ALPHA * diff * diff)

    def _cut(self, ratio: float, now: float) -> None:
        self._limit = max(1, min(self._limit - 1, int(self._limit * ratio)))
        self._cut_at = now
        self._slow_start = False
        self._rtts, self._reached = [], False


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


class Throttle:
    """A "not before" time set by 429s, shared by every sender of the process
    (``process_throttle``), so a rate-limited API is not hammered from eight sinks.

    When a deferral ends, one request goes first (the probe) and the others wait for its
    answer: a 429 defers everyone again, anything else opens the gate.  Without the probe,
    every retry held back went out together when a Retry-After ended, each drawing its own
    429 while the API was still limiting: ``max_in_flight`` of them per Retry-After (P4's
    60 s storm drew ~945 429s; docs/benchmarks.md).  A probe not answered within
    ``probe_timeout`` (its sender was torn down) lets another one go."""

    def __init__(self, probe_timeout: float = 30.0) -> None:
        self._lock = threading.Lock()
        self._not_before = 0.0
        self._probing = False  # deferred since the last answer that was not a 429
        self._probe_at: float | None = None  # when the probe went out; None: none out
        self.probe_timeout = probe_timeout

    def defer(self, seconds: float) -> None:
        with self._lock:
            self._not_before = max(self._not_before, time.monotonic() + seconds)
            self._probing, self._probe_at = True, None

    def remaining(self) -> float:
        """Seconds until sending may resume (0: now, or once the probe is answered)."""
        return max(0.0, self._not_before - time.monotonic())

    @property
    def limiting(self) -> bool:
        """A Retry-After holds the senders, or its probe has not been answered yet."""
        return self._probing

    def held_for(self) -> float | None:
        """Seconds until ``admit`` may let a request go: 0 now, None until a probe's answer."""
        if self._probing and self._probe_at is not None:
            return None
        return self.remaining()

    def admit(self) -> Gate:
        """Whether one request may go now: ``OPEN``, ``PROBE`` (it goes first, alone; say
        how it was answered with ``opened``) or ``WAIT``."""
        if not self._probing:  # the hot path: no lock
            return Gate.OPEN if self._not_before <= time.monotonic() else Gate.WAIT
        with self._lock:
            now = time.monotonic()
            if not self._probing:
                return Gate.OPEN if self._not_before <= now else Gate.WAIT
            if self._not_before > now or (self._probe_at is not None
                                          and now - self._probe_at < self.probe_timeout):
                return Gate.WAIT
            self._probe_at = now
            return Gate.PROBE

    def withdraw(self) -> None:
        """A ``PROBE`` admission that was not sent after all (no permit)."""
        with self._lock:
            self._probe_at = None

    def opened(self) -> None:
        """The probe was answered without a 429: everyone may send again."""
        with self._lock:
            self._probing, self._probe_at = False, None


class Gate(enum.Enum):
    OPEN = "open"
    PROBE = "probe"
    WAIT = "wait"


_SHARED: dict[tuple, object] = {}
_SHARED_LOCK = threading.Lock()


def _shared(key: tuple, make):
    with _SHARED_LOCK:
        got = _SHARED.get(key)
        if got is None:
            got = _SHARED[key] = make()
        return got


def process_limit(cfg: FlexpriceOutput) -> FixedLimit | AdaptiveLimit:
    """One limiter per process and endpoint: an SDK worker holds several sink instances
    (every Flink subtask of a TaskManager; many Dataflow bundles), and ``max_in_flight``
    is the endpoint's, not each instance's."""
    return _shared(("limit", cfg.scheme, cfg.api_host, cfg.max_in_flight, cfg.in_flight_cap),
                   lambda: AdaptiveLimit(cfg.in_flight_cap) if cfg.max_in_flight == "adaptive"
                   else FixedLimit(cfg.max_in_flight))


def process_throttle(cfg: FlexpriceOutput) -> Throttle:
    """One Retry-After deferral per process and endpoint."""
    return _shared(("throttle", cfg.scheme, cfg.api_host), lambda: Throttle(cfg.timeout))
