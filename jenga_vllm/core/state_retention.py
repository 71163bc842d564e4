"""State retention: which states a running request lets go stay cached (Mamba, linear attention).

What it owns: the bookkeeping behind the retention rule of policies/mamba.py, run by
``JengaCache.release_unneeded`` for state types (``not policy.is_token_indexed``): each request's
newest kept decode-time states and newest released prefill-time state (``RequestPages.
decode_states`` / ``prompt_state``, per state type), and dropping the states they supersede.

The policy in plain words (docs/design.md §4, "Mamba retention"): a state is a whole-model-depth
snapshot, and caching one every block of every request would fill the cache with states nobody
starts from. States written while the prompt was prefilled (``policy.keeps_released``) stay
cached when superseded, stale; of the decode-time states only the request's newest complete one
stays (``policy.keeps_newest_decode_state``) — it supersedes the previous one and the last state
the prompt's prefill left — or, when hits drop their last block (EAGLE/MTP), its two newest: a
later hit ends a block before the newest (``policy.decode_states_kept``). A superseded state is dropped at the end of each block, before the
next block's page is allocated, so crossing a block in decode never takes a page more than it
frees. A junction state (``SmallPage.at_junction``) is never the prompt's remembered last state.

Invariants: a dropped state is one this request remembered, still CACHED under the same hash
(not evicted and reused meanwhile) and never started from by another request (``hits == 0``).
"""

from __future__ import annotations

from collections.abc import Hashable

from jenga_vllm.core.allocator import TwoLevelAllocator
from jenga_vllm.core.pages import SmallPage
from jenga_vllm.core.policies import LayerPolicy
from jenga_vllm.core.request_pages import RequestPages

# A state and the hash it was cached under when remembered: a page evicted and reused since
# carries another hash (or none) and is left alone.
KeptState = tuple[SmallPage, Hashable]


def retain_state(
    policy: LayerPolicy, req: RequestPages, t: int, block: int, page: SmallPage
) -> list[KeptState]:
    """A running request lets one of its cached states of type ``t`` go: a prefill-time state
    stays cached (stale), and the newest one is remembered; a decode-time state stays cached
    only while it is one of the request's ``policy.decode_states_kept`` newest. Returns the
    states to drop now."""
    if policy.keeps_released(block, req.prompt_tokens):
        if not page.at_junction:
            req.prompt_state[t] = (page, page.block_hash)
        return []
    req.decode_states.setdefault(t, []).append((page, page.block_hash))
    return _oldest_beyond(req, t, policy.decode_states_kept)


def superseded_at_block_end(
    policy: LayerPolicy, req: RequestPages, t: int, num_computed_tokens: int
) -> list[KeptState]:
    """The kept states of type ``t`` to drop now: at a block's end the running state is complete
    and will be the newest, so the one it pushes out goes before the next step allocates its
    successor (crossing a block in decode never needs a page more than it frees). The caller
    checks ``t in req.decode_states`` first."""
    if num_computed_tokens % policy.block_tokens:
        return []
    running = num_computed_tokens // policy.block_tokens - 1
    table = req.tables[t]
    if running < len(table) and table[running] is not None:
        return _oldest_beyond(req, t, policy.decode_states_kept - 1)
    return []


def _oldest_beyond(req: RequestPages, t: int, keep: int) -> list[KeptState]:
    """Forget the request's oldest remembered states of type ``t`` — the prompt's last one
    first, then decode-time ones — until at most ``keep`` remain; returns them."""
    kept = req.decode_states.get(t, [])
    excess = len(kept) + (t in req.prompt_state) - max(keep, 0)
    dropped: list[KeptState] = []
    if excess > 0 and t in req.prompt_state:
        dropped.append(req.prompt_state.pop(t))
        excess -= 1
    if excess > 0:
        dropped += kept[:excess]
        del kept[:excess]
    if not kept:
        req.decode_states.pop(t, None)
    return dropped


def drop_superseded(
    allocator: TwoLevelAllocator, superseded: list[KeptState], states_this_step: set[SmallPage]
) -> None:
    """Evict the superseded states still cached as they were and never started from."""
    for page, key in superseded:
        # Not evicted (and reused) meanwhile, and no other request started from it.
        if page.is_cached and page.block_hash == key and not page.hits:
            states_this_step.discard(page)
            allocator.discard(page)
