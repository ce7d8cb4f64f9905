"""What to do, and when: the seed's error table as one pure function, and the state each
process keeps about the API.

``decide`` maps an ``Answer`` to an ``Action`` (README, "Error handling"); the transport only
reports and the executor only acts, as Beam's ``requestresponse`` keeps its ``Repeater``
apart from its ``Caller``.  Per process and endpoint: the ``Throttle`` that 429s set and the
concurrency limit, ``FixedLimit`` or ``AdaptiveLimit`` (docs/delivery-engine.md says why each
works as it does)."""

from __future__ import annotations

import email.utils
import enum
import math
import random
import threading
import time
from dataclasses import dataclass

from flexprice_beam.core.config import FlexpriceOutput, RetryConfig
from flexprice_beam.io.api import FlexpriceAuthError, Kind, auth_advice, describe, kind_of

__all__ = ["FlexpriceAuthError", "Kind"]  # shared with io/api.py (check, read-back)


class Action(enum.Enum):
    ACCEPT = "accept"
    RETRY = "retry"
    SPLIT = "split"
    DEAD_LETTER = "dead_letter"
    STOP = "stop"


@dataclass(slots=True)
class Answer:
    """One HTTP exchange's outcome, as the transport saw it (status None: no response)."""

    status: int | None
    body: str
    retry_after: float | None = None
    error: str | None = None
    latency: float = 0.0
    #: a transport failure no retry cures: "certificate" (does not verify) or "proxy" (407)
    fatal: str | None = None
    #: how the status was known when no response was read (an oversize body's broken pipe)
    note: str | None = None

    @property
    def kind(self) -> Kind:
        return Kind.AUTH if self.fatal else kind_of(self.status)

    def describe(self) -> str:
        return describe(self.status, self.body,
                        f"assumed: {self.note}; {self.error}" if self.note else self.error)


@dataclass(frozen=True, slots=True)
class Decision:
    action: Action
    delay: float = 0.0  # RETRY: seconds to wait first
    reason: str = ""  # DEAD_LETTER / STOP: why, for logs and dead letters
    cause: str = ""  # RETRY: "429", "503", "connection" (the ``retries_<cause>`` counter)
    defer_all: bool = False  # RETRY after a 429: every sender of the process waits too
    gave_up: bool = False  # DEAD_LETTER because retrying ran out (logged as an error)


def decide(answer: Answer, *, attempt: int, elapsed: float, size: int, retry: RetryPolicy,
           base_url: str = "", environment_id: str | None = None,
           stopping: str | None = None, grace: float | None = None,
           rng: random.Random | None = None) -> Decision:
    """The action for ``answer`` to attempt ``attempt`` (1-based) of ``size`` events first
    sent ``elapsed`` seconds ago; ``stopping`` names a requested shutdown's signal and
    ``grace`` the seconds it leaves (None: no deadline)."""
    kind = answer.kind
    if kind is Kind.ACCEPTED:
        return Decision(Action.ACCEPT)
    if kind is Kind.AUTH:
        return Decision(Action.STOP, reason=stop_reason(answer, base_url, environment_id))
    if kind is Kind.REJECTED:
        return Decision(Action.SPLIT if size > 1 else Action.DEAD_LETTER,
                        reason=answer.describe())
    delay = retry.delay(attempt, answer.retry_after, rng)
    if retry.exhausted(attempt, elapsed, delay) or (grace is not None and delay > grace):
        why = f"gave up after {attempt} attempts: {answer.describe()}"
        if stopping:
            why += f" (stopping on {stopping}: shutdown grace over)"
        return Decision(Action.DEAD_LETTER, reason=why, gave_up=True)
    cause = "connection" if answer.status is None else str(answer.status)
    return Decision(Action.RETRY, delay=delay, cause=cause, defer_all=answer.status == 429)


def stop_reason(answer: Answer, base_url: str, environment_id: str | None) -> str:
    """The words a stop is reported with: what failed and what to fix."""
    if answer.fatal == "proxy":
        return (f"the HTTPS proxy refused to connect to {base_url}: {str(answer.error)[:300]} "
                "— check the user:password in HTTPS_PROXY; stopping without retries")
    if answer.fatal:
        return (f"TLS certificate of {base_url} did not verify: {str(answer.error)[:300]} — "
                "trust its CA (REQUESTS_CA_BUNDLE) or, for a test server only, set "
                "output.flexprice.skip_cert_verify: true; stopping without retries")
    return (f"Flexprice refused the API key: {answer.describe()} — "
            f"{auth_advice(answer, environment_id)}; stopping without retries")


def parse_retry_after(value: str | None) -> float | None:
    """``Retry-After`` as seconds (delta-seconds or an HTTP date); None if absent/garbled."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value.strip())
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


@dataclass
class RetryPolicy:
    """Exponential backoff with jitter, bounded by elapsed time (and, opt-in, by attempts)."""

    max_attempts: int | None = None
    initial_backoff: float = 0.2
    max_backoff: float = 30.0
    max_elapsed: float = 600.0

    @classmethod
    def from_config(cls, cfg: RetryConfig) -> RetryPolicy:
        return cls(cfg.max_attempts, cfg.initial_backoff, cfg.max_backoff, cfg.max_elapsed)

    def delay(self, attempt: int, retry_after: float | None = None,
              rng: random.Random | None = None) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        if retry_after:
            return retry_after
        cap = min(self.max_backoff, self.initial_backoff * (2 ** (attempt - 1)))
        return (rng or random).uniform(cap / 2, cap)

    def exhausted(self, attempt: int, elapsed: float, next_delay: float) -> bool:
        """True once the next wait would pass ``max_elapsed`` (or ``max_attempts`` are made)."""
        if self.max_attempts is not None and attempt >= self.max_attempts:
            return True
        return elapsed + next_delay > self.max_elapsed

    def gives_up(self, attempt: int, started: float, next_delay: float) -> bool:
        return self.exhausted(attempt, time.monotonic() - started, next_delay)


class Gate(enum.Enum):
    OPEN = "open"
    PROBE = "probe"
    WAIT = "wait"


class Throttle:
    """A "not before" time that 429s set, shared by every sender of the process.  When it
    passes, one request probes and the others wait for its answer: a 429 defers everyone
    again, anything else opens the gate.  A probe unanswered for ``probe_timeout`` (its
    sender was torn down) lets another one go."""

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
        return None if self._probing and self._probe_at is not None else self.remaining()

    def admit(self) -> Gate:
        """``OPEN``, ``PROBE`` (it goes alone; ``opened`` once answered) or ``WAIT``."""
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
        """A ``PROBE`` admission that was not sent after all, or whose 429 was final."""
        with self._lock:
            self._probe_at = None

    def opened(self) -> None:
        """The probe was answered without a 429: everyone may send again."""
        with self._lock:
            self._probing, self._probe_at = False, None


class FixedLimit:
    """``max_in_flight: N``: ``AdaptiveLimit``'s interface, a limit that stays N."""

    def __init__(self, limit: int):
        self.limit = limit
        self._sem = threading.BoundedSemaphore(limit)

    def try_acquire(self) -> bool:
        return self._sem.acquire(blocking=False)

    def release(self, latency: float = 0.0, overloaded: bool = False) -> None:
        self._sem.release()


#: adaptive's tuning: EWMA weight of a window's RTT in the baseline (Vector's ``ewma_alpha``);
#: a window RTT within HEADROOM × the no-load RTT grows by an eighth, above QUEUE × it means
#: a server queue; the no-load RTT drifts up by FLOOR_DRIFT per window; explicit overload cuts
#: to OVERLOAD, queueing by at most LATENCY (Vector's ratio); the limit starts at INITIAL
EWMA_ALPHA, HEADROOM_FACTOR, QUEUE_FACTOR, FLOOR_DRIFT = 0.4, 1.1, 1.5, 0.002
OVERLOAD_RATIO, LATENCY_RATIO, INITIAL = 0.5, 0.9, 4


class AdaptiveLimit:
    """``max_in_flight: adaptive``: an AIMD limit in ``[1, cap]`` judged once per window of
    ``limit`` answers by their median RTT, after Vector's adaptive request concurrency.
    ``try_acquire`` before a request, ``release`` after it; never blocks."""

    def __init__(self, cap: int = 64, initial: int | None = None, clock=time.monotonic):
        if cap < 1:
            raise ValueError("cap must be ≥ 1")
        self.cap = cap
        self._limit = max(1, min(cap, INITIAL if initial is None else initial))
        self._clock = clock
        self._lock = threading.Lock()
        self.in_flight = 0
        self._cut_at = -math.inf  # when the limit was last lowered
        self._rtts: list[float] = []  # the current window's answer times
        self._reached = False  # ... and whether it hit the limit
        self._mean: float | None = None  # EWMA of window RTTs, and of their squared deviation
        self._var = 0.0
        self._floor = math.inf  # the no-load RTT
        self._slow_start = True

    @property
    def limit(self) -> int:
        return self._limit

    def try_acquire(self) -> bool:
        with self._lock:
            if self.in_flight >= self._limit:
                self._reached = True  # demand beyond the limit: evidence to grow on
                return False
            self.in_flight += 1
            self._reached |= self.in_flight >= self._limit
            return True

    def release(self, latency: float, overloaded: bool) -> None:
        """A request finished after ``latency`` s; ``overloaded``: 429, 5xx, a timeout or a
        connection error.  ``release(math.inf, False)``: abandoned, no sample."""
        with self._lock:
            self.in_flight = max(0, self.in_flight - 1)
            now = self._clock()
            if now - latency < self._cut_at:
                return  # sent at the old limit: already acted on
            if overloaded:
                self._cut(OVERLOAD_RATIO, now)
                return
            self._rtts.append(latency)
            if len(self._rtts) >= self._limit:
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
        if rtt > floor * QUEUE_FACTOR:  # queueing: Little's law, target / RTT
            self._cut(min(LATENCY_RATIO, max(OVERLOAD_RATIO, floor * QUEUE_FACTOR / rtt)), now)
        elif reached and rtt <= mean + math.sqrt(self._var) and self._limit < self.cap:
            step = (self._limit if self._slow_start
                    else max(1, self._limit // 8) if rtt <= floor * HEADROOM_FACTOR else 1)
            self._limit = min(self.cap, self._limit + step)
        diff = rtt - mean
        self._mean = mean + EWMA_ALPHA * diff
        self._var = (1 - EWMA_ALPHA) * (self._var + EWMA_ALPHA * diff * diff)

    def _cut(self, ratio: float, now: float) -> None:
        self._limit = max(1, min(self._limit - 1, int(self._limit * ratio)))
        self._cut_at, self._slow_start = now, False
        self._rtts, self._reached = [], False


_SHARED: dict[tuple, object] = {}
_SHARED_LOCK = threading.Lock()


def _shared(key: tuple, make):
    with _SHARED_LOCK:
        got = _SHARED.get(key)
        if got is None:
            got = _SHARED[key] = make()
        return got


def process_limit(cfg: FlexpriceOutput) -> FixedLimit | AdaptiveLimit:
    """One limit per process and endpoint: an SDK worker holds several sink instances (every
    Flink subtask of a TaskManager), and ``max_in_flight`` is the endpoint's."""
    return _shared(("limit", cfg.scheme, cfg.api_host, cfg.max_in_flight, cfg.in_flight_cap),
                   lambda: AdaptiveLimit(cfg.in_flight_cap) if cfg.max_in_flight == "adaptive"
                   else FixedLimit(cfg.max_in_flight))


def process_throttle(cfg: FlexpriceOutput) -> Throttle:
    """One Retry-After deferral per process and endpoint."""
    return _shared(("throttle", cfg.scheme, cfg.api_host), lambda: Throttle(cfg.timeout))
