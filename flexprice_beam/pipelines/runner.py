"""Running the collector and accounting for every event it read.

A bounded run is a success only when ``read = accepted + dead-lettered + filtered``:
billing data may be rejected, but never silently dropped.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass

import apache_beam as beam
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from flexprice_beam.config import CollectorConfig
from flexprice_beam.io.client import FlexpriceAuthError
from flexprice_beam.pipelines import collector

log = logging.getLogger("flexprice_beam.run")

#: Our local default. Beam's "DirectRunner" would first try Prism, which downloads a binary
#: at run time; FnApiRunner is the engine DirectRunner itself falls back to for batch jobs.
LOCAL_ENGINE = "FnApiRunner"


@dataclass
class RunSummary:
    read: int = 0
    mapped: int = 0
    filtered: int = 0
    invalid: int = 0
    mapping_failed: int = 0
    accepted: int = 0
    dead_lettered: int = 0
    dead_lettered_delivery: int = 0
    retries: int = 0
    requests: int = 0
    batches: int = 0
    dry_run: int = 0
    seconds: float = 0.0
    state: str = ""
    error: str | None = None

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
            f"dead-lettered:  {self.dead_lettered} (of which at delivery "
            f"{self.dead_lettered_delivery})",
            f"retried:        {self.retries} (requests {self.requests}, batches {self.batches})",
            f"took:           {self.seconds:.1f}s ({rate:,.0f} events/s)",
            "reconciled:     " + (
                "n/a: the run failed" if self.error else
                "yes, read = accepted + dead-lettered + filtered" if self.balanced else
                "NO — counts do not balance"),
        ]
        if self.error:
            lines.append(f"error:          {self.error}")
        return "\n".join(lines)


_COUNTERS = {
    "records_read": "read", "events_mapped": "mapped", "events_filtered": "filtered",
    "events_invalid": "invalid", "mapping_failed": "mapping_failed",
    "events_accepted": "accepted", "events_dead_lettered": "dead_lettered",
    "events_dead_lettered_delivery": "dead_lettered_delivery", "retries": "retries",
    "requests_sent": "requests", "batches_sent": "batches", "events_dry_run": "dry_run",
}


def summarize(result) -> RunSummary:
    summary = RunSummary()
    counters = result.metrics().query(MetricsFilter())["counters"]
    for c in counters:
        attr = _COUNTERS.get(c.key.metric.name)
        if attr:
            value = c.committed if c.committed is not None else c.attempted
            setattr(summary, attr, getattr(summary, attr) + int(value or 0))
    return summary


def pipeline_options(beam_args: list[str]) -> PipelineOptions:
    options = PipelineOptions(beam_args)
    std = options.view_as(StandardOptions)
    if std.runner in (None, "DirectRunner", "direct"):
        std.runner = LOCAL_ENGINE
    return options


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
        sink: beam.PTransform | None = None, wait: bool = True) -> RunSummary:
    """Build, run and (for bounded runs) wait; returns the reconciled counts."""
    options = pipeline_options(list(beam_args or []))
    started = time.monotonic()
    p = beam.Pipeline(options=options)
    collector.build(p, cfg, sink=sink)
    source = "generate" if cfg.input.generate is not None else "kafka"
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
    except Exception as exc:  # the runner wraps worker errors in its own exception types
        message = _auth_message(exc)
        summary.error = message or f"{type(exc).__name__}: {str(exc).strip()[:2000]}"
        summary.state = "FAILED"
        log.error("Pipeline failed: %s", summary.error)
    summary.seconds = time.monotonic() - started
    return summary
