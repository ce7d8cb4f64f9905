"""The real local Kafka broker (scripts/kafka.sh) for tests: start it, produce, read back."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "kafka.sh"


#: what makes the broker ready: idempotent, each a no-op once done
BROKER_STEPS = ("install", "start", "wait")


def start_service(script: Path, steps: tuple[str, ...]) -> dict[str, str]:
    """Run a service script's ``steps`` (idempotent) and return its ``env`` settings."""
    for step in steps:
        subprocess.run([str(script), step], check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    return script_env(script)


@contextmanager
def service_running(script: Path, steps: tuple[str, ...]) -> Iterator[dict[str, str]]:
    """``start_service`` for a with-block, stopping the service after it if the block started
    it: a plain ``pytest`` on a developer's machine leaves no server holding the ports that
    another checkout's ``.ci/run`` needs (``scripts/test.sh`` starts and stops its own)."""
    up = subprocess.run([str(script), "status"], cwd=ROOT, stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL).returncode == 0
    env = start_service(script, steps)
    try:
        yield env
    finally:
        if not up:
            subprocess.run([str(script), "stop"], cwd=ROOT, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, check=False)


def ensure_broker() -> dict[str, str]:
    """Install/start the broker if needed (idempotent) and return its ``env`` settings."""
    return start_service(SCRIPT, BROKER_STEPS)


def script_env(script: Path) -> dict[str, str]:
    """The ``export K=V`` lines a service script's ``env`` command prints, as a dict."""
    out = subprocess.run([str(script), "env"], check=True, cwd=ROOT, capture_output=True,
                         text=True).stdout
    env = {}
    for line in out.splitlines():
        if line.startswith("export ") and "=" in line:
            key, _, value = line[len("export "):].partition("=")
            env[key] = value.strip().strip("'\"")
    return env


def new_topic(partitions: int = 3, bootstrap: str = "127.0.0.1:19092") -> str:
    from kafka.admin import KafkaAdminClient, NewTopic

    name = f"t-{uuid.uuid4().hex[:10]}"
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.create_topics([NewTopic(name, partitions, 1)])
    finally:
        admin.close()
    return name


def produce(topic: str, values: list[bytes], bootstrap: str = "127.0.0.1:19092") -> list[tuple]:
    """Send values; returns (partition, offset, timestamp_ms) per value, in order."""
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    try:
        futures = [producer.send(topic, v, key=str(i).encode()) for i, v in enumerate(values)]
        producer.flush(30)
        metas = [f.get(30) for f in futures]
    finally:
        producer.close()
    return [(m.partition, m.offset, m.timestamp) for m in metas]


def committed(group: str, topic: str, bootstrap: str = "127.0.0.1:19092") -> dict[int, int]:
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group,
                             enable_auto_commit=False)
    try:
        parts = consumer.partitions_for_topic(topic) or set()
        out = {}
        for p in parts:
            off = consumer.committed(TopicPartition(topic, p))
            if off is not None:
                out[p] = off
        return out
    finally:
        consumer.close()


def good(i: int) -> bytes:
    """A valid usage event as a Kafka value."""
    import orjson

    return orjson.dumps({"event_name": "api.request", "external_customer_id": f"cust_{i % 7}",
                         "properties": {"value": i}})
