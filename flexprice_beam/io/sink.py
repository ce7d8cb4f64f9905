"""``WriteToFlexprice``: the batched Flexprice sink.

Lists of prepared events go into a per-bundle buffer that is cut into API batches by
count, bytes or age, and up to ``max_in_flight`` batches are in flight at once so network
waits overlap with processing.  First attempts are sent from the bundle thread without
blocking it (``io.inline``); anything but a 2xx answer hands the batch to a thread pool
where ``EventDeliverer`` retries, bisects or stops.  A bundle only finishes once every
batch it took was accepted or dead-lettered: that is what makes a runner's checkpoint
(and Kafka offset commit) never run ahead of Flexprice.  Metrics are counted on the
bundle thread, where Beam's metric container lives, never in the pool's threads.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass

import apache_beam as beam
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.windowed_value import WindowedValue

from flexprice_beam.core import live
from flexprice_beam.core.config import MAX_BODY_BYTES, FlexpriceOutput
from flexprice_beam.core.events import dead_letter
from flexprice_beam.core.offsets import TRACKER as OFFSETS
from flexprice_beam.core.offsets import Partition, kafka_position
from flexprice_beam.io.client import Answer, FlexpriceAuthError, FlexpriceClient, Kind
from flexprice_beam.io.deliver import BatchOutcome, Delivery, EventDeliverer
from flexprice_beam.io.flexprice.concurrency import AdaptiveLimit, FixedLimit
from flexprice_beam.io.inline import InlineSender
from flexprice_beam.io.retry import RetryPolicy, Throttle
from flexprice_beam.transforms.mapping import DEAD_LETTER
from flexprice_beam.transforms.validate import Prepared

log = logging.getLogger("flexprice_beam.sink")

_ENVELOPE = len(b'{"events":[]}')

# One SDK worker process can hold several instances of the sink (Flink runs every parallel
# subtask of a TaskManager in one Python worker; Dataflow runs many bundles per process), so
# ``max_in_flight`` is enforced per process and API endpoint, not per DoFn instance; an
# adaptive limit learns the endpoint's capacity from every instance's answers.
_PERMITS: dict[tuple, FixedLimit | AdaptiveLimit] = {}
_PERMITS_LOCK = threading.Lock()


def process_limit(cfg: FlexpriceOutput) -> FixedLimit | AdaptiveLimit:
    key = (cfg.scheme, cfg.api_host, cfg.max_in_flight, cfg.in_flight_cap)
    with _PERMITS_LOCK:
        limit = _PERMITS.get(key)
        if limit is None:
            limit = _PERMITS[key] = (AdaptiveLimit(cfg.in_flight_cap)
                                     if cfg.max_in_flight == "adaptive"
                                     else FixedLimit(cfg.max_in_flight))
        return limit


def delivery_dead_letter(d: Delivery) -> dict:
    return dead_letter("delivery", d.reason or "rejected", record=d.item.record,
                       event=d.item.event, status=d.status)


@dataclass(slots=True)
class Delivered:
    """The sink's main output, one per API batch: how many events Flexprice accepted and,
    for Kafka records, the highest accepted offset per partition. Deliberately small: Beam
    samples element sizes by encoding them, and the events themselves are not needed here."""

    count: int
    offsets: dict[Partition, int]

    @classmethod
    def of(cls, outcome: BatchOutcome) -> Delivered:
        best: dict[Partition, int] = {}
        for part in outcome.accepted:
            if not part or kafka_position(part[0].record.origin) is None:
                continue  # one source per pipeline: not Kafka, no per-event look
            for item in part:
                key, offset = kafka_position(item.record.origin)
                if offset > best.get(key, -1):
                    best[key] = offset
        return cls(outcome.accepted_count, best)


class _BatchBuffer:
    """Cuts a stream of events into API batches by count and body size."""

    def __init__(self, max_count: int, max_bytes: int):
        self.max_count = max_count
        self.max_bytes = min(max_bytes, MAX_BODY_BYTES)
        self.items: list[Prepared] = []
        self.size = _ENVELOPE
        self.since = 0.0

    def add(self, item: Prepared) -> list[list[Prepared]]:
        """Add one event; return the batches that became full (usually none)."""
        full = []
        extra = len(item.body) + 1
        if self.items and self.size + extra > self.max_bytes:
            full.append(self.take())
        if not self.items:
            self.since = time.monotonic()
        self.items.append(item)
        self.size += extra
        if len(self.items) >= self.max_count:
            full.append(self.take())
        return full

    def extend(self, items: list[Prepared]) -> list[list[Prepared]]:
        """Add a list of events; return the batches that became full.

        Whole slices at a time: lists arrive about batch-sized and far below the byte
        limit, so the per-event work is one ``len`` (falls back to ``add`` near the limit).
        """
        full = []
        i, n = 0, len(items)
        while i < n:
            chunk = items[i:i + self.max_count - len(self.items)]
            extra = sum([len(x.body) for x in chunk]) + len(chunk)
            if self.size + extra > self.max_bytes:
                for item in chunk:
                    full.extend(self.add(item))
            else:
                if not self.items:
                    self.since = time.monotonic()
                    self.items = chunk
                else:
                    self.items.extend(chunk)
                self.size += extra
                if len(self.items) >= self.max_count:
                    full.append(self.take())
            i += len(chunk)
        return full

    def take(self) -> list[Prepared]:
        items, self.items, self.size = self.items, [], _ENVELOPE
        return items

    def age(self) -> float:
        return time.monotonic() - self.since if self.items else 0.0


def _in_global_window(out):
    """finish_bundle outputs must carry their window explicitly."""
    if isinstance(out, beam.pvalue.TaggedOutput):
        return beam.pvalue.TaggedOutput(out.tag, _in_global_window(out.value))
    return WindowedValue(out, GlobalWindow().max_timestamp(), [GlobalWindow()])


class _FlexpriceSinkFn(beam.DoFn):
    """list[Prepared] → one ``Delivered`` per API batch, dead letters on ``dead_letter``."""

    def __init__(self, cfg: FlexpriceOutput):
        self._cfg = cfg
        self._accepted = live.counter("events_accepted")
        self._dead = live.counter("events_dead_lettered_delivery")
        self._batches = live.counter("batches_sent")
        self._requests = live.counter("requests_sent")
        self._retries = live.counter("retries")
        self._latency = live.histogram("request_duration_seconds", ms="request_latency_ms")
        self._in_flight = live.gauge("batches_in_flight")
        self._limit_gauge = live.gauge("concurrency_limit")
        self._limit_shown = 0
        self._retry_causes: dict[str, object] = {}

    # -- lifecycle -------------------------------------------------------------------------

    def setup(self) -> None:
        cfg = self._cfg
        self._client = FlexpriceClient(cfg)
        self._throttle = Throttle()
        self._permits = process_limit(cfg)
        self._deliverer = EventDeliverer(self._client, RetryPolicy.from_config(cfg.retry),
                                         self._throttle, single=cfg.mode == "single")
        self._pool = ThreadPoolExecutor(cfg.in_flight_cap, thread_name_prefix="flexprice-post")
        # First attempts go out from this thread (io/inline.py); the seed's one-event-per-
        # request mode keeps the plain thread pool.
        self._inline = None if cfg.mode == "single" else InlineSender(
            self._client, self._permits, cfg.timeout)
        self._queue: deque[list[Prepared]] = deque()  # cut, waiting for a free permit
        # The inline sender is single-threaded: the bundle thread uses it, and the flusher
        # reads answers an idle bundle left unread (they hold per-process permits).
        self._io_lock = threading.Lock()
        self._ready: list[tuple[list[Prepared], Answer]] = []
        self._last_pump = time.monotonic()
        self._max_pending = cfg.in_flight_cap * 2  # bounded memory: the rest waits upstream
        self._lock = threading.Lock()
        self._stop_flusher = threading.Event()
        self._buffer = _BatchBuffer(cfg.batching.count, cfg.batching.byte_size)
        self._pending: set[Future] = set()
        log.info("Flexprice output connected and ready (%s, mode=%s, max_in_flight=%s)",
                 self._client.base_url, cfg.mode, cfg.max_in_flight)
        # Age-based flush for bundles that never end (an unbounded source on one worker).
        self._flusher = threading.Thread(target=self._flush_aged, name="flexprice-flush",
                                         daemon=True)
        self._flusher.start()

    def teardown(self) -> None:
        self._stop_flusher.set()
        self._flusher.join(timeout=5)  # it may be reading answers from the inline sender
        if self._inline is not None:
            self._inline.close()
        self._pool.shutdown(wait=True, cancel_futures=False)
        self._client.close()

    def start_bundle(self) -> None:
        if self._throttle.stopped.is_set():
            raise RuntimeError("the Flexprice sink was stopped by an authentication failure")

    # -- elements ---------------------------------------------------------------------------

    def process(self, items: list[Prepared]):
        with self._lock:
            full = self._buffer.extend(items)
            if self._buffer.age() >= self._cfg.batching.period:
                full.append(self._buffer.take())
        self._queue.extend(full)
        yield from self._pump(block=self._backlog() >= self._max_pending)

    def finish_bundle(self):
        with self._lock:
            if self._buffer.items:
                self._queue.append(self._buffer.take())
        while self._backlog():
            for out in self._pump(block=True):
                yield _in_global_window(out)

    # -- internals --------------------------------------------------------------------------

    def _backlog(self) -> int:
        inline = self._inline.in_flight if self._inline is not None else 0
        return len(self._queue) + inline + len(self._pending) + len(self._ready)

    def _pump(self, block: bool):
        """Start queued batches and yield what finished; with ``block``, wait for something."""
        while True:
            with self._io_lock:
                self._last_pump = time.monotonic()
                self._start_queued()
                answers, self._ready = self._ready, []
                if self._inline_busy():
                    # Waiting here (not in a pool thread) keeps answers off the GIL's hand-off
                    # path; pool results are checked at least every 5 ms meanwhile.
                    answers += self._inline.poll(0.005 if block and not answers else 0.0)
            for batch, answer in answers:
                if answer.kind is Kind.ACCEPTED:
                    yield from self._account(BatchOutcome([batch], [], 1, {}, [answer.latency]))
                    EventDeliverer.note_accepted(batch)
                else:  # retries, bisection, auth: the deliverer's job, off this thread
                    self._submit(batch, answer)
            produced = bool(answers)
            for out in self._harvest(block=block and not produced and not self._inline_busy()):
                produced = True
                yield out
            if produced or not block or not self._backlog():
                return
            if not self._inline_busy() and not self._pending:
                time.sleep(0.005)  # queued, but every permit is held by another instance

    def _inline_busy(self) -> bool:
        return self._inline is not None and self._inline.in_flight > 0

    def _start_queued(self) -> None:
        """Send queued batches from this thread while permits are free and nothing defers
        us (a 429's Retry-After); the single mode hands them to the pool."""
        if self._permits.limit != self._limit_shown:  # adaptive: the live limit, /metrics
            self._limit_shown = self._permits.limit
            self._limit_gauge.set(self._limit_shown)
        inline = self._inline
        while self._queue:
            if inline is None:
                self._submit(self._queue.popleft())
                continue
            if not self._throttle.clear():
                if self._throttle.stopped.is_set():
                    live.LIVE.stop(self._deliverer.stop_reason)
                    raise FlexpriceAuthError(self._deliverer.stop_reason)
                return
            batch = self._queue[0]
            sent = inline.try_send(batch)
            if sent is False:
                return
            self._queue.popleft()
            EventDeliverer.note_sending(batch)
            if sent is not True:  # the send itself failed: continue from that answer
                self._submit(batch, sent)
        self._in_flight.set(self._backlog())

    def _read_idle_answers(self) -> None:
        """Flusher: read answers the bundle thread has not come back for (an idle bundle
        between elements), so their permits return to other instances in this process."""
        if not self._inline_busy() or time.monotonic() - self._last_pump < 0.25:
            return
        if not self._io_lock.acquire(blocking=False):
            return
        try:
            for batch, answer in self._inline.poll(0.0):
                if answer.kind is Kind.ACCEPTED:
                    self._ready.append((batch, answer))  # counted by the bundle thread
                else:
                    self._submit(batch, answer)
        finally:
            self._io_lock.release()

    def _submit(self, batch: list[Prepared], first: Answer | None = None) -> None:
        if batch:
            with self._lock:
                self._pending.add(self._pool.submit(self._deliver, batch, first))
            live.LIVE.set_gauge("batches_in_flight", self._backlog())

    def _deliver(self, batch: list[Prepared], first: Answer | None) -> BatchOutcome:
        """Retries hold a slot of the process's limit throughout, backoff included: while
        the API refuses, the bundle's next batches wait instead of piling up (the sink's
        memory bound); the limit learns from the retries' own answers (``first`` was the
        inline sender's to report)."""
        wait = 0.001
        while not self._permits.try_acquire():  # every slot in use (an adaptive limit may be
            time.sleep(wait)                    # 1): poll, ever less often, up to 50 ms
            wait = min(wait * 2, 0.05)
        outcome = None
        try:
            outcome = self._deliverer.deliver(batch, first)
            return outcome
        finally:
            if outcome is None or not outcome.latencies:  # raised: nothing to learn from
                self._permits.release(math.inf, False)
            else:
                own = sum(outcome.retries.values()) - (first is not None)
                self._permits.release(outcome.latencies[-1], own > 0)

    def _flush_aged(self) -> None:
        period = max(self._cfg.batching.period, 0.01)
        while not self._stop_flusher.wait(min(period / 4, 0.25)):
            with self._lock:
                batch = self._buffer.take() if self._buffer.age() >= period else None
            if batch:
                self._submit(batch)
            self._read_idle_answers()

    def _harvest(self, block: bool):
        """Yield results of finished pool batches; with ``block``, wait for at least one."""
        with self._lock:
            pending = set(self._pending)
        if not pending:
            return
        done, _ = wait(pending, timeout=None if block else 0, return_when=FIRST_COMPLETED)
        for fut in done:
            with self._lock:
                self._pending.discard(fut)
            try:
                outcome = fut.result()
            except FlexpriceAuthError as exc:
                live.LIVE.stop(str(exc))  # /ping turns 503 before the runner gives up
                raise
            yield from self._account(outcome)

    def _account(self, outcome: BatchOutcome):
        self._batches.inc()
        self._requests.inc(outcome.requests)
        for ms in outcome.latencies:
            self._latency.observe(ms)
        for cause, n in outcome.retries.items():
            self._retries.inc(n)
            counter = self._retry_causes.get(cause)
            if counter is None:
                counter = self._retry_causes[cause] = live.counter(f"retries_{cause}")
            counter.inc(n)
        self._accepted.inc(outcome.accepted_count)
        for part in outcome.accepted:  # one per batch, for ``run --read-back``
            if part and live.LIVE.sampling:
                live.LIVE.sample_accepted(part[0].event["event_id"], part[0].event["timestamp"])
        self._in_flight.set(self._backlog())
        if OFFSETS.enabled:  # dead letters: once written (dead_letter.py)
            for item in outcome.accepted_items():
                OFFSETS.done(item.record.origin)
        for d in outcome.failed:
            self._dead.inc()
            yield beam.pvalue.TaggedOutput(DEAD_LETTER, delivery_dead_letter(d))
        yield Delivered.of(outcome)


class WriteToFlexprice(beam.PTransform):
    """PCollection[list[Prepared]] → (deliveries, dead_letter) via ``POST /v1/events/bulk``.

    The main output holds one ``Delivered`` per API batch (a count and, for Kafka, the
    accepted offsets, so a bounded run can commit them); dead letters carry the server's
    reason.
    """

    def __init__(self, cfg: FlexpriceOutput):
        super().__init__()
        self._cfg = cfg

    def expand(self, pcoll):
        return pcoll | "PostBatches" >> beam.ParDo(_FlexpriceSinkFn(self._cfg)).with_outputs(
            DEAD_LETTER, main="deliveries")
