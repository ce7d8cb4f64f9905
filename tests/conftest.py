"""Shared fixtures: the local Flexprice stand-in and configs pointing at it."""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings

from flexprice_beam.core.config import CollectorConfig

API_KEY = "test-key"

# Fuzzing depth (tests/test_fuzz.py): HYPOTHESIS_PROFILE=ci (default, ~300 examples per
# property) or full (10,000); docs/reliability.md has the figures of the last full run.
_FUZZ = dict(deadline=None, print_blob=True,
             suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("ci", max_examples=300, **_FUZZ)
settings.register_profile("full", max_examples=10_000, **_FUZZ)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


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


def make_config(mock, tmp_path, *, count=100, input_=None, flexprice=None, pipeline=None,
                **generate) -> CollectorConfig:
    """A config for ``mock``: fast retries, dead letters under ``tmp_path``."""
    out = {"api_host": mock.host_port, "api_key": API_KEY, "scheme": "http",
           "batching": {"count": 100, "period": "200ms"}, "max_in_flight": 4, "timeout": "2s",
           "retry": {"max_attempts": 12, "initial_backoff": "10ms", "max_backoff": "200ms",
                     "max_elapsed": "60s"}}
    for key, value in (flexprice or {}).items():
        out[key] = {**out[key], **value} if isinstance(value, dict) and key in out else value
    data = {
        "input": input_ or {"generate": {"count": count, "seed": 7,
                                         "start_time": "2026-01-01T00:00:00Z", **generate}},
        "output": {"flexprice": out, "dead_letter": {"path": str(tmp_path / "dead-letter")}},
    }
    if pipeline:
        data["pipeline"] = pipeline
    return CollectorConfig.model_validate(data)


def read_dead_letters(cfg: CollectorConfig) -> list[dict]:
    import json
    from pathlib import Path

    out = []
    for f in sorted(Path(cfg.output.dead_letter.path).glob("*.jsonl")):
        out.extend(json.loads(line) for line in f.read_text().splitlines() if line)
    return out


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
