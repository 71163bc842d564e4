"""Paged attention kernel vs the PyTorch reference (and vs vLLM's CPU attention op) on a pool that
holds three layer types with different small pages, under TRITON_INTERPRET=1.

Every byte of the pool that no query may read is NaN, so reading a released page, the null page,
an unwritten slot or another layer's rows fails the test instead of passing silently.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field

import pytest
import torch
from paged_pool import (
    CHUNKED,
    FULL,
    SLIDING,
    THREE_TYPES,
    KVPool,
    LayerType,
    assert_close,
    build_batch,
)

from jenga_vllm.kernels import LaunchConfig, paged_attention, reference_paged_attention

pytestmark = pytest.mark.kernel

# Max abs error bounds per dtype (outputs are O(1)); fp16/bf16 include rounding P to the dtype.
ATOL = {torch.float32: 2e-5, torch.float16: 4e-3, torch.bfloat16: 3e-2}
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class Case:
    """One batch of one layer type. ``group`` = query heads per kv head (1: MHA, 4/8: GQA)."""

    id: str
    layer_type: str
    dtype: str
    group: int
    seq_lens: list[int]
    query_lens: list[int]
    layer: int = -1  # which layer of the type (-1: the last, whose offset is non-zero)
    softcap: float = 0.0
    sinks: bool = False
    released: str = "null"
    config: LaunchConfig | None = None
    extra: dict = field(default_factory=dict)


SPLIT4 = LaunchConfig(block_m=16, tile_n=16, num_warps=4, num_stages=1, num_splits=4)
WIDE_TILE = LaunchConfig(block_m=32, tile_n=64, num_warps=4, num_stages=1)  # tile spans 4 pages
SUB_PAGE_TILE = LaunchConfig(block_m=16, tile_n=16, num_warps=4, num_stages=1)  # half a page

CASES = [
    # Full attention: prefill at block boundaries (k·16 ± 1, k·16), decode, mixed.
    Case("full-fp32-mha-prefill-boundaries", "full", "fp32", 1, [33, 16, 47], [33, 16, 47]),
    Case("full-bf16-gqa4-mixed", "full", "bf16", 4, [40, 17, 15, 64], [8, 1, 1, 64]),
    Case("full-fp16-gqa8-decode", "full", "fp16", 8, [31, 33, 1, 100], [1, 1, 1, 1]),
    Case("full-fp32-gqa4-first-layer", "full", "fp32", 4, [48, 9], [3, 9], layer=0),
    Case(
        "full-bf16-gqa4-softcap-sinks",
        "full",
        "bf16",
        4,
        [29, 49],
        [29, 1],
        softcap=8.0,
        sinks=True,
    ),
    Case("full-fp32-gqa8-wide-tile", "full", "fp32", 8, [65, 3, 32], [20, 3, 1], config=WIDE_TILE),
    # Sliding window 20: released pages as null ids and as stale ids pointing at NaN.
    Case("sliding-fp32-gqa4-mixed-null", "sliding", "fp32", 4, [70, 33, 15], [9, 1, 15]),
    Case(
        "sliding-bf16-mha-decode-stale",
        "sliding",
        "bf16",
        1,
        [70, 47, 49, 21],
        [1, 1, 1, 1],
        released="stale",
    ),
    Case(
        "sliding-fp16-gqa8-prefill-chunk-stale",
        "sliding",
        "fp16",
        8,
        [50, 64],
        [18, 31],
        released="stale",
    ),
    Case(
        "sliding-bf16-gqa8-softcap-sinks",
        "sliding",
        "bf16",
        8,
        [81, 24],
        [1, 24],
        softcap=5.0,
        sinks=True,
    ),
    Case(
        "sliding-fp32-gqa4-wide-tile-null", "sliding", "fp32", 4, [97, 70], [5, 1], config=WIDE_TILE
    ),
    # Chunked local (chunk 32, block 32): chunk starts release whole pages.
    Case("chunked-fp32-mha-mixed", "chunked", "fp32", 1, [65, 95, 31], [3, 1, 31]),
    Case(
        "chunked-bf16-gqa8-decode-stale",
        "chunked",
        "bf16",
        8,
        [64, 96, 33],
        [1, 1, 1],
        released="stale",
    ),
    Case(
        "chunked-fp16-gqa4-sub-page-tile",
        "chunked",
        "fp16",
        4,
        [63, 40],
        [40, 8],
        config=SUB_PAGE_TILE,
    ),
    # Split-key decode (flash-decoding partials + merge), with windows and sinks.
    Case("full-bf16-gqa4-split", "full", "bf16", 4, [100, 7, 33], [1, 1, 1], config=SPLIT4),
    Case(
        "sliding-fp32-mha-split-sinks",
        "sliding",
        "fp32",
        1,
        [90, 20],
        [1, 1],
        sinks=True,
        config=SPLIT4,
    ),
    Case("chunked-fp16-gqa8-split-mixed", "chunked", "fp16", 8, [70, 40], [6, 1], config=SPLIT4),
]


def run_case(
    case: Case,
    device: str = "cpu",
    types: tuple[LayerType, ...] = THREE_TYPES,
    num_large_pages: int = 40,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(kernel output, reference output) for ``case``; the kernel runs on ``device`` (the pool is
    built on the CPU and copied there)."""
    dtype = DTYPES[case.dtype]
    gen = torch.Generator().manual_seed(zlib.crc32(case.id.encode()))
    pool = KVPool(types, dtype, num_large_pages=num_large_pages, seed=len(case.id))
    # Fill the other types too, so their live pages sit between this type's pages.
    for other in types:
        if other.name != case.layer_type:
            build_batch(pool, other.name, 0, case.seq_lens, case.query_lens, generator=gen)
    t = pool.type(case.layer_type)
    layer = case.layer % t.num_layers
    batch = build_batch(
        pool, t.name, layer, case.seq_lens, case.query_lens, released=case.released, generator=gen
    )
    num_q_heads = t.num_kv_heads * case.group
    query = torch.randn(int(batch.query_start_loc[-1]), num_q_heads, t.head_size, generator=gen).to(
        dtype
    )
    sinks = torch.randn(num_q_heads, generator=gen) if case.sinks else None
    kwargs = dict(window=t.window, chunk_size=t.chunk_size, softcap=case.softcap)
    scale = t.head_size**-0.5
    ref = reference_paged_attention(
        query, pool.view(t.name, layer), batch.block_table, batch.query_start_loc, batch.seq_lens,
        scale, sinks=sinks, **kwargs,
    )  # fmt: skip
    on = torch.device(device)
    out = paged_attention(
        query.to(on),
        pool.geometry(t.name, layer).kv_view(pool.pool.to(on)),
        batch.block_table.to(on),
        batch.query_start_loc.to(on),
        batch.seq_lens.to(on),
        scale,
        max_query_len=batch.max_query_len,
        config=case.config,
        sinks=sinks.to(on) if sinks is not None else None,
        **kwargs,
    )
    return out.cpu(), ref


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_kernel_matches_reference(case: Case) -> None:
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
    case = Case("sliding-fp32-long-decode", "sliding", "fp32", 4, [200], [1])
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
    Case("cpu-full32-fp32-gqa4-mixed", "full32", "fp32", 4, [70, 33, 5], [6, 1, 5]),
    Case("cpu-full32-bf16-gqa2-decode", "full32", "bf16", 2, [64, 31, 97], [1, 1, 1]),
    Case("cpu-sliding32-fp32-gqa4-mixed", "sliding32", "fp32", 4, [90, 41], [3, 1]),
    Case(
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
def test_kernel_matches_vllm_cpu_attention(case: Case) -> None:
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
