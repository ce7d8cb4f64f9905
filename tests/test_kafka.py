"""Kafka input on the real local broker (scripts/kafka.sh) through Beam's ReadFromKafka."""

from __future__ import annotations

import collections
import json
import os
import signal
import subprocess

import pytest

from flexprice_beam.core.events import rfc3339_from_millis
from flexprice_beam.io.send_events import main as send_events
from flexprice_beam.launch.runner import run
from tests.kafka_helpers import committed, good, new_topic, produce
from tests.support import (
    cli,
    config_data,
    config_file,
    kafka_input,
    make_config,
    merge,
    read_dead_letters,
    wait_until,
)

pytestmark = [pytest.mark.kafka]


def bounded(broker, topic, listener="PLAINTEXT", **keys):
    """``topic`` through ``listener``, read for at most 60 s."""
    return kafka_input(topic, broker[f"KAFKA_BOOTSTRAP_{listener}"], max_read_time="60s", **keys)


#: The CLI runs' stand-in output: 2 requests of 50 in flight, product timeouts and budget.
CLI_OUTPUT = {"batching": {"count": 50, "period": "200ms"}, "max_in_flight": 2,
              "retry": {"initial_backoff": "20ms", "max_backoff": "200ms"}}
RUN = ["--no-metrics", "--progress", "off"]


LISTENERS = {
    "plaintext": ("PLAINTEXT", {}),
    "sasl_plain": ("SASL_PLAINTEXT", {"sasl": {"mechanism": "PLAIN"}}),
    "scram_sha_512": ("SASL_PLAINTEXT", {"sasl": {"mechanism": "SCRAM-SHA-512"}}),
    "ssl": ("SSL", {"tls": {"enabled": True}}),
    "sasl_ssl": ("SASL_SSL", {"sasl": {"mechanism": "PLAIN"}, "tls": {"enabled": True}}),
}


def _security(broker, extra, password=None, ca=None):
    extra = json.loads(json.dumps(extra))
    if "sasl" in extra:
        extra["sasl"].update(user=broker["KAFKA_SASL_USERNAME"],
                             password=password or broker["KAFKA_SASL_PASSWORD"])
    if "tls" in extra:
        extra["tls"]["ca_file"] = ca or broker["KAFKA_CA_PEM"]
    return extra


@pytest.mark.parametrize("name", list(LISTENERS))
def test_each_security_protocol_delivers_a_batch(name, broker, expansion, mock_api, tmp_path):
    listener, extra = LISTENERS[name]
    topic = new_topic()
    metas = produce(topic, [good(i) for i in range(40)])
    cfg = make_config(mock_api, tmp_path, input_=bounded(
        broker, topic, listener, max_records=40, **_security(broker, extra)))
    summary = run(cfg)
    assert summary.ok, summary.render()
    events = {e["event_id"]: e for e in mock_api.events()}
    assert len(events) == 40
    for partition, offset, ts in metas:  # identity comes from the source
        event = events[f"kafka-{topic}-{partition}-{offset}"]
        assert event["timestamp"] == rfc3339_from_millis(ts)
    group = committed(f"g-{topic}", topic)
    ends = collections.Counter(p for p, _, _ in metas)
    assert sum(group.values()) == 40 and set(group) == set(ends)


def _refused_run(broker, mock_api, tmp_path, protocol: str, security: dict):
    """One record on a fresh topic, read through a listener that must refuse us."""
    topic = new_topic()
    produce(topic, [good(1)])
    summary = run(make_config(mock_api, tmp_path, input_=bounded(
        broker, topic, protocol, max_records=1, **security)))
    assert not summary.ok
    return summary


def test_wrong_password_fails_naming_the_cause(broker, expansion, mock_api, tmp_path):
    summary = _refused_run(broker, mock_api, tmp_path, "SASL_PLAINTEXT", _security(
        broker, {"sasl": {"mechanism": "SCRAM-SHA-512"}}, password="wrong"))
    # Java (streaming) says SaslAuthenticationException, kafka-python (bounded runs)
    # SaslAuthenticationFailedError; both "Authentication failed ... invalid credentials".
    # kafka-python often sees only the broker hanging up mid-login, and says so.
    assert ("Authentication failed" in summary.error and "invalid credentials" in summary.error
            or "closed every connection during SASL SCRAM-SHA-512 authentication"
            in summary.error), summary.error
    assert "check input.kafka.sasl.user / password" in summary.error
    assert "wrong" not in summary.error.replace("Invalid username or password", "")


def test_untrusted_certificate_fails_naming_the_cause(broker, expansion, mock_api, tmp_path):
    summary = _refused_run(broker, mock_api, tmp_path, "SSL", _security(
        broker, {"tls": {"enabled": True}}, ca=broker["KAFKA_UNTRUSTED_CA_PEM"]))
    # Java: "unable to find valid certification path"; Python's ssl: "certificate verify failed"
    assert "SSL" in summary.error and ("certification path" in summary.error
                                       or "certificate verify failed" in summary.error)
    assert "check input.kafka.tls.ca_file" in summary.error


def test_malformed_records_go_to_dead_letters_with_offsets(broker, expansion, mock_api, tmp_path):
    topic = new_topic()
    assert send_events(["950", "--malformed", "50", "--topic", topic, "--seed", "5",
                        "--brokers", broker["KAFKA_BOOTSTRAP_PLAINTEXT"]]) == 0
    cfg = make_config(mock_api, tmp_path, input_=bounded(broker, topic, max_records=1000))
    summary = run(cfg)
    assert summary.ok, summary.render()
    assert summary.read == 1000 and summary.accepted == 950 and summary.dead_lettered == 50
    assert len(mock_api.events()) == 950
    dead = read_dead_letters(cfg)
    assert len(dead) == 50
    for d in dead:
        assert d["stage"] in ("mapping", "validation") and d["reason"]
        o = d["origin"]
        assert o["topic"] == topic and isinstance(o["offset"], int) and o["key"].startswith("bad-")
        if d["stage"] == "mapping":
            assert o["raw_value"] is not None
    assert len({(d["origin"]["partition"], d["origin"]["offset"]) for d in dead}) == 50


def test_sigkill_mid_run_then_restart_loses_nothing(broker, mock_api, tmp_path):
    topic = new_topic()
    produce(topic, [good(i) for i in range(1000)])
    mock_api.set_faults({"latency_ms": 300})  # 40 requests, 2 in flight: ~6 s of delivery
    path = config_file(config_data(
        mock_api, tmp_path, input=bounded(broker, topic, max_records=1000), fast=False,
        flexprice=merge(CLI_OUTPUT, {"batching": {"count": 25}}), dead_letters="dl"),
        tmp_path / "run.yaml")
    first = cli(["run", "-c", str(path), *RUN], stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: len(mock_api.events()) >= 100, 180, what="the first run to deliver some")
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(30)
    delivered_before_kill = len(mock_api.events())
    assert delivered_before_kill < 1000, "the kill should land mid-run"
    assert committed(f"g-{topic}", topic) == {}, "no offsets may be committed before delivery"
    mock_api.set_faults({})
    second = cli(["run", "-c", str(path), *RUN], stderr=subprocess.STDOUT)
    out, _ = second.communicate(timeout=300)
    assert second.returncode == 0, out[-3000:]
    ids = collections.Counter(e["event_id"] for e in mock_api.events())
    assert len(ids) == 1000, "every produced event arrives"
    assert mock_api.stats()["duplicates"] >= delivered_before_kill - 100
    assert mock_api.distinct_conflicts() == [], "re-read events must be byte-identical"
    assert sum(committed(f"g-{topic}", topic).values()) == 1000


def test_streaming_run_delivers_events_produced_while_running(broker, mock_api, tmp_path):
    topic = new_topic()
    produce(topic, [good(i) for i in range(100)])
    unbounded = kafka_input(topic, broker["KAFKA_BOOTSTRAP_PLAINTEXT"])  # Prism streams it
    path = config_file(config_data(mock_api, tmp_path, input=unbounded, fast=False,
                                   flexprice=CLI_OUTPUT, dead_letters="dl"), tmp_path / "run.yaml")
    proc = cli(["run", "-c", str(path), *RUN], stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: len(mock_api.events()) >= 100, 240, what="the first 100 events")
        produce(topic, [good(i) for i in range(100, 250)])
        wait_until(lambda: len(mock_api.events()) >= 250, 120, what="events produced while running")
        wait_until(lambda: sum(committed(f"g-{topic}", topic).values()) == 250, 60,
                   what="offsets committed after delivery")
        assert proc.poll() is None, "a streaming run keeps consuming"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
    assert len({e["event_id"] for e in mock_api.events()}) == 250
    assert mock_api.distinct_conflicts() == []
