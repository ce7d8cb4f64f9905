"""One exchange's bytes: a request head built once per transport, answers parsed by httptools
(llhttp, Node.js's parser). ``http.client`` still opens the connections (TLS, proxy tunnels).

Why not ``request()``/``getresponse()``: per 500-event bulk request they cost ~70 µs more of
the bundle thread (every header checked and formatted again; an ``email.parser`` pass and a
new buffered reader per answer), ~2 % of the pipeline (docs/benchmarks.md, "HTTP framing").
"""

from __future__ import annotations

import http.client
import re
import socket
from dataclasses import dataclass

import httptools

_LEGAL_NAME = re.compile(rb"[^:\s][^:\r\n]*").fullmatch  # http.client's putheader rules
_ILLEGAL_VALUE = re.compile(rb"\n(?![ \t])|\r(?![ \t\n])").search


def host_header(host: str, port: int, default_port: int) -> str:
    """``Host`` as http.client writes it: IPv6 in brackets without its zone, no default port."""
    host = f"[{host.split('%', 1)[0]}]" if ":" in host else host
    return host if port == default_port else f"{host}:{port}"


#: a request's head, split around its Content-Length value (``framed`` puts it in)
Head = tuple[bytes, bytes]


def request_head(method: str, target: str, host: str, headers: dict[str, str]) -> Head:
    """``(before, after)`` the Content-Length value: the bytes http.client sends, in its order;
    a header it refuses raises its ``ValueError``. ``host`` as http.client names it."""
    names = {k.lower() for k in headers}
    lines = [f"{method} {target} HTTP/1.1".encode("ascii")]
    if "host" not in names:
        lines.append(b"Host: " + host.encode("ascii" if host.isascii() else "idna"))
    if "accept-encoding" not in names:
        lines.append(b"Accept-Encoding: identity")
    after = b""
    for name, value in headers.items():
        raw_name, raw_value = name.encode("ascii"), value.encode("latin-1")
        if not _LEGAL_NAME(raw_name):
            raise ValueError(f"Invalid header name {raw_name!r}")
        if _ILLEGAL_VALUE(raw_value):
            raise ValueError(f"Invalid header value {raw_value!r}")
        after += raw_name + b": " + raw_value + b"\r\n"
    return b"\r\n".join(lines) + b"\r\nContent-Length: ", after + b"\r\n"


def framed(head: Head, body: bytes) -> bytes:
    """A request as one write: one copy of ``body``, one syscall."""
    return b"".join((head[0], b"%d\r\n" % len(body), head[1], body))


@dataclass(slots=True)
class Reply:
    status: int
    body: bytes
    retry_after: str | None  # repeated headers joined with ", ", as http.client does
    keep_alive: bool


class _Parse:
    """httptools' callbacks for one answer; 1xx interim answers are skipped."""

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.on_message_begin()

    def on_message_begin(self) -> None:  # again after a 1xx: 100 Continue, 103 Early Hints
        self.retry_after: list[bytes] = []
        self.chunks: list[bytes] = []
        self.status = 0  # set once the headers are in
        self.done = self.keep_alive = self.sized = False

    def on_header(self, name: bytes, value: bytes) -> None:
        low = name.lower()
        if low == b"retry-after":
            self.retry_after.append(value)
        self.sized |= low in (b"content-length", b"transfer-encoding")  # else: ends at EOF

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        self.keep_alive = self.parser.should_keep_alive()

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)

    def on_message_complete(self) -> None:
        self.done = self.status >= 200


def read_reply(sock: socket.socket) -> Reply:
    """One answer from ``sock`` (its timeout bounds each read), or what http.client raises:
    ``RemoteDisconnected``, ``IncompleteRead``, ``HTTPException``, the socket's errors."""
    p, seen = _Parse(), False
    while not p.done:
        data = sock.recv(65536)
        if not data:
            if p.status and not p.sized:  # the body ends where the connection does
                p.done, p.keep_alive = True, False
                break
            if not seen:
                raise http.client.RemoteDisconnected("Remote end closed connection without "
                                                     "response")
            raise http.client.IncompleteRead(b"".join(p.chunks))
        seen = True
        try:
            p.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            raise http.client.HTTPException(f"malformed answer: {exc}") from None
    text = b", ".join(p.retry_after).decode("latin-1") if p.retry_after else None
    return Reply(p.status, b"".join(p.chunks), text, p.keep_alive)
