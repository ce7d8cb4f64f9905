"""The sink's transport pieces: batch cutting, the http.client transport and the
non-blocking executor's first attempts, against the Flexprice stand-in."""

from __future__ import annotations

import base64
import time

from flexprice_mock.server import MockFlexprice
from hypothesis import given
from hypothesis import strategies as st

from flexprice_beam.core.config import FlexpriceOutput
from flexprice_beam.core.events import Record
from flexprice_beam.io.flexprice.executor import Executor
from flexprice_beam.io.flexprice.executor import Outcome as BatchOutcome
from flexprice_beam.io.flexprice.policy import FixedLimit, Kind, RetryPolicy, Throttle
from flexprice_beam.io.flexprice.sink import Delivered
from flexprice_beam.io.flexprice.transport import BULK_PATH, HttpTransport, bulk_body
from flexprice_beam.io.http1 import proxy_for as _proxy_for
from flexprice_beam.transforms.batches import BatchBuffer as _BatchBuffer
from flexprice_beam.transforms.validate import Prepared
from tests.support import API_KEY


def _item(i: int, size: int = 10, origin: dict | None = None) -> Prepared:
    body = (b'{"event_id":"e%d","event_name":"api.request","external_customer_id":"c1",'
            b'"timestamp":"2026-01-01T00:00:00Z","properties":{"pad":"%s"}}' % (i, b"x" * size))
    return Prepared(Record(f"r{i}", "2026-01-01T00:00:00Z", {}, origin or {}), {"event_id": f"e{i}"}, body)


def _batch(first: int, n: int) -> list[Prepared]:
    return [_item(i) for i in range(first, first + n)]


def _client(mock, **kw) -> HttpTransport:
    cfg = {"api_host": mock.host_port, "api_key": API_KEY, "scheme": "http", "timeout": "2s", **kw}
    return HttpTransport(FlexpriceOutput.model_validate(cfg))


def _poll_all(sender: Executor, n: int, limit: float = 10.0) -> list:
    """(batch, answer) of the first ``n`` finished batches (one request each here)."""
    got, deadline = [], time.monotonic() + limit
    while len(got) < n and time.monotonic() < deadline:
        got += sender.poll(0.05)
    return [(o.accepted[0] if o.accepted else [d.item for d in o.failed], o) for o in got]


def _sender(client: HttpTransport, limit: FixedLimit, **retry) -> Executor:
    return Executor(client, RetryPolicy(**retry), limit, Throttle())


def _try_send(sender: Executor, batch: list[Prepared]) -> bool:
    """Submit ``batch`` and start it: True if it went out, False if it waits for a permit."""
    sender.submit(batch)
    sender.poll(0.0)
    return sender.waiting == 0


# -- batch cutting ---------------------------------------------------------------------------

@given(sizes=st.lists(st.lists(st.integers(0, 3000), max_size=40), max_size=12),
       max_count=st.integers(1, 25), max_bytes=st.integers(1024, 20_000))
def test_extend_cuts_exactly_like_adding_one_by_one(sizes, max_count, max_bytes):
    """Whole lists at a time (the fast path) give the same batches as ``add`` per event."""
    one, many = _BatchBuffer(max_count, max_bytes), _BatchBuffer(max_count, max_bytes)
    n = 0
    by_one, by_list = [], []
    for group in sizes:
        items = [_item(n + k, s) for k, s in enumerate(group)]
        n += len(items)
        for it in items:
            by_one += one.add(it)
        by_list += many.extend(items)
    by_one.append(one.take())
    by_list.append(many.take())
    assert [[i.record.record_id for i in b] for b in by_list] == \
        [[i.record.record_id for i in b] for b in by_one]
    for b in by_list[:-1]:
        assert len(b) <= max_count
        assert len(b) == 1 or 13 + sum(len(i.body) + 1 for i in b) <= max_bytes


def test_delivered_carries_a_count_and_kafka_offsets_only():
    kafka = [_item(i, origin={"topic": "t", "partition": i % 2, "offset": 100 + i}) for i in range(6)]
    d = Delivered.of(BatchOutcome([kafka[:4], kafka[4:]], []))
    assert d.count == 6 and d.offsets == {("t", 0): 104, ("t", 1): 105}
    d = Delivered.of(BatchOutcome([_batch(0, 5)], []))
    assert d.count == 5 and d.offsets == {}


# -- the http.client transport ----------------------------------------------------------------

def test_proxy_from_the_environment(monkeypatch):
    for var in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY", "no_proxy", "NO_PROXY",
                "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    assert _proxy_for("https", "api.cloud.flexprice.io") is None
    monkeypatch.setenv("HTTPS_PROXY", "http://us%40r:p%3Ass@proxy.corp:3128")
    host, port, headers = _proxy_for("https", "api.cloud.flexprice.io")
    assert (host, port) == ("proxy.corp", 3128)
    assert base64.b64decode(headers["Proxy-Authorization"].split()[1]) == b"us@r:p:ss"
    monkeypatch.setenv("NO_PROXY", ".flexprice.io")
    assert _proxy_for("https", "api.cloud.flexprice.io") is None


def test_client_reuses_one_connection_and_replaces_one_the_server_closed():
    with MockFlexprice(api_key=API_KEY) as m:
        client = _client(m)
        for i in range(3):
            assert client.post_bulk([_item(i).body]).status == 202
        assert m.stats()["connections_opened"] == 1
        port = m.port
    # The server went away and came back: the idle pooled connection is dead (EOF).
    with MockFlexprice(api_key=API_KEY, port=port) as m2:
        answer = client.post_bulk([_item(9).body])
        assert answer.status == 202, answer.describe()
        assert m2.stats()["events_stored"] == 1


# -- first attempts from the executor ---------------------------------------------------------

def test_inline_sender_replaces_an_idle_connection_the_server_closed(monkeypatch):
    """Only a connection idle for RECHECK_IDLE is checked (the check gives the GIL away)."""
    from flexprice_beam.io.flexprice import transport as inline

    with MockFlexprice(api_key=API_KEY) as m:
        client = _client(m)
        ex = client.send(BULK_PATH, bulk_body([i.body for i in _batch(0, 5)]))
        assert [client.read(x).status for x in _ready_all(client, 1)] == [202] and ex.answer is None
        port = m.port
    with MockFlexprice(api_key=API_KEY, port=port) as m2:
        monkeypatch.setattr(inline, "RECHECK_IDLE", 0.0)  # as if idle for longer
        client.send(BULK_PATH, bulk_body([i.body for i in _batch(5, 5)]))
        assert [client.read(x).status for x in _ready_all(client, 1)] == [202]
        assert m2.stats()["events_stored"] == 5 and m2.stats()["connections_opened"] == 1
        client.close()


def _ready_all(client: HttpTransport, n: int, limit: float = 10.0) -> list:
    got, deadline = [], time.monotonic() + limit
    while len(got) < n and time.monotonic() < deadline:
        got += client.ready(0.05)
    return got


def test_inline_sender_keeps_to_its_permits_and_reads_answers_as_they_come(mock_api):
    mock_api.set_faults(latency_ms=300)  # no answer comes back while the three are sent
    permits = FixedLimit(2)
    sender = _sender(_client(mock_api), permits)
    try:
        assert _try_send(sender, _batch(0, 10)) is True
        assert _try_send(sender, _batch(10, 10)) is True
        assert _try_send(sender, _batch(20, 10)) is False  # both permits held: it queues
        done = _poll_all(sender, 2)
        assert sorted(len(b) for b, _ in done) == [10, 10]
        assert all(o.accepted_count == 10 and o.requests == 1 and not o.failed for _, o in done)
        assert len(_poll_all(sender, 1)) == 1  # the queued one, on a pooled connection
        assert sender.in_flight == 0 and permits.try_acquire() and permits.try_acquire()
        permits.release()
        permits.release()
        assert mock_api.stats()["events_stored"] == 30
        assert mock_api.stats()["connections_opened"] <= 2
    finally:
        sender.close()


def test_inline_sender_times_out_and_returns_the_permit(mock_api):
    mock_api.set_faults(latency_ms=1500)
    permits = FixedLimit(1)
    sender = _sender(_client(mock_api, timeout="300ms"), permits, max_attempts=1)
    try:
        assert _try_send(sender, _batch(0, 3)) is True
        (batch, outcome), = _poll_all(sender, 1)
        assert all(d.status is None and "no answer within" in d.reason for d in outcome.failed)
        assert len(batch) == 3 and sender.in_flight == 0
        assert permits.try_acquire()
    finally:
        sender.close()


def test_inline_send_to_a_closed_port_fails_at_once_without_holding_a_permit():
    cfg = FlexpriceOutput.model_validate({"api_host": "127.0.0.1:9", "api_key": "k", "scheme": "http",
                                          "timeout": "1s"})
    client = HttpTransport(cfg)
    ex = client.send(BULK_PATH, bulk_body([i.body for i in _batch(0, 2)]))
    assert ex.answer is not None, "known at once, without waiting for a socket"
    assert client.ready(0.0) == [ex]
    answer = client.read(ex)
    assert answer.kind is Kind.RETRY and "Connection" in answer.error
    permits = FixedLimit(1)
    sender = _sender(client, permits, max_attempts=1)
    sender.submit(_batch(0, 2))
    (outcome,) = [o for _ in range(3) for o in sender.poll(0.05)]
    assert outcome.failed and "Connection" in outcome.failed[0].reason
    assert permits.try_acquire() and sender.in_flight == 0
