"""The stand-in's capacity (flexprice_mock.capacity): served at once, queued in order, 429
beyond the queue; changed on a schedule or through ``POST /_mock/capacity``."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import pytest
import requests
from flexprice_mock import MockFlexprice
from flexprice_mock.capacity import Capacity, parse_schedule

KEY = "test-key"
TS = "2024-06-01T12:00:00.123Z"


def _bulk(i: int) -> dict:
    return {"events": [{"event_id": f"cap-{i}", "event_name": "api.request",
                        "external_customer_id": "c1", "timestamp": TS}]}


def _burst(m: MockFlexprice, n: int, first: int = 0) -> list[tuple[int, float]]:
    """``n`` bulk requests at once, each on its own connection: (status, seconds) each."""
    out: list = [None] * n
    go = threading.Barrier(n)

    def one(i: int) -> None:
        with requests.Session() as s:
            s.get(f"{m.url}/health")  # connect before the barrier
            go.wait()
            t0 = time.monotonic()
            r = s.post(f"{m.url}/v1/events/bulk", json=_bulk(first + i), headers={"x-api-key": KEY})
            out[i] = (r.status_code, time.monotonic() - t0)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return sorted(out, key=lambda x: x[1])


def test_serves_capacity_at_once_queues_the_next_and_refuses_the_rest():
    with MockFlexprice(api_key=KEY, latency_ms=200, capacity=Capacity(2, queue=2)) as m:
        got = _burst(m, 6)
        statuses = [s for s, _ in got]
        assert statuses.count(429) == 2 and statuses.count(202) == 4
        times = {s: [t for st, t in got if st == s] for s in (202, 429)}
        served = sorted(times[202])
        assert max(times[429]) < served[0]  # refused at once, before anything is served
        assert served[0] >= 0.19 and served[1] >= 0.19  # the first two: one latency
        assert served[2] >= 0.38 and served[3] >= 0.38  # the queued two: their turn, then one
        st = m.stats()
        assert st["events_stored"] == 4 and st["capacity"]["rejected_429"] == 2
        assert st["requests_by_status"] == {"202": 4, "429": 2}
        log = requests.get(f"{m.url}/_mock/capacity?log=1").json()["log"]
        assert sorted(s for _, _, s in log) == [202] * 4 + [429] * 2


def test_control_endpoint_changes_capacity_mid_run_and_back_to_unlimited():
    with MockFlexprice(api_key=KEY, latency_ms=150) as m:
        assert m.stats()["capacity"]["capacity"] is None and not m.capacity.limited
        r = requests.post(f"{m.url}/_mock/capacity", json={"capacity": 1, "queue": 0,
                                                           "retry_after_s": 2})
        assert r.status_code == 200 and r.json()["capacity"] == 1
        got = _burst(m, 3)
        assert [s for s, _ in got].count(202) == 1
        r429 = requests.post(f"{m.url}/v1/events/bulk", json=_bulk(99), headers={"x-api-key": KEY})
        assert r429.status_code == 202  # alone: served
        requests.post(f"{m.url}/_mock/capacity", json={"capacity": None})
        assert not m.capacity.limited
        assert [s for s, _ in _burst(m, 4, first=10)] == [202] * 4
        bad = requests.post(f"{m.url}/_mock/capacity", json={"capacity": 0})
        assert bad.status_code == 400 and "capacity must be" in bad.json()["error"]
        bad = requests.post(f"{m.url}/_mock/capacity", json={"capcity": 3})
        assert bad.status_code == 400 and "unknown capacity keys" in bad.json()["error"]


def test_over_capacity_429_carries_retry_after_when_configured():
    with MockFlexprice(api_key=KEY, latency_ms=300,
                       capacity=Capacity(1, queue=0, retry_after_s=1)) as m:
        got = []
        t = threading.Thread(target=lambda: got.append(requests.post(
            f"{m.url}/v1/events/bulk", json=_bulk(1), headers={"x-api-key": KEY})))
        t.start()
        time.sleep(0.1)
        r = requests.post(f"{m.url}/v1/events/bulk", json=_bulk(2), headers={"x-api-key": KEY})
        t.join()
        assert r.status_code == 429 and r.headers["Retry-After"] == "1"
        assert got[0].status_code == 202


def test_a_schedule_changes_capacity_counted_from_the_first_ingest_request():
    cap = Capacity(schedule=parse_schedule("0:1,0.4:3"), queue=0)
    with MockFlexprice(api_key=KEY, latency_ms=150, capacity=cap) as m:
        time.sleep(0.5)  # the clock has not started: no ingest request yet
        assert [s for s, _ in _burst(m, 3)].count(202) == 1
        time.sleep(0.4)
        assert [s for s, _ in _burst(m, 3, first=10)] == [202] * 3
        assert m.stats()["capacity"]["capacity"] == 3
        m.reset()  # back to the constructor's schedule
        assert m.stats()["capacity"]["capacity"] == 1 and m.stats()["capacity"]["schedule_left"]


def test_schedule_text_is_checked():
    assert parse_schedule("0:32, 10:4,20:32") == [(0.0, 32), (10.0, 4), (20.0, 32)]
    for bad in ("10", "0:0", "-1:4", "a:b"):
        with pytest.raises(ValueError):
            parse_schedule(bad)


def test_cli_flags_start_a_limited_stand_in():
    proc = subprocess.Popen([sys.executable, "-m", "flexprice_mock", "--port", "0", "--api-key",
                             KEY, "--latency-ms", "100", "--capacity", "1",
                             "--capacity-queue", "0", "--capacity-schedule", "0:1,30:8"],
                            stdout=subprocess.PIPE, text=True)
    try:
        url = proc.stdout.readline().strip().rsplit(" ", 1)[-1]
        state = requests.get(f"{url}/_mock/capacity").json()
        assert state["capacity"] == 1 and state["queue"] == 0
        assert state["schedule_left"] == [[0.0, 1], [30.0, 8]]  # its clock starts later
    finally:
        proc.terminate()
        proc.wait(10)
    bad = subprocess.run([sys.executable, "-m", "flexprice_mock", "--capacity-schedule", "x"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "capacity-schedule" in bad.stderr
