"""JengaEncoderCacheManager's protocol over a real JengaCache (#16 item 3).

The scheduler-side calls in the order vLLM 0.32's scheduler makes them
(``check_and_update_cache`` → ``can_allocate`` → the KV manager's ``reserve``/``settle`` →
``allocate`` → ``free_encoder_input``; ``get_freed_mm_hashes`` / ``get_manager_metadata`` at
the end of a step), with the whole-pool invariant checker after each step. Real engines serve
the same code in tests/vllm/test_multimodal.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from jenga_vllm.core import LayerTypeSpec, check_invariants
from jenga_vllm.vllm.encoder_cache import JengaEncoderCacheManager, JengaVisionMetadata
from tests.core.helpers import make_cache

EMBEDS = 16  # one zoo image


@dataclass
class Feature:
    identifier: str


@dataclass
class Request:
    request_id: str
    images: list[str]
    mm_features: list[Feature] = field(init=False)

    def __post_init__(self) -> None:
        self.mm_features = [Feature(h) for h in self.images]

    def get_num_encoder_embeds(self, input_id: int) -> int:
        return EMBEDS


class KVManager:  # what bind() reads from JengaKVCacheManager
    def __init__(self, large_pages: int) -> None:
        specs = [
            LayerTypeSpec.uniform("self", "full", 2, 64),
            LayerTypeSpec.of("vision_embedding", (128,), block_tokens=16),
        ]
        self.cache = make_cache(specs, large_pages=large_pages)


def manager(large_pages: int = 20, budget: int = 2 * EMBEDS):
    kv = KVManager(large_pages)
    encoder = JengaEncoderCacheManager(budget)
    encoder.bind(kv)
    return encoder, kv.cache


def schedule(encoder, request, cache, kv_tokens: int = 0) -> bool:
    """One request's encoder inputs through the scheduler's calls; True if scheduled."""
    todo = []
    for i in range(len(request.mm_features)):
        if not encoder.check_and_update_cache(request, i):
            if not encoder.can_allocate(request, i, 10_000, 0):
                return False
            todo.append(i)
    if encoder.has_pending(request.request_id) and not encoder.reserve(request.request_id):
        return False
    ok = cache.allocate(request.request_id, kv_tokens) is not None if kv_tokens else True
    encoder.settle(request.request_id, scheduled=ok)
    if ok:
        for i in todo:
            encoder.allocate(request, i)
    else:
        encoder.free(request)
    return ok


def end_step(encoder, cache):
    freed = encoder.get_freed_mm_hashes()
    metadata = encoder.get_manager_metadata()
    check_invariants(cache)
    return freed, metadata


def test_an_image_is_encoded_once_then_served_from_its_pages():
    encoder, cache = manager()
    a = Request("a", ["img-1"])
    assert schedule(encoder, a, cache)
    _, metadata = end_step(encoder, cache)
    assert isinstance(metadata, JengaVisionMetadata)
    units, embeds = metadata.pages["img-1"]
    assert embeds == EMBEDS and len(units) == 1
    encoder.free_encoder_input(a, 0)  # its tokens computed: retained for a later request
    end_step(encoder, cache)
    b = Request("b", ["img-1"])
    assert schedule(encoder, b, cache)
    assert end_step(encoder, cache)[1] is None  # nothing to encode: same pages
    assert encoder.encoder_runs == 1 and encoder.cache_hits == 1


def test_a_request_that_does_not_fit_takes_no_image_pages():
    encoder, cache = manager(large_pages=6)
    big = Request("big", ["img-1"])
    # its KV cannot fit: the reserved image pages are given back, never cached (unwritten)
    assert not schedule(encoder, big, cache, kv_tokens=16 * 40)
    freed, metadata = end_step(encoder, cache)
    assert metadata is None and "img-1" not in encoder.entries
    assert not cache.item_cached("img-1", EMBEDS, encoder.type_idx)


def test_an_entry_preempted_before_its_encoder_ran_is_dropped_not_cached():
    encoder, cache = manager()
    a = Request("a", ["img-1"])
    assert schedule(encoder, a, cache)
    encoder.free(a)  # preempted in the same step, its encoder input unscheduled
    freed, metadata = end_step(encoder, cache)
    assert metadata is None and "img-1" in freed
    assert not cache.item_cached("img-1", EMBEDS, encoder.type_idx)


def test_retained_images_go_to_the_evictor_oldest_first_and_leave_the_worker():
    encoder, cache = manager(large_pages=12, budget=4 * EMBEDS)
    for n in range(3):
        r = Request(f"r{n}", [f"img-{n}"])
        assert schedule(encoder, r, cache)
        end_step(encoder, cache)
        encoder.free(r)
    assert len(encoder._retained) == 3
    # KV that needs the whole pool gets it once the retained images went to the evictor
    assert cache.allocate("kv", 16 * 11) is None
    released = 0
    while cache.allocate("kv", 16 * 11) is None:
        assert encoder.release_oldest()
        released += 1
    assert released == 3 and not encoder._retained
    freed, _ = end_step(encoder, cache)
    assert set(freed) == {"img-0", "img-1", "img-2"} and not encoder.entries
    # a later request re-encodes into new pages (no stale hit)
    cache.free("kv")
    r = Request("again", ["img-1"])
    assert schedule(encoder, r, cache)
    assert "img-1" in end_step(encoder, cache)[1].pages
    assert encoder.encoder_runs == 4


def test_past_the_budget_the_oldest_retained_image_becomes_evictable():
    encoder, cache = manager(budget=2 * EMBEDS)
    for n in range(3):
        r = Request(f"r{n}", [f"img-{n}"])
        assert schedule(encoder, r, cache)
        end_step(encoder, cache)
        encoder.free(r)
    assert list(encoder._retained) == ["img-1", "img-2"]
    assert not encoder.entries["img-0"].held  # CACHED, still a hit
    assert schedule(encoder, Request("x", ["img-0"]), cache)
    assert end_step(encoder, cache)[1] is None and encoder.cache_hits == 1


def test_an_image_approved_but_not_scheduled_is_no_hit_and_leaves_no_pages():
    """vLLM approves an item (``can_allocate``) and then skips it when none of its embeddings
    fall in the scheduled range: the request's pages for it were reserved with its KV, but
    nobody computes it in this step."""
    encoder, cache = manager()
    a, b = Request("a", ["img-1"]), Request("b", ["img-1"])
    assert not encoder.check_and_update_cache(a, 0)
    assert encoder.can_allocate(a, 0, 10_000, 0)
    assert encoder.reserve("a")
    encoder.settle("a", scheduled=True)  # its KV fit; allocate(a, 0) never comes
    assert not encoder.check_and_update_cache(b, 0)  # not computed by anyone: a miss
    assert schedule(encoder, b, cache)  # b schedules it and computes it into the same pages
    freed, metadata = end_step(encoder, cache)
    assert "img-1" in metadata.pages and encoder.entries["img-1"].refs == {"b"}
    # alone, the skipped reservation is given back at the end of the step
    c = Request("c", ["img-2"])
    assert encoder.can_allocate(c, 0, 10_000, 0) and encoder.reserve("c")
    encoder.settle("c", scheduled=True)
    freed, metadata = end_step(encoder, cache)
    assert metadata is None and "img-2" in freed and "img-2" not in encoder.entries
    assert not cache.item_cached("img-2", EMBEDS, encoder.type_idx)
