"""Tests of the Flexprice stand-in (flexprice_mock)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import zlib

import pytest
import requests
from flexprice_mock import FaultConfig, MockFlexprice

KEY = "test-key"
H = {"x-api-key": KEY}
TS = "2024-06-01T12:00:00.123Z"


def ev(i: int | str = 0, **over: object) -> dict:
    e = {"event_id": f"ev-{i}", "event_name": "api.request", "external_customer_id": "cust_001",
         "timestamp": TS, "properties": {"value": 1}, "source": "test"}
    e.update(over)
    return e


def assert_error_shape(resp: requests.Response, status: int, code: str) -> dict:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) <= {"code", "message", "http_status_code", "details"}
    assert body["code"] == code
    assert body["http_status_code"] == status
    assert isinstance(body["message"], str) and body["message"]
    return body


@pytest.fixture(scope="module")
def server():
    with MockFlexprice(api_key=KEY) as m:
        yield m


@pytest.fixture
def fp(server):
    server.reset(catalog=True)
    server.set_api_key(KEY, "forbidden-key")
    return server


@pytest.fixture
def s():
    with requests.Session() as sess:
        sess.headers.update(H)
        yield sess


# ----------------------------------------------------------------------------- basics

def test_url_and_host_port(fp):
    assert fp.url == f"http://{fp.host_port}"
    assert fp.host_port.startswith("127.0.0.1:") and fp.port > 0


def test_auth_missing_wrong_forbidden(fp):
    url = fp.url + "/v1/events"
    r = requests.post(url, json=ev())
    assert r.status_code == 401 and r.json() == {"error": "Unauthorized"}
    r = requests.post(url, json=ev(), headers={"x-api-key": "nope"})
    assert r.status_code == 401 and r.json() == {"error": "Unauthorized"}
    r = requests.post(url, json=ev(), headers={"x-api-key": "forbidden-key"})
    assert r.status_code == 403 and r.text == '{"message":"insufficient permissions"}'
    assert fp.events() == [] and fp.received_count == 0


def test_unknown_route_is_404_without_auth(fp):
    r = requests.get(fp.url + "/v1/nope")
    assert r.status_code == 404 and r.text == "404 page not found"


def test_single_accept_with_and_without_id(fp, s):
    r = s.post(fp.url + "/v1/events", json=ev(1))
    assert r.status_code == 202
    assert r.json() == {"message": "Event accepted for processing", "event_id": "ev-1"}
    before = time.time()
    r = s.post(fp.url + "/v1/events", json={"event_name": "x", "external_customer_id": "c"})
    assert r.status_code == 202
    gen = r.json()["event_id"]
    assert gen.startswith("event_") and len(gen) == len("event_") + 26
    stored = {e["event_id"]: e for e in fp.events()}
    assert stored["ev-1"] == ev(1)
    # server stamps "now" when the timestamp is absent
    ts = stored[gen]["timestamp"]
    assert ts.endswith("Z") and abs(time.mktime(time.strptime(ts[:19], "%Y-%m-%dT%H:%M:%S"))
                                    - time.timezone - before) < 5
    assert fp.requests_log[-1] == ("POST", "/v1/events", 202, 1)


@pytest.mark.parametrize("event", [
    {"external_customer_id": "c"},
    {"event_name": "", "external_customer_id": "c"},
    {"event_name": "x", "external_customer_id": ""},
    {"event_name": "x", "external_customer_id": "c", "timestamp": "2024-06-01T12:00:00"},
    {"event_name": "x", "external_customer_id": "c", "timestamp": "2024-13-01T12:00:00Z"},
    {"event_name": "x", "external_customer_id": "c", "timestamp": 1717243200},
    {"event_name": "x", "external_customer_id": "c", "properties": "v=1"},
    {"event_name": 5, "external_customer_id": "c"},
])
def test_single_validation_errors(fp, s, event):
    # The server says only this, whatever is wrong (it logs the cause, it does not send it).
    r = s.post(fp.url + "/v1/events", json=event)
    body = assert_error_shape(r, 400, "validation_error")
    assert body == {"code": "validation_error", "message": "Invalid request payload",
                    "http_status_code": 400}
    assert fp.events() == []


def test_single_invalid_json(fp, s):
    r = s.post(fp.url + "/v1/events", data=b"{not json", headers={"content-type": "application/json"})
    assert assert_error_shape(r, 400, "validation_error")["message"] == "Invalid request payload"


def test_timestamp_forms_accepted(fp, s):
    for i, ts in enumerate(["2024-06-01T12:00:00Z", "2024-06-01T12:00:00.5+05:30",
                            "2024-06-01T12:00:00.123456789-01:00"]):
        assert s.post(fp.url + "/v1/events", json=ev(i, timestamp=ts)).status_code == 202


def test_nested_error_style():
    with MockFlexprice(error_style="nested") as m:  # servers before April 2026 (opt-in)
        r = requests.post(m.url + "/v1/events", json={}, headers=H)
        body = r.json()
        assert r.status_code == 400 and body["success"] is False
        assert body["error"]["code"] == "validation_error"


# ----------------------------------------------------------------------------- bulk

def test_bulk_accept(fp, s):
    r = s.post(fp.url + "/v1/events/bulk", json={"events": [ev(i) for i in range(500)]})
    assert r.status_code == 202
    assert r.json() == {"message": "Events accepted for processing"}
    assert len(fp.events()) == 500 and fp.received_count == 500
    assert fp.requests_log[-1] == ("POST", "/v1/events/bulk", 202, 500)


@pytest.mark.parametrize("payload, tag", [
    ({"events": []}, "min"),
    ({"events": [ev(i) for i in range(1001)]}, "max"),
    ({}, "required"),
])
def test_bulk_count_limits(fp, s, payload, tag):
    r = s.post(fp.url + "/v1/events/bulk", json=payload)
    body = assert_error_shape(r, 400, "validation_error")
    assert body["message"].startswith("Request validation failed")
    assert f"'{tag}' tag" in body["details"]["Events"]
    assert fp.events() == []


def test_bulk_1000_is_fine(fp, s):
    r = s.post(fp.url + "/v1/events/bulk", json={"events": [ev(i) for i in range(1000)]})
    assert r.status_code == 202


def test_bulk_body_over_32mib_is_400_and_connection_closes(fp, s):
    big = b'{"events":[]}' + b" " * (32 << 20)
    r = s.post(fp.url + "/v1/events/bulk", data=big, headers={"content-type": "application/json"})
    body = assert_error_shape(r, 400, "validation_error")
    assert "exceeds the maximum size" in body["message"]
    assert r.headers["Connection"] == "close"  # as net/http after MaxBytesReader tripped
    assert s.post(fp.url + "/v1/events", json=ev()).status_code == 202
    assert fp.stats()["connections_opened"] == 2  # the next request needed a new one


def test_bulk_invalid_event_partial_publish(fp, s):
    events = [ev(i) for i in range(6)]
    del events[3]["event_name"]
    r = s.post(fp.url + "/v1/events/bulk", json={"events": events})
    body = assert_error_shape(r, 400, "validation_error")
    assert body["message"] == "Request validation failed"  # no index: the client must bisect
    assert body["details"] == {"EventName": "Key: 'IngestEventRequest.EventName' Error:Field "
                                            "validation for 'EventName' failed on the 'required' tag"}
    # default server config publishes event by event: 0..2 are already in
    assert sorted(e["event_id"] for e in fp.events()) == ["ev-0", "ev-1", "ev-2"]


def test_bulk_invalid_event_no_partial_publish(fp, s):
    fp.set_faults(bulk_partial_publish=False)
    events = [ev(i) for i in range(6)]
    events[4]["external_customer_id"] = ""
    r = s.post(fp.url + "/v1/events/bulk", json={"events": events})
    body = assert_error_shape(r, 400, "validation_error")
    assert body["message"] == "Request validation failed" and set(body["details"]) == {"ExternalCustomerID"}
    assert fp.events() == []


def test_bulk_bind_error_stores_nothing(fp, s):
    events = [ev(i) for i in range(6)]
    events[3]["timestamp"] = "yesterday"
    r = s.post(fp.url + "/v1/events/bulk", json={"events": events})
    body = assert_error_shape(r, 400, "validation_error")
    assert body["message"] == "Invalid request payload" and "details" not in body
    assert fp.events() == []


def test_chunked_request_body(fp, s):
    import orjson

    payload = orjson.dumps({"events": [ev(i) for i in range(10)]})
    r = s.post(fp.url + "/v1/events/bulk", data=iter([payload[:100], payload[100:]]),
               headers={"content-type": "application/json"})
    assert r.status_code == 202 and len(fp.events()) == 10


# ----------------------------------------------------------------------------- dedup

def test_identical_repeat_is_a_duplicate(fp, s):
    for _ in range(3):
        assert s.post(fp.url + "/v1/events", json=ev(7)).status_code == 202
    assert len(fp.events()) == 1 and fp.received_count == 3
    dups = fp.duplicates()
    assert len(dups) == 2 and all(a == b for a, b in dups)
    assert fp.distinct_conflicts() == []
    st = fp.stats()
    assert st["duplicates"] == 2 and st["identical_duplicates"] == 2 and st["conflicting_duplicates"] == 0


def test_same_key_different_body_is_conflict_latest_wins(fp, s):
    s.post(fp.url + "/v1/events", json=ev(8, properties={"value": 1}))
    s.post(fp.url + "/v1/events", json=ev(8, properties={"value": 2}))
    assert [e["properties"] for e in fp.events()] == [{"value": 2}]  # ReplacingMergeTree
    assert len(fp.duplicates()) == 1
    (first, repeat), = fp.distinct_conflicts()
    assert first["properties"] == {"value": 1} and repeat["properties"] == {"value": 2}
    assert fp.stats()["conflicting_duplicates"] == 1


def test_same_id_other_timestamp_is_billed_twice(fp, s):
    s.post(fp.url + "/v1/events", json=ev(9, timestamp="2024-06-01T12:00:00Z"))
    s.post(fp.url + "/v1/events", json=ev(9, timestamp="2024-06-01T12:00:01Z"))
    assert len(fp.events()) == 2 and fp.duplicates() == []
    assert len(fp.distinct_conflicts()) == 1


def test_equal_instant_in_other_zone_is_same_key(fp, s):
    s.post(fp.url + "/v1/events", json=ev(10, timestamp="2024-06-01T12:00:00Z"))
    s.post(fp.url + "/v1/events", json=ev(10, timestamp="2024-06-01T13:00:00+01:00"))
    s.post(fp.url + "/v1/events", json=ev(10, timestamp="2024-06-01T12:00:00.0009Z"))  # ms precision
    assert len(fp.events()) == 1 and len(fp.duplicates()) == 2
    assert len(fp.distinct_conflicts()) == 2  # bodies differ textually


def test_missing_id_resend_is_billed_twice(fp, s):
    e = ev(0)
    del e["event_id"]
    s.post(fp.url + "/v1/events", json=e)
    s.post(fp.url + "/v1/events", json=e)
    assert len(fp.events()) == 2 and fp.duplicates() == []


# ----------------------------------------------------------------------------- read back

def _seed_readback(fp, s):
    events = [ev(i, external_customer_id=f"cust_00{i % 3}", event_name="a" if i % 2 else "b",
                 timestamp=f"2024-06-01T12:00:{i:02d}Z", properties={"region": "eu" if i < 5 else "us"})
              for i in range(10)]
    assert s.post(fp.url + "/v1/events/bulk", json={"events": events}).status_code == 202


def test_query_events_filters_and_pagination(fp, s):
    _seed_readback(fp, s)
    window = {"start_time": "2024-06-01T00:00:00Z", "end_time": "2024-06-02T00:00:00Z"}
    r = s.post(fp.url + "/v1/events/query", json={**window, "page_size": 4})
    body = r.json()
    assert r.status_code == 200
    assert [e["id"] for e in body["events"]] == ["ev-9", "ev-8", "ev-7", "ev-6"]  # timestamp desc
    assert body["has_more"] is True and body["total_count"] == 10 and body["offset"] == 4
    e = body["events"][0]
    assert set(e) == {"id", "external_customer_id", "customer_id", "event_name", "timestamp",
                      "properties", "source", "environment_id"}
    assert e["timestamp"] == "2024-06-01T12:00:09Z"
    r = s.post(fp.url + "/v1/events/query", json={**window, "page_size": 4, "offset": 8})
    assert [e["id"] for e in r.json()["events"]] == ["ev-1", "ev-0"] and r.json()["has_more"] is False
    r = s.post(fp.url + "/v1/events/query", json={**window, "external_customer_id": "cust_001",
                                                  "event_name": "a", "order": "asc"})
    assert [e["id"] for e in r.json()["events"]] == ["ev-1", "ev-7"]
    r = s.post(fp.url + "/v1/events/query", json={**window, "property_filters": {"region": ["us"]},
                                                  "start_time": "2024-06-01T12:00:06Z"})
    assert [e["id"] for e in r.json()["events"]] == ["ev-9", "ev-8", "ev-7", "ev-6"]
    r = s.post(fp.url + "/v1/events/query", json={**window, "event_id": "ev-3"})
    assert [e["id"] for e in r.json()["events"]] == ["ev-3"]


def test_query_events_cursor(fp, s):
    _seed_readback(fp, s)
    window = {"start_time": "2024-06-01T00:00:00Z", "end_time": "2024-06-02T00:00:00Z"}
    first = s.post(fp.url + "/v1/events/query", json={**window, "page_size": 3}).json()
    key = first["iter_last_key"]
    assert key.endswith("::ev-7")
    nxt = s.post(fp.url + "/v1/events/query", json={**window, "page_size": 3, "iter_last_key": key}).json()
    assert [e["id"] for e in nxt["events"]] == ["ev-6", "ev-5", "ev-4"] and nxt["has_more"] is True


def test_query_events_default_window_and_errors(fp, s):
    _seed_readback(fp, s)  # 2024 events: outside the default "last 7 days"
    assert s.post(fp.url + "/v1/events/query", json={}).json() == {"events": [], "has_more": False,
                                                                   "offset": 50}
    r = s.post(fp.url + "/v1/events/query", json={"sort": "id"})
    assert_error_shape(r, 400, "validation_error")
    r = s.post(fp.url + "/v1/events/query", json={"start_time": "2024-06-02T00:00:00Z",
                                                  "end_time": "2024-06-01T00:00:00Z"})
    assert_error_shape(r, 400, "validation_error")


def test_get_events(fp, s):
    _seed_readback(fp, s)
    params = {"start_time": "2024-06-01T00:00:00Z", "end_time": "2024-06-02T00:00:00Z",
              "external_customer_id": "cust_000", "page_size": 500}
    body = s.get(fp.url + "/v1/events", params=params).json()
    assert [e["id"] for e in body["events"]] == ["ev-9", "ev-6", "ev-3", "ev-0"]
    body = s.get(fp.url + "/v1/events", params={**params, "external_customer_id": "",
                                                "property_filters": "region:eu"}).json()
    assert len(body["events"]) == 5
    r = s.get(fp.url + "/v1/events", params={"start_time": "bad"})
    assert_error_shape(r, 400, "validation_error")


# ----------------------------------------------------------------------------- catalogue

def test_features_search(fp, s):
    fp.add_feature("API Requests", "api.request", "SUM", "value")
    fp.add_feature("Seats", "seat.count", "count")
    r = s.post(fp.url + "/v1/features/search", json={"expand": "meters"})
    body = r.json()
    assert r.status_code == 200
    assert body["pagination"] == {"total": 2, "limit": 50, "offset": 0}
    by_name = {f["name"]: f for f in body["items"]}
    m = by_name["API Requests"]["meter"]
    assert m["event_name"] == "api.request" and m["aggregation"] == {"type": "SUM", "field": "value"}
    assert by_name["Seats"]["meter"]["aggregation"] == {"type": "COUNT"}
    assert by_name["API Requests"]["meter_id"] == m["id"] and by_name["API Requests"]["type"] == "metered"
    # without expand the server leaves the meter out
    assert all("meter" not in f for f in s.post(fp.url + "/v1/features/search", json={}).json()["items"])
    r = s.post(fp.url + "/v1/features/search", json={"lookup_key": "seats", "limit": 1})
    assert [f["name"] for f in r.json()["items"]] == ["Seats"]
    assert_error_shape(s.post(fp.url + "/v1/features/search", json={"limit": 5000}), 400, "validation_error")


def test_customer_by_external_id(fp, s):
    fp.add_customer("cust_001", name="One")
    r = s.get(fp.url + "/v1/customers/external/cust_001")
    assert r.status_code == 200
    c = r.json()
    assert c["external_id"] == "cust_001" and c["name"] == "One" and c["id"].startswith("cust_")
    r = s.get(fp.url + "/v1/customers/external/who")
    body = assert_error_shape(r, 404, "not_found")
    assert body["details"] == {"lookup_key": "who"}


# ----------------------------------------------------------------------------- faults

def test_429_with_and_without_retry_after(fp, s):
    fp.set_faults(schedule=["429", "429_no_retry_after"], retry_after_s=3)
    r = s.post(fp.url + "/v1/events", json=ev())
    assert_error_shape(r, 429, "too_many_requests")
    assert r.headers["Retry-After"] == "3"
    r = s.post(fp.url + "/v1/events", json=ev())
    assert r.status_code == 429 and "Retry-After" not in r.headers
    assert s.post(fp.url + "/v1/events", json=ev()).status_code == 202  # schedule exhausted
    assert fp.stats()["faults_injected"] == {"429": 1, "429_no_retry_after": 1}
    assert len(fp.events()) == 1


def test_5xx_faults(fp, s):
    fp.set_faults(schedule=["500", "502", "503", "ok"])
    assert_error_shape(s.post(fp.url + "/v1/events", json=ev()), 500, "internal_error")
    r = s.post(fp.url + "/v1/events", json=ev())
    assert r.status_code == 502 and r.headers["Content-Type"].startswith("text/html")
    assert_error_shape(s.post(fp.url + "/v1/events", json=ev()), 503, "service_unavailable")
    assert s.post(fp.url + "/v1/events", json=ev()).status_code == 202
    assert fp.received_count == 1


def test_reset_drops_connection_and_stores_nothing(fp, s):
    fp.set_faults(schedule=["reset"])
    with pytest.raises(requests.ConnectionError):
        s.post(fp.url + "/v1/events/bulk", json={"events": [ev(1), ev(2)]})
    assert fp.events() == []
    assert fp.requests_log[-1] == ("POST", "/v1/events/bulk", 0, 2)
    assert s.post(fp.url + "/v1/events", json=ev()).status_code == 202  # a new connection works


def test_ack_lost_stores_then_drops(fp, s):
    fp.set_faults(schedule=["ack_lost"])
    with pytest.raises(requests.ConnectionError):
        s.post(fp.url + "/v1/events/bulk", json={"events": [ev(1), ev(2)]})
    assert sorted(e["event_id"] for e in fp.events()) == ["ev-1", "ev-2"]
    # the client's retry is a duplicate delivery, collapsed by (event_id, timestamp)
    assert s.post(fp.url + "/v1/events/bulk", json={"events": [ev(1), ev(2)]}).status_code == 202
    assert len(fp.events()) == 2 and fp.received_count == 4 and fp.distinct_conflicts() == []


def test_slow_and_latency(fp, s):
    fp.set_faults(schedule=["slow"], slow_ms=200)
    t = time.perf_counter()
    assert s.post(fp.url + "/v1/events", json=ev()).status_code == 202
    assert time.perf_counter() - t >= 0.19
    fp.set_faults(latency_ms=100)
    t = time.perf_counter()
    assert s.post(fp.url + "/v1/events", json=ev()).status_code == 202
    assert time.perf_counter() - t >= 0.095


def test_hang_times_out_client(fp, s):
    fp.set_faults(schedule=["hang"], hang_s=0.5)
    with pytest.raises(requests.exceptions.ReadTimeout):
        s.post(fp.url + "/v1/events", json=ev(), timeout=0.1)
    assert fp.events() == []


def _rejected(eid: str, n: int) -> bool:
    return zlib.crc32(eid.encode()) % n == 0


def test_reject_every_nth_is_deterministic_per_event(fp, s):
    fp.set_faults(reject_every_nth=5, bulk_partial_publish=False)
    events = [ev(i) for i in range(40)]
    bad = [i for i, e in enumerate(events) if _rejected(e["event_id"], 5)]
    assert bad and len(bad) < 40
    r = s.post(fp.url + "/v1/events/bulk", json={"events": events})
    body = assert_error_shape(r, 400, "validation_error")
    assert body["message"] == "Request validation failed" and "details" not in body
    for i, e in enumerate(events):  # resend singly: the same ones fail again
        r = s.post(fp.url + "/v1/events", json=e)
        assert r.status_code == (400 if i in bad else 202)
    assert len(fp.events()) == 40 - len(bad)
    good = [e for i, e in enumerate(events) if i not in bad]
    assert s.post(fp.url + "/v1/events/bulk", json={"events": good}).status_code == 202


def test_reject_event_ids(fp, s):
    fp.set_faults(reject_event_ids=["ev-2"])
    assert s.post(fp.url + "/v1/events", json=ev(2)).status_code == 400
    assert s.post(fp.url + "/v1/events", json=ev(3)).status_code == 202
    assert fp.stats()["rejected_events"] == 1


@pytest.mark.parametrize("status", [401, 403, 429, 503])
def test_fail_all_status(fp, s, status):
    fp.set_faults(fail_all_status=status)
    for path, body in (("/v1/events", ev()), ("/v1/events/query", {})):
        r = s.post(fp.url + path, json=body)
        assert r.status_code == status
    if status == 401:
        assert r.json() == {"error": "Unauthorized"}
    elif status == 403:  # the permission middleware's own body
        assert r.json() == {"message": "insufficient permissions"}
    else:
        assert r.json()["http_status_code"] == status
    if status == 429:
        assert r.headers["Retry-After"] == "1"
    assert fp.events() == []


def test_fail_all_recovers_after_duration(fp, s):
    fp.set_faults(fail_all_status=503, fail_all_duration_s=0.3)
    assert s.post(fp.url + "/v1/events", json=ev()).status_code == 503
    time.sleep(0.35)
    assert s.post(fp.url + "/v1/events", json=ev()).status_code == 202


def test_random_faults_are_seeded(fp):
    def statuses(m: MockFlexprice) -> list[int]:
        with requests.Session() as sess:
            return [sess.post(m.url + "/v1/events", json=ev(i), headers=H).status_code for i in range(40)]

    cfg = {"seed": 7, "rate_503": 0.3, "rate_500": 0.2}
    with MockFlexprice(faults=cfg) as a, MockFlexprice(faults=cfg) as b:
        sa, sb = statuses(a), statuses(b)
    assert sa == sb and {202, 500, 503} == set(sa)


def test_fault_rate_mix_and_schedule_cycle(fp, s):
    fp.set_faults(fault_rate=1.0, seed=1)
    seen = set()
    for i in range(60):
        try:
            seen.add(s.post(fp.url + "/v1/events", json=ev(i), timeout=2).status_code)
        except requests.ConnectionError:
            seen.add("dropped")
    assert 202 not in seen and {429, 500, 502, 503, "dropped"} <= seen
    fp.set_faults(schedule=["503", "ok"], schedule_cycle=True)
    assert [s.post(fp.url + "/v1/events", json=ev()).status_code for _ in range(4)] == [503, 202, 503, 202]


def test_faults_scope_ingest_only_by_default(fp, s):
    fp.set_faults(rate_503=1.0)
    assert s.post(fp.url + "/v1/events/query", json={}).status_code == 200
    fp.set_faults(rate_503=1.0, fault_scope="all")
    assert s.post(fp.url + "/v1/events/query", json={}).status_code == 503


def test_fault_config_validation():
    with pytest.raises(ValueError):
        FaultConfig.from_dict({"rate_500": 2})
    with pytest.raises(ValueError):
        FaultConfig.from_dict({"bogus": 1})
    with pytest.raises(ValueError):
        FaultConfig.from_dict({"schedule": ["explode"]})


# ----------------------------------------------------------------------------- control API

def test_control_api(fp, s):
    u = fp.url + "/_mock"
    r = requests.post(u + "/faults", json={"rate_503": 0.5, "seed": 3})
    assert r.status_code == 200 and r.json()["rate_503"] == 0.5
    r = requests.post(u + "/faults?merge=1", json={"latency_ms": 5})
    assert r.json()["rate_503"] == 0.5 and r.json()["latency_ms"] == 5
    assert requests.get(u + "/faults").json()["seed"] == 3
    assert requests.post(u + "/faults", json={"nope": 1}).status_code == 400
    assert requests.post(u + "/faults", json={}).json()["rate_503"] == 0  # replace = clear

    r = requests.post(u + "/customers", json={"external_id": "cust_042"})
    assert r.json()["customers"][0]["external_id"] == "cust_042"
    assert s.get(fp.url + "/v1/customers/external/cust_042").status_code == 200
    r = requests.post(u + "/features", json={"features": [
        {"name": "Tokens", "event_name": "llm.tokens", "aggregation_type": "SUM", "field": "tokens"}]})
    assert r.json()["features"][0]["meter"]["event_name"] == "llm.tokens"

    s.post(fp.url + "/v1/events", json=ev(1))
    s.post(fp.url + "/v1/events", json=ev(1))
    st = requests.get(u + "/stats").json()
    for k in ("requests_by_status", "events_stored", "deliveries", "duplicates",
              "conflicting_duplicates", "distinct_conflicts", "faults_injected"):
        assert k in st
    assert st["events_stored"] == 1 and st["deliveries"] == 2 and st["duplicates"] == 1
    assert st["requests_by_status"]["202"] == 2
    evs = requests.get(u + "/events").json()
    assert evs["count"] == 1 and evs["events"][0]["event_id"] == "ev-1"
    assert requests.get(u + "/duplicates").json()["count"] == 1
    assert requests.get(u + "/requests").json()["requests"][-1] == ["POST", "/v1/events", 202, 1]

    assert requests.post(u + "/api-key", json={"api_key": "k2"}).status_code == 200
    assert s.post(fp.url + "/v1/events", json=ev()).status_code == 401
    assert requests.post(fp.url + "/v1/events", json=ev(), headers={"x-api-key": "k2"}).status_code == 202

    assert requests.post(u + "/reset", json={}).status_code == 200
    st = requests.get(u + "/stats").json()
    assert st["events_stored"] == 0 and st["requests_total"] == 0
    assert s.get(fp.url + "/v1/customers/external/cust_042", headers={"x-api-key": "k2"}).status_code == 200
    assert requests.get(u + "/nothing").status_code == 404


def test_seed_defaults():
    with MockFlexprice(seed_defaults=True) as m:
        r = requests.post(m.url + "/v1/features/search", json={"expand": "meters"}, headers=H).json()
        assert {f["meter"]["event_name"] for f in r["items"]} == {"api.request", "storage.gb"}
        assert requests.get(m.url + "/v1/customers/external/cust_001", headers=H).status_code == 200


def test_fast_mode_accepts_and_dedups():
    with MockFlexprice(fast=True) as m, requests.Session() as sess:
        sess.headers.update(H)
        for _ in range(2):
            r = sess.post(m.url + "/v1/events/bulk", json={"events": [ev(i) for i in range(5)]})
            assert r.status_code == 202
        assert len(m.events()) == 5 and len(m.duplicates()) == 5
        assert sess.post(m.url + "/v1/events", json={"event_name": "x"}).status_code == 400


# ----------------------------------------------------------------------------- transport

def test_keep_alive_concurrency_and_no_nagle_stall(fp):
    errors: list = []

    def worker(w: int) -> None:
        try:
            with requests.Session() as sess:
                sess.headers.update(H)
                for i in range(50):
                    r = sess.post(fp.url + "/v1/events", json=ev(f"{w}-{i}"))
                    assert r.status_code == 202
        except Exception as e:
            errors.append(e)

    t = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(w,)) for w in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    elapsed = time.perf_counter() - t
    assert not errors
    assert len(fp.events()) == 400
    assert fp.stats()["connections_opened"] == 8  # one keep-alive connection per session
    # 50 sequential requests per connection: a 40 ms Nagle/delayed-ACK stall would take >= 2 s
    assert elapsed < 2.0, elapsed


def test_cli_runs_until_sigterm():
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "flexprice_mock", "--port", "0", "--api-key", "cli",
                             "--seed-defaults"], stdout=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stdout.readline().strip()
        assert line.startswith("Flexprice stand-in listening on http://127.0.0.1:")
        url = line.rsplit(" ", 1)[-1]
        r = requests.post(url + "/v1/events", json=ev(), headers={"x-api-key": "cli"})
        assert r.status_code == 202
        assert requests.get(url + "/_mock/stats").json()["events_stored"] == 1
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
