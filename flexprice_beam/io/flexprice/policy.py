"""What to do with each answer from Flexprice: the seed's error table as one pure function.

``decide`` maps an ``Answer``, the attempt, the time spent and the retry settings to an
``Action`` (README, "Error handling"); the transport only reports and the executor only acts,
as Beam's ``requestresponse`` keeps its ``Repeater`` apart from its ``Caller``."""

from __future__ import annotations

import email.utils
import enum
import random
import time
from dataclasses import dataclass

from flexprice_beam.core.config import RetryConfig
from flexprice_beam.io.api import FlexpriceAuthError, Kind, auth_advice, describe, kind_of

__all__ = ["FlexpriceAuthError", "Kind"]  # shared with io/api.py (check, read-back)


class Action(enum.Enum):
    ACCEPT = "accept"
    RETRY = "retry"
    SPLIT = "split"
    DEAD_LETTER = "dead_letter"
    STOP = "stop"


@dataclass(slots=True)
class Answer:
    """One HTTP exchange's outcome, as the transport saw it (status None: no response)."""

    status: int | None
    body: str
    retry_after: float | None = None
    error: str | None = None
    latency: float = 0.0
    #: a transport failure no retry can cure: "certificate" (it does not verify) or "proxy"
    #: (HTTPS_PROXY answered 407 to our credentials); None otherwise
    fatal: str | None = None
    #: how the status was known when no response was read (an oversize body's broken pipe)
    note: str | None = None

    @property
    def kind(self) -> Kind:
        return Kind.AUTH if self.fatal else kind_of(self.status)

    def describe(self) -> str:
        return describe(self.status, self.body,
                        f"assumed: {self.note}; {self.error}" if self.note else self.error)


@dataclass(frozen=True, slots=True)
class Decision:
    action: Action
    delay: float = 0.0  # RETRY: seconds to wait first
    reason: str = ""  # DEAD_LETTER / STOP: why, for logs and dead letters
    cause: str = ""  # RETRY: "429", "503", "connection" (the ``retries_<cause>`` counter)
    defer_all: bool = False  # RETRY after a 429: every sender of the process waits too
    gave_up: bool = False  # DEAD_LETTER because retrying ran out (logged as an error)


def decide(answer: Answer, *, attempt: int, elapsed: float, size: int, retry: RetryPolicy,
           base_url: str = "", environment_id: str | None = None,
           stopping: str | None = None, grace: float | None = None,
           rng: random.Random | None = None) -> Decision:
    """The action for ``answer`` to attempt number ``attempt`` (1-based) of a batch of
    ``size`` events first sent ``elapsed`` seconds ago.  ``stopping`` names the signal of a
    requested shutdown and ``grace`` the seconds it leaves (None: no deadline)."""
    kind = answer.kind
    if kind is Kind.ACCEPTED:
        return Decision(Action.ACCEPT)
    if kind is Kind.AUTH:
        return Decision(Action.STOP, reason=stop_reason(answer, base_url, environment_id))
    if kind is Kind.REJECTED:
        if size > 1:
            return Decision(Action.SPLIT, reason=answer.describe())
        return Decision(Action.DEAD_LETTER, reason=answer.describe())
    delay = retry.delay(attempt, answer.retry_after, rng)
    if retry.exhausted(attempt, elapsed, delay) or (grace is not None and delay > grace):
        why = f"gave up after {attempt} attempts: {answer.describe()}"
        if stopping:
            why += f" (stopping on {stopping}: shutdown grace over)"
        return Decision(Action.DEAD_LETTER, reason=why, gave_up=True)
    cause = "connection" if answer.status is None else str(answer.status)
    return Decision(Action.RETRY, delay=delay, cause=cause, defer_all=answer.status == 429)


def stop_reason(answer: Answer, base_url: str, environment_id: str | None) -> str:
    """The words a stop is reported with: what failed and what to fix."""
    if answer.fatal == "proxy":
        return (f"the HTTPS proxy refused to connect to {base_url}: {str(answer.error)[:300]} "
                "— check the user:password in HTTPS_PROXY; stopping without retries")
    if answer.fatal:
        return (f"TLS certificate of {base_url} did not verify: {str(answer.error)[:300]} — "
                "trust its CA (REQUESTS_CA_BUNDLE) or, for a test server only, set "
                "output.flexprice.skip_cert_verify: true; stopping without retries")
    return (f"Flexprice refused the API key: {answer.describe()} — "
            f"{auth_advice(answer, environment_id)}; stopping without retries")


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
        if retry_after:
            return retry_after
        cap = min(self.max_backoff, self.initial_backoff * (2 ** (attempt - 1)))
        return (rng or random).uniform(cap / 2, cap)

    def exhausted(self, attempt: int, elapsed: float, next_delay: float) -> bool:
        """True once the next wait would pass ``max_elapsed`` (or ``max_attempts`` tries,
        when that opt-in limit is set, were made)."""
        if self.max_attempts is not None and attempt >= self.max_attempts:
            return True
        return elapsed + next_delay > self.max_elapsed

    def gives_up(self, attempt: int, started: float, next_delay: float) -> bool:
        return self.exhausted(attempt, time.monotonic() - started, next_delay)
