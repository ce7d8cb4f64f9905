"""The lists (batches) that flow between our DoFns: their coder; ``BatchBuffer``, which
cuts a stream of prepared events into API batches by count and body size; and ``Packed``,
the form an API batch waits in for Flexprice's answer.

Beam samples element sizes for its PCollection metrics, and estimates a sampled element's
size by encoding it.  A batch of 500 records has no schema, so that meant pickling the whole
list: on the Kafka path (Prism, Flink) this was about a fifth of the SDK worker's busy time
(docs/benchmarks.md, "Kafka read path").  ``BatchCoder`` pickles only when a batch really
crosses a process boundary and estimates sizes from the list's length.
"""

from __future__ import annotations

import pickle
import time
from array import array
from collections.abc import Iterator, Sequence
from itertools import accumulate
from typing import Any

import apache_beam as beam
import orjson

from flexprice_beam.core.config import MAX_BODY_BYTES
from flexprice_beam.core.events import Prepared, Record
from flexprice_beam.core.offsets import Partition, kafka_position

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


class _Pack:
    """What the views of one packed batch share."""

    __slots__ = ("joined", "lens", "starts", "blob", "items", "keys", "parts", "offsets")

    def __init__(self, items: list[Prepared], keep: bool):
        bodies = [p.body for p in items]
        self.joined = b",".join(bodies)
        self.lens = array("I", map(len, bodies))
        self.starts: array | None = None
        self.items: list[Prepared] | None = items if keep else None
        self.blob = None
        if not keep:
            try:  # ~0.1 µs per event; what JSON cannot hold keeps the objects instead
                self.blob = orjson.dumps([(r.record_id, r.read_time, r.value, r.origin)
                                          for r in [p.record for p in items]])
            except TypeError:
                self.items = items
        self.keys: list[Partition] = []
        self.parts = self.offsets = None
        if items and kafka_position(items[0].record.origin) is not None:
            index: dict[Partition, int] = {}
            pos = [kafka_position(p.record.origin) for p in items]
            self.parts = array("H", [index.setdefault(key, len(index)) for key, _ in pos])
            self.offsets = array("q", [offset for _, offset in pos])
            self.keys = list(index)

    def rebuilt(self) -> list[Prepared]:
        """The items again: the kept ones, or equal ones from the blob and the bodies."""
        if self.items is None:
            bodies = [self.span(i, i + 1) for i in range(len(self.lens))]
            self.items = [Prepared(Record(rid, at, value, origin), orjson.loads(body), body)
                          for (rid, at, value, origin), body in
                          zip(orjson.loads(self.blob), bodies, strict=True)]
        return self.items

    def span(self, lo: int, hi: int) -> bytes:
        """The bodies of events ``lo``..``hi-1``, joined by commas: slices of ``joined``."""
        if lo == 0 and hi == len(self.lens):
            return self.joined
        if self.starts is None:  # each body's offset in ``joined``, once a part is asked for
            self.starts = array("Q", accumulate((n + 1 for n in self.lens), initial=0))
        return self.joined[self.starts[lo]:self.starts[hi] - 1]


class Packed(Sequence):
    """An API batch as it waits for Flexprice's answer (or a part of one, after a split):
    its event bodies joined once, which every request for it sends byte for byte; its
    records as one JSON blob; Kafka positions as two arrays.

    Why: holding the ``Prepared`` objects of every batch in flight until its answer cost the
    pipeline 7-17 % of its CPU (thousands of small objects each, freed long after they left
    the cache); the same batches packed cost ~2 % (docs/benchmarks.md, "A batch in flight").
    Items are rebuilt only when asked for (a failure, DEBUG logs), each event from its body:
    the event as sent, which is what its dead letter says and what a replay resends.  ``keep``
    keeps the originals themselves (replay matches its items by identity)."""

    __slots__ = ("_p", "_lo", "_hi")

    def __init__(self, items: list[Prepared], keep: bool = False):
        self._p, self._lo, self._hi = _Pack(items, keep), 0, len(items)

    def __len__(self) -> int:
        return self._hi - self._lo

    def __getitem__(self, i):
        if isinstance(i, slice):
            lo, hi, step = i.indices(len(self))
            if step != 1:
                raise ValueError("a packed batch is cut into ranges only")
            part = object.__new__(Packed)
            part._p, part._lo, part._hi = self._p, self._lo + lo, self._lo + max(lo, hi)
            return part
        return self._p.rebuilt()[range(self._lo, self._hi)[i]]

    def __iter__(self) -> Iterator[Prepared]:
        return iter(self._p.rebuilt()[self._lo:self._hi])

    def joined(self) -> bytes:
        """The bodies of these events joined by commas: a bulk request's ``[…]``."""
        return self._p.span(self._lo, self._hi)

    def sent(self, i: int) -> dict[str, Any]:
        """Event ``i`` as its body says (for a log line; cheaper than rebuilding all)."""
        j = range(self._lo, self._hi)[i]
        if self._p.items is not None:
            return self._p.items[j].event
        return orjson.loads(self._p.span(j, j + 1))

    def positions(self) -> Iterator[tuple[Partition, int]]:
        """``(partition, offset)`` of each event read from Kafka; none for other sources."""
        p = self._p
        if p.offsets is not None:
            keys = p.keys
            for k, off in zip(p.parts[self._lo:self._hi], p.offsets[self._lo:self._hi],
                              strict=True):
                yield keys[k], off


def positions(items: Sequence[Prepared]) -> Iterator[tuple[Partition, int]]:
    """``(partition, offset)`` of each event read from Kafka, packed or not."""
    if isinstance(items, Packed):
        return items.positions()
    return (pos for pos in (kafka_position(i.record.origin) for i in items) if pos)
