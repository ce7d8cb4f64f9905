"""``flexprice-beam backfill``: re-read a range of the Kafka input into Flexprice.

The range (``--from``/``--to`` record times, or ``--from-offsets``/``--to-offsets``) is
resolved once against the broker, printed, and read by the bounded reader
(io/kafka_range.py), so every record gets the id and timestamp the live read gave it
(``kafka-<topic>-<partition>-<offset>``, record time) and Flexprice deduplicates what
already arrived.  The live consumer group's offsets are left alone unless ``--commit``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from flexprice_beam.core.config import CollectorConfig, KafkaInput, partition_key
from flexprice_beam.io.kafka_range import PartitionRange, parse_offsets, resolve
from flexprice_beam.launch.runner import RunSummary

log = logging.getLogger("flexprice_beam.backfill")


@dataclass
class BackfillReport:
    ranges: list[PartitionRange]
    group: str
    committed: bool
    summary: RunSummary = field(default_factory=RunSummary)

    @property
    def exit_code(self) -> int:
        if self.summary.error:
            return 1
        return 0 if self.summary.balanced else 3

    def render(self) -> str:
        s = self.summary
        window = ""
        if any(r.min_ms is not None or r.max_ms is not None for r in self.ranges):
            window = " (the offsets the time window covers; read counts records inside it)"
        lines = [f"range{window}:"]
        for r in self.ranges:
            lines.append(f"  {r.name:<30} offsets [{r.start}, {r.stop})  {r.size} records")
        lines += [
            f"offsets in range: {sum(r.size for r in self.ranges)}",
            s.render(),
            "group offsets:  " + (f"committed for {self.group} after delivery" if self.committed
                                  else f"not moved ({self.group} untouched; --commit moves it)"),
        ]
        return "\n".join(lines)


def _partitions(cfg: KafkaInput) -> list[str]:
    from flexprice_beam.io.kafka_clients import python_consumer

    consumer = python_consumer(cfg)
    try:
        return [f"{t}/{p}" for t in cfg.topics
                for p in sorted(consumer.partitions_for_topic(t) or ())]
    finally:
        consumer.close()


def backfill_input(cfg: KafkaInput, *, start: str | None = None, stop: str | None = None,
                   from_offsets: str | None = None, to_offsets: str | None = None,
                   commit: bool = False) -> KafkaInput:
    """The input settings of a backfill: the live ones with the range (and no limits)."""
    if (start or stop) and (from_offsets or to_offsets):
        raise ValueError("give either --from/--to (record times) or --from-offsets/--to-offsets")
    if not (start or from_offsets or to_offsets):
        raise ValueError("say where the backfill starts: --from TIME or --from-offsets")
    data = cfg.model_dump()
    data.update(max_records=None, max_read_time=None, start_time=start, stop_time=stop,
                stop_at_end=True, start_offsets={}, stop_offsets={}, commit_offsets=commit)
    if from_offsets or to_offsets:
        starts = parse_offsets(from_offsets or "")
        stops = parse_offsets(to_offsets or "")
        named = set(starts) | set(stops)
        for name in _partitions(cfg):  # partitions named nowhere are not read
            if name not in named:
                starts[name] = stops[name] = 0
            starts.setdefault(name, 0)  # --to-offsets alone: from the oldest record
        for name in named:
            partition_key(name)
        data.update(start_offsets=starts, stop_offsets=stops)
    return KafkaInput.model_validate(data)


def backfill(cfg: CollectorConfig, *, start: str | None = None, stop: str | None = None,
             from_offsets: str | None = None, to_offsets: str | None = None,
             commit: bool = False, beam_args: list[str] | None = None,
             progress: str = "off") -> BackfillReport:
    """Resolve the range, read it into Flexprice, and account for it."""
    from flexprice_beam.launch import runner

    if cfg.input.kafka is None:
        raise ValueError("backfill reads Kafka input: this config has input.generate")
    kafka = backfill_input(cfg.input.kafka, start=start, stop=stop, from_offsets=from_offsets,
                           to_offsets=to_offsets, commit=commit)
    ranges = resolve(kafka)
    # Read exactly the offsets printed: pin them, keep the time window as the record filter.
    pinned = kafka.model_copy(update={
        "start_offsets": {r.name: r.start for r in ranges},
        "stop_offsets": {r.name: r.stop for r in ranges}})
    run_cfg = cfg.model_copy(update={"input": cfg.input.model_copy(update={"kafka": pinned})})
    report = BackfillReport(ranges, kafka.consumer_group, commit)
    report.summary = runner.run(run_cfg, beam_args, progress=progress)
    return report
