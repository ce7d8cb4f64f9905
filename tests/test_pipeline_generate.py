"""End to end on DirectRunner: generator → map → validate → WriteToFlexprice → stand-in."""

from __future__ import annotations

import collections
import time

from flexprice_beam.cli import main as cli_main
from flexprice_beam.launch.runner import run
from tests.support import config_data, config_file, generate, make_config, read_dead_letters


def _assert_identical_repeats(mock):
    assert mock.distinct_conflicts() == [], "a repeated (event_id, timestamp) had another body"


def test_happy_path_counts_balance(mock_api, tmp_path):
    cfg = make_config(mock_api, tmp_path, count=1000)
    summary = run(cfg)
    assert summary.ok, summary.render()
    assert summary.read == summary.accepted == 1000
    events = mock_api.events()
    assert len(events) == 1000
    assert len({e["event_id"] for e in events}) == 1000
    assert read_dead_letters(cfg) == []


def test_fault_mix_every_event_arrives_and_repeats_are_identical(mock_api, tmp_path):
    mock_api.set_faults({"seed": 3, "fault_rate": 0.3, "rate_slow": 0.05, "slow_ms": 300,
                         "rate_429_no_retry_after": 0.05, "retry_after_s": 1})
    cfg = make_config(mock_api, tmp_path, count=2000)
    summary = run(cfg)
    assert summary.ok, summary.render()
    assert summary.accepted == 2000 and summary.dead_lettered == 0
    assert summary.retries > 0, "the fault mix should have forced retries"
    ids = collections.Counter(e["event_id"] for e in mock_api.events())
    assert len(ids) == 2000 and max(ids.values()) == 1
    _assert_identical_repeats(mock_api)
    stats = mock_api.stats()
    assert stats["duplicates"] > 0, "ack-lost answers should have caused (deduplicated) repeats"


def test_invalid_server_side_are_isolated_and_dead_lettered(mock_api, tmp_path):
    mock_api.set_faults({"reject_every_nth": 50})
    cfg = make_config(mock_api, tmp_path, count=2000)
    summary = run(cfg)
    assert summary.ok, summary.render()
    dead = read_dead_letters(cfg)
    assert dead, "some events should have been rejected"
    assert all(d["stage"] == "delivery" and d["status"] == 400 for d in dead)
    assert all(d["event"]["event_id"] and "HTTP 400" in d["reason"] for d in dead)
    stored = {e["event_id"] for e in mock_api.events()}
    rejected = {d["event"]["event_id"] for d in dead}
    assert not stored & rejected
    assert len(stored) + len(rejected) == 2000
    assert summary.accepted == len(stored) and summary.dead_lettered == len(rejected)
    _assert_identical_repeats(mock_api)


def test_retry_budget_spent_dead_letters_instead_of_losing(mock_api, tmp_path):
    mock_api.set_faults({"fail_all_status": 503})
    cfg = make_config(mock_api, tmp_path, count=250,
                      flexprice={"retry": {"max_attempts": 3, "initial_backoff": "5ms"}})
    summary = run(cfg)
    assert summary.ok, summary.render()
    dead = read_dead_letters(cfg)
    assert len(dead) == 250 and summary.accepted == 0
    assert all(d["status"] == 503 and "gave up after 3 attempts" in d["reason"] for d in dead)


def test_single_mode_posts_one_event_per_request(mock_api, tmp_path):
    cfg = make_config(mock_api, tmp_path, count=30, flexprice={"mode": "single"})
    summary = run(cfg)
    assert summary.ok and summary.accepted == 30 and summary.requests == 30
    assert len(mock_api.events()) == 30


def test_rerun_with_same_seed_is_deduplicated(mock_api, tmp_path):
    cfg = make_config(mock_api, tmp_path, count=300)
    assert run(cfg).ok and run(cfg).ok
    assert len(mock_api.events()) == 300
    assert mock_api.stats()["duplicates"] == 300
    _assert_identical_repeats(mock_api)


def _write_config(tmp_path, mock, key):
    """5,000 events, the product's output settings but for a 10 ms first backoff."""
    return config_file(config_data(
        mock, tmp_path, input=generate(5000, seed=None, start_time=None), fast=False,
        api_key=key, flexprice={"retry": {"initial_backoff": "10ms"}}, dead_letters="dl"),
        tmp_path / "run.yaml")


def test_401_stops_the_run_fast_without_retry_storm(mock_api, tmp_path, capsys):
    began = time.monotonic()
    code = cli_main(["run", "-c", str(_write_config(tmp_path, mock_api, "wrong-key"))])
    assert code == 1
    assert time.monotonic() - began < 15
    assert "401" in capsys.readouterr().out
    assert len(mock_api.requests_log) <= 8, "no retries after a 401"
    assert not (tmp_path / "dl").exists() or not any((tmp_path / "dl").iterdir())


def test_403_stops_the_run(mock_api, tmp_path, capsys):
    mock_api.set_faults({"fail_all_status": 403})
    code = cli_main(["run", "-c", str(_write_config(tmp_path, mock_api, "test-key"))])
    assert code == 1
    assert "403" in capsys.readouterr().out


def test_dry_run_sends_nothing(mock_api, tmp_path, capsys):
    out = tmp_path / "would-send.jsonl"
    code = cli_main(["run", "-c", str(_write_config(tmp_path, mock_api, "test-key")),
                     "--dry-run", "--dry-run-output", str(out)])
    assert code == 0
    assert len(out.read_text().splitlines()) == 5000
    assert mock_api.requests_log == []


def test_lint_names_the_field(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("input: {generate: {count: -1}}\noutput: {flexprice: {api_host: h, api_key: k,"
                   " retry: {max_attempts: 0}}}\n")
    assert cli_main(["lint", "-c", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "input.generate.count" in err and "output.flexprice.retry.max_attempts" in err
