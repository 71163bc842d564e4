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


def _specs(slots: int = K):
    """Full attention beside a Gated-DeltaNet-like state (no in-forward checkpoint export)."""
    return [
        LayerTypeSpec.uniform("full", "full", 1, 64),
        LayerTypeSpec.uniform(
            "mamba",
            "mamba",
            1,
            2048,
            block_tokens=BS,
            exports_checkpoints=False,
            speculative_blocks=slots,
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
