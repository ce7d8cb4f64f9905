"""``WriteDeadLetters``: JSON Lines files of everything that could not be delivered.

Each worker appends to its own file under ``output.dead_letter.path`` and fsyncs before a
bundle completes, so a dead letter is on disk before the runner considers its input done.
A write error (full disk, no permission) fails the bundle: the runner retries it or the
run fails, and the input is never silently lost.
"""

from __future__ import annotations

import base64
import logging
import os
import uuid
from pathlib import Path
from typing import Any

import apache_beam as beam
import orjson
from apache_beam.metrics import Metrics

log = logging.getLogger("flexprice_beam.dead_letter")


def _default(obj: Any) -> Any:
    if isinstance(obj, (bytes, bytearray)):
        return {"base64": base64.b64encode(obj).decode()}
    return repr(obj)


def encode_dead_letter(letter: dict[str, Any]) -> bytes:
    return orjson.dumps(letter, default=_default,
                        option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS) + b"\n"


class _WriteDeadLettersFn(beam.DoFn):
    def __init__(self, path: str):
        self._path = path
        self._counters: dict[tuple[str, Any], Any] = {}
        self._total = Metrics.counter("flexprice", "events_dead_lettered")

    def setup(self) -> None:
        Path(self._path).mkdir(parents=True, exist_ok=True)
        self._file_path = Path(self._path) / f"dead-letters-{uuid.uuid4().hex[:12]}.jsonl"
        self._file = None

    def process(self, letter: dict[str, Any]) -> None:
        if self._file is None:
            self._file = open(self._file_path, "ab")
            log.warning("Writing dead letters to %s", self._file_path)
        self._file.write(encode_dead_letter(letter))
        self._file.flush()
        self._total.inc()
        key = (letter.get("stage"), letter.get("status"))
        counter = self._counters.get(key)
        if counter is None:
            status = "none" if key[1] is None else key[1]
            counter = self._counters[key] = Metrics.counter(
                "flexprice", f"dead_lettered_{key[0]}_{status}")
        counter.inc()

    def finish_bundle(self) -> None:
        if self._file is not None:
            self._file.flush()
            os.fsync(self._file.fileno())

    def teardown(self) -> None:
        if self._file is not None:
            self._file.close()


class WriteDeadLetters(beam.PTransform):
    """PCollection[dead-letter dict] → files; returns nothing useful (a sink)."""

    def __init__(self, path: str):
        super().__init__()
        self._path = path

    def expand(self, pcoll):
        return pcoll | "AppendJsonLines" >> beam.ParDo(_WriteDeadLettersFn(self._path))
