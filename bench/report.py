"""What every benchmark reports the same way: the machine it ran on, its peak memory, and
the table and JSON it leaves behind."""
from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import resource
from pathlib import Path
from typing import Any

MB = 1024 * 1024


def environment(device: str) -> dict[str, Any]:
    """The device, torch and its threads, the platform (and the GPU's name on CUDA)."""
    import torch

    env: dict[str, Any] = {"device": device, "torch": torch.__version__, "threads": torch.get_num_threads(),
                           "platform": platform.platform()}
    if device == "cuda":
        env["gpu"] = torch.cuda.get_device_name()
    return env


def peak_memory_mb(device: str) -> float:
    """Peak allocated GPU memory on CUDA, else this process's peak RSS."""
    if device == "cuda":
        import torch

        return torch.cuda.max_memory_allocated() / MB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def load_average() -> tuple[float, float, float]:
    """Read with every result: figures from a busy machine say so."""
    return os.getloadavg()


def finish(result: dict[str, Any], table: str, out: Path | None) -> None:
    """Print the table; write the JSON where asked."""
    print(table)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2, default=str) + "\n")
        print(f"wrote {out}")


def aligned(rows: list[tuple[str, str, str]], width: int = 16) -> str:
    """Rows of (figure, value, note) as a plain-text table."""
    name_width = max(len(a) for a, _, _ in rows)
    return "\n".join(f"{a:<{name_width}}  {b:>{width}}  {c}" for a, b, c in rows)


def parser(doc: str) -> argparse.ArgumentParser:
    """A benchmark's command line: ``--device`` and ``--out``, described by its docstring's first line."""
    cli = argparse.ArgumentParser(description=doc.split("\n")[0])
    cli.add_argument("--device", choices=("cpu", "cuda"), default=None)
    cli.add_argument("--out", type=Path, default=None, help="write the JSON here")
    return cli


def start_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
