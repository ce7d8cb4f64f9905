"""``WriteToFlexprice``: the batched Flexprice sink.

Lists of prepared events are cut into API batches by count, bytes or age and handed to the
``Executor``.  A bundle finishes only once every batch it took was accepted or dead-lettered,
so a checkpoint (and Kafka offset commit) never runs ahead of Flexprice.  Metrics are counted
on the bundle thread, where Beam's metric container lives.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.windowed_value import WindowedValue

from flexprice_beam.core import live
from flexprice_beam.core.config import FlexpriceOutput
from flexprice_beam.core.events import dead_letter
from flexprice_beam.core.offsets import TRACKER as OFFSETS
from flexprice_beam.core.offsets import Partition
from flexprice_beam.io.flexprice.executor import Delivery, Outcome, executor_for
from flexprice_beam.io.flexprice.policy import FlexpriceAuthError
from flexprice_beam.io.flexprice.transport import Transport
from flexprice_beam.transforms.batches import BatchBuffer, positions
from flexprice_beam.transforms.mapping import DEAD_LETTER
from flexprice_beam.transforms.validate import Prepared

log = logging.getLogger("flexprice_beam.sink")
_PENDING_WHILE_THROTTLED = 2  # the probe's batch and the next one


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
    def of(cls, outcome: Outcome) -> Delivered:
        best: dict[Partition, int] = {}
        for part in outcome.accepted:
            for key, offset in positions(part):  # none unless read from Kafka
                if offset > best.get(key, -1):
                    best[key] = offset
        return cls(outcome.accepted_count, best)


def _in_global_window(out):
    """finish_bundle outputs must carry their window explicitly."""
    if isinstance(out, beam.pvalue.TaggedOutput):
        return beam.pvalue.TaggedOutput(out.tag, _in_global_window(out.value))
    return WindowedValue(out, GlobalWindow().max_timestamp(), [GlobalWindow()])


class _FlexpriceSinkFn(beam.DoFn):
    """list[Prepared] → one ``Delivered`` per API batch, dead letters on ``dead_letter``.

    Bundles that never end (an unbounded source on one worker): a timer thread cuts batches
    older than ``batching.period`` and polls the executor without blocking (nothing, if the
    bundle thread is polling), so they go out and permits come back between elements; the
    bundle thread counts what finished."""

    def __init__(self, cfg: FlexpriceOutput,
                 transport: Callable[[FlexpriceOutput], Transport] | None = None):
        self._cfg = cfg
        self._transport = transport
        self._accepted = live.counter("events_accepted")
        self._dead = live.counter("events_dead_lettered_delivery")
        self._batches = live.counter("batches_sent")
        self._requests = live.counter("requests_sent")
        self._retries = live.counter("retries")
        # Beam's standard name, which Dataflow's autoscaler reads; /metrics has it snake_case
        self._throttled = Metrics.counter(live.NAMESPACE, "cumulativeThrottlingSeconds")
        self._latency = live.histogram("request_duration_seconds", ms="request_latency_ms")
        self._size = live.distribution("batch_size_events")
        self._in_flight = live.gauge("batches_in_flight")
        self._limit_gauge = live.gauge("concurrency_limit")  # max_in_flight, or adaptive's now
        self._limit_shown = 0
        self._retry_causes: dict[str, object] = {}

    def setup(self) -> None:
        cfg = self._cfg
        self._engine = executor_for(cfg, self._transport(cfg) if self._transport else None)
        self._max_pending = cfg.in_flight_cap * 2  # bounded memory: the rest waits upstream
        self._buffer = BatchBuffer(cfg.batching.count, cfg.batching.byte_size)
        self._lock = threading.Lock()  # the buffer and ``_ready``: bundle thread and timer
        self._ready: list[Outcome] = []
        log.info("Flexprice output connected and ready (%s, mode=%s, max_in_flight=%s)",
                 self._engine.transport.base_url, cfg.mode, cfg.max_in_flight)
        self._stop_timer = threading.Event()
        self._timer = threading.Thread(target=self._flush_aged, name="flexprice-flush",
                                       daemon=True)
        self._timer.start()

    def teardown(self) -> None:
        self._stop_timer.set()
        self._timer.join(timeout=5)
        self._engine.close()

    def start_bundle(self) -> None:
        if self._engine.stopped.is_set():
            raise RuntimeError("the Flexprice sink was stopped by an authentication failure")

    def process(self, items: list[Prepared]):
        with self._lock:
            full = self._buffer.extend(items)
            if self._buffer.age() >= self._cfg.batching.period:
                full.append(self._buffer.take())
        for batch in full:
            self._engine.submit(batch)
        yield from self._collect(block=self._engine.pending >= self._pending_cap())

    def _pending_cap(self) -> int:
        """Batches this sink holds before its bundle waits.  While a Retry-After holds the
        process, only what the probe needs: the API takes nothing, so more would only be
        memory (P4's storm: 32 packed batches, ~7 MiB) and the source can wait instead."""
        return _PENDING_WHILE_THROTTLED if self._engine.throttle.limiting else self._max_pending

    def finish_bundle(self):
        with self._lock:
            if self._buffer.items:
                self._engine.submit(self._buffer.take())
        while self._busy():
            for out in self._collect(block=True):
                yield _in_global_window(out)

    def _busy(self) -> bool:
        with self._lock:  # the timer moves outcomes from the executor to _ready under it
            return bool(self._engine.pending or self._ready)

    def _collect(self, block: bool):
        """Drive the executor; with ``block``, until at least one batch is done."""
        while True:
            try:
                done = self._engine.poll(0.05 if block else 0.0)
            except FlexpriceAuthError as exc:
                live.LIVE.stop(str(exc))  # /ping turns 503 before the runner gives up
                raise
            with self._lock:
                if self._ready:
                    done, self._ready = self._ready + done, []
            for outcome in done:
                yield from self._account(outcome)
            self._in_flight.set(self._engine.pending)
            if self._engine.limit.limit != self._limit_shown:
                self._limit_shown = self._engine.limit.limit
                self._limit_gauge.set(self._limit_shown)
            if done or not block or not self._engine.pending:
                return

    def _flush_aged(self) -> None:
        period = max(self._cfg.batching.period, 0.01)
        while not self._stop_timer.wait(min(period / 4, 0.25)):
            with self._lock:
                batch = self._buffer.take() if self._buffer.age() >= period else None
            if batch:
                self._engine.submit(batch)
            if not self._engine.pending:
                continue
            with self._lock:
                try:
                    self._ready.extend(self._engine.poll(0.0, wait_lock=False))
                except FlexpriceAuthError:
                    pass  # raised again to the bundle thread on its next poll

    def _account(self, outcome: Outcome):
        self._batches.inc()
        self._requests.inc(outcome.requests)
        for seconds in outcome.latencies:
            self._latency.observe(seconds)
        for n in outcome.sizes:
            self._size.update(n)
        if outcome.throttled:  # whole seconds, rounded up as Beam's Datastore IO does
            self._throttled.inc(math.ceil(outcome.throttled))
            live.LIVE.inc("throttling_seconds", math.ceil(outcome.throttled))
        for cause, n in outcome.retries.items():
            self._retries.inc(n)
            if cause not in self._retry_causes:
                self._retry_causes[cause] = live.counter(f"retries_{cause}")
            self._retry_causes[cause].inc(n)
        self._accepted.inc(outcome.accepted_count)
        for part in outcome.accepted:
            if part and live.LIVE.sampling:  # one per batch, for ``run --read-back``
                first = part.sent(0)
                live.LIVE.sample_accepted(first["event_id"], first["timestamp"])
            if OFFSETS.enabled:  # dead letters: once written (dead_letter.py)
                OFFSETS.done_many(part.positions())
        for d in outcome.failed:
            self._dead.inc()
            yield beam.pvalue.TaggedOutput(DEAD_LETTER, delivery_dead_letter(d))
        yield Delivered.of(outcome)


@dataclass
class WriteResult:
    """As BigQuery's: ``deliveries`` (one ``Delivered`` per API batch) and ``failed`` (dead
    letters); None where a sink (a dry run, a no-op) has no such output."""

    deliveries: beam.PCollection | None = None
    failed: beam.PCollection | None = None


class WriteToFlexprice(beam.PTransform):
    """PCollection[list[Prepared]] → ``WriteResult`` via ``POST /v1/events/bulk``.

    ``transport`` builds the transport on the worker (tests pass a fake; default HTTP).
    """

    def __init__(self, cfg: FlexpriceOutput,
                 transport: Callable[[FlexpriceOutput], Transport] | None = None):
        super().__init__()
        self._cfg = cfg
        self._transport = transport

    def expand(self, pcoll) -> WriteResult:
        out = pcoll | "PostBatches" >> beam.ParDo(
            _FlexpriceSinkFn(self._cfg, self._transport)).with_outputs(DEAD_LETTER,
                                                                       main="deliveries")
        return WriteResult(out.deliveries, out[DEAD_LETTER])
