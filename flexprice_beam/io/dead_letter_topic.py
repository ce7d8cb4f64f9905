"""Dead letters on a Kafka topic, shaped like a Kafka Connect dead-letter queue.

Value: the dead-letter JSON; key: the event's ``event_id`` (the record id when mapping
failed, so there is no event); headers: ``stage``, ``status``, ``reason`` and Kafka
Connect's ``__connect.errors.*`` (topic, partition, offset, stage, exception message), so
tooling written for ``errors.deadletterqueue.context.headers.enable`` reads them as is.

Why a producer in a DoFn and not Beam's cross-language ``WriteToKafka``: its
``with_headers=True`` needs ``beam:transform:org.apache.beam:kafka_write_with_headers:v1``,
which KafkaIO at our one Beam version (2.62, ``BEAM_VERSION``) does not have.  And
``WriteToKafka`` ends in ``PDone``: its acknowledgement happens in a Java stage that the
bounded run's offset commit and Prism's in-process tracker cannot wait on.  Here every letter
of a bundle is sent with ``acks=all`` and the bundle does not finish until ``flush()``
returned and every send was acknowledged; a send that failed fails the bundle.  On Flink
the bundle finishes before the checkpoint barrier passes
(``--finish_bundle_before_checkpointing``), so the input's offsets are committed only
behind letters the topic holds; the same holds for the bounded commit (it takes the
writer's output) and for Prism's tracker (marked done after the flush).
"""

from __future__ import annotations

import logging
from typing import Any

from flexprice_beam.core.config import DeadLetterKafka
from flexprice_beam.io.dead_letter_files import DeadLetterWriteError
from flexprice_beam.io.kafka import python_client_config

log = logging.getLogger("flexprice_beam.dead_letter")

_REASON_HEADER_MAX = 4096


def letter_key(letter: dict[str, Any]) -> bytes | None:
    event = letter.get("event")
    key = (event.get("event_id") if isinstance(event, dict) else None) or letter.get("record_id")
    return None if key is None else str(key).encode("utf-8", "backslashreplace")


def letter_headers(letter: dict[str, Any]) -> list[tuple[str, bytes]]:
    def enc(value: Any, limit: int | None = None) -> bytes:
        text = "" if value is None else str(value)
        return text[:limit].encode("utf-8", "backslashreplace") if limit else \
            text.encode("utf-8", "backslashreplace")

    origin = letter.get("origin") if isinstance(letter.get("origin"), dict) else {}
    headers = [("stage", enc(letter.get("stage"))), ("status", enc(letter.get("status"))),
               ("reason", enc(letter.get("reason"), _REASON_HEADER_MAX)),
               ("__connect.errors.stage", enc(letter.get("stage"))),
               ("__connect.errors.exception.message",
                enc(letter.get("reason"), _REASON_HEADER_MAX))]
    for name in ("topic", "partition", "offset"):
        if origin.get(name) is not None:
            headers.append((f"__connect.errors.{name}", enc(origin[name])))
    return headers


class DeadLetterProducer:
    """Sends letters; ``commit`` returns once the topic acknowledged every one of them."""

    def __init__(self, cfg: DeadLetterKafka, timeout: float = 60.0):
        from kafka import KafkaProducer

        self.topic = cfg.topic
        self._timeout = timeout
        self._producer = KafkaProducer(acks="all", linger_ms=5, retries=5,
                                       max_in_flight_requests_per_connection=1,
                                       **python_client_config(cfg))
        self._futures: list = []

    def send(self, letter: dict[str, Any], data: bytes) -> None:
        self._futures.append(self._producer.send(
            self.topic, value=data.rstrip(b"\n"), key=letter_key(letter),
            headers=letter_headers(letter)))

    def forget(self) -> None:
        """Drop what a failed bundle sent: not waited for, not failing the next bundle."""
        self._futures = []

    def commit(self) -> int:
        futures, self._futures = self._futures, []
        if not futures:
            return 0
        try:
            self._producer.flush(self._timeout)
            for fut in futures:
                fut.get(timeout=self._timeout)
        except Exception as exc:  # KafkaError, KafkaTimeoutError
            raise DeadLetterWriteError(
                None, f"cannot write dead letters to Kafka topic {self.topic}: "
                      f"{type(exc).__name__}: {exc}") from exc
        return len(futures)

    def close(self) -> None:
        try:
            self._producer.close(10)
        except Exception as exc:  # noqa: BLE001 - closing after a failure
            log.debug("closing the dead-letter producer: %s", exc)
