"""Config: env interpolation, durations and sizes, and errors that name the field."""

import pytest

from flexprice_beam.core.config import (
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


# -- interpolation inside parsed values: no secret can change the YAML structure (issue 15)

SASL = """
input:
  kafka:
    addresses: ["${BROKERS:localhost:9092}"]
    topics: [events]
    sasl:
      mechanism: PLAIN
      user: "${SASL_USER}"
      password: ${SASL_PASSWORD}
output:
  flexprice:
    api_host: ${HOST:api.cloud.flexprice.io}
    api_key: ${KEY}   # a comment after the placeholder
    timeout: ${TIMEOUT:10s}
"""

SECRETS = [
    "abc #def",  # was cut at the '#' (a YAML comment) and passed lint as "abc"
    "p@ss: word",  # ': ' made a mapping, broke the file
    "it's \"quoted\"",
    "line1\nline2",
    "${NOT_EXPANDED_AGAIN}",  # an expanded value is never expanded again
    "пароль-密码-🔑",
    "  padded  ",
    "- [a, {b: c}] &anchor *alias !!tag |",
]


@pytest.mark.parametrize("secret", SECRETS)
def test_secrets_stay_exactly_one_value(secret):
    cfg = load_config_text(SASL, env={"SASL_USER": secret, "SASL_PASSWORD": secret,
                                      "KEY": "fp_x#y'z\"w", "NOT_EXPANDED_AGAIN": "leak"})
    sasl = cfg.input.kafka.sasl
    assert sasl.user == secret and sasl.password.get_secret_value() == secret
    assert cfg.output.flexprice.api_key.get_secret_value() == "fp_x#y'z\"w"
    assert cfg.input.kafka.addresses == ["localhost:9092"]
    assert cfg.output.flexprice.timeout == 10.0


def test_defaults_may_hold_colons_and_keys_are_never_expanded():
    text = BASE + "pipeline:\n  mapping:\n    event_name: \"'${NAME:a:b}'\"\n" \
                  "    ${NOT_A_KEY}: \"'x'\"\n"
    cfg = load_config_text(text, env={"HOST": "h", "KEY": "k", "NOT_A_KEY": "oops"})
    assert cfg.pipeline.mapping == {"event_name": "'a:b'", "${NOT_A_KEY}": "'x'"}


def test_an_expanded_value_is_still_typed_and_errors_name_the_field():
    cfg = load_config_text(BASE + "    batching: {count: \"${N:250}\"}\n",
                           env={"HOST": "h", "KEY": "k"})
    assert cfg.output.flexprice.batching.count == 250
    with pytest.raises(ConfigError) as err:
        load_config_text(BASE + "    timeout: ${T}\n", env={"HOST": "h", "KEY": "k", "T": "soon #1"})
    assert "output.flexprice.timeout: Value error, invalid duration 'soon #1'" in str(err.value)
    with pytest.raises(ConfigError, match="output.flexprice.api_key: is empty"):
        load_config_text(BASE, env={"HOST": "h", "KEY": ""})


def test_an_unquoted_placeholder_in_flow_style_gets_a_hint():
    text = "input: {generate: {count: 1}}\noutput: {flexprice: {api_host: h, api_key: ${K}}}\n"
    with pytest.raises(ConfigError, match=r'quote it: "\$\{VAR\}"'):
        load_config_text(text, env={"K": "k"})
    assert load_config_text(text.replace("${K}", '"${K}"'), env={"K": "k"})


def test_a_yaml_error_does_not_show_the_secret():
    with pytest.raises(ConfigError) as err:
        load_config_text(BASE + "  oops: [\n", env={"HOST": "h", "KEY": "super-secret-9"})
    assert "not valid YAML" in str(err.value) and "super-secret-9" not in str(err.value)


# -- retry: bounded by time by default; a count limit is opt-in (issue 15)


def test_default_retry_is_bounded_by_time_only():
    from flexprice_beam.core.config import RetryConfig
    from flexprice_beam.io.flexprice.policy import RetryPolicy

    cfg = RetryConfig()
    assert cfg.max_attempts is None and cfg.max_elapsed == 600.0
    policy = RetryPolicy.from_config(cfg)
    import time

    now = time.monotonic()
    assert not policy.gives_up(10_000, now, 1.0)  # any number of tries within 10 minutes
    assert policy.gives_up(2, now - 599.5, 1.0)  # but never past max_elapsed
    assert RetryPolicy.from_config(RetryConfig(max_attempts=3)).gives_up(3, now, 0.1)


def test_dead_letters_go_to_a_url_a_topic_or_both(monkeypatch):
    monkeypatch.setenv("FLEXPRICE_API_HOST", "api.cloud.flexprice.io")
    monkeypatch.setenv("FLEXPRICE_API_KEY", "fp_xxx")
    monkeypatch.setenv("KAFKA_BROKER", "a:9092,b:9092")
    dead = load_config("examples/kafka-shared-dead-letters.yaml").output.dead_letter
    assert dead.path == "s3://flexprice-dead-letters/collector"
    assert dead.kafka.addresses == ["a:9092", "b:9092"]
    assert dead.kafka.topic == "events-dead-letters" and dead.kafka.sasl is None
    env = {"HOST": "h", "KEY": "k"}
    topic_only = BASE + "  dead_letter: {path: null, kafka: {addresses: [x:1], topic: t}}\n"
    assert load_config_text(topic_only, env=env).output.dead_letter.path is None
    with pytest.raises(ConfigError, match=r"output.dead_letter: .*a 'path' or a 'kafka' topic"):
        load_config_text(BASE + "  dead_letter: {path: null}\n", env=env)
    with pytest.raises(ConfigError, match=r"output.dead_letter.kafka.topic"):
        load_config_text(BASE + "  dead_letter: {kafka: {addresses: [x:1]}}\n", env=env)
