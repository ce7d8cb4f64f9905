"""Mapping (JMESPath and mapping_fn) and validation, without Beam and through Beam."""

import apache_beam as beam
import orjson
import pytest
from apache_beam.testing.util import assert_that, equal_to

from flexprice_beam.core.config import PipelineConfig, load_config
from flexprice_beam.core.events import Record
from flexprice_beam.launch.runner import LOCAL_ENGINE
from flexprice_beam.transforms.mapping import (
    DEAD_LETTER,
    FILTERED,
    Mapper,
    MappingError,
    MapRecords,
)
from flexprice_beam.transforms.validate import InvalidEvent, ValidateEvents, prepare


def rec(value, rid="rec-1", ts="2025-12-01T10:30:00.000Z"):
    return Record(rid, ts, value, {"test": True})


SEED_RECORD = {"eventType": "api.request", "userId": "cust_123",
               "data": {"endpoint": "/api/users", "count": 5, "ratio": 2.5, "whole": 100.0}}


def test_seed_bloblang_example_as_jmespath(monkeypatch):
    monkeypatch.setenv("FLEXPRICE_API_HOST", "h")
    monkeypatch.setenv("FLEXPRICE_API_KEY", "k")
    cfg = load_config("examples/custom-mapping.yaml")
    event = Mapper(cfg.pipeline)(rec(SEED_RECORD))
    assert event == {
        "event_name": "api.request", "external_customer_id": "cust_123",
        "properties": {"endpoint": "/api/users", "count": "5", "ratio": "2.5", "whole": "100"},
        "source": "my-service", "event_id": "rec-1", "timestamp": "2025-12-01T10:30:00.000Z"}


def test_numbers_stay_numbers_without_stringify():
    m = Mapper(PipelineConfig(mapping={"event_name": "eventType", "external_customer_id": "userId",
                                       "properties": {"count": "data.count", "tier": "'gold'",
                                                      "fixed": 7}}))
    event = m(rec(SEED_RECORD))
    assert event["properties"] == {"count": 5, "tier": "gold", "fixed": 7}


def test_record_timestamp_and_id_win_over_defaults():
    m = Mapper(PipelineConfig())
    e = m(rec({"event_name": "a", "external_customer_id": "c", "event_id": "mine",
               "timestamp": "2024-01-01T00:00:00Z"}))
    assert e["event_id"] == "mine" and e["timestamp"] == "2024-01-01T00:00:00Z"


def test_identity_is_fixed_so_mapping_twice_gives_identical_bytes():
    m = Mapper(PipelineConfig())
    r = rec({"event_name": "a", "external_customer_id": "c", "properties": {"x": 1}})
    assert prepare(r, m(r)).body == prepare(r, m(r)).body


def test_not_an_object_is_a_mapping_error():
    with pytest.raises(MappingError, match="not an object"):
        Mapper(PipelineConfig())(rec([1, 2]))


def test_bad_expression_is_reported_with_field():
    with pytest.raises(MappingError) as err:
        Mapper(PipelineConfig(mapping={"event_name": "a[?"}))
    assert err.value.field == "event_name"


def test_mapping_fn_and_filter():
    m = Mapper(PipelineConfig(mapping_fn="tests.mapping_fns:to_event"))
    assert m(rec({"type": "t", "user": "u", "n": 2}))["properties"] == {"n": 4}
    assert m(rec({"skip": True})) is FILTERED
    with pytest.raises(MappingError, match="KeyError"):
        m(rec({"type": "t"}))
    with pytest.raises(MappingError, match="cannot load"):
        Mapper(PipelineConfig(mapping_fn="tests.nope:fn"))


GOOD = {"event_name": "api.request", "external_customer_id": "cust_1", "event_id": "e1",
        "timestamp": "2025-12-01T10:30:00Z", "properties": {"n": 1, "s": "x", "f": 1.5}}


@pytest.mark.parametrize("change,field", [
    ({"event_name": ""}, "event_name"),
    ({"event_name": "   "}, "event_name"),
    ({"external_customer_id": None}, "external_customer_id"),
    ({"external_customer_id": 12}, "external_customer_id"),
    ({"timestamp": "2025-12-01 10:30:00"}, "timestamp"),
    ({"timestamp": "2025-12-01T10:30:00"}, "timestamp"),
    ({"timestamp": "yesterday"}, "timestamp"),
    ({"properties": {"n": [1]}}, "properties.n"),
    ({"properties": {"n": True}}, "properties.n"),
    ({"properties": {"n": float("nan")}}, "properties"),
    ({"properties": "x"}, "properties"),
    ({"colour": "red"}, "colour"),
])
def test_invalid_events_name_the_field(change, field):
    with pytest.raises(InvalidEvent) as err:
        prepare(rec({}), {**GOOD, **change})
    assert err.value.field.startswith(field.split(".")[0]), err.value.field
    if "." in field:
        assert err.value.field.startswith(field)


def test_valid_event_serialised_canonically():
    p = prepare(rec({}), dict(reversed(list(GOOD.items()))))
    assert orjson.loads(p.body) == GOOD
    assert list(orjson.loads(p.body)) == ["event_name", "external_customer_id", "event_id",
                                          "timestamp", "properties"]


def test_prepared_body_holds_only_its_own_bytes():
    """An event in flight keeps its body: it must not pin orjson's 4 KiB output buffer."""
    import tracemalloc

    events = [{**GOOD, "event_id": f"e{i}"} for i in range(200)]
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        bodies = [prepare(rec({}), e).body for e in events]
        held = (tracemalloc.get_traced_memory()[0] - before) / len(bodies)
    finally:
        tracemalloc.stop()
    assert held < 2 * len(bodies[0]) + 200, f"{held:.0f} bytes held per {len(bodies[0])}-byte body"
    assert [orjson.loads(b)["event_id"] for b in bodies] == [e["event_id"] for e in events]


def test_oversized_event_is_invalid():
    big = {**GOOD, "properties": {"blob": "x" * (33 * 1024 * 1024)}}
    with pytest.raises(InvalidEvent, match="at most"):
        prepare(rec({}), big)


def test_map_and_validate_dofns_split_good_from_bad():
    records = [rec({**GOOD, "event_id": f"e{i}"}, rid=f"r{i}") for i in range(6)]
    records[2] = rec([1], rid="r2")  # not an object → mapping dead letter
    records[4] = rec({**GOOD, "event_id": "e4", "event_name": ""}, rid="r4")  # invalid
    with beam.Pipeline(LOCAL_ENGINE) as p:
        mapped = (p | beam.Create([records[:3], records[3:]])
                  | "Map" >> beam.ParDo(MapRecords(PipelineConfig())).with_outputs(
                      DEAD_LETTER, main="events"))
        valid = mapped.events | beam.ParDo(ValidateEvents()).with_outputs(DEAD_LETTER, main="v")
        ids = valid.v | beam.FlatMap(lambda items: [i.event["event_id"] for i in items])
        assert_that(ids, equal_to(["e0", "e1", "e3", "e5"]), label="valid")
        dl_m = mapped[DEAD_LETTER] | "m" >> beam.Map(lambda d: (d["stage"], d["record_id"]))
        assert_that(dl_m, equal_to([("mapping", "r2")]), label="mapping_dl")
        dl_v = valid[DEAD_LETTER] | "v" >> beam.Map(lambda d: (d["stage"], d["field"], d["record_id"]))
        assert_that(dl_v, equal_to([("validation", "event_name", "r4")]), label="validation_dl")
