"""Talking to Flexprice as the real server behaves (issue 15), against the stand-in's
faithful default mode: environment header and extra headers, 400 isolation against the
server's real bodies, the oversize 400, and queued-not-stored read-back."""

from __future__ import annotations

import datetime as dt
import json
import time

import orjson
import pytest
import requests
from flexprice_mock import MockFlexprice

from flexprice_beam.cli import main as cli_main
from flexprice_beam.core.config import ConfigError, FlexpriceOutput, load_config_text
from flexprice_beam.core.events import Record
from flexprice_beam.io.api import ApiClient
from flexprice_beam.io.flexprice.executor import Executor, deliver
from flexprice_beam.io.flexprice.policy import FixedLimit, Kind, RetryPolicy, Throttle
from flexprice_beam.io.flexprice.transport import HttpTransport, bulk_body
from flexprice_beam.io.readback import read_back
from flexprice_beam.launch.runner import run
from flexprice_beam.ops.check import run_check
from flexprice_beam.ops.replay import replay
from flexprice_beam.transforms.validate import Prepared
from tests.support import config_file, make_config, read_dead_letters

CONFIG_KEY = "sk_local_flexprice_test_key"  # the server's default local key (config file)
ENV = "env_local"


@pytest.fixture
def self_hosted():
    """A self-hosted server: its config-file key carries no environment."""
    with MockFlexprice(api_key="scoped-key", config_key=CONFIG_KEY, environment_id=ENV,
                       seed_defaults=True) as m:
        yield m


def _cfg(mock, tmp_path, count=300, **flexprice):
    return make_config(mock, tmp_path, count=count, flexprice={"api_key": CONFIG_KEY, **flexprice},
                       customers=["cust_001", "cust_002"], event_names=["api.request"])


# ---------------------------------------------------------------- environment and headers


def test_run_with_a_config_file_key_needs_environment_id(self_hosted, tmp_path):
    summary = run(_cfg(self_hosted, tmp_path / "a"))
    assert summary.error and "set output.flexprice.environment_id" in summary.error
    assert "Invalid or inaccessible environment" in summary.error
    assert self_hosted.events() == []

    summary = run(_cfg(self_hosted, tmp_path / "b", environment_id=ENV))
    assert summary.ok, summary.render()
    assert summary.accepted == 300 and len(self_hosted.events()) == 300


def test_a_wrong_environment_id_is_named(self_hosted, tmp_path):
    summary = run(_cfg(self_hosted, tmp_path, environment_id="env_typo"))
    assert summary.error and "environment 'env_typo' does not exist" in summary.error


def test_an_environment_scoped_key_needs_no_header(self_hosted, tmp_path):
    summary = run(_cfg(self_hosted, tmp_path, count=50, api_key="scoped-key"))
    assert summary.ok and len(self_hosted.events()) == 50


def test_check_works_with_a_config_file_key_and_environment_id(self_hosted, tmp_path, capsys):
    report = run_check(_cfg(self_hosted, tmp_path, environment_id=ENV), sample=20)
    assert not report.problems, report.render()
    assert any(f.check == "api" and f"key accepted in environment {ENV}" in f.detail
               for f in report.findings)
    # and through the CLI, from a YAML file
    path = config_file(_cfg(self_hosted, tmp_path, environment_id=ENV), tmp_path / "c.yaml",
                       api_key=CONFIG_KEY)
    assert cli_main(["check", "-c", str(path), "--sample", "20"]) == 0
    assert "no problems found" in capsys.readouterr().out


def test_check_without_environment_id_says_what_to_set(self_hosted, tmp_path):
    report = run_check(_cfg(self_hosted, tmp_path), sample=5)
    (problem,) = report.problems
    assert "403" in problem.detail and "set output.flexprice.environment_id" in problem.detail


def test_replay_sends_the_environment_header(self_hosted, tmp_path):
    self_hosted.set_faults(fail_all_status=503)
    cfg = _cfg(self_hosted, tmp_path, count=40, environment_id=ENV,
               retry={"max_attempts": 2, "initial_backoff": "5ms"})
    assert run(cfg).dead_lettered == 40
    self_hosted.set_faults()
    report = replay(cfg, stage="delivery")
    assert report.accepted == 40 and report.exit_code == 0, report.render()
    assert len(self_hosted.events()) == 40


def test_extra_headers_reach_a_gateway(tmp_path):
    with MockFlexprice(api_key="k", gateway_headers={"X-Gateway-Token": "gw #1: 'x'"}) as m:
        summary = run(make_config(m, tmp_path / "a", count=30, flexprice={"api_key": "k"}))
        assert summary.error and "401" in summary.error
        cfg = make_config(m, tmp_path / "b", count=30, flexprice={
            "api_key": "k", "headers": {"X-Gateway-Token": "gw #1: 'x'"}})
        assert run(cfg).ok and len(m.events()) == 30
        assert run_check(cfg, sample=5).findings[0].level == "ok"


def test_headers_are_validated_and_kept_secret():
    base = {"api_host": "h", "api_key": "k"}
    for bad, why in ([{"x-api-key": "a"}, "use api_key"],
                     [{"X-Environment-ID": "e"}, "use environment_id"],
                     [{"bad header": "v"}, "not a valid HTTP header name"],
                     [{"X-A": "a\nb"}, "control character"]):
        with pytest.raises(ValueError, match=why):
            FlexpriceOutput(**base, headers=bad)
    out = FlexpriceOutput(**base, headers={"X-Token": "very-secret"}, environment_id=" env_1 ")
    assert "very-secret" not in repr(out) and out.environment_id == "env_1"


# ---------------------------------------------------------------- 400 isolation, real bodies


def _item(i: int, **change) -> Prepared:
    event = {"event_name": "api.request", "external_customer_id": "cust_001",
             "event_id": f"iso-{i}", "timestamp": "2026-03-01T00:00:00.000Z",
             "properties": {"value": i}, **change}
    event = {k: v for k, v in event.items() if v is not None}
    return Prepared(Record(f"r{i}", event["timestamp"], None, {}), event, orjson.dumps(event))


def test_bisection_isolates_bad_events_from_the_real_bodies(mock_api):
    """The server's bulk 400 names no index (and for a null element, no field): bisection
    must find the bad events by halving alone, with the good ones before a bad one already
    published (partial publish); every resend is byte-identical."""
    mock_api.set_faults(reject_event_ids=["iso-33"])
    items = [_item(i) for i in range(48)]
    no_customer = _item(5, external_customer_id=None).body  # {"ExternalCustomerID": "Key: …"}
    items[5] = Prepared(items[5].record, items[5].event, no_customer)
    items[20] = Prepared(items[20].record, items[20].event, b"null")  # no details at all
    client = HttpTransport(FlexpriceOutput(api_host=mock_api.host_port, api_key="test-key",
                                             scheme="http"))
    engine = Executor(client, RetryPolicy(initial_backoff=0.01), FixedLimit(4), Throttle())
    mock_api.keep_bodies = True
    try:
        (outcome,) = deliver(engine, [items])
    finally:
        mock_api.keep_bodies = False
    # on the wire: every request (first try or a half after a 400) is the envelope around a
    # run of the very bytes prepared once; nothing re-serialised, reordered or re-stamped
    runs = {bulk_body([it.body for it in items[i:j]])
            for i in range(len(items)) for j in range(i + 1, len(items) + 1)}
    assert len(mock_api.bodies) > 10 and all(raw in runs for raw in mock_api.bodies)
    failed = {d.item.event["event_id"] for d in outcome.failed}
    assert failed == {"iso-5", "iso-20", "iso-33"}
    assert all(d.status == 400 and "Request validation failed" in d.reason
               for d in outcome.failed)
    stored = {e["event_id"] for e in mock_api.events()}
    assert stored == {f"iso-{i}" for i in range(48)} - failed
    stats = mock_api.stats()
    assert stats["duplicates"] > 0, "partial publish should have made resends repeats"
    assert stats["conflicting_duplicates"] == 0 and mock_api.distinct_conflicts() == []
    assert all(a == b for a, b in mock_api.duplicates())


# ---------------------------------------------------------------- the oversize 400


@pytest.mark.parametrize("linger, faults, read", [
    (0.5, None, True),  # the server reads on briefly: the client finishes, reads the 400
    (0.0, None, True),  # it closes at once: the write breaks (EPIPE), the 400 is read after
    (0.5, {"schedule": ["reset"]}, False),  # no answer at all: over the cap, it is that 400
])
def test_an_oversize_body_is_the_400_it_is_not_a_network_error(linger, faults, read):
    with MockFlexprice(api_key="k", oversize_linger_s=linger, faults=faults) as m:
        client = HttpTransport(FlexpriceOutput(api_host=m.host_port, api_key="k",
                                                 scheme="http", timeout="20s"))
        body = b'{"event_name":"a","external_customer_id":"c","event_id":"e","properties":' \
               b'{"blob":"' + b"x" * (40 << 20) + b'"}}'
        answer = client.post_bulk([body])
        assert answer.status == 400 and answer.kind is Kind.REJECTED, answer.describe()[:300]
        if read:  # the server's own words
            assert answer.note is None and "exceeds the maximum size" in answer.body
        else:
            assert "over Flexprice's 33554432-byte cap" in answer.describe()
        assert m.events() == []
        ok = client.post_bulk([orjson.dumps({"event_name": "a", "external_customer_id": "c",
                                             "event_id": "e2"})])
        assert ok.kind is Kind.ACCEPTED  # a fresh connection afterwards


def test_a_broken_pipe_on_a_small_body_stays_retryable(mock_api):
    mock_api.set_faults(schedule=["reset"])
    client = HttpTransport(FlexpriceOutput(api_host=mock_api.host_port, api_key="test-key",
                                             scheme="http"))
    answer = client.post_bulk([b'{"event_name":"a","external_customer_id":"c","event_id":"e"}'])
    assert answer.status is None and answer.kind is Kind.RETRY


# ---------------------------------------------------------------- queued, not stored


def _get(mock, **params):
    return requests.get(mock.url + "/v1/events", params=params,
                        headers={"x-api-key": "k"}, timeout=5).json()


def test_queued_mode_stores_later_at_a_bounded_rate_and_shows_repeats_until_merged():
    with MockFlexprice(api_key="k", queued=True, queue_delay_s=0.3, queue_rate=40) as m:
        now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")
        events = [{"event_name": "a", "external_customer_id": "c", "event_id": f"q{i}",
                   "timestamp": now} for i in range(20)]
        h = {"x-api-key": "k"}
        assert requests.post(m.url + "/v1/events/bulk", json={"events": events},
                             headers=h).status_code == 202
        assert _get(m)["events"] == [] and m.pending_count == 20  # 202 = queued
        time.sleep(0.45)  # delay passed; 40/s → only some of the 20 are stored yet
        assert 0 < len(m.events()) < 20
        time.sleep(0.6)
        assert len(m.events()) == 20 and m.pending_count == 0
        # a resend: stored again, and read-back shows both copies until the store merges
        requests.post(m.url + "/v1/events/bulk", json={"events": events[:5]}, headers=h)
        m.drain_queue()
        assert len(_get(m)["events"]) == 25 and len(m.events()) == 20
        assert m.merge() == 5 and len(_get(m)["events"]) == 20
        assert m.distinct_conflicts() == []


def test_read_back_pages_at_most_50_and_defaults_to_the_last_7_days():
    with MockFlexprice(api_key="k") as m:
        old = (dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=8)).strftime(
            "%Y-%m-%dT%H:%M:%SZ")
        new = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        events = [{"event_name": "a", "external_customer_id": "c", "event_id": f"p{i}",
                   "timestamp": new if i < 60 else old} for i in range(70)]
        requests.post(m.url + "/v1/events/bulk", json={"events": events},
                      headers={"x-api-key": "k"})
        page = _get(m, page_size=500)
        assert len(page["events"]) == 50 and page["has_more"] is True
        assert all(e["id"] != "p65" for e in _get(m, page_size=50, offset=50)["events"])
        assert len(_get(m, start_time=old, page_size=50, offset=50)["events"]) == 20


def test_run_summary_read_back_says_queued_not_missing(tmp_path, capsys):
    with MockFlexprice(api_key="test-key", queued=True, queue_delay_s=0.2,
                       queue_rate=10) as m:
        cfg = make_config(m, tmp_path, count=400)
        path = config_file(cfg, tmp_path / "q.yaml")
        code = cli_main(["run", "-c", str(path), "--no-metrics", "--progress", "off",
                         "--read-back", "1.5", "--summary-json", str(tmp_path / "s.json")])
        out = capsys.readouterr().out
        assert code == 0, out  # queued events are not a failure
        held = json.loads((tmp_path / "s.json").read_text())["held"]
        assert held["sampled"] == 4 and held["error"] is None  # one per batch of 100
        assert held["readable"] + held["queued"] == 4
        line = next(x for x in out.splitlines() if x.startswith("API holds:"))
        assert held["queued"] >= 1  # 400 events at 10/s: the later batches are still queued
        assert "still queued" in line and "missing" not in line and "lost" not in line
        m.drain_queue()
        client = ApiClient(cfg.output.flexprice)
        keys = [(e["event_id"], e["timestamp"]) for e in m.events()[:10]]
        later = read_back(client, keys, wait=2)
        assert later.readable == 10 and later.queued == 0
        assert "all 10 sampled accepted events readable" in later.render()


def test_read_back_waits_a_bounded_time_and_counts_repeats_once(tmp_path):
    with MockFlexprice(api_key="test-key", queued=True, queue_delay_s=30) as m:
        cfg = make_config(m, tmp_path, count=100)
        assert run(cfg).ok
        client = ApiClient(cfg.output.flexprice)
        keys = [(e["event_id"], e["timestamp"]) for e in _accepted(cfg, m)[:5]]
        began = time.monotonic()
        held = read_back(client, keys, wait=1.0, poll=0.2)
        assert time.monotonic() - began < 3
        assert held.queued == 5 and held.readable == 0 and "still queued" in held.render()
        assert run(cfg).ok  # the same events again: repeats
        m.drain_queue()
        held = read_back(client, keys, wait=1.0)
        assert held.readable == 5 and held.queued == 0 and held.shown_twice == 5
        assert "shown twice until the store merges" in held.render()
        m.merge()
        assert read_back(client, keys, wait=1.0).shown_twice == 0


def _accepted(cfg, mock) -> list[dict]:
    """The events a generator config sends, without asking the stand-in (still queued)."""
    from flexprice_beam.io.generate import generate_batch, start_time
    from flexprice_beam.transforms.mapping import Mapper

    gen = cfg.input.generate
    mapper = Mapper(cfg.pipeline)
    return [mapper(r) for r in generate_batch(gen, start_time(gen), 0, gen.count)]


def test_check_and_replay_against_a_queued_server(tmp_path):
    with MockFlexprice(api_key="test-key", queued=True, queue_delay_s=5, seed_defaults=True) as m:
        cfg = make_config(m, tmp_path, count=60, customers=["cust_001"],
                          event_names=["api.request"],
                          flexprice={"retry": {"max_attempts": 2, "initial_backoff": "5ms"}})
        assert not run_check(cfg, sample=10).problems  # sends nothing, reads no events
        m.set_faults(fail_all_status=503)
        assert run(cfg).dead_lettered == 60
        m.set_faults()
        report = replay(cfg, stage="delivery", read_back_wait=0.5)
        assert report.exit_code == 0 and report.accepted == 60
        assert "still queued" in report.held_text and "missing" not in report.held_text
        assert read_dead_letters(cfg) == []


def test_config_key_can_be_given_to_the_cli_stand_in():
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-m", "flexprice_mock", "--port", "0",
                             "--config-key", CONFIG_KEY, "--environment-id", ENV, "--queued"],
                            stdout=subprocess.PIPE, text=True)
    try:
        url = proc.stdout.readline().strip().rsplit(" ", 1)[-1]
        ev = {"event_name": "a", "external_customer_id": "c"}
        r = requests.post(url + "/v1/events", json=ev, headers={"x-api-key": CONFIG_KEY})
        assert r.status_code == 403 and r.json() == {
            "error": "Access denied", "message": "Invalid or inaccessible environment"}
        r = requests.post(url + "/v1/events", json=ev,
                          headers={"x-api-key": CONFIG_KEY, "X-Environment-ID": ENV})
        assert r.status_code == 202
        assert requests.get(url + "/_mock/stats").json()["events_queued"] == 1
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_yaml_config_with_environment_and_headers(monkeypatch):
    text = """
input: {generate: {count: 1}}
output:
  flexprice:
    api_host: localhost:8080
    scheme: http
    api_key: ${FLEXPRICE_API_KEY}
    environment_id: ${FLEXPRICE_ENVIRONMENT_ID}
    headers:
      X-Gateway-Token: ${GATEWAY_TOKEN}
"""
    cfg = load_config_text(text, env={"FLEXPRICE_API_KEY": CONFIG_KEY,
                                      "FLEXPRICE_ENVIRONMENT_ID": ENV,
                                      "GATEWAY_TOKEN": "t #1: x"})
    out = cfg.output.flexprice
    assert out.environment_id == ENV
    assert out.headers["X-Gateway-Token"].get_secret_value() == "t #1: x"
    unset = load_config_text(text, env={"FLEXPRICE_API_KEY": "k", "GATEWAY_TOKEN": "t"})
    assert unset.output.flexprice.environment_id is None  # an unset variable: not sent
    with pytest.raises(ConfigError, match="output.flexprice.environment_id"):
        load_config_text(text, env={"FLEXPRICE_API_KEY": "k", "GATEWAY_TOKEN": "t",
                                    "FLEXPRICE_ENVIRONMENT_ID": "env one"})


def test_default_retry_rides_out_an_outage_longer_than_ten_attempts(mock_api, tmp_path):
    """No count limit by default: a 1.5 s outage with 5–50 ms backoff takes far more than
    the old 10 attempts, and nothing is dead-lettered."""
    mock_api.set_faults(fail_all_status=503, fail_all_duration_s=1.5)
    cfg = make_config(mock_api, tmp_path, count=200, flexprice={"retry": {
        "max_attempts": None, "initial_backoff": "5ms", "max_backoff": "50ms",
        "max_elapsed": "60s"}})
    summary = run(cfg)
    assert summary.ok and summary.dead_lettered == 0 and summary.accepted == 200
    assert summary.retries > 10 * summary.batches / 2, summary.render()
    assert len(mock_api.events()) == 200


def test_the_self_hosted_example_checks_against_the_stand_in(self_hosted, tmp_path, capsys,
                                                             monkeypatch):
    monkeypatch.setenv("FLEXPRICE_API_HOST", self_hosted.host_port)
    monkeypatch.setenv("FLEXPRICE_API_KEY", CONFIG_KEY)
    monkeypatch.setenv("FLEXPRICE_ENVIRONMENT_ID", ENV)
    monkeypatch.setenv("DEAD_LETTER_PATH", str(tmp_path / "dl"))
    assert cli_main(["lint", "-c", "examples/self-hosted.yaml"]) == 0
    self_hosted.add_customer("cust_003")
    assert cli_main(["check", "-c", "examples/self-hosted.yaml", "--sample", "30"]) == 0
    out = capsys.readouterr().out
    assert f"key accepted in environment {ENV}" in out and "no problems found" in out
