"""Latency percentiles and shed rate against offered load: the HTTP server under bursts of
growing size, and a plot of both.

Each level sends that many speech requests at once (half streamed, half whole clips) to a
server with ``MAX_CONCURRENT_JOBS`` slots and ``MAX_QUEUED_REQUESTS`` places in line (the
same set-up as ``bench/load.py``), waits for every answer, then sends the next level. What
the gate cannot take is answered 429 at once, so the served requests' latency stops growing
once the line is full, and the shed rate takes the rest.

    python bench/load_sweep.py --out bench/results/vm-cpu-load-sweep.json --plot docs/load-sweep.png
    python bench/load_sweep.py --stub --levels 2,8,32 --out /tmp/sweep.json   # stepped stub, seconds
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
# bench/ holds http.py, which must not shadow the standard library's http package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(REPO))

from bench.load import (  # noqa: E402 (after the path set-up above)
    MAX_QUEUED,
    SLOTS,
    TOKENS,
    all_at_once,
    serving,
    speech_body,
    summarize,
)
from bench.random_checkpoint import checkpoint_dir  # noqa: E402

logger = logging.getLogger("benchmark")

DEFAULT_LEVELS = (1, 2, 4, 6, 8, 16, 32, 40)
PLOT_SIZE_IN = (7.0, 4.0)
PLOT_DPI = 110


def level(url: str, voices: list[str], offered: int) -> dict[str, Any]:
    """One burst of ``offered`` requests at once, summarised."""
    bodies = [speech_body(i, voices, stream=i % 2 == 1) for i in range(offered)]
    figures = summarize(all_at_once(url, bodies))
    refused = figures["shed_429"] + figures["unavailable_503"]
    return {"offered": offered, **figures, "shed_rate": round(refused / offered, 3)}


def sweep(url: str, voices: list[str], levels: list[int]) -> list[dict[str, Any]]:
    rows = []
    for offered in levels:
        rows.append(level(url, voices, offered))
        logger.warning("offered %d: %s", offered, rows[-1])
    return rows


def plot(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    """Served latency p50 / p95 (left axis) and shed rate (right axis) against offered load."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    offered = [r["offered"] for r in rows]
    fig, left = plt.subplots(figsize=PLOT_SIZE_IN)
    for key, label, style in (("latency_p50_s", "served p50", "o-"), ("latency_p95_s", "served p95", "s-")):
        left.plot(offered, [r[key] for r in rows], style, label=label)
    left.set_xlabel("requests sent at once")
    left.set_ylabel("latency of served requests (s)")
    left.axvline(SLOTS + MAX_QUEUED, color="grey", linestyle=":", label="slots + places in line")
    right = left.twinx()
    right.plot(offered, [100 * r["shed_rate"] for r in rows], "^--", color="tab:red", label="shed (429/503)")
    right.set_ylabel("shed (%)")
    right.set_ylim(0, 100)
    handles = left.get_legend_handles_labels()[0] + right.get_legend_handles_labels()[0]
    left.legend(handles, [h.get_label() for h in handles], loc="upper left", fontsize="small")
    left.set_title(title, fontsize="medium")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=PLOT_DPI)
    plt.close(fig)


def print_table(rows: list[dict[str, Any]]) -> None:
    print(f"{'offered':>7} {'served':>6} {'429':>4} {'503':>4} {'failed':>6} {'p50 s':>7} {'p95 s':>7} {'shed %':>7}")
    for r in rows:
        print(f"{r['offered']:>7} {r['served']:>6} {r['shed_429']:>4} {r['unavailable_503']:>4} {r['failed']:>6} "
              f"{r['latency_p50_s']!s:>7} {r['latency_p95_s']!s:>7} {100 * r['shed_rate']:>7.1f}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "vm-cpu-load-sweep.json")
    parser.add_argument("--plot", type=Path, default=None, help="PNG path for the plot (default: none)")
    parser.add_argument("--levels", default=",".join(map(str, DEFAULT_LEVELS)), help="comma-separated burst sizes")
    parser.add_argument("--stub", action="store_true", help="a stepped stub model instead of the real one")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    levels = [int(n) for n in args.levels.split(",") if n.strip()]
    ckpt = None if args.stub else checkpoint_dir()
    with tempfile.TemporaryDirectory(prefix="chatterbox-sweep-") as tmp, serving(ckpt, Path(tmp)) as server:
        rows = sweep(server.url, server.voices, levels)
    setup = {"model": "stepped stub" if args.stub else "standard (random weights unless CHATTERBOX_CKPT_DIR)",
             "slots": SLOTS, "max_queued": MAX_QUEUED, "tokens": TOKENS, "platform": platform.platform(),
             "cpus": os.cpu_count(), "command": "python bench/load_sweep.py " + " ".join(sys.argv[1:] if argv is None else argv)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"levels": rows, "setup": setup}, indent=2) + "\n")
    print_table(rows)
    if args.plot:
        plot(rows, args.plot, plot_title(setup))


def plot_title(setup: dict[str, Any]) -> str:
    return (f"{setup['slots']} slots, {setup['max_queued']} places in line, {setup['tokens']} tokens a request\n"
            f"{setup['model']}")


if __name__ == "__main__":
    main()
