"""Prefill/decode disaggregation over vLLM's NixlConnector with jenga's pool, real engines.

Two ``vllm serve`` engines on 127.0.0.1 (benchmarks/common/disagg.py), NIXL over UCX moving the
prompt's KV from the prefill engine's pool into the decode engine's; prefix caching on in
both. The decode engine's text must equal one stock engine's serving the whole request —
greedy prompts all at once, then seeded ones (temperature 0.8, top-p 0.95, a seed each) one
at a time — and it must have loaded the prompts, not computed them (vLLM's prompt-token
counters by source). Gemma-3-like model (sliding window + full: jenga's interleaved pool, each
layer registered with NIXL as a unit-strided region, nixl_regions.py): jenga's pair and stock's
own, the peer; jenga's pair then meets failures — decode requests abandoned while their KV is
in flight, a prefill engine that dies before its KV is read (recomputed) — and leaks no page;
then a stock prefill engine in the dead one's place stops at NIXL's handshake with vLLM's
compatibility-hash error (a multi-type jenga layout is not stock's), nothing is moved and the
decode engine recomputes the prompt. Llama-like (one type: jenga's regions are vLLM's own): a
jenga prefill engine with a stock decode engine. Mamba hybrids are refused at start-up
(supported.py: ``nixl_state_layers``).
"""

from __future__ import annotations

import fcntl
import functools
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from benchmarks.common.disagg import (
    REMOTE_DECODE,
    disaggregate,
    nixl_server,
    serve_pair,
    transferred_tokens,
)
from benchmarks.common.engines import ENGINE_LOCK, pin_session
from jenga_vllm.tools.server import VllmServer
from jenga_vllm.tools.zoo import build_model, word_token_ids

pytestmark = pytest.mark.e2e

KV_BYTES = 4 * 2048 * 512  # four max-length requests of the Llama-like zoo model (fp32)
MAX_TOKENS = 12
SEEDED = [{"temperature": 0.8, "top_p": 0.95, "seed": 100 + i} for i in range(3)]


def prompts() -> list[list[int]]:
    """Eight prompts of 70–290 tokens (past the Gemma-3-like model's 64-token window); four
    share a 128-token prefix (a prefix hit on either engine must not change what is
    transferred or generated)."""
    shared = word_token_ids(41, 128)
    return [
        word_token_ids(900 + i, 70 + 31 * i, prefix=shared if i % 2 else None) for i in range(8)
    ]


def seeded_prompts() -> list[list[int]]:
    return [word_token_ids(700 + i, 90 + 60 * i) for i in range(len(SEEDED))]


@pytest.fixture(scope="module")
def engine_lock():
    with open(ENGINE_LOCK, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


@functools.cache
def single_stock(model: str) -> tuple[list[str], list[str]]:
    """The reference: one stock engine serves each request whole (greedy, then seeded)."""
    with VllmServer(build_model(model), "vllm", kv_cache_memory_bytes=KV_BYTES) as server:
        texts = []
        for prompt, fields in [(p, {}) for p in prompts()] + list(
            zip(seeded_prompts(), SEEDED, strict=True)
        ):
            status, body = server.complete(prompt, MAX_TOKENS, **fields)
            assert status == 200, body
            texts.append(body["choices"][0]["text"])
        return texts[: len(prompts())], texts[len(prompts()) :]


def run_pair(
    model: str, prefill: str, decode: str, failures: bool = False
) -> tuple[list[dict], list[dict], dict, dict]:
    """Greedy prompts at once, then seeded ones one at a time, through a pair; with
    ``failures``, then ``abandon_in_flight`` and ``prefill_engine_dies`` on the same pair."""
    failing = {
        "kv_connector_extra_config": {"kv_lease_duration": 6},
        "kv_load_failure_policy": "recompute",
    }
    transfer = failing if failures else None
    with serve_pair(build_model(model), prefill, decode, KV_BYTES, transfer=transfer) as (p, d):
        greedy = disaggregate(p, d, prompts(), MAX_TOKENS)
        seeded = disaggregate(p, d, seeded_prompts(), MAX_TOKENS, sampling=SEEDED)
        counts = transferred_tokens(p), transferred_tokens(d)
        if failures:
            abandon_in_flight(p, d, single_stock(model)[0])
            prefill_engine_dies(p, d, single_stock(model)[0])
            a_stock_prefill_engine_meets_the_handshake(model, d, transfer)
        return greedy, seeded, *counts


def used_bytes(server: VllmServer) -> float:
    """KV bytes in pages the engine's requests hold (jenga's per-type gauge, summed)."""
    return server.metrics().get("vllm:jenga_kv_used_bytes", float("nan"))


def abandon_in_flight(p: VllmServer, d: VllmServer, greedy_ref: list[str]) -> None:
    """Four decode requests whose clients leave after 50 ms — while their KV is loading or just
    after — are aborted by the decode engine; the prefill engine frees the pages nobody read when
    their lease expires (6 s here). Afterwards the same prompts through the pair give a single
    stock engine's tokens, and no page is held on either engine."""
    batch = prompts()
    params = []
    for prompt in batch[:4]:
        status, body = p.complete(prompt, 1, kv_transfer_params=REMOTE_DECODE)
        assert status == 200, body
        params.append(body["kv_transfer_params"])
    with ThreadPoolExecutor(max_workers=4) as pool:
        abandoned = list(
            pool.map(
                lambda a: d.abandon(a[0], 64, 0.05, kv_transfer_params=a[1]),
                zip(batch[:4], params, strict=True),
            )
        )
    assert any(abandoned)
    assert [r["text"] for r in disaggregate(p, d, batch, MAX_TOKENS)] == greedy_ref
    deadline = time.monotonic() + 60
    while (used_bytes(p), used_bytes(d)) != (0, 0):
        assert time.monotonic() < deadline, (used_bytes(p), used_bytes(d))
        time.sleep(1)


def prefill_engine_dies(p: VllmServer, d: VllmServer, greedy_ref: list[str]) -> None:
    """``kv_load_failure_policy: recompute``: the prefill engine prefills three prompts and dies
    before the decode engine reads them; the loads fail and the decode engine recomputes those
    prompts — a single stock engine's tokens, no token counted as transferred — and holds no
    page afterwards."""
    batch = prompts()[4:7]
    params = []
    for prompt in batch:
        status, body = p.complete(prompt, 1, kv_transfer_params=REMOTE_DECODE)
        assert status == 200, body
        params.append(body["kv_transfer_params"])
    p.stop()
    before = transferred_tokens(d)
    for prompt, param, expected in zip(batch, params, greedy_ref[4:7], strict=True):
        status, out = d.complete(prompt, MAX_TOKENS, kv_transfer_params=param)
        assert status == 200, out
        assert out["choices"][0]["text"] == expected
    after = transferred_tokens(d)
    gained = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    assert gained.get("external_kv_transfer", 0) == 0, gained
    assert gained.get("local_compute", 0) > 0, gained
    assert used_bytes(d) == 0


def a_stock_prefill_engine_meets_the_handshake(model: str, d: VllmServer, transfer: dict) -> None:
    """A stock engine takes the dead prefill engine's core: its block ids and the jenga decode
    engine's unit ids name different bytes, so the pair must never move them. NIXL's handshake
    refuses (vLLM's compatibility-hash error in the decode engine's log), no token is loaded,
    and the decode engine, whose load-failure policy is recompute, serves the request from
    the prompt: a single stock engine's tokens (the same for a plain request afterwards)."""
    prompt, expected = prompts()[3], single_stock(model)[0][3]
    with nixl_server(build_model(model), "vllm", 0, KV_BYTES, transfer=transfer) as stock:
        assert stock.process is not None
        pin_session(stock.process.pid, 0)
        status, body = stock.complete(prompt, 1, kv_transfer_params=REMOTE_DECODE)
        assert status == 200, body
        before = transferred_tokens(d)
        status, out = d.complete(prompt, MAX_TOKENS, kv_transfer_params=body["kv_transfer_params"])
        assert "NIXL compatibility hash mismatch" in d.log_text()
        assert status == 200, out
        assert out["choices"][0]["text"] == expected
        assert transferred_tokens(d).get("external_kv_transfer", 0) == before.get(
            "external_kv_transfer", 0
        )
        status, out = d.complete(prompt, MAX_TOKENS)
        assert status == 200, out
        assert out["choices"][0]["text"] == expected


@pytest.mark.parametrize(
    "model,prefill,decode",
    [("gemma3", "jenga", "jenga"), ("gemma3", "vllm", "vllm")],
)
def test_decode_engine_gives_a_single_stock_engines_tokens(engine_lock, model, prefill, decode):
    """Jenga's pair then also meets failures: decode requests abandoned in flight, a prefill
    engine that dies before its KV is read, a stock prefill engine in its place (the handshake
    refuses); the one-type layout's pair is the next test's."""
    greedy_ref, seeded_ref = single_stock(model)
    failures = prefill == "jenga"
    greedy, seeded, on_prefill, on_decode = run_pair(model, prefill, decode, failures)
    assert [r["text"] for r in greedy] == greedy_ref
    assert [r["text"] for r in seeded] == seeded_ref
    total = sum(map(len, prompts())) + sum(map(len, seeded_prompts()))
    # The decode engine computed none of the prompts (vLLM's count by source): it loaded them,
    # or hit them in its own prefix cache (a shared prefix an earlier request had loaded: how
    # many depends on timing).
    assert on_decode.get("local_compute", 0) == 0, on_decode
    assert on_decode["external_kv_transfer"] + on_decode.get("local_cache_hit", 0) == total
    assert on_decode["external_kv_transfer"] > total / 2, on_decode
    assert on_prefill.get("external_kv_transfer", 0) == 0, on_prefill
    assert all(r["params"]["remote_block_ids"] for r in greedy + seeded)
    if model == "gemma3":  # block ids per KV-cache group: jenga's two layer types, stock's
        groups = 2 if prefill == "jenga" else 3  # full + its sliding layers split in two
        assert all(len(r["params"]["remote_block_ids"]) == groups for r in greedy)


def test_jenga_prefill_with_stock_decode_gives_the_same_tokens(engine_lock):
    """On a one-type model jenga's pool regions are vLLM's own layout (layer after layer, a page
    per unit id), so a stock decode engine reads a jenga prefill engine's blocks as its own."""
    greedy_ref, seeded_ref = single_stock("llama")
    greedy, seeded, _, on_decode = run_pair("llama", "jenga", "vllm")
    assert [r["text"] for r in greedy] == greedy_ref
    assert [r["text"] for r in seeded] == seeded_ref
    assert on_decode.get("external_kv_transfer", 0) > 0


def test_a_mamba_hybrid_is_refused_at_start_up(engine_lock):
    server = VllmServer(
        build_model("granite_hybrid"),
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
    assert "does not support NixlConnector on Mamba / linear-attention hybrids" in log
    assert "--kv-cache-manager vllm" in log
