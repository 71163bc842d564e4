"""Evictors: which cached page goes when memory is needed.

The prefix-subset evictor (Jenga §5), in plain words
    LRU over pages with key (last access ascending, prefix rank descending). Pages become
    evictable when the last request using them lets them go; that moment is their last access.
    A request releases all its pages at once, ordered deepest token first *across all layer
    types*, so within one timestamp the suffix goes first and every type loses the same tokens
    (aligned eviction); all types share the timestamp (balanced eviction). Pages released while
    their request still runs (out of the sliding window / chunk, superseded Mamba states) are
    *stale*: they sit in a separate queue that is always evicted first, as if stamped long ago —
    unless the page is a junction: it already served ``junction_hits[type]`` prefix hits (one
    for attention types, two for state types; see policies/mamba.py). Such a page sits just
    before a shared-prefix junction (a system prompt's end, say) where the next request will
    need exactly it, so it ages normally. (Measured: without this exception stale-first eviction
    lost up to 9% hit rate to plain LRU on multi-turn chat; with it, it wins —
    benchmarks/results/eviction_quality.md.)
    Eviction is two-level: a whole evictable large page (all its small pages cached, none used;
    its age is that of its newest small page) is evicted before any single small page, so any
    layer type can reuse it.

Queues are ``OrderedDict``s (O(1) append, O(1) remove, O(1) pop-oldest); since pages are
appended at the moment they become evictable, insertion order is last-access order. Not plain
dicts: a dict's oldest key is found by scanning past every entry deleted from its front since its
last resize, so popping the oldest of 100k queued pages cost 33 µs instead of 0.2 µs
(docs/design.md §4).

``PerTypeLRUEvictor`` is the baseline: plain per-type LRU. Each type releases its own pages in its
own order and stale pages get no priority, which is what a per-type manager does.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Iterable
from operator import attrgetter

from jenga_vllm.core.pages import LargePage, SmallPage

_MISSING = object()


class Evictor(ABC):
    """Owns the evictable-page queues; the allocator tells it every state change."""

    protects_junctions = True  # junction pages (see is_junction) are never released as stale
    # release_order is deepest token first across types, ties in the given order
    aligned_release = False

    def __init__(self, num_types: int) -> None:
        self.num_types = num_types
        # per type: prefix hits that make a page a junction (JengaCache sets it from the policies)
        self.junction_hits = [1] * num_types
        self.small_fresh: list[OrderedDict[SmallPage, None]] = [
            OrderedDict() for _ in range(num_types)
        ]
        self.small_stale: list[OrderedDict[SmallPage, None]] = [
            OrderedDict() for _ in range(num_types)
        ]
        self.large_fresh: OrderedDict[LargePage, None] = OrderedDict()
        self.large_stale: OrderedDict[LargePage, None] = OrderedDict()
        self.clock = 0  # counts pages becoming evictable (LRU order across the queues)

    @abstractmethod
    def release_order(self, pages: list[SmallPage]) -> list[SmallPage]:
        """The order in which a batch of pages released together becomes evictable."""

    def uses_stale_queue(self) -> bool:
        return True

    def is_junction(self, page: SmallPage) -> bool:
        """A page enough requests started from to mark a shared-prefix junction, or a state
        written at a junction the engine split a prefill at: kept fresh."""
        return self.protects_junctions and (
            page.at_junction or page.hits >= self.junction_hits[page.type_idx]
        )

    # Small pages of ACTIVE large pages.
    def add_small(self, page: SmallPage) -> None:
        self.clock += 1
        page.stamp = self.clock
        stale = page.is_stale and self.uses_stale_queue()
        (self.small_stale if stale else self.small_fresh)[page.type_idx][page] = None

    def add_small_many(self, pages: Iterable[SmallPage], stamp: int) -> None:
        """Pages of a large page that turns ACTIVE again: they keep its ``stamp``."""
        for page in pages:
            page.stamp = stamp
            stale = page.is_stale and self.uses_stale_queue()
            (self.small_stale if stale else self.small_fresh)[page.type_idx][page] = None

    def small_goes_before_large(self, type_idx: int) -> bool:
        """Whether the next small page of the type to evict ranks before the next whole large
        page (stale before fresh, then least recently cached); False when it has none."""
        small = self.small_stale[type_idx] or self.small_fresh[type_idx]
        if not small:
            return False
        large = self.large_stale or self.large_fresh
        if not large:
            return True
        page = next(iter(small))
        large_is_stale = large is self.large_stale
        if page.is_stale != large_is_stale:
            return page.is_stale
        return page.stamp < next(iter(large)).stamp

    def remove_small(self, page: SmallPage) -> None:
        if self.small_stale[page.type_idx].pop(page, _MISSING) is _MISSING:
            del self.small_fresh[page.type_idx][page]

    def pop_small(self, type_idx: int) -> SmallPage | None:
        for queue in (self.small_stale[type_idx], self.small_fresh[type_idx]):
            if queue:
                return queue.popitem(last=False)[0]
        return None

    def num_small(self, type_idx: int) -> int:
        return len(self.small_stale[type_idx]) + len(self.small_fresh[type_idx])

    # Whole EVICTABLE large pages.
    def add_large(self, large: LargePage, is_stale: bool) -> None:
        self.clock += 1
        large.stamp = self.clock
        if is_stale and self.uses_stale_queue():
            self.large_stale[large] = None
        else:
            self.large_fresh[large] = None

    def fresh_large_queue(self) -> tuple[OrderedDict[LargePage, None], int]:
        """(the queue ``add_large(large, is_stale=False)`` appends to, the clock): for a caller
        that queues many large pages in one loop, stamping each with ``clock + 1`` onwards and
        storing the last stamp back in ``self.clock``."""
        return self.large_fresh, self.clock

    def remove_large(self, large: LargePage) -> None:
        if self.large_stale.pop(large, _MISSING) is _MISSING:
            del self.large_fresh[large]

    def pop_large(self) -> LargePage | None:
        for queue in (self.large_stale, self.large_fresh):
            if queue:
                return queue.popitem(last=False)[0]
        return None

    def num_large(self) -> int:
        return len(self.large_stale) + len(self.large_fresh)

    def contains_small(self, page: SmallPage) -> bool:
        return page in self.small_fresh[page.type_idx] or page in self.small_stale[page.type_idx]

    def contains_large(self, large: LargePage) -> bool:
        return large in self.large_fresh or large in self.large_stale


class PrefixSubsetEvictor(Evictor):
    """Jenga's evictor: aligned (deepest token first across types), stale first, large first."""

    aligned_release = True

    def release_order(self, pages: list[SmallPage]) -> list[SmallPage]:
        return sorted(pages, key=_RANK, reverse=True)  # stable: ties keep their given order


class StrictPrefixSubsetEvictor(PrefixSubsetEvictor):
    """The artifact's rule taken literally: every page that left a window is stale (ablation)."""

    protects_junctions = False


class PerTypeLRUEvictor(Evictor):
    """Baseline: per-type LRU, types released one after another, no stale priority."""

    def release_order(self, pages: list[SmallPage]) -> list[SmallPage]:
        return sorted(pages, key=_type_then_rank_descending)

    def uses_stale_queue(self) -> bool:
        return False


_RANK = attrgetter("rank")


def _type_then_rank_descending(page: SmallPage) -> tuple[int, int]:
    return (page.type_idx, -page.rank)


EVICTORS: dict[str, type[Evictor]] = {
    "prefix_subset": PrefixSubsetEvictor,
    "prefix_subset_strict": StrictPrefixSubsetEvictor,
    "per_type_lru": PerTypeLRUEvictor,
}
