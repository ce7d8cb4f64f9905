"""Dead-letter files on any Beam FileSystems URL (local, ``s3://``, ``gs://``, ``hdfs://``).

Object stores cannot append and a bundle can be retried, so each bundle attempt that has
letters writes its own file: first under ``<path>/.tmp/``, then, once it is closed (and,
on a local disk, fsynced), renamed to ``<path>/<name>.jsonl`` — how Beam's own file sinks
commit.  A reader sees a whole file or none: a bundle that fails before the rename leaves
at most an unreferenced temporary file; one whose output is lost after it is retried and
writes a second file with the same letters (``replay-dead-letters`` sends each event once).
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from contextlib import suppress

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

SUFFIX = ".jsonl"
TEMP_DIR = ".tmp"


class DeadLetterWriteError(OSError):
    """A dead letter could not be made durable: the bundle fails and is retried (or the run
    fails), so its input is never acknowledged."""


def is_local(path: str) -> bool:
    return FileSystems.get_scheme(path) in (None, "file")


def join(base: str, *parts: str) -> str:
    return FileSystems.join(base.rstrip("/") if "://" in base else base, *parts)


def new_name() -> str:
    """Sortable by time, unique per bundle attempt."""
    return f"dead-letters-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-" \
           f"{uuid.uuid4().hex[:12]}{SUFFIX}"


def _fsync_dir(path: str) -> None:
    fd = os.open(os.path.dirname(os.path.abspath(path)) or ".", os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _error(target: str, exc: BaseException) -> DeadLetterWriteError:
    errno = getattr(exc, "errno", None)
    text = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return DeadLetterWriteError(errno, f"cannot write dead letters to {target}: {text}")


class AtomicFile:
    """One file written under a temporary name and renamed into place on ``commit``."""

    def __init__(self, final: str):
        self.final = final
        base, name = final.rsplit("/", 1) if "/" in final else (".", final)
        self.temp = join(base, TEMP_DIR, f"{name}.{uuid.uuid4().hex[:8]}")
        self._local = is_local(final)
        try:
            if self._local:
                os.makedirs(os.path.dirname(os.path.abspath(self.temp)), exist_ok=True)
            self._f = FileSystems.create(self.temp, mime_type="application/x-ndjson",
                                         compression_type=CompressionTypes.UNCOMPRESSED)
        except Exception as exc:
            raise _error(final, exc) from exc
        self.size = 0

    def write(self, data: bytes) -> None:
        try:
            self._f.write(data)
        except Exception as exc:
            self.abort()
            raise _error(self.final, exc) from exc
        self.size += len(data)

    def commit(self) -> str:
        """Close (an object store uploads here; a local disk is fsynced), then rename."""
        try:
            if self._local:
                self._f.flush()
                os.fsync(self._f.fileno())
            self._f.close()
            FileSystems.rename([self.temp], [self.final])
            if self._local:
                _fsync_dir(self.final)
        except Exception as exc:
            self.abort()
            raise _error(self.final, exc) from exc
        return self.final

    def abort(self) -> None:
        """Drop the temporary file (best effort: it is never read)."""
        with suppress(Exception):
            self._f.close()
        with suppress(Exception):
            FileSystems.delete([self.temp])


def write_atomically(final: str, lines: list[bytes]) -> None:
    """Replace ``final`` with ``lines`` in one step (or delete it when none are left)."""
    if not lines:
        FileSystems.delete([final])
        return
    f = AtomicFile(final)
    f.write(b"".join(line.rstrip(b"\n") + b"\n" for line in lines))
    f.commit()


def letter_files(path_or_glob: str) -> Iterator[str]:
    """Committed dead-letter files: ``path`` is a folder (its ``*.jsonl``) or a glob."""
    pattern = path_or_glob
    if not any(ch in pattern for ch in "*?["):
        pattern = join(pattern, f"*{SUFFIX}")
    try:
        matched = FileSystems.match([pattern])[0].metadata_list
    except Exception:  # noqa: BLE001 - Beam raises BeamIOError for "no such folder"
        return
    for meta in sorted(matched, key=lambda m: m.path):
        if f"/{TEMP_DIR}/" not in meta.path:
            yield meta.path


def read_file(path: str) -> bytes:
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        return f.read()
