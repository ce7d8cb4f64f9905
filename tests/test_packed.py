"""A batch in flight, packed (transforms/batches.py ``Packed``): what the executor sends and
what comes back out of it are the batch's own bytes and equal items, whatever it was cut
into; Kafka positions survive; what JSON cannot hold is kept as it is."""

from __future__ import annotations

import orjson
import pytest

from flexprice_beam.core.events import Prepared, Record
from flexprice_beam.core.offsets import OffsetTracker
from flexprice_beam.io.flexprice.executor import Outcome
from flexprice_beam.io.flexprice.sink import Delivered
from flexprice_beam.transforms.batches import Packed, positions


def _item(i: int, origin: dict | None = None, value=None) -> Prepared:
    event = {"event_id": f"e{i}", "event_name": "api.request", "external_customer_id": "c1",
             "timestamp": "2026-01-01T00:00:00.000Z", "properties": {"n": i, "x": 0.1 * i}}
    record = Record(f"r{i}", "2026-01-01T00:00:00.000Z",
                    {"name": "api.request", "n": i, "tags": ["a", "b"]} if value is None else value,
                    origin if origin is not None else {"generator_index": i})
    return Prepared(record, event, orjson.dumps(event))


def _kafka(i: int, partition: int) -> Prepared:
    return _item(i, {"topic": "usage", "partition": partition, "offset": 1000 + i,
                     "timestamp_ms": 1, "key": None})


def test_items_come_back_equal_and_in_order():
    items = [_item(i) for i in range(7)]
    packed = Packed(items)
    assert len(packed) == 7 and list(packed) == items
    assert packed[3] == items[3] and packed[-1] == items[-1]
    assert packed[3] is not items[3]  # rebuilt: the originals could go


def test_every_part_sends_the_very_bytes_prepared_once():
    items = [_item(i) for i in range(9)]
    packed = Packed(items)
    assert packed.joined() == b",".join(i.body for i in items)
    for lo, hi in [(0, 4), (4, 9), (2, 3), (8, 9), (0, 9)]:
        part = packed[lo:hi]
        assert len(part) == hi - lo
        assert part.joined() == b",".join(i.body for i in items[lo:hi])
        assert list(part) == items[lo:hi]
        assert part[1:][0] == items[lo + 1] if hi - lo > 1 else True
    assert [packed.sent(i)["event_id"] for i in range(9)] == [f"e{i}" for i in range(9)]
    assert packed[5:].sent(0) == items[5].event
    with pytest.raises(ValueError):
        packed[::2]


def test_kafka_positions_per_part_and_in_delivered():
    items = [_kafka(i, i % 3) for i in range(10)]
    packed = Packed(items)
    assert list(packed.positions()) == [(("usage", i % 3), 1000 + i) for i in range(10)]
    assert list(positions(packed[4:6])) == [(("usage", 1), 1004), (("usage", 2), 1005)]
    assert list(positions(items[:2])) == list(packed[:2].positions())  # a plain list too
    d = Delivered.of(Outcome(accepted=[packed[:5], packed[7:]]))
    assert d.count == 8 and d.offsets == {("usage", 0): 1009, ("usage", 1): 1007,
                                          ("usage", 2): 1008}
    assert list(Packed([_item(0)]).positions()) == []  # not Kafka: nothing to commit


def test_done_many_releases_what_a_part_accepted():
    items = [_kafka(i, 0) for i in range(4)]
    t = OffsetTracker()
    t.enabled = True
    t.read_many([i.record.origin for i in items])
    t.done_many(Packed(items)[:2].positions())
    assert t.committable() == {("usage", 0): 1002}
    t.done_many(Packed(items)[2:].positions())
    assert t.committable() == {("usage", 0): 1004}


def test_what_json_cannot_hold_is_kept_as_it_is():
    odd = [_item(0, value={"raw": b"\x00\x01"}), _item(1, value={1: "int key"}),
           _item(2, value={"big": 2 ** 70})]
    for item in odd:
        packed = Packed([item, _item(9)])
        assert packed[0] is item and list(packed)[1].record == _item(9).record


def test_keep_keeps_the_originals_for_replay():
    items = [_item(i) for i in range(3)]
    packed = Packed(items, keep=True)
    assert all(a is b for a, b in zip(packed, items, strict=True))
    assert packed[1:][0] is items[1] and packed.joined() == b",".join(i.body for i in items)
