"""The simulated peers, each behind the same small interface, through public APIs only.

jenga     the jenga core (``JengaCache`` on ``plan_layout`` of the model's layer types), driven
          as jenga's vLLM manager drives it: prefill stops at state checkpoints and the
          shared-prefix junction ``find_longest_hit`` reports, checkpoints exported where
          vLLM's worker exports them (its own ``is_mamba_prefill_checkpoint_valid``), the
          prompt length passed for the retention rule, the core's same-step guard
vllm      vLLM 0.32's real KVCacheManager (BlockPool, per-type managers, one global LRU) on
          the layout vLLM itself decides (jenga_vllm.tools.vllm_layout) — optionally with
          ``--prefix-match-unit`` (sub-block hits by copy-on-write) — driven with the chunk
          stops vLLM's scheduler makes in Mamba "align" mode
(the oracle peer lives in oracle.py)
"""

from __future__ import annotations

from dataclasses import dataclass, field

from benchmarks.sim.config import BLOCK_SIZE, PREFILL_CHUNK
from jenga_vllm.core.accounting import pool_usage
from jenga_vllm.core.cache import JengaCache
from jenga_vllm.core.layout import LayoutPlan
from jenga_vllm.core.prefix import block_hashes
from jenga_vllm.tools.model_shapes import ModelShapes


@dataclass(slots=True)
class Running:
    rid: str
    index: int
    tokens: list[int]  # prompt + output so far
    prompt_len: int
    length: int  # tokens whose KV is held
    final_len: int
    hashes: list = field(default_factory=list)
    handle: object = None
    images: tuple = ()  # (image id, embeddings) per image of the prompt (sim/vision.py)


class Manager:
    """What the simulated scheduler asks a KV manager."""

    name = "?"
    images = None  # the peer's encoder cache (sim/vision.py), when the trace has images
    checkpoint_tokens = 0  # Mamba state checkpoint interval (0: no state types)
    deferred = False  # the last refused admit starts from a state this engine step writes
    last_hit = 0  # prefix-hit tokens the last admit found (also when it refused)

    def new_step(self) -> None:
        """An engine step begins (vLLM: ``KVCacheManager.new_step_starts``)."""

    def admit(self, req: Running) -> int | None:
        """Allocate the prompt; returns prefix-hit tokens, or None (nothing changed) if short."""
        raise NotImplementedError

    def extend(self, req: Running, new_len: int) -> bool:
        raise NotImplementedError

    def finish(self, req: Running) -> None:
        raise NotImplementedError

    def held_bytes(self) -> int:
        raise NotImplementedError

    def padding_bytes(self) -> int:
        return 0

    @property
    def pool_bytes(self) -> int:
        raise NotImplementedError


def prefill_stops(
    prompt_len: int, hit: int, junction: int, align: int, tail_unit: int = 0
) -> list[int]:
    """Where prefill stops, as vLLM's scheduler splits it: every PREFILL_CHUNK tokens (chunked
    prefill), and for Mamba hybrids at the state block ``align`` (the next boundary when the
    hit is not on one, the last boundary inside the prompt, the block-floored shared-prefix
    junction) and, with sub-block hits (``tail_unit``), the prompt's last ``tail_unit``
    boundary."""
    stops = {prompt_len}
    stops.update(range(hit - hit % PREFILL_CHUNK + PREFILL_CHUNK, prompt_len, PREFILL_CHUNK))
    if not align:
        return sorted(stops)
    if hit % align:
        stops.add(min(prompt_len, hit - hit % align + align))
    last = (prompt_len - 1) // align * align
    if last > hit:
        stops.add(last)
    if tail_unit:
        tail = (prompt_len - 1) // tail_unit * tail_unit
        if hit < tail < prompt_len:
            stops.add(tail)
    floored = hit + (junction - hit) // align * align if junction > hit else 0
    if hit < floored < prompt_len:
        stops.add(floored)
    return sorted(stops)


class JengaManager(Manager):
    name = "jenga"

    def __init__(
        self,
        shapes: ModelShapes,
        plan: LayoutPlan,
        block_size: int = BLOCK_SIZE,
        with_images: bool = False,
    ):
        self.plan = plan
        self.block_size = block_size
        self.cache = JengaCache(plan, guards_same_step_states=True)
        if with_images:  # vision embeddings in the pool (plan has a vision_embedding type)
            from benchmarks.sim.vision import jenga_cache

            self.images = jenga_cache(self)
        self.checkpoint_tokens = block_size if shapes.is_hybrid_state else 0
        # vLLM's Mamba-2 mixer exports a prefill checkpoint from inside the forward pass; the
        # others (GDN, Mamba-1) make the scheduler split the prefill at the boundary.
        self.exports_checkpoints = any(x.exports_checkpoints for x in shapes.layers if x.is_state)

    @property
    def pool_bytes(self) -> int:
        return self.plan.usable_bytes

    def new_step(self) -> None:
        if self.images is not None:
            self.images.end_step()
        self.cache.new_step()

    def _checkpoint(self, start: int, end: int) -> bool:
        """Whether vLLM's worker exports the prefill checkpoint of the chunk [start, end)."""
        if not self.exports_checkpoints:
            return False
        from vllm.v1.kv_cache_interface import (
            get_mamba_prefill_checkpoint_position,
            is_mamba_prefill_checkpoint_valid,
        )

        bs = self.block_size
        position = get_mamba_prefill_checkpoint_position(end, bs, False)
        return is_mamba_prefill_checkpoint_valid(start, end, position, bs, bs, 1)

    def admit(self, req: Running) -> int | None:
        req.hashes = block_hashes(req.tokens, self.block_size)
        hit = self.cache.find_longest_hit(req.hashes, req.prompt_len - 1)
        self.last_hit = hit.num_tokens
        self.deferred = self.cache.starts_from_unwritten_state(hit)
        if self.deferred:
            return None  # an engine step later, as the engine's manager refuses it
        stops = prefill_stops(
            req.prompt_len, hit.num_tokens, hit.junction_tokens, self.checkpoint_tokens
        )
        images = self.images if req.images else None
        hit_pages = [p for per in hit.pages for p in per]
        if images is not None and not images.before(req.rid, req.images, hit_pages):
            return None
        start = hit.num_tokens
        for i, stop in enumerate(stops):
            new = self.cache.allocate(
                req.rid,
                stop,
                hit if i == 0 else None,
                checkpoint=self._checkpoint(start, stop),
                prompt_tokens=req.prompt_len,
            )
            if new is None:
                if i:
                    self.cache.free(req.rid)
                if images is not None:
                    images.abandon(req.rid)
                return None
            self.cache.cache_blocks(req.rid, req.hashes, stop)
            self.cache.release_unneeded(req.rid, stop)
            start = stop
        if images is not None:
            images.commit(req.rid)
        req.length = req.prompt_len
        return hit.num_tokens

    def extend(self, req: Running, new_len: int) -> bool:
        if self.cache.allocate(req.rid, new_len) is None:
            return False
        bs = self.block_size
        full = new_len // bs
        if full > len(req.hashes):
            parent = {"parent": req.hashes[-1]} if req.hashes else {}
            req.hashes.extend(
                block_hashes(req.tokens[len(req.hashes) * bs : full * bs], bs, **parent)
            )
        self.cache.cache_blocks(req.rid, req.hashes, new_len)
        self.cache.release_unneeded(req.rid, new_len)
        req.length = new_len
        return True

    def finish(self, req: Running) -> None:
        self.cache.free(req.rid)
        if self.images is not None and req.images:
            self.images.finish(req.rid, req.images)

    def held_bytes(self) -> int:
        """Used small pages plus the EMPTY slots stranded in large pages that hold them."""
        return sum(t.used_bytes + t.stranded_bytes for t in pool_usage(self.cache).types)

    def padding_bytes(self) -> int:
        return sum(t.used_padding_bytes for t in pool_usage(self.cache).types)


class VllmManager(Manager):
    """vLLM 0.32's own KVCacheManager on vLLM's own layout decision."""

    def __init__(self, layout, name: str, with_images: bool = False) -> None:
        from vllm.sampling_params import SamplingParams
        from vllm.utils.hashing import get_hash_fn_by_name
        from vllm.v1.core.kv_cache_utils import get_request_block_hasher, init_none_hash

        self.name = name
        self.layout = layout
        self.manager = layout.make_manager()
        hash_fn = get_hash_fn_by_name("sha256")
        init_none_hash(hash_fn)
        self.hasher = get_request_block_hasher(layout.hash_block_size, hash_fn)
        self.params = SamplingParams(max_tokens=1 << 20)
        mamba = [g for g in layout.groups if g.kind == "MambaSpec"]
        self.checkpoint_tokens = mamba[0].block_size if mamba else 0
        partial = layout.hash_block_size < layout.scheduler_block_size
        self.tail_unit = layout.hash_block_size if mamba and partial else 0
        self.padding_per_block = sum(
            (g.page_bytes - g.real_page_bytes) * g.num_layers for g in layout.groups
        ) // max(1, max(g.num_layers for g in layout.groups))
        self._retained: list = []  # copy-on-write endpoints the last step kept alive
        if with_images:  # vLLM's encoder cache, its own budget beside the pool
            from benchmarks.sim.vision import stock_cache

            self.images = stock_cache()

    @property
    def pool_bytes(self) -> int:
        return (self.layout.num_blocks - 1) * self.layout.block_bytes

    def new_step(self) -> None:
        if self.images is not None:
            self.images.end_step()
        # As the scheduler does: blocks kept for last step's copies are freed after it ran.
        self.manager.block_pool.free_blocks(self._retained)
        self.manager.new_step_starts()
        _, self._retained = self.manager.take_kv_cache_block_copies()

    def admit(self, req: Running) -> int | None:
        from vllm.v1.request import Request

        vreq = Request(
            req.rid, req.tokens[: req.prompt_len], self.params, None, block_hasher=self.hasher
        )
        blocks, hit, junction = self.manager.get_computed_blocks(vreq)
        vreq.shared_prefix_boundary = junction  # as Scheduler.schedule does
        self.last_hit = hit
        self.deferred = hit > 0 and self._starts_from_unwritten_state(vreq, blocks, hit)
        if self.deferred:
            return None
        stops = prefill_stops(req.prompt_len, hit, junction, self.checkpoint_tokens, self.tail_unit)
        images = self.images if req.images else None
        if images is not None and not images.before(req.rid, req.images):
            return None
        computed = hit
        for i, stop in enumerate(stops):
            new = self.manager.allocate_slots(
                vreq,
                stop - computed,
                num_new_computed_tokens=hit if i == 0 else 0,
                new_computed_blocks=blocks if i == 0 else None,
            )
            if new is None:
                if i:
                    self.manager.free(vreq)
                if images is not None:
                    images.abandon(req.rid)
                return None
            vreq.num_computed_tokens = stop
            computed = stop
        if images is not None:
            images.commit(req.rid)
        req.handle = vreq
        req.length = req.prompt_len
        return hit

    def _starts_from_unwritten_state(self, vreq, blocks, hit: int) -> bool:
        """vLLM's MambaManager answers "more blocks than the pool has" for a hit whose state
        was cached this step (the scheduler's allocation then fails and it waits a step)."""
        needed = self.manager.coordinator.get_num_blocks_to_allocate(
            vreq.request_id,
            hit + 1,
            blocks.blocks,
            0,
            hit,
            hit,
            hit + 1,
            apply_admission_cap=True,
        )
        return needed > self.manager.block_pool.num_gpu_blocks

    def extend(self, req: Running, new_len: int) -> bool:
        vreq = req.handle
        if self.manager.allocate_slots(vreq, new_len - req.length) is None:
            return False
        vreq.append_output_token_ids(req.tokens[req.length : new_len])
        vreq.num_computed_tokens = new_len
        req.length = new_len
        return True

    def finish(self, req: Running) -> None:
        self.manager.free(req.handle)
        if self.images is not None and req.images:
            self.images.finish(req.rid, req.images)

    def _used_blocks(self) -> int:
        return self.layout.num_blocks - 1 - self.manager.block_pool.get_num_free_blocks()

    def held_bytes(self) -> int:
        return self._used_blocks() * self.layout.block_bytes

    def padding_bytes(self) -> int:
        return self._used_blocks() * self.padding_per_block
