"""The operating subcommands, ``check``, ``replay-dead-letters`` and ``backfill``, kept
out of cli.py so that file stays a thin dispatcher several people can edit."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from flexprice_beam.core.config import CollectorConfig, ConfigError, load_config
from flexprice_beam.core.logs import setup_logging
from flexprice_beam.transforms.mapping import check_mapping


def load(path: str) -> CollectorConfig:
    """The config file, with its mapping compiled: a bad expression is a config error here,
    not 10k dead letters later."""
    cfg = load_config(path)
    check_mapping(cfg.pipeline)
    return cfg


def _config(args: argparse.Namespace):
    cfg = load(args.config)
    setup_logging(args.log_level or cfg.logger.level, args.log_format or cfg.logger.format)
    return cfg


def cmd_check(args: argparse.Namespace) -> int:
    from flexprice_beam.io.api import InsecureTransportError
    from flexprice_beam.ops.check import run_check

    try:
        cfg = _config(args)
        report = run_check(cfg, sample=args.sample, timeout=args.timeout)
    except (ConfigError, InsecureTransportError) as exc:
        print(exc, file=sys.stderr)
        return 2
    print(report.render())
    return 1 if report.problems else 0


def cmd_replay(args: argparse.Namespace) -> int:
    from flexprice_beam.io.api import InsecureTransportError
    from flexprice_beam.ops.replay import replay

    try:
        cfg = _config(args)
        if getattr(args, "beam_args", None):
            from apache_beam.io.filesystems import FileSystems
            from apache_beam.options.pipeline_options import PipelineOptions

            FileSystems.set_options(PipelineOptions(args.beam_args))
        report = replay(cfg, args.path, stage=args.stage, since=args.since, dry_run=args.dry_run,
                        group=args.group, read_back_wait=args.read_back)
    except (ConfigError, InsecureTransportError, ValueError) as exc:
        print(exc, file=sys.stderr)
        return 2
    print(report.render())
    return report.exit_code


def cmd_backfill(args: argparse.Namespace) -> int:
    from flexprice_beam.io.kafka_range import KafkaReadError
    from flexprice_beam.ops.backfill import backfill

    try:
        cfg = _config(args)
        report = backfill(cfg, start=args.start, stop=args.stop, from_offsets=args.from_offsets,
                          to_offsets=args.to_offsets, commit=args.commit,
                          progress=args.progress)
    except (ConfigError, ValueError, KafkaReadError) as exc:
        print(exc, file=sys.stderr)
        return 2
    print(report.render())
    return report.exit_code


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("-c", "--config", required=True, help="collector YAML config")
    p.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    p.add_argument("--log-format", choices=["text", "json"])


def add_parsers(sub: argparse._SubParsersAction) -> None:
    check = sub.add_parser(
        "check", help="preflight: API key, meters, aggregated properties, customers",
        description="Sample the input, map and validate it, and check it against Flexprice "
                    "(read-only: sends no events). Exit 0 when fine, 1 on problems, 2 on bad "
                    "config.")
    _common(check)
    check.add_argument("--sample", type=int, default=100, help="records to sample (default 100)")
    check.add_argument("--timeout", type=float, default=10.0,
                       help="seconds to wait for Kafka records (default 10)")

    rp = sub.add_parser(
        "replay-dead-letters", help="re-send dead-lettered events with their original ids",
        description="Re-send dead-lettered events (original event_id and timestamp, so "
                    "Flexprice deduplicates); accepted ones leave the files. Exit 0 all "
                    "accepted, 1 stopped (401/403), 2 bad config, 3 some failed again.")
    _common(rp)
    rp.add_argument("--path", help="dead-letter folder or glob, any Beam FileSystems URL "
                                   "(default: output.dead_letter.path); S3 options such as "
                                   "--s3_endpoint_url go after --")
    rp.add_argument("--group", help="replay output.dead_letter.kafka's topic with this consumer "
                                    "group instead of the files (its offsets record what was "
                                    "replayed)")
    rp.add_argument("--stage", choices=["mapping", "validation", "delivery"],
                    help="only letters of this stage (default: every letter with an event)")
    rp.add_argument("--since", help="only letters written at or after this RFC3339 time")
    rp.add_argument("--dry-run", action="store_true", help="count what would be replayed")
    rp.add_argument("--read-back", type=float, metavar="SECONDS", default=None,
                    help="then read a sample of the accepted events back, waiting up to "
                         "SECONDS for what Flexprice still has queued (reported, never fatal)")

    bf = sub.add_parser(
        "backfill", help="re-read a Kafka range (times or offsets) into Flexprice",
        description="Re-read the records of a time or offset range with their original "
                    "event_id and timestamp (Flexprice deduplicates what already arrived), "
                    "then print the range and its reconciliation. The consumer group's "
                    "offsets are not moved unless --commit. Exit 0 reconciled, 1 failed, "
                    "2 bad arguments, 3 counts do not balance.")
    _common(bf)
    bf.add_argument("--from", dest="start", metavar="TIME",
                    help="RFC3339: the first record time to read (inclusive)")
    bf.add_argument("--to", dest="stop", metavar="TIME",
                    help="RFC3339: read records before this time (default: up to the end)")
    bf.add_argument("--from-offsets", metavar="T/P=OFFSET,...",
                    help="first offset per partition, e.g. events/0=100,events/1=0; "
                         "partitions not named here or in --to-offsets are not read")
    bf.add_argument("--to-offsets", metavar="T/P=OFFSET,...",
                    help="first offset not to read, per partition (default: the end)")
    bf.add_argument("--commit", action="store_true",
                    help="commit the consumer group's offsets to the range end after delivery")
    bf.add_argument("--progress", choices=["auto", "bar", "lines", "off"], default="off")


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "backfill": cmd_backfill,
    "check": cmd_check,
    "replay-dead-letters": cmd_replay,
}
