"""HTTP/1.1 exchanges on ``http.client`` connections, at the cost the sink's hot path can pay.

No Flexprice knowledge here (``flexprice/transport.py`` has that).  ``request_head`` lets
http.client format a request's head once (its checks, its byte order); ``framed`` sends each
request as one write; ``read_reply`` reads an answer with httptools (llhttp, Node.js's parser)
instead of http.client's ``getresponse()``, whose ``email.parser`` pass and buffered reader cost
~70 µs per request (docs/benchmarks.md, "HTTP framing").
"""

from __future__ import annotations

import base64
import http.client
import select
import socket
import urllib.request
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

import httptools

#: a request's head, split around its Content-Length value (``framed`` puts it in)
Head = tuple[bytes, bytes]


class _Recorder(http.client.HTTPConnection):
    """http.client formatting a request head, without a socket."""

    def send(self, data: bytes) -> None:
        self.sent = data


def request_head(method: str, target: str, host: str, port: int, headers: dict[str, str],
                 default_port: int = 80) -> Head:
    """``(before, after)`` the Content-Length value: http.client's bytes, in its order, and
    its ``ValueError`` for a header it refuses."""
    rec = _Recorder(host, port)
    rec.default_port = default_port  # no ":443" in Host for https
    names = {k.lower() for k in headers}
    rec.putrequest(method, target, skip_host="host" in names,
                   skip_accept_encoding="accept-encoding" in names)
    rec.putheader("Content-Length", "0")
    for name, value in headers.items():
        rec.putheader(name, value)
    rec.endheaders()
    before, after = rec.sent.split(b"Content-Length: 0\r\n", 1)
    return before + b"Content-Length: ", after


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


def dropped(conn: http.client.HTTPConnection) -> bool:
    """The peer closed an idle keep-alive connection (readable with nothing asked: EOF)."""
    sock = conn.sock
    if sock is None:
        return False
    try:
        return bool(select.select([sock], [], [], 0)[0])
    except (OSError, ValueError):
        return True


def proxy_for(scheme: str, host: str) -> tuple[str, int, dict[str, str]] | None:
    """``(host, port, headers)`` of the proxy the environment names for this URL, if any."""
    proxy = urllib.request.getproxies().get(scheme)
    if not proxy or urllib.request.proxy_bypass(host):
        return None
    p = urlsplit(proxy if "://" in proxy else "http://" + proxy)
    headers = {}
    if p.username:
        cred = f"{unquote(p.username)}:{unquote(p.password or '')}".encode()
        headers["Proxy-Authorization"] = "Basic " + base64.b64encode(cred).decode()
    return p.hostname or "", p.port or 8080, headers


def proxy_refused(exc: BaseException) -> bool:
    """The HTTPS proxy answered CONNECT with 407: wrong or missing proxy credentials."""
    return isinstance(exc, OSError) and str(exc).startswith("Tunnel connection failed: 407")
