"""Measurements that run in a fresh child process, one process per measurement.

``python -m benchmarks.workers SPEC.json`` reads a spec, measures, and writes the result to
``spec["result"]`` as JSON. A fresh process per measurement keeps one run's heap, caches and
threads from colouring the next, and lets the parent account CPU per process.

CPU-seconds are ``getrusage`` (user + system, all threads) around the measured section only,
so Python/Beam import time is not charged to the throughput numbers.
"""

from __future__ import annotations

import collections
import json
import resource
import sys
import time
from typing import Any

import apache_beam as beam
from apache_beam.metrics import Metrics


def cpu_seconds() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


# ------------------------------------------------------------------------ no-op sink

class _CountFn(beam.DoFn):
    """Counts the events it is given (as ``events_accepted`` so the run still reconciles);
    with ``hold``, drops each list only ``hold`` lists later (benchmarks/sink_costs.py)."""

    def __init__(self, hold: int = 0) -> None:
        self._seen = Metrics.counter("flexprice", "events_accepted")
        self._hold = hold

    def setup(self) -> None:
        self._held: collections.deque = collections.deque()

    def process(self, items):
        self._seen.inc(len(items))
        if self._hold:
            self._held.append(items)
            if len(self._held) > self._hold:
                self._held.popleft()

    def finish_bundle(self) -> None:
        self._held.clear()


class CountingSink(beam.PTransform):
    """The no-op sink: a PTransform that only counts."""

    def __init__(self, hold: int = 0) -> None:
        super().__init__()
        self._hold = hold

    def expand(self, pcoll):
        from flexprice_beam.io.flexprice.sink import WriteResult

        pcoll | "Count" >> beam.ParDo(_CountFn(self._hold))
        return WriteResult()


# ------------------------------------------------------------------------ the measurements

def _generate_cfg(spec: dict):
    from flexprice_beam.core.config import GenerateInput

    return GenerateInput(count=spec["count"], batch_size=spec.get("batch_size", 500),
                         seed=spec.get("seed", 42), start_time="2026-01-01T00:00:00Z")


def plain(spec: dict) -> dict:
    """The plain-Python bound: the pipeline's own functions in one loop, no Beam, no HTTP."""
    from flexprice_beam.core.config import PipelineConfig
    from flexprice_beam.core.events import parse_timestamp
    from flexprice_beam.io.generate import generate_batch
    from flexprice_beam.transforms import validate
    from flexprice_beam.transforms.mapping import Mapper
    from flexprice_beam.transforms.validate import prepare

    gen = _generate_cfg(spec)
    start = parse_timestamp(gen.start_time)
    mapper = Mapper(PipelineConfig())
    tune = getattr(validate, "tune_gc", None)  # the same GC settings a pipeline worker gets
    if tune is not None:
        tune()
    n, size = gen.count, gen.batch_size
    events = nbytes = 0
    c0, t0 = cpu_seconds(), time.perf_counter()
    for first in range(0, n, size):
        records = generate_batch(gen, start, first, min(first + size, n))
        bodies = [prepare(r, mapper(r)).body for r in records]
        payload = b'{"events":[' + b",".join(bodies) + b"]}"
        events += len(bodies)
        nbytes += len(payload)
    wall, cpu = time.perf_counter() - t0, cpu_seconds() - c0
    return {"wall": wall, "cpu": cpu, "events": events, "bytes": nbytes, "ok": events == n}


def pipeline(spec: dict) -> dict:
    """``runner.run`` on the local engine (FnApiRunner) with the real or the no-op sink."""
    from flexprice_beam.core.config import CollectorConfig
    from flexprice_beam.launch.runner import run

    cfg = CollectorConfig.model_validate(spec["config"])
    sink = CountingSink() if spec.get("sink") == "noop" else None
    profiler = None
    if spec.get("profile") == "pyinstrument":
        from pyinstrument import Profiler

        profiler = Profiler(interval=0.001)
        profiler.start()
    elif spec.get("profile") == "cprofile":
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    c0, t0 = cpu_seconds(), time.perf_counter()
    summary = run(cfg, [], sink=sink)
    wall, cpu = time.perf_counter() - t0, cpu_seconds() - c0
    out: dict[str, Any] = {"wall": wall, "cpu": cpu, "summary": summary.as_dict(),
                           "events": summary.accepted, "ok": summary.ok}
    if spec.get("profile") == "pyinstrument":
        profiler.stop()
        text = profiler.output_text(unicode=True, color=False, show_all=False)
        with open(spec["profile_out"], "w", encoding="utf-8") as f:
            f.write(text)
    elif spec.get("profile") == "cprofile":
        import io
        import pstats

        profiler.disable()
        buf = io.StringIO()
        stats = pstats.Stats(profiler, stream=buf)
        stats.sort_stats("tottime").print_stats(30)
        stats.sort_stats("cumulative").print_stats(40)
        with open(spec["profile_out"], "w", encoding="utf-8") as f:
            f.write(buf.getvalue())
    return out


def stages(spec: dict) -> dict:
    """Microseconds per event of each hot-path step, on one pipeline-sized list of events that
    stays in cache (as a list does while it passes through the fused pipeline), best of 5."""
    import timeit

    from flexprice_beam.core.config import PipelineConfig
    from flexprice_beam.core.events import parse_timestamp
    from flexprice_beam.io.generate import generate_batch
    from flexprice_beam.transforms import validate
    from flexprice_beam.transforms.mapping import Mapper

    gen = _generate_cfg(spec)
    start = parse_timestamp(gen.start_time)
    mapper = Mapper(PipelineConfig())
    tune = getattr(validate, "tune_gc", None)
    if tune is not None:
        tune()
    size = gen.batch_size
    loops = max(1, spec["count"] // size)

    def best(fn) -> float:
        return min(timeit.repeat(fn, number=loops, repeat=5)) / (loops * size) * 1e6

    records = generate_batch(gen, start, 0, size)
    pairs = [(r, mapper(r)) for r in records]
    prepared = [validate.prepare(r, e) for r, e in pairs]
    bodies = [p.body for p in prepared]
    out: dict[str, Any] = {
        "generate": best(lambda: generate_batch(gen, start, 0, size)),
        "map": best(lambda: [mapper(r) for r in records]),
        "validate+serialise (prepare)": best(lambda: [validate.prepare(r, e) for r, e in pairs]),
    }
    model_path = getattr(validate, "prepare_with_model", None)
    if model_path is not None:  # the pydantic-only path, i.e. ``prepare`` before the fast path
        out["validate+serialise (pydantic model only)"] = best(
            lambda: [model_path(r, e) for r, e in pairs])
        every = generate_batch(gen, start, 0, spec["count"])  # equality over many events
        same = True
        for r in every:
            e = mapper(r)
            a, m = validate.prepare(r, e), model_path(r, e)
            same = same and a.body == m.body and a.event == m.event
        out["fast path bytes identical to model path"] = same
    out["envelope join"] = best(lambda: b'{"events":[' + b",".join(bodies) + b"]}")
    return {"us_per_event": out, "ok": True}


KINDS = {"plain": plain, "pipeline": pipeline, "stages": stages}


def main(argv: list[str]) -> int:
    with open(argv[0], encoding="utf-8") as f:
        spec = json.load(f)
    result = KINDS[spec["kind"]](spec)
    with open(spec["result"], "w", encoding="utf-8") as f:
        json.dump(result, f)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
