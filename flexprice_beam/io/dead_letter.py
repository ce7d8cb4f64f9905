"""``WriteDeadLetters``: everything that could not be delivered, kept where it survives.

Letters go to JSON Lines files under ``output.dead_letter.path`` — any Beam FileSystems URL,
so ``s3://``/``gs://`` outlive the worker that wrote them — one file per bundle committed
atomically (``dead_letter_files``), and/or to a Kafka topic (``dead_letter_topic``).  A
bundle finishes only when its letters are durable in every target, so the runner never
acknowledges (Flink: never checkpoints, and so never commits the Kafka offsets of) an input
whose letter could still be lost.  A write error (full disk, no permission, the store or
broker down) fails the bundle: the runner retries it or the run fails, nothing is dropped.
A dry run prints its dead letters instead (``PrintDeadLetters``), leaving the real ones be.
"""

from __future__ import annotations

import base64
import json
import logging
import sys
import threading
from typing import Any

import apache_beam as beam
import orjson

from flexprice_beam.core import live
from flexprice_beam.core.config import DeadLetterOutput
from flexprice_beam.core.offsets import TRACKER as OFFSETS
from flexprice_beam.io.dead_letter_files import AtomicFile, join, new_name

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


class _CountingFn(beam.DoFn):
    """Counts each letter written, in total and by (stage, status)."""

    def __init__(self):
        self._counters: dict[tuple[str, Any], Any] = {}
        self._total = live.counter("events_dead_lettered")

    def _count(self, letter: dict[str, Any]) -> None:
        self._total.inc()
        key = (letter.get("stage"), letter.get("status"))
        counter = self._counters.get(key)
        if counter is None:
            status = "none" if key[1] is None else key[1]
            counter = self._counters[key] = live.counter(f"dead_lettered_{key[0]}_{status}")
        counter.inc()


class _WriteDeadLettersFn(_CountingFn):
    """Per bundle: one atomically committed file (if ``path``) and/or acknowledged sends to
    a topic (if ``kafka``); ``finish_bundle`` returns only once both hold every letter."""

    def __init__(self, cfg: DeadLetterOutput):
        super().__init__()
        self._path = cfg.path
        self._kafka = cfg.kafka

    def setup(self) -> None:
        self._producer = None
        if self._kafka is not None:
            from flexprice_beam.io.dead_letter_topic import DeadLetterProducer

            self._producer = DeadLetterProducer(self._kafka)

    def start_bundle(self) -> None:
        # A bundle that failed leaves its attempt behind: its file is dropped (it was never
        # visible) and its sends forgotten (copies the retried bundle sends again).
        if getattr(self, "_file", None) is not None:
            self._file.abort()
        if self._producer is not None:
            self._producer.forget()
        self._file: AtomicFile | None = None
        self._origins: list[Any] = []

    def process(self, letter: dict[str, Any]):
        data = encode_dead_letter(letter)
        if self._path:
            if self._file is None:
                self._file = AtomicFile(join(self._path, new_name()))
            self._file.write(data)
        if self._producer is not None:
            self._producer.send(letter, data)
        self._origins.append(letter.get("origin"))
        self._count(letter)
        yield letter  # its bundle commits only after finish_bundle made it durable

    def finish_bundle(self) -> None:
        if self._producer is not None:
            self._producer.commit()
        if self._file is not None:
            path = self._file.commit()
            self._file = None
            log.info("Dead letters: %d written to %s", len(self._origins), path)
        for origin in self._origins:  # only now may their Kafka offsets be committed (Prism)
            OFFSETS.done(origin)
        self._origins = []

    def teardown(self) -> None:
        if self._file is not None:
            self._file.abort()
        if self._producer is not None:
            self._producer.close()


class WriteDeadLetters(beam.PTransform):
    """PCollection[dead-letter dict] → files and/or a topic; returns the letters once they
    are durable (offsets may then be committed behind them)."""

    def __init__(self, cfg: DeadLetterOutput | str):
        super().__init__()
        self._cfg = DeadLetterOutput(path=cfg) if isinstance(cfg, str) else cfg

    def expand(self, pcoll):
        return pcoll | "AppendJsonLines" >> beam.ParDo(_WriteDeadLettersFn(self._cfg))


class _PrintDeadLettersFn(_CountingFn):
    """Dry run: the same lines and counters, to stderr (``-``) or one file, no lock."""

    def __init__(self, target: str):
        super().__init__()
        self._path = target

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
