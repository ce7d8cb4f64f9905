"""Progress on stderr from the live registry: a bar for bounded runs, status lines otherwise.

A bounded run knows its total (``generate.count`` or ``kafka.max_records``) and redraws one
line in place; an unbounded one logs a status line every ``interval`` seconds, which also
reads well in a container's log.  Nothing here touches Beam: it only reads ``LIVE``.

Not tqdm: tqdm draws when its owner calls ``update()``, but the numbers here live in another
thread's registry, so the polling thread, the status-line mode (log records, no bar), the
log-line wipe and the whole-run rate at the end would all stay; tqdm would replace only
``render_bar``'s dozen lines, and its meter has no place for accepted/dead-lettered/retries
nor thousands separators without a custom ``bar_format`` as long as the code it replaces.
"""

from __future__ import annotations

import logging
import shutil
import sys
import threading
import time
from typing import TextIO

from flexprice_beam.core.live import LIVE, LiveRegistry, stage_counts

log = logging.getLogger("flexprice_beam.progress")

MODES = ("auto", "bar", "lines", "off")


def choose_mode(mode: str, total: int | None, stream: TextIO = sys.stderr) -> str:
    """``auto``: a bar for a bounded run on a terminal, lines for an unbounded run, else off."""
    if mode != "auto":
        return mode
    if total is None:
        return "lines"
    return "bar" if stream.isatty() else "off"


def _numbers(registry: LiveRegistry) -> dict:
    snap = registry.snapshot()
    counts = stage_counts(snap["counters"])
    rec = counts["reconciliation"]
    return {"read": rec["read"], "done": rec["accounted"], "accepted": rec["accepted"],
            "dead": rec["dead_lettered"], "filtered": rec["filtered"], "dry_run": rec["dry_run"],
            "in_flight": rec["in_flight"], "retries": counts["stages"]["retries"],
            "total": snap["total"], "uptime": snap["uptime_s"]}


def render_bar(n: dict, rate: float, width: int = 100) -> str:
    total = n["total"] or 0
    done = n["done"]
    accepted = f"{n['accepted']:,} accepted" if not n["dry_run"] else f"{n['dry_run']:,} would send"
    tail = (f" {done:,}/{total:,} · {accepted} · {n['dead']:,} dead-lettered · "
            f"{n['retries']:,} retries · {rate:,.0f} ev/s")
    frac = min(1.0, done / total) if total else 0.0
    pct = f"{frac * 100:5.1f}%"
    room = max(10, min(40, width - len(tail) - len(pct) - 4))
    filled = int(frac * room)
    return f"[{'#' * filled}{'-' * (room - filled)}] {pct}{tail}"


def render_line(n: dict, rate: float) -> str:
    return (f"status: {rate:,.1f} events/s · read {n['read']:,} · accepted {n['accepted']:,} · "
            f"retried {n['retries']:,} · dead-lettered {n['dead']:,} · "
            f"in flight {n['in_flight']:,}")


class Progress:
    """Start before the run, ``stop()`` after; a background thread does the drawing."""

    def __init__(self, mode: str = "auto", interval: float = 10.0, total: int | None = None,
                 registry: LiveRegistry = LIVE, stream: TextIO | None = None):
        self._stream = stream or sys.stderr
        self.mode = choose_mode(mode, total, self._stream)
        self._interval = interval if self.mode == "lines" else 0.2
        self._live = registry
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last = (time.monotonic(), 0)

    def start(self) -> Progress:
        if self.mode == "bar":  # a log line wipes the bar first; the next tick redraws it
            self._handlers = [h for h in logging.getLogger().handlers
                              if getattr(h, "stream", None) is self._stream]
            for h in self._handlers:
                h.addFilter(self._clear_line)
        if self.mode != "off":
            self._thread = threading.Thread(target=self._loop, name="flexprice-progress",
                                            daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join(timeout=5)
        self._thread = None
        for h in getattr(self, "_handlers", ()):
            h.removeFilter(self._clear_line)
        self._draw(final=True)

    def _clear_line(self, _record: logging.LogRecord) -> bool:
        self._stream.write("\r\x1b[K")
        return True

    def _rate(self, read: int) -> float:
        now = time.monotonic()
        then, before = self._last
        self._last = (now, read)
        return (read - before) / (now - then) if now > then else 0.0

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            self._draw()

    def _draw(self, final: bool = False) -> None:
        n = _numbers(self._live)
        rate = self._rate(n["read"])
        if final:  # the whole run's average, not the last tick's
            rate = n["read"] / n["uptime"] if n["uptime"] else 0.0
        if self.mode == "bar":
            width = shutil.get_terminal_size((100, 20)).columns
            line = render_bar(n, rate, width)[: width - 1]
            self._stream.write("\r" + line + ("\n" if final else ""))
            self._stream.flush()
        elif not final:
            log.info("%s", render_line(n, rate))
