"""``make demo``: serve a tiny heterogeneous model with jenga and with stock vLLM, same KV bytes.

For each manager it starts ``vllm serve MODEL --kv-cache-manager {vllm,jenga}`` on 127.0.0.1 with
the same ``--kv-cache-memory-bytes``, sends real OpenAI-API completion requests concurrently,
samples ``/metrics`` while they run, shuts the server down, and prints one table:
KV capacity in tokens (vLLM's startup line), the peak number of requests running at once,
preemptions, generated tokens/s, and the jenga/stock ratio; then the jenga server's per-layer-type
series (``vllm:jenga_*``) from its last /metrics scrape. Also writes benchmarks/results/demo.md.

Run: ``make demo`` (or ``python benchmarks/demo.py [--model gemma4] [--requests 16]``).
"""

from __future__ import annotations

import argparse
import fcntl
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from jenga_vllm.tools.server import VllmServer
from jenga_vllm.tools.zoo import ZOO, build_model, word_token_ids, words

RESULTS = Path(__file__).resolve().parent / "results"
ENGINE_LOCK = "/tmp/jenga-engine.lock"


@dataclass
class ServeRun:
    manager: str
    capacity_tokens: int
    max_concurrency: float
    peak_running: int
    preemptions: int
    tokens_per_s: float
    completion_tokens: int
    jenga_series: str  # the vllm:jenga_* samples of the last /metrics scrape ("" for stock)


def serve_and_measure(
    model_path: Path,
    manager: str,
    *,
    kv_bytes: int,
    prompts: list[str],
    max_tokens: int,
    max_model_len: int,
    prefix_caching: bool = True,
) -> ServeRun:
    """One server: capacity, then all prompts at once while /metrics is sampled."""
    extra = ("--max-num-seqs", "64") + (() if prefix_caching else ("--no-enable-prefix-caching",))
    with VllmServer(
        model_path,
        manager,
        kv_cache_memory_bytes=kv_bytes,
        max_model_len=max_model_len,
        extra_args=extra,
    ) as server:
        capacity, concurrency = server.capacity()
        peak = 0
        done = threading.Event()

        def sample() -> None:
            nonlocal peak
            while not done.is_set():
                try:
                    peak = max(peak, int(server.metrics().get("vllm:num_requests_running", 0)))
                except OSError:
                    pass
                time.sleep(0.2)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        start = time.time()
        with ThreadPoolExecutor(max_workers=len(prompts)) as pool:
            results = list(pool.map(lambda p: server.complete(p, max_tokens), prompts))
        elapsed = time.time() - start
        done.set()
        sampler.join()
        bad = [body for status, body in results if status != 200]
        if bad:
            raise RuntimeError(f"{manager}: {len(bad)} requests failed, e.g. {bad[0]}")
        tokens = sum(body["usage"]["completion_tokens"] for _, body in results)
        preemptions = int(server.metrics().get("vllm:num_preemptions_total", 0))
        series = jenga_series(server.metrics_text())
    return ServeRun(
        manager, capacity, concurrency, peak, preemptions, tokens / elapsed, tokens, series
    )


def jenga_series(scrape: str) -> str:
    """The ``vllm:jenga_*`` samples of a /metrics scrape (no HELP/TYPE lines, no _created)."""
    return "\n".join(
        line
        for line in scrape.splitlines()
        if line.startswith("vllm:jenga_") and "_created{" not in line
    )


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
    print()
    print(text)
    print("\njenga's per-layer-type series, from the jenga server's /metrics after the run:")
    print(scrape)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "demo.md").write_text(
        "# make demo\n\n"
        f"{args.requests} concurrent completions of {args.prompt_tokens} prompt tokens + "
        f"{args.max_tokens} generated, greedy, fp32, CPU.\n\n{text}\n\n"
        "jenga's per-layer-type series, from the jenga server's /metrics after the run "
        f"(README, Metrics):\n\n```\n{scrape}\n```\n"
    )


if __name__ == "__main__":
    main()
