"""Kafka input: a thin typed wrapper over Beam's ``ReadFromKafka`` (Java KafkaIO).

* ``consumer_config`` is built from the seed's keys (addresses, consumer_group, TLS, SASL).
* Right after the read, records are decoded and batched (batch early); a record that is
  not UTF-8 JSON, not an object or too large becomes a ``Record`` with ``error`` set, which
  mapping turns into a dead letter carrying topic/partition/offset, key and raw value.
* Identity comes from the source: ``event_id`` defaults to ``kafka-<topic>-<partition>-
  <offset>`` and ``timestamp`` to the Kafka record's timestamp, so a re-read after a
  restart, replay or rebalance yields byte-identical events that Flexprice deduplicates.
* Offsets follow delivery by one policy, ``OffsetCommit.for_runner``, chosen from what
  the runner can do (core/capabilities.py); see docs/runners.md.
"""

from __future__ import annotations

import base64
import enum
import logging
import os
from collections.abc import Iterable
from typing import Any

import apache_beam as beam
import orjson
from apache_beam.metrics import Metrics
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.windowed_value import WindowedValue

from flexprice_beam.core.capabilities import RunnerCapabilities
from flexprice_beam.core.config import KafkaInput
from flexprice_beam.core.events import Record, rfc3339_from_millis
from flexprice_beam.core.offsets import TRACKER, kafka_position
from flexprice_beam.io.secrets import jaas_password, sasl_password
from flexprice_beam.transforms.batches import Batch

log = logging.getLogger("flexprice_beam.kafka")

BEAM_VERSION = beam.__version__
EXPANSION_JAR = f"beam-sdks-java-io-expansion-service-{BEAM_VERSION}.jar"
_JAAS = {
    "PLAIN": "org.apache.kafka.common.security.plain.PlainLoginModule",
    "SCRAM-SHA-256": "org.apache.kafka.common.security.scram.ScramLoginModule",
    "SCRAM-SHA-512": "org.apache.kafka.common.security.scram.ScramLoginModule",
}


def security_protocol(cfg: KafkaInput) -> str:
    if cfg.sasl is not None:
        return "SASL_SSL" if cfg.tls.enabled else "SASL_PLAINTEXT"
    return "SSL" if cfg.tls.enabled else "PLAINTEXT"


def java_consumer_config(cfg: KafkaInput) -> dict[str, str]:
    """The Java KafkaConsumer properties for ``ReadFromKafka``: the pass-through
    ``consumer_properties`` first; config.py refuses those that the keys below set. With
    ``sasl.password_env`` they name the variable (``${env:NAME}``), resolved by Kafka
    inside the worker's JVM."""
    conf = {k: str(v).lower() if isinstance(v, bool) else str(v)
            for k, v in cfg.consumer_properties.items()}
    conf |= {
        "bootstrap.servers": ",".join(cfg.addresses),
        "group.id": cfg.consumer_group,
        "auto.offset.reset": "earliest" if cfg.start_from_oldest else "latest",
        "enable.auto.commit": "false",
        "security.protocol": security_protocol(cfg),
    }
    if cfg.sasl is not None:
        user = cfg.sasl.user.replace('"', '\\"')
        password, providers = jaas_password(cfg.sasl)
        password = password.replace('"', '\\"')
        conf.update(providers)
        conf["sasl.mechanism"] = cfg.sasl.mechanism
        conf["sasl.jaas.config"] = (
            f'{_JAAS[cfg.sasl.mechanism]} required username="{user}" password="{password}";')
    if cfg.tls.enabled:
        if cfg.tls.ca_file:
            conf["ssl.truststore.type"] = "PEM"
            conf["ssl.truststore.location"] = os.path.abspath(cfg.tls.ca_file)
        if cfg.tls.cert_file and cfg.tls.key_file:
            # Java reads a PEM keystore from one file holding the key and its chain.
            conf["ssl.keystore.type"] = "PEM"
            conf["ssl.keystore.location"] = _combined_pem(cfg.tls.cert_file, cfg.tls.key_file)
        if cfg.tls.skip_cert_verify:
            log.warning("Kafka TLS: skip_cert_verify turns off host name verification")
            conf["ssl.endpoint.identification.algorithm"] = ""
    return conf


def _combined_pem(cert_file: str, key_file: str) -> str:
    out = os.path.abspath(f"{cert_file}.with-key.pem")
    with open(key_file, "rb") as k, open(cert_file, "rb") as c, open(out, "wb") as o:
        o.write(k.read().rstrip() + b"\n" + c.read())
    os.chmod(out, 0o600)
    return out


def python_client_config(cfg: KafkaInput) -> dict[str, Any]:
    """The same connection for kafka-python (offset commits, send-events)."""
    conf: dict[str, Any] = {"bootstrap_servers": cfg.addresses,
                            "security_protocol": security_protocol(cfg)}
    if cfg.sasl is not None:
        conf.update(sasl_mechanism=cfg.sasl.mechanism, sasl_plain_username=cfg.sasl.user,
                    sasl_plain_password=sasl_password(cfg.sasl))
    if cfg.tls.enabled:
        conf.update(ssl_cafile=cfg.tls.ca_file, ssl_certfile=cfg.tls.cert_file,
                    ssl_keyfile=cfg.tls.key_file,
                    ssl_check_hostname=not cfg.tls.skip_cert_verify)
        if cfg.tls.skip_cert_verify:
            import ssl

            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            conf["ssl_context"] = ctx
    return conf


class OffsetCommit(enum.Enum):
    """How the consumer group's offsets follow delivery: never ahead of an event that was
    read but is not yet accepted, dead-lettered or filtered."""

    #: KafkaIO's ``commit_offset_in_finalize``: a checkpoint that covers delivery completes
    #: (the sink and dead letters finish their bundles before it), then KafkaIO commits.
    CHECKPOINT = "checkpoint"
    #: core/offsets.py: every record is tracked in this process from decode to its end and
    #: a thread commits below the oldest still in flight (a streaming runner that never
    #: finalizes a checkpoint and runs our DoFns here: Prism with LOOPBACK).
    TRACKER = "tracker"
    #: ``CommitDeliveredOffsets``: once, when the whole bounded input was handled.
    AFTER_RUN = "after_run"

    @classmethod
    def for_runner(cls, caps: RunnerCapabilities) -> OffsetCommit:
        if not caps.streaming:
            return cls.AFTER_RUN
        return cls.CHECKPOINT if caps.finalizes_checkpoints else cls.TRACKER


def record_id(topic: str, partition: int, offset: int) -> str:
    return f"kafka-{topic}-{partition}-{offset}"


def _text_or_b64(raw: bytes | None) -> Any:
    if raw is None:
        return None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return {"base64": base64.b64encode(raw).decode()}


def decode(topic: str, partition: int, offset: int, timestamp_ms: int,
           key: bytes | None, value: bytes | None, max_bytes: int) -> Record:
    """One Kafka record → Record; never raises (a bad record carries ``error``)."""
    origin = {"topic": topic, "partition": partition, "offset": offset,
              "key": _text_or_b64(key)}
    rid = record_id(topic, partition, offset)
    ts = rfc3339_from_millis(timestamp_ms if timestamp_ms and timestamp_ms > 0 else 0)
    raw = value or b""
    error = None
    payload: Any = None
    if len(raw) > max_bytes:
        error = f"record is {len(raw)} bytes, over the {max_bytes}-byte limit"
    else:
        try:
            payload = orjson.loads(raw)  # rejects invalid UTF-8, NaN and trailing garbage
        except orjson.JSONDecodeError as exc:
            try:
                raw.decode("utf-8")
                error = f"not JSON: {exc}"
            except UnicodeDecodeError:
                error = "not UTF-8 text"
        else:
            if not isinstance(payload, dict):
                error = f"record is a JSON {type(payload).__name__}, not an object"
    if error is not None:
        origin["raw_value"] = _text_or_b64(raw[:max_bytes])
        return Record(rid, ts, None, origin, error)
    return Record(rid, ts, payload, origin)


def commit_offsets(cfg: KafkaInput, offsets: dict[tuple[str, int], int]) -> None:
    """Commit ``{(topic, partition): next offset}`` for the consumer group (kafka-python)."""
    from kafka import KafkaConsumer, TopicPartition
    from kafka.structs import OffsetAndMetadata

    consumer = KafkaConsumer(group_id=cfg.consumer_group, enable_auto_commit=False,
                             **python_client_config(cfg))
    try:
        consumer.commit({TopicPartition(t, p): OffsetAndMetadata(o, "", -1)
                         for (t, p), o in offsets.items()})
    finally:
        consumer.close()
    log.info("Committed offsets for group %s: %s", cfg.consumer_group,
             ", ".join(f"{t}/{p}@{o}" for (t, p), o in sorted(offsets.items())))


class _DecodeAndBatchFn(beam.DoFn):
    """KafkaRecord rows → list[Record] of up to ``batch_size``, cut at bundle ends.

    With ``track_offsets`` (local streaming on Prism) every record is registered with the
    process-wide ``OffsetTracker``, which commits below the oldest record still in flight.
    """

    def __init__(self, cfg: KafkaInput, track_offsets: bool = False):
        self._cfg = cfg
        self._batch_size = cfg.batch_size
        self._max_bytes = cfg.max_record_bytes
        self._track = track_offsets
        self._read = Metrics.counter("flexprice", "records_read")
        self._bad = Metrics.counter("flexprice", "records_undecodable")

    def setup(self) -> None:
        if self._track:
            cfg = self._cfg
            TRACKER.start_committer(lambda offsets: commit_offsets(cfg, offsets))

    def start_bundle(self) -> None:
        self._batch: list[Record] = []

    def process(self, rec) -> list[list[Record]] | None:  # noqa: RET503 - None: no output
        # Not a generator, and counters once per batch: this runs once per Kafka record,
        # where a generator object and a Beam counter update each cost about as much as
        # orjson.loads (docs/benchmarks.md, "Kafka read path").
        r = decode(rec.topic, rec.partition, rec.offset, rec.timestamp, rec.key, rec.value,
                   self._max_bytes)
        batch = self._batch
        batch.append(r)
        if len(batch) >= self._batch_size:
            self._batch = []
            self._count(batch)
            return [batch]

    def _count(self, batch: list[Record]) -> None:
        """Per batch, before it is emitted: counters, and the offset tracker (Prism)."""
        if self._track:
            TRACKER.read_many([r.origin for r in batch])
        self._read.inc(len(batch))
        bad = sum(1 for r in batch if r.error is not None)
        if bad:
            self._bad.inc(bad)

    def finish_bundle(self):
        if self._batch:
            batch, self._batch = self._batch, []
            self._count(batch)
            yield WindowedValue(batch, GlobalWindow().max_timestamp(), [GlobalWindow()])


class ReadKafkaRecords(beam.PTransform):
    """PBegin → PCollection[list[Record]] from the configured topics."""

    def __init__(self, cfg: KafkaInput, commit: OffsetCommit = OffsetCommit.AFTER_RUN,
                 expansion_service: str | None = None):
        """``commit``: ``OffsetCommit.for_runner``; with ``AFTER_RUN`` the caller applies
        ``CommitDeliveredOffsets``. ``expansion_service``: HOST:PORT (see io/expansion.py);
        None = Beam's default."""
        super().__init__()
        self._cfg = cfg
        self._commit = commit
        self._expansion_service = expansion_service

    def expand(self, pbegin):
        from apache_beam.io.kafka import ReadFromKafka

        cfg = self._cfg
        if cfg.max_records and not cfg.max_read_time:
            log.warning("input.kafka.max_records without max_read_time: Beam splits the record "
                        "budget across its readers, so with uneven partitions the read can wait "
                        "for records that never come; set max_read_time as well")
        read = ReadFromKafka(
            consumer_config=java_consumer_config(cfg),
            topics=list(cfg.topics),
            with_metadata=True,
            commit_offset_in_finalize=self._commit is OffsetCommit.CHECKPOINT,
            max_num_records=cfg.max_records,
            max_read_time=int(cfg.max_read_time) if cfg.max_read_time else None,
            expansion_service=self._expansion_service,
        )
        return (pbegin | "ReadFromKafka" >> read
                | "DecodeAndBatch" >> beam.ParDo(
                    _DecodeAndBatchFn(cfg, self._commit is OffsetCommit.TRACKER)
                ).with_output_types(Batch))


def _offset_of(origin: dict | None) -> list[tuple[tuple[str, int], int]]:
    pos = kafka_position(origin)
    return [] if pos is None else [pos]


def delivered_offsets(delivered) -> Iterable[tuple[tuple[str, int], int]]:
    """Per delivery batch (a ``sink.Delivered``), the highest accepted offset per partition."""
    return delivered.offsets.items()


class _CommitFn(beam.DoFn):
    def __init__(self, cfg: KafkaInput):
        self._cfg = cfg

    def process(self, offsets: list[tuple[tuple[str, int], int]]):
        if offsets:
            commit_offsets(self._cfg, {key: off + 1 for key, off in offsets})
            yield from offsets


class CommitDeliveredOffsets(beam.PTransform):
    """Bounded runs: commit the group's offsets once, after every event was delivered.

    The input is ``(deliveries, dead_letters)``: an event is handled once it was accepted
    or dead-lettered at any stage; the bounded reader adds a third, the last offset it read
    per partition range, which covers records mapping filtered out (they were handled too:
    the commit still waits for every delivery and dead letter).
    The combine completes only when the whole bounded input did, so a run killed midway
    commits nothing and its restart re-reads from the last commit; the re-read events are
    byte-identical and Flexprice deduplicates them.
    """

    def __init__(self, cfg: KafkaInput):
        super().__init__()
        self._cfg = cfg

    def expand(self, pcolls):
        deliveries, dead_letters, *read_to = pcolls
        delivered = deliveries | "DeliveredOffsets" >> beam.FlatMap(delivered_offsets)
        dead = dead_letters | "DeadLetterOffsets" >> beam.FlatMap(
            lambda d: _offset_of(d.get("origin")))
        return ((delivered, dead, *read_to) | "Handled" >> beam.Flatten()
                | "MaxOffsetPerPartition" >> beam.CombinePerKey(max)
                | "AllPartitions" >> beam.combiners.ToList()
                | "Commit" >> beam.ParDo(_CommitFn(self._cfg)))
