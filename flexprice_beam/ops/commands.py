"""The operating subcommands, ``check`` and ``replay-dead-letters``, kept out of cli.py so
that file stays a thin dispatcher several people can edit."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from flexprice_beam.config import ConfigError
from flexprice_beam.logs import setup_logging


def _config(args: argparse.Namespace):
    from flexprice_beam.cli import _load

    cfg = _load(args.config)
    setup_logging(args.log_level or cfg.logger.level, args.log_format or cfg.logger.format)
    return cfg


def cmd_check(args: argparse.Namespace) -> int:
    from flexprice_beam.io.client import InsecureTransportError
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
    from flexprice_beam.io.client import InsecureTransportError
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


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "check": cmd_check,
    "replay-dead-letters": cmd_replay,
}
