"""A worker (TaskManager + its Python SDK worker pool) is lost mid-run; nothing is lost.

The real two-TaskManager Flink cluster (``scripts/flink.sh``), the real broker, MinIO and the
stand-in.  Kafka input on 4 partitions; the stand-in rejects 2 % of the events (400, a
deterministic rule on the event id: ``reject_every_nth: 50``), so they become delivery dead
letters, written to S3 (``s3://…``, Beam's S3 filesystem) AND a dead-letter topic.  The
collector runs at parallelism 2, one subtask on each TaskManager.  Mid-stream worker 2 is
SIGKILLed — TaskManager, worker pool and SDK workers at once — and Flink restores the job
from its last checkpoint on the surviving TaskManager.

Shown, with the figures printed for docs/reliability.md:
* every valid event accepted (lost = 0);
* every poison event in S3 and on the topic, once or as identical copies (a bundle redone
  after the restore writes its letters again: the same letter, only ``time`` differs);
* no letter only on the dead worker's disk (no dead-letter file anywhere under its dirs);
* throughout the run, every committed offset is behind records delivered or dead-lettered
  in both places (the committed offsets are read first, the stores after);
* no (event_id, timestamp) delivered with differing bodies.
"""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from pathlib import Path

import orjson
import pytest
from flexprice_mock.faults import event_hash

from tests.store_helpers import ensure_minio, s3_args, s3_client
from tests.test_flink import (  # noqa: F401 - cluster is a fixture
    FLINK_SH,
    ROOT,
    Producer,
    _committed,
    _sh,
    _wait,
    cluster,
    collector_config,
    submit_job,
)

pytestmark = [pytest.mark.flink, pytest.mark.kafka, pytest.mark.s3, pytest.mark.slow]

PARTITIONS = 4
POISON_EVERY = 50  # 2 %
DATA_DIR = Path(os.environ.get("FLINK_CACHE_DIR", ROOT / ".cache" / "flink")) / "data"


class Letters:
    """Incremental readers of the two shared dead-letter places."""

    def __init__(self, env: dict, prefix: str, bootstrap: str, topic: str):
        from kafka import KafkaConsumer

        self._s3, self._bucket, self._prefix = s3_client(env), env["FLEXPRICE_S3_BUCKET"], prefix
        self.s3_files: dict[str, list[dict]] = {}
        self.temporary: set[str] = set()
        self._consumer = KafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=None,
                                       auto_offset_reset="earliest", enable_auto_commit=False)
        self.topic: list[tuple[bytes, dict, dict]] = []  # key, letter, headers
        self._lock = threading.Lock()

    def poll(self) -> None:
        with self._lock:
            pages = self._s3.get_paginator("list_objects_v2").paginate(
                Bucket=self._bucket, Prefix=self._prefix + "/")
            for page in pages:
                for obj in page.get("Contents", []):
                    key = obj["Key"]
                    if "/.tmp/" in key:
                        self.temporary.add(key)
                    elif key not in self.s3_files:
                        body = self._s3.get_object(Bucket=self._bucket, Key=key)["Body"].read()
                        assert body.endswith(b"\n"), f"torn dead-letter file {key}"
                        self.s3_files[key] = [orjson.loads(x) for x in body.splitlines()]
            for records in self._consumer.poll(timeout_ms=500, max_records=10_000).values():
                for r in records:
                    self.topic.append((r.key, orjson.loads(r.value), dict(r.headers)))

    def s3_letters(self) -> list[dict]:
        return [d for letters in self.s3_files.values() for d in letters]

    @staticmethod
    def offsets(letters) -> set[tuple[int, int]]:
        return {(d["origin"]["partition"], d["origin"]["offset"]) for d in letters}

    def close(self) -> None:
        self._consumer.close()


def _delivered(mock, topic: str) -> set[tuple[int, int]]:
    prefix = f"kafka-{topic}-"
    return {tuple(int(x) for x in e["event_id"][len(prefix):].rsplit("-", 1))
            for e in mock.events() if e.get("event_id", "").startswith(prefix)}


def _same_letter(a: dict, b: dict) -> bool:
    """Identical copies: the same letter but for when it was written."""
    return {k: v for k, v in a.items() if k != "time"} == {k: v for k, v in b.items()
                                                            if k != "time"}


def _subtask_hosts(rest, jid: str) -> dict[str, set[str]]:
    """vertex name → the TaskManagers its subtasks run on."""
    out = {}
    for v in rest.job(jid)["vertices"]:
        tms = rest.call(f"/jobs/{jid}/vertices/{v['id']}/taskmanagers")["taskmanagers"]
        out[v["name"]] = {t["taskmanager-id"] for t in tms}
    return out


def _files_on_worker_disk(n: int) -> list[str]:
    roles = ["taskmanager" if n == 1 else f"taskmanager-{n}", "workerpool" if n == 1
             else f"workerpool-{n}"]
    found = []
    for base in (DATA_DIR / "tmp", DATA_DIR / "sdk-workers", DATA_DIR / "blobs"):
        for role in roles:
            found += [str(p) for p in (base / role).rglob("*dead-letter*")]
    return found


def test_losing_a_worker_loses_no_event_and_no_dead_letter(cluster, mock_api, tmp_path):  # noqa: F811
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic

    from flexprice_beam.launch.flink import FlinkRest

    s3env = ensure_minio()
    bootstrap = cluster.get("KAFKA_BOOTSTRAP_PLAINTEXT", "127.0.0.1:19092")
    rest = FlinkRest(cluster.get("FLINK_REST", "127.0.0.1:8081"))
    run = uuid.uuid4().hex[:8]
    topic, dlq, group = f"loss-{run}", f"loss-dlq-{run}", f"loss-{run}"
    prefix = f"worker-loss-{run}"
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    admin.create_topics([NewTopic(topic, PARTITIONS, 1), NewTopic(dlq, 2, 1)])
    producer = Producer(bootstrap, topic)
    letters = Letters(s3env, prefix, bootstrap, dlq)
    mock_api.set_faults(reject_every_nth=POISON_EVERY)
    cfg_path = collector_config(
        tmp_path / "loss.yaml", bootstrap, topic, group, mock_api,
        {"path": f"s3://{s3env['FLEXPRICE_S3_BUCKET']}/{prefix}",
         "kafka": {"addresses": [bootstrap], "topic": dlq}})
    summary = tmp_path / "submission.json"
    jid = None
    checks = [0]

    def watch() -> None:
        """Committed offsets first, then the stores: each committed record must be in them."""
        committed = _committed(admin, group)
        delivered = _delivered(mock_api, topic)
        letters.poll()
        in_s3 = Letters.offsets(letters.s3_letters())
        in_topic = Letters.offsets(d for _k, d, _h in letters.topic)
        for part, nxt in committed.items():
            for off in range(nxt):
                pos = (part, off)
                assert pos in delivered or (pos in in_s3 and pos in in_topic), (
                    f"offset {off} of partition {part} committed, but the record was neither "
                    f"delivered nor dead-lettered in S3 and the topic "
                    f"(s3: {pos in in_s3}, topic: {pos in in_topic})")
        checks[0] += 1

    try:
        proc, sub = submit_job(cfg_path, rest, cluster, summary, tuple(s3_args(s3env)))
        jid = sub.get("job_id")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        hosts = _subtask_hosts(rest, jid)
        spread = [name for name, tms in hosts.items() if len(tms) == 2]
        assert spread, f"no vertex runs on both TaskManagers: {hosts}"

        # Stream 4,000 events at 400/s; SIGKILL worker 2 four seconds in.
        producer.send(1000)
        _wait("the first 1000 events handled", lambda: len(_delivered(mock_api, topic)) > 900,
              120, on_poll=watch)
        restored_before = rest.checkpoints(jid)["counts"].get("restored", 0)
        stream = threading.Thread(target=producer.send, args=(3000, 400.0), daemon=True)
        stream.start()
        time.sleep(4)
        killed = _sh(FLINK_SH, "kill-worker", "2", timeout=60)
        killed_at = time.monotonic()
        print("\n" + killed.stderr.strip().splitlines()[-1])
        stream.join(60)
        assert not stream.is_alive()
        _wait("the job restored from a checkpoint and running again",
              lambda: rest.checkpoints(jid)["counts"].get("restored", 0) > restored_before
              and rest.job(jid)["state"] == "RUNNING", 240, every=2, on_poll=watch)
        print(f"restored {time.monotonic() - killed_at:.1f}s after the kill")
        producer.send(1000)
        assert len(producer.sent) == 5000

        poison = {(p, o) for p, o in producer.sent
                  if event_hash(f"kafka-{topic}-{p}-{o}") % POISON_EVERY == 0}
        valid = producer.sent - poison

        def all_there():
            letters.poll()
            return (valid <= _delivered(mock_api, topic)
                    and poison <= Letters.offsets(letters.s3_letters())
                    and poison <= Letters.offsets(d for _k, d, _h in letters.topic))

        _wait("every valid event delivered and every poison event dead-lettered", all_there,
              240, every=2, on_poll=watch)
        ends = {p: 1 + max(o for q, o in producer.sent if q == p) for p in range(PARTITIONS)}
        _wait("all offsets committed", lambda: _committed(admin, group) == ends, 120,
              every=2, on_poll=watch)
        watch()

        stats = mock_api.stats()
        delivered = _delivered(mock_api, topic)
        s3_letters, topic_letters = letters.s3_letters(), [d for _k, d, _h in letters.topic]
        lost = len(valid - delivered) + len(poison - Letters.offsets(s3_letters)) + \
            len(poison - Letters.offsets(topic_letters))
        by_pos: dict[tuple[int, int], list[dict]] = {}
        for d in s3_letters + topic_letters:
            by_pos.setdefault((d["origin"]["partition"], d["origin"]["offset"]), []).append(d)
        differing = [pos for pos, copies in by_pos.items()
                     if not all(_same_letter(copies[0], c) for c in copies[1:])]
        on_dead_disk = _files_on_worker_disk(2)
        figures = {
            "events": len(producer.sent), "valid": len(valid), "poison": len(poison),
            "accepted": len(valid & delivered), "lost": lost,
            "letters_s3": len(s3_letters), "letters_topic": len(topic_letters),
            "s3_files": len(letters.s3_files), "s3_temporary_left": len(letters.temporary),
            "letter_copies_differing": len(differing),
            "letters_only_on_dead_worker": len(on_dead_disk),
            "duplicates": stats["duplicates"],
            "identical_duplicates": stats["identical_duplicates"],
            "conflicting_duplicates": stats["conflicting_duplicates"],
            "distinct_conflicts": stats["distinct_conflicts"],
            "commit_checks": checks[0],
        }
        print("worker loss figures: " + json.dumps(figures))
        assert lost == 0
        assert delivered <= producer.sent and not (delivered & poison)
        assert not differing, f"letter copies differ: {differing[:5]}"
        assert not on_dead_disk, on_dead_disk
        assert stats["distinct_conflicts"] == 0 and stats["conflicting_duplicates"] == 0
        for key, letter, headers in letters.topic:
            assert key == letter["event"]["event_id"].encode()
            assert headers["stage"] == b"delivery" and headers["status"] == b"400"
    finally:
        try:
            if jid:
                rest.cancel_and_wait(jid, 60)
        finally:
            _sh(FLINK_SH, "start", timeout=300, check=False)  # worker 2 back for the next test
            letters.close()
            producer.close()
            admin.delete_topics([topic, dlq])
            admin.close()
            mock_api.set_faults()
