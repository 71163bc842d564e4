"""``make demo``: jenga against stock vLLM on two tiny heterogeneous models, same KV bytes.

1. Capacity (sliding window + full attention, Gemma-4-like): for each manager it starts
   ``vllm serve MODEL --kv-cache-manager {vllm,jenga}`` on 127.0.0.1 with the same
   ``--kv-cache-memory-bytes``, sends real OpenAI-API completion requests concurrently, samples
   ``/metrics`` while they run, shuts the server down, and prints one table: KV capacity in tokens
   (vLLM's startup line), the peak number of requests running at once, preemptions, generated
   tokens/s, and the jenga/stock ratio; then the jenga server's per-layer-type series
   (``vllm:jenga_*``) from its last /metrics scrape.
2. Prefix hits on a Mamba-2 hybrid (Granite-4-like with a real state size, where vLLM inflates
   its attention block to 544 tokens): the same 12 requests sharing system prompts of 300–1,000
   tokens through one in-process engine per peer (benchmarks/e2e_mamba_prefix.py's quick
   sysprompt run: fixed arrival steps), stock at its default and at its finest prefix-match
   unit (16) against jenga: prefix hit rate, time to first token, output tokens/s, and whether
   every peer generated the same tokens.

Writes benchmarks/results/demo.md. Run: ``make demo`` (or ``python -m benchmarks.demo [--model
gemma4] [--requests 16] [--no-hybrid]``).
"""

from __future__ import annotations

import argparse
import fcntl

from benchmarks.common.engines import ENGINE_LOCK, RESULTS
from benchmarks.common.serve import ServeRun, serve_and_measure
from jenga_vllm.tools.zoo import ZOO, build_model, word_token_ids, words


def table(model: str, kv_bytes: int, runs: dict[str, ServeRun]) -> str:
    stock, jenga = runs["vllm"], runs["jenga"]

    def ratio(a: float, b: float) -> str:
        return f"{a / b:.2f}x" if b else "n/a"

    rows = [
        ("KV capacity (tokens)", stock.capacity_tokens, jenga.capacity_tokens),
        ("max concurrency (vLLM's figure)", stock.max_concurrency, jenga.max_concurrency),
        ("peak running requests", stock.peak_running, jenga.peak_running),
        ("preemptions", stock.preemptions, jenga.preemptions),
        ("generated tokens/s", round(stock.tokens_per_s, 1), round(jenga.tokens_per_s, 1)),
    ]
    lines = [
        f"model: {model} ({ZOO[model].description}); KV bytes per engine: {kv_bytes:,}",
        "",
        "| metric | stock vLLM | jenga | jenga/stock |",
        "|---|---:|---:|---:|",
    ]
    for name, s, j in rows:
        lines.append(f"| {name} | {s} | {j} | {ratio(j, s)} |")
    return "\n".join(lines)


HYBRID = "granite_hybrid_wide"
HYBRID_PEERS = ("vllm", "vllm_pmu16", "jenga")


def hybrid_table() -> str:
    """Table 2 (module docstring): the quick sysprompt run of e2e_mamba_prefix, one per peer."""
    from benchmarks.e2e_mamba_prefix import KV_BYTES, run_child

    runs = {}
    for peer in HYBRID_PEERS:
        print(f"prefix hits on {HYBRID} with {peer} ...", flush=True)
        runs[peer] = run_child(peer, HYBRID, "sysprompt", True, 32)
    # stock at its best: the higher hit rate, then the shorter time to first token
    stock = max(("vllm", "vllm_pmu16"), key=lambda p: (runs[p]["hit_rate"], -runs[p]["ttft_mean"]))
    same = all(runs[p]["outputs"] == runs["jenga"]["outputs"] for p in HYBRID_PEERS)
    labels = {"vllm": "stock vLLM", "vllm_pmu16": "stock, --prefix-match-unit 16"}
    rows = [
        ("prefix hit rate", "hit_rate", "{:.3f}"),
        ("cached prompt tokens", "cached_tokens", "{:,}"),
        ("TTFT mean (s)", "ttft_mean", "{:.3f}"),
        ("output tokens/s", "tokens_per_s", "{:.1f}"),
    ]
    first = runs["jenga"]
    lines = [
        f"model: {HYBRID} ({first['requests']} requests sharing 300–1,000-token system prompts, "
        f"block 32, vLLM's attention block {runs['vllm']['block_size']} tokens); KV bytes per "
        "engine: "
        f"{KV_BYTES[HYBRID]:,}",
        "",
        "| metric | "
        + " | ".join(labels.get(p, p) for p in HYBRID_PEERS)
        + f" | jenga / {labels[stock]} |",
        "|---|" + "---:|" * (len(HYBRID_PEERS) + 1),
    ]
    for name, key, fmt in rows:
        cells = [fmt.format(runs[p][key]) for p in HYBRID_PEERS]
        base = runs[stock][key]
        ratio = f"{runs['jenga'][key] / base:.2f}x" if base else "— (stock: 0)"
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {ratio} |")
    lines.append(f"| same tokens as jenga | {'yes' if same else 'NO'} | | | |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model",
        default="gemma4",
        choices=[m for m, recipe in ZOO.items() if not recipe.encoder_decoder],  # text prompts
    )
    parser.add_argument("--kv-bytes", type=int, default=4_000_000)
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument("--prompt-tokens", type=int, default=320)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--max-model-len", type=int, default=512)
    parser.add_argument("--no-hybrid", action="store_true", help="skip table 2 (Mamba-2 hits)")
    args = parser.parse_args()

    path = build_model(args.model)
    prompts = [words(word_token_ids(1000 + i, args.prompt_tokens)) for i in range(args.requests)]
    runs = {}
    with open(ENGINE_LOCK, "a") as lock:  # one engine at a time on a shared machine
        fcntl.flock(lock, fcntl.LOCK_EX)
        for manager in ("vllm", "jenga"):
            print(f"serving {args.model} with --kv-cache-manager {manager} ...", flush=True)
            runs[manager] = serve_and_measure(
                path,
                manager,
                kv_bytes=args.kv_bytes,
                prompts=prompts,
                max_tokens=args.max_tokens,
                max_model_len=args.max_model_len,
            )
    text = table(args.model, args.kv_bytes, runs)
    scrape = runs["jenga"].jenga_series
    if not scrape or runs["vllm"].jenga_series:
        raise RuntimeError("jenga's series must appear under jenga and only there")
    hybrid = "" if args.no_hybrid else hybrid_table()
    print()
    print(text)
    print("\njenga's per-layer-type series, from the jenga server's /metrics after the run:")
    print(scrape)
    if hybrid:
        print("\nPrefix hits on a Mamba-2 hybrid whose vLLM block exceeds the shared prompts:\n")
        print(hybrid)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "demo.md").write_text(
        "# make demo\n\n## 1. Capacity\n\n"
        f"{args.requests} concurrent completions of {args.prompt_tokens} prompt tokens + "
        f"{args.max_tokens} generated, greedy, fp32, CPU.\n\n{text}\n\n"
        "jenga's per-layer-type series, from the jenga server's /metrics after the run "
        f"(README, Metrics):\n\n```\n{scrape}\n```\n"
        + (
            "\n## 2. Prefix hits on a Mamba-2 hybrid\n\nOne run per peer, greedy, fp32, CPU "
            "(timings from one run on a 2-core machine: ±30%; benchmarks/results/"
            f"e2e_mamba_prefix.md has repeated runs).\n\n{hybrid}\n"
            if hybrid
            else ""
        )
    )


if __name__ == "__main__":
    main()
