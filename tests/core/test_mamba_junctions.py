"""A Mamba state is a shared-prefix junction (kept fresh) once two requests started from it.

One hit is a continuation (the next turn of a chat starts from the previous turn's end and writes
its own later states); a second request starting there means the prefix is shared.
"""

from __future__ import annotations

from jenga_vllm.core import JengaCache, LayerTypeSpec, block_hashes, plan_layout
from tests.core.helpers import BS, make_cache


def _specs():
    return [
        LayerTypeSpec.uniform("full", "full", 1, 64),
        LayerTypeSpec.uniform("mamba", "mamba", 1, 2048, block_tokens=BS),
    ]


def _start(cache, rid: str, tokens: list[int], prompt_len: int) -> list[int]:
    """Admit with the longest hit and prefill the prompt; returns the hashes."""
    hashes = block_hashes(tokens, BS)
    hit = cache.find_longest_hit(hashes, prompt_len - 1)
    assert cache.allocate(rid, prompt_len, hit) is not None
    cache.cache_blocks(rid, hashes, prompt_len)
    cache.release_unneeded(rid, prompt_len)
    return hashes


def test_a_state_one_request_continued_from_goes_stale_two_make_it_a_junction():
    cache = make_cache(_specs(), large_pages=64)
    system = list(range(1, 161))  # 160 tokens: the state after them is block 9
    hashes = _start(cache, "first", system + [7] * 20, 160)
    cache.free("first")
    state = cache.index.get(1, hashes[9])
    assert state is not None
    for n, rid in enumerate(["second", "third"], start=1):
        _start(cache, rid, system + [100 * n + j for j in range(30)], 190)
        assert state.hits == n
        assert state.is_stale == (n == 1)  # released by the request once it moved past it
        cache.free(rid)


def test_an_attention_only_prefix_longer_than_the_hit_is_reported_as_the_junction():
    """Two prompts share 100 tokens; the first wrote states only at its chunk end (160): the
    second gets no hit but learns the junction, the longest prefix attention alone could serve
    (96 = the last full block of the shared part); once a state is written there, it hits."""
    cache = make_cache(_specs(), large_pages=64)
    shared = list(range(1, 101))
    first = shared + [7] * 60
    _start(cache, "first", first, 160)
    cache.free("first")
    second = shared + [8] * 40
    hit = cache.find_longest_hit(block_hashes(second, BS), len(second) - 1)
    assert hit.num_tokens == 0 and hit.junction_tokens == 96
    # The engine stops the second prompt's first chunk at the junction: its state there is cached.
    hashes = block_hashes(second, BS)
    assert cache.allocate("second", 96, hit) is not None
    cache.cache_blocks("second", hashes, 96)
    # The state written at the junction is one the evictor keeps fresh (a shared prefix ends there).
    assert cache.requests["second"].tables[1][5].at_junction
    third = shared + [9] * 30
    hit = cache.find_longest_hit(block_hashes(third, BS), len(third) - 1)
    assert hit.num_tokens == 96 and hit.junction_tokens == 0


def test_a_state_written_in_this_step_is_no_hit_until_the_next_step():
    specs = _specs()
    geometry = plan_layout(specs, BS)
    cache = JengaCache(
        plan_layout(specs, BS, geometry.large_page_bytes * 64), guards_same_step_states=True
    )
    prompt = list(range(1, 161))
    hashes = _start(cache, "first", prompt + [7], 160)  # state after 160 indexed this step
    follower = prompt + [8] * 20
    hit = cache.find_longest_hit(block_hashes(follower, BS), len(follower) - 1)
    assert hit.num_tokens == 160
    assert cache.allocate("second", len(follower), hit) is None  # read before it is written
    assert "second" not in cache.requests
    cache.new_step()
    assert cache.allocate("second", len(follower), hit) is not None
    assert cache.requests["second"].tables[1][9] is cache.index.get(1, hashes[9])
