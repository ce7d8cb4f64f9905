"""``HttpTransport``: requests to one Flexprice endpoint on keep-alive ``http.client`` connections.

It reports what happened (an ``Answer``) and decides nothing (``policy.decide`` does): ``send``
writes a request and returns, ``ready`` says which answers can be read (or timed out), ``read``
reads one.  What ``requests`` gave is kept: certifi or ``REQUESTS_CA_BUNDLE``, ``HTTPS_PROXY``/
``NO_PROXY``, stale connections replaced; ``requests`` itself costs ~10x the Python per bulk POST,
on the pipeline's own thread (docs/benchmarks.md).  The bytes go through ``io/http1.py``.
"""

from __future__ import annotations

import http.client
import selectors
import ssl
import time
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit

from flexprice_beam.core.config import MAX_BODY_BYTES, FlexpriceOutput
from flexprice_beam.io import api, http1
from flexprice_beam.io.flexprice.policy import Answer, parse_retry_after
from flexprice_beam.io.secrets import resolve_api_key

BULK_PATH = "/v1/events/bulk"
SINGLE_PATH = "/v1/events"
#: seconds a connection may have been idle and still be reused without a dropped() check
RECHECK_IDLE = 1.0
_ERRORS = (OSError, http.client.HTTPException, ValueError)


@dataclass(slots=True, eq=False)
class Exchange:
    """One request in flight; ``tag`` is the caller's (the executor's job)."""

    conn: Any
    started: float
    tag: Any = None
    answer: Answer | None = None  # known without reading: the send failed, or timed out


class Transport(Protocol):
    """What the executor needs; tests pass a fake one."""

    base_url: str
    environment_id: str | None

    def send(self, path: str, body: bytes, tag: Any = None) -> Exchange: ...
    def ready(self, timeout: float) -> list[Exchange]: ...
    def read(self, exchange: Exchange) -> Answer: ...
    def close(self) -> None: ...


def bulk_body(bodies: list[bytes]) -> bytes:
    """``{"events":[…]}`` from events serialised once upstream, byte-identical on resends."""
    return bulk_of(b",".join(bodies))


def bulk_of(joined: bytes) -> bytes:
    """``{"events":[…]}`` around event bodies already joined by commas."""
    return b'{"events":[' + joined + b"]}"


class HttpTransport:
    """Requests to one Flexprice endpoint; single-threaded (one per executor)."""

    def __init__(self, cfg: FlexpriceOutput):
        api.check_transport(cfg)  # plain http only to this machine (InsecureTransportError)
        self.base_url = cfg.base_url
        parts = urlsplit(self.base_url)
        self._timeout = cfg.timeout
        key = resolve_api_key(cfg)  # on the worker, in the sink's setup()
        self._headers = api.request_headers(cfg, key)
        self.environment_id = cfg.environment_id
        self._secrets = api.secret_values(cfg, key)  # redacted from every error text
        self._https = parts.scheme == "https"
        self._host = parts.hostname or ""
        self._default_port = 443 if self._https else 80  # no ":443" in Host for https
        self._port = parts.port or self._default_port
        self._ssl = api.ssl_context(verify=not cfg.skip_cert_verify) if self._https else None
        self._proxy = http1.proxy_for(parts.scheme, self._host)
        # Through a plain-http proxy the request line names the whole URL; https tunnels.
        self._prefix = self.base_url if self._proxy and not self._https else ""
        if self._prefix:
            self._headers.update(self._proxy[2])
        self._heads: dict[tuple[str, str], http1.Head] = {}
        self._idle: list[tuple[http.client.HTTPConnection, float]] = []  # (conn, idle since)
        self._busy: dict[int, Exchange] = {}
        self._done: list[Exchange] = []
        self._selector = selectors.DefaultSelector()

    def __getstate__(self) -> dict[str, Any]:
        raise TypeError("HttpTransport holds live connections; build one per worker in setup()")

    def send(self, path: str, body: bytes | None, tag: Any = None, method: str = "POST",
             recheck: float | None = None) -> Exchange:
        """Write a request and return; its answer comes out of ``ready``."""
        conn = self._connection(RECHECK_IDLE if recheck is None else recheck)
        ex = Exchange(conn, time.monotonic(), tag)
        try:
            if conn.sock is None:
                conn.connect()  # TCP, TLS, the proxy's tunnel: http.client's
            conn.sock.sendall(http1.framed(self._head(method, path), body or b""))
        except _ERRORS as exc:
            ex.answer = self._early_answer(conn, exc, body, ex.started)
            conn.close()
            self._done.append(ex)
            return ex
        self._busy[conn.sock.fileno()] = ex
        self._selector.register(conn.sock, selectors.EVENT_READ)
        return ex

    def _head(self, method: str, path: str) -> http1.Head:
        """Built once per request line; a header http.client refuses fails each send as there."""
        head = self._heads.get((method, path))
        if head is None:
            head = self._heads[method, path] = http1.request_head(
                method, self._prefix + path, self._host, self._port, self._headers,
                self._default_port)
        return head

    def ready(self, timeout: float) -> list[Exchange]:
        """Exchanges whose answer can be read now (or are over the timeout), waiting up to
        ``timeout`` seconds for one."""
        done, self._done = self._done, []
        if self._busy:
            for key, _ in self._selector.select(0.0 if done else timeout):
                done.append(self._release(key.fd))
            now = time.monotonic()
            for fd in [fd for fd, x in self._busy.items() if now - x.started > self._timeout]:
                ex = self._release(fd)
                ex.conn.close()
                ex.answer = Answer(None, "", error=f"TimeoutError: no answer within "
                                   f"{self._timeout:g}s ({self.base_url})",
                                   latency=now - ex.started)
                done.append(ex)
        return done

    def read(self, ex: Exchange) -> Answer:
        if ex.answer is not None:
            return ex.answer
        conn = ex.conn
        try:
            reply = http1.read_reply(conn.sock)
        except _ERRORS as exc:
            conn.close()  # possibly half-dead: the next call opens a fresh one
            return self._failed(exc, ex.started)
        if reply.keep_alive:
            self._idle.append((conn, time.monotonic()))
        else:
            conn.close()
        return _answer(reply, ex.started)

    def _release(self, fd: int) -> Exchange:
        ex = self._busy.pop(fd)
        self._selector.unregister(ex.conn.sock)
        return ex

    def request(self, method: str, path: str, body: bytes | None = None) -> Answer:
        """Send and wait for the answer (the socket's timeout bounds each read)."""
        ex = self.send(path, body, method=method, recheck=0.0)  # seldom: always check
        if ex.answer is None:
            self._release(ex.conn.sock.fileno())
        else:
            self._done.remove(ex)
        return self.read(ex)

    def post_bulk(self, bodies: list[bytes]) -> Answer:
        return self.request("POST", BULK_PATH, bulk_body(bodies))

    def close(self) -> None:
        """Abandon what is in flight (its batches were not acknowledged: never counted)."""
        for fd in list(self._busy):
            self._release(fd).conn.close()
        for conn, _ in self._idle:
            conn.close()
        self._idle.clear()
        self._done.clear()

    def _connection(self, recheck: float) -> http.client.HTTPConnection:
        # Reused without asking the kernel if answered less than ``recheck`` ago: select()
        # gives the GIL away (a quarter of the samples on Prism). A dropped one fails the send,
        # retried like any connection error.
        while self._idle:
            conn, since = self._idle.pop()
            if time.monotonic() - since < recheck or not http1.dropped(conn):
                return conn
            conn.close()
        # a new one (it connects on first use), to the proxy if there is one
        host, port = self._proxy[:2] if self._proxy else (self._host, self._port)
        if not self._https:
            return http.client.HTTPConnection(host, port, timeout=self._timeout)
        conn = http.client.HTTPSConnection(host, port, timeout=self._timeout, context=self._ssl)
        if self._proxy:  # https through a proxy: a CONNECT tunnel
            conn.set_tunnel(self._host, self._port, headers=self._proxy[2])
        return conn

    def _early_answer(self, conn: http.client.HTTPConnection, exc: BaseException,
                      body: bytes | None, started: float) -> Answer:
        """Sending failed. Flexprice answers a body over its 32 MiB cap with 400 and closes
        before reading it all, so the write breaks: read that 400 if it is there. A body over
        the cap that broke without an answer is that same 400 (splitting can succeed,
        resending it whole never), not a network error to retry."""
        if isinstance(exc, OSError) and not isinstance(exc, TimeoutError) \
                and conn.sock is not None:
            try:
                conn.sock.settimeout(min(self._timeout, 2.0))  # the peer has hung up already
                return _answer(http1.read_reply(conn.sock), started)
            except _ERRORS:
                pass
        if isinstance(exc, OSError) and body is not None and len(body) > MAX_BODY_BYTES:
            return Answer(400, "", error=self._redact(api.describe_error(exc, self.base_url)),
                          latency=time.monotonic() - started,
                          note=f"the connection broke while sending a {len(body)}-byte body, "
                               f"over Flexprice's {MAX_BODY_BYTES}-byte cap (an oversize 400)")
        return self._failed(exc, started)

    def _failed(self, exc: BaseException, started: float) -> Answer:
        # ValueError: http.client refuses a header value it cannot send
        text = f"InvalidHeader: {exc}" if isinstance(exc, ValueError) \
            else api.describe_error(exc, self.base_url)
        # no retry can cure a certificate that does not verify, or a proxy's 407
        fatal = "certificate" if isinstance(exc, ssl.SSLCertVerificationError) \
            else "proxy" if http1.proxy_refused(exc) else None
        return Answer(None, "", error=self._redact(text), latency=time.monotonic() - started,
                      fatal=fatal)

    def _redact(self, text: str) -> str:
        """Error texts go to logs and dead letters, never with a secret (a refused header's)."""
        return api.redact(text, self._secrets)


def _answer(reply: http1.Reply, started: float) -> Answer:
    return Answer(reply.status, reply.body.decode("utf-8", "replace"),
                  parse_retry_after(reply.retry_after), latency=time.monotonic() - started)
