"""Logging in the seed's shape (``INFO[time] message``) or as JSON lines."""

from __future__ import annotations

import json
import logging
import sys
import threading
from collections.abc import Callable
from typing import Any


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {"time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"), "level": record.levelname,
               "logger": record.name, "msg": record.getMessage()}
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


def _quiet_runner_chatter(record: logging.LogRecord) -> bool:
    """Runner subprocesses (Prism, its Java/Python workers) log at INFO whatever our level;
    keep their warnings and errors, drop the rest."""
    if record.name.startswith(("flexprice_beam", "__main__")):
        return True
    return record.levelno >= logging.WARNING


def setup_logging(level: str = "INFO", fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(levelname)s[%(asctime)s] %(message)s",
                                               "%Y-%m-%dT%H:%M:%S"))
    handler.addFilter(_quiet_runner_chatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)  # Beam's own chatter stays at WARNING
    logging.getLogger("flexprice_beam").setLevel(level)


class Sampler:
    """Picks the first ``first`` events, then every ``every``-th: the seed's per-event INFO
    lines ("📤 Sending event …") without a flood of millions of lines at INFO."""

    def __init__(self, first: int = 5, every: int = 1000):
        self.first = first
        self.every = max(1, every)
        self._seen = 0
        self._lock = threading.Lock()

    def picks(self, n: int) -> list[int]:
        """Indices among the next ``n`` events to log."""
        with self._lock:
            start, self._seen = self._seen, self._seen + n
        out = list(range(min(n, max(0, self.first - start))))
        k = -start % self.every
        out.extend(i for i in range(k, n, self.every) if start + i >= self.first)
        return out


def log_events(logger: logging.Logger, sampler: Sampler, items: list, message: str,
               args_of: Callable[[Any], tuple]) -> None:
    """Every event at DEBUG; a sample of them at INFO; nothing above."""
    if logger.isEnabledFor(logging.DEBUG):
        for item in items:
            logger.debug(message, *args_of(item))
    elif logger.isEnabledFor(logging.INFO):
        for i in sampler.picks(len(items)):
            logger.info(message, *args_of(items[i]))
