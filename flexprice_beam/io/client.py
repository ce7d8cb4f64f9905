"""``FlexpriceClient``: the HTTP transport to Flexprice, usable without Beam.

One pooled keep-alive ``requests.Session`` per thread (sessions are not thread-safe), a
timeout on every call, and answers classified by the seed's error table.  It makes exactly
one attempt per call; retrying is ``EventDeliverer``'s job (see ``flexprice_beam.io.deliver``).
"""

from __future__ import annotations

import enum
import ipaddress
import logging
import ssl
import threading
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import orjson
import requests
from requests.adapters import HTTPAdapter

from flexprice_beam.config import FlexpriceOutput
from flexprice_beam.io.retry import parse_retry_after

log = logging.getLogger("flexprice_beam.client")

BULK_PATH = "/v1/events/bulk"
SINGLE_PATH = "/v1/events"


class Kind(enum.Enum):
    ACCEPTED = "accepted"  # 2xx
    REJECTED = "rejected"  # 4xx other than auth/429: the events themselves are bad
    AUTH = "auth"  # 401/403: stop the run, retrying cannot help
    RETRY = "retry"  # 429, 5xx, connection errors, timeouts


class FlexpriceAuthError(RuntimeError):
    """401/403 from Flexprice: the key is wrong or lacks permission; the run must stop."""


class InsecureTransportError(ValueError):
    """Plain http to a host that is not this machine, without ``allow_insecure``."""


@dataclass(slots=True)
class Answer:
    """One HTTP exchange's outcome (status None when no response came back)."""

    status: int | None
    body: str
    retry_after: float | None = None
    error: str | None = None
    latency: float = 0.0
    #: no answer will ever come on retrying (a certificate that does not verify): stop the run
    fatal: bool = False

    @property
    def kind(self) -> Kind:
        if self.fatal:
            return Kind.AUTH
        s = self.status
        if s is None or s == 429 or s >= 500 or s == 408:
            return Kind.RETRY
        if 200 <= s < 300:
            return Kind.ACCEPTED
        if s in (401, 403):
            return Kind.AUTH
        return Kind.REJECTED

    def describe(self) -> str:
        if self.status is None:
            return f"no response: {self.error}"
        text = self.body.strip().replace("\n", " ")
        return f"HTTP {self.status}: {text[:500]}" if text else f"HTTP {self.status}"


def _is_loopback(host: str) -> bool:
    if host in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class FlexpriceClient:
    """Thin transport: ``post_bulk``/``post_single`` send pre-serialised events once."""

    def __init__(self, cfg: FlexpriceOutput):
        self.base_url = cfg.base_url
        parts = urlsplit(self.base_url)
        if parts.scheme == "http" and not cfg.allow_insecure and not _is_loopback(parts.hostname or ""):
            raise InsecureTransportError(
                f"refusing plain http to {parts.hostname}: the API key would travel in clear; "
                "use scheme: https or set allow_insecure: true")
        if cfg.skip_cert_verify:
            log.warning("TLS certificate verification for Flexprice is OFF (skip_cert_verify): "
                        "anyone on the path can read the API key and the events")
            if parts.scheme == "https":
                import urllib3

                urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)  # said once
        self._verify = not cfg.skip_cert_verify
        self._timeout = cfg.timeout
        self._pool = cfg.max_in_flight
        self._secret = cfg.api_key.get_secret_value()
        self._headers = {
            "x-api-key": self._secret,
            "Content-Type": "application/json",
            "Accept": "application/json",
            "User-Agent": "flexprice-beam",
        }
        self._local = threading.local()

    def __getstate__(self) -> dict[str, Any]:
        raise TypeError("FlexpriceClient holds live connections; build one per worker in setup()")

    @property
    def session(self) -> requests.Session:
        s = getattr(self._local, "session", None)
        if s is None:
            s = requests.Session()
            adapter = HTTPAdapter(pool_connections=1, pool_maxsize=self._pool, max_retries=0)
            s.mount("http://", adapter)
            s.mount("https://", adapter)
            s.headers.update(self._headers)
            self._local.session = s
        return s

    def request(self, method: str, path: str, body: bytes | None = None) -> Answer:
        started = time.monotonic()
        try:
            resp = self.session.request(method, self.base_url + path, data=body,
                                        timeout=self._timeout, verify=self._verify)
        except (requests.RequestException, ValueError) as exc:  # ValueError: header encoding
            # Drop a possibly half-dead pooled connection; the next call opens a fresh one.
            self._local.session = None
            return Answer(None, "", error=self._redact(f"{type(exc).__name__}: {exc}"),
                          latency=time.monotonic() - started, fatal=_cert_failure(exc))
        return Answer(resp.status_code, resp.text, parse_retry_after(resp.headers.get("Retry-After")),
                      latency=time.monotonic() - started)

    def _redact(self, text: str) -> str:
        """Error texts end up in logs and dead letters: never with the key in them (requests
        quotes a header value it cannot send, e.g. a key with a stray newline)."""
        if not self._secret:
            return text
        forms = {self._secret, repr(self._secret)[1:-1], self._secret.strip()} - {""}
        for form in sorted(forms, key=len, reverse=True):  # raw, as repr() quotes it, trimmed
            text = text.replace(form, "***")
        return text

    def post_bulk(self, bodies: list[bytes]) -> Answer:
        return self.request("POST", BULK_PATH, b'{"events":[' + b",".join(bodies) + b"]}")

    def post_single(self, body: bytes) -> Answer:
        return self.request("POST", SINGLE_PATH, body)

    def get_json(self, path: str) -> tuple[Answer, Any]:
        answer = self.request("GET", path)
        return answer, _loads(answer)

    def post_json(self, path: str, payload: Any) -> tuple[Answer, Any]:
        answer = self.request("POST", path, orjson.dumps(payload))
        return answer, _loads(answer)

    def close(self) -> None:
        s = getattr(self._local, "session", None)
        if s is not None:
            s.close()


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


def _loads(answer: Answer) -> Any:
    try:
        return orjson.loads(answer.body) if answer.body else None
    except orjson.JSONDecodeError:
        return None
