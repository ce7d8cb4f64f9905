"""``flexprice-beam send-events N``: produce test usage events to Kafka (the seed's tool).

Connection settings come from the same environment as the examples: ``KAFKA_BROKER`` or
``FLEXPRICE_KAFKA_BROKERS``, ``KAFKA_TOPIC``, ``FLEXPRICE_KAFKA_SASL_USER`` /
``FLEXPRICE_KAFKA_SASL_PASSWORD``; flags override them.  ``--malformed K`` mixes K bad
records (not JSON, not UTF-8, not an object, missing fields) in among the N good ones.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time

import orjson

from flexprice_beam.core.config import KafkaInput
from flexprice_beam.io.kafka import python_client_config

_BAD = [b"not json at all", b"\xff\xfe\x00 not utf-8", b"[1, 2, 3]", b'"a string"',
        b'{"event_name": "", "external_customer_id": "c"}',
        b'{"event_name": "api.request"}',
        b'{"event_name": "api.request", "external_customer_id": "c", "timestamp": "yesterday"}']


def build_parser() -> argparse.ArgumentParser:
    env = os.environ.get
    p = argparse.ArgumentParser(prog="flexprice-beam send-events",
                                description="Send N test usage events to a Kafka topic.")
    p.add_argument("count", type=int, help="number of good events")
    p.add_argument("--brokers", default=env("KAFKA_BROKER") or env("FLEXPRICE_KAFKA_BROKERS")
                   or "127.0.0.1:19092", help="bootstrap servers, comma-separated")
    p.add_argument("--topic", default=env("KAFKA_TOPIC", "events"))
    p.add_argument("--sasl-mechanism", choices=["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"],
                   default=env("FLEXPRICE_KAFKA_SASL_MECHANISM", "PLAIN"))
    p.add_argument("--sasl-user", default=env("FLEXPRICE_KAFKA_SASL_USER"))
    p.add_argument("--sasl-password", default=env("FLEXPRICE_KAFKA_SASL_PASSWORD"),
                   help="prefer the FLEXPRICE_KAFKA_SASL_PASSWORD variable over this flag")
    p.add_argument("--tls", action="store_true", default=bool(env("FLEXPRICE_KAFKA_TLS")))
    p.add_argument("--ca-file", default=env("FLEXPRICE_KAFKA_CA_FILE"))
    p.add_argument("--skip-cert-verify", action="store_true")
    p.add_argument("--rate", type=float, default=0.0, help="events per second (0 = as fast as possible)")
    p.add_argument("--malformed", type=int, default=0, help="bad records to mix in")
    p.add_argument("--event-name", default="api.request")
    p.add_argument("--customers", default="cust_001,cust_002,cust_003")
    p.add_argument("--seed", type=int, default=None, help="make the events reproducible")
    p.add_argument("--with-ids", action="store_true",
                   help="give each event its own event_id (default: the pipeline derives one "
                        "from topic/partition/offset)")
    return p


def kafka_input(args: argparse.Namespace) -> KafkaInput:
    sasl = None
    if args.sasl_user:
        sasl = {"mechanism": args.sasl_mechanism, "user": args.sasl_user,
                "password": args.sasl_password or ""}
    return KafkaInput.model_validate({
        "addresses": [args.brokers], "topics": [args.topic], "sasl": sasl,
        "tls": {"enabled": args.tls, "ca_file": args.ca_file,
                "skip_cert_verify": args.skip_cert_verify}})


def events(args: argparse.Namespace):
    """Yield (key, value) pairs: ``count`` good events with ``malformed`` bad ones spread in."""
    rng = random.Random(args.seed)
    customers = [c for c in args.customers.split(",") if c]
    total = args.count + args.malformed
    bad_at = set(rng.sample(range(total), args.malformed)) if args.malformed else set()
    run = f"{args.seed if args.seed is not None else int(time.time() * 1000)}"
    for i in range(total):
        if i in bad_at:
            yield f"bad-{i}".encode(), _BAD[i % len(_BAD)]
            continue
        event = {"event_name": args.event_name, "external_customer_id": rng.choice(customers),
                 "properties": {"value": rng.randint(1, 100), "endpoint": "/api/users"},
                 "source": "send-events"}
        if args.with_ids:
            event["event_id"] = f"send-{run}-{i}"
        yield f"{i}".encode(), orjson.dumps(event)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from kafka import KafkaProducer
    from kafka.errors import KafkaError

    try:
        producer = KafkaProducer(acks="all", linger_ms=5, **python_client_config(kafka_input(args)))
    except KafkaError as exc:
        print(f"send-events: cannot connect to {args.brokers}: {exc}", file=sys.stderr)
        return 1
    began = time.monotonic()
    sent = 0
    try:
        for key, value in events(args):
            producer.send(args.topic, value=value, key=key)
            sent += 1
            if args.rate > 0:
                time.sleep(max(0.0, began + sent / args.rate - time.monotonic()))
        producer.flush(timeout=60)
    except KafkaError as exc:
        print(f"send-events: failed after {sent} records: {exc}", file=sys.stderr)
        return 1
    finally:
        producer.close(timeout=10)
    print(f"Sent {args.count} events and {args.malformed} malformed records to "
          f"{args.topic} in {time.monotonic() - began:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
