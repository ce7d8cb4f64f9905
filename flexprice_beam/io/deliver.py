"""Delivering one batch of prepared events, following the seed's error table.

* 2xx: accepted.
* 400 (and other 4xx): the batch holds bad events. Bisect it, resending halves, until the
  bad events stand alone; those are dead-lettered with the server's answer, the rest are
  delivered. Resending is safe: the bytes are identical, so Flexprice deduplicates.
* 401/403: raise ``FlexpriceAuthError`` and stop every other sender at once.
* 429, 5xx, connection errors, timeouts: back off (honouring ``Retry-After``) and retry;
  when the retry budget is spent, dead-letter with the last error rather than lose it.

Per-event log lines follow the seed ("📤 Sending event …", "✅ Event accepted …"): every
event at DEBUG, a sample (the first few, then every 1000th) at INFO.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from flexprice_beam.core.logs import Sampler, log_events
from flexprice_beam.core.shutdown import STOP
from flexprice_beam.io.client import (
    Answer,
    FlexpriceAuthError,
    FlexpriceClient,
    Kind,
    auth_advice,
)
from flexprice_beam.io.retry import RetryPolicy, Throttle
from flexprice_beam.transforms.validate import Prepared

log = logging.getLogger("flexprice_beam.sink")
_SENDING = Sampler()
_ACCEPTED = Sampler()
#: A failed group larger than this is logged as one line (its events are in the dead letters).
_LOG_EACH_FAILURE = 3


def _name_and_customer(item: Prepared) -> tuple:
    return item.event["event_name"], item.event["external_customer_id"]


def _event_id(item: Prepared) -> tuple:
    return (item.event["event_id"],)


@dataclass(slots=True)
class Delivery:
    """An event that was NOT accepted: dead-lettered with the answer that sank it."""

    item: Prepared
    attempts: int
    status: int | None = None
    reason: str | None = None


@dataclass
class BatchOutcome:
    """One ``deliver()`` call's results plus what it cost, for metrics on the main thread.

    Accepted events are kept as the caller's own lists (no object per event: at 200k
    events/s a per-event report costs more than the HTTP request); only failures get a
    ``Delivery`` each.
    """

    accepted: list[list[Prepared]]
    failed: list[Delivery]
    requests: int = 0
    retries: dict[str, int] | None = None
    latencies: list[float] | None = None

    @property
    def accepted_count(self) -> int:
        return sum(map(len, self.accepted))

    def accepted_items(self):
        for part in self.accepted:
            yield from part


class EventDeliverer:
    """Sends a batch with retries and 400-isolation; thread-safe, one per worker."""

    def __init__(self, client: FlexpriceClient, policy: RetryPolicy, throttle: Throttle,
                 single: bool = False):
        self.client = client
        self.policy = policy
        self.throttle = throttle
        self.single = single
        self._first_stop_reason: str | None = None

    @property
    def stop_reason(self) -> str:
        return self._first_stop_reason or "stopped: another request was refused with 401/403"

    def deliver(self, items: list[Prepared], first: Answer | None = None) -> BatchOutcome:
        """Deliver ``items`` (one bulk batch); ``first``: the answer to a first attempt the
        caller already made itself (``io.inline``), which this continues from."""
        outcome = BatchOutcome([], [], retries={}, latencies=[])
        if first is None:
            self.note_sending(items)
        if self.single:
            for item in items:
                self._send([item], outcome)
        else:
            self._send(items, outcome, first)
        return outcome

    @staticmethod
    def note_sending(items: list[Prepared]) -> None:
        log_events(log, _SENDING, items, "📤 Sending event: %s for customer: %s",
                   _name_and_customer)

    @staticmethod
    def note_accepted(items: list[Prepared]) -> None:
        log_events(log, _ACCEPTED, items, "✅ Event accepted successfully, ID: %s", _event_id)

    def _send(self, items: list[Prepared], outcome: BatchOutcome,
              first: Answer | None = None) -> None:
        answer, attempts = self._attempt_until_final(items, outcome, first)
        kind = answer.kind
        if kind is Kind.ACCEPTED:
            outcome.accepted.append(items)
            self.note_accepted(items)
        elif kind is Kind.REJECTED and len(items) > 1:
            mid = len(items) // 2
            log.info("Flexprice rejected a batch of %d (%s); isolating the bad events",
                     len(items), answer.describe()[:200])
            self._send(items[:mid], outcome)
            self._send(items[mid:], outcome)
        else:
            why = answer.describe()
            level = logging.WARNING
            if kind is Kind.RETRY:
                why = f"gave up after {attempts} attempts: {why}"
                if STOP.requested.is_set():
                    why += f" (stopping on {STOP.signal_name}: shutdown grace over)"
                level = logging.ERROR
            self._log_failure(level, items, why)
            outcome.failed.extend(Delivery(i, attempts, answer.status, why) for i in items)

    @staticmethod
    def _log_failure(level: int, items: list[Prepared], why: str) -> None:
        if len(items) <= _LOG_EACH_FAILURE:
            for i in items:
                log.log(level, "Failed to send event %s (%s for customer %s): %s",
                        i.event["event_id"], i.event["event_name"],
                        i.event["external_customer_id"], why[:300])
            return
        ids = ", ".join(i.event["event_id"] for i in items[:3])
        log.log(level, "Failed to send %d events (%s, …): %s; they go to the dead letters",
                len(items), ids, why[:300])

    def _attempt_until_final(self, items: list[Prepared], outcome: BatchOutcome,
                             first: Answer | None = None) -> tuple[Answer, int]:
        started = time.monotonic() - (first.latency if first is not None else 0.0)
        attempt = 0
        while True:
            attempt += 1
            if first is not None:
                answer, first = first, None
            elif not self.throttle.wait():
                raise FlexpriceAuthError(self.stop_reason)
            elif self.single:
                answer = self.client.post_single(items[0].body)
            else:
                answer = self.client.post_bulk([i.body for i in items])
            outcome.requests += 1
            outcome.latencies.append(answer.latency)
            kind = answer.kind
            if kind is Kind.AUTH:
                if answer.fatal == "proxy":
                    why = (f"the HTTPS proxy refused to connect to {self.client.base_url}: "
                           f"{answer.error[:300]} — check the user:password in HTTPS_PROXY; "
                           "stopping without retries")
                elif answer.fatal:
                    why = (f"TLS certificate of {self.client.base_url} did not verify: "
                           f"{answer.error[:300]} — trust its CA (REQUESTS_CA_BUNDLE) or, for a "
                           "test server only, set output.flexprice.skip_cert_verify: true; "
                           "stopping without retries")
                else:
                    why = (f"Flexprice refused the API key: {answer.describe()} — "
                           f"{auth_advice(answer, self.client.environment_id)}; stopping "
                           "without retries")
                # The other senders stop with the same words: whichever error the runner
                # reports then names the cause, not just "another request failed".
                self._first_stop_reason = self._first_stop_reason or why
                self.throttle.stopped.set()
                raise FlexpriceAuthError(why)
            if kind is not Kind.RETRY:
                return answer, attempt
            cause = "connection" if answer.status is None else str(answer.status)
            delay = self.policy.delay(attempt, answer.retry_after)
            if self.policy.gives_up(attempt, started, delay) or not STOP.retry_allowed(delay):
                return answer, attempt
            outcome.retries[cause] = outcome.retries.get(cause, 0) + 1
            if answer.status == 429:
                self.throttle.defer(delay)
            log.info("Flexprice %s; retrying %d events in %.2fs (attempt %d)",
                     answer.describe()[:200], len(items), delay, attempt + 1)
            if not self.throttle.wait(delay):
                raise FlexpriceAuthError(self.stop_reason)
