"""Fuzzing decode → mapping → validation (docs/reliability.md, "Fuzzing").

Properties, for arbitrary bytes, arbitrary JSON-like values and near-valid events:

* nothing but ``MappingError``/``InvalidEvent`` leaves ``Mapper``/``prepare``, and nothing at
  all leaves the DoFns (``MapRecords``, ``ValidateEvents``): bad input is data, not a crash;
* every record ends as exactly one of: an event, one dead letter (stage + reason), filtered;
* every dead letter can be written (``encode_dead_letter`` never raises, the line parses);
* every event is what Flexprice accepts (the stand-in's bind rules) and its bytes are
  deterministic: the same input gives identical bytes, by the fast path and the model alike.

``HYPOTHESIS_PROFILE=full`` runs 10,000 examples per property (tests/conftest.py).
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import shutil
import tempfile
from pathlib import Path

import apache_beam as beam
import orjson
import pytest
from flexprice_mock.validation import bind_event, missing_required
from hypothesis import event, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from flexprice_beam.core.config import MAX_EVENT_BYTES, GenerateInput, PipelineConfig
from flexprice_beam.core.events import FlexpriceEvent, Record
from flexprice_beam.io.dead_letter import WriteDeadLetters, encode_dead_letter
from flexprice_beam.io.generate import generate_batch
from flexprice_beam.io.kafka import decode
from flexprice_beam.launch.runner import LOCAL_ENGINE
from flexprice_beam.transforms.mapping import DEAD_LETTER, FILTERED, Mapper, MappingError, MapRecords
from flexprice_beam.transforms.validate import (
    InvalidEvent,
    ValidateEvents,
    prepare,
    prepare_with_model,
)

PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "ci")
MAX_RECORD = 4096  # a small input limit, so the fuzzer reaches both sides of it

# ------------------------------------------------------------------ strategies

# Any code point, lone surrogates included (what a Python mapping_fn or generator can make).
any_text = st.text(st.characters(exclude_categories=()), max_size=30)
nice_text = st.text(max_size=30)
scalars = (st.none() | st.booleans() | st.integers() | st.integers(-2**63, 2**63 - 1)
           | st.floats() | st.floats(allow_nan=False, allow_infinity=False) | any_text)
json_like = st.recursive(
    scalars, lambda kids: st.lists(kids, max_size=4) | st.dictionaries(any_text, kids, max_size=4),
    max_leaves=25)


@st.composite
def deep(draw):
    """Nesting around the limits: orjson writes ≤ 255 levels, reads ≤ 1024."""
    depth = draw(st.sampled_from([50, 254, 255, 256, 300, 1000, 1023, 1100]))
    leaf: object = draw(st.integers(0, 9))
    for _ in range(depth):
        leaf = [leaf] if draw(st.booleans()) else {"k": leaf}
    return leaf


@st.composite
def rfc3339(draw):
    when = draw(st.datetimes(dt.datetime(1971, 1, 1), dt.datetime(2200, 1, 1)))
    frac = draw(st.sampled_from(["", ".1", ".123", ".123456", ".123456789"]))
    zone = draw(st.sampled_from(["Z", "+00:00", "+05:30", "-08:00", "+14:00"]))
    return when.strftime("%Y-%m-%dT%H:%M:%S") + frac + zone


bad_timestamps = st.sampled_from([
    "", "now", "2025-12-01", "2025-12-01T10:30:00", "2025-12-01 10:30:00Z", "2025-12-01T10:30Z",
    "2025-12-01t10:30:00z", "20251201T103000Z", "2025-W01-1T10:30:00Z", "2025-12-01T10Z",
    "2025-12-01T10:30:00+0530", "2025-12-01T10:30:00,5Z", "2025-12-01T24:00:00Z",
    "2025-02-30T00:00:00Z", "0000-01-01T00:00:00Z", "2025-12-01T10:30:00.1234567890Z",
    "NaN", "2025-12-01T10:30:00Z ", "1733049000",
]) | any_text | st.integers() | st.floats() | st.none()

good_names = st.text(min_size=1, max_size=40).filter(str.strip)
bad_names = (st.sampled_from(["", " ", "\t\n", "x" * 256]) | st.integers() | st.floats()
             | st.none() | st.lists(nice_text, max_size=2) | any_text)
good_props = st.dictionaries(nice_text, st.integers(-2**63, 2**63 - 1) | nice_text
                             | st.floats(allow_nan=False, allow_infinity=False), max_size=6)
bad_props = (st.dictionaries(any_text, json_like, max_size=6) | json_like
             | st.builds(lambda d: {"nested": d}, deep())
             | st.sampled_from([{"v": math.nan}, {"v": math.inf}, {"v": -math.inf},
                                {"v": 2**64}, {"v": True}, {"v": None}, {"v": [1]}]))


def maybe(good, bad):
    """Mostly good: an event has up to eight fields, each may be bad, and enough of the
    events must come out valid to test what valid events carry."""
    return st.integers(0, 5).flatmap(lambda k: bad if k == 5 else good)  # one_of would
    # flatten `bad`'s own branches next to `good` and draw bad values most of the time


near_valid_events = st.fixed_dictionaries(
    {"event_name": maybe(good_names, bad_names),
     "external_customer_id": maybe(good_names, bad_names)},
    optional={"event_id": maybe(good_names, bad_names),
              "timestamp": maybe(rfc3339(), bad_timestamps),
              "properties": maybe(good_props, bad_props),
              "source": maybe(nice_text, bad_names),
              "customer_id": maybe(nice_text, bad_names)})
with_extra_key = st.builds(lambda e, v: {**e, "extra_key": v}, near_valid_events, json_like)

payloads = st.integers(0, 9).flatmap(lambda k: [
    with_extra_key, json_like, deep(), st.dictionaries(any_text, json_like, max_size=8)][k - 6]
    if k >= 6 else near_valid_events)


@st.composite
def raw_bytes(draw):
    """What a Kafka topic can hold: JSON of all kinds, then maybe damaged, or just noise."""
    if draw(st.integers(0, 5)) == 0:
        return draw(st.binary(max_size=300))
    value = draw(payloads)
    try:
        text = json.dumps(value, ensure_ascii=draw(st.booleans()), allow_nan=True)
    except (RecursionError, ValueError):
        text = "[" * 2000
    data = text.encode("utf-8", "surrogatepass")  # lone surrogates → invalid UTF-8
    how = draw(st.sampled_from(["as is"] * 4 + ["truncate", "noise", "bom", "trailing",
                                                 "latin1", "pad"]))
    if how == "truncate" and data:
        data = data[:draw(st.integers(0, len(data) - 1))]
    elif how == "noise":
        at = draw(st.integers(0, len(data)))
        data = data[:at] + draw(st.binary(min_size=1, max_size=8)) + data[at:]
    elif how == "bom":
        data = b"\xef\xbb\xbf" + data
    elif how == "trailing":
        data += draw(st.sampled_from([b" x", b"}", b"\x00", b"\n{}"]))
    elif how == "latin1":
        data = text.encode("latin-1", "replace")
    elif how == "pad":  # straddle the size limit
        data = data + b" " * draw(st.integers(0, MAX_RECORD + 10))
    return data


MAPPINGS = [
    None,
    {"event_name": "event_name", "external_customer_id": "external_customer_id",
     "event_id": "event_id", "timestamp": "timestamp", "properties": "properties",
     "source": "'fuzz'"},
    {"event_name": "event_name || 'fallback'", "external_customer_id": "to_string(external_customer_id)",
     "properties": {"count": "length(properties || `{}`)", "n": "to_number(properties.v)",
                    "keys": "join(',', keys(properties || `{}`))", "first": "values(@)[0]",
                    "sum": "sum(properties.*)", "max": "max_by(extra_key, &k)",
                    "fixed": 7, "ratio": 2.5, "tags": "sort(extra_key)"}},
    {"event_name": "event_name", "external_customer_id": "external_customer_id",
     "event_id": "event_id", "timestamp": "timestamp", "source": "source || 'none'",
     "properties": {"n_props": "length(keys(properties || `{}`))",
                    "total": "sum(values(properties || `{}`)[?type(@) == 'number'])",
                    "name_len": "length(to_string(event_name))"}},
]
mapping_cfgs = st.sampled_from(MAPPINGS).flatmap(
    lambda m: st.builds(lambda s: PipelineConfig(mapping=m, stringify_properties=s), st.booleans()))


def kafka_record(raw: bytes, offset: int = 7) -> Record:
    return decode("fuzz-topic", 0, offset, 1_733_049_000_000, b"key", raw, MAX_RECORD)


# ------------------------------------------------------------------ the chain


def through_dofns(records: list[Record], cfg: PipelineConfig, max_bytes: int | None = None):
    """The DoFns' own process() methods (exactly what the pipeline runs), outside Beam."""
    mapper, validator = MapRecords(cfg), ValidateEvents(max_bytes or cfg.max_event_bytes)
    mapper.setup()
    events, dead, pairs = [], [], []
    for out in mapper.process(records):
        if isinstance(out, beam.pvalue.TaggedOutput):
            assert out.tag == DEAD_LETTER
            dead.append(out.value)
        else:
            pairs.extend(out)
    for out in validator.process(pairs):
        if isinstance(out, beam.pvalue.TaggedOutput):
            dead.append(out.value)
        else:
            events.extend(out)
    return events, dead


def outcome(record: Record, cfg: PipelineConfig):
    """One record through Mapper and prepare, asserting only the allowed exceptions escape."""
    try:
        event = Mapper(cfg)(record)
    except MappingError as exc:
        return ("mapping", exc.reason, exc.field)
    if event is FILTERED:
        return ("filtered",)
    try:
        return ("event", prepare(record, event, cfg.max_event_bytes).body)
    except InvalidEvent as exc:
        return ("validation", exc.reason, exc.field)


def check_event(body: bytes, record: Record, event_dict: dict) -> None:
    assert 0 < len(body) <= MAX_EVENT_BYTES
    sent = orjson.loads(body)
    FlexpriceEvent.model_validate(sent)  # our model agrees ...
    err, _ms = bind_event(sent, "event")  # ... and so does the server's binding
    assert err is None, err
    assert missing_required(sent) is None
    assert prepare_with_model(record, event_dict).body == body  # fast path == model path


def check_letter(letter: dict) -> None:
    assert letter["stage"] in ("mapping", "validation")
    assert isinstance(letter["reason"], str) and letter["reason"]
    line = encode_dead_letter(letter)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    back = orjson.loads(line)
    assert back["stage"] == letter["stage"] and back["reason"]
    assert back["record_id"] == letter["record_id"]


def check_batch(records: list[Record], cfg: PipelineConfig) -> None:
    events, dead = through_dofns(records, cfg)
    filtered = sum(1 for r in records if outcome(r, cfg)[0] == "filtered")
    assert len(events) + len(dead) + filtered == len(records)
    ids = [p.record.record_id for p in events] + [d["record_id"] for d in dead]
    assert len(ids) == len(set(ids)), "a record produced two outcomes"
    for p in events:
        check_event(p.body, p.record, Mapper(cfg)(p.record))
    for letter in dead:
        check_letter(letter)


# ------------------------------------------------------------------ properties


@given(raw=raw_bytes() | st.binary(max_size=64))
def test_decode_never_raises_and_flags_what_it_cannot_use(raw):
    r = kafka_record(raw)
    event("decoded to an object" if r.error is None else "decode error (dead letter)")
    assert r.record_id == "kafka-fuzz-topic-0-7" and r.read_time == "2024-12-01T10:30:00.000Z"
    if r.error is None:
        assert isinstance(r.value, dict) and len(raw) <= MAX_RECORD
    else:
        assert r.value is None and r.error
        assert "raw_value" in r.origin  # the letter keeps what arrived
    if len(raw) > MAX_RECORD:
        assert r.error and "limit" in r.error
    assert outcome(r, PipelineConfig()) == outcome(kafka_record(raw), PipelineConfig())


@given(raw=raw_bytes(), cfg=mapping_cfgs)
def test_kafka_bytes_end_as_one_event_or_one_dead_letter(raw, cfg):
    record = kafka_record(raw)
    first = outcome(record, cfg)
    event(f"outcome: {first[0]}")
    # Same bytes read again (a restart, a replay): the very same outcome, byte for byte.
    assert outcome(kafka_record(raw), cfg) == first
    check_batch([record], cfg)
    if first[0] == "event":
        check_event(first[1], record, Mapper(cfg)(record))


@given(value=payloads, cfg=mapping_cfgs)
def test_python_payloads_from_generator_or_mapping_fn(value, cfg):
    """Records built in Python (generator, a mapping_fn's input): NaN, ±Infinity, lone
    surrogates, 100-bit integers and deep nesting reach mapping without a JSON parser."""
    record = Record("gen-1-0", "2026-01-01T00:00:00.000Z", value, {"generator_index": 0})
    first = outcome(record, cfg)
    event(f"outcome: {first[0]}")
    assert first[0] in ("event", "mapping", "validation")
    if first[0] != "event":
        assert first[1], "a dead letter needs a reason"
    record2 = Record("gen-1-0", "2026-01-01T00:00:00.000Z", value, {"generator_index": 0})
    assert outcome(record2, cfg) == first
    check_batch([record], cfg)


@given(events=st.lists(near_valid_events | with_extra_key, min_size=1, max_size=20),
       cfg=mapping_cfgs)
def test_near_valid_batches_balance(events, cfg):
    records = [Record(f"r-{i}", "2026-01-01T00:00:00.000Z", e, {"i": i})
               for i, e in enumerate(events)]
    check_batch(records, cfg)
    kinds = {outcome(r, cfg)[0] for r in records}
    event("batch: " + ("all valid" if kinds == {"event"} else "none valid" if "event" not in kinds
                       else "mixed"))


@given(gen=st.fixed_dictionaries({}, optional={
    "seed": st.integers(), "customers": st.lists(any_text, min_size=1, max_size=3),
    "event_names": st.lists(any_text, min_size=1, max_size=3), "property_name": any_text,
    "value_range": st.tuples(st.floats(), st.floats()), "integer_values": st.booleans(),
    "source": any_text, "interval": st.sampled_from([0, "1ms", "1s"]),
    "start_time": maybe(rfc3339(), bad_timestamps)}),
    first=st.integers(0, 10**10), n=st.integers(1, 20))
def test_generator_configs_either_refused_at_load_or_every_record_accounted(gen, first, n):
    try:
        cfg = GenerateInput.model_validate(gen)
    except ValidationError:
        event("config refused at load")
        return  # refused with a field path at load time (lint) — e.g. value_range with NaN
    event("config accepted: records generated")
    from flexprice_beam.io.generate import start_time

    if cfg.count:  # the indices a bounded run generates
        n = min(n, cfg.count)
        first = min(first, cfg.count - n)
    else:  # unbounded: the config check covers 10^9 events
        first = min(first, 10**9 - n)
    start = start_time(cfg) if cfg.start_time else dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    batch = generate_batch(cfg, start, first, first + n)
    again = generate_batch(cfg, start, first, first + n)
    assert [(r.record_id, r.read_time, r.value) for r in batch] == \
        [(r.record_id, r.read_time, r.value) for r in again]
    check_batch(batch, PipelineConfig())
    bodies = [outcome(r, PipelineConfig()) for r in batch]
    assert bodies == [outcome(r, PipelineConfig()) for r in again]


# ------------------------------------------------------------------ in a Beam pipeline


class _DecodeBatch(beam.DoFn):
    def process(self, indexed):
        yield [kafka_record(raw, offset) for offset, raw in indexed]


class _EventIds(beam.DoFn):
    """Sink stand-in: one line per valid event, its record id."""

    def __init__(self, path):
        self._path = path

    def process(self, items):
        with open(self._path, "a", encoding="utf-8") as f:
            f.writelines(p.record.record_id + "\n" for p in items)


BEAM_EXAMPLES = {"ci": 2, "full": 25}.get(PROFILE, 2)


@settings(max_examples=BEAM_EXAMPLES)
@given(raws=st.lists(raw_bytes(), min_size=20, max_size=60), cfg=mapping_cfgs)
def test_fuzzed_batches_through_the_dofns_in_a_beam_pipeline(raws, cfg):
    """MapRecords → ValidateEvents → (ids) + WriteDeadLetters, on FnApiRunner: the run
    finishes (no exception escaped a DoFn) and every record is one event or one letter."""
    work = Path(tempfile.mkdtemp(prefix="fuzz-beam-"))
    try:
        _beam_run(raws, cfg, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _beam_run(raws, cfg, work: Path) -> None:
    ids_file, dl_dir = work / "ids.txt", work / "dead-letter"
    chunks = [list(enumerate(raws))[i:i + 17] for i in range(0, len(raws), 17)]
    with beam.Pipeline(runner=LOCAL_ENGINE) as p:
        mapped = (p | beam.Create(chunks, reshuffle=False) | beam.ParDo(_DecodeBatch())
                  | beam.ParDo(MapRecords(cfg)).with_outputs(DEAD_LETTER, main="events"))
        valid = mapped.events | beam.ParDo(ValidateEvents()).with_outputs(DEAD_LETTER, main="valid")
        _ = valid.valid | beam.ParDo(_EventIds(str(ids_file)))
        _ = ((mapped[DEAD_LETTER], valid[DEAD_LETTER]) | beam.Flatten()
             | WriteDeadLetters(str(dl_dir)))
    ok = ids_file.read_text().split() if ids_file.exists() else []
    letters = [orjson.loads(line) for f in dl_dir.glob("*.jsonl")
               for line in f.read_bytes().splitlines() if line]
    assert all(d["reason"] and d["stage"] in ("mapping", "validation") for d in letters)
    handled = ok + [d["record_id"] for d in letters]
    assert sorted(handled) == sorted(f"kafka-fuzz-topic-0-{i}" for i in range(len(raws)))


# ------------------------------------------------------------------ regressions found


@pytest.mark.parametrize("ts", ["2025-12-01T10:30Z", "2025-12-01t10:30:00z", "20251201T103000Z",
                                "2025-W01-1T10:30:00Z", "2025-12-01T10:30:00+0530",
                                "2025-12-01T10Z", "2025-12-01T10:30:00,5Z"])
def test_iso_forms_flexprice_refuses_are_invalid_here_too(ts):
    """fromisoformat took these; Flexprice (Go RFC3339) answers 400, so each cost a
    bisection of its batch before reaching the dead letters."""
    r = Record("r", "2026-01-01T00:00:00.000Z", {})
    with pytest.raises(InvalidEvent) as err:
        prepare(r, {"event_name": "a", "external_customer_id": "c", "event_id": "e",
                        "timestamp": ts})
    assert err.value.field == "timestamp"


@pytest.mark.parametrize("value", [
    {"event_name": "a", "external_customer_id": "c", "properties": {"x": [[[[[]]]]] * 1}},
])
def test_a_letter_for_a_record_nested_too_deep_for_orjson_still_writes(value):
    nested: object = 0
    for _ in range(400):
        nested = [nested]
    record = kafka_record(json.dumps({**value, "properties": {"x": nested}}).encode())
    events, dead = through_dofns([record], PipelineConfig())
    assert events == [] and len(dead) == 1
    back = orjson.loads(encode_dead_letter(dead[0]))
    assert back["record"]["unencodable"] == "Recursion limit reached"
    assert back["origin"]["offset"] == 7  # where to find the record again


@given(seed=st.integers(), block=st.integers(1, 50), cuts=st.lists(st.integers(1, 120), max_size=12))
def test_generator_record_i_does_not_depend_on_how_batches_were_cut(seed, block, cuts):
    """Regression: the real-time generator cuts batches by the clock; a re-run must still
    give event i the same payload (same event_id and timestamp → same bytes)."""
    cfg = GenerateInput(seed=seed, batch_size=block, interval="1ms")
    start = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    total = sum(cuts)
    aligned = [r for a in range(0, total, block)
               for r in generate_batch(cfg, start, a, min(a + block, total))]
    cut, i = [], 0
    for n in cuts:
        cut += generate_batch(cfg, start, i, i + n)
        i += n
    assert [(r.record_id, r.read_time, r.value) for r in cut] == \
        [(r.record_id, r.read_time, r.value) for r in aligned]
