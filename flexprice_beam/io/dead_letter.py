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
import json
import logging
import os
import sys
import threading
import uuid
from pathlib import Path
from typing import Any

import apache_beam as beam
import orjson

from flexprice_beam.io.offsets import TRACKER as OFFSETS
from flexprice_beam.ops import live

try:
    import fcntl
except ImportError:  # pragma: no cover - not on Windows
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger("flexprice_beam.dead_letter")
_print_lock = threading.Lock()  # dry-run letters from several threads share one stream


_OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS


def _default(obj: Any) -> Any:
    if isinstance(obj, (bytes, bytearray)):
        return {"base64": base64.b64encode(obj).decode()}
    return _safe_repr(obj)


def _safe_repr(obj: Any, limit: int = 1 << 20) -> str:
    try:
        text = repr(obj)
    except Exception as exc:  # noqa: BLE001 - RecursionError, a __repr__ that raises …
        return f"<{type(obj).__name__}: repr failed: {type(exc).__name__}>"
    text = text if len(text) <= limit else text[:limit] + "…"
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _as_text(value: Any) -> str:
    """Best-effort JSON text of a value orjson refuses (surrogates, ints beyond 64 bits,
    nesting deeper than 255, cycles): ASCII-escaped, else its repr."""
    try:
        return json.dumps(value, ensure_ascii=True, default=_safe_repr)
    except Exception:  # noqa: BLE001 - RecursionError, ValueError (cycle) …
        return _safe_repr(value)


def _encodable(letter: dict[str, Any], why: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in letter.items():
        key = key if isinstance(key, str) else _safe_repr(key)
        try:
            orjson.dumps({key: value}, default=_default, option=_OPTIONS)  # at its own depth
            out[key] = value
        except TypeError:
            if isinstance(value, str):
                out[key] = value.encode("utf-8", "backslashreplace").decode("utf-8")
            else:
                out[key] = {"unencodable": why, "text": _as_text(value)}
    return out


def encode_dead_letter(letter: dict[str, Any]) -> bytes:
    """One JSON line; never raises. A letter orjson cannot encode as is (a record nested
    deeper than 255 levels, a lone surrogate, a 100-bit integer — things Kafka JSON or a
    ``mapping_fn`` can produce) keeps every field that encodes and carries the others as
    ``{"unencodable": why, "text": …}``: one bad record must not fail the bundle and stop
    the pipeline (a poison pill), and its letter still says what and where it was."""
    try:
        return orjson.dumps(letter, default=_default, option=_OPTIONS) + b"\n"
    except TypeError as exc:  # orjson.JSONEncodeError is a TypeError
        why = str(exc)
    try:
        return orjson.dumps(_encodable(letter, why), default=_default, option=_OPTIONS) + b"\n"
    except TypeError as exc:  # pragma: no cover - _encodable leaves only encodable values
        return orjson.dumps({key: _as_text(letter.get(key)) for key in ("stage", "record_id")}
                            | {"reason": f"dead letter could not be encoded: {exc}"}) + b"\n"


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
        f = open(self._file_path, "ab", buffering=0)  # every letter reaches the OS at once
        lock_file(f)
        log.warning("Writing dead letters to %s", self._file_path)
        return f

    def process(self, letter: dict[str, Any]):
        if self._file is None:
            self._file = self._open()
        self._append(encode_dead_letter(letter))
        self._count(letter)
        OFFSETS.done(letter.get("origin"))
        yield letter  # written: only now may its Kafka offset be committed

    def _append(self, data: bytes) -> None:
        """Whole lines only: a write that fails (full disk, quota, file size limit) is cut
        back off and raised with the file's name, failing the bundle (no silent loss); a
        retried bundle then appends clean lines, not to half of one."""
        f = self._file
        start = os.lseek(f.fileno(), 0, os.SEEK_END)
        try:
            view = memoryview(data)
            while view:
                view = view[f.write(view):]
        except OSError as exc:
            try:
                os.ftruncate(f.fileno(), start)
            except OSError:
                pass
            raise OSError(exc.errno, f"cannot write dead letters to {self._file_path}: "
                                     f"{exc.strerror or exc}") from exc

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
            try:
                os.fsync(self._file.fileno())
            except OSError as exc:
                raise OSError(exc.errno, f"cannot write dead letters to {self._file_path}: "
                                         f"{exc.strerror or exc}") from exc

    def teardown(self) -> None:
        if self._file is not None:
            try:
                self._file.close()
            except OSError:
                pass


class WriteDeadLetters(beam.PTransform):
    """PCollection[dead-letter dict] → files; returns the letters once written."""

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
