"""``vllm serve --kv-cache-manager jenga`` end to end: a real server process, real HTTP requests.

One server (Gemma-4-like tiny model) serves every check: concurrent completions, ``/metrics``
scraped, no page leaked once all requests finished and the prefix cache is reset, and a prompt
longer than the model's max length gets vLLM's normal error while the server keeps serving.
"""

from __future__ import annotations

import fcntl
from concurrent.futures import ThreadPoolExecutor

import pytest

from jenga_vllm.tools.server import VllmServer
from jenga_vllm.tools.zoo import build_model, word_token_ids, words
from tests.vllm.harness import ENGINE_LOCK, kv_budget

pytestmark = pytest.mark.e2e
MODEL = "gemma4"


@pytest.fixture(scope="module")
def server():
    with open(ENGINE_LOCK, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        with VllmServer(build_model(MODEL), "jenga", kv_cache_memory_bytes=kv_budget(MODEL)) as srv:
            yield srv


def test_concurrent_completions_and_metrics(server):
    shared = word_token_ids(3, 96)
    prompts = [words(word_token_ids(40 + i, 30 + 10 * i, prefix=shared)) for i in range(6)]
    status, body = server.complete(prompts[0], 8)  # warm the prefix cache
    assert status == 200, body
    with ThreadPoolExecutor(max_workers=6) as pool:
        results = list(pool.map(lambda p: server.complete(p, 12), prompts))
    assert all(status == 200 for status, _ in results), results
    assert all(body["usage"]["completion_tokens"] == 12 for _, body in results)
    metrics = server.metrics()
    assert metrics["vllm:prefix_cache_hits_total"] > 0
    assert metrics["vllm:prefix_cache_queries_total"] >= metrics["vllm:prefix_cache_hits_total"]
    assert "vllm:kv_cache_usage_perc" in metrics
    assert "vllm:num_preemptions_total" in metrics
    tokens, concurrency = server.capacity()
    assert tokens > 0 and concurrency > 0
    assert "Jenga KV cache layout:" in server.log_text()


def test_no_leak_after_reset(server):
    status, _ = server.complete(words(word_token_ids(5, 200)), 20)
    assert status == 200
    assert server.metrics()["vllm:kv_cache_usage_perc"] == 0.0
    # jenga refuses a reset while any request holds a page: success means none is held.
    assert server.reset_prefix_cache()
    assert server.metrics()["vllm:kv_cache_usage_perc"] == 0.0


def test_too_long_prompt_is_rejected_and_server_keeps_serving(server):
    status, body = server.complete(words(word_token_ids(9, 700)), 4)
    assert status == 400, body
    assert "maximum" in str(body).lower() or "context length" in str(body).lower()
    status, body = server.complete(words(word_token_ids(10, 20)), 4)
    assert status == 200, body
