"""Prism, our local streaming runner, taking the Java expansion service's environments.

The expansion service started with ``--alsoStartLoopbackWorker`` (io/expansion.py) gives
KafkaIO an ``beam:env:anyof:v1`` environment (Docker, or the loopback Java worker). Beam
2.62's Prism cannot start that urn ("unimplemented"); FnApiRunner picks an alternative by
itself. So, like FnApiRunner, pick the EXTERNAL (loopback) alternative before submitting.
"""

from __future__ import annotations

from apache_beam.portability import common_urns
from apache_beam.runners.portability.prism_runner import PrismRunner
from apache_beam.transforms import environments


class LocalPrismRunner(PrismRunner):
    def run_portable_pipeline(self, pipeline, options):
        envs = pipeline.components.environments
        for env_id, env in list(envs.items()):
            if env.urn == common_urns.environments.ANYOF.urn:
                envs[env_id].CopyFrom(environments.resolve_anyof_environment(
                    env, common_urns.environments.EXTERNAL.urn))
        return super().run_portable_pipeline(pipeline, options)
