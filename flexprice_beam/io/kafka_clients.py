"""kafka-python for bounded reads (io/kafka_range.py): consumers, and errors said plainly.

Connection settings come from the same ``tls``/``sasl`` keys as the streaming (Java) read
(``io.kafka.python_client_config``).  confluent-kafka parses records ~10x cheaper (K0 in
docs/benchmarks.md) but, measured as a reader here, made a whole 100k drain no faster: the
rest of the run (Beam start-up, map, validate, the sink) is most of its CPU.
"""

from __future__ import annotations

import logging

from flexprice_beam.core.config import KafkaInput
from flexprice_beam.io.kafka import python_client_config

log = logging.getLogger("flexprice_beam.kafka")

#: 1 MiB per partition fetch (~7,500 send-events records) lets the next fetch travel while
#: the last one is decoded; 4 and 16 MiB measured no faster (K1, docs/benchmarks.md)
FETCH = {"max_partition_fetch_bytes": 1024 * 1024, "fetch_max_wait_ms": 100,
         # retry a refused connection every second at most: a bounded run should learn
         # the broker's reason (logged per attempt, see _Causes) within BOOTSTRAP_TIMEOUT_MS
         "reconnect_backoff_max_ms": 1000}
#: give up connecting after this long (kafka-python retries with back-off until then)
BOOTSTRAP_TIMEOUT_MS = 30_000
#: records per poll: polls return from the fetched buffer, fewer calls cost less
POLL_RECORDS = 10_000


class KafkaReadError(RuntimeError):
    """The broker refused or lost us; the message says which setting to check."""


_REFUSALS = ("AuthenticationFailed", "SSLError", "SSLCertVerification",
             "CERTIFICATE_VERIFY_FAILED", "certificate verify failed")


class _Causes(logging.Handler):
    """kafka-python retries a refused connection and then raises a bare timeout; the
    refusal itself (bad password, untrusted certificate) is only logged. Keep it."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.seen: list[str] = []
        self.hung_up = False  # the broker closed a connection on us

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if any(k in text for k in _REFUSALS):
            self.seen.append(text)
        elif "socket disconnected" in text:
            self.hung_up = True

    def reasons(self, cfg: KafkaInput) -> list[str]:
        if self.seen:
            return self.seen[-1:]
        if self.hung_up and cfg.sasl is not None:
            # A refused SCRAM/PLAIN login often shows only as the broker hanging up: it
            # closes the socket, and kafka-python reads that before the error answer.
            return [f"the broker closed every connection during SASL {cfg.sasl.mechanism} "
                    "authentication (it does so when the user, password or mechanism is "
                    "refused)"]
        return []


def python_consumer(cfg: KafkaInput, group: bool = False):
    """A kafka-python consumer that never commits by itself (``group``: for committed())."""
    from kafka import KafkaConsumer
    from kafka.errors import KafkaError

    causes = _Causes()
    logging.getLogger("kafka").addHandler(causes)
    try:
        extra = ({"bootstrap_timeout_ms": BOOTSTRAP_TIMEOUT_MS}
                 if "bootstrap_timeout_ms" in KafkaConsumer.DEFAULT_CONFIG else {})  # 3.x
        return KafkaConsumer(group_id=cfg.consumer_group if group else None,
                             enable_auto_commit=False, auto_offset_reset="earliest",
                             **FETCH, **extra, **python_client_config(cfg))
    except KafkaError as exc:
        raise KafkaReadError(explain(exc, cfg, causes.reasons(cfg))) from None
    finally:
        logging.getLogger("kafka").removeHandler(causes)


def explain(exc: BaseException, cfg: KafkaInput, causes: list[str] | None = None) -> str:
    """A client's error, said plainly with the config key to check."""
    name = type(exc).__name__
    text = f"Kafka ({','.join(cfg.addresses)}): {name}: {exc}"
    cause = (causes or [""])[-1]
    if cause:
        text += f"; the broker connection failed with: {cause[-400:]}"
    seen = f"{name} {exc} {cause}"
    if "uthentication" in seen:
        return text + " — check input.kafka.sasl.user / password and mechanism"
    if "SSL" in seen or "certificate" in seen.lower():
        return text + " — check input.kafka.tls.ca_file"
    if name in ("NoBrokersAvailable", "KafkaTimeoutError"):
        return text + (" — check input.kafka.addresses, and tls/sasl: the listener may "
                       "expect another protocol, or refuse our credentials or certificate")
    return text


class KafkaPythonReader:
    """kafka-python, one partition at a time (its records already have the fields)."""

    def __init__(self, cfg: KafkaInput):
        self._cfg = cfg
        self._consumer = python_consumer(cfg)
        self._tp = None

    def seek(self, topic: str, partition: int, offset: int) -> None:
        from kafka import TopicPartition

        self._tp = TopicPartition(topic, partition)
        self._consumer.assign([self._tp])
        self._consumer.seek(self._tp, offset)

    def poll(self) -> list:
        from kafka.errors import KafkaError

        try:
            return self._consumer.poll(timeout_ms=200, max_records=POLL_RECORDS).get(self._tp, [])
        except KafkaError as exc:
            raise KafkaReadError(explain(exc, self._cfg)) from None

    def position(self) -> int:
        return self._consumer.position(self._tp)

    def close(self) -> None:
        self._consumer.close()
