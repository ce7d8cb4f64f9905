"""Kafka offset commits for local streaming on Prism, where KafkaIO cannot commit itself.

KafkaIO's ``commit_offset_in_finalize`` needs ``@RequiresStableInput``, which Prism does not
support.  Prism runs our Python DoFns in this process (LOOPBACK), so one process-wide
tracker can see every record from decode to its end (accepted, dead-lettered or filtered)
and commit, per partition, only below the oldest record still in flight.  Flink and
Dataflow use ``commit_offset_in_finalize`` instead (see docs/runners.md).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from typing import Any

log = logging.getLogger("flexprice_beam.kafka")

Partition = tuple[str, int]


def kafka_position(origin: dict[str, Any] | None) -> tuple[Partition, int] | None:
    """``((topic, partition), offset)`` of a record read from Kafka; None for other sources."""
    if not origin or "offset" not in origin:
        return None
    return (origin["topic"], origin["partition"]), origin["offset"]


class OffsetTracker:
    """Offsets read but not yet handled, per partition; thread-safe."""

    def __init__(self) -> None:
        self.enabled = False
        self._lock = threading.Lock()
        self._pending: dict[Partition, set[int]] = {}
        self._next: dict[Partition, int] = {}  # one past the highest offset read
        self._committed: dict[Partition, int] = {}
        self._committer: threading.Thread | None = None
        self._stop = threading.Event()

    def read_many(self, origins: list[dict[str, Any]]) -> None:
        """``read`` for a batch under one lock (records of a partition come in order, so a
        record not registered yet always lies above what ``committable`` may return)."""
        with self._lock:
            for o in origins:
                key, offset = (o["topic"], o["partition"]), o["offset"]
                self._pending.setdefault(key, set()).add(offset)
                if offset + 1 > self._next.get(key, -1):
                    self._next[key] = offset + 1

    def done(self, origin: dict[str, Any] | None) -> None:
        pos = kafka_position(origin) if self.enabled else None
        if pos is not None:
            self.done_many([pos])

    def done_many(self, positions: Iterable[tuple[Partition, int]]) -> None:
        """``done`` for a batch's ``(partition, offset)`` pairs, under one lock."""
        with self._lock:
            for key, offset in positions:
                pending = self._pending.get(key)
                if pending is not None:
                    pending.discard(offset)

    def committable(self) -> dict[Partition, int]:
        """Per partition, the next offset to consume: everything below it was handled."""
        out = {}
        with self._lock:
            for key, nxt in self._next.items():
                pending = self._pending.get(key)
                target = min(pending) if pending else nxt
                if target > self._committed.get(key, -1):
                    out[key] = target
        return out

    def mark_committed(self, offsets: dict[Partition, int]) -> None:
        with self._lock:
            self._committed.update(offsets)

    def committed(self) -> dict[Partition, int]:
        """What was committed so far, per partition (the next offset to consume)."""
        with self._lock:
            return dict(self._committed)

    def start_committer(self, commit, interval: float = 5.0) -> None:
        """Call ``commit(offsets)`` every ``interval`` seconds with what became committable."""
        with self._lock:
            if self._committer is not None:
                return
            self.enabled = True
            self._committer = threading.Thread(target=self._loop, args=(commit, interval),
                                               name="kafka-offset-commit", daemon=True)
            self._committer.start()

    def stop(self) -> None:
        """End the committer thread (it is a daemon: a run that exits need not call this)."""
        self._stop.set()

    def _loop(self, commit, interval: float) -> None:
        while not self._stop.wait(interval):
            self.flush(commit)

    def flush(self, commit) -> None:
        offsets = self.committable()
        if not offsets:
            return
        try:
            commit(offsets)
        except Exception as exc:  # a failed commit only means more re-reading after a restart
            log.warning("Kafka offset commit failed (will retry): %s", exc)
            return
        self.mark_committed(offsets)


TRACKER = OffsetTracker()
