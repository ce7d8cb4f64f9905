"""Helpers for the operating tests: free ports, config files, polling the live endpoints."""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request
from pathlib import Path

import yaml

from flexprice_beam.core.config import CollectorConfig
from tests.conftest import API_KEY
from tests.reliability_helpers import wait_until


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def config_file(cfg: CollectorConfig, path: Path, api_key: str = API_KEY) -> Path:
    """Write ``cfg`` (from ``make_config``) as YAML the CLI can read."""
    data = cfg.model_dump(mode="json")
    data["output"]["flexprice"]["api_key"] = api_key
    path.write_text(yaml.safe_dump(data))
    return path


def get(url: str, timeout: float = 2.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def stats(base: str) -> dict:
    return json.loads(get(base + "/stats")[1])


def wait_for(predicate, timeout: float = 10.0, every: float = 0.05):
    return wait_until(predicate, timeout, every)


def dead_letter_files(cfg: CollectorConfig) -> list[Path]:
    return sorted(Path(cfg.output.dead_letter.path).glob("*.jsonl"))
