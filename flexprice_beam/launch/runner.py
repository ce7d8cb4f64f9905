"""Running the collector and accounting for every event it read.

A bounded run is a success only when ``read = accepted + dead-lettered + filtered``:
billing data may be rejected, but never silently dropped.  While a local run goes on, the
same numbers are served live (``ops.metrics_server``) and drawn (``ops.progress``).
"""

from __future__ import annotations

import logging
import os
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import apache_beam as beam
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import (
    DirectOptions,
    PipelineOptions,
    PortableOptions,
    PrismRunnerOptions,
    StandardOptions,
)

from flexprice_beam.core import live, shutdown
from flexprice_beam.core.config import CollectorConfig
from flexprice_beam.io.api import FlexpriceAuthError
from flexprice_beam.io.expansion import ENV_ADDRESS, LocalExpansionService
from flexprice_beam.io.secrets import SecretError, resolve_api_key
from flexprice_beam.launch.metrics_server import MetricsServer
from flexprice_beam.launch.progress import Progress
from flexprice_beam.pipelines import collector

log = logging.getLogger("flexprice_beam.run")

#: Our local default (collector.LOCAL_ENGINE). Beam's "DirectRunner" would first try Prism,
#: which downloads a binary at run time; FnApiRunner is the engine DirectRunner itself falls
#: back to for batch jobs. These names all mean it.
LOCAL_ENGINE = collector.LOCAL_ENGINE
LOCAL_NAMES = (LOCAL_ENGINE, "FnApiRunner", "DirectRunner", "direct")


@dataclass
class RunSummary:
    read: int = 0
    mapped: int = 0
    valid: int = 0
    filtered: int = 0
    invalid: int = 0
    mapping_failed: int = 0
    accepted: int = 0
    dead_lettered: int = 0
    dead_lettered_delivery: int = 0
    #: {stage: {status: n}} from the ``dead_lettered_<stage>_<status>`` counters
    dead_letters: dict = field(default_factory=dict)
    retries: int = 0
    requests: int = 0
    batches: int = 0
    dry_run: int = 0
    seconds: float = 0.0
    state: str = ""
    error: str | None = None
    #: ``run --read-back``: what the API holds of a sample of the accepted events
    #: (``io.readback.Held.as_dict()``) and its one-line rendering
    held: dict | None = None
    held_text: str | None = None

    @property
    def balanced(self) -> bool:
        return self.read == self.accepted + self.dry_run + self.dead_lettered + self.filtered

    @property
    def ok(self) -> bool:
        return self.error is None and self.balanced

    def as_dict(self) -> dict:
        return {**asdict(self), "balanced": self.balanced, "ok": self.ok}

    def render(self) -> str:
        rate = self.read / self.seconds if self.seconds else 0.0
        lines = [
            f"read:           {self.read}",
            f"mapped:         {self.mapped} (filtered {self.filtered}, mapping failed "
            f"{self.mapping_failed}, invalid {self.invalid})",
            f"accepted:       {self.accepted}" + (
                f" (dry run: {self.dry_run} would be sent)" if self.dry_run else ""),
            f"dead-lettered:  {self.dead_lettered}" + self._by_stage(),
            f"retried:        {self.retries} (requests {self.requests}, batches {self.batches})",
            f"took:           {self.seconds:.1f}s ({rate:,.0f} events/s)",
            "reconciled:     " + (
                "n/a: the run failed" if self.error else
                "n/a: stopped while streaming; what was read but not yet delivered is read "
                "again on restart (offsets are committed only behind delivery)"
                if self.state == "STOPPED" else
                "yes, read = accepted + dead-lettered + filtered" if self.balanced else
                "NO — counts do not balance"),
        ]
        if self.held_text:
            lines.append(f"API holds:      {self.held_text}")
        if self.error:
            lines.append(f"error:          {self.error}")
        return "\n".join(lines)

    def _by_stage(self) -> str:
        if not self.dead_letters:
            return ""
        known = ["mapping", "validation", "delivery"]
        order = known + sorted(set(self.dead_letters) - set(known))
        parts = []
        for stage in order:
            statuses = self.dead_letters.get(stage)
            if not statuses:
                continue
            detail = ", ".join(f"{s if s != 'none' else 'no status'}: {n}"
                               for s, n in sorted(statuses.items()))
            parts.append(f"{stage} {sum(statuses.values())} ({detail})")
        return " — " + "; ".join(parts)


_COUNTERS = {
    "records_read": "read", "events_mapped": "mapped", "events_valid": "valid",
    "events_filtered": "filtered",
    "events_invalid": "invalid", "mapping_failed": "mapping_failed",
    "events_accepted": "accepted", "events_dead_lettered": "dead_lettered",
    "events_dead_lettered_delivery": "dead_lettered_delivery", "retries": "retries",
    "requests_sent": "requests", "batches_sent": "batches", "events_dry_run": "dry_run",
}


def summarize(result) -> RunSummary:
    totals: dict[str, int] = {}
    for c in result.metrics().query(MetricsFilter())["counters"]:
        name = c.key.metric.name
        value = c.committed if c.committed is not None else c.attempted
        totals[name] = totals.get(name, 0) + int(value or 0)
    return summary_of(totals)


def summary_of(totals: dict[str, int]) -> RunSummary:
    """The summary from counter totals (the runner's, or this process's live copy)."""
    summary = RunSummary()
    for name, value in totals.items():
        attr = _COUNTERS.get(name)
        if attr:
            setattr(summary, attr, value)
    summary.dead_letters = live.dead_letters_by_stage(totals)
    return summary


def expected_total(cfg: CollectorConfig) -> int | None:
    """How many records a bounded run reads (for the progress bar); None = unbounded."""
    if cfg.input.generate is not None:
        return cfg.input.generate.count or None
    return cfg.input.kafka.max_records if cfg.input.kafka is not None else None


def runs_in_process(options: PipelineOptions) -> bool:
    """Only an in-process runner's DoFns update this process's live registry."""
    runner = options.view_as(StandardOptions).runner
    mode = options.view_as(DirectOptions).direct_running_mode
    name = runner if isinstance(runner, str) else type(runner).__name__
    return name in (*LOCAL_NAMES, "SwitchingDirectRunner", "PrismRunner", collector.LOCAL_PRISM,
                    "LocalPrismRunner") and \
        mode in (None, "in_memory", "multi_threading")


def _start_metrics(metrics: str | MetricsServer | None, options: PipelineOptions
                   ) -> tuple[MetricsServer | None, bool]:
    """(server, owned): start one for an address; a busy port is a warning, not a failure."""
    if metrics is None:
        return None, False
    if not runs_in_process(options):
        log.info("Live metrics serve local runs only; use the runner's own metrics "
                 "(Flink UI, Dataflow monitoring) for this one")
        return None, False
    if isinstance(metrics, MetricsServer):
        return metrics, False
    try:
        return MetricsServer(metrics).start(), True
    except (OSError, ValueError) as exc:
        log.warning("Metrics endpoint %s not started: %s", metrics, exc)
        return None, False


def pipeline_options(beam_args: list[str], cfg: CollectorConfig | None = None
                     ) -> PipelineOptions:
    """Beam options with our local defaults: FnApiRunner for bounded runs; Prism (streaming)
    for Kafka input without a range or limit (``KafkaInput.bounded``), which must consume
    until stopped."""
    options = PipelineOptions(beam_args)
    std = options.view_as(StandardOptions)
    kafka = cfg.input.kafka if cfg is not None else None
    unbounded_kafka = kafka is not None and not kafka.bounded
    if std.runner is None and unbounded_kafka:
        std.runner = collector.LOCAL_PRISM
        std.streaming = True
        prism = options.view_as(PrismRunnerOptions)
        prism.prism_location = prism.prism_location or find_prism()
    elif std.runner == "PrismRunner":
        std.runner = collector.LOCAL_PRISM
    elif std.runner is None or std.runner in LOCAL_NAMES:
        std.runner = LOCAL_ENGINE
    return options


def is_prism(options: PipelineOptions) -> bool:
    return "prism" in str(options.view_as(StandardOptions).runner).lower()


def _local_prism(options: PipelineOptions):
    """Start Prism ourselves (launch/prism.py) unless a ``--job_endpoint`` was given."""
    if not is_prism(options):
        return None
    portable = options.view_as(PortableOptions)
    if portable.job_endpoint:
        return None
    from flexprice_beam.launch.prism import LocalPrism

    binary = options.view_as(PrismRunnerOptions).prism_location or find_prism()
    prism = LocalPrism(binary).start(timeout=60)
    portable.job_endpoint = prism.address
    return prism


def find_prism() -> str:
    """Prism built by ``scripts/kafka.sh install-prism``; Beam would otherwise download it."""
    for c in (os.environ.get("BEAM_PRISM_LOCATION"),
              Path(__file__).resolve().parents[2] / ".cache/bin/prism"):
        if c and Path(c).is_file():
            return str(c)
    raise ValueError("unbounded Kafka input runs on Prism, and no Prism binary was found: run "
                     "`scripts/kafka.sh install-prism` (or set BEAM_PRISM_LOCATION), or bound "
                     "the run with input.kafka.stop_at_end (or max_records / max_read_time)")


_KAFKA_ERROR = re.compile(r"org\.apache\.kafka\.common\.errors\.(\w+): ([^\n\\]+)")
_SSL_CAUSE = re.compile(r"(SSLHandshakeException: [^\n\\]+)")


def kafka_failure(text: str) -> str | None:
    """The Java Kafka client's own error inside a runner's stack trace, said plainly."""
    m = _KAFKA_ERROR.search(text)
    if m is None:
        return None
    message = f"Kafka: {m.group(1)}: {m.group(2).strip()}"
    if m.group(1) == "SaslAuthenticationException":
        message += " — check input.kafka.sasl.user / password and mechanism"
    ssl = _SSL_CAUSE.search(text)
    if ssl:
        message += f" ({ssl.group(1).strip()[:300]}) — check input.kafka.tls.ca_file"
    return message


def kafka_read_failure(exc: BaseException) -> str | None:
    """The bounded reader's own message (``KafkaReadError``), without the runner's wrapping."""
    if type(exc).__name__ == "KafkaReadError":
        return str(exc).strip()
    m = re.search(r"KafkaReadError: (Kafka[^\n]+)", str(exc))
    return m.group(1).strip() if m else None


def _auth_message(exc: BaseException) -> str | None:
    """Find the FlexpriceAuthError text inside whatever wrapper the runner raised."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, FlexpriceAuthError):
            return str(exc)
        text = str(exc)
        if "FlexpriceAuthError" in text:
            tail = text.split("FlexpriceAuthError:", 1)[-1].strip().splitlines()
            return tail[0] if tail else text
        exc = exc.__cause__ or exc.__context__
    return None


def run(cfg: CollectorConfig, beam_args: list[str] | None = None,
        sink: beam.PTransform | None = None, wait: bool = True, *,
        dead_letter_sink: beam.PTransform | None = None,
        metrics: str | MetricsServer | None = None, progress: str = "off",
        status_interval: float = 10.0) -> RunSummary:
    """Build, run and (for bounded runs) wait; returns the reconciled counts.

    ``metrics`` is an address to serve /metrics, /ping and /stats on for the run (or a
    server the caller started and stops); ``progress`` is auto|bar|lines|off.
    """
    options = pipeline_options(list(beam_args or []), cfg)
    started = time.monotonic()
    if sink is None and runs_in_process(options):
        try:  # the workers are this process: a missing key source fails here, plainly
            resolve_api_key(cfg.output.flexprice)
        except SecretError as exc:
            log.error("Pipeline not started: %s", exc)
            return RunSummary(state="FAILED", error=str(exc))
    expansion = kafka_expansion(cfg, options)
    try:
        prism = _local_prism(options)
    except Exception:
        if expansion is not None:
            expansion.stop()
        raise
    p = beam.Pipeline(options=options)
    collector.build(p, cfg, sink=sink, dead_letter_sink=dead_letter_sink)
    source = "generate" if cfg.input.generate is not None else "kafka"
    total = expected_total(cfg)
    live.LIVE.begin(total)
    server, owned = _start_metrics(metrics if wait else None, options)
    bar = Progress(progress if wait else "off", status_interval, total).start()
    log.info("Input type %s is now active (runner %s)", source,
             options.view_as(StandardOptions).runner)
    summary = RunSummary()
    try:
        result = p.run()
        if not wait:
            return summary
        state = result.wait_until_finish()
        summary = summarize(result)
        summary.state = str(state)
    except KeyboardInterrupt:
        if not shutdown.STOP.requested.is_set():
            raise
        # SIGINT/SIGTERM on a run that cannot stop its input (Kafka): what this process
        # counted so far; the caller exits with 128 + signal.
        summary = summary_of(live.LIVE.snapshot()["counters"])
        summary.state = "STOPPED"
    except Exception as exc:  # the runner wraps worker errors in its own exception types
        message = _auth_message(exc) or kafka_failure(str(exc)) or kafka_read_failure(exc)
        summary.error = message or f"{type(exc).__name__}: {str(exc).strip()[:2000]}"
        summary.state = "FAILED"
        log.error("Pipeline failed: %s", summary.error)
    finally:
        bar.stop()
        summary.seconds = time.monotonic() - started
        if wait:
            live.LIVE.end("failed" if summary.error else "done", summary.error, summary.as_dict())
        if owned and server is not None:
            server.stop()
        if wait:
            _stop_services(prism, expansion)
    return summary


def _stop_services(prism, expansion) -> None:
    """Prism first (no new bundles), then the JVM that reads Kafka for it.  The runner's
    gRPC streams in this process then end with UNAVAILABLE: expected, so not printed."""
    if prism is not None:
        shutdown.quiet_rpc_errors()
        prism.stop()
    if expansion is not None:
        expansion.stop()


def kafka_expansion(cfg: CollectorConfig, options: PipelineOptions):
    """Point Kafka input at an expansion service; start a local one when none is given."""
    if cfg.input.kafka is None:
        return None
    if cfg.input.kafka.bounded and not options.view_as(StandardOptions).streaming:
        return None  # the bounded range reader is Python (io/kafka_range.py)
    ours = options.view_as(collector.CollectorOptions)
    if not ours.kafka_expansion_service:
        ours.kafka_expansion_service = os.environ.get(ENV_ADDRESS) or None
    if ours.kafka_expansion_service:
        return None
    service = LocalExpansionService().start()
    ours.kafka_expansion_service = service.address
    return service
