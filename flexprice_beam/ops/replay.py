"""``replay-dead-letters``: send dead-lettered events again, once the cause is fixed.

Each event goes out with its original ``event_id`` and ``timestamp`` (the bytes the run
would have sent), re-validated by ``transforms.validate.prepare`` and delivered by the
sink's own engine (``io.flexprice``) — same batching, retries, 400-isolation and 401 stop —
so a replay can never bill twice: Flexprice deduplicates equal (event_id, timestamp).

Sources: the committed files under a FileSystems folder or glob (local, ``s3://``, …), each
rewritten atomically (temporary name + rename) keeping only the letters that were not
replayed (other stage, older than ``--since``, no event — mapping failures) and the ones
that failed again, with the new reason, status and time; or the dead-letter topic through
a consumer group, whose committed offsets record what was replayed.  Either way a second
replay finds nothing left to send.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
from dataclasses import dataclass, field
from typing import Any

import orjson

from flexprice_beam.core.config import CollectorConfig
from flexprice_beam.core.events import Record, dead_letter, parse_timestamp
from flexprice_beam.core.live import SAMPLE
from flexprice_beam.io.api import ApiClient, FlexpriceAuthError
from flexprice_beam.io.dead_letter import encode_dead_letter, lock_file
from flexprice_beam.io.dead_letter_files import is_local, letter_files, read_file, write_atomically
from flexprice_beam.io.flexprice.executor import deliver, executor_for
from flexprice_beam.io.flexprice.sink import delivery_dead_letter
from flexprice_beam.io.readback import read_back
from flexprice_beam.transforms.batches import BatchBuffer
from flexprice_beam.transforms.validate import InvalidEvent, Prepared, prepare

log = logging.getLogger("flexprice_beam.replay")

STAGES = ("mapping", "validation", "delivery")


@dataclass
class ReplayReport:
    files: int = 0
    letters: int = 0
    replayed: int = 0
    accepted: int = 0
    failed_again: int = 0
    kept: int = 0
    skipped_files: list[str] = field(default_factory=list)
    error: str | None = None
    dry_run: bool = False
    #: (event_id, timestamp) of accepted events, up to ``live.SAMPLE``, for ``--read-back``
    sample: list = field(default_factory=list)
    held_text: str | None = None

    @property
    def exit_code(self) -> int:
        """0 all replayed accepted; 1 stopped (e.g. 401/403); 3 some failed again."""
        if self.error:
            return 1
        return 3 if self.failed_again else 0

    def render(self) -> str:
        verb = "would replay" if self.dry_run else "replayed"
        lines = [
            f"dead letters:   {self.letters} in {self.files} file(s)",
            f"{verb + ':':<16}{self.replayed}",
            f"accepted:       {self.accepted} (removed from the dead letters)",
            f"failed again:   {self.failed_again} (kept, with the new reason)",
            f"not replayed:   {self.kept} (other stage, before --since, or no event)",
        ]
        if self.skipped_files:
            lines.append(f"skipped:        {', '.join(self.skipped_files)} (in use by a running "
                         "pipeline)")
        if self.held_text:
            lines.append(f"API holds:      {self.held_text}")
        if self.error:
            lines.append(f"error:          {self.error}")
        return "\n".join(lines)


def _selected(letter: Any, stage: str | None, since: dt.datetime | None) -> bool:
    if not isinstance(letter, dict) or not isinstance(letter.get("event"), dict):
        return False  # mapping failures carry no event: fix the mapping and re-read instead
    if stage and letter.get("stage") != stage:
        return False
    if since is not None:
        try:
            return parse_timestamp(letter.get("time") or "") >= since
        except ValueError:
            return False
    return True


def _record(letter: dict) -> Record:
    event = letter["event"]
    return Record(letter.get("record_id") or str(event.get("event_id") or ""),
                  str(event.get("timestamp") or ""), letter.get("record"),
                  letter.get("origin") or {})


def _again(new: dict, old: dict) -> dict:
    """The new letter, remembering when it first failed and how often it was replayed."""
    new["first_time"] = old.get("first_time") or old.get("time")
    new["replays"] = int(old.get("replays") or 0) + 1
    return new


class Replayer:
    """Replays one file at a time; holds the sink's delivery engine for the whole run."""

    def __init__(self, cfg: CollectorConfig):
        self._cfg = cfg.output.flexprice
        self._engine = executor_for(self._cfg)

    def close(self) -> None:
        self._engine.close()

    def deliver(self, items: list[Prepared]) -> dict[int, dict | None]:
        """id(item) → None if accepted, else its new dead letter; raises on 401/403."""
        batches = BatchBuffer(self._cfg.batching.count, self._cfg.batching.byte_size).cut(items)
        result: dict[int, dict | None] = {}
        for outcome in deliver(self._engine, batches):
            for item in outcome.accepted_items():
                result[id(item)] = None
            for d in outcome.failed:
                result[id(d.item)] = delivery_dead_letter(d)
        return result


def _parse_lines(raw: bytes) -> list[tuple[bytes, Any]]:
    out = []
    for line in raw.splitlines():
        if not line.strip():
            continue
        try:
            out.append((line, orjson.loads(line)))
        except orjson.JSONDecodeError:
            out.append((line, None))  # a torn last line from a crash: keep it as it is
    return out


def _replay_entries(entries: list[tuple[bytes, Any]], replayer: Replayer | None,
                    report: ReplayReport, stage: str | None, since: dt.datetime | None,
                    big_numbers: str = "dead_letter") -> tuple[list[bytes], list[bytes]] | None:
    """Replay the selected letters of one source: ``(what stays, in order, the letters that
    failed again in place; those letters alone)``, or None when nothing was sent."""
    report.letters += len(entries)
    chosen: dict[int, tuple[dict, Record, Prepared | None, dict | None]] = {}
    for i, (_line, letter) in enumerate(entries):
        if not _selected(letter, stage, since):
            continue
        record = _record(letter)
        try:
            chosen[i] = (letter, record, prepare(record, letter["event"],
                                                  big_numbers=big_numbers), None)
        except InvalidEvent as exc:
            chosen[i] = (letter, record, None, dead_letter(
                "validation", exc.reason, record=record, event=letter["event"],
                field=exc.field))
    report.replayed += len(chosen)
    report.kept += len(entries) - len(chosen)
    if replayer is None or not chosen:
        return None
    outcomes = replayer.deliver([c[2] for c in chosen.values() if c[2] is not None])
    kept, again = [], []
    for i, (line, _letter) in enumerate(entries):
        if i not in chosen:
            kept.append(line)
            continue
        letter, _record_, item, failure = chosen[i]
        if item is not None:
            failure = outcomes[id(item)]
        if failure is None:
            report.accepted += 1
            if len(report.sample) < SAMPLE:
                report.sample.append((item.event["event_id"], item.event["timestamp"]))
        else:
            report.failed_again += 1
            again.append(encode_dead_letter(_again(failure, letter)))
            kept.append(again[-1])
    return kept, again


def replay_file(path: str, replayer: Replayer | None, report: ReplayReport,
                stage: str | None, since: dt.datetime | None,
                big_numbers: str = "dead_letter") -> None:
    """One committed file: accepted letters leave it, the rest stay (rewritten atomically)."""
    if is_local(path):
        with open(path, "rb") as f:
            if not lock_file(f, blocking=False):  # a writer from before per-bundle files
                report.skipped_files.append(os.path.basename(path))
                return
            raw = f.read()
    else:
        raw = read_file(path)
    report.files += 1
    entries = _parse_lines(raw)
    log.info("Dead letters: %d in %s", len(entries), path)
    result = _replay_entries(entries, replayer, report, stage, since, big_numbers)
    if result is not None:
        write_atomically(path, result[0])


def replay_topic(cfg: CollectorConfig, group: str, replayer: Replayer | None,
                 report: ReplayReport, stage: str | None, since: dt.datetime | None) -> None:
    """The dead-letter topic from the group's committed position to its current end.

    Letters that fail again are produced to the topic anew (after the end just read); the
    group's offsets are committed only after that, so a second replay starts behind
    everything this one handled and finds nothing to do."""
    from kafka import KafkaConsumer, TopicPartition
    from kafka.structs import OffsetAndMetadata

    from flexprice_beam.io.dead_letter_topic import DeadLetterProducer
    from flexprice_beam.io.kafka import python_client_config

    kcfg = cfg.output.dead_letter.kafka
    consumer = KafkaConsumer(group_id=group, enable_auto_commit=False,
                             auto_offset_reset="earliest", **python_client_config(kcfg))
    try:
        parts = sorted(consumer.partitions_for_topic(kcfg.topic) or ())
        tps = [TopicPartition(kcfg.topic, p) for p in parts]
        consumer.assign(tps)
        end = consumer.end_offsets(tps)
        entries: list[tuple[bytes, Any]] = []
        while any(consumer.position(tp) < end[tp] for tp in tps):
            for tp, records in consumer.poll(timeout_ms=1000).items():
                for rec in records:
                    if rec.offset < end[tp]:
                        entries += _parse_lines(rec.value or b"")
        report.files += 1
        log.info("Dead letters: %d on topic %s (group %s)", len(entries), kcfg.topic, group)
        result = _replay_entries(entries, replayer, report, stage, since,
                                 cfg.pipeline.big_numbers)
        if replayer is None:
            return
        if result is not None and result[1]:
            producer = DeadLetterProducer(kcfg)
            try:
                for line in result[1]:
                    producer.send(orjson.loads(line), line)
                producer.commit()
            finally:
                producer.close()
        consumer.commit({tp: OffsetAndMetadata(end[tp], "", -1) for tp in tps})
    finally:
        consumer.close()


def replay(cfg: CollectorConfig, path: str | None = None, stage: str | None = None,
           since: str | None = None, dry_run: bool = False,
           group: str | None = None, read_back_wait: float | None = None) -> ReplayReport:
    """Replay the committed files under ``path`` (a folder or a FileSystems glob; default
    the config's dead-letter path), or with ``group`` the config's dead-letter topic; with
    ``read_back_wait``, then look for a sample of the accepted events in Flexprice (what is
    not readable yet is reported as queued, never as a failure)."""
    report = ReplayReport(dry_run=dry_run)
    since_ts = parse_timestamp(since) if since else None
    if group is not None and cfg.output.dead_letter.kafka is None:
        raise ValueError("--group replays output.dead_letter.kafka, which is not configured")
    source = path or cfg.output.dead_letter.path
    replayer = None if dry_run else Replayer(cfg)
    try:
        if group is not None:
            replay_topic(cfg, group, replayer, report, stage, since_ts)
        else:
            for f in (letter_files(source) if source else ()):
                replay_file(f, replayer, report, stage, since_ts, cfg.pipeline.big_numbers)
        if read_back_wait is not None and report.sample:
            with ApiClient(cfg.output.flexprice) as api:
                report.held_text = read_back(api, report.sample, read_back_wait).render()
    except FlexpriceAuthError as exc:
        report.error = str(exc)
        log.error("Replay stopped: %s", exc)
    finally:
        if replayer is not None:
            replayer.close()
    return report
