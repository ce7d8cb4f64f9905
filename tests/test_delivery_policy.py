"""The delivery policy on its own: every row of the seed's error table, as ``decide`` sees it."""

from __future__ import annotations

import random
import time

import pytest

from flexprice_beam.core.config import FlexpriceOutput
from flexprice_beam.io.flexprice.policy import (
    Action,
    Answer,
    FixedLimit,
    Kind,
    RetryPolicy,
    Throttle,
    decide,
    parse_retry_after,
    process_limit,
    process_throttle,
)

URL = "https://api.example.com"
RETRY = RetryPolicy(max_attempts=None, initial_backoff=0.2, max_backoff=30.0, max_elapsed=600.0)


def _decide(answer: Answer, attempt: int = 1, elapsed: float = 0.0, size: int = 10, **kw):
    return decide(answer, attempt=attempt, elapsed=elapsed, size=size,
                  retry=kw.pop("retry", RETRY), base_url=URL, rng=random.Random(3), **kw)


@pytest.mark.parametrize("status", [200, 201, 202, 204])
def test_2xx_is_accepted(status):
    assert _decide(Answer(status, "")).action is Action.ACCEPT


@pytest.mark.parametrize("status", [400, 404, 409, 413, 422])
def test_4xx_splits_a_batch_and_dead_letters_one_event(status):
    body = '{"code":"validation_error","message":"Request validation failed"}'
    assert _decide(Answer(status, body), size=2).action is Action.SPLIT
    one = _decide(Answer(status, body), size=1)
    assert one.action is Action.DEAD_LETTER and f"HTTP {status}" in one.reason
    assert "Request validation failed" in one.reason and not one.gave_up


def test_an_oversize_body_assumed_400_splits_too():
    """A body over the 32 MiB cap that broke without an answer is that 400: split it."""
    answer = Answer(400, "", error="BrokenPipeError: [Errno 32] Broken pipe",
                    note="the connection broke while sending a 40000000-byte body, over "
                         "Flexprice's 33554432-byte cap (an oversize 400)")
    assert _decide(answer, size=500).action is Action.SPLIT
    one = _decide(answer, size=1)
    assert one.action is Action.DEAD_LETTER and "assumed" in one.reason
    assert "over Flexprice's 33554432-byte cap" in one.reason


@pytest.mark.parametrize("status,body,env,advice", [
    (401, '{"error":"unauthorized"}', None, "check output.flexprice.api_key / FLEXPRICE_API_KEY"),
    (403, '{"error":"Invalid or inaccessible environment"}', None,
     "set output.flexprice.environment_id"),
    (403, '{"error":"Invalid or inaccessible environment"}', "env_typo",
     "environment 'env_typo' does not exist"),
    (403, '{"error":"forbidden"}', None, "the key lacks permission"),
])
def test_401_403_stop_with_advice(status, body, env, advice):
    d = decide(Answer(status, body), attempt=1, elapsed=0, size=10, retry=RETRY, base_url=URL,
               environment_id=env)
    assert d.action is Action.STOP
    assert d.reason.startswith("Flexprice refused the API key: HTTP") and advice in d.reason
    assert d.reason.endswith("stopping without retries")


def test_a_certificate_that_does_not_verify_stops():
    answer = Answer(None, "", error="SSLCertVerificationError: self-signed", fatal="certificate")
    d = _decide(answer)
    assert d.action is Action.STOP and f"TLS certificate of {URL} did not verify" in d.reason
    assert "REQUESTS_CA_BUNDLE" in d.reason and "skip_cert_verify" in d.reason


def test_a_proxy_refusing_our_credentials_stops():
    answer = Answer(None, "", error="OSError: Tunnel connection failed: 407 Proxy "
                    "Authentication Required", fatal="proxy")
    d = _decide(answer)
    assert d.action is Action.STOP and "the HTTPS proxy refused" in d.reason
    assert "HTTPS_PROXY" in d.reason and "407" in d.reason


@pytest.mark.parametrize("status,cause", [(408, "408"), (500, "500"), (502, "502"),
                                          (503, "503"), (504, "504")])
def test_408_and_5xx_retry_after_the_backoff(status, cause):
    d = _decide(Answer(status, "busy"), attempt=3)
    assert d.action is Action.RETRY and d.cause == cause and not d.defer_all
    assert 0.4 <= d.delay <= 0.8  # attempt 3: cap 0.8, jitter down to half


def test_429_retries_after_retry_after_seconds_and_defers_the_process():
    d = _decide(Answer(429, "slow down", retry_after=parse_retry_after("3")))
    assert d.action is Action.RETRY and d.delay == 3.0 and d.defer_all and d.cause == "429"


def test_429_with_an_http_date():
    later = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 5))
    d = _decide(Answer(429, "", retry_after=parse_retry_after(later)))
    assert d.action is Action.RETRY and 3.0 <= d.delay <= 5.0 and d.defer_all


def test_429_without_retry_after_uses_the_backoff():
    d = _decide(Answer(429, ""), attempt=1)
    assert d.action is Action.RETRY and 0.1 <= d.delay <= 0.2 and d.defer_all


@pytest.mark.parametrize("error", ["ConnectionRefusedError: [Errno 111] Connection refused",
                                   "TimeoutError: no answer within 2s (http://h)",
                                   "RemoteDisconnected: Remote end closed connection"])
def test_connection_errors_and_timeouts_retry(error):
    d = _decide(Answer(None, "", error=error))
    assert d.action is Action.RETRY and d.cause == "connection" and not d.defer_all


def test_the_time_budget_spent_dead_letters_with_the_last_error():
    d = _decide(Answer(503, "down"), attempt=40, elapsed=599.9)
    assert d.action is Action.DEAD_LETTER and d.gave_up
    assert d.reason == "gave up after 40 attempts: HTTP 503: down"
    assert _decide(Answer(503, "down"), attempt=40, elapsed=10).action is Action.RETRY


def test_the_opt_in_attempt_limit():
    retry = RetryPolicy(max_attempts=3, initial_backoff=0.01)
    assert _decide(Answer(None, "", error="x"), attempt=2, retry=retry).action is Action.RETRY
    d = _decide(Answer(None, "", error="x"), attempt=3, retry=retry)
    assert d.action is Action.DEAD_LETTER and "gave up after 3 attempts: no response: x" in d.reason


def test_a_shutdown_grace_ends_retrying():
    slow = Answer(429, "", retry_after=5.0)
    d = _decide(slow, stopping="SIGTERM", grace=1.0)
    assert d.action is Action.DEAD_LETTER and d.gave_up
    assert d.reason.endswith("(stopping on SIGTERM: shutdown grace over)")
    assert _decide(slow, stopping="SIGTERM", grace=10.0).action is Action.RETRY
    assert _decide(slow, stopping="SIGTERM", grace=None).action is Action.RETRY  # no deadline


def test_the_overloaded_signal_for_the_limiter():
    """The executor tells the limiter "overloaded" for the retryable kinds."""
    assert [Answer(s, "").kind is Kind.RETRY for s in (202, 400, 401, 408, 429, 500, None)] == \
        [False, False, False, True, True, True, True]


def test_fixed_limit_and_one_per_process_and_endpoint():
    limit = FixedLimit(2)
    assert limit.try_acquire() and limit.try_acquire() and not limit.try_acquire()
    limit.release(0.1, overloaded=False)
    assert limit.try_acquire() and limit.limit == 2
    a = FlexpriceOutput(api_host="a.example.com", api_key="k", max_in_flight=3)
    b = FlexpriceOutput(api_host="b.example.com", api_key="k", max_in_flight=3)
    assert process_limit(a) is process_limit(a.model_copy()) and process_limit(a) is not process_limit(b)
    assert process_limit(a).limit == 3
    assert process_throttle(a) is process_throttle(a.model_copy())
    assert process_throttle(a) is not process_throttle(b)


def test_throttle_remaining():
    t = Throttle()
    assert t.remaining() == 0.0
    t.defer(0.5)
    t.defer(0.1)  # never shortens
    assert 0.4 < t.remaining() <= 0.5
