"""Input limits (docs/reliability.md, "Input limits"): oversized input is dead-lettered with
the reason, never sent and never allowed to block the rest.

* Kafka records over ``input.kafka.max_record_bytes`` (default 1 MiB) fail decoding;
* mapped events over ``pipeline.max_event_bytes`` (default 1 MiB) fail validation;
* an event that could not fit one request (32 MiB with the envelope) fails validation
  whatever the setting — Flexprice would answer 400 to the whole batch.
"""

from __future__ import annotations

import datetime as dt

import orjson

from flexprice_beam.core.config import MAX_BODY_BYTES, MAX_EVENT_BYTES, KafkaInput, PipelineConfig
from flexprice_beam.io.generate import generate_batch
from flexprice_beam.io.kafka import decode
from flexprice_beam.launch.runner import run
from tests.mapping_fns import INFLATE
from tests.reliability_helpers import account, generator_ids, record
from tests.support import make_config, read_dead_letters
from tests.test_fuzz import through_dofns

MIB = 1024 * 1024


def test_kafka_record_limit_default_is_1_mib_and_inclusive():
    limit = KafkaInput(addresses=["b:9092"], topics=["t"]).max_record_bytes
    assert limit == MIB
    body = b'{"event_name":"a","external_customer_id":"c","properties":{"s":"'
    tail = b'"}}'
    at_limit = body + b"x" * (limit - len(body) - len(tail)) + tail
    assert len(at_limit) == limit
    ok = decode("t", 0, 1, 1_000, None, at_limit, limit)
    over = decode("t", 0, 2, 1_000, None, at_limit + b" ", limit)
    assert ok.error is None
    assert over.error == f"record is {limit + 1} bytes, over the {limit}-byte limit"
    events, dead = through_dofns([ok, over], PipelineConfig(), max_bytes=2 * MIB)
    assert [p.record.record_id for p in events] == ["kafka-t-0-1"]
    assert len(dead) == 1 and dead[0]["stage"] == "mapping" and "over the" in dead[0]["reason"]
    assert dead[0]["origin"]["offset"] == 2
    # The default event limit (1 MiB) would refuse the record that fit: it is ~1 MiB too.
    events, dead = through_dofns([ok], PipelineConfig())
    assert events == [] and "pipeline.max_event_bytes" in dead[0]["reason"]


def _inflated(cfg) -> dict[str, int]:
    """event_id → blob size, for the records inflate() blows up in this config's run."""
    gen = cfg.input.generate
    start = dt.datetime.fromisoformat(gen.start_time.replace("Z", "+00:00"))
    out = {}
    for r in generate_batch(gen, start, 0, gen.count):
        size = INFLATE.get(r.value["properties"]["value"])
        if size:
            out[r.record_id] = size
    return out


def test_oversized_events_are_dead_lettered_not_sent(mock_api, tmp_path):
    count = 300
    cfg = make_config(mock_api, tmp_path / "default", count=count,
                      pipeline={"mapping_fn": "tests.mapping_fns:inflate"})
    inflated = _inflated(cfg)
    huge = {i for i, n in inflated.items() if n > MAX_BODY_BYTES}
    big = set(inflated) - huge
    assert huge and big, "pick a seed with both sizes"

    # Default pipeline.max_event_bytes (1 MiB): both kinds are refused before sending.
    summary = run(cfg)
    assert summary.ok, summary.render()
    dead = read_dead_letters(cfg)
    assert {d["event"]["event_id"] for d in dead} == set(inflated)
    assert all(d["stage"] == "validation" for d in dead)
    assert all("pipeline.max_event_bytes limit of 1048576" in d["reason"]
               for d in dead if d["event"]["event_id"] in big)
    assert all("one request may carry at most 33554432 bytes" in d["reason"]
               for d in dead if d["event"]["event_id"] in huge)
    account(mock_api, generator_ids(7, count), dead, summary.accepted)
    assert "400" not in mock_api.stats()["requests_by_status"]
    record("oversized events, default 1 MiB limit", events=count, dead_lettered=len(dead),
           over_1mib=len(big), over_32mib=len(huge), lost=0, requests_400=0)

    # Limit raised to the API's maximum: the 1.5 MiB events go, the 33 MiB ones still cannot.
    mock_api.reset()
    cfg = make_config(mock_api, tmp_path / "max", count=count,
                      pipeline={"mapping_fn": "tests.mapping_fns:inflate",
                                "max_event_bytes": MAX_EVENT_BYTES})
    summary = run(cfg)
    assert summary.ok, summary.render()
    dead = read_dead_letters(cfg)
    assert {d["event"]["event_id"] for d in dead} == huge
    stored = {e["event_id"]: e for e in mock_api.events()}
    assert big <= set(stored)
    assert all(len(stored[i]["properties"]["blob"]) == 1536 * 1024 for i in big)
    stats = mock_api.stats()
    assert "400" not in stats["requests_by_status"], stats  # no body over 32 MiB was sent
    assert all(n <= 1000 for _m, _p, _s, n in mock_api.requests_log)
    account(mock_api, generator_ids(7, count), dead, summary.accepted)
    record("oversized events, limit raised to 32 MiB - 64", events=count, dead_lettered=len(dead),
           sent_1_5mib=len(big), over_32mib=len(huge), lost=0, requests_400=0,
           largest_event_mib=round(max(len(orjson.dumps(stored[i])) for i in big) / MIB, 2))
