"""In-memory event store with ClickHouse-like dedup, plus the customer/feature catalogue."""

from __future__ import annotations

import re
import threading
import time
from collections import deque
from random import Random

import orjson

from .validation import format_ms, new_ulid, now_ms


class EventStore:
    """Stored events keyed by ``(event_id, timestamp_ms)``.

    Flexprice writes events into a ClickHouse ``ReplacingMergeTree(ingested_at)`` ordered by
    ``(tenant_id, environment_id, timestamp, id)`` with ``timestamp DateTime64(3)``: a repeat
    collapses only when id AND millisecond timestamp are equal, and the latest version wins.
    Each event is kept as canonical JSON bytes (sorted keys), which is what "identical" means.
    """

    def __init__(self, queue_delay: float | None = None, queue_rate: float = 12.0) -> None:
        self._lock = threading.Lock()
        #: when True, remember the wall-clock time each (event_id, timestamp) first arrived
        #: (``receive_times``; latency measurements). Off by default: it costs memory per event.
        self.keep_receive_times = False
        #: queued mode (the real server): a 202 only queues; a consumer stores each event
        #: ``queue_delay`` s later at most ``queue_rate`` events/s, and repeats stay visible
        #: to read-back until ``merge()`` (ReplacingMergeTree merges later; no FINAL).
        self.queued = queue_delay is not None
        self.queue_delay = queue_delay or 0.0
        self.queue_rate = queue_rate
        self.clear()

    def clear(self) -> None:
        with self._lock:
            self._rows: dict[tuple[str, int], bytes] = {}
            self._first_by_id: dict[str, bytes] = {}
            self._dups: list[tuple[bytes, bytes]] = []
            self._conflicts: list[tuple[bytes, bytes]] = []
            self._received_at: dict[tuple[str, int], float] = {}
            self._pending: deque[tuple[float, str, int, bytes]] = deque()
            self._next_free = 0.0  # when the queue consumer may store its next event
            self._unmerged: list[tuple[str, int, bytes]] = []  # repeats read-back still sees
            self.received = 0
            self.identical_duplicates = 0
            self.conflicting_duplicates = 0

    def add(self, items: list[tuple[str, int, bytes]]) -> None:
        """Record deliveries of ``(event_id, ts_ms, canonical_bytes)``."""
        if not items:
            return
        if self.queued:
            ready = time.monotonic() + self.queue_delay
            with self._lock:
                self._pending.extend((ready, *item) for item in items)
                self.received += len(items)
            return
        with self._lock:
            self._store(items)
            self.received += len(items)

    def _consume(self) -> None:
        """Store what the throttled consumer has reached by now (call with the lock held)."""
        pending = self._pending
        if not pending:
            return
        now = time.monotonic()
        gap = 1.0 / self.queue_rate
        due = []
        nxt = self._next_free
        while pending:
            at = max(pending[0][0], nxt)
            if at > now:
                break
            due.append(pending.popleft()[1:])
            nxt = at + gap
        self._next_free = nxt
        self._store(due)

    def drain(self) -> int:
        """Store every queued event now (as if the consumer caught up); returns how many."""
        with self._lock:
            due = [p[1:] for p in self._pending]
            self._pending.clear()
            self._store(due)
            return len(due)

    def merge(self) -> int:
        """The store merges: repeats collapse for read-back too; returns how many vanished."""
        with self._lock:
            self._consume()
            n = len(self._unmerged)
            self._unmerged = []
            return n

    @property
    def pending(self) -> int:
        with self._lock:
            self._consume()
            return len(self._pending)

    def _store(self, items: list[tuple[str, int, bytes]]) -> None:
        if not items:
            return
        now = time.time() if self.keep_receive_times else None
        rows = self._rows
        first = self._first_by_id
        for eid, ts, canon in items:
            key = (eid, ts)
            prev = rows.get(key)
            if prev is None:
                rows[key] = canon
                if now is not None:
                    self._received_at[key] = now
            else:
                if self.queued:  # both rows stay visible until the store merges
                    self._unmerged.append((eid, ts, prev))
                if prev == canon:
                    self._dups.append((prev, prev))  # keep no second copy of equal bytes
                    self.identical_duplicates += 1
                else:
                    self._dups.append((prev, canon))
                    self.conflicting_duplicates += 1
                    rows[key] = canon  # ReplacingMergeTree keeps the latest version
            f = first.get(eid)
            if f is None:
                first[eid] = canon
            elif f != canon:
                self._conflicts.append((f, canon))

    # -- views ---------------------------------------------------------------------------

    def __len__(self) -> int:
        with self._lock:
            self._consume()
            return len(self._rows)

    def rows(self) -> list[tuple[str, int, bytes]]:
        """What read-back sees: stored rows, plus unmerged repeats in queued mode."""
        with self._lock:
            self._consume()
            return [(k[0], k[1], v) for k, v in self._rows.items()] + self._unmerged

    def events(self) -> list[dict]:
        """Stored events, merged (what usage queries with FINAL count)."""
        with self._lock:
            self._consume()
            raw = list(self._rows.values())
        return [orjson.loads(b) for b in raw]

    def receive_times(self) -> dict[tuple[str, int], float]:
        """``{(event_id, timestamp_ms): unix time of first arrival}`` (needs keep_receive_times)."""
        with self._lock:
            self._consume()
            return dict(self._received_at)

    def duplicates(self) -> list[tuple[dict, dict]]:
        with self._lock:
            self._consume()
            pairs = list(self._dups)
        return [(orjson.loads(a), orjson.loads(b)) for a, b in pairs]

    def conflicts(self) -> list[tuple[dict, dict]]:
        with self._lock:
            self._consume()
            pairs = list(self._conflicts)
        return [(orjson.loads(a), orjson.loads(b)) for a, b in pairs]

    def counts(self) -> dict:
        with self._lock:
            self._consume()
            return {
                "events_queued": len(self._pending),
                "unmerged_duplicates": len(self._unmerged),
                "events_stored": len(self._rows),
                "deliveries": self.received,
                "duplicates": len(self._dups),
                "identical_duplicates": self.identical_duplicates,
                "conflicting_duplicates": self.conflicting_duplicates,
                "distinct_conflicts": len(self._conflicts),
                "distinct_event_ids": len(self._first_by_id),
            }


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_") or "feature"


class Catalog:
    """Customers and (metered) features with their meters, in the spec's response shapes."""

    def __init__(self, tenant_id: str, environment_id: str, rng: Random) -> None:
        self._lock = threading.Lock()
        self.tenant_id = tenant_id
        self.environment_id = environment_id
        self._rng = rng
        self.customers: dict[str, dict] = {}
        self.features: list[dict] = []  # each: {"feature": {...}, "meter": {...}}

    def clear(self) -> None:
        with self._lock:
            self.customers = {}
            self.features = []

    def _base(self) -> dict:
        ts = format_ms(now_ms())
        return {"tenant_id": self.tenant_id, "status": "published", "created_at": ts,
                "updated_at": ts, "created_by": "mock", "updated_by": "mock"}

    def add_customer(self, external_id: str, name: str | None = None, email: str = "",
                     metadata: dict | None = None, **extra: object) -> dict:
        if not isinstance(external_id, str) or not external_id:
            raise ValueError("external_id must be a non-empty string")
        cust = {
            "id": "cust_" + new_ulid(self._rng),
            "external_id": external_id,
            "name": name if name is not None else external_id,
            "email": email,
            "address_line1": "",
            "address_line2": "",
            "address_city": "",
            "address_state": "",
            "address_postal_code": "",
            "address_country": "",
            "timezone": "UTC",
            "metadata": dict(metadata or {}),
            "environment_id": self.environment_id,
            **self._base(),
        }
        cust.update(extra)
        with self._lock:
            self.customers[external_id] = cust
        return cust

    def get_customer(self, external_id: str) -> dict | None:
        return self.customers.get(external_id)

    def add_feature(self, name: str, event_name: str, aggregation_type: str = "COUNT",
                    field: str | None = None, lookup_key: str | None = None,
                    multiplier: str | None = None) -> dict:
        if not name or not event_name:
            raise ValueError("name and event_name are required")
        agg_type = str(aggregation_type).upper()
        base = self._base()
        meter_id = "meter_" + new_ulid(self._rng)
        aggregation: dict = {"type": agg_type}
        if field:
            aggregation["field"] = field
        if multiplier is not None:
            aggregation["multiplier"] = str(multiplier)
        meter = {
            "id": meter_id,
            "name": name,
            "tenant_id": self.tenant_id,
            "event_name": event_name,
            "aggregation": aggregation,
            "filters": [],
            "reset_usage": "BILLING_PERIOD",
            "created_at": base["created_at"],
            "updated_at": base["updated_at"],
            "status": "published",
        }
        feature = {
            "id": "feat_" + new_ulid(self._rng),
            "name": name,
            "lookup_key": lookup_key or _slug(name),
            "description": "",
            "meter_id": meter_id,
            "metadata": {},
            "type": "metered",
            "unit_singular": "",
            "unit_plural": "",
            "environment_id": self.environment_id,
            **base,
        }
        with self._lock:
            self.features.append({"feature": feature, "meter": meter})
        return {**feature, "meter": meter}

    def search_features(self, flt: dict) -> tuple[list[dict], int]:
        """Filter per types.FeatureFilter; returns (items, total). Sorted created_at desc."""
        with self._lock:
            entries = list(self.features)
        ids = flt.get("feature_ids") or None
        meter_ids = flt.get("meter_ids") or None
        lookup_keys = set(flt.get("lookup_keys") or [])
        if flt.get("lookup_key"):
            lookup_keys.add(flt["lookup_key"])
        name_contains = (flt.get("name_contains") or "").lower()
        status = flt.get("status") or "published"
        expand = {p.strip() for p in (flt.get("expand") or "").split(",") if p.strip()}
        out = []
        for e in reversed(entries):  # newest first
            f = e["feature"]
            if ids is not None and f["id"] not in ids:
                continue
            if meter_ids is not None and f["meter_id"] not in meter_ids:
                continue
            if lookup_keys and f["lookup_key"] not in lookup_keys:
                continue
            if name_contains and name_contains not in f["name"].lower():
                continue
            if f["status"] != status:
                continue
            item = dict(f)
            if "meters" in expand:
                item["meter"] = e["meter"]
            out.append(item)
        return out, len(out)
