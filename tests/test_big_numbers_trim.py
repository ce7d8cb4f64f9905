"""Numbers the server would round (beyond ±2^53) and names the server trims (issue 15)."""

from __future__ import annotations

import orjson
import pytest
from flexprice_mock import MockFlexprice

from flexprice_beam.core.config import PipelineConfig, load_config_text
from flexprice_beam.core.events import Record
from flexprice_beam.launch.runner import run
from flexprice_beam.ops.check import run_check
from flexprice_beam.transforms.mapping import Mapper
from flexprice_beam.transforms.validate import InvalidEvent, prepare, prepare_with_model
from tests.support import make_config, read_dead_letters

LIMIT = 2**53


def rec(value, rid="rec-1"):
    return Record(rid, "2026-01-01T00:00:00.000Z", value, {})


def ev(**props):
    return {"event_name": "a", "external_customer_id": "c", "event_id": "e",
            "timestamp": "2026-01-01T00:00:00Z", "properties": props}


@pytest.mark.parametrize("value", [LIMIT + 1, -LIMIT - 1, 2**63 - 1, 1e16, -1.5e300,
                                   float(LIMIT + 2)])
def test_beyond_2_53_is_dead_lettered_naming_the_field(value):
    for fn in (prepare, prepare_with_model):
        with pytest.raises(InvalidEvent) as err:
            fn(rec({}), ev(ok=1, count=value))
        assert err.value.field == "properties.count"
        assert "beyond ±2^53" in err.value.reason and "big_numbers: string" in err.value.reason


@pytest.mark.parametrize("value", [LIMIT, -LIMIT, 0, 2.5, 1e15 + 0.5, float(LIMIT), "123"])
def test_exact_numbers_pass_unchanged(value):
    body = prepare(rec({}), ev(count=value)).body
    assert orjson.loads(body)["properties"]["count"] == value


def test_big_numbers_string_sends_the_exact_digits():
    for fn in (prepare, prepare_with_model):
        p = fn(rec({}), ev(count=9007199254740993, neg=-LIMIT - 7, f=1e300, small=5),
               big_numbers="string")
        assert orjson.loads(p.body)["properties"] == {
            "count": "9007199254740993", "neg": "-9007199254740999", "f": "1e+300", "small": 5}


def test_mapped_records_a_big_counter_is_dead_lettered_the_rest_sent():
    pipeline = PipelineConfig(mapping={"event_name": "'api.request'",
                                       "external_customer_id": "'cust_001'",
                                       "properties": {"bytes": "n"}})
    mapper = Mapper(pipeline)
    out = []
    for i, n in enumerate([1, LIMIT + 1, 2]):
        r = rec({"n": n}, f"r{i}")
        try:
            out.append(prepare(r, mapper(r)))
        except InvalidEvent as exc:
            out.append(exc)
    assert [type(o).__name__ for o in out] == ["Prepared", "InvalidEvent", "Prepared"]
    assert out[1].field == "properties.bytes"


def big_counter(payload):
    """mapping_fn: the generator's event; customer "big" reports a 2^53 + 1 counter."""
    if payload["external_customer_id"] == "big":
        payload["properties"]["value"] = LIMIT + 1
    return payload


def test_run_dead_letters_with_the_field_path_or_sends_strings(mock_api, tmp_path):
    def config(big: str | None):
        pipeline = {"mapping_fn": "tests.test_big_numbers_trim:big_counter"}
        if big:
            pipeline["big_numbers"] = big
        return make_config(mock_api, tmp_path / (big or "default"), count=40,
                           customers=["cust_001", "big"], pipeline=pipeline)

    summary = run(config(None))
    dead = read_dead_letters(config(None))
    assert summary.ok and dead and summary.accepted == 40 - len(dead)
    assert all(d["stage"] == "validation" and d["field"] == "properties.value"
               and "9007199254740993" in d["reason"]
               and d["event"]["external_customer_id"] == "big" for d in dead)
    assert all(e["external_customer_id"] != "big" for e in mock_api.events())
    mock_api.reset()
    summary = run(config("string"))
    assert summary.ok and summary.accepted == 40 and summary.dead_lettered == 0
    big = [e["properties"]["value"] for e in mock_api.events()
           if e["external_customer_id"] == "big"]
    assert big == ["9007199254740993"] * len(dead)


def test_config_key_big_numbers_is_checked():
    text = "input: {generate: {}}\noutput: {flexprice: {api_host: h, api_key: k}}\n"
    assert load_config_text(text).pipeline.big_numbers == "dead_letter"
    with pytest.raises(Exception, match="pipeline.big_numbers"):
        load_config_text(text + "pipeline: {big_numbers: round}\n")


# ---------------------------------------------------------------- trimming


def test_names_are_trimmed_as_the_server_trims_them():
    m = Mapper(PipelineConfig())
    e = m(rec({"event_name": " api.request\n", "external_customer_id": "\u3000cust_001\t",
               "properties": {"v": 1}}))
    assert e["event_name"] == "api.request" and e["external_customer_id"] == "cust_001"
    body = orjson.loads(prepare(rec({}), e).body)
    assert body["event_name"] == "api.request" and body["external_customer_id"] == "cust_001"
    # Go's TrimSpace leaves U+001F (Python's bare strip() would not)
    assert m(rec({"event_name": "a\x1f", "external_customer_id": "c"}))["event_name"] == "a\x1f"
    # the event_id is an identity: never rewritten
    assert prepare(rec({}), {**ev(), "event_id": " e "}).event["event_id"] == " e "


def test_prepare_trims_too_so_replayed_letters_match():
    for fn in (prepare, prepare_with_model):
        p = fn(rec({}), {**ev(), "event_name": "  a  ", "external_customer_id": "c "})
        assert p.event["event_name"] == "a" and b'"event_name":"a"' in p.body


def test_a_name_of_only_whitespace_is_dead_lettered_not_lost():
    m = Mapper(PipelineConfig())
    with pytest.raises(InvalidEvent) as err:
        prepare(rec({}), m(rec({"event_name": " \u2003 ", "external_customer_id": "c"})))
    assert err.value.field == "event_name"
    # what the server would have done: 202, then lost in its store
    with MockFlexprice(api_key="k") as server:
        import requests

        r = requests.post(server.url + "/v1/events/bulk", headers={"x-api-key": "k"},
                          json={"events": [{"event_name": "   ", "external_customer_id": "c",
                                            "event_id": "x"}]})
        assert r.status_code == 202 and server.events() == []
        assert server.stats()["lost_blank_name"] == 1


def test_check_sees_the_trimmed_name(tmp_path):
    with MockFlexprice(api_key="test-key", seed_defaults=True) as m:
        cfg = make_config(m, tmp_path, count=5, customers=["cust_001"],
                          event_names=[" api.request "])
        report = run_check(cfg, sample=5)
        assert not report.problems, report.render()
        names = [f.subject for f in report.findings if f.check == "event_name"]
        assert names == ["api.request"]


def test_string_mode_changes_a_copy_never_the_records_own_properties():
    """The fast path shares the record's properties dict; ``big_numbers: string`` must not
    rewrite the record a dead letter would show."""
    value = ev(ok=1, count=LIMIT + 1)
    record = rec(value)
    p = prepare(record, Mapper(PipelineConfig())(record), big_numbers="string")
    assert orjson.loads(p.body)["properties"] == {"ok": 1, "count": str(LIMIT + 1)}
    assert p.event["properties"]["count"] == str(LIMIT + 1)
    assert record.value["properties"] == {"ok": 1, "count": LIMIT + 1}
