"""K0 and K1 (issue 12): the bounded Kafka read, against the repo's broker (scripts/kafka.sh).

* K0, the raw consumer bound: one process, kafka-python + ``orjson.loads`` of every value
  (and confluent-kafka, when it is installed, for comparison; it is not a requirement).
* K1, a bounded drain: ``flexprice-beam run`` with ``stop_at_end: true`` over 100,000
  ``send-events`` records on 3 partitions, timed as a whole (process start, Beam start-up,
  range resolution, delivery to the stand-in, the offset commit, exit).  Events per
  CPU-second counts the run's process tree and the stand-in.

``python -m benchmarks.kafka_bounded k0 TOPIC N [client]`` is the K0 child; run.py drives both.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

BROKER = "127.0.0.1:19092"
PARTITIONS = 3


def _produce(n: int, seed: int = 12) -> str:
    from flexprice_beam.io.send_events import main as send_events
    from tests.kafka_helpers import new_topic

    topic = new_topic(PARTITIONS, BROKER)
    if send_events([str(n), "--topic", topic, "--seed", str(seed), "--brokers", BROKER]) != 0:
        raise RuntimeError("send-events failed")
    return topic


def _k0_kafka_python(topic: str, n: int) -> int:
    import orjson
    from kafka import KafkaConsumer, TopicPartition

    from flexprice_beam.io.kafka_clients import FETCH

    consumer = KafkaConsumer(bootstrap_servers=BROKER, enable_auto_commit=False, **FETCH)
    parts = [TopicPartition(topic, p) for p in range(PARTITIONS)]
    consumer.assign(parts)
    consumer.seek_to_beginning(*parts)
    seen = 0
    while seen < n:
        for records in consumer.poll(timeout_ms=500, max_records=10_000).values():
            for r in records:
                orjson.loads(r.value)
                seen += 1
    consumer.close()
    return seen


def _k0_confluent(topic: str, n: int) -> int:
    import orjson
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": BROKER, "group.id": "k0-bench",
                         "enable.auto.commit": False})
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(PARTITIONS)])
    seen = 0
    while seen < n:
        for m in consumer.consume(10_000, 0.5):
            orjson.loads(m.value())
            seen += 1
    consumer.close()
    return seen


def k0_child(topic: str, n: int, client: str) -> dict:
    import resource

    def cpu() -> float:
        ru = resource.getrusage(resource.RUSAGE_SELF)
        return ru.ru_utime + ru.ru_stime

    fn = {"kafka-python": _k0_kafka_python, "confluent-kafka": _k0_confluent}[client]
    c0, t0 = cpu(), time.perf_counter()
    seen = fn(topic, n)
    wall, used = time.perf_counter() - t0, cpu() - c0
    return {"client": client, "events": seen, "wall": wall, "cpu": used,
            "rate": seen / wall, "per_cpu_s": seen / used if used else 0.0}


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def _k1_once(b, harness, root: Path, cli: list[str], topic: str, n: int, i: int) -> dict:
    """One whole ``flexprice-beam run`` draining the topic with a fresh consumer group
    (``cli`` may be the CLI under a profiler)."""
    cfg = harness.collector_config(b.mock, b.workdir, n)
    cfg["input"] = {"kafka": {"addresses": [BROKER], "topics": [topic],
                              "consumer_group": f"k1-{topic}-{i}", "stop_at_end": True}}
    path = harness._write_yaml(b, cfg, f"k1-{i}.yaml")
    b.mock.reset(0)
    busy0, mock0, (own0, kids0) = (harness.machine_busy_seconds(), b.mock.cpu(),
                                   harness.own_cpu_seconds())
    t0 = time.perf_counter()
    done = subprocess.run([*cli, "run", "-c", str(path), "--no-metrics", "--progress", "off"],
                          cwd=root, capture_output=True, text=True, timeout=1800)
    wall = time.perf_counter() - t0
    busy1, mock1, (own1, kids1) = (harness.machine_busy_seconds(), b.mock.cpu(),
                                   harness.own_cpu_seconds())
    run_cpu, mock_cpu = kids1 - kids0, mock1 - mock0
    foreign = max(0.0, (busy1 - busy0) - run_cpu - mock_cpu - (own1 - own0))
    stored = b.mock.stats()["events_stored"]
    ok = done.returncode == 0 and stored == n
    k1 = {"events": n, "wall": wall, "run_cpu": run_cpu, "mock_cpu": mock_cpu,
          "rate": n / wall, "per_cpu_s": n / (run_cpu + mock_cpu), "exit": done.returncode,
          "stored": stored, "foreign_cores": foreign / wall, "ok": ok}
    if not ok:
        print(done.stdout[-2000:], done.stderr[-3000:])
    print(f"    K1 bounded drain  {k1['rate']:>10,.0f} ev/s  {k1['per_cpu_s']:>9,.0f} ev/CPU-s "
          f"(run {run_cpu:.1f} + stand-in {mock_cpu:.1f} CPU-s, {wall:.1f} s, foreign "
          f"{k1['foreign_cores']:.2f} cores)" + ("" if ok else "  [NOT OK]"))
    return k1


def k_series(b, root: Path, py: str, cli: list[str], quick: bool) -> dict:
    """K0 and K1 rows for run.py; ``b`` is its Bench (the stand-in and CPU helpers)."""
    from benchmarks import run as harness

    if not harness._listening(19092):
        note = "not measured: the broker is not running (scripts/kafka.sh start)"
        print(f"\n== K0/K1: {note}")
        return {"rows": [{"id": k, "what": w, "value": note, "target": t, "pass": None}
                         for k, w, t in (("K0", "raw consumer bound", "report"),
                                         ("K1", "bounded drain", "≥ 40,000 ev/s"))]}
    n = 20_000 if quick else 100_000
    print(f"\n== K0/K1: {n:,} send-events records on {PARTITIONS} partitions (broker {BROKER})")
    topic = _produce(n)
    rows: list[dict[str, Any]] = []
    k0 = {}
    for client in ("kafka-python", "confluent-kafka"):
        if client == "confluent-kafka" and not _has("confluent_kafka"):
            continue
        out = subprocess.run([py, "-m", "benchmarks.kafka_bounded", "k0", topic, str(n), client],
                             cwd=root, capture_output=True, text=True, timeout=600)
        if out.returncode != 0:
            raise RuntimeError(f"K0 {client} failed:\n{out.stderr[-3000:]}")
        k0[client] = res = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"    K0 {client:<16} {res['rate']:>10,.0f} ev/s  {res['per_cpu_s']:>9,.0f} ev/CPU-s")
    rows.append({"id": "K0", "what": "raw consumer bound, one process: " + ", ".join(k0),
                 "value": "; ".join(f"{c}: {r['rate']:,.0f} ev/s, {r['per_cpu_s']:,.0f} "
                                    f"ev/CPU-s" for c, r in k0.items()),
                 "target": "report", "pass": None})

    repeats = b.args.repeats or (1 if quick else 3)
    runs = [_k1_once(b, harness, root, cli, topic, n, i) for i in range(repeats)]
    profile = None
    if _has("pyinstrument"):  # one more run, under the profiler (wall clock, all frames)
        profile = b.out_dir / "profile-k1-pyinstrument.txt"
        prof = _k1_once(b, harness, root, [py, "-m", "pyinstrument", "-i", "0.001", "-o",
                                           str(profile), "-m", "flexprice_beam"],
                        topic, n, repeats)
        print(f"    (the profiled run: {prof['wall']:.1f} s; {profile.relative_to(root)})")
    k1 = sorted(runs, key=lambda r: r["rate"])[len(runs) // 2]  # the median run
    ok = all(r["ok"] for r in runs)
    wall = k1["wall"]
    rows.append({"id": "K1", "what": f"bounded drain of {n:,} records on {PARTITIONS} partitions "
                 "(`run` with stop_at_end, whole process incl. start-up)",
                 "value": f"{k1['rate']:,.0f} ev/s, {k1['per_cpu_s']:,.0f} ev/CPU-s "
                          f"(run + stand-in), {wall:.1f} s, foreign load "
                          f"{k1['foreign_cores']:.2f} cores (median of {len(runs)}: "
                          + ", ".join(f"{r['rate']:,.0f}" for r in runs) + " ev/s)",
                 "target": "≥ 40,000 ev/s", "pass": ok and k1["rate"] >= 40_000})
    return {"rows": rows, "k0": k0, "k1": k1, "k1_runs": runs, "topic": topic,
            "profile": str(profile.relative_to(root)) if profile else None}


if __name__ == "__main__":
    if sys.argv[1] == "k0":
        print(json.dumps(k0_child(sys.argv[2], int(sys.argv[3]), sys.argv[4])))
