"""Where the sink's CPU goes: the same pipeline with the sink's parts switched on one by one.

    .venv/bin/python benchmarks/sink_costs.py [--events 500000] [--repeats 3]

Variants (each in a fresh process, the stand-in in its own, medians of the repeats):

* ``no-op sink``: the P1 denominator (``benchmarks.workers.CountingSink``).
* ``no-op sink holding the last K lists``: the no-op sink, but each list is dropped only K
  lists later, as the real sink keeps a batch until Flexprice answers (~2 batches in flight at
  0 ms, ~8 at 20 ms): what keeping events alive costs the rest of the pipeline, with no HTTP.
* ``instant answers``: the real sink and engine on a transport that answers 202 at once
  without a network (``InstantTransport``: the engine's own bookkeeping only).
* ``stand-in``: the product as shipped, real HTTP to the stand-in.

(The thread-pool variants measured before issue 16 are gone with the thread pool: every
request now goes through the one non-blocking executor, io/flexprice/executor.py.)

Reported: events/s, process CPU per event, the bundle (main) thread's CPU per event, the
stand-in's CPU per event. Prints a Markdown table (pasted into docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

VARIANTS = {
    "no-op sink": "noop",
    "no-op sink holding the last 2 lists": "hold2",
    "no-op sink holding the last 8 lists": "hold8",
    "instant answers": "instant",
    "stand-in (as shipped)": "http",
}


class InstantTransport:
    """A transport that answers 202 at once, without a network (see io/flexprice/transport)."""

    def __init__(self, cfg):
        from flexprice_beam.io.flexprice.policy import Answer

        self.base_url, self.environment_id = cfg.base_url, None
        self._ok = Answer(202, '{"message":"Events accepted for processing"}')
        self._ready: list = []

    def send(self, path, body, tag=None):
        from flexprice_beam.io.flexprice.transport import Exchange

        ex = Exchange(None, time.monotonic(), tag, self._ok)
        self._ready.append(ex)
        return ex

    def ready(self, timeout):
        done, self._ready = self._ready, []
        return done

    def read(self, ex):
        return ex.answer

    def close(self):
        pass


def _thread_cpu(tid: int) -> float:
    raw = Path(f"/proc/self/task/{tid}/stat").read_text()
    f = raw.rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def child(variant: str, events: int, host_port: str) -> dict:
    """Runs in a fresh process: one pipeline run, measured."""
    import resource

    from benchmarks.workers import CountingSink
    from flexprice_beam.core.config import CollectorConfig
    from flexprice_beam.io.flexprice.sink import WriteToFlexprice
    from flexprice_beam.launch.runner import run

    cfg = CollectorConfig.model_validate({
        "input": {"generate": {"count": events, "seed": 1, "start_time": "2026-01-01T00:00:00Z"}},
        "output": {"flexprice": {"api_host": host_port, "api_key": "bench-key", "scheme": "http"},
                   "dead_letter": {"path": tempfile.mkdtemp(prefix="dl-")}},
        "logger": {"level": "WARNING"}})
    main = os.getpid()
    r0, m0, t0 = resource.getrusage(resource.RUSAGE_SELF), _thread_cpu(main), time.perf_counter()
    if variant.startswith("hold"):  # hold2, hold8: the no-op sink keeping K lists
        sink = CountingSink(hold=int(variant[4:]))
    elif variant == "instant":
        sink = WriteToFlexprice(cfg.output.flexprice, transport=InstantTransport)
    else:  # noop, or None: the product's own sink
        sink = CountingSink() if variant == "noop" else None
    summary = run(cfg, [], sink=sink)
    wall = time.perf_counter() - t0
    r1, m1 = resource.getrusage(resource.RUSAGE_SELF), _thread_cpu(main)
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    return {"rate": events / wall, "cpu_us": cpu / events * 1e6, "main_us": (m1 - m0) / events * 1e6,
            "ok": summary.ok and summary.accepted == events}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=500_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child[0], int(args.child[1]), args.child[2])))
        return 0
    from benchmarks.run import Mock

    work = Path(tempfile.mkdtemp(prefix="sink-costs-"))
    mock = Mock(work)
    results: dict[str, list[dict]] = {k: [] for k in VARIANTS}
    try:
        for rep in range(args.repeats):
            for label, variant in VARIANTS.items():
                mock.reset(0)
                c0 = mock.cpu()
                out = subprocess.run([sys.executable, "-m", "benchmarks.sink_costs", "--child", variant,
                                      str(args.events), mock.host_port],
                                     cwd=ROOT, capture_output=True, text=True, check=True)
                res = json.loads(out.stdout.strip().splitlines()[-1])
                res["mock_us"] = (mock.cpu() - c0) / args.events * 1e6
                results[label].append(res)
                print(f"  {rep + 1}/{args.repeats} {label:<52} {res['rate']:>9,.0f} ev/s  "
                      f"process {res['cpu_us']:5.2f}  main {res['main_us']:5.2f}  stand-in "
                      f"{res['mock_us']:5.2f} µs/event" + ("" if res["ok"] else "  [NOT OK]"), flush=True)
    finally:
        mock.stop()
    med = {k: {m: statistics.median(r[m] for r in v) for m in ("rate", "cpu_us", "main_us", "mock_us")}
           for k, v in results.items()}
    base = med["no-op sink"]["rate"]
    print(f"\n{args.events:,} events per run, medians of {args.repeats}\n")
    print("| variant | events/s | / no-op | process CPU µs/ev | main thread µs/ev | stand-in µs/ev |")
    print("|---|---|---|---|---|---|")
    for k, m in med.items():
        print(f"| {k} | {m['rate']:,.0f} | {m['rate'] / base:.2f} | {m['cpu_us']:.2f} | {m['main_us']:.2f} "
              f"| {m['mock_us']:.2f} |")
    return 0 if all(r["ok"] for v in results.values() for r in v) else 1


if __name__ == "__main__":
    sys.exit(main())
