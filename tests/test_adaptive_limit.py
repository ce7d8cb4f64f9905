"""``AdaptiveLimit`` (``max_in_flight: adaptive``) against a simulated API.

The simulation is an exact FIFO queue with ``capacity`` servers, each taking ``base`` seconds
per request; a request arriving when ``capacity + queue`` are already in the system is
answered 429 at once.  The client always has more to send (a backlog), so the limit alone
decides the concurrency.  Time is simulated: the limiter's clock is the simulation's.
"""

from __future__ import annotations

import heapq
import random
import threading

import pytest

from flexprice_beam.io.flexprice.policy import AdaptiveLimit


class SimulatedAPI:
    def __init__(self, capacity: int, base: float = 0.05, queue: int | None = None,
                 jitter: float = 0.002, seed: int = 1):
        self.capacity, self.base, self.queue = capacity, base, queue
        self.jitter = jitter
        self.rng = random.Random(seed)
        self.free = [0.0] * capacity  # when each server is next free
        self.finishing: list[float] = []  # finish times of accepted requests in the system

    def set_capacity(self, capacity: int, queue: int | None = None) -> None:
        self.queue = queue
        busy = sorted(self.free)
        self.free = (busy + [0.0] * capacity)[:capacity] if capacity > len(busy) else busy[-capacity:]
        self.capacity = capacity

    def send(self, now: float) -> tuple[float, bool]:
        """(finish time, overloaded) of a request arriving at ``now``."""
        while self.finishing and self.finishing[0] <= now:
            heapq.heappop(self.finishing)
        limit = self.capacity + (self.queue if self.queue is not None else 10**9)
        if len(self.finishing) >= limit:
            return now + 0.0005, True
        i = min(range(self.capacity), key=self.free.__getitem__)
        start = max(now, self.free[i])
        finish = start + self.base + self.rng.uniform(0, self.jitter)
        self.free[i] = finish
        heapq.heappush(self.finishing, finish)
        return finish, False


class Sim:
    def __init__(self, api: SimulatedAPI, cap: int = 64, initial: int | None = None):
        self.api = api
        self.now = 0.0
        self.limit = AdaptiveLimit(cap=cap, initial=initial, clock=lambda: self.now)
        self.pending: list[tuple[float, float, bool]] = []  # (finish, started, overloaded)
        self.trace: list[tuple[float, int, int]] = []  # (time, limit, in flight)
        self.done: list[tuple[float, float, bool]] = []  # (time, latency, overloaded)

    def run_until(self, end: float) -> None:
        while self.now < end:
            while self.limit.try_acquire():
                finish, over = self.api.send(self.now)
                heapq.heappush(self.pending, (finish, self.now, over))
                assert self.limit.in_flight <= self.limit.limit
            finish, started, over = heapq.heappop(self.pending)
            self.now = finish
            self.limit.release(finish - started, over)
            self.done.append((finish, finish - started, over))
            self.trace.append((self.now, self.limit.limit, self.limit.in_flight))

    def limits(self, t0: float, t1: float) -> list[int]:
        return [lim for t, lim, _ in self.trace if t0 <= t < t1]

    def overloads(self, t0: float, t1: float) -> int:
        return sum(1 for t, _, over in self.done if t0 <= t < t1 and over)

    def accepted(self, t0: float, t1: float) -> int:
        return sum(1 for t, _, over in self.done if t0 <= t < t1 and not over)

    def p99_latency(self, t0: float, t1: float) -> float:
        lat = sorted(x for t, x, over in self.done if t0 <= t < t1 and not over)
        return lat[int(len(lat) * 0.99)]


def test_climbs_to_the_cap_when_the_api_has_headroom():
    sim = Sim(SimulatedAPI(capacity=200), cap=48)
    sim.run_until(10)
    assert sim.limit.limit == 48
    assert max(lim for _, lim, _ in sim.trace) == 48
    assert sim.overloads(0, 10) == 0


def test_backs_off_on_429s_and_settles_near_capacity():
    sim = Sim(SimulatedAPI(capacity=4, queue=4), initial=32)
    sim.run_until(10)
    late = sim.limits(5, 10)
    assert max(late) <= 9 and min(late) >= 3
    # the first cuts happen within the first round trips; later 429s are rare probes
    assert sim.overloads(5, 10) < 0.05 * sim.accepted(5, 10)
    assert sim.accepted(5, 10) >= 0.85 * 4 / 0.05 * 5  # throughput close to capacity


def test_backs_off_on_rising_latency_without_any_429():
    sim = Sim(SimulatedAPI(capacity=8, queue=None))  # slow start overshoots, then backs off
    sim.run_until(10)
    assert sim.overloads(0, 10) == 0
    late = sim.limits(5, 10)
    # it settles where the RTT is ~1.5 × the no-load one: about 1.5 × capacity in flight
    assert max(late) <= 15 and sum(late) / len(late) <= 13
    assert sim.p99_latency(5, 10) < 0.05 * 2.5  # a fixed 64 would queue to 8 × base
    assert sim.accepted(5, 10) >= 0.95 * 8 / 0.05 * 5  # and the API stays busy


def test_recovers_after_capacity_comes_back():
    api = SimulatedAPI(capacity=32, queue=32)
    sim = Sim(api)
    sim.run_until(5)
    high = sim.limits(3, 5)
    assert sum(high) / len(high) >= 28
    api.set_capacity(4, queue=4)
    sim.run_until(10)
    low = sim.limits(7, 10)
    assert max(low) <= 9
    assert sim.overloads(5, 10) <= 20  # a fixed 32 would draw ~24 per round trip
    api.set_capacity(32, queue=32)
    sim.run_until(15)
    back = sim.limits(13, 15)
    assert sum(back) / len(back) >= 28
    assert sim.accepted(13, 15) >= 0.85 * 32 / 0.05 * 2


def test_never_below_one_and_one_request_still_goes_out():
    sim = Sim(SimulatedAPI(capacity=1, queue=0), initial=10)
    # every request but the one being served is refused
    sim.run_until(5)
    assert min(lim for _, lim, _ in sim.trace) == 1
    now = [0.0]
    lim = AdaptiveLimit(cap=8, initial=4, clock=lambda: now[0])
    for _ in range(20):
        assert lim.try_acquire()
        now[0] += 0.01
        lim.release(0.01, overloaded=True)
    assert lim.limit == 1
    assert lim.try_acquire() and not lim.try_acquire()


def test_answers_sent_before_a_cut_do_not_cut_again():
    now = [0.0]
    lim = AdaptiveLimit(cap=64, initial=32, clock=lambda: now[0])
    assert all(lim.try_acquire() for _ in range(32))
    now[0] = 1.0
    lim.release(0.5, overloaded=True)
    assert lim.limit == 16
    for _ in range(31):  # the rest of that flight comes back overloaded too
        lim.release(0.5, overloaded=True)
    assert lim.limit == 16
    assert lim.try_acquire()
    now[0] = 1.1
    lim.release(0.05, overloaded=True)  # sent after the cut: new evidence
    assert lim.limit == 8


def test_cap_and_initial_are_bounds():
    assert AdaptiveLimit(cap=64).limit == 4
    assert AdaptiveLimit(cap=2).limit == 2
    assert AdaptiveLimit(cap=64, initial=0).limit == 1
    with pytest.raises(ValueError):
        AdaptiveLimit(cap=0)


def test_try_acquire_never_lets_more_than_the_limit_in_across_threads():
    lim = AdaptiveLimit(cap=12, initial=6)
    state = {"in": 0, "max_over": 0}
    guard = threading.Lock()
    stop = threading.Event()
    rng = random.Random(3)

    def worker():
        while not stop.is_set():
            if not lim.try_acquire():
                continue
            with guard:
                state["in"] += 1
                state["max_over"] = max(state["max_over"], state["in"] - lim.cap)
                assert state["in"] <= lim.cap
            over = rng.random() < 0.05
            with guard:
                state["in"] -= 1
            lim.release(0.001 + rng.random() * 0.002, over)

    threads = [threading.Thread(target=worker) for _ in range(24)]
    for t in threads:
        t.start()
    stop.wait(1.0)
    stop.set()
    for t in threads:
        t.join()
    assert state["max_over"] <= 0
    assert lim.in_flight == 0
    assert 1 <= lim.limit <= 12


# ------------------------------------------------------------------ config: max_in_flight

CONFIG = """
input:
  generate: {count: 10}
output:
  flexprice:
    api_host: h
    api_key: k
"""


@pytest.mark.parametrize("text,value,cap", [("16", 16, 16), ("adaptive", "adaptive", 64),
                                            ("'8'", 8, 8)])
def test_max_in_flight_is_a_count_or_adaptive(text, value, cap):
    from flexprice_beam.core.config import load_config_text

    out = load_config_text(CONFIG + f"    max_in_flight: {text}\n").output.flexprice
    assert out.max_in_flight == value and out.in_flight_cap == cap


def test_adaptive_max_in_flight_sets_the_cap():
    from flexprice_beam.core.config import load_config_text

    out = load_config_text(CONFIG + "    max_in_flight: adaptive\n"
                           "    adaptive_max_in_flight: 24\n").output.flexprice
    assert out.in_flight_cap == 24


@pytest.mark.parametrize("text", ["fast", "0", "257", "2.5", "true", "Adaptive"])
def test_a_bad_max_in_flight_names_the_path(text):
    from flexprice_beam.core.config import ConfigError, load_config_text

    with pytest.raises(ConfigError) as err:
        load_config_text(CONFIG + f"    max_in_flight: {text}\n")
    msg = str(err.value)
    assert "output.flexprice.max_in_flight" in msg
    assert "from 1 to 256, or adaptive" in msg


# ------------------------------------------------------------ end to end through the sink

def test_adaptive_pipeline_backs_off_a_small_api_and_delivers_everything(mock_api, tmp_path):
    """``max_in_flight: adaptive`` on DirectRunner against a stand-in serving 2 requests at
    once (2 more queue, 429 beyond): every event arrives once, nothing is dead-lettered, the
    limit came down from its slow-start climb and ``/metrics`` shows it."""
    from flexprice_beam.launch.metrics_server import MetricsServer
    from flexprice_beam.launch.runner import run
    from tests.ops_helpers import get
    from tests.support import make_config, read_dead_letters

    mock_api.set_faults(latency_ms=30)
    mock_api.capacity.configure(2, queue=2)
    cfg = make_config(mock_api, tmp_path, count=6000, batch_size=100,
                      flexprice={"max_in_flight": "adaptive", "adaptive_max_in_flight": 32,
                                 "batching": {"count": 50}})
    seen: list[float] = []
    with MetricsServer("127.0.0.1:0") as server:
        done = threading.Event()

        def scrape():
            while not done.wait(0.05):
                text = get(server.url + "/metrics")[1]
                for line in text.splitlines():
                    if line.startswith("flexprice_concurrency_limit "):
                        seen.append(float(line.split()[1]))

        t = threading.Thread(target=scrape, daemon=True)
        t.start()
        try:
            summary = run(cfg, metrics=server)
        finally:
            done.set()
            t.join(5)
    assert summary.ok, summary.render()
    assert summary.accepted == 6000 and summary.dead_lettered == 0
    assert read_dead_letters(cfg) == []
    ids = [e["event_id"] for e in mock_api.events()]
    assert len(ids) == len(set(ids)) == 6000
    assert seen and max(seen) <= 32 and min(seen) >= 1
    # 4 in the server at most before 429s: the limit settles low, far from its cap
    assert seen[-1] <= 8, seen
    state = mock_api.stats()["capacity"]
    assert state["capacity"] == 2 and state["in_service"] == 0
