#!/usr/bin/env python
"""Smoke test of the local broker started by ``scripts/kafka.sh start``.

Produces and consumes a few records with kafka-python over every listener
(PLAINTEXT, SASL_PLAINTEXT with PLAIN / SCRAM-SHA-256 / SCRAM-SHA-512, SSL,
SASL_SSL with PLAIN / SCRAM-SHA-512) and checks that a wrong password and an
untrusted CA are refused, with the root cause (authentication failure,
certificate verification failure) surfaced.

Usage:
  .venv/bin/python scripts/kafka/smoke.py [-k SUBSTRING] [-v]

Reads the ``scripts/kafka.sh env`` variables when set, else the defaults.
Exit status 0 when every check passed.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
import time
import uuid

from kafka import KafkaConsumer, KafkaProducer

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
CERTS = os.path.join(os.environ.get("FLEXPRICE_CACHE_DIR", os.path.join(REPO, ".cache")), "kafka", "certs")

PLAINTEXT = os.environ.get("KAFKA_BOOTSTRAP_PLAINTEXT", "127.0.0.1:19092")
SASL_PLAINTEXT = os.environ.get("KAFKA_BOOTSTRAP_SASL_PLAINTEXT", "127.0.0.1:19093")
SSL = os.environ.get("KAFKA_BOOTSTRAP_SSL", "127.0.0.1:19094")
SASL_SSL = os.environ.get("KAFKA_BOOTSTRAP_SASL_SSL", "127.0.0.1:19095")
USER = os.environ.get("KAFKA_SASL_USERNAME", "flexprice")
PASSWORD = os.environ.get("KAFKA_SASL_PASSWORD", "flexprice-secret")
CA = os.environ.get("KAFKA_CA_PEM", os.path.join(CERTS, "ca.pem"))
UNTRUSTED_CA = os.environ.get("KAFKA_UNTRUSTED_CA_PEM", os.path.join(CERTS, "untrusted-ca.pem"))

BROKER_LOG = os.path.join(
    os.environ.get(
        "KAFKA_LOG_DIR",
        os.path.join(os.environ.get("FLEXPRICE_CACHE_DIR", os.path.join(REPO, ".cache")), "kafka", "logs"),
    ),
    "server.log",
)

NUM_RECORDS = 5


def sasl(mechanism, password=PASSWORD, protocol="SASL_PLAINTEXT"):
    return dict(
        security_protocol=protocol,
        sasl_mechanism=mechanism,
        sasl_plain_username=USER,
        sasl_plain_password=password,
    )


def tls(cafile=CA, protocol="SSL"):
    return dict(security_protocol=protocol, ssl_cafile=cafile, ssl_check_hostname=True)


# name -> (bootstrap, client config)
POSITIVE = {
    "plaintext": (PLAINTEXT, {}),
    "sasl_plaintext/PLAIN": (SASL_PLAINTEXT, sasl("PLAIN")),
    "sasl_plaintext/SCRAM-SHA-256": (SASL_PLAINTEXT, sasl("SCRAM-SHA-256")),
    "sasl_plaintext/SCRAM-SHA-512": (SASL_PLAINTEXT, sasl("SCRAM-SHA-512")),
    "ssl": (SSL, tls()),
    "sasl_ssl/PLAIN": (SASL_SSL, {**sasl("PLAIN", protocol="SASL_SSL"), **tls(protocol="SASL_SSL")}),
    "sasl_ssl/SCRAM-SHA-512": (
        SASL_SSL,
        {**sasl("SCRAM-SHA-512", protocol="SASL_SSL"), **tls(protocol="SASL_SSL")},
    ),
}

AUTH_FAILED = ("SaslAuthenticationFailedError", "Authentication failed")
CERT_FAILED = ("CERTIFICATE_VERIFY_FAILED",)

# name -> (bootstrap, client config, substrings expected in the root cause)
NEGATIVE = {
    "sasl_plaintext/PLAIN wrong password": (
        SASL_PLAINTEXT,
        sasl("PLAIN", password="wrong-password"),
        AUTH_FAILED,
    ),
    "sasl_plaintext/SCRAM-SHA-512 wrong password": (
        SASL_PLAINTEXT,
        sasl("SCRAM-SHA-512", password="wrong-password"),
        AUTH_FAILED,
    ),
    "sasl_ssl/PLAIN wrong password": (
        SASL_SSL,
        {**sasl("PLAIN", password="wrong-password", protocol="SASL_SSL"), **tls(protocol="SASL_SSL")},
        AUTH_FAILED,
    ),
    "ssl untrusted CA": (SSL, tls(cafile=UNTRUSTED_CA), CERT_FAILED),
    "sasl_ssl untrusted CA": (
        SASL_SSL,
        {**sasl("PLAIN", protocol="SASL_SSL"), **tls(cafile=UNTRUSTED_CA, protocol="SASL_SSL")},
        CERT_FAILED,
    ),
}


class _Capture(logging.Handler):
    """Keeps kafka-python's log records: its bootstrap loop only logs the root
    cause of a failed connection and then raises a generic timeout."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.messages = []

    def emit(self, record):
        try:
            self.messages.append(record.getMessage())
        except Exception:  # pylint: disable=broad-except
            pass


def produce_consume(bootstrap, config):
    topic = f"smoke-{uuid.uuid4().hex[:12]}"
    values = [f"value-{i}".encode() for i in range(NUM_RECORDS)]
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", bootstrap_timeout_ms=15000, **config)
    try:
        for i, v in enumerate(values):
            producer.send(topic, key=b"k%d" % i, value=v)
        producer.flush(timeout=30)
    finally:
        producer.close()

    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=f"smoke-{uuid.uuid4().hex[:8]}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        bootstrap_timeout_ms=15000,
        **config,
    )
    got = []
    try:
        deadline = time.time() + 30
        while len(got) < len(values) and time.time() < deadline:
            for records in consumer.poll(timeout_ms=1000).values():
                got.extend(r.value for r in records)
    finally:
        consumer.close()
    if sorted(got) != sorted(values):
        raise AssertionError(f"topic {topic}: expected {len(values)} records, got {got!r}")
    return topic


def _broker_auth_failures(client_messages, bootstrap):
    """Broker log lines 'Failed authentication with /127.0.0.1 (channelId=
    <listener>-127.0.0.1:<client port>-...) (<reason>)' for this client's
    connections."""
    ports = set(re.findall(r"<-(\d+)\]", "\n".join(client_messages)))
    if not ports or not os.path.exists(BROKER_LOG):
        return []
    listener = bootstrap.replace("localhost", "127.0.0.1")
    found = []
    with open(BROKER_LOG, errors="replace") as f:
        for line in f:
            m = re.search(
                rf"Failed authentication with .*channelId={re.escape(listener)}-[\d.]+:(\d+)-", line
            )
            if m and m.group(1) in ports and "SSL handshake" not in line:
                found.append(line.strip())
    return found


def _attempt_bad_connection(bootstrap, config, timeout_ms):
    producer = None
    try:
        producer = KafkaProducer(bootstrap_servers=bootstrap, bootstrap_timeout_ms=timeout_ms, **config)
        producer.send("smoke-negative", b"x").get(timeout=10)
    except Exception as e:  # pylint: disable=broad-except
        return e
    finally:
        if producer is not None:
            producer.close()
    raise AssertionError("connection unexpectedly succeeded")


def expect_failure(bootstrap, config, expected, attempts=3):
    """The client must be refused; `expected` must show up in the root cause.

    kafka-python retries the bootstrap until bootstrap_timeout_ms and then raises
    a generic KafkaTimeoutError; the root cause (SaslAuthenticationFailedError,
    CERTIFICATE_VERIFY_FAILED) is only logged, so it is captured from the log.
    The broker sometimes closes the socket before its authentication error
    reaches the client, hence a few attempts.
    """
    kafka_logger = logging.getLogger("kafka")
    old_level, old_propagate = kafka_logger.level, kafka_logger.propagate
    error, messages = None, []
    for _ in range(attempts):
        capture = _Capture()
        kafka_logger.addHandler(capture)
        kafka_logger.setLevel(logging.DEBUG)
        kafka_logger.propagate = logging.getLogger().level <= logging.DEBUG
        try:
            error = _attempt_bad_connection(bootstrap, config, timeout_ms=3000)
        finally:
            kafka_logger.removeHandler(capture)
            kafka_logger.setLevel(old_level)
            kafka_logger.propagate = old_propagate
        messages = capture.messages
        causes = [m for m in messages + [str(error)] if any(e in m for e in expected) and "Recv:" not in m]
        # Prefer the most specific form (first entry of `expected`).
        causes.sort(key=lambda m: [e in m for e in expected].index(True))
        if causes:
            # e.g. "... failed: [Error 58] SaslAuthenticationFailedError: ..."
            return f"{type(error).__name__}; root cause: {causes[0][-200:]}"
        broker_side = _broker_auth_failures(messages, bootstrap)
        if broker_side:
            # kafka-python 3.0.12 drops a response that arrives together with the
            # broker's close (transport._sock_recv returns data and EOF, the caller
            # aborts without parsing), so the SASL error often shows up client side
            # only as "socket disconnected". The broker's log names the reason.
            return f"{type(error).__name__} (reason not in the client log); broker: {broker_side[-1][-160:]}"
    raise AssertionError(
        f"refused, but not for the expected reason {expected!r}: {error!r}; last log lines: {messages[-5:]}"
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-k", default="", help="only checks containing this")
    parser.add_argument("-v", action="store_true", help="kafka-python logs")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.v else logging.CRITICAL, format="%(levelname)s %(name)s %(message)s"
    )
    passed = failed = 0
    for name, (bootstrap, config) in POSITIVE.items():
        if args.k not in name:
            continue
        t0 = time.time()
        try:
            topic = produce_consume(bootstrap, config)
            print(f"PASS {name:<45} {NUM_RECORDS} records via {bootstrap} ({topic}) {time.time() - t0:.1f}s")
            passed += 1
        except Exception as e:  # pylint: disable=broad-except
            print(f"FAIL {name:<45} {e!r}")
            failed += 1
    for name, (bootstrap, config, expected) in NEGATIVE.items():
        if args.k not in name:
            continue
        t0 = time.time()
        try:
            detail = expect_failure(bootstrap, config, expected)
            print(f"PASS {name:<45} refused as expected in {time.time() - t0:.1f}s: {detail}")
            passed += 1
        except Exception as e:  # pylint: disable=broad-except
            print(f"FAIL {name:<45} {e!r}")
            failed += 1
    print(f"smoke: {passed} passed, {failed} failed")
    return 0 if failed == 0 and passed > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
