"""vLLM's CPU attention reads the right bytes through jenga's strided, overlapping views.

Guards docs/design.md §3 against a vLLM upgrade: builds the jenga KVCacheConfig for the Gemma-4-like zoo
model (sliding layers: 2 kv heads × 32; full layers: 1 kv head × 96 — different small pages in
one unit-id namespace), allocates it with vLLM's own ``allocate_kv_cache``, writes distinct K/V
into every layer of pages that share large pages, and checks vLLM's C++ paged attention against
a PyTorch reference for every layer. No engine starts.
"""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.e2e

torch = pytest.importorskip("torch")

SEQ_LENS = [70, 45]  # tokens per sequence; block size 32 → 3 and 2 pages
Q_HEADS = 4


@pytest.fixture(scope="module")
def jenga_cache():
    from vllm.engine.arg_utils import EngineArgs
    from vllm.v1.kv_cache_layout import KVCacheLayout
    from vllm.v1.worker.utils import allocate_kv_cache

    from jenga_vllm.tools.zoo import build_model
    from jenga_vllm.vllm.kv_config import build_kv_cache_configs

    # A real VllmConfig for the zoo model (config only: nothing is loaded, no engine starts).
    vllm_config = EngineArgs(
        model=str(build_model("gemma4")),
        dtype="float32",
        block_size=32,
        max_model_len=512,
        additional_config={"kv_cache_manager": "jenga"},
    ).create_engine_config()
    specs = _gemma4_like_specs()
    config = build_kv_cache_configs(vllm_config, [specs], [3_000_000])[0]
    caches = allocate_kv_cache(config, torch.device("cpu"), KVCacheLayout.LBHNC)
    return config, specs, caches


def _gemma4_like_specs():
    from vllm.v1.kv_cache_interface import FullAttentionSpec, SlidingWindowSpec

    specs = {}
    for i in range(6):
        name = f"model.layers.{i}.self_attn.attn"
        if i in (2, 5):
            specs[name] = FullAttentionSpec(
                block_size=32, num_kv_heads=1, head_size=96, dtype=torch.float32
            )
        else:
            specs[name] = SlidingWindowSpec(
                block_size=32,
                num_kv_heads=2,
                head_size=32,
                dtype=torch.float32,
                sliding_window=64,
            )
    return specs


def _reference(q, k, v, kv_heads, head_dim):
    out, start = torch.zeros_like(q), 0
    for n in SEQ_LENS:
        kk = k[start : start + n].repeat_interleave(Q_HEADS // kv_heads, 1)
        vv = v[start : start + n].repeat_interleave(Q_HEADS // kv_heads, 1)
        att = torch.einsum("qhc,khc->hqk", q[start : start + n], kk) * head_dim**-0.5
        mask = torch.triu(torch.ones(n, n, dtype=torch.bool), 1)
        out[start : start + n] = torch.einsum(
            "hqk,khc->qhc", att.masked_fill(mask, -1e30).softmax(-1), vv
        )
        start += n
    return out


def _split(view, kv_heads, block):
    kv = view.view(view.shape[0], kv_heads, block * 2, -1)
    return kv.chunk(2, dim=2)


def test_layout_overlaps_only_within_a_large_page(jenga_cache):
    config, _, caches = jenga_cache
    plan = config.plan
    assert len(plan.types) == 2 and plan.types[0].small_page_bytes != plan.types[1].small_page_bytes
    assert config.num_blocks == plan.num_units
    assert all(v.stride(0) * v.element_size() == plan.unit_bytes for v in caches.values())


def test_cpu_attention_reads_every_layer_through_unit_ids(jenga_cache):
    import vllm._custom_ops as ops
    from vllm.v1.attention.backends.cpu_attn import _get_attn_isa

    config, specs, caches = jenga_cache
    plan = config.plan
    group_of = {n: g for g, grp in enumerate(config.kv_cache_groups) for n in grp.layer_names}
    gen = torch.Generator().manual_seed(0)
    total = sum(SEQ_LENS)
    written = {}
    # Page tables: both sequences' pages interleave inside shared large pages of each type.
    tables = {}
    for t, layout in enumerate(plan.types):
        # Type t owns large pages 1+t, 3+t, 5+t, ...: both types' pages sit side by side.
        ids = [
            plan.unit_id(t, large, slot)
            for large in range(1 + t, 13, 2)
            for slot in range(layout.pages_per_large)
        ]
        seq_pages = [ids[0::2][:3], ids[1::2][:3]]
        tables[t] = torch.tensor(seq_pages, dtype=torch.int32)

    for name, spec in specs.items():
        t = group_of[name]
        k_cache, v_cache = _split(caches[name], spec.num_kv_heads, 32)
        isa = _get_attn_isa(torch.float32, 32, spec.head_size)
        k = torch.randn(total, spec.num_kv_heads, spec.head_size, generator=gen)
        v = torch.randn(total, spec.num_kv_heads, spec.head_size, generator=gen)
        slots = [
            int(tables[t][s, p // 32]) * 32 + p % 32
            for s, n in enumerate(SEQ_LENS)
            for p in range(n)
        ]
        ops.cpu_attn_reshape_and_cache(k, v, k_cache, v_cache, torch.tensor(slots), isa)
        written[name] = (k, v, isa)

    # Read back only after every layer was written: a wrong offset would clobber a neighbour.
    for name, spec in specs.items():
        t = group_of[name]
        k, v, isa = written[name]
        k_cache, v_cache = _split(caches[name], spec.num_kv_heads, 32)
        q = torch.randn(total, Q_HEADS, spec.head_size, generator=gen)
        qsl = torch.tensor([0, SEQ_LENS[0], total], dtype=torch.int32)
        seq_lens = torch.tensor(SEQ_LENS, dtype=torch.int32)
        meta = ops.cpu_attn_get_scheduler_metadata(
            num_reqs=len(SEQ_LENS),
            num_heads=Q_HEADS,
            num_kv_heads=spec.num_kv_heads,
            head_dim=spec.head_size,
            seq_lens=seq_lens,
            dtype=torch.float32,
            query_start_loc=qsl,
            causal=True,
            sliding_window_size=-1,
            isa=isa,
            enable_kv_split=False,
        )
        out = torch.zeros_like(q)
        ops.cpu_attention_with_kv_cache(
            query=q,
            key_cache=k_cache,
            value_cache=v_cache,
            output=out,
            query_start_loc=qsl,
            seq_lens=seq_lens,
            scale=spec.head_size**-0.5,
            causal=True,
            alibi_slopes=None,
            sliding_window=-1,
            block_table=tables[t],
            softcap=0.0,
            scheduler_metadata=meta,
            s_aux=None,
        )
        ref = _reference(q, k, v, spec.num_kv_heads, spec.head_size)
        err = (out - ref).abs().max().item()
        assert err < 1e-4, f"{name}: max error {err:.2e} reading through jenga's views"
