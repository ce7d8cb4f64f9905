"""Boot one Beam Python SDK worker for the EXTERNAL worker pool (no Docker).

Beam's SDK containers start every worker through a Go "boot" binary that implements the
container contract: ask the provision service for the pipeline options, fetch the staged
artifacts (e.g. the pickled main session) into a semi-persistent directory, then run
``python -m apache_beam.runners.worker.sdk_worker_main`` with the endpoints in env vars.
``worker_pool_main`` without ``--container_executable`` skips all of that (it builds an
``SdkHarness`` directly: pipeline options, log level, pickler choice and
``--save_main_session`` are ignored and worker logs never reach the runner).

This script is that boot step in Python, using the repo's virtualenv as the "container"
image. It does NOT pip-install staged requirements / extra packages / setup.py tarballs:
the venv must already hold the project (it is the same venv that submits the job).
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile

import grpc
from apache_beam.portability import common_urns
from apache_beam.portability.api import (
    beam_artifact_api_pb2,
    beam_artifact_api_pb2_grpc,
    beam_provision_api_pb2,
    beam_provision_api_pb2_grpc,
    beam_runner_api_pb2,
    endpoints_pb2,
)
from google.protobuf import json_format, text_format

LOG = logging.getLogger("sdk_worker_boot")
NOT_INSTALLED = ("requirements.txt", "extra_packages.txt", "workflow.tar.gz", "dataflow_python_sdk.tar")


def _channel(url: str) -> grpc.Channel:
    return grpc.insecure_channel(
        url, options=[("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)]
    )


def _staged_name(dep: beam_runner_api_pb2.ArtifactInformation) -> str | None:
    if dep.role_urn != common_urns.artifact_roles.STAGING_TO.urn:
        return None
    payload = beam_runner_api_pb2.ArtifactStagingToRolePayload.FromString(dep.role_payload)
    return payload.staged_name


def fetch_artifacts(endpoint: str, deps, staged_dir: str, metadata) -> None:
    os.makedirs(staged_dir, exist_ok=True)
    if not deps:
        return
    stub = beam_artifact_api_pb2_grpc.ArtifactRetrievalServiceStub(_channel(endpoint))
    resolved = stub.ResolveArtifacts(
        beam_artifact_api_pb2.ResolveArtifactsRequest(artifacts=deps), metadata=metadata
    ).replacements
    for dep in resolved:
        name = _staged_name(dep)
        if not name:
            LOG.warning("skipping artifact with role %s", dep.role_urn)
            continue
        target = os.path.join(staged_dir, os.path.basename(name))
        with open(target + ".part", "wb") as out:
            for chunk in stub.GetArtifact(
                beam_artifact_api_pb2.GetArtifactRequest(artifact=dep), metadata=metadata
            ):
                out.write(chunk.data)
        os.replace(target + ".part", target)
        if os.path.basename(name) in NOT_INSTALLED:
            LOG.warning("staged %s is NOT installed; the venv is used as-is", name)
        else:
            LOG.info("staged artifact %s", name)


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    for flag in ("id", "logging_endpoint", "artifact_endpoint", "provision_endpoint", "control_endpoint"):
        p.add_argument("--" + flag, required=True)
    p.add_argument("--semi_persist_dir", default=None)
    args, _ = p.parse_known_args(argv)
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s %(levelname)s [boot {args.id}] %(message)s")

    md = [("worker_id", args.id)]
    info = (
        beam_provision_api_pb2_grpc.ProvisionServiceStub(_channel(args.provision_endpoint))
        .GetProvisionInfo(beam_provision_api_pb2.GetProvisionInfoRequest(), metadata=md)
        .info
    )

    base = args.semi_persist_dir or os.environ.get("FLEXPRICE_SDK_WORK_DIR") or tempfile.gettempdir()
    os.makedirs(base, exist_ok=True)
    work = tempfile.mkdtemp(prefix=f"beam-sdk-{args.id}-", dir=base)
    try:
        fetch_artifacts(args.artifact_endpoint, list(info.dependencies), os.path.join(work, "staged"), md)

        def desc(url: str) -> str:
            return text_format.MessageToString(endpoints_pb2.ApiServiceDescriptor(url=url))

        env = dict(os.environ)
        env.update(
            WORKER_ID=args.id,
            PIPELINE_OPTIONS=json_format.MessageToJson(info.pipeline_options),
            SEMI_PERSISTENT_DIRECTORY=work,
            LOGGING_API_SERVICE_DESCRIPTOR=desc(args.logging_endpoint),
            CONTROL_API_SERVICE_DESCRIPTOR=desc(args.control_endpoint),
            RUNNER_CAPABILITIES=" ".join(info.runner_capabilities),
        )
        if info.HasField("status_endpoint"):
            env["STATUS_API_SERVICE_DESCRIPTOR"] = text_format.MessageToString(info.status_endpoint)
        LOG.info("starting sdk_worker_main (work dir %s)", work)
        child = subprocess.Popen(
            [sys.executable, "-m", "apache_beam.runners.worker.sdk_worker_main"], env=env
        )

        def forward(signum, _frame):
            child.send_signal(signum)

        signal.signal(signal.SIGTERM, forward)
        signal.signal(signal.SIGINT, forward)
        rc = child.wait()
        LOG.info("sdk_worker_main exited with %s", rc)
        return rc
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
