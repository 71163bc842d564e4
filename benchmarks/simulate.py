"""Trace-driven KV-cache simulation on real model shapes: jenga vs vLLM 0.32 vs uniform vs oracle.

For each model (benchmarks/model_configs) and workload, one seeded synthetic trace is replayed by
the same simple scheduler through four KV managers with the same KV byte budget:

    jenga     the jenga core (JengaCache on plan_layout of the model's layer types)
    vllm      vLLM 0.32's real KVCacheManager (BlockPool, per-type managers, one global LRU) on the
              layout vLLM itself decides (jenga_vllm.tools.vllm_layout: its grouping, page unification,
              Mamba block alignment, num_blocks) — not a re-derivation
    uniform   the same with the hybrid manager disabled (uniform paging); Mamba hybrids cannot run so
    oracle    admits while the exact bytes every running request needs fit (no pages, no caching)

Scheduler (identical for all): FCFS; each step every running request decodes ``DECODE_STRIDE``
tokens (one block; memory is managed at block granularity so this only coarsens time), then
waiting requests are admitted while their prompt fits (prefill ≤ ``PREFILL_BUDGET`` tokens per
step). When a running request cannot grow, the newest running request is preempted (freed,
re-queued, recomputed later). Mamba hybrids split prefill at the manager's state-checkpoint
boundaries as vLLM's scheduler does in "align" mode (the last boundary inside the prompt and the
shared-prefix junction), at jenga's 16-token interval vs vLLM's inflated attention block. A
request may not start from a Mamba state cached in the current engine step (the engine is still
writing it; vLLM's MambaManager refuses, and so does the jenga manager here): admission stops and
resumes one engine step later. A simulated step stands for DECODE_STRIDE engine steps, so up to
DECODE_STRIDE - 1 such waits fit in one; charging each a whole step would stall both managers'
queues 16x longer than an engine does. A request's prefix hit is counted once, at its first
admission, capped at what its first try found.

Workloads (seeded; tokens are random ids so only deliberate sharing produces hits):
    chat        ShareGPT-like: prompt ~ lognormal(median 180, σ 1.0) in [8, 4096], output ~
                lognormal(median 200, σ 0.8) in [8, 2048]; no shared prefix
    longdoc     QA over long documents: one of 16 documents (Zipf 1.1) of 8k–32k tokens + a
                32–128-token question; output 64–512 (models with ≥ 40k context only)
    multiturn   sessions of 2–6 turns; each session starts with one of 4 system prompts of
                300–1,000 tokens; turn k+1 = turn k's prompt + its answer + a new 40–300-token
                user message, sent when turn k finishes; answers 40–400 tokens
    sysprompt   single-turn requests, each = one of 5 shared system prompts of 300–1,000 tokens
                (Zipf 1.0) + a unique user message ~ lognormal(median 180, σ 1.0) in [8, 2048];
                output as chat. Requests arrive over time (Poisson, ``SYSPROMPT_LOAD`` × the rate
                whose unshared KV need fills the pool), so the pool is busy but not one deep
                queue from step 0: the shared prompts' cached pages compete with running ones
    multimodal  (vision models) a 64-token system prompt + 1–2 images (Gemma-4: 280 tokens,
                Llama-4: 144·(tiles+1), tiles 1–4) from a pool of 64 (Zipf 1.2) + a 16–96-token
                question; output 32–256

Metrics per (model, workload, manager): max concurrent running requests, average and peak
utilization (bytes the running requests need ÷ usable pool bytes), waste (bytes held − bytes
needed at the peak) with its padding part, prefix-hit rate (hit ÷ prompt tokens), preemptions.
Requests wait from their ``arrival`` step (0 unless the workload says) or, in a session, until the
previous turn finishes.
Writes benchmarks/results/simulate.md and PNG plots.

Usage: python benchmarks/simulate.py [--quick] [--kv-gib 40] [--models a,b] [--workloads x,y]
"""

from __future__ import annotations

import argparse
import math
import random
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from jenga_vllm.core.cache import JengaCache  # noqa: E402
from jenga_vllm.core.layout import LayoutPlan  # noqa: E402
from jenga_vllm.core.prefix import block_hashes  # noqa: E402
from jenga_vllm.tools.cli import plan_for_budget  # noqa: E402
from jenga_vllm.tools.model_shapes import ModelShapes, live_tokens, load_model_shapes  # noqa: E402

CONFIG_DIR = REPO / "benchmarks" / "model_configs"
RESULTS_DIR = REPO / "benchmarks" / "results"
BLOCK_SIZE = 16
DECODE_STRIDE = 16
PREFILL_CHUNK = 8192  # tokens per prefill chunk of one request (vLLM max_num_batched_tokens)
PREFILL_BUDGET = 1 << 18  # large: memory, not the prefill rate, should bound concurrency
GIB = 1 << 30

MODELS = [
    "llama-3.1-8b-instruct",
    "gemma-2-9b",
    "gpt-oss-20b",
    "gpt-oss-120b",
    "gemma-4-26b-a4b",
    "gemma-4-31b-it-nvfp4",
    "llama-4-scout-17b-16e-instruct",
    "jamba-1.5-mini",
    "nemotron-h-8b-base-8k",
    "nemotron-h-56b-base-8k",
    "qwen3-next-80b-a3b-thinking",
]
QUICK_MODELS = ["llama-3.1-8b-instruct", "gemma-4-26b-a4b", "nemotron-h-8b-base-8k"]
WORKLOADS = ["chat", "chat1k", "longdoc", "longctx", "multiturn", "sysprompt", "multimodal"]
LONG_CONTEXT = 131_072
SYSPROMPT_LOAD = 1.0  # offered load of the sysprompt workload, as a fraction of the pool


# ---- traces ----------------------------------------------------------------------------------
@dataclass(slots=True)
class TraceRequest:
    """One request of a trace. ``after`` = index of the request that must finish first;
    ``arrival`` = the scheduler step from which it waits."""

    prompt: list[int]
    output: list[int]
    after: int | None = None
    arrival: int = 0


def _tokens(rng: random.Random, n: int) -> list[int]:
    return [rng.randrange(1, 1 << 30) for _ in range(n)]


def _lognormal(rng: random.Random, median: float, sigma: float, lo: int, hi: int) -> int:
    return int(min(hi, max(lo, rng.lognormvariate(math.log(median), sigma))))


def _zipf(rng: random.Random, n: int, s: float) -> int:
    weights = [1.0 / (i + 1) ** s for i in range(n)]
    return rng.choices(range(n), weights)[0]


def make_trace(
    workload: str,
    shapes: ModelShapes,
    seed: int,
    pool_bytes: int,
    max_requests: int,
    max_model_len: int,
    demand_factor: float = 2.5,
) -> list[TraceRequest] | None:
    """A seeded trace whose total need is ≈ demand_factor × the pool (None: not applicable)."""
    rng = random.Random(f"{workload}-{seed}")
    trace: list[TraceRequest] = []
    demand = 0

    def add(prompt: list[int], output: list[int], after: int | None = None) -> None:
        nonlocal demand
        trace.append(TraceRequest(prompt, output, after))
        demand += shapes.needed_bytes(len(prompt) + len(output))

    if workload == "chat":
        while demand < demand_factor * pool_bytes and len(trace) < max_requests:
            p = _lognormal(rng, 180, 1.0, 8, 4096)
            o = _lognormal(rng, 200, 0.8, 8, 2048)
            add(_tokens(rng, p), _tokens(rng, o))
    elif workload == "chat1k":
        if not shapes.is_hybrid_state:
            return None
        while demand < demand_factor * pool_bytes and len(trace) < max_requests:
            p = _lognormal(rng, 180, 1.0, 8, 768)
            o = _lognormal(rng, 150, 0.8, 8, 256)
            add(_tokens(rng, p), _tokens(rng, o))
    elif workload == "longctx":
        if max_model_len < LONG_CONTEXT:
            return None
        while demand < demand_factor * pool_bytes and len(trace) < max_requests:
            p = rng.randint(96_000, LONG_CONTEXT - 1024)
            add(_tokens(rng, p), _tokens(rng, rng.randint(128, 1024)))
    elif workload == "longdoc":
        if max_model_len < 33_000:
            return None
        docs = [_tokens(rng, rng.randint(8192, 32768)) for _ in range(16)]
        while demand < demand_factor * pool_bytes and len(trace) < max_requests:
            doc = docs[_zipf(rng, len(docs), 1.1)]
            add(doc + _tokens(rng, rng.randint(32, 128)), _tokens(rng, rng.randint(64, 512)))
    elif workload == "multiturn":
        systems = [_tokens(rng, rng.randint(300, 1000)) for _ in range(4)]
        limit = max_model_len - 512
        while demand < demand_factor * pool_bytes and len(trace) < max_requests:
            context = list(systems[rng.randrange(len(systems))])
            prev = None
            for _turn in range(rng.randint(2, 6)):
                prompt = context + _tokens(rng, rng.randint(40, 300))
                output = _tokens(rng, rng.randint(40, 400))
                if len(prompt) + len(output) > limit:
                    break
                add(prompt, output, prev)
                prev = len(trace) - 1
                context = prompt + output
    elif workload == "sysprompt":
        systems = [_tokens(rng, rng.randint(300, 1000)) for _ in range(5)]
        while demand < demand_factor * pool_bytes and len(trace) < max_requests:
            system = systems[_zipf(rng, len(systems), 1.0)]
            user = _lognormal(rng, 180, 1.0, 8, 2048)
            add(system + _tokens(rng, user), _tokens(rng, _lognormal(rng, 200, 0.8, 8, 2048)))
        _poisson_arrivals(rng, trace, shapes, SYSPROMPT_LOAD * pool_bytes)
    elif workload == "multimodal":
        if not shapes.is_multimodal:
            return None
        system = _tokens(rng, 64)
        if shapes.model_type == "gemma4":
            sizes = [280] * 64
        else:
            sizes = [144 * (rng.randint(1, 4) + 1) for _ in range(64)]
        images = [_tokens(rng, n) for n in sizes]
        while demand < demand_factor * pool_bytes and len(trace) < max_requests:
            prompt = list(system)
            for _ in range(rng.randint(1, 2)):
                prompt += images[_zipf(rng, len(images), 1.2)]
            prompt += _tokens(rng, rng.randint(16, 96))
            add(prompt, _tokens(rng, rng.randint(32, 256)))
    else:
        raise ValueError(f"unknown workload {workload!r}")
    return trace


def _poisson_arrivals(
    rng: random.Random, trace: list[TraceRequest], shapes: ModelShapes, load_bytes: int
) -> None:
    """Poisson arrivals at the rate at which the running requests, each holding its unshared need
    (prompt + half its output, no prefix sharing) for its life (one prefill step + one step per
    decode stride), hold ``load_bytes`` on average (Little's law: rate × E[need × life])."""
    held = sum(
        shapes.needed_bytes(len(r.prompt) + len(r.output) // 2)
        * (1 + math.ceil(len(r.output) / DECODE_STRIDE))
        for r in trace
    )
    per_step = load_bytes * len(trace) / held
    clock = 0.0
    for r in trace:
        clock += rng.expovariate(per_step)
        r.arrival = int(clock)


# ---- managers --------------------------------------------------------------------------------
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


class Manager:
    """What the simulated scheduler asks a KV manager."""

    name = "?"
    checkpoint_tokens = 0  # Mamba state checkpoint interval (0: no state types)
    deferred = False  # the last refused admit starts from a state this engine step writes
    last_hit = 0  # prefix-hit tokens the last admit found (also when it refused)

    def new_step(self) -> None:
        """A scheduler step begins (vLLM: ``KVCacheManager.new_step_starts``)."""

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


def _prefill_stops(prompt_len: int, hit: int, junction: int, align: int) -> list[int]:
    """Where prefill stops: every PREFILL_CHUNK tokens (chunked prefill, so out-of-window pages
    are released on the way) and, for Mamba hybrids, on state-checkpoint boundaries (the last
    one inside the prompt and the shared-prefix junction), as vLLM's scheduler does."""
    stops = {prompt_len}
    stops.update(range(hit - hit % PREFILL_CHUNK + PREFILL_CHUNK, prompt_len, PREFILL_CHUNK))
    if not align:
        return sorted(stops)
    last = (prompt_len - 1) // align * align
    if last > hit:
        stops.add(last)
    floored = junction // align * align
    if hit < floored < prompt_len:
        stops.add(floored)
    return sorted(stops)


class JengaManager(Manager):
    name = "jenga"

    def __init__(self, shapes: ModelShapes, plan: LayoutPlan) -> None:
        self.plan = plan
        self.cache = JengaCache(self.plan)
        self.checkpoint_tokens = BLOCK_SIZE if shapes.is_hybrid_state else 0
        self.full_types = [i for i, t in enumerate(self.plan.types) if t.spec.kind == "full"]
        self.state_types = [i for i, t in enumerate(self.plan.types) if not t.is_token_indexed]
        self.states_this_step: set = set()  # hashes of states the running step writes

    @property
    def pool_bytes(self) -> int:
        return self.plan.usable_large_pages * self.plan.large_page_bytes

    def new_step(self) -> None:
        self.states_this_step.clear()

    def _cache_blocks(self, req: Running, num_tokens: int) -> None:
        """``cache_blocks``, noting the states it names: the engine writes them during this step,
        so no request may start from one before the next (vLLM's MambaManager rule)."""
        if not self.state_types:
            self.cache.cache_blocks(req.rid, req.hashes, num_tokens)
            return
        pages = self.cache.requests[req.rid]
        before = [pages.cached_upto[t] for t in self.state_types]
        self.cache.cache_blocks(req.rid, req.hashes, num_tokens)
        for t, lo in zip(self.state_types, before, strict=True):
            for page in pages.tables[t][lo : pages.cached_upto[t]]:
                if page is not None and page.block_hash is not None:
                    self.states_this_step.add(page.block_hash)

    def _starts_from_unwritten_state(self, pages: tuple) -> bool:
        return any(
            pages[t] and pages[t][-1].block_hash in self.states_this_step for t in self.state_types
        )

    def _junction(self, hashes: list) -> int:
        """Longest prefix cached in the full-attention types (Marconi-style junction)."""
        if not self.full_types:
            return 0
        index = self.cache.index.by_type[self.full_types[0]]
        n = 0
        while n < len(hashes) and hashes[n] in index:
            n += 1
        return n * BLOCK_SIZE

    def admit(self, req: Running) -> int | None:
        req.hashes = block_hashes(req.tokens, BLOCK_SIZE)
        hit = self.cache.find_longest_hit(req.hashes, req.prompt_len - 1)
        self.last_hit = hit.num_tokens
        self.deferred = bool(hit.num_tokens) and self._starts_from_unwritten_state(hit.pages)
        if self.deferred:
            return None  # an engine step later, as vLLM's MambaManager rules
        stops = _prefill_stops(
            req.prompt_len, hit.num_tokens, self._junction(req.hashes), self.checkpoint_tokens
        )
        if self.cache.allocate(req.rid, stops[0], hit) is None:
            return None
        for stop in stops:
            if self.cache.allocate(req.rid, stop) is None:
                self.cache.free(req.rid)
                return None
            self._cache_blocks(req, stop)
            self.cache.release_unneeded(req.rid, stop)
        req.length = req.prompt_len
        return hit.num_tokens

    def extend(self, req: Running, new_len: int) -> bool:
        if self.cache.allocate(req.rid, new_len) is None:
            return False
        full = new_len // BLOCK_SIZE
        if full > len(req.hashes):
            parent = req.hashes[-1] if req.hashes else None
            tail = block_hashes(
                req.tokens[len(req.hashes) * BLOCK_SIZE : full * BLOCK_SIZE],
                BLOCK_SIZE,
                **({"parent": parent} if parent is not None else {}),
            )
            req.hashes.extend(tail)
        self._cache_blocks(req, new_len)
        self.cache.release_unneeded(req.rid, new_len)
        req.length = new_len
        return True

    def finish(self, req: Running) -> None:
        self.cache.free(req.rid)

    def held_bytes(self) -> int:
        """Used small pages plus the EMPTY slots stranded in large pages that hold them."""
        return sum(
            (large.num_used + len(large.empty_slots))
            * self.plan.types[large.type_idx].small_page_bytes
            for large in self.cache.allocator.large_pages[1:]
            if large.num_used
        )

    def padding_bytes(self) -> int:
        return sum(
            large.num_used * self.plan.types[large.type_idx].padding_bytes
            for large in self.cache.allocator.large_pages[1:]
            if large.num_used
        )


class VllmManager(Manager):
    """vLLM 0.32's own KVCacheManager on vLLM's own layout decision."""

    def __init__(self, layout, name: str) -> None:
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
        self.padding_per_block = sum(
            (g.page_bytes - g.real_page_bytes) * g.num_layers for g in layout.groups
        ) // max(1, max(g.num_layers for g in layout.groups))

    @property
    def pool_bytes(self) -> int:
        return (self.layout.num_blocks - 1) * self.layout.block_bytes

    def new_step(self) -> None:
        self.manager.new_step_starts()

    def admit(self, req: Running) -> int | None:
        from vllm.v1.request import Request

        vreq = Request(
            req.rid, req.tokens[: req.prompt_len], self.params, None, block_hasher=self.hasher
        )
        blocks, hit, junction = self.manager.get_computed_blocks(vreq)
        vreq.shared_prefix_boundary = junction  # as Scheduler.schedule does
        self.last_hit = hit
        stops = _prefill_stops(req.prompt_len, hit, junction, self.checkpoint_tokens)
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
                self.deferred = i == 0 and self._starts_from_unwritten_state(blocks)
                return None
            vreq.num_computed_tokens = stop
            computed = stop
        req.handle = vreq
        req.length = req.prompt_len
        return hit

    def _starts_from_unwritten_state(self, blocks) -> bool:
        """vLLM's MambaManager refuses a hit whose last state block was cached this step."""
        managers = self.manager.coordinator.single_type_managers
        return any(
            group and group[-1].block_hash in managers[g].cached_blocks_this_step
            for g, group in enumerate(blocks.blocks)
            if hasattr(managers[g], "cached_blocks_this_step")
        )

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

    def _used_blocks(self) -> int:
        return self.layout.num_blocks - 1 - self.manager.block_pool.get_num_free_blocks()

    def held_bytes(self) -> int:
        return self._used_blocks() * self.layout.block_bytes

    def padding_bytes(self) -> int:
        return self._used_blocks() * self.padding_per_block


class ExactNeed:
    """Bytes the running requests need exactly. Per attention layer type, a 16-token block that
    lies wholly inside a request's live range (all tokens for full attention, the window for
    sliding window, the current chunk for chunked local) is counted once across the running
    requests that share it (same prefix hash), as a prefix-sharing oracle would hold it; live
    tokens outside whole blocks and Mamba states are counted per request.
    """

    def __init__(self, shapes: ModelShapes) -> None:
        self.shapes = shapes
        state, terms = shapes._need_terms
        self.state_bytes = state
        self.terms = terms  # (kind, window, chunk, bytes per token) per attention type
        self.refs: dict[tuple[int, int], int] = {}
        self.shared_total = 0
        self.hashes: dict[str, list[int]] = {}
        self.ranges: dict[str, list[tuple[int, int]]] = {}  # per type: counted blocks [lo, hi)
        self.private: dict[str, int] = {}
        self.private_total = 0
        self.lengths: dict[str, int] = {}

    @property
    def total(self) -> int:
        return self.private_total + self.shared_total

    def _layout(self, length: int) -> tuple[list[tuple[int, int]], int]:
        """Whole live blocks per type and the private bytes, for a request of ``length``."""
        ranges = []
        private = self.state_bytes
        for kind, window, chunk, per_token in self.terms:
            live = live_tokens(kind, length, window, chunk)
            start = length - live
            lo = -(-start // BLOCK_SIZE)
            hi = length // BLOCK_SIZE
            if hi < lo:
                hi = lo
            ranges.append((lo, hi))
            private += (live - (hi - lo) * BLOCK_SIZE) * per_token
        return ranges, private

    def cost_of(self, req: Running, length: int) -> int:
        """How much ``total`` grows if ``req`` holds ``length`` tokens (nothing changes)."""
        hashes = _extend_hashes(req.tokens, self.hashes.get(req.rid, []), length)
        ranges, private = self._layout(length)
        old = self.ranges.get(req.rid)
        delta = private - self.private.get(req.rid, 0)
        for t, (lo, hi) in enumerate(ranges):
            per_block = self.terms[t][3] * BLOCK_SIZE
            old_lo, old_hi = old[t] if old else (0, 0)
            for i in _outside(lo, hi, old_lo, old_hi):
                if (t, hashes[i]) not in self.refs:
                    delta += per_block
            for i in _outside(old_lo, old_hi, lo, hi):
                if self.refs[(t, hashes[i])] == 1:
                    delta -= per_block
        return delta

    def set(self, req: Running, length: int) -> None:
        if self.lengths.get(req.rid) == length:
            return
        self.lengths[req.rid] = length
        hashes = self.hashes[req.rid] = _extend_hashes(
            req.tokens, self.hashes.get(req.rid, []), length
        )
        ranges, private = self._layout(length)
        old = self.ranges.get(req.rid)
        for t, (lo, hi) in enumerate(ranges):
            old_lo, old_hi = old[t] if old else (0, 0)
            for i in _outside(lo, hi, old_lo, old_hi):
                self._ref(t, hashes[i], +1)
            for i in _outside(old_lo, old_hi, lo, hi):
                self._ref(t, hashes[i], -1)
        self.ranges[req.rid] = ranges
        self.private_total += private - self.private.get(req.rid, 0)
        self.private[req.rid] = private

    def _ref(self, t: int, key: int, change: int) -> None:
        count = self.refs.get((t, key), 0) + change
        if count == 0:
            del self.refs[(t, key)]
            self.shared_total -= self.terms[t][3] * BLOCK_SIZE
        else:
            if count == 1 and change > 0:
                self.shared_total += self.terms[t][3] * BLOCK_SIZE
            self.refs[(t, key)] = count

    def remove(self, req: Running) -> None:
        hashes = self.hashes.pop(req.rid, [])
        for t, (lo, hi) in enumerate(self.ranges.pop(req.rid, [])):
            for i in range(lo, hi):
                self._ref(t, hashes[i], -1)
        self.private_total -= self.private.pop(req.rid, 0)
        self.lengths.pop(req.rid, None)


def _outside(lo: int, hi: int, other_lo: int, other_hi: int):
    """Indices of [lo, hi) that are not in [other_lo, other_hi)."""
    yield from range(lo, min(hi, other_lo))
    yield from range(max(lo, other_hi), hi)


def _extend_hashes(tokens: list[int], have: list[int], length: int) -> list[int]:
    full = length // BLOCK_SIZE
    if full <= len(have):
        return have
    start = len(have) * BLOCK_SIZE
    extra = {"parent": have[-1]} if have else {}
    return have + block_hashes(tokens[start : full * BLOCK_SIZE], BLOCK_SIZE, **extra)


class OracleManager(Manager):
    """Admits while the exact bytes every running request needs fit in the budget (ExactNeed:
    shared prefixes of running requests once, no pages, no cache of finished requests)."""

    name = "oracle"

    def __init__(self, shapes: ModelShapes, pool_bytes: int) -> None:
        self.need = ExactNeed(shapes)
        self._pool = pool_bytes

    @property
    def pool_bytes(self) -> int:
        return self._pool

    def _set(self, req: Running, length: int) -> bool:
        if self.need.total + self.need.cost_of(req, length) > self._pool:
            return False
        self.need.set(req, length)
        req.length = length
        return True

    def admit(self, req: Running) -> int | None:
        return 0 if self._set(req, req.prompt_len) else None

    def extend(self, req: Running, new_len: int) -> bool:
        return self._set(req, new_len)

    def finish(self, req: Running) -> None:
        self.need.remove(req)

    def held_bytes(self) -> int:
        return self.need.total


# ---- the simulated scheduler -----------------------------------------------------------------
@dataclass
class RunResult:
    manager: str
    max_running: int = 0
    avg_util: float = 0.0
    peak_util: float = 0.0
    hit_tokens: int = 0
    prompt_tokens: int = 0
    preemptions: int = 0
    steps: int = 0
    waste_bytes: int = 0  # held − needed at the peak-running step
    padding_bytes: int = 0
    completed: int = 0
    dropped: int = 0  # requests that could not fit even alone
    deferrals: int = 0  # admissions put off by an engine step: their state was being written
    util_series: list[float] = field(default_factory=list)

    @property
    def hit_rate(self) -> float:
        return self.hit_tokens / self.prompt_tokens if self.prompt_tokens else 0.0


def run_trace(
    manager: Manager,
    trace: list[TraceRequest],
    shapes: ModelShapes,
    kv_bytes: int,
    max_steps: int = 200_000,
) -> RunResult:
    """Replay ``trace``; utilization is measured against the common budget ``kv_bytes``."""
    result = RunResult(manager.name)
    pool = kv_bytes
    need = ExactNeed(shapes)
    waste_taken_at = 0
    waiting: deque[int] = deque()
    arrivals = sorted((r.arrival, i) for i, r in enumerate(trace) if r.after is None)
    next_arrival = 0
    children: dict[int, list[int]] = {}
    for i, r in enumerate(trace):
        if r.after is not None:
            children.setdefault(r.after, []).append(i)
    running: list[Running] = []
    attempt = [0] * len(trace)
    first_hit: list[int | None] = [None] * len(trace)  # the hit its first admission try found
    counted = [False] * len(trace)
    util_sum = 0.0
    step = 0
    done = 0
    while (waiting or running or next_arrival < len(arrivals)) and step < max_steps:
        step += 1
        manager.new_step()
        while next_arrival < len(arrivals) and arrivals[next_arrival][0] < step:
            waiting.append(arrivals[next_arrival][1])
            next_arrival += 1
        # decode: every running request grows by one stride
        i = 0
        while i < len(running):
            req = running[i]
            new_len = min(req.length + DECODE_STRIDE, req.final_len)
            if manager.extend(req, new_len):
                i += 1
                continue
            victim = running.pop()  # newest
            manager.finish(victim)
            need.remove(victim)
            result.preemptions += 1
            waiting.appendleft(victim.index)
            if victim is req:
                continue
        finished = [r for r in running if r.length >= r.final_len]
        for req in finished:
            manager.finish(req)
            need.remove(req)
            done += 1
            waiting.extend(children.get(req.index, ()))
        running = [r for r in running if r.length < r.final_len]
        # admit
        budget = PREFILL_BUDGET
        engine_steps = DECODE_STRIDE - 1  # the engine steps this step stands for, after the first
        while waiting:
            idx = waiting[0]
            tr = trace[idx]
            if budget < PREFILL_BUDGET and len(tr.prompt) > budget:
                break  # the first admission of a step may exceed the budget (chunked prefill)
            attempt[idx] += 1
            tokens = tr.prompt + tr.output
            req = Running(f"r{idx}.{attempt[idx]}", idx, tokens, len(tr.prompt), 0, len(tokens))
            hit = manager.admit(req)
            if first_hit[idx] is None:
                first_hit[idx] = manager.last_hit
            if hit is None and manager.deferred and engine_steps:
                # It starts from a state the current engine step writes: the scheduler stops
                # here and admits it one engine step later (a sim step is DECODE_STRIDE of them).
                engine_steps -= 1
                result.deferrals += 1
                manager.new_step()
                continue
            if hit is None:
                if not running and not manager.deferred:  # cannot fit even alone: drop it
                    waiting.popleft()
                    done += 1
                    result.dropped += 1
                break
            waiting.popleft()
            budget -= len(tr.prompt) - hit
            if not counted[idx]:
                # Counted once, at its first admission, like vLLM's stats (preempted re-runs are
                # not); at most the hit its first try found: a try refused mid-prefill cached
                # its own first chunks, which a real scheduler would have kept computing.
                counted[idx] = True
                result.hit_tokens += min(hit, first_hit[idx])
                result.prompt_tokens += len(tr.prompt)
            running.append(req)
        for r in running:
            need.set(r, r.length)
        needed = need.total
        util = needed / pool if pool else 0.0
        util_sum += util
        result.util_series.append(util)
        result.peak_util = max(result.peak_util, util)
        if len(running) > result.max_running:
            result.max_running = len(running)
            if result.max_running >= waste_taken_at * 1.02:  # census costs O(pool pages)
                waste_taken_at = result.max_running
                result.waste_bytes = manager.held_bytes() - needed
                result.padding_bytes = manager.padding_bytes()
    result.steps = step
    result.avg_util = util_sum / step if step else 0.0
    result.completed = done
    return result


# ---- driver ----------------------------------------------------------------------------------
@dataclass
class Case:
    model: str
    workload: str
    results: dict[str, RunResult]
    note: str = ""


def build_managers(
    shapes: ModelShapes, kv_bytes: int, max_model_len: int
) -> tuple[list[Callable[[], Manager]], list[str]]:
    from jenga_vllm.tools.vllm_layout import VllmLayoutError, vllm_layout

    plan = plan_for_budget(shapes, BLOCK_SIZE, kv_bytes, max_model_len)
    notes = [f"jenga: {plan.describe()}"]
    factories: list[Callable[[], Manager]] = [lambda: JengaManager(shapes, plan)]
    default = vllm_layout(shapes, kv_bytes, max_model_len=max_model_len)
    factories.append(lambda: VllmManager(default, "vllm"))
    notes.append(default.describe())
    try:
        off = vllm_layout(shapes, kv_bytes, max_model_len=max_model_len, hma="off")
        factories.append(lambda: VllmManager(off, "uniform"))
    except VllmLayoutError as e:
        notes.append(f"uniform paging (HMA off) refused by vLLM: {str(e)[:90]}")
    factories.append(lambda: OracleManager(shapes, kv_bytes))
    return factories, notes


def simulate(
    models: list[str],
    workloads: list[str],
    kv_bytes: int,
    max_requests: int,
    seed: int = 0,
    progress: bool = True,
    max_model_len: int = 40_960,
) -> list[Case]:
    from tqdm import tqdm

    cases: list[Case] = []
    jobs = [(m, w) for m in models for w in workloads]
    bar = tqdm(jobs, disable=not progress, desc="simulate", unit="case")
    layouts: dict[tuple[str, int], tuple] = {}
    failures.clear()
    for model, workload in bar:
        bar.set_postfix_str(f"{model}/{workload}")
        shapes = load_model_shapes(CONFIG_DIR / f"{model}.json")
        wanted = LONG_CONTEXT if workload == "longctx" else max_model_len
        model_len = min(shapes.max_position_embeddings, wanted)
        trace = make_trace(workload, shapes, seed, kv_bytes, max_requests, model_len)
        if trace is None:
            continue
        try:
            if (model, model_len) not in layouts:
                layouts[model, model_len] = build_managers(shapes, kv_bytes, model_len)
            factories, notes = layouts[model, model_len]
            results = {}
            for factory in factories:
                manager = factory()
                results[manager.name] = run_trace(manager, trace, shapes, kv_bytes)
        except Exception as e:  # one broken case must not lose the others' results
            failures.append(f"{model}/{workload}: {type(e).__name__}: {str(e)[:200]}")
            continue
        cases.append(
            Case(model, workload, results, f"max_model_len {model_len}: " + "; ".join(notes))
        )
    return cases


failures: list[str] = []


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.3f}" if b else "n/a"


def write_report(cases: list[Case], out: Path, kv_bytes: int, seconds: float, quick: bool) -> None:
    lines = [
        "# KV-cache simulation: jenga vs vLLM 0.32's own layout (benchmarks/simulate.py)",
        "",
        f"KV budget {kv_bytes / GIB:.1f} GiB per manager, bf16 KV, block {BLOCK_SIZE} tokens"
        f"{' (--quick)' if quick else ''}; run took {seconds:.0f} s. 'vllm' is vLLM 0.32's real"
        " KVCacheManager on the layout vLLM's own functions chose; 'uniform' is the same with the"
        " hybrid manager off. Max concurrency = most requests running at once.",
        "",
        "| model | workload | reqs | max running jenga / vllm / uniform / oracle | jenga÷vllm |"
        " jenga÷uniform | jenga÷oracle | avg util jenga / vllm | peak util jenga / vllm |"
        " hit rate jenga / vllm | waste at peak jenga / vllm (GiB, padding) | preempt jenga / vllm |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in cases:
        r = c.results
        j, v, o = r["jenga"], r["vllm"], r["oracle"]
        u = r.get("uniform")
        lines.append(
            f"| {c.model} | {c.workload} | {j.completed} | {j.max_running} / {v.max_running} / "
            f"{u.max_running if u else 'n/a'} / {o.max_running} | "
            f"{_ratio(j.max_running, v.max_running)} | "
            f"{_ratio(j.max_running, u.max_running) if u else 'n/a'} | "
            f"{_ratio(j.max_running, o.max_running)} | {j.avg_util:.3f} / {v.avg_util:.3f} | "
            f"{j.peak_util:.3f} / {v.peak_util:.3f} | {j.hit_rate:.3f} / {v.hit_rate:.3f} | "
            f"{j.waste_bytes / GIB:.2f} ({j.padding_bytes / GIB:.2f}) / "
            f"{v.waste_bytes / GIB:.2f} ({v.padding_bytes / GIB:.2f}) | "
            f"{j.preemptions} / {v.preemptions} |"
        )
    if failures:
        lines += ["", "Cases that failed:", *[f"- {f}" for f in failures]]
    lines += ["", "## Layouts per model (jenga's plan, then vLLM's own decision)", ""]
    seen = set()
    for c in cases:
        if (c.model, c.note) not in seen:
            seen.add((c.model, c.note))
            lines.append(f"- **{c.model}**: {c.note}")
    lines += [
        "",
        "Plots: `simulate_concurrency.png` (max concurrency per model and workload, normalised to"
        " the oracle), `simulate_utilization.png` (utilization over time, chat workload).",
    ]
    out.write_text("\n".join(lines) + "\n")


def write_plots(cases: list[Case], out_dir: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    managers = ["jenga", "vllm", "uniform", "oracle"]
    colors = dict(zip(managers, ["tab:blue", "tab:orange", "tab:green", "tab:red"], strict=True))
    fig, ax = plt.subplots(figsize=(max(8, len(cases) * 0.6), 4.5))
    width = 0.2
    for k, name in enumerate(managers):
        values = [
            c.results[name].max_running / max(1, c.results["oracle"].max_running)
            if name in c.results
            else 0
            for c in cases
        ]
        ax.bar(
            [i + (k - 1.5) * width for i in range(len(cases))],
            values,
            width,
            label=name,
            color=colors[name],
        )
    ax.set_xticks(range(len(cases)))
    ax.set_xticklabels([f"{c.model}\n{c.workload}" for c in cases], rotation=90, fontsize=6)
    ax.set_ylabel("max concurrency ÷ oracle")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_dir / "simulate_concurrency.png", dpi=120)
    plt.close(fig)

    chat = [c for c in cases if c.workload == "chat"]
    cols = 3
    rows = max(1, math.ceil(len(chat) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(12, 3 * rows), squeeze=False)
    for ax, c in zip(axes.flat, chat, strict=False):
        for name in managers:
            if name in c.results:
                ax.plot(c.results[name].util_series, label=name, linewidth=0.8, color=colors[name])
        ax.set_title(c.model, fontsize=8)
        ax.set_ylim(0, 1.05)
        ax.set_xlabel("step", fontsize=7)
        ax.set_ylabel("utilization", fontsize=7)
    for ax in list(axes.flat)[len(chat) :]:
        ax.axis("off")
    if chat:
        handles = [plt.Line2D([], [], color=colors[n], label=n) for n in managers]
        axes.flat[0].legend(handles=handles, fontsize=7)
    fig.tight_layout()
    fig.savefig(out_dir / "simulate_utilization.png", dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small CI run (< 60 s)")
    parser.add_argument("--kv-gib", type=float, default=None, help="KV budget (default 40)")
    parser.add_argument("--models", default=None, help="comma-separated config names")
    parser.add_argument("--workloads", default=None, help=f"comma-separated: {WORKLOADS}")
    parser.add_argument("--max-requests", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-model-len", type=int, default=None)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    models = args.models.split(",") if args.models else (QUICK_MODELS if args.quick else MODELS)
    workloads = (
        args.workloads.split(",")
        if args.workloads
        else (["chat", "multiturn"] if args.quick else WORKLOADS)
    )
    kv_gib = args.kv_gib or (8.0 if args.quick else 40.0)
    max_requests = args.max_requests or (150 if args.quick else 1500)
    start = time.time()
    max_model_len = args.max_model_len or (8192 if args.quick else 40_960)
    cases = simulate(
        models, workloads, int(kv_gib * GIB), max_requests, args.seed, max_model_len=max_model_len
    )
    args.out.mkdir(parents=True, exist_ok=True)
    name = "simulate_quick.md" if args.quick else "simulate.md"
    write_report(cases, args.out / name, int(kv_gib * GIB), time.time() - start, args.quick)
    if not args.quick:
        write_plots(cases, args.out)
    print((args.out / name).read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
