"""Two-level page allocator (Jenga §3): LCM-sized large pages carved into per-type small pages.

Level 0 is the free list of large pages; level 1 carves a large page into small pages of one layer
type. A large page returns to level 0 the moment none of its small pages is USED or CACHED, so
memory moves between layer types with no external fragmentation.

Request-aware placement: a large page belongs to the request that pulled it. When a type needs a
small page for a request, the allocator tries, in the paper's order:
    1. an EMPTY slot in an ACTIVE large page this request owns;
    2. a FREE large page from level 0 (the request becomes its owner);
    3. evict a whole EVICTABLE large page (LRU; see evictor.py) and carve it;
    4. an EMPTY slot in any ACTIVE large page of this type (an orphan is adopted);
    5. evict one CACHED small page of this type (LRU) and use it.
A request's own large pages come back whole when it finishes, but its last, partly filled one
strands up to ``pages_per_large - 1`` EMPTY slots for as long as it runs, usable by no other type:
on Llama-4 (a large page = 1 chunked-local page or 3 full-attention pages) that was a third of a
large page per running request, and chunked-local pages, which need whole large pages, preempted
where stock vLLM still had blocks (benchmarks/results/scheduler_replay.md). So a request claims a
fresh large page (steps 2–3) only while this allocation still has a whole large page's worth of
pages of the type to place; a smaller remainder — every decode step's page — tries step 4 first.
Types whose large page holds far more than one request uses (attention pages beside huge Mamba
states; REQUEST_AWARE_MAX_TOKENS; more states than one request holds) always try step 4 before
step 2. And step 5 comes before steps 2–3, for attention types, when it spares a large page
(docs/design.md §4; measured in benchmarks/results/scheduler_replay.md, eviction_quality.md and
simulate.md): for a stale page of
the type (when the new page is a remainder, or no large page is FREE), and, for a remainder page
when no large page is FREE, for a CACHED page of the type cached less recently than the EVICTABLE
large page step 3 would evict (the evictor's clock) — true LRU across the two granularities,
where the paper's order always gives up a whole large page first. Beside a state type whose
page fills a large page (a Mamba / linear-attention hybrid), a request-aware attention type
also takes step 5 first once its CACHED pages in ACTIVE large pages add up to a large page:
those slots are memory no state can use. A sliding window recycles
its own slots: the next page of a window that slid takes the slot of the page that just left it
(step 1b, before step 4), so a window keeps to the large pages it was placed in and a finished
or preempted request frees them whole. A type whose small page is a whole large page (gpt-oss,
one-type models) has no slots: steps 2–3 only, on a fast path. Steps 2–3 consume a large page.
So that a greedy choice for one type never starves another, an allocation first computes
each type's *minimum* large pages (what its slots in ACTIVE large pages cannot cover); a type may
take a large page beyond its minimum only from the spare ones (``LargePageBudget``, the
artifact's min/max quota).

Feasibility (exact): with A_t = EMPTY + CACHED slots of type t inside ACTIVE large pages and
L0 = FREE + EVICTABLE large pages, needing n_t pages of each type is feasible iff
``Σ_t max(0, ⌈(n_t − A_t) / pages_per_large_t⌉) ≤ L0``.

Invariants (checked by invariants.py): see pages.py for the page states. Additionally
``num_empty_slots[t]`` = EMPTY slots over ACTIVE type-t large pages; ``with_empty[t]`` = those
ACTIVE large pages with an EMPTY slot; the evictor's small queues hold exactly the CACHED pages of
ACTIVE large pages and its large queues exactly the EVICTABLE large pages; ``free_large`` holds
exactly the FREE large pages except the null page 0.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field

from jenga_vllm.core.evictor import Evictor
from jenga_vllm.core.layout import LayoutPlan
from jenga_vllm.core.pages import LargePage, SmallPage
from jenga_vllm.core.prefix import PrefixIndex

# Request-aware placement (steps 1-2 before 4) pays when one request fills about a large page of
# the type: at request end the large page goes back whole. When a large page holds far more than a
# request uses (attention pages beside Mamba states of 10-900 MB), each request would strand most
# of one, so such a type is packed instead. Token types pack above this many tokens per large
# page — calibrated with benchmarks/simulate.py on Jamba (2,128 tokens: request-aware wins) vs
# Qwen3-Next (3,216) and Nemotron-H (22k-50k): packing wins. State types pack when a large page
# holds more states than one request ever holds at once (``states_per_request``, from the
# policy); measured: the same results as a cap of 32 on all nine Mamba-hybrid simulator cases
# (Jamba, Nemotron-H 8B, Qwen3-Next × chat1k, multiturn, sysprompt at 40 GiB).
REQUEST_AWARE_MAX_TOKENS = 2560

# How many of its last released window pages a request remembers for recycling: a decode step
# releases one page and needs one; a prefill chunk releases more than the next steps need.
RECYCLE_KEEP = 8


@dataclass(slots=True, eq=False)
class PageOwner:
    """What the allocator tracks per request: large pages it owns and which have EMPTY slots."""

    owned: dict[LargePage, None]
    with_empty: list[dict[LargePage, None]]
    # Per type: window pages the request released stale, newest last; its next remainder page
    # of the type takes one's slot (``TwoLevelAllocator.allocate``). Entries go stale lazily.
    recycle: list[list[SmallPage]]

    @staticmethod
    def new(num_types: int) -> PageOwner:
        return PageOwner({}, [{} for _ in range(num_types)], [[] for _ in range(num_types)])

    def released_window_pages(self, type_idx: int, pages: list[SmallPage]) -> None:
        """Window pages of one type this request just released stale (out of its window)."""
        recycle = self.recycle[type_idx]
        recycle.extend(pages)
        if len(recycle) > RECYCLE_KEEP:
            del recycle[:-RECYCLE_KEEP]


@dataclass(slots=True)
class LargePageBudget:
    """How many large pages each type may still pull in this allocation (min quota + spare), and
    how many small pages of each type the allocation still has to place."""

    min_needed: list[int]
    spare: int
    to_place: list[int]

    def place_one(self, type_idx: int) -> int:
        """Pages of the type still to place, this one included; counts this one as placed."""
        left = self.to_place[type_idx]
        self.to_place[type_idx] = left - 1
        return left

    def may_claim(self, type_idx: int) -> bool:
        return self.min_needed[type_idx] > 0 or self.spare > 0

    def claimed(self, type_idx: int) -> None:
        if self.min_needed[type_idx] > 0:
            self.min_needed[type_idx] -= 1
        else:
            self.spare -= 1


@dataclass(slots=True)
class AllocatorCounters:
    """Cumulative event counts, for metrics: pages carved and evicted, and how often each of the
    paper's five allocation steps served a small page."""

    large_pages_carved: int = 0
    large_pages_evicted: int = 0
    small_pages_evicted: int = 0
    own_slot: int = 0  # step 1: an EMPTY slot in a large page the request owns
    fresh_large: int = 0  # step 2: a FREE large page
    evicted_large: int = 0  # step 3: an evicted EVICTABLE large page
    any_slot: int = 0  # step 4: an EMPTY slot in any ACTIVE large page of the type
    evicted_small: int = 0  # step 5: an evicted CACHED small page of the type
    evicted_by_type: list[int] = field(default_factory=list)  # cached small pages dropped


class TwoLevelAllocator:
    """Owns every page's state; knows nothing of requests' token positions (see cache.py)."""

    def __init__(
        self,
        plan: LayoutPlan,
        evictor: Evictor,
        index: PrefixIndex,
        states_per_request: list[int] | None = None,
    ) -> None:
        """``states_per_request[t]``: the most pages of state type t one request holds at once
        (its policy's ``max_live_blocks``); decides whether the type is packed."""
        self.plan = plan
        self.evictor = evictor
        self.index = index
        num_types = len(plan.types)
        # Whole large pages, then the tail page (if the plan has tail slots).
        self.large_pages = [
            LargePage(i) for i in range(plan.num_large_pages + (1 if plan.tail_slots else 0))
        ]
        # Stack; popping gives the lowest index first. Large page 0 is the null page.
        self.free_large: list[int] = list(range(plan.num_large_pages - 1, 0, -1))
        self.num_empty_slots = [0] * num_types
        # Per type, kept as pages change state (metrics read them; the invariant check
        # recounts them): USED and CACHED small pages, carved (ACTIVE or EVICTABLE) large pages.
        self.used_pages = [0] * num_types
        self.cached_pages = [0] * num_types
        self.carved_large = [0] * num_types
        # OrderedDicts: the oldest entry is taken and removed all the time (see evictor.py)
        self.with_empty: list[OrderedDict[LargePage, None]] = [
            OrderedDict() for _ in range(num_types)
        ]
        self.counters = AllocatorCounters(evicted_by_type=[0] * num_types)
        self._pages_per_large = [t.pages_per_large for t in plan.types]
        self._all_whole = all(n == 1 for n in self._pages_per_large)
        # Step 5 early is for attention pages only: a stale Mamba state may be the next turn's
        # start (policies/mamba.py retention), and states age by the evictor's order alone
        # (simulate.md: Jamba / Qwen3-Next multi-turn hit 0.89 -> 0.73 / 0.69 otherwise).
        self._token_indexed = [t.is_token_indexed for t in plan.types]
        # A type whose small page fills a large page gets its page objects now, as vLLM creates
        # its blocks at start-up (one per large page: no more objects than vLLM's blocks).
        units = plan.units_per_large
        for t, layout in enumerate(plan.types):
            if layout.pages_per_large == 1:
                for large in self.large_pages[1 : plan.num_large_pages]:
                    large.carved[t] = [SmallPage(large.index * units, t, large, 0)]
        # The lend type's partial large pages (the null page, the tail; layout.py): carved once
        # and for good, their missing slots held by pinned pages that count as USED, so they
        # never become EVICTABLE or FREE; their real slots are EMPTY slots like any other.
        self.pinned: set[SmallPage] = set()
        self.pinned_by_type = [0] * num_types
        for index, real in plan.lent_slots():
            self._pin(self.large_pages[index], plan.lend_type, real)
        states = states_per_request or [1] * num_types
        self._packed = [
            t.pages_per_large * t.block_tokens > REQUEST_AWARE_MAX_TOKENS
            if t.is_token_indexed
            else t.pages_per_large > states[i]
            for i, t in enumerate(plan.types)
        ]
        # Beside a state type whose page fills a large page (Mamba, linear attention: every
        # hybrid), a request-aware attention type keeps at most one large page's worth of
        # CACHED pages in its ACTIVE large pages (finished requests' pages beside running
        # ones'): past that it reuses the least recently cached of them (step 5) before taking
        # a large page, which a state could have used. A packed type's large pages hold many
        # requests' pages by design: no cap (docs/design.md §4; e2e_gdn_prefix_long_sysprompt.md).
        whole_states = any(t.pages_per_large == 1 and not t.is_token_indexed for t in plan.types)
        self._cached_in_active_cap = [
            t.pages_per_large
            if whole_states and t.is_token_indexed and t.pages_per_large > 1 and not packed
            else float("inf")
            for t, packed in zip(plan.types, self._packed, strict=True)
        ]

    def pinned_in(self, large: LargePage) -> int:
        """Pinned (missing) slots of a large page: counted in its ``num_used``, held by nobody."""
        if not self.pinned_by_type[large.type_idx]:
            return 0
        return sum(p in self.pinned for p in large.pages)

    def _pin(self, large: LargePage, type_idx: int, real: range) -> None:
        step = self.plan.types[type_idx].units_per_small
        base = large.index * self.plan.units_per_large
        ppl = self._pages_per_large[type_idx]
        large.type_idx = type_idx
        large.pages = large.carved[type_idx] = [
            SmallPage(base + j * step, type_idx, large, j) for j in range(ppl)
        ]
        for page in large.pages:
            if page.slot not in real:
                page.ref_count = 1
                self.pinned.add(page)
        large.num_used = ppl - len(real)
        self.pinned_by_type[type_idx] += large.num_used
        self.carved_large[type_idx] += 1
        large.empty_slots = list(reversed(real))
        self._slots_opened(large, len(real))

    # ---- capacity ------------------------------------------------------------------------
    def slots_in_active(self, type_idx: int) -> int:
        """A_t: EMPTY + CACHED small pages of this type inside ACTIVE large pages."""
        return self.num_empty_slots[type_idx] + self.evictor.num_small(type_idx)

    def claimable_large_pages(self) -> int:
        """L0: FREE + EVICTABLE large pages."""
        return len(self.free_large) + self.evictor.num_large()

    def budget_for(
        self, needs: list[int], slot_delta: list[int] | None = None, large_delta: int = 0
    ) -> LargePageBudget | None:
        """The large-page budget that covers ``needs`` small pages per type, or None if infeasible.

        ``slot_delta``/``large_delta`` adjust A_t / L0 for prefix hits about to be touched.
        """
        min_needed = []
        total = 0
        for t, need in enumerate(needs):
            short = need - self.slots_in_active(t) - (slot_delta[t] if slot_delta else 0)
            n = -(-short // self._pages_per_large[t]) if short > 0 else 0
            min_needed.append(n)
            total += n
        spare = self.claimable_large_pages() + large_delta - total
        if spare < 0:
            return None
        return LargePageBudget(min_needed, spare, list(needs))

    def touch_effect(self, pages: Iterable[SmallPage]) -> tuple[list[int], int]:
        """How touching these (hit) pages changes A_t and L0, without changing anything."""
        slot_delta = [0] * len(self.plan.types)
        large_delta = 0
        hits_in_evictable: dict[LargePage, int] = {}
        for page in pages:
            if page.ref_count:
                continue
            large = page.large
            if large.num_used:
                slot_delta[page.type_idx] -= 1
            else:
                hits_in_evictable[large] = hits_in_evictable.get(large, 0) + 1
        for large, hits in hits_in_evictable.items():
            large_delta -= 1
            slot_delta[large.type_idx] += len(large.empty_slots) + large.num_cached - hits
        return slot_delta, large_delta

    # ---- the allocation order ---------------------------------------------------------------
    def allocate(self, owner: PageOwner, type_idx: int, budget: LargePageBudget) -> SmallPage:
        """One small page of ``type_idx`` for ``owner``; the budget must come from budget_for."""
        if self._pages_per_large[type_idx] == 1:
            # A page the size of a large page (gpt-oss, one-type models): no slots to share
            # (A_t is always 0, so the budget covers it), no owner; steps 2-3 only.
            budget.place_one(type_idx)
            budget.claimed(type_idx)
            return self._take_whole(type_idx)
        counters = self.counters
        fills_a_large_page = budget.place_one(type_idx) >= self._pages_per_large[type_idx]
        own = owner.with_empty[type_idx]
        if own:
            counters.own_slot += 1
            return self._use_empty_slot(next(iter(own)))
        if owner.recycle[type_idx] and not fills_a_large_page:
            # A window that slid: its next page takes the slot of the page that just left it,
            # so the window keeps to the same slots — its own large pages when it was placed
            # whole (cache.allocate places a prefill's lasting pages first) — and a finished
            # or preempted request frees whole large pages, not slots stranded beside other
            # requests' windows (docs/design.md §4).
            page = self._recyclable(owner.recycle[type_idx], type_idx)
            if page is not None:
                counters.evicted_small += 1
                return self._reuse_cached(page)
        anywhere = self.with_empty[type_idx]
        if anywhere and (self._packed[type_idx] or not fills_a_large_page):
            # A fresh large page would stay partly EMPTY while the request runs: fill a hole
            # first (step 4 early), keeping the free large page for any type.
            counters.any_slot += 1
            return self._use_slot_in(owner, next(iter(anywhere)))
        evictor = self.evictor
        if self._token_indexed[type_idx] and (
            (not fills_a_large_page or not self.free_large)
            and (
                evictor.small_stale[type_idx]
                or len(evictor.small_fresh[type_idx]) >= self._cached_in_active_cap[type_idx]
            )
            or not (fills_a_large_page or self.free_large)
            and evictor.small_goes_before_large(type_idx)
        ):
            # Step 5 early. A stale CACHED page (out of a running request's window, or
            # superseded) is worth less than a large page: a FREE one serves every type, an
            # EVICTABLE one holds a finished request's prefix. With no FREE large page, a
            # remainder evicts by LRU across granularities: its type's least recently cached
            # small page if that is older than the large page step 3 would evict. CACHED slots
            # serve their type only; a large page serves every type. docs/design.md §4. Beside
            # whole-page states, also once the type's CACHED pages in ACTIVE large pages fill a
            # large page (``_cached_in_active_cap``).
            counters.evicted_small += 1
            return self._reuse_cached(evictor.pop_small(type_idx))
        if budget.may_claim(type_idx):
            large = self._claim_large(owner, type_idx)
            if large is not None:
                budget.claimed(type_idx)
                return self._use_empty_slot(large)
        if anywhere:
            counters.any_slot += 1
            return self._use_slot_in(owner, next(iter(anywhere)))
        page = self.evictor.pop_small(type_idx)
        assert page is not None, "allocate() called beyond the feasible budget"
        counters.evicted_small += 1
        return self._reuse_cached(page)

    def _recyclable(self, recycle: list[SmallPage], type_idx: int) -> SmallPage | None:
        """The newest page of ``recycle`` still CACHED and stale in an ACTIVE large page of the
        type, taken out of the evictor's queue; entries that are not any more are dropped."""
        while recycle:
            page = recycle.pop()
            large = page.large
            if (
                page.ref_count == 0
                and page.is_stale
                and page.block_hash is not None
                and large.num_used
                and large.type_idx == type_idx
                and large.pages[page.slot] is page
            ):
                self.evictor.remove_small(page)
                return page
        return None

    def _reuse_cached(self, page: SmallPage) -> SmallPage:
        """Evict a CACHED page of an ACTIVE large page (already out of the queues) and use it."""
        self._drop_cached_page(page)
        page.large.num_used += 1
        self.used_pages[page.type_idx] += 1
        _mark_used(page)
        return page

    def _claim_large(self, owner: PageOwner, type_idx: int) -> LargePage | None:
        if self.free_large:
            large = self.large_pages[self.free_large.pop()]
            self.counters.fresh_large += 1
        else:
            large = self.evictor.pop_large()
            if large is None:
                return None
            self.counters.evicted_large += 1
            self.counters.large_pages_evicted += 1
            self._drop_cached_pages(large)
            self.carved_large[large.type_idx] -= 1
        ppl = self._pages_per_large[type_idx]
        if large.type_idx != type_idx or not large.pages:
            large.type_idx = type_idx
            pages = large.carved.get(type_idx)
            if pages is None:
                step = self.plan.types[type_idx].units_per_small
                base = large.index * self.plan.units_per_large
                pages = [SmallPage(base + j * step, type_idx, large, j) for j in range(ppl)]
                large.carved[type_idx] = pages
            large.pages = pages
        self.carved_large[type_idx] += 1
        large.empty_slots = list(range(ppl - 1, -1, -1))
        if ppl > 1:  # a one-slot large page never holds another request's pages: no owner
            large.owner = owner
            owner.owned[large] = None
        self.counters.large_pages_carved += 1
        return large

    def _take_whole(self, type_idx: int) -> SmallPage:
        """``_claim_large`` + ``_use_empty_slot`` for a type with one small page per large page
        (its large pages never hold EMPTY slots or an owner)."""
        counters = self.counters
        if self.free_large:
            large = self.large_pages[self.free_large.pop()]
            counters.fresh_large += 1
        else:
            large = self.evictor.pop_large()
            assert large is not None, "allocate() called beyond the feasible budget"
            counters.evicted_large += 1
            counters.large_pages_evicted += 1
            old_type = large.type_idx
            if self._pages_per_large[old_type] > 1:  # carved for another type until now
                self._drop_cached_pages(large)
                large.empty_slots = []
            elif large.num_cached:
                cached = large.pages[0]
                self.index.remove(cached)
                cached.is_stale = False
                counters.evicted_by_type[old_type] += 1
                self.cached_pages[old_type] -= 1
                large.num_cached = 0
            self.carved_large[old_type] -= 1
        if large.type_idx != type_idx or not large.pages:
            large.type_idx = type_idx
            pages = large.carved.get(type_idx)
            if pages is None:
                base = large.index * self.plan.units_per_large
                pages = [SmallPage(base, type_idx, large, 0)]
                large.carved[type_idx] = pages
            large.pages = pages
        self.carved_large[type_idx] += 1
        counters.large_pages_carved += 1
        page = large.pages[0]
        _mark_used(page)
        large.num_used = 1
        self.used_pages[type_idx] += 1
        return page

    def _use_slot_in(self, owner: PageOwner, large: LargePage) -> SmallPage:
        """An EMPTY slot of an ACTIVE large page; an orphan large page is adopted first."""
        if large.owner is None:
            self._adopt(owner, large)
        return self._use_empty_slot(large)

    def _adopt(self, owner: PageOwner, large: LargePage) -> None:
        large.owner = owner
        owner.owned[large] = None
        if large.empty_slots:
            owner.with_empty[large.type_idx][large] = None

    # The EMPTY-slot pools of ACTIVE large pages: the per-type count, the per-type set of large
    # pages with an EMPTY slot, and its owner's copy of that set — always changed together.
    def _slots_opened(self, large: LargePage, count: int) -> None:
        """``count`` EMPTY slots of an ACTIVE large page join the pools."""
        t = large.type_idx
        self.num_empty_slots[t] += count
        if len(large.empty_slots) == count:  # it had none before
            self.with_empty[t][large] = None
            if large.owner is not None:
                large.owner.with_empty[t][large] = None

    def _slots_closed(self, large: LargePage, count: int, unlist: bool) -> None:
        """``count`` EMPTY slots leave the pools (used, or the large page left ACTIVE);
        ``unlist``: none of its slots is in the pools any more."""
        t = large.type_idx
        self.num_empty_slots[t] -= count
        if unlist:
            del self.with_empty[t][large]
            if large.owner is not None:
                large.owner.with_empty[t].pop(large, None)

    def _use_empty_slot(self, large: LargePage) -> SmallPage:
        page = large.pages[large.empty_slots.pop()]
        _mark_used(page)
        if large.num_used or large.num_cached:  # was ACTIVE: one EMPTY slot fewer
            self._slots_closed(large, 1, unlist=not large.empty_slots)
        elif large.empty_slots:  # freshly carved: it becomes ACTIVE with its remaining slots
            self._slots_opened(large, len(large.empty_slots))
        large.num_used += 1
        self.used_pages[large.type_idx] += 1
        return page

    # ---- touching cached pages (prefix hits) ------------------------------------------------
    def touch(self, page: SmallPage) -> None:
        """A running request starts using ``page`` (a prefix hit)."""
        page.hits += 1
        if page.ref_count:
            page.ref_count += 1
            return
        large = page.large
        if not large.num_used:  # EVICTABLE → ACTIVE: its pages rejoin the per-type pools
            self._activate(large)
        self.evictor.remove_small(page)
        large.num_cached -= 1
        large.num_used += 1
        self.cached_pages[page.type_idx] -= 1
        self.used_pages[page.type_idx] += 1
        page.ref_count = 1

    def _activate(self, large: LargePage) -> None:
        self.evictor.remove_large(large)
        cached = [p for p in large.pages if p.ref_count == 0 and p.block_hash is not None]
        cached.sort(key=_rank_descending)
        self.evictor.add_small_many(cached, large.stamp)
        if large.empty_slots:
            self._slots_opened(large, len(large.empty_slots))

    def discard(self, page: SmallPage) -> None:
        """Evict one CACHED page now (a state superseded by a newer one of the same request)."""
        self.touch(page)  # out of the evictor's queues, its large page ACTIVE
        self.counters.small_pages_evicted += 1
        self.counters.evicted_by_type[page.type_idx] += 1
        self.index.remove(page)
        self.release_in_order([page], is_stale=False)  # no hash: an EMPTY slot

    # ---- releasing ----------------------------------------------------------------------------
    def release(self, pages: list[SmallPage], is_stale: bool) -> None:
        """Running requests let ``pages`` go; the order is the evictor's (suffix first)."""
        self.release_in_order(
            self.evictor.release_order(pages) if len(pages) > 1 else pages, is_stale
        )

    def release_in_order(self, pages: list[SmallPage], is_stale: bool) -> None:
        """``release`` for pages already in the evictor's release order."""
        if self._all_whole and not is_stale:
            self._release_whole_pages(pages)
            return
        evictor = self.evictor
        used_pages, cached_pages = self.used_pages, self.cached_pages
        whole = self._pages_per_large
        for page in pages:
            page.ref_count -= 1
            if page.ref_count:
                continue
            large = page.large
            t = page.type_idx
            used_pages[t] -= 1
            if whole[t] == 1:  # its own large page: EVICTABLE or back to level 0, no slots
                large.num_used = 0
                if page.block_hash is not None:
                    page.is_stale = stale = is_stale and not evictor.is_junction(page)
                    large.num_cached = 1
                    cached_pages[t] += 1
                    evictor.add_large(large, stale)
                else:
                    self.carved_large[t] -= 1
                    self.free_large.append(large.index)
                continue
            large.num_used -= 1
            if page.block_hash is not None:
                page.is_stale = is_stale and not evictor.is_junction(page)
                large.num_cached += 1
                cached_pages[t] += 1
                if large.num_used:
                    evictor.add_small(page)
                else:
                    self._deactivate(large)
            else:
                large.empty_slots.append(page.slot)
                if large.num_used:
                    self._slots_opened(large, 1)
                else:
                    self._deactivate(large, slot_freed=True)

    def _release_whole_pages(self, pages: list[SmallPage]) -> None:
        """``release_in_order`` (not stale) when every type's small page fills its large page:
        each page takes its large page EVICTABLE (hashed) or back to level 0 with it, and no
        slot pool is involved. A finished request's whole table goes this way
        (``JengaCache.free``); the evictor's queue is filled here, in the given order."""
        used_pages, cached_pages, carved = self.used_pages, self.cached_pages, self.carved_large
        free_large = self.free_large
        queue, clock = self.evictor.fresh_large_queue()
        for page in pages:
            page.ref_count -= 1
            if page.ref_count:
                continue
            large = page.large
            t = page.type_idx
            used_pages[t] -= 1
            large.num_used = 0
            if page.block_hash is None:
                carved[t] -= 1
                free_large.append(large.index)
            else:
                page.is_stale = False
                large.num_cached = 1
                cached_pages[t] += 1
                clock += 1
                large.stamp = clock
                queue[large] = None
        self.evictor.clock = clock

    def _deactivate(self, large: LargePage, slot_freed: bool = False) -> None:
        """An ACTIVE large page lost its last USED page: EVICTABLE or back to level 0.

        The page whose release caused this is not yet in any pool: if it became EMPTY
        (``slot_freed``) its slot is not counted in ``num_empty_slots``; if it became CACHED it is
        not in the evictor's small queue.
        """
        counted = len(large.empty_slots) - slot_freed
        if counted:
            self._slots_closed(large, counted, unlist=True)
        if large.num_cached:
            if len(large.pages) == 1:
                is_stale = large.pages[0].is_stale
            else:
                cached = [p for p in large.pages if p.ref_count == 0 and p.block_hash is not None]
                for page in cached:
                    if self.evictor.contains_small(page):
                        self.evictor.remove_small(page)
                is_stale = all(p.is_stale for p in cached)
            self.evictor.add_large(large, is_stale)
        else:
            self._return_to_level0(large)

    def _return_to_level0(self, large: LargePage) -> None:
        self.carved_large[large.type_idx] -= 1
        if large.owner is not None:
            large.owner.owned.pop(large, None)
            large.owner = None
        large.empty_slots = []
        self.free_large.append(large.index)

    def _drop_cached_pages(self, large: LargePage) -> None:
        """Evict every CACHED page of an EVICTABLE large page (already out of the queues)."""
        for page in large.pages:
            if page.block_hash is not None:
                self.index.remove(page)
                page.is_stale = False
        self.counters.evicted_by_type[large.type_idx] += large.num_cached
        self.cached_pages[large.type_idx] -= large.num_cached
        large.num_cached = 0
        if large.owner is not None:
            large.owner.owned.pop(large, None)
            large.owner = None

    def forget_owner(self, owner: PageOwner) -> None:
        """The owner finished: its large pages become orphans, adoptable by the next request."""
        for large in owner.owned:
            large.owner = None
        owner.owned.clear()
        for d in owner.with_empty:
            d.clear()

    # ---- explicit eviction ----------------------------------------------------------------------
    def evict_one(self) -> bool:
        """Evict the evictor's first choice (a whole large page, else a small page); False if none."""
        large = self.evictor.pop_large()
        if large is not None:
            self.counters.large_pages_evicted += 1
            self._drop_cached_pages(large)
            self._return_to_level0(large)
            return True
        for t in range(len(self.plan.types)):
            page = self.evictor.pop_small(t)
            if page is not None:
                self._drop_cached_page(page)
                page.large.empty_slots.append(page.slot)
                self._slots_opened(page.large, 1)
                return True
        return False

    def evict_cached(self, page: SmallPage) -> None:
        """Evict one CACHED page now, wherever it is queued (its slot turns EMPTY; a large page
        left with nothing USED or CACHED goes back to level 0)."""
        large = page.large
        if large.num_used:  # ACTIVE: one small page out of its type's queue
            self.evictor.remove_small(page)
            self._drop_cached_page(page)
            large.empty_slots.append(page.slot)
            self._slots_opened(large, 1)
            return
        self._drop_cached_page(page)  # EVICTABLE: the large page stays queued while it caches
        page.is_stale = False
        if large.num_cached:
            large.empty_slots.append(page.slot)
            return
        self.evictor.remove_large(large)
        self._return_to_level0(large)

    def _drop_cached_page(self, page: SmallPage) -> None:
        """Evict one CACHED small page of an ACTIVE large page (already out of the queues)."""
        self.counters.small_pages_evicted += 1
        self.counters.evicted_by_type[page.type_idx] += 1
        self.index.remove(page)
        page.large.num_cached -= 1
        self.cached_pages[page.type_idx] -= 1


def _mark_used(page: SmallPage) -> None:
    """A page a request starts to hold as new KV: one reference, fresh, never hit."""
    page.ref_count = 1
    page.is_stale = False
    page.hits = 0
    page.at_junction = False


def _rank_descending(page: SmallPage) -> int:
    return -page.rank
