"""``FlexpriceClient``: the HTTP transport to Flexprice, usable without Beam.

One keep-alive ``http.client`` connection per thread, a timeout on every call, and answers
classified by the seed's error table.  It makes exactly one attempt per call; retrying is
``EventDeliverer``'s job (see ``flexprice_beam.io.deliver``).

Why not ``requests``: sending shares the GIL (and mostly the thread) with the pipeline, and a
100 KB bulk POST costs ~0.5 ms of Python in ``requests`` against ~0.05 ms in ``http.client``
(docs/benchmarks.md).  What ``requests`` gave us is kept: certificates verified against
certifi's bundle (or ``REQUESTS_CA_BUNDLE``/``SSL_CERT_FILE``), ``HTTPS_PROXY``/``NO_PROXY``,
and a pooled connection the server closed while idle is replaced before it is reused.
"""

from __future__ import annotations

import base64
import http.client
import logging
import os
import select
import ssl
import threading
import time
import urllib.request
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import orjson

from flexprice_beam.core.config import MAX_BODY_BYTES, FlexpriceOutput
from flexprice_beam.io.api import (  # noqa: F401 - FlexpriceAuthError, auth_advice: re-exported
    FlexpriceAuthError,
    InsecureTransportError,
    Kind,
    auth_advice,
    check_transport,
    describe,
    kind_of,
    redact,
    request_headers,
    secret_values,
)
from flexprice_beam.io.retry import parse_retry_after
from flexprice_beam.io.secrets import resolve_api_key

log = logging.getLogger("flexprice_beam.client")

BULK_PATH = "/v1/events/bulk"
SINGLE_PATH = "/v1/events"


@dataclass(slots=True)
class Answer:
    """One HTTP exchange's outcome (status None when no response came back)."""

    status: int | None
    body: str
    retry_after: float | None = None
    error: str | None = None
    latency: float = 0.0
    #: why no answer will ever come on retrying, so the run stops: "certificate" (it does not
    #: verify) or "proxy" (HTTPS_PROXY refused our credentials); None otherwise
    fatal: str | None = None
    #: how the status was known when no response was read (an oversize body's broken pipe)
    note: str | None = None

    @property
    def kind(self) -> Kind:
        return Kind.AUTH if self.fatal else kind_of(self.status)

    def describe(self) -> str:
        return describe(self.status, self.body,
                        f"assumed: {self.note}; {self.error}" if self.note else self.error)


class FlexpriceClient:
    """Thin transport: ``post_bulk``/``post_single`` send pre-serialised events once."""

    def __init__(self, cfg: FlexpriceOutput):
        check_transport(cfg)
        self.base_url = cfg.base_url
        parts = urlsplit(self.base_url)
        self._timeout = cfg.timeout
        self._secret = resolve_api_key(cfg)  # on the worker, in the sink's setup()
        self._headers = request_headers(cfg, self._secret)
        self.environment_id = cfg.environment_id
        # extra header values may be gateway tokens: redact them like the key
        self._secrets = secret_values(cfg, self._secret)
        self._https = parts.scheme == "https"
        self._host = parts.hostname or ""
        self._port = parts.port or (443 if self._https else 80)
        self._ssl = _ssl_context(verify=not cfg.skip_cert_verify) if self._https else None
        self._proxy = _proxy_for(parts.scheme, self._host)
        # Through a plain-http proxy the request line names the whole URL; https tunnels.
        self._prefix = self.base_url if self._proxy and not self._https else ""
        if self._prefix:
            self._headers.update(self._proxy[2])
        self._local = threading.local()

    def __getstate__(self) -> dict[str, Any]:
        raise TypeError("FlexpriceClient holds live connections; build one per worker in setup()")

    def _connection(self) -> http.client.HTTPConnection:
        """This thread's keep-alive connection, replaced when the server closed it meanwhile."""
        conn = getattr(self._local, "conn", None)
        if conn is not None and dropped(conn):
            conn.close()
            conn = None
        if conn is None:
            conn = self._local.conn = self.new_connection()
        return conn

    def new_connection(self) -> http.client.HTTPConnection:
        """A connection of the caller's own (it connects on first use)."""
        if self._proxy is None:
            if self._https:
                return http.client.HTTPSConnection(self._host, self._port, timeout=self._timeout,
                                                   context=self._ssl)
            return http.client.HTTPConnection(self._host, self._port, timeout=self._timeout)
        phost, pport, pheaders = self._proxy
        if not self._https:
            return http.client.HTTPConnection(phost, pport, timeout=self._timeout)
        conn = http.client.HTTPSConnection(phost, pport, timeout=self._timeout, context=self._ssl)
        conn.set_tunnel(self._host, self._port, headers=pheaders)
        return conn

    def _drop(self) -> None:
        conn = getattr(self._local, "conn", None)
        self._local.conn = None
        if conn is not None:
            conn.close()

    # The two halves of one exchange, so a caller can send on several connections and read
    # the answers as they come (``io.inline``); ``request`` is both in a row.

    def send(self, conn: http.client.HTTPConnection, method: str, path: str,
             body: bytes | None, started: float) -> Answer | None:
        """Send a request on ``conn``; an ``Answer`` only if that already failed."""
        try:
            conn.request(method, self._prefix + path, body=body, headers=self._headers)
        except (OSError, http.client.HTTPException, ValueError) as exc:
            answer = self._early_answer(conn, exc, body, started)
            conn.close()
            return answer
        return None

    def _early_answer(self, conn: http.client.HTTPConnection, exc: BaseException,
                      body: bytes | None, started: float) -> Answer:
        """Sending failed. Flexprice answers a body over its 32 MiB cap with 400 and
        ``Connection: close`` before reading it all, so the write breaks: that 400 may already
        be waiting in the socket — read it. A body over the cap that broke without any answer
        is that same 400 (resending it whole can never succeed; splitting it can), not a
        network error to retry."""
        if isinstance(exc, OSError) and not isinstance(exc, TimeoutError) \
                and conn.sock is not None:
            try:
                conn.sock.settimeout(min(self._timeout, 2.0))  # the peer has hung up already
                resp = conn.getresponse()
                data = resp.read()
                return Answer(resp.status, data.decode("utf-8", "replace"),
                              parse_retry_after(resp.getheader("Retry-After")),
                              latency=time.monotonic() - started)
            except (OSError, http.client.HTTPException, ValueError):
                pass
        if isinstance(exc, OSError) and body is not None and len(body) > MAX_BODY_BYTES:
            return Answer(400, "", error=self._redact(_describe(exc, self.base_url)),
                          latency=time.monotonic() - started,
                          note=f"the connection broke while sending a {len(body)}-byte body, "
                               f"over Flexprice's {MAX_BODY_BYTES}-byte cap (an oversize 400)")
        return self._failed(exc, started)

    def receive(self, conn: http.client.HTTPConnection, started: float) -> tuple[Answer, bool]:
        """Read the answer to the request sent on ``conn``: ``(answer, conn still usable)``."""
        try:
            resp = conn.getresponse()
            data = resp.read()
        except (OSError, http.client.HTTPException, ValueError) as exc:
            conn.close()  # possibly half-dead: the next call opens a fresh one
            return self._failed(exc, started), False
        reusable = not resp.will_close
        if not reusable:
            conn.close()
        return Answer(resp.status, data.decode("utf-8", "replace"),
                      parse_retry_after(resp.getheader("Retry-After")),
                      latency=time.monotonic() - started), reusable

    def _failed(self, exc: BaseException, started: float) -> Answer:
        if isinstance(exc, ValueError):  # http.client refuses a header value it cannot send
            text = f"InvalidHeader: {exc}"
        else:
            text = _describe(exc, self.base_url)
        fatal = "certificate" if _cert_failure(exc) else "proxy" if _proxy_refused(exc) else None
        return Answer(None, "", error=self._redact(text), latency=time.monotonic() - started,
                      fatal=fatal)

    def request(self, method: str, path: str, body: bytes | None = None) -> Answer:
        started = time.monotonic()
        conn = self._connection()
        failed = self.send(conn, method, path, body, started)
        if failed is not None:
            self._local.conn = None
            return failed
        answer, reusable = self.receive(conn, started)
        if not reusable:
            self._local.conn = None
        return answer

    def _redact(self, text: str) -> str:
        """Error texts end up in logs and dead letters: never with the key in them (http.client
        quotes a header value it cannot send, e.g. a key with a stray newline)."""
        return redact(text, self._secrets)

    def post_bulk(self, bodies: list[bytes]) -> Answer:
        return self.request("POST", BULK_PATH, bulk_body(bodies))

    def post_single(self, body: bytes) -> Answer:
        return self.request("POST", SINGLE_PATH, body)

    def get_json(self, path: str) -> tuple[Answer, Any]:
        answer = self.request("GET", path)
        return answer, _loads(answer)

    def post_json(self, path: str, payload: Any) -> tuple[Answer, Any]:
        answer = self.request("POST", path, orjson.dumps(payload))
        return answer, _loads(answer)

    def close(self) -> None:
        self._drop()


def bulk_body(bodies: list[bytes]) -> bytes:
    """``{"events":[…]}`` from events serialised once upstream, byte-identical on resends."""
    return b'{"events":[' + b",".join(bodies) + b"]}"


def dropped(conn: http.client.HTTPConnection) -> bool:
    """The peer closed an idle keep-alive connection (readable with nothing asked: EOF)."""
    sock = conn.sock
    if sock is None:
        return False
    try:
        return bool(select.select([sock], [], [], 0)[0])
    except (OSError, ValueError):
        return True


def _ssl_context(verify: bool) -> ssl.SSLContext:
    """Trust what ``requests`` trusts: ``REQUESTS_CA_BUNDLE``/``CURL_CA_BUNDLE``, else
    certifi's bundle, else the system store; ``SSL_CERT_FILE`` as OpenSSL reads it."""
    if not verify:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        return ctx
    cafile = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") \
        or os.environ.get("SSL_CERT_FILE")
    if not cafile:
        try:
            import certifi

            cafile = certifi.where()
        except ImportError:
            cafile = None
    return ssl.create_default_context(cafile=cafile)


def _proxy_for(scheme: str, host: str) -> tuple[str, int, dict[str, str]] | None:
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


def _describe(exc: BaseException, url: str) -> str:
    """``ConnectionRefusedError: [Errno 111] Connection refused (http://host:port)``."""
    text = str(exc) or repr(exc)
    return f"{type(exc).__name__}: {text} ({url})"


def _cert_failure(exc: BaseException) -> bool:
    """A certificate that does not verify: retrying cannot help, and must not be hidden."""
    seen: set[int] = set()
    todo: list[Any] = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, ssl.SSLCertVerificationError):
            return True
        todo.extend([e.__cause__, e.__context__, getattr(e, "reason", None)])
        todo.extend(a for a in getattr(e, "args", ()) if isinstance(a, BaseException))
    return False


def _proxy_refused(exc: BaseException) -> bool:
    """The HTTPS proxy answered CONNECT with 407: wrong or missing proxy credentials."""
    return isinstance(exc, OSError) and str(exc).startswith("Tunnel connection failed: 407")


def _loads(answer: Answer) -> Any:
    try:
        return orjson.loads(answer.body) if answer.body else None
    except orjson.JSONDecodeError:
        return None
