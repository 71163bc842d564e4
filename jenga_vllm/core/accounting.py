"""Accounting: where every byte of the pool is, per layer type, for metrics and benchmarks.

Categories (they add up to the pool):
    used      bytes of small pages some running request holds (incl. their rounding padding);
    cached    bytes of small pages holding reusable KV no request holds (evictable);
    empty     bytes of EMPTY small pages inside carved large pages (partially-used large pages);
    free      bytes of FREE large pages (level 0), excluding the null page;
    null      the null page: large page 0, or one small page of it when its other slots are
              lent (core/layout.py; they count as used / cached / empty like any others).
Internal fragmentation, reported separately: ``padding`` (rounding inside used/cached pages;
``used_padding`` the part inside used ones), ``partial`` (token slots of a request's last page
it does not fill), ``empty`` above — of which ``stranded`` sits in ACTIVE large pages (slots only
this type can fill while a request holds the large page).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # a type hint only
    from jenga_vllm.core.cache import JengaCache


@dataclass(slots=True)
class TypeUsage:
    name: str
    used_pages: int = 0
    cached_pages: int = 0
    empty_pages: int = 0
    used_bytes: int = 0
    cached_bytes: int = 0
    empty_bytes: int = 0
    stranded_bytes: int = 0
    padding_bytes: int = 0
    used_padding_bytes: int = 0
    partial_bytes: int = 0


@dataclass(slots=True)
class PoolUsage:
    pool_bytes: int
    large_page_bytes: int
    free_large_pages: int
    evictable_large_pages: int
    types: list[TypeUsage] = field(default_factory=list)
    null_bytes: int = 0

    @property
    def used_bytes(self) -> int:
        return sum(t.used_bytes for t in self.types)

    @property
    def cached_bytes(self) -> int:
        return sum(t.cached_bytes for t in self.types)

    @property
    def empty_bytes(self) -> int:
        return sum(t.empty_bytes for t in self.types)

    @property
    def free_bytes(self) -> int:
        return self.free_large_pages * self.large_page_bytes

    @property
    def usable_bytes(self) -> int:
        return self.pool_bytes - self.null_bytes

    @property
    def fragmentation_bytes(self) -> int:
        return self.empty_bytes + sum(t.padding_bytes + t.partial_bytes for t in self.types)

    @property
    def usage(self) -> float:
        """Fraction of usable bytes held by running requests (vLLM's notion: cached = free)."""
        return self.used_bytes / self.usable_bytes if self.usable_bytes else 0.0

    @property
    def utilization(self) -> float:
        """Fraction of usable bytes holding KV that running requests need (no waste)."""
        waste = sum(t.padding_bytes + t.partial_bytes for t in self.types)
        return (self.used_bytes - waste) / self.usable_bytes if self.usable_bytes else 0.0


def pool_usage(cache: JengaCache) -> PoolUsage:
    """A full census (O(carved pages + requests)); for metrics, not the per-step hot path."""
    plan = cache.plan
    alloc = cache.allocator
    usage = PoolUsage(
        pool_bytes=plan.pool_bytes,
        large_page_bytes=plan.large_page_bytes,
        free_large_pages=len(alloc.free_large),
        evictable_large_pages=cache.evictor.num_large(),
        types=[TypeUsage(t.spec.name) for t in plan.types],
        null_bytes=plan.null_bytes,
    )
    for large in alloc.large_pages if plan.lends_null else alloc.large_pages[1:]:
        if not (large.num_used or large.num_cached):
            continue
        tu = usage.types[large.type_idx]
        tl = plan.types[large.type_idx]
        num_used = large.num_used - alloc.pinned_in(large)
        tu.used_pages += num_used
        tu.cached_pages += large.num_cached
        tu.empty_pages += len(large.empty_slots)
        tu.padding_bytes += (num_used + large.num_cached) * tl.padding_bytes
        if large.num_used:
            tu.stranded_bytes += len(large.empty_slots) * tl.small_page_bytes
            tu.used_padding_bytes += num_used * tl.padding_bytes
    for tu, tl in zip(usage.types, plan.types, strict=True):
        tu.used_bytes = tu.used_pages * tl.small_page_bytes
        tu.cached_bytes = tu.cached_pages * tl.small_page_bytes
        tu.empty_bytes = tu.empty_pages * tl.small_page_bytes
    for t, partial in enumerate(_partial_bytes(cache)):
        usage.types[t].partial_bytes = partial
    return usage


def _partial_bytes(cache: JengaCache) -> list[int]:
    """Per type: token slots of running requests' last pages they do not fill (O(requests))."""
    plan = cache.plan
    partial = [0] * len(plan.types)
    for req in cache.requests.values():
        for t, (table, tl) in enumerate(zip(req.tables, plan.types, strict=True)):
            if (
                tl.is_token_indexed
                and table
                and table[-1] is not None
                and cache.policies[t].uses_token_prefix
            ):
                unfilled = len(table) * tl.block_tokens - req.num_tokens
                if unfilled > 0:
                    partial[t] += unfilled * tl.bytes_per_token
    return partial


def snapshot(cache: JengaCache) -> dict:
    """The pool's figures and the cache's cumulative counters as plain Python numbers (what
    metrics export): per layer type bytes used / cached / free in carved large pages, pages used
    and cached, fragmentation (padding + partly filled pages + stranded slots), pages evicted
    and released by the policy; pool-level large pages. The same figures as ``pool_usage``,
    from the allocator's running per-type counts: O(types + requests), not O(pool) (a census
    of a GPU-sized pool takes tens of milliseconds, and metrics ask every second)."""
    plan = cache.plan
    alloc = cache.allocator
    partial = _partial_bytes(cache)
    types = {}
    for t, tl in enumerate(plan.types):
        used, cached = alloc.used_pages[t], alloc.cached_pages[t]
        empty = alloc.carved_large[t] * tl.pages_per_large - used - cached - alloc.pinned_by_type[t]
        padding = (used + cached) * tl.padding_bytes
        stranded = alloc.num_empty_slots[t] * tl.small_page_bytes
        types[tl.spec.name] = {
            "kind": tl.spec.kind,
            "used_bytes": used * tl.small_page_bytes,
            "cached_bytes": cached * tl.small_page_bytes,
            "free_bytes": empty * tl.small_page_bytes,
            "used_pages": used,
            "cached_pages": cached,
            "padding_bytes": padding,
            "partial_bytes": partial[t],
            "stranded_bytes": stranded,
            "fragmentation_bytes": padding + partial[t] + stranded,
            "evicted_pages": alloc.counters.evicted_by_type[t],
            "released_pages": cache.released_pages[t],
        }
    return {
        "pool_bytes": plan.pool_bytes,
        "large_page_bytes": plan.large_page_bytes,
        "large_pages_total": plan.pool_bytes // plan.large_page_bytes,
        "null_bytes": plan.null_bytes,
        "large_pages_free": len(alloc.free_large),
        "large_pages_evictable": cache.evictor.num_large(),
        "types": types,
    }
