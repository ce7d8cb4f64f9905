"""A sink that sends nothing: it writes the events a run would post (``run --dry-run``)."""

from __future__ import annotations

import sys
import threading

import apache_beam as beam

from flexprice_beam.core import live
from flexprice_beam.io.flexprice.sink import WriteResult

_stdout_lock = threading.Lock()


class _WriteEventsFn(beam.DoFn):
    def __init__(self, path: str):
        self._path = path
        self._would_send = live.counter("events_dry_run")

    def setup(self) -> None:
        self._out = sys.stdout.buffer if self._path == "-" else open(self._path, "ab")

    def process(self, items):
        data = b"".join(item.body + b"\n" for item in items)
        with _stdout_lock:
            self._out.write(data)
            self._out.flush()
        self._would_send.inc(len(items))

    def teardown(self) -> None:
        if self._out is not sys.stdout.buffer:
            self._out.close()


class DryRunSink(beam.PTransform):
    """PCollection[list[Prepared]] → JSON Lines of the event bodies, nothing sent; an empty
    ``WriteResult``."""

    def __init__(self, path: str = "-"):
        super().__init__()
        self._path = path

    def expand(self, pcoll):
        pcoll | "WriteWouldSend" >> beam.ParDo(_WriteEventsFn(self._path))
        return WriteResult()  # nothing delivered, nothing failed
