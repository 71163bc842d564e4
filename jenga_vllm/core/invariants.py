"""check_invariants(cache): the whole-pool consistency check the stateful tests run every step.

Checks: every carved small page is exactly one of USED / CACHED / EMPTY and its large page's
counters agree; reference counts equal the number of page-table entries naming the page; no
small page appears twice in one table; the prefix index, the evictor's queues, the per-type
EMPTY-slot pools and the level-0 free list hold exactly the pages their state says; all bytes add
up to the pool. Costs O(pool); tests call it, and JengaCache runs it after every operation when
JENGA_DEBUG_INVARIANTS=1 (spec.DEBUG_INVARIANTS).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from jenga_vllm.core.pages import LargePageState

if TYPE_CHECKING:  # a type hint only: the cache calls this module
    from jenga_vllm.core.cache import JengaCache

__all__ = ["InvariantError", "check_invariants"]


class InvariantError(AssertionError):
    pass


def _check(cond: bool, message: str) -> None:
    if not cond:
        raise InvariantError(message)


def check_invariants(cache: JengaCache) -> None:
    alloc = cache.allocator
    evictor = cache.evictor
    plan = cache.plan
    num_types = len(plan.types)

    refs: dict[int, int] = {}
    pages_by_id = {}
    for item in cache.items.values():
        for page in item.pages:
            _check(page.type_idx == item.type_idx, f"item {item.key!r} holds a foreign page")
            _check(id(page) not in refs, f"item {item.key!r} holds page {page.unit_id} twice")
            refs[id(page)] = 1
            pages_by_id[id(page)] = page
    for req in cache.requests.values():
        for t, table in enumerate(req.tables):
            seen = set()
            for page in table:
                if page is None:
                    continue
                _check(
                    page.type_idx == t,
                    f"{req.request_id}: type {t} table holds a type {page.type_idx} page",
                )
                _check(
                    id(page) not in seen,
                    f"{req.request_id}: page {page.unit_id} twice in one table",
                )
                seen.add(id(page))
                refs[id(page)] = refs.get(id(page), 0) + 1
                pages_by_id[id(page)] = page
            for block in range(min(req.released[t], len(table))):
                _check(
                    table[block] is None,
                    f"{req.request_id}: released block {block} still holds a page",
                )

    free_set = set(alloc.free_large)
    _check(len(free_set) == len(alloc.free_large), "a large page is twice in the free list")
    _check(0 not in free_set, "the null large page 0 is in the free list")
    empty_slots = [0] * num_types
    with_empty: list[set] = [set() for _ in range(num_types)]
    small_queued = 0
    large_queued = 0
    seen_units: set[int] = set()
    used_by_type = [0] * num_types
    cached_by_type = [0] * num_types
    carved_by_type = [0] * num_types
    large_pages = alloc.large_pages if plan.lends_null else alloc.large_pages[1:]
    for large in large_pages:
        state = large.state
        for t, pages in large.carved.items():  # kept page lists of other types: all EMPTY
            if pages is large.pages and state is not LargePageState.FREE:
                continue
            _check(
                all(p.ref_count == 0 and p.block_hash is None for p in pages),
                f"large page {large.index}: a kept page list of type {t} holds a non-EMPTY page",
            )
        if state is LargePageState.FREE:
            _check(large.index in free_set, f"FREE large page {large.index} not in the free list")
            _check(large.owner is None, f"FREE large page {large.index} still has an owner")
            _check(
                not evictor.contains_large(large), f"FREE large page {large.index} in the evictor"
            )
            continue
        _check(
            large.index not in free_set, f"{state.value} large page {large.index} in the free list"
        )
        tl = plan.types[large.type_idx]
        _check(
            len(large.pages) == tl.pages_per_large,
            f"large page {large.index} has a wrong slot count",
        )
        used = cached = 0
        empty = set(large.empty_slots)
        _check(
            len(empty) == len(large.empty_slots),
            f"large page {large.index}: slot twice in empty stack",
        )
        for page in large.pages:
            _check(
                page.unit_id not in seen_units, f"unit id {page.unit_id} belongs to two small pages"
            )
            seen_units.add(page.unit_id)
            _check(page.large is large and page.type_idx == large.type_idx, "page/large mismatch")
            expected_id = plan.unit_id(large.type_idx, large.index, page.slot)
            _check(
                page.unit_id == expected_id, f"page at slot {page.slot} has unit id {page.unit_id}"
            )
            pinned = page in alloc.pinned  # a missing slot of a partial large page
            owners = refs.get(id(page), 0) + pinned
            _check(
                page.ref_count == owners,
                f"page {page.unit_id}: ref_count {page.ref_count} but {owners} owners",
            )
            if page.block_hash is not None:
                _check(
                    cache.index.get(page.type_idx, page.block_hash) is page,
                    f"page {page.unit_id} has a hash the index does not map to it",
                )
            if page.ref_count:
                used += 1
                _check(page.slot not in empty, f"USED page {page.unit_id} in the empty stack")
                _check(not evictor.contains_small(page), f"USED page {page.unit_id} in the evictor")
            elif page.block_hash is not None:
                cached += 1
                _check(page.slot not in empty, f"CACHED page {page.unit_id} in the empty stack")
                in_small = evictor.contains_small(page)
                if state is LargePageState.ACTIVE:
                    _check(
                        in_small,
                        f"CACHED page {page.unit_id} of an ACTIVE large page not evictable",
                    )
                    small_queued += 1
                else:
                    _check(
                        not in_small,
                        f"CACHED page {page.unit_id} of an EVICTABLE large page in a small queue",
                    )
            else:
                _check(
                    page.slot in empty, f"EMPTY page {page.unit_id} missing from the empty stack"
                )
        _check(
            used == large.num_used and cached == large.num_cached,
            f"large page {large.index}: counters {large.num_used}/{large.num_cached} != {used}/{cached}",
        )
        used_by_type[large.type_idx] += used - alloc.pinned_in(large)
        cached_by_type[large.type_idx] += cached
        carved_by_type[large.type_idx] += 1
        if state is LargePageState.ACTIVE:
            empty_slots[large.type_idx] += len(empty)
            if empty:
                with_empty[large.type_idx].add(large)
            _check(
                not evictor.contains_large(large),
                f"ACTIVE large page {large.index} in the large queue",
            )
        else:
            _check(
                evictor.contains_large(large),
                f"EVICTABLE large page {large.index} not in the large queue",
            )
            large_queued += 1
        if large.owner is not None:
            _check(large in large.owner.owned, f"large page {large.index}: owner does not list it")
            for t in range(num_types):
                listed = large in large.owner.with_empty[t]
                should = state is LargePageState.ACTIVE and t == large.type_idx and bool(empty)
                _check(listed == should, f"large page {large.index}: owner's empty-slot list wrong")

    for t in range(num_types):
        _check(
            empty_slots[t] == alloc.num_empty_slots[t],
            f"type {t}: {alloc.num_empty_slots[t]} empty slots counted, {empty_slots[t]} found",
        )
        _check(set(alloc.with_empty[t]) == with_empty[t], f"type {t}: empty-slot pool mismatch")
        _check(
            sum(p.type_idx == t for p in alloc.pinned) == alloc.pinned_by_type[t],
            f"type {t}: pinned pages miscounted",
        )
        _check(
            (alloc.used_pages[t], alloc.cached_pages[t], alloc.carved_large[t])
            == (used_by_type[t], cached_by_type[t], carved_by_type[t]),
            f"type {t}: used/cached/carved counted {alloc.used_pages[t]}/{alloc.cached_pages[t]}/"
            f"{alloc.carved_large[t]}, found {used_by_type[t]}/{cached_by_type[t]}/"
            f"{carved_by_type[t]}",
        )
    _check(
        sum(evictor.num_small(t) for t in range(num_types)) == small_queued,
        "the evictor's small queues hold pages that are not CACHED in ACTIVE large pages",
    )
    _check(
        evictor.num_large() == large_queued, "the evictor's large queue holds non-EVICTABLE pages"
    )
    _check(
        len(cache.index)
        == sum(
            1
            for large in large_pages
            if large.state is not LargePageState.FREE
            for p in large.pages
            if p.block_hash is not None
        ),
        "the prefix index names pages not in the pool",
    )
    for req in cache.requests.values():
        for large in req.owner.owned:
            _check(large.owner is req.owner, f"{req.request_id} lists a large page it does not own")

    from jenga_vllm.core.accounting import pool_usage

    usage = pool_usage(cache)
    carved_bytes = (plan.usable_large_pages - usage.free_large_pages) * plan.large_page_bytes
    carved_bytes += plan.usable_bytes - plan.usable_large_pages * plan.large_page_bytes
    _check(
        usage.used_bytes + usage.cached_bytes + usage.empty_bytes == carved_bytes,
        "used + cached + empty bytes do not fill the carved large pages and the lent slots",
    )
    _check(
        usage.free_bytes + carved_bytes + plan.null_bytes == plan.pool_bytes,
        "free + carved + null bytes do not add up to the pool",
    )
