"""Scheduler CPU time per step at GPU scale: vLLM 0.32's real Scheduler over stock vs jenga.

Question: at the sizes a GPU deployment runs (block 16, bf16, hundreds of running requests, a
pool of tens of thousands of blocks filled with cached prefixes), does jenga's KV manager make
vLLM's scheduler step slower than vLLM's own manager? The model never runs, so the scheduler
and the KV manager are all the CPU work there is; what one step costs here is what it adds to
every GPU step.

For each real model shape (``benchmarks/model_configs``) this builds vLLM's ``VllmConfig`` and
per-layer ``KVCacheSpec``s (``jenga_vllm.tools.vllm_layout``: the GPU Triton backend's kernel
blocks) and follows EngineCore's start-up path as ``scheduler_replay.py`` does: the KV-cache
configs (the plugin dispatches to jenga's for a jenga config), capacity, block sizes and a real
``vllm.v1.core.sched.scheduler.Scheduler``. Requests are real ``Request``s with vLLM's block
hasher; the heap is frozen for the garbage collector once the scheduler is built, as EngineCore
does. Each step: ``schedule()``, a fabricated ``ModelRunnerOutput`` (one fixed token per
request whose prefill is done), ``update_from_output()``. Timed (thread CPU time, so other
processes on the machine do not count): those two calls, and inside them every call into the
KV manager.

Workload: 1,024 requests submitted at once, prompts 1,000–3,500 tokens (seeded), half of them
starting with one of four shared 1,024-token prefixes, 128 output tokens, max_num_seqs 512,
max_num_batched_tokens 8,192. Runs alternate stock / jenga; the result is the ratio of each
manager's fastest run and the median of the per-pair ratios. The decisions are compared too
(steps, peak running, preemptions, a digest of every step's scheduled tokens): equal decisions
make the per-step times comparable.

Run: python -m benchmarks.scheduler_overhead [--models gpt-oss-20b] [--rounds 3] [--quick]
Writes benchmarks/results/scheduler_overhead.md (not with --quick).
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import logging
import random
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.common.phases import MANAGER_CALLS

RESULTS = Path(__file__).resolve().parent / "results"
CONFIGS = Path(__file__).resolve().parent / "model_configs"

GiB = 1 << 30
# name -> (config file, KV bytes): the sizes the issue measured (#13), one GPU's worth each
MODELS = {
    "llama-3.1-8b": ("llama-3.1-8b-instruct.json", 100 * GiB),
    "gpt-oss-20b": ("gpt-oss-20b.json", 40 * GiB),
    "gemma-2-9b": ("gemma-2-9b.json", 40 * GiB),
    "gemma-4-26b": ("gemma-4-26b-a4b.json", 40 * GiB),
}
SAMPLED_TOKEN = 7


@dataclass(frozen=True)
class Args:
    num_requests: int = 1024
    min_prompt: int = 1000
    max_prompt: int = 3500
    shared_prefix: int = 1024
    num_prefixes: int = 4
    output_len: int = 128
    max_num_seqs: int = 512
    max_num_batched_tokens: int = 8192
    max_model_len: int = 4096
    block_size: int = 16
    seed: int = 0
    kv_scale: float = 1.0


@dataclass
class Run:
    model: str
    manager: str
    steps: int = 0
    step_s: list[float] = field(default_factory=list)  # schedule + update_from_output
    calls: dict[str, list[float]] = field(default_factory=dict)  # seconds per call, per method
    peak_running: int = 0
    running_sum: int = 0
    preemptions: int = 0
    hit_tokens: int = 0
    query_tokens: int = 0
    digest: str = ""
    capacity_tokens: int = 0

    @property
    def us_per_step(self) -> float:
        return sum(self.step_s) / self.steps * 1e6

    @property
    def manager_us_per_step(self) -> float:
        return sum(sum(v) for v in self.calls.values()) / self.steps * 1e6

    def quantile_ms(self, q: float) -> float:
        ordered = sorted(self.step_s)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1e3


def workload(args: Args) -> list[list[int]]:
    from jenga_vllm.tools.zoo import word_token_ids

    rng = random.Random(args.seed)
    prefixes = [
        word_token_ids(10_000 + args.seed * 10 + k, args.shared_prefix)
        for k in range(args.num_prefixes)
    ]
    prompts = []
    for i in range(args.num_requests):
        length = rng.randint(args.min_prompt, args.max_prompt)
        if i % 2 == 0:
            prefix = prefixes[(i // 2) % args.num_prefixes]
            prompts.append(word_token_ids(args.seed * 100_000 + i, length - len(prefix), prefix))
        else:
            prompts.append(word_token_ids(args.seed * 100_000 + i, length))
    return prompts


def build_scheduler(model: str, manager: str, args: Args):
    """(scheduler, block hasher) for the real shapes of ``model``: EngineCore's start-up path
    (``scheduler_replay.scheduler_from_specs``) with the GPU Triton backend's layout."""
    from vllm.plugins import load_general_plugins

    from benchmarks.common.scheduler import scheduler_from_specs
    from jenga_vllm.tools.model_shapes import load_model_shapes
    from jenga_vllm.tools.vllm_layout import _gpu_attention_backend, build_vllm_config, layer_specs

    load_general_plugins()  # the jenga plugin, as every vLLM process loads it
    config_file, kv_bytes = MODELS[model]
    shapes = load_model_shapes(CONFIGS / config_file)
    vllm_config = build_vllm_config(
        shapes, max_model_len=args.max_model_len, block_size=args.block_size
    )
    vllm_config.scheduler_config.max_num_seqs = args.max_num_seqs
    vllm_config.scheduler_config.max_num_batched_tokens = args.max_num_batched_tokens
    vllm_config.scheduler_config.async_scheduling = False
    vllm_config.additional_config = {"kv_cache_manager": manager}
    specs = layer_specs(shapes, vllm_config)
    return scheduler_from_specs(
        vllm_config, specs, int(kv_bytes * args.kv_scale), _gpu_attention_backend()
    )


def time_manager_calls(manager, sink: dict) -> None:
    """Wrap the KV manager's scheduler-facing methods with timers (same wrapper for both);
    each call's seconds go to ``sink["calls"][method]`` (swap the dict to start a new tally)."""
    perf = time.thread_time
    for name in MANAGER_CALLS:
        method = getattr(manager, name, None)
        if method is None:
            continue

        def timed(*a, _method=method, _name=name, **kw):
            t = perf()
            try:
                return _method(*a, **kw)
            finally:
                sink["calls"].setdefault(_name, []).append(perf() - t)

        setattr(manager, name, timed)


def run(model: str, manager: str, args: Args, prompts: list[list[int]]) -> tuple[Run, Run]:
    """Two passes of the workload through one scheduler: (cold pool, warm pool)."""
    from vllm.utils.gc_utils import freeze_gc_heap

    scheduler, hasher = build_scheduler(model, manager, args)
    sink: dict = {}
    time_manager_calls(scheduler.kv_cache_manager, sink)
    freeze_gc_heap()  # as EngineCore does once it is built (v1/engine/core.py)
    try:
        passes = tuple(
            one_pass(scheduler, hasher, model, manager, args, prompts, sink, tag)
            for tag in ("cold", "warm")
        )
    finally:
        gc.unfreeze()  # the next run starts from a clean heap
        gc.collect()
    return passes  # type: ignore[return-value]


def one_pass(scheduler, hasher, model, manager, args, prompts, sink, tag) -> Run:
    from vllm import SamplingParams
    from vllm.v1.outputs import ModelRunnerOutput
    from vllm.v1.request import Request

    result = Run(model, manager)
    sink["calls"] = result.calls
    result.capacity_tokens = scheduler.vllm_config.cache_config.kv_cache_size_tokens
    params = SamplingParams(temperature=0.0, max_tokens=args.output_len, ignore_eos=True)
    requests = [
        Request(f"{tag}-{i}", prompt, params, None, arrival_time=float(i), block_hasher=hasher)
        for i, prompt in enumerate(prompts)
    ]
    for request in requests:
        scheduler.add_request(request)
    digest = hashlib.sha256()
    perf = time.thread_time
    while scheduler.has_unfinished_requests():
        t0 = perf()
        out = scheduler.schedule()
        t1 = perf()
        ids = list(out.num_scheduled_tokens)
        by_id = scheduler.requests
        sampled = [
            [SAMPLED_TOKEN] if by_id[i].num_computed_tokens >= by_id[i].num_tokens else []
            for i in ids
        ]
        runner_output = ModelRunnerOutput(
            req_ids=ids,
            req_id_to_index={i: k for k, i in enumerate(ids)},
            sampled_token_ids=sampled,
        )
        digest.update(repr(sorted(out.num_scheduled_tokens.items())).encode())
        running = len(scheduler.running)
        t2 = perf()
        outputs = scheduler.update_from_output(out, runner_output)
        t3 = perf()
        result.step_s.append((t1 - t0) + (t3 - t2))
        result.steps += 1
        result.peak_running = max(result.peak_running, running)
        result.running_sum += running
        for engine_outputs in outputs.values():
            stats = engine_outputs.scheduler_stats
            if stats is not None and stats.prefix_cache_stats is not None:
                result.hit_tokens += stats.prefix_cache_stats.hits
                result.query_tokens += stats.prefix_cache_stats.queries
        if result.steps > 50 * (args.output_len + args.max_model_len):
            raise RuntimeError(f"{model}/{manager}: no progress after {result.steps} steps")
    assert all(len(r.output_token_ids) == args.output_len for r in requests)
    result.preemptions = sum(r.num_preemptions for r in requests)
    result.digest = digest.hexdigest()[:12]
    return result


def ratio_line(pairs: list[tuple[Run, Run]], metric) -> tuple[float, float, float, float]:
    """(jenga's fastest run / stock's fastest run, median of jenga/stock per pair, min, max).
    The machine only ever adds time to a run, so each manager's fastest run is its least
    disturbed one (timeit's rule); the median pair shows the spread both had to live with."""
    ratios = [metric(j) / metric(s) for s, j in pairs]
    fastest = min(metric(j) for _, j in pairs) / min(metric(s) for s, _ in pairs)
    return fastest, statistics.median(ratios), min(ratios), max(ratios)


PASSES = {
    "warm": "Warm pool — the second pass of the workload through the same scheduler (steady "
    "state: the prefix cache holds the first pass's pages, every page object exists)",
    "cold": "Cold pool — the first pass (jenga also creates the page objects of each large page "
    "the first time it is carved for a type; vLLM creates all its blocks at start-up, untimed)",
}


def report(by_pass: dict[str, dict[str, list[tuple[Run, Run]]]], args: Args) -> str:
    rounds = len(next(iter(by_pass["warm"].values())))
    lines = [
        "# Scheduler overhead at GPU scale: vLLM 0.32's Scheduler, stock vs jenga KV manager",
        "",
        f"Real model shapes (`benchmarks/model_configs`), block {args.block_size}, bf16, "
        f"{args.num_requests} requests submitted at once, prompts {args.min_prompt}–"
        f"{args.max_prompt} tokens, half starting with one of {args.num_prefixes} shared "
        f"{args.shared_prefix}-token prefixes, {args.output_len} output tokens, max_num_seqs "
        f"{args.max_num_seqs}, max_num_batched_tokens {args.max_num_batched_tokens}, prefix "
        "caching on. No model runs: per step, vLLM's real `schedule()` + "
        "`update_from_output()` (thread CPU time; GC heap frozen after start-up as EngineCore "
        "does), and every KV-manager call inside them. Each run sends the workload twice "
        "through one scheduler; runs alternate stock / jenga in one process; ratios are "
        f"jenga/stock per pair ({rounds} pairs per model). Produced by "
        "`benchmarks/scheduler_overhead.py`.",
    ]
    for tag, title in PASSES.items():
        lines += ["", f"## {title}", ""] + step_table(by_pass[tag], args)
    lines += [
        "",
        "## KV-manager time per call, warm pool (µs, the median run of each manager)",
        "",
        "| model | method | stock µs/call | jenga µs/call | calls stock / jenga |",
        "|---|---|---:|---:|---:|",
    ]
    for model, pairs in by_pass["warm"].items():
        s_run = sorted((s for s, _ in pairs), key=lambda r: r.us_per_step)[len(pairs) // 2]
        j_run = sorted((j for _, j in pairs), key=lambda r: r.us_per_step)[len(pairs) // 2]
        for name in MANAGER_CALLS:
            s_calls, j_calls = s_run.calls.get(name, []), j_run.calls.get(name, [])
            if not s_calls and not j_calls:
                continue
            s_us = sum(s_calls) / len(s_calls) * 1e6 if s_calls else float("nan")
            j_us = sum(j_calls) / len(j_calls) * 1e6 if j_calls else float("nan")
            lines.append(
                f"| {model} | `{name}` | {s_us:.1f} | {j_us:.1f} | "
                f"{len(s_calls):,} / {len(j_calls):,} |"
            )
    return "\n".join(lines) + "\n"


def step_table(results: dict[str, list[tuple[Run, Run]]], args: Args) -> list[str]:
    lines = [
        "| model | KV | capacity tokens stock / jenga | same decisions | steps | mean / peak "
        "running | preemptions stock / jenga | hit rate stock / jenga | µs per step stock / "
        "jenga (median run) | **jenga/stock per step: fastest runs, median pair [min–max]** | "
        "KV-manager "
        "µs per step stock / jenga | step p99 ms stock / jenga |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for model, pairs in results.items():
        s0, j0 = pairs[0]
        same = all(s.digest == j.digest for s, j in pairs)
        fastest, med, lo, hi = ratio_line(pairs, lambda r: r.us_per_step)
        s_med = statistics.median(s.us_per_step for s, _ in pairs)
        j_med = statistics.median(j.us_per_step for _, j in pairs)
        s_kv = statistics.median(s.manager_us_per_step for s, _ in pairs)
        j_kv = statistics.median(j.manager_us_per_step for _, j in pairs)
        s_p99 = statistics.median(s.quantile_ms(0.99) for s, _ in pairs)
        j_p99 = statistics.median(j.quantile_ms(0.99) for _, j in pairs)
        kv_gib = MODELS[model][1] * args.kv_scale / GiB
        lines.append(
            f"| {model} | {kv_gib:g} GiB | {s0.capacity_tokens:,} / {j0.capacity_tokens:,} | "
            f"{'yes' if same else 'no'} | {s0.steps} / {j0.steps} | "
            f"{s0.running_sum / s0.steps:.0f} / {s0.peak_running} vs "
            f"{j0.running_sum / j0.steps:.0f} / {j0.peak_running} | "
            f"{s0.preemptions} / {j0.preemptions} | "
            f"{s0.hit_tokens / max(1, s0.query_tokens):.3f} / "
            f"{j0.hit_tokens / max(1, j0.query_tokens):.3f} | {s_med:,.0f} / {j_med:,.0f} | "
            f"**{fastest:.2f}x, {med:.2f}x** [{lo:.2f}–{hi:.2f}] | {s_kv:,.0f} / {j_kv:,.0f} | "
            f"{s_p99:.1f} / {j_p99:.1f} |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="tiny workload, one round")
    args_ns = parser.parse_args()
    logging.getLogger("vllm").setLevel(logging.ERROR)
    args = Args()
    rounds = args_ns.rounds
    if args_ns.quick:
        args = Args(num_requests=48, max_num_seqs=24, output_len=8, kv_scale=0.01)
        rounds = 1
    prompts = workload(args)
    by_pass: dict[str, dict[str, list[tuple[Run, Run]]]] = {tag: {} for tag in PASSES}
    for model in args_ns.models.split(","):
        for tag in PASSES:
            by_pass[tag][model] = []
        for k in range(rounds):
            order = ("vllm", "jenga") if k % 2 == 0 else ("jenga", "vllm")
            runs = {
                m: dict(zip(("cold", "warm"), run(model, m, args, prompts), strict=True))
                for m in order
            }
            for tag in PASSES:
                s, j = runs["vllm"][tag], runs["jenga"][tag]
                by_pass[tag][model].append((s, j))
                print(
                    f"{model} round {k} {tag}: steps {s.steps}/{j.steps} µs/step "
                    f"{s.us_per_step:,.0f} / {j.us_per_step:,.0f} = "
                    f"{j.us_per_step / s.us_per_step:.2f}x; KV manager "
                    f"{s.manager_us_per_step:,.0f} / {j.manager_us_per_step:,.0f}; preemptions "
                    f"{s.preemptions}/{j.preemptions}; same decisions {s.digest == j.digest}",
                    flush=True,
                )
    text = report(by_pass, args)
    print(text)
    if not args_ns.quick:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "scheduler_overhead.md").write_text(text)


if __name__ == "__main__":
    main()
