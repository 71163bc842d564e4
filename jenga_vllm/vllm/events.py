"""vLLM's KV-cache events (``--kv-events-config``) from jenga's prefix index.

What it owns
    Turning the core's two journals into the event stream vLLM 0.32's BlockPool publishes, so a
    subscriber (a prefix-aware router, vLLM's ZMQ consumers) reads jenga's cache as it reads
    stock's:
    - ``BlockStored``: pages ``JengaCache.cache_blocks`` named in the prefix index, one event per
      (call, layer type, contiguous run of blocks) — vLLM's ``cache_full_blocks`` emits one per
      (call, group), so on attention models with every block cacheable the two coincide; the
      parent hash is the chain hash of the block before the run (None at the prompt's start),
      ``token_ids`` the run's tokens, ``group_idx`` the vLLM KV-cache group (= jenga layer type)
      annotated with vLLM's spec kind and sliding window, ``medium`` vLLM's device medium;
    - ``BlockRemoved``: every index entry the allocator dropped (an eviction), one per hash,
      with its group — emitted only for pages jenga really evicted;
    - ``AllBlocksCleared`` on a prefix-cache reset (as stock: no per-block removals then);
    - with ``kv_cache_report_mode == "full"`` on a request, the blocks of its prefix hit, as
      stock's ``emit_cached_block_events`` (parent None, from the prompt's first block).
    Hashes are vLLM's own (``request.block_hashes`` at jenga's block size), converted as stock
    converts them (``VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES``).

Differences from stock, by design (docs/design.md §5)
    Which blocks are removed, and when, follows jenga's evictor; a block computed twice at once
    is stored once (jenga names one page per hash); Mamba state pages are stored at jenga's
    block size where vLLM stores them at its inflated one.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any

from vllm.distributed.kv_events import (
    MEDIUM_GPU,
    AllBlocksCleared,
    BlockRemoved,
    BlockStored,
    KVCacheEvent,
)
from vllm.v1.core.kv_cache_utils import (
    generate_block_hash_extra_keys,
    maybe_convert_block_hash,
    to_event_extra_keys,
)
from vllm.v1.kv_cache_interface import get_kv_cache_spec_kind, get_kv_cache_spec_sliding_window
from vllm.v1.request import Request

from jenga_vllm.core.cache import JengaCache


class KVEventJournal:
    """The event queue of one JengaCache; drained by ``take_events`` each engine step."""

    def __init__(self, cache: JengaCache, kv_cache_groups: Sequence[Any]) -> None:
        self.cache = cache
        self.removed: list[tuple[int, Hashable]] = []
        self.stored: list[tuple[int, int, Hashable]] = []
        cache.index.journal = self.removed
        cache.stored_journal = self.stored
        self.block_tokens = [p.block_tokens for p in cache.policies]
        self.hash_index = [p.hash_index for p in cache.policies]
        self.group_meta = [
            (
                get_kv_cache_spec_kind(g.kv_cache_spec).value,
                get_kv_cache_spec_sliding_window(g.kv_cache_spec),
            )
            for g in kv_cache_groups
        ]
        self.num_groups = len(kv_cache_groups)
        self.queue: list[KVCacheEvent] = []

    # ---- producers -------------------------------------------------------------------------
    def flush(self, request: Request | None = None) -> None:
        """Move the journals into the queue: removals first (they happened while pages were
        taken), then the blocks ``request`` just stored."""
        if self.removed:
            self.queue.extend(
                BlockRemoved(
                    block_hashes=[maybe_convert_block_hash(key)],
                    medium=MEDIUM_GPU,
                    group_idx=t,
                )
                for t, key in self.removed
                if t < self.num_groups  # item pages (vision embeddings) are no vLLM blocks
            )
            self.removed.clear()
        if self.stored:
            assert request is not None, "blocks stored outside a request's cache_blocks"
            runs: list[tuple[int, int, list[Hashable]]] = []  # (type, first block, keys)
            for t, block, key in self.stored:
                last = runs[-1] if runs else None
                if last is not None and last[0] == t and last[1] + len(last[2]) == block:
                    last[2].append(key)
                else:
                    runs.append((t, block, [key]))
            self.stored.clear()
            for t, first, keys in runs:
                parent = request.block_hashes[self.hash_index[t](first - 1)] if first > 0 else None
                self.queue.append(self._stored(request, t, first, len(keys), keys, parent))

    def cached_blocks(self, request: Request, hit_blocks: Sequence[Sequence[Any]]) -> None:
        """A request's prefix hit, re-announced (vLLM's ``kv_cache_report_mode == "full"``)."""
        for t, blocks in enumerate(hit_blocks):
            n = len(blocks)
            if n:
                keys = [request.block_hashes[self.hash_index[t](i)] for i in range(n)]
                self.queue.append(self._stored(request, t, 0, n, keys, None))

    def cleared(self) -> None:
        self.removed.clear()  # stock: one AllBlocksCleared, no per-block removals
        self.queue.append(AllBlocksCleared())

    def take(self) -> list[KVCacheEvent]:
        self.flush()
        events, self.queue = self.queue, []
        return events

    # ---- one BlockStored -----------------------------------------------------------------
    def _stored(
        self,
        request: Request,
        t: int,
        first: int,
        count: int,
        keys: list[Hashable],
        parent: Hashable | None,
    ) -> BlockStored:
        size = self.block_tokens[t]
        start, end = first * size, (first + count) * size
        extra_keys: list[tuple[Any, ...] | None] = []
        mm_idx = 0
        for block_start in range(start, end, size):
            keys_of_block, mm_idx = generate_block_hash_extra_keys(
                request, block_start, block_start + size, mm_idx
            )
            extra_keys.append(keys_of_block)
        lora = request.lora_request
        kind, window = self.group_meta[t]
        return BlockStored(
            block_hashes=[maybe_convert_block_hash(k) for k in keys],
            parent_block_hash=maybe_convert_block_hash(parent) if parent is not None else None,
            token_ids=request.all_token_ids[start:end],
            block_size=size,
            lora_id=lora.adapter_id if lora else None,
            medium=MEDIUM_GPU,
            lora_name=lora.name if lora else None,
            extra_keys=to_event_extra_keys(extra_keys),
            group_idx=t,
            kv_cache_spec_kind=kind,
            kv_cache_spec_sliding_window=window,
            session_id=request.session_id,
        )
