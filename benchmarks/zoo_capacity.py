"""Per zoo model, same KV bytes: jenga/stock ratio of KV capacity and of max-length concurrency.

For every zoo model and both managers it serves the model (``vllm serve``, fp32, CPU, block 32,
max_model_len 512) with the same ``--kv-cache-memory-bytes``, reads vLLM's startup capacity line,
then sends N requests of max length at once (prompt max_model_len-16 tokens, 16 generated) and
samples ``/metrics`` for the peak number running together. Prints one table and writes
benchmarks/results/zoo_capacity.md. Expected from the layouts' arithmetic (a target, not a
test): ≥1.5x on Gemma-4-like, ≥1.0x on Llama-like.

Run: ``python -m benchmarks.zoo_capacity [--models gemma4,llama] [--requests 12]``.
"""

from __future__ import annotations

import argparse
import fcntl

from benchmarks.common.engines import ENGINE_LOCK, RESULTS
from benchmarks.common.serve import serve_and_measure
from jenga_vllm.tools.zoo import (
    FULL_KV_BYTES_PER_TOKEN,
    ZOO,
    build_model,
    word_token_ids,
    words,
)

MAX_MODEL_LEN = 512
DECODE = 16
# Same bytes for both managers: 4 max-length requests' worth of full-attention KV.
FULL_BYTES_PER_TOKEN = FULL_KV_BYTES_PER_TOKEN


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    # Text-prompt models only: the OpenAI completions API sends no audio to an encoder-decoder
    # (its capacity and concurrency are in e2e_encoder_decoder.md, from offline engines).
    text_models = [m for m in FULL_BYTES_PER_TOKEN if not ZOO[m].encoder_decoder]
    parser.add_argument("--models", default=",".join(text_models))
    parser.add_argument("--requests", type=int, default=12)
    parser.add_argument("--budget-requests", type=float, default=4.0)
    args = parser.parse_args()
    for model in args.models.split(","):
        if model not in text_models:
            parser.error(f"--models: choose among {', '.join(text_models)}")

    rows = []
    for model in args.models.split(","):
        kv_bytes = int(args.budget_requests * FULL_BYTES_PER_TOKEN[model] * MAX_MODEL_LEN)
        prompts = [
            words(word_token_ids(500 + i, MAX_MODEL_LEN - DECODE)) for i in range(args.requests)
        ]
        runs = {}
        with open(ENGINE_LOCK, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            for manager in ("vllm", "jenga"):
                print(f"{model}: --kv-cache-manager {manager} ...", flush=True)
                runs[manager] = serve_and_measure(
                    build_model(model),
                    manager,
                    kv_bytes=kv_bytes,
                    prompts=prompts,
                    max_tokens=DECODE,
                    max_model_len=MAX_MODEL_LEN,
                    prefix_caching=ZOO[model].prefix_caching,
                )
        s, j = runs["vllm"], runs["jenga"]
        rows.append(
            f"| {model} | {kv_bytes:,} | {s.capacity_tokens:,} | {j.capacity_tokens:,} | "
            f"{j.capacity_tokens / s.capacity_tokens:.2f}x | {s.peak_running} | {j.peak_running} | "
            f"{j.peak_running / max(s.peak_running, 1):.2f}x |"
        )
        print(rows[-1], flush=True)
    header = (
        "| model | KV bytes | stock capacity (tokens) | jenga capacity (tokens) | capacity ratio "
        "| stock peak running (max-length) | jenga peak running | concurrency ratio |\n"
        "|---|---:|---:|---:|---:|---:|---:|---:|"
    )
    text = header + "\n" + "\n".join(rows)
    print(text)
    RESULTS.mkdir(exist_ok=True)
    descriptions = "\n".join(f"- {m}: {ZOO[m].description}" for m in args.models.split(","))
    (RESULTS / "zoo_capacity.md").write_text(
        "# Zoo capacity: jenga vs stock vLLM at the same KV bytes\n\n"
        f"max_model_len {MAX_MODEL_LEN}, block 32, fp32, CPU; {args.requests} requests of "
        f"{MAX_MODEL_LEN - DECODE}+{DECODE} tokens sent at once. Capacity is vLLM's start-up "
        "line. Peak running is `/metrics` polled every 0.2 s and can miss the true peak; the "
        "per-scheduler-step peak is in e2e_max_length.md (benchmarks/e2e_throughput.py "
        f"--max-length).\n\n{descriptions}\n\n{text}\n"
    )


if __name__ == "__main__":
    main()
