"""The in-process offset tracker (core/offsets.py) on its own: what Prism commits.

The rule under test: per partition, the committed offset is never ahead of the lowest
offset read but not yet done (accepted, dead-lettered or filtered), whatever the order in
which records finish, and however many threads report at once.
"""

from __future__ import annotations

import random
import threading

import pytest

from flexprice_beam.core.offsets import OffsetTracker, kafka_position

A, B = ("usage", 0), ("usage", 1)


def origin(key, offset):
    return {"topic": key[0], "partition": key[1], "offset": offset, "key": None}


def tracker() -> OffsetTracker:
    t = OffsetTracker()
    t.enabled = True  # what start_committer turns on, without its thread
    return t


def read(t: OffsetTracker, key, *offsets):
    t.read_many([origin(key, o) for o in offsets])


def done(t: OffsetTracker, key, *offsets):
    for o in offsets:
        t.done(origin(key, o))


class Commits:
    """A commit function that records what it was asked to commit."""

    def __init__(self, fail: int = 0):
        self.calls: list[dict] = []
        self.fail = fail

    def __call__(self, offsets):
        if self.fail:
            self.fail -= 1
            raise ConnectionError("broker away")
        self.calls.append(dict(offsets))


def test_kafka_position_only_for_kafka_records():
    assert kafka_position(origin(A, 7)) == (A, 7)
    assert kafka_position(None) is None
    assert kafka_position({}) is None
    assert kafka_position({"generator": "gen-7-1"}) is None


def test_nothing_read_nothing_committable():
    assert tracker().committable() == {}


#: name: (offsets read on one partition, [(offsets then done, the commit expected after)])
SCENARIOS = {
    "in order: one past the last": ([0, 1, 2], [((), 0), ((0, 1, 2), 3)]),
    "out of order: waits for the lowest": (
        list(range(10)), [((9, 8, 5, 3, 1), 0), ((0,), 2), ((2, 4), 6), ((6, 7), 10)]),
    # compacted topics and transaction markers leave offsets that are never read
    "gaps are skipped": ([3, 7, 20], [((3,), 7), ((20,), 7), ((7,), 21)]),
    # mapping.py marks a filtered record done, dead_letter.py a dead letter once written,
    # sink.py an accepted event: the tracker sees the same ``done`` for each
    "filtered (1) and dead-lettered (3) count as done": (
        [0, 1, 2, 3], [((1, 3), 0), ((0, 2), 4)]),
    # 1 failed delivery: until its dead letter is written, it holds the commit
    "a dead letter not yet written holds the commit": ([0, 1, 2], [((0, 2), 1)]),
}


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_one_partition(name):
    offsets, steps = SCENARIOS[name]
    t = tracker()
    read(t, A, *offsets)
    for finished, expected in steps:
        done(t, A, *finished)
        assert t.committable() == {A: expected}, f"after {finished} were done"


def test_partitions_are_independent():
    t = tracker()
    read(t, A, 0, 1, 2)
    read(t, B, 10, 11)
    read(t, ("other", 0), 5)
    done(t, B, 10, 11)
    done(t, A, 0)
    assert t.committable() == {A: 1, B: 12, ("other", 0): 5}


def test_only_what_moved_is_committed_again():
    t, commits = tracker(), Commits()
    read(t, A, 0, 1)
    read(t, B, 0)
    done(t, A, 0, 1)
    done(t, B, 0)
    t.flush(commits)
    assert commits.calls == [{A: 2, B: 1}]
    t.flush(commits)
    assert commits.calls == [{A: 2, B: 1}], "nothing new: no second commit"
    read(t, B, 1, 2)
    done(t, B, 1)
    t.flush(commits)
    assert commits.calls[-1] == {B: 2}


def test_a_failed_commit_is_retried_on_the_next_flush():
    t, commits = tracker(), Commits(fail=1)
    read(t, A, 0)
    done(t, A, 0)
    t.flush(commits)
    assert commits.calls == []
    assert t.committable() == {A: 1}, "not marked committed after a failure"
    t.flush(commits)
    assert commits.calls == [{A: 1}]


def test_done_before_tracking_is_enabled_is_ignored():
    """Bounded runs and the generator never enable the tracker: ``done`` costs nothing."""
    t = OffsetTracker()
    t.read_many([origin(A, 0)])
    t.done(origin(A, 0))
    assert t.committable() == {A: 0}


def test_done_for_unknown_partition_or_non_kafka_record_is_harmless():
    t = tracker()
    read(t, A, 0)
    t.done(origin(B, 4))
    t.done(None)
    t.done({"generator": True})
    assert t.committable() == {A: 0}


def test_a_record_read_again_after_it_was_done_holds_the_commit_again():
    """A bundle retried by the runner re-reads records: until they are done again, the
    commit must not move past them (it does not move back below what was committed)."""
    t, commits = tracker(), Commits()
    read(t, A, 0, 1, 2)
    done(t, A, 0, 1, 2)
    t.flush(commits)
    read(t, A, 3, 4)
    read(t, A, 3)  # retried
    done(t, A, 4)
    assert t.committable() == {}, "3 is in flight: the committed 3 stays"
    done(t, A, 3)
    assert t.committable() == {A: 5}


def test_start_committer_commits_in_the_background_and_only_once():
    t, commits = OffsetTracker(), Commits()
    t.start_committer(commits, interval=0.01)
    t.start_committer(Commits(), interval=0.01)  # a second DoFn instance: same thread
    assert t.enabled
    read(t, A, 0, 1)
    done(t, A, 0, 1)
    got = threading.Event()
    for _ in range(500):
        if commits.calls:
            got.set()
            break
        threading.Event().wait(0.01)
    t.stop()
    assert got.is_set() and commits.calls[0] == {A: 2}


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_random_order_never_commits_ahead_of_the_lowest_pending(seed):
    rng = random.Random(seed)
    t = tracker()
    pending = {A: set(), B: set()}
    next_offset = {A: 0, B: 0}
    finished = set()
    for _ in range(2000):
        key = rng.choice((A, B))
        if rng.random() < 0.5:
            n = rng.randint(1, 5)
            offsets = [next_offset[key] + i * rng.randint(1, 2) for i in range(n)]
            next_offset[key] = offsets[-1] + 1
            read(t, key, *offsets)
            pending[key].update(offsets)
        elif pending[key]:
            o = rng.choice(sorted(pending[key]))
            pending[key].discard(o)
            finished.add((key, o))
            done(t, key, o)
        for k, target in t.committable().items():
            lowest = min(pending[k]) if pending[k] else next_offset[k]
            assert target <= lowest, f"{k}: commit {target} ahead of pending {lowest}"
            assert target == lowest
        if rng.random() < 0.1:
            t.mark_committed(t.committable())


def test_threads_reporting_at_once():
    """Readers and several finishing threads at once, a committer flushing throughout:
    every commit is at or below the lowest offset not done at that moment, and the last
    covers everything."""
    t = tracker()
    n_parts, per_part, workers = 4, 5000, 4
    keys = [("usage", p) for p in range(n_parts)]
    done_at: dict[tuple, set[int]] = {k: set() for k in keys}
    done_lock = threading.Lock()
    queue: list[tuple] = []
    queue_lock = threading.Lock()
    reading_done = threading.Event()
    violations: list[str] = []

    def reader():
        for start in range(0, per_part, 50):
            for k in keys:
                batch = [origin(k, o) for o in range(start, start + 50)]
                t.read_many(batch)
                with queue_lock:
                    queue.extend((k, o) for o in range(start, start + 50))
        reading_done.set()

    def finisher(seed):
        rng = random.Random(seed)
        while True:
            with queue_lock:
                if not queue:
                    item = None
                else:
                    item = queue.pop(rng.randrange(len(queue)))
            if item is None:
                if reading_done.is_set():
                    with queue_lock:
                        if not queue:
                            return
                continue
            k, o = item
            with done_lock:  # recorded as done here first: the tracker may commit it at once
                done_at[k].add(o)
            t.done(origin(k, o))

    def commit(offsets):
        # Every offset below the commit must already be done.
        with done_lock:
            for k, target in offsets.items():
                missing = set(range(target)) - done_at[k]
                if missing:
                    violations.append(f"{k}@{target} but {min(missing)} not done")

    threads = [threading.Thread(target=reader)] + [
        threading.Thread(target=finisher, args=(i,)) for i in range(workers)]
    for th in threads:
        th.start()
    while any(th.is_alive() for th in threads):
        t.flush(commit)
    for th in threads:
        th.join()
    t.flush(commit)
    assert violations == []
    assert t.committable() == {}
    assert all(len(done_at[k]) == per_part for k in keys)
    assert t.committed() == {k: per_part for k in keys}
