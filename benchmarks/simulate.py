"""Trace-driven KV-cache simulation on real model shapes: jenga vs vLLM 0.32 vs uniform vs oracle.

For each model (benchmarks/model_configs) and workload, one seeded synthetic trace is replayed by
the same simple scheduler through each KV manager with the same KV byte budget (the package
benchmarks/sim/ holds the workloads, peers, oracle, scheduler loop and report; this is the
driver):

    jenga     the jenga core (JengaCache on plan_layout of the model's layer types)
    vllm      vLLM 0.32's real KVCacheManager (BlockPool, per-type managers, one global LRU) on the
              layout vLLM itself decides (jenga_vllm.tools.vllm_layout: its grouping, page unification,
              Mamba block alignment, num_blocks) — not a re-derivation
    vllm_pmu16  (Mamba hybrids) the same with ``--prefix-match-unit 16``: vLLM's sub-block hits
    uniform   the same with the hybrid manager disabled (uniform paging); Mamba hybrids cannot run so
    oracle    admits while the exact bytes every running request needs fit (no pages, no caching)

The scheduler (identical for all peers) is benchmarks/sim/loop.py; the workloads (chat, chat1k,
longdoc, longctx, multiturn, sysprompt, multimodal) are described in benchmarks/sim/workloads.py.

Metrics per (model, workload, manager): max concurrent running requests, average and peak
utilization (bytes the running requests need ÷ usable pool bytes), waste (bytes held − bytes
needed at the peak) with its padding part, prefix-hit rate (hit ÷ prompt tokens), preemptions.
Requests wait from their ``arrival`` step (0 unless the workload says) or, in a session, until the
previous turn finishes.
Writes benchmarks/results/simulate.md and PNG plots; ``--report NAME`` writes a partial run
(some ``--models``) to its own file, without plots, leaving the whole-run table alone.

Usage: python -m benchmarks.simulate [--quick] [--kv-gib 40] [--models a,b] [--workloads x,y]
           [--out DIR] [--report NAME.md]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

from benchmarks.sim.config import BLOCK_SIZE, GIB, LONG_CONTEXT
from benchmarks.sim.loop import run_trace
from benchmarks.sim.managers import JengaManager, Manager, VllmManager
from benchmarks.sim.oracle import OracleManager
from benchmarks.sim.report import Case, write_plots, write_report
from benchmarks.sim.workloads import make_trace
from jenga_vllm.tools.cli import plan_for_budget
from jenga_vllm.tools.model_shapes import ModelShapes, load_model_shapes

REPO = Path(__file__).resolve().parent.parent

CONFIG_DIR = REPO / "benchmarks" / "model_configs"
RESULTS_DIR = REPO / "benchmarks" / "results"
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
    "qwen3.5-35b-a3b",
]
QUICK_MODELS = ["llama-3.1-8b-instruct", "gemma-4-26b-a4b", "nemotron-h-8b-base-8k"]
WORKLOADS = ["chat", "chat1k", "longdoc", "longctx", "multiturn", "sysprompt", "multimodal"]
# vLLM's --prefix-match-unit for Mamba hybrids' second vLLM peer: its finest sub-block hits.
PREFIX_MATCH_UNIT = 16
failures: list[str] = []


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
    if shapes.is_hybrid_state:  # vLLM at its finest working Mamba setting
        pmu = vllm_layout(
            shapes, kv_bytes, max_model_len=max_model_len, prefix_match_unit=PREFIX_MATCH_UNIT
        )
        factories.append(lambda: VllmManager(pmu, f"vllm_pmu{PREFIX_MATCH_UNIT}"))
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
    parser.add_argument(
        "--report", default=None, help="file name under --out (default simulate.md; no plots)"
    )
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
    name = args.report or ("simulate_quick.md" if args.quick else "simulate.md")
    plots = not args.quick and args.report is None
    write_report(
        cases,
        args.out / name,
        int(kv_gib * GIB),
        time.time() - start,
        args.quick,
        failures,
        plots=plots,
        command=" ".join(
            ["python -m benchmarks.simulate", *(sys.argv[1:] if argv is None else argv)]
        ),
    )
    if plots:
        write_plots(cases, args.out)
    print((args.out / name).read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
