"""Prefill/decode disaggregation over vLLM's NixlConnector with jenga's pool, real engines.

Two ``vllm serve`` engines on 127.0.0.1 (benchmarks/common/disagg.py), NIXL over UCX moving the
prompt's KV from the prefill engine's pool into the decode engine's; prefix caching on in
both. The decode engine's greedy text must equal one stock engine's serving the whole request,
and it must have loaded the prompts, not computed them (vLLM's prompt-token counters by
source). Same on stock's own P/D pair, the peer. A model of more than one layer type is refused
at start-up with one error naming the fix (supported.py: ``nixl_multi_type``).
"""

from __future__ import annotations

import fcntl

import pytest

from benchmarks.common.disagg import disaggregate, serve_pair, transferred_tokens
from benchmarks.common.engines import ENGINE_LOCK
from jenga_vllm.tools.server import VllmServer
from jenga_vllm.tools.zoo import build_model, word_token_ids

pytestmark = pytest.mark.e2e

KV_BYTES = 4 * 2048 * 512  # four max-length requests of the Llama-like zoo model (fp32)
MAX_TOKENS = 12


def prompts() -> list[list[int]]:
    """Eight prompts of 70–290 tokens; four share a 128-token prefix (a prefix hit on either
    engine must not change what is transferred or generated)."""
    shared = word_token_ids(41, 128)
    return [
        word_token_ids(900 + i, 70 + 31 * i, prefix=shared if i % 2 else None) for i in range(8)
    ]


@pytest.fixture(scope="module")
def engine_lock():
    with open(ENGINE_LOCK, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


@pytest.fixture(scope="module")
def single_stock(engine_lock) -> list[str]:
    """The reference: one stock engine serves each request whole."""
    with VllmServer(build_model("llama"), "vllm", kv_cache_memory_bytes=KV_BYTES) as server:
        out = []
        for prompt in prompts():
            status, body = server.complete(prompt, MAX_TOKENS)
            assert status == 200, body
            out.append(body["choices"][0]["text"])
        return out


def run_pair(prefill: str, decode: str) -> tuple[list[dict], dict, dict]:
    with serve_pair(build_model("llama"), prefill, decode, KV_BYTES) as (p, d):
        results = disaggregate(p, d, prompts(), MAX_TOKENS)
        return results, transferred_tokens(p), transferred_tokens(d)


@pytest.mark.parametrize("prefill,decode", [("jenga", "jenga"), ("vllm", "vllm")])
def test_decode_engine_gives_a_single_stock_engines_tokens(single_stock, prefill, decode):
    results, on_prefill, on_decode = run_pair(prefill, decode)
    assert [r["text"] for r in results] == single_stock
    total = sum(len(p) for p in prompts())
    # The decode engine computed none of the prompts (vLLM's count by source): it loaded them,
    # or hit them in its own prefix cache (a shared prefix an earlier request had loaded: how
    # many depends on timing).
    assert on_decode.get("local_compute", 0) == 0, on_decode
    assert on_decode["external_kv_transfer"] + on_decode.get("local_cache_hit", 0) == total
    assert on_decode["external_kv_transfer"] > total / 2, on_decode
    assert on_prefill.get("external_kv_transfer", 0) == 0, on_prefill
    assert all(r["params"]["remote_block_ids"] for r in results)


def test_jenga_prefill_with_stock_decode_gives_the_same_tokens(single_stock):
    """On a one-type model jenga's pool regions are vLLM's own layout (layer after layer, a page
    per unit id), so a stock decode engine reads a jenga prefill engine's blocks as its own."""
    results, _, on_decode = run_pair("jenga", "vllm")
    assert [r["text"] for r in results] == single_stock
    assert on_decode.get("external_kv_transfer", 0) > 0


def test_a_model_of_two_layer_types_is_refused_at_start_up(engine_lock):
    server = VllmServer(
        build_model("gemma3"),
        "jenga",
        kv_cache_memory_bytes=KV_BYTES,
        extra_args=(
            "--kv-transfer-config",
            '{"kv_connector":"NixlConnector","kv_role":"kv_both","kv_buffer_device":"cpu"}',
        ),
        startup_timeout=300,
    )
    with pytest.raises(RuntimeError):
        server.__enter__()
    server.stop()
    log = server.log_text()
    assert "does not support NixlConnector on a model of more than one layer type" in log
    assert "--kv-cache-manager vllm" in log
