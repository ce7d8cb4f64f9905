"""replay-dead-letters against the stand-in: fault → dead letters → fix → replay → empty."""

from __future__ import annotations

import collections
import json

from flexprice_beam.cli import main as cli_main
from flexprice_beam.io.dead_letter import encode_dead_letter, lock_file
from flexprice_beam.launch.runner import run
from tests.support import config_file, dead_letter_files, make_config, read_dead_letters


def _ingest_requests(mock) -> int:
    return sum(1 for r in mock.requests_log if r.path.startswith("/v1/events"))


def test_replay_delivers_once_and_empties_the_dead_letters(mock_api, tmp_path, capsys):
    mock_api.set_faults({"reject_every_nth": 20})
    cfg = make_config(mock_api, tmp_path, count=600)
    summary = run(cfg)
    assert summary.ok and summary.dead_lettered > 0
    dead_ids = {d["event"]["event_id"] for d in read_dead_letters(cfg)}
    original = {d["event"]["event_id"]: d["event"] for d in read_dead_letters(cfg)}
    assert len(mock_api.events()) == 600 - len(dead_ids)

    mock_api.set_faults()  # the cause is fixed
    path = config_file(cfg, tmp_path / "run.yaml")
    assert cli_main(["replay-dead-letters", "-c", str(path), "--stage", "delivery"]) == 0
    out = capsys.readouterr().out
    assert f"accepted:       {len(dead_ids)}" in out

    events = mock_api.events()
    ids = collections.Counter(e["event_id"] for e in events)
    assert len(ids) == 600 and max(ids.values()) == 1, "every event arrived exactly once"
    for e in events:  # original ids AND timestamps (Flexprice dedups on both)
        if e["event_id"] in original:
            assert e["timestamp"] == original[e["event_id"]]["timestamp"]
    assert mock_api.distinct_conflicts() == []
    assert dead_letter_files(cfg) == [], "the dead-letter set is empty"

    before = _ingest_requests(mock_api)
    assert cli_main(["replay-dead-letters", "-c", str(path), "--path",
                     cfg.output.dead_letter.path]) == 0
    assert _ingest_requests(mock_api) == before, "a second replay is a no-op"
    assert "replayed:       0" in capsys.readouterr().out


def test_failed_again_are_kept_with_the_new_reason(mock_api, tmp_path):
    mock_api.set_faults({"reject_every_nth": 25})
    cfg = make_config(mock_api, tmp_path, count=300)
    assert run(cfg).ok
    first = {d["event"]["event_id"]: d for d in read_dead_letters(cfg)}
    # the cause is not fixed: the same events are rejected again
    path = config_file(cfg, tmp_path / "run.yaml")
    assert cli_main(["replay-dead-letters", "-c", str(path)]) == 3
    again = {d["event"]["event_id"]: d for d in read_dead_letters(cfg)}
    assert again.keys() == first.keys()
    for eid, d in again.items():
        assert d["replays"] == 1 and d["first_time"] == first[eid]["time"]
        assert d["status"] == 400 and "HTTP 400" in d["reason"]
        assert d["time"] >= first[eid]["time"]
        assert d["event"] == first[eid]["event"]


def _letter(stage, event, status=None, reason="r", time="2026-01-01T00:00:00.000Z"):
    return {"stage": stage, "status": status, "reason": reason, "field": None, "event": event,
            "record": {"raw": 1}, "origin": {"generator_index": 0}, "record_id": "rec-1",
            "time": time}


def _event(i, **over):
    return {"event_name": "api.request", "external_customer_id": "cust_001",
            "event_id": f"replay-{i}", "timestamp": "2026-01-01T00:00:00.000Z",
            "properties": {"value": i}, **over}


def test_stage_since_and_unreplayable_letters(mock_api, tmp_path, capsys):
    cfg = make_config(mock_api, tmp_path, count=1)
    folder = tmp_path / "dead-letter"
    folder.mkdir()
    mapping = _letter("mapping", None, reason="not JSON")
    still_bad = _letter("validation", _event(1, timestamp="yesterday"))
    now_valid = _letter("validation", _event(2))  # e.g. validated by an older release
    delivery_old = _letter("delivery", _event(3), status=503)
    delivery_new = _letter("delivery", _event(4), status=503, time="2026-06-01T00:00:00.000Z")
    f = folder / "dead-letters-test.jsonl"
    lines = [encode_dead_letter(x) for x in (mapping, still_bad, now_valid, delivery_old,
                                             delivery_new)]
    f.write_bytes(b"".join(lines) + b'{"torn line')
    path = config_file(cfg, tmp_path / "run.yaml")

    assert cli_main(["replay-dead-letters", "-c", str(path), "--stage", "delivery",
                     "--since", "2026-03-01T00:00:00Z"]) == 0
    assert {e["event_id"] for e in mock_api.events()} == {"replay-4"}

    assert cli_main(["replay-dead-letters", "-c", str(path)]) == 3  # still_bad fails again
    assert {e["event_id"] for e in mock_api.events()} == {"replay-2", "replay-3", "replay-4"}
    left = f.read_bytes().splitlines()
    assert left[0] == lines[0].rstrip(b"\n"), "the mapping letter stays byte for byte"
    assert left[-1] == b'{"torn line', "an unreadable line is kept, not dropped"
    bad = json.loads(left[1])
    assert bad["stage"] == "validation" and bad["field"] == "timestamp" and bad["replays"] == 1
    assert len(left) == 3
    out = capsys.readouterr().out
    assert "failed again:   1" in out


def test_a_file_a_pipeline_still_writes_is_skipped(mock_api, tmp_path):
    cfg = make_config(mock_api, tmp_path, count=1)
    folder = tmp_path / "dead-letter"
    folder.mkdir()
    f = folder / "dead-letters-busy.jsonl"
    f.write_bytes(encode_dead_letter(_letter("delivery", _event(9), status=503)))
    path = config_file(cfg, tmp_path / "run.yaml")
    with open(f, "ab") as held:
        assert lock_file(held)
        assert cli_main(["replay-dead-letters", "-c", str(path)]) == 0
    assert mock_api.events() == [] and f.exists()
    assert cli_main(["replay-dead-letters", "-c", str(path)]) == 0
    assert [e["event_id"] for e in mock_api.events()] == ["replay-9"] and not f.exists()


def test_replay_stops_on_401_and_changes_nothing(mock_api, tmp_path):
    cfg = make_config(mock_api, tmp_path, count=1)
    folder = tmp_path / "dead-letter"
    folder.mkdir()
    f = folder / "dead-letters-x.jsonl"
    data = b"".join(encode_dead_letter(_letter("delivery", _event(i), status=503))
                    for i in range(5))
    f.write_bytes(data)
    path = config_file(cfg, tmp_path / "run.yaml", api_key="wrong-key")
    assert cli_main(["replay-dead-letters", "-c", str(path)]) == 1
    assert f.read_bytes() == data
