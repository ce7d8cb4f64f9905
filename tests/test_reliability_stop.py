"""Stop paths of ``flexprice-beam run`` (docs/reliability.md, "Stopping").

* SIGTERM / SIGINT: the source stops, in-flight batches are flushed, the run exits 143 / 130
  with every event it read accounted for; a re-run with the same config re-sends the same
  bytes, so everything arrives exactly once;
* a second signal exits at once; the re-run re-sends what was in flight (deduplicated);
* SIGTERM while the API is down: retries stop after ``--shutdown-grace``, the rest is
  dead-lettered (never dropped);
* 401/403 stop the run within seconds; a full disk under the dead letters fails the run,
  naming the error.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.reliability_helpers import account, generator_ids, record
from tests.support import SEED, cli, config_data, config_file, finish, generate, wait_until

RUN = ["--progress", "off", "--no-metrics"]


def _run_args(config: Path, summary: Path, *extra: str) -> list[str]:
    return ["run", "-c", str(config), "--summary-json", str(summary), *RUN, *extra]


def _summary(path: Path) -> dict:
    return json.loads(path.read_text())


def _stored(mock) -> int:
    return len(mock.events())


def _dead(path: Path) -> list[dict]:
    return [json.loads(line) for f in sorted(path.glob("*.jsonl"))
            for line in f.read_text().splitlines() if line]


def _stop_after(mock_api, config: Path, summary: Path, stored: int, sig: signal.Signals,
                exit_code: int) -> tuple[str, dict]:
    """Run the CLI, send ``sig`` once ``stored`` events reached the stand-in, expect
    ``exit_code``; return its stderr and its summary."""
    proc = cli(_run_args(config, summary))
    wait_until(lambda: _stored(mock_api) >= stored, 60, what=f"{stored} events stored")
    proc.send_signal(sig)
    code, out, err = finish(proc, 60)
    assert code == exit_code, f"{code}\n{out}\n{err[-3000:]}"
    return err, _summary(summary)


def test_sigterm_on_unbounded_generator_flushes_and_rerun_is_exactly_once(mock_api, tmp_path):
    config = config_file(config_data(
        mock_api, tmp_path, input=generate(0, interval="0.4ms", batch_size=200),
        dead_letters="dl"), tmp_path / "c.yaml")
    err, s1 = _stop_after(mock_api, config, tmp_path / "first.json", 3000, signal.SIGTERM, 143)
    assert "Received SIGTERM" in err and "Stopped by SIGTERM" in err
    assert s1["balanced"] and s1["read"] == s1["accepted"] >= 3000, s1
    # Flushed: every event read before the stop reached the API, and none more.
    account(mock_api, generator_ids(SEED, s1["read"]), [], s1["accepted"])

    _, s2 = _stop_after(mock_api, config, tmp_path / "second.json", s1["read"] + 2000,
                        signal.SIGTERM, 143)
    assert s2["balanced"] and s2["read"] == s2["accepted"] > s1["read"]
    figures = account(mock_api, generator_ids(SEED, s2["read"]), [], s2["accepted"])
    assert figures["duplicates_deduplicated"] == s1["read"], "the re-run re-sent run 1's events"
    record("SIGTERM, unbounded generator, then re-run (SIGTERM again)", first_read=s1["read"],
           second_read=s2["read"], accepted=s1["accepted"] + s2["accepted"], **figures)


def test_sigint_on_bounded_run_then_rerun_completes_exactly_once(mock_api, tmp_path):
    count = 20_000
    mock_api.set_faults({"latency_ms": 100})  # ~2000 events/s: a run of ~10 s to interrupt
    config = config_file(config_data(
        mock_api, tmp_path, input=generate(count, batch_size=100),
        flexprice={"max_in_flight": 2}, dead_letters="dl"), tmp_path / "c.yaml")
    err, s1 = _stop_after(mock_api, config, tmp_path / "first.json", 1000, signal.SIGINT, 130)
    assert "Received SIGINT" in err and "Stopped by SIGINT" in err
    assert s1["balanced"] and s1["read"] == s1["accepted"] < count, s1
    account(mock_api, generator_ids(SEED, s1["read"]), [], s1["accepted"])

    mock_api.set_faults({})
    proc = cli(_run_args(config, tmp_path / "second.json"))
    code, out, err = finish(proc, 120)
    assert code == 0, f"{code}\n{err[-3000:]}"
    figures = account(mock_api, generator_ids(SEED, count), [])
    assert figures["stored"] == count
    assert figures["duplicates_deduplicated"] == s1["read"]
    record("SIGINT (Ctrl-C), bounded run, then re-run to the end", first_read=s1["read"],
           accepted=s1["accepted"] + _summary(tmp_path / "second.json")["accepted"], **figures)


def test_second_signal_exits_at_once_and_rerun_resends_what_was_in_flight(mock_api, tmp_path):
    count = 3000
    mock_api.set_faults({"latency_ms": 4000})  # answers take 4 s: batches sit in flight
    config = config_file(config_data(
        mock_api, tmp_path, input=generate(count, batch_size=100),
        flexprice={"timeout": "10s"}, dead_letters="dl"), tmp_path / "c.yaml")
    proc = cli(_run_args(config, tmp_path / "first.json"))
    wait_until(lambda: mock_api.stats()["connections_opened"] > 0, 60, what="a request")
    time.sleep(0.3)
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    began = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    code, out, err = finish(proc, 30)
    assert time.monotonic() - began < 2.0, "the second signal must not wait for anything"
    assert code == 143 and "again: exiting now" in err, f"{code}\n{err[-2000:]}"
    assert not (tmp_path / "first.json").exists()  # killed: no summary

    mock_api.set_faults({})
    proc = cli(_run_args(config, tmp_path / "second.json"))
    code, out, err = finish(proc, 60)
    assert code == 0, f"{code}\n{err[-3000:]}"
    figures = account(mock_api, generator_ids(SEED, count), [])
    record("second SIGTERM (immediate exit), then re-run", **figures)


def test_sigterm_while_api_down_dead_letters_after_the_grace(mock_api, tmp_path):
    count = 5000
    mock_api.set_faults({"fail_all_status": 503})
    config = config_file(config_data(
        mock_api, tmp_path, input=generate(count, batch_size=100),
        flexprice={"retry": {"max_attempts": 10_000, "initial_backoff": "50ms",
                             "max_backoff": "500ms", "max_elapsed": "10m"}},
        dead_letters="dl"), tmp_path / "c.yaml")
    summary = tmp_path / "first.json"
    proc = cli(_run_args(config, summary, "--shutdown-grace", "2"))
    wait_until(lambda: len(mock_api.requests_log) >= 8, 60, what="retries")
    began = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    code, out, err = finish(proc, 60)
    took = time.monotonic() - began
    assert code == 143, f"{code}\n{err[-3000:]}"
    assert took < 10, f"stopping took {took:.1f}s with a 2 s grace"
    s1 = _summary(summary)
    dead = _dead(tmp_path / "dl")
    assert s1["balanced"] and s1["accepted"] == 0 and s1["dead_lettered"] == s1["read"] == len(dead)
    assert all("stopping on SIGTERM" in d["reason"] and d["status"] == 503 for d in dead)
    account(mock_api, generator_ids(SEED, s1["read"]), dead)

    mock_api.set_faults({})  # the API is back: a re-run sends everything; the dead letters
    proc = cli(_run_args(config, tmp_path / "second.json"))  # now duplicate accepted events
    code, out, err = finish(proc, 60)
    assert code == 0, err[-3000:]
    figures = account(mock_api, generator_ids(SEED, count), [])
    record("SIGTERM while the API is down (grace 2 s), then re-run", first_read=s1["read"],
           dead_lettered_at_stop=len(dead), stop_seconds=round(took, 1), **figures)


@pytest.mark.parametrize("status,key", [(401, "wrong-key"), (403, "forbidden-key")])
def test_401_403_stop_the_run_fast(mock_api, tmp_path, status, key):
    config = config_file(config_data(
        mock_api, tmp_path, input=generate(50_000, batch_size=500),
        flexprice={"retry": {"initial_backoff": "10ms"}}, dead_letters="dl", api_key=key),
        tmp_path / "c.yaml")
    began = time.monotonic()
    code, out, err = finish(cli(_run_args(config, tmp_path / "s.json")), 60)
    took = time.monotonic() - began
    assert code == 1, f"{code}\n{err[-2000:]}"
    assert took < 15 and f"HTTP {status}" in out and "stopping without retries" in out
    assert len(mock_api.requests_log) <= 16, "no retry storm after 401/403"
    assert not _dead(tmp_path / "dl"), "no dead-letter flood"
    record(f"{status} stops the run", seconds=round(took, 1), requests=len(mock_api.requests_log),
           dead_lettered=0)


# ------------------------------------------------------------------ full disk


def _tmpfs(path: Path) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or not shutil.which("mount"):
        return False
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(path)],
                          capture_output=True)
    return done.returncode == 0


@pytest.mark.parametrize("how", ["tmpfs of 64 KiB", "RLIMIT_FSIZE 64 KiB"])
def test_full_disk_under_the_dead_letters_fails_the_run_naming_it(mock_api, tmp_path, how):
    target = tmp_path / "small"
    mounted = False
    preexec = None
    if how.startswith("tmpfs"):
        mounted = _tmpfs(target)
        assert mounted, "mounting a 64 KiB tmpfs needs root (CI and developers run as root here)"
        expect = "No space left on device"
    else:
        target.mkdir()
        expect = "File too large"

        def preexec():  # this process may write no regular file beyond 64 KiB
            resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))

    config = config_file(config_data(
        mock_api, tmp_path, input=generate(3000, customers=[""]),  # all invalid
        dead_letters=target / "dl"), tmp_path / "c.yaml")
    try:
        proc = cli(["run", "-c", str(config), *RUN], preexec_fn=preexec)
        code, out, err = finish(proc, 60)
        assert code == 1, f"{code}\n{out}\n{err[-2000:]}"
        assert expect in out and "cannot write dead letters to" in out, out
        # Each bundle's file is committed whole (temporary name, then rename) or not at all:
        # what is visible parses line by line, and the failed attempt left no temporary file.
        files = list((target / "dl").glob("*.jsonl"))
        lines = [line for f in files for line in f.read_bytes().split(b"\n")[:-1]]
        assert all(f.read_bytes().endswith(b"\n") for f in files), "a torn file is visible"
        assert all(json.loads(line) for line in lines)
        assert not list((target / "dl").rglob(".tmp/*")), "the failed attempt's file remains"
        record(f"full disk under the dead letters ({how})", exit_code=code,
               letters_on_disk=len(lines), committed_files=len(files), error=expect)
    finally:
        if mounted:
            with contextlib.suppress(Exception):
                subprocess.run(["umount", str(target)], check=False, capture_output=True)
