"""Mamba state checkpoints across a multi-turn chat: what the next turn can start from.

A turn decodes past a checkpoint every interval; each superseded checkpoint is released stale.
The last one before the turn ends is the next turn's longest reusable prefix.
"""

from __future__ import annotations

from jenga_vllm.core import LayerTypeSpec, block_hashes, check_invariants
from tests.core.helpers import BS, make_cache


def _specs():
    """Full attention (1 layer × 64 B/token) beside a Mamba state (2 KiB), checkpoint every 16."""
    return [
        LayerTypeSpec.uniform("full", "full", 1, 64),
        LayerTypeSpec.uniform("mamba", "mamba", 1, 2048, block_tokens=BS),
    ]


def _run_turn(cache, rid: str, prompt: list[int], output: list[int]) -> int:
    """Admit with the longest hit, prefill, decode one token at a time, finish; returns the hit."""
    tokens = prompt + output
    hashes = block_hashes(tokens, BS)
    hit = cache.find_longest_hit(hashes, len(prompt) - 1)
    assert cache.allocate(rid, len(prompt), hit) is not None
    for n in range(len(prompt), len(tokens) + 1):
        assert cache.allocate(rid, n) is not None
        cache.cache_blocks(rid, hashes, n)
        cache.release_unneeded(rid, n)
    cache.free(rid)
    return hit.num_tokens


def test_the_next_turn_starts_from_the_last_checkpoint_of_the_previous_turn():
    cache = make_cache(_specs(), large_pages=64)
    prompt = list(range(1, 101))  # 100 tokens
    answer = list(range(1000, 1058))  # 58 tokens: the turn ends at 158
    assert _run_turn(cache, "turn1", prompt, answer) == 0
    follow_up = prompt + answer + list(range(5000, 5030))
    # 144 = the last 16-token boundary before 158: the state after the turn's last full block.
    assert _run_turn(cache, "turn2", follow_up, [1, 2, 3]) == 144


def test_superseded_checkpoints_go_stale_and_are_evicted_before_the_turn_end():
    """Under pressure the intermediate decode checkpoints go first; the last one stays."""
    cache = make_cache(_specs(), large_pages=64)
    prompt = list(range(1, 101))
    answer = list(range(1000, 1100))  # decodes past 6 boundaries: 112, 128, ..., 192
    _run_turn(cache, "turn1", prompt, answer)
    mamba = cache.index.by_type[1]
    hashes = block_hashes(prompt + answer, BS)
    checkpoints = [b for b in range(len(hashes)) if hashes[b] in mamba]
    assert checkpoints[-1] == 11  # the state after token 192
    evicted = 0
    while len(mamba) > 1 and cache.evict_one():
        evicted += 1
    assert evicted and hashes[11] in mamba


def test_with_the_prompt_length_known_only_prompt_states_and_the_turn_end_stay_cached():
    """What the engine does (it passes the prompt length): states written while the prompt is
    prefilled stay cached when superseded (stale); of the decode-time states only the newest
    complete one stays cached — fresh while its request runs (the turn end so far), stale once
    the request has ended — and the older one is dropped when a newer one is superseded."""
    cache = make_cache(_specs(), large_pages=64)
    prompt = list(range(1, 101))  # 100 tokens, prefilled in chunks ending at 48 and 100
    answer = list(range(1000, 1100))  # decodes past 112, 128, ..., 192
    tokens = prompt + answer
    hashes = block_hashes(tokens, BS)
    for n in (48, 100):
        assert cache.allocate("a", n, prompt_tokens=len(prompt)) is not None
        cache.cache_blocks("a", hashes, n)
        cache.release_unneeded("a", n)
    for n in range(101, len(tokens)):
        assert cache.allocate("a", n) is not None
        cache.cache_blocks("a", hashes, n)
        cache.release_unneeded("a", n)
    mamba = cache.index.by_type[1]
    cached = sorted(b for b in range(len(hashes)) if hashes[b] in mamba)
    # The first chunk's checkpoint 32 (block 1), its end 48 (block 2) and the prompt's
    # checkpoint 96 (block 5) stay; of the decode-time states only the newest complete one
    # (after 192 tokens, block 11) is still cached, fresh while the request runs.
    assert cached == [1, 2, 5, 11]
    turn_end = mamba[hashes[11]]
    assert turn_end.is_cached and not turn_end.is_stale
    assert mamba[hashes[5]].is_stale
    cache.free("a")
    assert sorted(b for b in range(len(hashes)) if hashes[b] in mamba) == [1, 2, 5, 11]
    assert turn_end.is_cached and turn_end.is_stale
    check_invariants(cache)
