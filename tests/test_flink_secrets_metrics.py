"""A SASL_SSL Kafka job on the REAL Flink cluster: no secret in anything the runner holds,
and the collector's counters on the TaskManagers' Prometheus endpoints.

The job reads the shared broker over SASL_SSL with SCRAM-SHA-512 (``password_env``: Kafka's
EnvVarConfigProvider resolves ``${env:KAFKA_SASL_PASSWORD}`` inside the job server's and
TaskManager's JVMs, which ``scripts/flink.sh start`` ran with ``scripts/kafka.sh env``
exported) and posts to a stand-in that accepts only a fresh random key, read by the SDK
workers from ``api_key_file``. While it runs:

* events are delivered (so both secrets reached where they are used);
* two scrapes of every TaskManager's Prometheus reporter (scripts/flink.sh) show
  ``events_accepted`` and ``events_dead_lettered`` rising (bad records are produced too),
  and ``promtool check metrics`` accepts the exposition;
* then the Flink REST API (job, plan, config, vertices, checkpoints, exceptions) and what
  the cluster wrote for the job under its data dir (the job server's staged artefacts,
  blobs, the job's checkpoints, SDK worker dirs) and logs are searched for both secrets --
  raw, base64, zlib, bz2, Snappy, recursively -- with 0 hits (docs/reliability.md, "Job-graph secrets").
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import urllib.request
import uuid
from pathlib import Path

import pytest
from flexprice_mock.server import MockFlexprice

from tests import secret_scan
from tests.support import cli_run, config_data, config_file, kafka_input
from tests.test_flink import FLINK_SH, _delivered, _wait, cluster  # noqa: F401

pytestmark = [pytest.mark.flink, pytest.mark.kafka, pytest.mark.slow]

PASSWORD_ENV = "KAFKA_SASL_PASSWORD"


def _pid_env(pid_file: Path) -> dict[str, str]:
    pid = pid_file.read_text().strip()
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(kv.split("=", 1) for kv in raw.decode(errors="replace").split("\0") if "=" in kv)


def _flink_cache(env: dict[str, str]) -> Path:
    return Path(env["FLINK_CHECKPOINT_DIR"]).parent.parent  # <cache>/data/checkpoints


def scrape_all(ports: str) -> dict[str, str]:
    """{host:port: exposition text} of every Prometheus reporter in the port range."""
    lo, hi = (int(x) for x in ports.split("-"))
    out = {}
    for port in range(lo, hi + 1):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                out[f"127.0.0.1:{port}"] = r.read().decode()
        except OSError:
            continue
    return out


def collector_counters(texts: dict[str, str], job_name: str, per_tm: dict | None = None
                       ) -> dict[str, float]:
    """Our Beam counters (namespace ``flexprice``) of ``job_name``, summed over operators,
    subtasks and TaskManagers, keyed by the Beam metric name (``per_tm``: filled with
    {tm_id: {name: value}})."""
    from prometheus_client.parser import text_string_to_metric_families

    job_label = re.sub(r"[^A-Za-z0-9_]", "_", job_name)  # the reporter's label sanitizing
    total: dict[str, float] = {}
    for text in texts.values():
        for fam in text_string_to_metric_families(text):
            marker = "_operator_flexprice_"
            if not fam.name.startswith("flink_taskmanager_job_task") or marker not in fam.name:
                continue
            name = fam.name.split(marker, 1)[1]
            for s in fam.samples:
                if s.labels.get("job_name") == job_label:
                    total[name] = total.get(name, 0.0) + s.value
                    if per_tm is not None:
                        tm = per_tm.setdefault(s.labels.get("tm_id", "?"), {})
                        tm[name] = tm.get(name, 0.0) + s.value
    return total


def _promtool_check(text: str) -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool (Debian's prometheus package): scripts/prometheus.sh install"
    proc = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True,
                          text=True, timeout=60)
    # promtool 2.42 exits 3 for lint findings only (Flink's camelCase names, Beam's ':' in
    # system metric names) and 1 when the exposition cannot be parsed ("error while linting").
    assert proc.returncode in (0, 3), proc.stderr[-2000:]
    assert "error while linting" not in proc.stderr + proc.stdout, proc.stderr[-2000:]
    # (its lint notes on our names are about style: "_ms" units, a "_sum" counter)


def _sha256(path: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _rest_blobs(rest, jid: str) -> dict[str, bytes]:
    paths = [f"/jobs/{jid}", f"/jobs/{jid}/plan", f"/jobs/{jid}/config",
             f"/jobs/{jid}/exceptions", f"/jobs/{jid}/checkpoints",
             f"/jobs/{jid}/checkpoints/config", f"/jobs/{jid}/accumulators", "/jobmanager/config",
             "/jobmanager/environment", "/taskmanagers"]
    for v in rest.job(jid)["vertices"]:
        paths += [f"/jobs/{jid}/vertices/{v['id']}", f"/jobs/{jid}/vertices/{v['id']}/accumulators",
                  f"/jobs/{jid}/vertices/{v['id']}/subtasks/accumulators"]
    out = {}
    for path in paths:
        with urllib.request.urlopen(rest.base + path, timeout=10) as r:
            out[path] = r.read()
    return out


@pytest.mark.promtool
def test_sasl_ssl_job_holds_no_secret_and_its_counters_reach_prometheus(cluster, tmp_path):  # noqa: F811
    from kafka import KafkaAdminClient, KafkaProducer
    from kafka.admin import NewTopic

    from flexprice_beam.launch.flink import FlinkRest

    password = cluster["KAFKA_SASL_PASSWORD"]
    cache = _flink_cache(cluster)
    pid_files = [cache / "run" / "jobserver.pid", *sorted((cache / "run").glob("taskmanager*.pid"))]
    assert len(pid_files) >= 2
    for pid_file in pid_files:
        role = pid_file.stem
        got = _pid_env(pid_file).get(PASSWORD_ENV)
        assert got == password, (
            f"the Flink {role} was not started with {PASSWORD_ENV} (start the cluster with "
            "`eval \"$(scripts/kafka.sh env)\"` first; scripts/test.sh does)")
    key = f"fpk_{uuid.uuid4().hex}"
    mock = MockFlexprice(api_key=key).start()
    mock.set_faults(latency_ms=20)  # so the latency distribution has a visible sum
    key_file = tmp_path / "flexprice-api-key"
    key_file.write_text(key + "\n")
    key_file.chmod(0o600)
    plain = cluster["KAFKA_BOOTSTRAP_PLAINTEXT"]
    rest = FlinkRest(cluster["FLINK_REST"])
    run = uuid.uuid4().hex[:8]
    topic = f"flink-secrets-{run}"
    admin = KafkaAdminClient(bootstrap_servers=plain)
    admin.create_topics([NewTopic(topic, 2, 1)])
    producer = KafkaProducer(bootstrap_servers=plain, acks="all", linger_ms=5)
    sent = {"good": 0}

    def produce(good: int, bad: int) -> None:
        for _ in range(good):
            n = sent["good"] = sent["good"] + 1
            producer.send(topic, key=str(n).encode(), value=json.dumps(
                {"event_name": "api.request", "external_customer_id": f"c{n % 5}",
                 "properties": {"n": n}}).encode())
        for i in range(bad):
            producer.send(topic, value=f"not json {i}".encode())
        producer.flush(30)

    cfg_path = config_file(config_data(
        mock, tmp_path, fast=False, api_key=None, input=kafka_input(
            topic, cluster["KAFKA_BOOTSTRAP_SASL_SSL"], consumer_group=f"g-{run}",
            start_from_oldest=True,
            sasl={"mechanism": "SCRAM-SHA-512", "user": cluster["KAFKA_SASL_USERNAME"],
                  "password_env": PASSWORD_ENV},
            tls={"enabled": True, "ca_file": cluster["KAFKA_CA_PEM"]}),
        flexprice={"api_key_file": str(key_file), "batching": {"count": 50, "period": "500ms"},
                   "timeout": "5s"}), tmp_path / "flink-sasl.yaml")
    jid = None
    # what the cluster held before this job (other jobs' checkpoints, logs) is not searched:
    # only what was written for it from here on
    before = {**secret_scan.sizes(cache / "logs"), **secret_scan.sizes(cache / "data")}
    try:
        summary = tmp_path / "submission.json"
        proc = cli_run(
            ["run", "-c", str(cfg_path), "--runner", "flink", "--flink-master", rest.base,
             "--parallelism", "2", "--checkpointing-interval", "3s", "--summary-json",
             str(summary)], timeout=300,
            # every address as `scripts/flink.sh env` reports it (FLINK_REST_PORT & co.)
            env={**cluster, "FLEXPRICE_FLINK_JOB_ENDPOINT": cluster["BEAM_JOB_ENDPOINT"]})
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        sub = json.loads(summary.read_text())
        jid, job_name = sub["job_id"], sub["job_name"]

        # wave 1: the key and the SASL password both work (events reach the stand-in)
        produce(good=100, bad=5)
        _wait("wave 1 delivered", lambda: len(_delivered(mock, topic)) >= 100, 180)
        ports = cluster["FLINK_PROMETHEUS_PORTS"]
        first = _wait("the collector's counters on a TaskManager reporter", lambda: (
            c if (c := collector_counters(scrape_all(ports), job_name)).get("events_accepted", 0)
            >= 100 and c.get("events_dead_lettered", 0) >= 5 else None), 60, every=2)
        # wave 2: the counters move while the job runs
        produce(good=150, bad=7)
        _wait("wave 2 delivered", lambda: len(_delivered(mock, topic)) >= 250, 180)
        second = _wait("the counters moving", lambda: (
            c if (c := collector_counters(scrape_all(ports), job_name)).get("events_accepted", 0)
            >= first["events_accepted"] + 150 and c.get("events_dead_lettered", 0)
            >= first["events_dead_lettered"] + 7 else None), 60, every=2)
        print(f"\nTaskManager counters: first {first}\nsecond {second}")
        assert second["events_accepted"] == 250 and second["events_dead_lettered"] == 12
        per_tm: dict = {}
        collector_counters(scrape_all(ports), job_name, per_tm)
        busy = [tm for tm, c in per_tm.items() if c.get("events_accepted", 0) > 0]
        print(f"events_accepted per TaskManager: "
              f"{ {tm: c.get('events_accepted') for tm, c in per_tm.items()} }")
        assert len(busy) == 2, per_tm  # parallelism 2, one subtask on each TaskManager
        # the request-latency distribution, as the sum/count pair a reporter can export
        assert second["request_latency_ms_count"] == second["requests_sent"] >= 2
        assert second["request_latency_ms_sum"] >= 20 * second["request_latency_ms_count"]
        assert mock.stats()["events_stored"] >= 250
        texts = scrape_all(ports)
        tm_texts = [t for t in texts.values() if "flink_taskmanager_" in t]
        assert tm_texts
        for text in tm_texts:
            _promtool_check(text)

        # the search: nothing the runner holds carries either secret
        secrets = [key.encode(), password.encode()]
        hits = []
        for path, blob in _rest_blobs(rest, jid).items():
            hits += [f"REST {path}: {h}" for h in secret_scan.find(blob, secrets)]
        jar = Path(cluster["FLINK_JOB_SERVER_JAR"])
        jar_size, jar_sha = jar.stat().st_size, _sha256(jar)

        def the_job_server_jar(path: Path) -> bool:  # staged as the EMBEDDED env's artefact
            return path.stat().st_size == jar_size and _sha256(path) == jar_sha

        def not_this_job(path: Path) -> bool:
            checkpoints = cache / "data" / "checkpoints"
            return ((path.is_relative_to(checkpoints) and jid not in path.parts)
                    or before.get(str(path)) == path.stat().st_size or the_job_server_jar(path))

        hits += secret_scan.find_in_files(cache / "data", secrets, skip=not_this_job, since=before)
        hits += secret_scan.find_in_files(cache / "logs", secrets, since=before)
        hits += secret_scan.find_in_files(cache / "conf", secrets)
        assert hits == [], hits[:20]
        # ...and the references are what it holds instead
        plan = b"".join(_rest_blobs(rest, jid).values())
        assert job_name.encode() in plan
    finally:
        try:
            if jid:
                rest.cancel_and_wait(jid, 60)
        finally:
            producer.close(10)
            admin.delete_topics([topic])
            admin.close()
            mock.stop()
