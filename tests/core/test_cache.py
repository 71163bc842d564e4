"""JengaCache behaviour with hand-computed expectations."""

from __future__ import annotations

import random

import pytest

from jenga_vllm.core import (
    JengaAllocationError,
    JengaCache,
    LayerTypeSpec,
    block_hashes,
    check_invariants,
    plan_layout,
    pool_usage,
)
from tests.core.helpers import BS, make_cache, three_type_specs


def snapshot(cache: JengaCache):
    return (
        {rid: cache.block_ids(rid) for rid in cache.requests},
        list(cache.allocator.free_large),
        [cache.evictor.num_small(t) for t in range(len(cache.policies))],
        cache.evictor.num_large(),
        len(cache.index),
    )


def run_prompt(cache, rid, tokens, hit=True):
    hashes = block_hashes(tokens, BS)
    found = cache.find_longest_hit(hashes, len(tokens) - 1) if hit else None
    new = cache.allocate(rid, len(tokens), found)
    assert new is not None
    cache.cache_blocks(rid, hashes, len(tokens))
    cache.release_unneeded(rid, len(tokens))
    check_invariants(cache)
    return found


def test_sliding_window_pages_leave_as_the_window_moves():
    cache = make_cache(three_type_specs(window=40), large_pages=20)
    tokens = list(range(100))
    run_prompt(cache, "a", tokens)
    full_ids, swa_ids, mamba_ids = cache.block_ids("a")
    assert len(full_ids) == len(swa_ids) == 7 and all(full_ids)
    # 100 tokens computed: the next token needs positions >= 61 -> blocks 3.. of 16 tokens.
    assert swa_ids[:3] == [0, 0, 0] and all(swa_ids[3:])
    # Mamba (interval 32): the newest state (after 100 tokens, block 3) and the checkpoint at 96
    # (block 2) were allocated; the checkpoint was then released to the cache.
    assert mamba_ids == [0, 0, 0, mamba_ids[3]] and mamba_ids[3] != 0
    assert len(cache.evictor.small_stale[2]) + len(cache.evictor.large_stale) >= 1
    # The released SWA pages hold valid KV: they sit in the cache, stale.
    stale = cache.evictor.small_stale[1]
    assert len(stale) == 3 and all(p.is_stale for p in stale)


def test_prefix_hit_is_the_longest_length_every_type_accepts():
    cache = make_cache(three_type_specs(window=40, mamba_interval=32), large_pages=20)
    prompt = list(range(200))
    run_prompt(cache, "a", prompt)
    cache.free("a")
    check_invariants(cache)
    # Same 200-token prefix + new tail. Full attention could reuse 12 blocks (192 tokens), but the
    # Mamba state is cached only every 32 tokens -> 192 is a checkpoint; SWA needs the window.
    hit = run_prompt(cache, "b", prompt + [999] * 30)
    assert hit.num_tokens == 192
    full_ids, swa_ids, mamba_ids = cache.block_ids("b")
    assert all(full_ids[:12])
    first_swa = (192 - 40 + 1) // BS  # 9
    assert hit.pages[1][:first_swa] == (None,) * first_swa and all(hit.pages[1][first_swa:12])
    assert hit.pages[2] == (None,) * 5 + (hit.pages[2][5],) and hit.pages[2][5] is not None


def test_mamba_state_missing_limits_the_hit_for_all_types():
    cache = make_cache(three_type_specs(window=40, mamba_interval=64), large_pages=20)
    prompt = list(range(100))
    run_prompt(cache, "a", prompt)
    cache.free("a")
    # Mamba checkpoints exist at 64 only (the 128 boundary was never reached).
    hit = cache.find_longest_hit(block_hashes(prompt + [1] * 60, BS), 159)
    assert hit.num_tokens == 64


def test_hit_tokens_by_type_names_the_type_that_limits_a_hit():
    cache = make_cache(three_type_specs(window=40, mamba_interval=64), large_pages=20)
    prompt = list(range(100))
    run_prompt(cache, "a", prompt)
    cache.free("a")
    hashes = block_hashes(prompt + [1] * 60, BS)
    # Full attention and the window hold 6 whole blocks (96 tokens); Mamba's state only at 64.
    assert cache.hit_tokens_by_type(hashes, 159) == [96, 96, 64]
    assert cache.find_longest_hit(hashes, 159).num_tokens == 64
    assert cache.hit_tokens_by_type(block_hashes([7] * 160, BS), 159) == [0, 0, 0]


def test_request_aware_placement_frees_whole_large_pages():
    specs = [LayerTypeSpec.uniform("full", "full", 1, 64)]  # 1 KiB pages
    plan = plan_layout(specs, BS, max_pages_per_large=4)
    assert plan.types[0].pages_per_large == 1
    # Two types so that large pages hold several small pages.
    specs = [
        LayerTypeSpec.uniform("full", "full", 1, 64),
        LayerTypeSpec.uniform("swa", "sliding_window", 1, 256, window=1024),
    ]
    cache = make_cache(specs, large_pages=40)
    assert cache.plan.types[0].pages_per_large == 4
    for rid in ("a", "b"):  # prefills that fill whole large pages of the full type
        assert cache.allocate(rid, 8 * BS) is not None
    owners = {}
    for large in cache.allocator.large_pages[1:]:
        if large.num_used:
            holders = {
                rid
                for rid in ("a", "b")
                for t in cache.requests[rid].tables
                for p in t
                if p is not None and p.large is large
            }
            owners[large.index] = holders
    assert owners and all(len(h) == 1 for h in owners.values())  # never mixed
    free_before = len(cache.allocator.free_large)
    cache.free("a")
    check_invariants(cache)
    released = len(cache.allocator.free_large) - free_before
    assert released == sum(1 for h in owners.values() if h == {"a"})


def llama4_like_cache(large_pages: int, **kw) -> JengaCache:
    """A large page holds 3 full-attention pages (2 layers) or 1 chunked-local page (6)."""
    specs = [
        LayerTypeSpec.uniform("full", "full", 2, 64),
        LayerTypeSpec.uniform("local", "chunked_local", 6, 64, chunk=4 * BS),
    ]
    cache = make_cache(specs, large_pages=large_pages, **kw)
    assert [t.pages_per_large for t in cache.plan.types] == [3, 1]
    return cache


def test_single_new_pages_fill_holes_before_taking_a_fresh_large_page():
    # Llama-4-like: a large page holds one chunked-local page or three full-attention pages.
    # A request whose full-attention page took a large page of its own would strand two slots
    # there, which the chunked-local type (whole large pages only) cannot use.
    cache = llama4_like_cache(large_pages=13)
    assert cache.plan.usable_large_pages == 12
    admitted = 0
    while cache.allocate(f"r{admitted}", BS) is not None:  # one page of each type per request
        admitted += 1
        check_invariants(cache)
    # 9 chunked-local large pages + 2 full pages in the null page's slots + 3 large pages
    # holding the other 7 (a large page each: 6 requests).
    assert admitted == 9
    assert cache.plan.lends_null and cache.allocator.carved_large == [4, 9]
    assert cache.num_free_large_pages() == 0 and cache.allocator.slots_in_active(0) == 2


def test_homogeneous_model_behaves_like_a_plain_paged_allocator():
    rng = random.Random(7)
    cache = make_cache([LayerTypeSpec.uniform("full", "full", 4, 128)], large_pages=65)
    assert cache.plan.types[0].pages_per_large == 1
    capacity = cache.plan.usable_large_pages
    plain_tokens: dict[str, int] = {}

    def plain_used() -> int:
        return sum(-(-n // BS) for n in plain_tokens.values())

    for step in range(600):
        rid = f"r{rng.randrange(12)}"
        if rid in plain_tokens and rng.random() < 0.15:
            cache.free(rid)
            del plain_tokens[rid]
        else:
            n = plain_tokens.get(rid, 0) + rng.randrange(1, 40)
            needed = -(-n // BS) - -(-plain_tokens.get(rid, 0) // BS)
            fits = plain_used() + needed <= capacity
            got = cache.allocate(rid, n)
            assert (got is not None) == fits, f"step {step}: jenga {got is not None}, plain {fits}"
            if got is not None:
                plain_tokens[rid] = n
                assert len(got[0]) == needed
        usage = pool_usage(cache)
        assert usage.types[0].used_pages == plain_used()
    check_invariants(cache)


def test_out_of_memory_returns_none_and_changes_nothing():
    cache = make_cache(three_type_specs(), large_pages=4)
    run_prompt(cache, "a", list(range(60)))
    before = snapshot(cache)
    assert cache.allocate("b", 100_000) is None
    assert cache.allocate("a", 100_000) is None
    assert snapshot(cache) == before
    check_invariants(cache)
    # A new request with a prefix hit that does not fit: not admitted, its hit pages untouched
    # (the plan step decides before anything moves).
    cache.free("a")
    hit = cache.find_longest_hit(block_hashes(list(range(60)), BS), 59)
    assert hit.num_tokens and all(p.is_cached for p in hit.reused_pages())
    before = snapshot(cache)
    assert cache.allocate("c", 100_000, hit) is None
    assert snapshot(cache) == before
    assert "c" not in cache.requests and all(p.is_cached for p in hit.reused_pages())
    check_invariants(cache)


@pytest.mark.parametrize(
    "action", ["free_unknown", "double_free", "hit_on_running", "release_unknown"]
)
def test_bad_calls_raise_and_leave_state_unchanged(action):
    cache = make_cache(three_type_specs(), large_pages=10)
    run_prompt(cache, "a", list(range(50)))
    run_prompt(cache, "gone", list(range(50)))
    cache.free("gone")
    before = snapshot(cache)
    with pytest.raises(JengaAllocationError) as err:
        if action == "free_unknown":
            cache.free("nope")
        elif action == "double_free":
            cache.free("gone")
        elif action == "hit_on_running":
            hit = cache.find_longest_hit(block_hashes(list(range(50)), BS), 49)
            assert hit.num_tokens
            cache.allocate("a", 80, hit)
        else:
            cache.release_unneeded("nope", 10)
    assert "request" in str(err.value)
    assert snapshot(cache) == before
    check_invariants(cache)


def test_cross_attention_pages_are_shared_per_encoder_input():
    specs = [
        LayerTypeSpec.uniform("self", "full", 2, 64),
        LayerTypeSpec.uniform("cross", "cross_attention", 2, 64),
    ]
    cache = make_cache(specs, large_pages=30)
    a = cache.allocate("a", 20, encoder_key="audio-1", encoder_tokens=100)
    b = cache.allocate("b", 20, encoder_key="audio-1", encoder_tokens=100)
    c = cache.allocate("c", 20, encoder_key="audio-2", encoder_tokens=100)
    assert len(a[1]) == 7 and b[1] == [] and len(c[1]) == 7
    assert cache.block_ids("a")[1] == cache.block_ids("b")[1] != cache.block_ids("c")[1]
    for rid in ("a", "b", "c"):
        cache.free(rid)
    d = cache.allocate("d", 20, encoder_key="audio-1", encoder_tokens=100)
    assert d[1] == []  # whole item still cached
    check_invariants(cache)


def equal_page_cache(evictor: str) -> JengaCache:
    # Same small-page size for both types -> one small page per large page: eviction order is
    # directly visible page by page.
    specs = [
        LayerTypeSpec.uniform("full", "full", 1, 64),
        LayerTypeSpec.uniform("swa", "sliding_window", 1, 64, window=1000),
    ]
    return make_cache(specs, large_pages=40, evictor=evictor)


@pytest.mark.parametrize("evictor", ["prefix_subset", "per_type_lru"])
def test_eviction_is_aligned_and_suffix_first_only_with_prefix_subset(evictor):
    cache = equal_page_cache(evictor)
    prompt = list(range(160))  # 10 blocks per type
    run_prompt(cache, "a", prompt)
    cache.free("a")
    for _ in range(6):
        assert cache.evict_one()
    check_invariants(cache)
    hit = cache.find_longest_hit(block_hashes(prompt, BS), 159)
    if evictor == "prefix_subset":
        # The 3 deepest blocks of each type went: the 7-block prefix survives in both.
        assert hit.num_tokens == 7 * BS
    else:
        # Per-type LRU drained 6 blocks of one type: the common prefix is 4 blocks.
        assert hit.num_tokens == 4 * BS


def test_pages_that_left_the_window_are_evicted_first():
    specs = [
        LayerTypeSpec.uniform("full", "full", 1, 64),
        LayerTypeSpec.uniform("swa", "sliding_window", 1, 64, window=64),
    ]
    cache = make_cache(specs, large_pages=40)
    old = list(range(1000, 1048))  # fits the window: nothing of it is stale
    run_prompt(cache, "old", old)
    cache.free("old")  # fresh cached pages of a finished request
    run_prompt(cache, "live", list(range(160)))  # releases SWA pages out of its window: stale
    stale_ids = {p.unit_id for p in cache.evictor.small_stale[1]}
    stale_ids |= {p.unit_id for large in cache.evictor.large_stale for p in large.pages}
    assert stale_ids
    evicted = 0
    while stale_ids and cache.evict_one():
        evicted += 1
        alive = {p.unit_id for t in range(2) for p in cache.evictor.small_stale[t]}
        alive |= {p.unit_id for large in cache.evictor.large_stale for p in large.pages}
        stale_ids &= alive
    # Every stale page went before any page of the finished request's prompt.
    assert cache.find_longest_hit(block_hashes(old, BS), 47).num_tokens == 32


def test_reset_prefix_cache_refuses_while_running_then_frees_everything():
    cache = make_cache(three_type_specs(), large_pages=12)
    run_prompt(cache, "a", list(range(90)))
    assert not cache.reset_prefix_cache()
    cache.free("a")
    assert cache.reset_prefix_cache()
    assert len(cache.allocator.free_large) == cache.plan.usable_large_pages
    assert len(cache.index) == 0
    check_invariants(cache)


def test_accounting_adds_up_and_reports_partial_pages():
    cache = make_cache(three_type_specs(window=1000), large_pages=12)
    cache.allocate("a", 20)  # 2 full + 2 swa blocks, 12 tokens of each unused
    usage = pool_usage(cache)
    full = usage.types[0]
    assert full.used_pages == 2
    assert full.partial_bytes == 12 * 2 * 64
    assert usage.used_bytes + usage.cached_bytes + usage.empty_bytes + usage.free_bytes == (
        usage.usable_bytes
    )
    assert 0 < usage.utilization < usage.usage <= 1


def test_window_pages_that_served_a_hit_are_not_released_stale():
    """A shared prefix's last window (e.g. a system prompt) stays useful after it leaves the
    window of the request that hit it; only never-reused out-of-window pages go stale."""
    specs = [
        LayerTypeSpec.uniform("full", "full", 1, 64),
        LayerTypeSpec.uniform("swa", "sliding_window", 1, 64, window=32),
    ]
    cache = make_cache(specs, large_pages=40)
    system = list(range(64))
    run_prompt(cache, "first", system)
    cache.free("first")
    hit = run_prompt(cache, "second", system + list(range(500, 600)))
    assert hit.num_tokens == 64
    reused = {p.unit_id for p in hit.pages[1] if p is not None}
    stale = {p.unit_id for p in cache.evictor.small_stale[1]}
    stale |= {p.unit_id for large in cache.evictor.large_stale for p in large.pages}
    fresh = {p.unit_id for p in cache.evictor.small_fresh[1]}
    fresh |= {p.unit_id for large in cache.evictor.large_fresh for p in large.pages}
    assert reused and reused <= fresh and not reused & stale
    assert stale  # the second request's own out-of-window pages are stale


def test_a_new_prompts_first_window_ages_normally_other_released_pages_go_stale():
    """The first request of a prefix (no hit) releases the pages of its prompt's first window
    fresh — a system prompt no longer than the window leaves it while that request runs, and
    the next request needs all of it; the rest of the prompt, pages holding generated tokens,
    and the out-of-window pages of a request that hit go to the stale queue."""
    specs = [
        LayerTypeSpec.uniform("full", "full", 1, 64),
        LayerTypeSpec.uniform("swa", "sliding_window", 1, 64, window=32),
    ]
    cache = make_cache(specs, large_pages=40)

    def queued(pages_of) -> tuple[set[int], set[int]]:
        ev = cache.evictor
        fresh = {p.unit_id for p in ev.small_fresh[1]}
        fresh |= {p.unit_id for large in ev.large_fresh for p in large.pages}
        stale = {p.unit_id for p in ev.small_stale[1]}
        stale |= {p.unit_id for large in ev.large_stale for p in large.pages}
        return fresh & pages_of, stale & pages_of

    prompt = list(range(100))
    hashes = block_hashes(prompt + list(range(900, 960)), BS)
    assert cache.allocate("first", 100, prompt_tokens=100) is not None
    swa = {p.unit_id for p in cache.requests["first"].tables[1]}
    cache.cache_blocks("first", hashes, 100)
    cache.release_unneeded("first", 100)  # window 32: blocks 0-3 leave; 0-1 are its first window
    fresh, stale = queued(swa)
    assert len(fresh) == 2 and len(stale) == 2
    assert cache.allocate("first", 160) is not None  # decode to 160 tokens
    swa = {p.unit_id for p in cache.requests["first"].tables[1] if p is not None} | swa
    cache.cache_blocks("first", hashes, 160)
    cache.release_unneeded("first", 160)  # blocks 4-7 leave: 4-5 prompt, 6-7 generated
    fresh, stale = queued(swa)
    assert len(fresh) == 2 and len(stale) == 6
    check_invariants(cache)
    hit = run_prompt(cache, "second", prompt + list(range(500, 600)))  # run_prompt: no prompt
    assert hit.num_tokens == 96
    cache.free("second")
    third_tokens = prompt + list(range(500, 600)) + list(range(2000, 2100))
    third_hashes = block_hashes(third_tokens, BS)
    found = cache.find_longest_hit(third_hashes, 299)
    assert found.num_tokens == 192
    assert cache.allocate("third", 300, found, prompt_tokens=300) is not None
    new = {p.unit_id for p in cache.requests["third"].tables[1][12:]}
    cache.cache_blocks("third", third_hashes, 300)
    cache.release_unneeded("third", 300)  # blocks 12-15 (its own prompt) leave the window
    fresh, stale = queued(new)
    assert stale and not fresh  # a request that hit: its own window pages are stale
    check_invariants(cache)


def test_types_with_many_pages_per_large_page_are_packed_across_requests():
    # 256 attention pages (4,096 tokens) per large page: giving each request its own large page
    # would strand most of it, so requests share large pages of that type.
    specs = [
        LayerTypeSpec.uniform("attn", "full", 1, 64),  # 1 KiB pages
        LayerTypeSpec.uniform("state", "mamba", 1, 256 * 1024, block_tokens=64),  # 256 KiB
    ]
    cache = make_cache(specs, large_pages=12)
    assert cache.plan.types[0].pages_per_large == 256
    for i in range(6):
        assert cache.allocate(f"r{i}", 40) is not None  # 3 attention pages + 1 state page each
    attn_large = {p.large.index for i in range(6) for p in cache.requests[f"r{i}"].tables[0]}
    assert len(attn_large) == 1
    check_invariants(cache)


def test_with_no_free_large_page_a_remainder_evicts_the_least_recently_cached_first():
    # Llama-4-like: a large page holds 3 full-attention pages or 1 chunked-local page. With no
    # FREE large page left, a single new full-attention page evicts whichever was cached less
    # recently: a small page of its type (in an ACTIVE large page) or a whole EVICTABLE large
    # page — not always the large page, which serves every type (and the paper's step order
    # would take it first whenever the budget allows).
    cache = llama4_like_cache(large_pages=5, lend_slots=False)  # no slots in the null page
    for i in range(3):  # full pages share one large page; each local page has its own
        run_prompt(cache, f"r{i}", [i * 100 + t for t in range(BS)], hit=False)
    assert cache.num_free_large_pages() == 0
    cache.free("r1")  # oldest: r1's full page (CACHED slot), then its local large page
    cache.free("r2")  # then r2's full page and local large page
    check_invariants(cache)
    assert cache.evictor.num_small(0) == 2 and cache.evictor.num_large() == 2
    assert cache.allocate("r0", 2 * BS) is not None  # one more page of each type
    check_invariants(cache)
    # r1's full page (the oldest) and r1's local large page went; r2's are still cached
    assert cache.evictor.num_small(0) == 1 and cache.evictor.num_large() == 1
    r2_hashes = block_hashes([200 + t for t in range(BS)], BS)
    assert cache.find_longest_hit(r2_hashes, BS).num_tokens == BS


def vision_cache(large_pages: int = 12) -> JengaCache:
    specs = [
        LayerTypeSpec.uniform("self", "full", 2, 64),
        LayerTypeSpec.of("vision_embedding", (256,)),
    ]
    return make_cache(specs, large_pages=large_pages)


def test_vision_items_are_held_apart_from_requests_and_cached_whole():
    cache = vision_cache()
    vision = cache.item_types[0]
    assert cache.encoder_types == []  # a request never allocates item pages
    pages = cache.hold_item("img-1", 40, vision)
    assert pages is not None and len(pages) == 3  # cdiv(40, 16)
    assert all(p.block_hash == ("img-1", i) for i, p in enumerate(pages))
    assert cache.item_cached("img-1", 40, vision) and not cache.item_cached("img-2", 40, vision)
    assert cache.next_token_needs() == [0, 0]  # items are not requests: no decode headroom
    cache.release_item("img-1")  # no request needs it: CACHED, evictable
    check_invariants(cache)
    assert cache.item_cached("img-1", 40, vision)
    again = cache.hold_item("img-1", 40, vision)
    assert [p.unit_id for p in again] == [p.unit_id for p in pages]  # reused, not re-encoded
    cache.release_item("img-1", keep=False)  # e.g. a reservation given back: never written
    assert not cache.item_cached("img-1", 40, vision)
    assert cache.allocator.cached_pages[vision] == 0
    check_invariants(cache)


def test_vision_pages_and_kv_share_the_pool_under_one_evictor():
    cache = vision_cache(large_pages=12)  # 11 usable large pages of one image page or 2 KV
    vision = cache.item_types[0]
    assert cache.hold_item("img-1", 16 * 8, vision) is not None
    cache.release_item("img-1")
    # KV that needs the whole pool evicts the cached image, never a held one.
    grown = cache.allocate("a", 16 * 20)
    assert grown is not None
    assert not cache.item_cached("img-1", 16 * 8, vision)
    assert cache.hold_item("img-2", 16 * 64, vision) is None  # no room beside "a"
    check_invariants(cache)
    cache.free("a")
    assert cache.hold_item("img-2", 16 * 8, vision) is not None
    with pytest.raises(JengaAllocationError):
        cache.hold_item("img-2", 16 * 8, vision)
    check_invariants(cache)


def test_holding_an_item_keeps_the_protected_hit_and_the_pool_consistent():
    # The request an image belongs to takes its prefix hit right after the image's pages: the
    # hit's CACHED pages are pinned while the image is placed, then given back as they were.
    # (With JENGA_DEBUG_INVARIANTS=1 the whole-pool check runs inside hold_item: it must not
    # see the pins, whose extra reference no table names.)
    cache = vision_cache()
    vision = cache.item_types[0]
    hashes = block_hashes(list(range(4 * BS)), BS)
    assert cache.allocate("a", 4 * BS) is not None
    cache.cache_blocks("a", hashes, 4 * BS)
    cache.free("a")
    hit = cache.find_longest_hit(hashes, 4 * BS - 1)
    assert hit.num_tokens == 3 * BS
    assert cache.hold_item("img-1", 40, vision, protect=hit.pages[0]) is not None
    assert all(p.is_cached and p.ref_count == 0 for p in hit.pages[0])
    check_invariants(cache)


def test_a_sliding_window_keeps_to_its_own_large_page_and_leaves_it_whole():
    # Gemma-4-like: a large page holds 4 full-attention pages or 3 window pages, and a request's
    # window is 3 pages. Each request's lasting window pages take a large page of their own
    # (placed before the prompt's early pages, which leave the window right after the prefill),
    # and every later window page takes the slot of the page that just left the window. So a
    # preempted or finished request leaves whole large pages behind, not window slots stranded
    # beside other requests' windows that only the window type could use.
    specs = [
        LayerTypeSpec.uniform("full", "full", 3, 64),  # 3,072 B pages
        LayerTypeSpec.uniform("swa", "sliding_window", 1, 256, window=2 * BS),  # 4,096 B
    ]
    cache = make_cache(specs, large_pages=40)
    assert [t.pages_per_large for t in cache.plan.types] == [4, 3]
    lengths = {"a": 7 * BS + 3, "b": 5 * BS + 9, "c": 6 * BS}
    tokens = {rid: [hash((rid, i)) % 50_000 for i in range(n)] for rid, n in lengths.items()}
    for rid in lengths:
        run_prompt(cache, rid, tokens[rid], hit=False)
    for _ in range(3 * BS):  # decode: every request's window slides past three blocks
        for rid in lengths:
            tokens[rid].append(len(tokens[rid]))
            n = len(tokens[rid])
            assert cache.allocate(rid, n) is not None
            cache.cache_blocks(rid, block_hashes(tokens[rid], BS), n)
            cache.release_unneeded(rid, n)
    check_invariants(cache)
    window = {rid: [p for p in cache.requests[rid].tables[1] if p is not None] for rid in lengths}
    for rid, pages in window.items():
        assert len({p.large.index for p in pages}) == 1, rid  # one large page ...
        large = pages[0].large
        others = {r for r, ps in window.items() if r != rid for p in ps if p.large is large}
        assert not others, (rid, others)  # ... shared with no other request's window
    claimable = cache.allocator.claimable_large_pages()
    cache.free("b")
    check_invariants(cache)
    # b's window large page is claimable at once (EVICTABLE), by any type
    assert window["b"][0].large.num_used == 0
    assert cache.allocator.claimable_large_pages() >= claimable + 1


def test_a_prompt_that_hit_short_of_its_first_window_keeps_what_it_computed_there_fresh():
    # A prefix whose first window was partly evicted: the next request sharing it hits only its
    # first block and computes the rest of the window again. Those pages are what the following
    # sharers need: they age like any cached page, not stale (evicted first), so the prefix is
    # whole again — as vLLM's recomputed blocks are.
    specs = [
        LayerTypeSpec.uniform("full", "full", 1, 64),
        LayerTypeSpec.uniform("swa", "sliding_window", 1, 64, window=4 * BS),
    ]
    cache = make_cache(specs, large_pages=40)
    prefix = list(range(4 * BS))  # one window long
    run_prompt(cache, "first", prefix[:BS])  # only the prefix's first block is cached
    cache.free("first")
    tokens = prefix + list(range(700, 700 + 6 * BS))
    hashes = block_hashes(tokens, BS)
    found = cache.find_longest_hit(hashes, len(tokens) - 1)
    assert found.num_tokens == BS
    assert cache.allocate("second", len(tokens), found, prompt_tokens=len(tokens)) is not None
    cache.cache_blocks("second", hashes, len(tokens))
    cache.release_unneeded("second", len(tokens))  # window of 64: blocks 0-5 leave
    check_invariants(cache)
    ev = cache.evictor
    stale = {p for p in ev.small_stale[1]} | {p for lg in ev.large_stale for p in lg.pages}
    table = [cache.index.get(1, h) for h in hashes[:6]]
    assert all(p is not None for p in table)
    assert not set(table[:4]) & stale  # the prefix's first window: block 0 hit, 1-3 computed
    assert set(table[4:]) <= stale  # past the first window: stale as before
    cache.free("second")
    third = prefix + list(range(5000, 5000 + 2 * BS))
    assert cache.find_longest_hit(block_hashes(third, BS), len(third) - 1).num_tokens == 4 * BS


def test_a_block_computed_again_replaces_its_cached_copy():
    # A request that computes a block whose hash is cached in a page nobody holds (its hit
    # stopped before it) takes over the index entry: the old copy is evicted at once (its slot
    # EMPTY, its large page back to level 0 when nothing else is in it), so the block ages
    # from now; a copy some request holds is kept and the new page stays unhashed.
    specs = [
        LayerTypeSpec.uniform("full", "full", 1, 64),
        LayerTypeSpec.uniform("swa", "sliding_window", 1, 64, window=2 * BS),
    ]
    cache = make_cache(specs, large_pages=40)
    tokens = list(range(3 * BS))
    hashes = block_hashes(tokens, BS)
    run_prompt(cache, "old", tokens)
    old_full = list(cache.requests["old"].tables[0])
    cache.free("old")
    cached_before = cache.allocator.cached_pages[0]
    assert cache.allocate("again", len(tokens)) is not None  # no hit offered: computes it all
    cache.cache_blocks("again", hashes, len(tokens))
    check_invariants(cache)
    new_full = cache.requests["again"].tables[0]
    assert [cache.index.get(0, h) for h in hashes] == new_full
    assert all(p.block_hash is None for p in old_full)
    assert cache.allocator.cached_pages[0] == cached_before - 3
    # held copies stay: a third request computing the same blocks while "again" runs
    assert cache.allocate("held", len(tokens)) is not None
    cache.cache_blocks("held", hashes, len(tokens))
    check_invariants(cache)
    assert [cache.index.get(0, h) for h in hashes] == new_full
    assert all(p.block_hash is None for p in cache.requests["held"].tables[0])


def test_the_null_page_and_the_tail_serve_pages_and_are_never_freed_or_evicted():
    # Llama-4-like, 5 whole large pages + 2 full-page slots of tail: with the null page's 2
    # slots, full attention has 4 pages that take no large page, so all 4 usable large pages
    # hold local pages: 4 requests (a local large page + a full page each) fit, not 3.
    def cache_of(lend: bool) -> JengaCache:
        specs = [
            LayerTypeSpec.uniform("full", "full", 2, 64),
            LayerTypeSpec.uniform("local", "chunked_local", 6, 64, chunk=4 * BS),
        ]
        geometry = plan_layout(specs, BS)
        memory = 5 * geometry.large_page_bytes + 2 * geometry.types[0].small_page_bytes
        return JengaCache(plan_layout(specs, BS, memory, lend_slots=lend))

    def admit(cache: JengaCache) -> int:
        n = 0
        while cache.allocate(f"r{n}", BS) is not None:
            n += 1
            check_invariants(cache)
        return n

    assert admit(cache_of(lend=False)) == 3  # 3 local large pages + 1 for the full pages
    cache = cache_of(lend=True)
    assert admit(cache) == 4
    plan = cache.plan
    full_pages = [cache.requests[f"r{i}"].tables[0][0] for i in range(4)]
    assert {p.large.index for p in full_pages} == {0, 5}  # the null page's and the tail's slots
    assert all(0 < p.unit_id < plan.num_units for p in full_pages)
    assert all(
        plan.byte_offset(p.unit_id) + plan.types[0].small_page_bytes <= plan.pool_bytes
        for p in full_pages
    )
    assert cache.free_bytes() == 0
    for i in range(4):  # prompts become CACHED, then everything is evicted
        cache.free(f"r{i}")
    check_invariants(cache)
    while cache.allocator.evict_one():
        check_invariants(cache)
    assert cache.num_free_large_pages() == plan.usable_large_pages
    assert cache.allocator.slots_in_active(0) == 4  # the lent slots stay carved, EMPTY
    assert cache.free_bytes() == plan.usable_bytes
    assert admit(cache) == 4  # and serve again


@pytest.mark.parametrize("sizes", [(64, 64), (64, 48)])
def test_free_releases_in_the_evictors_order_without_sorting(sizes):
    # free() builds the release order from the tables when every type is an attention type of
    # one block size; it must be the order the evictor's sort gives: deepest block first, ties
    # in type order. Two windows, shared prefixes, requests freed mid-window.
    specs = [
        LayerTypeSpec.uniform("full", "full", 1, sizes[0]),
        LayerTypeSpec.uniform("swa", "sliding_window", 1, sizes[1], window=40),
        LayerTypeSpec.uniform("swa2", "sliding_window", 1, sizes[1], window=100),
    ]
    cache = make_cache(specs, large_pages=200)
    assert cache._blockwise_release
    rng = random.Random(3)
    shared = list(range(10_000, 10_000 + 70))
    released = []
    real_release = cache.allocator.release_in_order

    def record(pages, is_stale):
        released.append(list(pages))
        real_release(pages, is_stale)

    cache.allocator.release_in_order = record
    for i in range(12):
        tokens = (shared if i % 2 else []) + [
            rng.randrange(1000) for _ in range(rng.randint(1, 150))
        ]
        run_prompt(cache, f"r{i}", tokens)
        req = cache.requests[f"r{i}"]
        expected = cache.evictor.release_order(
            [p for table in req.tables for p in reversed(table) if p is not None]
        )
        released.clear()
        cache.free(f"r{i}")
        assert [p.unit_id for p in released[-1]] == [p.unit_id for p in expected]
        check_invariants(cache)


@pytest.mark.parametrize("beside", ["mamba", "sliding_window"])
def test_beside_whole_page_states_attention_reuses_its_stranded_cached_slots(beside):
    """A full-attention page is a quarter of a large page; the other type's page fills one.
    Requests of one block each fill large pages four at a time; three of every four finish
    while the fourth runs, so their attention pages stay CACHED in ACTIVE large pages —
    stranded: no state can use a slot. Once they add up to a large page, a new request's
    attention page reuses the least recently cached of them when the other type is a state (a
    FREE large page is what a state needs), and takes a FREE large page when it is a window
    (attention-only pools keep the paper's order; docs/design.md §4)."""
    second = (
        LayerTypeSpec.uniform("mamba", "mamba", 1, 4096, block_tokens=BS)
        if beside == "mamba"
        else LayerTypeSpec.uniform("swa", "sliding_window", 1, 256, window=2 * BS)
    )
    cache = make_cache([LayerTypeSpec.uniform("full", "full", 1, 64), second], 24)
    starts = iter(range(10_000, 10_000 + 40 * BS, BS))

    def one_block(rid):
        start = next(starts)
        run_prompt(cache, rid, list(range(start, start + BS)), hit=False)
        return cache.requests[rid].tables[0][0]

    for group in range(2):
        one_block(f"run{group}")
        for i in range(3):
            one_block(f"done{group}{i}")
        for i in range(3):
            cache.free(f"done{group}{i}")
    stranded = list(cache.evictor.small_fresh[0])  # CACHED attention slots, ACTIVE large pages
    assert len(stranded) >= cache.plan.types[0].pages_per_large
    free_before = len(cache.allocator.free_large)
    page = one_block("new")
    check_invariants(cache)
    if beside == "mamba":
        assert page is stranded[0]  # the least recently cached slot, reused
        assert len(cache.allocator.free_large) == free_before - 1  # the state's page only
    else:
        assert page.large not in {p.large for p in stranded}
        assert all(p.is_cached for p in stranded)
