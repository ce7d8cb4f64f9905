"""``--runner flink`` without a cluster: the Beam options it stands for, preflight errors, and
the per-process ``max_in_flight`` limit of the sink (Flink runs all parallel subtasks of a
TaskManager in one Python SDK worker)."""

from __future__ import annotations

import threading
import time

import pytest
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from flexprice_beam.cli import main as cli_main
from flexprice_beam.launch import flink
from tests.ops_helpers import free_port
from tests.support import config_data, config_file, generate, make_config


def test_beam_args_translate_the_cli_conveniences(monkeypatch):
    for name in (*flink.ENV_JOB_ENDPOINT, *flink.ENV_WORKER_POOL, *flink.ENV_EXPANSION,
                 *flink.ENV_REST):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("FLEXPRICE_FLINK_JOB_ENDPOINT", "jobs.internal:8099")
    monkeypatch.setenv("BEAM_JOB_ENDPOINT", "ignored:1")  # ours wins over flink.sh's
    target = flink.FlinkTarget.from_env("flink.internal:8081")
    args = flink.beam_args(target, job_name="j1", checkpointing_interval=2.5, parallelism=3)
    assert args[:1] == ["--runner=PortableRunner"]
    for expected in ("--job_endpoint=jobs.internal:8099", "--environment_type=EXTERNAL",
                     "--environment_config=localhost:50000", "--streaming",
                     "--checkpointing_interval=2500", "--finish_bundle_before_checkpointing",
                     "--kafka_expansion_service=localhost:8097", "--job_name=j1",
                     "--parallelism=3", "--object_reuse", "--max_bundle_size=5000"):
        assert expected in args
    assert target.rest == "flink.internal:8081"
    # raw Beam options after `--` come last and win
    merged = flink.with_overrides(args, ["--environment_config=pool.internal:50000",
                                         "--max_bundle_size=1000"])
    assert sum(a.startswith("--max_bundle_size") for a in merged) == 1
    opts = PipelineOptions(merged)
    assert opts.get_all_options()["environment_config"] == "pool.internal:50000"
    assert opts.get_all_options(retain_unknown_options=True)["max_bundle_size"] == "1000"
    assert opts.view_as(StandardOptions).streaming


def test_dead_letter_path_becomes_absolute_for_the_workers(mock_api, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = make_config(mock_api, tmp_path)
    rel = cfg.model_copy(update={"output": cfg.output.model_copy(update={
        "dead_letter": cfg.output.dead_letter.model_copy(update={"path": "./dl"})})})
    assert flink.for_cluster(rel).output.dead_letter.path == str(tmp_path / "dl")
    assert flink.for_cluster(cfg) is cfg
    keyed = cfg.model_copy(update={"output": cfg.output.model_copy(update={
        "flexprice": cfg.output.flexprice.model_copy(update={"api_key": None,
                                                             "api_key_file": "key.txt"})})})
    assert flink.for_cluster(keyed).output.flexprice.api_key_file == str(tmp_path / "key.txt")


def _no_events(mock, tmp_path):
    """An unbounded generator of nothing, the key from ``FLEXPRICE_API_KEY``, all else the
    product's defaults."""
    return config_file(config_data(
        mock, tmp_path, input=generate(0, seed=None, start_time=None), fast=False,
        api_key=None, flexprice={"api_key_env": "FLEXPRICE_API_KEY"}, dead_letters=None),
        tmp_path / "c.yaml")


def test_unreachable_cluster_is_exit_2_naming_what_is_missing(mock_api, tmp_path, monkeypatch,
                                                              capfd):
    port = free_port()  # nothing listens there
    monkeypatch.setenv("FLEXPRICE_FLINK_JOB_ENDPOINT", f"127.0.0.1:{port}")
    cfg = _no_events(mock_api, tmp_path)
    started = time.monotonic()
    rc = cli_main(["run", "-c", str(cfg), "--runner", "flink", "--flink-master",
                   f"127.0.0.1:{port}"])
    assert rc == 2 and time.monotonic() - started < 30
    err = capfd.readouterr().err
    assert f"Flink REST http://127.0.0.1:{port}" in err
    assert f"Beam job server 127.0.0.1:{port}" in err


def test_bad_checkpointing_interval_is_exit_2(mock_api, tmp_path):
    cfg = _no_events(mock_api, tmp_path)
    assert cli_main(["run", "-c", str(cfg), "--runner", "flink",
                     "--checkpointing-interval", "soon"]) == 2


@pytest.mark.slow
def test_max_in_flight_holds_per_process_across_sink_instances(mock_api, tmp_path):
    """Two sink DoFn instances in one process (two Flink subtasks) share max_in_flight."""
    from flexprice_beam.io.flexprice.sink import _FlexpriceSinkFn

    mock_api.set_faults(latency_ms=150)
    cfg = make_config(mock_api, tmp_path, flexprice={"max_in_flight": 2,
                                                     "batching": {"count": 5}})
    peak, now, lock = [0], [0], threading.Lock()
    orig = mock_api._dispatch

    def dispatch(h, method, target, *rest):
        with lock:
            now[0] += 1
            peak[0] = max(peak[0], now[0])
        try:
            return orig(h, method, target, *rest)
        finally:
            with lock:
                now[0] -= 1

    mock_api._dispatch = dispatch
    events = _prepared(40)
    fns = [_FlexpriceSinkFn(cfg.output.flexprice) for _ in range(2)]

    def run(fn, items):
        fn.setup()
        fn.start_bundle()
        list(fn.process(items))
        list(fn.finish_bundle())
        fn.teardown()

    try:
        threads = [threading.Thread(target=run, args=(fn, events[i::2]))
                   for i, fn in enumerate(fns)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    finally:
        del mock_api._dispatch
    assert mock_api.stats()["events_stored"] == 40
    # +1: a handler may still be returning when the next request of the freed slot arrives
    assert peak[0] <= 2 + 1, peak[0]


def _prepared(n):
    from flexprice_beam.core.events import Record
    from flexprice_beam.transforms.validate import prepare

    return [prepare(Record(f"r{i}", "2026-01-01T00:00:00Z", None, {}),
                    {"event_name": "api.request", "external_customer_id": "c1",
                     "event_id": f"perm-{i}", "timestamp": "2026-01-01T00:00:00Z",
                     "properties": {"value": i}}) for i in range(n)]


def test_a_batching_period_above_a_second_stretches_flink_bundles():
    target = flink.FlinkTarget()
    assert not any(a.startswith("--max_bundle_time_mills")
                   for a in flink.beam_args(target, job_name="j", batching_period=1.0))
    assert "--max_bundle_time_mills=5000" in flink.beam_args(target, job_name="j",
                                                             batching_period=5.0)
