"""``flexprice-beam``: run the collector, lint a config, start the local Flexprice stand-in.

    flexprice-beam run -c examples/generate.yaml [-- --runner=FlinkRunner …]
    flexprice-beam lint -c my.yaml
    flexprice-beam check -c my.yaml                      # preflight, sends no events
    flexprice-beam replay-dead-letters -c my.yaml [--stage delivery] [--since RFC3339]
    flexprice-beam mock-server --port 18080
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import logging
import os
import sys

from flexprice_beam import __version__
from flexprice_beam.core.config import CollectorConfig, ConfigError
from flexprice_beam.core.logs import setup_logging
from flexprice_beam.ops import commands as ops_commands

log = logging.getLogger("flexprice_beam")
# apache_beam warns at import about optional GCP clients we do not use; keep the output clean.
logging.getLogger().addFilter(lambda r: "apitools not found" not in r.getMessage())


def _split_beam_args(argv: list[str]) -> tuple[list[str], list[str]]:
    if "--" in argv:
        i = argv.index("--")
        return argv[:i], argv[i + 1:]
    return argv, []


def cmd_lint(args: argparse.Namespace) -> int:
    try:
        ops_commands.load(args.config)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    print(f"{args.config}: OK")
    return 0


def cmd_run(args: argparse.Namespace, beam_args: list[str]) -> int:
    from flexprice_beam.core import shutdown
    from flexprice_beam.launch import runner

    try:
        cfg = ops_commands.load(args.config)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    setup_logging(args.log_level or cfg.logger.level, args.log_format or cfg.logger.format)
    if args.runner == "flink":
        return _run_flink(args, cfg, beam_args)
    if args.flink_master or args.parallelism or args.attach:
        log.warning("--flink-master/--parallelism/--attach apply to --runner flink only")
    sink = dead_sink = None
    if args.dry_run:
        from flexprice_beam.io.dead_letter import PrintDeadLetters
        from flexprice_beam.io.dry_run import DryRunSink

        sink = DryRunSink(args.dry_run_output)
        dead_sink = PrintDeadLetters(args.dry_run_dead_letters)
    metrics = None
    if not args.no_metrics and (args.metrics_address or cfg.metrics.enabled):
        metrics = args.metrics_address or cfg.metrics.address
    try:
        local = runner.runs_in_process(runner.pipeline_options(list(beam_args), cfg))
    except ValueError:  # e.g. no Prism binary: runner.run reports it below
        local = False
    # Only the generator stops on request; Kafka input exits at once (its uncommitted
    # offsets are read again), see core/shutdown.py.
    signals = shutdown.handle_signals(args.shutdown_grace, graceful=cfg.input.generate is not None) \
        if local else shutdown.nullcontext()
    try:
        with signals as stop:
            summary = runner.run(cfg, beam_args, sink=sink, dead_letter_sink=dead_sink,
                                 metrics=metrics, progress=args.progress,
                                 status_interval=args.status_interval)
    except KeyboardInterrupt:  # Kafka input on SIGTERM/SIGINT, or Ctrl-C without handlers
        code = shutdown.STOP.exit_code if shutdown.STOP.requested.is_set() else 130
        log.error("Interrupted: exiting with %d; nothing uncommitted is lost (re-run to "
                  "read it again)", code)
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        os._exit(code)  # not sys.exit: the sink's threads may still be retrying
    except Exception as exc:  # construction errors: bad options, unreachable expansion service
        log.error("Could not start the pipeline: %s", exc)
        return 2
    if args.read_back is not None and not args.dry_run and summary.accepted:
        _read_back(cfg, summary, args.read_back)
    if args.summary_json:
        with open(args.summary_json, "w", encoding="utf-8") as f:
            json.dump(summary.as_dict(), f, indent=2)
    print(summary.render())
    if stop is not None and stop.requested.is_set() and not stop.graceful:
        # The interrupt surfaced inside a DoFn, so the runner reported it as a failure.
        log.error("Stopped by %s: nothing uncommitted is lost (a re-run reads it again)",
                  stop.signal_name)
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        os._exit(stop.exit_code)  # not sys.exit: the sink's threads may still be retrying
    if summary.error:
        return 1
    if stop is not None and stop.requested.is_set() and stop.cut_short:
        log.error("Stopped by %s before the input was finished: %d read, %d accepted, "
                  "%d dead-lettered%s. Re-run with the same config to send the rest "
                  "(what already arrived is deduplicated).", stop.signal_name, summary.read,
                  summary.accepted, summary.dead_lettered,
                  "; everything read is accounted for" if summary.balanced else
                  "; COUNTS DO NOT BALANCE")
        if stop.resume_hint:
            log.error("input.generate.start_time is not set, so a re-run would stamp the "
                      "same event ids with new times (new events for Flexprice). To resume, "
                      "set %s", stop.resume_hint)
        return stop.exit_code
    if not summary.balanced:
        log.error("Counts do not balance: %d read, %d accepted, %d dead-lettered, %d filtered",
                  summary.read, summary.accepted, summary.dead_lettered, summary.filtered)
        return 3
    return 0


def _read_back(cfg: CollectorConfig, summary, wait: float) -> None:
    """``run --read-back``: look for a sample of the accepted events in Flexprice. Never an
    error: 202 means queued, so what is not readable yet is reported as queued."""
    from flexprice_beam.core import live
    from flexprice_beam.io.api import ApiClient
    from flexprice_beam.io.readback import read_back

    sample = live.LIVE.accepted_sample()
    if not sample:  # the sink ran in other processes (a portable runner): nothing to look up
        summary.held_text = "no sample of the accepted events in this process to read back"
        return
    with ApiClient(cfg.output.flexprice) as client:
        held = read_back(client, sample, wait)
    summary.held, summary.held_text = held.as_dict(), held.render()


def _run_flink(args: argparse.Namespace, cfg: CollectorConfig, beam_args: list[str]) -> int:
    """A streaming job on a Flink cluster (launch/flink.py, docs/runners.md)."""
    from flexprice_beam.core.config import parse_duration
    from flexprice_beam.launch import flink

    if args.dry_run:
        print("--dry-run runs locally only; drop --runner flink", file=sys.stderr)
        return 2
    try:
        interval = parse_duration(args.checkpointing_interval)
    except ValueError as exc:
        print(f"--checkpointing-interval: {exc}", file=sys.stderr)
        return 2
    try:
        return flink.run_cli(cfg, flink_master=args.flink_master, parallelism=args.parallelism,
                             checkpointing_interval=interval, attach_job=args.attach,
                             status_interval=args.status_interval, extra_args=beam_args,
                             summary_json=args.summary_json)
    except Exception as exc:  # construction/submission errors: bad options, job server down
        log.error("Could not submit the job to Flink: %s", exc)
        return 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flexprice-beam",
        description="Stream usage events into Flexprice with Apache Beam.",
        epilog="Arguments after `--` go to Beam, e.g. `-- --runner=FlinkRunner`.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the collector pipeline",
                         description="Run the collector; arguments after `--` go to Beam.")
    run.add_argument("-c", "--config", required=True, help="collector YAML config")
    run.add_argument("--dry-run", action="store_true",
                     help="read, map and validate, but send nothing")
    run.add_argument("--dry-run-output", default="-",
                     help="where a dry run writes the events it would send (JSON Lines, - = stdout)")
    run.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    run.add_argument("--log-format", choices=["text", "json"])
    run.add_argument("--summary-json", help="also write the run summary to this file")
    run.add_argument("--read-back", type=float, metavar="SECONDS", default=None,
                     help="after the run, read a sample of the accepted events back from "
                          "Flexprice, waiting up to SECONDS for what is still queued (its "
                          "store is fed by a throttled queue consumer); reported, never fatal")
    run.add_argument("--dry-run-dead-letters", default="-",
                     help="where a dry run writes its dead letters (JSON Lines, - = stderr); "
                          "the dead-letter directory is left alone")
    run.add_argument("--metrics-address",
                     help="serve /metrics, /ping, /stats here (default: metrics.address, "
                          "0.0.0.0:4195)")
    run.add_argument("--no-metrics", action="store_true", help="do not serve metrics")
    run.add_argument("--progress", choices=["auto", "bar", "lines", "off"], default="auto",
                     help="bar (bounded runs), status lines (unbounded), or off; auto picks")
    run.add_argument("--status-interval", type=float, default=10.0,
                     help="seconds between status lines (default 10)")
    run.add_argument("--shutdown-grace", type=float, default=30.0,
                     help="after SIGTERM/Ctrl-C, seconds in-flight batches may keep retrying "
                          "before they are dead-lettered (default 30); a second signal exits "
                          "at once")
    run.add_argument("--runner", choices=["direct", "flink"], default=None,
                     help="direct (default: this process) or flink: submit a streaming job "
                          "through the Beam job server (FLEXPRICE_FLINK_JOB_ENDPOINT, "
                          "localhost:8099); see docs/runners.md")
    run.add_argument("--flink-master", metavar="HOST:PORT",
                     help="Flink REST address, to find, follow and cancel the job "
                          "(default $FLINK_REST or 127.0.0.1:8081)")
    run.add_argument("--parallelism", type=int, help="Flink parallelism of the job")
    run.add_argument("--checkpointing-interval", default="10s",
                     help="Flink checkpoint interval (default 10s); Kafka offsets are "
                          "committed when a checkpoint completes")
    run.add_argument("--attach", action="store_true",
                     help="--runner flink: stay attached and log status; Ctrl-C cancels the "
                          "job (default: return once the job runs and print its id)")

    lint = sub.add_parser("lint", help="validate a config file (exit 0 or 1)")
    lint.add_argument("-c", "--config", required=True)

    sub.add_parser("mock-server", help="start the local Flexprice stand-in", add_help=False)
    sub.add_parser("send-events", help="produce N test events to Kafka", add_help=False)
    ops_commands.add_parsers(sub)
    return parser


STANDIN = "flexprice_mock"


def cmd_mock_server(argv: list[str]) -> int:
    """The stand-in is a separate package (never shipped to workers), found at run time."""
    if importlib.util.find_spec(STANDIN) is None:
        print(f"mock-server: the Flexprice stand-in ({STANDIN}) is not installed here. It lives "
              "beside the product in this repository: pip install -e ./standin (run_local.sh "
              "and requirements-dev.txt do this).", file=sys.stderr)
        return 2
    server = importlib.import_module(f"{STANDIN}.server")
    return server.main(argv)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["mock-server"]:
        return cmd_mock_server(argv[1:])
    if argv[:1] == ["send-events"]:
        from flexprice_beam.io.send_events import main as send_main

        return send_main(argv[1:])
    ours, beam_args = _split_beam_args(argv)
    args = build_parser().parse_args(ours)
    if args.command == "lint":
        return cmd_lint(args)
    if args.command == "run":
        return cmd_run(args, beam_args)
    if args.command in ops_commands.COMMANDS:
        args.beam_args = beam_args  # FileSystems options (--s3_endpoint_url, …) for replay
        return ops_commands.COMMANDS[args.command](args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
