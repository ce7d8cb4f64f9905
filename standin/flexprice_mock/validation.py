"""Request validation, timestamps, ids and error bodies, modelled on the Flexprice server.

Reference: flexprice/flexprice at e4b5303f (internal/api/v1/events.go, internal/api/dto/events.go,
internal/errors, internal/rest/middleware) and docs/swagger/swagger-3-0.json.

Two failure stages exist on the real server and are kept apart here:

* *bind* errors (gin ``ShouldBindJSON``): malformed JSON, a wrong JSON type, a timestamp that
  Go's ``time.Time`` cannot parse, and -- for ``POST /events`` only, because of the
  ``binding:"required"`` tags -- a missing/empty ``event_name`` / ``external_customer_id``.
  Answered ``400 validation_error`` "Invalid request payload", no details (the server logs
  the cause, it does not send it); nothing is published.
* *validate* errors (``validator.ValidateRequest``): the bulk ``events`` count (required,
  min=1, max=1000) and, inside the bulk publish loop, each event's required fields.
  Answered ``400 validation_error`` "Request validation failed" with ``details`` keyed by
  the Go field name (``{"EventName": "Key: 'IngestEventRequest.EventName' Error:…"}``) and
  no index of the failing event; a ``null`` element has no details at all.

The bodies are what gin's ``c.JSON`` writes for ``errors.ErrorResponse`` (struct field order,
``details`` sorted and omitted when empty): ``tests/fixtures/flexprice/`` holds them byte
for byte, and ``tests/test_mock_fidelity.py`` compares.
"""

from __future__ import annotations

import re
import time
from datetime import datetime, timedelta, timezone
from random import Random

import orjson

MAX_BODY_BYTES = 32 << 20  # middleware.MaxEventIngestionBodyBytes
MAX_BULK_EVENTS = 1000

MSG_INVALID_PAYLOAD = "Invalid request payload"
MSG_VALIDATION_FAILED = "Request validation failed"
MSG_BODY_TOO_LARGE = "Request body exceeds the maximum size; split the batch into smaller requests"
MSG_CHECK_PAYLOAD = "Please check the request payload"
#: ``abortEnvironmentResolution``: a config-file key without (or with a foreign) X-Environment-ID
ENV_DENIED_BODY = b'{"error":"Access denied","message":"Invalid or inaccessible environment"}'

# ErrorCode per HTTP status (internal/errors/errors.go errMappings).
CODE_BY_STATUS = {
    400: "validation_error",
    403: "permission_denied",
    404: "not_found",
    409: "already_exists",
    429: "too_many_requests",
    500: "internal_error",
    501: "not_implemented",
    503: "service_unavailable",
}

DEFAULT_MESSAGES = {
    400: "Invalid request",
    403: "insufficient permissions",
    404: "Resource not found",
    409: "Resource already exists",
    429: "Too many requests",
    500: "An unexpected error occurred",
    501: "Not implemented",
    503: "Service temporarily unavailable",
}

#: Go's ``unicode.IsSpace``, which ``strings.TrimSpace`` removes (the server trims event_name).
#: Kept apart from the collector's copy on purpose: the stand-in models the server on its own.
_GO_SPACE = ("\t\n\v\f\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006"
             "\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000")


def go_trim(value: str) -> str:
    return value.strip(_GO_SPACE)


_GO_FIELD = {"event_name": "EventName", "external_customer_id": "ExternalCustomerID"}


class RequestError(Exception):
    """A request answered with an error status (never raised past the handler)."""

    def __init__(self, status: int, message: str, details: dict | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.details = details


def error_body(status: int, message: str | None = None, details: dict | None = None,
               *, style: str = "flat") -> bytes:
    """``errors.ErrorResponse``: flat ``{code, message, http_status_code, details?}``.

    ``details`` is ``omitempty`` on the server, so it is left out when empty.
    ``style="nested"`` wraps it as ``{"success": false, "error": {...}}``, as servers older
    than April 2026 did (opt-in; the default is the current server's flat body).
    """
    if status >= 500:
        code = CODE_BY_STATUS.get(status, "internal_error")
    else:
        code = CODE_BY_STATUS.get(status, "http_client_error")
    body: dict = {
        "code": code,
        "message": message if message is not None else DEFAULT_MESSAGES.get(status, "Request failed"),
        "http_status_code": status,
    }
    if details:
        body["details"] = details
    if style == "nested":  # servers before April 2026
        body = {"success": False, "error": body}
    return orjson.dumps(body)


# --------------------------------------------------------------------------- timestamps

# Go's time.Time JSON decoding: strict RFC 3339, upper-case T/Z, zone required, 1-9 fraction digits.
# The regex enforces the syntax; datetime.fromisoformat (C) checks ranges and does the arithmetic.
_TS_RE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d{1,9})?(?:Z|[+-]\d\d:\d\d)\Z")
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_MS = timedelta(milliseconds=1)


def parse_rfc3339_ms(value: str) -> int | None:
    """Epoch milliseconds (truncated, like ClickHouse ``DateTime64(3)``) or ``None`` if invalid."""
    if _TS_RE.match(value) is None:
        return None
    try:
        return (datetime.fromisoformat(value) - _EPOCH) // _MS
    except ValueError:
        return None


def format_ms(ms: int) -> str:
    """RFC 3339 in UTC the way Go marshals ``time.Time`` (fraction trimmed of trailing zeros)."""
    secs, rem = divmod(ms, 1000)
    base = datetime.fromtimestamp(secs, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    if rem:
        return f"{base}.{rem:03d}".rstrip("0") + "Z"
    return base + "Z"


def now_ms() -> int:
    return time.time_ns() // 1_000_000


# --------------------------------------------------------------------------- ids

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def new_ulid(rng: Random) -> str:
    """A 26-character ULID (48-bit ms time + 80 random bits), like oklog/ulid."""
    n = ((time.time_ns() // 1_000_000) << 80) | rng.getrandbits(80)
    chars = []
    for _ in range(26):
        chars.append(_CROCKFORD[n & 31])
        n >>= 5
    return "".join(reversed(chars))


# --------------------------------------------------------------------------- events

_STRING_FIELDS = ("event_name", "external_customer_id", "event_id", "customer_id", "source")


def bind_event(ev: object, where: str) -> tuple[str | None, int | None]:
    """Type checks gin's JSON binding performs: (error description or None, timestamp ms or None)."""
    if type(ev) is not dict:
        return f"{where}: must be a JSON object", None
    get = ev.get
    for f in _STRING_FIELDS:
        v = get(f)
        if v is not None and type(v) is not str:
            return f"{where}.{f}: must be a string", None
    props = get("properties")
    if props is not None and type(props) is not dict:
        return f"{where}.properties: must be a JSON object", None
    ts = get("timestamp")
    if ts is None:
        return None, None
    ms = parse_rfc3339_ms(ts) if type(ts) is str else None
    if ms is None:
        return f"{where}.timestamp: {ts!r} is not an RFC 3339 string with a time zone", None
    return None, ms


def missing_required(ev: dict) -> str | None:
    """First of the required fields (``validate:"required"``) that is absent or empty."""
    if not ev.get("event_name"):
        return "event_name"
    if not ev.get("external_customer_id"):
        return "external_customer_id"
    return None


def missing_all(ev: dict) -> list[str]:
    """Every required field absent or empty (go-playground reports them all at once)."""
    return [f for f in ("event_name", "external_customer_id") if not ev.get(f)]


def go_required_detail(struct: str, *fields: str) -> dict:
    out = {}
    for field in fields:
        go = _GO_FIELD.get(field, field)
        out[go] = f"Key: '{struct}.{go}' Error:Field validation for '{go}' failed on the 'required' tag"
    return out


def bulk_count_detail(tag: str) -> dict:
    return {"Events": f"Key: 'BulkIngestEventRequest.Events' Error:Field validation for 'Events' "
                      f"failed on the '{tag}' tag"}
