"""Shared fixtures: the local Flexprice stand-in, and the real broker for tests marked
``kafka`` (configs and CLI runners: tests/support.py)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from tests.support import API_KEY

# Fuzzing depth (tests/test_fuzz.py): HYPOTHESIS_PROFILE=ci (default, ~300 examples per
# property) or full (10,000); docs/reliability.md has the figures of the last full run.
_FUZZ = dict(deadline=None, print_blob=True,
             suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("ci", max_examples=300, **_FUZZ)
settings.register_profile("full", max_examples=10_000, **_FUZZ)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


#: Fixtures that start a service needing more than Python, and the marker a test using one
#: must carry, so that ``pytest -m "not kafka and not flink"`` runs with Python alone
#: (README, "Testing"): the broker (Java, installed by Maven), the Flink cluster (Java),
#: MinIO (built with Go; left out below where it cannot be built).
SERVICE_FIXTURES = {"broker": "kafka", "expansion": "kafka", "cluster": "flink", "minio": "s3"}


#: Markers whose tools are not Python, each with how to tell the tool can be had here and how
#: to get it. Where it cannot (a machine with only Python), the marked tests are left out and
#: the summary says so, so ``pytest -m "not kafka and not flink"`` runs there as the README
#: says. ``scripts/test.sh`` (CI) installs every tool and sets FLEXPRICE_TEST_TOOLS=required:
#: there nothing is left out, and a missing tool fails its tests.
_ROOT = Path(__file__).resolve().parents[1]
_CACHE = Path(os.environ.get("FLEXPRICE_CACHE_DIR", _ROOT / ".cache"))
TOOLS = {
    "s3": (lambda: shutil.which("go") or (_CACHE / "bin" / "minio").exists(),
           "MinIO is not built and Go is missing (scripts/minio.sh install)"),
    "promtool": (lambda: shutil.which("promtool"),
                 "promtool is missing (scripts/prometheus.sh install: Debian's prometheus)"),
}
_LEFT_OUT: dict[str, tuple[int, str]] = {}


def pytest_collection_modifyitems(config, items):
    """Refuse a test that uses a service fixture without the service's marker: deselecting
    the marker must deselect every test that needs the service. Then leave out the tests of
    a tool this machine cannot have (``TOOLS``), unless the tools are required."""
    unmarked = sorted(
        f"{item.nodeid} uses `{name}` but is not marked {marker}"
        for item in items for name, marker in SERVICE_FIXTURES.items()
        if name in getattr(item, "fixturenames", ()) and item.get_closest_marker(marker) is None)
    if unmarked:
        raise pytest.UsageError("\n".join(unmarked))
    if os.environ.get("FLEXPRICE_TEST_TOOLS") == "required":
        return
    missing = {marker: why for marker, (present, why) in TOOLS.items() if not present()}
    out = [item for item in items if any(item.get_closest_marker(m) for m in missing)]
    if out:
        for marker, why in missing.items():
            n = sum(1 for item in out if item.get_closest_marker(marker))
            if n:
                _LEFT_OUT[marker] = (n, why)
        config.hook.pytest_deselected(items=out)
        gone = set(map(id, out))
        items[:] = [item for item in items if id(item) not in gone]


def pytest_terminal_summary(terminalreporter):
    for marker, (n, why) in _LEFT_OUT.items():
        terminalreporter.write_line(
            f"left out {n} test(s) marked {marker}: {why}; scripts/test.sh (CI) runs them",
            yellow=True)


@pytest.fixture(scope="session")
def _mock_server():
    from flexprice_mock.server import MockFlexprice

    server = MockFlexprice(api_key=API_KEY).start()
    yield server
    server.stop()


@pytest.fixture
def mock_api(_mock_server):
    """The stand-in, emptied and fault-free for each test."""
    _mock_server.reset()
    yield _mock_server
    _mock_server.reset()


# -- Kafka (tests marked `kafka`): the real local broker and one expansion service per module


@pytest.fixture(scope="session")
def _broker_session():
    """The broker for the whole session; stopped at its end if this started it, so a plain
    ``pytest`` leaves no broker holding the ports another checkout's ``.ci/run`` needs."""
    from tests.kafka_helpers import BROKER_STEPS, SCRIPT, service_running

    with service_running(SCRIPT, BROKER_STEPS) as env:
        yield env


@pytest.fixture(scope="module")
def broker(_broker_session):
    return _broker_session


@pytest.fixture
def expansion(broker):
    """One expansion service JVM per test, shared with its CLI subprocesses via the env.
    Per test, not per module: Beam 2.62's loopback Java worker serves one pipeline run (the
    next one's worker fails with RejectedExecutionException and the run waits forever)."""
    import os

    from flexprice_beam.io.expansion import ENV_ADDRESS, LocalExpansionService

    with LocalExpansionService() as service:
        old = os.environ.get(ENV_ADDRESS)
        os.environ[ENV_ADDRESS] = service.address
        yield service.address
        if old is None:
            os.environ.pop(ENV_ADDRESS, None)
        else:
            os.environ[ENV_ADDRESS] = old
