"""A local Flexprice stand-in: the event-ingestion API plus fault injection.

Stdlib ``http.server`` (ThreadingHTTPServer, one thread per keep-alive connection) and orjson.
The request line/headers are parsed by a lean reader instead of ``email.parser``, sockets get
``TCP_NODELAY`` and every response goes out in one ``sendall`` -- a stock handler writes
headers and body separately, and Nagle + delayed ACK then add ~40 ms per request.

Behaviour follows flexprice/flexprice at e4b5303f (the commit ``swagger-3-0.json`` came from);
see ``validation.py`` for the error shapes and ``store.py`` for the dedup rule. Anything under
``/_mock/`` is the control API (no auth, no faults); everything under ``/v1`` is Flexprice.

Choices taken from the server source, where the notes/spec left room:

* Error bodies are the flat ``errors.ErrorResponse`` ``{code, message, http_status_code,
  details?}``, byte for byte as gin writes them (``tests/fixtures/flexprice/``). A single-event
  400 says exactly ``Invalid request payload``; a bulk 400 ``Request validation failed`` with
  ``details`` keyed by Go field name and no event index. Servers older than April 2026 wrapped
  errors as ``{"success": false, "error": {...}}``: ``error_style="nested"`` (opt-in).
  401 is ``{"error": "Unauthorized"}``.
* Auth: ``api_key`` is an environment-scoped key (made through the API: no header needed);
  ``config_key`` is a key from the server's config file, which carries no environment: every
  request must send ``X-Environment-ID: <environment_id>``, else 403 ``{"error": "Access
  denied", "message": "Invalid or inaccessible environment"}``.
* A body over 32 MiB is answered **400** ``validation_error`` "Request body exceeds the maximum
  size; ..." with ``Connection: close``, after reading only up to the cap (as Go's
  MaxBytesReader does); the rest is discarded for a short linger, then the socket closes, so
  a client still writing a much larger body can get a broken pipe.
* ``POST /events/bulk`` with a bad event: 400 for the whole request, but with the server's
  default ``bulk_publish_enabled: false`` the events *before* the bad one are already
  published -- reproduced by ``bulk_partial_publish`` (default true). Type errors (bad
  timestamp, wrong JSON type) fail the JSON bind first and store nothing.
* An ``event_name`` of only whitespace passes the server's checks (202), is published trimmed
  to "" and refused by its store: lost. The stand-in answers 202 and stores nothing
  (``stats()["lost_blank_name"]``).
* Dedup key is ``(event_id, timestamp truncated to ms in UTC)`` (ClickHouse ``DateTime64(3)``
  in a ``ReplacingMergeTree``); the latest version of a key wins.
* ``queued=True``: 202 means queued, not stored. Events reach the store ``queue_delay_s``
  later at ``queue_rate`` events/s (the server's consumer: ~12/s by default), and repeats of a
  key stay visible to read-back until ``merge()`` (read-back has no FINAL).
* ``/features/search`` only includes ``meter`` when ``expand`` contains ``meters``.
* Read-back without ``start_time`` covers the last 7 days only; ``GET /v1/events`` pages at
  most 50, as on the server.
"""

from __future__ import annotations

import argparse
import email.utils
import functools
import gc
import json
import signal
import socket
import socketserver
import struct
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from random import Random
from typing import Any, NamedTuple
from urllib.parse import parse_qs, unquote

import orjson

from .capacity import Capacity, parse_schedule
from .faults import DROP_OUTCOMES, OK, FaultConfig, FaultEngine
from .store import Catalog, EventStore
from .validation import (
    ENV_DENIED_BODY,
    MAX_BODY_BYTES,
    MAX_BULK_EVENTS,
    MSG_BODY_TOO_LARGE,
    MSG_CHECK_PAYLOAD,
    MSG_INVALID_PAYLOAD,
    MSG_VALIDATION_FAILED,
    RequestError,
    bind_event,
    bulk_count_detail,
    error_body,
    format_ms,
    go_required_detail,
    go_trim,
    missing_all,
    missing_required,
    new_ulid,
    now_ms,
    parse_rfc3339_ms,
)

__all__ = ["MockFlexprice", "RequestRecord", "main"]

JSON = "application/json; charset=utf-8"
TEXT = "text/plain; charset=utf-8"
HTML = "text/html"
_REASONS = {s.value: s.phrase for s in HTTPStatus}
_MAX_LINE = 65536
_MAX_HEADERS = 100
_GO_ZERO_TIME_MS = -62135596800000  # "0001-01-01T00:00:00Z": Go's zero time means "use now"
_SORT = orjson.OPT_SORT_KEYS
_GATEWAY_HTML = {
    s: (f"<html>\r\n<head><title>{s} {_REASONS[s]}</title></head>\r\n<body>\r\n"
        f"<center><h1>{s} {_REASONS[s]}</h1></center>\r\n</body>\r\n</html>\r\n").encode()
    for s in (502, 504)
}
_INGEST_PATHS = ("/v1/events", "/v1/events/bulk")

#: ``_EXACT((b, b""))``: ``b`` copied to its own size.  orjson 3.12+ returns every result in
#: a buffer of at least 4 KiB and never shrinks it, and the store keeps each event's bytes for
#: the life of the process: 1M stored events took 4.1 GB (a page fault per event) before.
_EXACT = b"".join

# --fast: a batch usually repeats a handful of timestamps; parse each once.
_parse_ts_cached = functools.lru_cache(maxsize=8192)(parse_rfc3339_ms)


class RequestRecord(NamedTuple):
    """One ``/v1`` request. ``status`` 0 = connection dropped without a response."""

    method: str
    path: str
    status: int
    n_events: int


class _Reply(NamedTuple):
    status: int
    body: bytes
    ctype: str = JSON
    headers: tuple = ()


class _Date:
    """``Date`` header value, formatted at most once per second."""

    def __init__(self) -> None:
        self._sec = -1
        self._val = ""

    def get(self) -> str:
        now = time.time()
        sec = int(now)
        if sec != self._sec:
            self._val = email.utils.formatdate(now, usegmt=True)
            self._sec = sec
        return self._val


_DATE = _Date()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 1024

    def server_bind(self) -> None:  # skip HTTPServer's getfqdn() (a DNS lookup)
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = host
        self.server_port = port


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # TCP_NODELAY on every accepted socket
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.mock: MockFlexprice = self.server.mock  # type: ignore[attr-defined]
        self.mock._register(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        except OSError:
            pass
        finally:
            self.mock._unregister(self.connection)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        if self.mock.verbose:
            super().log_message(format, *args)

    # -- HTTP/1.1 framing ----------------------------------------------------------------

    def handle_one_request(self) -> None:
        rfile = self.rfile
        try:
            line = rfile.readline(_MAX_LINE + 1)
        except OSError:
            self.close_connection = True
            return
        if not line:
            self.close_connection = True
            return
        if line in (b"\r\n", b"\n"):  # tolerate a stray CRLF between requests
            return
        parts = line.decode("latin-1").split()
        if len(line) > _MAX_LINE or len(parts) != 3 or not parts[2].startswith("HTTP/"):
            self.close_connection = True
            self._write(400, b"bad request", TEXT)
            return
        method, target, version = parts
        self.command, self.path, self.request_version = method, target, version
        headers: dict[str, str] = {}
        try:
            for _ in range(_MAX_HEADERS + 1):
                hl = rfile.readline(_MAX_LINE + 1)
                if hl in (b"\r\n", b"\n", b""):
                    break
                k, _sep, v = hl.decode("latin-1").partition(":")
                headers[k.strip().lower()] = v.strip()
            else:
                self.close_connection = True
                self._write(431, b"too many headers", TEXT)
                return
        except OSError:
            self.close_connection = True
            return
        conn_hdr = headers.get("connection", "").lower()
        if version == "HTTP/1.0":
            self.close_connection = "keep-alive" not in conn_hdr
        else:
            self.close_connection = "close" in conn_hdr
        try:
            body, oversized = self._read_body(headers)
        except (OSError, ValueError):
            self.close_connection = True
            self._safe_write(400, b"malformed request body", TEXT)
            return
        try:
            self.mock._dispatch(self, method, target, headers, body, oversized)
        except OSError:
            self.close_connection = True
        except Exception:  # pragma: no cover - a bug in the stand-in must not kill the thread
            traceback.print_exc(file=sys.stderr)
            self.close_connection = True
            self._safe_write(500, error_body(500), JSON)

    def _read_body(self, headers: dict[str, str]) -> tuple[bytes, bool]:
        limit = self.mock.max_body_bytes
        te = headers.get("transfer-encoding", "").lower()
        cl = headers.get("content-length")
        if ("chunked" in te or cl) and headers.get("expect", "").lower() == "100-continue":
            self.wfile.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        if "chunked" in te:
            return self._read_chunked(limit)
        if not cl:
            return b"", False
        n = int(cl)
        if n < 0:
            raise ValueError("negative Content-Length")
        if n <= limit:
            data = self.rfile.read(n)
            if len(data) < n:
                raise OSError("connection closed mid-body")
            return data, False
        # Over the cap: read up to it (as MaxBytesReader does), answer, and close; the rest
        # is left to ``linger``.
        self.close_connection = True
        remaining = limit + 1
        while remaining:
            chunk = self.rfile.read(min(remaining, 1 << 20))
            if not chunk:
                raise OSError("connection closed mid-body")
            remaining -= len(chunk)
        self._unread = n - limit - 1
        return b"", True

    def _read_chunked(self, limit: int) -> tuple[bytes, bool]:
        rfile = self.rfile
        chunks: list[bytes] = []
        total = 0
        while True:
            size_line = rfile.readline(_MAX_LINE + 1)
            if not size_line:
                raise OSError("connection closed mid-body")
            size = int(size_line.split(b";", 1)[0].strip(), 16)
            if size == 0:
                while rfile.readline(_MAX_LINE + 1) not in (b"\r\n", b"\n", b""):
                    pass
                break
            data = rfile.read(size)
            if len(data) < size:
                raise OSError("connection closed mid-body")
            rfile.readline(_MAX_LINE + 1)
            total += size
            if total > limit:
                self.close_connection = True
                self._unread = None  # unknown: linger until the writer stops
                return b"", True
            chunks.append(data)
        return b"".join(chunks), False

    def _write(self, status: int, body: bytes, ctype: str = JSON, extra: tuple = ()) -> None:
        head = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Unknown')}\r\n"
                f"Content-Type: {ctype}\r\nContent-Length: {len(body)}\r\nDate: {_DATE.get()}\r\n"]
        for k, v in extra:
            head.append(f"{k}: {v}\r\n")
        if self.close_connection:
            head.append("Connection: close\r\n")
        head.append("\r\n")
        self.wfile.write("".join(head).encode("latin-1") + body)  # one write, one segment train

    def linger(self, seconds: float) -> None:
        """After an oversize 400: half-close, keep reading (and discarding) what the client
        still sends for up to ``seconds``, so it can read our answer; then the caller closes.
        Go's server does the same (``closeWriteAndWait``, 500 ms)."""
        sock = self.connection
        try:
            self.wfile.flush()
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            return
        unread = getattr(self, "_unread", None)
        deadline = time.monotonic() + seconds
        while seconds > 0 and (unread is None or unread > 0):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                sock.settimeout(left)
                data = sock.recv(1 << 20)
            except OSError:
                break
            if not data:
                break
            if unread is not None:
                unread -= len(data)

    def _safe_write(self, status: int, body: bytes, ctype: str) -> None:
        try:
            self._write(status, body, ctype)
        except OSError:
            pass

    def _drop(self) -> None:
        """Close abruptly: RST (SO_LINGER 0), no response bytes."""
        self.close_connection = True
        sock = self.connection
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        for f in (self.rfile, self.wfile):
            try:
                f.close()
            except OSError:
                pass
        try:
            sock.close()
        except OSError:
            pass


class MockFlexprice:
    """The Flexprice stand-in. ``with MockFlexprice() as fp: ... fp.url ...``."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, api_key: str = "test-key",
                 latency_ms: float = 0, *, forbidden_key: str | None = "forbidden-key",
                 faults: FaultConfig | dict | None = None, seed: int | None = None,
                 fast: bool = False, max_body_bytes: int = MAX_BODY_BYTES,
                 environment_id: str = "env_mock", tenant_id: str = "tenant_mock",
                 error_style: str = "flat", seed_defaults: bool = False,
                 log_limit: int = 200_000, verbose: bool = False,
                 tls_cert: str | None = None, tls_key: str | None = None,
                 config_key: str | None = None, queued: bool = False,
                 queue_delay_s: float = 1.0, queue_rate: float = 12.0,
                 oversize_linger_s: float = 0.5,
                 gateway_headers: dict[str, str] | None = None,
                 capacity: Capacity | None = None) -> None:
        self.tls_cert, self.tls_key = tls_cert, tls_key  # both set: serve https
        #: a key from the server's config file: needs ``X-Environment-ID`` on every request
        self.config_key = config_key
        #: after an oversize 400, how long the rest of the body is still read before closing
        #: (Go's rstAvoidanceDelay is 500 ms); 0 closes at once (a writer gets EPIPE/RST)
        self.oversize_linger_s = oversize_linger_s
        #: a gateway in front of the API: every /v1 request must carry these headers, else
        #: the gateway (not Flexprice) answers 401 ``{"message":"Unauthorized"}``
        self.gateway_headers = {k.lower(): v for k, v in (gateway_headers or {}).items()}
        #: tests: keep every ingest request's raw body (``bodies``), to compare resends byte
        #: for byte (the store compares canonical JSON)
        self.keep_bodies = False
        self.bodies: list[bytes] = []
        if queued and queue_rate <= 0:
            raise ValueError("queue_rate must be > 0")
        if error_style not in ("flat", "nested"):
            raise ValueError("error_style must be 'flat' or 'nested'")
        cfg = faults if isinstance(faults, FaultConfig) else FaultConfig.from_dict(faults)
        overrides: dict = {}
        if latency_ms:
            overrides["latency_ms"] = latency_ms
        if seed is not None:
            overrides["seed"] = seed
        if overrides:
            cfg = cfg.merged(overrides)
        self._initial_faults = cfg
        self._faults = FaultEngine(cfg)
        #: ingest requests served at once / queued / refused 429 (capacity.py); unlimited unless set
        self.capacity = capacity or Capacity()
        self.host = host
        self._port = port
        self.api_key = api_key
        self.forbidden_key = forbidden_key
        self.fast = fast
        self.max_body_bytes = max_body_bytes
        self.environment_id = environment_id
        self.error_style = error_style
        self.verbose = verbose
        self._ids = Random()  # id generation, independent of the seeded fault RNG
        self._store = EventStore(queue_delay_s if queued else None, queue_rate)
        self._lost_blank = 0
        self.catalog = Catalog(tenant_id, environment_id, self._ids)
        self._log: deque[RequestRecord] = deque(maxlen=log_limit)
        self._stats_lock = threading.Lock()
        self._by_status: dict[int, int] = {}
        self._by_route: dict[str, int] = {}
        self._bytes_in = 0
        self._rejected_events = 0
        self._stop_evt = threading.Event()
        self._conns: set[socket.socket] = set()
        self._conns_lock = threading.Lock()
        self._conns_opened = 0
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None
        if seed_defaults:
            self.seed_defaults()

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> MockFlexprice:
        if self._httpd is not None:
            return self
        self._stop_evt.clear()
        httpd = _Server((self.host, self._port), _Handler)
        httpd.mock = self  # type: ignore[attr-defined]
        if self.tls_cert and self.tls_key:
            import ssl

            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(self.tls_cert, self.tls_key)
            # Handshake in the connection's thread, so a client refusing the certificate
            # cannot stall the accept loop.
            httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True,
                                           do_handshake_on_connect=False)
        self._httpd = httpd
        self._port = httpd.server_address[1]
        self._thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=f"flexprice-mock:{self._port}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        httpd = self._httpd
        if httpd is None:
            return
        self._stop_evt.set()  # wake latency/slow/hang waits
        self.capacity.release_all()
        httpd.shutdown()
        with self._conns_lock:
            conns = list(self._conns)
        for c in conns:  # unblock keep-alive threads parked in readline()
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._httpd = None
        self._thread = None

    def __enter__(self) -> MockFlexprice:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        return self._port

    @property
    def host_port(self) -> str:
        return f"{self.host}:{self._port}"

    @property
    def url(self) -> str:
        return f"{'https' if self.tls_cert and self.tls_key else 'http'}://{self.host_port}"

    def _register(self, conn: socket.socket) -> None:
        with self._conns_lock:
            self._conns.add(conn)
            self._conns_opened += 1

    def _unregister(self, conn: socket.socket) -> None:
        with self._conns_lock:
            self._conns.discard(conn)

    def _sleep(self, seconds: float) -> None:
        if seconds > 0:
            self._stop_evt.wait(seconds)

    # -- Python-side accessors -----------------------------------------------------------

    def events(self) -> list[dict]:
        """Stored (deduplicated) events as ingested, with server-filled event_id/timestamp."""
        return self._store.events()

    @property
    def queued(self) -> bool:
        return self._store.queued

    @property
    def pending_count(self) -> int:
        """Queued mode: accepted events the consumer has not stored yet."""
        return self._store.pending

    def drain_queue(self) -> int:
        """Queued mode: store everything queued now; returns how many."""
        return self._store.drain()

    def merge(self) -> int:
        """Queued mode: the store merges, so read-back stops showing repeats twice."""
        return self._store.merge()

    @property
    def received_count(self) -> int:
        """Accepted event deliveries, duplicates included."""
        return self._store.received

    def duplicates(self) -> list[tuple[dict, dict]]:
        """(stored, repeat) for every delivery whose event_id AND timestamp were already stored."""
        return self._store.duplicates()

    def distinct_conflicts(self) -> list[tuple[dict, dict]]:
        """(first, repeat) for deliveries reusing an event_id with a different body."""
        return self._store.conflicts()

    def track_receive_times(self, on: bool = True) -> None:
        """Remember when each (event_id, timestamp) was first stored (latency measurements)."""
        self._store.keep_receive_times = on

    def receive_times(self) -> dict[tuple[str, int], float]:
        """``{(event_id, timestamp_ms): unix time first stored}`` since ``track_receive_times``."""
        return self._store.receive_times()

    @property
    def requests_log(self) -> list[RequestRecord]:
        return list(self._log)

    def stats(self) -> dict:
        with self._stats_lock:
            by_status = {str(k): v for k, v in sorted(self._by_status.items())}
            by_route = dict(self._by_route)
            bytes_in = self._bytes_in
            rejected = self._rejected_events
        out = {
            "requests_total": sum(by_status.values()),
            "requests_by_status": by_status,
            "requests_by_route": by_route,
            **self._store.counts(),
            "rejected_events": rejected,
            "lost_blank_name": self._lost_blank,
            "faults_injected": self._faults.injected_snapshot(),
            "connections_opened": self._conns_opened,
            "bytes_received": bytes_in,
            "fail_all_active": self._faults.fail_all_status() is not None,
            "capacity": self.capacity.state(),
        }
        return out

    @property
    def faults(self) -> dict:
        return self._faults.config.to_dict()

    def set_faults(self, config: FaultConfig | dict | None = None, **kwargs: Any) -> dict:
        """Replace the fault config (unspecified keys get their defaults; no args = no faults)."""
        if isinstance(config, FaultConfig):
            cfg = config.merged(kwargs) if kwargs else config
        else:
            cfg = FaultConfig.from_dict({**(config or {}), **kwargs})
        self._faults.set(cfg)
        return cfg.to_dict()

    def update_faults(self, **kwargs: Any) -> dict:
        """Change only the given fault keys."""
        cfg = self._faults.config.merged(kwargs)
        self._faults.set(cfg)
        return cfg.to_dict()

    def reset(self, *, faults: bool = True, catalog: bool = False) -> None:
        """Forget events, logs and counters; restore the constructor's faults; keep customers,
        features and the API key unless ``catalog=True``."""
        self._store.clear()
        self._log.clear()
        with self._stats_lock:
            self._by_status = {}
            self._by_route = {}
            self._bytes_in = 0
            self._rejected_events = 0
            self._lost_blank = 0
        self.bodies = []
        with self._conns_lock:
            self._conns_opened = 0
        self._faults.reset_counters()
        if faults:
            self._faults.set(self._initial_faults)
            self.capacity.reset()
        if catalog:
            self.catalog.clear()

    def set_api_key(self, api_key: str, forbidden_key: str | None = ...,  # type: ignore[assignment]
                    config_key: str | None = ...) -> None:  # type: ignore[assignment]
        self.api_key = api_key
        if forbidden_key is not ...:
            self.forbidden_key = forbidden_key
        if config_key is not ...:
            self.config_key = config_key

    def add_customer(self, external_id: str, name: str | None = None, **fields: Any) -> dict:
        return self.catalog.add_customer(external_id, name, **fields)

    def add_feature(self, name: str, event_name: str, aggregation_type: str = "COUNT",
                    field: str | None = None, **kwargs: Any) -> dict:
        return self.catalog.add_feature(name, event_name, aggregation_type, field, **kwargs)

    def seed_defaults(self) -> None:
        """Customers and features matching examples/generate.yaml."""
        for ext in ("cust_001", "cust_002", "cust_003"):
            if self.catalog.get_customer(ext) is None:
                self.add_customer(ext)
        if not self.catalog.features:
            self.add_feature("API Requests", "api.request", "SUM", "value", lookup_key="api_request")
            self.add_feature("Storage GB", "storage.gb", "SUM", "value", lookup_key="storage_gb")

    # -- dispatch ------------------------------------------------------------------------

    def _dispatch(self, h: _Handler, method: str, target: str, headers: dict[str, str],
                  body: bytes, oversized: bool) -> None:
        path, _, query = target.partition("?")
        if path.startswith("/_mock/"):
            reply = self._control(method, path, query, body)
            h._write(reply.status, reply.body, reply.ctype, reply.headers)
            return
        if path == "/health" and method in ("GET", "POST"):
            h._write(200, b'{"status":"ok"}')
            return
        route = self._route(method, path)
        if route is None:  # gin: unmatched routes 404 before any auth middleware
            self._record(method, path, 404, 0, body)
            h._write(404, b"404 page not found", TEXT)
            return
        handler, arg = route
        cfg = self._faults.config
        latency = cfg.latency_ms / 1000.0

        fail = self._faults.fail_all_status()
        if fail is not None:
            self._faults.note(f"fail_all_{fail}")
            reply = self._status_reply(fail, retry_after=cfg.retry_after_s)
            return self._finish(h, method, path, reply, latency, self._count_events(path, body), body)

        auth = self._gateway(headers) or self._auth(headers)
        if auth is not None:
            return self._finish(h, method, path, auth, latency, 0, body)

        outcome = OK
        if cfg.fault_scope == "all" or path in _INGEST_PATHS:
            outcome = self._faults.draw()
        if outcome != OK and outcome not in ("slow", "ack_lost"):
            if outcome in DROP_OUTCOMES:  # reset / hang: nothing processed, no response
                self._sleep(latency + (cfg.hang_s if outcome == "hang" else 0.0))
                self._record(method, path, 0, self._count_events(path, body), body)
                h._drop()
                return
            if outcome == "429_no_retry_after":
                reply = self._status_reply(429, retry_after=None)
            else:
                reply = self._status_reply(int(outcome[:3]), retry_after=cfg.retry_after_s)
            return self._finish(h, method, path, reply, latency, self._count_events(path, body), body)

        gate = self.capacity
        if gate.limited and path in _INGEST_PATHS:
            started = time.monotonic()
            if not gate.enter():  # the queue is full: refused before any work
                gate.rejected_now(started)
                reply = self._status_reply(429, retry_after=gate.retry_after_s)
                return self._finish(h, method, path, reply, 0.0, self._count_events(path, body),
                                    body)
            left: list[int] = []

            def leave(status: int) -> None:  # once, before the answer goes out (or on error)
                if not left:
                    left.append(status)
                    gate.leave(started, status)

            try:
                self._serve(h, method, path, query, handler, arg, body, oversized, outcome,
                            latency, answered=leave)
            finally:
                leave(0)
            return
        self._serve(h, method, path, query, handler, arg, body, oversized, outcome, latency)

    def _serve(self, h: _Handler, method: str, path: str, query: str, handler: Any, arg: Any,
               body: bytes, oversized: bool, outcome: str, latency: float,
               answered: Callable[[int], None] | None = None) -> None:
        """Run the route's handler and answer.  ``answered(status)`` (0: no answer) runs once
        the request is recorded, before the client can see the answer: what a client reads
        after its answer (stats, the capacity log) already counts its request."""
        if oversized and path in _INGEST_PATHS:
            reply, n_events = self._error(400, MSG_BODY_TOO_LARGE), 0
            h.close_connection = True  # net/http closes after MaxBytesReader tripped
        else:
            try:
                reply, n_events = handler(body, query, arg)
            except RequestError as e:
                reply = self._error(e.status, e.message, e.details)
                n_events = getattr(e, "n_events", 0)
        if outcome == "ack_lost":  # processed (and stored) -- then the answer is lost
            self._sleep(latency)
            self._record(method, path, 0, n_events, body)
            if answered is not None:
                answered(0)
            h._drop()
            return
        if outcome == "slow":
            latency += self._faults.config.slow_ms / 1000.0
        self._finish(h, method, path, reply, latency, n_events, body, answered)
        if oversized:
            h.linger(self.oversize_linger_s)

    def _finish(self, h: _Handler, method: str, path: str, reply: _Reply, latency: float,
                n_events: int, body: bytes,
                answered: Callable[[int], None] | None = None) -> None:
        self._sleep(latency)
        self._record(method, path, reply.status, n_events, body)
        if answered is not None:
            answered(reply.status)
        h._write(reply.status, reply.body, reply.ctype, reply.headers)

    def _record(self, method: str, path: str, status: int, n_events: int, body: bytes) -> None:
        route = f"{method} {path}"
        nbytes = len(body)
        if self.keep_bodies and path in _INGEST_PATHS:
            self.bodies.append(body)
        with self._stats_lock:
            self._by_status[status] = self._by_status.get(status, 0) + 1
            self._by_route[route] = self._by_route.get(route, 0) + 1
            self._bytes_in += nbytes
        self._log.append(RequestRecord(method, path, status, n_events))

    def _route(self, method: str, path: str) -> tuple | None:
        if method == "POST":
            if path == "/v1/events":
                return self._ingest_single, None
            if path == "/v1/events/bulk":
                return self._ingest_bulk, None
            if path == "/v1/events/query":
                return self._query_events_post, None
            if path == "/v1/features/search":
                return self._search_features, None
        elif method == "GET":
            if path == "/v1/events":
                return self._query_events_get, None
            prefix = "/v1/customers/external/"
            if path.startswith(prefix) and len(path) > len(prefix) and "/" not in path[len(prefix):]:
                return self._get_customer, unquote(path[len(prefix):])
        return None

    def _gateway(self, headers: dict[str, str]) -> _Reply | None:
        for name, value in self.gateway_headers.items():
            if headers.get(name) != value:
                return _Reply(401, b'{"message":"Unauthorized"}')
        return None

    def _auth(self, headers: dict[str, str]) -> _Reply | None:
        key = headers.get("x-api-key", "")
        if key and key == self.api_key:  # bound to its environment: X-Environment-ID ignored
            return None
        if key and key == self.config_key:  # no environment of its own: the header decides
            if headers.get("x-environment-id", "") == self.environment_id:
                return None
            return _Reply(403, ENV_DENIED_BODY)
        if key and self.forbidden_key is not None and key == self.forbidden_key:
            # PermissionMiddleware: a gin.H of its own, not the ErrorResponse shape
            return _Reply(403, b'{"message":"insufficient permissions"}')
        authz = headers.get("authorization", "")
        if not authz:
            msg = "Unauthorized"
        elif not authz.startswith("Bearer "):
            msg = "Invalid authorization header format"
        else:
            msg = "Invalid token"
        return _Reply(401, orjson.dumps({"error": msg}))

    def _status_reply(self, status: int, retry_after: int | None) -> _Reply:
        if status == 401:
            return _Reply(401, b'{"error":"Unauthorized"}')
        if status == 403:
            return _Reply(403, b'{"message":"insufficient permissions"}')
        if status in _GATEWAY_HTML:
            return _Reply(status, _GATEWAY_HTML[status], HTML)
        headers: tuple = ()
        if status == 429 and retry_after is not None:
            headers = (("Retry-After", str(retry_after)),)
        return _Reply(status, error_body(status, style=self.error_style), JSON, headers)

    def _error(self, status: int, message: str, details: dict | None = None) -> _Reply:
        return _Reply(status, error_body(status, message, details, style=self.error_style))

    @staticmethod
    def _count_events(path: str, body: bytes) -> int:
        if path == "/v1/events":
            return 1
        if path == "/v1/events/bulk":
            try:
                events = orjson.loads(body).get("events")
                return len(events) if isinstance(events, list) else 0
            except (orjson.JSONDecodeError, AttributeError):
                return 0
        return 0

    # -- ingestion -----------------------------------------------------------------------

    def _prepare(self, ev: dict, ts: int | None) -> tuple[str, int, bytes]:
        """(event_id, ts_ms, canonical bytes of the event as stored)."""
        eid = ev.get("event_id")
        filled = ev
        if not eid:
            eid = "event_" + new_ulid(self._ids)
            filled = {**ev, "event_id": eid}
        if ts is None or ts == _GO_ZERO_TIME_MS:
            ts = now_ms()
            filled = {**filled, "timestamp": format_ms(ts)}
        canon = _EXACT((orjson.dumps(filled) if self.fast else orjson.dumps(filled, option=_SORT),
                        b""))
        return eid, ts, canon

    def _is_rejected(self, ev: dict) -> bool:
        eng = self._faults
        cfg = eng.config
        if not cfg.reject_every_nth and not cfg.reject_event_ids:
            return False
        eid = ev.get("event_id")
        return eng.rejects(eid, b"" if eid else orjson.dumps(ev, option=_SORT))

    def _bind(self, ev: object, where: str) -> int | None:
        """gin binding of one IngestEventRequest; returns the timestamp (ms) or None.

        A failure is ``Invalid request payload`` with no details: the server logs why, it
        does not say (``where`` only names it for ``verbose`` logs)."""
        if self.fast:
            if type(ev) is not dict:
                raise RequestError(400, MSG_INVALID_PAYLOAD)
            ts = ev.get("timestamp")
            if ts is None:
                return None
            ms = _parse_ts_cached(ts) if type(ts) is str else None
            if ms is None:
                raise RequestError(400, MSG_INVALID_PAYLOAD)
            return ms
        err, ms = bind_event(ev, where)
        if err is not None:
            if self.verbose:
                print(f"flexprice-mock: bind error: {err}", file=sys.stderr)
            raise RequestError(400, MSG_INVALID_PAYLOAD)
        return ms

    def _ingest_single(self, body: bytes, _query: str, _arg: object) -> tuple[_Reply, int]:
        try:
            ev = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise RequestError(400, MSG_INVALID_PAYLOAD) from None
        if ev is None:  # JSON null binds to the zero struct: then "required" fails
            raise RequestError(400, MSG_INVALID_PAYLOAD)
        ts = self._bind(ev, "event")
        if missing_required(ev):  # binding:"required" -> a bind error on this endpoint
            raise RequestError(400, MSG_INVALID_PAYLOAD)
        if self._is_rejected(ev):
            self._note_rejected(1)
            raise RequestError(400, MSG_INVALID_PAYLOAD)
        item = self._prepare(ev, ts)
        self._keep([ev], [item])
        # gin.H is a map: Go writes its keys sorted
        msg = orjson.dumps({"event_id": item[0], "message": "Event accepted for processing"})
        return _Reply(202, msg), 1

    def _keep(self, events: list, items: list[tuple[str, int, bytes]]) -> None:
        """Publish ``items`` (built from ``events``): one of only whitespace for a name is
        published as "" and refused by the server's store, so it is lost, not stored."""
        if self.fast:  # benchmarks: no per-event look (the collector never sends such names)
            self._store.add(items)
            return
        kept = [it for ev, it in zip(events, items, strict=True)
                if type(ev.get("event_name")) is not str or go_trim(ev["event_name"])]
        if len(kept) != len(items):
            with self._stats_lock:
                self._lost_blank += len(items) - len(kept)
        self._store.add(kept)

    def _ingest_bulk(self, body: bytes, _query: str, _arg: object) -> tuple[_Reply, int]:
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise RequestError(400, MSG_INVALID_PAYLOAD) from None
        if data is not None and type(data) is not dict:
            raise RequestError(400, MSG_INVALID_PAYLOAD)
        events = data.get("events") if data is not None else None
        if events is not None and type(events) is not list:
            raise RequestError(400, MSG_INVALID_PAYLOAD)
        n = len(events) if events else 0
        bind = self._bind
        try:
            # a null element binds to a nil pointer: no bind error (it fails below)
            stamps = [None if ev is None else bind(ev, f"events[{i}]")
                      for i, ev in enumerate(events or ())]
        except RequestError as e:
            e.n_events = n  # type: ignore[attr-defined]
            raise
        if events is None:  # also a body of `null`
            raise RequestError(400, MSG_VALIDATION_FAILED, bulk_count_detail("required"))
        if n == 0 or n > MAX_BULK_EVENTS:
            err = RequestError(400, MSG_VALIDATION_FAILED,
                               bulk_count_detail("min" if n == 0 else "max"))
            err.n_events = n  # type: ignore[attr-defined]
            raise err
        items = []
        prepare = self._prepare
        check_reject = bool(self._faults.config.reject_every_nth or self._faults.config.reject_event_ids)
        for i, ev in enumerate(events):
            missing = [] if ev is None else missing_all(ev)
            if ev is None or missing or (check_reject and self._is_rejected(ev)):
                # The server publishes event by event: earlier ones are already queued.
                if self._faults.config.bulk_partial_publish:
                    self._keep(events[:i], items)
                if ev is None:  # validator: InvalidValidationError, no field details
                    details = None
                elif missing:
                    details = go_required_detail("IngestEventRequest", *missing)
                else:
                    self._note_rejected(1)
                    details = None
                err = RequestError(400, MSG_VALIDATION_FAILED, details)
                err.n_events = n  # type: ignore[attr-defined]
                raise err
            items.append(prepare(ev, stamps[i]))
        self._keep(events, items)
        return _Reply(202, b'{"message":"Events accepted for processing"}'), n

    def _note_rejected(self, n: int) -> None:
        with self._stats_lock:
            self._rejected_events += n

    # -- read back -----------------------------------------------------------------------

    def _query_events_post(self, body: bytes, _query: str, _arg: object) -> tuple[_Reply, int]:
        try:
            req = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise RequestError(400, MSG_CHECK_PAYLOAD) from None
        if type(req) is not dict:
            raise RequestError(400, MSG_CHECK_PAYLOAD)
        for k in ("external_customer_id", "event_name", "event_id", "iter_first_key", "iter_last_key",
                  "source", "sort", "order", "start_time", "end_time"):
            if req.get(k) is not None and type(req[k]) is not str:
                raise RequestError(400, MSG_CHECK_PAYLOAD, {"error": f"{k} must be a string"})
        for k in ("page_size", "offset"):
            if req.get(k) is not None and type(req[k]) is not int:
                raise RequestError(400, MSG_CHECK_PAYLOAD, {"error": f"{k} must be an integer"})
        pf = req.get("property_filters")
        if pf is not None and (type(pf) is not dict or not all(
                type(v) is list and all(type(x) is str for x in v) for v in pf.values())):
            raise RequestError(400, MSG_CHECK_PAYLOAD, {"error": "property_filters must map to string lists"})
        page_size = req.get("page_size") or 0
        return self._query_events(req, page_size if page_size > 0 else 50, req.get("offset") or 0)

    def _query_events_get(self, _body: bytes, query: str, _arg: object) -> tuple[_Reply, int]:
        q = {k: v[-1] for k, v in parse_qs(query, keep_blank_values=True).items()}
        req: dict = {k: q[k] for k in ("external_customer_id", "event_name", "event_id", "iter_first_key",
                                       "iter_last_key", "source", "start_time", "end_time") if q.get(k)}
        for k in ("sort", "order"):
            if q.get(k):
                req[k] = q[k]
        pfs: dict[str, list[str]] = {}
        for group in (q.get("property_filters") or "").split(";"):
            parts = group.split(":")
            if len(parts) == 2:
                pfs[parts[0]] = parts[1].split(",")
        if pfs:
            req["property_filters"] = pfs
        page_size = 50
        try:
            ps = int(q.get("page_size", ""))
            if 0 < ps <= 50:
                page_size = ps
        except ValueError:
            pass
        offset = 0
        try:
            offset = max(int(q.get("offset", "")), 0)
        except ValueError:
            pass
        return self._query_events(req, page_size, offset)

    def _query_events(self, req: dict, page_size: int, offset: int) -> tuple[_Reply, int]:
        end = self._req_time(req.get("end_time"))
        start = self._req_time(req.get("start_time"))
        if end is None:
            end = now_ms()
        if start is None:
            start = end - 7 * 86_400_000
        if end < start:
            raise RequestError(400, MSG_CHECK_PAYLOAD, {"error": "end time must be after start time"})
        sort = req.get("sort") or "timestamp"
        order = req.get("order") or "desc"
        if sort not in ("timestamp", "event_name"):
            raise RequestError(400, "Request validation failed due to invalid sort field",
                               {"sort": sort, "allowed_values": ["timestamp", "event_name"]})
        if order not in ("asc", "desc"):
            raise RequestError(400, "Request validation failed due to invalid order by value",
                               {"order": order, "allowed_values": ["asc", "desc"]})
        iter_first = self._parse_iter(req.get("iter_first_key"))
        iter_last = self._parse_iter(req.get("iter_last_key"))
        offset = max(offset, 0)

        want_id = req.get("event_id")
        want_cust = req.get("external_customer_id")
        want_name = req.get("event_name")
        want_src = req.get("source")
        pfs = {k: v for k, v in (req.get("property_filters") or {}).items() if v}
        rows = []
        for eid, ts, raw in self._store.rows():
            if ts < start or ts > end or (want_id and eid != want_id):
                continue
            if iter_first is not None:
                if (ts * 1_000_000, eid) <= iter_first:
                    continue
            elif iter_last is not None and (ts * 1_000_000, eid) >= iter_last:
                continue
            ev = orjson.loads(raw)
            if want_cust and ev.get("external_customer_id") != want_cust:
                continue
            if want_name and go_trim(ev.get("event_name") or "") != want_name:
                continue
            if want_src and ev.get("source") != want_src:
                continue
            if pfs:
                props = ev.get("properties") or {}
                # ClickHouse JSONExtractString: only string-valued properties match
                if not all(type(props.get(k)) is str and props[k] in vals for k, vals in pfs.items()):
                    continue
            rows.append((ts, eid, ev))
        total = len(rows)
        rows.sort(key=lambda r: r[1], reverse=True)  # secondary key: id DESC
        if sort == "timestamp":
            rows.sort(key=lambda r: r[0], reverse=order == "desc")
        else:
            rows.sort(key=lambda r: go_trim(r[2].get("event_name") or ""), reverse=order == "desc")
        cursor_mode = bool(req.get("iter_first_key") or req.get("iter_last_key"))
        resp: dict = {"events": [], "has_more": False}
        if cursor_mode:
            page = rows[: page_size + 1]
            has_more = len(page) > page_size
            page = page[:page_size]
            resp["has_more"] = has_more
            if page:
                resp["iter_first_key"] = self._iter_key(page[0])
                if has_more:
                    resp["iter_last_key"] = self._iter_key(page[-1])
        else:
            page = rows[offset: offset + page_size]
            if page:
                resp["iter_first_key"] = self._iter_key(page[0])
                resp["iter_last_key"] = self._iter_key(page[-1])
            resp["has_more"] = total > page_size and offset + page_size < total
            resp["offset"] = offset + page_size
        if total:
            resp["total_count"] = total
        resp["events"] = [self._event_out(ts, eid, ev) for ts, eid, ev in page]
        return _Reply(200, orjson.dumps(resp)), 0

    @staticmethod
    def _req_time(value: str | None) -> int | None:
        if not value:
            return None
        ms = parse_rfc3339_ms(value)
        if ms is None:
            raise RequestError(400, MSG_CHECK_PAYLOAD, {"error": f"invalid time {value!r}"})
        return ms

    @staticmethod
    def _parse_iter(key: str | None) -> tuple[int, str] | None:
        if not key:
            return None
        parts = key.split("::")
        if len(parts) != 2:
            raise RequestError(400, "Invalid cursor key format")
        try:
            return int(parts[0]), parts[1]
        except ValueError:
            raise RequestError(400, "Invalid timestamp while parsing cursor") from None

    @staticmethod
    def _iter_key(row: tuple) -> str:
        return f"{row[0] * 1_000_000}::{row[1]}"

    def _event_out(self, ts: int, eid: str, ev: dict) -> dict:
        return {
            "id": eid,
            "external_customer_id": ev.get("external_customer_id") or "",
            "customer_id": ev.get("customer_id") or "",
            "event_name": go_trim(ev.get("event_name") or ""),
            "timestamp": format_ms(ts),
            "properties": ev.get("properties") or {},
            "source": ev.get("source") or "",
            "environment_id": self.environment_id,
        }

    # -- catalogue -----------------------------------------------------------------------

    def _search_features(self, body: bytes, _query: str, _arg: object) -> tuple[_Reply, int]:
        try:
            flt = orjson.loads(body) if body.strip() else {}
        except orjson.JSONDecodeError:
            raise RequestError(400, "Invalid filter parameters") from None
        if type(flt) is not dict:
            raise RequestError(400, "Invalid filter parameters")
        limit = flt.get("limit")
        offset = flt.get("offset")
        if limit is None or limit == 0:
            limit = 50
        if type(limit) is not int or not 1 <= limit <= 1000:
            raise RequestError(400, MSG_VALIDATION_FAILED, {"Limit": "must be between 1 and 1000"})
        if offset is None:
            offset = 0
        if type(offset) is not int or offset < 0:
            raise RequestError(400, MSG_VALIDATION_FAILED, {"Offset": "must be >= 0"})
        for k in ("feature_ids", "meter_ids", "lookup_keys"):
            v = flt.get(k)
            if v is not None and (type(v) is not list or not all(type(x) is str for x in v)):
                raise RequestError(400, "Invalid filter parameters", {"error": f"{k} must be a string list"})
        items, total = self.catalog.search_features(flt)
        resp = {"items": items[offset: offset + limit],
                "pagination": {"total": total, "limit": limit, "offset": offset}}
        return _Reply(200, orjson.dumps(resp)), 0

    def _get_customer(self, _body: bytes, _query: str, external_id: object) -> tuple[_Reply, int]:
        cust = self.catalog.get_customer(str(external_id))
        if cust is None:
            raise RequestError(404, f"Customer with lookup key {external_id} was not found",
                               {"lookup_key": external_id})
        return _Reply(200, orjson.dumps(cust)), 0

    # -- control API ---------------------------------------------------------------------

    def _control(self, method: str, path: str, query: str, body: bytes) -> _Reply:
        try:
            return self._control_inner(method, path, query, body)
        except (ValueError, TypeError, KeyError) as e:
            return _Reply(400, orjson.dumps({"error": str(e)}))

    def _control_inner(self, method: str, path: str, query: str, body: bytes) -> _Reply:
        q = {k: v[-1] for k, v in parse_qs(query).items()}
        data: Any = orjson.loads(body) if body.strip() else None
        ok = b'{"status":"ok"}'
        if method == "GET":
            if path == "/_mock/stats":
                return _Reply(200, orjson.dumps(self.stats()))
            if path == "/_mock/events":
                evs = self.events()
                off = int(q.get("offset", 0))
                lim = int(q["limit"]) if "limit" in q else len(evs)
                return _Reply(200, orjson.dumps({"count": len(evs), "events": evs[off: off + lim]}))
            if path == "/_mock/duplicates":
                d = self.duplicates()
                return _Reply(200, orjson.dumps({"count": len(d), "duplicates": d}))
            if path == "/_mock/conflicts":
                c = self.distinct_conflicts()
                return _Reply(200, orjson.dumps({"count": len(c), "conflicts": c}))
            if path == "/_mock/requests":
                return _Reply(200, orjson.dumps({"requests": [list(r) for r in self.requests_log]}))
            if path == "/_mock/faults":
                return _Reply(200, orjson.dumps(self.faults))
            if path == "/_mock/capacity":
                out = self.capacity.state()
                if q.get("log") in ("1", "true"):
                    out["log"] = self.capacity.log(float(q.get("since", 0)))
                return _Reply(200, orjson.dumps(out))
            if path == "/_mock/health":
                return _Reply(200, ok)
        elif method == "POST":
            if path == "/_mock/faults":
                cfg = dict(data or {})
                merge = cfg.pop("merge", False) or q.get("merge") in ("1", "true")
                new = self.update_faults(**cfg) if merge else self.set_faults(cfg)
                return _Reply(200, orjson.dumps(new))
            if path == "/_mock/reset":
                opts = data or {}
                self.reset(faults=bool(opts.get("faults", True)), catalog=bool(opts.get("catalog", False)))
                return _Reply(200, ok)
            if path == "/_mock/customers":
                rows = data.get("customers", [data]) if isinstance(data, dict) else data
                made = [self.add_customer(**r) for r in rows]
                return _Reply(200, orjson.dumps({"customers": made}))
            if path == "/_mock/features":
                rows = data.get("features", [data]) if isinstance(data, dict) else data
                made = [self.add_feature(**r) for r in rows]
                return _Reply(200, orjson.dumps({"features": made}))
            if path == "/_mock/api-key":
                if not isinstance(data, dict) or not isinstance(data.get("api_key"), str):
                    raise ValueError('body must be {"api_key": "...", "forbidden_key"?: "...", '
                                     '"config_key"?: "..."}')
                self.set_api_key(data["api_key"], **{k: data[k] for k in
                                                     ("forbidden_key", "config_key") if k in data})
                return _Reply(200, ok)
            if path == "/_mock/capacity":
                opts = data or {}
                unknown = set(opts) - {"capacity", "queue", "schedule", "retry_after_s"}
                if unknown:
                    raise ValueError(f"unknown capacity keys: {sorted(unknown)}")
                schedule = opts.get("schedule")
                if isinstance(schedule, str):
                    schedule = parse_schedule(schedule)
                return _Reply(200, orjson.dumps(self.capacity.configure(
                    opts.get("capacity"), opts.get("queue"), schedule, opts.get("retry_after_s"))))
            if path == "/_mock/merge":
                return _Reply(200, orjson.dumps({"merged": self.merge()}))
            if path == "/_mock/drain":
                return _Reply(200, orjson.dumps({"stored": self.drain_queue()}))
            if path == "/_mock/seed-defaults":
                self.seed_defaults()
                return _Reply(200, ok)
        return _Reply(404, orjson.dumps({"error": f"no control endpoint {method} {path}"}))


# ------------------------------------------------------------------------------------ CLI

def _build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="flexprice-beam mock-server",
                                description="Local Flexprice stand-in with fault injection.")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=18080, help="0 = any free port")
    p.add_argument("--api-key", default="test-key")
    p.add_argument("--forbidden-key", default="forbidden-key", help="a key answered 403")
    p.add_argument("--config-key", default=None,
                   help="a key as in the server's config file (self-hosted, e.g. "
                        "sk_local_flexprice_test_key): it carries no environment, so every "
                        "request must send X-Environment-ID: <--environment-id>, else 403")
    p.add_argument("--environment-id", default="env_mock")
    p.add_argument("--queued", action="store_true",
                   help="202 means queued, as on the server: events are stored --queue-delay-s "
                        "later at --queue-rate events/s, and repeats stay visible to read-back "
                        "until POST /_mock/merge")
    p.add_argument("--queue-delay-s", type=float, default=1.0)
    p.add_argument("--queue-rate", type=float, default=12.0,
                   help="events/s the queue consumer stores (the server's default: ~12)")
    p.add_argument("--latency-ms", type=float, default=0.0)
    p.add_argument("--fault-rate", type=float, default=0.0,
                   help="probability of a transient fault per ingest request, spread evenly over "
                        "429/500/502/503/reset/ack_lost")
    p.add_argument("--faults", default=None,
                   help="full fault config as JSON, or @path to a JSON file (other flags override)")
    p.add_argument("--seed", type=int, default=None, help="seed for the fault RNG")
    p.add_argument("--reject-every-nth", type=int, default=None)
    p.add_argument("--fail-all-status", type=int, default=None)
    p.add_argument("--fail-all-duration-s", type=float, default=None)
    p.add_argument("--retry-after-s", type=int, default=None)
    p.add_argument("--seed-defaults", action="store_true",
                   help="create customers cust_001..003 and features for api.request/storage.gb")
    p.add_argument("--fast", action="store_true", help="skip deep per-event type validation")
    p.add_argument("--error-style", choices=("flat", "nested"), default="flat",
                   help="flat: the current server's bodies (default); nested: "
                        '{"success": false, "error": {...}} as servers before April 2026')
    p.add_argument("--capacity", type=int, default=None,
                   help="ingest requests served at once (each for --latency-ms); the next "
                        "--capacity-queue wait their turn, beyond that 429 at once "
                        "(default: unlimited)")
    p.add_argument("--capacity-queue", type=int, default=None,
                   help="requests that may wait for a server (default: as many as --capacity)")
    p.add_argument("--capacity-schedule", type=parse_schedule, default=None,
                   help="change the capacity during the run: seconds:capacity,... counted from "
                        "the first ingest request, e.g. 0:32,10:4,20:32")
    p.add_argument("--capacity-retry-after-s", type=int, default=None,
                   help="Retry-After on the over-capacity 429s (default: none)")
    p.add_argument("--verbose", action="store_true", help="log every request to stderr")
    return p


def keep_freed_memory() -> None:
    """glibc returns freed heap to the kernel eagerly; the store keeps every event, so each
    request re-faults fresh pages (~1 page fault per stored event, 1.5 µs each on this VM,
    docs/benchmarks.md). Keep up to 256 MiB of freed heap instead. No-op off glibc."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_top_pad, m_mmap_threshold = -1, -2, -3
        libc.mallopt(m_trim_threshold, 256 << 20)
        libc.mallopt(m_top_pad, 64 << 20)
        libc.mallopt(m_mmap_threshold, 32 << 20)
    except (OSError, AttributeError):
        pass


def main(argv: list[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    cfg: dict = {}
    if args.faults:
        text = args.faults
        try:
            if text.startswith("@"):
                with open(text[1:], encoding="utf-8") as fh:
                    text = fh.read()
            cfg = json.loads(text)
        except (OSError, ValueError) as e:
            print(f"error: --faults: {e}", file=sys.stderr)
            return 2
        if not isinstance(cfg, dict):
            print("error: --faults must be a JSON object", file=sys.stderr)
            return 2
    for key in ("fault_rate", "seed", "reject_every_nth", "fail_all_status", "fail_all_duration_s",
                "retry_after_s"):
        val = getattr(args, key)
        if val is not None and not (key == "fault_rate" and val == 0):
            cfg[key] = val
    if args.latency_ms:
        cfg["latency_ms"] = args.latency_ms
    try:
        mock = MockFlexprice(args.host, args.port, args.api_key, forbidden_key=args.forbidden_key,
                             faults=cfg, fast=args.fast, error_style=args.error_style,
                             seed_defaults=args.seed_defaults, verbose=args.verbose,
                             config_key=args.config_key, environment_id=args.environment_id,
                             queued=args.queued, queue_delay_s=args.queue_delay_s,
                             queue_rate=args.queue_rate,
                             capacity=Capacity(args.capacity, args.capacity_queue,
                                               args.capacity_schedule,
                                               args.capacity_retry_after_s))
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        mock.start()
    except OSError as e:
        print(f"error: cannot listen on {args.host}:{args.port}: {e}", file=sys.stderr)
        return 1
    # A dedicated server process: keep the cyclic GC from rescanning every parsed batch.
    gc.freeze()
    gc.set_threshold(50_000, 50, 100)
    if args.fast:
        keep_freed_memory()
    print(f"Flexprice stand-in listening on {mock.url}", flush=True)
    stop = threading.Event()
    previous = {}
    try:
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, lambda *_: stop.set())
    except ValueError:  # not the main thread: rely on the caller
        pass
    try:
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        mock.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
