"""Reading accepted events back from Flexprice, knowing that 202 means *queued*.

The server answers 202 once an event is on its own queue; a consumer stores it later (about
12 events/s in its default config), and read-back (``GET /v1/events``) has no FINAL, so a
resent event can show twice until the store merges. So "not readable yet" is not "missing":
this waits a bounded time, says "queued" for what is still not visible, and never counts a
repeat twice. Each lookup names its own time window (without ``start_time`` the server only
looks 7 days back, so a backfill would look absent) and reads one page (≤ 50 rows).
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import asdict, dataclass

from flexprice_beam.core.events import parse_timestamp, rfc3339
from flexprice_beam.io.api import ApiClient, Kind

#: the most rows the server returns per page
PAGE = 50


@dataclass
class Held:
    """What read-back found for a sample of accepted events."""

    sampled: int = 0
    readable: int = 0
    queued: int = 0  # accepted (202) but not readable when the wait ran out
    shown_twice: int = 0  # readable more than once: a repeat the store has not merged yet
    waited: float = 0.0
    error: str | None = None

    def as_dict(self) -> dict:
        return asdict(self)

    def render(self) -> str:
        if self.error:
            return (f"read-back unavailable ({self.error}); accepted means queued, so this "
                    "says nothing about the events")
        if not self.sampled:
            return "nothing accepted to read back"
        twice = (f"; {self.shown_twice} shown twice until the store merges (read-back has "
                 "no FINAL; billing deduplicates)" if self.shown_twice else "")
        if self.queued:
            return (f"{self.readable} of {self.sampled} sampled accepted events readable; "
                    f"{self.queued} still queued after {self.waited:.0f}s (202 means queued: "
                    "Flexprice stores events later, ~12/s by default; if they stay unreadable "
                    "long after, look at the server's own queue — with its Kafka down it "
                    f"still answers 202 and logs 'circuit breaker is open'){twice}")
        return (f"all {self.sampled} sampled accepted events readable "
                f"(after {self.waited:.1f}s){twice}")


def _window(timestamp: str) -> tuple[str, str]:
    t = parse_timestamp(timestamp)
    return rfc3339(t - dt.timedelta(seconds=1)), rfc3339(t + dt.timedelta(seconds=1))


_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)


def _ms(timestamp: str) -> int | None:
    """Milliseconds since the epoch, truncated as the store keeps them (DateTime64(3))."""
    try:
        return (parse_timestamp(timestamp) - _EPOCH) // dt.timedelta(milliseconds=1)
    except ValueError:
        return None


def rows_for(client: ApiClient, event_id: str, timestamp: str) -> tuple[int | None, str]:
    """How many rows read-back shows for (event_id, timestamp); None and why on failure."""
    start, end = _window(timestamp)
    answer = client.get("/v1/events", event_id=event_id, start_time=start, end_time=end,
                        page_size=PAGE)
    body = answer.data
    if answer.kind is not Kind.ACCEPTED or not isinstance(body, dict):
        return None, answer.describe()[:200]
    want = _ms(timestamp)
    rows = [e for e in body.get("events") or [] if isinstance(e, dict)
            and e.get("id") == event_id and _ms(str(e.get("timestamp"))) == want]
    return len(rows), ""


def read_back(client: ApiClient, keys: list[tuple[str, str]], wait: float,
              poll: float = 1.0) -> Held:
    """Look up each (event_id, timestamp) until all are readable or ``wait`` seconds pass."""
    keys = list(dict.fromkeys(keys))
    held = Held(sampled=len(keys))
    started = time.monotonic()
    remaining = list(keys)
    twice: set[tuple[str, str]] = set()
    while True:
        still = []
        for key in remaining:
            n, why = rows_for(client, *key)
            if n is None:
                held.error = why
                held.waited = time.monotonic() - started
                return held
            if n == 0:
                still.append(key)
            elif n > 1:
                twice.add(key)
        remaining = still
        elapsed = time.monotonic() - started
        if not remaining or elapsed + poll > wait:
            break
        time.sleep(poll)
    held.waited = time.monotonic() - started
    held.readable = len(keys) - len(remaining)
    held.queued = len(remaining)
    held.shown_twice = len(twice)
    return held
