"""Helpers for the reliability tests (tests/test_reliability_*.py, docs/reliability.md).

* ``FULL``: ``FULL_RELIABILITY=1`` selects the long variants (2-minute outage, more events);
* ``record(name, **figures)``: each scenario's figures, appended as one JSON line to the file
  named by ``RELIABILITY_RESULTS`` (docs/reliability.md is written from them);
* ``account(...)``: the "nothing lost, nothing billed twice" check every scenario ends with;
* ``cli(...)``: ``flexprice-beam`` as a subprocess, ``rss_mb``: its resident memory.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from tests.conftest import API_KEY

FULL = os.environ.get("FULL_RELIABILITY") == "1"
ROOT = Path(__file__).resolve().parent.parent


def record(name: str, **figures) -> None:
    path = os.environ.get("RELIABILITY_RESULTS")
    line = json.dumps({"scenario": name, "full": FULL, **figures}, default=str)
    print(line)
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(line + "\n")


def generator_ids(seed: int, count: int) -> set[str]:
    return {f"gen-{seed}-{i}" for i in range(count)}


def dead_letter_ids(dead: list[dict]) -> list[str]:
    return [(d.get("event") or {}).get("event_id") or d.get("record_id") for d in dead]


def account(mock, expected: set[str], dead: list[dict], accepted: int | None = None) -> dict:
    """Every expected event was stored by the stand-in or dead-lettered (not lost), each
    stored once with one body (deduplicated repeats were byte-identical)."""
    stored = [e["event_id"] for e in mock.events()]
    dead_ids = dead_letter_ids(dead)
    assert len(stored) == len(set(stored)), "the stand-in holds an event twice"
    assert len(dead_ids) == len(set(dead_ids)), "an event was dead-lettered twice"
    lost = expected - set(stored) - set(dead_ids)
    extra = (set(stored) | set(dead_ids)) - expected
    assert not lost, f"{len(lost)} events lost, e.g. {sorted(lost)[:5]}"
    assert not extra, f"unexpected events {sorted(extra)[:5]}"
    conflicts = mock.distinct_conflicts()
    assert conflicts == [], f"{len(conflicts)} repeats with another body"
    if accepted is not None:
        assert accepted <= len(stored), "counted accepted but not stored"
    stats = mock.stats()
    return {"events": len(expected), "stored": len(stored), "dead_lettered": len(dead_ids),
            "lost": len(lost), "duplicates_deduplicated": stats.get("duplicates", 0),
            "distinct_conflicts": len(conflicts),
            "faults_injected": stats.get("faults_injected", {}),
            "requests": stats.get("requests_total", 0)}


def write_config(path: Path, mock_host_port: str, *, generate: dict, flexprice: dict | None = None,
                 dead_letter: Path, api_key: str = API_KEY, extra: dict | None = None) -> Path:
    out = {"api_host": mock_host_port, "api_key": api_key, "scheme": "http",
           "batching": {"count": 100, "period": "200ms"}, "max_in_flight": 4, "timeout": "2s",
           "retry": {"max_attempts": 12, "initial_backoff": "10ms", "max_backoff": "200ms",
                     "max_elapsed": "60s"}}
    for key, value in (flexprice or {}).items():
        out[key] = {**out[key], **value} if isinstance(value, dict) and key in out else value
    data = {"input": {"generate": {"seed": 7, "start_time": "2026-01-01T00:00:00Z", **generate}},
            "output": {"flexprice": out, "dead_letter": {"path": str(dead_letter)}},
            **(extra or {})}
    path.write_text(yaml.safe_dump(data))
    return path


def cli(args: list[str], env: dict | None = None, **kw) -> subprocess.Popen:
    """``flexprice-beam …`` in its own process group, output to pipes."""
    return subprocess.Popen([sys.executable, "-m", "flexprice_beam", *args], cwd=ROOT,
                            env={**os.environ, **(env or {})}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True, **kw)


def finish(proc: subprocess.Popen, timeout: float = 120) -> tuple[int, str, str]:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise AssertionError(
            f"timed out after {timeout}s\nstdout:\n{out}\nstderr:\n{err[-4000:]}") from None
    return proc.returncode, out, err


def rss_mb(pid: int) -> float:
    """Resident memory of ``pid`` in MiB (0 once it has gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def wait_until(predicate, timeout: float = 30.0, every: float = 0.05, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"{what} not met within {timeout}s")
