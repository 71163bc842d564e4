"""vLLM's view of jenga's pages, scheduler side: the block objects the scheduler reads
(``PageBlock``: a small page under its unit id; ``NULL_BLOCK``) and the parts of vLLM's
KVCacheCoordinator and BlockPool that the scheduler and EngineCore reach into
(``CoordinatorFacade``, ``PoolFacade``), each answered by the ``JengaKVCacheManager``."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from jenga_vllm.core.pages import SmallPage

if TYPE_CHECKING:
    from jenga_vllm.vllm.manager import JengaKVCacheManager


class PageBlock:
    """vLLM's view of one small page: the attributes the scheduler reads from a KVCacheBlock."""

    __slots__ = ("block_id", "page", "block_size")

    def __init__(self, page: SmallPage | None, block_size: int) -> None:
        self.page = page
        self.block_id = page.unit_id if page is not None else 0
        self.block_size = block_size

    @property
    def is_null(self) -> bool:
        return self.page is None

    @property
    def ref_cnt(self) -> int:
        return self.page.ref_count if self.page is not None else 0

    @property
    def block_hash(self) -> Any:
        return self.page.block_hash if self.page is not None else None

    @property
    def block_hash_num_tokens(self) -> int | None:
        return None  # full blocks only: vLLM reads None as "the whole block"

    def __repr__(self) -> str:
        return f"PageBlock(id={self.block_id})"


NULL_BLOCK = PageBlock(None, 0)


def new_block(page: SmallPage, block_size: int) -> PageBlock:
    """The one PageBlock of ``page`` (kept on the page: the scheduler asks for a request's
    whole table at each new request and after each allocation)."""
    block = page.handle = PageBlock(page, block_size)
    return block


@dataclass(frozen=True)
class PendingFree:
    """Stands for a request's pages between pop_blocks_for_free and block_pool.free_blocks."""

    request_id: str


@dataclass
class TypeManagerView:
    """What vLLM reads from a single-type manager: its block size, spec and group id."""

    block_size: int
    kv_cache_spec: Any
    kv_cache_group_id: int
    retains_longer_hit: bool = False


class CoordinatorFacade:
    """The part of vLLM's KVCacheCoordinator the scheduler and EngineCore reach into."""

    enable_partial_hash_hits = False
    eagle_group_ids: tuple[int, ...] = ()
    num_reprefillable_tokens = 0

    def __init__(self, manager: JengaKVCacheManager, views: list[TypeManagerView]) -> None:
        self._manager = manager
        self.single_type_managers = views
        self.block_pool = manager.block_pool

    def get_num_blocks_to_allocate(self, request_id: str, num_tokens: int, **_: Any) -> int:
        """Units (vLLM blocks) still needed to hold ``num_tokens`` tokens."""
        return self._manager.units_needed(request_id, num_tokens)


class PoolFacade:
    """The part of vLLM's BlockPool the scheduler reaches into (deferred frees, free count)."""

    def __init__(self, manager: JengaKVCacheManager) -> None:
        self._manager = manager
        self.null_block = NULL_BLOCK

    def free_blocks(self, blocks: Iterable[Any]) -> None:
        for block in blocks:
            if isinstance(block, PendingFree):
                self._manager.free_request(block.request_id)

    def get_num_free_blocks(self) -> int:
        return self._manager.available_bytes() // self._manager.plan.unit_bytes

    def get_usage(self) -> float:
        return self._manager.usage

    def take_events(self) -> list:
        return self._manager.take_events()
