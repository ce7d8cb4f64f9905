"""Shared fixtures: the local Flexprice stand-in, and the real broker for tests marked
``kafka`` (configs and CLI runners: tests/support.py)."""

from __future__ import annotations

import os

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
#: must carry, so that ``pytest -m "not kafka and not flink and not s3"`` runs with Python
#: alone (README, "Testing"): the broker (Java, installed by Maven), the Flink cluster
#: (Java), MinIO (built with Go).
SERVICE_FIXTURES = {"broker": "kafka", "expansion": "kafka", "cluster": "flink", "minio": "s3"}


def pytest_collection_modifyitems(config, items):
    """Refuse a test that uses a service fixture without the service's marker: deselecting
    the marker must deselect every test that needs the service."""
    unmarked = sorted(
        f"{item.nodeid} uses `{name}` but is not marked {marker}"
        for item in items for name, marker in SERVICE_FIXTURES.items()
        if name in getattr(item, "fixturenames", ()) and item.get_closest_marker(marker) is None)
    if unmarked:
        raise pytest.UsageError("\n".join(unmarked))


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


@pytest.fixture(scope="module")
def broker():
    from tests.kafka_helpers import ensure_broker

    return ensure_broker()


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
