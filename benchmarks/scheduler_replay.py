"""Scheduler replay: vLLM 0.32's real Scheduler over stock vs jenga KV managers, no model runs.

Question: on the e2e_throughput workload, which scheduling decisions (running batch, preemptions,
steps) does each KV-cache manager lead vLLM's own scheduler to, and why? e2e_throughput.py reads
these from real engines; here they are deterministic and cheap, and every step's page counts can
be compared with vLLM's.

For each zoo model this builds the engine's ``VllmConfig`` (same engine arguments as
e2e_throughput.py), the per-layer ``KVCacheSpec``s the CPU workers report (block 32 for every
type: the CPU backend's kernel blocks are ``MultipleOf(32)``), and then follows EngineCore's
start-up path (``_initialize_kv_caches``): ``get_kv_cache_configs`` (the plugin dispatches to
jenga's ``build_kv_cache_configs`` when asked), ``generate_scheduler_kv_cache_config``,
``update_kv_cache_capacity``, ``resolve_kv_cache_block_sizes`` and a real
``vllm.v1.core.sched.scheduler.Scheduler`` (whose ``KVCacheManager`` the plugin turns into
``JengaKVCacheManager`` for a jenga config). Requests are real ``Request``s with vLLM's block
hasher, so prefix caching works as in the engine. Each step: ``schedule()``, then a fabricated
``ModelRunnerOutput`` that samples one fixed token for every scheduled request whose prefill is
done, then ``update_from_output()``.

Per step it records the running batch, preemptions so far, per KV group / layer type the blocks
(stock) or small pages (jenga) requests hold and the bytes that costs, and for jenga the bytes of
EMPTY or CACHED slots inside partly used large pages (idle: only their own type can use them).
Against the engines of e2e_throughput.md (before the allocator fix): stock matches peak running
and preemptions within one on all five models, prefix hit rates within 0.01; jenga matches peak
running on four (gemma4: 14 vs 12) and preemptions on three (gemma4 21 vs 14, llama4 18 vs 31).
A sweep (skip with ``--no-sweep``) repeats the run over workload seeds and KV budgets, since one
schedule is chaotic after its first preemption.

Run: python -m benchmarks.scheduler_replay [--models llama4,gemma4] [--quick] [--no-sweep]
     [--trace llama4]
Writes benchmarks/results/scheduler_replay.md (not with --quick).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from benchmarks.common.scheduler import scheduler_from_specs
from benchmarks.common.workloads import full_bytes_per_token, workload

RESULTS = Path(__file__).resolve().parent / "results"

# The attention-only zoo models: Mamba hybrids are served by jenga with prefix caching off only.
MODELS = ("gemma4", "gemma3", "gpt_oss", "llama4", "llama")
SAMPLED_TOKEN = 7  # the one token every decode step "samples"
CHUNKED_ENV = "VLLM_ALLOW_CHUNKED_LOCAL_ATTN_WITH_HYBRID_KV_CACHE"


@dataclass(frozen=True)
class ReplayArgs:
    num_requests: int = 32
    output_len: int = 128
    max_model_len: int = 512
    block_size: int = 32
    max_num_seqs: int = 32
    dtype: str = "float32"
    seed: int = 11  # e2e_throughput.workload's seed
    kv_scale: float = 1.0  # times e2e_throughput's KV budget
    # The sweep's workloads: lengths and which requests share the prefix drawn from ``seed``
    # (e2e_throughput's lengths are fixed; its seed changes only the token ids)
    random_lengths: bool = False


def sweep_workload(num_requests: int, seed: int) -> list[list[int]]:
    """e2e_throughput's workload with its shape drawn from ``seed``: prompts of 96–223 tokens,
    each starting with the 128-token shared prefix with probability 1/2."""
    import random

    from jenga_vllm.tools.zoo import word_token_ids

    rng = random.Random(seed)
    shared = word_token_ids(seed, 128)
    return [
        word_token_ids(
            seed * 1000 + i, rng.randint(96, 223), prefix=shared if rng.random() < 0.5 else None
        )
        for i in range(num_requests)
    ]


@dataclass
class Step:
    running: int
    waiting: int
    preemptions: int
    held: list[int]  # per group / layer type: blocks or small pages held by requests
    held_bytes: int  # bytes those pages cost
    idle_bytes: int  # jenga: EMPTY or CACHED slots of ACTIVE large pages (one type only)


@dataclass
class Replay:
    model: str
    manager: str
    kv_bytes: int
    capacity_tokens: int
    groups: list[str]
    steps: list[Step] = field(default_factory=list)
    prefix_hit_tokens: int = 0
    prompt_tokens: int = 0
    scheduled_tokens: int = 0  # compute: prompt, recomputation after preemption, decode

    @property
    def peak_running(self) -> int:
        return max(s.running for s in self.steps)

    @property
    def preemptions(self) -> int:
        return self.steps[-1].preemptions


# ---- configs, as the engine builds them -------------------------------------------------------
def engine_config(model: str, manager: str, kv_bytes: int, args: ReplayArgs):
    from vllm.engine.arg_utils import EngineArgs

    from jenga_vllm.tools.zoo import build_model

    # Each engine of e2e_throughput.py is its own process; the jenga path sets this variable
    # with setdefault, so clear it for stock (vLLM's default is 1 either way).
    os.environ.pop(CHUNKED_ENV, None)
    return EngineArgs(
        model=str(build_model(model)),
        dtype=args.dtype,
        max_model_len=args.max_model_len,
        block_size=args.block_size,
        max_num_seqs=args.max_num_seqs,
        kv_cache_memory_bytes=kv_bytes,
        enable_prefix_caching=True,
        enforce_eager=True,
        seed=0,
        additional_config={"kv_cache_manager": manager},
    ).create_engine_config()


def layer_specs(model: str, vllm_config) -> dict[str, Any]:
    """The KVCacheSpec every attention layer of the zoo model reports on a CPU worker."""
    import torch
    from vllm.v1.kv_cache_interface import (
        ChunkedLocalAttentionSpec,
        FullAttentionSpec,
        SlidingWindowSpec,
    )

    from jenga_vllm.tools.model_shapes import LayerShape, load_model_shapes
    from jenga_vllm.tools.zoo import build_model

    path = build_model(model)
    dtype = getattr(torch, kv_dtype_name(vllm_config))
    block = vllm_config.cache_config.block_size
    if model == "gemma3":  # model_shapes has no gemma3_text rules; the recipe is plain
        cfg = json.loads((path / "config.json").read_text())
        layers = [
            LayerShape(
                i,
                "sliding_window" if kind == "sliding_attention" else "full",
                cfg["num_key_value_heads"],
                cfg["head_dim"],
                cfg["head_dim"],
                window=cfg["sliding_window"] if kind == "sliding_attention" else None,
            )
            for i, kind in enumerate(cfg["layer_types"])
        ]
    else:
        layers = load_model_shapes(str(path), dtype=kv_dtype_name(vllm_config)).layers
    specs: dict[str, Any] = {}
    for layer in layers:
        common = dict(
            block_size=block,
            num_kv_heads=layer.num_kv_heads,
            head_size=layer.head_dim,
            dtype=dtype,
        )
        if layer.kind == "full":
            specs[layer.name] = FullAttentionSpec(**common)
        elif layer.kind == "sliding_window":
            specs[layer.name] = SlidingWindowSpec(sliding_window=layer.window, **common)
        elif layer.kind == "chunked_local":
            specs[layer.name] = ChunkedLocalAttentionSpec(
                attention_chunk_size=layer.chunk, **common
            )
        else:
            raise ValueError(f"{model}: no spec for layer kind {layer.kind!r}")
    return specs


def kv_dtype_name(vllm_config) -> str:
    return str(vllm_config.model_config.dtype).removeprefix("torch.")


def build_scheduler(model: str, manager: str, kv_bytes: int, args: ReplayArgs):
    """(scheduler, block hasher): EngineCore's _initialize_kv_caches without workers."""
    from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend

    vllm_config = engine_config(model, manager, kv_bytes, args)
    specs = layer_specs(model, vllm_config)
    return scheduler_from_specs(vllm_config, specs, kv_bytes, CPUAttentionBackend)


# ---- what each manager holds --------------------------------------------------------------------
def group_names(scheduler) -> list[str]:
    names = []
    for m in scheduler.kv_cache_manager.coordinator.single_type_managers:
        spec = m.kv_cache_spec
        extra = getattr(spec, "sliding_window", None) or getattr(spec, "attention_chunk_size", None)
        names.append(type(spec).__name__.removesuffix("Spec") + (f"({extra})" if extra else ""))
    return names


def held_pages(scheduler) -> tuple[list[int], int, int]:
    """(pages held per group, bytes they cost, idle bytes inside partly used large pages)."""
    manager = scheduler.kv_cache_manager
    cache = getattr(manager, "cache", None)
    if cache is not None:  # jenga: USED small pages; the rest of their ACTIVE large pages
        plan = cache.plan
        alloc = cache.allocator
        held = [0] * len(plan.types)
        active_bytes = 0
        for large in alloc.large_pages[1:] if not plan.lends_null else alloc.large_pages:
            if large.num_used:
                pinned = alloc.pinned_in(large)
                held[large.type_idx] += large.num_used - pinned
                layout = plan.types[large.type_idx]
                active_bytes += (layout.pages_per_large - pinned) * layout.small_page_bytes
        held_bytes = sum(n * t.small_page_bytes for n, t in zip(held, plan.types, strict=True))
        return held, held_bytes, active_bytes - held_bytes
    # stock: one pool of equal blocks; a block id belongs to one group at a time, and any
    # block no request holds (cached or not) serves any group
    config = scheduler.kv_cache_config
    block_bytes = max(t.size for t in config.kv_cache_tensors) // config.num_blocks
    held = []
    for m in manager.coordinator.single_type_managers:
        ids = {b.block_id for blocks in m.req_to_blocks.values() for b in blocks if not b.is_null}
        held.append(len(ids))
    return held, sum(held) * block_bytes, 0


# ---- the replay -------------------------------------------------------------------------------
def replay(model: str, manager: str, args: ReplayArgs, trace: bool = False) -> Replay:
    from vllm import SamplingParams
    from vllm.v1.outputs import ModelRunnerOutput
    from vllm.v1.request import Request

    kv_bytes = int(4 * full_bytes_per_token(model) * args.max_model_len * args.kv_scale)
    scheduler, hasher = build_scheduler(model, manager, kv_bytes, args)
    result = Replay(
        model,
        manager,
        kv_bytes,
        scheduler.vllm_config.cache_config.kv_cache_size_tokens,
        group_names(scheduler),
    )
    params = SamplingParams(temperature=0.0, max_tokens=args.output_len, ignore_eos=True)
    requests = [
        Request(str(i), prompt, params, None, arrival_time=float(i), block_hasher=hasher)
        for i, prompt in enumerate(
            sweep_workload(args.num_requests, args.seed)
            if args.random_lengths
            else workload(args.num_requests, seed=args.seed)
        )
    ]
    for request in requests:
        scheduler.add_request(request)
    while scheduler.has_unfinished_requests():
        out = scheduler.schedule()
        ids = list(out.num_scheduled_tokens)
        result.scheduled_tokens += out.total_num_scheduled_tokens
        by_id = scheduler.requests
        sampled = [
            [SAMPLED_TOKEN] if by_id[i].num_computed_tokens >= by_id[i].num_tokens else []
            for i in ids
        ]
        held, held_bytes, idle_bytes = held_pages(scheduler)
        step = Step(
            running=len(scheduler.running),
            waiting=len(scheduler.waiting) + len(scheduler.kv_holding_waiting),
            preemptions=sum(r.num_preemptions for r in requests),
            held=held,
            held_bytes=held_bytes,
            idle_bytes=idle_bytes,
        )
        result.steps.append(step)
        if trace:
            print(
                f"{model:8} {manager:5} step {len(result.steps):4} run {step.running:2} "
                f"wait {step.waiting:2} preempt {step.preemptions:3} held {step.held} "
                f"held {step.held_bytes:>9,} B idle {step.idle_bytes:>9,} B",
                flush=True,
            )
        runner_output = ModelRunnerOutput(
            req_ids=ids,
            req_id_to_index={i: k for k, i in enumerate(ids)},
            sampled_token_ids=sampled,
        )
        for outputs in scheduler.update_from_output(out, runner_output).values():
            stats = outputs.scheduler_stats
            if stats is not None and stats.prefix_cache_stats is not None:
                result.prefix_hit_tokens += stats.prefix_cache_stats.hits
                result.prompt_tokens += stats.prefix_cache_stats.queries
        if len(result.steps) > 20 * (args.output_len + args.max_model_len):
            raise RuntimeError(f"{model}/{manager}: no progress after {len(result.steps)} steps")
    assert all(len(r.output_token_ids) == args.output_len for r in requests)
    return result


def table(rows: list[tuple[Replay, Replay]], args: ReplayArgs) -> str:
    lines = [
        "# Scheduler replay: vLLM 0.32's Scheduler with the stock vs the jenga KV manager",
        "",
        f"Same workload as e2e_throughput.py ({args.num_requests} prompts, 96–223 tokens, half "
        f"sharing a 128-token prefix, {args.output_len} output tokens, all submitted at once; "
        f"block {args.block_size}, max_model_len {args.max_model_len}, max_num_seqs "
        f"{args.max_num_seqs}, fp32, prefix caching on, KV bytes = 4 max-length full-attention "
        "requests). vLLM's real `Scheduler` over the KV-cache configs EngineCore builds; no "
        "model runs (one fixed token sampled per decode step), so every number is "
        "deterministic. Steps = scheduler steps to finish all requests; scheduled tokens = "
        "prompt + recomputation after preemption + decode; idle = mean bytes of EMPTY or CACHED "
        "slots inside jenga's partly used large pages, which only their own layer type can use "
        "(stock vLLM: none, a free block serves any group). "
        "`python -m benchmarks.scheduler_replay`.",
        "",
        "| model | KV capacity (tokens) stock → jenga | peak running stock → jenga | "
        "preemptions stock → jenga | steps stock → jenga (ratio) | scheduled tokens stock → "
        "jenga | prefix hit rate stock → jenga | idle KB (jenga) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for s, j in rows:
        lines.append(
            f"| {s.model} | {s.capacity_tokens} → {j.capacity_tokens} | {s.peak_running} → "
            f"{j.peak_running} | {s.preemptions} → {j.preemptions} | {len(s.steps)} → "
            f"{len(j.steps)} ({len(j.steps) / len(s.steps):.2f}x) | {s.scheduled_tokens:,} → "
            f"{j.scheduled_tokens:,} | {hit_rate(s):.2f} → {hit_rate(j):.2f} | "
            f"{mean_idle_kb(j):.0f} |"
        )
    return "\n".join(lines) + "\n" + NOTES


NOTES = """
**Why jenga preempted more, and the fixes** (per-step traces against vLLM's own manager,
`--trace MODEL`; docs/design.md §3–§5). Five causes, each fixed in the allocator, the layout or
the manager:

1. *Placement* (llama4, fixed earlier). A large page holds one chunked-local page or three
   full-attention pages; request-aware placement gave each request full-attention large pages of
   its own, stranding EMPTY slots only full attention could use. Now a remainder page (every
   decode page) fills a hole before a fresh large page is taken: idle 551 → 211 KB, peak running
   17 → 19 (= vLLM's).
2. *Ping-pong after preemption* (gemma3, gpt_oss). vLLM frees a preempted request tail-first, so
   its sliding-window blocks (the deepest) are evicted first and its prefix hit is gone: it waits
   until a whole prompt's worth of blocks is free. Under jenga the hit survives (prefix-aligned
   eviction), so the request came straight back into the memory its own preemption freed and was
   the next step's victim again (gemma3, e2e workload: 14 preemptions vs vLLM's 10, 8 of them
   this cycle). Now a waiting or preempted request is admitted only if the running batch's next
   decode step still fits beside it (decode headroom, `JengaKVCacheManager.allocate_slots`).
3. *Stranded slots* (gemma4, llama4). Preemptions came with 4–14 sliding-window slots CACHED in
   ACTIVE large pages (usable by that type only) while full attention needed a large page. Now,
   with no FREE large page, a remainder page evicts by LRU across granularities: a CACHED page of
   its type cached before the EVICTABLE large page the paper's order would give up first.

4. *Windows smeared across large pages* (gemma4: a large page holds 3 window pages, a request's
   window is 3 pages). Each request's window straddled two large pages shared with its
   neighbours' windows, so a preempted request's window pages stayed CACHED beside running
   windows: at each gemma4 preemption (seed 11) 3–18 window slots were stranded that way (1–6
   large pages of a 36-large-page pool) while full attention needed a large page; stock evicts
   such blocks for any group. Now a prefill places the window pages that outlast the step
   first (they fill the request's own large page), and each later window page takes the slot of
   the page that just left the window (the request recycles its own slots): every request's
   window sits in one large page of its own, and a preemption frees it whole
   (`TwoLevelAllocator.allocate`, `JengaCache.allocate`; docs/design.md §4).

5. *Fixed costs of a small pool* (llama4, gemma4). Large page 0 was the null page (3 blocks on
   llama4 vs vLLM's 1) and the bytes past the last whole large page were unused. Now the type
   with the most pages per large page uses the null page's other slots and a partial tail page
   (`LayoutPlan.lend_type`; attention-only models, docs/design.md §3): llama4 capacity 2,016 →
   2,032 tokens (vLLM 2,048; the rest is the view slack every unit-id view needs), gemma3 2,026
   → 2,037; gemma4's null page now holds 3 full-attention pages.

Sweep preemptions vLLM → jenga before these fixes / after them: gemma4 84 → 184 / 104, gemma3
88 → 188 / 64, gpt_oss 100 → 168 / 92, llama4 104 → 136 / 104, llama 204 → 204 / 200 (fix 4
alone: gemma4 128 → 112; fix 5: gemma4 120 → 104, llama4 116 → 104). That sweep had a defect:
e2e_throughput's prompt lengths are fixed and its seed changes only the token ids, so its four
seeds replayed one schedule four times (3 distinct runs per model, each counted 4 times). The
sweep now draws each seed's lengths and which requests share the prefix (`sweep_workload`).

**Sixteen seeds, not four.** On those 12 distinct runs per model (seeds 11–14) gemma4 was 111
preemptions to stock's 90 (1.23x). Re-run unchanged on seeds 21–24 it was 89 to stock's 108
(0.82x): a total over a dozen chaotic schedules (which request a late preemption hits decides
the tail) swings by that much with the seeds drawn. The sweep now totals 16 seeds × 3 budgets
(48 schedules per model, 1.8 min for all five) and shows, in brackets, the ratio over each
quarter of the seeds, so a claim is read against that spread.

**Where it stands** (table below). Preemptions ≤ 1.1x stock's on every model: gemma4 1.08x
(quarters 1.00–1.23x), gemma3 0.70x, gpt_oss 0.80x, llama4 0.98x, llama 0.97x. Steps: gemma4
0.838x, gpt_oss 0.990x, gemma3 0.999x, llama 1.000x (30,937 vs 30,928), llama4 1.002x (15,264
vs 15,239 — 0.8% less capacity, 2,032 vs 2,048 tokens: the view slack every unit-id view
needs). Scheduled tokens, recomputation included, 0.96–0.99x on all five. gemma4 preempts
more than the others relative to stock because it runs more requests at once with 1.33x the
capacity (peak 14 vs 12 on the e2e workload), and a larger batch outgrows memory more often;
against stock given jenga's capacity (third peer; capacity is counted for max-length requests,
and this workload's short requests give that peer more room than jenga has) it is 1.27x
preemptions, 1.12x steps. gemma3 and gemma4 give stock the same groups (one full-attention
group, sliding-window groups of window 64) and, at jenga's capacity, the same blocks: that
peer's rows are the same schedules.

Trading steps for preemptions, measured and not shipped (seeds 11–14): a longer decode headroom
(an admitted request leaves room for the running batch's next L tokens, not the next one) —
L = 8: gemma4 74 preemptions, llama4 steps 1.03x; L = 4: gemma4 103, llama4 1.01x; L = 32:
gemma4 31, llama4 1.19x. Raising it only after a preemption (L = 8 for the next 8 steps, as
SGLang raises its new-token ratio after a retraction): gemma4 103, llama4 120 preemptions but
steps 0.997x; for 32 steps: gemma4 93, llama4 steps 1.015x; the same rule scaled by each
request's remaining tokens (0.1–0.5 of them): llama4 steps 1.01–1.02x. Only re-admitting a
preempted request with L = 8: gemma4 96, llama4 steps 1.01x. Every variant that cut gemma4's
preemptions cost llama4 steps, where jenga's capacity equals stock's and any reserve is a
smaller batch. Kept at L = 1: a step is a forward pass, and recomputation is below stock's.
"""


def hit_rate(r: Replay) -> float:
    return r.prefix_hit_tokens / max(1, r.prompt_tokens)


def mean_idle_kb(r: Replay) -> float:
    steps = [s for s in r.steps if s.running]
    return sum(s.idle_bytes for s in steps) / len(steps) / 1024


# 16 workload seeds: one schedule is chaotic (which request a late preemption hits decides the
# tail), and a total over 4 seeds still swung with the seeds drawn — gemma4's preemption ratio
# was 1.23x on seeds 11-14 and 0.82x on seeds 21-24 with the same code. The sweep reports the
# total over all 16 and the spread of the four 4-seed quarters.
SWEEP_SEEDS = tuple(range(11, 27))
SWEEP_QUARTERS = 4
SWEEP_KV_SCALES = (0.75, 1.0, 1.25)


@dataclass
class SweepTotals:
    preemptions: int = 0
    steps: int = 0
    scheduled_tokens: int = 0

    def add(self, r: Replay) -> None:
        self.preemptions += r.preemptions
        self.steps += len(r.steps)
        self.scheduled_tokens += r.scheduled_tokens


def quarter_range(stock: list[SweepTotals], jenga: list[SweepTotals], what: str) -> str:
    """min–max over the quarters of jenga's total ÷ stock's."""
    ratios = sorted(
        getattr(j, what) / max(1, getattr(s, what)) for s, j in zip(stock, jenga, strict=True)
    )
    return f"{ratios[0]:.2f}–{ratios[-1]:.2f}"


def sweep(models: list[str]) -> str:
    """Totals over workload seeds × KV budgets, and their spread over four groups of seeds. A
    third peer, stock vLLM given the bytes that give it jenga's capacity in tokens, separates
    what jenga's extra capacity does (a larger batch that outgrows memory more often) from what
    its manager does."""
    per_quarter = len(SWEEP_SEEDS) // SWEEP_QUARTERS
    lines = [
        "",
        f"## Sweep: totals over {len(SWEEP_SEEDS)} workload seeds × KV budgets "
        f"{', '.join(f'{k:g}' for k in SWEEP_KV_SCALES)}× the one above "
        f"({len(SWEEP_SEEDS) * len(SWEEP_KV_SCALES)} schedules per model)",
        "",
        "In brackets: jenga ÷ stock over each quarter of the seeds "
        f"({per_quarter} seeds × {len(SWEEP_KV_SCALES)} budgets each), min–max — how much a "
        "total over fewer workloads swings. Third peer, *stock at jenga's capacity*: vLLM's own "
        "manager on KV bytes scaled by jenga's capacity in tokens over stock's at each budget "
        "(same tokens fit in both), so jenga vs it compares the managers at equal capacity.",
        "",
        "| model | preemptions stock → jenga (ratio) [quarters] | steps stock → jenga (ratio) "
        "[quarters] | scheduled tokens stock → jenga (ratio) | stock at jenga's capacity: "
        "preemptions, steps | jenga / it: preemptions, steps |",
        "|---|---|---|---|---|---|",
    ]
    for model in models:
        quarters: dict[str, list[SweepTotals]] = {
            name: [SweepTotals() for _ in range(SWEEP_QUARTERS)]
            for name in ("vllm", "jenga", "equal")
        }
        for n, seed in enumerate(SWEEP_SEEDS):
            q = min(n // per_quarter, SWEEP_QUARTERS - 1)
            for scale in SWEEP_KV_SCALES:
                shape = ReplayArgs(seed=seed, kv_scale=scale, random_lengths=True)
                stock = replay(model, "vllm", shape)
                jenga = replay(model, "jenga", shape)
                equal = scale * jenga.capacity_tokens / stock.capacity_tokens
                quarters["vllm"][q].add(stock)
                quarters["jenga"][q].add(jenga)
                quarters["equal"][q].add(replay(model, "vllm", replace(shape, kv_scale=equal)))
        totals = {}
        for name, group in quarters.items():
            totals[name] = SweepTotals(
                sum(t.preemptions for t in group),
                sum(t.steps for t in group),
                sum(t.scheduled_tokens for t in group),
            )
        s, j, e = totals["vllm"], totals["jenga"], totals["equal"]
        pre_q = quarter_range(quarters["vllm"], quarters["jenga"], "preemptions")
        steps_q = quarter_range(quarters["vllm"], quarters["jenga"], "steps")
        lines.append(
            f"| {model} | {s.preemptions} → {j.preemptions} "
            f"({j.preemptions / max(1, s.preemptions):.2f}x) [{pre_q}] | {s.steps:,} → "
            f"{j.steps:,} ({j.steps / s.steps:.3f}x) [{steps_q}] | {s.scheduled_tokens:,} → "
            f"{j.scheduled_tokens:,} ({j.scheduled_tokens / s.scheduled_tokens:.2f}x) | "
            f"{e.preemptions}, {e.steps:,} | {j.preemptions / max(e.preemptions, 1):.2f}x, "
            f"{j.steps / e.steps:.2f}x |"
        )
        print(lines[-1], flush=True)
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--quick", action="store_true", help="llama4 only, 8 requests, no sweep (CI)")
    ap.add_argument("--no-sweep", action="store_true", help="only the e2e_throughput workload")
    ap.add_argument("--trace", default="", help="print every step for these models (comma list)")
    opts = ap.parse_args()
    logging.getLogger("vllm").setLevel(logging.ERROR)
    from jenga_vllm.vllm import plugin

    plugin.install()
    args = ReplayArgs()
    models = opts.models.split(",")
    if opts.quick:
        models, args = ["llama4"], ReplayArgs(num_requests=8, output_len=32)
    traced = set(opts.trace.split(",")) if opts.trace else set()
    rows = []
    for model in models:
        stock = replay(model, "vllm", args, trace=model in traced)
        jenga = replay(model, "jenga", args, trace=model in traced)
        rows.append((stock, jenga))
        print(
            f"{model}: peak running {stock.peak_running} -> {jenga.peak_running}; "
            f"preemptions {stock.preemptions} -> {jenga.preemptions}; "
            f"steps {len(stock.steps)} -> {len(jenga.steps)}",
            flush=True,
        )
    text = table(rows, args)
    if not (opts.quick or opts.no_sweep):
        text += sweep(models)
    print(text)
    if not (opts.quick or opts.no_sweep):
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "scheduler_replay.md").write_text(text)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    sys.exit(main())
