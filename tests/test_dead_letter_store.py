"""Dead letters in shared, durable places: a real S3-compatible server (MinIO, started by
``scripts/minio.sh``) through Beam's S3 filesystem, a local folder, and a Kafka topic on the
real broker — each written by the real pipeline, read back with independent clients, and
replayed so that a second replay is a no-op."""

from __future__ import annotations

import collections
import uuid

import apache_beam as beam
import orjson
import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from flexprice_beam.cli import main as cli_main
from flexprice_beam.core.config import DeadLetterOutput
from flexprice_beam.io.dead_letter import WriteDeadLetters
from flexprice_beam.launch.runner import run
from tests.store_helpers import letters_in, minio_running, s3_args, s3_objects
from tests.support import config_file, kafka_input, make_config


@pytest.fixture(scope="module")
def minio():
    with minio_running() as env:
        yield env


def _with_dead_letters(cfg, **dead):
    out = cfg.output.model_copy(update={"dead_letter": DeadLetterOutput(**dead)})
    return cfg.model_copy(update={"output": out})


def _ingest_requests(mock) -> int:
    return sum(1 for r in mock.requests_log if r.path.startswith("/v1/events"))


@pytest.mark.s3
def test_letters_land_in_s3_through_the_real_pipeline_and_replay_from_there(
        minio, mock_api, tmp_path, capsys):
    prefix = f"run-{uuid.uuid4().hex[:8]}"
    url = f"s3://{minio['FLEXPRICE_S3_BUCKET']}/{prefix}"
    mock_api.set_faults({"reject_every_nth": 15})  # delivery letters (400)
    cfg = _with_dead_letters(make_config(mock_api, tmp_path, count=600,
                                         customers=["cust_a", "cust_b", ""]), path=url)
    summary = run(cfg, s3_args(minio))
    assert summary.ok and summary.balanced
    objects = s3_objects(minio, prefix + "/")
    letters = letters_in(objects)
    stages = collections.Counter(d["stage"] for d in letters)
    assert stages["validation"] > 100 and stages["delivery"] > 0  # customer "" is invalid
    assert len(letters) == summary.dead_lettered
    valid = 600 - stages["validation"]
    assert not [k for k in objects if "/.tmp/" in k], "a temporary object was left behind"
    delivered = {e["event_id"] for e in mock_api.events()}
    dead = {d["event"]["event_id"] for d in letters if d["stage"] == "delivery"}
    assert len(delivered) + len(dead) == valid and not delivered & dead

    mock_api.set_faults()  # the cause is fixed
    path = config_file(cfg, tmp_path / "run.yaml")
    assert cli_main(["replay-dead-letters", "-c", str(path), "--stage", "delivery",
                     "--", *s3_args(minio)]) == 0
    assert f"accepted:       {len(dead)}" in capsys.readouterr().out
    assert {e["event_id"] for e in mock_api.events()} == delivered | dead
    left = letters_in(s3_objects(minio, prefix + "/"))
    assert collections.Counter(d["stage"] for d in left) == {"validation": stages["validation"]}

    before = _ingest_requests(mock_api)
    assert cli_main(["replay-dead-letters", "-c", str(path), "--stage", "delivery",
                     "--path", f"{url}/dead-letters-*.jsonl", "--", *s3_args(minio)]) == 0
    assert _ingest_requests(mock_api) == before, "a second replay is a no-op"
    assert "replayed:       0" in capsys.readouterr().out


def _letters(n: int) -> list[dict]:
    return [{"stage": "delivery", "status": 400, "reason": "HTTP 400", "field": None,
             "event": {"event_name": "api.request", "external_customer_id": "c",
                       "event_id": f"ev-{i}", "timestamp": "2026-01-01T00:00:00.000Z",
                       "properties": {"pad": "x" * 200}},
             "record": None, "origin": {"generator_index": i}, "record_id": f"gen-{i}",
             "time": "2026-01-01T00:00:00.000Z"} for i in range(n)]


class _FailAt(beam.DoFn):
    """Fails the bundle after the writer took ``n`` letters (a crash mid-bundle)."""

    def __init__(self, n: int):
        self._n = n

    def process(self, letter):
        if int(letter["event"]["event_id"].split("-")[1]) == self._n:
            raise RuntimeError("worker crashed mid-bundle")
        yield letter


def _write(url: str, letters: list[dict], options: list[str], fail_at: int | None = None):
    with beam.Pipeline(options=PipelineOptions(options)) as p:
        written = (p | beam.Create(letters, reshuffle=False)
                   | WriteDeadLetters(DeadLetterOutput(path=url)))
        if fail_at is not None:
            _ = written | beam.ParDo(_FailAt(fail_at))


@pytest.mark.parametrize("where", ["local", pytest.param("s3", marks=pytest.mark.s3)])
def test_a_failing_bundle_leaves_no_visible_partial_file(where, tmp_path, request):
    """Atomicity: 2,000 letters (~600 kB) in one bundle; the bundle fails after 1,500 were
    written. Nothing is visible afterwards (no torn file); the retried bundle then commits one
    whole file with every letter."""
    letters = _letters(2000)
    if where == "s3":
        env = request.getfixturevalue("minio")
        prefix = f"torn-{uuid.uuid4().hex[:8]}"
        url, options = f"s3://{env['FLEXPRICE_S3_BUCKET']}/{prefix}", s3_args(env)

        def visible():
            objects = s3_objects(env, prefix + "/")
            return {k: v for k, v in objects.items() if "/.tmp/" not in k}, objects
    else:
        url, options = str(tmp_path / "dl"), []

        def visible():
            files = {str(f): f.read_bytes() for f in (tmp_path / "dl").glob("*.jsonl")}
            return files, files

    with pytest.raises(Exception, match="worker crashed mid-bundle"):
        _write(url, letters, options, fail_at=1500)
    shown, everything = visible()
    assert shown == {}, f"a partial file is visible: {list(shown)}"
    if where == "s3":
        assert everything == {}, "an unfinished upload must not be an object"

    _write(url, letters, options)  # the retry
    shown, _ = visible()
    assert len(shown) == 1
    body = next(iter(shown.values()))
    assert body.endswith(b"\n")
    assert [orjson.loads(line) for line in body.splitlines()] == letters


@pytest.mark.kafka
def test_dead_letter_topic_carries_key_value_and_headers_and_replays_once(
        broker, mock_api, tmp_path, capsys):
    from kafka import KafkaConsumer

    from tests.kafka_helpers import new_topic

    bootstrap = broker.get("KAFKA_BOOTSTRAP_PLAINTEXT", "127.0.0.1:19092")
    topic = new_topic(2, bootstrap)
    mock_api.set_faults({"reject_every_nth": 10})
    cfg = _with_dead_letters(make_config(mock_api, tmp_path, count=300,
                                         customers=["cust_a", ""]),
                             path=None, kafka={"addresses": [bootstrap], "topic": topic})
    summary = run(cfg)
    assert summary.ok and summary.balanced and summary.dead_lettered > 100
    # a mapping failure has no event: its key is the record id
    mapping = {**_letters(1)[0], "stage": "mapping", "event": None, "status": None,
               "record_id": "kafka-in-0-42", "origin": {"topic": "in", "partition": 0,
                                                          "offset": 42}}
    _write_topic(cfg.output.dead_letter, [mapping])

    consumer = KafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                             consumer_timeout_ms=5000, group_id=None)
    records = list(consumer)
    consumer.close()
    assert len(records) == summary.dead_lettered + 1
    for rec in records:
        letter = orjson.loads(rec.value)
        headers = dict(rec.headers)
        want_key = (letter["event"] or {}).get("event_id") or letter["record_id"]
        assert rec.key == want_key.encode()
        assert headers["stage"] == letter["stage"].encode()
        assert headers["status"] == ("" if letter["status"] is None
                                     else str(letter["status"])).encode()
        assert headers["reason"] == letter["reason"].encode()[:4096]
        assert headers["__connect.errors.stage"] == letter["stage"].encode()
    by_key = {r.key: dict(r.headers) for r in records}
    assert by_key[b"kafka-in-0-42"]["__connect.errors.offset"] == b"42"
    dead = {orjson.loads(r.value)["event"]["event_id"] for r in records
            if orjson.loads(r.value)["stage"] == "delivery"}
    valid = 300 - sum(orjson.loads(r.value)["stage"] == "validation" for r in records)
    assert dead and len(mock_api.events()) + len(dead) == valid

    mock_api.set_faults()
    path = config_file(cfg, tmp_path / "run.yaml")
    group = f"replay-{uuid.uuid4().hex[:6]}"
    assert cli_main(["replay-dead-letters", "-c", str(path), "--group", group,
                     "--stage", "delivery"]) == 0
    assert f"accepted:       {len(dead)}" in capsys.readouterr().out
    assert len({e["event_id"] for e in mock_api.events()}) == valid
    before = _ingest_requests(mock_api)
    assert cli_main(["replay-dead-letters", "-c", str(path), "--group", group]) == 0
    assert _ingest_requests(mock_api) == before, "a second replay is a no-op"
    assert "replayed:       0" in capsys.readouterr().out


def _write_topic(cfg: DeadLetterOutput, letters: list[dict]) -> None:
    with beam.Pipeline() as p:
        _ = p | beam.Create(letters) | WriteDeadLetters(cfg)


@pytest.mark.kafka
def test_input_offsets_wait_until_the_topic_acknowledged_the_letters(broker, expansion,
                                                                     mock_api, tmp_path):
    """The dead-letter topic refuses every letter (``max.message.bytes`` 100, enforced by the
    broker): the run fails naming the topic and commits no input offset. With the limit
    lifted, the re-run puts every letter on the topic and commits every partition's end."""
    from kafka import KafkaAdminClient, KafkaConsumer
    from kafka.admin import ConfigResource, ConfigResourceType, NewTopic

    from tests.kafka_helpers import committed, good, new_topic, produce

    bootstrap = broker.get("KAFKA_BOOTSTRAP_PLAINTEXT", "127.0.0.1:19092")
    topic, dlq = new_topic(2, bootstrap), f"dlq-{uuid.uuid4().hex[:8]}"
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    admin.create_topics([NewTopic(dlq, 1, 1, topic_configs={"max.message.bytes": "100"})])
    sent = produce(topic, [good(i) for i in range(200)], bootstrap)
    ends = {p: 1 + max(o for q, o, _ in sent if q == p) for p in {p for p, _, _ in sent}}
    mock_api.set_faults({"reject_every_nth": 10})
    cfg = _with_dead_letters(
        make_config(mock_api, tmp_path, input_=kafka_input(
            topic, bootstrap, max_records=200, max_read_time="20s")),
        path=None, kafka={"addresses": [bootstrap], "topic": dlq})
    try:
        failed = run(cfg)
        assert not failed.ok and f"cannot write dead letters to Kafka topic {dlq}" in (
            failed.error or ""), failed.render()
        assert committed(f"g-{topic}", topic) == {}, "offsets committed ahead of the letters"

        admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, dlq,
                                            configs={"max.message.bytes": "1048588"})])
        summary = run(cfg)
        assert summary.ok and summary.dead_lettered > 0, summary.render()
        assert committed(f"g-{topic}", topic) == ends
        consumer = KafkaConsumer(dlq, bootstrap_servers=bootstrap, group_id=None,
                                 auto_offset_reset="earliest", consumer_timeout_ms=5000)
        on_topic = {orjson.loads(r.value)["record_id"] for r in consumer}
        consumer.close()
        dead = {e for e in (f"kafka-{topic}-{p}-{o}" for p, o, _ in sent)} - {
            e["event_id"] for e in mock_api.events()}
        assert dead and on_topic == dead
    finally:
        admin.delete_topics([topic, dlq])
        admin.close()


@pytest.mark.kafka
def test_dead_letter_topic_over_sasl_ssl(broker):
    """``output.dead_letter.kafka`` takes the tls/sasl keys of ``input.kafka``."""
    from kafka import KafkaConsumer

    from tests.kafka_helpers import new_topic

    dlq = new_topic(1, broker["KAFKA_BOOTSTRAP_PLAINTEXT"])
    cfg = DeadLetterOutput(path=None, kafka={
        "addresses": [broker["KAFKA_BOOTSTRAP_SASL_SSL"]], "topic": dlq,
        "tls": {"enabled": True, "ca_file": broker["KAFKA_CA_PEM"]},
        "sasl": {"mechanism": "SCRAM-SHA-512", "user": broker["KAFKA_SASL_USERNAME"],
                 "password": broker["KAFKA_SASL_PASSWORD"]}})
    letters = _letters(5)
    _write_topic(cfg, letters)
    consumer = KafkaConsumer(dlq, bootstrap_servers=broker["KAFKA_BOOTSTRAP_PLAINTEXT"],
                             group_id=None, auto_offset_reset="earliest",
                             consumer_timeout_ms=5000)
    got = sorted((orjson.loads(r.value) for r in consumer), key=lambda d: d["record_id"])
    consumer.close()
    assert got == sorted(letters, key=lambda d: d["record_id"])
