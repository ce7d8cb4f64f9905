"""The records and events that flow through the pipeline.

A ``Record`` is what a source read: its payload plus the identity fixed at first read
(``record_id`` and ``read_time``).  Mapping turns its payload into an event dict; when the
event lacks ``event_id`` or ``timestamp`` these two fill them, so every retry and every
replay of the same input yields byte-identical events — Flexprice deduplicates only on equal
(event_id, timestamp).
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import re
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

#: Property values Flexprice aggregates: numbers or strings (and booleans are refused).
PropertyValue = int | float | str

#: What Go's ``strings.TrimSpace`` removes (``unicode.IsSpace``): Flexprice trims
#: ``event_name`` with it. Python's bare ``str.strip()`` would also remove U+001C..U+001F.
GO_SPACE = ("\t\n\v\f\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006"
            "\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000")
#: Fields trimmed as the server trims them, before ids, dead letters and ``check`` see them.
#: The server trims ``event_name`` (domain/events.NewEvent); ``external_customer_id`` is
#: trimmed too, so a padded id cannot silently bill a customer no one created.
TRIMMED = ("event_name", "external_customer_id")
#: Property numbers beyond ±2^53 lose precision on the server (float64): 2^53 + 1 is stored
#: as 2^53. ``pipeline.big_numbers`` decides what happens to them.
EXACT_LIMIT = 2**53


def trim_names(event: dict[str, Any]) -> dict[str, Any]:
    """``event`` with ``event_name``/``external_customer_id`` trimmed as the server does."""
    for name in TRIMMED:
        v = event.get(name)
        if type(v) is str:
            t = v.strip(GO_SPACE)
            if t is not v:
                event[name] = t
    return event


@dataclass(slots=True)
class Record:
    """One input record with the identity given to it when it was first read."""

    record_id: str
    read_time: str  # RFC3339 with zone
    value: Any  # decoded payload (usually a dict); raw text/bytes info lives in ``origin``
    origin: dict[str, Any] = field(default_factory=dict)  # topic/partition/offset, index …
    error: str | None = None  # set when the source could not decode it: it goes to dead letters


@dataclass(slots=True)
class Prepared:
    """A valid event ready to send: its record (for dead letters/offsets) and its bytes."""

    record: Record
    event: dict[str, Any]
    body: bytes


def rfc3339(ts: dt.datetime) -> str:
    """UTC RFC3339 with millisecond precision, the form Flexprice stores."""
    ts = ts.astimezone(dt.timezone.utc)
    return ts.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ts.microsecond // 1000:03d}Z"


def rfc3339_from_millis(millis: int) -> str:
    """``rfc3339`` of a Unix time in ms (the same text), formatting each second only once:
    formatting a datetime was ~80 % of decoding a Kafka record (docs/benchmarks.md)."""
    if 0 <= millis < _EXACT_MILLIS:  # the same string, without a datetime per record
        seconds, ms = divmod(millis, 1000)
        return f"{_utc_second(seconds)}{ms:03d}Z"
    return rfc3339(dt.datetime.fromtimestamp(millis / 1000, tz=dt.timezone.utc))


#: below 2^32 s (the year 2106) ``millis / 1000`` is within 0.25 µs, so the datetime path
#: rounds back to exactly ``millis % 1000`` milliseconds (above, float error can cost one)
_EXACT_MILLIS = (1 << 32) * 1000


@functools.lru_cache(maxsize=4096)
def _utc_second(seconds: int) -> str:
    """``"YYYY-MM-DDTHH:MM:SS."``; Kafka records come in runs sharing a second."""
    return dt.datetime.fromtimestamp(seconds, tz=dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.")


def stable_id(prefix: str, *parts: Any) -> str:
    """A short deterministic id from the parts that identify a record at its source."""
    digest = hashlib.blake2b("\x1f".join(map(str, parts)).encode(), digest_size=12).hexdigest()
    return f"{prefix}_{digest}"


#: RFC3339 as Flexprice's Go ``time.Time`` parses it: upper-case ``T``/``Z``, seconds, 1-9
#: fraction digits, a zone. ``fromisoformat`` alone also takes ISO forms Flexprice answers
#: 400 to (``2025-12-01T10:30Z``, ``20251201T103000Z``, week dates, ``+0530``, lower case).
_RFC3339_RE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d{1,9})?(?:Z|[+-]\d\d:\d\d)\Z")


def parse_timestamp(value: str) -> dt.datetime:
    """RFC3339 with a zone (``Z`` or ``±hh:mm``); a naive time is refused, not guessed."""
    if not isinstance(value, str) or "T" not in value.upper():
        raise ValueError("timestamp must be an RFC3339 string such as 2025-12-01T10:30:00Z")
    if _RFC3339_RE.match(value) is None:
        if not re.search(r"(?:Z|z|[+-]\d\d:?\d\d)\Z", value):
            raise ValueError(f"timestamp {_clip(value)!r} has no time zone")
        raise ValueError(f"timestamp {_clip(value)!r} is not RFC3339 "
                         "(e.g. 2025-12-01T10:30:00Z or 2025-12-01T10:30:00.123+01:00)")
    try:
        return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"timestamp {_clip(value)!r} is not RFC3339") from None


def _clip(value: str, limit: int = 64) -> str:
    """A reason names the bad value, not megabytes of it."""
    return value if len(value) <= limit else value[:limit] + "…"


class FlexpriceEvent(BaseModel):
    """``dto.IngestEventRequest`` as Flexprice validates it (API-NOTES.md)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    event_name: str = Field(min_length=1, max_length=255)
    external_customer_id: str = Field(min_length=1, max_length=255)
    event_id: str = Field(min_length=1, max_length=255)
    timestamp: str
    properties: dict[str, PropertyValue] = Field(default_factory=dict)
    source: str | None = None
    customer_id: str | None = None

    @field_validator("event_name", "external_customer_id", "event_id")
    @classmethod
    def _not_blank(cls, v: str, info: Any) -> str:
        if info.field_name in TRIMMED:
            v = v.strip(GO_SPACE)
        if not v.strip():
            raise ValueError("must not be blank")
        return v

    @field_validator("timestamp")
    @classmethod
    def _rfc3339(cls, v: str) -> str:
        parse_timestamp(v)
        return v

    @field_validator("properties")
    @classmethod
    def _finite(cls, v: dict[str, PropertyValue]) -> dict[str, PropertyValue]:
        for key, val in v.items():
            if isinstance(val, float) and (val != val or val in (float("inf"), float("-inf"))):
                raise ValueError(f"property {key!r} is not a finite number")
        return v


def now_rfc3339() -> str:
    return rfc3339(dt.datetime.now(dt.timezone.utc))


def dead_letter(stage: str, reason: str, *, record: Record | None = None,
                event: dict[str, Any] | None = None, status: int | None = None,
                field: str | None = None) -> dict[str, Any]:
    """One dead-letter line: enough to see why, and to replay the event unchanged."""
    return {
        "stage": stage,
        "status": status,
        "reason": reason,
        "field": field,
        "event": event,
        "record": None if record is None else record.value,
        "origin": None if record is None else record.origin,
        "record_id": None if record is None else record.record_id,
        "time": now_rfc3339(),
    }
