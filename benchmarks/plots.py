"""PNG plots for docs/benchmarks.md (matplotlib, Agg backend)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def curve(points: dict, latencies, noop: dict | None, path: Path) -> Path:
    """Throughput (log scale) against the API's response latency, one line per sending style;
    right: the same runs in events per CPU-second of the pipeline process (robust to load)."""
    fig, axes = plt.subplots(1, 2, figsize=(12, 5), dpi=110)
    for ax, key, ylabel in ((axes[0], "rate", "events/s delivered (log scale)"),
                            (axes[1], "per_cpu_s", "events per CPU-second of the pipeline (log)")):
        for (label, pts), marker, dy in zip(points.items(), "os^", (6, -12, 6), strict=False):
            xs = [lat for lat in latencies if lat in pts]
            ys = [pts[lat][key] for lat in xs]
            ax.plot(xs, ys, marker=marker, label=label)
            for x, y in zip(xs, ys, strict=True):
                ax.annotate(f"{y:,.0f}", (x, y), textcoords="offset points", xytext=(4, dy),
                            fontsize=7)
        if noop and noop.get(key):
            ax.axhline(noop[key], color="grey", linestyle="--", linewidth=1,
                       label=f"same pipeline, no-op sink ({noop[key]:,.0f})")
        ax.set_xscale("symlog", linthresh=5)
        ax.set_xticks(list(latencies))
        ax.set_xticklabels([f"{x} ms" for x in latencies])
        ax.set_yscale("log")
        ax.set_xlabel("stand-in response latency per request")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, loc="lower left")
    fig.suptitle("flexprice-beam on DirectRunner (FnApiRunner) → local Flexprice stand-in")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def storm(result: dict, path: Path) -> Path:
    """RSS of the run's process tree and events stored by the stand-in, through a 429 storm."""
    fig, axes = plt.subplots(2, 1, figsize=(9, 7), dpi=110)
    storm_s = result["storm_s"]
    for ax, key, title in (
            (axes[0], "unbounded", "unbounded generator (count 0), stopped with SIGTERM"),
            (axes[1], "bounded", f"bounded run ({result['bounded']['count']:,} events) to completion")):
        run = result[key]
        t = [s["t"] for s in run["samples"]]
        mem = [s for s in run["samples"] if s["rss_mib"] is not None]
        ax.plot([s["t"] for s in mem], [s["rss_mib"] for s in mem], color="tab:blue",
                label="RSS (MiB)")
        ax.set_ylabel("RSS of the run's process tree (MiB)", color="tab:blue", fontsize=8)
        ax.set_ylim(bottom=0)
        t0 = run["storm_start_t"]
        ax.axvspan(t0, t0 + storm_s, color="tab:red", alpha=0.12, label=f"HTTP 429 for {storm_s}s")
        ax2 = ax.twinx()
        ax2.plot(t, [s["stored"] / 1000 for s in run["samples"]], color="tab:green",
                 label="events stored by the stand-in (thousands)")
        ax2.set_ylabel("events stored (thousands)", color="tab:green", fontsize=8)
        ax2.set_ylim(bottom=0)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("seconds since the run was started")
        h1, l1 = ax.get_legend_handles_labels()
        h2, l2 = ax2.get_legend_handles_labels()
        ax.legend(h1 + h2, l1 + l2, fontsize=7, loc="upper left")
        ax.grid(True, alpha=0.3)
    u = result["unbounded"]
    fig.suptitle(f"P4: memory under a 429 storm — peak-RSS growth {u['growth_mib']:+.0f} MiB, "
                 f"lost {result['bounded']['lost']}", fontsize=11)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
