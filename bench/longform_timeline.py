"""The long-text timeline picture: each chunk's T3 and S3Gen on a time line.

Sequential above, side by side below, each on its own time axis (so the shorter run ends
visibly earlier), and the stream's audio items as ticks, before and after the look-ahead.
Drawn with matplotlib from the spans ``bench/longform.py`` records.

    python bench/longform_timeline.py bench/results/vm-cpu-longform.json docs/longform-timeline.png
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

COLOURS = {"t3": "#4c72b0", "s3gen": "#dd8452"}
BAR_HEIGHT = 0.38
STREAM_ROWS = (("stream_before", "stream, no look-ahead"), ("stream_after", "stream, look-ahead 1"))


def _spans(ax, spans: list[dict[str, Any]], title: str) -> None:
    for span in spans:
        offset = -BAR_HEIGHT / 2 if span["kind"] == "t3" else BAR_HEIGHT / 2
        ax.barh(span["chunk"] + offset, span["end"] - span["start"], left=span["start"], height=BAR_HEIGHT,
                color=COLOURS[span["kind"]], edgecolor="none")
    chunks = sorted({s["chunk"] for s in spans})
    ax.set_yticks(chunks)
    ax.set_yticklabels([str(c + 1) for c in chunks], fontsize=6)
    ax.invert_yaxis()
    ax.set_ylabel("chunk")
    end = max((s["end"] for s in spans), default=0.0)
    ax.set_title(f"{title}: {end:.1f} s", fontsize=9, loc="left")


def _ticks(ax, timeline: dict[str, Any]) -> None:
    for row, (key, label) in enumerate(STREAM_ROWS):
        items = timeline.get(key, [])
        ax.vlines([i["t"] for i in items], row - 0.35, row + 0.35, color="black", linewidth=0.8)
        if items:
            ax.text(items[-1]["t"], row, f"  {label}", va="center", fontsize=7)
    ax.set_yticks(range(len(STREAM_ROWS)))
    ax.set_yticklabels([label for _, label in STREAM_ROWS], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("seconds from the job's start")
    ax.set_title("streamed audio items (one tick each)", fontsize=9, loc="left")


def draw_timeline(timeline: dict[str, Any], out: Path, *, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    fig, axes = plt.subplots(3, 1, figsize=(10, 8), gridspec_kw={"height_ratios": [4, 4, 1.4]})
    _spans(axes[0], timeline["sequential"], "sequential (one chunk after another)")
    _spans(axes[1], timeline["parallel"], "side by side")
    right = max(s["end"] for key in ("sequential", "parallel") for s in timeline[key])
    for ax in axes[:2]:
        ax.set_xlim(0, right * 1.02)
    _ticks(axes[2], timeline)
    axes[0].legend(handles=[Patch(color=c, label=k.upper() if k == "t3" else "S3Gen") for k, c in COLOURS.items()],
                   loc="lower right", fontsize=7)
    fig.suptitle(f"Long text, 16 sentences ({title})", fontsize=10)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    result = json.loads(Path(sys.argv[1]).read_text())
    draw_timeline(result["timeline"], Path(sys.argv[2]),
                  title=f"{result['device']}, {result['chunk_tokens']} tokens a chunk")
