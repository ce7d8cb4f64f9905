"""Declarative mapping from input records to Flexprice events (the seed's Bloblang step).

``mapping`` is a dict of ``field: expression``.  A string is a JMESPath expression
evaluated on the record (``userId``, ``data.count``, ``'my-service'`` for a literal string);
numbers, booleans and lists are literals; a nested dict builds a nested object.  A field
whose expression yields null is left out, so the fixed read-time identity fills
``event_id`` and ``timestamp``.  ``mapping_fn`` names a Python function instead; it may
return None to filter a record out.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

import apache_beam as beam
import jmespath

from flexprice_beam.core import live
from flexprice_beam.core.config import ConfigError, PipelineConfig
from flexprice_beam.core.events import Record, dead_letter, trim_names
from flexprice_beam.core.offsets import TRACKER as OFFSETS

DEAD_LETTER = "dead_letter"
FILTERED = object()  # a mapping_fn returned None: the record is dropped on purpose and counted


class MappingError(ValueError):
    def __init__(self, field: str | None, reason: str):
        super().__init__(reason)
        self.field = field
        self.reason = reason


def _compile(spec: Any, path: str) -> Callable[[Any], Any]:
    if isinstance(spec, dict):
        parts = {k: _compile(v, f"{path}.{k}" if path else k) for k, v in spec.items()}

        def build(data: Any) -> dict[str, Any]:
            out = {}
            for key, fn in parts.items():
                val = fn(data)
                if val is not None:
                    out[key] = val
            return out

        return build
    if isinstance(spec, str):
        try:
            expr = jmespath.compile(spec)
        except jmespath.exceptions.JMESPathError as exc:
            raise MappingError(path, f"invalid JMESPath expression {spec!r}: {exc}") from None

        def search(data: Any) -> Any:
            try:
                return expr.search(data)
            except jmespath.exceptions.JMESPathError as exc:
                raise MappingError(path, f"{spec!r} failed: {exc}") from None

        return search
    return lambda _data: spec  # number, bool, null or list literal


def load_function(ref: str) -> Callable[[Any], Any]:
    module_name, _, attr = ref.partition(":")
    try:
        fn = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise MappingError("pipeline.mapping_fn", f"cannot load {ref!r}: {exc}") from None
    if not callable(fn):
        raise MappingError("pipeline.mapping_fn", f"{ref!r} is not callable")
    return fn


def _stringify(value: Any) -> Any:
    # Go's "%v": 100 → "100", 2.5 → "2.5", 100.0 → "100".
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, (int, float)):
        return str(value)
    return value


class Mapper:
    """Record → event dict; usable without Beam (tests, dry runs, ``check``)."""

    def __init__(self, cfg: PipelineConfig):
        self._cfg = cfg
        if cfg.mapping_fn:
            self._fn = load_function(cfg.mapping_fn)
        elif cfg.mapping is not None:
            self._fn = _compile(cfg.mapping, "")
        else:
            self._fn = None

    def __call__(self, record: Record) -> dict[str, Any] | object:
        if record.error is not None:
            raise MappingError(None, record.error)
        data = record.value
        if self._fn is None:
            if not isinstance(data, dict):
                raise MappingError(None, f"record is a JSON {type(data).__name__}, not an object")
            event = dict(data)
        else:
            try:
                event = self._fn(data)
            except MappingError:
                raise
            except Exception as exc:  # user code: any failure is this record's problem
                raise MappingError(None, f"mapping_fn raised {type(exc).__name__}: {exc}") from None
            if event is None:
                return FILTERED
            if not isinstance(event, dict):
                raise MappingError(None, f"mapping produced a {type(event).__name__}, not an object")
        trim_names(event)  # as the server will: ids, dead letters and check see the same
        if event.get("event_id") in (None, ""):
            event["event_id"] = record.record_id
        if event.get("timestamp") in (None, ""):
            event["timestamp"] = record.read_time
        if self._cfg.stringify_properties and isinstance(event.get("properties"), dict):
            event["properties"] = {k: _stringify(v) for k, v in event["properties"].items()}
        return event


class MapRecords(beam.DoFn):
    """list[Record] → list[(Record, event)]; failures go to the ``dead_letter`` output."""

    def __init__(self, cfg: PipelineConfig):
        self._cfg = cfg
        self._mapped = live.counter("events_mapped")
        self._failed = live.counter("mapping_failed")
        self._filtered = live.counter("events_filtered")

    def setup(self) -> None:
        self._mapper = Mapper(self._cfg)

    def process(self, records: list[Record]):
        # Live "read" is counted here, where every source's records pass (the sources keep
        # the Beam counter): /stats and the progress bar then work for Kafka input too.
        live.LIVE.inc("records_read", len(records))
        out = []
        failed = filtered = 0
        for record in records:
            try:
                event = self._mapper(record)
            except MappingError as exc:
                failed += 1
                yield beam.pvalue.TaggedOutput(
                    DEAD_LETTER, dead_letter("mapping", exc.reason, record=record, field=exc.field))
                continue
            if event is FILTERED:
                filtered += 1
                OFFSETS.done(record.origin)
            else:
                out.append((record, event))
        self._mapped.inc(len(out))
        if failed:
            self._failed.inc(failed)
        if filtered:
            self._filtered.inc(filtered)
        if out:
            yield out


def check_mapping(cfg: PipelineConfig) -> None:
    """Compile the mapping now; a bad expression raises ``ConfigError`` naming its path."""
    try:
        Mapper(cfg)
    except MappingError as exc:
        field = exc.field or ""
        path = field if field.startswith("pipeline.") else "pipeline.mapping" + (
            f".{field}" if field else "")
        raise ConfigError(f"invalid configuration:\n  {path}: {exc.reason}") from None
