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


def test_with_the_prompt_length_known_the_turn_end_supersedes_the_prompts_last_state():
    """What the engine does (it passes the prompt length): states written while the prompt is
    prefilled stay cached when superseded (stale) — until a decode-time state supersedes the
    last of them; of the decode-time states only the newest complete one stays cached."""
    cache = make_cache(_specs(), large_pages=64)
    prompt = list(range(1, 101))  # 100 tokens, prefilled in chunks ending at 48 and 100
    answer = list(range(1000, 1100))  # decodes past 112, 128, ..., 192
    tokens = prompt + answer
    hashes = block_hashes(tokens, BS)
    mamba = cache.index.by_type[1]

    def cached() -> list[int]:
        return sorted(b for b in range(len(hashes)) if hashes[b] in mamba)

    for n in (48, 100):
        assert cache.allocate("a", n, prompt_tokens=len(prompt)) is not None
        cache.cache_blocks("a", hashes, n)
        cache.release_unneeded("a", n)
    # The chunks' checkpoints 32 and 96 (blocks 1, 5) and the first chunk's end 48 (block 2)
    # are cached; the running state (block 6) is complete only at 112, in decode.
    assert cached() == [1, 2, 5]
    for n in range(101, len(tokens)):
        assert cache.allocate("a", n) is not None
        cache.cache_blocks("a", hashes, n)
        cache.release_unneeded("a", n)
    # The first decode-time state (112) superseded the prompt's last state (96); of the
    # decode-time states only the newest complete one (192, block 11) is still cached.
    assert cached() == [1, 2, 11]
    cache.free("a")
    assert cached() == [1, 2, 11]
    turn_end = mamba[hashes[11]]
    assert turn_end.is_cached and turn_end.is_stale
    check_invariants(cache)
