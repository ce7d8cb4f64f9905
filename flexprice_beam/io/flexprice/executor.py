"""``Executor``: every request to Flexprice, first attempts and retries alike, from one thread.

One thread, because a thread per request makes every answer win the GIL back from the bundle
thread, and those hand-offs cost more CPU than the HTTP itself (docs/benchmarks.md).  The caller
submits batches and calls ``poll`` between elements: it starts what the limit and the Retry-After
allow, reads what answered and carries out ``policy.decide``'s action.  A batch comes back from
``poll`` as one ``Outcome`` once each of its events is accepted or dead-lettered.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from flexprice_beam.core.config import FlexpriceOutput
from flexprice_beam.core.logs import Sampler, log_events
from flexprice_beam.core.shutdown import STOP
from flexprice_beam.io.flexprice import policy
from flexprice_beam.io.flexprice.policy import Action, FlexpriceAuthError, Gate, Kind, decide
from flexprice_beam.io.flexprice.transport import BULK_PATH, SINGLE_PATH, HttpTransport, Transport, bulk_of
from flexprice_beam.transforms.batches import Packed
from flexprice_beam.transforms.validate import Prepared

log = logging.getLogger("flexprice_beam.sink")
_SENDING = Sampler()
_ACCEPTED = Sampler()
#: A failed group larger than this is logged as one line (its events are in the dead letters).
_LOG_EACH_FAILURE = 3


@dataclass(slots=True)
class Delivery:
    """An event that was NOT accepted: dead-lettered with the answer that sank it."""

    item: Prepared
    attempts: int
    status: int | None = None
    reason: str | None = None


@dataclass
class Outcome:
    """One submitted batch's results and costs, for metrics on the caller's thread.  Accepted
    events stay packed (an object each costs more than the HTTP request); failures get one."""

    accepted: list[Packed] = field(default_factory=list)
    failed: list[Delivery] = field(default_factory=list)
    requests: int = 0
    retries: dict[str, int] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)  # events per request
    throttled: float = 0.0  # seconds its requests were held back by backoff / Retry-After
    open: int = 0  # parts still in flight or waiting

    @property
    def accepted_count(self) -> int:
        return sum(map(len, self.accepted))

    def accepted_items(self):
        return itertools.chain.from_iterable(self.accepted)


@dataclass(slots=True, eq=False)
class _Job:
    """A part of a submitted batch on its way: the whole, a half, or one event (single)."""

    items: Packed
    outcome: Outcome
    path: str
    started: float = 0.0  # first attempt of this part, for the retry time budget
    attempt: int = 0
    probe: bool = False  # this attempt goes first after a Retry-After (``Throttle``)


class Executor:
    """Non-blocking delivery over one ``Transport``; ``poll`` does the work.  Thread-safe
    (a lock), but meant to be driven by one thread at a time."""

    def __init__(self, transport: Transport, retry: policy.RetryPolicy,
                 limit: policy.FixedLimit | policy.AdaptiveLimit, throttle: policy.Throttle,
                 single: bool = False):
        self.transport = transport
        self.retry = retry
        self.limit = limit
        self.throttle = throttle
        self.single = single
        self.pending = 0  # submitted batches not yet returned by poll
        self.stopped = threading.Event()
        self.stop_reason = "stopped: another request was refused with 401/403"
        self._fresh: deque[_Job] = deque()
        self._later: list[tuple[float, int, _Job]] = []  # retries by due time
        self._seq = itertools.count()
        self.in_flight = 0  # requests sent, answer not read yet
        self._done: list[Outcome] = []
        self._lock = threading.Lock()

    @property
    def waiting(self) -> int:
        """Requests queued: for a permit, the process's Retry-After, or a retry's time."""
        return len(self._fresh) + len(self._later)

    def submit(self, items: list[Prepared] | Packed) -> None:
        """Queue one batch; ``poll`` sends it and returns its ``Outcome`` when done.  A list
        is packed: the caller's objects can go (``Packed`` says why)."""
        if not items:
            return
        log_events(log, _SENDING, items, "📤 Sending event: %s for customer: %s",
                   lambda i: (i.event.get("event_name"), i.event.get("external_customer_id")))
        packed = items if isinstance(items, Packed) else Packed(items)
        outcome = Outcome()
        with self._lock:
            self.pending += 1
            jobs = [_Job(packed[i:i + 1], outcome, SINGLE_PATH) for i in range(len(packed))] \
                if self.single else [_Job(packed, outcome, BULK_PATH)]
            outcome.open = len(jobs)
            self._fresh.extend(jobs)

    def poll(self, timeout: float = 0.0, wait_lock: bool = True) -> list[Outcome]:
        """Start what may start, read what answered (waiting up to ``timeout``), return the
        batches that are done; raise ``FlexpriceAuthError`` once stopped.  ``wait_lock=False``:
        return at once if another thread is polling."""
        if not self._lock.acquire(blocking=wait_lock):
            return []
        try:
            self._start()
            if self.in_flight:
                wait = timeout if not self._done else 0.0
                if self._later:  # wake for a due retry, unless it is held back anyway
                    held = self.throttle.held_for()
                    wait = min(wait, max(0.0, self._later[0][0] - time.monotonic(),
                                         wait if held is None else held))
                for ex in self.transport.ready(wait):
                    self._answered(ex)
                self._start()
            elif timeout and self.waiting and not self._done:
                # nothing of ours in flight: a retry is due later, a 429 defers us, or every
                # permit is held by another sink instance of this process
                due = self._later[0][0] - time.monotonic() if self._later else timeout
                held = self.throttle.remaining() or (0.005 if self._fresh else timeout)
                # at least 5 ms: a due retry still waiting is held by what is not ours to
                # watch (another sender's probe or permits), so do not spin on it
                self.stopped.wait(min(timeout, max(0.005, min(due, held))))
                self._start()
            done, self._done = self._done, []
            return done
        finally:
            self._lock.release()

    def drain(self, timeout: float = 0.05):
        """Yield outcomes until every submitted batch is done."""
        while self.pending:
            yield from self.poll(timeout)

    def close(self) -> None:
        """Abandon what is in flight (never acknowledged, so never counted): its permits
        go back to the process's other senders."""
        with self._lock:
            for _ in range(self.in_flight):
                self.limit.release()
            self.in_flight = 0
        self.transport.close()

    def _start(self) -> None:
        if self.stopped.is_set():
            raise FlexpriceAuthError(self.stop_reason)
        now = time.monotonic()
        while self._later and self._later[0][0] <= now:
            if not self._send(self._later[0][2], now):
                return
            heapq.heappop(self._later)
        while self._fresh:
            if not self._send(self._fresh[0], now):
                return
            self._fresh.popleft()

    def _send(self, job: _Job, now: float) -> bool:
        gate = self.throttle.admit()
        if gate is Gate.WAIT:
            return False
        if not self.limit.try_acquire():
            if gate is Gate.PROBE:
                self.throttle.withdraw()
            return False
        job.probe = gate is Gate.PROBE
        if job.attempt == 0:
            job.started = now
        job.attempt += 1
        body = job.items.joined() if job.path is SINGLE_PATH else bulk_of(job.items.joined())
        self.in_flight += 1
        self.transport.send(job.path, body, job)
        return True

    def _answered(self, ex) -> None:
        job: _Job = ex.tag
        answer = self.transport.read(ex)
        self.in_flight -= 1
        self.limit.release(answer.latency, overloaded=answer.kind is Kind.RETRY)
        out = job.outcome
        out.requests += 1
        out.latencies.append(answer.latency)
        out.sizes.append(len(job.items))
        now, stopping = time.monotonic(), STOP.requested.is_set()
        d = decide(answer, attempt=job.attempt, elapsed=now - job.started,
                   size=len(job.items), retry=self.retry, base_url=self.transport.base_url,
                   environment_id=self.transport.environment_id,
                   stopping=STOP.signal_name if stopping else None,
                   grace=STOP.deadline - now if stopping and STOP.deadline is not None else None)
        if job.probe:
            if answer.status != 429:  # the API takes requests again
                self.throttle.opened()
            elif not d.defer_all:  # a 429 that ends in a dead letter: the next one probes
                self.throttle.withdraw()
        if d.action is Action.ACCEPT:
            out.accepted.append(job.items)
            log_events(log, _ACCEPTED, range(len(job.items)),
                       "✅ Event accepted successfully, ID: %s",
                       lambda i: (job.items.sent(i).get("event_id"),))
        elif d.action is Action.RETRY:
            out.retries[d.cause] = out.retries.get(d.cause, 0) + 1
            out.throttled += d.delay
            if d.defer_all:
                self.throttle.defer(d.delay)
            log.info("Flexprice %s; retrying %d events in %.2fs (attempt %d)",
                     answer.describe()[:200], len(job.items), d.delay, job.attempt + 1)
            heapq.heappush(self._later, (time.monotonic() + d.delay, next(self._seq), job))
            return
        elif d.action is Action.SPLIT:
            mid = len(job.items) // 2
            log.info("Flexprice rejected a batch of %d (%s); isolating the bad events",
                     len(job.items), d.reason[:200])
            out.open += 1
            self._fresh.extendleft([_Job(job.items[mid:], out, job.path),
                                    _Job(job.items[:mid], out, job.path)])
            return
        elif d.action is Action.STOP:
            # Every later poll stops with the same words: whichever error the runner
            # reports then names the cause, not just "another request failed".
            self.stop_reason = d.reason
            self.stopped.set()
            raise FlexpriceAuthError(d.reason)
        else:
            _log_failure(logging.ERROR if d.gave_up else logging.WARNING, job.items, d.reason)
            out.failed.extend(Delivery(i, job.attempt, answer.status, d.reason)
                              for i in job.items)
        out.open -= 1
        if out.open == 0:
            self.pending -= 1
            self._done.append(out)


def executor_for(cfg: FlexpriceOutput, transport: Transport | None = None) -> Executor:
    """The engine for ``cfg``, with the process's limit and throttle."""
    return Executor(transport or HttpTransport(cfg), policy.RetryPolicy.from_config(cfg.retry),
                    policy.process_limit(cfg), policy.process_throttle(cfg),
                    single=cfg.mode == "single")


def deliver(executor: Executor, batches: list[list[Prepared]]) -> list[Outcome]:
    """Send ``batches``; return once each is accepted or dead-lettered (replays)."""
    for batch in batches:
        executor.submit(Packed(batch, keep=True))
    return list(executor.drain())


def _log_failure(level: int, items: Sequence[Prepared], why: str) -> None:
    if len(items) <= _LOG_EACH_FAILURE:
        for i in items:
            log.log(level, "Failed to send event %s (%s for customer %s): %s",
                    i.event.get("event_id"), i.event.get("event_name"),
                    i.event.get("external_customer_id"), why[:300])
        return
    ids = ", ".join(str(i.event.get("event_id")) for i in items[:3])
    log.log(level, "Failed to send %d events (%s, …): %s; they go to the dead letters",
            len(items), ids, why[:300])
