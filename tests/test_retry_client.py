"""The error table's pieces: answer classification, Retry-After, backoff, throttle."""

import random
import time

import pytest
from pydantic import ValidationError

from flexprice_beam.core.config import FlexpriceOutput
from flexprice_beam.io.api import InsecureTransportError
from flexprice_beam.io.flexprice.policy import Answer, Kind, RetryPolicy, Throttle, parse_retry_after
from flexprice_beam.io.flexprice.transport import HttpTransport


@pytest.mark.parametrize("status,kind", [
    (202, Kind.ACCEPTED), (200, Kind.ACCEPTED), (400, Kind.REJECTED), (404, Kind.REJECTED),
    (413, Kind.REJECTED), (401, Kind.AUTH), (403, Kind.AUTH), (429, Kind.RETRY),
    (408, Kind.RETRY), (500, Kind.RETRY), (502, Kind.RETRY), (503, Kind.RETRY), (None, Kind.RETRY),
])
def test_error_table(status, kind):
    assert Answer(status, "").kind is kind


def test_retry_after_forms():
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    later = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 5))
    assert 3.0 <= parse_retry_after(later) <= 5.0


def test_backoff_grows_with_jitter_and_caps():
    policy = RetryPolicy(max_attempts=10, initial_backoff=0.2, max_backoff=2.0)
    rng = random.Random(1)
    for attempt, cap in [(1, 0.2), (2, 0.4), (3, 0.8), (6, 2.0), (9, 2.0)]:
        d = policy.delay(attempt, rng=rng)
        assert cap / 2 <= d <= cap
    assert policy.delay(1, retry_after=7.0) == 7.0  # Retry-After wins over the schedule


def test_gives_up_by_attempts_and_elapsed():
    policy = RetryPolicy(max_attempts=3, max_elapsed=1.0)
    now = time.monotonic()
    assert not policy.gives_up(1, now, 0.1)
    assert policy.gives_up(3, now, 0.1)
    assert policy.gives_up(1, now, 5.0)


def test_throttle_defers_everyone_and_stops():
    from flexprice_beam.io.flexprice.executor import deliver
    from flexprice_beam.io.flexprice.policy import FlexpriceAuthError
    from tests.test_delivery_executor import FakeTransport, _engine, _items

    t = Throttle()
    t.defer(0.2)
    fake = FakeTransport()
    engine = _engine(fake, throttle=t)  # waits in the executor, not in a sleeping thread
    began = time.monotonic()
    assert [o.accepted_count for o in deliver(engine, [_items(0, 2)])] == [2]
    assert fake.sent[0][0] - began >= 0.19
    engine.stopped.set()  # as after an auth failure
    engine.submit(_items(2, 2))
    with pytest.raises(FlexpriceAuthError):
        engine.poll(5)
    assert len(fake.sent) == 1


def _out(**kw):
    return FlexpriceOutput(api_host=kw.pop("api_host", "api.example.com"), api_key="k", **kw)


def test_plain_http_only_to_loopback_unless_allowed():
    assert HttpTransport(_out(api_host="127.0.0.1:8080", scheme="http")).base_url.startswith("http://")
    with pytest.raises(ValidationError, match="(?s)scheme.*plain http to api.example.com"):
        _out(scheme="http")  # refused when the config loads (docs/reliability.md)
    unchecked = FlexpriceOutput.model_construct(**{**_out().__dict__, "scheme": "http"})
    with pytest.raises(InsecureTransportError, match="refusing plain http"):
        HttpTransport(unchecked)  # and again by the client, whatever built the config
    HttpTransport(_out(scheme="http", allow_insecure=True))


def test_base_url_forms():
    assert _out().base_url == "https://api.example.com"
    assert _out(api_host="https://api.example.com/v1").base_url == "https://api.example.com"


def test_connection_refused_is_retryable():
    client = HttpTransport(_out(api_host="127.0.0.1:9", scheme="http", timeout="1s"))
    answer = client.post_bulk([b'{"a":1}'])
    assert answer.status is None and answer.kind is Kind.RETRY and "Connection" in answer.error
