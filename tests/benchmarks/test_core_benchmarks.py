"""The core benchmarks run end to end (quick mode) and print well-formed, self-checked tables."""

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run(script: str, *args: str) -> str:
    # Timings with the whole-pool invariant check on (make test sets it) would be meaningless.
    env = {k: v for k, v in os.environ.items() if k != "JENGA_DEBUG_INVARIANTS"}
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), *args],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return done.stdout


def test_allocator_overhead_quick_compares_against_real_vllm():
    out = run("allocator_overhead.py", "--quick")
    assert "vLLM 0.32 BlockPool + FullAttentionManager" in out
    ratio = float(re.search(r"Ratio jenga / vLLM = ([0-9.]+)", out).group(1))
    assert 0 < ratio < 100
    # Both peers made identical admission/finish decisions on the same stream.
    assert "same decisions: True" in out


def test_eviction_quality_quick_reports_all_three_evictors():
    out = run("eviction_quality.py", "--quick")
    rows = [
        line for line in out.splitlines() if line.startswith("| gemma") or line.startswith("| gpt")
    ]
    assert len(rows) == 6
    for row in rows:
        rates = [float(x) for x in re.findall(r"\| (0\.\d{3}|1\.000) ", row)]
        assert len(rates) == 3 and all(0 <= r <= 1 for r in rates)


def test_scheduler_overhead_quick_steps_vllms_scheduler_with_both_managers():
    out = run("scheduler_overhead.py", "--quick", "--models", "llama-3.1-8b,gpt-oss-20b")
    rows = [line for line in out.splitlines() if line.startswith("| llama") and "GiB" in line]
    assert len(rows) == 2  # warm and cold pass
    # A homogeneous model: both managers make the very same scheduling decisions.
    assert all("| yes |" in row for row in rows)
    ratios = re.findall(r"\*\*([0-9.]+)x, ([0-9.]+)x\*\*", out)
    assert len(ratios) == 4 and all(0 < float(r) < 100 for pair in ratios for r in pair)
    assert "`allocate_slots`" in out and "`get_computed_blocks`" in out
