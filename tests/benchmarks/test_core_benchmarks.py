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
        [sys.executable, "-m", "benchmarks." + script.removesuffix(".py"), *args],
        cwd=ROOT,
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


def test_the_replay_sweep_runs_a_different_workload_per_seed():
    # The sweep totals seeds × budgets schedules per model, and reports the spread over quarters
    # of the seeds; they are that many only if each seed changes the workload's shape
    # (e2e_throughput's lengths are fixed: its seed changes only token ids).
    from benchmarks.scheduler_replay import SWEEP_QUARTERS, SWEEP_SEEDS, sweep_workload
    from jenga_vllm.tools.zoo import word_token_ids

    shapes = set()
    for seed in SWEEP_SEEDS:
        prompts = sweep_workload(32, seed)
        assert len(prompts) == 32 and all(96 <= len(p) <= 128 + 223 for p in prompts)
        prefix = word_token_ids(seed, 128)
        sharing = tuple(p[:128] == prefix for p in prompts)
        assert 8 <= sum(sharing) <= 24
        shapes.add((tuple(len(p) for p in prompts), sharing))
    assert len(shapes) == len(SWEEP_SEEDS)
    assert len(SWEEP_SEEDS) % SWEEP_QUARTERS == 0
