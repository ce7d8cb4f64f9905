"""Helpers for the reliability tests (tests/test_reliability_*.py, docs/reliability.md).

* ``FULL``: ``FULL_RELIABILITY=1`` selects the long variants (2-minute outage, more events);
* ``record(name, **figures)``: each scenario's figures, appended as one JSON line to the file
  named by ``RELIABILITY_RESULTS`` (docs/reliability.md is written from them);
* ``account(...)``: the "nothing lost, nothing billed twice" check every scenario ends with;
* ``rss_mb``: a process's resident memory (the CLI runs through tests/support.py's ``cli``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

FULL = os.environ.get("FULL_RELIABILITY") == "1"


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


def rss_mb(pid: int) -> float:
    """Resident memory of ``pid`` in MiB (0 once it has gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0
