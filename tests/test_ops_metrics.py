"""/metrics, /ping and /stats scraped DURING real runs on FnApiRunner against the stand-in."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import threading

import pytest
from prometheus_client.parser import text_string_to_metric_families

from flexprice_beam.cli import main as cli_main
from flexprice_beam.core.live import LIVE, LiveRegistry, stage_counts
from flexprice_beam.launch.metrics_server import MetricsServer, parse_address
from flexprice_beam.launch.runner import run
from tests.ops_helpers import free_port, get, stats, wait_for
from tests.support import API_KEY, config_file, make_config


def _in_thread(fn, *args, **kwargs) -> tuple[threading.Thread, dict]:
    out: dict = {}
    t = threading.Thread(target=lambda: out.setdefault("result", fn(*args, **kwargs)), daemon=True)
    t.start()
    return t, out


def _metric(text: str, name: str, labels: str = "") -> float | None:
    m = re.search(rf"^{re.escape(name + labels)} ([0-9.e+]+)$", text, re.M)
    return float(m.group(1)) if m else None


def test_counters_move_during_the_run_and_finally_balance(mock_api, tmp_path):
    mock_api.set_faults({"reject_every_nth": 15})
    # 300 events at 5 ms: the run takes ~1.5 s, long enough to watch it.
    cfg = make_config(mock_api, tmp_path, count=300, interval="5ms", batch_size=10)
    with MetricsServer("127.0.0.1:0") as server:
        t, out = _in_thread(run, cfg, metrics=server)
        seen = []
        mid_metrics = None
        while t.is_alive():
            s = stats(server.url)
            seen.append(s)
            if mid_metrics is None and 0 < s["stages"]["accepted"] < 300:
                mid_metrics = get(server.url + "/metrics")[1]
                assert get(server.url + "/ping")[0] == 200
            t.join(0.1)
        summary = out["result"]
        final = stats(server.url)
        text = get(server.url + "/metrics")[1]

    assert summary.ok, summary.render()
    running = [s for s in seen if s["state"] == "running"]
    reads = [s["stages"]["read"] for s in running]
    assert len(set(reads)) >= 3, f"read should move while running: {reads}"
    assert reads == sorted(reads)
    assert any(0 < s["stages"]["accepted"] < 300 for s in running)
    assert any(not s["reconciliation"]["balanced"] and s["reconciliation"]["in_flight"] > 0
               for s in running), "mid-run some events are in flight"
    assert mid_metrics is not None
    mid_accepted = _metric(mid_metrics, "flexprice_events_accepted_total")
    assert mid_accepted is not None and 0 < mid_accepted < 300

    rec = final["reconciliation"]
    assert final["state"] == "done" and rec["balanced"] and rec["in_flight"] == 0
    assert rec["read"] == 300 == rec["accepted"] + rec["dead_lettered"]
    assert rec["dead_lettered"] == summary.dead_lettered > 0
    dead = final["stages"]["dead_lettered"]
    assert dead["delivery"] == dead["written"] == summary.dead_lettered
    assert dead["mapping"] == dead["validation"] == 0
    assert final["stages"]["dead_lettered_by_status"] == {"delivery": {"400": summary.dead_lettered}}
    assert final["final"]["balanced"] and final["final"]["dead_letters"] == {
        "delivery": {"400": summary.dead_lettered}}
    assert final["distributions"]["request_latency_ms"]["count"] == summary.requests
    assert _metric(text, "flexprice_events_accepted_total") == summary.accepted
    assert _metric(text, "flexprice_dead_lettered_total",
                   '{stage="delivery",status="400"}') == summary.dead_lettered
    assert _metric(text, "flexprice_events_in_flight") == 0
    assert _metric(text, "flexprice_up") == 1


def test_ping_turns_503_when_the_key_is_revoked_mid_run(mock_api, tmp_path):
    cfg = make_config(mock_api, tmp_path, count=2000, interval="5ms", batch_size=10)
    try:
        with MetricsServer("127.0.0.1:0") as server:
            t, out = _in_thread(run, cfg, metrics=server)
            wait_for(lambda: stats(server.url)["stages"]["accepted"] > 0)
            assert get(server.url + "/ping") == (200, "pong\n")
            mock_api.set_api_key("rotated-key")  # every later request gets 401
            t.join(15)
            assert not t.is_alive()
            status, body = get(server.url + "/ping")
            s = stats(server.url)
            text = get(server.url + "/metrics")[1]
    finally:
        mock_api.set_api_key(API_KEY)
    summary = out["result"]
    assert summary.error and "401" in summary.error
    assert status == 503 and "401" in body
    assert s["state"] == "failed" and "401" in s["stopped"]
    assert _metric(text, "flexprice_up") == 0


def test_cli_serves_metrics_only_while_it_runs(mock_api, tmp_path):
    cfg = make_config(mock_api, tmp_path, count=200, interval="5ms", batch_size=10)
    path = config_file(cfg, tmp_path / "run.yaml")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    t, out = _in_thread(cli_main, ["run", "-c", str(path), "--metrics-address",
                                   f"127.0.0.1:{port}", "--progress", "off",
                                   "--summary-json", str(tmp_path / "summary.json")])
    text = wait_for(lambda: _served(base))
    assert "flexprice_records_read_total" in text
    t.join(15)
    assert out["result"] == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["balanced"] and summary["accepted"] == 200
    with pytest.raises(OSError):
        get(base + "/ping", timeout=0.5)  # stopped with the run


def _served(base: str) -> str | None:
    try:
        status, text = get(base + "/metrics", timeout=0.5)
    except OSError:
        return None
    return text if status == 200 and "flexprice_events_accepted_total" in text else None


def test_no_metrics_flag_serves_nothing(mock_api, tmp_path, monkeypatch):
    started = []
    monkeypatch.setattr(MetricsServer, "start", lambda self: started.append(self) or self)
    cfg = make_config(mock_api, tmp_path, count=10)
    path = config_file(cfg, tmp_path / "run.yaml")
    assert cli_main(["run", "-c", str(path), "--no-metrics"]) == 0
    assert started == []
    assert cli_main(["run", "-c", str(path), "--metrics-address", "127.0.0.1:0"]) == 0
    assert len(started) == 1 and started[0].host == "127.0.0.1"


def test_stage_counts_and_address_parsing():
    reg = LiveRegistry()
    reg.begin(10)
    for name, n in {"records_read": 10, "events_accepted": 6, "mapping_failed": 1,
                    "events_invalid": 1, "events_dead_lettered_delivery": 1,
                    "events_filtered": 1}.items():
        reg.inc(name, n)
    counts = stage_counts(reg.snapshot()["counters"])
    assert counts["reconciliation"]["balanced"]
    assert counts["stages"]["dead_lettered"] == {"total": 3, "mapping": 1, "validation": 1,
                                                 "delivery": 1, "written": 0}
    assert parse_address("0.0.0.0:4195") == ("0.0.0.0", 4195)
    assert parse_address(":4195") == ("0.0.0.0", 4195)
    assert parse_address("[::1]:9") == ("::1", 9)
    with pytest.raises(ValueError):
        parse_address("4195x")
    assert LIVE is not reg


def _promtool(text: str) -> subprocess.CompletedProcess:
    promtool = shutil.which("promtool")
    assert promtool, "promtool (Debian's prometheus package): scripts/prometheus.sh install"
    return subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True,
                          text=True, timeout=60)


@pytest.mark.promtool  # Debian's prometheus package: scripts/prometheus.sh install
def test_request_duration_is_a_histogram_in_seconds_and_promtool_is_clean():
    reg = LiveRegistry()
    reg.begin(10)
    seen = [0.0004, 0.001, 0.003, 0.003, 0.02, 0.2, 1.5, 12.0, 45.0]  # 0.001 is "le 0.001"
    for s in seen:
        reg.observe_histogram("request_duration_seconds", s)
    reg.observe("request_latency_ms", 3)  # a distribution: /stats only, not the scrape
    with MetricsServer("127.0.0.1:0", registry=reg) as server:
        text = get(server.url + "/metrics")[1]
        st = stats(server.url)
    proc = _promtool(text)
    assert proc.returncode == 0 and proc.stdout + proc.stderr == "", proc.stdout + proc.stderr
    assert "_ms" not in text and "# TYPE flexprice_request_duration_seconds histogram" in text
    (fam,) = [f for f in text_string_to_metric_families(text)
              if f.name == "flexprice_request_duration_seconds"]
    assert fam.type == "histogram"
    samples = {(s.name, s.labels.get("le")): s.value for s in fam.samples}
    buckets = {float(le): v for (name, le), v in samples.items() if name.endswith("_bucket")}
    assert sorted(buckets)[0] == 0.001 and sorted(buckets)[-2] == 30.0
    for le, n in buckets.items():  # cumulative: every observation at or under the bound
        assert n == sum(1 for s in seen if s <= le), (le, n)
    assert samples[("flexprice_request_duration_seconds_count", None)] == len(seen)
    assert samples[("flexprice_request_duration_seconds_sum", None)] == pytest.approx(sum(seen))
    h = st["histograms"]["request_duration_seconds"]
    assert h["count"] == len(seen) and h["buckets"][-1] == ["+Inf", len(seen)]
    assert st["distributions"]["request_latency_ms"]["count"] == 1


@pytest.mark.promtool  # Debian's prometheus package: scripts/prometheus.sh install
def test_a_run_observes_every_request_in_seconds(mock_api, tmp_path):
    from flexprice_beam.core import live

    cfg = make_config(mock_api, tmp_path, count=200, flexprice={"batching": {"count": 20}})
    with MetricsServer("127.0.0.1:0") as server:
        summary = run(cfg, metrics=server)
        text = get(server.url + "/metrics")[1]
        final = stats(server.url)
    assert summary.ok and summary.requests >= 10
    assert _promtool(text).returncode == 0
    assert _metric(text, "flexprice_request_duration_seconds_count") == summary.requests
    assert _metric(text, "flexprice_request_duration_seconds_bucket", '{le="+Inf"}') \
        == summary.requests
    # the Beam distribution in ms (Flink's and Dataflow's view) sees the same requests
    ms = final["distributions"]["request_latency_ms"]
    seconds = final["histograms"]["request_duration_seconds"]
    assert ms["count"] == seconds["count"] == summary.requests
    assert ms["sum"] <= seconds["sum"] * 1000 < ms["sum"] + summary.requests  # truncated ms
    hist = live.histogram("x_seconds", buckets=(0.5, 0.1), ms="x_ms")
    assert hist.buckets == (0.1, 0.5)
