"""Page records: small pages (one layer type's unit of allocation) and large pages (LCM-sized).

A small page is in exactly one state:
    USED    ``ref_count > 0``: in the page table of ``ref_count`` running requests;
    CACHED  ``ref_count == 0`` and ``block_hash is not None``: holds reusable KV, evictable;
    EMPTY   ``ref_count == 0`` and no hash: a free slot of its large page.
A large page is FREE (level 0, no type), ACTIVE (carved for one type, ≥1 USED small page) or
EVICTABLE (carved, no USED small page, ≥1 CACHED one). FREE ⇔ no USED and no CACHED page.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum


class LargePageState(Enum):
    FREE = "free"
    ACTIVE = "active"
    EVICTABLE = "evictable"


@dataclass(slots=True, eq=False)
class SmallPage:
    """One small page. ``unit_id`` is its address (vLLM's block id); 0 is never a real page."""

    unit_id: int
    type_idx: int
    large: LargePage
    slot: int
    ref_count: int = 0
    block_hash: object | None = None  # prefix-cache key while CACHED/USED-and-cached
    rank: int = 0  # eviction tie-break: token position (or one random value per encoder item)
    is_stale: bool = False  # released while its request still ran (left the window / old state)
    hits: int = 0  # requests that reused it since it was computed (prefix hits)
    at_junction: bool = False  # a state written where a shared prefix ends (state_retention.py)
    stamp: int = 0  # when it last became CACHED in an ACTIVE large page (evictor's clock)
    # The engine adapter's record of this page (vLLM: its block object), made once: the
    # unit id and type never change while this object exists (a re-carved large page gets
    # new SmallPage objects).
    handle: object | None = None

    @property
    def is_cached(self) -> bool:
        return self.ref_count == 0 and self.block_hash is not None

    @property
    def is_empty(self) -> bool:
        return self.ref_count == 0 and self.block_hash is None


@dataclass(slots=True, eq=False)
class LargePage:
    """One LCM-sized large page; when carved it holds ``len(pages)`` small pages of one type."""

    index: int
    type_idx: int = -1  # -1 while FREE
    pages: list[SmallPage] = field(default_factory=list)
    empty_slots: list[int] = field(default_factory=list)  # stack of EMPTY slot indices
    num_used: int = 0
    num_cached: int = 0
    owner: object | None = None  # request that pulled it (request-aware placement)
    stamp: int = 0  # when it last became EVICTABLE (evictor's clock)
    # The small pages of every type this large page was ever carved for, made once per type
    # (a large page changes type all the time when types share one page size; all of a
    # FREE large page's small pages are EMPTY)
    carved: dict[int, list[SmallPage]] = field(default_factory=dict)

    @property
    def state(self) -> LargePageState:
        if self.num_used:
            return LargePageState.ACTIVE
        if self.num_cached:
            return LargePageState.EVICTABLE
        return LargePageState.FREE
