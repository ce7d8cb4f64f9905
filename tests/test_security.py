"""Secrets never leak; transport security is on by default (docs/reliability.md, "Security").

* a unique API key is run through the CLI (DEBUG logs, JSON logs, metrics, 400s, retries,
  a 401, a dry run, lint errors, check, replay) and every output, log and file is grepped;
* https to a self-signed stand-in is refused by default (fast, with a clear reason),
  accepted with ``skip_cert_verify`` (which logs a warning) or with its CA trusted;
* plain http to a non-loopback host is a config error naming ``output.flexprice.scheme``.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import threading
import time
import uuid
from pathlib import Path

import apache_beam as beam
import pytest
import yaml
from flexprice_mock.server import MockFlexprice
from pydantic import SecretStr

from flexprice_beam.cli import main as cli_main
from flexprice_beam.core.config import KafkaInput, load_config_text
from flexprice_beam.io.kafka import java_consumer_config, python_client_config
from flexprice_beam.launch.runner import pipeline_options, run
from flexprice_beam.pipelines import collector
from tests import support
from tests.ops_helpers import free_port, get
from tests.reliability_helpers import record
from tests.support import API_KEY, cli, finish, make_config, read_dead_letters

# ------------------------------------------------------------------ secrets


def _every_text(root: Path) -> dict[str, str]:
    out = {}
    for f in root.rglob("*"):
        if f.is_file():
            out[str(f.relative_to(root))] = f.read_bytes().decode("utf-8", "replace")
    return out


@pytest.fixture
def keyed_mock(mock_api):
    yield mock_api
    mock_api.set_api_key(API_KEY)  # the session's stand-in serves the other tests next


def test_the_api_key_appears_in_no_output_log_or_file(keyed_mock, tmp_path):
    mock_api = keyed_mock
    random_part = uuid.uuid4().hex
    secret = f"fp_live_{random_part}"
    # Any 12 characters of it in a row count as a leak: messages truncate ("fp_live_0123…").
    needles = [random_part[i:i + 12] for i in range(len(random_part) - 11)]
    env = {"FLEXPRICE_API_KEY": secret}
    mock_api.set_api_key(secret)
    seen: dict[str, str] = {}

    def config(name, events: dict, **kw):
        data = support.config_data(mock_api, tmp_path, input=support.generate(**events),
                                   dead_letters="dl", api_key="${FLEXPRICE_API_KEY}", **kw)
        path = support.config_file(data, tmp_path / f"{name}.yaml")
        return str(path)

    # 1. a run with every path that writes text: DEBUG logs, metrics, 400 isolation, retries,
    #    mapping/validation dead letters, a summary file.
    mock_api.set_faults({"seed": 1, "reject_every_nth": 40, "rate_503": 0.1, "rate_reset": 0.05,
                         "latency_ms": 20})
    metrics = free_port()
    cfg1 = config("run", events={"count": 1500, "customers": ["cust_001", "", "cust_002"]},
                  flexprice={"max_in_flight": 2})
    proc = cli(["run", "-c", cfg1, "--log-level", "DEBUG", "--metrics-address",
                f"127.0.0.1:{metrics}", "--summary-json", str(tmp_path / "summary.json"),
                "--progress", "lines", "--status-interval", "0.2"], env=env)
    bodies = []

    def poll():
        while proc.poll() is None:
            for path in ("/stats", "/metrics", "/ping"):
                try:
                    code, body = get(f"http://127.0.0.1:{metrics}{path}", timeout=1)
                except OSError:  # not up yet, or gone
                    continue
                bodies.append(body)
            time.sleep(0.1)

    poller = threading.Thread(target=poll)
    poller.start()
    code, out, err = finish(proc, 120)
    poller.join()
    assert code == 0, err[-3000:]
    assert len(bodies) >= 3, "the metrics endpoint was never read"
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["dead_letters"].get("delivery", {}).get("400") and \
        summary["dead_letters"].get("validation"), summary
    seen.update({"run.stdout": out, "run.stderr": err, "metrics bodies": "\n".join(bodies)})
    assert "📤 Sending event" in err and "Flexprice output connected" in err  # DEBUG was on

    # 2. JSON logs, same run shape.
    mock_api.set_faults({"seed": 2, "reject_every_nth": 40})
    code, out, err = finish(cli(["run", "-c", cfg1, "--log-format", "json", "--log-level", "DEBUG",
                                 "--no-metrics", "--progress", "off"], env=env), 120)
    assert code == 0
    seen.update({"json.stdout": out, "json.stderr": err})

    # 3. the key refused: 401.
    mock_api.set_faults({})
    mock_api.set_api_key(API_KEY)
    code, out, err = finish(cli(["run", "-c", cfg1, "--log-level", "DEBUG", "--no-metrics"],
                                env=env), 60)
    assert code == 1 and "401" in out
    seen.update({"401.stdout": out, "401.stderr": err})
    mock_api.set_api_key(secret)

    # 4. a dry run to files and to the standard streams.
    code, out, err = finish(cli(["run", "-c", cfg1, "--dry-run", "--dry-run-output",
                                 str(tmp_path / "would-send.jsonl"), "--dry-run-dead-letters",
                                 str(tmp_path / "dry-dead.jsonl"), "--log-level", "DEBUG",
                                 "--no-metrics"], env=env), 60)
    assert code == 0
    seen.update({"dry.stdout": out, "dry.stderr": err})
    code, out, err = finish(cli(["run", "-c", cfg1, "--dry-run", "--no-metrics",
                                 "--log-level", "DEBUG"], env=env), 60)
    seen.update({"dry-stdout.stdout": out, "dry-stdout.stderr": err})

    # 5. check and replay (read-only / resend paths).
    code, out, err = finish(cli(["check", "-c", cfg1, "--sample", "20", "--log-level", "DEBUG"],
                                env=env), 60)
    seen.update({"check.stdout": out, "check.stderr": err})
    code, out, err = finish(cli(["replay-dead-letters", "-c", cfg1, "--log-level", "DEBUG"],
                                env=env), 60)
    seen.update({"replay.stdout": out, "replay.stderr": err})

    # 6. config errors around the key: broken YAML on its line, a key with a space in it.
    broken = tmp_path / "broken.yaml"
    broken.write_text(Path(cfg1).read_text().replace(
        "api_key: ${FLEXPRICE_API_KEY}", 'api_key: "${FLEXPRICE_API_KEY}\n  oops: ['))
    code, out, err = finish(cli(["lint", "-c", str(broken)], env=env), 60)
    assert code == 1 and "not valid YAML" in err
    seen.update({"lint-yaml.stderr": err, "lint-yaml.stdout": out})
    code, out, err = finish(cli(["run", "-c", str(broken)], env=env), 60)
    assert code == 2
    seen.update({"run-yaml.stderr": err, "run-yaml.stdout": out})
    spaced = {"FLEXPRICE_API_KEY": secret[:10] + " " + secret[10:]}
    code, out, err = finish(cli(["lint", "-c", cfg1], env=spaced), 60)
    assert code == 1 and "api_key contains spaces" in err
    seen.update({"lint-space.stderr": err})
    code, out, err = finish(cli(["run", "-c", cfg1], env=spaced), 60)
    assert code == 2
    seen.update({"run-space.stderr": err, "run-space.stdout": out})

    # 7. every file the runs wrote: dead letters, dry-run output, summary, configs aside.
    files = {k: v for k, v in _every_text(tmp_path).items() if not k.endswith(".yaml")}
    assert any(k.startswith("dl/") for k in files), "no dead letters were written"
    seen.update(files)

    leaks = [(where, needle) for where, text in seen.items() for needle in needles
             if needle in text]
    assert leaks == [], f"the key leaked into: {sorted({w for w, _ in leaks})}"
    record("secret grep", outputs_checked=len(seen), bytes_checked=sum(map(len, seen.values())),
           leaks=0)


def test_a_key_with_a_stray_newline_is_trimmed_not_leaked():
    """A key read from a file often ends in a newline: requests would quote it in an error."""
    text = "input: {generate: {count: 1}}\noutput: {flexprice: {api_host: h, api_key: \"${K}\"}}\n"
    cfg = load_config_text(text, env={"K": "fp_abc123\n"})
    assert cfg.output.flexprice.api_key.get_secret_value() == "fp_abc123"


def test_transport_errors_never_quote_the_key():
    """The HTTP stack quotes a header value it cannot send; such a key never reaches it (belt
    and braces: the config already refuses it). The client resolves the key through
    io/secrets.py, which strips it and refuses what a header cannot carry, unquoted."""
    from flexprice_beam.core.config import FlexpriceOutput
    from flexprice_beam.io.flexprice.transport import HttpTransport
    from flexprice_beam.io.secrets import SecretError

    good = FlexpriceOutput(api_host="127.0.0.1:9", api_key="k", scheme="http", timeout="1s")
    padded = FlexpriceOutput.model_construct(**{**good.__dict__, "api_key": SecretStr(" fp_ok\n")})
    answer = HttpTransport(padded).post_bulk([b"{}"])
    assert answer.status is None and "refused" in answer.error and "fp_ok" not in answer.error
    bad = FlexpriceOutput.model_construct(**{**good.__dict__, "api_key": SecretStr("fp\x01bad")})
    with pytest.raises(SecretError, match="control or non-ASCII") as err:
        HttpTransport(bad)
    assert "fp\x01bad" not in str(err.value) and "bad" not in str(err.value)


def test_the_key_is_in_no_pipeline_option_or_plain_graph_text():
    secret = f"fp_graph_{uuid.uuid4().hex}"
    cfg = load_config_text("input: {generate: {count: 10}}\n"
                           f"output: {{flexprice: {{api_host: api.example.com, api_key: {secret}}}}}\n")
    options = pipeline_options([])
    p = beam.Pipeline(options=options)
    collector.build(p, cfg)
    assert secret not in json.dumps(options.get_all_options(), default=str)
    graph = p.to_runner_api().SerializeToString()
    # The sink's config travels pickled and zlib-compressed inside the DoFn payload (workers
    # read it from there), never as a readable option or string in the graph.
    assert secret.encode() not in graph and secret[-16:].encode() not in graph


# ------------------------------------------------------------------ TLS


@pytest.fixture(scope="module")
def self_signed(tmp_path_factory):
    assert shutil.which("openssl"), "openssl is needed to make a test certificate"
    d = tmp_path_factory.mktemp("tls")
    cert, key = d / "cert.pem", d / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
                   check=True, capture_output=True)
    return str(cert), str(key)


@pytest.fixture
def tls_mock(self_signed):
    mock = MockFlexprice(api_key=API_KEY, tls_cert=self_signed[0], tls_key=self_signed[1]).start()
    yield mock
    mock.stop()


def _https(mock, tmp_path, **flexprice):
    return make_config(mock, tmp_path, count=500, flexprice={"scheme": "https", **flexprice})


def test_https_self_signed_is_refused_by_default_and_fast(tls_mock, tmp_path):
    assert tls_mock.url.startswith("https://")
    summary = run(_https(tls_mock, tmp_path))
    assert summary.error and "did not verify" in summary.error, summary.render()
    assert "CERTIFICATE_VERIFY_FAILED" in summary.error and "skip_cert_verify" in summary.error
    assert summary.seconds < 15, "a certificate failure must not spend the retry budget"
    assert tls_mock.events() == [] and read_dead_letters(_https(tls_mock, tmp_path)) == []
    record("https, self-signed, default", refused=True, seconds=round(summary.seconds, 1),
           events_sent=0)


def test_https_self_signed_with_skip_cert_verify_works_and_warns(tls_mock, tmp_path, caplog):
    caplog.set_level(logging.WARNING, "flexprice_beam")
    summary = run(_https(tls_mock, tmp_path, skip_cert_verify=True))
    assert summary.ok and summary.accepted == 500, summary.render()
    assert len(tls_mock.events()) == 500
    assert any("TLS certificate verification for Flexprice is OFF" in r.getMessage()
               for r in caplog.records)
    record("https, self-signed, skip_cert_verify", accepted=500, warning_logged=True)


def test_https_with_its_ca_trusted_verifies(tls_mock, tmp_path, self_signed, monkeypatch):
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", self_signed[0])
    summary = run(_https(tls_mock, tmp_path))
    assert summary.ok and summary.accepted == 500, summary.render()


class _ConnectProxy:
    """A real HTTP CONNECT proxy on 127.0.0.1 that demands Basic auth and relays bytes."""

    def __init__(self, user: str, password: str):
        import base64
        import socket

        self.expected = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        self.tunnels: list[str] = []
        self.refused = 0
        self._srv = socket.create_server(("127.0.0.1", 0))
        self.port = self._srv.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._srv.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn) -> None:
        import socket

        head = b""
        while b"\r\n\r\n" not in head:
            chunk = conn.recv(4096)
            if not chunk:
                conn.close()
                return
            head += chunk
        lines = head.split(b"\r\n\r\n", 1)[0].decode().split("\r\n")
        method, target, _ = lines[0].split(" ", 2)
        headers = {k.strip().lower(): v.strip() for k, v in (x.split(":", 1) for x in lines[1:])}
        if method != "CONNECT" or headers.get("proxy-authorization") != self.expected:
            self.refused += 1
            conn.sendall(b"HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 0\r\n\r\n")
            conn.close()
            return
        host, port = target.rsplit(":", 1)
        upstream = socket.create_connection((host, int(port)))
        self.tunnels.append(target)
        conn.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")

        def pipe(src, dst) -> None:
            try:
                while data := src.recv(65536):
                    dst.sendall(data)
            except OSError:
                pass
            finally:
                for s in (src, dst):
                    try:
                        s.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass

        threading.Thread(target=pipe, args=(upstream, conn), daemon=True).start()
        pipe(conn, upstream)

    def close(self) -> None:
        self._srv.close()


def _use_proxy(monkeypatch, proxy: _ConnectProxy, userinfo: str, ca: str) -> None:
    for var in ("NO_PROXY", "no_proxy", "https_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HTTPS_PROXY", f"http://{userinfo}@127.0.0.1:{proxy.port}")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", ca)


def test_https_through_an_authenticating_connect_proxy(tls_mock, tmp_path, self_signed, monkeypatch):
    """HTTPS_PROXY (with user:pass) tunnels the requests; verification still checks the
    stand-in's certificate end to end, not the proxy's."""
    proxy = _ConnectProxy("corp", "p@ss")
    try:
        _use_proxy(monkeypatch, proxy, "corp:p%40ss", self_signed[0])
        summary = run(_https(tls_mock, tmp_path))
        assert summary.ok and summary.accepted == 500, summary.render()
        assert len(tls_mock.events()) == 500
        assert proxy.tunnels and set(proxy.tunnels) == {tls_mock.host_port} and proxy.refused == 0
        record("https through an authenticating CONNECT proxy", accepted=500,
               tunnels=len(proxy.tunnels))
    finally:
        proxy.close()


def test_wrong_proxy_credentials_stop_the_run_naming_the_proxy(tls_mock, tmp_path, self_signed,
                                                               monkeypatch):
    """407 from the proxy is a configuration error: stop at once, like a refused API key,
    instead of spending the retry budget and dead-lettering everything."""
    proxy = _ConnectProxy("corp", "right")
    try:
        _use_proxy(monkeypatch, proxy, "corp:wrong", self_signed[0])
        summary = run(_https(tls_mock, tmp_path))
        assert summary.error and "proxy refused" in summary.error and "407" in summary.error, \
            summary.render()
        assert "wrong" not in summary.error  # the proxy password is not repeated
        assert summary.seconds < 15 and proxy.refused >= 1 and not proxy.tunnels
        assert tls_mock.events() == [] and read_dead_letters(_https(tls_mock, tmp_path)) == []
    finally:
        proxy.close()


def test_plain_http_to_a_remote_host_is_a_lint_error(tmp_path, capsys):
    base = {"input": {"generate": {"count": 1}},
            "output": {"flexprice": {"api_host": "api.example.com", "api_key": "k",
                                     "scheme": "http"}}}
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(base))
    assert cli_main(["lint", "-c", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "output.flexprice.scheme: plain http to api.example.com" in err
    for host in ("http://10.0.0.5:8080", "http://flexprice.internal/v1"):
        base["output"]["flexprice"].update(api_host=host, scheme="https")
        bad.write_text(yaml.safe_dump(base))
        assert cli_main(["lint", "-c", str(bad)]) == 1
        assert "output.flexprice.scheme" in capsys.readouterr().err
    base["output"]["flexprice"]["allow_insecure"] = True
    bad.write_text(yaml.safe_dump(base))
    assert cli_main(["lint", "-c", str(bad)]) == 0
    for local in ("127.0.0.1:8080", "localhost:8080", "[::1]:8080", "http://127.0.0.2"):
        base["output"]["flexprice"].update(api_host=local, scheme="http", allow_insecure=False)
        bad.write_text(yaml.safe_dump(base))
        assert cli_main(["lint", "-c", str(bad)]) == 0, local


def test_kafka_tls_verifies_by_default_and_skip_warns(caplog):
    tls = KafkaInput(addresses=["b:9093"], topics=["t"], tls={"enabled": True, "ca_file": "ca.pem"})
    java, py = java_consumer_config(tls), python_client_config(tls)
    assert java["security.protocol"] == "SSL"
    assert "ssl.endpoint.identification.algorithm" not in java  # Kafka's default: https
    assert py["ssl_check_hostname"] is True and "ssl_context" not in py
    caplog.set_level(logging.WARNING, "flexprice_beam")
    skip = KafkaInput(addresses=["b:9093"], topics=["t"],
                      tls={"enabled": True, "skip_cert_verify": True})
    assert java_consumer_config(skip)["ssl.endpoint.identification.algorithm"] == ""
    assert any("skip_cert_verify" in r.getMessage() for r in caplog.records)
    sasl = KafkaInput(addresses=["b:9093"], topics=["t"],
                      sasl={"user": "u", "password": "kafka-secret-xyz"})
    assert "kafka-secret-xyz" not in repr(sasl) and "kafka-secret-xyz" not in str(sasl.model_dump())


def test_ping_reports_stopped_after_a_certificate_failure(tls_mock, tmp_path):
    """A certificate failure stops the sink like a 401: /ping turns 503 with the reason."""
    from flexprice_beam.launch.metrics_server import MetricsServer

    with MetricsServer("127.0.0.1:0") as server:
        summary = run(_https(tls_mock, tmp_path), metrics=server)
        code, body = get(server.url + "/ping")
    assert summary.error and code == 503 and "did not verify" in body


# ------------------------------------------------------------------ off the hot path: check, read-back


def _lookups_and_reads(cfg) -> tuple[object, object]:
    """check's SDK look-ups (io.api.Lookups) and read-back's requests session (ApiClient)."""
    from flexprice_beam.io.api import ApiClient, Lookups

    lookups, api = Lookups(cfg.output.flexprice), ApiClient(cfg.output.flexprice)
    try:
        return lookups.features(), api.get("/v1/events", page_size=1)
    finally:
        lookups.close()
        api.close()


def test_check_and_read_back_refuse_a_self_signed_certificate(tls_mock, tmp_path):
    from flexprice_beam.ops.check import run_check

    features, events = _lookups_and_reads(_https(tls_mock, tmp_path))
    for reply in (features, events):
        assert reply.status is None and "CERTIFICATE_VERIFY_FAILED" in reply.error, reply
    (problem,) = run_check(_https(tls_mock, tmp_path), sample=5).problems
    assert problem.detail.startswith("unreachable") and "CERTIFICATE_VERIFY_FAILED" in problem.detail


def test_check_and_read_back_with_skip_cert_verify_or_the_ca_trusted(tls_mock, tmp_path,
                                                                     self_signed, monkeypatch,
                                                                     caplog):
    caplog.set_level(logging.WARNING, "flexprice_beam")
    features, events = _lookups_and_reads(_https(tls_mock, tmp_path, skip_cert_verify=True))
    assert features.status == 200 and events.status == 200, (features, events)
    assert any("TLS certificate verification for Flexprice is OFF" in r.getMessage()
               for r in caplog.records)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", self_signed[0])
    features, events = _lookups_and_reads(_https(tls_mock, tmp_path))
    assert features.status == 200 and events.status == 200, (features, events)


def test_check_and_read_back_through_an_authenticating_connect_proxy(tls_mock, tmp_path,
                                                                     self_signed, monkeypatch):
    proxy = _ConnectProxy("corp", "p@ss")
    try:
        _use_proxy(monkeypatch, proxy, "corp:p%40ss", self_signed[0])
        features, events = _lookups_and_reads(_https(tls_mock, tmp_path))
        assert features.status == 200 and events.status == 200, (features, events)
        assert set(proxy.tunnels) == {tls_mock.host_port} and proxy.refused == 0
    finally:
        proxy.close()
