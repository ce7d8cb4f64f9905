"""The executor (and the sink around it) on a fake transport: no sockets, scripted answers."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import apache_beam as beam
import orjson
import pytest
from apache_beam.testing.util import assert_that, equal_to

from flexprice_beam.core.config import FlexpriceOutput
from flexprice_beam.core.events import Record
from flexprice_beam.io.flexprice.executor import Executor, deliver
from flexprice_beam.io.flexprice.policy import (
    Answer,
    FixedLimit,
    FlexpriceAuthError,
    Gate,
    RetryPolicy,
    Throttle,
)
from flexprice_beam.io.flexprice.sink import WriteToFlexprice
from flexprice_beam.io.flexprice.transport import BULK_PATH, SINGLE_PATH, Exchange, bulk_body
from flexprice_beam.transforms.validate import Prepared

Respond = Callable[[str, bytes], "Answer | tuple[Answer, float]"]


class FakeTransport:
    """Answers each request with ``respond(path, body)`` — an Answer, or (Answer, seconds
    until it is readable) — and records what was sent and how many were in flight."""

    base_url = "http://fake"
    environment_id = None

    def __init__(self, respond: Respond | None = None, shared: list | None = None):
        self.respond = respond or (lambda path, body: Answer(202, ""))
        self.shared = shared if shared is not None else [0, 0]  # in flight, peak: all fakes
        self.sent: list[tuple[float, str, bytes]] = []
        self.flying: list[tuple[float, Exchange]] = []
        self.peak = 0
        self.closed = False

    def send(self, path: str, body: bytes, tag=None) -> Exchange:
        now = time.monotonic()
        self.sent.append((now, path, body))
        got = self.respond(path, body)
        answer, after = got if isinstance(got, tuple) else (got, 0.0)
        answer.latency = after
        ex = Exchange(None, now, tag, answer)
        self.flying.append((now + after, ex))
        self.peak = max(self.peak, len(self.flying))
        self.shared[0] += 1
        self.shared[1] = max(self.shared[1], self.shared[0])
        return ex

    def ready(self, timeout: float) -> list[Exchange]:
        if not self.flying:
            return []
        first = min(due for due, _ in self.flying)
        time.sleep(max(0.0, min(first - time.monotonic(), timeout)))
        now = time.monotonic()
        done = [ex for due, ex in self.flying if due <= now]
        self.flying = [(due, ex) for due, ex in self.flying if due > now]
        self.shared[0] -= len(done)
        return done

    def read(self, ex: Exchange) -> Answer:
        return ex.answer

    def close(self) -> None:
        self.closed = True


def _item(i: int, bad: bool = False) -> Prepared:
    event = {"event_id": f"e{i}", "event_name": "api.request", "external_customer_id": "c1",
             "timestamp": "2026-01-01T00:00:00Z", "properties": {"bad": bad}}
    return Prepared(Record(f"r{i}", event["timestamp"], None, {}), event, orjson.dumps(event))


def _items(first: int, n: int) -> list[Prepared]:
    return [_item(i) for i in range(first, first + n)]


def _engine(fake: FakeTransport, limit: int = 4, throttle: Throttle | None = None,
            single: bool = False, **retry) -> Executor:
    retry = {"initial_backoff": 0.01, "max_backoff": 0.05, **retry}
    return Executor(fake, RetryPolicy(**retry), FixedLimit(limit), throttle or Throttle(),
                    single=single)


def _ids(batches) -> set[str]:
    return {i.event["event_id"] for b in batches for i in b}


def test_outcomes_come_back_as_answers_do_not_as_submitted():
    fake = FakeTransport(lambda path, body: (Answer(202, ""), 0.2 if b'"e0"' in body else 0.0))
    engine = _engine(fake)
    engine.submit(_items(0, 3))  # slow
    engine.submit(_items(3, 3))  # fast
    first = []
    while not first:
        first = engine.poll(0.05)
    assert _ids(first[0].accepted) == {"e3", "e4", "e5"} and engine.pending == 1
    rest = list(engine.drain())
    assert _ids(rest[0].accepted) == {"e0", "e1", "e2"} and engine.pending == 0


def test_retry_after_holds_back_every_executor_of_the_process():
    throttle = Throttle()
    calls = []

    def respond(path, body):
        calls.append(body)
        return Answer(429, "slow down", retry_after=0.3) if len(calls) == 1 else Answer(202, "")

    a, b = FakeTransport(respond), FakeTransport()
    ea, eb = _engine(a, throttle=throttle), _engine(b, throttle=throttle)
    began = time.monotonic()
    ea.submit(_items(0, 2))
    ea.poll(0.0)  # sent, 429 read: the whole process waits 0.3 s
    eb.submit(_items(2, 2))
    (out_b,) = list(eb.drain())
    (out_a,) = list(ea.drain())
    assert b.sent[0][0] - began >= 0.29, "the other executor waited for the Retry-After"
    assert a.sent[1][0] - a.sent[0][0] >= 0.29
    assert out_a.accepted_count == 2 and out_a.retries == {"429": 1} and out_a.throttled == 0.3
    assert out_b.accepted_count == 2 and out_b.retries == {}


def test_after_a_retry_after_one_probe_goes_first_and_the_rest_follow_its_answer():
    storm_until = time.monotonic() + 0.3
    answers = []

    def respond(path, body):
        limited = time.monotonic() < storm_until
        answers.append(limited)
        return Answer(429, "slow down", retry_after=0.05) if limited else Answer(202, "")

    fake = FakeTransport(respond)
    engine = _engine(fake, limit=8, max_attempts=100)
    for k in range(8):
        engine.submit(_items(k * 2, 2))
    outs = list(engine.drain())
    assert sum(o.accepted_count for o in outs) == 16 and not any(o.failed for o in outs)
    first_wave = 8  # all went out before the first 429 was read
    during = answers[first_wave:].count(True)
    # one probe per Retry-After of 0.05 s through the rest of the 0.3 s storm, not 8 each
    assert 1 <= during <= 7, answers
    assert answers[-8:] == [False] * 8, "once a probe was accepted, the rest went out"


def test_a_probe_that_is_dead_lettered_lets_the_next_request_probe():
    fake = FakeTransport(lambda path, body: Answer(429, "slow down", retry_after=0.05)
                         if b'"e0"' in body else Answer(202, ""))
    engine = _engine(fake, limit=4, max_attempts=2)
    engine.submit(_items(0, 1))
    engine.poll(0.0)  # its first 429: the process pauses 0.05 s
    engine.submit(_items(1, 1))
    began = time.monotonic()
    outs = list(engine.drain())
    assert [len(o.failed) for o in outs if o.failed] == [1], "e0 gave up on its second 429"
    assert sum(o.accepted_count for o in outs) == 1
    assert time.monotonic() - began < 1.0, "e1 did not wait for a probe that would never open"


def test_a_probe_gate_admits_one_and_opens_on_its_answer():
    t = Throttle(probe_timeout=0.2)
    assert t.admit() is Gate.OPEN
    t.defer(0.05)
    assert t.admit() is Gate.WAIT and t.remaining() > 0
    time.sleep(0.06)
    assert t.admit() is Gate.PROBE
    assert t.admit() is Gate.WAIT, "the others wait for the probe's answer"
    t.withdraw()  # it found no permit: another may probe
    assert t.admit() is Gate.PROBE
    time.sleep(0.21)
    assert t.admit() is Gate.PROBE, "an unanswered probe (its sender gone) times out"
    t.opened()
    assert t.admit() is Gate.OPEN and t.admit() is Gate.OPEN


def test_bisection_isolates_the_bad_events_with_byte_identical_resends():
    items = _items(0, 16)
    items[3], items[11] = _item(3, bad=True), _item(11, bad=True)
    fake = FakeTransport(lambda path, body: Answer(400, "bad") if b'"bad":true' in body
                         else Answer(202, ""))
    (out,) = deliver(_engine(fake), [items])
    assert {d.item.event["event_id"] for d in out.failed} == {"e3", "e11"}
    assert _ids(out.accepted) == {f"e{i}" for i in range(16)} - {"e3", "e11"}
    assert all(d.status == 400 and d.reason == "HTTP 400: bad" for d in out.failed)
    runs = {bulk_body([it.body for it in items[i:j]]) for i in range(16) for j in range(i + 1, 17)}
    assert all(path == BULK_PATH and body in runs for _, path, body in fake.sent)
    assert out.requests == len(fake.sent) and sorted(out.sizes, reverse=True)[0] == 16


def test_a_401_stops_everything():
    fake = FakeTransport(lambda path, body: Answer(401, '{"error":"unauthorized"}'))
    engine = _engine(fake, limit=1)
    engine.submit(_items(0, 2))
    engine.submit(_items(2, 2))
    with pytest.raises(FlexpriceAuthError, match="refused the API key.*stopping without retries"):
        list(engine.drain())
    assert engine.stopped.is_set() and len(fake.sent) == 1
    engine.submit(_items(4, 2))
    with pytest.raises(FlexpriceAuthError, match="refused the API key"):  # same words again
        engine.poll(0.01)
    assert len(fake.sent) == 1, "nothing more was sent"


def test_the_limit_is_never_exceeded_and_is_shared():
    shared = [0, 0]
    fakes = [FakeTransport(lambda path, body: (Answer(202, ""), 0.01), shared) for _ in range(2)]
    limit = FixedLimit(3)
    engines = [Executor(fake, RetryPolicy(), limit, Throttle()) for fake in fakes]
    for k in range(20):
        engines[k % 2].submit(_items(k * 5, 5))
    outs = []
    while any(e.pending for e in engines):
        for e in engines:
            outs += e.poll(0.005)
    assert shared[1] == 3 and len(outs) == 20
    assert sum(o.accepted_count for o in outs) == 100 and limit.try_acquire()


def test_drain_waits_for_every_batch_through_retries():
    failures = {"n": 0}

    def respond(path, body):
        failures["n"] += 1
        return Answer(503, "down") if failures["n"] <= 4 else Answer(202, "")

    fake = FakeTransport(respond)
    engine = _engine(fake, limit=2)
    for k in range(5):
        engine.submit(_items(k * 4, 4))
    outs = list(engine.drain())
    assert engine.pending == 0 and engine.in_flight == 0 and engine.waiting == 0
    assert len(outs) == 5 and sum(o.accepted_count for o in outs) == 20
    assert sum(o.retries.get("503", 0) for o in outs) == 4
    assert all(o.throttled > 0 for o in outs if o.retries)


def test_retry_budget_spent_dead_letters():
    fake = FakeTransport(lambda path, body: Answer(None, "", error="ConnectionRefusedError"))
    (out,) = deliver(_engine(fake, max_attempts=3), [_items(0, 3)])
    assert len(out.failed) == 3 and out.requests == 3
    assert out.failed[0].reason == "gave up after 3 attempts: no response: ConnectionRefusedError"


def test_single_mode_sends_one_event_per_request():
    fake = FakeTransport()
    (out,) = deliver(_engine(fake, single=True), [_items(0, 5)])
    assert out.accepted_count == 5 and out.requests == 5
    assert {path for _, path, _ in fake.sent} == {SINGLE_PATH}
    assert sorted(body for _, _, body in fake.sent) == sorted(i.body for i in _items(0, 5))


class _RejectOdd(FakeTransport):
    """For the sink through Beam: built on the worker from the config, like HttpTransport."""

    def __init__(self, cfg: FlexpriceOutput):
        super().__init__(lambda path, body: Answer(400, "no") if b'"bad":true' in body
                         else Answer(202, ""))


def test_the_sink_through_beam_on_a_fake_transport():
    cfg = FlexpriceOutput(api_host="127.0.0.1:9", api_key="k", scheme="http",
                          batching={"count": 4, "period": "50ms"})
    lists = [[_item(i, bad=i % 7 == 0) for i in range(k, k + 10)] for k in range(0, 50, 10)]
    with beam.Pipeline() as p:
        written = p | beam.Create(lists) | WriteToFlexprice(cfg, transport=_RejectOdd)
        counts = written.deliveries | beam.Map(lambda d: d.count) | beam.CombineGlobally(sum)
        failed = written.failed | beam.Map(lambda letter: letter["event"]["event_id"])
        assert_that(counts, equal_to([50 - 8]), label="accepted")
        assert_that(failed, equal_to([f"e{i}" for i in range(0, 50, 7)]), label="dead letters")


def test_the_aged_flush_sends_while_the_bundle_thread_is_away():
    """A bundle that never ends: the timer cuts the aged batch and sends it."""
    from flexprice_beam.io.flexprice.sink import _FlexpriceSinkFn

    cfg = FlexpriceOutput(api_host="127.0.0.1:9", api_key="k", scheme="http",
                          batching={"count": 100, "period": "100ms"})
    fakes: list[FakeTransport] = []
    fn = _FlexpriceSinkFn(cfg, transport=lambda c: fakes.append(FakeTransport()) or fakes[-1])
    fn.setup()
    try:
        fn.start_bundle()
        assert list(fn.process(_items(0, 3))) == []  # buffered: not full, not aged
        deadline = time.monotonic() + 5
        while not fakes[0].sent and time.monotonic() < deadline:
            time.sleep(0.02)
        assert fakes[0].sent and threading.active_count() >= 2
        out = list(fn.finish_bundle())  # counted on the bundle thread
        assert [o.value.count for o in out] == [3]
    finally:
        fn.teardown()
    assert fakes[0].closed


def test_while_a_retry_after_holds_the_process_the_sink_holds_two_batches_not_its_queue():
    """A 429 storm: the bundle waits once the probe's batch and one more are held, instead
    of packing ``2 × max_in_flight`` batches the API will not take yet (P4's RSS)."""
    from flexprice_beam.io.flexprice.sink import _FlexpriceSinkFn

    storm_until = time.monotonic() + 0.8

    def respond(path, body):
        if time.monotonic() < storm_until:
            return Answer(429, "slow down", retry_after=0.2)
        return Answer(202, "")

    cfg = FlexpriceOutput(api_host="127.0.0.2:1", api_key="k", scheme="http",
                          max_in_flight=4, batching={"count": 2, "period": "10s"},
                          retry={"initial_backoff": "10ms", "max_backoff": "50ms"})
    fn = _FlexpriceSinkFn(cfg, transport=lambda c: FakeTransport(respond))
    fn.setup()
    held_in_storm, accepted = [], 0
    try:
        fn.start_bundle()
        for k in range(0, 80, 2):
            for out in fn.process(_items(k, 2)):
                accepted += getattr(out, "count", 0)
            if time.monotonic() < storm_until:
                held_in_storm.append(fn._engine.pending)
        accepted += sum(o.value.count for o in fn.finish_bundle()
                        if not isinstance(o, beam.pvalue.TaggedOutput))
    finally:
        fn.teardown()
    assert held_in_storm and max(held_in_storm) <= 2, held_in_storm
    assert accepted == 80


def test_close_gives_the_permits_of_abandoned_requests_back():
    fake = FakeTransport(lambda path, body: (Answer(202, ""), 5.0))
    limit = FixedLimit(2)
    engine = Executor(fake, RetryPolicy(), limit, Throttle())
    engine.submit(_items(0, 2))
    engine.submit(_items(2, 2))
    engine.poll(0.0)
    assert engine.in_flight == 2 and not limit.try_acquire()
    engine.close()  # a failed bundle's teardown: never acknowledged, never counted
    assert fake.closed and limit.try_acquire() and limit.try_acquire()
