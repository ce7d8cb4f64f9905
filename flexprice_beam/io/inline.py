"""``InlineSender``: first attempts posted from the bundle thread, without blocking it.

Why: with one Python thread per request in flight, every answer has to win the GIL back
from the bundle thread, and those hand-offs cost the pipeline more CPU than the HTTP itself
(~1 µs per event at 500 per request, docs/benchmarks.md).  Here the bundle thread sends a
batch on one of up to ``max_in_flight`` keep-alive connections and carries on; answers are
read when their sockets turn readable (``poll``), between elements.  Only first attempts
go this way: an answer other than 2xx hands the batch, with that answer, to
``EventDeliverer`` on the sink's thread pool, which owns retries, bisection and auth stops.
"""

from __future__ import annotations

import http.client
import math
import selectors
import time
from dataclasses import dataclass

from flexprice_beam.io.client import BULK_PATH, Answer, FlexpriceClient, Kind, bulk_body, dropped
from flexprice_beam.io.flexprice.concurrency import AdaptiveLimit, FixedLimit
from flexprice_beam.transforms.validate import Prepared


@dataclass(slots=True)
class _Exchange:
    conn: http.client.HTTPConnection
    batch: list[Prepared]
    started: float


#: seconds a connection may have been idle and still be reused without a dropped() check
RECHECK_IDLE = 1.0


class InlineSender:
    """Non-blocking first attempts on the caller's own connections; single-threaded."""

    def __init__(self, client: FlexpriceClient, permits: FixedLimit | AdaptiveLimit,
                 timeout: float):
        self._client = client
        self._permits = permits  # shared with the thread pool: max_in_flight per process
        self._timeout = timeout
        self._idle: list[tuple[http.client.HTTPConnection, float]] = []  # (conn, idle since)
        self._busy: dict[int, _Exchange] = {}
        self._selector = selectors.DefaultSelector()

    @property
    def in_flight(self) -> int:
        return len(self._busy)

    def try_send(self, batch: list[Prepared]) -> Answer | bool:
        """Post ``batch`` if a permit is free: True when sent, False when no permit was free,
        or the ``Answer`` of a send that failed at once (then no permit is held)."""
        if not self._permits.try_acquire():
            return False
        conn = self._connection()
        started = time.monotonic()
        failed = self._client.send(conn, "POST", BULK_PATH, bulk_body([i.body for i in batch]),
                                   started)
        if failed is not None:
            self._permits.release(failed.latency, failed.kind is Kind.RETRY)
            return failed
        sock = conn.sock
        self._busy[sock.fileno()] = _Exchange(conn, batch, started)
        self._selector.register(sock, selectors.EVENT_READ)
        return True

    def poll(self, timeout: float = 0.0) -> list[tuple[list[Prepared], Answer]]:
        """Finished exchanges as ``(batch, answer)``, waiting up to ``timeout`` for one."""
        if not self._busy:
            return []
        done = []
        for key, _ in self._selector.select(timeout):
            done.append(self._finish(key.fd))
        if self._busy:
            now = time.monotonic()
            for fd in [fd for fd, x in self._busy.items() if now - x.started > self._timeout]:
                done.append(self._finish(fd, timed_out=True))
        return done

    def _forget(self, fd: int) -> _Exchange:
        ex = self._busy.pop(fd)
        self._selector.unregister(ex.conn.sock)
        return ex

    def _finish(self, fd: int, timed_out: bool = False) -> tuple[list[Prepared], Answer]:
        ex = self._forget(fd)
        if timed_out:
            ex.conn.close()
            answer = Answer(None, "", error=f"TimeoutError: no answer within "
                            f"{self._timeout:g}s ({self._client.base_url})",
                            latency=time.monotonic() - ex.started)
        else:
            answer, reusable = self._client.receive(ex.conn, ex.started)
            if reusable:
                self._idle.append((ex.conn, time.monotonic()))
        self._permits.release(answer.latency, answer.kind is Kind.RETRY)
        return ex.batch, answer

    def _connection(self) -> http.client.HTTPConnection:
        # A connection answered less than RECHECK_IDLE ago is reused without asking the
        # kernel: servers close keep-alive connections after seconds of idleness, and the
        # zero-timeout select() gave the GIL away on every request, stalling the bundle
        # thread behind the gRPC reader (a quarter of the collector's samples on Prism).
        # If one was closed anyway, the send fails and is retried like any connection error.
        while self._idle:
            conn, since = self._idle.pop()
            if time.monotonic() - since < RECHECK_IDLE or not dropped(conn):
                return conn
            conn.close()
        return self._client.new_connection()

    def close(self) -> None:
        """Abandon what is in flight (its batches were not acknowledged: never counted)."""
        for fd in list(self._busy):
            self._forget(fd).conn.close()
            self._permits.release(math.inf, False)  # no answer: frees the slot, teaches nothing
        for conn, _ in self._idle:
            conn.close()
        self._idle.clear()
        self._selector.close()
