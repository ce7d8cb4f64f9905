"""The lists (batches) that flow between our DoFns: their coder, and ``BatchBuffer``, which
cuts a stream of prepared events into API batches by count and body size.

Beam samples element sizes for its PCollection metrics, and estimates a sampled element's
size by encoding it.  A batch of 500 records has no schema, so that meant pickling the whole
list: on the Kafka path (Prism, Flink) this was about a fifth of the SDK worker's busy time
(docs/benchmarks.md, "Kafka read path").  ``BatchCoder`` pickles only when a batch really
crosses a process boundary and estimates sizes from the list's length.
"""

from __future__ import annotations

import pickle
import time
from typing import TYPE_CHECKING, Any

import apache_beam as beam

from flexprice_beam.core.config import MAX_BODY_BYTES

if TYPE_CHECKING:  # validate.py imports this module
    from flexprice_beam.transforms.validate import Prepared

#: the bulk body around the events: {"events":[...]}
_ENVELOPE = len(b'{"events":[]}')

#: a rough per-item size, for Beam's byte-count metrics only (nothing depends on it)
ITEM_BYTES = 300


class Batch(list):
    """Type hint of a PCollection whose elements are lists of records, events or results."""


class BatchCoder(beam.coders.Coder):
    def encode(self, value: list[Any]) -> bytes:
        return pickle.dumps(value, pickle.HIGHEST_PROTOCOL)

    def decode(self, encoded: bytes) -> list[Any]:
        return pickle.loads(encoded)

    def estimate_size(self, value: list[Any]) -> int:
        return ITEM_BYTES * len(value)

    def is_deterministic(self) -> bool:
        return False

    def to_type_hint(self):
        return Batch

    def __eq__(self, other) -> bool:
        return type(self) is type(other)

    def __hash__(self) -> int:
        return hash(type(self))


beam.coders.registry.register_coder(Batch, BatchCoder)


class BatchBuffer:
    """Cuts a stream of events into API batches by count and body size."""

    def __init__(self, max_count: int, max_bytes: int):
        self.max_count = max_count
        self.max_bytes = min(max_bytes, MAX_BODY_BYTES)
        self.items: list[Prepared] = []
        self.size = _ENVELOPE
        self.since = 0.0

    def add(self, item: Prepared) -> list[list[Prepared]]:
        """Add one event; return the batches that became full (usually none)."""
        full = []
        extra = len(item.body) + 1
        if self.items and self.size + extra > self.max_bytes:
            full.append(self.take())
        if not self.items:
            self.since = time.monotonic()
        self.items.append(item)
        self.size += extra
        if len(self.items) >= self.max_count:
            full.append(self.take())
        return full

    def extend(self, items: list[Prepared]) -> list[list[Prepared]]:
        """``add`` for a list, whole slices at a time: lists arrive about batch-sized and far
        below the byte limit, so the per-event work is one ``len`` (``add`` near the limit)."""
        full = []
        i, n = 0, len(items)
        while i < n:
            chunk = items[i:i + self.max_count - len(self.items)]
            extra = sum([len(x.body) for x in chunk]) + len(chunk)
            if self.size + extra > self.max_bytes:
                for item in chunk:
                    full.extend(self.add(item))
            else:
                if not self.items:
                    self.since = time.monotonic()
                    self.items = chunk
                else:
                    self.items.extend(chunk)
                self.size += extra
                if len(self.items) >= self.max_count:
                    full.append(self.take())
            i += len(chunk)
        return full

    def take(self) -> list[Prepared]:
        items, self.items, self.size = self.items, [], _ENVELOPE
        return items

    def age(self) -> float:
        return time.monotonic() - self.since if self.items else 0.0

    def cut(self, items: list[Prepared]) -> list[list[Prepared]]:
        """All of ``items`` as batches, the last one possibly short."""
        batches = self.extend(items)
        return batches + [self.take()] if self.items else batches
