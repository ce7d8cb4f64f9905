"""A clean stop for local runs: SIGTERM or SIGINT (Ctrl-C) while ``flexprice-beam run`` goes on.

First signal — stop reading, lose nothing:

* the generator stops producing (``STOP.requested``), so the bundle can end;
* everything already read flows on: the sink flushes its buffer and waits for its in-flight
  batches; a batch still retrying gets ``grace`` seconds more, after that it is dead-lettered
  with the last error (``retry_allowed``) instead of being dropped;
* dead letters are written, the summary is printed, and the run exits ``128 + signum``
  (130 for SIGINT, 143 for SIGTERM) saying what was stopped and how to resume.

Second signal — exit at once (``os._exit``). What was in flight is not flushed, but it is
not lost either: the generator re-creates the same events (same ``event_id`` and timestamp
when ``start_time`` is set) on a re-run with the same config, and Flexprice deduplicates
what already arrived; Kafka input is re-read from the last committed offset.

Only in-process runners (FnApiRunner/DirectRunner, Prism in LOOPBACK) get these handlers:
there the DoFns run in this process and see ``STOP``. A launcher of a remote job keeps
Python's defaults. Kafka input cannot be stopped from Python (the reader is Java): there the
first signal exits at once, which loses nothing either (see ``handle_signals``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Iterator


class Shutdown:
    """Process-wide stop request, read by the generator and the deliverer."""

    def __init__(self) -> None:
        self.requested = threading.Event()
        self.reset()

    def reset(self) -> None:
        self.requested.clear()
        self.signal_name: str | None = None
        self.signum: int | None = None
        self.deadline: float | None = None
        #: the source skipped records it would otherwise have read
        self.cut_short = False
        #: what to set so that a re-run deduplicates (the generator's start_time)
        self.resume_hint: str | None = None
        #: False: the input cannot be stopped on request (Kafka), a signal interrupts the run
        self.graceful = True

    def request(self, signum: int, grace: float) -> None:
        self.signum = signum
        self.signal_name = signal.Signals(signum).name
        self.deadline = time.monotonic() + grace
        self.requested.set()

    def retry_allowed(self, next_delay: float) -> bool:
        """False once a stop was requested and waiting ``next_delay`` would pass the grace."""
        if not self.requested.is_set() or self.deadline is None:
            return True
        return time.monotonic() + next_delay <= self.deadline

    @property
    def exit_code(self) -> int:
        return 128 + (self.signum or signal.SIGTERM)


STOP = Shutdown()


@contextlib.contextmanager
def nullcontext() -> Iterator[None]:
    """No handlers (a remote runner's launcher): Python's default signal behaviour."""
    yield None


def quiet_rpc_errors() -> None:
    """From now on, a background thread that dies of a gRPC error prints nothing.

    Called when we stop a runner ourselves (a signal, the end of a run): the SDK worker's
    and the job's streams then all end with ``StatusCode.UNAVAILABLE``, which Python's
    default hook would print as one traceback per thread before our summary."""
    import grpc

    previous = threading.excepthook

    def hook(args) -> None:
        if not isinstance(args.exc_value, grpc.RpcError):
            previous(args)

    def not_rpc_error(record: logging.LogRecord) -> bool:  # Beam's worker logs them too
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, grpc.RpcError)

    threading.excepthook = hook
    for handler in logging.getLogger().handlers:
        handler.addFilter(not_rpc_error)


def _say(text: str) -> None:
    # Straight to fd 2: a signal handler must not take the logging locks.
    with contextlib.suppress(OSError):
        os.write(2, (text.rstrip("\n") + "\n").encode("utf-8", "replace"))


@contextlib.contextmanager
def handle_signals(grace: float = 30.0, graceful: bool = True) -> Iterator[Shutdown]:
    """Install the two-stage SIGTERM/SIGINT handlers for the duration of a run.

    ``graceful=False`` (Kafka input, whose Java reader cannot be asked to stop): the first
    signal exits at once. Offsets are committed only for records accepted or dead-lettered,
    so a restart reads the rest again and Flexprice deduplicates what had arrived.
    """
    STOP.reset()
    STOP.graceful = graceful
    if threading.current_thread() is not threading.main_thread():
        yield STOP
        return

    def handler(signum, _frame):
        name = signal.Signals(signum).name
        if STOP.requested.is_set():
            _say(f"Received {name} again: exiting now without flushing. Nothing is lost: "
                 "re-run with the same config (generator: same event ids and timestamps, "
                 "already-sent events are deduplicated; Kafka: uncommitted offsets are "
                 "read again).")
            os._exit(128 + signum)
        STOP.request(signum, grace)
        if not graceful:  # unwind (the runner stops Prism and its JVM), then exit
            quiet_rpc_errors()
            _say(f"Received {name}: exiting now. Kafka offsets are committed only for "
                 "delivered or dead-lettered records; a restart reads the rest again "
                 "(already-sent events are deduplicated).")
            raise KeyboardInterrupt
        _say(f"Received {name}: stopping the input and flushing in-flight batches (retries "
             f"get up to {grace:g}s more, then go to the dead letters). Send {name} again to "
             "exit immediately.")

    previous = {}
    for sig in (signal.SIGTERM, signal.SIGINT):
        previous[sig] = signal.signal(sig, handler)
    try:
        yield STOP
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
