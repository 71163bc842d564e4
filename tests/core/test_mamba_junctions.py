"""A Mamba state is a shared-prefix junction (kept fresh) once two requests started from it.

One hit is a continuation (the next turn of a chat starts from the previous turn's end and writes
its own later states); a second request starting there means the prefix is shared.
"""

from __future__ import annotations

from jenga_vllm.core import LayerTypeSpec, block_hashes
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
