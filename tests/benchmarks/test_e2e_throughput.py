"""benchmarks/e2e_throughput.py --quick: two real vLLM engines (stock, jenga) on the Gemma-4-like
zoo model; the printed table is well-formed, tokens are identical, jenga's capacity is not lower;
CPU seconds are attributed per process (frontend, EngineCore, Worker) and per engine phase from the
in-process profile pair."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.e2e


def test_e2e_throughput_quick_run_is_well_formed():
    env = {k: v for k, v in os.environ.items() if k != "JENGA_DEBUG_INVARIANTS"}
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.e2e_throughput", "--quick"],
        capture_output=True,
        text=True,
        timeout=1500,
        env=env,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    row = next(line for line in done.stdout.splitlines() if line.startswith("| gemma4 |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    stock_cap, jenga_cap = (int(x) for x in re.findall(r"\d+", cells[2]))
    assert jenga_cap >= stock_cap > 0
    assert re.fullmatch(r"\*\*\d+\.\d\dx\*\* \[\d+\.\d\d–\d+\.\d\d\]", cells[7])
    assert cells[8] == "True"  # identical generated tokens
    seconds = {}
    for line in done.stdout.splitlines()[done.stdout.splitlines().index(row) + 1 :]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        if line.startswith("| gemma4 |") and len(cells) == 5:
            seconds[cells[1]] = (float(cells[2]), float(cells[3]))
    for name in ("frontend", "EngineCore", "Worker", "schedule", "kv_manager", "execute",
                 "attention", "step"):  # fmt: skip
        assert min(seconds[name]) > 0, (name, seconds)
    # phases nest: the KV manager inside the scheduler's calls, attention inside execute
    for k in (0, 1):
        assert seconds["kv_manager"][k] <= seconds["schedule"][k] + seconds["update"][k]
        assert seconds["attention"][k] <= seconds["execute"][k] <= seconds["step"][k]
