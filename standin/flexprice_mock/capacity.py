"""A server capacity that can change during a run: what an overloaded real API does.

``capacity`` ingest requests are served at once, each for the stand-in's latency; the next
``queue`` wait their turn in order (their latency grows, as a queue's would); beyond that the
request is answered 429 at once (a gateway's limiter), ``Retry-After`` if configured.  The
capacity changes on a ``schedule`` (seconds after the first ingest request → capacity) or
through ``POST /_mock/capacity``.  Unset (the default), nothing here runs per request.

Every ingest request through the gate is logged as (finished at, seconds in the server,
status) on the stand-in's monotonic clock (system-wide on Linux), so a benchmark can cut the
run into phases and read latency percentiles and 429s per phase.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Any

LOG_LIMIT = 2_000_000


def parse_schedule(text: str) -> list[tuple[float, int]]:
    """``"0:32,10:4,20:32"`` → ``[(0.0, 32), (10.0, 4), (20.0, 32)]``."""
    out = []
    for part in text.split(","):
        at, sep, cap = part.strip().partition(":")
        if not sep:
            raise ValueError(f"capacity schedule entry {part!r}: expected seconds:capacity")
        out.append((float(at), int(cap)))
    return _check_schedule(out)


def _check_schedule(steps: list) -> list[tuple[float, int]]:
    steps = sorted((float(at), int(cap)) for at, cap in steps)
    if any(at < 0 or cap < 1 for at, cap in steps):
        raise ValueError("capacity schedule: seconds must be ≥ 0 and capacities ≥ 1")
    return steps


class Capacity:
    """The gate ingest requests pass: ``enter()`` (False: answer 429), then ``leave()``."""

    def __init__(self, capacity: int | None = None, queue: int | None = None,
                 schedule: list[tuple[float, int]] | None = None,
                 retry_after_s: int | None = None):
        self._lock = threading.Lock()
        self._waiting: deque[threading.Event] = deque()
        self._log: deque[tuple[float, float, int]] = deque(maxlen=LOG_LIMIT)
        self._busy = 0
        self.rejected = 0
        self._initial = (capacity, queue, list(schedule or []), retry_after_s)
        self.configure(capacity, queue, schedule, retry_after_s)

    # -- configuration ---------------------------------------------------------------------

    def configure(self, capacity: int | None = None, queue: int | None = None,
                  schedule: list[tuple[float, int]] | None = None,
                  retry_after_s: int | None = None) -> dict:
        """Set the capacity now (None: unlimited), the queue (None: as many as the capacity)
        and/or a schedule whose clock starts at the next ingest request."""
        if capacity is not None and int(capacity) < 1:
            raise ValueError("capacity must be ≥ 1 (or null for unlimited)")
        if queue is not None and int(queue) < 0:
            raise ValueError("queue must be ≥ 0")
        steps = _check_schedule(schedule or [])
        with self._lock:
            self._schedule = steps
            self._epoch: float | None = None
            self._queue = None if queue is None else int(queue)
            self.retry_after_s = retry_after_s
            cap = int(capacity) if capacity is not None else None
            if cap is None and steps:
                cap = steps[0][1]
            self._set(cap)
            self._hand_over()
        return self.state()

    def reset(self) -> None:
        """Back to the constructor's setting; counters and the log emptied."""
        with self._lock:
            self.rejected = 0
            self._log.clear()
        self.configure(*self._initial)

    def _set(self, cap: int | None) -> None:
        self._cap = cap
        #: read without the lock on every request: False keeps the hot path as it was
        self.limited = cap is not None or bool(self._schedule)

    def _tick(self, now: float) -> None:
        """Apply the schedule steps that are due (lock held)."""
        if self._epoch is None:
            self._epoch = now
        while self._schedule and now - self._epoch >= self._schedule[0][0]:
            self._cap = self._schedule.pop(0)[1]
        self._hand_over()

    def _hand_over(self) -> None:
        """Give free servers to the longest-waiting requests (lock held)."""
        while self._waiting and (self._cap is None or self._busy < self._cap):
            self._busy += 1
            self._waiting.popleft().set()

    # -- the hot path (only when limited) ----------------------------------------------------

    def enter(self) -> bool:
        """Wait for a server; False when the queue is full (answer 429 now)."""
        with self._lock:
            if self._schedule or self._epoch is None:
                self._tick(time.monotonic())
            cap = self._cap
            if cap is None or (self._busy < cap and not self._waiting):
                self._busy += 1
                return True
            queue = cap if self._queue is None else self._queue
            if len(self._waiting) >= queue:
                self.rejected += 1
                return False
            turn = threading.Event()
            self._waiting.append(turn)
        turn.wait()
        return True

    def leave(self, started: float, status: int) -> None:
        now = time.monotonic()
        with self._lock:
            self._busy -= 1
            if self._schedule:
                self._tick(now)
            else:
                self._hand_over()
        self._log.append((now, now - started, status))

    def rejected_now(self, started: float) -> None:
        now = time.monotonic()
        self._log.append((now, now - started, 429))

    def release_all(self) -> None:
        """Stopping: let every waiting request through."""
        with self._lock:
            while self._waiting:
                self._busy += 1
                self._waiting.popleft().set()

    # -- reporting ---------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        with self._lock:
            return {"capacity": self._cap, "queue": self._queue, "in_service": self._busy,
                    "waiting": len(self._waiting), "rejected_429": self.rejected,
                    "schedule_left": [list(s) for s in self._schedule],
                    "retry_after_s": self.retry_after_s, "now": time.monotonic()}

    def log(self, since: float = 0.0) -> list[tuple[float, float, int]]:
        return [r for r in list(self._log) if r[0] >= since]
