"""JengaKVCacheManager driven through vLLM's own objects (Request, block hasher, KVCacheBlocks).

What the scheduler relies on, checked without starting an engine: block ids are unit ids of the
right type; sliding-window pages leave as the window moves; a second request sharing a prefix
gets a hit in every layer type and adopts it; out of memory returns None and changes nothing;
after free + reset every byte is back (usage 0, all large pages free).
"""

from __future__ import annotations

import pytest

from tests.vllm.harness import make_request  # noqa: E402

pytestmark = pytest.mark.e2e

torch = pytest.importorskip("torch")

BLOCK = 32


@pytest.fixture(scope="module")
def config():
    from vllm.engine.arg_utils import EngineArgs
    from vllm.v1.kv_cache_interface import FullAttentionSpec, SlidingWindowSpec

    from jenga_vllm.tools.zoo import build_model
    from jenga_vllm.vllm.kv_config import build_kv_cache_configs

    vllm_config = EngineArgs(
        model=str(build_model("gemma4")),
        dtype="float32",
        block_size=BLOCK,
        max_model_len=512,
        additional_config={"kv_cache_manager": "jenga"},
    ).create_engine_config()
    specs = {}
    for i in range(6):
        if i in (2, 5):
            specs[f"l{i}"] = FullAttentionSpec(
                block_size=BLOCK, num_kv_heads=1, head_size=96, dtype=torch.float32
            )
        else:
            specs[f"l{i}"] = SlidingWindowSpec(
                block_size=BLOCK,
                num_kv_heads=2,
                head_size=32,
                dtype=torch.float32,
                sliding_window=64,
            )
    return build_kv_cache_configs(vllm_config, [specs], [3_000_000])[0]


@pytest.fixture
def manager(config):
    from jenga_vllm.vllm.manager import JengaKVCacheManager

    return JengaKVCacheManager(
        config, max_model_len=512, scheduler_block_size=BLOCK, hash_block_size=BLOCK, log_stats=True
    )


def test_prefill_decode_window_release_and_prefix_hit(manager, config):
    plan = config.plan
    full, swa = (0, 1) if plan.types[0].spec.kind == "full" else (1, 0)
    prompt = list(range(10, 10 + 200))
    first = make_request("a", prompt)
    blocks = manager.allocate_slots(first, len(prompt))
    assert blocks is not None
    ids = blocks.get_block_ids()
    assert len(ids[full]) == len(ids[swa]) == 7  # cdiv(200, 32)
    for type_ids in ids:
        assert all(u > 0 for u in type_ids)  # never the null page
    first.num_computed_tokens = len(prompt)
    # Next step: the window (64) has left blocks 0..3 of the sliding type behind.
    first.append_output_token_ids(7)
    assert manager.allocate_slots(first, 1) is not None
    table = manager.get_block_ids("a")
    assert table[swa][:4] == [0, 0, 0, 0] and all(table[swa][4:])
    assert all(table[full])

    second = make_request("b", prompt[:160] + [3] * 40)
    hit_blocks, hit_tokens, _ = manager.get_computed_blocks(second)
    assert hit_tokens == 160
    hit_ids = hit_blocks.get_block_ids()
    assert hit_ids[full] == table[full][:5]
    assert hit_ids[swa][:3] == [0, 0, 0]  # only the window before token 160 is needed
    assert manager.allocate_slots(second, 40, hit_tokens, hit_blocks) is not None
    assert manager.get_block_ids("b")[full][:5] == table[full][:5]
    manager.record_prefix_cache_stats(second, hit_tokens)
    assert manager.make_prefix_cache_stats().hits == 160


def test_out_of_memory_changes_nothing_then_everything_returns(manager, config):
    plan = config.plan
    requests = [make_request(f"r{i}", [i] * 480) for i in range(64)]
    admitted = []
    for req in requests:
        before = manager.available_bytes()
        # has_scheduled_reqs=False: memory alone decides (no decode headroom, see below)
        fits = manager.allocate_slots(
            req, 480, full_sequence_must_fit=True, has_scheduled_reqs=False
        )
        if fits is None:
            assert manager.available_bytes() == before
            assert manager.get_block_ids(req.request_id) == ([], [])
            break
        admitted.append(req)
    assert 1 <= len(admitted) < len(requests)
    assert manager.usage > 0.5
    assert not manager.reset_prefix_cache()  # refused while pages are held
    for req in admitted:
        manager.free(req)
    assert manager.usage == 0.0
    assert manager.reset_prefix_cache()
    assert manager.cache.num_free_large_pages() == plan.usable_large_pages


def test_admission_leaves_room_for_the_running_batchs_next_decode_step(manager):
    # Every running request sits at a page boundary (96 = 3 × 32 tokens), so the next decode
    # step takes a new full-attention page for each. A waiting request is admitted only if
    # those still fit beside it; with no request running yet (vLLM's has_scheduled_reqs=False)
    # it is admitted on its own needs, as stock vLLM does.
    manager.new_step_starts()
    admitted = []
    while True:
        req = make_request(f"r{len(admitted)}", [len(admitted) + 1] * 96)
        before = manager.available_bytes()
        if manager.allocate_slots(req, 96, full_sequence_must_fit=True) is None:
            assert manager.available_bytes() == before  # refused: nothing changed
            break
        admitted.append(req)
    assert len(admitted) >= 2
    headroom = manager.cache.next_token_needs()
    assert sum(headroom) >= len(admitted)  # a full-attention page each, at least
    assert manager.admission.headroom_needs == headroom  # kept up to date admission by admission
    # The memory for the refused request alone is there: only the headroom kept it out.
    assert manager.allocate_slots(req, 96, has_scheduled_reqs=False) is not None
    for r in [*admitted, req]:
        manager.free(r)
    assert manager.usage == 0.0


def test_mamba_hybrid_one_state_page_and_units_to_zero():
    """A Mamba hybrid (vLLM's "none" cache mode): one exact state page per request in a table of
    width 1, attention pages of 32 tokens, and every unit of every new page sent for zeroing."""
    from vllm.engine.arg_utils import EngineArgs
    from vllm.v1.kv_cache_interface import FullAttentionSpec, MambaSpec

    from jenga_vllm.tools.zoo import build_model
    from jenga_vllm.vllm.kv_config import build_kv_cache_configs
    from jenga_vllm.vllm.manager import JengaKVCacheManager

    vllm_config = EngineArgs(
        model=str(build_model("llama")),
        dtype="float32",
        block_size=BLOCK,
        max_model_len=512,
        additional_config={"kv_cache_manager": "jenga"},
    ).create_engine_config()
    state = MambaSpec(
        shapes=((288, 3), (8, 32, 16)),
        dtypes=(torch.float32, torch.float32),
        block_size=512,
        mamba_cache_mode="none",
    )
    specs = {
        "attn0": FullAttentionSpec(
            block_size=BLOCK, num_kv_heads=2, head_size=32, dtype=torch.float32
        )
    }
    specs |= {f"mamba{i}": state for i in range(3)}
    config = build_kv_cache_configs(vllm_config, [specs], [4_000_000])[0]
    assert config.needs_kv_cache_zeroing  # vLLM's rule: Mamba state is read before written
    mamba_group = next(g for g in config.kv_cache_groups if "mamba0" in g.layer_names)
    assert mamba_group.kv_cache_spec.block_size == 512  # the worker's table has one column
    plan = config.plan
    m = next(i for i, t in enumerate(plan.types) if t.spec.kind == "mamba")
    a = 1 - m
    assert plan.types[m].content_bytes == 3 * state.page_size_bytes  # exact, no vLLM padding
    manager = JengaKVCacheManager(
        config, max_model_len=512, scheduler_block_size=512, hash_block_size=512,
        enable_caching=False,
    )  # fmt: skip
    req = make_request("a", list(range(10, 110)))
    blocks = manager.allocate_slots(req, 100)
    ids = blocks.get_block_ids()
    assert len(ids[m]) == 1 and len(ids[a]) == 4
    units = manager.take_new_block_ids()
    expected = [
        u
        for t in (0, 1)
        for first in ids[t]
        for u in range(first, first + plan.types[t].units_per_small)
    ]
    assert sorted(units) == sorted(expected)
    assert manager.take_new_block_ids() == []  # drained
    req.num_computed_tokens = 100
    req.append_output_token_ids(7)
    assert manager.allocate_slots(req, 1) is not None
    assert manager.get_block_ids("a")[m] == ids[m]  # the same state page all along
    assert manager.take_new_block_ids() == []  # token 101 fits the last attention page
    manager.free(req)
    assert manager.usage == 0.0


def test_cross_attention_pages_come_with_the_first_step_and_go_with_the_request():
    """Encoder-decoder (Whisper): the first step brings the encoder tokens; the request gets
    cdiv(encoder tokens, block) cross-attention pages once, keeps them through decode and
    preemption-free growth, and returns them when it ends; the capacity check counts them."""
    from vllm.engine.arg_utils import EngineArgs
    from vllm.v1.kv_cache_interface import CrossAttentionSpec, FullAttentionSpec

    from jenga_vllm.tools.zoo import build_model
    from jenga_vllm.vllm.kv_config import build_kv_cache_configs, pages_per_max_request
    from jenga_vllm.vllm.manager import JengaKVCacheManager

    vllm_config = EngineArgs(
        model=str(build_model("whisper")),
        dtype="float32",
        block_size=BLOCK,
        max_model_len=512,
        max_num_batched_tokens=512,
        additional_config={"kv_cache_manager": "jenga"},
    ).create_engine_config()
    attn = {"block_size": BLOCK, "num_kv_heads": 2, "head_size": 32, "dtype": torch.float32}
    specs = {f"self{i}": FullAttentionSpec(**attn) for i in range(2)}
    specs |= {f"cross{i}": CrossAttentionSpec(**attn) for i in range(2)}
    config = build_kv_cache_configs(vllm_config, [specs], [1_000_000])[0]
    plan = config.plan
    c = next(i for i, t in enumerate(plan.types) if t.spec.kind == "cross_attention")
    s = 1 - c
    # The zoo model's encoder holds 50 positions: 2 pages of 32 per request at most.
    assert pages_per_max_request(vllm_config, plan)[c] == 2
    manager = JengaKVCacheManager(
        config, max_model_len=512, scheduler_block_size=BLOCK, hash_block_size=BLOCK,
        enable_caching=False,
    )  # fmt: skip
    req = make_request("a", list(range(10, 50)))
    ids = manager.allocate_slots(req, 40, num_encoder_tokens=50).get_block_ids()
    assert len(ids[c]) == 2 and len(ids[s]) == 2
    used = manager.usage
    req.num_computed_tokens = 40
    for _ in range(60):  # decode past two more self-attention pages
        req.append_output_token_ids(7)
        assert manager.allocate_slots(req, 1) is not None
        req.num_computed_tokens += 1
    now = manager.get_block_ids("a")
    assert now[c] == ids[c]  # the encoder's K/V stays where the first step wrote it
    assert len(now[s]) == 4 and manager.usage > used
    other = make_request("b", list(range(60, 70)))
    other_ids = manager.allocate_slots(other, 10, num_encoder_tokens=50).get_block_ids()
    assert not set(other_ids[c]) & set(ids[c])  # never shared: each request has its own audio
    manager.free(req)
    manager.free(other)
    assert manager.usage == 0.0


def one_type_managers(watermark: float = 0.0) -> dict:
    """Stock vLLM's KVCacheManager and jenga's on the same one-type model (two full-attention
    layers, 64 blocks: a jenga page = a vLLM block), keyed "vllm" and "jenga"."""
    from vllm.engine.arg_utils import EngineArgs
    from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend
    from vllm.v1.attention.backends.utils import (
        get_supported_kv_cache_layouts,
        record_kv_cache_layout,
        resolve_kv_cache_layout,
    )
    from vllm.v1.core.kv_cache_manager import KVCacheManager  # stock, not the plugin's global
    from vllm.v1.core.kv_cache_utils import get_kv_cache_configs
    from vllm.v1.kv_cache_interface import FullAttentionSpec

    from jenga_vllm.tools.zoo import build_model
    from jenga_vllm.vllm.kv_config import build_kv_cache_configs
    from jenga_vllm.vllm.manager import JengaKVCacheManager

    specs = {
        f"l{i}": FullAttentionSpec(
            block_size=BLOCK, num_kv_heads=2, head_size=32, dtype=torch.float32
        )
        for i in range(2)
    }
    memory = 64 * BLOCK * 2 * 2 * 2 * 32 * 4  # 64 blocks of both layers
    managers = {}
    for name in ("vllm", "jenga"):
        vllm_config = EngineArgs(
            model=str(build_model("llama")),
            dtype="float32",
            block_size=BLOCK,
            max_model_len=512,
            additional_config={"kv_cache_manager": name},
        ).create_engine_config()
        if name == "vllm":
            layouts = get_supported_kv_cache_layouts([CPUAttentionBackend])
            layout = resolve_kv_cache_layout(
                vllm_config, [[x.name for x in layouts]], list(specs.values())
            )
            record_kv_cache_layout(vllm_config.cache_config, layout.name)
            config = get_kv_cache_configs(vllm_config, [specs], [memory])[0]
            cls = KVCacheManager
        else:
            config = build_kv_cache_configs(vllm_config, [specs], [memory])[0]
            cls = JengaKVCacheManager
        assert (config.num_blocks if name == "vllm" else config.plan.num_large_pages) == 64
        managers[name] = cls(
            config,
            max_model_len=512,
            scheduler_block_size=BLOCK,
            hash_block_size=BLOCK,
            watermark=watermark,
        )
    return managers


@pytest.mark.parametrize("watermark,reserved", [(0.0, 0), (0.1, 0), (0.25, 0), (0.0, 9)])
def test_watermark_admission_decisions_equal_stock_vllms(watermark, reserved):
    # vLLM's --watermark keeps int(watermark × num_blocks) blocks free when a waiting or
    # preempted request is admitted while others are scheduled, in both admission checks. On a
    # one-type model (a jenga page = a vLLM block) the same call sequence must get the same
    # answers from both managers. Prompts end inside a page, so jenga's decode headroom is 0.
    managers = one_type_managers(watermark)
    decisions = {}
    for name, manager in managers.items():
        answers = []
        for i in range(16):
            req = make_request(f"{name}{i}", [1000 + 7 * i + k for k in range(100)])
            fits = manager.allocate_slots(
                req,
                100,
                full_sequence_must_fit=i % 2 == 0,
                has_scheduled_reqs=i > 0,
                reserved_blocks=reserved,
            )
            answers.append(fits is not None)
        decisions[name] = answers
    assert decisions["jenga"] == decisions["vllm"], decisions
    # 63 usable blocks (one is the null block), 4 per request: 15 fit with no watermark; with
    # W = int(watermark × 64) kept free, a request is admitted while 4 + W blocks are free
    # (reserved_blocks: vLLM's reservation for in-flight async loads, kept free the same way)
    expected = {(0.0, 0): 15, (0.1, 0): 14, (0.25, 0): 11, (0.0, 9): 13}
    assert sum(decisions["vllm"]) == expected[watermark, reserved]


@pytest.mark.parametrize("reserved", [0, 4, 7])
def test_reserved_blocks_are_kept_free_in_the_step_check_only(reserved):
    # vLLM keeps ``reserved_blocks`` (async loads in flight) free when it allocates the step's
    # blocks, not in the full-sequence check: a 128-token request whose first 16-token chunk
    # fits beside the reservation is admitted though its whole sequence and the reservation
    # together exceed the 7 free blocks.
    decisions = {}
    for name, manager in one_type_managers(0.0).items():
        for i in range(14):  # 14 x 4 of the 63 usable blocks: 7 free
            req = make_request(f"{name}{i}", [1000 + 7 * i + k for k in range(100)])
            assert manager.allocate_slots(req, 100, has_scheduled_reqs=False) is not None
        req = make_request(f"{name}-chunked", [3] * 128)
        fits = manager.allocate_slots(
            req,
            16,
            full_sequence_must_fit=True,
            has_scheduled_reqs=True,
            reserved_blocks=reserved,
        )
        decisions[name] = fits is not None
    assert decisions["jenga"] == decisions["vllm"] == (reserved < 7), decisions


def test_kv_events_name_exactly_the_index_entries(config):
    # vLLM's KV events from jenga: a BlockStored per type for the blocks indexed (chained
    # parents), a BlockRemoved for each entry the allocator evicts, and AllBlocksCleared on a
    # reset; replaying the stream gives exactly the prefix index's entries at every point.
    from vllm.distributed.kv_events import AllBlocksCleared, BlockRemoved, BlockStored
    from vllm.v1.core.kv_cache_utils import maybe_convert_block_hash as external

    from jenga_vllm.vllm.manager import JengaKVCacheManager

    manager = JengaKVCacheManager(
        config,
        max_model_len=512,
        scheduler_block_size=BLOCK,
        hash_block_size=BLOCK,
        enable_kv_cache_events=True,
    )
    live: set[tuple[int, object]] = set()

    def replay() -> list:
        events = manager.take_events()
        for event in events:
            if isinstance(event, BlockStored):
                assert event.group_idx is not None and event.kv_cache_spec_kind
                for h in event.block_hashes:
                    assert (event.group_idx, h) not in live
                    live.add((event.group_idx, h))
            elif isinstance(event, BlockRemoved):
                live.remove((event.group_idx, event.block_hashes[0]))
            else:
                assert isinstance(event, AllBlocksCleared)
                live.clear()
        index = manager.cache.index.by_type
        assert live == {(t, external(h)) for t, entries in enumerate(index) for h in entries}
        return events

    first = make_request("a", list(range(10, 210)))
    assert manager.allocate_slots(first, 200) is not None
    stored = replay()
    assert [type(e) for e in stored] == [BlockStored, BlockStored]  # 6 full blocks per type
    assert all(len(e.block_hashes) == 6 and e.parent_block_hash is None for e in stored)
    assert stored[0].block_hashes == [external(h) for h in first.block_hashes[:6]]
    manager.free(first)
    # a flood of distinct prompts evicts the cached blocks, each removal announced
    for i in range(40):
        req = make_request(f"f{i}", [1000 + 500 * i + k for k in range(450)])
        if manager.allocate_slots(req, 450, has_scheduled_reqs=False) is None:
            break
        manager.free(req)
        assert all(e.parent_block_hash is None for e in replay() if isinstance(e, BlockStored))
    assert sum(manager.cache.allocator.counters.evicted_by_type) > 0
    assert manager.reset_prefix_cache()
    assert isinstance(replay()[-1], AllBlocksCleared) and not live


def test_allocate_slots_returns_only_new_blocks_as_stock_vllm_does():
    """vLLM's contract (KVCacheManager.allocate_slots): the blocks this call allocated — for a
    new request with a prefix hit, not the hit's blocks. Same calls on both managers: a first
    request caches 3 full blocks; a second one sharing them gets a 3-block hit and 2 new blocks;
    a running request's growth returns its new block only."""
    managers = one_type_managers()
    counts = {}
    for name, manager in managers.items():
        shared = [500 + k for k in range(96)]
        first = make_request(f"{name}-a", shared + [900 + k for k in range(4)])
        assert len(manager.allocate_slots(first, 100).get_block_ids()[0]) == 4
        manager.free(first)
        second = make_request(f"{name}-b", shared + [700 + k for k in range(40)])
        hit_blocks, hit_tokens = manager.get_computed_blocks(second)[:2]
        hit_ids = set(hit_blocks.get_block_ids()[0])
        new = manager.allocate_slots(second, 136 - hit_tokens, hit_tokens, hit_blocks)
        new_ids = new.get_block_ids()[0]
        assert not hit_ids & set(new_ids), name
        assert manager.get_block_ids(second.request_id)[0] == [
            *hit_blocks.get_block_ids()[0],
            *new_ids,
        ]
        second.num_computed_tokens = 136
        grown = manager.allocate_slots(second, 30)  # 166 tokens: one block more
        counts[name] = (hit_tokens, len(hit_ids), len(new_ids), len(grown.get_block_ids()[0]))
    assert counts["jenga"] == counts["vllm"] == (96, 3, 2, 1), counts


def test_a_kv_connectors_load_allocates_and_caches_as_stock_vllm_does():
    """The decode side of P/D (NixlConnector): a request with a local 3-block hit and 100
    tokens loaded by the connector (``num_external_computed_tokens``, ``delay_cache_blocks``)
    gets the same new blocks on both managers, none of them hashed until the load completes
    (what ``update_state_after_alloc`` reads as the destination blocks); then ``cache_blocks``
    names them, and a failed load's blocks (``evict_blocks``) serve no later hit."""
    managers = one_type_managers()
    seen = {}
    for name, manager in managers.items():
        shared = [500 + k for k in range(96)]
        first = make_request(f"{name}-a", shared + [900 + k for k in range(4)])
        manager.allocate_slots(first, 100)
        manager.free(first)
        tokens = shared + [700 + k for k in range(101)]  # 197 tokens: 196 loaded or hit
        second = make_request(f"{name}-b", tokens)
        hit_blocks, hit_tokens = manager.get_computed_blocks(second)[:2]
        new = manager.allocate_slots(
            second,
            0,
            hit_tokens,
            hit_blocks,
            num_external_computed_tokens=196 - hit_tokens,
            delay_cache_blocks=True,
        )
        (loaded,) = manager.get_blocks(second.request_id).get_unhashed_block_ids_all_groups()
        second.num_computed_tokens = 196
        manager.cache_blocks(second, 196)
        (unhashed,) = manager.get_blocks(second.request_id).get_unhashed_block_ids_all_groups()
        manager.evict_blocks(set(loaded))
        manager.free(second)
        third = make_request(f"{name}-c", tokens)
        seen[name] = (
            hit_tokens,
            len(new.get_block_ids()[0]),
            len(loaded),
            len(unhashed),
            manager.get_computed_blocks(third)[1],
        )
    # 3 hit blocks; the 4 blocks of tokens 96..195 (the 197th is computed) are the request's,
    # not the call's new blocks (none); all 4 were load targets; after the load only the
    # partial last block is unhashed; after the eviction a repeat hits the 3 blocks that were
    # not loaded.
    assert seen["jenga"] == seen["vllm"] == (96, 0, 4, 1, 96), seen
