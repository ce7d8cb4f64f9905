"""``WriteToFlexprice``: the batched Flexprice sink.

Lists of prepared events go into a per-bundle buffer that is cut into API batches by
count, bytes or age, and up to ``max_in_flight`` batches are posted concurrently by a
thread pool so network waits overlap with processing.  A bundle only finishes once every
batch it took was accepted or dead-lettered: that is what makes a runner's checkpoint
(and Kafka offset commit) never run ahead of Flexprice.  Metrics are counted on the
bundle thread, where Beam's metric container lives, never in the pool's threads.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait

import apache_beam as beam
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.windowed_value import WindowedValue

from flexprice_beam.config import MAX_BODY_BYTES, FlexpriceOutput
from flexprice_beam.events import dead_letter
from flexprice_beam.io.client import FlexpriceAuthError, FlexpriceClient
from flexprice_beam.io.deliver import BatchOutcome, Delivery, EventDeliverer
from flexprice_beam.io.offsets import TRACKER as OFFSETS
from flexprice_beam.io.retry import RetryPolicy, Throttle
from flexprice_beam.ops import live
from flexprice_beam.transforms.mapping import DEAD_LETTER
from flexprice_beam.transforms.validate import Prepared

log = logging.getLogger("flexprice_beam.sink")

_ENVELOPE = len(b'{"events":[]}')

# One SDK worker process can hold several instances of the sink (Flink runs every parallel
# subtask of a TaskManager in one Python worker; Dataflow runs many bundles per process), so
# ``max_in_flight`` is enforced per process and API endpoint, not per DoFn instance.
_PERMITS: dict[tuple, threading.BoundedSemaphore] = {}
_PERMITS_LOCK = threading.Lock()


def process_permits(cfg: FlexpriceOutput) -> threading.BoundedSemaphore:
    key = (cfg.scheme, cfg.api_host, cfg.max_in_flight)
    with _PERMITS_LOCK:
        sem = _PERMITS.get(key)
        if sem is None:
            sem = _PERMITS[key] = threading.BoundedSemaphore(cfg.max_in_flight)
        return sem


def delivery_dead_letter(d: Delivery) -> dict:
    return dead_letter("delivery", d.reason or "rejected", record=d.item.record,
                       event=d.item.event, status=d.status)


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
    """list[Prepared] → list[Delivery] per API batch, dead letters on ``dead_letter``."""

    def __init__(self, cfg: FlexpriceOutput):
        self._cfg = cfg
        self._accepted = live.counter("events_accepted")
        self._dead = live.counter("events_dead_lettered_delivery")
        self._batches = live.counter("batches_sent")
        self._requests = live.counter("requests_sent")
        self._retries = live.counter("retries")
        self._latency = live.distribution("request_latency_ms")
        self._in_flight = live.gauge("batches_in_flight")
        self._retry_causes: dict[str, object] = {}

    # -- lifecycle -------------------------------------------------------------------------

    def setup(self) -> None:
        cfg = self._cfg
        self._client = FlexpriceClient(cfg)
        self._throttle = Throttle()
        self._deliverer = EventDeliverer(self._client, RetryPolicy.from_config(cfg.retry),
                                         self._throttle, single=cfg.mode == "single")
        self._pool = ThreadPoolExecutor(cfg.max_in_flight, thread_name_prefix="flexprice-post")
        self._permits = process_permits(cfg)
        self._max_pending = cfg.max_in_flight * 2  # bounded memory: the rest waits upstream
        self._lock = threading.Lock()
        self._stop_flusher = threading.Event()
        self._buffer = _BatchBuffer(cfg.batching.count, cfg.batching.byte_size)
        self._pending: set[Future] = set()
        log.info("Flexprice output connected and ready (%s, mode=%s, max_in_flight=%d)",
                 self._client.base_url, cfg.mode, cfg.max_in_flight)
        # Age-based flush for bundles that never end (an unbounded source on one worker).
        self._flusher = threading.Thread(target=self._flush_aged, name="flexprice-flush",
                                         daemon=True)
        self._flusher.start()

    def teardown(self) -> None:
        self._stop_flusher.set()
        self._pool.shutdown(wait=True, cancel_futures=False)
        self._client.close()

    def start_bundle(self) -> None:
        if self._throttle.stopped.is_set():
            raise RuntimeError("the Flexprice sink was stopped by an authentication failure")

    # -- elements ---------------------------------------------------------------------------

    def process(self, items: list[Prepared]):
        with self._lock:
            for item in items:
                for batch in self._buffer.add(item):
                    self._submit(batch)
            if self._buffer.age() >= self._cfg.batching.period:
                self._submit(self._buffer.take())
        yield from self._harvest(block=len(self._pending) >= self._max_pending)

    def finish_bundle(self):
        with self._lock:
            if self._buffer.items:
                self._submit(self._buffer.take())
        while self._pending:
            for out in self._harvest(block=True):
                yield _in_global_window(out)

    # -- internals --------------------------------------------------------------------------

    def _submit(self, batch: list[Prepared]) -> None:
        if batch:
            self._pending.add(self._pool.submit(self._deliver, batch))
            live.LIVE.set_gauge("batches_in_flight", len(self._pending))

    def _deliver(self, batch: list[Prepared]) -> BatchOutcome:
        with self._permits:  # at most max_in_flight requests per worker process
            return self._deliverer.deliver(batch)

    def _flush_aged(self) -> None:
        period = max(self._cfg.batching.period, 0.01)
        while not self._stop_flusher.wait(min(period / 4, 0.25)):
            with self._lock:
                if self._buffer.age() >= period:
                    self._submit(self._buffer.take())

    def _harvest(self, block: bool):
        """Yield results of finished batches; with ``block``, wait for at least one."""
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
            self._latency.update(int(ms * 1000))
        for cause, n in outcome.retries.items():
            self._retries.inc(n)
            counter = self._retry_causes.get(cause)
            if counter is None:
                counter = self._retry_causes[cause] = live.counter(f"retries_{cause}")
            counter.inc(n)
        accepted = sum(1 for d in outcome.deliveries if d.accepted)
        self._accepted.inc(accepted)
        self._in_flight.set(len(self._pending))
        for d in outcome.deliveries:
            if d.accepted:
                OFFSETS.done(d.item.record.origin)  # dead letters: once written (dead_letter.py)
            else:
                self._dead.inc()
                yield beam.pvalue.TaggedOutput(DEAD_LETTER, delivery_dead_letter(d))
        yield outcome.deliveries


class WriteToFlexprice(beam.PTransform):
    """PCollection[list[Prepared]] → (deliveries, dead_letter) via ``POST /v1/events/bulk``.

    The main output holds one list of ``Delivery`` per API batch, so a run can be reconciled
    (and Kafka offsets committed) per event; dead letters carry the server's reason.
    """

    def __init__(self, cfg: FlexpriceOutput):
        super().__init__()
        self._cfg = cfg

    def expand(self, pcoll):
        return pcoll | "PostBatches" >> beam.ParDo(_FlexpriceSinkFn(self._cfg)).with_outputs(
            DEAD_LETTER, main="deliveries")
