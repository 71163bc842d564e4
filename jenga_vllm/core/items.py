"""The item cache: pages held by item-cache entries (vision embeddings), not by requests.

What it owns: ``ItemCache.items``, the held entries — one image's encoder output in the pages of
a ``vision_embedding`` layer type (policies/vision_embedding.py, docs/design.md §5). An item
outlives the requests that use it, so its pages belong to the item: ``hold`` takes or re-takes
them, ``release`` lets them go. Items have no tables, no decode headroom and no prefix hit.

The policy in plain words: an item's page i is named ``(item key, i)`` in the prefix index, so a
later request with the same image finds it without running the encoder; a released item's pages
stay CACHED under the same evictor as KV, all with one random eviction rank (an image is evicted
whole: suffix-first order means nothing inside one image). Pages that were never written (a
reservation given back, a failed item) leave the index at once.

Invariants: a held item's pages are USED, one reference each, all of its type; holding changes
nothing when memory cannot cover the item (the allocation is checked before any page moves).
"""

from __future__ import annotations

import random
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

from jenga_vllm.core.allocator import PageOwner, TwoLevelAllocator
from jenga_vllm.core.errors import JengaAllocationError
from jenga_vllm.core.pages import SmallPage
from jenga_vllm.core.policies import LayerPolicy
from jenga_vllm.core.prefix import PrefixIndex


@dataclass(slots=True, eq=False)
class ItemPages:
    """One held item-cache entry (an image's embeddings): its pages, in order."""

    key: Hashable
    type_idx: int
    pages: list[SmallPage]
    owner: PageOwner


class ItemCache:
    """Held item-cache entries over the shared allocator and prefix index."""

    def __init__(
        self,
        policies: list[LayerPolicy],
        allocator: TwoLevelAllocator,
        index: PrefixIndex,
        enable_caching: bool,
        item_rank: random.Random,
    ) -> None:
        self.policies = policies
        self.allocator = allocator
        self.index = index
        self.enable_caching = enable_caching
        # Shared with the cache's encoder (cross-attention) pages: one draw per item or input.
        self.item_rank = item_rank
        self.items: dict[Hashable, ItemPages] = {}

    def is_cached(self, key: Hashable, num_tokens: int, type_idx: int) -> bool:
        """Whether every page of item ``key`` is in the prefix index (held or CACHED)."""
        if not self.enable_caching:
            return key in self.items
        count = self.policies[type_idx].num_blocks(num_tokens)
        return all(self.index.get(type_idx, (key, i)) is not None for i in range(count))

    def hold(
        self,
        key: Hashable,
        num_tokens: int,
        type_idx: int,
        protect: Sequence[SmallPage | None] = (),
    ) -> list[SmallPage] | None:
        """Hold the pages of item ``key`` (see JengaCache.hold_item); None changes nothing."""
        if key in self.items:
            raise JengaAllocationError(f"item {key!r} is already held")
        pinned = [p for p in protect if p is not None and p.ref_count == 0]
        if not pinned:
            return self._hold(key, num_tokens, type_idx)
        stale = [p.is_stale for p in pinned]
        for page in pinned:
            self.allocator.touch(page)
            page.hits -= 1  # not a hit: only kept out of the evictor's reach
        try:
            return self._hold(key, num_tokens, type_idx)
        finally:
            self.allocator.release_in_order(
                [p for p, s in zip(pinned, stale, strict=True) if s], True
            )
            self.allocator.release_in_order(
                [p for p, s in zip(pinned, stale, strict=True) if not s], False
            )

    def _hold(self, key: Hashable, num_tokens: int, type_idx: int) -> list[SmallPage] | None:
        count = self.policies[type_idx].num_blocks(num_tokens)
        if self.enable_caching:
            found = [self.index.get(type_idx, (key, i)) for i in range(count)]
        else:
            found = [None] * count
        reused = [p for p in found if p is not None]
        needs = [0] * len(self.policies)
        needs[type_idx] = count - len(reused)
        slot_delta, large_delta = self.allocator.touch_effect(reused)
        budget = self.allocator.budget_for(needs, slot_delta, large_delta)
        if budget is None:
            return None
        for page in reused:
            self.allocator.touch(page)
        owner = PageOwner.new(len(self.policies))
        rank = self.item_rank.randrange(1 << 30)
        pages = []
        for i, page in enumerate(found):
            if page is None:
                page = self.allocator.allocate(owner, type_idx, budget)
                if self.enable_caching:
                    self.index.insert(page, (key, i))
            page.rank = rank
            pages.append(page)
        self.items[key] = ItemPages(key, type_idx, pages, owner)
        return pages

    def release(self, key: Hashable, keep: bool = True) -> None:
        """Let item ``key``'s pages go: CACHED under the evictor (``keep``), or EMPTY at once."""
        item = self.items.pop(key)
        if not keep:
            for page in item.pages:
                if page.block_hash is not None:
                    self.index.remove(page)
        self.allocator.release_in_order(item.pages, is_stale=False)
        self.allocator.forget_owner(item.owner)
