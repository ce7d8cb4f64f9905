"""Fault configuration and per-request fault decisions for the Flexprice stand-in."""

from __future__ import annotations

import dataclasses
import threading
import time
import zlib
from dataclasses import dataclass, field
from random import Random

# Outcomes a request can be given (names used in ``schedule`` and in the stats).
OK = "ok"
STATUS_OUTCOMES = ("429", "429_no_retry_after", "500", "502", "503")
DROP_OUTCOMES = ("reset", "ack_lost", "hang")
OUTCOMES = (OK, *STATUS_OUTCOMES, "reset", "ack_lost", "slow", "hang")

# Kinds among which ``fault_rate`` is spread evenly.
MIXED_KINDS = ("429", "500", "502", "503", "reset", "ack_lost")

_RATE_KEYS = {
    "429": "rate_429",
    "429_no_retry_after": "rate_429_no_retry_after",
    "500": "rate_500",
    "502": "rate_502",
    "503": "rate_503",
    "reset": "rate_reset",
    "ack_lost": "rate_ack_lost",
    "slow": "rate_slow",
    "hang": "rate_hang",
}


@dataclass
class FaultConfig:
    """Everything that makes the stand-in misbehave. JSON-able; all keys optional.

    Per-request random faults apply to the requests in ``fault_scope`` ("ingest":
    ``POST /v1/events`` and ``/v1/events/bulk``; "all": every ``/v1`` request). Each such
    request first takes the next entry of ``schedule`` (if any is left), otherwise one
    draw from the seeded RNG against the rates.
    """

    seed: int | None = None
    latency_ms: float = 0.0  # added to every /v1 response
    fault_rate: float = 0.0  # spread evenly over MIXED_KINDS (added to the rate_* values)
    rate_429: float = 0.0  # 429 with Retry-After: retry_after_s
    rate_429_no_retry_after: float = 0.0
    rate_500: float = 0.0
    rate_502: float = 0.0  # gateway-style HTML body
    rate_503: float = 0.0
    rate_reset: float = 0.0  # read request, store nothing, RST the connection
    rate_ack_lost: float = 0.0  # process/store, then RST without a response
    rate_slow: float = 0.0  # process/store, wait slow_ms, then answer normally
    rate_hang: float = 0.0  # store nothing, wait hang_s, then RST
    retry_after_s: int | None = 1
    slow_ms: float = 500.0
    hang_s: float = 30.0
    schedule: list[str] = field(default_factory=list)  # outcomes or any "NNN" status
    schedule_cycle: bool = False
    fault_scope: str = "ingest"  # "ingest" | "all"
    reject_every_nth: int = 0  # events with crc32(event_id) % n == 0 are invalid (400)
    reject_event_ids: list[str] = field(default_factory=list)
    bulk_partial_publish: bool = True  # bulk 400: events before the bad one are stored
    fail_all_status: int | None = None  # every /v1 request answered with this status
    fail_all_duration_s: float | None = None  # ... for this long after being set

    @classmethod
    def from_dict(cls, data: dict | None) -> FaultConfig:
        data = dict(data or {})
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown fault config key(s): {', '.join(unknown)}")
        cfg = cls(**data)
        cfg.validate()
        return cfg

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def merged(self, data: dict) -> FaultConfig:
        d = self.to_dict()
        d.update(data)
        return FaultConfig.from_dict(d)

    def validate(self) -> None:
        total = 0.0
        for key in (*_RATE_KEYS.values(), "fault_rate"):
            v = getattr(self, key)
            if not isinstance(v, (int, float)) or not 0.0 <= v <= 1.0:
                raise ValueError(f"{key} must be a probability in [0, 1], got {v!r}")
            total += v
        if total > 1.0 + 1e-9:
            raise ValueError(f"fault rates add up to {total:.3f} > 1")
        for key in ("latency_ms", "slow_ms", "hang_s"):
            v = getattr(self, key)
            if not isinstance(v, (int, float)) or v < 0:
                raise ValueError(f"{key} must be a number >= 0, got {v!r}")
        if self.retry_after_s is not None and (not isinstance(self.retry_after_s, int)
                                               or self.retry_after_s < 0):
            raise ValueError("retry_after_s must be a non-negative integer or null")
        if not isinstance(self.schedule, list):
            raise ValueError("schedule must be a list")
        for item in self.schedule:
            if item not in OUTCOMES and not _is_status(item):
                raise ValueError(f"schedule entry {item!r} is not one of {OUTCOMES} or a status code")
        if self.fault_scope not in ("ingest", "all"):
            raise ValueError("fault_scope must be 'ingest' or 'all'")
        if not isinstance(self.reject_every_nth, int) or self.reject_every_nth < 0:
            raise ValueError("reject_every_nth must be an integer >= 0")
        if self.fail_all_status is not None and not (
                isinstance(self.fail_all_status, int) and 400 <= self.fail_all_status <= 599):
            raise ValueError("fail_all_status must be a 4xx/5xx status or null")
        if self.fail_all_duration_s is not None and self.fail_all_duration_s < 0:
            raise ValueError("fail_all_duration_s must be >= 0 or null")

    def rates(self) -> list[tuple[str, float]]:
        share = self.fault_rate / len(MIXED_KINDS)
        out = []
        for kind, key in _RATE_KEYS.items():
            r = getattr(self, key) + (share if kind in MIXED_KINDS else 0.0)
            if r > 0:
                out.append((kind, r))
        return out


def _is_status(item: object) -> bool:
    return isinstance(item, str) and len(item) == 3 and item.isdigit() and 400 <= int(item) <= 599


def event_hash(event_id: str) -> int:
    return zlib.crc32(event_id.encode("utf-8"))


class FaultEngine:
    """Thread-safe holder of the active FaultConfig and its RNG/schedule state."""

    def __init__(self, config: FaultConfig) -> None:
        self._lock = threading.Lock()
        self.injected: dict[str, int] = {}
        self._apply(config)

    def _apply(self, config: FaultConfig) -> None:
        self.config = config
        self._rng = Random(config.seed)
        self._rates = config.rates()
        self._schedule = list(config.schedule)
        self._pos = 0
        self._reject_ids = frozenset(config.reject_event_ids)
        self._fail_until = (time.monotonic() + config.fail_all_duration_s
                            if config.fail_all_duration_s is not None else None)

    def set(self, config: FaultConfig) -> None:
        with self._lock:
            self._apply(config)

    def injected_snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self.injected)

    def reset_counters(self) -> None:
        with self._lock:
            self.injected = {}

    def fail_all_status(self) -> int | None:
        status = self.config.fail_all_status
        if status is None:
            return None
        until = self._fail_until
        if until is not None and time.monotonic() >= until:
            return None
        return status

    def draw(self) -> str:
        """The outcome for one fault-eligible request."""
        with self._lock:
            sched = self._schedule
            if sched:
                if self._pos < len(sched):
                    outcome = sched[self._pos]
                    self._pos += 1
                    if self.config.schedule_cycle and self._pos >= len(sched):
                        self._pos = 0
                    return self._count(outcome)
            if not self._rates:
                return OK
            u = self._rng.random()
            acc = 0.0
            for kind, rate in self._rates:
                acc += rate
                if u < acc:
                    return self._count(kind)
            return OK

    def _count(self, outcome: str) -> str:
        if outcome != OK:
            self.injected[outcome] = self.injected.get(outcome, 0) + 1
        return outcome

    def note(self, kind: str, n: int = 1) -> None:
        with self._lock:
            self.injected[kind] = self.injected.get(kind, 0) + n

    def rejects(self, event_id: str | None, canonical: bytes) -> bool:
        """Deterministic 'invalid server-side' rule, stable across resends of one event."""
        cfg = self.config
        if event_id and event_id in self._reject_ids:
            return True
        n = cfg.reject_every_nth
        if n <= 0:
            return False
        h = event_hash(event_id) if event_id else zlib.crc32(canonical)
        return h % n == 0
