"""Paged attention kernel vs the PyTorch reference (and vs vLLM's CPU attention op) on a pool that
holds three layer types with different small pages, under TRITON_INTERPRET=1.

Every byte of the pool that no query may read is NaN, so reading a released page, the null page,
an unwritten slot or another layer's rows fails the test instead of passing silently.
"""

from __future__ import annotations

import pytest
import torch

from jenga_vllm.kernels import paged_attention, reference_paged_attention
from jenga_vllm.kernels.testing import (
    ATOL,
    CASES,
    CHUNKED,
    DTYPES,
    FULL,
    SLIDING,
    THREE_TYPES,
    AttentionCase,
    KVPool,
    LayerType,
    assert_close,
    build_batch,
    run_case,
)

pytestmark = pytest.mark.kernel


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_kernel_matches_reference(case: AttentionCase) -> None:
    out, ref = run_case(case)
    assert_close(out, ref, ATOL[DTYPES[case.dtype]], case.id)


def test_pages_are_scattered_and_types_differ() -> None:
    """The pool really is heterogeneous: 3 small-page sizes, one sequence's pages on
    non-adjacent large pages."""
    pool = KVPool(THREE_TYPES, torch.float32, num_large_pages=40, seed=1)
    sizes = {t.small_page_bytes(torch.float32) for t in THREE_TYPES}
    assert len(sizes) == 3
    pages = pool.allocate("full", 6)
    large = sorted({pool.large_page_of(p) for p in pages})
    assert len(large) >= 2 and any(b - a > 1 for a, b in zip(large, large[1:], strict=False))
    assert all(p > 0 for p in pages), "unit id 0 is the null page"


def test_null_page_is_never_read_even_if_table_is_all_null_before_window() -> None:
    """A long decode behind a window: every page before the window is id 0 (NaN-filled)."""
    case = AttentionCase("sliding-fp32-long-decode", "sliding", "fp32", 4, [200], [1])
    out, ref = run_case(case)
    assert_close(out, ref, ATOL[torch.float32], case.id)


def test_rejects_wrong_view_with_a_fix() -> None:
    pool = KVPool((FULL, SLIDING, CHUNKED), torch.float32, num_large_pages=4)
    view = pool.view("full", 0)
    k_only = view[..., : FULL.head_size]
    q = torch.zeros(1, 2, FULL.head_size)
    meta = (
        torch.zeros(1, 1, dtype=torch.int32),
        torch.tensor([0, 1], dtype=torch.int32),
        torch.tensor([1], dtype=torch.int32),
    )
    with pytest.raises(ValueError, match="2\\*head_size"):
        paged_attention(q, k_only, *meta, 1.0, max_query_len=1)
    transposed = torch.empty(4, FULL.num_kv_heads, 2 * FULL.head_size, FULL.block_size).transpose(
        2, 3
    )
    with pytest.raises(ValueError, match="contiguous"):
        paged_attention(q, transposed, *meta, 1.0, max_query_len=1)


# --- vLLM's own CPU attention op on the same inputs --------------------------------------------

CPU_TYPES = (
    # CPU attention needs block_size % 32 == 0 and head sizes from {32, 64, ...}.
    LayerType("full32", num_layers=1, num_kv_heads=2, head_size=64, block_size=32),
    LayerType("sliding32", num_layers=2, num_kv_heads=1, head_size=32, block_size=32, window=40),
)
CPU_CASES = [
    AttentionCase("cpu-full32-fp32-gqa4-mixed", "full32", "fp32", 4, [70, 33, 5], [6, 1, 5]),
    AttentionCase("cpu-full32-bf16-gqa2-decode", "full32", "bf16", 2, [64, 31, 97], [1, 1, 1]),
    AttentionCase("cpu-sliding32-fp32-gqa4-mixed", "sliding32", "fp32", 4, [90, 41], [3, 1]),
    AttentionCase(
        "cpu-full32-fp32-gqa4-softcap-sinks",
        "full32",
        "fp32",
        4,
        [45, 64],
        [45, 1],
        softcap=10.0,
        sinks=True,
    ),
]


@pytest.mark.parametrize("case", CPU_CASES, ids=[c.id for c in CPU_CASES])
def test_kernel_matches_vllm_cpu_attention(case: AttentionCase) -> None:
    """Same q/k/v, same page tables and pool geometry: vLLM's C++ op (which writes and reads its
    own in-page format through the same per-layer view) vs our kernel vs the reference."""
    ops = pytest.importorskip("vllm._custom_ops")
    from vllm.v1.attention.backends.cpu_attn import _get_attn_isa

    dtype = DTYPES[case.dtype]
    t = next(x for x in CPU_TYPES if x.name == case.layer_type)
    gen = torch.Generator().manual_seed(7)
    ours = KVPool(CPU_TYPES, dtype, num_large_pages=16, seed=3)
    theirs = KVPool(CPU_TYPES, dtype, num_large_pages=16, seed=3)
    # Released pages are zero in vLLM's pool: its op is not asked to skip them (ours is).
    theirs.pool.zero_()
    layer = t.num_layers - 1
    batch = build_batch(ours, t.name, layer, case.seq_lens, case.query_lens, generator=gen)
    num_q_heads = t.num_kv_heads * case.group
    query = torch.randn(int(batch.query_start_loc[-1]), num_q_heads, t.head_size, generator=gen).to(
        dtype
    )
    sinks = torch.randn(num_q_heads, generator=gen) if case.sinks else None
    scale = t.head_size**-0.5

    # vLLM's path, as CPUAttentionBackendImpl does it: [B,H,N,2d] -> [B,H,2N,d] -> K/V halves.
    view = theirs.view(t.name, layer)
    kv = view.view(view.shape[0], t.num_kv_heads, 2 * t.block_size, t.head_size)
    key_cache, value_cache = kv.chunk(2, dim=2)
    isa = _get_attn_isa(dtype, t.block_size, t.head_size)
    live = batch.slot_mapping >= 0
    ops.cpu_attn_reshape_and_cache(
        batch.key[live], batch.value[live], key_cache, value_cache, batch.slot_mapping[live], isa
    )
    metadata = ops.cpu_attn_get_scheduler_metadata(
        num_reqs=len(case.seq_lens), num_heads=num_q_heads, num_kv_heads=t.num_kv_heads,
        head_dim=t.head_size, seq_lens=batch.seq_lens, dtype=dtype,
        query_start_loc=batch.query_start_loc, causal=True,
        sliding_window_size=t.window or -1, isa=isa, enable_kv_split=False,
    )  # fmt: skip
    vllm_out = torch.empty_like(query)
    ops.cpu_attention_with_kv_cache(
        query=query, key_cache=key_cache, value_cache=value_cache, output=vllm_out,
        query_start_loc=batch.query_start_loc, seq_lens=batch.seq_lens, scale=scale, causal=True,
        alibi_slopes=None, sliding_window=t.window or -1, block_table=batch.block_table,
        softcap=case.softcap, scheduler_metadata=metadata,
        s_aux=sinks.to(torch.float32) if sinks is not None else None,
    )  # fmt: skip

    kwargs = dict(window=t.window, softcap=case.softcap, sinks=sinks)
    our_view = ours.view(t.name, layer)
    out = paged_attention(
        query, our_view, batch.block_table, batch.query_start_loc, batch.seq_lens, scale,
        max_query_len=batch.max_query_len, **kwargs,
    )  # fmt: skip
    ref = reference_paged_attention(
        query, our_view, batch.block_table, batch.query_start_loc, batch.seq_lens, scale, **kwargs
    )
    atol = ATOL[dtype]
    assert_close(vllm_out, ref, atol, f"{case.id} vLLM CPU op vs reference")
    assert_close(out, vllm_out, atol, f"{case.id} kernel vs vLLM CPU op")
