"""Retry policy and shared throttle for calls to Flexprice.

Kept apart from the transport, as Beam's ``requestresponse`` keeps its ``Repeater`` and
throttler apart from its ``Caller``: the policy decides *whether and when* to try again,
the throttle makes every sender of a worker honour a 429's ``Retry-After`` together
instead of hammering a rate-limited API from eight threads.
"""

from __future__ import annotations

import email.utils
import random
import threading
import time
from dataclasses import dataclass

from flexprice_beam.core.config import RetryConfig


def parse_retry_after(value: str | None) -> float | None:
    """``Retry-After`` as seconds (delta-seconds or an HTTP date); None if absent/garbled."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


@dataclass
class RetryPolicy:
    """Exponential backoff with jitter, bounded by elapsed time (and, opt-in, by attempts)."""

    max_attempts: int | None = None
    initial_backoff: float = 0.2
    max_backoff: float = 30.0
    max_elapsed: float = 600.0

    @classmethod
    def from_config(cls, cfg: RetryConfig) -> RetryPolicy:
        return cls(cfg.max_attempts, cfg.initial_backoff, cfg.max_backoff, cfg.max_elapsed)

    def delay(self, attempt: int, retry_after: float | None = None,
              rng: random.Random | None = None) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        cap = min(self.max_backoff, self.initial_backoff * (2 ** (attempt - 1)))
        jittered = (rng or random).uniform(cap / 2, cap)
        return retry_after if retry_after else jittered

    def gives_up(self, attempt: int, started: float, next_delay: float) -> bool:
        """True once the next wait would pass ``max_elapsed`` (or ``max_attempts`` tries,
        when that opt-in limit is set, were made)."""
        if self.max_attempts is not None and attempt >= self.max_attempts:
            return True
        return time.monotonic() + next_delay - started > self.max_elapsed


class Throttle:
    """A worker-wide "not before" time set by 429s, and a stop flag set by auth failures."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._not_before = 0.0
        self.stopped = threading.Event()

    def defer(self, seconds: float) -> None:
        with self._lock:
            self._not_before = max(self._not_before, time.monotonic() + seconds)

    def clear(self) -> bool:
        """Nothing to wait for right now: not deferred by a 429 and not stopped."""
        return time.monotonic() >= self._not_before and not self.stopped.is_set()

    def wait(self, seconds: float = 0.0) -> bool:
        """Sleep ``seconds`` and past any deferral; False if the sink was stopped meanwhile."""
        deadline = time.monotonic() + seconds
        while True:
            with self._lock:
                until = max(deadline, self._not_before)
            remaining = until - time.monotonic()
            if remaining <= 0:
                return not self.stopped.is_set()
            if self.stopped.wait(min(remaining, 1.0)):
                return False
