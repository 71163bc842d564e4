"""JengaCache: the engine-agnostic KV-cache manager — the coordinator an engine adapter drives.

It owns the requests (``requests``: one ``RequestPages`` each) and ties the pieces together: the
layout plan (layout.py), one policy per layer type (policies/), the two-level allocator
(allocator.py), the prefix index (prefix.py) and the evictor (evictor.py). Each role it
coordinates lives in its own module:

    hits.py             the longest prefix every type can serve (find_longest_hit), PrefixHit
    feasibility.py      how many pages a request takes and whether they fit (the plan step)
    request_pages.py    a request's page tables and fast-path thresholds
    state_retention.py  which superseded states stay cached (Mamba / linear attention)
    items.py            item-cache entries (vision embeddings), held apart from requests

An engine adapter (the vLLM one lives in jenga_vllm/vllm/manager.py) drives it with these verbs
per scheduler step, mirroring what a scheduler asks:

    find_longest_hit(hashes, max_tokens)  → PrefixHit        (pure: changes nothing)
    can_allocate(request_id, num_tokens, hit) → bool         (pure: would it fit?)
    allocate(request_id, num_tokens, hit) → new pages | None (atomic: all types or nothing)
    cache_blocks(request_id, hashes, num_tokens)             (name full blocks for future hits)
    release_unneeded(request_id, num_computed_tokens)        (out-of-window pages → cache, stale)
    free(request_id)                                         (all pages → cache, suffix first)
    new_step()                                               (an engine step begins)

``allocate`` is a plan step and a commit step, as vLLM separates ``get_num_blocks_to_allocate``
from ``allocate_new_blocks``: the plan (``_plan_allocation``) computes each type's new pages, the
hit pages to take and the large-page budget without changing anything, and returns None when
memory cannot cover them; only then does the commit (``_commit_allocation``) take the pages. So a
failed allocation changes nothing.

Item-cache entries (vision embeddings) are held apart from requests: ``hold_item`` /
``release_item`` (items.py).

Same-step states (``guards_same_step_states``): a state page (Mamba) is named in the prefix index
when it is allocated, but an engine writes it only while the step runs, and a request starting
from it in the same step would read it before it is written (attention pages have no such race:
vLLM writes a layer's new K/V before any request of the batch reads them). So a hit on a state
indexed in the current step is refused (``allocate`` returns None): the request waits one step,
as vLLM's own MambaManager makes it.

Invariants: those of request_pages.py for every request in ``requests``; a page's reference
count is the number of tables and items naming it; ``check()`` verifies the whole pool
(invariants.py), after every state-changing operation but the O(1) fast paths when
JENGA_DEBUG_INVARIANTS=1.
"""

from __future__ import annotations

import random
from collections.abc import Hashable, Iterable, Sequence

from jenga_vllm.core.allocator import TwoLevelAllocator
from jenga_vllm.core.errors import JengaAllocationError, JengaConfigError
from jenga_vllm.core.evictor import EVICTORS, Evictor
from jenga_vllm.core.feasibility import (
    AllocationPlan,
    add_next_token_needs,
    budget_for,
    bytes_taken,
    capped_at_live,
    fits,
    free_bytes,
    pages_needed,
)
from jenga_vllm.core.hits import PrefixHit, PrefixLookup, empty_hit
from jenga_vllm.core.invariants import check_invariants
from jenga_vllm.core.items import ItemCache
from jenga_vllm.core.layout import LayoutPlan
from jenga_vllm.core.pages import SmallPage
from jenga_vllm.core.policies import LayerPolicy, make_policies
from jenga_vllm.core.prefix import PrefixIndex
from jenga_vllm.core.request_pages import RequestPages, deepest_block_first
from jenga_vllm.core.spec import DEBUG_INVARIANTS
from jenga_vllm.core.state_retention import (
    KeptState,
    drop_superseded,
    retain_state,
    superseded_at_block_end,
)

__all__ = ["JengaCache", "PrefixHit"]


class JengaCache:
    """The whole Jenga KV-cache manager, independent of any serving engine."""

    def __init__(
        self,
        plan: LayoutPlan,
        *,
        evictor: str | Evictor = "prefix_subset",
        enable_caching: bool = True,
        guards_same_step_states: bool = False,
        seed: int = 0,
    ) -> None:
        self.plan = plan
        num_types = len(plan.types)
        if isinstance(evictor, str):
            if evictor not in EVICTORS:
                raise JengaConfigError(
                    f"unknown evictor {evictor!r}; choose one of {', '.join(EVICTORS)}"
                )
            evictor = EVICTORS[evictor](num_types)
        self.evictor = evictor
        self.index = PrefixIndex(num_types)
        self.policies: list[LayerPolicy] = make_policies(plan)
        self.allocator = TwoLevelAllocator(
            plan,
            evictor,
            self.index,
            states_per_request=[p.most_pages_held or 1 for p in self.policies],
        )
        self.evictor.junction_hits = [p.junction_hits for p in self.policies]
        self.prefix_types = [i for i, p in enumerate(self.policies) if p.uses_token_prefix]
        self.encoder_types = [
            i for i, p in enumerate(self.policies) if not p.uses_token_prefix and not p.holds_items
        ]
        self.item_types = [i for i, p in enumerate(self.policies) if p.holds_items]
        self.state_types = [t for t in self.prefix_types if not self.policies[t].is_token_indexed]
        self.attention_types = [t for t in self.prefix_types if t not in self.state_types]
        # Attention types whose running requests release pages as they grow (their windows
        # slide): a released page's slot is recycled by the type's next page (allocator.py).
        self.window_types = [t for t in self.attention_types if self.policies[t].window_tokens]
        self.guards_same_step_states = guards_same_step_states and bool(self.state_types)
        self._states_this_step: set[SmallPage] = set()
        # With a list here, cache_blocks appends (type_idx, block, key) per page it indexes.
        self.stored_journal: list[tuple[int, int, Hashable]] | None = None
        self.released_pages = [0] * num_types  # pages released by the policy, per type
        # Per type: the prompt tokens whose out-of-window pages a new prefix releases fresh
        # (release_unneeded): one window / chunk; 0 for types without a window (full attention
        # keeps every page, states follow their own retention rule, state_retention.py).
        self._shared_horizon = [p.window_tokens for p in self.policies]
        self._max_horizon = max(self._shared_horizon, default=0)
        self.enable_caching = enable_caching
        # The evictor's release order (deepest token first, ties in type order) is the order of
        # block indices when every type is an attention type of one block size: free() builds it
        # from the tables instead of sorting their pages by rank.
        self._blockwise_release = (
            evictor.aligned_release
            and self.attention_types == list(range(num_types))
            and len({p.block_tokens for p in self.policies}) == 1
        )
        self.requests: dict[str, RequestPages] = {}
        self._no_new_pages: tuple[tuple[SmallPage, ...], ...] = ((),) * num_types
        # One random eviction rank per item or encoder input: its pages go whole.
        self._item_rank = random.Random(seed)
        self.lookup = PrefixLookup(
            self.policies, self.index, self.prefix_types, self.state_types, plan.block_size
        )
        self.item_cache = ItemCache(
            self.policies, self.allocator, self.index, enable_caching, self._item_rank
        )
        self.items = self.item_cache.items  # held item-cache entries

    # ---- lookups (hits.py) -------------------------------------------------------------------
    def find_longest_hit(self, hashes: Sequence[Hashable], max_tokens: int) -> PrefixHit:
        """Longest prefix (≤ max_tokens) every layer type can serve from cache; changes nothing.

        Each type answers "the longest valid hit ≤ L"; iterating over the types until no one
        shrinks L gives the longest length valid for all (Jenga §4.3, vLLM's fixed point).
        """
        if not self.enable_caching:
            return empty_hit(len(self.policies))
        return self.lookup.longest_hit(hashes, max_tokens)

    def starts_from_unwritten_state(self, hit: PrefixHit) -> bool:
        """Whether ``hit`` starts from a state indexed in this engine step, which the engine
        has not written yet (``allocate`` refuses such a hit until ``new_step``)."""
        states = self._states_this_step
        return bool(states) and any(p in states for per in hit.pages for p in per if p is not None)

    def hit_tokens_by_type(self, hashes: Sequence[Hashable], max_tokens: int) -> list[int]:
        """The longest prefix each layer type alone could serve from cache (0 for types not
        keyed by tokens): which type limits a hit. Changes nothing; for metrics.

        In a model with full-attention layers every other type's figure is capped at theirs:
        a longer hit is useless to such a model, and looking past it would cost a sliding
        window a backward search over the whole prompt per request (docs/design.md §5)."""
        if not self.enable_caching:
            return [0] * len(self.policies)
        return self.lookup.tokens_by_type(hashes, max_tokens)

    # ---- feasibility (feasibility.py): pure, nothing changes ------------------------------------
    def pages_needed(
        self,
        request_id: str,
        num_tokens: int,
        hit: PrefixHit | None = None,
        encoder_tokens: int = 0,
        checkpoint: bool = True,
        lookahead_tokens: int = 0,
    ) -> list[int]:
        """New small pages per type that allocate(request_id, num_tokens, hit) would take
        (encoder types: a new request's unshared encoder input of ``encoder_tokens``)."""
        req = self.requests.get(request_id)
        return pages_needed(
            self.policies, req, num_tokens, hit, encoder_tokens, checkpoint, lookahead_tokens
        )

    def can_allocate(
        self,
        request_id: str,
        num_tokens: int,
        hit: PrefixHit | None = None,
        encoder_tokens: int = 0,
        in_flight_tokens: int | None = None,
        extra_needs: Sequence[int] | None = None,
        lookahead_tokens: int = 0,
    ) -> bool:
        """Whether ``num_tokens`` tokens would fit for the request, each type holding at most
        what its policy keeps live at once (``max_live_blocks``; windows recycle their pages)
        while ``in_flight_tokens`` are scheduled, with ``extra_needs`` small pages per type
        left over for others; ``lookahead_tokens`` of ``num_tokens`` are speculative lookahead
        slots (no state is written for them); changes nothing."""
        needs = self.pages_needed(
            request_id, num_tokens, hit, encoder_tokens, lookahead_tokens=lookahead_tokens
        )
        needs = capped_at_live(self.policies, needs, num_tokens, in_flight_tokens)
        if extra_needs is not None:
            needs = [n + extra for n, extra in zip(needs, extra_needs, strict=True)]
        return fits(self.allocator, needs, hit)

    def bytes_taken(
        self,
        request_id: str,
        num_tokens: int,
        hit: PrefixHit | None = None,
        encoder_tokens: int = 0,
        in_flight_tokens: int | None = None,
        lookahead_tokens: int = 0,
    ) -> int:
        """How much ``free_bytes`` drops if the request gets ``num_tokens`` tokens (capped like
        ``can_allocate``): every new small page, and every CACHED hit page it touches, leaves
        the free pool at its small-page size (a page from a FREE or EVICTABLE large page turns
        the rest of it into free slots). vLLM's count: new blocks + evictable hit blocks."""
        needs = self.pages_needed(
            request_id, num_tokens, hit, encoder_tokens, lookahead_tokens=lookahead_tokens
        )
        needs = capped_at_live(self.policies, needs, num_tokens, in_flight_tokens)
        return bytes_taken(self.plan, needs, hit)

    def next_token_needs(self) -> list[int]:
        """Small pages per type the requests holding pages take, net of what they release, when
        each grows by one token (the next decode step). Only requests whose tables are full
        (``covered_tokens``) are looked at: O(requests) comparisons, a few page counts."""
        needs = [0] * len(self.policies)
        for req in self.requests.values():
            if req.num_tokens + 1 > req.covered_tokens:
                add_next_token_needs(needs, self.policies, self.prefix_types, req)
        return needs

    def add_next_token_needs(self, needs: list[int], request_id: str) -> None:
        """Add one request's share of ``next_token_needs`` to ``needs``."""
        add_next_token_needs(needs, self.policies, self.prefix_types, self.requests[request_id])

    def free_bytes(self) -> int:
        """Bytes a new allocation could take: FREE and EVICTABLE large pages plus EMPTY and
        CACHED slots of ACTIVE ones (cached pages count as free, as in vLLM)."""
        return free_bytes(self.allocator, self.plan)

    # ---- allocation: a plan step, then a commit step --------------------------------------------
    def allocate(
        self,
        request_id: str,
        num_tokens: int,
        hit: PrefixHit | None = None,
        *,
        encoder_key: Hashable | None = None,
        encoder_tokens: int = 0,
        checkpoint: bool = True,
        prompt_tokens: int | None = None,
        junction_tokens: int | None = None,
        lookahead_tokens: int = 0,
    ) -> Sequence[Sequence[SmallPage]] | None:
        """Make ``request_id`` hold pages for ``num_tokens`` tokens; returns new pages per type.

        A new request may bring a ``hit`` (from find_longest_hit, in the same step), an encoder
        input (``encoder_key`` names it for sharing; ``encoder_tokens`` its length) and its
        ``prompt_tokens`` (states written past the prompt are not kept when superseded; see
        state_retention.py). ``checkpoint``: whether the engine also writes the state at the
        last block boundary this growth crosses (state types; vLLM decides per step).
        ``junction_tokens``: where the new request's shared prefix ends (default: the hit's
        ``junction_tokens``); the state written there is kept like a junction.
        ``lookahead_tokens``: how many of ``num_tokens`` are speculative lookahead slots (token
        types get pages for them, state types do not: ``growth_tokens``). Returns None
        — changing nothing — when memory cannot cover it, or when the hit starts from a state
        written in this very step; the caller preempts or waits.
        """
        if num_tokens < 0:
            raise JengaAllocationError(f"num_tokens must be ≥ 0, got {num_tokens}")
        req = self.requests.get(request_id)
        is_new = req is None
        if not is_new and num_tokens <= req.covered_tokens and not (hit and hit.num_tokens):
            if num_tokens > req.num_tokens:
                req.num_tokens = num_tokens
            return self._no_new_pages
        if not is_new and hit is not None and hit.num_tokens:
            raise JengaAllocationError(
                f"request {request_id!r} already holds pages; a prefix hit applies only to a new "
                "request (free it first)"
            )
        if hit is None:
            hit = empty_hit(len(self.policies))
        if junction_tokens is None:
            junction_tokens = hit.junction_tokens
        if not is_new and num_tokens < req.num_tokens:
            num_tokens = req.num_tokens  # never shrink; vLLM asks with computed+new ≥ before

        plan = self._plan_allocation(
            req, num_tokens, hit, encoder_key, encoder_tokens, checkpoint, lookahead_tokens
        )
        if plan is None:
            return None
        if is_new:
            assert len(hit.pages) == len(self.policies), "a prefix hit names every layer type"
            req = RequestPages.admitted(
                request_id,
                num_tokens,
                hit,
                encoder_key,
                encoder_tokens,
                prompt_tokens,
                junction_tokens,
            )
            self.requests[request_id] = req
        return self._commit_allocation(
            req, num_tokens, plan, checkpoint, encoder_key, lookahead_tokens
        )

    def _plan_allocation(
        self,
        req: RequestPages | None,
        num_tokens: int,
        hit: PrefixHit,
        encoder_key: Hashable | None,
        encoder_tokens: int,
        checkpoint: bool,
        lookahead_tokens: int = 0,
    ) -> AllocationPlan | None:
        """The plan step: each type's new pages, the pages shared with cached ones (the hit, an
        encoder input seen before) and the large-page budget covering them. Changes nothing;
        None when memory cannot cover them or the hit starts from a state of this step."""
        needs = pages_needed(
            self.policies,
            req,
            num_tokens,
            hit,
            checkpoint=checkpoint,
            lookahead_tokens=lookahead_tokens,
        )
        hit_pages = hit.reused_pages()
        if self._states_this_step and not self._states_this_step.isdisjoint(hit_pages):
            return None  # the state is written by this step's forward pass: wait one step
        encoder_pages: list[tuple[int, list[SmallPage | None]]] = []
        if req is None and encoder_tokens and self.encoder_types:
            for t in self.encoder_types:
                shared = self._encoder_pages(t, encoder_key, encoder_tokens)
                encoder_pages.append((t, shared))
                hit_pages.extend(p for p in shared if p is not None)
                needs[t] = sum(1 for p in shared if p is None)
        budget = None
        if hit_pages or any(needs):
            budget = budget_for(self.allocator, needs, hit_pages)
            if budget is None:
                return None
        return AllocationPlan(needs, hit_pages, encoder_pages, budget)

    def _commit_allocation(
        self,
        req: RequestPages,
        num_tokens: int,
        plan: AllocationPlan,
        checkpoint: bool,
        encoder_key: Hashable | None,
        lookahead_tokens: int = 0,
    ) -> list[list[SmallPage]]:
        """The commit step: take the plan's shared pages and place its new ones in the tables.
        Cannot fail: the plan's budget covers every page."""
        budget = plan.budget
        if budget is None:  # nothing to take
            req.num_tokens = num_tokens
            req.refresh_thresholds(self.policies, self.prefix_types)
            return [[] for _ in self.policies]
        for page in plan.hit_pages:
            self.allocator.touch(page)
        new_pages: list[list[SmallPage]] = []
        for t, policy in enumerate(self.policies):
            table = req.tables[t]
            fresh: list[SmallPage] = []
            if policy.uses_token_prefix:
                # The state where this request's prefix stops being shared with a cached one:
                # the next request with that prefix starts there (Marconi's junction).
                junction_block = (
                    req.junction_tokens // policy.block_tokens - 1
                    if req.junction_tokens and not policy.is_token_indexed
                    else -1
                )
                grown = policy.growth_tokens(num_tokens, lookahead_tokens)
                blocks = policy.new_blocks(len(table), grown, checkpoint)
                moved: list[SmallPage] = []
                if policy.speculative_blocks:
                    running = policy.num_blocks(grown) - 1
                    kept = policy.checkpoint_blocks(grown, checkpoint)
                    for c in req.skipped_slots(t, running, kept):
                        moved.append(table[c])
                        table[c] = None
                    _track_speculative_slots(req, t, running, blocks)
                if blocks:  # state types skip intermediate states: those rows stay None
                    table.extend([None] * (blocks[-1] + 1 - len(table)))
                order = blocks
                if t in self.window_types:
                    # The pages that stay in the window after this step go first, those it
                    # releases right after (a long prefill's early blocks) last: the lasting
                    # ones fill the request's own large pages together, and its later steps
                    # recycle their slots (allocator.allocate).
                    first_lasting = policy.first_needed_block(num_tokens)
                    if blocks and first_lasting > blocks[0]:
                        order = [b for b in blocks if b >= first_lasting]
                        order += [b for b in blocks if b < first_lasting]
                for block in order:
                    page = moved.pop() if moved else self.allocator.allocate(req.owner, t, budget)
                    page.rank = policy.eviction_rank(block)
                    if block == junction_block:
                        page.at_junction = True
                    table[block] = page
                if moved:  # more slots left behind than the step needs: they hold nothing
                    self.allocator.release(moved, is_stale=True)
                fresh.extend(table[b] for b in blocks)
            new_pages.append(fresh)
        for t, shared in plan.encoder_pages:
            rank = self._item_rank.randrange(1 << 30)
            table = req.tables[t]
            for i, page in enumerate(shared):
                if page is None:
                    page = self.allocator.allocate(req.owner, t, budget)
                    page.rank = rank
                    new_pages[t].append(page)
                    if self.enable_caching and encoder_key is not None:
                        self.index.insert(page, (encoder_key, i))
                table.append(page)
        req.num_tokens = num_tokens
        req.refresh_thresholds(self.policies, self.prefix_types)
        if DEBUG_INVARIANTS:
            self.check()
        return new_pages

    def _encoder_pages(self, t: int, key: Hashable, tokens: int) -> list[SmallPage | None]:
        """A new request's encoder-input pages of type ``t``: the cached ones of the same input
        (keyed ``(key, i)``), None where a page is missing."""
        count = self.policies[t].num_blocks(tokens)
        if key is None or not self.enable_caching:
            return [None] * count
        return [self.index.get(t, (key, i)) for i in range(count)]

    def check(self) -> None:
        """Run the whole-pool invariant checker (raises InvariantError)."""
        check_invariants(self)

    # ---- item-cache entries (items.py) ----------------------------------------------------------
    def item_cached(self, key: Hashable, num_tokens: int, type_idx: int) -> bool:
        """Whether every page of item ``key`` is in the prefix index (held or CACHED)."""
        return self.item_cache.is_cached(key, num_tokens, type_idx)

    def hold_item(
        self,
        key: Hashable,
        num_tokens: int,
        type_idx: int,
        protect: Sequence[SmallPage | None] = (),
    ) -> list[SmallPage] | None:
        """Hold the pages of item ``key`` (``num_tokens`` embeddings): CACHED pages that still
        hold its page i are taken back, the rest allocated and named ``(key, i)``. Returns the
        pages in order, or None — changing nothing — when memory cannot cover them.
        ``protect``: CACHED pages that must survive the allocation (the prefix hit of the
        request the item belongs to, which it takes right after)."""
        pages = self.item_cache.hold(key, num_tokens, type_idx, protect)
        if DEBUG_INVARIANTS and pages is not None:
            self.check()
        return pages

    def release_item(self, key: Hashable, keep: bool = True) -> None:
        """Let item ``key``'s pages go: CACHED under the evictor (``keep``), or EMPTY at once
        (pages never written: a reservation given back, or a failed item)."""
        self.item_cache.release(key, keep)
        if DEBUG_INVARIANTS:
            self.check()

    # ---- per-step bookkeeping ----------------------------------------------------------------
    def cache_blocks(self, request_id: str, hashes: Sequence[Hashable], num_tokens: int) -> None:
        """Offer every block complete within ``num_tokens`` tokens to the prefix index."""
        if not self.enable_caching:
            return
        req = self.requests.get(request_id) or self._get(request_id)
        if num_tokens < req.next_full:
            return
        for t in self.prefix_types:
            policy = self.policies[t]
            table = req.tables[t]
            full = min(num_tokens // policy.block_tokens, len(table))
            upto = req.cached_upto[t]
            if full <= upto:
                continue
            limit = min(full, len(hashes) // policy.hash_ratio)
            journal = self.stored_journal
            unwritten = req.unwritten.get(t, ())
            for block in range(upto, limit):
                page = table[block]
                if block in unwritten:
                    continue
                if page is not None and page.block_hash is None and policy.is_cacheable(block):
                    key = hashes[policy.hash_index(block)]
                    if policy.is_token_indexed:
                        # A block this request computed again (its hit stopped short of it):
                        # the new copy replaces a cached one nobody holds, so the block ages
                        # from now, as vLLM's second cached copy would. docs/design.md §4.
                        cached = self.index.get(t, key)
                        if cached is not None and not cached.ref_count:
                            self.allocator.evict_cached(cached)
                    if self.index.insert(page, key):
                        if self.guards_same_step_states and not policy.is_token_indexed:
                            self._states_this_step.add(page)
                        if journal is not None:
                            journal.append((t, block, key))
            req.cached_upto[t] = max(upto, limit)
        req.refresh_thresholds(self.policies, self.prefix_types)

    def release_unneeded(self, request_id: str, num_computed_tokens: int) -> int:
        """Release pages a running request no longer needs (out of window, old states).

        They go to the cache stamped stale. Returns the number of pages released.
        """
        req = self.requests.get(request_id) or self._get(request_id)
        if num_computed_tokens < req.next_release:
            return 0
        to_release: list[SmallPage] = []
        # The pages of a prompt's first window that this request computed (no hit covered
        # them) may be what later requests share — a system prompt no longer than the window
        # leaves it, page by page, while its first request runs; a request whose hit stopped
        # short of it (part of it was evicted) computes the rest again — so they age like any
        # cached page; every other released page goes to the stale queue (evicted first).
        # docs/design.md §4.
        own_first_window = req.prompt_tokens is not None and req.hit_tokens < self._max_horizon
        if own_first_window:
            horizons = [min(h, req.prompt_tokens) for h in self._shared_horizon]
            own_from = req.hit_tokens
        fresh: list[SmallPage] = []
        superseded: list[KeptState] = []
        for t in self.prefix_types:
            policy = self.policies[t]
            table = req.tables[t]
            target = min(policy.first_needed_block(num_computed_tokens), len(table))
            stale_from = len(to_release)
            for block in range(req.released[t], target):
                page = table[block]
                if page is not None:
                    if page.block_hash is not None and not policy.is_token_indexed:
                        superseded += retain_state(policy, req, t, block, page)
                    if (
                        own_first_window
                        and (block + 1) * policy.block_tokens <= horizons[t]
                        and block * policy.block_tokens >= own_from
                    ):
                        fresh.append(page)
                    else:
                        to_release.append(page)
                    table[block] = None
            if target > req.released[t]:
                req.released[t] = target
                if len(to_release) > stale_from and t in self.window_types:
                    # its next page of the type recycles one of these slots (allocator.py)
                    req.owner.released_window_pages(t, to_release[stale_from:])
            if t in req.decode_states:
                superseded += superseded_at_block_end(policy, req, t, num_computed_tokens)
        for pages, is_stale in ((fresh, False), (to_release, True)):
            if pages:
                for page in pages:
                    self.released_pages[page.type_idx] += 1
                self.allocator.release(pages, is_stale=is_stale)
        if superseded:
            drop_superseded(self.allocator, superseded, self._states_this_step)
        req.refresh_thresholds(self.policies, self.prefix_types)
        if DEBUG_INVARIANTS:
            self.check()
        return len(fresh) + len(to_release)

    def free(self, request_id: str) -> None:
        """The request finished or was preempted: every page goes to the cache, suffix first."""
        req = self.requests.get(request_id)
        if req is None:
            raise JengaAllocationError(
                f"free of unknown request {request_id!r}: it was never allocated or was already "
                "freed (double free)"
            )
        del self.requests[request_id]
        tables = [table for table in req.tables if table]
        if len(tables) == 1:  # already in release order: deepest token first
            pages = [p for p in reversed(tables[0]) if p is not None]
            self.allocator.release_in_order(pages, is_stale=False)
        elif self._blockwise_release:
            self.allocator.release_in_order(
                deepest_block_first(req.tables, req.released), is_stale=False
            )
        else:
            pages = [p for table in tables for p in reversed(table) if p is not None]
            self.allocator.release(pages, is_stale=False)
        self.allocator.forget_owner(req.owner)
        if DEBUG_INVARIANTS:
            self.check()

    def new_step(self) -> None:
        """An engine step begins: states indexed in earlier steps have been written."""
        self._states_this_step.clear()

    def reset_prefix_cache(self) -> bool:
        """Drop every cached page. Refused (False) while any request or item holds pages."""
        if self.requests or self.items:
            return False
        while self.allocator.evict_one():
            pass
        return True

    def evict_one(self) -> bool:
        return self.allocator.evict_one()

    def evict_units(self, unit_ids: Iterable[int]) -> int:
        """Take the small pages that start at these unit ids (a KV connector's failed load wrote
        them) out of the prefix index: a cached page is evicted, a page in use loses its name
        and stays with its request (as vLLM's BlockPool.evict_blocks); unknown ids are left
        alone. Returns how many pages were named."""
        allocator, per_large = self.allocator, self.plan.units_per_large
        evicted = 0
        for unit in set(unit_ids):
            index = unit // per_large
            if not 0 < index < len(allocator.large_pages):
                continue  # the null page, or no page of this pool
            large = allocator.large_pages[index]
            if large.type_idx < 0:
                continue
            for page in large.pages:
                if page.unit_id != unit or page.block_hash is None:
                    continue
                if page.is_cached:
                    allocator.evict_cached(page)
                else:
                    allocator.index.remove(page)
                evicted += 1
        return evicted

    # ---- views -------------------------------------------------------------------------------
    def block_ids(self, request_id: str) -> tuple[list[int], ...]:
        """Unit ids per type (vLLM block ids); 0 for released blocks."""
        req = self._get(request_id)
        return tuple([p.unit_id if p is not None else 0 for p in table] for table in req.tables)

    def _get(self, request_id: str) -> RequestPages:
        req = self.requests.get(request_id)
        if req is None:
            raise JengaAllocationError(
                f"unknown request {request_id!r}: allocate() it first (or it was already freed)"
            )
        return req

    def evicted_pages(self, type_idx: int) -> int:
        """Cached small pages of the type evicted so far (whole large pages included)."""
        return self.allocator.counters.evicted_by_type[type_idx]

    def num_free_large_pages(self) -> int:
        return len(self.allocator.free_large)


def _track_speculative_slots(
    req: RequestPages, t: int, running: int, blocks: Sequence[int]
) -> None:
    """A state type with speculative slots: the step's running column is written (the engine
    starts the step's state there); the new columns past it are slots that hold draft states
    until a later step runs there. A slot the running column skips (a prefill chunk spanning
    several blocks) never holds a boundary state: its page moves on (``skipped_slots``)."""
    unwritten = req.unwritten.setdefault(t, set())
    unwritten.difference_update([c for c in unwritten if c <= running])
    unwritten.update(b for b in blocks if b > running)
