"""What the runner of a pipeline can do, as far as our IO needs to know.

IO modules choose how they behave (io/kafka.py: how offsets follow delivery) from these
capabilities rather than from the runner's name.  Beam 2.62 says a runner only by its
class (``Pipeline.runner``, made by ``runners.runner.create_runner`` from
``--runner``), so the capabilities are derived from the class hierarchy:

* ``PrismRunner`` (and our ``LocalPrismRunner``): streams, but has no
  ``@RequiresStableInput``, so it never finalizes a checkpoint for KafkaIO.
* ``FnApiRunner`` and the direct runners: in-process engines; none finalizes a checkpoint
  (2.62's ``DirectRunner`` hands streaming pipelines to Prism).
* Every other runner — Flink and Spark (``PortableRunner`` to their job servers),
  Dataflow, a custom one — is taken to finalize checkpoints, KafkaIO's own contract for
  ``commit_offset_in_finalize``; one that cannot refuses the job when it is submitted.
"""

from __future__ import annotations

from dataclasses import dataclass

from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.runners.runner import PipelineRunner, create_runner


def _without_checkpoint_finalize() -> tuple[type, ...]:
    from apache_beam.runners.direct.direct_runner import (
        BundleBasedDirectRunner,
        SwitchingDirectRunner,
    )
    from apache_beam.runners.portability.fn_api_runner import FnApiRunner
    from apache_beam.runners.portability.prism_runner import PrismRunner

    return PrismRunner, FnApiRunner, SwitchingDirectRunner, BundleBasedDirectRunner


@dataclass(frozen=True)
class RunnerCapabilities:
    """``streaming``: the job runs unbounded (``--streaming``); ``finalizes_checkpoints``:
    the runner calls a source's checkpoint finalize once the checkpoint is durable (and so
    supports ``@RequiresStableInput``)."""

    streaming: bool
    finalizes_checkpoints: bool

    @classmethod
    def of(cls, runner: PipelineRunner | type[PipelineRunner] | str | None,
           options: PipelineOptions) -> RunnerCapabilities:
        """From a runner (instance, class or ``--runner`` name; None = the options' own)."""
        if runner is None:
            runner = options.view_as(StandardOptions).runner or "DirectRunner"
        if isinstance(runner, str):
            runner = create_runner(runner)
        kind = runner if isinstance(runner, type) else type(runner)
        return cls(streaming=bool(options.view_as(StandardOptions).streaming),
                   finalizes_checkpoints=not issubclass(kind, _without_checkpoint_finalize()))
