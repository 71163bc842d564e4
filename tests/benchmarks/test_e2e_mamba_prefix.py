"""benchmarks/e2e_mamba_prefix.py --quick on the multi-turn workload: two real engines (jenga, stock
with the benchmark's CPU shim) on granite_hybrid; the report is well-formed, every peer generated
the same tokens, jenga hits at least as much as stock, and the simulator replaying the measured
trace predicts jenga's measured hit rate."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.e2e


def test_e2e_mamba_prefix_quick_run_is_well_formed():
    env = {k: v for k, v in os.environ.items() if k != "JENGA_DEBUG_INVARIANTS"}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.e2e_mamba_prefix",
            "--quick",
            "--workloads",
            "multiturn",
            "--peers",
            "jenga,vllm",
        ],
        capture_output=True,
        text=True,
        timeout=1500,
        env=env,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    rows = {
        cells[0]: cells
        for line in done.stdout.splitlines()
        if line.startswith("| jenga |") or line.startswith("| vllm |")
        for cells in [[c.strip() for c in line.strip("|").split("|")]]
    }
    assert rows["jenga"][1] == "32" and rows["vllm"][1] == "64"  # block: jenga's vs inflated
    assert float(rows["jenga"][2]) >= float(rows["vllm"][2]) > 0
    summary = next(line for line in done.stdout.splitlines() if line.startswith("jenga vs stock"))
    ratio = float(re.search(r"measured/predicted \*\*(\d+\.\d+)x\*\*", summary).group(1))
    assert 0.9 <= ratio <= 1.1
    agree = re.search(r"every peer agrees on: (\d+) of (\d+)", summary)
    assert agree and agree.group(1) == agree.group(2), summary  # fp32: every request, every peer
