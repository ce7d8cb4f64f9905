#!/usr/bin/env python
"""Smoke test: run Beam Python pipelines on the local Flink cluster of scripts/flink.sh.

    scripts/flink.sh start
    .venv/bin/python scripts/flink/smoke.py batch
    .venv/bin/python scripts/flink/smoke.py streaming --seconds 30
    .venv/bin/python scripts/flink/smoke.py streaming --seconds 60 --kill-taskmanager-after 25
    .venv/bin/python scripts/flink/smoke.py all            # batch + streaming
    .venv/bin/python scripts/flink/smoke.py kafka --bootstrap 127.0.0.1:19092   # needs a broker
    ... --runner flink        # FlinkRunner + --flink_job_server_jar (job server per run)
    ... --runner flink-uber   # FlinkRunner + --flink_submit_uber_jar (no job server at all)

batch:     Create(1..N) -> Map(square) -> DoFn appending to a file; checks the file and
           that Flink's REST API lists the job as FINISHED and a TaskManager ran it.
streaming: PeriodicImpulse (unbounded SDF) -> Map -> DoFn appending to a file, with Flink
           checkpoints every --checkpoint-ms; after --seconds the job is cancelled through
           Flink REST (PATCH /jobs/<id>?mode=cancel). Checks RUNNING state, TaskManager
           placement, completed checkpoints, output growth.
           --kill-taskmanager-after S: SIGKILL the TaskManager S seconds in and start a new
           one (scripts/flink.sh restart-taskmanager --kill); checks that Flink restarts the
           job, restores it from the latest checkpoint (REST .../checkpoints -> restored)
           and that the unbounded source resumes from the checkpointed position (only a few
           seconds of elements are replayed, not everything since the start).

kafka:     produces --messages records to a new topic, reads them with the cross-language
           ReadFromKafka (expanded by the flink.sh expansion service -> Java KafkaIO runs in
           the TaskManager, EMBEDDED environment) into a Python DoFn; deletes the topic.

Exit code 0 when every check passed. Prints one "CHECK ok|FAIL ..." line per check and a
final "N passed, N failed" line.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
CACHE = os.environ.get("FLINK_CACHE_DIR", os.path.join(ROOT, ".cache", "flink"))

RESULTS: list[tuple[bool, str]] = []


def check(ok: bool, what: str) -> bool:
    RESULTS.append((bool(ok), what))
    print(f"CHECK {'ok  ' if ok else 'FAIL'} {what}", flush=True)
    return bool(ok)


# --------------------------------------------------------------------------- Flink REST


class FlinkRest:
    def __init__(self, address: str):
        self.base = address if address.startswith("http") else f"http://{address}"

    def call(self, path: str, method: str = "GET"):
        req = urllib.request.Request(self.base + path, method=method)
        with urllib.request.urlopen(req, timeout=10) as resp:
            body = resp.read()
        return json.loads(body) if body else {}

    def jobs(self) -> list[dict]:
        return self.call("/jobs/overview")["jobs"]

    def find_job(self, name_part: str, timeout: float, states=("RUNNING",)) -> dict | None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            for job in self.jobs():
                if name_part in job["name"] and (not states or job["state"] in states):
                    return job
            time.sleep(1)
        return None

    def taskmanagers_of(self, jid: str) -> set[str]:
        tms = set()
        for v in self.call(f"/jobs/{jid}")["vertices"]:
            for tm in self.call(f"/jobs/{jid}/vertices/{v['id']}/taskmanagers").get("taskmanagers", []):
                tid = tm.get("taskmanager-id") or tm.get("resource-id") or ""
                if tid and tid != "(unassigned)":
                    tms.add(tid)
        return tms

    def wait_all_running(self, jid: str, timeout: float) -> bool:
        """True once the job and every vertex (all subtasks) are RUNNING."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            info = self.call(f"/jobs/{jid}")
            if info["state"] == "RUNNING" and all(v["status"] == "RUNNING" for v in info["vertices"]):
                return True
            time.sleep(0.5)
        return False

    def live_taskmanager_ids(self) -> set[str]:
        return {tm["id"] for tm in self.call("/taskmanagers")["taskmanagers"]}

    def checkpoints(self, jid: str) -> dict:
        return self.call(f"/jobs/{jid}/checkpoints")

    def cancel(self, jid: str) -> None:
        self.call(f"/jobs/{jid}?mode=cancel", method="PATCH")

    def wait_state(self, jid: str, states: tuple[str, ...], timeout: float) -> str:
        deadline = time.time() + timeout
        state = "?"
        while time.time() < deadline:
            state = self.call(f"/jobs/{jid}")["state"]
            if state in states:
                return state
            time.sleep(1)
        return state


# --------------------------------------------------------------------------- pipelines


class AppendToFile(beam.DoFn):
    """Appends one line per element to a local file (the cluster is on this machine)."""

    def __init__(self, path: str):
        self.path = path
        self._fh = None

    def setup(self):
        self._fh = open(self.path, "a", buffering=1)

    def process(self, element):
        self._fh.write(f"{element}\n")
        yield element

    def teardown(self):
        if self._fh:
            self._fh.close()


def runner_args(args, job_name: str) -> list[str]:
    common = [
        f"--job_name={job_name}",
        "--environment_type=EXTERNAL",
        f"--environment_config={args.worker_pool}",
        f"--parallelism={args.parallelism}",
    ]
    if args.runner == "portable":
        return ["--runner=PortableRunner", f"--job_endpoint={args.job_endpoint}"] + common
    jar = args.flink_job_server_jar or _default_jar()
    flink = [
        "--runner=FlinkRunner",
        f"--flink_master={args.flink_rest}",
        "--flink_version=1.19",
        f"--flink_job_server_jar={jar}",
    ]
    if args.runner == "flink-uber":
        flink.append("--flink_submit_uber_jar")
    return flink + common


def _default_jar() -> str:
    """The job server jar scripts/flink.sh uses (its `env` prints FLINK_JOB_SERVER_JAR)."""
    out = subprocess.run(
        [os.path.join(ROOT, "scripts", "flink.sh"), "env"], check=True, capture_output=True, text=True
    ).stdout
    for line in out.splitlines():
        if line.startswith("export FLINK_JOB_SERVER_JAR="):
            jar = line.split("=", 1)[1]
            if os.path.exists(jar):
                return jar
    sys.exit("no job server jar; run scripts/flink.sh install")


def run_batch(args, rest: FlinkRest) -> None:
    n = args.elements
    job_name = f"smoke-batch-{int(time.time())}"
    out = os.path.join(args.out_dir, f"{job_name}.txt")
    print(f"--- batch ({args.runner}) job={job_name} out={out}", flush=True)
    opts = PipelineOptions(runner_args(args, job_name))
    t0 = time.time()
    p = beam.Pipeline(options=opts)
    (
        p
        | "Create" >> beam.Create(list(range(1, n + 1)))
        | "Square" >> beam.Map(lambda x: x * x)
        | "Append" >> beam.ParDo(AppendToFile(out))
    )
    result = p.run()
    state = result.wait_until_finish()
    print(f"batch finished in {time.time() - t0:.1f}s with state {state}", flush=True)
    check(str(state).endswith("DONE"), f"batch pipeline state DONE (got {state})")
    lines = open(out).read().split() if os.path.exists(out) else []
    check(
        sorted(map(int, lines)) == [i * i for i in range(1, n + 1)],
        f"batch output has the {n} squares ({len(lines)} lines)",
    )
    job = rest.find_job(job_name, timeout=30, states=("FINISHED",))
    check(job is not None, f"Flink /jobs/overview lists {job_name} as FINISHED")
    if job:
        tms = rest.taskmanagers_of(job["jid"])
        check(
            bool(tms) and tms <= rest.live_taskmanager_ids(),
            f"a registered TaskManager ran the batch job ({', '.join(sorted(tms))})",
        )
        print(f"batch job {job['jid']} tasks={job.get('tasks')} duration={job.get('duration')}ms", flush=True)


def run_streaming(args, rest: FlinkRest) -> None:
    from apache_beam.transforms.periodicsequence import PeriodicImpulse

    job_name = f"smoke-stream-{int(time.time())}"
    out = os.path.join(args.out_dir, f"{job_name}.txt")
    interval = args.fire_interval
    print(f"--- streaming ({args.runner}) job={job_name} out={out}", flush=True)
    opts = PipelineOptions(
        runner_args(args, job_name) + ["--streaming", f"--checkpointing_interval={args.checkpoint_ms}"]
    )
    start = time.time()
    p = beam.Pipeline(options=opts)
    (
        p
        | "Tick" >> PeriodicImpulse(start_timestamp=start, fire_interval=interval, apply_windowing=False)
        | "Stamp" >> beam.Map(lambda ts: f"{float(ts):.3f}")
        | "Append" >> beam.ParDo(AppendToFile(out))
    )
    result = p.run()  # non-blocking for a streaming job
    job = rest.find_job(job_name, timeout=120, states=("RUNNING",))
    if not check(job is not None, f"Flink /jobs/overview lists {job_name} as RUNNING"):
        print(f"pipeline state: {result.state}", flush=True)
        return
    jid = job["jid"]
    print(f"flink job id {jid}", flush=True)
    # wait until the operators are actually deployed/running
    check(
        rest.wait_all_running(jid, 120), f"all tasks RUNNING after {time.time() - start:.1f}s from submission"
    )
    tms = rest.taskmanagers_of(jid)
    live = rest.live_taskmanager_ids()
    check(bool(tms) and tms <= live, f"streaming job runs on registered TaskManager(s) {sorted(tms)}")

    killed_at = None
    old_tms = set(tms)
    t_end = time.time() + args.seconds
    while time.time() < t_end:
        if (
            args.kill_taskmanager_after
            and killed_at is None
            and time.time() - start >= args.kill_taskmanager_after
        ):
            cps = rest.checkpoints(jid)["counts"]
            print(f"before kill: checkpoints {cps}", flush=True)
            check(
                cps.get("completed", 0) >= 1,
                f"at least one completed checkpoint before the kill ({cps.get('completed')})",
            )
            killed_at = time.time()
            print("SIGKILL TaskManager + start a new one", flush=True)
            subprocess.run(
                [os.path.join(ROOT, "scripts", "flink.sh"), "restart-taskmanager", "--kill"], check=True
            )
            print(f"restart-taskmanager returned after {time.time() - killed_at:.1f}s", flush=True)
        time.sleep(1)

    info = rest.call(f"/jobs/{jid}")
    cps = rest.checkpoints(jid)
    counts = cps["counts"]
    print(f"job state {info['state']}, checkpoint counts {counts}", flush=True)
    check(
        info["state"] == "RUNNING", f"streaming job still RUNNING after {args.seconds}s (got {info['state']})"
    )
    check(counts.get("completed", 0) >= 2, f">= 2 completed checkpoints ({counts.get('completed')})")
    lines = open(out).read().split() if os.path.exists(out) else []
    print(f"output lines so far: {len(lines)}", flush=True)
    check(
        len(lines) >= max(3, int(args.seconds / interval * 0.3)),
        f"streaming output grew ({len(lines)} lines)",
    )

    if killed_at is not None:
        restored = (cps.get("latest") or {}).get("restored")
        print(f"latest.restored = {json.dumps(restored)}", flush=True)
        check(
            restored is not None and restored.get("id") is not None,
            f"job was restored from checkpoint {restored and restored.get('id')} after the TaskManager loss",
        )
        new_tms = rest.taskmanagers_of(jid)
        check(
            bool(new_tms) and not (new_tms & old_tms),
            f"job now runs on the new TaskManager {sorted(new_tms)} (old {sorted(old_tms)})",
        )
        if restored and restored.get("restore_timestamp"):
            print(
                f"recovery: restored {restored['restore_timestamp'] / 1000 - killed_at:.1f}s "
                "after the SIGKILL",
                flush=True,
            )
        exc = rest.call(f"/jobs/{jid}/exceptions")
        root = (exc.get("root-exception") or "").splitlines()[:1]
        print(f"root exception: {root}", flush=True)
        # Each tick is emitted once; after a restore the elements since the restored
        # checkpoint are emitted again (at-least-once file sink). From the checkpoint:
        # a few seconds of duplicates. From scratch it would be everything before the kill.
        c = Counter(lines)
        dups = sum(v - 1 for v in c.values() if v > 1)
        before_kill = sum(1 for x in c if float(x) < killed_at)
        print(f"distinct ticks {len(c)}, duplicated {dups}, ticks before kill {before_kill}", flush=True)
        check(
            dups < before_kill,
            f"source resumed from checkpointed position "
            f"({dups} replayed < {before_kill} emitted before the kill)",
        )
        ticks = sorted(float(x) for x in c)
        gaps = [b - a for a, b in zip(ticks, ticks[1:], strict=False) if b - a > interval * 1.5]
        check(not gaps, f"no ticks lost across the failover (gaps > {interval * 1.5}s: {gaps[:5]})")

    t_cancel = time.time()
    rest.cancel(jid)
    final = rest.wait_state(jid, ("CANCELED", "FAILED", "FINISHED"), timeout=60)
    print(f"cancel via REST took {time.time() - t_cancel:.1f}s -> {final}", flush=True)
    check(final == "CANCELED", f"job CANCELED through Flink REST PATCH /jobs/<id>?mode=cancel (got {final})")
    try:
        beam_state = result.wait_until_finish(duration=30_000)
    except Exception as e:  # noqa: BLE001 - report what the job service says
        beam_state = f"raised {type(e).__name__}: {str(e).splitlines()[0][:200]}"
    print(f"Beam PipelineResult after Flink cancel: {beam_state}", flush=True)


def run_kafka(args, rest: FlinkRest) -> None:
    """Cross-language ReadFromKafka (Java KafkaIO, EMBEDDED env in the TaskManager) -> Python."""
    from apache_beam.io.kafka import ReadFromKafka
    from kafka import KafkaProducer
    from kafka.admin import KafkaAdminClient

    topic = args.topic or f"flink-smoke-{int(time.time())}"
    n = args.messages
    job_name = f"smoke-kafka-{int(time.time())}"
    out = os.path.join(args.out_dir, f"{job_name}.txt")
    print(
        f"--- kafka ({args.runner}) bootstrap={args.bootstrap} topic={topic} "
        f"expansion={args.expansion_service}",
        flush=True,
    )
    try:
        producer = KafkaProducer(bootstrap_servers=args.bootstrap)
    except Exception as e:  # noqa: BLE001 - report, do not trace back
        check(False, f"Kafka broker {args.bootstrap} reachable ({type(e).__name__}: {e})")
        return
    for i in range(n):
        producer.send(topic, key=f"k{i}".encode(), value=f"v{i}".encode())
    producer.flush()
    producer.close()

    opts = PipelineOptions(
        runner_args(args, job_name) + ["--streaming", f"--checkpointing_interval={args.checkpoint_ms}"]
    )
    p = beam.Pipeline(options=opts)
    (
        p
        | "Read"
        >> ReadFromKafka(
            consumer_config={
                "bootstrap.servers": args.bootstrap,
                "auto.offset.reset": "earliest",
                "group.id": job_name,
            },
            topics=[topic],
            with_metadata=True,
            expansion_service=args.expansion_service,
        )
        | "Fmt"
        >> beam.Map(lambda r: f"{r.topic}/{r.partition}/{r.offset}/{r.key.decode()}={r.value.decode()}")
        | "Append" >> beam.ParDo(AppendToFile(out))
    )
    t0 = time.time()
    result = p.run()
    job = rest.find_job(job_name, timeout=120, states=("RUNNING",))
    if check(job is not None, f"Flink lists {job_name} as RUNNING"):
        deadline = time.time() + args.seconds
        lines: list[str] = []
        while time.time() < deadline:
            lines = open(out).read().split() if os.path.exists(out) else []
            if len(lines) >= n:
                break
            time.sleep(1)
        print(f"read {len(lines)} records in {time.time() - t0:.1f}s", flush=True)
        values = sorted(x.split("=", 1)[1] for x in lines)
        check(
            sorted(set(values)) == sorted(f"v{i}" for i in range(n)),
            f"all {n} Kafka records reached the Python DoFn ({len(lines)} lines)",
        )
        rest.cancel(job["jid"])
        check(
            rest.wait_state(job["jid"], ("CANCELED",), 60) == "CANCELED",
            "kafka job CANCELED through Flink REST",
        )
    try:
        result.wait_until_finish(duration=30_000)
    except Exception:  # noqa: BLE001
        pass
    if not args.topic:
        try:
            admin = KafkaAdminClient(bootstrap_servers=args.bootstrap)
            admin.delete_topics([topic])
            admin.close()
        except Exception as e:  # noqa: BLE001
            print(f"could not delete topic {topic}: {e}", flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=["batch", "streaming", "all", "kafka"])
    ap.add_argument("--runner", choices=["portable", "flink", "flink-uber"], default="portable")
    ap.add_argument("--job-endpoint", default=os.environ.get("BEAM_JOB_ENDPOINT", "localhost:8099"))
    ap.add_argument("--worker-pool", default=os.environ.get("BEAM_WORKER_POOL", "localhost:50000"))
    ap.add_argument("--flink-rest", default=os.environ.get("FLINK_REST", "127.0.0.1:8081"))
    ap.add_argument("--flink-job-server-jar", default=os.environ.get("FLINK_JOB_SERVER_JAR"))
    ap.add_argument("--parallelism", type=int, default=1)
    ap.add_argument("--elements", type=int, default=100)
    ap.add_argument("--seconds", type=float, default=30)
    ap.add_argument("--fire-interval", type=float, default=0.5)
    ap.add_argument("--checkpoint-ms", type=int, default=5000)
    ap.add_argument("--kill-taskmanager-after", type=float, default=0)
    ap.add_argument("--out-dir", default=None)
    ap.add_argument(
        "--bootstrap",
        default=os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092"),
        help="kafka mode: PLAINTEXT bootstrap servers",
    )
    ap.add_argument(
        "--topic", default=None, help="kafka mode: topic (default: a new one, deleted afterwards)"
    )
    ap.add_argument("--messages", type=int, default=20)
    ap.add_argument(
        "--expansion-service",
        default=os.environ.get("BEAM_EXPANSION_SERVICE", "localhost:8097"),
        help="kafka mode: Java expansion service (scripts/flink.sh starts one with the EMBEDDED env)",
    )
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    args.out_dir = args.out_dir or tempfile.mkdtemp(
        prefix="flink-smoke-", dir=os.path.join(CACHE, "data") if os.path.isdir(CACHE) else None
    )
    os.makedirs(args.out_dir, exist_ok=True)
    rest = FlinkRest(args.flink_rest)
    try:
        ov = rest.call("/overview")
    except (urllib.error.URLError, OSError) as e:
        sys.exit(f"Flink REST {args.flink_rest} not reachable ({e}); run scripts/flink.sh start")
    print(
        f"flink {ov.get('flink-version')}: {ov.get('taskmanagers')} TM, "
        f"{ov.get('slots-available')}/{ov.get('slots-total')} slots free",
        flush=True,
    )
    if args.mode in ("batch", "all"):
        run_batch(args, rest)
    if args.mode in ("streaming", "all"):
        run_streaming(args, rest)
    if args.mode == "kafka":
        run_kafka(args, rest)
    passed = sum(ok for ok, _ in RESULTS)
    failed = len(RESULTS) - passed
    print(f"{passed} passed, {failed} failed")
    return 0 if failed == 0 and passed else 1


if __name__ == "__main__":
    sys.exit(main())
