"""Stopping a streaming Kafka run on Prism, for real (broker, Prism, the expansion JVM).

Whatever ended the run — Ctrl-C, ``kill <pid>``, SIGKILL, or a failure of its own — no
process it started may outlive it (Prism used to stay, reparented to PID 1), and a person
sees the summary, not one gRPC ``StatusCode.UNAVAILABLE`` traceback per thread.
"""

from __future__ import annotations

import os
import signal
import time

import pytest

from tests.kafka_helpers import good, new_topic, produce
from tests.support import API_KEY, cli, config_data, config_file, finish, kafka_input, wait_until

pytestmark = [pytest.mark.kafka]


def _config(tmp_path, mock, broker, topic, api_key=API_KEY):
    return config_file(config_data(
        mock, tmp_path, input=kafka_input(topic, broker["KAFKA_BOOTSTRAP_PLAINTEXT"]),
        fast=False, api_key=api_key, dead_letters="dl",
        flexprice={"max_in_flight": 1, "batching": {"count": 50, "period": "200ms"}}),
        tmp_path / "stream.yaml")


def _children(pid: int) -> dict[int, str]:
    """Live (not zombie) direct children of ``pid``: {pid: command line}."""
    out = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            stat = open(f"/proc/{d}/stat").read().rsplit(")", 1)[1].split()
            cmd = open(f"/proc/{d}/cmdline").read().replace("\0", " ")
        except OSError:
            continue
        if int(stat[1]) == pid and stat[0] != "Z":
            out[int(d)] = cmd
    return out


def _alive(pids) -> list[int]:
    alive = []
    for p in pids:
        try:
            if open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()[0] != "Z":
                alive.append(p)
        except OSError:
            pass
    return alive


def _start(tmp_path, mock, broker, **kw):
    env = {k: v for k, v in os.environ.items() if k != "FLEXPRICE_KAFKA_EXPANSION_SERVICE"}
    topic = new_topic()
    produce(topic, [good(i) for i in range(3000)])
    proc = cli(["run", "-c", str(_config(tmp_path, mock, broker, topic, **kw)), "--no-metrics",
                "--progress", "off"], env=env)
    # the run's own JVM (Kafka reader) and Prism, as they are once it streams
    kids = wait_until(lambda: (lambda k: k if sum("prism" in c for c in k.values()) and
                               sum("java" in c for c in k.values()) else None)(
        _children(proc.pid)), 180, every=0.2, what="Prism and the expansion JVM started")
    return proc, kids


@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143),
                                      (signal.SIGKILL, -9)])
def test_a_stopped_prism_run_leaves_no_process_and_prints_only_the_summary(
        broker, mock_api, tmp_path, sig, code):
    mock_api.set_faults({"latency_ms": 100})  # keep it streaming while we stop it
    proc, kids = _start(tmp_path, mock_api, broker)
    wait_until(lambda: len(mock_api.events()) >= 100, 180, what="some events delivered")
    kids = _children(proc.pid) | kids
    began = time.monotonic()
    proc.send_signal(sig)
    rc, out, err = finish(proc, 60)
    assert rc == code, f"{rc}\n{out}\n{err[-3000:]}"
    assert time.monotonic() - began < 15
    wait_until(lambda: not _alive(kids), 10, every=0.2,
               what=f"no child left of {sorted(kids.values())}")
    assert "Traceback" not in err and "UNAVAILABLE" not in err, err[-3000:]
    if sig != signal.SIGKILL:
        assert f"Received {sig.name}: exiting now" in err
        assert "reconciled:     n/a: stopped while streaming" in out, out
        assert "accepted:" in out and int(out.split("accepted:")[1].split()[0]) > 0


def test_a_prism_run_that_fails_by_itself_leaves_no_process(broker, mock_api, tmp_path):
    proc, kids = _start(tmp_path, mock_api, broker, api_key="not-the-key")  # 401: the run stops
    rc, out, err = finish(proc, 180)
    assert rc == 1 and "401" in out + err, f"{rc}\n{out}\n{err[-3000:]}"
    wait_until(lambda: not _alive(kids), 10, every=0.2,
               what=f"no child left of {sorted(kids.values())}")
