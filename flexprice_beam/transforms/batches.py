"""The coder of the lists (batches) that flow between our DoFns.

Beam samples element sizes for its PCollection metrics, and estimates a sampled element's
size by encoding it.  A batch of 500 records has no schema, so that meant pickling the whole
list: on the Kafka path (Prism, Flink) this was about a fifth of the SDK worker's busy time
(docs/benchmarks.md, "Kafka read path").  ``BatchCoder`` pickles only when a batch really
crosses a process boundary and estimates sizes from the list's length.
"""

from __future__ import annotations

import pickle
from typing import Any

import apache_beam as beam

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
