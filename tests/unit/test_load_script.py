"""The short version of the load benchmark, on the stepped stub: every phase runs and its
outcome counts hold (the figures themselves are the benchmark's, not asserted here)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
RUN_TIMEOUT_S = 300


def test_the_load_benchmark_s_short_version(tmp_path):
    out = tmp_path / "load.json"
    run = subprocess.run([sys.executable, "bench/load.py", "--stub", "--out", str(out)], cwd=REPO,
                         capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    assert run.returncode == 0, run.stdout + run.stderr
    report = json.loads(out.read_text())
    flood = report["flood"]
    assert flood["requests"] == flood["served"] + flood["shed_429"] + flood["unavailable_503"]
    assert flood["failed"] == 0 and flood["connection_errors"] == 0 and flood["every_refusal_has_retry_after"]
    assert flood["served"] >= 2 and flood["shed_429"] > 0  # 2 slots and a wait of 4, 40 requests
    assert flood["ping_port"]["failures"] == 0 and flood["ping_health_port"]["failures"] == 0
    abandon = report["abandon"]  # on a server whose line takes a whole wave: 8 + 8 abandon, none is refused
    assert (abandon["streams"], abandon["clips"], abandon["max_queued"]) == (8, 8, 8)
    assert abandon["streams_left_after_first_bytes"] == 8 and abandon["clips_timed_out_client_side"] == 8
    assert abandon["streams_refused"] == 0 and abandon["clips_refused"] == 0
    assert abandon["next_status"] == 200
    assert any('reason="client_gone"' in line for line in abandon["cancelled_counts"])
    assert report["setup"]["max_queued"] == 4  # the flood's line
    sigterm = report["sigterm"]
    assert sigterm["exit_code"] == 0 and sigterm["every_client_answered"]
    assert all(o.endswith(":audio") or o.startswith("503:") for o in sigterm["outcomes"]), sigterm["outcomes"]
    assert report["queue_cancel"]["gate"] == {"cancelled": 1}
    assert "flood: requests" in run.stdout  # the table


def test_the_load_sweep_sheds_what_the_gate_cannot_take_and_draws_its_plot(tmp_path):
    out, picture = tmp_path / "sweep.json", tmp_path / "sweep.png"
    run = subprocess.run([sys.executable, "bench/load_sweep.py", "--stub", "--levels", "1,12", "--out", str(out),
                          "--plot", str(picture)], cwd=REPO, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    assert run.returncode == 0, run.stdout + run.stderr
    small, large = json.loads(out.read_text())["levels"]
    assert (small["offered"], small["served"], small["shed_rate"]) == (1, 1, 0.0)
    # 2 slots and 4 places in line (bench/load.py): 12 at once leave at least 6 to shed.
    assert large["failed"] == 0 and large["served"] + large["shed_429"] + large["unavailable_503"] == 12
    assert large["shed_429"] >= 6 and large["every_refusal_has_retry_after"]
    assert picture.read_bytes().startswith(b"\x89PNG")
