import math

import pytest

from jenga_vllm.core import JengaConfigError, LayerTypeSpec, plan_layout


def test_paper_worked_example():
    # Jenga §3: 2 cross-attention layers (256 B pages) and 3 self-attention layers (384 B pages)
    # at 1 token per page, 128 B per token per layer -> large page lcm(256, 384) = 768 B.
    plan = plan_layout(
        [
            LayerTypeSpec.uniform("cross", "cross_attention", 2, 128),
            LayerTypeSpec.uniform("self", "full", 3, 128),
        ],
        block_size=1,
    )
    assert plan.large_page_bytes == 768
    assert [t.small_page_bytes for t in plan.types] == [256, 384]
    assert [t.pages_per_large for t in plan.types] == [3, 2]
    assert plan.unit_bytes == math.gcd(256, 384) == 128
    assert all(t.padding_bytes == 0 for t in plan.types)


def test_zero_padding_when_sizes_divide_the_lcm():
    # Gemma-4-like: sliding 4 layers × 2·32·2 heads·4 B, full 2 layers × 2·64·1 head·4 B.
    specs = [
        LayerTypeSpec.uniform("sliding", "sliding_window", 4, 2 * 32 * 2 * 4, window=64),
        LayerTypeSpec.uniform("full", "full", 2, 2 * 64 * 1 * 4),
    ]
    plan = plan_layout(specs, 16, 10_000_000)
    for t in plan.types:
        assert t.padding_bytes == 0
        assert plan.large_page_bytes % t.small_page_bytes == 0
        assert t.small_page_bytes == t.content_bytes == 16 * sum(t.spec.layer_bytes)
    assert plan.pool_bytes <= 10_000_000
    assert plan.num_large_pages == 10_000_000 // plan.large_page_bytes


def test_unit_ids_map_to_disjoint_byte_ranges():
    specs = [
        LayerTypeSpec.uniform("a", "full", 1, 48),
        LayerTypeSpec.uniform("b", "sliding_window", 1, 80, window=32),
    ]
    plan = plan_layout(specs, 16, 50_000)
    for t_idx, t in enumerate(plan.types):
        ranges = []
        for slot in range(t.pages_per_large):
            uid = plan.unit_id(t_idx, 3, slot)
            assert plan.locate(t_idx, uid) == (3, slot)
            start = plan.byte_offset(uid)
            ranges.append((start, start + t.small_page_bytes))
        ranges.sort()
        assert ranges[0][0] == 3 * plan.large_page_bytes
        assert ranges[-1][1] == 4 * plan.large_page_bytes
        assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:], strict=False))


def test_layer_offsets_inside_small_page():
    spec = LayerTypeSpec("mixed", "full", (32, 64, 32))
    plan = plan_layout([spec], 16)
    assert plan.types[0].layer_offsets == (0, 32 * 16, 96 * 16)
    assert plan.types[0].small_page_bytes == 128 * 16


def test_huge_lcm_is_rounded_and_padding_reported():
    # Coprime-ish Mamba state sizes would make the LCM their product.
    specs = [
        LayerTypeSpec.uniform("attn", "full", 1, 1024),
        LayerTypeSpec.uniform("mamba", "mamba", 1, 1_000_003 * 16 + 16),
    ]
    plan = plan_layout(specs, 16, max_pages_per_large=8)
    assert plan.large_page_bytes <= 8 * max(t.small_page_bytes for t in plan.types)
    assert any(t.padding_bytes > 0 for t in plan.types)
    for t in plan.types:
        assert t.small_page_bytes == t.content_bytes + t.padding_bytes
        assert plan.large_page_bytes % t.small_page_bytes == 0
    assert "padding" in plan.describe()


def test_mamba_small_page_is_whole_state_independent_of_block_size():
    spec = LayerTypeSpec.uniform("m", "mamba", 3, 4096, block_tokens=64)
    for bs in (16, 32):
        plan = plan_layout([spec], bs)
        assert plan.types[0].small_page_bytes == 3 * 4096
        assert plan.types[0].block_tokens == 64


@pytest.mark.parametrize(
    "specs, block_size, kw, fragment",
    [
        ([LayerTypeSpec.uniform("x", "paged_magic", 1, 8)], 16, {}, "unknown kind"),
        ([LayerTypeSpec("x", "full", (0,))], 16, {}, "non-positive"),
        ([LayerTypeSpec("x", "full", (-4, 8))], 16, {}, "non-positive"),
        ([LayerTypeSpec.uniform("x", "full", 1, 8)], 0, {}, "block_size"),
        ([], 16, {}, "no layer types"),
        (
            [LayerTypeSpec.uniform("x", "sliding_window", 1, 8, window=4096)],
            16,
            {"max_model_len": 2048},
            "larger than max_model_len",
        ),
        ([LayerTypeSpec.uniform("x", "sliding_window", 1, 8)], 16, {}, "positive window"),
        ([LayerTypeSpec.uniform("x", "chunked_local", 1, 8, chunk=0)], 16, {}, "chunk"),
        (
            [LayerTypeSpec.uniform("x", "full", 1, 8), LayerTypeSpec.uniform("x", "full", 1, 8)],
            16,
            {},
            "used twice",
        ),
        ([LayerTypeSpec.uniform("m", "mamba", 1, 64, block_tokens=24)], 16, {}, "multiple"),
    ],
)
def test_bad_input_names_the_problem(specs, block_size, kw, fragment):
    with pytest.raises(JengaConfigError, match=fragment):
        plan_layout(specs, block_size, **kw)


def test_uniform_rejects_zero_layers():
    with pytest.raises(JengaConfigError, match="num_layers"):
        LayerTypeSpec.uniform("x", "full", 0, 8)


def test_too_little_memory_says_what_to_do():
    with pytest.raises(JengaConfigError, match="kv-cache-memory-bytes"):
        plan_layout([LayerTypeSpec.uniform("x", "full", 1, 64)], 16, 1000)


def test_mamba_hybrid_large_page_is_the_padded_state_page():
    # Nemotron-H-like: ~450 MB of Mamba state per request vs 640 KiB attention pages. The exact
    # LCM would be a multi-GB large page (a few per pool); padding the state page by less than
    # one attention page makes the state page itself the large page.
    attn = LayerTypeSpec.uniform("attn", "full", 10, 2 * 8 * 128 * 2)
    mamba = LayerTypeSpec.uniform("mamba", "mamba", 54, 8_388_608 + 12_345 * 16, block_tokens=512)
    plan = plan_layout([attn, mamba], 16, 40 * 2**30)
    state = plan.types[1]
    assert plan.large_page_bytes == state.small_page_bytes
    assert state.pages_per_large == 1
    assert 0 < state.padding_bytes < plan.types[0].small_page_bytes
    assert plan.types[0].padding_bytes == 0
    assert plan.usable_large_pages >= 80


def test_small_pool_pads_the_state_page_not_the_attention_pages():
    # A tiny Granite-like hybrid in a 2 MB pool: the exact LCM (7.6 MB) cannot be shared out.
    # Padding the 119,040-byte state to 8 attention pages (10%) beats one size for all (which
    # would pad each 16 KB attention page sevenfold) and a 3.8 MB large page (0.6% padding).
    attn = LayerTypeSpec.uniform("attn", "full", 2, 512)
    mamba = LayerTypeSpec.uniform("mamba", "mamba", 6, 19_840, block_tokens=512)
    plan = plan_layout([attn, mamba], 16, 2_000_000, max_model_len=512)
    assert plan.types[0].small_page_bytes == 16_384 and plan.types[0].padding_bytes == 0
    assert plan.types[1].small_page_bytes == plan.large_page_bytes == 131_072
    assert plan.usable_large_pages >= 8


def test_state_layers_start_16_byte_aligned():
    mamba = LayerTypeSpec("m", "mamba", (1000, 1000, 1000), block_tokens=64)
    attn = LayerTypeSpec.uniform("a", "full", 1, 64)
    plan = plan_layout([attn, mamba], 16, 10_000_000, max_model_len=64)
    state = plan.types[1]
    assert state.layer_offsets == (0, 1008, 2016)
    assert state.content_bytes == 3 * 1008 and state.small_page_bytes % 16 == 0


def test_the_null_page_and_the_tail_lend_their_slots_to_the_smallest_pages():
    # Llama-4-like: a large page = 3 full-attention pages or 1 chunked-local page. Large page 0
    # keeps only one full page as the null page (vLLM's null block is one block), and the bytes
    # past the last whole large page hold full pages too.
    full = LayerTypeSpec.uniform("full", "full", 2, 64)
    local = LayerTypeSpec.uniform("local", "chunked_local", 6, 64, chunk=64)
    geometry = plan_layout([full, local], 16)
    large, small = geometry.large_page_bytes, geometry.types[0].small_page_bytes
    plan = plan_layout([full, local], 16, 10 * large + 2 * small + 5)
    assert plan.lend_type == 0 and plan.lends_null and plan.tail_slots == 2
    assert plan.lent_slots() == [(0, range(1, 3)), (10, range(2))]
    assert plan.null_bytes == small
    assert plan.pool_bytes == 10 * large + 2 * small
    assert plan.usable_bytes == 9 * large + 4 * small
    assert plan.num_units * plan.unit_bytes == plan.pool_bytes
    tail_page = plan.unit_id(0, 10, 1)
    assert plan.byte_offset(tail_page) + small == plan.pool_bytes
    unlent = plan_layout([full, local], 16, 10 * large + 2 * small + 5, lend_slots=False)
    assert (unlent.lend_type, unlent.lends_null, unlent.tail_slots) == (-1, False, 0)
    assert unlent.pool_bytes == 10 * large and unlent.usable_bytes == 9 * large


def test_a_state_type_keeps_the_null_page_whole_and_the_tail_unused():
    # A Mamba kernel writes state at its block table's index, which a dummy batch leaves at 0:
    # the null page must stay unshared. A tail of attention pages cost hybrids prefix hits
    # (layout.py), so nothing is lent.
    attn = LayerTypeSpec.uniform("attn", "full", 2, 512)
    mamba = LayerTypeSpec.uniform("mamba", "mamba", 6, 19_840, block_tokens=512)
    plan = plan_layout([attn, mamba], 16, 2_000_000, max_model_len=512)
    assert 2_000_000 % plan.large_page_bytes >= 16_384  # there would be room for a tail
    assert not plan.lends_null and plan.null_bytes == plan.large_page_bytes
    assert (plan.lend_type, plan.tail_slots) == (-1, 0)
    # A model whose pages all fill the large page has nothing to lend.
    one = plan_layout([LayerTypeSpec.uniform("full", "full", 4, 128)], 16, 1_000_000)
    assert (one.lend_type, one.lends_null, one.tail_slots) == (-1, False, 0)
