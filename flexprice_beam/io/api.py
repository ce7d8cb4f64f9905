"""Flexprice off the hot path: ``check``'s look-ups and read-back, over ``requests``.

Sending events needs ``http.client`` for speed (docs/benchmarks.md); a handful of GETs does
not, so this side uses the design card's library and what it does for us: certificates
verified against certifi's bundle or ``REQUESTS_CA_BUNDLE``, ``HTTPS_PROXY``/``NO_PROXY``, a
pooled session.  What both sides share lives here so the hot path can import it: the request
headers, the secrets to redact, the plain-http rule, and the 401/403 error and advice.

``check`` asks for features and customers through the official ``flexprice`` SDK
(``Lookups``), generated from the server's OpenAPI document, so its look-ups follow the API
as it changes; it is built from the same headers, timeout and TLS settings as ``ApiClient``.
"""

from __future__ import annotations

import enum
import logging
import os
import re
import ssl
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

import requests

from flexprice_beam.core.config import FlexpriceOutput, is_loopback_host
from flexprice_beam.io.secrets import resolve_api_key

log = logging.getLogger("flexprice_beam.api")

USER_AGENT = "flexprice-beam"


class Kind(enum.Enum):
    ACCEPTED = "accepted"  # 2xx
    REJECTED = "rejected"  # 4xx other than auth/429: the request itself is bad
    AUTH = "auth"  # 401/403: stop the run, retrying cannot help
    RETRY = "retry"  # 408, 429, 5xx, connection errors, timeouts


def kind_of(status: int | None) -> Kind:
    """The seed's error table, by status (None: no response came back)."""
    if status is None or status in (408, 429) or status >= 500:
        return Kind.RETRY
    if 200 <= status < 300:
        return Kind.ACCEPTED
    if status in (401, 403):
        return Kind.AUTH
    return Kind.REJECTED


class FlexpriceAuthError(RuntimeError):
    """401/403 from Flexprice: the key is wrong or lacks permission; the run must stop."""


class InsecureTransportError(ValueError):
    """Plain http to a host that is not this machine, without ``allow_insecure``."""


def check_transport(cfg: FlexpriceOutput) -> None:
    """Refuse plain http off this machine (again: whatever built the config), warn when
    certificates go unverified."""
    parts = urlsplit(cfg.base_url)
    if parts.scheme == "http" and not cfg.allow_insecure \
            and not is_loopback_host(parts.hostname or ""):
        raise InsecureTransportError(
            f"refusing plain http to {parts.hostname}: the API key would travel in clear; "
            "use scheme: https or set allow_insecure: true")
    if cfg.skip_cert_verify:
        log.warning("TLS certificate verification for Flexprice is OFF (skip_cert_verify): "
                    "anyone on the path can read the API key and the events")


def request_headers(cfg: FlexpriceOutput, api_key: str) -> dict[str, str]:
    """Every request's headers: the key, the environment (a config-file key carries none)
    and the configured extra ``headers:`` (all secret)."""
    headers = {"x-api-key": api_key, "Content-Type": "application/json",
               "Accept": "application/json", "User-Agent": USER_AGENT}
    if cfg.environment_id:
        headers["X-Environment-ID"] = cfg.environment_id
    headers.update((k, v.get_secret_value()) for k, v in cfg.headers.items())
    return headers


def secret_values(cfg: FlexpriceOutput, api_key: str) -> list[str]:
    """What must never appear in a log or a dead letter: the key and the extra header values
    (a gateway's token)."""
    return [api_key, *(v.get_secret_value() for v in cfg.headers.values())]


def redact(text: str, secrets: list[str]) -> str:
    """``text`` with each secret (raw, as ``repr()`` quotes it, trimmed) replaced by ***."""
    forms = {f for secret in secrets if secret
             for f in (secret, repr(secret)[1:-1], secret.strip())} - {""}
    for form in sorted(forms, key=len, reverse=True):
        text = text.replace(form, "***")
    return text


def auth_advice(answer: Any, environment_id: str | None) -> str:
    """What to fix after a 401/403 (``answer`` has ``status`` and ``body``), from the
    server's own words."""
    if answer.status == 403 and "environment" in answer.body.lower():
        if environment_id:
            return (f"environment {environment_id!r} does not exist for this key's tenant — "
                    "check output.flexprice.environment_id")
        return ("this key carries no environment (a key from the server's config file, as on "
                "a self-hosted Flexprice): set output.flexprice.environment_id, sent as "
                "X-Environment-ID")
    if answer.status == 403:
        return "the key lacks permission for this call — check its roles in Flexprice"
    return "check output.flexprice.api_key / FLEXPRICE_API_KEY"


@dataclass(slots=True)
class Reply:
    """One look-up's outcome: the status (None when no response came back), the raw body,
    the decoded JSON (``data``), or why there was no answer (``error``)."""

    status: int | None
    body: str = ""
    data: Any = None
    error: str | None = None

    @property
    def kind(self) -> Kind:
        return Kind.REJECTED if self.error and self.status else kind_of(self.status)

    def describe(self) -> str:
        return describe(self.status, self.body, self.error)


def describe(status: int | None, body: str, error: str | None = None) -> str:
    """``HTTP 400: {the server's words}``, ``HTTP 200 (why it is unusable)`` or
    ``no response: why``: how an answer reads in logs, reports and dead letters."""
    if status is None:
        return f"no response: {error}"
    if error:
        return f"HTTP {status} ({error})"
    text = body.strip().replace("\n", " ")
    return f"HTTP {status}: {text[:500]}" if text else f"HTTP {status}"


def describe_error(exc: BaseException, url: str) -> str:
    """``ConnectionError: [Errno 111] Connection refused (http://host:port)``: the innermost
    reason urllib3/httpx wrapped, without their object reprs (http.client's errors as they
    are): every error text about a Flexprice exchange, hot path or not."""
    reason: Any = exc
    while True:  # requests → MaxRetryError → NewConnectionError; httpx → httpcore
        inner = getattr(reason, "reason", None) or (
            reason.args[0] if reason.args and isinstance(reason.args[0], BaseException) else None)
        if not isinstance(inner, BaseException) or inner is reason:
            break
        reason = inner
    text = re.sub(r"^<[^>]*>: ", "", str(reason) or repr(reason))
    return f"{type(exc).__name__}: {text} ({url})"


class _Endpoint:
    """What both off-hot-path clients hold: where, which environment, what to redact."""

    def _connect(self, cfg: FlexpriceOutput) -> str:
        """Check the transport and resolve the key (returned, never stored in the clear)."""
        check_transport(cfg)
        self.base_url = cfg.base_url
        self.environment_id = cfg.environment_id
        key = resolve_api_key(cfg)
        self._secrets = secret_values(cfg, key)
        return key

    def __getstate__(self) -> dict[str, Any]:
        raise TypeError(f"{type(self).__name__} holds a live connection; build one where it "
                        "is used")

    def _failed(self, exc: BaseException) -> Reply:
        return Reply(None, error=redact(describe_error(exc, self.base_url), self._secrets))


class ApiClient(_Endpoint):
    """A ``requests.Session`` to Flexprice for read-only calls: one attempt each, a timeout,
    secrets redacted from every error text."""

    def __init__(self, cfg: FlexpriceOutput):
        key = self._connect(cfg)
        self._timeout = cfg.timeout
        # per request, not on the session: a session's verify=False loses to
        # REQUESTS_CA_BUNDLE (requests#3829)
        self._verify = not cfg.skip_cert_verify
        if not self._verify:  # check_transport warned once; not one warning per request
            import urllib3

            urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)
        self._session = requests.Session()
        self._session.headers.update(request_headers(cfg, key))

    def request(self, method: str, path: str, *, params: dict | None = None,
                payload: Any = None) -> Reply:
        try:
            resp = self._session.request(method, self.base_url + path, params=params,
                                         json=payload, timeout=self._timeout,
                                         verify=self._verify, allow_redirects=False)
        except (requests.RequestException, ValueError) as exc:  # ValueError: a bad header
            return self._failed(exc)
        try:
            data = resp.json() if resp.content else None
        except ValueError:
            data = None
        return Reply(resp.status_code, resp.text, data)

    def get(self, path: str, **params: Any) -> Reply:
        return self.request("GET", path, params=params or None)

    def post(self, path: str, payload: Any) -> Reply:
        return self.request("POST", path, payload=payload)

    def close(self) -> None:
        self._session.close()

    def __enter__(self) -> ApiClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def ssl_context(verify: bool) -> ssl.SSLContext:
    """For the clients that are not ``requests`` (the hot path, the SDK's httpx): trust what
    ``requests`` trusts (``ca_bundle``), and ``SSL_CERT_FILE`` as OpenSSL reads it."""
    ctx = ssl.create_default_context(cafile=ca_bundle("SSL_CERT_FILE") if verify else None)
    if not verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def ca_bundle(*also: str) -> str:
    """The certificates ``requests`` trusts: ``REQUESTS_CA_BUNDLE``/``CURL_CA_BUNDLE`` (then
    the variables named in ``also``), else certifi's bundle."""
    for name in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", *also):
        if os.environ.get(name):
            return os.environ[name]
    return requests.certs.where()


class Lookups(_Endpoint):
    """``check``'s read-only questions through the official ``flexprice`` SDK: features with
    their meters, customers by external id.  Answers come back as ``Reply`` with plain
    dicts, so the checks do not depend on the SDK's model classes."""

    def __init__(self, cfg: FlexpriceOutput):
        import httpx
        from flexprice import Flexprice

        key = self._connect(cfg)
        headers = request_headers(cfg, key)
        del headers["x-api-key"]  # the SDK sets it from api_key_auth
        self._http = httpx.Client(headers=headers, verify=ssl_context(not cfg.skip_cert_verify),
                                  timeout=cfg.timeout, follow_redirects=False,
                                  trust_env=True)  # *_PROXY, NO_PROXY
        self._sdk = Flexprice(server_url=self.base_url + "/v1", api_key_auth=key,
                              client=self._http, timeout_ms=int(cfg.timeout * 1000))

    def _call(self, fn: Any, **kwargs: Any) -> Reply:
        import httpx
        from flexprice.models import errors

        try:
            result = fn(**kwargs)
        except errors.ResponseValidationError as exc:  # a 2xx the SDK's model cannot read
            return Reply(exc.status_code, exc.body,
                         error=redact(f"unexpected answer: {exc.cause}"[:300], self._secrets))
        except errors.FlexpriceError as exc:
            return Reply(exc.status_code, exc.body)
        except (httpx.HTTPError, errors.NoResponseError, ValueError) as exc:
            return self._failed(exc)
        return Reply(200, data=result.model_dump(mode="json", exclude_none=True))

    def features(self, offset: int = 0, limit: int = 1000) -> Reply:
        """One page of features with their meters (``POST /v1/features/search``)."""
        return self._call(self._sdk.features.query_feature, expand="meters", limit=limit,
                          offset=offset)

    def customer(self, external_id: str) -> Reply:
        """``GET /v1/customers/external/{id}``: 200 if it exists, 404 if not.  The SDK puts
        the id into the path as it is, so an id holding ``/``, ``?`` or ``#`` is quoted
        first (httpx keeps existing escapes)."""
        return self._call(self._sdk.customers.get_customer_by_external_id,
                          external_id=quote(external_id, safe=""))

    def close(self) -> None:
        self._http.close()
