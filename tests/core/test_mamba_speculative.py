"""Speculative state slots (``LayerTypeSpec.speculative_blocks`` = K): a state type gets pages for
the running column and the K columns after it — exactly the columns an engine reads and writes
(vLLM: ``running .. running + K``) — lookahead tokens take no state, and a slot that a prefill
chunk skipped (the engine wrote at most a draft's state there) never reaches the prefix index.
"""

from __future__ import annotations

import pytest

from jenga_vllm.core import LayerTypeSpec, block_hashes, check_invariants
from tests.core.helpers import BS, make_cache

K = 2


def _specs(slots: int = K, exports: bool = False, drop: bool = False):
    """Full attention beside a Gated-DeltaNet-like state with ``slots`` speculative slots; by
    default without an in-forward checkpoint export (vLLM's GDN), ``exports``: with one, and
    ``drop``: under the EAGLE/MTP block drop."""
    return [
        LayerTypeSpec.uniform("full", "full", 1, 64),
        LayerTypeSpec.uniform(
            "mamba",
            "mamba",
            1,
            2048,
            block_tokens=BS,
            exports_checkpoints=exports,
            speculative_blocks=slots,
            hits_drop_last_block=drop,
        ),
    ]


def _state_columns(cache, rid: str) -> list[int]:
    table = cache.requests[rid].tables[1]
    return [i for i, page in enumerate(table) if page is not None]


@pytest.mark.parametrize("slots", [1, 2, 3])
def test_a_step_holds_the_running_column_and_k_slots_after_it(slots):
    cache = make_cache(_specs(slots), large_pages=64)
    # a 40-token prompt whose step also schedules one lookahead slot: running column 2
    assert cache.allocate("r", 41, lookahead_tokens=1) is not None
    assert _state_columns(cache, "r") == list(range(2, 3 + slots))
    # decode steps (1 token + K drafts + 1 lookahead) inside block 2: no new page
    for computed in range(40, 47 - slots):
        cache.release_unneeded("r", computed)
        new = cache.allocate("r", computed + 1 + slots + 1, lookahead_tokens=1)
        assert new is not None and not any(new)
    # the running column moves to 3: one new slot at the end, the old running one stays
    computed = 48
    cache.release_unneeded("r", computed)
    new = cache.allocate("r", computed + 1 + slots + 1, lookahead_tokens=1)
    assert len(new[1]) == 1
    assert _state_columns(cache, "r") == list(range(2, 4 + slots))
    assert cache.policies[1].most_pages_held == 2 + slots
    check_invariants(cache)


def test_a_slot_a_prefill_chunk_skipped_moves_on_and_is_never_offered_as_a_state():
    cache = make_cache(_specs(), large_pages=64)
    tokens = list(range(1, 200))
    hashes = block_hashes(tokens, BS)
    # chunk 1 ends at 48 (running column 2, slots 3 and 4); chunk 2 at 112 (running column 6)
    assert cache.allocate("r", 48) is not None
    cache.cache_blocks("r", hashes, 48)
    slots = [cache.requests["r"].tables[1][c] for c in (3, 4)]
    # the two slots move to the new columns (vLLM relocates them too): one new state page
    assert cache.pages_needed("r", 112) == [4, 1]
    assert cache.allocate("r", 112) is not None
    assert _state_columns(cache, "r") == [2, 6, 7, 8]
    assert set(slots) <= set(cache.requests["r"].tables[1][6:])
    cache.cache_blocks("r", hashes, 112)
    mamba = cache.index.by_type[1]
    written = [b for b in range(len(hashes)) if hashes[b] in mamba]
    assert written == [2, 6]  # the chunk ends; slots 3 and 4 held draft states at most
    cache.free("r")
    check_invariants(cache)
    # a later request sharing 100 tokens starts from the state at 48, never from slot 3 or 4
    hit = cache.find_longest_hit(hashes, 100)
    assert hit.num_tokens == 48


def test_lookahead_tokens_take_attention_pages_and_no_state():
    cache = make_cache(_specs(), large_pages=64)
    needs = cache.pages_needed("new", 48 + 16, lookahead_tokens=16)
    assert needs == [4, 1 + K]  # 64 tokens of attention; the state for 48 tokens: column 2
    assert cache.pages_needed("new", 64) == [4, 1 + K]  # column 3 then
    assert cache.allocate("new", 48 + 16, lookahead_tokens=16) is not None
    assert _state_columns(cache, "new") == [2, 3, 4]


def _exporting_specs(slots: int = 1, one_block_back: bool = True):
    """A state type that exports prefill checkpoints, under the EAGLE/MTP block drop by default."""
    return _specs(slots, exports=True, drop=one_block_back)


@pytest.mark.parametrize(
    ("tokens", "back", "columns"),
    [
        (100, False, (5,)),  # the state at 96: one token left to compute, block 5
        (96, False, (4,)),  # the state at 80 (a 96-token hit would leave nothing to compute)
        # under the drop: a repeat's hit ends at 96 - 16 = 80 (block 4); a continuation's (the
        # next turn after a one-block answer) at the prompt's last whole boundary, 96 (block 5)
        (100, True, (4, 5)),
        (96, True, (4,)),  # the state at 80 serves both
        (20, True, ()),  # no boundary a block before the last whole block: no checkpoint
    ],
)
def test_the_checkpoint_columns_are_their_positions_own(tokens, back, columns):
    policy = make_cache(_exporting_specs(1, back), large_pages=64).policies[1]
    assert policy.checkpoint_blocks(tokens) == columns
    running = policy.num_blocks(tokens) - 1
    assert list(policy.new_blocks(0, tokens)) == [*columns, running, running + 1]
    assert policy.checkpoint_blocks(tokens, checkpoint=False) == ()


def test_under_the_drop_a_dropped_hit_finds_the_checkpoint():
    cache = make_cache(_exporting_specs(), large_pages=64)
    tokens = list(range(1, 101))
    hashes = block_hashes(tokens, BS)
    assert cache.allocate("r", 100) is not None
    assert _state_columns(cache, "r") == [4, 5, 6, 7]  # checkpoints at 80 and 96, running, slot
    cache.cache_blocks("r", hashes, 100)
    cache.free("r")
    # a repeat: attention matches 96 tokens, the drop leaves 80, and the state at 80 is cached;
    # the next turn (the prompt, a 16-token answer, a new message: attention matches 112) ends
    # its hit at 96, also cached
    assert cache.find_longest_hit(hashes, 80).num_tokens == 80
    assert cache.find_longest_hit(hashes, 96).num_tokens == 96
    check_invariants(cache)


def test_a_skipped_slot_at_the_checkpoint_column_stays_and_is_written():
    cache = make_cache(_exporting_specs(slots=2), large_pages=64)
    tokens = list(range(1, 200))
    hashes = block_hashes(tokens, BS)
    # chunk 1 ends at 48: running column 2, slots 3 and 4; the last chunk ends at 84, whose
    # checkpoints under the drop are the states at 64 and 80: columns 3 and 4, both slots
    assert cache.allocate("r", 48, checkpoint=False) is not None
    slots = cache.requests["r"].tables[1][3:5]
    assert cache.pages_needed("r", 84) == [3, 3]  # state columns 5 (running), 6, 7 (slots)
    assert cache.allocate("r", 84) is not None
    assert cache.requests["r"].tables[1][3:5] == slots
    assert _state_columns(cache, "r") == [2, 3, 4, 5, 6, 7]
    cache.cache_blocks("r", hashes, 84)
    mamba = cache.index.by_type[1]
    assert [b for b in range(len(hashes)) if hashes[b] in mamba] == [2, 3, 4]
    check_invariants(cache)


@pytest.mark.parametrize("drop", [False, True])
def test_under_the_drop_the_state_a_block_before_the_newest_stays_cached(drop):
    """A turn decoded across blocks: the next turn's hit ends at the attention match, less a
    block under the drop — the state there must still be cached when the turn ends."""
    cache = make_cache(_exporting_specs(slots=1, one_block_back=drop), large_pages=64)
    tokens = list(range(1, 200))
    hashes = block_hashes(tokens, BS)
    assert cache.allocate("r", 40 + 1 + 1, lookahead_tokens=1, prompt_tokens=40) is not None
    cache.cache_blocks("r", hashes, 40)
    for computed in range(40, 101):  # one token a step (every draft rejected) up to 101
        cache.release_unneeded("r", computed)
        assert cache.allocate("r", computed + 1 + 1 + 1, lookahead_tokens=1) is not None
        cache.cache_blocks("r", hashes, computed + 1)
    cache.free("r")
    check_invariants(cache)
    mamba = cache.index.by_type[1]
    decode_time = [b for b in range(3, len(hashes)) if hashes[b] in mamba]
    # the newest complete state is after 96 tokens (block 5); under the drop also 80 (block 4)
    assert decode_time == ([4, 5] if drop else [5])
    attention_match = 96  # the next turn's attention types match the turn's 96 tokens
    expected = attention_match - BS if drop else attention_match
    assert cache.find_longest_hit(hashes, expected).num_tokens == expected
