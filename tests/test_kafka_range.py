"""Bounded Kafka runs and backfills (io/kafka_range.py, ops/backfill.py) on the real broker.

Each range key, runs that end by themselves on uneven and empty partitions, and backfills
that re-send exactly a window with the ids a full drain gives, without moving the group.
"""

from __future__ import annotations

import collections
import time

import pytest

from flexprice_beam.core.config import ConfigError, load_config_text
from flexprice_beam.core.events import rfc3339_from_millis
from flexprice_beam.io.kafka_range import share
from flexprice_beam.io.send_events import main as send_events
from flexprice_beam.launch.runner import run
from tests.kafka_helpers import committed, good, new_topic
from tests.support import BROKER, cli, config_file, finish, kafka_input, make_config


def produce_to(topic: str, counts: dict[int, int], start: int = 0,
               pause_s: float = 0.0) -> list[tuple[int, int, int]]:
    """``counts[p]`` good records into partition ``p``; (partition, offset, ts_ms) each."""
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=BROKER, acks="all", linger_ms=5)
    try:
        futures = []
        i = start
        for partition, n in counts.items():
            for _ in range(n):
                futures.append(producer.send(topic, good(i), partition=partition))
                i += 1
            if pause_s:
                producer.flush(30)
                time.sleep(pause_s)
        producer.flush(30)
        metas = [f.get(30) for f in futures]
    finally:
        producer.close()
    return [(m.partition, m.offset, m.timestamp) for m in metas]


def ids(topic: str, metas) -> set[str]:
    return {f"kafka-{topic}-{p}-{o}" for p, o, _ in metas}


def stored(mock_api) -> dict[str, dict]:
    return {e["event_id"]: e for e in mock_api.events()}


def _drain(mock_api, tmp_path, topic, **extra):
    cfg = make_config(mock_api, tmp_path, input_=kafka_input(topic, **extra),
                      flexprice={"batching": {"count": 500}, "max_in_flight": 8})
    summary = run(cfg)
    assert summary.ok, summary.render()
    return summary


# ------------------------------------------------------------------ no broker needed


def test_share_splits_a_record_budget_over_uneven_partitions():
    assert share([10, 1000, 1000], 1000) == [10, 495, 495]
    assert share([0, 7, 3], 100) == [0, 7, 3]
    assert share([5, 5, 5], 7) == [2, 2, 3]
    assert sum(share([0, 0, 20_000], 20_000)) == 20_000


@pytest.mark.parametrize("extra, path", [
    ('start_offsets: {"ev/x": 1}', "input.kafka.start_offsets.ev/x"),
    ('stop_offsets: {"other/0": 2}', "input.kafka.stop_offsets.other/0"),
    ('stop_offsets: {"ev/0": -1}', "input.kafka.stop_offsets.ev/0"),
    ('start_offsets: {"ev/0": 9}\n    stop_offsets: {"ev/0": 3}', "input.kafka.stop_offsets.ev/0"),
    ('start_time: "2026-01-02T00:00:00Z"\n    stop_time: "2026-01-01T00:00:00Z"',
     "input.kafka.stop_time"),
    ('stop_time: "2026-01-01 00:00"', "input.kafka.stop_time"),
    ('start_time: "2026-01-01T00:00:00Z"', "input.kafka.start_time"),  # no end: streaming
])
def test_range_key_errors_name_the_field_path(extra, path):
    text = f"""
input:
  kafka:
    addresses: [127.0.0.1:19092]
    topics: [ev]
    {extra}
output:
  flexprice: {{api_host: 127.0.0.1:1, api_key: k, scheme: http}}
"""
    with pytest.raises(ConfigError) as err:
        load_config_text(text)
    assert f"  {path}: " in str(err.value), str(err.value)


def test_rfc3339_from_millis_keeps_the_datetime_strings():
    import datetime as dt
    import random

    from flexprice_beam.core.events import rfc3339

    rng = random.Random(3)
    for m in [0, 1, 999, 1_764_600_000_999, (1 << 32) * 1000 - 1, (1 << 32) * 1000,
              253_402_300_799_999] + [rng.randrange(0, 253_402_300_800_000) for _ in range(20_000)]:
        assert rfc3339_from_millis(m) == rfc3339(
            dt.datetime.fromtimestamp(m / 1000, tz=dt.timezone.utc)), m


# ------------------------------------------------------------------ the broker


@pytest.mark.kafka
def test_stop_at_end_drains_uneven_and_empty_partitions_then_ends(broker, mock_api, tmp_path):
    topic = new_topic(3)
    metas = produce_to(topic, {0: 14_000, 1: 6_000})  # partition 2 stays empty
    summary = _drain(mock_api, tmp_path, topic, stop_at_end=True)
    assert summary.read == 20_000 and summary.accepted == 20_000
    events = stored(mock_api)
    assert set(events) == ids(topic, metas)
    for p, o, ts in metas[::997]:
        assert events[f"kafka-{topic}-{p}-{o}"]["timestamp"] == rfc3339_from_millis(ts)
    assert committed(f"g-{topic}", topic) == {0: 14_000, 1: 6_000}
    # Nothing new: a second drain reads nothing and still ends.
    again = _drain(mock_api, tmp_path, topic, stop_at_end=True)
    assert again.read == 0


@pytest.mark.kafka
def test_max_records_with_max_read_time_ends_and_the_next_run_continues(broker, mock_api,
                                                                        tmp_path):
    # The stalled case: 20,000 records, 3 partitions, max_records + max_read_time.
    topic = new_topic(3)
    metas = produce_to(topic, {0: 9_000, 1: 7_000, 2: 4_000})
    began = time.monotonic()
    first = _drain(mock_api, tmp_path, topic, max_records=20_000, max_read_time="600s")
    assert time.monotonic() - began < 300
    assert first.read == 20_000 and set(stored(mock_api)) == ids(topic, metas)
    assert sum(committed(f"g-{topic}", topic).values()) == 20_000
    # A budget smaller than the backlog: exactly N, then the next run starts at the commit.
    more = produce_to(topic, {0: 10, 1: 3_000, 2: 3_000}, start=20_000)
    part = _drain(mock_api, tmp_path, topic, max_records=5_000)
    assert part.read == 5_000
    assert committed(f"g-{topic}", topic) == {0: 9_010, 1: 7_000 + 2_495, 2: 4_000 + 2_495}
    rest = _drain(mock_api, tmp_path, topic, max_records=5_000)
    assert rest.read == 1_010
    assert set(stored(mock_api)) == ids(topic, metas + more)
    assert mock_api.stats()["duplicates"] == 0, "the two runs' ranges do not overlap"


@pytest.mark.kafka
def test_max_read_time_cuts_the_read_and_a_rerun_reads_the_rest(broker, mock_api, tmp_path):
    topic = new_topic(3)
    metas = produce_to(topic, {0: 3_000, 1: 3_000, 2: 3_000})
    cut = _drain(mock_api, tmp_path, topic, stop_at_end=True, max_read_time="1ms")
    assert cut.read < 9_000, "the deadline passed before the range was read"
    assert sum(committed(f"g-{topic}", topic).values()) <= cut.read
    _drain(mock_api, tmp_path, topic, stop_at_end=True)
    assert set(stored(mock_api)) == ids(topic, metas)
    assert sum(committed(f"g-{topic}", topic).values()) == 9_000


@pytest.mark.kafka
def test_100k_records_on_3_partitions_end_by_themselves(broker, mock_api, tmp_path):
    topic = new_topic(3)
    assert send_events(["100000", "--malformed", "50", "--topic", topic, "--seed", "12",
                        "--brokers", BROKER]) == 0
    summary = _drain(mock_api, tmp_path, topic, stop_at_end=True)
    assert summary.read == 100_050
    assert summary.accepted == 100_000 and summary.dead_lettered == 50
    group = committed(f"g-{topic}", topic)
    assert len(group) == 3 and sum(group.values()) == 100_050
    assert len(stored(mock_api)) == 100_000


@pytest.mark.kafka
def test_start_and_stop_offsets_read_exactly_that_range(broker, mock_api, tmp_path):
    topic = new_topic(3)
    metas = produce_to(topic, {0: 100, 1: 100, 2: 100})
    summary = _drain(mock_api, tmp_path, topic, start_offsets={f"{topic}/0": 10, f"{topic}/1": 50},
                     stop_offsets={f"{topic}/0": 20, f"{topic}/2": 5})
    # 0: [10, 20); 1: [50, end); 2: [committed → none → oldest, 5)
    want = {(p, o) for p, o, _ in metas if (p == 0 and 10 <= o < 20) or (p == 1 and o >= 50)
            or (p == 2 and o < 5)}
    assert summary.read == len(want) == 65
    assert set(stored(mock_api)) == {f"kafka-{topic}-{p}-{o}" for p, o in want}
    assert committed(f"g-{topic}", topic) == {0: 20, 1: 100, 2: 5}


def _three_groups(topic: str):
    """Three groups of records 300 ms apart; returns (metas, t1, t2) with the window
    [t1, t2) = the middle group exactly (t1 its first record time, t2 the third's)."""
    a = produce_to(topic, {0: 40, 1: 40, 2: 40}, start=0)
    time.sleep(0.3)
    b = produce_to(topic, {0: 30, 1: 30, 2: 30}, start=1000)
    time.sleep(0.3)
    c = produce_to(topic, {0: 20, 1: 20, 2: 20}, start=2000)
    t1 = min(ts for _, _, ts in b)
    t2 = min(ts for _, _, ts in c)
    assert max(ts for _, _, ts in a) < t1 and max(ts for _, _, ts in b) < t2
    return a + b + c, t1, t2


@pytest.mark.kafka
def test_start_and_stop_time_are_a_half_open_window(broker, mock_api, tmp_path):
    topic = new_topic(3)
    metas, t1, t2 = _three_groups(topic)
    summary = _drain(mock_api, tmp_path, topic, start_time=rfc3339_from_millis(t1),
                     stop_time=rfc3339_from_millis(t2))
    inside = [m for m in metas if t1 <= m[2] < t2]
    assert len(inside) == 90 and summary.read == 90
    events = stored(mock_api)
    assert set(events) == ids(topic, inside)
    assert all(e["timestamp"] >= rfc3339_from_millis(t1) for e in events.values())
    # start_time alone (with an end) reads from t1 to the end.
    mock_api.reset()
    _drain(mock_api, tmp_path, topic, start_time=rfc3339_from_millis(t1), stop_at_end=True,
           consumer_group=f"other-{topic}")
    assert set(stored(mock_api)) == ids(topic, [m for m in metas if m[2] >= t1])


def _backfill(cfg_path, *args):
    code, out, err = finish(cli(["backfill", "-c", str(cfg_path), *args]), 300)
    assert code == 0, f"{code}\n{out[-2000:]}\n{err[-3000:]}"
    return out


@pytest.mark.kafka
def test_backfill_of_a_time_window_resends_exactly_it_with_the_drain_ids(broker, mock_api,
                                                                         tmp_path):
    topic = new_topic(3)
    metas, t1, t2 = _three_groups(topic)
    _drain(mock_api, tmp_path, topic, stop_at_end=True)
    full = stored(mock_api)
    group = committed(f"g-{topic}", topic)
    assert sum(group.values()) == len(metas)

    mock_api.reset()
    path = config_file(make_config(mock_api, tmp_path, input_=kafka_input(topic)), tmp_path / "b.yaml")
    out = _backfill(path, "--from", rfc3339_from_millis(t1), "--to", rfc3339_from_millis(t2))
    want = {i: e for i, e in full.items() if rfc3339_from_millis(t1) <= e["timestamp"]
            < rfc3339_from_millis(t2)}
    assert len(want) == 90
    assert stored(mock_api) == want, "the same events, byte for byte, as the full drain"
    assert "read:           90" in out and "accepted:       90" in out
    assert "reconciled:     yes" in out and "not moved" in out
    assert committed(f"g-{topic}", topic) == group, "the live group's offsets are unchanged"


@pytest.mark.kafka
def test_backfill_over_delivered_records_adds_nothing_and_commit_is_opt_in(broker, mock_api,
                                                                           tmp_path):
    topic = new_topic(3)
    metas = produce_to(topic, {0: 500, 1: 300, 2: 200})
    _drain(mock_api, tmp_path, topic, max_records=600)  # the live group is at 600 of 1000
    group = committed(f"g-{topic}", topic)
    before = mock_api.stats()
    pairs = {(e["event_id"], e["timestamp"]) for e in mock_api.events()}

    path = config_file(make_config(mock_api, tmp_path, input_=kafka_input(topic)), tmp_path / "b.yaml")
    out = _backfill(path, "--from-offsets", f"{topic}/0=0,{topic}/1=0,{topic}/2=0",
                    "--to-offsets", ",".join(f"{topic}/{p}={o}" for p, o in group.items()))
    assert "read:           600" in out
    after = mock_api.stats()
    assert {(e["event_id"], e["timestamp"]) for e in mock_api.events()} == pairs
    assert after["events_stored"] == before["events_stored"] == 600
    assert after["identical_duplicates"] == 600 and mock_api.distinct_conflicts() == []
    assert committed(f"g-{topic}", topic) == group

    # Offsets of one partition, then --commit: only then does the group move.
    out = _backfill(path, "--from-offsets", f"{topic}/1=0", "--commit")
    assert "read:           300" in out and "committed for" in out
    assert committed(f"g-{topic}", topic) == {**group, 1: 300}
    assert len(stored(mock_api)) == 600 + (300 - group[1])
    assert collections.Counter(p for p, _, _ in metas)[1] == 300


def test_claims_are_one_per_poll_and_a_racing_split_keeps_only_its_records():
    from types import SimpleNamespace

    from apache_beam.io.restriction_trackers import OffsetRange, OffsetRestrictionTracker

    from flexprice_beam.io.kafka_range import _claim

    def recs(a, b):
        return [SimpleNamespace(offset=o) for o in range(a, b)]

    t = OffsetRestrictionTracker(OffsetRange(0, 100))
    assert [m.offset for m in _claim(t, recs(0, 50))[0]] == list(range(50))
    got, ended = _claim(t, recs(50, 120))  # crosses the stop: only what is below it
    assert [m.offset for m in got] == list(range(50, 100)) and not ended
    assert _claim(t, recs(100, 110)) == ([], True)
    t.check_done()

    class Racing(OffsetRestrictionTracker):
        """A runner split lands between reading the stop and claiming."""

        def try_claim(self, position):
            self._range = OffsetRange(self._range.start, 30)
            return super().try_claim(position)

    r = Racing(OffsetRange(0, 100))
    got, ended = _claim(r, recs(0, 50))
    assert [m.offset for m in got] == list(range(30)) and ended
    r.check_done()


@pytest.mark.kafka
def test_backfill_after_the_streaming_java_read_resends_identical_events(broker, expansion,
                                                                         mock_api, tmp_path):
    """The live read (Java KafkaIO on Prism) and the bounded reader give the same bytes."""
    import os
    import signal

    from tests.support import wait_until

    topic = new_topic(3)
    metas = produce_to(topic, {0: 40, 1: 35, 2: 25})
    path = config_file(make_config(mock_api, tmp_path, input_=kafka_input(topic)), tmp_path / "s.yaml")
    live = cli(["run", "-c", str(path), "--no-metrics", "--progress", "off"])
    try:
        wait_until(lambda: len(mock_api.events()) >= 100, 240, what="the streaming read")
    finally:
        os.killpg(live.pid, signal.SIGTERM)
        finish(live, 60)
    streamed = stored(mock_api)
    assert set(streamed) == ids(topic, metas)
    out = _backfill(path, "--from", "1970-01-01T00:00:00Z")
    assert "read:           100" in out
    stats = mock_api.stats()
    assert stats["events_stored"] == 100 and stats["identical_duplicates"] == 100
    assert mock_api.distinct_conflicts() == [] and stored(mock_api) == streamed


@pytest.mark.kafka
def test_records_filtered_out_at_the_end_are_committed_too(broker, mock_api, tmp_path):
    import orjson

    from tests.kafka_helpers import produce

    topic = new_topic(1)
    produce(topic, [orjson.dumps({"type": "api", "user": "c1", "n": i}) for i in range(10)]
            + [orjson.dumps({"skip": True}) for _ in range(5)])
    cfg = make_config(mock_api, tmp_path, input_=kafka_input(topic, stop_at_end=True),
                      pipeline={"mapping_fn": "tests.mapping_fns:to_event"})
    summary = run(cfg)
    assert summary.ok, summary.render()
    assert (summary.read, summary.accepted, summary.filtered) == (15, 10, 5)
    assert committed(f"g-{topic}", topic) == {0: 15}, "the filtered tail is not re-read"
