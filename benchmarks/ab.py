"""Two trees on one machine in one sitting: an older revision against this checkout.

Rates on a shared VM move with the host (docs/benchmarks.md: the same code ran 3.5x slower one
afternoon), so a change is judged against the code before it, interleaved, not against numbers
from another day.  Each round runs ``benchmarks/run.py --only …`` in the older tree (a ``git
worktree`` under .cache/, this checkout's venv, its own harness and stand-in), then here.

    .venv/bin/python benchmarks/ab.py e487482                 # P0-P3, 3 rounds of 3 repeats
    .venv/bin/python benchmarks/ab.py e487482 --only P4 --rounds 1
    .venv/bin/python benchmarks/ab.py e487482 --quick --rounds 1   # smoke
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "ab"
#: a measurement line of run.py's P0-P3 (the same words in every revision since issue 7)
LINE = re.compile(r"^\s+(plain-Python loop|pipeline, no-op sink|pipeline → stand-in @ (?:0|20) ms"
                  r" \(default cfg\)|seed style \(single, 1 in flight\) @ 20 ms)\s+([\d,]+) ev/s")
P4 = re.compile(r"peak \d+ MiB \(growth ([+-]\d+) MiB.*?(\d+) × 429")
NAMES = {"plain-Python loop": "plain", "pipeline, no-op sink": "noop",
         "pipeline → stand-in @ 0 ms (default cfg)": "flex0",
         "pipeline → stand-in @ 20 ms (default cfg)": "flex20",
         "seed style (single, 1 in flight) @ 20 ms": "seed"}
#: run.py's targets as ratios of medians (P2 is a ratio too: events/s against the seed's)
RATIOS = (("P0", "flex0", "plain"), ("P1", "flex0", "noop"), ("P2", "flex20", "seed"),
          ("P3", "flex20", "noop"))


def worktree(rev: str) -> Path:
    path = ROOT / ".cache" / f"ab-{rev}"
    if not path.exists():
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(path), rev],
                       check=True)
    return path


def run(tree: Path, args: list[str], log: Path) -> str:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    with log.open("w") as f:
        subprocess.run([sys.executable, "benchmarks/run.py", *args], cwd=tree, env=env,
                       stdout=f, stderr=subprocess.STDOUT, check=False)
    return log.read_text()


def rates(text: str) -> dict[str, list[int]]:
    """events/s of every measurement in one run.py log, by name."""
    got: dict[str, list[int]] = {}
    for line in text.splitlines():
        if m := LINE.match(line):
            got.setdefault(NAMES[m.group(1)], []).append(int(m.group(2).replace(",", "")))
    return got


def summary(side: str, logs: list[str]) -> list[str]:
    r: dict[str, list[int]] = {}
    for text in logs:
        for name, values in rates(text).items():
            r.setdefault(name, []).extend(values)
    rows = []
    med = {k: statistics.median(v) for k, v in r.items()}
    ratios = [(label, num, den) for label, num, den in RATIOS if num in med and den in med]
    if ratios:
        parts = [f"{label} {med[num] / med[den]:.0f}×" if label == "P2"
                 else f"{label} {med[num] / med[den]:.2f}" for label, num, den in ratios]
        if "flex0" in r and "noop" in r and len(r["flex0"]) == len(r["noop"]):
            p1 = [a / b for a, b in zip(r["flex0"], r["noop"], strict=True)]
            parts.append(f"(P1 repeats {min(p1):.2f}-{max(p1):.2f})")
        rates_ = ", ".join(f"{k} {v:,.0f}" for k, v in med.items())
        rows.append(f"{side}: {max(map(len, r.values()))} repeats; {'  '.join(parts)}; "
                    f"events/s {rates_}")
    for text in logs:
        if m := P4.search(text):
            rows.append(f"{side}: P4 peak-RSS growth {m.group(1)} MiB, {m.group(2)} × 429")
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("rev", help="the older revision (a commit, tag or branch)")
    ap.add_argument("--rounds", type=int, default=3, help="older, then this tree, N times")
    ap.add_argument("--only", default="P0,P1,P2,P3", help="run.py sections (default P0-P3)")
    ap.add_argument("--quick", action="store_true", help="run.py --quick (a smoke run)")
    a = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    trees = {a.rev: worktree(a.rev), "this": ROOT}
    args = ["--only", a.only] + (["--quick"] if a.quick else [])
    logs: dict[str, list[str]] = {side: [] for side in trees}
    for n in range(1, a.rounds + 1):
        for side, tree in trees.items():
            print(f"round {n}/{a.rounds}: {side} ({tree})", flush=True)
            logs[side].append(run(tree, args, OUT / f"{side}-{n}.log"))
    for side in trees:
        print("\n".join(summary(side, logs[side])))
    print(f"logs: {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
