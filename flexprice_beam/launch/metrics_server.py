"""The Bento-style monitoring endpoint of a local run (default ``0.0.0.0:4195``).

* ``/metrics`` — Prometheus text, read from the live registry at scrape time;
* ``/ping``    — 200 while the collector can deliver, 503 once the sink stopped on 401/403
  (or the run failed), so an orchestrator's probe notices a revoked key;
* ``/stats``   — JSON: counters, per-stage counts and the reconciliation
  ``read = accepted + dead-lettered + filtered`` (with what is still in flight).
"""

from __future__ import annotations

import json
import logging
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from flexprice_beam.core.live import LIVE, LiveRegistry, dead_letters_by_stage, stage_counts

log = logging.getLogger("flexprice_beam.metrics")

_HELP = {
    "records_read": "Records read from the input",
    "events_mapped": "Records mapped to events",
    "events_filtered": "Records a mapping_fn filtered out on purpose",
    "mapping_failed": "Records that failed mapping (dead-lettered)",
    "events_valid": "Mapped events that passed validation",
    "events_invalid": "Mapped events that failed validation (dead-lettered)",
    "events_accepted": "Events Flexprice accepted (2xx)",
    "events_dead_lettered": "Events written to the dead letters, all stages",
    "events_dead_lettered_delivery": "Events dead-lettered by the sink",
    "events_dry_run": "Events a dry run would have sent",
    "retries": "Requests retried (429, 5xx, connection errors, timeouts)",
    "requests_sent": "HTTP requests to Flexprice",
    "batches_sent": "API batches completed",
    "throttling_seconds": "Seconds requests were held back by backoff and Retry-After "
                          "(Beam: cumulativeThrottlingSeconds)",
    "request_duration_seconds": "Flexprice request latency, first attempts and retries",
    "concurrency_limit": "Requests allowed in flight per process (max_in_flight; adaptive: now)",
}


def _split(name: str) -> tuple[str, dict[str, str]]:
    """Dynamic Beam names → one family with labels (Prometheus style)."""
    if name.startswith("dead_lettered_"):
        return "", {}  # exported from dead_letters_by_stage
    if name.startswith("retries_"):
        return "retries_by_cause", {"cause": name[len("retries_"):]}
    return name, {}


class _LiveCollector:
    """A prometheus_client collector that turns a live snapshot into metric families."""

    def __init__(self, registry: LiveRegistry):
        self._live = registry

    def collect(self) -> Iterator[Metric]:
        snap = self._live.snapshot()
        counters = snap["counters"]
        labelled: dict[str, CounterMetricFamily] = {}
        for name, value in sorted(counters.items()):
            family, labels = _split(name)
            if not family:
                continue
            if labels:
                fam = labelled.get(family)
                if fam is None:
                    fam = labelled[family] = CounterMetricFamily(
                        f"flexprice_{family}", "Retries by cause (status or 'connection')",
                        labels=list(labels))
                fam.add_metric(list(labels.values()), value)
            else:
                yield CounterMetricFamily(f"flexprice_{name}", _HELP.get(name, name), value=value)
        yield from labelled.values()
        dead = CounterMetricFamily("flexprice_dead_lettered", "Dead letters by stage and status",
                                   labels=["stage", "status"])
        for stage, statuses in sorted(dead_letters_by_stage(counters).items()):
            for status, n in sorted(statuses.items()):
                dead.add_metric([stage, status], n)
        yield dead
        for name, value in sorted(snap["gauges"].items()):
            yield GaugeMetricFamily(f"flexprice_{name}", _HELP.get(name, name), value=value)
        rec = stage_counts(counters)["reconciliation"]
        yield GaugeMetricFamily("flexprice_events_in_flight",
                                "Events read but not yet accepted, dead-lettered or filtered",
                                value=rec["in_flight"])
        # Distributions (integers, e.g. request_latency_ms for Beam) stay in /stats; the
        # scrape has histograms in seconds, Prometheus' base unit
        for name, h in sorted(snap["histograms"].items()):
            yield HistogramMetricFamily(f"flexprice_{name}", _HELP.get(name, name),
                                        buckets=h["buckets"], sum_value=h["sum"])
        yield GaugeMetricFamily("flexprice_up", "1 while the collector can deliver",
                                value=1 if self._live.healthy else 0)
        yield GaugeMetricFamily("flexprice_uptime_seconds", "Seconds since the run began",
                                value=snap["uptime_s"])


def stats(registry: LiveRegistry = LIVE) -> dict[str, Any]:
    """The ``/stats`` document."""
    snap = registry.snapshot()
    uptime = snap["uptime_s"] or 0.0
    read = snap["counters"].get("records_read", 0)
    return {
        "state": snap["state"], "error": snap["error"], "stopped": snap["stopped"],
        "uptime_s": uptime, "total": snap["total"],
        "events_per_s": round(read / uptime, 1) if uptime else 0.0,
        **stage_counts(snap["counters"]),
        "counters": snap["counters"], "gauges": snap["gauges"],
        "distributions": snap["distributions"], "histograms": snap["histograms"],
        "final": snap["final"],
    }


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        path = self.path.split("?", 1)[0].rstrip("/") or "/"
        live = self.server.live
        if path == "/metrics":
            self._send(200, generate_latest(self.server.prom), CONTENT_TYPE_LATEST)
        elif path == "/ping":
            snap = live.snapshot()
            if live.healthy:
                self._send(200, b"pong\n", "text/plain; charset=utf-8")
            else:
                why = snap["stopped"] or snap["error"] or snap["state"]
                self._send(503, f"stopped: {why}\n".encode(), "text/plain; charset=utf-8")
        elif path == "/stats":
            body = json.dumps(stats(live), indent=2, default=str).encode()
            self._send(200, body, "application/json")
        elif path == "/":
            self._send(200, b"flexprice-beam: /metrics /ping /stats\n", "text/plain; charset=utf-8")
        else:
            self._send(404, b"not found\n", "text/plain; charset=utf-8")

    def _send(self, status: int, body: bytes, ctype: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        log.debug("metrics: " + format, *args)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    live: LiveRegistry
    prom: CollectorRegistry


class _Server6(_Server):
    address_family = socket.AF_INET6


def parse_address(address: str) -> tuple[str, int]:
    """``host:port`` / ``:port`` / ``[::1]:port`` → (host, port)."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"metrics address {address!r} is not host:port")
    return host.strip("[]") or "0.0.0.0", int(port)


class MetricsServer:
    """``/metrics``, ``/ping`` and ``/stats`` on a daemon thread; ``port`` 0 picks a free one."""

    def __init__(self, address: str = "0.0.0.0:4195", registry: LiveRegistry = LIVE):
        self.host, self._port = parse_address(address)
        self._live = registry
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> MetricsServer:
        httpd = (_Server6 if ":" in self.host else _Server)((self.host, self._port), _Handler)
        httpd.live = self._live
        httpd.prom = CollectorRegistry(auto_describe=False)
        httpd.prom.register(_LiveCollector(self._live))
        self._httpd = httpd
        self._port = httpd.server_address[1]
        self._thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="flexprice-metrics", daemon=True)
        self._thread.start()
        log.info("Metrics on http://%s:%d/metrics (also /ping, /stats)", self.host, self._port)
        return self

    def stop(self) -> None:
        if self._httpd is None:
            return
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._httpd = None

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(self.host, self.host)
        return f"http://[{host}]:{self._port}" if ":" in host else f"http://{host}:{self._port}"

    def __enter__(self) -> MetricsServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
