"""The seed's log lines, --log-level/--log-format, progress output and the dry run."""

from __future__ import annotations

import io
import json

from flexprice_beam.cli import main as cli_main
from flexprice_beam.core.live import LiveRegistry
from flexprice_beam.core.logs import Sampler
from flexprice_beam.launch.progress import Progress, choose_mode, render_bar, render_line
from tests.support import config_file, make_config


def _json_lines(text: str) -> list[dict]:
    out = []
    for line in text.splitlines():
        if line.startswith("{"):
            out.append(json.loads(line))
    return out


def test_debug_json_logs_every_event_like_the_seed(mock_api, tmp_path, capsys):
    cfg = make_config(mock_api, tmp_path, count=20)
    path = config_file(cfg, tmp_path / "run.yaml")
    code = cli_main(["run", "-c", str(path), "--log-level", "DEBUG", "--log-format", "json",
                     "--no-metrics"])
    assert code == 0
    logs = _json_lines(capsys.readouterr().err)
    msgs = [r["msg"] for r in logs]
    assert any(m.startswith("Flexprice output connected and ready") for m in msgs)
    assert any(m.startswith("Input type generate is now active") for m in msgs)
    sending = [r for r in logs if r["msg"].startswith("📤 Sending event: ")]
    accepted = [r for r in logs if r["msg"].startswith("✅ Event accepted successfully, ID: ")]
    assert len(sending) == len(accepted) == 20
    assert {r["level"] for r in sending + accepted} == {"DEBUG"}
    ids = {r["msg"].rsplit(" ", 1)[1] for r in accepted}
    assert ids == {e["event_id"] for e in mock_api.events()}
    assert all(" for customer: cust_" in r["msg"] for r in sending)


def test_info_samples_event_lines_and_failures_carry_status(mock_api, tmp_path, capsys,
                                                           monkeypatch):
    from flexprice_beam.io.flexprice import executor

    monkeypatch.setattr(executor, "_SENDING", Sampler(first=5, every=1000))  # a fresh count
    mock_api.set_faults({"reject_every_nth": 40})
    cfg = make_config(mock_api, tmp_path, count=400)
    path = config_file(cfg, tmp_path / "run.yaml")
    assert cli_main(["run", "-c", str(path), "--no-metrics"]) == 0
    err = capsys.readouterr().err
    lines = err.splitlines()
    sending = [line for line in lines if "📤 Sending event" in line]
    assert len(sending) == 5, "INFO shows a sample (the first 5), not every event"
    assert all(line.startswith("INFO[") for line in sending)
    failures = [line for line in lines if "Failed to send event" in line]
    assert failures and all(line.startswith("WARNING[") and "HTTP 400" in line
                            for line in failures)


def test_retry_exhaustion_is_logged_as_error(mock_api, tmp_path, capsys):
    mock_api.set_faults({"fail_all_status": 503})
    cfg = make_config(mock_api, tmp_path, count=5,
                      flexprice={"retry": {"max_attempts": 2, "initial_backoff": "5ms"}})
    path = config_file(cfg, tmp_path / "run.yaml")
    assert cli_main(["run", "-c", str(path), "--no-metrics", "--log-level", "WARNING"]) == 0
    err = capsys.readouterr().err
    assert "ERROR[" in err and "gave up after 2 attempts: HTTP 503" in err
    assert "📤" not in err, "WARNING level hides the per-event lines"


def test_sampler_first_then_every_nth():
    s = Sampler(first=3, every=10)
    picked, offset = [], 0
    for n in (2, 2, 7, 15, 30):
        picked += [offset + i for i in s.picks(n)]
        offset += n
    assert picked == [0, 1, 2, 10, 20, 30, 40, 50]


def test_progress_rendering_and_modes():
    n = {"read": 50, "done": 40, "accepted": 35, "dead": 5, "filtered": 0, "dry_run": 0,
         "in_flight": 10, "retries": 2, "total": 100}
    bar = render_bar(n, 123.0, width=120)
    assert bar.startswith("[") and " 40.0% 40/100 · 35 accepted · 5 dead-lettered" in bar
    line = render_line(n, 12.5)
    assert line == ("status: 12.5 events/s · read 50 · accepted 35 · retried 2 · "
                    "dead-lettered 5 · in flight 10")
    tty, pipe = io.StringIO(), io.StringIO()
    tty.isatty = lambda: True  # type: ignore[method-assign]
    assert choose_mode("auto", 100, tty) == "bar"
    assert choose_mode("auto", 100, pipe) == "off"
    assert choose_mode("auto", None, pipe) == "lines"
    assert choose_mode("lines", 100, pipe) == "lines"


def test_progress_bar_draws_from_the_live_registry():
    reg = LiveRegistry()
    reg.begin(total=10)
    out = io.StringIO()
    bar = Progress("bar", total=10, registry=reg, stream=out).start()
    reg.inc("records_read", 10)
    reg.inc("events_accepted", 10)
    bar.stop()
    last = out.getvalue().rstrip("\n").split("\r")[-1]
    assert "100.0% 10/10 · 10 accepted" in last and out.getvalue().endswith("\n")


def test_unbounded_style_run_prints_status_lines(mock_api, tmp_path, capsys):
    cfg = make_config(mock_api, tmp_path, count=120, interval="5ms", batch_size=10)
    path = config_file(cfg, tmp_path / "run.yaml")
    assert cli_main(["run", "-c", str(path), "--no-metrics", "--progress", "lines",
                     "--status-interval", "0.2"]) == 0
    status = [line for line in capsys.readouterr().err.splitlines() if "status: " in line]
    assert len(status) >= 2
    assert all("events/s · read " in s and "in flight" in s for s in status)


def test_dry_run_prints_dead_letters_and_sends_nothing(mock_api, tmp_path, capsys):
    # Every other customer is "": those events fail validation.
    cfg = make_config(mock_api, tmp_path, count=200, customers=["cust_001", ""])
    path = config_file(cfg, tmp_path / "run.yaml")
    would, dead = tmp_path / "would-send.jsonl", tmp_path / "dry-dead.jsonl"
    code = cli_main(["run", "-c", str(path), "--dry-run", "--dry-run-output", str(would),
                     "--dry-run-dead-letters", str(dead), "--no-metrics"])
    assert code == 0
    sent = [json.loads(x) for x in would.read_text().splitlines()]
    letters = [json.loads(x) for x in dead.read_text().splitlines()]
    assert sent and letters and len(sent) + len(letters) == 200
    assert all(e["external_customer_id"] == "cust_001" for e in sent)
    assert all(d["stage"] == "validation" and d["field"] == "external_customer_id"
               for d in letters)
    assert mock_api.requests_log == [], "a dry run sends nothing"
    assert not (tmp_path / "dead-letter").exists(), "the real dead letters are left alone"
    out = capsys.readouterr().out
    assert f"dry run: {len(sent)} would be sent" in out and "validation" in out
    assert "reconciled:     yes" in out


def test_dry_run_dead_letters_default_to_stderr(mock_api, tmp_path, capsys):
    cfg = make_config(mock_api, tmp_path, count=10, customers=[""])
    path = config_file(cfg, tmp_path / "run.yaml")
    assert cli_main(["run", "-c", str(path), "--dry-run", "--dry-run-output",
                     str(tmp_path / "w.jsonl"), "--no-metrics"]) == 0
    letters = _json_lines(capsys.readouterr().err)
    assert len([d for d in letters if d.get("stage") == "validation"]) == 10
    assert mock_api.requests_log == []
