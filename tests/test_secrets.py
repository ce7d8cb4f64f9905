"""Secrets stay out of every job graph (docs/runners.md "Secrets", docs/reliability.md).

* the Flexprice key is resolved on the worker in the sink's ``setup()`` from an environment
  variable, a file or Secret Manager; a literal ``api_key`` works locally and is refused for
  a remote runner with a message saying what to use;
* the Kafka SASL password goes through Kafka's EnvVarConfigProvider: the Java transform's
  consumer config holds ``${env:NAME}``, the Python DoFns only the name;
* the Dataflow job, built offline for the generator and for SASL_SSL Kafka input, is
  searched (raw, base64, zlib, bz2, recursively) for both secrets: 0 hits, while the same
  search finds a literal key in a local job graph (the search works).
"""

from __future__ import annotations

import json
import os
import uuid
from types import SimpleNamespace

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from flexprice_beam.core.config import ConfigError, FlexpriceOutput, KafkaInput, load_config_text
from flexprice_beam.io.kafka import java_consumer_config, python_client_config
from flexprice_beam.io.secrets import ENV_PROVIDER, SecretError, resolve_api_key
from flexprice_beam.launch.runner import pipeline_options, run
from flexprice_beam.pipelines import collector
from tests import secret_scan
from tests.support import kafka_input, make_config
from tests.test_dataflow_translation import DATAFLOW_ARGS, translate

HOST = "api.cloud.flexprice.io"


def _out(**source) -> FlexpriceOutput:
    return FlexpriceOutput.model_validate({"api_host": HOST, **source})


# ------------------------------------------------------------------ resolution on the worker


def test_the_key_comes_from_the_named_variable_when_resolved(monkeypatch):
    out = _out(api_key_env="FP_KEY_FOR_TEST")
    monkeypatch.setenv("FP_KEY_FOR_TEST", "fp_env_123\n")
    assert resolve_api_key(out) == "fp_env_123"
    monkeypatch.delenv("FP_KEY_FOR_TEST")
    with pytest.raises(SecretError, match="FP_KEY_FOR_TEST is not set"):
        resolve_api_key(out)


def test_the_key_comes_from_a_file_trimmed(tmp_path):
    f = tmp_path / "key"
    f.write_text("fp_file_456\n")
    assert resolve_api_key(_out(api_key_file=str(f))) == "fp_file_456"
    f.write_text("fp bad key")
    with pytest.raises(SecretError, match="spaces") as err:
        resolve_api_key(_out(api_key_file=str(f)))
    assert "fp bad key" not in str(err.value)
    with pytest.raises(SecretError, match="cannot read"):
        resolve_api_key(_out(api_key_file=str(tmp_path / "missing")))


class FakeSecretManager:
    """Stands in for google.cloud.secretmanager.SecretManagerServiceClient."""

    def __init__(self, secrets: dict[str, str]):
        self.secrets, self.asked = secrets, []

    def access_secret_version(self, *, name: str):
        self.asked.append(name)
        if name not in self.secrets:
            raise PermissionError(f"Permission denied on resource {name}")
        return SimpleNamespace(payload=SimpleNamespace(data=self.secrets[name].encode()))


def test_the_key_comes_from_secret_manager_through_the_client():
    name = "projects/p/secrets/flexprice-api-key/versions/3"
    fake = FakeSecretManager({name: "fp_sm_789\n"})
    assert resolve_api_key(_out(api_key_secret=name), secret_client=fake) == "fp_sm_789"
    assert fake.asked == [name]
    other = "projects/p/secrets/other/versions/latest"
    with pytest.raises(SecretError, match="Secret Manager refused .*other"):
        resolve_api_key(_out(api_key_secret=other), secret_client=fake)


def test_the_real_secret_manager_client_is_installed_and_pinned():
    from importlib.metadata import version
    from pathlib import Path

    from google.cloud import secretmanager

    assert hasattr(secretmanager, "SecretManagerServiceClient")
    pins = (Path(__file__).resolve().parents[1] / "requirements.txt").read_text()
    assert f"google-cloud-secret-manager=={version('google-cloud-secret-manager')}" in pins


def test_exactly_one_key_source_and_a_well_formed_secret_name():
    with pytest.raises(ValueError, match="exactly one of api_key, api_key_env"):
        _out()
    with pytest.raises(ValueError, match="exactly one"):
        _out(api_key="k", api_key_env="FLEXPRICE_API_KEY")
    with pytest.raises(ValueError, match="api_key_secret"):
        _out(api_key_secret="fp_live_123")
    with pytest.raises(ValueError, match="exactly one of password, password_env"):
        KafkaInput.model_validate({"addresses": ["b:1"], "topics": ["t"],
                                   "sasl": {"user": "u"}})


def test_a_local_run_reads_the_key_from_the_environment(mock_api, tmp_path, monkeypatch):
    cfg = make_config(mock_api, tmp_path, count=50)
    flex = cfg.output.flexprice.model_copy(update={"api_key": None,
                                                   "api_key_env": "FP_LOCAL_KEY"})
    cfg = cfg.model_copy(update={"output": cfg.output.model_copy(update={"flexprice": flex})})
    monkeypatch.setenv("FP_LOCAL_KEY", mock_api.api_key)
    summary = run(cfg)
    assert summary.ok and summary.accepted == 50, summary.render()
    assert len(mock_api.events()) == 50


# ------------------------------------------------------------------ literal secrets on remote runners


@pytest.mark.parametrize("runner", ["DataflowRunner", "PortableRunner", "FlinkRunner"])
def test_a_literal_key_or_password_is_refused_for_a_remote_runner(runner):
    cfg = load_config_text(
        "input: {kafka: {addresses: ['b:9092'], topics: [t], "
        "sasl: {mechanism: SCRAM-SHA-512, user: u, password: pw_literal}}}\n"
        f"output: {{flexprice: {{api_host: {HOST}, api_key: fp_literal}}}}\n")
    args = DATAFLOW_ARGS[1:] if runner == "DataflowRunner" else []
    p = beam.Pipeline(options=PipelineOptions([f"--runner={runner}", *args]))
    with pytest.raises(ConfigError) as err:
        collector.build(p, cfg)
    text = str(err.value)
    assert runner in text and "job graph" in text
    assert "output.flexprice.api_key: use api_key_env: FLEXPRICE_API_KEY" in text
    assert "api_key_file" in text and "api_key_secret: projects/" in text
    assert "input.kafka.sasl.password: use password_env: KAFKA_SASL_PASSWORD" in text
    assert "fp_literal" not in text and "pw_literal" not in text


def test_a_literal_key_still_works_locally():
    cfg = load_config_text(f"input: {{generate: {{count: 1}}}}\n"
                           f"output: {{flexprice: {{api_host: {HOST}, api_key: fp_local}}}}\n")
    p = beam.Pipeline(options=pipeline_options([]))
    collector.build(p, cfg)  # FnApiRunner: no refusal


# ------------------------------------------------------------------ Kafka: a reference only


def _sasl_input(**sasl) -> KafkaInput:
    return KafkaInput.model_validate({
        "addresses": ["127.0.0.1:19095"], "topics": ["t"],
        "sasl": {"mechanism": "SCRAM-SHA-512", "user": "flexprice", **sasl},
        "tls": {"enabled": True, "ca_file": "/tmp/ca.pem"}})


def test_the_java_consumer_config_names_the_variable_and_kafka_s_provider(monkeypatch):
    monkeypatch.setenv("KAFKA_PW_FOR_TEST", "pw-from-env")
    conf = java_consumer_config(_sasl_input(password_env="KAFKA_PW_FOR_TEST"))
    assert conf["config.providers"] == "env"
    assert conf["config.providers.env.class"] == ENV_PROVIDER
    assert 'password="${env:KAFKA_PW_FOR_TEST}"' in conf["sasl.jaas.config"]
    assert "pw-from-env" not in json.dumps(conf)
    # kafka-python (offset commits on the worker) reads the variable when it connects
    assert python_client_config(_sasl_input(password_env="KAFKA_PW_FOR_TEST"))[
        "sasl_plain_password"] == "pw-from-env"


@pytest.mark.kafka  # the jars scripts/kafka.sh install fetches with Maven
def test_env_var_config_provider_exists_in_the_kafka_clients_we_ship():
    """EnvVarConfigProvider came with kafka-clients 3.5; the jars on the classpath have it."""
    import zipfile
    from pathlib import Path

    # where scripts/kafka.sh and flink.sh cache them (FLEXPRICE_CACHE_DIR, else .cache)
    root = Path(os.environ.get("FLEXPRICE_CACHE_DIR") or Path(__file__).resolve().parents[1] / ".cache")
    jars = [j for j in root.rglob("kafka-clients-*.jar") if "m2" not in j.parts]
    assert jars, "scripts/kafka.sh install / scripts/flink.sh install provide kafka-clients"
    for jar in jars:
        major, minor = (int(x) for x in jar.stem.split("-")[-1].split(".")[:2])
        assert (major, minor) >= (3, 5), jar
        with zipfile.ZipFile(jar) as z:
            assert ENV_PROVIDER.replace(".", "/") + ".class" in z.namelist(), jar


# ------------------------------------------------------------------ the Dataflow job, searched


def _dataflow_job_blobs(job) -> dict[str, bytes]:
    """Everything the Dataflow job holds: the Beam pipeline proto (transform payloads,
    environments), the Dataflow Job message (steps, sdkPipelineOptions) and the options."""
    from apitools.base.py import encoding

    blobs = {"proto_pipeline": job.proto_pipeline.SerializeToString(),
             "job": encoding.MessageToJson(job.proto).encode(),
             "options": json.dumps(job.options.get_all_options(), default=str).encode()}
    comps = job.proto_pipeline.components
    for t in comps.transforms.values():
        blobs[f"transform:{t.unique_name}"] = t.spec.payload
    for eid, env in comps.environments.items():
        blobs[f"environment:{eid}"] = env.SerializeToString()
    return blobs


def _scan(blobs: dict[str, bytes], secrets: list[str]) -> list[str]:
    found = []
    for name, blob in blobs.items():
        found += [f"{name}: {h}" for h in secret_scan.find(blob, [s.encode() for s in secrets])]
    return found


def test_the_search_finds_a_literal_key_in_a_job_graph():
    """The positive control: a literal key (allowed locally) IS in the graph, pickled and
    compressed inside the sink's payload, and the search finds it there."""
    secret = f"fp_literal_{uuid.uuid4().hex}"
    cfg = load_config_text(f"input: {{generate: {{count: 1}}}}\n"
                           f"output: {{flexprice: {{api_host: {HOST}, api_key: {secret}}}}}\n")
    p = beam.Pipeline(options=pipeline_options([]))
    collector.build(p, cfg)
    graph = p.to_runner_api().SerializeToString()
    assert secret.encode() not in graph  # not in plain sight...
    hits = secret_scan.find(graph, [secret.encode()])
    assert hits and any("zlib" in h or "bz2" in h for h in hits), hits  # ...but there


def test_the_generator_dataflow_job_holds_no_key(monkeypatch):
    secret = f"fp_dataflow_{uuid.uuid4().hex}"
    monkeypatch.setenv("FLEXPRICE_API_KEY", secret)  # the launcher has it; the job must not
    cfg = load_config_text(
        "input: {generate: {count: 0}}\n"
        f"output: {{flexprice: {{api_host: {HOST}, api_key_env: FLEXPRICE_API_KEY}}}}\n")
    job = translate(cfg, ["--streaming"])
    blobs = _dataflow_job_blobs(job)
    assert any(k.startswith("transform:WriteToFlexprice/PostBatches") for k in blobs)
    assert _scan(blobs, [secret]) == []
    # what the sink carries instead: the variable's name, pickled in its payload
    assert _scan({k: v for k, v in blobs.items() if "PostBatches" in k}, ["FLEXPRICE_API_KEY"])


@pytest.mark.slow
@pytest.mark.kafka
def test_the_sasl_ssl_kafka_dataflow_job_holds_neither_secret(broker, expansion, monkeypatch):
    key, password = f"fp_dataflow_{uuid.uuid4().hex}", broker["KAFKA_SASL_PASSWORD"]
    monkeypatch.setenv("FLEXPRICE_API_KEY", key)
    monkeypatch.setenv("KAFKA_SASL_PASSWORD", password)
    cfg = load_config_text(f"""
input:
  kafka:
    addresses: ["{broker['KAFKA_BOOTSTRAP_SASL_SSL']}"]
    topics: [usage-events]
    consumer_group: flexprice-prod
    sasl: {{mechanism: SCRAM-SHA-512, user: flexprice, password_env: KAFKA_SASL_PASSWORD}}
    tls: {{enabled: true, ca_file: "{broker['KAFKA_CA_PEM']}"}}
output:
  flexprice: {{api_host: {HOST}, api_key_env: FLEXPRICE_API_KEY}}
""")
    job = translate(cfg, ["--streaming", f"--kafka_expansion_service={expansion}"])
    blobs = _dataflow_job_blobs(job)
    reads = [k for k in blobs if "KafkaIO.Read" in k]
    assert reads, sorted(blobs)
    assert _scan(blobs, [key, password]) == []
    # the reference is there instead: the Java read resolves it on the worker
    assert _scan({k: blobs[k] for k in reads}, ["${env:KAFKA_SASL_PASSWORD}"])
    assert DATAFLOW_ARGS[0] == "--runner=DataflowRunner"


@pytest.mark.kafka
def test_a_local_sasl_ssl_run_reads_the_password_from_the_environment(broker, expansion, mock_api,
                                                                     tmp_path, monkeypatch):
    """SCRAM over SASL_SSL with ``password_env``: the Java read (the expansion service's
    loopback worker) resolves ``${env:…}``; the offset commit (kafka-python) reads it too."""
    from tests.kafka_helpers import committed, good, new_topic, produce

    topic = new_topic()
    produce(topic, [good(i) for i in range(30)])
    # the expansion service JVM was started with this process's environment (conftest)
    assert broker["KAFKA_SASL_PASSWORD"] == os.environ.get("KAFKA_SASL_PASSWORD"), \
        "run with `eval \"$(scripts/kafka.sh env)\"` (scripts/test.sh does)"
    cfg = make_config(mock_api, tmp_path, input_=kafka_input(
        topic, broker["KAFKA_BOOTSTRAP_SASL_SSL"], max_records=30, max_read_time="60s",
        sasl={"mechanism": "SCRAM-SHA-512", "user": broker["KAFKA_SASL_USERNAME"],
              "password_env": "KAFKA_SASL_PASSWORD"},
        tls={"enabled": True, "ca_file": broker["KAFKA_CA_PEM"]}))
    summary = run(cfg)
    assert summary.ok and summary.accepted == 30, summary.render()
    assert sum(committed(f"g-{topic}", topic).values()) == 30


def test_a_local_run_with_an_unset_key_variable_fails_before_starting(mock_api, tmp_path,
                                                                      monkeypatch):
    cfg = make_config(mock_api, tmp_path, count=5)
    flex = cfg.output.flexprice.model_copy(update={"api_key": None, "api_key_env": "FP_UNSET_K"})
    cfg = cfg.model_copy(update={"output": cfg.output.model_copy(update={"flexprice": flex})})
    monkeypatch.delenv("FP_UNSET_K", raising=False)
    summary = run(cfg)
    assert summary.error == ("output.flexprice.api_key_env (FP_UNSET_K): environment variable "
                             "FP_UNSET_K is not set on this worker")
    assert mock_api.events() == []


@pytest.mark.slow
@pytest.mark.kafka
def test_the_search_finds_a_literal_password_in_the_java_read(broker, expansion):
    """The positive control for Java payloads: a literal SASL password (allowed locally) is
    in the expanded KafkaIO DoFns (Java-serialized, Snappy-compressed); the search finds it."""
    password = f"pw_literal_{uuid.uuid4().hex}"
    cfg = load_config_text(f"""
input:
  kafka:
    addresses: ["{broker['KAFKA_BOOTSTRAP_SASL_SSL']}"]
    topics: [t]
    sasl: {{mechanism: SCRAM-SHA-512, user: flexprice, password: {password}}}
output:
  flexprice: {{api_host: {HOST}, api_key_env: FLEXPRICE_API_KEY}}
""")
    p = beam.Pipeline(options=pipeline_options(["--streaming",
                                                f"--kafka_expansion_service={expansion}"]))
    collector.build(p, cfg)
    comps = p.to_runner_api().components
    java = {f"transform:{t.unique_name}": t.spec.payload for t in comps.transforms.values()
            if "KafkaIO" in t.unique_name}
    assert _scan(java, [password])
    # and inside the Snappy-compressed Java DoFns (the other payloads of the read)
    decoded = [out for blob in java.values() for _, out in secret_scan._snappy_streams(blob)]
    assert decoded and any(b"org.apache.beam.sdk.io.kafka" in d for d in decoded)


def test_the_search_reads_every_encoding_nested():
    import base64
    import bz2
    import zlib

    import pyarrow

    secret = b"s3cr3t-value-123"
    raw = b"prefix " + secret
    snappy = pyarrow.Codec("snappy").compress(raw, asbytes=True)
    framed = b"\x82SNAPPY\x00" + (1).to_bytes(4, "big") * 2 + len(snappy).to_bytes(4, "big") + snappy
    # (Snappy keeps a first occurrence literal, so check its decoder directly)
    assert [out for _, out in secret_scan._snappy_streams(b"junk" + framed + b"tail")] == [raw]
    for blob, via in ((b"\x0a\x03abc" + zlib.compress(raw), "zlib"), (bz2.compress(raw), "bz2"),
                      (base64.b64encode(zlib.compress(base64.b64encode(raw))), "b64/zlib")):
        hits = secret_scan.find(blob, [secret])
        assert hits and via.split("/")[0] in hits[0], (via, hits)
    assert secret_scan.find(zlib.compress(b"nothing here"), [secret]) == []
