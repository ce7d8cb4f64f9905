"""Entry point for launchers: ``python -m flexprice_beam.launch.main --config CFG [Beam options]``.

The Dataflow Flex Template (docker/flex-template) runs this file; it works anywhere else too.

* ``--config`` a YAML file, local or on any Beam filesystem (``gs://bucket/collector.yaml``),
  or ``--config_yaml`` the YAML itself; ``${VAR}`` / ``${VAR:default}`` are expanded from the
  environment as usual.
* ``--api_key_secret projects/P/secrets/S/versions/V`` sets ``output.flexprice.api_key_secret``:
  the workers read the key from Secret Manager in the sink's setup(), so neither the
  template parameters nor the job graph hold it.
* Everything else is a Beam option.  A remote runner (``--runner=DataflowRunner``, also the
  default inside the Flex Template launcher) gets the job submitted and this process exits
  with 0 once it was accepted (``--wait`` waits for the end); unbounded Kafka input turns on
  ``--streaming``.  Without a runner it is a local run like ``flexprice-beam run`` (waits,
  prints the reconciled summary, exit 0/1/3).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from flexprice_beam.core.config import (
    API_KEY_SOURCES,
    CollectorConfig,
    ConfigError,
    FlexpriceOutput,
    load_config_text,
)

log = logging.getLogger("flexprice_beam.main")

#: set by the Flex Template launcher image (docker/flex-template/Dockerfile)
LAUNCHER_ENV = "FLEX_TEMPLATE_PYTHON_PY_FILE"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m flexprice_beam.launch.main",
                                description="Build and run the flexprice-beam collector.")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--config", help="collector YAML: a local path or gs://… (any Beam filesystem)")
    src.add_argument("--config_yaml", help="the collector YAML itself")
    p.add_argument("--api_key_secret",
                   help="Secret Manager version (projects/P/secrets/S/versions/V) the workers "
                        "read the Flexprice API key from (replaces the config's key source)")
    p.add_argument("--wait", action="store_true",
                   help="remote runners: wait until the job ends (default: exit once submitted)")
    return p


def read_text(ref: str) -> str:
    if "://" in ref:
        from apache_beam.io.filesystems import FileSystems

        with FileSystems.open(ref) as f:
            return f.read().decode("utf-8")
    return Path(ref).read_text(encoding="utf-8")


def with_key_secret(cfg: CollectorConfig, name: str) -> CollectorConfig:
    """The config with ``output.flexprice.api_key_secret = name`` as its only key source."""
    flex = FlexpriceOutput.model_validate({
        **cfg.output.flexprice.model_dump(exclude=set(API_KEY_SOURCES)), "api_key_secret": name})
    return cfg.model_copy(update={"output": cfg.output.model_copy(update={"flexprice": flex})})


def load(args: argparse.Namespace) -> CollectorConfig:
    if args.config_yaml is not None:
        cfg = load_config_text(args.config_yaml, "--config_yaml",
                               _keyless_env() if args.api_key_secret else None)
    else:
        cfg = load_config_text(read_text(args.config), args.config,
                               _keyless_env() if args.api_key_secret else None)
    if args.api_key_secret:
        try:
            cfg = with_key_secret(cfg, args.api_key_secret)
        except ValueError as exc:
            raise ConfigError(f"--api_key_secret: {exc}") from None
    return cfg


def _keyless_env() -> dict[str, str]:
    """With --api_key_secret the config's own key source is replaced: a placeholder keeps
    ``api_key: ${FLEXPRICE_API_KEY}`` valid when that variable is not set."""
    return {"FLEXPRICE_API_KEY": "replaced-by-api-key-secret", **os.environ}


def remote_options(cfg: CollectorConfig, beam_args: list[str]):
    """PipelineOptions for a remote runner, or None for a local run."""
    from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

    options = PipelineOptions(beam_args)
    std = options.view_as(StandardOptions)
    if std.runner is None and os.environ.get(LAUNCHER_ENV):
        std.runner = "DataflowRunner"
    from flexprice_beam.pipelines.collector import LOCAL_RUNNERS

    if std.runner is None or std.runner in LOCAL_RUNNERS:
        return None
    kafka = cfg.input.kafka
    if kafka is not None and not kafka.bounded:
        std.streaming = True
    return options


def main(argv: list[str] | None = None) -> int:
    from flexprice_beam.core.logs import setup_logging

    args, beam_args = build_parser().parse_known_args(argv)
    try:
        cfg = load(args)
    except (ConfigError, OSError) as exc:
        print(exc, file=sys.stderr)
        return 2
    setup_logging(cfg.logger.level, cfg.logger.format)
    from flexprice_beam.launch import runner

    options = remote_options(cfg, beam_args)
    if options is None:
        summary = runner.run(cfg, beam_args, progress="off")
        print(summary.render())
        return 1 if summary.error else 0 if summary.balanced else 3
    import apache_beam as beam

    from flexprice_beam.pipelines import collector

    expansion = runner.kafka_expansion(cfg, options)  # Kafka: a local Java expansion service
    try:
        p = beam.Pipeline(options=options)
        collector.build(p, cfg)
        result = p.run()
    except ConfigError as exc:  # e.g. a literal secret for a remote runner
        print(exc, file=sys.stderr)
        return 2
    finally:
        if expansion is not None:
            expansion.stop()
    job_id = result.job_id() if callable(getattr(result, "job_id", None)) else None
    log.info("Submitted the collector (%s)%s", type(result).__name__,
             f": job {job_id}" if job_id else "")
    if args.wait:
        result.wait_until_finish()
    return 0


if __name__ == "__main__":
    sys.exit(main())
