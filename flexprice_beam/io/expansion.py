"""The Java expansion service that Beam's ``ReadFromKafka`` needs, without downloads.

Three ways, in order:

1. ``--kafka_expansion_service HOST:PORT`` (or ``FLEXPRICE_KAFKA_EXPANSION_SERVICE``): a
   running service, e.g. the one ``scripts/flink.sh`` starts for the Flink cluster
   (its Java environment is EMBEDDED in the TaskManagers).
2. Otherwise we start the cached jar ourselves (``scripts/kafka.sh install`` puts it at
   ``~/.apache_beam/cache/jars/``) with ``--alsoStartLoopbackWorker``, so the Java half of
   the read runs in that JVM: no Docker.  It lives as long as the run, in its own session
   (a terminal's Ctrl-C reaches only us), and dies with this process even on SIGKILL
   (PR_SET_PDEATHSIG), so no orphan JVM keeps reading (``LocalService``; Prism too).

With Beam 2.62 a loopback Java worker serves ONE pipeline run: a second run through the
same JVM hangs (its Java worker fails to start with RejectedExecutionException), so (2)
starts a fresh JVM per run, and a service given in (1) for local runs must be too.

Beam's own ``BeamJarExpansionService`` stops its service right after expansion when the
pipeline is not run inside a ``with`` block, which would take the loopback worker away.
"""

from __future__ import annotations

import atexit
import ctypes
import logging
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import apache_beam as beam

log = logging.getLogger("flexprice_beam.kafka")

JAR_NAME = f"beam-sdks-java-io-expansion-service-{beam.__version__}.jar"
ENV_ADDRESS = "FLEXPRICE_KAFKA_EXPANSION_SERVICE"
ENV_JAR = "BEAM_IO_EXPANSION_SERVICE_JAR"


class ServiceError(RuntimeError):
    pass


class ExpansionServiceError(ServiceError):
    pass


def find_jar() -> Path:
    candidates = [os.environ.get(ENV_JAR), Path.home() / ".apache_beam/cache/jars" / JAR_NAME,
                  Path(__file__).resolve().parents[2] / ".cache/jars" / JAR_NAME]
    for c in candidates:
        if c and Path(c).is_file():
            return Path(c)
    raise ExpansionServiceError(
        f"Kafka input needs Beam's Java expansion service jar ({JAR_NAME}) and none was found "
        f"in ${ENV_JAR} or ~/.apache_beam/cache/jars; run `scripts/kafka.sh install` first")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:
    try:
        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


class LocalService:
    """A helper process one run owns (a JVM, Prism): started, waited for, always stopped.

    It gets its own session, so a Ctrl-C in the terminal reaches only the collector, which
    then stops it in order; and it dies with the collector even on SIGKILL
    (PR_SET_PDEATHSIG; the collector starts it from its main thread).
    """

    what = "service"
    log_env = "FLEXPRICE_SERVICE_LOG"
    error: type[ServiceError] = ServiceError

    def __init__(self, port: int | None = None):
        self.port = port or free_port()
        self.address = f"localhost:{self.port}"
        self._proc: subprocess.Popen | None = None

    def command(self) -> list[str]:
        raise NotImplementedError

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def start(self, timeout: float = 120.0):
        log_path = Path(os.environ.get(self.log_env, os.devnull))
        out = open(log_path, "ab")  # noqa: SIM115 - owned by the child
        self._proc = subprocess.Popen(
            self.command(), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, preexec_fn=_die_with_parent)
        atexit.register(self.stop)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise self.error(
                    f"the {self.what} exited with {self._proc.returncode} "
                    f"({' '.join(self.command())}); set {self.log_env}=file to see why")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    log.info("%s ready on %s", self.what, self.address)
                    return self
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise self.error(f"the {self.what} did not open port {self.port}")

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(5)
        self._proc = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class LocalExpansionService(LocalService):
    """A JVM running the expansion service + loopback Java worker for one run."""

    what = "Kafka expansion service"
    log_env = "FLEXPRICE_EXPANSION_LOG"
    error = ExpansionServiceError

    def __init__(self, jar: Path | None = None, port: int | None = None):
        super().__init__(port)
        self.jar = jar or find_jar()

    def command(self) -> list[str]:
        return ["java", "-jar", str(self.jar), str(self.port), "--alsoStartLoopbackWorker"]
