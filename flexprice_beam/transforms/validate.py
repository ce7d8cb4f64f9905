"""Validation: mapped events must be what Flexprice accepts, else they become dead letters.

A valid event leaves here already serialised (orjson, canonical field order), so the sink
sends exactly these bytes on the first try, on every retry and on every replay.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import apache_beam as beam
import orjson
from apache_beam.metrics import Metrics
from pydantic import ValidationError

from flexprice_beam.config import MAX_BODY_BYTES
from flexprice_beam.events import FlexpriceEvent, Record, dead_letter
from flexprice_beam.transforms.mapping import DEAD_LETTER

#: Room for the ``{"events":[...]}`` envelope: one event alone must still fit one request.
MAX_EVENT_BYTES = MAX_BODY_BYTES - 64


@dataclass(slots=True)
class Prepared:
    """A valid event ready to send: its record (for dead letters/offsets) and its bytes."""

    record: Record
    event: dict[str, Any]
    body: bytes


class InvalidEvent(ValueError):
    def __init__(self, field: str | None, reason: str):
        super().__init__(reason)
        self.field = field
        self.reason = reason


def prepare(record: Record, event: dict[str, Any]) -> Prepared:
    """Validate and serialise one event; raises ``InvalidEvent`` naming the field."""
    try:
        model = FlexpriceEvent.model_validate(event)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or None
        more = f" (+{exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise InvalidEvent(field, f"{first['msg']}{more}") from None
    clean = model.model_dump(exclude_none=True)
    body = orjson.dumps(clean)
    if len(body) > MAX_EVENT_BYTES:
        raise InvalidEvent(None, f"event is {len(body)} bytes; one request may carry at most "
                                 f"{MAX_BODY_BYTES} bytes")
    return Prepared(record, clean, body)


class ValidateEvents(beam.DoFn):
    """list[(Record, event)] → list[Prepared]; invalid ones to the ``dead_letter`` output."""

    def __init__(self) -> None:
        self._valid = Metrics.counter("flexprice", "events_valid")
        self._invalid = Metrics.counter("flexprice", "events_invalid")

    def process(self, pairs: list[tuple[Record, dict[str, Any]]]):
        out = []
        for record, event in pairs:
            try:
                out.append(prepare(record, event))
            except InvalidEvent as exc:
                self._invalid.inc()
                yield beam.pvalue.TaggedOutput(DEAD_LETTER, dead_letter(
                    "validation", exc.reason, record=record, event=event, field=exc.field))
        self._valid.inc(len(out))
        if out:
            yield out
