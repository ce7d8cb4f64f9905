"""``GenerateEvents``: synthetic usage records (the Bento ``generate`` input), in batches.

Deterministic from ``seed``: record ``i`` always has the same payload, id ``gen-<seed>-<i>``
and timestamp ``start_time + i·interval`` — so re-running a generator config replays the
same events, which Flexprice deduplicates, instead of billing them again.  Batches of
``batch_size`` records leave the source as one element each (batch early).
"""

from __future__ import annotations

import datetime as dt
import random
import time
from collections.abc import Iterator

import apache_beam as beam
from apache_beam.metrics import Metrics

from flexprice_beam.core.config import GenerateInput
from flexprice_beam.core.events import Record, parse_timestamp, rfc3339
from flexprice_beam.core.shutdown import STOP
from flexprice_beam.transforms.batches import Batch


def start_time(cfg: GenerateInput) -> dt.datetime:
    if cfg.start_time:
        return parse_timestamp(cfg.start_time)
    return dt.datetime.now(dt.timezone.utc).replace(microsecond=0)


def generate_batch(cfg: GenerateInput, start: dt.datetime, first: int, last: int) -> list[Record]:
    """Records ``first``..``last-1``.

    Record ``i`` depends on (seed, batch_size, i) only, not on how a run cut its batches: the
    random stream restarts at every multiple of ``batch_size`` and the draws before ``first``
    are replayed. The real-time generator cuts batches by the clock, so before this a re-run
    (after SIGTERM, a crash) gave an event another value or customer under the same
    event_id and timestamp — which Flexprice would keep instead of the one billed first.
    """
    block = cfg.batch_size
    lo, hi = cfg.value_range
    step = dt.timedelta(seconds=cfg.interval)
    fixed_ts = None if step else rfc3339(start)  # interval 0: one timestamp, formatted once
    regions = ("eu", "us", "ap")
    out = []
    rng = random.Random(0)  # reseeded below; unseeded it reads os.urandom and drops the GIL
    for i in range(first - first % block, last):
        if i % block == 0:
            rng.seed(f"{cfg.seed}:{i}")
        value: float | int = rng.uniform(lo, hi)
        name, customer, region = (rng.choice(cfg.event_names), rng.choice(cfg.customers),
                                  rng.choice(regions))
        if i < first:
            continue
        if cfg.integer_values:
            value = int(value)
        payload = {
            "event_name": name,
            "external_customer_id": customer,
            "properties": {cfg.property_name: value, "region": region},
            "source": cfg.source,
        }
        ts = fixed_ts or rfc3339(start + step * i)
        out.append(Record(f"gen-{cfg.seed}-{i}", ts, payload, {"generator_index": i}))
    return out


class _GenerateRangeFn(beam.DoFn):
    def __init__(self, cfg: GenerateInput, start: dt.datetime):
        self._cfg = cfg
        self._start = start
        self._read = Metrics.counter("flexprice", "records_read")

    def process(self, bounds: tuple[int, int]) -> Iterator[list[Record]]:
        first, last = bounds
        if STOP.requested.is_set():  # SIGTERM/SIGINT: read no more (core/shutdown.py)
            STOP.cut_short = True
            return
        batch = generate_batch(self._cfg, self._start, first, last)
        self._read.inc(len(batch))
        yield batch


class _GenerateForeverFn(_GenerateRangeFn):
    """count 0 or an interval: generate in real time, one batch per ``batch_size`` or second."""

    def process(self, _impulse) -> Iterator[list[Record]]:
        cfg = self._cfg
        i = 0
        began = time.monotonic()
        while cfg.count == 0 or i < cfg.count:
            if STOP.requested.is_set():  # SIGTERM/SIGINT: read no more (core/shutdown.py)
                STOP.cut_short = True
                return
            if cfg.interval > 0:
                # Emit what is due now, at most a batch; sleep until the next is due.
                due = int((time.monotonic() - began) / cfg.interval) + 1
                n = max(1, min(cfg.batch_size, due - i))
            else:
                n = cfg.batch_size
            if cfg.count:
                n = min(n, cfg.count - i)
            batch = generate_batch(cfg, self._start, i, i + n)
            self._read.inc(n)
            i += n
            yield batch
            if cfg.interval > 0:
                STOP.requested.wait(max(0.0, began + i * cfg.interval - time.monotonic()))


class GenerateEvents(beam.PTransform):
    """PBegin → PCollection[list[Record]]."""

    def __init__(self, cfg: GenerateInput):
        super().__init__()
        self._cfg = cfg
        self._start = start_time(cfg)  # fixed once, when the pipeline is built
        if not cfg.start_time:  # a re-run needs this value to send the same timestamps
            STOP.resume_hint = f"input.generate.start_time: {rfc3339(self._start)}"

    def expand(self, pbegin):
        cfg = self._cfg
        if cfg.count and cfg.interval == 0:
            ranges = [(a, min(a + cfg.batch_size, cfg.count))
                      for a in range(0, cfg.count, cfg.batch_size)]
            return (pbegin | "Ranges" >> beam.Create(ranges, reshuffle=False)
                    | "Generate" >> beam.ParDo(
                        _GenerateRangeFn(cfg, self._start)).with_output_types(Batch))
        return (pbegin | "Impulse" >> beam.Impulse()
                | "Generate" >> beam.ParDo(
                    _GenerateForeverFn(cfg, self._start)).with_output_types(Batch))
