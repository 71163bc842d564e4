"""Feasibility: how many pages a request takes, and whether the pool can give them.

What it owns: the arithmetic behind ``JengaCache.pages_needed``, ``can_allocate``,
``bytes_taken``, ``next_token_needs`` / ``add_next_token_needs``, ``free_bytes``, and the
record of ``allocate``'s plan step (``AllocationPlan``, ``budget_for``; assembled by
``JengaCache._plan_allocation``). Every function here reads the policies, a request's tables and
the allocator's counts, and changes nothing.

The rule (docs/design.md §4, "Feasibility is exact"): with A_t = EMPTY + CACHED slots of type t
in ACTIVE large pages and L0 = FREE + EVICTABLE large pages, n_t new small pages of each type
fit iff Σ_t max(0, ⌈(n_t − A_t) / pages_per_large_t⌉) ≤ L0 (``TwoLevelAllocator.budget_for``,
which also hands out each type's minimum large pages so a greedy choice for one type never
starves another). CACHED pages a prefix hit takes leave A_t or L0 first (``touch_effect``).

How many pages a type needs is its policy's: ``new_blocks`` for the growth (a state type gets
only the columns the engine writes), ``max_live_blocks`` as the cap while tokens are in flight
(a window recycles its pages), ``first_needed_block`` for what a decode step releases.
"""

from __future__ import annotations

from dataclasses import dataclass

from jenga_vllm.core.allocator import LargePageBudget, TwoLevelAllocator
from jenga_vllm.core.hits import PrefixHit
from jenga_vllm.core.layout import LayoutPlan
from jenga_vllm.core.pages import SmallPage
from jenga_vllm.core.policies import LayerPolicy
from jenga_vllm.core.request_pages import RequestPages


def pages_needed(
    policies: list[LayerPolicy],
    req: RequestPages | None,
    num_tokens: int,
    hit: PrefixHit | None,
    encoder_tokens: int = 0,
    checkpoint: bool = True,
    lookahead_tokens: int = 0,
) -> list[int]:
    """New small pages per type a request (``req``; None: a new one starting from ``hit``)
    takes to hold ``num_tokens`` tokens, ``lookahead_tokens`` of them speculative lookahead
    slots (encoder types: a new request's unshared encoder input of ``encoder_tokens``)."""
    needs = []
    for t, policy in enumerate(policies):
        if not policy.uses_token_prefix:
            new_input = req is None and encoder_tokens
            needs.append(policy.num_blocks(encoder_tokens) if new_input else 0)
            continue
        have = len(req.tables[t]) if req else (len(hit.pages[t]) if hit else 0)
        grown = policy.growth_tokens(num_tokens, lookahead_tokens)
        new = len(policy.new_blocks(have, grown, checkpoint))
        if req is not None and policy.speculative_blocks:  # left-behind slots move, not grow
            running = policy.num_blocks(grown) - 1
            kept = policy.checkpoint_blocks(grown, checkpoint)
            new = max(0, new - len(req.skipped_slots(t, running, kept)))
        needs.append(new)
    return needs


def capped_at_live(
    policies: list[LayerPolicy], needs: list[int], num_tokens: int, in_flight_tokens: int | None
) -> list[int]:
    """``needs``, each token type capped at what its policy keeps live at once while
    ``in_flight_tokens`` are scheduled (``max_live_blocks``; None: no cap)."""
    if in_flight_tokens is None:
        return needs
    return [
        min(n, policy.max_live_blocks(num_tokens, in_flight_tokens))
        if policy.uses_token_prefix
        else n
        for n, policy in zip(needs, policies, strict=True)
    ]


def fits(allocator: TwoLevelAllocator, needs: list[int], hit: PrefixHit | None) -> bool:
    """Whether ``needs`` new small pages per type fit once ``hit``'s pages are taken."""
    slot_delta, large_delta = allocator.touch_effect(hit.reused_pages() if hit else [])
    return allocator.budget_for(needs, slot_delta, large_delta) is not None


def bytes_taken(plan: LayoutPlan, needs: list[int], hit: PrefixHit | None) -> int:
    """How much ``free_bytes`` drops when ``needs`` new pages are taken after ``hit``: every new
    small page, and every CACHED hit page touched, leaves the free pool at its small-page size
    (a page from a FREE or EVICTABLE large page turns the rest of it into free slots)."""
    sizes = [t.small_page_bytes for t in plan.types]
    taken = sum(n * size for n, size in zip(needs, sizes, strict=True))
    if hit:
        taken += sum(
            sizes[p.type_idx] for per in hit.pages for p in per if p is not None and not p.ref_count
        )
    return taken


def add_next_token_needs(
    needs: list[int], policies: list[LayerPolicy], prefix_types: list[int], req: RequestPages
) -> None:
    """Add to ``needs`` the small pages per type ``req`` takes, net of what its window releases,
    when it grows by one token."""
    grown = req.num_tokens + 1
    for t in prefix_types:
        policy = policies[t]
        table = req.tables[t]
        new = len(policy.new_blocks(len(table), grown))
        if new:
            freed = min(policy.first_needed_block(req.num_tokens), len(table))
            needs[t] += max(0, new - max(0, freed - req.released[t]))


def free_bytes(allocator: TwoLevelAllocator, plan: LayoutPlan) -> int:
    """FREE and EVICTABLE large pages plus EMPTY and CACHED slots of ACTIVE ones, in bytes."""
    free = allocator.claimable_large_pages() * plan.large_page_bytes
    return free + sum(
        allocator.slots_in_active(t) * layout.small_page_bytes
        for t, layout in enumerate(plan.types)
    )


@dataclass(slots=True)
class AllocationPlan:
    """What one ``allocate`` takes, decided before anything moves (its plan step).

    ``needs``: new small pages per type; ``hit_pages``: pages the request starts to share (its
    prefix hit's, a shared encoder input's); ``encoder_pages``: per encoder type, the input's
    pages in order, None where a new page goes; ``budget``: the large pages each type may claim
    (None: nothing to take)."""

    needs: list[int]
    hit_pages: list[SmallPage]
    encoder_pages: list[tuple[int, list[SmallPage | None]]]
    budget: LargePageBudget | None


def budget_for(
    allocator: TwoLevelAllocator, needs: list[int], hit_pages: list[SmallPage]
) -> LargePageBudget | None:
    """The large-page budget for ``needs`` once ``hit_pages`` are taken; None: it does not fit."""
    if hit_pages:
        slot_delta, large_delta = allocator.touch_effect(hit_pages)
        return allocator.budget_for(needs, slot_delta, large_delta)
    return allocator.budget_for(needs)
