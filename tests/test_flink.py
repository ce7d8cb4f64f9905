"""Kafka → Flexprice as a streaming job on a REAL Flink cluster, with checkpoints and failover.

``scripts/flink.sh`` (Flink 1.19 session cluster + Beam job server + expansion service +
Python SDK worker pool) and ``scripts/kafka.sh`` (a real broker) are started by
``scripts/test.sh``; run alone, the ``cluster`` fixture starts them (both are idempotent)
and stops again only what it started.  The Flexprice stand-in runs in this process; the
SDK workers reach it on 127.0.0.1.

One job, submitted through ``flexprice-beam run --runner flink``, lives through:

1. 5000 events → all in the stand-in; once a checkpoint completes the consumer group's
   committed offsets reach the end of every partition;
2. a Flexprice outage (every request 503): nothing is delivered, and the committed offsets do
   not move past what was delivered; after it, everything arrives;
3. the TaskManager is SIGKILLed mid-stream: Flink restores the job from its last checkpoint
   on a new TaskManager, and after more events nothing is lost, and every event delivered
   twice is byte-identical (Flexprice deduplicates it).

Throughout, every committed offset is at most one past a contiguous run of delivered ones.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import threading
import time
import uuid
from pathlib import Path

import pytest

from tests.kafka_helpers import script_env
from tests.support import API_KEY, cli_run, config_data, config_file, kafka_input

pytestmark = [pytest.mark.flink, pytest.mark.kafka, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
FLINK_SH = ROOT / "scripts" / "flink.sh"
KAFKA_SH = ROOT / "scripts" / "kafka.sh"
PARTITIONS = 3


def _sh(*cmd, timeout=600, check=True, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, check=check, env=env)


@pytest.fixture(scope="session")
def cluster():
    """The real broker and Flink cluster; started here if ``scripts/test.sh`` did not."""
    kafka_up = _sh(KAFKA_SH, "status", check=False).returncode == 0
    flink_up = _sh(FLINK_SH, "status", check=False).returncode == 0
    try:
        _sh(KAFKA_SH, "start")
        _sh(KAFKA_SH, "wait")
        # the job server and TaskManagers resolve ${env:KAFKA_SASL_PASSWORD} (sasl.password_env)
        _sh(FLINK_SH, "start", env={**os.environ, **script_env(KAFKA_SH)})
    except subprocess.CalledProcessError as exc:
        pytest.fail(f"{exc.cmd} failed:\n{exc.stdout}\n{exc.stderr}")
    env = {**script_env(KAFKA_SH), **script_env(FLINK_SH)}
    yield env
    if not flink_up:
        _sh(FLINK_SH, "stop", check=False)
    if not kafka_up:
        _sh(KAFKA_SH, "stop", check=False)


class Producer:
    """kafka-python producer that remembers where each record landed."""

    def __init__(self, bootstrap: str, topic: str):
        from kafka import KafkaProducer

        self.topic = topic
        self._p = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
        self.sent: set[tuple[int, int]] = set()  # (partition, offset)
        self._n = 0
        self._futures = []

    def send(self, n: int, rate: float = 0.0) -> None:
        began = time.monotonic()
        for i in range(n):
            value = json.dumps({"event_name": "api.request",
                                "external_customer_id": f"cust_{self._n % 7:03d}",
                                "properties": {"value": self._n % 100 + 1, "seq": self._n}})
            self._futures.append(self._p.send(self.topic, key=str(self._n).encode(),
                                              value=value.encode()))
            self._n += 1
            if rate:
                time.sleep(max(0.0, began + (i + 1) / rate - time.monotonic()))
        self._p.flush(60)
        for fut in self._futures:
            md = fut.get(30)
            self.sent.add((md.partition, md.offset))
        self._futures = []

    def close(self) -> None:
        self._p.close(10)


def _delivered(mock, topic: str) -> set[tuple[int, int]]:
    prefix = f"kafka-{topic}-"
    out = set()
    for ev in mock.events():
        eid = ev.get("event_id", "")
        if eid.startswith(prefix):
            part, off = eid[len(prefix):].rsplit("-", 1)
            out.add((int(part), int(off)))
    return out


def _committed(admin, group: str) -> dict[int, int]:
    offsets = admin.list_group_offsets(group).get(group, {})
    return {tp.partition: om.offset for tp, om in offsets.items() if om.offset >= 0}


def _check_commits_follow_delivery(admin, group, mock, topic) -> dict[int, int]:
    """Every offset below a partition's committed offset was delivered (read commits first)."""
    committed = _committed(admin, group)
    delivered = _delivered(mock, topic)
    for part, nxt in committed.items():
        missing = [o for o in range(nxt) if (part, o) not in delivered]
        assert not missing, (f"partition {part} committed up to {nxt} but offsets "
                             f"{missing[:10]} were never delivered")
    return committed


def _wait(what: str, cond, timeout: float, every: float = 1.0, on_poll=None):
    deadline = time.monotonic() + timeout
    while True:
        if on_poll:
            on_poll()
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(every)


def collector_config(path: Path, bootstrap: str, topic: str, group: str, mock,
                     dead_letter: dict) -> Path:
    """The collector YAML of the Flink tests: Kafka in, the stand-in out, patient retries.
    The key is a file the SDK workers read (a literal key is refused for Flink)."""
    key_file = path.with_name(path.stem + "-api-key")
    key_file.write_text(API_KEY + "\n")
    return config_file(config_data(
        mock, path.parent, fast=False, api_key=None, dead_letters=dead_letter,
        input=kafka_input(topic, bootstrap, consumer_group=group, start_from_oldest=True),
        flexprice={"api_key_file": str(key_file), "batching": {"count": 500, "period": "1s"},
                   "max_in_flight": 4, "timeout": "5s",
                   "retry": {"max_attempts": 30, "initial_backoff": "100ms",
                             "max_backoff": "2s", "max_elapsed": "5m"}},
        logger={"level": "INFO"}), path)


def submit_job(cfg_path: Path, rest, cluster: dict, summary: Path,
               beam_args: tuple[str, ...] = ()) -> tuple[subprocess.CompletedProcess, dict]:
    """``flexprice-beam run --runner flink`` at parallelism 2, checkpoints every 3 s."""
    proc = cli_run(
        ["run", "-c", str(cfg_path), "--runner", "flink", "--flink-master", rest.base,
         "--parallelism", "2", "--checkpointing-interval", "3s", "--summary-json", str(summary),
         *(["--", *beam_args] if beam_args else [])], timeout=300,
        # every address as `scripts/flink.sh env` reports it (FLINK_REST_PORT & co.)
        env={**cluster, "FLEXPRICE_FLINK_JOB_ENDPOINT": cluster.get(
            "BEAM_JOB_ENDPOINT", "localhost:8099")})
    return proc, (json.loads(summary.read_text()) if summary.exists() else {})


def test_streaming_kafka_to_flexprice_on_flink_survives_taskmanager_loss(cluster, mock_api,
                                                                          tmp_path):
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic

    from flexprice_beam.launch.flink import FlinkRest

    bootstrap = cluster.get("KAFKA_BOOTSTRAP_PLAINTEXT", "127.0.0.1:19092")
    rest = FlinkRest(cluster.get("FLINK_REST", "127.0.0.1:8081"))
    run = uuid.uuid4().hex[:8]
    topic, group = f"flink-e2e-{run}", f"flink-e2e-{run}"
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    admin.create_topics([NewTopic(topic, PARTITIONS, 1)])
    producer = Producer(bootstrap, topic)
    mock_api.track_receive_times()
    cfg_path = collector_config(tmp_path / "flink.yaml", bootstrap, topic, group, mock_api,
                                {"path": str(tmp_path / "dead-letter")})
    summary = tmp_path / "submission.json"
    jid = None
    watch = lambda: _check_commits_follow_delivery(admin, group, mock_api, topic)  # noqa: E731
    try:
        started = time.monotonic()
        proc, sub = submit_job(cfg_path, rest, cluster, summary)
        jid = sub.get("job_id")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert sub["tasks_running"] and jid in proc.stdout
        print(f"\nsubmitted {jid}: running after {time.monotonic() - started:.1f}s")

        # 1. 5000 events, all delivered; then a checkpoint commits every partition's end.
        t0 = time.monotonic()
        producer.send(5000)
        _wait("5000 events in the stand-in", lambda: producer.sent <= _delivered(mock_api, topic),
              120, on_poll=watch)
        print(f"5000 events delivered {time.monotonic() - t0:.1f}s after the first was sent")
        ends = {p: 1 + max(o for q, o in producer.sent if q == p) for p in range(PARTITIONS)}
        _wait("offsets committed by a checkpoint", lambda: watch() == ends, 60)

        # 2. Flexprice down: nothing delivered, and no commit beyond what was delivered.
        mock_api.set_faults(fail_all_status=503, fail_all_duration_s=8)
        producer.send(500)
        outage_end = time.monotonic() + 8
        while time.monotonic() < outage_end:
            assert watch() == ends, "offsets were committed for events Flexprice never accepted"
            time.sleep(0.5)
        _wait("the events sent during the outage", lambda: producer.sent <= _delivered(
            mock_api, topic), 90, on_poll=watch)
        assert mock_api.stats()["requests_by_status"].get("503", 0) > 0

        # 3. Kill the TaskManager mid-stream; Flink restores the job from a checkpoint.
        restored_before = rest.checkpoints(jid)["counts"].get("restored", 0)
        stream = threading.Thread(target=producer.send, args=(3000, 300.0), daemon=True)
        stream.start()
        time.sleep(4)
        killed = _sh(FLINK_SH, "restart-taskmanager", "--kill", timeout=180)
        killed_at = time.monotonic()
        print(killed.stderr.strip().splitlines()[-1])
        stream.join(60)
        assert not stream.is_alive()
        _wait("the job restored from a checkpoint and running again",
              lambda: rest.checkpoints(jid)["counts"].get("restored", 0) > restored_before
              and rest.job(jid)["state"] == "RUNNING", 180, on_poll=watch)
        latest = rest.checkpoints(jid)["latest"]["restored"]
        print(f"restored from checkpoint #{latest['id']} {time.monotonic() - killed_at:.1f}s "
              f"after the kill")
        producer.send(1000)
        _wait("every event after the failover", lambda: producer.sent <= _delivered(
            mock_api, topic), 180, on_poll=watch)
        assert len(producer.sent) == 9500
        ends = {p: 1 + max(o for q, o in producer.sent if q == p) for p in range(PARTITIONS)}
        _wait("all offsets committed after the failover", lambda: watch() == ends, 60)

        stats = mock_api.stats()
        print(f"stand-in: {stats['events_stored']} events, {stats['duplicates']} duplicates "
              f"({stats['identical_duplicates']} identical), "
              f"{stats['distinct_conflicts']} conflicts, {stats['requests_total']} requests")
        assert _delivered(mock_api, topic) == producer.sent  # 0 lost, nothing extra
        assert stats["distinct_conflicts"] == 0
        assert stats["conflicting_duplicates"] == 0
        assert stats["identical_duplicates"] == stats["duplicates"]
        assert not any(f.read_text().strip() for f in (tmp_path / "dead-letter").glob("*"))
        lat = sorted((at - ts / 1000) * 1000 for (_eid, ts), at in
                     mock_api.receive_times().items())
        print(f"produce→accepted latency over {len(lat)} events: p50 "
              f"{statistics.median(lat):.0f} ms, p99 {lat[int(len(lat) * 0.99) - 1]:.0f} ms")
    finally:
        mock_api.track_receive_times(False)
        try:
            if jid:
                rest.cancel(jid)
                assert rest.wait_state(jid, ("CANCELED", "FAILED", "FINISHED"), 60) == "CANCELED"
        finally:
            producer.close()
            admin.delete_topics([topic])
            admin.close()
