"""K2 / K3: the Kafka path on the streaming runners (Prism, Flink), from a backlog.

A topic gets ``count`` records like ``send-events`` makes (produced before the clock starts);
the collector then drains it into the stand-in (``--fast``, its own process).  The rate is
``count / (last event stored - first event stored)``, polled from the stand-in every 0.1 s.
CPU is that of ALL processes the path uses, summed from /proc over the same window: the
collector's process tree (Python, Prism, the Java expansion JVM) or the Flink cluster's
(JobManager, TaskManager, job server, expansion service, worker pool and its SDK workers),
plus the stand-in.  Load from other processes on the machine is reported beside each figure.

    .venv/bin/python -m benchmarks.kafka_stream prism [--count 300000] [--partitions 4]
    .venv/bin/python -m benchmarks.kafka_stream flink --parallelism 2
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import typing
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.run import (  # noqa: E402
    API_KEY,
    PY,
    Mock,
    _cli,
    _read,
    machine_busy_seconds,
    proc_cpu_seconds,
)

BOOTSTRAP = os.environ.get("KAFKA_BOOTSTRAP_PLAINTEXT", "127.0.0.1:19092")


def script_env(*scripts: str) -> dict[str, str]:
    """``os.environ`` plus what ``scripts/<x>.sh env`` exports (ports, addresses)."""
    env = dict(os.environ)
    for script in scripts:
        out = subprocess.run([str(ROOT / "scripts" / script), "env"], cwd=ROOT,
                             capture_output=True, text=True, env=env).stdout
        env.update(line[len("export "):].split("=", 1) for line in out.splitlines()
                   if line.startswith("export ") and "=" in line)
    return env


# ---------------------------------------------------------------------------- processes

def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            stat = _read(f"/proc/{d}/stat")
            if stat:
                kids.setdefault(int(stat.rsplit(")", 1)[1].split()[1]), []).append(int(d))
    return kids


def tree(pids: list[int]) -> list[int]:
    kids, out, todo = _children(), [], list(pids)
    while todo:
        p = todo.pop()
        if p not in out:
            out.append(p)
            todo.extend(kids.get(p, []))
    return out


class CpuMeter:
    """CPU-seconds of a set of process trees; a pid that exits keeps its last reading."""

    def __init__(self, roots: list[int]):
        self.roots = roots
        self.seen: dict[int, float] = {}
        self.base: dict[int, float] = {}
        self.names: dict[int, str] = {}
        self.sample()
        self.base = dict(self.seen)

    def sample(self) -> float:
        for p in tree(self.roots):
            cpu = proc_cpu_seconds(p)
            if cpu:
                self.seen[p] = max(cpu, self.seen.get(p, 0.0))
                if p not in self.names:
                    self.names[p] = label(_read(f"/proc/{p}/cmdline"))
        return sum(v - self.base.get(p, 0.0) for p, v in self.seen.items())

    def by_process(self, since: dict[int, float] | None = None) -> dict[str, float]:
        """CPU-seconds per kind of process (since a ``snapshot``)."""
        since = since if since is not None else self.base
        out: dict[str, float] = {}
        for p, v in self.seen.items():
            name = self.names.get(p, "?")
            out[name] = round(out.get(name, 0.0) + v - since.get(p, self.base.get(p, 0.0)), 2)
        return out

    def snapshot(self) -> dict[int, float]:
        return dict(self.seen)


def label(cmdline: str) -> str:
    """A short name for a process of the Kafka path, from its command line."""
    cmd = cmdline.replace("\0", " ")
    for marker, name in (("TaskManagerRunner", "taskmanager"),
                         ("StandaloneSessionClusterEntrypoint", "jobmanager"),
                         ("FlinkJobServerDriver", "jobserver"),
                         ("expansion", "expansion-service (java)"),
                         ("worker_pool_main", "worker-pool"),
                         ("sdk_worker_main", "sdk-worker (python)"),
                         ("sdk_worker", "sdk-worker boot"), ("prism", "prism"),
                         ("flexprice-beam", "collector (python)"),
                         ("flexprice_beam", "collector (python)")):
        if marker in cmd:
            return name
    return cmd.split(" ", 1)[0].rsplit("/", 1)[-1] or "?"


def flink_pids(env: dict[str, str]) -> list[int]:
    run_dir = Path(env.get("FLINK_CACHE_DIR", ROOT / ".cache" / "flink")) / "run"
    pids = []
    for f in run_dir.glob("*.pid"):
        try:
            pids.append(int(f.read_text().strip()))
        except ValueError:
            pass
    return pids


def flink_slots() -> int:
    """Slots of the local cluster (every TaskManager), from its REST API."""
    from flexprice_beam.launch import flink

    rest = flink.FlinkRest(script_env("flink.sh").get("FLINK_REST", flink.DEFAULT_REST))
    try:
        return max(1, int(rest.call("/overview")["slots-total"]))
    except (OSError, ValueError, KeyError):
        return 1


def leftovers(pids) -> list[str]:
    """Those of ``pids`` (every process the run's tree had) still alive, not zombies."""
    out = []
    for p in pids:
        state = _read(f"/proc/{p}/stat").rsplit(")", 1)[-1].split()[:1]
        if state and state != ["Z"]:
            out.append(f"{p}: {_read(f'/proc/{p}/cmdline').replace(chr(0), ' ')[:120]}")
    return out


# ---------------------------------------------------------------------------- Kafka

def event_value(rng: random.Random, customers: list[str]) -> bytes:
    import orjson

    return orjson.dumps({"event_name": "api_call", "external_customer_id": rng.choice(customers),
                         "properties": {"value": rng.randint(1, 100), "endpoint": "/api/users"},
                         "source": "send-events"})


def make_backlog(count: int, partitions: int) -> str:
    """A new topic holding ``count`` records like ``send-events`` makes."""
    from kafka import KafkaProducer
    from kafka.admin import KafkaAdminClient, NewTopic

    topic = f"kbench-{uuid.uuid4().hex[:8]}"
    admin = KafkaAdminClient(bootstrap_servers=BOOTSTRAP)
    try:
        admin.create_topics([NewTopic(topic, partitions, 1)])
    finally:
        admin.close()
    rng = random.Random(7)
    customers = [f"cust-{i:05d}" for i in range(200)]
    producer = KafkaProducer(bootstrap_servers=BOOTSTRAP, acks=1, linger_ms=20,
                             batch_size=256 * 1024, compression_type=None)
    try:
        for i in range(count):
            producer.send(topic, value=event_value(rng, customers), key=str(i).encode(),
                          partition=i % partitions)
        producer.flush(120)
    finally:
        producer.close()
    return topic


def collector_config(mock: Mock, topic: str, dl: Path, extra: dict | None = None) -> dict:
    kafka: dict[str, Any] = {"addresses": [BOOTSTRAP], "topics": [topic],
                             "consumer_group": topic, **(extra or {})}
    key_file = dl.parent / "flexprice-key.txt"  # a reference: remote runners refuse literals
    key_file.parent.mkdir(parents=True, exist_ok=True)
    key_file.write_text(API_KEY)
    return {"input": {"kafka": kafka},
            "output": {"flexprice": {"api_host": mock.host_port, "api_key_file": str(key_file),
                                     "scheme": "http"},
                       "dead_letter": {"path": str(dl)}},
            "logger": {"level": "WARNING"}}


# ---------------------------------------------------------------------------- the drain

def watch(mock: Mock, count: int, meter: CpuMeter, timeout: float,
          alive=lambda: True, on_first=None) -> dict:
    """Poll the stand-in until ``count`` events are stored; first/last store times + CPU."""
    busy0 = machine_busy_seconds()
    t0 = time.monotonic()
    first = last = None
    cpu_first = cpu_last = 0.0
    busy_first = busy_last = busy0
    stored = 0
    while time.monotonic() - t0 < timeout:
        stored = mock.stats()["events_stored"]
        now = time.monotonic()
        cpu = meter.sample() + mock.cpu()
        busy = machine_busy_seconds()
        if stored and first is None:
            first, cpu_first, busy_first, stored_first = now, cpu, busy, stored
            snap, mock_first = meter.snapshot(), mock.cpu()
            if on_first is not None:
                on_first()
        if stored >= count:
            last, cpu_last, busy_last = now, cpu, busy
            break
        if not alive():
            break
        time.sleep(0.1)
    res: dict[str, Any] = {"stored": stored, "first_stored_s": (first - t0) if first else None}
    if first is not None and last is not None and last > first:
        wall = last - first
        cpu = cpu_last - cpu_first
        done = count - stored_first  # what was stored inside the window
        res.update(wall=wall, events_per_s=done / wall, cpu_s=cpu,
                   per_cpu_s=done / cpu if cpu else 0.0, stored_at_first_poll=stored_first,
                   foreign_cores=max(0.0, (busy_last - busy_first) - cpu) / wall,
                   total_s=last - t0,
                   cpu_by_process={**meter.by_process(snap),
                                   "stand-in": round(mock.cpu() - mock_first, 2)})
    st = mock.stats()
    ingest = sum(v for k, v in st["requests_by_route"].items() if "events" in k)
    res.update(requests=ingest, events_per_request=stored / ingest if ingest else 0.0,
               loadavg=_read("/proc/loadavg").split()[:3])
    return res


def py_spy(pids: list[int], out: Path, seconds: float = 6) -> list[subprocess.Popen]:
    """Sample Python processes with py-spy (requirements-dev.txt) while the drain runs."""
    exe = Path(PY).parent / "py-spy"
    return [subprocess.Popen([str(exe), "record", "--pid", str(p), "--duration", str(seconds),
                              "--rate", "100", "--format", "raw", "--nonblocking",
                              "-o", f"{out}-{p}.txt"], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL) for p in pids]


def run_prism(mock: Mock, count: int, partitions: int, workdir: Path,
              extra_kafka: dict | None = None, timeout: float = 600,
              profile: Path | None = None) -> dict:
    """K2: ``flexprice-beam run`` (Prism, streaming) drains the backlog; then SIGTERM."""
    import yaml

    topic = make_backlog(count, partitions)
    mock.reset(0)
    dl = Path(tempfile.mkdtemp(prefix="dl-", dir=workdir))
    cfg = workdir / f"k2-{topic}.yaml"
    cfg.write_text(yaml.safe_dump(collector_config(mock, topic, dl, extra_kafka)))
    log = open(workdir / f"k2-{topic}.log", "w")
    t_start = time.monotonic()
    proc = subprocess.Popen(_cli() + ["run", "-c", str(cfg), "--progress", "off", "--no-metrics"],
                            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    meter = CpuMeter([proc.pid])
    spies: list[subprocess.Popen] = []

    def on_first() -> None:
        if profile is not None:
            spies.extend(py_spy([proc.pid], profile))
    res = watch(mock, count, meter, timeout, alive=lambda: proc.poll() is None,
                on_first=on_first)
    for s in spies:
        s.wait()
    res["start_to_last_s"] = time.monotonic() - t_start
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    log.close()
    res["leftover_after_1s"] = leftovers(set(meter.seen) - {proc.pid})
    time.sleep(1)
    res.update(runner="prism", count=count, partitions=partitions, topic=topic,
               exit_code=proc.returncode,
               leftover=leftovers(set(meter.seen) - {proc.pid}),
               conflicts=mock.stats().get("conflicting_duplicates", 0))
    res["ok"] = res["stored"] >= count and not res["leftover"] and not res["conflicts"]
    return res


def jfr(pid: int, out: Path, seconds: float = 8) -> subprocess.Popen:
    """A JDK Flight Recorder profile of a JVM (the TaskManager) while the drain runs."""
    return subprocess.Popen(["jcmd", str(pid), "JFR.start", f"duration={int(seconds)}s",
                             "settings=profile", f"filename={out}-{pid}.jfr"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def run_flink(mock: Mock, count: int, partitions: int, parallelism: int, workdir: Path,
              extra_args: list[str] | None = None, timeout: float = 600,
              profile: Path | None = None) -> dict:
    """K3: submit the collector to the local Flink cluster, drain the backlog, cancel."""
    from flexprice_beam.core.config import CollectorConfig
    from flexprice_beam.launch import flink

    env = script_env("flink.sh")
    for k in ("FLINK_REST", "BEAM_JOB_ENDPOINT", "BEAM_WORKER_POOL", "BEAM_EXPANSION_SERVICE"):
        if k in env:
            os.environ[k] = env[k]
    topic = make_backlog(count, partitions)
    mock.reset(0)
    dl = Path(tempfile.mkdtemp(prefix="dl-", dir=workdir))
    cfg = CollectorConfig.model_validate(collector_config(mock, topic, dl))
    target = flink.FlinkTarget.from_env()
    rest = flink.FlinkRest(target.rest)
    args = flink.beam_args(target, job_name=f"kbench-{topic}", parallelism=parallelism,
                           batching_period=cfg.output.flexprice.batching.period)
    args += list(extra_args or [])
    meter = CpuMeter(flink_pids(env))
    t_start = time.monotonic()
    sub = flink.submit(cfg, args, rest)
    if sub.error or not sub.job_id:
        return {"runner": "flink", "parallelism": parallelism, "ok": False,
                "error": sub.error or "not submitted"}
    def on_first() -> None:
        if profile is None:
            return
        tm = [p for p in meter.seen if meter.names.get(p) == "taskmanager"]
        workers = [p for p in meter.seen if meter.names.get(p) == "sdk-worker (python)"]
        for p in tm:
            jfr(p, profile)
        py_spy(workers, profile)
    try:
        res = watch(mock, count, meter, timeout, on_first=on_first)
    finally:
        rest.cancel(sub.job_id)
        rest.wait_state(sub.job_id, ("CANCELED", "FAILED", "FINISHED"), 120)
    res.update(runner="flink", parallelism=parallelism, count=count, partitions=partitions,
               topic=topic, running_after_s=sub.running_s,
               start_to_last_s=time.monotonic() - t_start, extra_args=extra_args or [],
               conflicts=mock.stats().get("conflicting_duplicates", 0))
    res["ok"] = res["stored"] >= count and not res["conflicts"]
    return res


def line(res: dict) -> str:
    if "events_per_s" not in res:
        return f"{res.get('runner')}: NOT measured ({res.get('error') or res.get('stored')} stored)"
    what = res["runner"] + (f" p={res['parallelism']}" if "parallelism" in res else "")
    return (f"{what}: {res['events_per_s']:,.0f} ev/s, {res['per_cpu_s']:,.0f} ev/CPU-s "
            f"({res['cpu_s']:.1f} CPU-s over {res['wall']:.1f} s; first event stored "
            f"{res['first_stored_s']:.1f} s after start; foreign load {res['foreign_cores']:.2f} "
            f"cores; loadavg {' '.join(res['loadavg'])})" + ("" if res.get("ok") else " [NOT OK]"))


class _Header(typing.NamedTuple):
    key: str
    value: bytes


def per_record_costs(n: int = 100_000) -> dict[str, float]:
    """µs per record of the Python read-path steps, best of 5 (the issue's data points)."""
    import datetime as dt
    import pickle
    import timeit
    import typing

    import orjson
    from apache_beam.coders import RowCoder
    from apache_beam.typehints.schemas import named_tuple_to_schema

    from flexprice_beam.core.events import rfc3339, rfc3339_from_millis
    from flexprice_beam.io.kafka import decode

    class KafkaRow(typing.NamedTuple):  # the fields of Beam's ReadFromKafka metadata row
        topic: str
        partition: int
        offset: int
        timestamp: int
        timestampTypeId: int
        timestampTypeName: str
        key: typing.Optional[bytes]  # noqa: UP045 - Beam's schema inference wants these
        value: typing.Optional[bytes]  # noqa: UP045
        headers: list[_Header]

    rng = random.Random(1)
    value = event_value(rng, ["cust-00001"])
    row = KafkaRow("kbench-topic", 2, 123456, 1764590000123, 0, "CreateTime", b"123456", value, [])
    coder = RowCoder(named_tuple_to_schema(KafkaRow))
    encoded = coder.encode(row)
    ms = 1764590000123

    def best(fn, k=n) -> float:
        return min(timeit.repeat(fn, number=k, repeat=5)) / k * 1e6

    batch = [decode("kbench-topic", 2, 123456 + i, ms + i, b"k", value, 1 << 20) for i in range(500)]
    return {
        "RowCoder.decode (metadata row)": best(lambda: coder.decode(encoded)),
        "io/kafka.decode() now": best(lambda: decode("kbench-topic", 2, 123456, ms, b"123456",
                                                     value, 1 << 20)),
        "  of which the record time, formatted per record (before)": best(
            lambda: rfc3339(dt.datetime.fromtimestamp(ms / 1000, tz=dt.timezone.utc))),
        "  of which the record time, cached per second (now)": best(
            lambda: rfc3339_from_millis(ms)),
        "orjson.loads of the value": best(lambda: orjson.loads(value)),
        "Beam size sample of one 500-record batch, pickled (before), per batch": best(
            lambda: pickle.dumps(batch, pickle.HIGHEST_PROTOCOL), 200),
    }


def summary(res: dict) -> str:
    """One table cell: the rate, the per-CPU rate and what loaded the machine."""
    if "events_per_s" not in res:
        return f"not measured: {res.get('error') or res.get('stored')}"
    return (f"{res['events_per_s']:,.0f} ev/s, {res['per_cpu_s']:,.0f} ev/CPU-s "
            f"(load {res['loadavg'][0]}, other processes {res['foreign_cores']:.1f} cores)"
            + ("" if res.get("ok") else " [NOT OK]"))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("runner", choices=("prism", "flink", "micro"))
    ap.add_argument("--count", type=int, default=300_000)
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--parallelism", type=int, default=1)
    ap.add_argument("--kafka", default="{}", help="extra input.kafka keys as JSON")
    ap.add_argument("--extra", default="", help="extra Beam options (flink), space-separated")
    ap.add_argument("--json")
    ap.add_argument("--profile", type=Path, help="py-spy raw profiles to this path prefix")
    args = ap.parse_args(argv)
    if args.runner == "micro":
        for k, v in per_record_costs().items():
            print(f"{k:<72} {v:8.2f} µs")
        return 0
    workdir = Path(tempfile.mkdtemp(prefix="kbench-"))
    mock = Mock(workdir)
    try:
        if args.runner == "prism":
            res = run_prism(mock, args.count, args.partitions, workdir, json.loads(args.kafka),
                            profile=args.profile)
        else:
            res = run_flink(mock, args.count, args.partitions, args.parallelism, workdir,
                            args.extra.split(), profile=args.profile)
    finally:
        mock.stop()
    print(line(res))
    print(json.dumps(res, default=str))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1, default=str))
    print(f"logs: {workdir}", file=sys.stderr)
    return 0 if res.get("ok") else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
