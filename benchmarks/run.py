"""flexprice-beam benchmarks, side by side in one run.

    .venv/bin/python benchmarks/run.py            # full run (~10 min on 2 cores)
    .venv/bin/python benchmarks/run.py --quick    # smoke version (< 2 min)
    .venv/bin/python benchmarks/run.py --only P0,P1
    .venv/bin/python benchmarks/run.py --only curve,profile
    .venv/bin/python benchmarks/run.py --quick --only P4d   # P4 with the default retry only
    .venv/bin/python benchmarks/run.py --start-services   # P5 too: starts Kafka + Flink

Every pipeline measurement runs ``runner.run`` on our local engine (FnApiRunner, what
``DirectRunner`` resolves to here) in a fresh child process; the Flexprice stand-in runs in a
separate process, so its CPU is not the pipeline's (it is reported from /proc/<pid>/stat).
What else ran on the machine during each measurement is reported as "foreign CPU": busy
jiffies from /proc/stat minus the measured child, the stand-in and this harness.

Sections: P0..P5 (the issue's targets), P6 (``max_in_flight: adaptive`` while the stand-in's
capacity drops and recovers; benchmarks/adaptive.py), K0/K1 (the bounded Kafka read, issue 12;
benchmarks/kafka_bounded.py, needs the broker), ``curve`` (throughput vs API latency for single /
sequential bulk / concurrent bulk, plotted) and ``profile`` (per-stage costs + profiles).
A full run writes benchmarks/results/{last-run.json,last-run.md,profile-*.txt}, the PNG plots
in docs/, and replaces the results block of docs/benchmarks.md; ``--quick`` writes everything
under benchmarks/results/quick/ and ``--only`` under benchmarks/results/partial/ instead.
Exit code: 0 when no target failed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

PY = sys.executable
API_KEY = "bench-key"
CLK_TCK = os.sysconf("SC_CLK_TCK")
SECTIONS = ("P0", "P1", "P2", "P3", "P4", "P4d", "P5", "P6", "K0", "K1", "K2", "K3", "curve",
            "profile")
LATENCIES_MS = (0, 5, 20, 100)
CURVE_MODES = {  # label: (mode, max_in_flight)
    "single (1 event/request, 1 in flight)": ("single", 1),
    "sequential bulk (500/request, 1 in flight)": ("bulk", 1),
    "concurrent bulk (500/request, 16 in flight)": ("bulk", 16),
}


# ============================================================================ machine facts

def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def machine_info() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in _read("/proc/cpuinfo").splitlines()
                if line.startswith("model name")), platform.processor() or "unknown")
    mem_kib = next((int(line.split()[1]) for line in _read("/proc/meminfo").splitlines()
                    if line.startswith("MemTotal:")), 0)
    import apache_beam

    return {"nproc": os.cpu_count(), "cpu_model": cpu, "mem_gib": round(mem_kib / 1024 ** 2, 1),
            "python": platform.python_version(), "apache_beam": apache_beam.__version__,
            "kernel": platform.release(), "loadavg_start": _read("/proc/loadavg").split()[:3]}


def machine_busy_seconds() -> float:
    """CPU-seconds the whole machine spent busy since boot (all cores)."""
    fields = [int(x) for x in _read("/proc/stat").splitlines()[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / CLK_TCK


def proc_cpu_seconds(pid: int) -> float:
    stat = _read(f"/proc/{pid}/stat")
    if not stat:
        return 0.0
    rest = stat.rsplit(")", 1)[1].split()
    return (int(rest[11]) + int(rest[12])) / CLK_TCK  # utime, stime


def own_cpu_seconds() -> tuple[float, float]:
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime, kids.ru_utime + kids.ru_stime


def tree_rss_mib(pid: int) -> float:
    """VmRSS of ``pid`` and all its descendants, MiB."""
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            stat = _read(f"/proc/{d}/stat")
            if stat:
                ppid = int(stat.rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(d))
    total_kib, todo = 0, [pid]
    while todo:
        p = todo.pop()
        for line in _read(f"/proc/{p}/status").splitlines():
            if line.startswith("VmRSS:"):
                total_kib += int(line.split()[1])
                break
        todo.extend(children.get(p, []))
    return total_kib / 1024


def loadavg() -> float:
    return float(_read("/proc/loadavg").split()[0])


# ============================================================================ the stand-in

class Mock:
    """The Flexprice stand-in in its own process, driven through its control API."""

    def __init__(self, workdir: Path):
        self.log = open(workdir / "mock.log", "w")
        self.proc = subprocess.Popen(
            [PY, "-m", "flexprice_mock", "--port", "0", "--api-key", API_KEY, "--fast"],
            stdout=subprocess.PIPE, stderr=self.log, text=True, cwd=ROOT)
        line = self.proc.stdout.readline().strip() if self.proc.stdout else ""
        if "http://" not in line:
            self.stop()
            raise RuntimeError(f"the stand-in did not start: {line!r}")
        self.url = line.rsplit(" ", 1)[-1]
        self.host_port = self.url.split("//", 1)[1]

    def call(self, path: str, body: dict | None = None, timeout: float = 60) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method="POST" if data else "GET")
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return json.loads(resp.read())

    def reset(self, latency_ms: float = 0) -> None:
        self.call("/_mock/reset", {})
        self.call("/_mock/faults", {"latency_ms": latency_ms})

    def stats(self) -> dict:
        return self.call("/_mock/stats")

    def event_ids(self) -> set[str]:
        ids: set[str] = set()
        offset, page = 0, 100_000
        while True:
            got = self.call(f"/_mock/events?offset={offset}&limit={page}", timeout=300)
            ids.update(e["event_id"] for e in got["events"])
            offset += page
            if offset >= got["count"]:
                return ids

    def cpu(self) -> float:
        return proc_cpu_seconds(self.proc.pid)

    def rss_mib(self) -> float:
        return tree_rss_mib(self.proc.pid)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


# ============================================================================ configs

def collector_config(mock: Mock, workdir: Path, count: int, *, seed: int = 42, mode: str = "bulk",
                     max_in_flight: int | None = None, retry: dict | None = None,
                     interval: str | None = None, batch_size: int | None = None) -> dict:
    """A collector config for the stand-in; unset knobs keep the product defaults."""
    flex: dict[str, Any] = {"api_host": mock.host_port, "api_key": API_KEY, "scheme": "http",
                            "mode": mode}
    if max_in_flight is not None:
        flex["max_in_flight"] = max_in_flight
    if retry is not None:
        flex["retry"] = retry
    gen: dict[str, Any] = {"count": count, "seed": seed, "start_time": "2026-01-01T00:00:00Z"}
    if interval is not None:
        gen["interval"] = interval
    if batch_size is not None:
        gen["batch_size"] = batch_size
    dl = Path(tempfile.mkdtemp(prefix="dl-", dir=workdir))
    return {"input": {"generate": gen},
            "output": {"flexprice": flex, "dead_letter": {"path": str(dl)}},
            "logger": {"level": "WARNING"}}


# ============================================================================ measuring

class Bench:
    def __init__(self, args: argparse.Namespace, workdir: Path, out_dir: Path):
        self.args = args
        self.quick = args.quick
        self.workdir = workdir
        self.out_dir = out_dir
        self.mock = Mock(workdir)
        self.runs: list[dict] = []  # every measurement, for the JSON and the load report
        self._n = 0
        self._started_services = False

    def close(self) -> None:
        self.mock.stop()
        if self._started_services:
            for cmd in (["scripts/flink.sh", "stop"], ["scripts/kafka.sh", "stop"]):
                subprocess.run(cmd, cwd=ROOT, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, check=False)

    def services(self) -> bool:
        """Whether the Kafka broker and the Flink cluster are up; with ``--start-services``
        they are started on first need (P5, K0-K3) and stopped when the run ends."""
        if _listening(19092) and _listening(_flink_rest_port()):
            return True
        if not self.args.start_services or self._started_services:
            return False
        print("\n== starting the Kafka broker and the Flink cluster", flush=True)
        self._started_services = True
        with open(self.workdir / "services.log", "w") as log:
            for cmd in (["scripts/kafka.sh", "install"], ["scripts/kafka.sh", "start"],
                        ["scripts/kafka.sh", "wait"], ["scripts/flink.sh", "install"],
                        ["scripts/flink.sh", "start"]):
                done = subprocess.run(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                      timeout=1200, check=False)
                if done.returncode != 0:
                    print(f"    {' '.join(cmd)} failed (exit {done.returncode}); see "
                          f"{self.workdir / 'services.log'}", flush=True)
                    return False
        return True

    # -- one measurement in a fresh child ---------------------------------------------------

    def measure(self, name: str, spec: dict, latency_ms: float | None = None,
                expect_stored: int | None = None, timeout: float = 1800) -> dict:
        self._n += 1
        spec = dict(spec)
        spec["result"] = str(self.workdir / f"result-{self._n}.json")
        spec_path = self.workdir / f"spec-{self._n}.json"
        spec_path.write_text(json.dumps(spec))
        if latency_ms is not None:
            self.mock.reset(latency_ms)
        log = open(self.workdir / f"child-{self._n}.log", "w")
        busy0, mock0, (own0, kids0) = machine_busy_seconds(), self.mock.cpu(), own_cpu_seconds()
        t0 = time.perf_counter()
        proc = subprocess.run([PY, "-m", "benchmarks.workers", str(spec_path)], cwd=ROOT,
                              stdout=log, stderr=subprocess.STDOUT, timeout=timeout)
        wall_total = time.perf_counter() - t0
        busy1, mock1, (own1, kids1) = machine_busy_seconds(), self.mock.cpu(), own_cpu_seconds()
        log.close()
        if proc.returncode != 0:
            tail = (self.workdir / f"child-{self._n}.log").read_text()[-3000:]
            raise RuntimeError(f"{name}: worker failed (exit {proc.returncode}):\n{tail}")
        res = json.loads(Path(spec["result"]).read_text())
        child_cpu = kids1 - kids0
        res.update(name=name, latency_ms=latency_ms, wall_total=wall_total,
                   child_cpu_total=child_cpu, mock_cpu=mock1 - mock0,
                   foreign_cpu=max(0.0, (busy1 - busy0) - child_cpu - (mock1 - mock0) - (own1 - own0)),
                   load1_end=loadavg())
        res["foreign_cores"] = res["foreign_cpu"] / wall_total if wall_total else 0.0
        if "events" in res and res.get("wall"):
            res["rate"] = res["events"] / res["wall"]
            res["per_cpu_s"] = res["events"] / res["cpu"] if res["cpu"] else 0.0
        if expect_stored is not None:
            st = self.mock.stats()
            res["stored"] = st["events_stored"]
            res["ok"] = bool(res.get("ok")) and st["events_stored"] == expect_stored \
                and st["conflicting_duplicates"] == 0
        self.runs.append(res)
        speed = (f"{res['rate']:>10,.0f} ev/s  {res['per_cpu_s']:>9,.0f} ev/CPU-s" if "rate" in res
                 else f"{'':>10}       {'':>9}         ")
        print(f"    {name:<44} {speed}  stand-in {res['mock_cpu']:5.1f} CPU-s  "
              f"foreign {res['foreign_cores']:.2f} cores" + ("" if res.get("ok") else "  [NOT OK]"),
              flush=True)
        return res

    def plain(self, count: int) -> dict:
        return self.measure("plain-Python loop", {"kind": "plain", "count": count})

    def pipe(self, name: str, count: int, latency_ms: float, sink: str = "flexprice",
             **cfg: Any) -> dict:
        config = collector_config(self.mock, self.workdir, count, **cfg)
        return self.measure(name, {"kind": "pipeline", "config": config, "sink": sink},
                            latency_ms=latency_ms,
                            expect_stored=count if sink == "flexprice" else 0)


def median_rate(runs: list[dict]) -> float:
    return statistics.median(r["rate"] for r in runs)


def median_per_cpu(runs: list[dict]) -> float:
    return statistics.median(r["per_cpu_s"] for r in runs)


# ============================================================================ P0..P3

def core(b: Bench, wanted: set[str]) -> dict:
    q = b.quick
    # The same count for every run a ratio compares: each run's fixed cost (building the
    # pipeline, starting the runner: ~0.3 s) is inside its wall time, so fewer events for
    # the sink runs would bias P0/P1/P3 against them (by ~5 % at 500k vs 1M).
    n_local = n0 = n20 = 100_000 if q else 1_000_000
    n_seed = 100 if q else 300
    repeats = b.args.repeats or (1 if q else 3)
    need = set()
    if "P0" in wanted:
        need |= {"plain", "flex@0"}
    if "P1" in wanted:
        need |= {"flex@0", "noop"}
    if "P2" in wanted:
        need |= {"flex@20", "seed@20"}
    if "P3" in wanted:
        need |= {"flex@20", "noop"}
    runs: dict[str, list[dict]] = {k: [] for k in need}
    print(f"\n== P0-P3: {n_local:,} events for the plain loop and the no-op sink, {n0:,} to the "
          f"stand-in at 0 ms and {n20:,} at 20 ms, {n_seed} seed style; {repeats} interleaved repeat(s)")
    for r in range(repeats):
        print(f"  repeat {r + 1}/{repeats}")
        if "plain" in need:
            runs["plain"].append(b.plain(n_local))
        if "noop" in need:
            runs["noop"].append(b.pipe("pipeline, no-op sink", n_local, 0, sink="noop"))
        if "flex@0" in need:
            runs["flex@0"].append(b.pipe("pipeline → stand-in @ 0 ms (default cfg)", n0, 0))
        if "flex@20" in need:
            runs["flex@20"].append(b.pipe("pipeline → stand-in @ 20 ms (default cfg)", n20, 20))
    if "P1" in wanted:  # the reference denominator: a per-element no-op pipeline
        runs["noop-per-element"] = [b.pipe("pipeline, no-op sink, 1 event per element",
                                           20_000 if q else 150_000, 0, sink="noop", batch_size=1)]
    if "seed@20" in need:
        runs["seed@20"].append(b.pipe("seed style (single, 1 in flight) @ 20 ms", n_seed, 20,
                                      mode="single", max_in_flight=1))
    rate = {k: median_rate(v) for k, v in runs.items()}
    per_cpu = {k: median_per_cpu(v) for k, v in runs.items()}
    rows = []

    def row(pid: str, what: str, num: str, den: str, target: float, unit: str = "") -> None:
        ratio = rate[num] / rate[den]
        ok = ratio >= target and all(x.get("ok") for x in runs[num] + runs[den])
        if unit == "info":
            ok = None
        # each repeat's own ratio (its runs ran one after the other): how far the host moved
        paired = len(runs[num]) == len(runs[den]) > 1
        pairs = [n["rate"] / d["rate"] for n, d in zip(runs[num], runs[den], strict=True)] \
            if paired else []
        rows.append({"id": pid, "what": what, "ratio": ratio, "target": target, "unit": unit,
                     "pass": ok, "num": num, "den": den, "repeats": pairs})

    if "P0" in wanted:
        row("P0", "pipeline → stand-in @ 0 ms / plain-Python loop", "flex@0", "plain", 0.60)
    if "P1" in wanted:
        row("P1", "pipeline → stand-in @ 0 ms / same pipeline, no-op sink", "flex@0", "noop", 0.90)
    if "P1" in wanted:
        row("P1", "(info) same / no-op pipeline with 1 event per element (the issue's reference "
            "denominator)", "flex@0", "noop-per-element", 0, "info")
    if "P2" in wanted:
        row("P2", "default cfg @ 20 ms / seed style (single, 1 in flight) @ 20 ms",
            "flex@20", "seed@20", 400, "×")
    if "P3" in wanted:
        row("P3", "default cfg @ 20 ms / no-op sink", "flex@20", "noop", 0.80)
    return {"rows": rows, "rate": rate, "per_cpu": per_cpu,
            "counts": {"plain_and_noop": n_local, "at_0ms": n0, "at_20ms": n20, "seed": n_seed,
                       "repeats": repeats},
            "runs": {k: [_slim(x) for x in v] for k, v in runs.items()}}


def _slim(r: dict) -> dict:
    return {k: v for k, v in r.items() if k != "summary"} | (
        {"summary": {k: r["summary"][k] for k in ("read", "accepted", "requests", "retries",
                                                  "dead_lettered", "ok")}}
        if "summary" in r else {})


# ============================================================================ curve

CURVE_COUNTS = {  # (mode, max_in_flight) -> {latency: events}; each point takes a few seconds
    ("single", 1): {0: 4000, 5: 1000, 20: 300, 100: 60},
    ("bulk", 1): {0: 200_000, 5: 200_000, 20: 150_000, 100: 40_000},
    ("bulk", 16): {0: 200_000, 5: 200_000, 20: 200_000, 100: 200_000},
}


def curve(b: Bench) -> dict:
    print("\n== throughput vs API latency")
    points: dict[str, dict[int, dict]] = {}
    for label, (mode, mif) in CURVE_MODES.items():
        points[label] = {}
        for lat in LATENCIES_MS:
            n = CURVE_COUNTS[(mode, mif)][lat]
            if b.quick:
                n = max(30, n // 8)
            res = b.pipe(f"{mode}, {mif} in flight @ {lat} ms", n, lat, mode=mode,
                         max_in_flight=mif)
            points[label][lat] = {"rate": res["rate"], "per_cpu_s": res["per_cpu_s"],
                                  "events": n, "ok": res["ok"], "mock_cpu": res["mock_cpu"],
                                  "foreign_cores": res["foreign_cores"]}
    return {"points": points}


# ============================================================================ P4: 429 storm

STORM_RETRY = {"max_attempts": 1000, "initial_backoff": "200ms", "max_backoff": "5s",
               "max_elapsed": "10m"}


def _write_yaml(b: Bench, cfg: dict, name: str) -> Path:
    import yaml

    path = b.workdir / name
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def _cli() -> list[str]:
    script = Path(PY).parent / "flexprice-beam"
    return [str(script)] if script.exists() else [PY, "-m", "flexprice_beam"]


class _Sampler:
    """RSS of the run's process tree and the stand-in's stored events, every 0.5 s."""

    def __init__(self, b: Bench, pid: int):
        self.b, self.pid, self.t0 = b, pid, time.monotonic()
        self.samples: list[dict] = []

    def sample(self) -> dict:
        st = self.b.mock.stats()
        rss = tree_rss_mib(self.pid)  # 0 once the process is gone
        s = {"t": round(time.monotonic() - self.t0, 2), "rss_mib": round(rss, 1) if rss else None,
             "stored": st["events_stored"],
             "http_429": st["requests_by_status"].get("429", 0),
             "http_202": st["requests_by_status"].get("202", 0)}
        self.samples.append(s)
        return s

    def sample_stored_only(self) -> None:
        """A last point once the run's process is gone (no RSS to read)."""
        st = self.b.mock.stats()
        self.samples.append({"t": round(time.monotonic() - self.t0, 2), "rss_mib": None,
                             "stored": st["events_stored"],
                             "http_429": st["requests_by_status"].get("429", 0),
                             "http_202": st["requests_by_status"].get("202", 0)})

    def run_for(self, seconds: float, proc: subprocess.Popen | None = None) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            if proc is not None and proc.poll() is not None:
                return
            self.sample()
            time.sleep(0.5)


def _stop(proc: subprocess.Popen) -> str:
    if proc.poll() is not None:
        return f"exited {proc.returncode}"
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=10)
        return "SIGTERM"
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        return "SIGKILL"


def storm(b: Bench) -> dict:
    q = b.quick
    storm_s = 10 if q else 60
    warmup_s = 3 if q else 10
    recovery_s = 6 if q else 20
    out: dict[str, Any] = {"storm_s": storm_s, "retry": STORM_RETRY}
    fault = {"fail_all_status": 429, "fail_all_duration_s": storm_s, "retry_after_s": 1}

    # -- a) unbounded generator: memory under the storm -------------------------------------
    print(f"\n== P4a: unbounded generator, 429 storm of {storm_s}s after {warmup_s}s warm-up")
    b.mock.reset(0)
    cfg = collector_config(b.mock, b.workdir, 0, seed=4, retry=STORM_RETRY)
    yml = _write_yaml(b, cfg, "storm-unbounded.yaml")
    log = open(b.workdir / "storm-unbounded.log", "w")
    proc = subprocess.Popen(_cli() + ["run", "-c", str(yml)], cwd=b.workdir, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    smp = _Sampler(b, proc.pid)
    try:
        deadline = time.monotonic() + 120
        while smp.sample()["stored"] == 0:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the unbounded run did not start delivering; see "
                                   f"{b.workdir / 'storm-unbounded.log'}")
            time.sleep(0.5)
        smp.run_for(warmup_s, proc)
        before = smp.sample()
        b.mock.call("/_mock/faults", fault)
        storm_t = before["t"]
        smp.run_for(storm_s, proc)
        at_end = smp.sample()
        smp.run_for(recovery_s, proc)
        last = smp.sample()
        alive = proc.poll() is None
    finally:
        how = _stop(proc)
        log.close()
    after = [s for s in smp.samples if s["t"] >= storm_t and s["rss_mib"] is not None]
    peak = max(s["rss_mib"] for s in after)
    # the storm alone (what the sink holds while the API refuses), apart from the recovery
    in_storm = max(s["rss_mib"] for s in after if s["t"] <= at_end["t"])
    rec = [s for s in smp.samples if s["t"] >= at_end["t"]]
    rec_rate = ((rec[-1]["stored"] - rec[0]["stored"]) / (rec[-1]["t"] - rec[0]["t"])
                if len(rec) > 1 and rec[-1]["t"] > rec[0]["t"] else 0.0)
    warm = [s for s in smp.samples if s["t"] < storm_t]
    out["unbounded"] = {
        "rss_at_storm_start_mib": before["rss_mib"], "peak_rss_mib": peak,
        "growth_mib": peak - before["rss_mib"], "rss_end_mib": last["rss_mib"],
        "growth_during_storm_mib": in_storm - before["rss_mib"],
        "peak_rss_before_storm_mib": max(s["rss_mib"] or 0 for s in warm),
        "stored_before": before["stored"],
        "stored_during_storm": at_end["stored"] - before["stored"],
        "http_429": last["http_429"], "recovery_rate": rec_rate, "alive_until_stopped": alive,
        "stopped_with": how, "storm_start_t": storm_t, "samples": smp.samples,
    }
    u = out["unbounded"]
    print(f"    RSS {u['rss_at_storm_start_mib']:.0f} MiB at storm start, peak {peak:.0f} MiB "
          f"(growth {u['growth_mib']:+.0f} MiB; during the storm itself "
          f"{u['growth_during_storm_mib']:+.1f} MiB); {u['http_429']} × 429; after the storm "
          f"{rec_rate:,.0f} ev/s; stopped with {how}")

    # -- b) bounded run through the storm: nothing lost ------------------------------------
    count = 60_000 if q else 300_000
    out["bounded"] = bo = _bounded_storm(b, count, storm_s, fault, STORM_RETRY, 5, "bounded")
    # -- c) the same with the product's default retry (bounded by time, not count) --------
    out["bounded_default_retry"] = bd = _bounded_storm(b, count, storm_s, fault, None, 6,
                                                       "bounded, default retry")
    ok_a = u["growth_mib"] <= 200 and u["alive_until_stopped"] and rec_rate > 0
    ok_b = (bo["lost"] == 0 and bo["exit_code"] == 0 and bo["dead_lettered"] == 0
            and bo["running_when_storm_began"] and bo["conflicting_duplicates"] == 0)
    out["rows"] = [
        {"id": "P4", "what": "unbounded generator under a 429 storm: peak-RSS growth",
         "value": u["growth_mib"], "target": "≤ 200 MiB", "pass": ok_a},
        {"id": "P4", "what": f"bounded {count:,} through the storm: events lost after recovery",
         "value": bo["lost"], "target": "0 lost", "pass": ok_b},
        _default_retry_row(bd),
    ]
    return out


def _default_retry_row(bd: dict) -> dict:
    ok = bd["dead_lettered"] == 0 and bd["lost"] == 0 and bd["exit_code"] == 0 \
        and bd["running_when_storm_began"] and bd["conflicting_duplicates"] == 0
    return {"id": "P4", "what": f"bounded {bd['count']:,} through the storm, default retry "
                                "(time-bounded, no max_attempts): dead-lettered / lost",
            "value": f"{bd['dead_lettered']:,} / {bd['lost']:,}", "target": "0 / 0", "pass": ok}


def storm_default(b: Bench) -> dict:
    """P4d: only P4's bounded run with the product's default retry settings."""
    storm_s = 10 if b.quick else 60
    count = 60_000 if b.quick else 300_000
    fault = {"fail_all_status": 429, "fail_all_duration_s": storm_s, "retry_after_s": 1}
    bd = _bounded_storm(b, count, storm_s, fault, None, 6, "bounded, default retry")
    return {"storm_s": storm_s, "bounded_default_retry": bd, "rows": [_default_retry_row(bd)]}


def _bounded_storm(b: Bench, count: int, storm_s: float, fault: dict, retry: dict | None,
                   seed: int, tag: str) -> dict:
    """A bounded run, still running when the storm begins; then: is every event in the stand-in?"""
    print(f"\n== P4 {tag}: {count:,} events through a {storm_s}s 429 storm"
          + ("" if retry else " (retry: product defaults)"))
    b.mock.reset(0)
    cfg = collector_config(b.mock, b.workdir, count, seed=seed, retry=retry)
    dl = Path(cfg["output"]["dead_letter"]["path"])
    name = "storm-" + tag.replace(",", "").replace(" ", "-")
    yml = _write_yaml(b, cfg, f"{name}.yaml")
    summary_path = b.workdir / f"{name}-summary.json"
    log = open(b.workdir / f"{name}.log", "w")
    t0 = time.monotonic()
    proc = subprocess.Popen(_cli() + ["run", "-c", str(yml), "--summary-json", str(summary_path)],
                            cwd=b.workdir, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    smp = _Sampler(b, proc.pid)
    try:
        deadline = time.monotonic() + 120
        while smp.sample()["stored"] < count * 0.15:
            if proc.poll() is not None or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        storm_when = smp.samples[-1]
        running_at_storm = proc.poll() is None and storm_when["stored"] < count
        b.mock.call("/_mock/faults", fault)
        end = time.monotonic() + storm_s + 900
        while proc.poll() is None and time.monotonic() < end:
            smp.sample()
            time.sleep(0.5)
        rc = proc.poll()
        how = "finished" if rc is not None else _stop(proc)
    finally:
        if proc.poll() is None:
            _stop(proc)
        log.close()
    took = time.monotonic() - t0
    smp.sample_stored_only()
    st = b.mock.stats()
    ids = b.mock.event_ids()
    expected = {f"gen-{seed}-{i}" for i in range(count)}
    dead_ids: set[str] = set()
    dead = 0
    for f in (dl.glob("*.jsonl") if dl.exists() else ()):
        for line in f.read_text().splitlines():
            if line:
                dead += 1
                letter = json.loads(line)
                dead_ids.add((letter.get("event") or {}).get("event_id") or letter.get("record_id"))
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    missing = expected - ids
    res = {
        "count": count, "exit_code": rc, "finished": how, "seconds": took,
        "running_when_storm_began": running_at_storm, "stored_when_storm_began": storm_when["stored"],
        "distinct_stored": len(ids), "lost": len(missing), "unaccounted": len(missing - dead_ids),
        "unexpected": len(ids - expected), "dead_lettered": dead,
        "conflicting_duplicates": st["conflicting_duplicates"],
        "deliveries_incl_resends": st["deliveries"], "http_429": st["requests_by_status"].get("429", 0),
        "summary": {k: summary.get(k) for k in ("read", "accepted", "dead_lettered", "retries",
                                                "requests", "balanced", "ok")},
        "peak_rss_mib": max((s["rss_mib"] for s in smp.samples if s["rss_mib"] is not None),
                            default=0.0),
        "retry": retry or "defaults", "storm_start_t": storm_when["t"], "samples": smp.samples,
    }
    print(f"    exit {rc}; stored {len(ids):,}/{count:,} distinct, not stored {len(missing):,} "
          f"(of which not dead-lettered either: {res['unaccounted']:,}), dead-lettered {dead:,}, "
          f"{res['http_429']} × 429, storm began at {storm_when['stored']:,} stored "
          f"({'running' if running_at_storm else 'NOT running'}); took {took:.0f}s")
    return res


# ============================================================================ P5

def _listening(port: int) -> bool:
    import socket

    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _flink_rest_port() -> int:
    """The REST port ``scripts/flink.sh env`` reports (FLINK_REST_PORT, default 8081)."""
    from benchmarks.kafka_stream import script_env

    rest = script_env("flink.sh").get("FLINK_REST", "127.0.0.1:8081")
    return int(rest.rsplit(":", 1)[1])


def _p5_text(res: dict) -> str:
    phases = {p["phase"]: p for p in res["phases"]}
    back = phases.get("backlog", {})
    slow = phases.get("rate 20/s", {})
    ok = res.get("committed") == res.get("produced") and not res["stand_in"].get("distinct_conflicts")
    return (f"p={res['parallelism']}: {back.get('events_per_s', 0):,} ev/s backlog, p50/p99 "
            f"{slow.get('latency_ms_p50', 0) / 1000:.2f}/{slow.get('latency_ms_p99', 0) / 1000:.2f} s "
            f"at 20 ev/s" + ("" if ok else " [offsets/conflicts NOT OK]"))


def p5(b: Bench) -> dict:
    """Kafka → Flexprice on the local Flink cluster (scripts/flink/kafka_bench.py) at
    parallelism 1 and 2 when the broker and the cluster are up (``scripts/kafka.sh start``,
    ``scripts/flink.sh start``); otherwise the last recorded results, dated."""
    live = b.services()
    how = "measuring" if live else "services not running: last recorded results"
    print(f"\n== P5: Kafka → Flexprice on Flink ({how})")
    texts, when = [], []
    env = dict(os.environ)
    for script in ("scripts/kafka.sh", "scripts/flink.sh"):  # as scripts/test.sh evals them
        out = subprocess.run([script, "env"], cwd=ROOT, capture_output=True, text=True).stdout
        env.update(line[len("export "):].split("=", 1) for line in out.splitlines()
                   if line.startswith("export ") and "=" in line)
    for par in (1, 2):
        path = b.out_dir / f"p5-parallelism-{par}.json"
        if live:
            backlog = "20000" if b.quick else "50000"
            cmd = [PY, "scripts/flink/kafka_bench.py", "--parallelism", str(par), "--backlog", backlog,
                   "--json", str(path)] + (["--rates", "20", "--seconds", "10"] if b.quick else [])
            path.unlink(missing_ok=True)  # a failed run must not show the last one's figures
            with open(b.workdir / f"p5-{par}.log", "w") as log:
                done = subprocess.run(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                      timeout=1200, check=False, env=env)
            if done.returncode != 0 or not path.exists():
                texts.append(f"p={par}: FAILED (exit {done.returncode}; "
                             f"{b.workdir / f'p5-{par}.log'})")
                print("   ", texts[-1], flush=True)
                continue
        if path.exists():
            res = json.loads(path.read_text())
            texts.append(_p5_text(res))
            when.append(time.strftime("%Y-%m-%d %H:%M", time.gmtime(path.stat().st_mtime)))
            print("   ", texts[-1])
    value = "; ".join(texts) if texts else "not measured (start scripts/kafka.sh and scripts/flink.sh)"
    note = "measured in this run" if live else f"recorded {', '.join(when)} UTC" if when else ""
    return {"rows": [{"id": "P5", "what": "Kafka → Flexprice on the local Flink cluster "
                      f"(scripts/flink/kafka_bench.py; {note})",
                      "value": value, "target": "first run sets the bar", "pass": None}]}


# ============================================================================ K2, K3

def kseries(b: Bench, wanted: set[str]) -> dict:
    """K2 (Prism) and K3 (Flink p=1, p=2): a 300,000-record backlog drained into the
    stand-in; events/s first to last event stored, events per CPU-second of every process
    of the path (benchmarks/kafka_stream.py)."""
    from benchmarks import kafka_stream as ks

    count = 50_000 if b.quick else 300_000
    rows, runs = [], {}
    print("\n== K: per-record costs of the Python read path (best of 5)")
    micro = ks.per_record_costs()
    for k, v in micro.items():
        print(f"    {k:<72} {v:8.2f} µs")
    if not _listening(19092):
        print("\n== K2/K3: the Kafka broker is not running (scripts/kafka.sh start)")
        return {"rows": [{"id": k, "what": "Kafka path", "value": "not measured (no broker)",
                          "target": "-", "pass": None} for k in sorted(wanted & {"K2", "K3"})]}
    if "K2" in wanted:
        print(f"\n== K2: Prism streaming, {count:,}-record backlog → stand-in")
        r = runs["K2"] = ks.run_prism(b.mock, count, 4, b.workdir)
        print("    " + ks.line(r), flush=True)
        rows.append({"id": "K2", "what": f"Prism streaming, {count:,}-record backlog, first to "
                     "last event stored", "value": ks.summary(r), "target": "≥ 80k events/s",
                     "pass": bool(r.get("ok")) and r.get("events_per_s", 0) >= 80_000})
    if "K3" in wanted:
        if not _listening(_flink_rest_port()):
            print("\n== K3: the Flink cluster is not running (scripts/flink.sh start)")
            rows.append({"id": "K3", "what": "Flink", "value": "not measured (no cluster)",
                         "target": "-", "pass": None})
        else:
            # A fresh first TaskManager (each Beam job leaks ~50 MB of metaspace, flink.sh),
            # then one small warm-up job over every slot of every TaskManager: the figures
            # are for JIT-warm TaskManagers.
            subprocess.run([str(ROOT / "scripts" / "flink.sh"), "restart-taskmanager"],
                           cwd=ROOT, capture_output=True, check=False)
            ks.run_flink(b.mock, 50_000, 4, ks.flink_slots(), b.workdir)
            for key, par, extra in (("K3p1", 1, []), ("K3p2", 2, []),
                                    ("K3p1-nometrics", 1, ["--disable_metrics"])):
                print(f"\n== K3: Flink parallelism {par} {' '.join(extra)}, {count:,}-record "
                      "backlog → stand-in")
                r = runs[key] = ks.run_flink(b.mock, count, 4, par, b.workdir, extra)
                print("    " + ks.line(r), flush=True)
            p1, p2 = runs["K3p1"], runs["K3p2"]
            rows.append({"id": "K3", "what": f"Flink p=1, {count:,}-record backlog",
                         "value": ks.summary(p1), "target": "≥ 50k events/s",
                         "pass": bool(p1.get("ok")) and p1.get("events_per_s", 0) >= 50_000})
            ratio = (p2.get("per_cpu_s", 0) / p1["per_cpu_s"]) if p1.get("per_cpu_s") else 0
            rows.append({"id": "K3", "what": "Flink p=2: events per CPU-s / p=1's",
                         "value": f"{ratio:.2f} ({ks.summary(p2)})", "target": "≥ 0.90",
                         "pass": bool(p2.get("ok")) and ratio >= 0.9})
            rows.append({"id": "K3", "what": "(info) Flink p=1 with `-- --disable_metrics` (no "
                         "Beam metrics in Flink)", "value": ks.summary(runs["K3p1-nometrics"]),
                         "target": "info", "pass": None})
    return {"rows": rows, "runs": runs, "per_record_us": micro}


# ============================================================================ profile

def profile(b: Bench) -> dict:
    n = 20_000 if b.quick else 100_000
    print(f"\n== profile: per-stage µs/event, then the pipeline @ 0 ms ({n:,} events) under "
          "pyinstrument and cProfile")
    st = b.measure("per-stage costs", {"kind": "stages", "count": 20_000 if b.quick else 50_000})
    for k, v in st["us_per_event"].items():
        print(f"    {k:<44} {v if isinstance(v, bool) else f'{v:6.2f} µs/event'}")
    outs = {}
    for tool in ("pyinstrument", "cprofile"):
        path = b.out_dir / f"profile-{tool}.txt"
        cfg = collector_config(b.mock, b.workdir, n)
        b.measure(f"pipeline @ 0 ms under {tool}",
                  {"kind": "pipeline", "config": cfg, "profile": tool, "profile_out": str(path)},
                  latency_ms=0, expect_stored=n)
        outs[tool] = str(path.relative_to(ROOT))
    return {"stages_us_per_event": st["us_per_event"], "files": outs}


# ============================================================================ report

def _fmt_ratio(r: dict) -> str:
    if "ratio" in r:
        if r["unit"] == "×":
            return f"{r['ratio']:.0f}×"
        each = ", ".join(f"{x:.2f}" for x in r.get("repeats") or ())
        return f"{r['ratio']:.2f}" + (f" (repeat by repeat: {each})" if each else "")
    v = r["value"]
    return f"{v:+.0f} MiB" if isinstance(v, float) else str(v)


def _fmt_target(r: dict) -> str:
    t = r["target"]
    if r.get("unit") == "info":
        return "info"
    if isinstance(t, (int, float)):
        return f"≥ {t:.0f}×" if r.get("unit") == "×" else f"≥ {t:.2f}"
    return t


def _verdict(r: dict) -> str:
    if r["pass"] is None:
        if r["id"] == "P5" or r["id"].startswith("K"):
            return "measured" if "ev/s" in str(r.get("value")) else "pending"
        return "info" if "info" in (r["target"], r.get("unit")) else "pending"
    return "PASS" if r["pass"] else "FAIL"


def render(results: dict) -> str:
    lines = []
    m = results["machine"]
    lines.append(f"Machine: {m['nproc']} cores ({m['cpu_model']}), {m['mem_gib']} GiB, Python "
                 f"{m['python']}, Beam {m['apache_beam']}; load average at start "
                 f"{' '.join(m['loadavg_start'])}, at end {' '.join(results['loadavg_end'])}")
    fr = results.get("foreign")
    if fr:
        lines.append(f"Other processes during the measurements: {fr['cpu_s']:.0f} CPU-s over "
                     f"{fr['wall_s']:.0f} s (avg {fr['avg_cores']:.2f} of {m['nproc']} cores, "
                     f"worst single measurement {fr['max_cores']:.2f} cores)")
    lines.append("")
    lines.append("| # | measurement | result | target | verdict |")
    lines.append("|---|---|---|---|---|")
    for r in results["rows"]:
        lines.append(f"| {r['id']} | {r['what']} | {_fmt_ratio(r)} | {_fmt_target(r)} | "
                     f"{_verdict(r)} |")
    c = results.get("core")
    if c:
        names = {"plain": "plain-Python loop (generate+map+validate+serialise)",
                 "noop": "pipeline, no-op sink", "flex@0": "pipeline → stand-in @ 0 ms",
                 "flex@20": "pipeline → stand-in @ 20 ms", "seed@20": "seed style @ 20 ms",
                 "noop-per-element": "pipeline, no-op sink, 1 event per element"}
        lines += ["", "| run (median of repeats) | events/s | events per CPU-s | stand-in CPU-s/run |",
                  "|---|---|---|---|"]
        for k in ("plain", "noop", "noop-per-element", "flex@0", "flex@20", "seed@20"):
            if k in c["rate"]:
                mock_cpu = statistics.median(r["mock_cpu"] for r in c["runs"][k])
                lines.append(f"| {names[k]} | {c['rate'][k]:,.0f} | {c['per_cpu'][k]:,.0f} | "
                             f"{mock_cpu:.1f} |")
    cv = results.get("curve")
    if cv:
        lines += ["", "| events/s at API latency → | " + " | ".join(f"{x} ms" for x in LATENCIES_MS)
                  + " |", "|---|" + "---|" * len(LATENCIES_MS)]
        for label, pts in cv["points"].items():
            lines.append(f"| {label} | " + " | ".join(f"{pts[x]['rate']:,.0f}" for x in LATENCIES_MS)
                         + " |")
        lines += ["", "| events per CPU-second (foreign load, cores) → | "
                  + " | ".join(f"{x} ms" for x in LATENCIES_MS) + " |",
                  "|---|" + "---|" * len(LATENCIES_MS)]
        for label, pts in cv["points"].items():
            lines.append(f"| {label} | " + " | ".join(
                f"{pts[x]['per_cpu_s']:,.0f} ({pts[x]['foreign_cores']:.1f})" for x in LATENCIES_MS)
                + " |")
    s = results.get("storm")
    if s:
        u, bo = s["unbounded"], s["bounded"]
        lines += ["", f"P4 storm: {s['storm_s']} s of HTTP 429 (Retry-After: 1), retry "
                      f"{json.dumps(s['retry'])}.",
                  f"- unbounded: RSS {u['rss_at_storm_start_mib']:.0f} MiB at storm start → peak "
                  f"{u['peak_rss_mib']:.0f} MiB ({u['growth_mib']:+.0f} MiB; during the storm "
                  f"itself {u['growth_during_storm_mib']:+.1f} MiB); "
                  f"{u['http_429']} × 429; "
                  f"{u['stored_during_storm']} events stored during the storm; "
                  f"{u['recovery_rate']:,.0f} ev/s after it; stopped with {u['stopped_with']}",
                  f"- bounded {bo['count']:,}: exit {bo['exit_code']}, {bo['distinct_stored']:,} "
                  f"distinct events stored, lost {bo['lost']}, dead-lettered {bo['dead_lettered']}, "
                  f"conflicting repeats {bo['conflicting_duplicates']}, deliveries incl. resends "
                  f"{bo['deliveries_incl_resends']:,}, {bo['http_429']} × 429, "
                  f"{bo['seconds']:.0f} s; storm began with {bo['stored_when_storm_began']:,} stored"]
        bd = s.get("bounded_default_retry")
        if bd:
            lines.append(f"- bounded {bd['count']:,} with the default retry budget: exit {bd['exit_code']}, "
                         f"{bd['distinct_stored']:,} stored, {bd['dead_lettered']:,} dead-lettered "
                         f"(replayable), {bd['unaccounted']} neither stored nor dead-lettered, "
                         f"{bd['seconds']:.0f} s")
    if results.get("adaptive"):
        from benchmarks.adaptive import render as render_p6

        lines += render_p6(results["adaptive"])
    p = results.get("profile")
    if p:
        lines += ["", "| hot-path step (plain loop, best of 5) | µs/event |", "|---|---|"]
        for k, v in p["stages_us_per_event"].items():
            lines.append(f"| {k} | {v if isinstance(v, bool) else f'{v:.2f}'} |")
    return "\n".join(lines)


def _plots(results: dict, out_dir: Path) -> list[str]:
    from benchmarks import plots

    made = []
    if results.get("curve"):
        core = results.get("core", {})
        noop = ({"rate": core["rate"]["noop"], "per_cpu_s": core["per_cpu"]["noop"]}
                if "noop" in core.get("rate", {}) else None)
        made.append(plots.curve(results["curve"]["points"], LATENCIES_MS, noop,
                                out_dir / "benchmarks-latency-curve.png"))
    if results.get("storm"):
        made.append(plots.storm(results["storm"], out_dir / "benchmarks-429-storm-rss.png"))
    return [str(Path(m).relative_to(ROOT)) for m in made]


def _update_docs(table: str) -> None:
    doc = ROOT / "docs" / "benchmarks.md"
    start, end = "<!-- results:start -->", "<!-- results:end -->"
    if not doc.exists():
        return
    text = doc.read_text()
    if start in text and end in text:
        head, rest = text.split(start, 1)
        _, tail = rest.split(end, 1)
        stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        doc.write_text(f"{head}{start}\n_Last full run: {stamp}_\n\n{table}\n{end}{tail}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smaller smoke version (< 2 min)")
    ap.add_argument("--only", default=None, help=f"comma-separated subset of {','.join(SECTIONS)}")
    ap.add_argument("--repeats", type=int, default=None, help="interleaved repeats of P0-P3 runs")
    ap.add_argument("--keep", action="store_true", help="keep the scratch directory (logs)")
    ap.add_argument("--start-services", action="store_true",
                    help="for P5, start the Kafka broker and the Flink cluster (scripts/kafka.sh, "
                         "scripts/flink.sh) if they are not running, and stop them afterwards")
    args = ap.parse_args(argv)
    # SIGTERM (kill, pkill) ends the harness through its ``finally`` blocks, which stop the
    # child run and the stand-in; by default it would leave them running.
    signal.signal(signal.SIGTERM, lambda signum, _frame: sys.exit(128 + signum))
    wanted = set(SECTIONS) if not args.only else {s.strip() for s in args.only.split(",")}
    unknown = wanted - set(SECTIONS)
    if unknown:
        ap.error(f"unknown section(s): {', '.join(sorted(unknown))}")
    full = not args.quick and not args.only
    out_dir = ROOT / "benchmarks" / "results" / ("quick" if args.quick else "" if full else "partial")
    out_dir.mkdir(parents=True, exist_ok=True)
    plot_dir = ROOT / "docs" if full else out_dir  # only a full run replaces the docs plots
    workdir = Path(tempfile.mkdtemp(prefix="flexprice-bench-"))
    started = time.monotonic()
    results: dict[str, Any] = {"machine": machine_info(), "quick": args.quick,
                               "sections": sorted(wanted), "rows": []}
    m = results["machine"]
    kind = "quick" if args.quick else "full" if full else "partial"
    print(f"flexprice-beam benchmarks ({kind}) on {m['nproc']} cores, "
          f"{m['cpu_model']}, {m['mem_gib']} GiB; load {' '.join(m['loadavg_start'])}")
    print(f"scratch: {workdir}")
    b = Bench(args, workdir, out_dir)
    try:
        if wanted & {"P0", "P1", "P2", "P3"}:
            results["core"] = core(b, wanted)
            results["rows"] += results["core"]["rows"]
        if "curve" in wanted:
            results["curve"] = curve(b)
        if "P4" in wanted:
            results["storm"] = storm(b)
            results["rows"] += results["storm"]["rows"]
        if "P4d" in wanted and "P4" not in wanted:
            results["storm_default"] = storm_default(b)
            results["rows"] += results["storm_default"]["rows"]
        if "P5" in wanted:
            results["rows"] += p5(b)["rows"]
        if "P6" in wanted:  # max_in_flight: adaptive vs fixed (benchmarks/adaptive.py)
            from benchmarks.adaptive import p6

            results["adaptive"] = p6(b)
            results["rows"] += results["adaptive"]["rows"]
        if wanted & {"K0", "K1", "K2", "K3"}:
            b.services()  # with --start-services: up for these too (no-op when already up)
        if wanted & {"K0", "K1"}:  # the bounded Kafka read (benchmarks/kafka_bounded.py)
            from benchmarks.kafka_bounded import k_series

            results["kafka_bounded"] = k_series(b, ROOT, PY, _cli(), args.quick)
            results["rows"] += [r for r in results["kafka_bounded"]["rows"] if r["id"] in wanted]
        if wanted & {"K2", "K3"}:
            results["kafka"] = kseries(b, wanted)
            results["rows"] += results["kafka"]["rows"]
        if "profile" in wanted:
            results["profile"] = profile(b)
    finally:
        b.close()
    results["loadavg_end"] = _read("/proc/loadavg").split()[:3]
    results["seconds"] = time.monotonic() - started
    if b.runs:
        wall = sum(r["wall_total"] for r in b.runs)
        cpu = sum(r["foreign_cpu"] for r in b.runs)
        results["foreign"] = {"cpu_s": cpu, "wall_s": wall, "avg_cores": cpu / wall if wall else 0,
                              "max_cores": max(r["foreign_cores"] for r in b.runs)}
    results["rows"].sort(key=lambda r: r["id"])
    results["plots"] = _plots(results, plot_dir)
    table = render(results)
    (out_dir / "last-run.json").write_text(json.dumps(results, indent=1, default=str))
    (out_dir / "last-run.md").write_text(table + "\n")
    if full:
        _update_docs(table)
    print("\n" + table)
    for p in results["plots"]:
        print(f"plot: {p}")
    print(f"\ntook {results['seconds']:.0f}s; results in {out_dir.relative_to(ROOT)}/last-run.*")
    if args.keep:
        print(f"scratch kept: {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    failed = [r for r in results["rows"] if r["pass"] is False]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
