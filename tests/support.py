"""How tests build collector configs and run the CLI: one place for both.

Configs are dicts shaped like the YAML (the pydantic tree's field names are its keys):

* ``generate(count, **keys)`` / ``kafka_input(topic, **keys)``: the ``input`` section;
* ``config_data(mock, tmp_path, input=..., flexprice={...}, **sections)``: a whole config
  for the stand-in ``mock`` with dead letters under ``tmp_path``; ``flexprice`` and the
  other sections are nested overrides (a JSON Merge Patch, RFC 7386: ``None`` removes a key, so
  the product's default applies);
* ``make_config(...)``: the common case as a validated ``CollectorConfig``;
* ``config_file(cfg, path)``: either of them as a YAML file the CLI reads.

The CLI runs in this process through ``flexprice_beam.cli.main`` or, where a test signals,
kills or measures it, as a subprocess: ``cli(args)`` then ``finish(proc)``, or both at once
with ``cli_run(args)``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from flexprice_beam.core.config import CollectorConfig

ROOT = Path(__file__).resolve().parent.parent
API_KEY = "test-key"
BROKER = "127.0.0.1:19092"  # scripts/kafka.sh's PLAINTEXT listener
SEED = 7
START = "2026-01-01T00:00:00Z"

#: The stand-in output most tests use: small batches and fast, bounded retries.
FAST = {"batching": {"count": 100, "period": "200ms"}, "max_in_flight": 4, "timeout": "2s",
        "retry": {"max_attempts": 12, "initial_backoff": "10ms", "max_backoff": "200ms",
                  "max_elapsed": "60s"}}


def merge(base: dict, patch: dict) -> dict:
    """``patch`` applied to a copy of ``base``: dicts merge key by key, ``None`` removes."""
    out = dict(base)
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def generate(count: int = 100, **keys: Any) -> dict:
    """The generator input: ``count`` events from seed 7 starting at ``START``."""
    return {"generate": merge({"count": count, "seed": SEED, "start_time": START}, keys)}


def kafka_input(topic: str, address: str = BROKER, **keys: Any) -> dict:
    """Kafka input from ``topic`` as group ``g-<topic>``."""
    return {"kafka": merge({"addresses": [address], "topics": [topic],
                            "consumer_group": f"g-{topic}"}, keys)}


def config_data(mock, tmp_path: Path | str, *, input: dict | None = None,  # noqa: A002 - the key
                flexprice: dict | None = None, fast: bool = True, api_key: str | None = API_KEY,
                dead_letters: Path | str | dict | None = "dead-letter", **sections: Any) -> dict:
    """A config for the stand-in ``mock`` (anything with ``host_port``).

    ``flexprice`` patches the output: ``FAST`` (``fast=False``: the product's defaults) with
    ``api_key`` (None: none, for ``api_key_env`` / ``api_key_file`` in ``flexprice``).
    ``dead_letters``: files in ``tmp_path / dead_letters`` (an absolute path stays as it
    is), a whole ``dead_letter`` section as a dict, or None for the product's default.
    ``sections`` patch the rest (``pipeline={...}``, ``logger={...}``)."""
    out = merge({"api_host": mock.host_port, "scheme": "http", **(FAST if fast else {})},
                merge({"api_key": api_key}, flexprice or {}))
    data: dict[str, Any] = {"input": input or generate(), "output": {"flexprice": out}}
    if dead_letters is not None:
        data["output"]["dead_letter"] = dead_letters if isinstance(dead_letters, dict) else {
            "path": str(Path(tmp_path) / dead_letters)}
    return merge(data, sections)


def make_config(mock, tmp_path: Path, *, count: int = 100, input_: dict | None = None,
                flexprice: dict | None = None, pipeline: dict | None = None,
                **generate_keys: Any) -> CollectorConfig:
    """``config_data`` validated: ``count`` generated events (``generate_keys`` add generator
    keys), or ``input_``."""
    return CollectorConfig.model_validate(config_data(
        mock, tmp_path, input=input_ or generate(count, **generate_keys), flexprice=flexprice,
        **({"pipeline": pipeline} if pipeline else {})))


def config_file(cfg: CollectorConfig | dict, path: Path, api_key: str = API_KEY) -> Path:
    """``cfg`` as YAML the CLI reads. A ``CollectorConfig`` hides its key when dumped, so
    ``api_key`` is written in its place; a dict is written as it is."""
    if isinstance(cfg, CollectorConfig):
        data = cfg.model_dump(mode="json")
        data["output"]["flexprice"]["api_key"] = api_key
    else:
        data = cfg
    path.write_text(yaml.safe_dump(data))
    return path


def dead_letter_files(cfg: CollectorConfig) -> list[Path]:
    return sorted(Path(cfg.output.dead_letter.path).glob("*.jsonl"))


def read_dead_letters(cfg: CollectorConfig) -> list[dict]:
    return [json.loads(line) for f in dead_letter_files(cfg)
            for line in f.read_text().splitlines() if line]


# -- the CLI as a subprocess


def cli(args: list[str], env: dict | None = None, **popen: Any) -> subprocess.Popen:
    """``flexprice-beam …`` in its own process group (``os.killpg`` reaches its children),
    output to pipes; ``popen`` overrides (``stderr=subprocess.STDOUT``, ``preexec_fn``)."""
    return subprocess.Popen([sys.executable, "-m", "flexprice_beam", *args], **{
        "cwd": ROOT, "env": {**os.environ, **(env or {})}, "stdout": subprocess.PIPE,
        "stderr": subprocess.PIPE, "text": True, "start_new_session": True, **popen})


def finish(proc: subprocess.Popen, timeout: float = 120) -> tuple[int, str, str]:
    """Wait for ``proc``: (exit code, stdout, stderr); killed and failed after ``timeout``."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise AssertionError(
            f"timed out after {timeout}s\nstdout:\n{out}\nstderr:\n{(err or '')[-4000:]}"
        ) from None
    return proc.returncode, out, err


def cli_run(args: list[str], env: dict | None = None, timeout: float = 120,
            **popen: Any) -> subprocess.CompletedProcess:
    """``cli`` then ``finish``, as a ``CompletedProcess``."""
    proc = cli(args, env, **popen)
    code, out, err = finish(proc, timeout)
    return subprocess.CompletedProcess(proc.args, code, out, err)


def wait_until(predicate, timeout: float = 30.0, every: float = 0.05, what: str = "condition"):
    """The first true value of ``predicate()``, polled every ``every`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"{what} not met within {timeout}s")
