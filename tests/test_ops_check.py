"""flexprice-beam check: the seed's troubleshooting list against the stand-in, no events sent."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from flexprice_beam.cli import main as cli_main
from flexprice_beam.core.config import CollectorConfig
from flexprice_beam.ops import check
from tests.support import config_file, make_config


@pytest.fixture
def catalog(mock_api):
    """The stand-in with two metered features and two customers, nothing else."""
    mock_api.reset(catalog=True)
    mock_api.add_feature("API Requests", "api.request", "SUM", "value")
    mock_api.add_feature("Storage GB", "storage.gb", "SUM", "region")  # region is a string
    mock_api.add_feature("Logins", "login", "COUNT")
    mock_api.add_customer("cust_001")
    mock_api.add_customer("cust_002")
    yield mock_api
    mock_api.reset(catalog=True)


def _no_events_sent(mock) -> bool:
    return not any(r.path.startswith("/v1/events") for r in mock.requests_log)


def test_names_each_problem_and_sends_no_events(catalog, tmp_path, capsys):
    cfg = make_config(catalog, tmp_path, count=1000,
                      event_names=["api.request", "storage.gb", "api.requets"],
                      customers=["cust_001", "cust_002", "cust_999"])
    path = config_file(cfg, tmp_path / "check.yaml")
    assert cli_main(["check", "-c", str(path), "--sample", "60"]) == 1
    out = capsys.readouterr().out
    rows = {line.split()[2]: line for line in out.splitlines() if line.startswith("ERROR")}
    assert set(rows) == {"api.requets", "storage.gb", "cust_999"}, out
    assert "matches no meter" in rows["api.requets"] and "did you mean 'api.request'" in out
    assert "properties.region" in rows["storage.gb"] and "a string" in rows["storage.gb"]
    assert "SUM" in rows["storage.gb"]
    assert "does not exist" in rows["cust_999"]
    assert "api.request → properties.value  numeric" in out
    assert "60 record(s) sampled; 3 problem(s) found." in out
    assert _no_events_sent(catalog)


def test_clean_config_passes(catalog, tmp_path, capsys):
    cfg = make_config(catalog, tmp_path, count=50, event_names=["api.request", "login"],
                      customers=["cust_001", "cust_002"])
    path = config_file(cfg, tmp_path / "check.yaml")
    assert cli_main(["check", "-c", str(path)]) == 0
    out = capsys.readouterr().out
    assert "no problems found" in out and "ERROR" not in out
    assert _no_events_sent(catalog)


def test_bad_key_is_reported(catalog, tmp_path, capsys):
    cfg = make_config(catalog, tmp_path, count=5)
    path = config_file(cfg, tmp_path / "check.yaml", api_key="wrong-key")
    assert cli_main(["check", "-c", str(path)]) == 1
    out = capsys.readouterr().out
    assert "api_key" in out and "refused: HTTP 401" in out


def test_unreachable_api_is_reported(tmp_path):
    cfg = CollectorConfig.model_validate({
        "input": {"generate": {"count": 5}},
        "output": {"flexprice": {"api_host": "127.0.0.1:9", "api_key": "k", "scheme": "http",
                                 "timeout": "1s"}}})
    report = check.run_check(cfg)
    assert [f.detail.split(":")[0] for f in report.problems] == ["unreachable"]


def test_numeric_strings_with_stringify_are_a_warning(catalog, tmp_path, capsys):
    cfg = make_config(catalog, tmp_path, count=20, event_names=["api.request"],
                      customers=["cust_001"], pipeline={"stringify_properties": True})
    report = check.run_check(cfg, sample=20)
    assert report.problems == []
    warn = [f for f in report.findings if f.level == check.WARN]
    assert len(warn) == 1 and "properties.value" in warn[0].subject


def test_validation_and_missing_property_findings(catalog, tmp_path):
    cfg = make_config(catalog, tmp_path, count=10, event_names=["api.request"],
                      customers=["cust_001", ""], property_name="amount")
    report = check.run_check(cfg, sample=10)
    kinds = {(f.check, f.subject.split(" ")[0]) for f in report.problems}
    assert any(f.check == "validation" and "external_customer_id" in f.detail
               for f in report.problems)
    assert ("property", "api.request") in kinds
    assert any("missing in" in f.detail for f in report.problems if f.check == "property")


class _FakeConsumer:
    """kafka-python's KafkaConsumer, as far as sample_kafka uses it."""

    def __init__(self, **conf):
        self.conf = conf
        self._pos = {}
        self.records = [SimpleNamespace(topic="events", partition=0, offset=i,
                                        timestamp=1_700_000_000_000, key=b"k", value=v)
                        for i, v in enumerate([b'{"event_name":"api.request",'
                                               b'"external_customer_id":"cust_001",'
                                               b'"properties":{"value":3}}', b"not json"])]

    def partitions_for_topic(self, topic):
        return {0} if topic == "events" else None

    def assign(self, parts):
        self._parts = parts

    def seek_to_beginning(self, *parts):
        self._pos = {p: 0 for p in parts}

    def end_offsets(self, parts):
        return {p: len(self.records) for p in parts}

    def position(self, tp):
        return self._pos[tp]

    def poll(self, timeout_ms, max_records):
        (tp,) = self._parts
        start = self._pos[tp]
        recs = self.records[start:start + max_records]
        self._pos[tp] = start + len(recs)
        return {tp: recs}

    def close(self):
        pass


def test_kafka_sample_reads_from_the_beginning_without_a_group(monkeypatch):
    import kafka

    made = []

    def factory(**conf):
        made.append(_FakeConsumer(**conf))
        return made[-1]

    monkeypatch.setattr(kafka, "KafkaConsumer", factory)
    cfg = CollectorConfig.model_validate({
        "input": {"kafka": {"addresses": ["localhost:9092"], "topics": ["events"]}},
        "output": {"flexprice": {"api_host": "h", "api_key": "k"}}})
    records = check.sample_records(cfg, 10)
    assert made[0].conf["group_id"] is None and made[0].conf["enable_auto_commit"] is False
    assert [r.record_id for r in records] == ["kafka-events-0-0", "kafka-events-0-1"]
    assert records[0].value["event_name"] == "api.request" and records[1].error
    bad = cfg.model_copy(update={"input": cfg.input.model_copy(update={
        "kafka": cfg.input.kafka.model_copy(update={"topics": ["nope"]})})})
    with pytest.raises(check.SampleError, match="'nope' does not exist"):
        check.sample_records(bad, 10)
