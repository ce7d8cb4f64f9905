"""Prism, the local streaming runner, started by us for one run instead of by Beam.

Beam's ``PrismRunner`` starts the ``prism`` binary itself and stops it from an ``atexit``
hook and a SIGINT handler it installs over ours.  Both went wrong for a person stopping a
run: on Ctrl-C that handler killed Prism while the SDK worker's gRPC streams were still
open (each thread printed a ``StatusCode.UNAVAILABLE`` traceback before our summary), and
a SIGTERM exit (``os._exit``, no atexit) left ``prism`` running, reparented to PID 1.

Here Prism is a ``LocalService``: its own session (the terminal's Ctrl-C reaches only the
collector), stopped in order when the run ends however it ends, and killed by the kernel
if the collector dies (PR_SET_PDEATHSIG).  The pipeline goes to it with ``--job_endpoint``;
``PrismRunner`` still picks the LOOPBACK environment, so our DoFns run in this process.

``LocalPrismRunner`` (our ``--runner``) also takes the Java expansion service's
environments: started with ``--alsoStartLoopbackWorker`` (io/expansion.py) it gives KafkaIO
a ``beam:env:anyof:v1`` environment (Docker, or the loopback Java worker), which Beam 2.62's
Prism cannot start ("unimplemented"); FnApiRunner picks an alternative by itself. So, like
FnApiRunner, it picks the EXTERNAL (loopback) alternative before submitting.
"""

from __future__ import annotations

from apache_beam.portability import common_urns
from apache_beam.runners.portability.prism_runner import PrismRunner
from apache_beam.transforms import environments

from flexprice_beam.io.expansion import LocalService, ServiceError


class PrismError(ServiceError):
    pass


class LocalPrism(LocalService):
    what = "Prism runner"
    log_env = "FLEXPRICE_PRISM_LOG"
    error = PrismError

    def __init__(self, binary: str, port: int | None = None):
        super().__init__(port)
        self.binary = binary

    def command(self) -> list[str]:
        return [self.binary, "--job_port", str(self.port), "--serve_http=false",
                "--log_level", "warn"]


class LocalPrismRunner(PrismRunner):
    def run_portable_pipeline(self, pipeline, options):
        envs = pipeline.components.environments
        for env_id, env in list(envs.items()):
            if env.urn == common_urns.environments.ANYOF.urn:
                envs[env_id].CopyFrom(environments.resolve_anyof_environment(
                    env, common_urns.environments.EXTERNAL.urn))
        return super().run_portable_pipeline(pipeline, options)
