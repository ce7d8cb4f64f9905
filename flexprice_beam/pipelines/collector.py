"""The collector pipeline, shaped like the seed's diagram:

    source → map → validate → sink (WriteToFlexprice) → dead letters

Every arrow carries lists of events (batch early: Beam's per-element overhead is larger
than the work per event); dead letters are per event on tagged outputs and all end in
one ``WriteDeadLetters``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from flexprice_beam.core.capabilities import RunnerCapabilities
from flexprice_beam.core.config import CollectorConfig, ConfigError
from flexprice_beam.io.dead_letter import WriteDeadLetters
from flexprice_beam.io.flexprice.sink import WriteToFlexprice
from flexprice_beam.io.generate import GenerateEvents
from flexprice_beam.io.kafka import CommitDeliveredOffsets, OffsetCommit, ReadKafkaRecords
from flexprice_beam.transforms.batches import Batch
from flexprice_beam.transforms.mapping import DEAD_LETTER, MapRecords
from flexprice_beam.transforms.validate import ValidateEvents

log = logging.getLogger("flexprice_beam.pipeline")


class CollectorOptions(PipelineOptions):
    """Options of our own; everything else is passed to Beam untouched."""

    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument("--config", "-c", dest="config", default=None,
                            help="collector YAML config (see examples/)")
        parser.add_argument("--dry_run_events", default=None,
                            help="dry run: write the events that would be sent to this "
                                 "JSON Lines file instead of posting them")
        parser.add_argument("--kafka_expansion_service", default=None,
                            help="HOST:PORT of a running Beam Java expansion service for "
                                 "ReadFromKafka (default: start the cached jar locally)")


#: Our local engine, by its full path: Beam 2.62 does not know the short name "FnApiRunner".
LOCAL_ENGINE = "apache_beam.runners.portability.fn_api_runner.FnApiRunner"
#: Prism for local streaming (launch/prism.py: takes the expansion service's AnyOf env).
LOCAL_PRISM = "flexprice_beam.launch.prism.LocalPrismRunner"
#: Runners that run the job in or beside this process: a literal secret never leaves it.
LOCAL_RUNNERS = (LOCAL_ENGINE, "FnApiRunner", "DirectRunner", "direct", "SwitchingDirectRunner",
                 "BundleBasedDirectRunner", "TestDirectRunner", "PrismRunner", LOCAL_PRISM,
                 "LocalPrismRunner")

_USE_INSTEAD = {
    "output.flexprice.api_key": "api_key_env: FLEXPRICE_API_KEY (a variable set on the workers), "
                                "api_key_file: /path/on/the/workers, or api_key_secret: "
                                "projects/P/secrets/S/versions/V (Secret Manager)",
    "sasl.password": "password_env: KAFKA_SASL_PASSWORD (a variable set on the workers; "
                     "Kafka's EnvVarConfigProvider reads it there)",
}


def runner_name(options: PipelineOptions) -> str | None:
    runner = options.view_as(StandardOptions).runner
    return runner if isinstance(runner, str) or runner is None else type(runner).__name__


def refuse_literal_secrets(cfg: CollectorConfig, options: PipelineOptions) -> None:
    """A literal secret would be pickled into the job graph that a remote runner stores and
    shows (Dataflow's job, Flink's job jar, staging buckets): refuse it, saying what to use."""
    runner = runner_name(options)
    if runner is None or runner in LOCAL_RUNNERS:
        return
    literal = []
    if cfg.output.flexprice.api_key is not None:
        literal.append("output.flexprice.api_key")
    for path, kafka in (("input.kafka", cfg.input.kafka), ("output.dead_letter.kafka",
                                                        cfg.output.dead_letter.kafka)):
        if kafka is not None and kafka.sasl is not None and kafka.sasl.password is not None:
            literal.append(f"{path}.sasl.password")
    if literal:
        raise ConfigError("\n".join(
            [f"{runner} would write these secrets into the job graph; pass a reference instead:"]
            + [f"  {k}: use {_USE_INSTEAD.get(k, _USE_INSTEAD['sasl.password'])}"
               for k in literal]))


def is_streaming(p: beam.Pipeline) -> bool:
    return bool(p.options.view_as(StandardOptions).streaming)


def offset_commit(p: beam.Pipeline) -> OffsetCommit:
    """How Kafka offsets follow delivery on ``p``'s runner (io/kafka.py)."""
    return OffsetCommit.for_runner(RunnerCapabilities.of(p.runner, p.options))


def read_records(cfg: CollectorConfig, streaming: bool, expansion_service: str | None = None,
                 commit: OffsetCommit = OffsetCommit.AFTER_RUN) -> beam.PTransform:
    """The configured source as a PTransform PBegin → PCollection[list[Record]];
    ``commit``: the Kafka offset policy (``OffsetCommit.for_runner``)."""
    if cfg.input.generate is not None:
        return GenerateEvents(cfg.input.generate)
    if cfg.input.kafka.bounded and not streaming:
        from flexprice_beam.io.kafka_range import ReadKafkaRange

        return ReadKafkaRange(cfg.input.kafka)  # a range fixed at the start, then the end
    return ReadKafkaRecords(cfg.input.kafka, commit, expansion_service)


@dataclass
class CollectorOutputs:
    deliveries: beam.PCollection | None
    dead_letters: beam.PCollection
    extra: dict = field(default_factory=dict)


def build(p: beam.Pipeline, cfg: CollectorConfig, sink: beam.PTransform | None = None,
          dead_letter_sink: beam.PTransform | None = None) -> CollectorOutputs:
    """Add the collector to ``p``; ``sink`` replaces WriteToFlexprice (dry runs, benchmarks)
    and ``dead_letter_sink`` the dead-letter files (a dry run prints them instead)."""
    refuse_literal_secrets(cfg, p.options)
    streaming = is_streaming(p)
    expansion = p.options.view_as(CollectorOptions).kafka_expansion_service
    commit = offset_commit(p)
    records = p | "Read" >> read_records(cfg, streaming, expansion, commit)
    read_to = ()
    if isinstance(records, beam.pvalue.DoOutputsTuple):  # the bounded Kafka range reader
        from flexprice_beam.io.kafka_range import READ_TO

        records, read_to = records.records, (records[READ_TO],)
    mapped = records | "Map" >> beam.ParDo(MapRecords(cfg.pipeline)).with_output_types(
        Batch).with_outputs(DEAD_LETTER, main="events")
    valid = mapped.events | "Validate" >> beam.ParDo(
        ValidateEvents(cfg.pipeline.max_event_bytes, cfg.pipeline.big_numbers)).with_output_types(
        Batch).with_outputs(
        DEAD_LETTER, main="valid")
    written = valid.valid | "WriteToFlexprice" >> (sink or WriteToFlexprice(cfg.output.flexprice))
    dead = [mapped[DEAD_LETTER], valid[DEAD_LETTER]]
    if written.failed is not None:
        dead.append(written.failed)
    deliveries = written.deliveries
    dead_letters = tuple(dead) | "CollectDeadLetters" >> beam.Flatten()
    written = dead_letters | "WriteDeadLetters" >> (
        dead_letter_sink or WriteDeadLetters(cfg.output.dead_letter))
    kafka = cfg.input.kafka
    if kafka is not None and kafka.commit_offsets and deliveries is not None and \
            commit is OffsetCommit.AFTER_RUN:
        (deliveries, written, *read_to) | "CommitDeliveredOffsets" >> CommitDeliveredOffsets(
            kafka)
    return CollectorOutputs(deliveries, dead_letters)
