"""P6: ``max_in_flight: adaptive`` against a stand-in whose capacity drops and recovers.

The stand-in (its own process) serves ``HIGH`` ingest requests at once, each for ``BASE_MS``;
as many again may queue (their latency grows), beyond that it answers 429 at once, as a
gateway in front of an overloaded API would.  Each run drains a generator backlog through
the real sink (``flexprice-beam run``, its own process) while the harness changes the
capacity: ``HIGH`` for one phase, ``LOW`` for the next, ``HIGH`` again.  Per phase: events
stored per second, 429s, and the stand-in's p50/p99 time per accepted request (queueing
included); per run: events neither stored nor dead-lettered (must be 0), dead letters, CPU.

Batches of 100 and a 50 ms base latency keep the stand-in's capacity, not the 2 shared
cores, the bottleneck: at capacity 32 that is 640 requests/s = 64k events/s at most.
"""

from __future__ import annotations

import json
import socket
import statistics
import subprocess
import time
import urllib.request
from pathlib import Path

HIGH, LOW = 32, 4
BASE_MS = 50
BATCH = 100
CONFIGS = {"fixed 16": 16, "fixed 64": 64, "adaptive": "adaptive"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _limit(port: int) -> float | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/stats", timeout=1) as r:
            return json.loads(r.read())["gauges"].get("concurrency_limit")
    except (OSError, ValueError, KeyError):
        return None


def _pct(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * q))]


def one_run(b, label: str, mif: int | str, phase_s: float, count: int, seed: int) -> dict:
    from benchmarks.run import (
        _cli,
        _stop,
        _write_yaml,
        collector_config,
        machine_busy_seconds,
        own_cpu_seconds,
    )

    b.mock.reset(BASE_MS)
    b.mock.call("/_mock/capacity", {"capacity": HIGH})
    cfg = collector_config(b.mock, b.workdir, count, seed=seed, max_in_flight=mif)
    cfg["output"]["flexprice"]["batching"] = {"count": BATCH}
    dl = Path(cfg["output"]["dead_letter"]["path"])
    name = f"adaptive-{label.replace(' ', '-')}"
    yml = _write_yaml(b, cfg, f"{name}.yaml")
    summary_path = b.workdir / f"{name}-summary.json"
    port = _free_port()
    log = open(b.workdir / f"{name}.log", "w")
    busy0, mock0, (own0, kids0) = machine_busy_seconds(), b.mock.cpu(), own_cpu_seconds()
    t_start = time.monotonic()
    proc = subprocess.Popen(_cli() + ["run", "-c", str(yml), "--summary-json", str(summary_path),
                                      "--metrics-address", f"127.0.0.1:{port}", "--progress", "off"],
                            cwd=b.workdir, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    limits: list[tuple[float, float]] = []
    marks: list[dict] = []  # phase boundaries: stand-in clock and events stored

    def mark(capacity: int | None = None) -> None:
        st = (b.mock.call("/_mock/capacity", {"capacity": capacity}) if capacity
              else b.mock.call("/_mock/capacity"))
        marks.append({"t": st["now"], "stored": b.mock.stats()["events_stored"]})

    try:
        deadline = time.monotonic() + 120
        while b.mock.stats()["events_stored"] == 0:  # the pipeline is up and delivering
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"P6 {label}: the run did not start delivering; see {log.name}")
            time.sleep(0.1)
        time.sleep(1.0)  # past start-up: the first phase measures the steady state
        mark()
        for capacity in (LOW, HIGH, None):
            end = time.monotonic() + phase_s
            while time.monotonic() < end and proc.poll() is None:
                lim = _limit(port)
                if lim is not None:
                    limits.append((time.monotonic(), lim))
                time.sleep(0.25)
            if capacity is None:
                mark()
            else:
                mark(capacity)
        running_at_end = proc.poll() is None
        proc.wait(timeout=900)
        rc = proc.returncode
    finally:
        if proc.poll() is None:
            _stop(proc)
        log.close()
    took = time.monotonic() - t_start
    busy1, mock1, (own1, kids1) = machine_busy_seconds(), b.mock.cpu(), own_cpu_seconds()
    cap_log = b.mock.call("/_mock/capacity?log=1", timeout=120)["log"]
    ids = b.mock.event_ids()
    expected = {f"gen-{seed}-{i}" for i in range(count)}
    dead_ids: set[str] = set()
    for f in (dl.glob("*.jsonl") if dl.exists() else ()):
        for line in f.read_text().splitlines():
            if line:
                letter = json.loads(line)
                dead_ids.add((letter.get("event") or {}).get("event_id") or letter.get("record_id"))
    missing = expected - ids
    st = b.mock.stats()
    phases = []
    for i, (what, cap) in enumerate((("high", HIGH), ("low", LOW), ("recovered", HIGH))):
        t0, t1 = marks[i]["t"], marks[i + 1]["t"]
        ok_lat = [lat for end, lat, s in cap_log if t0 <= end < t1 and s == 202]
        n429 = sum(1 for end, _, s in cap_log if t0 <= end < t1 and s == 429)
        # CLOCK_MONOTONIC is system-wide on Linux: the stand-in's and this process's agree
        lims = [v for t, v in limits if t0 <= t < t1]
        phases.append({"phase": what, "capacity": cap, "seconds": t1 - t0,
                       "events_per_s": (marks[i + 1]["stored"] - marks[i]["stored"]) / (t1 - t0),
                       "requests_202": len(ok_lat), "http_429": n429,
                       "p50_ms": _pct(ok_lat, 0.50) * 1000, "p99_ms": _pct(ok_lat, 0.99) * 1000,
                       "limit_mean": statistics.mean(lims) if lims else None})
    child_cpu = kids1 - kids0
    res = {"label": label, "max_in_flight": mif, "count": count, "exit_code": rc,
           "running_at_end_of_phases": running_at_end, "seconds": took, "phases": phases,
           "stored": len(ids), "dead_lettered": len(dead_ids & expected),
           "lost": len(missing - dead_ids), "http_429_total": st["requests_by_status"].get("429", 0),
           "conflicting_duplicates": st["conflicting_duplicates"],
           "child_cpu_s": child_cpu, "mock_cpu_s": mock1 - mock0,
           "foreign_cores": max(0.0, (busy1 - busy0) - child_cpu - (mock1 - mock0)
                                - (own1 - own0)) / took,
           "limit_samples": [(round(t - marks[0]["t"], 2), v) for t, v in limits]}
    print(f"    {label:<9} " + "  ".join(
        f"{p['phase']}: {p['events_per_s']:>7,.0f} ev/s {p['http_429']:>5} × 429 "
        f"p50/p99 {p['p50_ms']:.0f}/{p['p99_ms']:.0f} ms"
        + (f" limit≈{p['limit_mean']:.0f}" if p["limit_mean"] is not None else "")
        for p in phases) + f"  | lost {res['lost']}, dead-lettered {res['dead_lettered']}, "
        f"exit {rc}, {took:.0f}s, foreign {res['foreign_cores']:.2f} cores", flush=True)
    return res


def p6(b) -> dict:
    q = b.quick
    phase_s = 6 if q else 10
    # enough backlog that even the fastest setting is still sending when the last phase ends
    count = 900_000 if q else 1_800_000
    print(f"\n== P6: max_in_flight fixed vs adaptive; stand-in capacity {HIGH} → {LOW} → {HIGH} "
          f"({phase_s:g} s each), {BASE_MS} ms per request, batches of {BATCH}, {count:,} events")
    runs = {label: one_run(b, label, mif, phase_s, count, seed=60 + i)
            for i, (label, mif) in enumerate(CONFIGS.items())}
    ad, f16, f64 = runs["adaptive"], runs["fixed 16"], runs["fixed 64"]

    def rate(r: dict, i: int) -> float:
        return r["phases"][i]["events_per_s"]

    best_high = max(rate(f16, 0), rate(f64, 0))
    best_rec = max(rate(f16, 2), rate(f64, 2))
    ok_loss = all(r["lost"] == 0 and r["exit_code"] == 0 and r["running_at_end_of_phases"]
                  and r["conflicting_duplicates"] == 0 for r in runs.values())
    low_429 = {k: r["phases"][1]["http_429"] for k, r in runs.items()}
    rows = [
        {"id": "P6", "what": f"adaptive / best fixed, events/s at capacity {HIGH}",
         "value": f"{rate(ad, 0) / best_high:.2f}", "target": "≥ 0.85",
         "pass": rate(ad, 0) >= 0.85 * best_high},
        {"id": "P6", "what": f"429s at capacity {LOW}: adaptive vs fixed 16 / fixed 64",
         "value": f"{low_429['adaptive']:,} vs {low_429['fixed 16']:,} / {low_429['fixed 64']:,}",
         "target": "≤ ½ of the fewer", "pass":
         low_429["adaptive"] <= 0.5 * min(low_429["fixed 16"], low_429["fixed 64"])},
        {"id": "P6", "what": f"adaptive / best fixed, events/s after capacity is back to {HIGH}",
         "value": f"{rate(ad, 2) / best_rec:.2f}", "target": "≥ 0.85",
         "pass": rate(ad, 2) >= 0.85 * best_rec},
        {"id": "P6", "what": "events neither stored nor dead-lettered, every run",
         "value": ", ".join(f"{k}: {r['lost']}" for k, r in runs.items()), "target": "0",
         "pass": ok_loss},
    ]
    return {"phase_s": phase_s, "count": count, "high": HIGH, "low": LOW, "base_ms": BASE_MS,
            "batch": BATCH, "runs": runs, "rows": rows}


def render(res: dict) -> list[str]:
    lines = ["", f"P6: stand-in capacity {res['high']} → {res['low']} → {res['high']} "
                 f"({res['phase_s']:g} s each; {res['base_ms']} ms per request, as many queued "
                 f"as served, 429 beyond), batches of {res['batch']}, {res['count']:,} events.",
             "", "| max_in_flight | phase | events/s | 429s | p50 / p99 ms | mean limit |",
             "|---|---|---|---|---|---|"]
    for label, r in res["runs"].items():
        for p in r["phases"]:
            lim = f"{p['limit_mean']:.1f}" if p["limit_mean"] is not None else "-"
            lines.append(f"| {label} | {p['phase']} ({p['capacity']}) | {p['events_per_s']:,.0f} | "
                         f"{p['http_429']:,} | {p['p50_ms']:.0f} / {p['p99_ms']:.0f} | {lim} |")
    lines += ["", "| max_in_flight | lost | dead-lettered | 429s in all | pipeline CPU-s | "
                  "stand-in CPU-s | foreign cores |", "|---|---|---|---|---|---|---|"]
    for label, r in res["runs"].items():
        lines.append(f"| {label} | {r['lost']} | {r['dead_lettered']:,} | {r['http_429_total']:,} | "
                     f"{r['child_cpu_s']:.0f} | {r['mock_cpu_s']:.0f} | {r['foreign_cores']:.2f} |")
    return lines
