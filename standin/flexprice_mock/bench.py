"""Throughput of the Flexprice stand-in: ``python -m flexprice_mock.bench``.

Starts the stand-in in its own process (so clients do not share its GIL) and drives it from
client processes over keep-alive ``http.client`` connections: single-event POSTs and bulk POSTs
of N small events. Prints requests/s and events/s for each.
"""

from __future__ import annotations

import argparse
import http.client
import multiprocessing as mp
import socket
import subprocess
import sys
import time

import orjson


def _client(host: str, port: int, path: str, bodies: list[bytes], seconds: float, q: mp.Queue) -> None:
    conn = http.client.HTTPConnection(host, port)
    conn.connect()
    conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as urllib3 does
    headers = {"x-api-key": "test-key", "content-type": "application/json"}
    n = 0
    bad = 0
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        conn.request("POST", path, body=bodies[n % len(bodies)], headers=headers)
        resp = conn.getresponse()
        resp.read()
        if resp.status != 202:
            bad += 1
        n += 1
    conn.close()
    q.put((n, bad))


def _bodies(kind: str, batch: int, client: int, count: int = 64) -> list[bytes]:
    out = []
    for r in range(count):
        evs = [{"event_id": f"c{client}-r{r}-{i}", "event_name": "api.request",
                "external_customer_id": f"cust_{i % 3:03d}", "timestamp": "2024-06-01T12:00:00.123Z",
                "properties": {"value": i % 100}, "source": "bench"} for i in range(batch)]
        out.append(orjson.dumps(evs[0] if kind == "single" else {"events": evs}))
    return out


def run(kind: str, host: str, port: int, clients: int, batch: int, seconds: float) -> tuple[float, int]:
    q: mp.Queue = mp.Queue()
    path = "/v1/events" if kind == "single" else "/v1/events/bulk"
    procs = [mp.Process(target=_client, args=(host, port, path, _bodies(kind, batch, c), seconds, q))
             for c in range(clients)]
    t0 = time.perf_counter()
    for p in procs:
        p.start()
    results = [q.get() for _ in procs]
    for p in procs:
        p.join()
    elapsed = time.perf_counter() - t0
    total = sum(n for n, _ in results)
    bad = sum(b for _, b in results)
    return total / min(elapsed, seconds + 0.05), bad


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--clients", default="1,8", help="comma-separated client counts")
    ap.add_argument("--fast", action="store_true")
    args = ap.parse_args(argv)
    cmd = [sys.executable, "-m", "flexprice_mock", "--port", "0"] + (["--fast"] if args.fast else [])
    server = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    try:
        line = server.stdout.readline().strip() if server.stdout else ""
        hostport = line.rsplit("//", 1)[-1]
        host, port = hostport.split(":")
        for clients in (int(c) for c in args.clients.split(",")):
            for kind in ("single", "bulk"):
                rps, bad = run(kind, host, int(port), clients, args.batch, args.seconds)
                per = 1 if kind == "single" else args.batch
                print(f"{kind:6s} clients={clients:2d}: {rps:9.0f} req/s  {rps * per:10.0f} events/s"
                      + (f"  (non-202: {bad})" if bad else ""), flush=True)
    finally:
        server.terminate()
        server.wait(timeout=10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
