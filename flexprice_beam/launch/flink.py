"""``flexprice-beam run --runner flink``: the collector as a streaming job on a Flink cluster.

The job goes through Beam's portable job server (``PortableRunner``), which hands it to the
Flink cluster; our Python DoFns run in an SDK worker pool next to each TaskManager
(``--environment_type=EXTERNAL``) and ``ReadFromKafka`` is expanded by a Java expansion
service whose transforms run inside the TaskManager (EMBEDDED).  ``scripts/flink.sh start``
runs all of that locally; ``flink.sh env`` prints the addresses.

Wait semantics: a streaming job has no end, so by default the CLI returns as soon as Flink
reports every task RUNNING and prints the Flink job id (and how to cancel it).  With
``--attach`` it stays, logs a status line every ``--status-interval`` seconds, and Ctrl-C /
SIGTERM cancels the job (a second signal leaves it running and exits).  ``runner.run`` is
not used here: with ``wait=True`` it would block in ``wait_until_finish`` until the job
ends (and a cancel through Flink reports FAILED/JobCancellationException from the portable
job service); with ``wait=False`` it returns no job handle.

Offsets (see docs/runners.md): ``commit_offset_in_finalize`` — the UnboundedSource Kafka
read commits a partition's offsets when a checkpoint that contains them completes, and a
checkpoint only completes after the sink finished its bundle, i.e. after every event before
the barrier was accepted or dead-lettered.  That needs ``--finish_bundle_before_checkpointing``
(set here): by default Beam's Flink operators snapshot the outputs of the bundle they finish
at a checkpoint into that checkpoint instead of sending them on before the barrier, so a
checkpoint — and the commit — could complete while those records were still upstream of
the sink (tests/test_flink.py caught it: committed offsets ahead of delivery).  The
expansion service must run with ``--experiments=use_deprecated_read`` (``flink.sh`` does):
Beam's default SDF read commits from a separate 5-minute-window branch, unrelated to
delivery.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import signal
import socket
import threading
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field

import apache_beam as beam
from apache_beam.options.pipeline_options import GoogleCloudOptions, PipelineOptions

from flexprice_beam.core.config import CollectorConfig
from flexprice_beam.pipelines import collector

log = logging.getLogger("flexprice_beam.flink")

DEFAULT_REST = "127.0.0.1:8081"
DEFAULT_JOB_ENDPOINT = "localhost:8099"
DEFAULT_WORKER_POOL = "localhost:50000"
DEFAULT_EXPANSION = "localhost:8097"
#: (our variable, the one ``scripts/flink.sh env`` exports)
ENV_REST = ("FLEXPRICE_FLINK_REST", "FLINK_REST")
ENV_JOB_ENDPOINT = ("FLEXPRICE_FLINK_JOB_ENDPOINT", "BEAM_JOB_ENDPOINT")
ENV_WORKER_POOL = ("FLEXPRICE_FLINK_WORKER_POOL", "BEAM_WORKER_POOL")
ENV_EXPANSION = ("FLEXPRICE_FLINK_EXPANSION_SERVICE", "BEAM_EXPANSION_SERVICE")

_TERMINAL = ("FINISHED", "CANCELED", "FAILED")
MAX_BUNDLE_SIZE = 5000


class FlinkError(RuntimeError):
    pass


def _env(names: tuple[str, ...], default: str) -> str:
    for name in names:
        if os.environ.get(name):
            return os.environ[name]
    return default


@dataclass
class FlinkTarget:
    rest: str = DEFAULT_REST
    job_endpoint: str = DEFAULT_JOB_ENDPOINT
    worker_pool: str = DEFAULT_WORKER_POOL
    expansion_service: str = DEFAULT_EXPANSION

    @classmethod
    def from_env(cls, flink_master: str | None = None) -> FlinkTarget:
        return cls(rest=flink_master or _env(ENV_REST, DEFAULT_REST),
                   job_endpoint=_env(ENV_JOB_ENDPOINT, DEFAULT_JOB_ENDPOINT),
                   worker_pool=_env(ENV_WORKER_POOL, DEFAULT_WORKER_POOL),
                   expansion_service=_env(ENV_EXPANSION, DEFAULT_EXPANSION))


def default_job_name() -> str:
    return f"flexprice-beam-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"


def _flag(arg: str) -> str | None:
    return arg.split("=", 1)[0] if arg.startswith("--") else None


def with_overrides(ours: list[str], extra: list[str]) -> list[str]:
    """``ours`` without the flags ``extra`` gives again, then ``extra``: raw options after
    ``--`` win, and no flag appears twice (Beam 2.62's ``retain_unknown_options``, which the
    portable runner uses to send the options, fails on a repeated unknown flag)."""
    given = {f for f in map(_flag, extra) if f}
    return [a for a in ours if _flag(a) not in given] + extra


def beam_args(target: FlinkTarget, *, job_name: str, checkpointing_interval: float = 10.0,
              parallelism: int | None = None, batching_period: float = 1.0) -> list[str]:
    """The Beam options ``--runner flink`` stands for (raw options after ``--`` win).

    The sink sends what it holds when its bundle ends, and Flink ends a bundle after 1 s
    (``max_bundle_time_mills``) or 1000 elements: a ``batching.period`` above 1 s stretches
    the bundle time to match, so batches may really grow for that long at low rates."""
    args = [
        "--runner=PortableRunner", f"--job_endpoint={target.job_endpoint}",
        "--environment_type=EXTERNAL", f"--environment_config={target.worker_pool}",
        "--streaming", f"--checkpointing_interval={max(int(checkpointing_interval * 1000), 1)}",
        # Every operator finishes its bundle and sends the outputs on BEFORE the barrier.
        # Beam's default snapshots bundle outputs into the checkpoint instead, so a checkpoint
        # (and its Kafka commit) could complete while those records had not reached the sink.
        "--finish_bundle_before_checkpointing",
        # Throughput (docs/benchmarks.md, "K3"): chained operators hand elements on without
        # a serialise+deserialise copy (Beam elements are immutable), and bundles of up to
        # 5000 elements instead of 1000: each bundle costs a Fn API round trip, a metrics
        # update on the TaskManager and a finish_bundle in Python. Bundles still end after
        # max_bundle_time_mills (1 s) and at every checkpoint.
        "--object_reuse", f"--max_bundle_size={MAX_BUNDLE_SIZE}",
        f"--kafka_expansion_service={target.expansion_service}", f"--job_name={job_name}",
    ]
    if parallelism:
        args.append(f"--parallelism={parallelism}")
    if batching_period > 1.0:
        args.append(f"--max_bundle_time_mills={int(batching_period * 1000)}")
    return args


class FlinkRest:
    """The few Flink REST calls we need (``/jobs``, checkpoints, cancel)."""

    def __init__(self, address: str, timeout: float = 10.0):
        self.base = (address if address.startswith(("http://", "https://"))
                     else f"http://{address}").rstrip("/")
        self.timeout = timeout

    def call(self, path: str, method: str = "GET"):
        req = urllib.request.Request(self.base + path, method=method)
        with urllib.request.urlopen(req, timeout=self.timeout) as resp:
            body = resp.read()
        return json.loads(body) if body else {}

    def reachable(self) -> bool:
        try:
            self.call("/overview")
            return True
        except (OSError, ValueError):
            return False

    def jobs(self) -> list[dict]:
        return self.call("/jobs/overview")["jobs"]

    def find_job(self, name: str, since_ms: int) -> dict | None:
        found = [j for j in self.jobs() if j["name"] == name and j.get("start-time", 0) >= since_ms]
        return max(found, key=lambda j: j.get("start-time", 0)) if found else None

    def job(self, jid: str) -> dict:
        return self.call(f"/jobs/{jid}")

    def checkpoints(self, jid: str) -> dict:
        return self.call(f"/jobs/{jid}/checkpoints")

    def root_exception(self, jid: str) -> str | None:
        try:
            exc = self.call(f"/jobs/{jid}/exceptions").get("root-exception")
        except (OSError, ValueError):
            return None
        return exc.strip().splitlines()[0] if exc else None

    def cancel(self, jid: str) -> None:
        self.call(f"/jobs/{jid}?mode=cancel", method="PATCH")

    def cancel_and_wait(self, jid: str, timeout: float) -> str:
        """Cancel ``jid`` and return its state once it ended (or when ``timeout`` ran out)."""
        self.cancel(jid)
        return self.wait_state(jid, _TERMINAL, timeout)

    def wait_state(self, jid: str, states: tuple[str, ...], timeout: float) -> str:
        deadline = time.monotonic() + timeout
        state = self.job(jid)["state"]
        while state not in states and time.monotonic() < deadline:
            time.sleep(0.5)
            state = self.job(jid)["state"]
        return state

    def ui_url(self, jid: str) -> str:
        return f"{self.base}/#/job/running/{jid}/overview"


@dataclass
class Submission:
    job_name: str
    rest: str
    job_id: str | None = None
    beam_job_id: str | None = None
    state: str = "SUBMITTED"
    tasks_running: bool = False
    submitted_s: float = 0.0  # Beam job server accepted the job
    running_s: float = 0.0  # Flink reports every task RUNNING
    options: dict = field(default_factory=dict)
    error: str | None = None

    def as_dict(self) -> dict:
        return asdict(self)

    def render(self) -> str:
        rest = FlinkRest(self.rest)
        lines = [f"job name:       {self.job_name}",
                 f"flink job id:   {self.job_id or '(not found)'}",
                 f"state:          {self.state}" + (
                     f" (all tasks running {self.running_s:.1f}s after submission)"
                     if self.tasks_running else "")]
        if self.job_id:
            lines += [f"web UI:         {rest.ui_url(self.job_id)}",
                      f"cancel:         curl -X PATCH '{rest.base}/jobs/{self.job_id}?mode=cancel'"]
        if self.error:
            lines.append(f"error:          {self.error}")
        return "\n".join(lines)


def _port_open(address: str) -> bool:
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host or "localhost", int(port)), timeout=2):
            return True
    except (OSError, ValueError):
        return False


def preflight(target: FlinkTarget, cfg: CollectorConfig, rest: FlinkRest) -> None:
    """Fail early, naming what is not there (``scripts/flink.sh start`` starts it all)."""
    missing = []
    if not rest.reachable():
        missing.append(f"Flink REST {rest.base}")
    if not _port_open(target.job_endpoint):
        missing.append(f"Beam job server {target.job_endpoint}")
    if cfg.input.kafka is not None and not _port_open(target.expansion_service):
        missing.append(f"Java expansion service {target.expansion_service}")
    if missing:
        raise FlinkError("not reachable: " + ", ".join(missing) +
                         " (local cluster: scripts/flink.sh start; see docs/runners.md)")


def for_cluster(cfg: CollectorConfig) -> CollectorConfig:
    """The SDK workers do not run in our working directory: make the dead-letter path and
    the API key file absolute."""
    out = cfg.output
    path = out.dead_letter.path
    if path and "://" not in path and not os.path.isabs(path):
        out = out.model_copy(update={"dead_letter": out.dead_letter.model_copy(
            update={"path": os.path.abspath(path)})})
    key_file = out.flexprice.api_key_file
    if key_file is not None and not os.path.isabs(key_file):
        out = out.model_copy(update={"flexprice": out.flexprice.model_copy(
            update={"api_key_file": os.path.abspath(key_file)})})
    return cfg if out is cfg.output else cfg.model_copy(update={"output": out})


def submit(cfg: CollectorConfig, args: list[str], rest: FlinkRest, *,
           timeout: float = 240.0) -> Submission:
    """Build the collector, submit it and wait until Flink runs all its tasks (or fails)."""
    options = PipelineOptions(args)
    job_name = options.view_as(GoogleCloudOptions).job_name or default_job_name()
    sub = Submission(job_name=job_name, rest=rest.base,
                     # retain: the Flink options (checkpointing_interval, …) are the job
                     # server's, unknown here; PortableRunner adds them from its description
                     options={k: v for k, v in options.get_all_options(
                         drop_default=True, retain_unknown_options=True).items()
                              if k not in ("config",)})
    since_ms = int(time.time() * 1000) - 5000
    started = time.monotonic()
    p = beam.Pipeline(options=options)
    collector.build(p, for_cluster(cfg))
    result = p.run()  # PortableRunner: returns once the job server accepted the job
    sub.beam_job_id = getattr(result, "_job_id", None)
    sub.submitted_s = time.monotonic() - started
    log.info("Job %s accepted by the Beam job server in %.1fs; waiting for Flink",
             job_name, sub.submitted_s)
    deadline = started + timeout
    while time.monotonic() < deadline:
        job = rest.find_job(job_name, since_ms)
        if job is not None:
            sub.job_id, sub.state = job["jid"], job["state"]
            if sub.state in _TERMINAL:
                break
            info = rest.job(sub.job_id)
            if info["state"] == "RUNNING" and all(
                    v["status"] == "RUNNING" for v in info["vertices"]):
                sub.tasks_running = True
                sub.running_s = time.monotonic() - started
                break
        else:
            state = _beam_state(result)
            if state in ("FAILED", "CANCELLED", "DONE"):
                sub.state = state
                sub.error = "the Beam job server reports the job " + state + \
                    " before Flink listed it (see `scripts/flink.sh logs jobserver`)"
                return sub
        time.sleep(1)
    if sub.job_id and sub.state in ("FAILED", "RESTARTING"):
        sub.error = rest.root_exception(sub.job_id)
    elif not sub.tasks_running and not sub.error:
        sub.error = f"Flink did not report every task RUNNING within {timeout:.0f}s"
    return sub


def _beam_state(result) -> str | None:
    try:
        return str(result.state)
    except Exception:  # the job server may already have forgotten the invocation
        return None


def _status_line(rest: FlinkRest, jid: str, state: str) -> str:
    try:
        cps = rest.checkpoints(jid)
    except (OSError, ValueError):
        return f"status: {state}"
    counts = cps.get("counts", {})
    last = (cps.get("latest") or {}).get("completed") or {}
    text = (f"status: {state} · checkpoints {counts.get('completed', 0)} completed, "
            f"{counts.get('failed', 0)} failed, {counts.get('in_progress', 0)} in progress")
    if last:
        ago = time.time() - last.get("latest_ack_timestamp", 0) / 1000
        text += f" · last #{last.get('id')} {ago:.0f}s ago ({last.get('state_size', 0):,} B)"
    if counts.get("restored"):
        text += f" · restored from a checkpoint {counts['restored']}x"
    return text


def attach(rest: FlinkRest, jid: str, status_interval: float = 10.0) -> int:
    """Follow the job until it ends; the first SIGINT/SIGTERM cancels it and waits."""
    stop = threading.Event()
    previous = {}

    def on_signal(signum, _frame):
        if stop.is_set():  # second signal: leave the job alone and go
            os.write(2, b"second signal: exiting, the Flink job is NOT cancelled\n")
            os._exit(128 + signum)
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        previous[sig] = signal.signal(sig, on_signal)
    try:
        next_status = time.monotonic() + status_interval
        while not stop.wait(1.0):
            try:
                state = rest.job(jid)["state"]
            except (OSError, ValueError) as exc:
                log.warning("Flink REST: %s", exc)
                continue
            if state in _TERMINAL:
                log.info("Flink job %s ended: %s", jid, state)
                if state == "FAILED":
                    log.error("cause: %s", rest.root_exception(jid))
                return 0 if state != "FAILED" else 1
            if time.monotonic() >= next_status:
                log.info("%s", _status_line(rest, jid, state))
                next_status = time.monotonic() + status_interval
        log.info("Cancelling Flink job %s (a second Ctrl-C exits without waiting)", jid)
        state = rest.cancel_and_wait(jid, 120)
        log.info("Flink job %s: %s", jid, state)
        return 0 if state == "CANCELED" else 1
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def run_cli(cfg: CollectorConfig, *, flink_master: str | None, parallelism: int | None,
            checkpointing_interval: float, attach_job: bool, status_interval: float,
            extra_args: list[str], summary_json: str | None = None) -> int:
    """``flexprice-beam run --runner flink``: exit 0 submitted (or cancelled when attached),
    1 the job failed or did not start, 2 the cluster is not reachable."""
    target = FlinkTarget.from_env(flink_master)
    rest = FlinkRest(target.rest)
    args = with_overrides(beam_args(target, job_name=default_job_name(),
                                    checkpointing_interval=checkpointing_interval,
                                    parallelism=parallelism,
                                    batching_period=cfg.output.flexprice.batching.period),
                          list(extra_args))
    try:
        preflight(target, cfg, rest)
    except FlinkError as exc:
        log.error("Cannot submit to Flink: %s", exc)
        return 2
    log.info("Submitting a streaming job to Flink %s (job server %s, SDK workers %s, "
             "checkpoints every %gs%s)", rest.base, target.job_endpoint, target.worker_pool,
             checkpointing_interval, f", parallelism {parallelism}" if parallelism else "")
    sub = submit(cfg, args, rest)
    if summary_json:
        with open(summary_json, "w", encoding="utf-8") as f:
            json.dump(sub.as_dict(), f, indent=2, default=str)
    print(sub.render(), flush=True)
    if sub.error or not sub.tasks_running:
        return 1
    if not attach_job:
        return 0
    return attach(rest, sub.job_id, status_interval)
