"""``WriteDeadLetters``: JSON Lines files of everything that could not be delivered.

Each worker appends to its own file under ``output.dead_letter.path`` and fsyncs before a
bundle completes, so a dead letter is on disk before the runner considers its input done.
A write error (full disk, no permission) fails the bundle: the runner retries it or the
run fails, and the input is never silently lost.  The open file carries an exclusive
``flock`` so ``replay-dead-letters`` leaves a file alone while a pipeline still appends.
A dry run prints its dead letters instead (``PrintDeadLetters``), leaving the real ones be.
"""

from __future__ import annotations

import base64
import logging
import os
import sys
import threading
import uuid
from pathlib import Path
from typing import Any

import apache_beam as beam
import orjson

from flexprice_beam.ops import live

try:
    import fcntl
except ImportError:  # pragma: no cover - not on Windows
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger("flexprice_beam.dead_letter")
_print_lock = threading.Lock()  # dry-run letters from several threads share one stream


def _default(obj: Any) -> Any:
    if isinstance(obj, (bytes, bytearray)):
        return {"base64": base64.b64encode(obj).decode()}
    return repr(obj)


def encode_dead_letter(letter: dict[str, Any]) -> bytes:
    return orjson.dumps(letter, default=_default,
                        option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS) + b"\n"


def lock_file(f, blocking: bool = True) -> bool:
    """Exclusive advisory lock on an open file; False if another holder has it."""
    if fcntl is None:
        return True
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
    except BlockingIOError:
        return False
    return True


class _WriteDeadLettersFn(beam.DoFn):
    def __init__(self, path: str):
        self._path = path
        self._counters: dict[tuple[str, Any], Any] = {}
        self._total = live.counter("events_dead_lettered")

    def setup(self) -> None:
        Path(self._path).mkdir(parents=True, exist_ok=True)
        self._file_path = Path(self._path) / f"dead-letters-{uuid.uuid4().hex[:12]}.jsonl"
        self._file = None

    def _open(self):
        f = open(self._file_path, "ab")
        lock_file(f)
        log.warning("Writing dead letters to %s", self._file_path)
        return f

    def process(self, letter: dict[str, Any]) -> None:
        if self._file is None:
            self._file = self._open()
        self._file.write(encode_dead_letter(letter))
        self._file.flush()
        self._count(letter)

    def _count(self, letter: dict[str, Any]) -> None:
        self._total.inc()
        key = (letter.get("stage"), letter.get("status"))
        counter = self._counters.get(key)
        if counter is None:
            status = "none" if key[1] is None else key[1]
            counter = self._counters[key] = live.counter(f"dead_lettered_{key[0]}_{status}")
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


class _PrintDeadLettersFn(_WriteDeadLettersFn):
    """Dry run: the same lines and counters, to stderr (``-``) or one file, no lock."""

    def setup(self) -> None:
        self._file = None

    def _open(self):
        if self._path == "-":
            return sys.stderr.buffer
        return open(self._path, "ab")

    def process(self, letter: dict[str, Any]) -> None:
        if self._file is None:
            self._file = self._open()
        with _print_lock:
            self._file.write(encode_dead_letter(letter))
            self._file.flush()
        self._count(letter)

    def finish_bundle(self) -> None:
        if self._file is not None:
            self._file.flush()

    def teardown(self) -> None:
        if self._file is not None and self._path != "-":
            self._file.close()



class PrintDeadLetters(beam.PTransform):
    """Dry-run dead letters: JSON Lines to ``target`` (``-`` = stderr), counted as usual."""

    def __init__(self, target: str = "-"):
        super().__init__()
        self._target = target

    def expand(self, pcoll):
        return pcoll | "PrintJsonLines" >> beam.ParDo(_PrintDeadLettersFn(self._target))
