"""Correctness on a CUDA GPU: the kernels vs the PyTorch reference, fp32/fp16/bf16.

Runs every case of tests/kernels (three layer types in one NaN-poisoned pool, scattered pages,
released pages as null and stale ids, GQA 1/4/8, mixed batches, block boundaries, splits) with
the compiled kernels: once with each case's own tile config and once with the GPU defaults of
``choose_config`` (64-key tiles, 128-row prefill blocks, split-key decode); then bigger
Gemma/gpt-oss-like shapes; then the KV write cases. Exits non-zero on any failure.

Run: ``python -m benchmarks.gpu_check`` from the repo root (package installed or not).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
import traceback

import torch
import triton

try:
    import jenga_vllm.kernels  # noqa: F401
except ImportError:  # not installed (run from the repo root): alias the top-level kernels/ folder
    import jenga_vllm
    import kernels
    import kernels.geometry
    import kernels.kv_write
    import kernels.paged_attention
    import kernels.reference
    import kernels.testing

    jenga_vllm.kernels = kernels
    for name in ("", ".geometry", ".kv_write", ".paged_attention", ".reference", ".testing"):
        sys.modules["jenga_vllm.kernels" + name] = sys.modules["kernels" + name]

from jenga_vllm.kernels import kv_write, reference_kv_write  # noqa: E402
from jenga_vllm.kernels.testing import (  # noqa: E402
    ATOL,
    CASES,
    DTYPES,
    KV_WRITE_CASES,
    THREE_TYPES,
    AttentionCase,
    KVPool,
    LayerType,
    assert_close,
    make_kv,
    run_case,
)

BIG_TYPES = (
    LayerType(
        "gemma-sliding", num_layers=2, num_kv_heads=4, head_size=128, block_size=16, window=256
    ),
    LayerType("oss-full", num_layers=1, num_kv_heads=2, head_size=64, block_size=16),
    LayerType(
        "llama4-chunked", num_layers=1, num_kv_heads=2, head_size=128, block_size=16, chunk_size=512
    ),
)
BIG_CASES = [
    AttentionCase(
        f"big-{t.name}-{dt}-{kind}", t.name, dt, g, seqs, qs, sinks=(t.name == "oss-full")
    )
    for t, g in zip(BIG_TYPES, (2, 8, 4), strict=True)
    for dt in ("fp32", "fp16", "bf16")
    for kind, seqs, qs in (
        ("mixed", [1000, 3000, 17, 2049], [1, 1, 17, 512]),
        ("decode", [4095, 700, 1600, 33, 2048, 513], [1] * 6),
    )
]


DEVICE = "cuda"  # --device cpu (with TRITON_INTERPRET=1) dry-runs this script


def run_attention(cases, types, num_large_pages: int, label: str, failures: list[str]) -> None:
    for case in cases:
        # Each case's own tile config (if it pins one), then the GPU defaults of choose_config.
        variants = [("case-config", case)] if case.config is not None else []
        variants.append(("gpu-default", dataclasses.replace(case, config=None)))
        for which, variant in variants:
            try:
                out, ref = run_case(variant, DEVICE, types, num_large_pages)
                atol = ATOL[DTYPES[case.dtype]]
                assert_close(out, ref, atol, f"{label} {case.id} [{which}]")
            except Exception:  # noqa: BLE001 - report every failure, then exit non-zero
                failures.append(f"{case.id} [{which}]")
                traceback.print_exc()


def run_kv_write(failures: list[str]) -> None:
    for case in KV_WRITE_CASES:
        try:
            dtype = DTYPES[case.dtype]
            ours = KVPool(THREE_TYPES, dtype, num_large_pages=20, seed=5)
            ref = KVPool(THREE_TYPES, dtype, num_large_pages=20, seed=5)
            t = ours.type(case.layer_type)
            gen = torch.Generator().manual_seed(11)
            pages = ours.allocate(t.name, (case.num_tokens + t.block_size - 1) // t.block_size)
            slots = [
                pages[p // t.block_size] * t.block_size + p % t.block_size
                for p in range(case.num_tokens)
            ]
            if case.padding_every:
                slots = [-1 if i % case.padding_every == 0 else x for i, x in enumerate(slots)]
            slot_mapping = torch.tensor(slots, dtype=torch.int64)
            gpu_pool = ours.pool.to(DEVICE)
            for layer in range(t.num_layers):
                key, value = make_kv(case, t.num_kv_heads, t.head_size, gen)
                view = ours.geometry(t.name, layer).kv_view(gpu_pool)
                kv_write(key.to(DEVICE), value.to(DEVICE), view, slot_mapping.to(DEVICE))
                reference_kv_write(key, value, ref.view(t.name, layer), slot_mapping)
            same = torch.equal(gpu_pool.cpu(), ref.pool)
            print(f"kv_write {case.id}: pools byte-identical = {same}")
            assert same
        except Exception:  # noqa: BLE001
            failures.append(f"kv_write {case.id}")
            traceback.print_exc()


def main() -> None:
    global DEVICE
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("-k", default="", help="only cases whose id contains this")
    args = parser.parse_args()
    DEVICE = args.device
    if DEVICE == "cuda" and not torch.cuda.is_available():
        sys.exit("gpu_check.py needs a CUDA GPU; on CPU run pytest tests/kernels")
    start = time.time()
    failures: list[str] = []
    name = torch.cuda.get_device_name() if DEVICE == "cuda" else DEVICE
    print(f"device: {name}, torch {torch.__version__}, triton {triton.__version__}")
    pick = [c for c in CASES if args.k in c.id]
    run_attention(pick, THREE_TYPES, 40, "tests", failures)
    run_attention([c for c in BIG_CASES if args.k in c.id], BIG_TYPES, 2000, "big", failures)
    run_kv_write(failures)
    print(f"gpu_check: {len(failures)} failures in {time.time() - start:.0f} s")
    for f in failures:
        print("FAILED", f)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
