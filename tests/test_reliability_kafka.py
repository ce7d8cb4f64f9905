"""The fault matrix and the stop path with Kafka input (docs/reliability.md), on the real
local broker (scripts/kafka.sh) — the same checks as tests/test_reliability_*.py, plus
"offsets are committed only once every record below them was handled"."""

from __future__ import annotations

import json
import signal
import time

import pytest

from flexprice_beam.launch.runner import run
from tests.kafka_helpers import committed, good, new_topic, produce
from tests.reliability_helpers import account, record
from tests.support import cli, config_file, finish, kafka_input, make_config, read_dead_letters, wait_until

pytestmark = [pytest.mark.kafka]


BAD = [b"\xff\xfe not utf-8", b'{"event_name": "a", "external_customer_id": ', b"[1, 2]",
       b"[" * 400 + b"]" * 400, b'{"event_name": "a", "external_customer_id": "c", '
       b'"properties": {"x": ' + b"[" * 400 + b"]" * 400 + b"}}",
       b'{"event_name": "", "external_customer_id": "c"}', b"NaN"]


def _ids(topic, metas):
    return {f"kafka-{topic}-{p}-{o}" for p, o, _ in metas}


def test_kafka_input_under_a_fault_mix(broker, expansion, mock_api, tmp_path):
    n = 3000
    topic = new_topic()
    values = [good(i) for i in range(n)]
    for k, bad in enumerate(BAD):  # bad records among the good ones
        values.insert(400 * k + 7, bad)
    metas = produce(topic, values)
    mock_api.set_faults({"seed": 11, "fault_rate": 0.3, "rate_hang": 0.03, "hang_s": 2,
                         "retry_after_s": 0})
    cfg = make_config(mock_api, tmp_path, flexprice={"timeout": "500ms"}, input_=kafka_input(
        topic, broker["KAFKA_BOOTSTRAP_PLAINTEXT"], max_records=len(values), max_read_time="90s"))
    summary = run(cfg)
    assert summary.ok, summary.render()
    dead = read_dead_letters(cfg)
    assert len(dead) == len(BAD) and summary.accepted == n
    figures = account(mock_api, _ids(topic, metas), dead, summary.accepted)
    assert sum(committed(f"g-{topic}", topic).values()) == len(values), "offsets after delivery"
    record("Kafka input, fault mix (429/5xx/reset/ack lost/hang) + 7 bad records",
           accepted=summary.accepted, retries=summary.retries, seconds=round(summary.seconds, 1),
           offsets_committed=len(values), **figures)


def test_kafka_sigterm_mid_run_exits_now_and_restart_reads_again(broker, mock_api,
                                                                  tmp_path):
    # no shared `expansion` fixture: each CLI run starts its own JVM (a Beam 2.62 loopback
    # Java worker serves one run)
    n = 1500
    topic = new_topic()
    metas = produce(topic, [good(i) for i in range(n)])
    mock_api.set_faults({"latency_ms": 300})  # 60 requests, 2 in flight: ~9 s of delivery
    config = tmp_path / "k.yaml"
    cfg = make_config(mock_api, tmp_path, flexprice={"max_in_flight": 2, "batching": {"count": 25}},
                      input_=kafka_input(topic, broker["KAFKA_BOOTSTRAP_PLAINTEXT"],
                                         max_records=n, max_read_time="90s"))
    config_file(cfg, config)
    args = ["run", "-c", str(config), "--no-metrics", "--progress", "off"]
    proc = cli(args)
    wait_until(lambda: len(mock_api.events()) >= 100, 120, what="the first run to deliver some")
    began = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    code, out, err = finish(proc, 60)
    took = time.monotonic() - began
    assert code == 143 and "Received SIGTERM: exiting now" in err, f"{code}\n{err[-3000:]}"
    assert took < 15, f"exit took {took:.1f}s"
    before = len(mock_api.events())
    assert before < n and committed(f"g-{topic}", topic) == {}, "nothing committed mid-run"

    mock_api.set_faults({})
    code, out, err = finish(cli(args), 180)
    assert code == 0, err[-3000:]
    figures = account(mock_api, _ids(topic, metas), [])
    assert sum(committed(f"g-{topic}", topic).values()) == n
    assert figures["duplicates_deduplicated"] >= 1
    record("Kafka input, SIGTERM mid-run, then restart", delivered_before_stop=before,
           stop_seconds=round(took, 1), offsets_committed=n, **figures)
    json.dumps(figures)
