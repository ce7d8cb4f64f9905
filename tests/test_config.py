"""Config: env interpolation, durations and sizes, and errors that name the field."""

import pytest

from flexprice_beam.config import (
    ConfigError,
    load_config,
    load_config_text,
    parse_duration,
    parse_size,
)

BASE = """
input:
  generate: {count: 10}
output:
  flexprice:
    api_host: ${HOST}
    api_key: ${KEY}
"""


def test_examples_generate_yaml_loads_with_env(monkeypatch):
    monkeypatch.setenv("FLEXPRICE_API_HOST", "api.cloud.flexprice.io")
    monkeypatch.setenv("FLEXPRICE_API_KEY", "fp_xxx")
    cfg = load_config("examples/generate.yaml")
    out = cfg.output.flexprice
    assert out.base_url == "https://api.cloud.flexprice.io"
    assert out.batching.count == 500 and out.batching.byte_size == 4_000_000
    assert out.retry.initial_backoff == pytest.approx(0.2) and out.retry.max_elapsed == 600
    assert cfg.input.generate.count == 100


def test_env_default_and_missing():
    cfg = load_config_text(BASE.replace("${HOST}", "${NOPE_HOST:localhost:8080}"),
                           env={"KEY": "k"})
    assert cfg.output.flexprice.api_host == "localhost:8080"
    with pytest.raises(ConfigError, match=r"output.flexprice.api_key: is empty"):
        load_config_text(BASE, env={"HOST": "h"})


@pytest.mark.parametrize("text,value", [("50ms", 0.05), ("1s", 1.0), ("2m", 120.0), (3, 3.0),
                                        ("1.5h", 5400.0), ("0s", 0.0)])
def test_durations(text, value):
    assert parse_duration(text) == pytest.approx(value)


@pytest.mark.parametrize("text,value", [("4MB", 4_000_000), ("1MiB", 1 << 20), (512, 512),
                                        ("32MiB", 32 << 20), ("10kb", 10_000)])
def test_sizes(text, value):
    assert parse_size(text) == value


@pytest.mark.parametrize("patch,path,reason", [
    ("    batching: {count: 5000}", "output.flexprice.batching.count", "less than or equal to 1000"),
    ("    timeout: soon", "output.flexprice.timeout", "invalid duration"),
    ("    mode: stream", "output.flexprice.mode", "'bulk' or 'single'"),
    ("    colour: blue", "output.flexprice.colour", "unknown key"),
    ("    batching: {byte_size: 64MiB}", "output.flexprice.batching.byte_size", "less than"),
])
def test_bad_values_name_the_field(patch, path, reason):
    with pytest.raises(ConfigError) as err:
        load_config_text(BASE + patch + "\n", env={"HOST": "h", "KEY": "k"})
    assert path in str(err.value) and reason in str(err.value)


def test_exactly_one_input():
    text = BASE.replace("  generate: {count: 10}", "  {}")
    with pytest.raises(ConfigError, match="exactly one input"):
        load_config_text(text.replace("  {}", "  generate: null"), env={"HOST": "h", "KEY": "k"})


def test_kafka_addresses_split_from_one_env_var():
    text = """
input:
  kafka:
    addresses: ["${BROKERS}"]
    topics: [events]
output: {flexprice: {api_host: h, api_key: k}}
"""
    cfg = load_config_text(text, env={"BROKERS": "a:9092, b:9092"})
    assert cfg.input.kafka.addresses == ["a:9092", "b:9092"]


def test_not_yaml_and_not_found(tmp_path):
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config_text("input: [", env={})
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "missing.yaml")


def test_secret_not_in_repr():
    cfg = load_config_text(BASE, env={"HOST": "h", "KEY": "super-secret-123"})
    assert "super-secret-123" not in repr(cfg)
    assert "super-secret-123" not in str(cfg.model_dump())


KAFKA = """
input:
  kafka:
    addresses: ["a:9092"]
    topics: [events]
    consumer_properties:
      {props}
output: {{flexprice: {{api_host: h, api_key: k}}}}
"""


def test_kafka_consumer_properties_pass_through_to_the_java_consumer():
    from flexprice_beam.io.kafka import java_consumer_config

    cfg = load_config_text(KAFKA.format(props="{max.poll.records: 2000, fetch.max.bytes: "
                                              "52428800, check.crcs: false}"), env={})
    conf = java_consumer_config(cfg.input.kafka)
    assert conf["max.poll.records"] == "2000" and conf["fetch.max.bytes"] == "52428800"
    assert conf["check.crcs"] == "false" and conf["enable.auto.commit"] == "false"


@pytest.mark.parametrize("prop,reason", [
    ("ssl.keystore.password: s3cret", "a secret does not go in consumer_properties"),
    ("ssl.key.password: s3cret", "a secret does not go in consumer_properties"),
    ("sasl.jaas.config: 'x required password=\"s3cret\";'", "a secret does not go in"),
    ("enable.auto.commit: true", "offsets are committed only behind delivery"),
    ("group.id: other", "set by input.kafka.consumer_group"),
])
def test_kafka_consumer_properties_refuse_secrets_and_owned_keys(prop, reason):
    with pytest.raises(ConfigError) as err:
        load_config_text(KAFKA.format(props=prop), env={})
    key = prop.split(":", 1)[0]
    assert f"input.kafka.consumer_properties.{key}: " in str(err.value)
    assert reason in str(err.value) and "s3cret" not in str(err.value)
