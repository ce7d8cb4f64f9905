"""The pipeline builds and translates for DataflowRunner offline (no Google contact).

``--dry_run=True --no_auth --sdk_location=container`` makes DataflowRunner produce the job
(its ``proto_pipeline`` and worker options) without submitting or staging anything.
"""

from __future__ import annotations

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import (
    GoogleCloudOptions,
    StandardOptions,
    WorkerOptions,
)
from apache_beam.portability import common_urns
from apache_beam.portability.api import beam_runner_api_pb2

from flexprice_beam.core.config import CollectorConfig
from flexprice_beam.launch.runner import pipeline_options
from flexprice_beam.pipelines import collector

IMAGE = "europe-docker.pkg.dev/demo-proj/flexprice/flexprice-beam:0.1.0"
DATAFLOW_ARGS = [
    "--runner=DataflowRunner", "--project=demo-proj", "--region=europe-west1",
    "--temp_location=gs://flexprice-beam-test/tmp",
    "--staging_location=gs://flexprice-beam-test/staging",
    "--dry_run=True", "--no_auth", "--sdk_location=container",
    f"--sdk_container_image={IMAGE}", "--max_num_workers=5",
    "--autoscaling_algorithm=THROUGHPUT_BASED",
    "--service_account_email=flexprice-beam@demo-proj.iam.gserviceaccount.com",
]
SECRET = "fp_dataflow_secret_123"


def _config(input_: dict) -> CollectorConfig:
    return CollectorConfig.model_validate({
        "input": input_,
        "output": {"flexprice": {"api_host": "api.cloud.flexprice.io",
                                 "api_key_env": "FLEXPRICE_API_KEY"}}})


def translate(cfg: CollectorConfig, extra: list[str]):
    p = beam.Pipeline(options=pipeline_options(DATAFLOW_ARGS + extra))
    collector.build(p, cfg)
    return p.run().job


def _names(job) -> list[str]:
    return [t.unique_name for t in job.proto_pipeline.components.transforms.values()]


def test_streaming_generator_job_translates_offline():
    job = translate(_config({"generate": {"count": 0}}), ["--streaming"])
    names = _names(job)
    for stage in ("Read/Generate", "Map/ParDo(MapRecords)", "Validate/ParDo(ValidateEvents)",
                  "WriteToFlexprice/PostBatches", "WriteDeadLetters/AppendJsonLines"):
        assert stage in names, stage
    assert job.proto.type.name == "JOB_TYPE_STREAMING"
    assert job.options.view_as(StandardOptions).streaming
    workers = job.options.view_as(WorkerOptions)
    assert workers.max_num_workers == 5 and workers.autoscaling_algorithm == "THROUGHPUT_BASED"
    gcp = job.options.view_as(GoogleCloudOptions)
    assert (gcp.project, gcp.region) == ("demo-proj", "europe-west1")
    assert gcp.service_account_email.startswith("flexprice-beam@")
    images = set()
    for env in job.proto_pipeline.components.environments.values():
        if env.urn == common_urns.environments.DOCKER.urn:
            images.add(beam_runner_api_pb2.DockerPayload.FromString(env.payload).container_image)
    assert images == {IMAGE}
    # Only the variable's name travels (tests/test_secrets.py searches the whole job).
    assert SECRET not in str(job.options.get_all_options())


def test_batch_job_translates_and_is_not_streaming():
    job = translate(_config({"generate": {"count": 1000}}), [])
    assert job.proto.type.name == "JOB_TYPE_BATCH"
    assert "WriteToFlexprice/PostBatches" in _names(job)


@pytest.mark.slow
@pytest.mark.kafka  # the Java expansion service: scripts/kafka.sh installs it
def test_streaming_kafka_job_translates_offline_with_the_java_read():
    """Kafka input expands through a local Java expansion service (the Beam IO expansion
    jar, as in the Flex Template launcher) into the Dataflow job, Java read included."""
    from flexprice_beam.io.expansion import ExpansionServiceError, LocalExpansionService

    cfg = CollectorConfig.model_validate({
        "input": {"kafka": {"addresses": ["broker-1:9092"], "topics": ["usage-events"],
                            "consumer_group": "flexprice-prod",
                            "sasl": {"mechanism": "PLAIN", "user": "svc",
                                     "password_env": "KAFKA_SASL_PASSWORD"}}},
        "output": {"flexprice": {"api_host": "api.cloud.flexprice.io",
                                 "api_key_env": "FLEXPRICE_API_KEY"}}})
    try:
        service = LocalExpansionService().start()
    except ExpansionServiceError as exc:
        pytest.fail(f"{exc} (scripts/kafka.sh install provides the jar)")
    try:
        job = translate(cfg, ["--streaming", f"--kafka_expansion_service={service.address}"])
    finally:
        service.stop()
    assert job.proto.type.name == "JOB_TYPE_STREAMING"
    comps = job.proto_pipeline.components
    names = _names(job)
    assert any(n.startswith("Read/ReadFromKafka/KafkaIO.Read") for n in names), names
    # streaming → commit_offset_in_finalize: KafkaIO adds its offset-commit step
    assert any("KafkaCommitOffset" in n for n in names)
    for stage in ("Read/DecodeAndBatch", "Map/ParDo(MapRecords)", "WriteToFlexprice/PostBatches"):
        assert any(n.startswith(stage) for n in names), stage
    java_envs = set()
    for env_id, env in comps.environments.items():
        if env.urn == common_urns.environments.DOCKER.urn:
            image = beam_runner_api_pb2.DockerPayload.FromString(env.payload).container_image
            if "beam_java" in image:
                java_envs.add(env_id)
    kafka_read = [t for t in comps.transforms.values()
                  if "KafkaIO.Read" in t.unique_name and t.environment_id in java_envs]
    assert kafka_read, "the Kafka read runs in a Java SDK container on Dataflow"
    assert SECRET not in str(job.options.get_all_options())
