"""``HttpTransport``: requests to Flexprice on keep-alive ``http.client`` connections.

It reports what happened (an ``Answer``) and decides nothing (``policy.decide`` does).
``send`` writes a request and returns, ``ready`` says which answers can be read (or timed
out), ``read`` reads one; ``request`` is the three in a row.  Kept from ``requests`` (io/api.py):
certifi or ``REQUESTS_CA_BUNDLE``, ``HTTPS_PROXY``/``NO_PROXY``, stale connections replaced.

Why not ``requests``: a bulk POST costs ~10x its Python there, on the pipeline's own thread.
Why not ``http.client``'s ``request()``/``getresponse()`` either: ~70 µs more per 500-event
request (every header checked and formatted again; an ``email.parser`` pass and a buffered
reader per answer), ~2 % of the pipeline.  So http.client only opens the connections (TLS,
proxy tunnels); a head built once frames each request and httptools (llhttp, Node.js's
parser) reads the answers (docs/benchmarks.md, "HTTP framing").
"""

from __future__ import annotations

import base64
import http.client
import re
import select
import selectors
import socket
import ssl
import time
import urllib.request
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import unquote, urlsplit

import httptools

from flexprice_beam.core.config import MAX_BODY_BYTES, FlexpriceOutput
from flexprice_beam.io.api import (
    check_transport,
    describe_error,
    redact,
    request_headers,
    secret_values,
    ssl_context,
)
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
        check_transport(cfg)  # plain http only to this machine (InsecureTransportError)
        self.base_url = cfg.base_url
        parts = urlsplit(self.base_url)
        self._timeout = cfg.timeout
        key = resolve_api_key(cfg)  # on the worker, in the sink's setup()
        self._headers = request_headers(cfg, key)
        self.environment_id = cfg.environment_id
        self._secrets = secret_values(cfg, key)  # redacted from every error text
        self._https = parts.scheme == "https"
        self._host = parts.hostname or ""
        self._port = parts.port or (443 if self._https else 80)
        self._ssl = ssl_context(verify=not cfg.skip_cert_verify) if self._https else None
        self._proxy = proxy_for(parts.scheme, self._host)
        # Through a plain-http proxy the request line names the whole URL; https tunnels.
        self._prefix = self.base_url if self._proxy and not self._https else ""
        if self._prefix:
            self._headers.update(self._proxy[2])
        # Host as http.client names it: the URL's through a plain proxy, else the target's
        self._host_header = parts.netloc if self._prefix else host_header(
            self._host, self._port, 443 if self._https else 80)
        self._heads: dict[tuple[str, str], Head] = {}
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
            conn.sock.sendall(framed(self._head(method, path), body or b""))
        except _ERRORS as exc:
            ex.answer = self._early_answer(conn, exc, body, ex.started)
            conn.close()
            self._done.append(ex)
            return ex
        self._busy[conn.sock.fileno()] = ex
        self._selector.register(conn.sock, selectors.EVENT_READ)
        return ex

    def _head(self, method: str, path: str) -> Head:
        """Built once per request line; a header http.client refuses fails each send as there."""
        head = self._heads.get((method, path))
        if head is None:
            head = self._heads[method, path] = request_head(
                method, self._prefix + path, self._host_header, self._headers)
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
            reply = read_reply(conn.sock)
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
        # A connection answered less than ``recheck`` ago is reused without asking the kernel:
        # the zero-timeout select() gives the GIL away, stalling the bundle thread behind the
        # gRPC reader (a quarter of the collector's samples on Prism). If the server closed
        # it anyway, the send fails and is retried like any connection error.
        while self._idle:
            conn, since = self._idle.pop()
            if time.monotonic() - since < recheck or not dropped(conn):
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
                return _answer(read_reply(conn.sock), started)
            except _ERRORS:
                pass
        if isinstance(exc, OSError) and body is not None and len(body) > MAX_BODY_BYTES:
            return Answer(400, "", error=self._redact(describe_error(exc, self.base_url)),
                          latency=time.monotonic() - started,
                          note=f"the connection broke while sending a {len(body)}-byte body, "
                               f"over Flexprice's {MAX_BODY_BYTES}-byte cap (an oversize 400)")
        return self._failed(exc, started)

    def _failed(self, exc: BaseException, started: float) -> Answer:
        if isinstance(exc, ValueError):  # http.client refuses a header value it cannot send
            text = f"InvalidHeader: {exc}"
        else:
            text = describe_error(exc, self.base_url)
        # a certificate that does not verify (http.client raises ssl's own error): retrying
        # cannot help, and must not be hidden
        fatal = "certificate" if isinstance(exc, ssl.SSLCertVerificationError) \
            else "proxy" if _proxy_refused(exc) else None
        return Answer(None, "", error=self._redact(text), latency=time.monotonic() - started,
                      fatal=fatal)

    def _redact(self, text: str) -> str:
        """Error texts end up in logs and dead letters: never with a secret in them
        (http.client quotes a header value it cannot send, e.g. a key with a newline)."""
        return redact(text, self._secrets)


def _answer(reply: Reply, started: float) -> Answer:
    return Answer(reply.status, reply.body.decode("utf-8", "replace"),
                  parse_retry_after(reply.retry_after), latency=time.monotonic() - started)


def dropped(conn: http.client.HTTPConnection) -> bool:
    """The peer closed an idle keep-alive connection (readable with nothing asked: EOF)."""
    sock = conn.sock
    if sock is None:
        return False
    try:
        return bool(select.select([sock], [], [], 0)[0])
    except (OSError, ValueError):
        return True


def proxy_for(scheme: str, host: str) -> tuple[str, int, dict[str, str]] | None:
    """``(host, port, headers)`` of the proxy the environment names for this URL, if any."""
    proxy = urllib.request.getproxies().get(scheme)
    if not proxy or urllib.request.proxy_bypass(host):
        return None
    p = urlsplit(proxy if "://" in proxy else "http://" + proxy)
    headers = {}
    if p.username:
        cred = f"{unquote(p.username)}:{unquote(p.password or '')}".encode()
        headers["Proxy-Authorization"] = "Basic " + base64.b64encode(cred).decode()
    return p.hostname or "", p.port or 8080, headers


def _proxy_refused(exc: BaseException) -> bool:
    """The HTTPS proxy answered CONNECT with 407: wrong or missing proxy credentials."""
    return isinstance(exc, OSError) and str(exc).startswith("Tunnel connection failed: 407")


# ---------------------------------------------------------------- the bytes of an exchange

_LEGAL_NAME = re.compile(rb"[^:\s][^:\r\n]*").fullmatch  # http.client's putheader rules
_ILLEGAL_VALUE = re.compile(rb"\n(?![ \t])|\r(?![ \t\n])").search


def host_header(host: str, port: int, default_port: int) -> str:
    """``Host`` as http.client writes it: IPv6 in brackets without its zone, no default port."""
    host = f"[{host.split('%', 1)[0]}]" if ":" in host else host
    return host if port == default_port else f"{host}:{port}"


#: a request's head, split around its Content-Length value (``framed`` puts it in)
Head = tuple[bytes, bytes]


def request_head(method: str, target: str, host: str, headers: dict[str, str]) -> Head:
    """``(before, after)`` the Content-Length value: the bytes http.client sends, in its order;
    a header it refuses raises its ``ValueError``. ``host`` as http.client names it."""
    names = {k.lower() for k in headers}
    lines = [f"{method} {target} HTTP/1.1".encode("ascii")]
    if "host" not in names:
        lines.append(b"Host: " + host.encode("ascii" if host.isascii() else "idna"))
    if "accept-encoding" not in names:
        lines.append(b"Accept-Encoding: identity")
    after = b""
    for name, value in headers.items():
        raw_name, raw_value = name.encode("ascii"), value.encode("latin-1")
        if not _LEGAL_NAME(raw_name):
            raise ValueError(f"Invalid header name {raw_name!r}")
        if _ILLEGAL_VALUE(raw_value):
            raise ValueError(f"Invalid header value {raw_value!r}")
        after += raw_name + b": " + raw_value + b"\r\n"
    return b"\r\n".join(lines) + b"\r\nContent-Length: ", after + b"\r\n"


def framed(head: Head, body: bytes) -> bytes:
    """A request as one write: one copy of ``body``, one syscall."""
    return b"".join((head[0], b"%d\r\n" % len(body), head[1], body))


@dataclass(slots=True)
class Reply:
    status: int
    body: bytes
    retry_after: str | None  # repeated headers joined with ", ", as http.client does
    keep_alive: bool


class _Parse:
    """httptools' callbacks for one answer; 1xx interim answers are skipped."""

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.on_message_begin()

    def on_message_begin(self) -> None:  # again after a 1xx: 100 Continue, 103 Early Hints
        self.retry_after: list[bytes] = []
        self.chunks: list[bytes] = []
        self.status = 0  # set once the headers are in
        self.done = self.keep_alive = self.sized = False

    def on_header(self, name: bytes, value: bytes) -> None:
        low = name.lower()
        if low == b"retry-after":
            self.retry_after.append(value)
        self.sized |= low in (b"content-length", b"transfer-encoding")  # else: ends at EOF

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        self.keep_alive = self.parser.should_keep_alive()

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)

    def on_message_complete(self) -> None:
        self.done = self.status >= 200


def read_reply(sock: socket.socket) -> Reply:
    """One answer from ``sock`` (its timeout bounds each read), or what http.client raises:
    ``RemoteDisconnected``, ``IncompleteRead``, ``HTTPException``, the socket's errors."""
    p, seen = _Parse(), False
    while not p.done:
        data = sock.recv(65536)
        if not data:
            if p.status and not p.sized:  # the body ends where the connection does
                p.done, p.keep_alive = True, False
                break
            if not seen:
                raise http.client.RemoteDisconnected("Remote end closed connection without "
                                                     "response")
            raise http.client.IncompleteRead(b"".join(p.chunks))
        seen = True
        try:
            p.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            raise http.client.HTTPException(f"malformed answer: {exc}") from None
    text = b", ".join(p.retry_after).decode("latin-1") if p.retry_after else None
    return Reply(p.status, b"".join(p.chunks), text, p.keep_alive)
