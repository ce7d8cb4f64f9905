"""Find a secret anywhere in what a runner holds: raw bytes, base64 (standard and URL-safe),
zlib/gzip/bz2 streams at any offset (a pickled Python DoFn sits compressed inside a
protobuf), Snappy streams (a serialized Java DoFn: xerial's "\\x82SNAPPY" framing, read with
pyarrow's codec), and whatever those decode to, recursively (docs/reliability.md,
"Job-graph secrets")."""

from __future__ import annotations

import base64
import binascii
import bz2
import re
import zlib
from pathlib import Path

_B64 = re.compile(rb"[A-Za-z0-9+/_-]{16,}={0,2}")
_ZLIB_HEADS = (b"\x78\x01", b"\x78\x5e", b"\x78\x9c", b"\x78\xda")
_SNAPPY_MAGIC = b"\x82SNAPPY\x00"
MAX_DEPTH = 4


def _zlib_streams(blob: bytes):
    for head in _ZLIB_HEADS + (b"\x1f\x8b",):
        start = blob.find(head)
        while start != -1:
            wbits = 31 if head == b"\x1f\x8b" else 15
            try:
                out = zlib.decompressobj(wbits).decompress(blob[start:], 64 * 1024 * 1024)
                if out:
                    yield f"zlib@{start}", out
            except zlib.error:
                pass
            start = blob.find(head, start + 1)


def _bz2_streams(blob: bytes):
    start = blob.find(b"BZh")
    while start != -1:
        try:
            out = bz2.BZ2Decompressor().decompress(blob[start:])
            if out:
                yield f"bz2@{start}", out
        except (OSError, ValueError, EOFError):
            pass
        start = blob.find(b"BZh", start + 1)


def _varint(data: bytes) -> int:
    value = shift = 0
    for b in data[:5]:
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value
        shift += 7
    raise ValueError("bad varint")


def _snappy_streams(blob: bytes):
    import pyarrow

    codec = pyarrow.Codec("snappy")
    start = blob.find(_SNAPPY_MAGIC)
    while start != -1:
        pos, out = start + 16, []  # magic, version, compatible version
        try:
            while pos + 4 <= len(blob):
                size = int.from_bytes(blob[pos:pos + 4], "big")
                chunk = blob[pos + 4:pos + 4 + size]
                if size == 0 or len(chunk) < size:
                    break
                out.append(codec.decompress(chunk, decompressed_size=_varint(chunk), asbytes=True))
                pos += 4 + size
        except (ValueError, OSError, pyarrow.ArrowException):
            pass
        if out:
            yield f"snappy@{start}", b"".join(out)
        start = blob.find(_SNAPPY_MAGIC, start + 1)


def _base64_runs(blob: bytes):
    for m in _B64.finditer(blob):
        run = m.group(0)
        for name, dec in (("b64", base64.b64decode), ("b64url", base64.urlsafe_b64decode)):
            try:
                out = dec(run + b"=" * (-len(run) % 4))
            except (binascii.Error, ValueError):
                continue
            if out:
                yield f"{name}@{m.start()}", out


def find(blob: bytes, secrets: list[bytes], where: str = "", depth: int = 0) -> list[str]:
    """Every place (a path of decodings) at which one of ``secrets`` appears in ``blob``."""
    hits = [f"{where or 'raw'}: {s.decode()!r}" for s in secrets if s in blob]
    if depth >= MAX_DEPTH or hits:
        return hits
    for name, out in (*_zlib_streams(blob), *_bz2_streams(blob), *_snappy_streams(blob),
                      *_base64_runs(blob)):
        hits += find(out, secrets, f"{where}/{name}" if where else name, depth + 1)
    return hits


def find_in_files(root: Path, secrets: list[bytes], skip=lambda p: False,
                  since: dict[str, int] | None = None) -> list[str]:
    """``find`` over every regular file under ``root`` (jar members are read decompressed);
    ``since`` ({path: size}): of those files only what was appended after that size."""
    import io
    import zipfile

    hits = []
    for path in sorted(p for p in Path(root).rglob("*") if p.is_file()):
        try:  # a running job's checkpoints rotate: a file listed may be gone
            if skip(path):
                continue
            data = path.read_bytes()[(since or {}).get(str(path), 0):]
        except FileNotFoundError:
            continue
        hits += [f"{path}: {h}" for h in find(data, secrets)]
        if data[:2] == b"PK":
            try:
                with zipfile.ZipFile(io.BytesIO(data)) as z:
                    for info in z.infolist():
                        hits += [f"{path}!{info.filename}: {h}"
                                 for h in find(z.read(info), secrets)]
            except zipfile.BadZipFile:
                pass
    return hits


def sizes(root: Path) -> dict[str, int]:
    """{path: size} of the files under ``root`` now (for ``find_in_files(since=…)``)."""
    return {str(p): p.stat().st_size for p in Path(root).rglob("*") if p.is_file()}
