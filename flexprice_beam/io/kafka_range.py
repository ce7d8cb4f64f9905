"""Bounded Kafka input: read a fixed offset range per partition, then end.

Why not ``ReadFromKafka`` with ``max_num_records``/``max_read_time``: Java's
``BoundedReadFromUnboundedSource`` splits the record budget across its readers and waits
on them with back-off, so on DirectRunner it stalled on uneven partitions (issue 12).
Here the range is resolved once, when the run starts, from the broker's own offsets:

* start, per partition: ``start_offsets`` › ``start_time`` (the time index) › the consumer
  group's committed offset › the oldest (``start_from_oldest``) or the end;
* stop: ``stop_offsets`` › ``stop_time`` › the end offset seen at the start, and never
  past that end, so a run never waits for records that do not exist yet;
* ``max_records`` then shares N over the partitions (equal shares, the rest to the
  partitions that have more), ``max_read_time`` ends reading at a wall-clock deadline.

Each partition's range is one element of a splittable DoFn with an ``OffsetRange``
restriction, so a runner can split it; the reader (kafka-python) emits lists of
``Record`` built by ``io.kafka.decode``: the same ``kafka-<topic>-<partition>-<offset>``
id and record timestamp as the streaming read, hence byte-identical events on a
re-read or backfill.  Offsets are committed by ``CommitDeliveredOffsets`` after delivery.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass

import apache_beam as beam
from apache_beam.io.restriction_trackers import OffsetRange, OffsetRestrictionTracker
from apache_beam.metrics import Metrics
from apache_beam.transforms.core import RestrictionProvider

from flexprice_beam.core.config import KafkaInput, partition_key
from flexprice_beam.core.events import Record, parse_timestamp
from flexprice_beam.io.kafka import decode
from flexprice_beam.io.kafka_clients import (
    KafkaPythonReader,
    KafkaReadError,
    explain,
    python_consumer,
)

log = logging.getLogger("flexprice_beam.kafka")

#: the tagged output with ``((topic, partition), last offset read)`` per range
READ_TO = "read_to"
#: with no record arriving for this long while the range is not finished, fail the run
#: (broker gone, records deleted under us) instead of hanging
IDLE_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class PartitionRange:
    """Offsets ``[start, stop)`` of one partition, plus the record-time filter, if any."""

    topic: str
    partition: int
    start: int
    stop: int
    #: half-open record-time window in ms (start_time/stop_time); None = no filter
    min_ms: int | None = None
    max_ms: int | None = None
    #: wall-clock end of reading (time.time()), from max_read_time
    deadline: float | None = None

    @property
    def name(self) -> str:
        return f"{self.topic}/{self.partition}"

    @property
    def size(self) -> int:
        return self.stop - self.start


def _ms(value: str | None) -> int | None:
    return None if value is None else int(parse_timestamp(value).timestamp() * 1000)


def share(sizes: list[int], total: int) -> list[int]:
    """Split ``total`` over partitions holding ``sizes`` records: equal shares, and what a
    small partition cannot take goes to the larger ones (deterministic, never > size)."""
    out = [0] * len(sizes)
    left = total
    order = sorted(range(len(sizes)), key=lambda i: (sizes[i], i))
    for k, i in enumerate(order):
        take = min(sizes[i], left // (len(order) - k))
        out[i] = take
        left -= take
    return out


def resolve(cfg: KafkaInput, now: float | None = None) -> list[PartitionRange]:
    """The run's range, per partition, from the broker's offsets at this moment."""
    from kafka import TopicPartition
    from kafka.errors import KafkaError

    now = time.time() if now is None else now
    consumer = python_consumer(cfg, group=True)
    try:
        parts = []
        for topic in cfg.topics:
            found = consumer.partitions_for_topic(topic)
            if not found:
                raise KafkaReadError(f"Kafka: topic {topic!r} does not exist "
                                     "(input.kafka.topics)")
            parts += [TopicPartition(topic, p) for p in sorted(found)]
        begin = consumer.beginning_offsets(parts)
        end = consumer.end_offsets(parts)
        starts = _by_time(consumer, parts, cfg.start_time, end)
        stops = _by_time(consumer, parts, cfg.stop_time, end)
        ranges = []
        for tp in parts:
            key = f"{tp.topic}/{tp.partition}"
            start = cfg.start_offsets.get(key)
            if start is None:
                start = starts.get(tp)
            if start is None:
                start = consumer.committed(tp)
            if start is None:
                start = begin[tp] if cfg.start_from_oldest else end[tp]
            stop = cfg.stop_offsets.get(key, stops.get(tp, end[tp]))
            if stop > end[tp]:
                log.warning("Kafka %s: stop offset %d is past the end (%d) seen at the start; "
                            "reading to %d", key, stop, end[tp], end[tp])
            if start < begin[tp]:
                log.warning("Kafka %s: offsets %d..%d are gone (retention); reading from %d",
                            key, start, begin[tp] - 1, begin[tp])
            stop = min(stop, end[tp])
            start = min(max(start, begin[tp]), stop)
            ranges.append(PartitionRange(tp.topic, tp.partition, start, stop))
    except KafkaError as exc:
        raise KafkaReadError(explain(exc, cfg)) from None
    finally:
        consumer.close()
    if cfg.max_records:
        taken = share([r.size for r in ranges], cfg.max_records)
        ranges = [PartitionRange(r.topic, r.partition, r.start, r.start + n)
                  for r, n in zip(ranges, taken, strict=True)]
    deadline = now + cfg.max_read_time if cfg.max_read_time else None
    lo, hi = _ms(cfg.start_time), _ms(cfg.stop_time)
    ranges = [PartitionRange(r.topic, r.partition, r.start, r.stop, lo, hi, deadline)
              for r in ranges]
    log.info("Kafka range (group %s): %s", cfg.consumer_group,
             ", ".join(f"{r.name} [{r.start}, {r.stop})" for r in ranges))
    return ranges


def _by_time(consumer, parts, when: str | None, end: dict) -> dict:
    """Per partition, the first offset whose record time is ≥ ``when`` (the end if none)."""
    if when is None:
        return {}
    ms = _ms(when)
    found = consumer.offsets_for_times({tp: ms for tp in parts})
    return {tp: (hit.offset if hit is not None else end[tp]) for tp, hit in found.items()}


def parse_offsets(text: str) -> dict[str, int]:
    """``"events/0=10,events/1=0"`` (the backfill flags) → ``{"events/0": 10, ...}``."""
    out = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        name, sep, offset = item.partition("=")
        if not sep:
            raise ValueError(f"{item!r}: expected topic/partition=offset")
        partition_key(name)  # raises on a malformed partition
        out[name] = int(offset)
    return out


class _RangeProvider(RestrictionProvider):
    def initial_restriction(self, element: PartitionRange) -> OffsetRange:
        return OffsetRange(element.start, element.stop)

    def create_tracker(self, restriction: OffsetRange) -> OffsetRestrictionTracker:
        return OffsetRestrictionTracker(restriction)

    def restriction_size(self, element: PartitionRange, restriction: OffsetRange) -> int:
        return restriction.size()


class _ReadRangeFn(beam.DoFn):
    """One partition range → list[Record] batches of up to ``batch_size``."""

    def __init__(self, cfg: KafkaInput):
        self._cfg = cfg
        self._read = Metrics.counter("flexprice", "records_read")
        self._bad = Metrics.counter("flexprice", "records_undecodable")

    def setup(self) -> None:
        self._reader = KafkaPythonReader(self._cfg)

    def teardown(self) -> None:
        reader = getattr(self, "_reader", None)
        if reader is not None:
            reader.close()

    def process(self, element: PartitionRange,
                tracker=beam.DoFn.RestrictionParam(_RangeProvider())) -> Iterable[list[Record]]:
        restriction = tracker.current_restriction()
        if restriction.start < restriction.stop:  # an empty partition ends at once
            yield from self._read_range(element, tracker, restriction)

    def _read_range(self, element: PartitionRange, tracker, restriction: OffsetRange):
        cfg, reader = self._cfg, self._reader
        size, max_bytes = cfg.batch_size, cfg.max_record_bytes
        lo, hi = element.min_ms, element.max_ms
        reader.seek(element.topic, element.partition, restriction.start)
        batch: list[Record] = []
        idle_since = time.monotonic()
        stop = restriction.stop
        nxt = restriction.start  # the next offset to read
        ended = False  # the restriction ended under us (a split)
        while not ended and nxt < tracker.current_restriction().stop:  # no empty poll
            if element.deadline is not None and time.time() >= element.deadline:
                log.info("Kafka %s: max_read_time reached at offset %d of [%d, %d)",
                         element.name, nxt, restriction.start, stop)
                break
            polled = reader.poll()
            if not polled:
                if reader.position() >= tracker.current_restriction().stop:
                    break  # only gaps (compaction, transaction markers) were left
                if time.monotonic() - idle_since > IDLE_TIMEOUT_S:
                    raise KafkaReadError(
                        f"Kafka {element.name}: no record for {IDLE_TIMEOUT_S:.0f}s at "
                        f"offset {reader.position()} before the range end {stop}")
                continue
            idle_since = time.monotonic()
            polled, ended = _claim(tracker, polled)
            if polled:
                nxt = polled[-1].offset + 1
            for m in polled:
                if (lo is not None and m.timestamp < lo) or (hi is not None and m.timestamp >= hi):
                    continue  # outside the record-time window: not part of the range
                r = decode(m.topic, m.partition, m.offset, m.timestamp, m.key, m.value,
                           max_bytes)
                if r.error:
                    self._bad.inc()
                batch.append(r)
                if len(batch) >= size:
                    self._read.inc(len(batch))
                    yield batch
                    batch = []
        if not ended:
            # Claiming the end marks the restriction done: past the last record, or the
            # remainder that max_read_time cut off (never committed, so a re-run reads it).
            tracker.try_claim(tracker.current_restriction().stop)
        if batch:
            self._read.inc(len(batch))
            yield batch
        if nxt > restriction.start:  # every record below it went downstream
            yield beam.pvalue.TaggedOutput(READ_TO, ((element.topic, element.partition), nxt - 1))


def _claim(tracker, polled: list) -> tuple[list, bool]:
    """The records of ``polled`` this restriction owns, claimed with one call (the last
    one's offset) instead of one per record; and whether the restriction is over."""
    stop = tracker.current_restriction().stop
    if polled[-1].offset >= stop:
        polled = [m for m in polled if m.offset < stop]
        if not polled:
            tracker.try_claim(stop)
            return [], True
    if tracker.try_claim(polled[-1].offset):
        return polled, False
    # A split between reading the stop and claiming: everything below the new stop is
    # still ours (a split never cuts below the last claim); the failed claim ends it.
    stop = tracker.current_restriction().stop
    return [m for m in polled if m.offset < stop], True


class ReadKafkaRange(beam.PTransform):
    """PBegin → the configured range, then the end of input: ``.records``
    (PCollection[list[Record]]) and ``[READ_TO]``, per partition range the last offset
    read, so ``CommitDeliveredOffsets`` also commits past records that were filtered out."""

    def __init__(self, cfg: KafkaInput):
        super().__init__()
        self._cfg = cfg

    def expand(self, pbegin):
        cfg = self._cfg
        return (pbegin
                | "Impulse" >> beam.Impulse()
                | "ResolveRange" >> beam.FlatMap(lambda _: resolve(cfg))
                | "SpreadPartitions" >> beam.Reshuffle()
                | "ReadRange" >> beam.ParDo(_ReadRangeFn(cfg)).with_outputs(
                    READ_TO, main="records"))

