"""Kafka → Flexprice on the local Flink cluster: throughput, latency, batching, concurrency.

Needs ``scripts/kafka.sh start`` and ``scripts/flink.sh start``.  The Flexprice stand-in
runs in this process (the SDK workers reach it on 127.0.0.1) and records when each event
was first stored; events carry the Kafka record time (producer CreateTime), so
``stored - record time`` is the read→accepted latency including Kafka.

    .venv/bin/python scripts/flink/kafka_bench.py --parallelism 1
    .venv/bin/python scripts/flink/kafka_bench.py --parallelism 2 --backlog 100000 \\
        --rates 20,200,2000 --seconds 20 --latency-ms 0 --json out.json

Phases: (1) ``--rates``: for each rate, ``--seconds`` of events at that rate, latency
p50/p99/max and request sizes; (2) ``--backlog``: N events produced as fast as possible,
throughput = N / (last stored - first stored); the peak number of concurrent ingest
requests is tracked throughout.  The job is cancelled at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from flexprice_mock.server import MockFlexprice  # noqa: E402
from kafka import KafkaAdminClient, KafkaProducer  # noqa: E402
from kafka.admin import NewTopic  # noqa: E402

from flexprice_beam.core.config import CollectorConfig  # noqa: E402
from flexprice_beam.launch import flink  # noqa: E402


class Concurrency:
    """Peak number of /v1/events requests being handled at once by the stand-in.

    ``peak`` counts from request read to handler exit, so a new request that arrives while
    the previous handler is still returning (microseconds) shows as +1; ``sampled`` is the
    peak seen by a 5 ms sampler, which ignores such overlaps (use ``--latency-ms``)."""

    def __init__(self, mock: MockFlexprice):
        self.peak = 0
        self.sampled = 0
        self._now = 0
        self._lock = threading.Lock()
        threading.Thread(target=self._sample, daemon=True).start()
        orig = mock._dispatch

        def dispatch(h, method, target, *rest):
            ingest = target.startswith("/v1/events")
            if ingest:
                with self._lock:
                    self._now += 1
                    self.peak = max(self.peak, self._now)
            try:
                return orig(h, method, target, *rest)
            finally:
                if ingest:
                    with self._lock:
                        self._now -= 1

        mock._dispatch = dispatch

    def _sample(self) -> None:
        while True:
            time.sleep(0.005)
            self.sampled = max(self.sampled, self._now)

    def reset(self) -> None:
        with self._lock:
            self.peak = self.sampled = self._now


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, max(0, int(round(q * len(values))) - 1))]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bootstrap", default=os.environ.get("KAFKA_BOOTSTRAP_PLAINTEXT", "127.0.0.1:19092"))
    ap.add_argument("--parallelism", type=int, default=1)
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--rates", default="20,200,1000", help="events/s for the latency phases")
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--backlog", type=int, default=50000, help="0 = skip the throughput phase")
    ap.add_argument("--latency-ms", type=float, default=0, help="stand-in response delay")
    ap.add_argument("--max-in-flight", type=int, default=None, help="default: the product's")
    ap.add_argument("--batch-count", type=int, default=500)
    ap.add_argument("--period", default="1s")
    ap.add_argument("--checkpointing-interval", type=float, default=10)
    ap.add_argument("--extra", default="", help="extra Beam options, space-separated")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args(argv)

    run = uuid.uuid4().hex[:8]
    topic = group = f"bench-{run}"
    admin = KafkaAdminClient(bootstrap_servers=args.bootstrap)
    admin.create_topics([NewTopic(topic, args.partitions, 1)])
    mock = MockFlexprice(api_key="bench", latency_ms=args.latency_ms, fast=True).start()
    mock.track_receive_times()
    conc = Concurrency(mock)
    key_file = Path(f"/tmp/flexprice-bench-key-{run}")  # a reference: remote runners refuse literals
    key_file.write_text("bench")
    cfg = CollectorConfig.model_validate({
        "input": {"kafka": {"addresses": [args.bootstrap], "topics": [topic],
                            "consumer_group": group}},
        "output": {"flexprice": {"api_host": mock.host_port, "api_key_file": str(key_file),
                                 "scheme": "http",
                                 "batching": {"count": args.batch_count, "period": args.period},
                                 **({"max_in_flight": args.max_in_flight} if args.max_in_flight else {})},
                   "dead_letter": {"path": f"/tmp/flexprice-bench-dl-{run}"}}})
    target = flink.FlinkTarget.from_env()
    rest = flink.FlinkRest(target.rest)
    bargs = flink.beam_args(target, job_name=f"bench-{run}", parallelism=args.parallelism,
                            checkpointing_interval=args.checkpointing_interval,
                            batching_period=cfg.output.flexprice.batching.period) + args.extra.split()
    results: dict = {"parallelism": args.parallelism, "partitions": args.partitions,
                     "max_in_flight": cfg.output.flexprice.max_in_flight, "latency_ms": args.latency_ms,
                     "phases": []}
    sub = flink.submit(cfg, bargs, rest)
    print(sub.render(), flush=True)
    if not sub.tasks_running:
        if sub.job_id:
            rest.cancel(sub.job_id)
        mock.stop()
        return 1
    producer = KafkaProducer(bootstrap_servers=args.bootstrap, acks=1, linger_ms=5,
                             batch_size=256 * 1024)
    sent = 0

    def produce(n: int, rate: float) -> None:
        nonlocal sent
        began = time.monotonic()
        for i in range(n):
            producer.send(topic, key=str(sent).encode(), value=json.dumps(
                {"event_name": "api.request", "external_customer_id": f"cust_{sent % 50}",
                 "properties": {"value": sent % 100}}).encode())
            sent += 1
            if rate:
                time.sleep(max(0.0, began + (i + 1) / rate - time.monotonic()))
        producer.flush(120)

    def wait_stored(n: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while mock.stats()["events_stored"] < n and time.monotonic() < deadline:
            time.sleep(0.2)
        return mock.stats()["events_stored"] >= n

    try:
        time.sleep(5)  # let the first checkpoint pass
        for rate in [float(r) for r in args.rates.split(",") if r]:
            before = set(mock.receive_times())
            reqs_before = len(mock.requests_log)
            conc.reset()
            n = int(rate * args.seconds)
            produce(n, rate)
            ok = wait_stored(sent, 120)
            times = mock.receive_times()
            lat = [(at - ts / 1000) * 1000 for (eid, ts), at in times.items() if (eid, ts) not in before]
            sizes = [r.n_events for r in mock.requests_log[reqs_before:] if r.n_events]
            phase = {"phase": f"rate {rate:g}/s", "events": n, "complete": ok,
                     "latency_ms_p50": round(statistics.median(lat)),
                     "latency_ms_p99": round(pct(lat, 0.99)), "latency_ms_max": round(max(lat)),
                     "requests": len(sizes), "events_per_request": round(statistics.mean(sizes), 1),
                     "peak_concurrent_requests": conc.peak,
                     "peak_concurrent_sampled": conc.sampled}
            results["phases"].append(phase)
            print(json.dumps(phase), flush=True)
        if args.backlog:
            before = set(mock.receive_times())
            reqs_before = len(mock.requests_log)
            conc.reset()
            t0 = time.time()
            produce(args.backlog, 0)
            produced_s = time.time() - t0
            ok = wait_stored(sent, 600)
            times = [at for k, at in mock.receive_times().items() if k not in before]
            first, last = min(times), max(times)
            sizes = Counter(r.n_events for r in mock.requests_log[reqs_before:] if r.n_events)
            phase = {"phase": "backlog", "events": args.backlog, "complete": ok,
                     "produce_s": round(produced_s, 1),
                     "events_per_s": round(len(times) / max(last - first, 1e-3)),
                     "events_per_s_from_first_produce": round(len(times) / (last - t0)),
                     "requests": sum(sizes.values()),
                     "events_per_request": round(sum(k * v for k, v in sizes.items())
                                                 / max(sum(sizes.values()), 1), 1),
                     "peak_concurrent_requests": conc.peak,
                     "peak_concurrent_sampled": conc.sampled}
            results["phases"].append(phase)
            print(json.dumps(phase), flush=True)
        time.sleep(args.checkpointing_interval + 3)
        committed = admin.list_group_offsets(group).get(group, {})
        results["committed"] = sum(o.offset for o in committed.values())
        results["produced"] = sent
        st = mock.stats()
        results["stand_in"] = {k: st[k] for k in ("events_stored", "deliveries", "duplicates",
                                                  "distinct_conflicts", "requests_total")}
        print(json.dumps({k: results[k] for k in ("committed", "produced", "stand_in")}), flush=True)
    finally:
        if sub.job_id:
            rest.cancel(sub.job_id)
            print("job", rest.wait_state(sub.job_id, ("CANCELED", "FAILED"), 60), flush=True)
        producer.close(10)
        admin.delete_topics([topic])
        mock.stop()
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
