"""The sink's HTTP framing (io/http1.py): the request bytes are the ones http.client
sends, and answers are read as http.client reads them, however the server frames them."""

from __future__ import annotations

import http.client
import socket
import threading

import pytest

from flexprice_beam.io.http1 import framed, read_reply, request_head

HEADERS = {"x-api-key": "k", "Content-Type": "application/json", "Accept": "application/json",
           "User-Agent": "flexprice-beam", "X-Environment-ID": "env 100%"}


def _sent_by_http_client(host: str, port: int, headers: dict, body: bytes,
                         target: str = "/v1/events/bulk") -> bytes:
    """What ``HTTPConnection.request`` writes for this request, caught on a socket pair."""
    a, b = socket.socketpair()
    conn = http.client.HTTPConnection(host, port)
    conn.sock = a
    conn.request("POST", target, body=body, headers=headers)
    a.close()
    out = b""
    while chunk := b.recv(65536):
        out += chunk
    return out


@pytest.mark.parametrize("host,port,default", [("127.0.0.1", 8080, 80),
                                               ("api.cloud.flexprice.io", 443, 443),
                                               ("::1", 8080, 80)])
def test_the_request_is_byte_for_byte_what_http_client_sends(host, port, default):
    body = b'{"events":[{"event_id":"e1"}]}'
    head = request_head("POST", "/v1/events/bulk", host, port, HEADERS, default)
    theirs = _sent_by_http_client(host, port if port != default else None, HEADERS, body)
    assert framed(head, body) == theirs


def test_a_header_http_client_refuses_is_refused_the_same_way():
    bad = {**HEADERS, "X-Gateway-Token": "a\nb"}
    with pytest.raises(ValueError, match="Invalid header value") as ours:
        request_head("POST", "/v1/events", "h", 80, bad)
    with pytest.raises(ValueError) as theirs:
        _sent_by_http_client("h", 80, bad, b"{}")
    assert str(ours.value) == str(theirs.value)
    with pytest.raises(ValueError, match="Invalid header name"):
        request_head("POST", "/v1/events", "h", 80, {"Bad Name:": "v"})


def _answer_from(*parts: bytes, close: bool = True):
    """``read_reply`` on a socket fed ``parts`` one write at a time (then closed)."""
    a, b = socket.socketpair()
    a.settimeout(5)

    def feed():
        for part in parts:
            b.sendall(part)
        if close:
            b.close()

    t = threading.Thread(target=feed)
    t.start()
    try:
        return read_reply(a)
    finally:
        t.join()
        a.close()


def test_content_length_answer_split_across_reads_keeps_the_connection():
    r = _answer_from(b"HTTP/1.1 202 Accepted\r\nContent-Le", b"ngth: 44\r\n\r\n{\"message\":",
                     b"\"Events accepted for processing\"}", close=False)
    assert (r.status, r.body, r.retry_after, r.keep_alive) == (
        202, b'{"message":"Events accepted for processing"}', None, True)


def test_chunked_answer_with_retry_after_repeated():
    r = _answer_from(b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 2\r\nretry-after: 3\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n5\r\nslow \r\n", b"4\r\ndown\r\n0\r\n\r\n",
                     close=False)
    assert (r.status, r.body, r.retry_after, r.keep_alive) == (429, b"slow down", "2, 3", True)


def test_interim_answers_are_skipped():
    r = _answer_from(b"HTTP/1.1 100 Continue\r\n\r\n", b"HTTP/1.1 103 Early Hints\r\nLink: x\r\n\r\n"
                     b"HTTP/1.1 400 Bad Request\r\nContent-Length: 2\r\n\r\n{}", close=False)
    assert (r.status, r.body) == (400, b"{}")


def test_an_answer_without_length_ends_with_the_connection():
    r = _answer_from(b"HTTP/1.1 500 Internal Server Error\r\n\r\n", b"oops")
    assert (r.status, r.body, r.keep_alive) == (500, b"oops", False)


@pytest.mark.parametrize("head", [b"HTTP/1.1 202 Accepted\r\nConnection: close\r\n",
                                  b"HTTP/1.0 202 Accepted\r\n"])
def test_a_closing_answer_does_not_keep_the_connection(head):
    r = _answer_from(head + b"Content-Length: 2\r\n\r\n{}", close=False)
    assert (r.status, r.body, r.keep_alive) == (202, b"{}", False)


def test_broken_answers_raise_what_http_client_raises():
    with pytest.raises(http.client.RemoteDisconnected):
        _answer_from()
    with pytest.raises(http.client.IncompleteRead):
        _answer_from(b"HTTP/1.1 202 Accepted\r\nContent-Length: 10\r\n\r\n{}")
    with pytest.raises(http.client.IncompleteRead):
        _answer_from(b"HTTP/1.1 202 Acc")
    with pytest.raises(http.client.HTTPException, match="malformed"):
        _answer_from(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")
    with pytest.raises(TimeoutError):
        a, b = socket.socketpair()
        a.settimeout(0.1)
        read_reply(a)
