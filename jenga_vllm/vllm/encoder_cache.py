"""vLLM boundary: the vision-embedding cache as a layer type of the jenga pool (#16, the paper's
multimodal case; docs/design.md §5 "Vision embeddings in the pool").

What it owns
    - the option: ``additional_config["jenga_encoder_cache"] = "pool"`` (default ``"separate"``:
      vLLM's own encoder cache). ``configure`` checks it before any process starts and points
      vLLM's pluggable encoder-cache manager (``ec_manager_config``) at
      ``JengaEncoderCacheManager``;
    - ``vision_type_spec`` / ``encoder_budget_bytes``: the ``vision_embedding`` layer type (a
      small page = block-size embeddings of the language model's input width × dtype) and the
      bytes of vLLM's encoder budget (``encoder_cache_size`` embeddings), which join the pool
      instead of being reserved beside it;
    - ``JengaEncoderCacheManager``: vLLM's EncoderCacheManager API over jenga item pages. An
      entry (one image, by its hash) holds pages while a request references it; when none does,
      they stay CACHED under jenga's evictor, competing with KV pages, until a later request
      with the same image takes them back (no encoder run) or memory is needed;
    - ``VisionPageStore``: the worker side. The encoder output is written into the entry's
      pages; the language model's embedding gather reads it back from them.

The scheduler protocol (vLLM 0.32, ``Scheduler._try_schedule_encoder_inputs`` and callers):
``check_and_update_cache`` (a hit re-holds the cached pages) → ``can_allocate`` (feasibility;
the item is remembered as pending for the request) → the KV manager's ``allocate_slots``, which
holds the pending items' pages and the request's KV pages together or neither (``reserve`` /
``settle``), so a request is never scheduled with its image but without room for its tokens →
``allocate`` (the request's reference). An entry allocated in a step is announced to the worker
in that step's ``SchedulerOutput.ec_manager_metadata``; if no request references it by the end
of that step (its request was preempted before the encoder ran), its pages are dropped, never
cached: they were never written.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from vllm.config.ec_manager_config import EncoderCacheManagerMetadata
from vllm.logger import init_logger

from jenga_vllm.core.errors import JengaConfigError
from jenga_vllm.core.policies import POLICY_REGISTRY
from jenga_vllm.core.spec import LayerTypeSpec
from jenga_vllm.vllm.switch import as_dict

logger = init_logger(f"vllm.{__name__}")

OPTION = "jenga_encoder_cache"
MODES = ("separate", "pool")
MANAGER_CLS = f"{__name__}.JengaEncoderCacheManager"


# ---- configuration (EngineCore and front end) --------------------------------------------------
def mode(vllm_config) -> str:
    return (as_dict(vllm_config.additional_config) or {}).get(OPTION, "separate")


def in_pool(vllm_config) -> bool:
    return mode(vllm_config) == "pool"


def configure(vllm_config) -> None:
    """Check the option and install jenga's encoder-cache manager; before any process starts."""
    chosen = mode(vllm_config)
    if chosen not in MODES:
        raise JengaConfigError(
            f"{OPTION}={chosen!r} is not a choice; use 'pool' (vision embeddings in jenga's "
            "pool) or 'separate' (vLLM's own encoder cache, the default)"
        )
    if chosen != "pool":
        return
    model_config = vllm_config.model_config
    fix = f"leave out {OPTION} (vLLM's own encoder cache) or use a vision-language model"
    if not model_config.is_multimodal_model:
        raise JengaConfigError(f"{OPTION}=pool: {model_config.model} takes no images; {fix}")
    if model_config.is_encoder_decoder:
        raise JengaConfigError(
            f"{OPTION}=pool: encoder-decoder models keep their encoder input in cross-attention "
            f"pages, not in an encoder cache; leave out {OPTION}"
        )
    ec = vllm_config.ec_manager_config
    if ec.encoder_cache_manager_cls not in (None, MANAGER_CLS):
        raise JengaConfigError(
            f"{OPTION}=pool replaces the encoder-cache manager, and --ec-manager-config names "
            f"{ec.encoder_cache_manager_cls}; drop one of the two"
        )
    if vllm_config.ec_transfer_config is not None:
        raise JengaConfigError(
            f"{OPTION}=pool keeps encoder outputs in KV pages, which an encoder-cache connector "
            f"(--ec-transfer-config) cannot read; drop one of the two"
        )
    if getattr(vllm_config, "use_v2_model_runner", False):
        raise JengaConfigError(
            f"{OPTION}=pool writes encoder outputs through the V1 model runner's encoder-cache "
            "hooks; vLLM's V2 runner keeps its own cache: unset VLLM_USE_V2_MODEL_RUNNER or "
            f"leave out {OPTION}"
        )
    ec.encoder_cache_manager_cls = MANAGER_CLS


def embedding_shape(vllm_config) -> tuple[int, torch.dtype]:
    """(width, dtype) of one embedding the encoder hands the language model."""
    model_config = vllm_config.model_config
    return model_config.get_inputs_embeds_size(), model_config.dtype


# Embeddings per vision page: images come in multiples of 16 tokens (Gemma 3: 256, LLaVA-1.5:
# 576, the zoo's: 16), and a page is never longer than vLLM's block.
PAGE_EMBEDDINGS = 16


def vision_type_spec(vllm_config) -> LayerTypeSpec:
    width, dtype = embedding_shape(vllm_config)
    block = min(PAGE_EMBEDDINGS, vllm_config.cache_config.block_size)
    return LayerTypeSpec.of("vision_embedding", (width * dtype.itemsize,), block_tokens=block)


def encoder_budget_bytes(vllm_config) -> int:
    """Bytes of vLLM's encoder cache (``encoder_cache_size`` embeddings): stock keeps them
    beside the KV pool; with the option they are part of it."""
    width, dtype = embedding_shape(vllm_config)
    return vllm_config.scheduler_config.encoder_cache_size * width * dtype.itemsize


# ---- scheduler side ------------------------------------------------------------------------------
@dataclass
class JengaVisionMetadata(EncoderCacheManagerMetadata):
    """Entries allocated this step: mm_hash → (unit id of each page, number of embeddings)."""

    pages: dict[str, tuple[list[int], int]]


@dataclass(eq=False)
class _Entry:
    num_embeds: int
    pages: list[Any]  # the core's SmallPages while held
    refs: set[str] = field(default_factory=set)
    held: bool = True  # pages held (False: CACHED under the evictor)
    written: bool = False  # announced to the worker, which writes it in that step


_REGISTRY: dict[str, Any] = {}  # the encoder manager of this EngineCore, for its KV manager


def bind_kv_manager(kv_manager: Any) -> JengaEncoderCacheManager | None:
    """The KV manager of this EngineCore meets the encoder manager vLLM built just before it."""
    manager = _REGISTRY.pop("encoder", None)
    if manager is not None:
        manager.bind(kv_manager)
    return manager


class JengaEncoderCacheManager:
    """vLLM's EncoderCacheManager API; the storage is jenga's ``vision_embedding`` pages."""

    @classmethod
    def create_manager(cls, *, cache_size: int, vllm_config: Any) -> JengaEncoderCacheManager:
        return cls(cache_size)

    def __init__(self, cache_size: int) -> None:
        self.cache_size = cache_size  # vLLM's budget in embeddings: part of the pool here
        self.cache: Any = None
        self.type_idx = -1
        self.entries: dict[str, _Entry] = {}
        self.request_cached_ids: dict[str, set[int]] = {}
        self._pending: dict[str, dict[str, int]] = {}  # request → items can_allocate approved
        self._reserved: dict[str, list[str]] = {}  # request → items held by allocate_slots
        self._announce: dict[str, _Entry] = {}
        self._created: list[str] = []  # entries reserved in this step
        # Unreferenced entries still held, newest last, up to vLLM's budget (``cache_size``
        # embeddings: the bytes that joined the pool): they outlive cached KV pages, and go to
        # the evictor, oldest first, past the budget or when a new image needs room (as vLLM
        # evicts its oldest unreferenced entries; ``release_oldest``). KV never takes them:
        # borrowing them before a preemption cost more encoder runs than it saved
        # preemptions (docs/design.md §5).
        self._retained: OrderedDict[str, int] = OrderedDict()
        self._retained_embeds = 0
        self.freed: list[str] = []
        self.encoder_runs = 0  # entries computed (vLLM's encoder executions)
        self.cache_hits = 0  # items served from cached pages without an encoder run
        _REGISTRY["encoder"] = self

    def bind(self, kv_manager: Any) -> None:
        cache = kv_manager.cache
        assert cache.item_types, "the jenga plan has no vision_embedding type"
        self.cache = cache
        self.type_idx = cache.item_types[0]
        self.page_tokens = cache.policies[self.type_idx].block_tokens
        cache.index.on_remove[self.type_idx] = self._page_evicted

    def _page_evicted(self, key: tuple[str, int]) -> None:
        entry = self.entries.get(key[0])
        if entry is not None and not entry.held:  # a CACHED entry lost a page: gone whole
            del self.entries[key[0]]
            self.freed.append(key[0])

    def reset(self) -> None:
        """Drop every entry (vLLM calls it when weights change)."""
        for mm_hash, entry in list(self.entries.items()):
            if entry.held:
                self.cache.release_item(mm_hash, keep=False)
            else:
                self._forget(mm_hash)
        self.entries.clear()
        self._retained.clear()
        self._retained_embeds = 0
        self.request_cached_ids.clear()
        self._pending.clear()
        self._reserved.clear()
        self._announce.clear()
        self._created.clear()
        self.freed.clear()

    # ---- lookups ---------------------------------------------------------------------------
    def check_and_update_cache(self, request: Any, input_id: int) -> bool:
        mm_hash = request.mm_features[input_id].identifier
        entry = self.entries.get(mm_hash)
        if entry is None:
            return False
        if not entry.written and mm_hash not in self._announce:
            # Reserved in this step by a request that did not schedule its encoder after all
            # (vLLM approves an item, then skips it when none of its embeddings fall in the
            # scheduled range): nobody computes it in this step, so it is no hit.
            return False
        if not entry.held:  # CACHED: take its pages back (no new memory; cannot fail)
            pages = self.cache.hold_item(mm_hash, entry.num_embeds, self.type_idx)
            assert pages is not None, "re-holding cached pages needs no memory"
            entry.pages, entry.held = pages, True
            self.cache_hits += 1
        elif mm_hash in self._retained:
            self._retained_embeds -= self._retained.pop(mm_hash)
            self.cache_hits += 1
        entry.refs.add(request.request_id)
        self.request_cached_ids.setdefault(request.request_id, set()).add(input_id)
        return True

    def get_cached_num_encoder_embeds(self, request: Any, input_id: int) -> int | None:
        entry = self.entries.get(request.mm_features[input_id].identifier)
        return entry.num_embeds if entry is not None else None

    def get_cached_input_ids(self, request: Any) -> set[int]:
        return self.request_cached_ids.get(request.request_id, set())

    def can_allocate(
        self,
        request: Any,
        input_id: int,
        encoder_compute_budget: int,
        num_embeds_to_schedule: int,
    ) -> bool:
        """Whether the pool can hold this item beside the request's items approved so far in
        this step (exact feasibility, nothing taken: ``allocate_slots`` takes the pages)."""
        num_embeds = request.get_num_encoder_embeds(input_id)
        if num_embeds > encoder_compute_budget:
            return False
        pending = self._pending.setdefault(request.request_id, {})
        pages = sum(self._pages(n) for n in pending.values()) + self._pages(num_embeds)
        needs = [0] * len(self.cache.policies)
        needs[self.type_idx] = pages
        while self.cache.allocator.budget_for(needs) is None:
            if not self.release_oldest():  # as vLLM evicts its oldest unreferenced entries
                return False
        pending[request.mm_features[input_id].identifier] = num_embeds
        return True

    def _pages(self, num_embeds: int) -> int:
        return -(-num_embeds // self.page_tokens)

    # ---- with the KV manager's allocate_slots ------------------------------------------------
    def has_pending(self, request_id: str) -> bool:
        return bool(self._pending.get(request_id))

    def reserve(self, request_id: str, protect: Sequence[Any] = ()) -> bool:
        """Hold the pages of the request's pending items; False (nothing held) if they do not
        fit. Called by ``allocate_slots`` before it takes the request's KV pages; ``protect``
        is the request's prefix hit (CACHED pages the allocation must not evict)."""
        held: list[str] = []
        for mm_hash, num_embeds in self._pending[request_id].items():
            entry = self.entries.get(mm_hash)
            if entry is not None and entry.held:  # held since can_allocate: nothing to take
                continue
            if entry is not None:  # CACHED since can_allocate: recomputed into new pages
                self._forget(mm_hash)
            pages = self.cache.hold_item(mm_hash, num_embeds, self.type_idx, protect)
            while pages is None and self.release_oldest():
                pages = self.cache.hold_item(mm_hash, num_embeds, self.type_idx, protect)
            if pages is None:
                self._drop(held)
                return False
            self.entries[mm_hash] = _Entry(num_embeds, pages)
            self._created.append(mm_hash)
            held.append(mm_hash)
        self._reserved[request_id] = held
        return True

    def settle(self, request_id: str, scheduled: bool) -> None:
        """``allocate_slots`` ended: the request's KV pages were taken (``scheduled``) or not —
        then its reserved items are given back and stay pending for a retry in this step."""
        held = self._reserved.pop(request_id, [])
        if scheduled:
            self._pending.pop(request_id, None)
        else:
            self._drop(held)

    def _forget(self, mm_hash: str) -> None:
        """Evict a CACHED entry now."""
        entry = self.entries.pop(mm_hash)
        for i, page in enumerate(entry.pages):
            if page.block_hash == (mm_hash, i) and not page.ref_count:
                self.cache.allocator.discard(page)
        self.freed.append(mm_hash)

    def _drop(self, mm_hashes: list[str]) -> None:
        for mm_hash in mm_hashes:
            del self.entries[mm_hash]
            self._announce.pop(mm_hash, None)
            self.cache.release_item(mm_hash, keep=False)

    def allocate(self, request: Any, input_id: int) -> None:
        mm_hash = request.mm_features[input_id].identifier
        entry = self.entries.get(mm_hash)
        assert entry is not None and entry.held, (
            f"encoder input {mm_hash} scheduled without pages: allocate_slots did not reserve it"
        )
        if not entry.written and mm_hash not in self._announce:
            self._announce[mm_hash] = entry
            self.encoder_runs += 1
        entry.refs.add(request.request_id)
        self.request_cached_ids.setdefault(request.request_id, set()).add(input_id)

    # ---- freeing -----------------------------------------------------------------------------
    def free_encoder_input(self, request: Any, input_id: int) -> None:
        request_id = request.request_id
        mm_hash = request.mm_features[input_id].identifier
        ids = self.request_cached_ids.get(request_id)
        if ids is not None:
            ids.discard(input_id)
            if not ids:
                del self.request_cached_ids[request_id]
        entry = self.entries.get(mm_hash)
        if entry is None or request_id not in entry.refs:
            return
        # One reference per request covers every occurrence of the item in it (as vLLM's).
        if any(request.mm_features[i].identifier == mm_hash for i in ids or ()):
            return
        entry.refs.discard(request_id)
        if entry.refs:
            return
        if entry.written:  # kept for a later request with the same image
            self._retained[mm_hash] = entry.num_embeds
            self._retained_embeds += entry.num_embeds
            while self._retained_embeds > self.cache_size:
                self.release_oldest()
        else:  # allocated this step for a request preempted before it ran: never written
            self._drop([mm_hash])
            self.freed.append(mm_hash)

    def release_oldest(self) -> bool:
        """The oldest retained entry goes to the evictor (still cached: LRU with KV pages).
        False if none is retained."""
        if not self._retained:
            return False
        mm_hash, num_embeds = self._retained.popitem(last=False)
        self._retained_embeds -= num_embeds
        self.cache.release_item(mm_hash, keep=True)
        self.entries[mm_hash].held = False
        return True

    def free(self, request: Any) -> None:
        for input_id in list(self.get_cached_input_ids(request)):
            self.free_encoder_input(request, input_id)

    # ---- the step's output -------------------------------------------------------------------
    def get_freed_mm_hashes(self) -> list[str]:
        self._pending.clear()
        for mm_hash in self._created:  # reserved, but no request of this step kept it
            entry = self.entries.get(mm_hash)
            if entry is not None and entry.held and not entry.refs and not entry.written:
                self._drop([mm_hash])
                self.freed.append(mm_hash)
        self._created.clear()
        freed = [h for h in self.freed if h not in self.entries]
        self.freed = []
        return freed

    def get_manager_metadata(self) -> JengaVisionMetadata | None:
        if not self._announce:
            return None
        pages = {}
        for mm_hash, entry in self._announce.items():
            entry.written = True
            pages[mm_hash] = ([p.unit_id for p in entry.pages], entry.num_embeds)
        self._announce = {}
        return JengaVisionMetadata(pages)


# ---- worker side ---------------------------------------------------------------------------------
def backing_buffer(runner: Any) -> torch.Tensor:
    """The one int8 allocation behind every layer's view of a jenga KV cache."""
    config = runner.kv_cache_config
    context = runner.compilation_config.static_forward_context
    view = context[config.kv_cache_tensors[0].layers[0]].kv_cache
    if isinstance(view, (list, tuple)):  # Mamba layers bind a tuple of state views
        view = view[0]
    storage = view.untyped_storage()
    buffer = torch.empty(0, dtype=torch.int8, device=view.device)
    buffer.set_(storage, 0, (storage.nbytes(),), (1,))
    return buffer


class VisionPageStore:
    """A worker's encoder outputs in the pool's ``vision_embedding`` pages."""

    def __init__(self, runner: Any) -> None:
        plan = runner.kv_cache_config.plan
        (layout,) = [t for t in plan.types if POLICY_REGISTRY[t.spec.kind].holds_items]
        self.buffer = backing_buffer(runner)
        self.unit_bytes = plan.unit_bytes
        self.width, self.dtype = embedding_shape(runner.vllm_config)
        self.row_bytes = self.width * self.dtype.itemsize
        self.rows_per_page = layout.block_tokens
        self.pages: dict[str, tuple[list[int], int]] = {}
        self.outside: dict[str, torch.Tensor] = {}  # outputs of another shape (warned once)

    def write(self, mm_hash: str, output: torch.Tensor, metadata: Any) -> None:
        placed = metadata.pages.get(mm_hash) if isinstance(metadata, JengaVisionMetadata) else None
        rows = output.shape[0] if output.dim() == 2 else -1
        if (
            placed is None
            or output.dim() != 2
            or output.shape[1] != self.width
            or output.dtype != self.dtype
            or rows != placed[1]
        ):
            logger.warning_once(
                "jenga: an encoder output of shape %s (%s) is not %d embeddings of width %d "
                "(%s); such outputs stay outside the pool",
                tuple(output.shape),
                output.dtype,
                placed[1] if placed else -1,
                self.width,
                self.dtype,
            )
            self.outside[mm_hash] = output
            return
        unit_ids, _ = placed
        flat = output.detach().contiguous().view(-1).view(torch.int8)
        page_bytes = self.rows_per_page * self.row_bytes
        for i, unit in enumerate(unit_ids):
            chunk = flat[i * page_bytes : (i + 1) * page_bytes]
            start = unit * self.unit_bytes
            self.buffer[start : start + chunk.numel()].copy_(chunk)
        self.pages[mm_hash] = placed
        self.outside.pop(mm_hash, None)

    def read(self, mm_hash: str) -> torch.Tensor | None:
        placed = self.pages.get(mm_hash)
        if placed is None:
            return self.outside.get(mm_hash)
        unit_ids, num_embeds = placed
        page_bytes = self.rows_per_page * self.row_bytes
        parts = [
            self.buffer[u * self.unit_bytes : u * self.unit_bytes + page_bytes] for u in unit_ids
        ]
        flat = torch.cat(parts)[: num_embeds * self.row_bytes]
        return flat.view(self.dtype).view(num_embeds, self.width)

    def free(self, mm_hashes: list[str]) -> None:
        for mm_hash in mm_hashes:
            self.pages.pop(mm_hash, None)
            self.outside.pop(mm_hash, None)

    def clear(self) -> None:
        self.pages.clear()
        self.outside.clear()


_NO_STORE = object()


def store_of(runner: Any) -> VisionPageStore | None:
    """The runner's VisionPageStore when it serves a jenga pool with vision pages (made on first
    use, once the KV cache exists); None otherwise."""
    store = runner.__dict__.get("_jenga_vision_store", _NO_STORE)
    if store is not _NO_STORE:
        return store
    config = getattr(runner, "kv_cache_config", None)
    plan = getattr(config, "plan", None)
    if config is None or not getattr(runner, "kv_caches", None):
        return None  # not initialised yet (profiling): decide later
    has_pages = plan is not None and any(
        POLICY_REGISTRY[t.spec.kind].holds_items for t in plan.types
    )
    store = VisionPageStore(runner) if has_pages else None
    runner._jenga_vision_store = store
    return store
