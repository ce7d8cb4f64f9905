"""The fault matrix, end to end on FnApiRunner against the stand-in (docs/reliability.md).

Each scenario runs the generator through the whole collector while the stand-in misbehaves
in one way, and ends with the same check (``account``): every event was accepted or, once
the retry budget was spent, dead-lettered — none lost — and every repeat the stand-in saw
carried identical bytes (``distinct_conflicts() == []``), so nothing is billed twice.

Kafka input is not part of the matrix: no tests/test_kafka*.py exercise Kafka input end to
end yet (see docs/reliability.md, "Not covered").
"""

from __future__ import annotations

import json
import threading
import time

import pytest
from flexprice_mock.server import MockFlexprice

from flexprice_beam.launch.runner import run
from tests.ops_helpers import free_port, get
from tests.reliability_helpers import FULL, account, generator_ids, record, rss_mb
from tests.support import (
    API_KEY,
    SEED,
    cli,
    config_data,
    config_file,
    finish,
    generate,
    make_config,
    read_dead_letters,
    wait_until,
)

# name: (events, stand-in faults, output.flexprice overrides, what must be seen)
MATRIX = {
    "429 with Retry-After": (
        2000, {"seed": 1, "schedule": ["429", "429"], "rate_429": 0.1, "retry_after_s": 1}, {},
        {"429": 2}),
    "429 without Retry-After": (
        5000, {"seed": 2, "rate_429_no_retry_after": 0.3}, {}, {"429_no_retry_after": 1}),
    "500": (5000, {"seed": 3, "rate_500": 0.3}, {}, {"500": 1}),
    "502 (gateway HTML)": (5000, {"seed": 4, "rate_502": 0.3}, {}, {"502": 1}),
    "503": (5000, {"seed": 5, "rate_503": 0.3}, {}, {"503": 1}),
    "connection reset": (5000, {"seed": 6, "rate_reset": 0.3}, {}, {"reset": 1}),
    "read timeout (hang)": (
        5000, {"seed": 7, "rate_hang": 0.15, "hang_s": 3}, {"timeout": "300ms"}, {"hang": 1}),
    "slow, within the timeout": (
        5000, {"seed": 8, "rate_slow": 0.3, "slow_ms": 300}, {"timeout": "2s"}, {"slow": 1}),
    "slow, past the timeout (stored, answer too late)": (
        5000, {"seed": 9, "rate_slow": 0.25, "slow_ms": 800}, {"timeout": "300ms"}, {"slow": 1}),
    "ack lost (stored, no answer)": (5000, {"seed": 10, "rate_ack_lost": 0.3}, {}, {"ack_lost": 1}),
}


@pytest.mark.parametrize("name", list(MATRIX))
def test_fault_matrix(mock_api, tmp_path, name):
    count, faults, flexprice, must_see = MATRIX[name]
    count *= 10 if FULL else 1
    mock_api.set_faults(faults)
    cfg = make_config(mock_api, tmp_path, count=count, flexprice=flexprice)
    summary = run(cfg)
    assert summary.ok, summary.render()
    figures = account(mock_api, generator_ids(SEED, count), read_dead_letters(cfg),
                      summary.accepted)
    for kind, n in must_see.items():
        assert figures["faults_injected"].get(kind, 0) >= n, (kind, figures)
    assert summary.accepted == count and summary.dead_lettered == 0, summary.render()
    assert summary.retries > 0 or name.startswith("slow, within"), summary.render()
    if name == "429 with Retry-After":
        assert summary.seconds >= 1.0, "Retry-After: 1 was not honoured"
    if "stored" in name:
        assert figures["duplicates_deduplicated"] > 0, "a stored-but-unanswered batch is resent"
    record(name, accepted=summary.accepted, retries=summary.retries, seconds=round(summary.seconds, 1),
           **figures)


def test_connection_refused_until_the_api_comes_up(tmp_path):
    """Nothing listens for the first 3 s; the retries carry the events over the gap."""
    port = free_port()
    late = MockFlexprice(port=port, api_key=API_KEY)
    timer = threading.Timer(3.0, late.start)
    timer.start()
    try:
        cfg = make_config(late, tmp_path, count=1000, flexprice={"retry": {
            "max_attempts": 200, "initial_backoff": "50ms", "max_backoff": "500ms"}})
        summary = run(cfg)
        assert summary.ok and summary.accepted == 1000, summary.render()
        assert summary.retries > 0 and summary.seconds >= 2.5
        figures = account(late, generator_ids(SEED, 1000), read_dead_letters(cfg), summary.accepted)
        record("connection refused, API up after 3 s", accepted=summary.accepted,
               retries=summary.retries, seconds=round(summary.seconds, 1), **figures)
    finally:
        timer.cancel()
        late.stop()


def test_connection_refused_for_good_dead_letters_after_the_budget(tmp_path):
    class Closed:  # make_config needs only host_port
        host_port = f"127.0.0.1:{free_port()}"

    cfg = make_config(Closed, tmp_path, count=300, flexprice={"retry": {
        "max_attempts": 3, "initial_backoff": "5ms", "max_backoff": "20ms"}})
    summary = run(cfg)
    assert summary.ok, summary.render()  # balanced: read = dead-lettered
    dead = read_dead_letters(cfg)
    assert summary.accepted == 0 and len(dead) == 300 == summary.dead_lettered
    assert {d["event"]["event_id"] for d in dead} == generator_ids(SEED, 300)
    assert all(d["stage"] == "delivery" and d["status"] is None
               and "gave up after 3 attempts" in d["reason"] and "refused" in d["reason"]
               for d in dead), dead[0]
    record("connection refused, API never up (budget 3 attempts)", events=300, accepted=0,
           dead_lettered=len(dead), lost=0, retries=summary.retries, distinct_conflicts=0)


def test_api_down_then_back_memory_stays_bounded(mock_api, tmp_path):
    """Every request answered 503 for ``outage`` seconds from the first one (20 s in CI,
    120 s with FULL_RELIABILITY=1). The run is a subprocess so its memory can be sampled; its
    /stats shows how much it holds: read − (accepted + dead-lettered) stays within the
    sink's bound (2 × max_in_flight batches plus a source batch or so) the whole time."""
    outage = 120.0 if FULL else 20.0
    count = 200_000 if FULL else 60_000
    batch, in_flight = 500, 4
    mock_api.set_faults({"fail_all_status": 503})  # down until the first request, see below
    metrics = free_port()
    config = config_file(config_data(
        mock_api, tmp_path, input=generate(count, batch_size=batch),
        flexprice={"batching": {"count": batch, "period": "200ms"}, "max_in_flight": in_flight,
                   "retry": {"max_attempts": 100_000, "initial_backoff": "100ms",
                             "max_backoff": "2s", "max_elapsed": f"{int(outage + 120)}s"}},
        dead_letters="dl"), tmp_path / "down.yaml")
    proc = cli(["run", "-c", str(config), "--summary-json", str(tmp_path / "summary.json"),
                "--metrics-address", f"127.0.0.1:{metrics}", "--progress", "off"])
    try:
        wait_until(lambda: mock_api.requests_log, 30, what="first request")
        mock_api.update_faults(fail_all_duration_s=outage)  # the outage clock starts now
        began = time.monotonic()
        base_rss, peak_rss, max_held, samples = rss_mb(proc.pid), 0.0, 0, 0
        while time.monotonic() - began < outage - 0.5:
            time.sleep(0.5)
            peak_rss = max(peak_rss, rss_mb(proc.pid))
            code, body = get(f"http://127.0.0.1:{metrics}/stats")
            if code == 200:
                rec = json.loads(body)["reconciliation"]
                max_held = max(max_held, rec["in_flight"])
                samples += 1
                assert rec["accepted"] == 0, "accepted while the API was down?"
        assert proc.poll() is None, "the run ended during the outage"
        code, out, err = finish(proc, timeout=outage + 240)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert code == 0, f"exit {code}\n{out}\n{err[-3000:]}"
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["accepted"] == count and summary["dead_lettered"] == 0, summary
    figures = account(mock_api, generator_ids(SEED, count), [], summary["accepted"])
    assert figures["faults_injected"].get("fail_all_503", 0) > 0
    bound = (2 * in_flight + 2) * batch + batch
    assert samples >= outage / 2 and 0 < max_held <= bound, (max_held, bound)
    assert peak_rss - base_rss < 150, f"RSS grew {peak_rss - base_rss:.0f} MiB while down"
    record(f"API down {outage:.0f} s (all 503), then back", accepted=summary["accepted"],
           retries=summary["retries"], seconds=round(summary["seconds"], 1),
           max_events_held=max_held, held_bound=bound, rss_start_mib=round(base_rss),
           rss_peak_mib=round(peak_rss), **figures)
