"""io/kafka.py's one offset-commit policy, chosen from the runner's capabilities
(core/capabilities.py) rather than its name."""

from __future__ import annotations

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from flexprice_beam.core.capabilities import RunnerCapabilities
from flexprice_beam.io.kafka import OffsetCommit
from flexprice_beam.launch.prism import LocalPrismRunner
from flexprice_beam.pipelines.collector import LOCAL_ENGINE, LOCAL_PRISM, offset_commit

#: Flink and Spark (PortableRunner to their job servers), Dataflow: finalize checkpoints;
#: Prism (no stable input) and the in-process engines do not.
RUNNERS = {"FlinkRunner": True, "PortableRunner": True, "DataflowRunner": True,
           "SparkRunner": True, LOCAL_PRISM: False, "PrismRunner": False, LOCAL_ENGINE: False,
           "DirectRunner": False, "BundleBasedDirectRunner": False}


def options(*args: str) -> PipelineOptions:
    return PipelineOptions(list(args))


@pytest.mark.parametrize("runner", list(RUNNERS))
def test_which_runners_finalize_checkpoints(runner):
    caps = RunnerCapabilities.of(runner, options("--streaming"))
    assert caps == RunnerCapabilities(streaming=True, finalizes_checkpoints=RUNNERS[runner])


def test_from_an_instance_a_class_or_the_options():
    streaming = options("--streaming", f"--runner={LOCAL_PRISM}")
    assert RunnerCapabilities.of(LocalPrismRunner(), streaming).finalizes_checkpoints is False
    assert RunnerCapabilities.of(LocalPrismRunner, streaming).finalizes_checkpoints is False
    assert RunnerCapabilities.of(None, streaming) == RunnerCapabilities(True, False)
    assert RunnerCapabilities.of(None, options("--runner=FlinkRunner")) == \
        RunnerCapabilities(False, True)


def test_streaming_comes_from_the_options():
    assert not RunnerCapabilities.of("FlinkRunner", options()).streaming
    assert RunnerCapabilities.of("FlinkRunner", options("--streaming")).streaming


@pytest.mark.parametrize(("caps", "policy"), [
    (RunnerCapabilities(streaming=True, finalizes_checkpoints=True), OffsetCommit.CHECKPOINT),
    (RunnerCapabilities(streaming=True, finalizes_checkpoints=False), OffsetCommit.TRACKER),
    (RunnerCapabilities(streaming=False, finalizes_checkpoints=True), OffsetCommit.AFTER_RUN),
    (RunnerCapabilities(streaming=False, finalizes_checkpoints=False), OffsetCommit.AFTER_RUN),
])
def test_the_policy_for_each_capability(caps, policy):
    assert OffsetCommit.for_runner(caps) is policy


@pytest.mark.parametrize(("args", "policy"), [
    # launch/flink.py: the Flink job server behind PortableRunner, streaming
    (["--runner=PortableRunner", "--job_endpoint=127.0.0.1:1", "--streaming"],
     OffsetCommit.CHECKPOINT),
    # launch/runner.py: unbounded Kafka input streams on our Prism
    ([f"--runner={LOCAL_PRISM}", "--streaming"], OffsetCommit.TRACKER),
    # bounded runs, on any runner: commit once after the run (CommitDeliveredOffsets)
    ([f"--runner={LOCAL_ENGINE}"], OffsetCommit.AFTER_RUN),
    (["--runner=FlinkRunner"], OffsetCommit.AFTER_RUN),
    ([f"--runner={LOCAL_PRISM}"], OffsetCommit.AFTER_RUN),
])
def test_the_collector_asks_the_policy_for_its_pipeline(args, policy):
    assert offset_commit(beam.Pipeline(options=options(*args))) is policy
