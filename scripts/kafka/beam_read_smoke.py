#!/usr/bin/env python
"""Prototype: Beam Python ReadFromKafka (Java KafkaIO via the expansion
service) against the local broker, offline, on the Python DirectRunner.

Prerequisites: ``scripts/kafka.sh start`` (which runs ``install``: broker jars
plus the Beam IO expansion service classpath and its launcher jar).

For each selected listener it produces 20 records with kafka-python to a fresh
topic, reads them back with a bounded ``ReadFromKafka(max_num_records=20,
with_metadata=True)`` and asserts that all 20 arrive exactly once with their
topic / partition / offset / timestamp metadata.

How it runs offline:
  * The expansion service is ``java -jar <launcher>``; the launcher jar
    (written by ``scripts/kafka.sh install``) has Main-Class
    org.apache.beam.sdk.expansion.service.ExpansionService and a Class-Path of
    Beam Java jars (the repo's BEAM_VERSION) from Maven Central. Nothing is downloaded at run time.
  * ``with beam.Pipeline(...)`` caches the expansion service subprocess, so
    JavaJarExpansionService starts it with ``--alsoStartLoopbackWorker``: the
    Java transforms get an EXTERNAL environment served by a worker pool inside
    the expansion service JVM (no Docker).
  * The DirectRunner never picks Prism for pipelines with external transforms
    (it would download a prism binary); it runs them on the FnApiRunner,
    which starts the Java SDK harness through that worker pool.

Unbounded mode (--unbounded): no max_num_records, --streaming on the
PrismRunner built by ``scripts/kafka.sh install-prism`` (passed with
--prism_location, so nothing is downloaded). Records are produced in batches
while the job runs and must reach a Python sink while it keeps running. The
expansion service is started here by hand (``java -jar <launcher> PORT
--alsoStartLoopbackWorker``) because a streaming job outlives
``Pipeline.run()``, and a Beam-managed service is only kept alive (and only
given the loopback worker) inside a ``with beam.Pipeline()`` block.

Usage:
  .venv/bin/python scripts/kafka/beam_read_smoke.py [--listener NAME ...]
      [--expansion-service launcher|beam-default|HOST:PORT] [--runner NAME]
      [-n 20] [-v] [--unbounded [--prism-location PATH]]
Listeners: plaintext, sasl_plaintext, ssl, sasl_ssl, sasl_ssl_p12 (default:
plaintext and sasl_ssl).
"""

from __future__ import annotations

import argparse
import glob
import logging
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid

import apache_beam as beam
from apache_beam.io.kafka import ReadFromKafka
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.util import BeamAssertException, assert_that
from apache_beam.transforms.external import JavaJarExpansionService
from kafka import KafkaProducer

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
CACHE = os.environ.get("FLEXPRICE_CACHE_DIR", os.path.join(REPO, ".cache"))
CERTS = os.path.join(CACHE, "kafka", "certs")

HOST = "127.0.0.1"
USER = os.environ.get("KAFKA_SASL_USERNAME", "flexprice")
PASSWORD = os.environ.get("KAFKA_SASL_PASSWORD", "flexprice-secret")
CA_PEM = os.environ.get("KAFKA_CA_PEM", os.path.join(CERTS, "ca.pem"))
TRUSTSTORE_P12 = os.environ.get("KAFKA_TRUSTSTORE_P12", os.path.join(CERTS, "truststore.p12"))
TRUSTSTORE_PASSWORD = os.environ.get("KAFKA_TRUSTSTORE_PASSWORD", "flexprice-store")


def _jaas(mechanism):
    module = (
        "org.apache.kafka.common.security.plain.PlainLoginModule"
        if mechanism == "PLAIN"
        else "org.apache.kafka.common.security.scram.ScramLoginModule"
    )
    return f'{module} required username="{USER}" password="{PASSWORD}";'


# listener -> (bootstrap, Java consumer security config, kafka-python config)
LISTENERS = {
    "plaintext": (f"{HOST}:19092", {}, {}),
    "sasl_plaintext": (
        f"{HOST}:19093",
        {
            "security.protocol": "SASL_PLAINTEXT",
            "sasl.mechanism": "SCRAM-SHA-512",
            "sasl.jaas.config": _jaas("SCRAM-SHA-512"),
        },
        dict(
            security_protocol="SASL_PLAINTEXT",
            sasl_mechanism="SCRAM-SHA-512",
            sasl_plain_username=USER,
            sasl_plain_password=PASSWORD,
        ),
    ),
    "ssl": (
        f"{HOST}:19094",
        {
            "security.protocol": "SSL",
            # kafka-clients >= 2.7 reads a PEM CA file directly.
            "ssl.truststore.type": "PEM",
            "ssl.truststore.location": CA_PEM,
        },
        dict(security_protocol="SSL", ssl_cafile=CA_PEM),
    ),
    "sasl_ssl": (
        f"{HOST}:19095",
        {
            "security.protocol": "SASL_SSL",
            "sasl.mechanism": "PLAIN",
            "sasl.jaas.config": _jaas("PLAIN"),
            "ssl.truststore.type": "PEM",
            "ssl.truststore.location": CA_PEM,
        },
        dict(
            security_protocol="SASL_SSL",
            sasl_mechanism="PLAIN",
            sasl_plain_username=USER,
            sasl_plain_password=PASSWORD,
            ssl_cafile=CA_PEM,
        ),
    ),
    # Same listener with SCRAM and a PKCS12 truststore instead of PEM.
    "sasl_ssl_p12": (
        f"{HOST}:19095",
        {
            "security.protocol": "SASL_SSL",
            "sasl.mechanism": "SCRAM-SHA-512",
            "sasl.jaas.config": _jaas("SCRAM-SHA-512"),
            "ssl.truststore.type": "PKCS12",
            "ssl.truststore.location": TRUSTSTORE_P12,
            "ssl.truststore.password": TRUSTSTORE_PASSWORD,
        },
        dict(
            security_protocol="SASL_SSL",
            sasl_mechanism="SCRAM-SHA-512",
            sasl_plain_username=USER,
            sasl_plain_password=PASSWORD,
            ssl_cafile=CA_PEM,
        ),
    ),
}


def launcher_jar():
    """The launcher jar written by scripts/kafka.sh install."""
    jars = sorted(glob.glob(os.path.join(CACHE, "jars", "beam-sdks-java-io-expansion-service-*.jar")))
    if not jars:
        sys.exit("no expansion service launcher jar: run scripts/kafka.sh install")
    from apache_beam.version import __version__ as beam_version

    exact = [j for j in jars if j.endswith(f"-{beam_version}.jar")]
    return (exact or jars)[-1]


def expansion_service(kind):
    if kind == "launcher":
        # Started by Beam (java -jar ... --alsoStartLoopbackWorker), stopped when
        # the pipeline's `with` block exits.
        return JavaJarExpansionService(launcher_jar())
    if kind == "beam-default":
        # ReadFromKafka's own default: BeamJarExpansionService looks for
        # ~/.apache_beam/cache/jars/beam-sdks-java-io-expansion-service-<ver>.jar,
        # where scripts/kafka.sh install also puts the launcher.
        return None
    # An already running service, e.g.
    #   java -jar .cache/jars/beam-sdks-java-io-expansion-service-$(cat BEAM_VERSION).jar \
    #        18097 --alsoStartLoopbackWorker
    return kind


def produce(bootstrap, client_config, topic, n):
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", **client_config)
    t0 = int(time.time() * 1000)
    for i in range(n):
        producer.send(topic, key=b"key-%d" % i, value=b'{"event_id": "evt-%d"}' % i)
    producer.flush(timeout=30)
    producer.close()
    return t0, int(time.time() * 1000)


def check_records(topic, n, t_from, t_to):
    def _check(rows):
        rows = list(rows)
        problems = []
        if len(rows) != n:
            problems.append(f"expected {n} records, got {len(rows)}")
        values = sorted(r[5] for r in rows)
        want = sorted(b'{"event_id": "evt-%d"}' % i for i in range(n))
        if values != want:
            problems.append(f"values differ: {values[:5]!r}")
        topics = {r[0] for r in rows}
        if topics != {topic}:
            problems.append(f"topics: {topics!r}")
        if len({(r[1], r[2]) for r in rows}) != len(rows):
            problems.append("duplicate (partition, offset)")
        for _, partition, offset, ts, key, value in rows:
            if not (0 <= partition < 3 and offset >= 0):
                problems.append(f"bad partition/offset {partition!r}/{offset!r}")
            if not t_from - 1000 <= ts <= t_to + 1000:
                problems.append(f"timestamp {ts!r} not in [{t_from!r}, {t_to!r}]")
            if key != b"key-" + value.split(b"evt-")[1].rstrip(b'"}'):
                problems.append(f"key {key!r} does not match value {value!r}")
        if problems:
            raise BeamAssertException("; ".join(problems[:5]))

    return _check


def run_one(listener, args):
    bootstrap, java_security, py_security = LISTENERS[listener]
    topic = f"beam-read-smoke-{listener}-{uuid.uuid4().hex[:8]}"
    n = args.num_records
    t_from, t_to = produce(bootstrap, py_security, topic, n)

    consumer_config = {
        "bootstrap.servers": bootstrap,
        "auto.offset.reset": "earliest",
        "group.id": f"beam-read-smoke-{uuid.uuid4().hex[:8]}",
        **java_security,
    }
    options = PipelineOptions([f"--runner={args.runner}"])
    t0 = time.time()
    with beam.Pipeline(options=options) as p:
        rows = (
            p
            | "ReadFromKafka"
            >> ReadFromKafka(
                consumer_config=consumer_config,
                topics=[topic],
                max_num_records=n,
                with_metadata=True,
                expansion_service=expansion_service(args.expansion_service),
            )
            | "ToTuple" >> beam.Map(lambda r: (r.topic, r.partition, r.offset, r.timestamp, r.key, r.value))
        )
        t_expanded = time.time()
        assert_that(rows, check_records(topic, n, t_from, t_to))
    t_done = time.time()
    print(
        f"PASS {listener:<14} {n} records with metadata from {topic} via {bootstrap}: "
        f"expansion {t_expanded - t0:.1f}s, run {t_done - t_expanded:.1f}s, total {t_done - t0:.1f}s"
    )


def _free_port():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


class _StartedExpansionService:
    """java -jar <launcher> PORT --alsoStartLoopbackWorker, for as long as the
    `with` block runs."""

    def __init__(self, jar):
        self.port = _free_port()
        self.log = tempfile.NamedTemporaryFile(prefix="expansion-service-", suffix=".log", delete=False)
        self.cmd = ["java", "-jar", jar, str(self.port), "--alsoStartLoopbackWorker"]
        self.proc = None

    def __enter__(self):
        self.proc = subprocess.Popen(self.cmd, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + 60
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"expansion service exited; see {self.log.name}")
            try:
                socket.create_connection(("localhost", self.port), 0.5).close()
                return f"localhost:{self.port}"
            except OSError:
                time.sleep(0.2)
        raise RuntimeError("expansion service did not start in 60 s")

    def __exit__(self, *unused):
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class _AppendToFile(beam.DoFn):
    """Test sink: one line per record, so the driver sees progress live."""

    def __init__(self, path):
        self.path = path

    def process(self, row):
        with open(self.path, "a") as f:
            f.write(f"{time.time():.3f} {row.value.decode()} {row.partition} {row.offset} {row.timestamp}\n")
        yield row


def run_unbounded(listener, args):
    """Streams from Kafka on Prism; records produced while the job runs must
    arrive while it keeps running."""
    from apache_beam.runners.runner import PipelineState

    prism = args.prism_location or os.path.join(CACHE, "bin", "prism")
    if not os.path.exists(prism):
        sys.exit(f"no prism binary at {prism}: run scripts/kafka.sh install-prism")
    bootstrap, java_security, py_security = LISTENERS[listener]
    topic = f"beam-stream-smoke-{listener}-{uuid.uuid4().hex[:8]}"
    batches, per_batch = 4, max(1, args.num_records // 4)
    n = batches * per_batch
    sink = tempfile.NamedTemporaryFile(prefix="beam-stream-sink-", suffix=".txt", delete=False).name
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", **py_security)
    consumer_config = {
        "bootstrap.servers": bootstrap,
        "auto.offset.reset": "earliest",
        "group.id": f"beam-stream-smoke-{uuid.uuid4().hex[:8]}",
        **java_security,
    }
    options = PipelineOptions(
        [
            # Prism that accepts the expansion service's AnyOf environment (Beam 2.62)
            "--runner=flexprice_beam.launch.prism.LocalPrismRunner",
            f"--prism_location={prism}",
            "--streaming",
        ]
    )

    def lines():
        with open(sink) as f:
            return [line.split() for line in f if line.strip()]

    t0 = time.time()
    with _StartedExpansionService(launcher_jar()) as address:
        p = beam.Pipeline(options=options)
        _ = (
            p
            | "ReadFromKafka"
            >> ReadFromKafka(
                consumer_config=consumer_config, topics=[topic], with_metadata=True, expansion_service=address
            )
            | "Sink" >> beam.ParDo(_AppendToFile(sink))
        )
        result = p.run()
        t_submitted = time.time()
        sent_at, batch_latency = {}, []

        def send(value):
            producer.send(topic, key=value.encode(), value=value.encode())
            sent_at[value] = time.time()

        def wait_for(values, timeout):
            deadline = time.time() + timeout
            while time.time() < deadline:
                if result.state in (PipelineState.FAILED, PipelineState.CANCELLED):
                    raise RuntimeError(f"streaming job ended: {result.state}")
                if set(values) <= {line[1] for line in lines()}:
                    return time.time()
                time.sleep(0.2)
            raise AssertionError(
                f"{len(set(values) - {line[1] for line in lines()})} of {len(values)} records "
                f"not seen after {timeout}s (job {result.state})"
            )

        try:
            # The first record also waits for the Java worker to come up.
            send("warmup")
            producer.flush(timeout=30)
            t_ready = wait_for(["warmup"], 120)
            for b in range(batches):
                values = [f"evt-{b}-{i}" for i in range(per_batch)]
                for v in values:
                    send(v)
                producer.flush(timeout=30)
                t_sent = time.time()
                # Each batch must arrive while the job keeps running, before the
                # next one is produced.
                batch_latency.append(wait_for(values, 60) - t_sent)
                time.sleep(args.batch_interval)
            got = lines()
            state = result.state
        finally:
            producer.close()
            try:
                result.cancel()
            except Exception:  # pylint: disable=broad-except
                pass
    values = sorted(line[1] for line in got)
    if values != sorted(sent_at):
        raise AssertionError(f"expected {len(sent_at)} records once each, got {len(values)}: {values[:5]!r}")
    if state != PipelineState.RUNNING:
        raise AssertionError(f"job was not running at the end: {state}")
    print(
        f"PASS {listener:<14} unbounded on Prism: {n} records in {batches} batches streamed "
        f"while the job kept running; submit {t_submitted - t0:.1f}s, first record after "
        f"{t_ready - t_submitted:.1f}s, per-batch latency "
        + " ".join(f"{latency:.1f}s" for latency in batch_latency)
    )
    os.unlink(sink)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument(
        "--listener",
        action="append",
        choices=sorted(LISTENERS),
        help="repeatable; default: plaintext and sasl_ssl",
    )
    parser.add_argument(
        "--expansion-service", default="launcher", help="launcher (default), beam-default, or HOST:PORT"
    )
    parser.add_argument("--runner", default="DirectRunner")
    parser.add_argument("-n", "--num-records", type=int, default=20)
    parser.add_argument("-v", action="store_true", help="INFO logs")
    parser.add_argument(
        "--unbounded", action="store_true", help="stream on Prism without max_num_records (see module doc)"
    )
    parser.add_argument("--prism-location", help="prism binary (default .cache/bin/prism)")
    parser.add_argument(
        "--batch-interval", type=float, default=3.0, help="--unbounded: seconds between produced batches"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.v else logging.WARNING, force=True)
    logging.getLogger("kafka").setLevel(logging.ERROR)
    passed = failed = 0
    for listener in args.listener or ["plaintext", "sasl_ssl"]:
        try:
            (run_unbounded if args.unbounded else run_one)(listener, args)
            passed += 1
        except Exception as e:  # pylint: disable=broad-except
            print(f"FAIL {listener:<14} {type(e).__name__}: {e}")
            failed += 1
    print(f"beam_read_smoke: {passed} passed, {failed} failed")
    return 0 if failed == 0 and passed > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
