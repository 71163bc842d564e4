"""KV write kernel vs the PyTorch reference, and the per-layer view vs vLLM's own, under
TRITON_INTERPRET=1. Both writes start from the same NaN-filled pool holding three layer types;
the pools must then be byte-identical, which also proves no byte outside the target rows moved.
"""

from __future__ import annotations

import pytest
import torch

from jenga_vllm.kernels import LayerPageGeometry, kv_write, reference_kv_write
from jenga_vllm.kernels.testing import (
    DTYPES,
    KV_WRITE_CASES,
    THREE_TYPES,
    KVPool,
    KvWriteCase,
    make_kv,
)

pytestmark = pytest.mark.kernel


@pytest.mark.parametrize("case", KV_WRITE_CASES, ids=[c.id for c in KV_WRITE_CASES])
def test_kv_write_matches_reference(case: KvWriteCase) -> None:
    dtype = DTYPES[case.dtype]
    ours = KVPool(THREE_TYPES, dtype, num_large_pages=20, seed=5)
    ref = KVPool(THREE_TYPES, dtype, num_large_pages=20, seed=5)
    t = ours.type(case.layer_type)
    gen = torch.Generator().manual_seed(11)
    pages = ours.allocate(t.name, (case.num_tokens + t.block_size - 1) // t.block_size)
    # Tokens in shuffled order, as a prefill + decode batch hands them out.
    order = torch.randperm(case.num_tokens, generator=gen).tolist()
    slots = [pages[p // t.block_size] * t.block_size + p % t.block_size for p in order]
    if case.padding_every:
        slots = [-1 if i % case.padding_every == 0 else s for i, s in enumerate(slots)]
    slot_mapping = torch.tensor(slots, dtype=torch.int64)
    for layer in range(t.num_layers):
        key, value = make_kv(case, t.num_kv_heads, t.head_size, gen)
        kv_write(key, value, ours.view(t.name, layer), slot_mapping)
        reference_kv_write(key, value, ref.view(t.name, layer), slot_mapping)
    assert torch.equal(ours.pool, ref.pool), f"{case.id}: pools differ"
    changed = ~torch.isnan(ours.pool.view(dtype))
    live = int((slot_mapping >= 0).sum())
    expected = live * t.num_layers * t.num_kv_heads * 2 * t.head_size
    print(f"{case.id}: {int(changed.sum())} elements written, expected {expected}")
    assert int(changed.sum()) == expected


def test_slot_minus_one_writes_nothing() -> None:
    pool = KVPool(THREE_TYPES, torch.float32, num_large_pages=8, seed=2)
    before = pool.pool.clone()
    t = pool.type("full")
    key = torch.randn(4, t.num_kv_heads, t.head_size)
    kv_write(key, key, pool.view("full", 1), torch.full((4,), -1, dtype=torch.int64))
    assert torch.equal(pool.pool, before)


def test_view_matches_vllm_create_kv_cache_views() -> None:
    """Our per-layer view is exactly the one vLLM 0.32 builds from a jenga KVCacheTensor."""
    kv_iface = pytest.importorskip("vllm.v1.kv_cache_interface")
    from vllm.v1.kv_cache_layout import KVCacheLayout

    pool = KVPool(THREE_TYPES, torch.bfloat16, num_large_pages=6, seed=0)
    for t in THREE_TYPES:
        spec = kv_iface.FullAttentionSpec(
            block_size=t.block_size,
            num_kv_heads=t.num_kv_heads,
            head_size=t.head_size,
            dtype=torch.bfloat16,
        )
        layer_bytes = t.layer_page_bytes(torch.bfloat16)
        # The last layer sits furthest into the small page: its view is the shortest that fits.
        num_units = pool.geometry(t.name, t.num_layers - 1).num_units(pool.pool.numel())
        tensor = kv_iface.KVCacheTensor(
            size=pool.pool.numel(),
            layers=[f"{t.name}.{i}" for i in range(t.num_layers)],
            layer_stride=layer_bytes,
            block_stride=pool.unit_bytes,
            offset=0,
        )
        views = kv_iface.create_kv_cache_views(
            pool.pool, spec, num_units, KVCacheLayout.LBHNC, tensor
        )
        for layer, theirs in enumerate(views):
            ours = pool.geometry(t.name, layer).kv_view(pool.pool, num_units)
            assert ours.shape == theirs.shape and ours.stride() == theirs.stride()
            assert ours.storage_offset() == theirs.storage_offset() and ours.dtype == theirs.dtype


def test_geometry_rejects_unaligned_unit() -> None:
    with pytest.raises(ValueError, match="multiples of 16"):
        LayerPageGeometry(2, 32, 16, torch.float16, unit_bytes=24)
