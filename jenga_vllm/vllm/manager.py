"""vLLM boundary, scheduler side: ``JengaKVCacheManager``, vLLM 0.32's KVCacheManager API on Jenga.

What it owns
    The translation between vLLM's scheduler and the engine-agnostic ``JengaCache``:
    - vLLM's *block* is Jenga's *small page*; a vLLM block id is the page's *unit id*
      (``jenga_vllm.vllm.kv_config``); vLLM's KV-cache *group* i is Jenga *layer type* i;
    - prefix hits use vLLM's own ``request.block_hashes`` (chained, at the common block size);
      on a Mamba hybrid the third value of ``get_computed_blocks`` is the shared-prefix junction
      (the longest attention-only hit when the full hit is shorter): vLLM's scheduler stops a
      prefill chunk there, so the state at the point where requests diverge gets written;
    - Mamba states (vLLM's "align" mode, checkpoints on jenga's own block grid): each step gets
      pages for exactly the state columns vLLM's worker writes — the running state and, when
      vLLM's ``is_mamba_prefill_checkpoint_valid`` says the forward pass exports it, the prefill
      checkpoint; blocks returned for a running request are its table's positional tail (null
      for skipped columns), since the worker appends them by position;
    - a running request's out-of-window pages are released on the processed-token basis, like
      vLLM's ``remove_skipped_blocks``; preemption follows from ``allocate_slots`` returning None;
    - usage and prefix-cache stats are reported through vLLM's normal stats objects.
    Beside it: ``admission.py`` (may a step's allocation go ahead: watermark, reserved blocks,
    decode headroom), ``blocks.py`` (the block objects and the coordinator / block-pool facades
    the scheduler and EngineCore reach into), ``checkpoint_rule.py`` (when the worker writes a
    Mamba prefill checkpoint).

Invariants
    - every block handed to vLLM is a ``PageBlock`` whose ``block_id`` is its small page's unit id,
      or the null block (id 0) for a block the type no longer needs;
    - a request id is in ``cache.requests`` exactly while vLLM holds blocks for it;
    - failed allocations change nothing (``JengaCache.allocate`` is atomic).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from vllm.logger import init_logger
from vllm.utils.math_utils import cdiv
from vllm.v1.core.kv_cache_manager import KVCacheBlocks
from vllm.v1.metrics.stats import PrefixCacheStats
from vllm.v1.request import Request

from jenga_vllm.core.accounting import snapshot
from jenga_vllm.core.cache import JengaCache, PrefixHit
from jenga_vllm.core.invariants import check_invariants
from jenga_vllm.core.pages import SmallPage
from jenga_vllm.core.spec import DEBUG_INVARIANTS
from jenga_vllm.vllm import encoder_cache
from jenga_vllm.vllm.admission import Admission
from jenga_vllm.vllm.blocks import (
    NULL_BLOCK,
    CoordinatorFacade,
    PendingFree,
    PoolFacade,
    TypeManagerView,
    new_block,
)
from jenga_vllm.vllm.checkpoint_rule import MambaCheckpointRule
from jenga_vllm.vllm.events import KVEventJournal
from jenga_vllm.vllm.kv_config import JengaKVCacheConfig

logger = init_logger(f"vllm.{__name__}")  # under vLLM's log handler and format


# Per-type hit lengths of looked-up requests not yet admitted (metrics); requests aborted while
# waiting never come back, so the map is dropped past this size.
PENDING_LOOKUPS_CAP = 65_536


class JengaKVCacheManager:
    """vLLM 0.32's KVCacheManager interface, backed by one JengaCache."""

    def __init__(
        self,
        kv_cache_config: JengaKVCacheConfig,
        max_model_len: int,
        scheduler_block_size: int,
        hash_block_size: int,
        max_in_flight_tokens: int | None = None,
        enable_caching: bool = True,
        use_eagle: bool = False,
        num_prefill_lookahead: int = 0,
        log_stats: bool = False,
        enable_kv_cache_events: bool = False,
        dcp_world_size: int = 1,
        pcp_world_size: int = 1,
        metrics_collector: Any = None,
        watermark: float = 0.0,
        enable_mamba_shared_prefix_checkpoint: bool = False,
    ) -> None:
        plan = kv_cache_config.plan
        assert plan is not None
        # Refused at start-up (supported.py): multi-module MTP (a prefill lookahead past one
        # token), context parallelism, --prefix-match-unit. Draft layers (EAGLE heads, draft
        # models) are layer types like any other; their lookahead slots come with
        # num_lookahead_tokens; ngram drafts have no KV at all.
        assert num_prefill_lookahead <= 1, "multi-module MTP reached jenga"
        assert dcp_world_size == pcp_world_size == 1, "context parallelism reached jenga"
        assert not enable_caching or hash_block_size == plan.block_size, (
            f"prefix hashes at {hash_block_size} tokens, jenga pages hold {plan.block_size}"
        )
        self.kv_cache_config = kv_cache_config
        self.plan = plan
        self.max_model_len = max_model_len
        self.max_in_flight_tokens = max_in_flight_tokens or max_model_len
        self.enable_caching = enable_caching
        # EAGLE's last-block drop (vLLM's use_eagle_block_drop): a hit ends at least one block
        # before the cached prefix does (docs/design.md §5).
        self.use_eagle = use_eagle
        self.enable_kv_cache_events = enable_kv_cache_events
        self.log_stats = log_stats
        self.prefix_cache_stats = PrefixCacheStats() if log_stats else None
        self.cache = JengaCache(
            plan,
            evictor=kv_cache_config.evictor,
            enable_caching=enable_caching,
            guards_same_step_states=True,
        )
        self._checkpoint_rule = MambaCheckpointRule.for_config(
            kv_cache_config, hash_block_size, use_eagle
        )
        # vLLM's KV events (--kv-events-config), from the prefix index's journals.
        self._events = (
            KVEventJournal(self.cache, kv_cache_config.kv_cache_groups)
            if enable_kv_cache_events and enable_caching
            else None
        )
        self.block_size = plan.block_size
        self.num_kv_cache_groups = len(kv_cache_config.kv_cache_groups)
        # vLLM's groups are the plan's first types; item types (vision embeddings) follow them
        # and reach vLLM only through the encoder cache (vllm/encoder_cache.py).
        self._group_types = plan.types[: self.num_kv_cache_groups]
        self._item_padding = ((),) * (len(plan.types) - self.num_kv_cache_groups)
        self.empty_kv_cache_blocks = KVCacheBlocks(
            tuple(() for _ in range(self.num_kv_cache_groups))
        )
        self.block_pool = PoolFacade(self)
        self.coordinator = CoordinatorFacade(
            self,
            [
                TypeManagerView(t.block_tokens, g.kv_cache_spec, i)
                for i, (t, g) in enumerate(
                    zip(self._group_types, kv_cache_config.kv_cache_groups, strict=True)
                )
            ],
        )
        self.retained_hit_group_ids: tuple[int, ...] = ()
        self.admission = Admission(self.cache, watermark, self.max_in_flight_tokens)
        self.mamba_shared_prefix_checkpoint = False
        self._small_bytes = [t.small_page_bytes for t in plan.types]
        self._usable_bytes = plan.usable_bytes
        # Unit ids of new small pages for the worker to zero (vLLM's rule for when to zero).
        self._zero_new_pages = kv_cache_config.needs_kv_cache_zeroing
        self._units_to_zero: list[int] = []
        self._units_per_small = [t.units_per_small for t in plan.types]
        # Per layer type, for metrics (only with log_stats): prefix-cache tokens queried and
        # the tokens each type alone could have served, counted at admission as vLLM does.
        self.prefix_queries = 0
        self.prefix_hits_by_type = [0] * len(plan.types)
        self._pending_hits_by_type: dict[str, list[int]] = {}
        # Vision embeddings in the pool (vllm/encoder_cache.py): vLLM built the encoder-cache
        # manager just before this one.
        self.vision = encoder_cache.bind_kv_manager(self) if self.cache.item_types else None
        logger.info("Jenga KV cache manager active: %s", plan.describe())

    # ---- capacity ------------------------------------------------------------------------
    def available_bytes(self) -> int:
        """Bytes a new allocation could get (vLLM's notion of free: cached counts as free)."""
        return self.cache.free_bytes()

    @property
    def usage(self) -> float:
        return 1.0 - self.available_bytes() / self._usable_bytes if self._usable_bytes else 0.0

    def units_needed(self, request_id: str, num_tokens: int) -> int:
        needs = self.cache.pages_needed(request_id, min(num_tokens, self.max_model_len))
        return (
            sum(n * s for n, s in zip(needs, self._small_bytes, strict=True))
            // self.plan.unit_bytes
        )

    # ---- stats -----------------------------------------------------------------------------
    def make_prefix_cache_stats(self) -> PrefixCacheStats | None:
        if not self.log_stats:
            return None
        stats = self.prefix_cache_stats
        self.prefix_cache_stats = PrefixCacheStats()
        return stats

    def prefix_cache_lookup_enabled(self, request: Request) -> bool:
        return self.enable_caching and not request.skip_reading_prefix_cache

    def record_prefix_cache_stats(self, request: Request, num_hits: int) -> None:
        if not self.log_stats or not self.prefix_cache_lookup_enabled(request):
            return
        assert self.prefix_cache_stats is not None
        by_type = self._pending_hits_by_type.pop(request.request_id, None)
        if by_type is not None:
            self.prefix_queries += request.num_tokens
            for t, tokens in enumerate(by_type):
                self.prefix_hits_by_type[t] += tokens
        self.prefix_cache_stats.record(
            num_tokens=request.num_tokens,
            num_hits=num_hits,
            preempted=request.num_preemptions > 0,
        )

    # ---- prefix hits -------------------------------------------------------------------------
    def get_computed_blocks(self, request: Request) -> tuple[KVCacheBlocks, int, int]:
        """Longest prefix every layer type can serve from cache (the last token is recomputed)."""
        if not self.prefix_cache_lookup_enabled(request):
            return self.empty_kv_cache_blocks, 0, 0
        first = self.cache.find_longest_hit(request.block_hashes, request.num_tokens - 1)
        hit, junction = first, first.junction_tokens
        if self.use_eagle:
            # The draft's KV at the last position the attention types match was written with the
            # token that followed it there, which may differ here: only positions a block before
            # that end are sure to be shared (vLLM's EAGLE block drop). A hit that a state type
            # already stops that far short keeps its length (its next token is shared).
            attention = first.junction_tokens or first.num_tokens
            shared = attention - self.plan.block_size
            if first.num_tokens > shared:
                hit = self.cache.find_longest_hit(request.block_hashes, max(0, shared))
            # The state worth writing for a later request with this prefix is the one there.
            if self.cache.state_types:
                junction = shared if shared > hit.num_tokens else 0
        if self.log_stats:
            if len(self._pending_hits_by_type) > PENDING_LOOKUPS_CAP:  # aborted while waiting
                self._pending_hits_by_type.clear()
            self._pending_hits_by_type[request.request_id] = self.cache.hit_tokens_by_type(
                request.block_hashes, request.num_tokens - 1
            )
        if hit.num_tokens == 0:
            return self.empty_kv_cache_blocks, 0, junction
        if (
            self._events is not None
            and getattr(request, "kv_cache_report_mode", "incremental") == "full"
        ):
            self._events.cached_blocks(request, hit.pages)
        return self._blocks(hit.pages), hit.num_tokens, junction

    def get_computed_blocks_for_connector(
        self, request: Request
    ) -> tuple[KVCacheBlocks, int, int, bool]:
        return *self.get_computed_blocks(request), False

    # ---- allocation ---------------------------------------------------------------------------
    def allocate_slots(self, request: Request, num_new_tokens: int, *args, **kwargs):
        """New pages for ``num_new_tokens`` (+ lookahead) more tokens, or None (→ preempt).

        With vision embeddings in the pool, the images the request is scheduled to encode in
        this step (``JengaEncoderCacheManager.can_allocate``) get their pages here, together
        with the KV pages or not at all."""
        vision = self.vision
        if vision is None or not vision.has_pending(request.request_id):
            return self._allocate_slots(request, num_new_tokens, *args, **kwargs)
        hit = kwargs.get("new_computed_blocks")
        protect = [b.page for per in hit.blocks for b in per] if hit is not None else []
        if not vision.reserve(request.request_id, protect):
            return None
        blocks = self._allocate_slots(request, num_new_tokens, *args, **kwargs)
        vision.settle(request.request_id, scheduled=blocks is not None)
        return blocks

    def _allocate_slots(
        self,
        request: Request,
        num_new_tokens: int,
        num_new_computed_tokens: int = 0,
        new_computed_blocks: KVCacheBlocks | None = None,
        num_lookahead_tokens: int = 0,
        num_external_computed_tokens: int = 0,
        delay_cache_blocks: bool = False,
        num_encoder_tokens: int = 0,
        full_sequence_must_fit: bool = False,
        reserved_blocks: int = 0,
        has_scheduled_reqs: bool = True,
        skip_zeroing_group_ids: tuple[int, ...] = (),
    ) -> KVCacheBlocks | None:
        if (
            num_new_tokens == 0
            and num_new_computed_tokens == 0
            and not num_external_computed_tokens
        ):
            raise ValueError(
                "num_new_tokens must be greater than 0 when there are no computed tokens to adopt"
            )
        request_id = request.request_id
        cache = self.cache
        is_new = request_id not in cache.requests
        # Cross-attention pages come with a request's first step (vLLM schedules an
        # encoder-decoder prompt whole, encoder input included) and live until it ends.
        encoder_tokens = num_encoder_tokens if is_new else 0
        hit = None
        if num_new_computed_tokens and new_computed_blocks is not None:
            assert is_new, "a prefix hit can only be adopted by a request holding no pages"
            hit = PrefixHit(
                num_new_computed_tokens,
                tuple(tuple(b.page for b in per) for per in new_computed_blocks.blocks)
                + self._item_padding,
            )
        # A KV connector's tokens (``num_external_computed_tokens``: loaded asynchronously into
        # pages allocated now) count as computed, after the local hit (vLLM's order).
        total_computed = min(
            request.num_computed_tokens + num_new_computed_tokens + num_external_computed_tokens,
            self.max_model_len,
        )
        num_tokens = min(total_computed + num_new_tokens + num_lookahead_tokens, self.max_model_len)
        # The draft's KV slots for the next step; state types write no state for them.
        lookahead = num_tokens - min(total_computed + num_new_tokens, self.max_model_len)
        checkpoint = self._checkpoint_rule.is_written(
            total_computed, total_computed + num_new_tokens
        )

        if not is_new:
            # Processed-token basis: in-flight steps may still read the window's old pages.
            cache.release_unneeded(
                request_id, max(0, total_computed - request.num_in_flight_tokens)
            )
        admitting = is_new and has_scheduled_reqs
        if not self.admission.fits(
            request_id,
            num_tokens,
            hit,
            encoder_tokens,
            lookahead,
            admitting=admitting,
            full_tokens=min(request.num_tokens, self.max_model_len)
            if full_sequence_must_fit
            else None,
            reserved_blocks=reserved_blocks,
        ):
            return None

        # vLLM's contract: the blocks this call allocated — for a new request the table past its
        # prefix hit (the hit's blocks are the caller's already), for a running one the table's
        # new tail (state types: positional, nulls for columns no step writes).
        if not is_new:
            have = [len(t) for t in cache.requests[request_id].tables[: self.num_kv_cache_groups]]
        elif num_external_computed_tokens:
            # A connector's loaded tokens are computed tokens too: their blocks are the request's
            # (get_blocks), not this call's new ones (vLLM's allocate_new_computed_blocks).
            have = [cdiv(total_computed, t.block_tokens) for t in self._group_types]
        elif hit is not None:
            have = [len(pages) for pages in hit.pages[: self.num_kv_cache_groups]]
        else:
            have = [0] * self.num_kv_cache_groups
        new_pages = cache.allocate(
            request_id,
            num_tokens,
            hit,
            encoder_tokens=encoder_tokens,
            checkpoint=checkpoint,
            prompt_tokens=request.num_prompt_tokens,
            junction_tokens=request.shared_prefix_boundary,  # from get_computed_blocks
            lookahead_tokens=lookahead,
        )
        if new_pages is None:
            return None
        if num_external_computed_tokens and is_new:
            # Pages a loaded prefix leaves out of a type's window are not loaded: vLLM gives
            # them null blocks (allocate_new_computed_blocks); jenga releases them now.
            cache.release_unneeded(request_id, total_computed)
        if admitting:
            self.admission.admitted(request_id)
        if self._zero_new_pages:
            self._record_units_to_zero(new_pages, skip_zeroing_group_ids)
        if self.enable_caching and not delay_cache_blocks:
            cache.cache_blocks(
                request_id,
                request.block_hashes,
                min(total_computed + num_new_tokens, request.num_tokens),
            )
        if self._events is not None:
            self._events.flush(request)
        if DEBUG_INVARIANTS:
            check_invariants(cache)
        if not any(new_pages):
            return self.empty_kv_cache_blocks
        # The worker appends a running request's blocks to its rows by position (a new request's
        # rows come from get_blocks): each table's tail, null for the state columns no step
        # writes.
        tables = cache.requests[request_id].tables
        return self._blocks([table[n:] for table, n in zip(tables, have, strict=False)])

    def free(self, request: Request) -> None:
        """Finished or preempted: all pages go to the prefix cache, suffix first."""
        self.free_request(request.request_id)

    def free_request(self, request_id: str) -> None:
        if request_id in self.cache.requests:
            self.cache.free(request_id)
            if DEBUG_INVARIANTS:
                check_invariants(self.cache)

    def pop_blocks_for_free(self, request: Request) -> list[Any]:
        """Deferred free: a token that block_pool.free_blocks turns into the real free."""
        if request.request_id not in self.cache.requests:
            return []
        return [PendingFree(request.request_id)]

    def remove_skipped_blocks(
        self,
        request_id: str,
        processed_computed_tokens: int,
        num_prompt_tokens: int | None = None,
    ) -> None:
        if request_id in self.cache.requests:
            self.cache.release_unneeded(request_id, processed_computed_tokens)

    def evict_blocks(self, block_ids: set[int]) -> None:
        """A KV connector's load into these blocks failed: none of them may serve a prefix hit
        (vLLM: BlockPool.evict_blocks). Cached pages are evicted now; pages a request still
        holds stay, and the scheduler recomputes or fails that request."""
        self.cache.evict_units(block_ids)

    def reset_prefix_cache(self) -> bool:
        if not self.cache.reset_prefix_cache():
            return False
        if self._events is not None:
            self._events.cleared()
        if self.log_stats:
            assert self.prefix_cache_stats is not None
            self.prefix_cache_stats.reset = True
        return True

    def get_num_common_prefix_blocks(self, running_request_id: str) -> list[int]:
        return [0] * self.num_kv_cache_groups

    def take_events(self) -> list:
        """vLLM's KV events since the last call (empty unless --kv-events-config is on)."""
        return self._events.take() if self._events is not None else []

    def stats_snapshot(self) -> dict:
        """Per layer type memory and cache figures and the layout, as plain Python numbers
        (the payload of jenga's metrics, docs/design.md §5); O(types + running requests)."""
        snap = snapshot(self.cache)
        snap["prefix_cache_queries_tokens"] = self.prefix_queries
        for t, figures in enumerate(snap["types"].values()):
            figures["prefix_cache_hit_tokens"] = self.prefix_hits_by_type[t]
        if self.vision is not None:
            snap["encoder_cache"] = {
                "encoder_runs": self.vision.encoder_runs,
                "cache_hits": self.vision.cache_hits,
                "entries": len(self.vision.entries),
            }
        snap["layout"] = {
            "unit_bytes": self.plan.unit_bytes,
            "block_size": self.plan.block_size,
            "types": {
                t.spec.name: {
                    "kind": t.spec.kind,
                    "layers": t.spec.num_layers,
                    "block_tokens": t.block_tokens if t.is_token_indexed else None,
                    "small_page_bytes": t.small_page_bytes,
                    "content_bytes": t.content_bytes,
                    "padding_bytes": t.padding_bytes,
                    "pages_per_large_page": t.pages_per_large,
                }
                for t in self.plan.types
            },
        }
        return snap

    # ---- views ----------------------------------------------------------------------------
    def _blocks(self, pages: Sequence[Sequence[SmallPage | None]]) -> KVCacheBlocks:
        return KVCacheBlocks(
            tuple(
                [
                    (p.handle or new_block(p, t.block_tokens)) if p is not None else NULL_BLOCK
                    for p in per
                ]
                for per, t in zip(pages[: self.num_kv_cache_groups], self._group_types, strict=True)
            )
        )

    def create_kv_cache_blocks(self, blocks: tuple[list[Any], ...]) -> KVCacheBlocks:
        return KVCacheBlocks(blocks) if any(blocks) else self.empty_kv_cache_blocks

    def get_blocks(self, request_id: str) -> KVCacheBlocks:
        req = self.cache.requests.get(request_id)
        if req is None:
            return self.empty_kv_cache_blocks
        return self._blocks(req.tables)

    def get_block_ids(self, request_id: str) -> tuple[list[int], ...]:
        if request_id not in self.cache.requests:
            return tuple([] for _ in range(self.num_kv_cache_groups))
        return self.cache.block_ids(request_id)[: self.num_kv_cache_groups]

    def get_block_ids_for_computed_tokens(
        self, request_id: str, num_computed_tokens: int
    ) -> tuple[list[int], ...]:
        return tuple(
            ids[: cdiv(num_computed_tokens, t.block_tokens)]
            for ids, t in zip(self.get_block_ids(request_id), self._group_types, strict=True)
        )

    def estimate_cached_tokens(self, request: Request) -> int:
        """Tokens of this request held in pages named in the prefix index (min over types)."""
        req = self.cache.requests.get(request.request_id)
        if req is None:
            return 0
        cached = None
        for type_idx in self.cache.prefix_types:  # cross-attention pages are never indexed
            table, t = req.tables[type_idx], self.plan.types[type_idx]
            n = 0
            for i in range(len(table) - 1, -1, -1):
                page = table[i]
                if page is not None and page.block_hash is not None:
                    n = (i + 1) * t.block_tokens
                    break
            cached = n if cached is None else min(cached, n)
        return cached or 0

    def cache_blocks(self, request: Request, num_computed_tokens: int) -> None:
        if self.enable_caching and request.request_id in self.cache.requests:
            self.cache.cache_blocks(request.request_id, request.block_hashes, num_computed_tokens)
            if self._events is not None:
                self._events.flush(request)

    def truncate_computed_blocks(
        self, blocks: KVCacheBlocks, num_computed_tokens: int
    ) -> KVCacheBlocks:
        return self.create_kv_cache_blocks(
            tuple(
                list(per[: num_computed_tokens // t.block_tokens])
                for per, t in zip(blocks.blocks, self._group_types, strict=True)
            )
        )

    # ---- worker hand-offs -------------------------------------------------------------------
    def _record_units_to_zero(
        self, new_pages: Sequence[Sequence[SmallPage]], skip_group_ids: tuple[int, ...] = ()
    ) -> None:
        """``skip_group_ids``: groups whose new pages a KV connector fills (vLLM skips zeroing
        them)."""
        units = self._units_to_zero
        for t, (per, n) in enumerate(zip(new_pages, self._units_per_small, strict=True)):
            if t in skip_group_ids:
                continue
            for page in per:
                units.extend(range(page.unit_id, page.unit_id + n))

    def take_new_block_ids(self) -> list[int]:
        """Units of the small pages allocated since the last call (the scheduler sends them
        as ``new_block_ids_to_zero``; jenga's worker zeroer clears exactly these units)."""
        units, self._units_to_zero = self._units_to_zero, []
        return units

    # Jenga does not use these (KV-connector load failures, copy-on-write, connector offloads).
    def record_blocks_for_zeroing(self, request_id: str, start_token: int) -> None:
        return None

    def take_kv_cache_block_copies(self) -> tuple[list, list]:
        return [], []

    def take_boundary_state_offloads(self) -> dict[str, list[tuple[int, int, int]]]:
        return {}

    def finalize_partial_tail_offloads(self, request: Request) -> list[tuple[int, int, int]]:
        return []

    def new_step_starts(self) -> None:
        self.cache.new_step()
        self.admission.new_step()
