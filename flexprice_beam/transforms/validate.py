"""Validation: mapped events must be what Flexprice accepts, else they become dead letters.

A valid event leaves here already serialised (orjson, canonical field order), so the sink
sends exactly these bytes on the first try, on every retry and on every replay.
"""

from __future__ import annotations

import gc
import math
import threading
from typing import Any

import apache_beam as beam
import orjson
from pydantic import ValidationError

from flexprice_beam.core import live
from flexprice_beam.core.config import MAX_BODY_BYTES, MAX_EVENT_BYTES
from flexprice_beam.core.events import (
    EXACT_LIMIT,
    GO_SPACE,
    TRIMMED,
    FlexpriceEvent,
    Prepared,
    Record,
    dead_letter,
    parse_timestamp,
)
from flexprice_beam.transforms.mapping import DEAD_LETTER

# MAX_EVENT_BYTES (config): room for the ``{"events":[...]}`` envelope, so one event alone
# still fits one request; ``pipeline.max_event_bytes`` (default 1 MiB) is usually lower.
__all__ = ["MAX_EVENT_BYTES", "InvalidEvent", "Prepared", "ValidateEvents", "prepare",
           "prepare_with_model"]


class InvalidEvent(ValueError):
    def __init__(self, field: str | None, reason: str):
        super().__init__(reason)
        self.field = field
        self.reason = reason


_FIELDS = frozenset(FlexpriceEvent.model_fields)
_NAMES = ("event_name", "external_customer_id", "event_id")
_OPTIONAL = ("source", "customer_id")


def _clean_fast(event: Any) -> dict[str, Any] | None:
    """What ``FlexpriceEvent.model_validate(event).model_dump(exclude_none=True)`` returns,
    for the common shape only (exact built-in types, no problem found); None means "not sure:
    ask the model", which then accepts or names the error exactly as before.

    Same answers, ~2 µs less per event (docs/benchmarks.md); ``_mirrors_model`` turns it off
    if the model changes. ``benchmarks/check_validate_equivalence.py`` compares the two.
    """
    if type(event) is not dict or not _FIELDS.issuperset(event):
        return None
    out: dict[str, Any] = {}
    for name in _NAMES:  # required, strict str, 1..255 characters, not blank
        v = event.get(name)
        if type(v) is not str or not 0 < len(v) <= 255:
            return None
        if name in TRIMMED:
            v = v.strip(GO_SPACE)
        if not v.strip():
            return None
        out[name] = v
    ts = event.get("timestamp")
    if type(ts) is not str:
        return None
    try:
        parse_timestamp(ts)
    except ValueError:
        return None
    out["timestamp"] = ts
    props = event.get("properties", {})
    if type(props) is not dict:
        return None
    for k, v in props.items():  # dict[str, int | float | str], strict; floats finite
        t = type(v)
        if type(k) is not str or not (t is int or t is str or (t is float and math.isfinite(v))):
            return None
    out["properties"] = props  # shared with the record: only a copy is ever changed
    for name in _OPTIONAL:  # strict str or None; None is left out like exclude_none
        v = event.get(name)
        if v is not None:
            if type(v) is not str:
                return None
            out[name] = v
    return out


#: The model ``_clean_fast`` was written against; see ``_mirrors_model``.
_MIRRORED_FIELDS = [
    *((n, "<class 'str'>", "[MinLen(min_length=1), MaxLen(max_length=255)]", True) for n in _NAMES),
    ("timestamp", "<class 'str'>", "[]", True),
    ("properties", "dict[str, int | float | str]", "[]", False),
    *((n, "str | None", "[]", False) for n in _OPTIONAL),
]
_MIRRORED_VALIDATORS = [("_finite", ("properties",), "after"), ("_not_blank", _NAMES, "after"),
                        ("_rfc3339", ("timestamp",), "after")]
_PROBES = [  # (event, should the fast path take it?)
    ({"event_name": "a", "external_customer_id": "c", "event_id": "e", "source": "s",
      "timestamp": "2026-01-01T00:00:00.123+01:00", "properties": {"n": 1, "f": 2.5, "s": "x"}}, True),
    ({"event_name": "é" * 255, "external_customer_id": "c", "event_id": "e",
      "timestamp": "2026-01-01T00:00:00Z", "customer_id": None}, True),
    ({"event_name": " a\u3000", "external_customer_id": "\tc\x1f ", "event_id": " e ",
      "timestamp": "2026-01-01T00:00:00Z"}, True),
]


def _mirrors_model() -> bool:
    """True while ``FlexpriceEvent`` is the model the fast path copies: a new field, limit,
    validator or setting there switches the fast path off (slower, never different)."""
    m = FlexpriceEvent
    dec = m.__pydantic_decorators__
    fields = [(n, str(f.annotation), repr(f.metadata), f.is_required())
              for n, f in m.model_fields.items()]
    validators = sorted((n, tuple(v.info.fields), v.info.mode)
                        for n, v in dec.field_validators.items())
    others = (dec.validators, dec.root_validators, dec.field_serializers, dec.model_serializers,
              dec.model_validators, dec.computed_fields)
    if (fields != _MIRRORED_FIELDS or validators != _MIRRORED_VALIDATORS or any(others)
            or m.model_config.get("strict") is not True or m.model_config.get("extra") != "forbid"):
        return False
    for event, fast in _PROBES:
        got = _clean_fast(event)
        if (got is not None) != fast or (
                got is not None and got != m.model_validate(event).model_dump(exclude_none=True)):
            return False
    return True


_FAST = _mirrors_model()


def prepare(record: Record, event: dict[str, Any], max_bytes: int = MAX_EVENT_BYTES,
            big_numbers: str = "dead_letter") -> Prepared:
    """Validate and serialise one event; raises ``InvalidEvent`` naming the field."""
    clean = _clean_fast(event) if _FAST else None
    if clean is None:
        return prepare_with_model(record, event, max_bytes, big_numbers)
    _limit_numbers(clean, big_numbers)
    return Prepared(record, clean, _serialise(clean, max_bytes))


def _limit_numbers(clean: dict[str, Any], mode: str) -> None:
    """Property numbers beyond ±2^53 follow ``pipeline.big_numbers``, never silently: the
    server would store 9007199254740993 as …992 and bill a different number.

    An integer beyond the limit is inexact as a float64; a float beyond it has already lost
    whatever digits it had (and can no longer be told from an exact integer), so it counts
    too. ``dead_letter`` names the field; ``string`` sends the exact digits as a string.
    """
    props = clean.get("properties")
    if not props:
        return
    lim = EXACT_LIMIT
    for key, v in props.items():
        if type(v) is str or -lim <= v <= lim:
            continue
        if mode == "string":
            if clean["properties"] is props:  # the record's own dict (``_clean_fast``): a copy
                clean["properties"] = dict(props)
            clean["properties"][key] = str(v) if type(v) is int else repr(v)
            continue
        kind = "integer" if type(v) is int else "number"
        raise InvalidEvent(f"properties.{key}",
                           f"{kind} {v!r} is beyond ±2^53 ({lim}): Flexprice stores numbers as "
                           "float64 and would bill a rounded value; send it as a string "
                           "(pipeline.big_numbers: string) or scale it down")


#: ``_EXACT((body, b""))`` copies ``body`` into a bytes object of its own size (joining two
#: parts always copies; ``bytes(b)``, ``b[:]`` and a one-part join hand back ``b`` itself).
_EXACT = b"".join


def _serialise(clean: dict[str, Any], max_bytes: int = MAX_EVENT_BYTES) -> bytes:
    try:
        # orjson 3.12+ returns every result in a buffer of at least 4 KiB and never shrinks it
        # (its writer sets the size before its resize, which then does nothing).  The body
        # lives as long as its event is in flight: ~8 batches at 20 ms held ~16 MB instead of
        # ~1 MB, and the pipeline ran on cold memory.  The copy costs ~40 ns; P3 went from
        # 0.64 to 0.74 (docs/benchmarks.md, "Event bodies of their own size").
        body = _EXACT((orjson.dumps(clean), b""))
    except orjson.JSONEncodeError as exc:  # e.g. an integer beyond 64 bits: this event's fault
        raise InvalidEvent("properties", f"cannot be sent as JSON: {exc}") from None
    if len(body) > MAX_EVENT_BYTES:  # Flexprice would answer 400 to its whole batch
        raise InvalidEvent(None, f"event is {len(body)} bytes; one request may carry at most "
                                 f"{MAX_BODY_BYTES} bytes")
    if len(body) > max_bytes:
        raise InvalidEvent(None, f"event is {len(body)} bytes, over the "
                                 f"pipeline.max_event_bytes limit of {max_bytes}")
    return body


def prepare_with_model(record: Record, event: dict[str, Any],
                       max_bytes: int = MAX_EVENT_BYTES,
                       big_numbers: str = "dead_letter") -> Prepared:
    """``prepare`` through the pydantic model alone (the fallback, and the reference)."""
    try:
        model = FlexpriceEvent.model_validate(event)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or None
        more = f" (+{exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise InvalidEvent(field, f"{first['msg']}{more}") from None
    clean = model.model_dump(exclude_none=True)
    _limit_numbers(clean, big_numbers)
    return Prepared(record, clean, _serialise(clean, max_bytes))


_gc_lock = threading.Lock()
_gc_tuned = False


def tune_gc() -> None:
    """Once per worker process: ``gc.freeze()`` what is alive now (Beam, the pipeline, imports),
    and collect young objects less often.

    Events travel in batches that outlive a few young collections, so full collections come
    often, and each one used to rescan the worker's whole heap: ~35 % of a local run's CPU
    (docs/benchmarks.md). Frozen objects are skipped by the cycle collector from then on.
    Batches waiting for Flexprice's answer (many in flight at 20 ms latency) are still promoted
    and rescanned by the default thresholds (700, 10, 10): 120k → 145k events/s measured
    with (50,000, 20, 100). Our events hold no cycles, so reference counting frees them
    either way; the thresholds only decide how often the collector looks.
    """
    global _gc_tuned
    with _gc_lock:
        if not _gc_tuned:
            _gc_tuned = True
            gc.freeze()
            gc.set_threshold(50_000, 20, 100)


class ValidateEvents(beam.DoFn):
    """list[(Record, event)] → list[Prepared]; invalid ones to the ``dead_letter`` output."""

    def __init__(self, max_event_bytes: int = MAX_EVENT_BYTES,
                 big_numbers: str = "dead_letter") -> None:
        self._max_bytes = max_event_bytes
        self._big_numbers = big_numbers
        self._valid = live.counter("events_valid")
        self._invalid = live.counter("events_invalid")

    def setup(self) -> None:
        tune_gc()

    def process(self, pairs: list[tuple[Record, dict[str, Any]]]):
        out = []
        for record, event in pairs:
            try:
                out.append(prepare(record, event, self._max_bytes, self._big_numbers))
            except InvalidEvent as exc:
                self._invalid.inc()
                yield beam.pvalue.TaggedOutput(DEAD_LETTER, dead_letter(
                    "validation", exc.reason, record=record, event=event, field=exc.field))
        self._valid.inc(len(out))
        if out:
            yield out
