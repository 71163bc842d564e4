"""Which Mamba states should stay cached? jenga's rule vs two alternatives, on real hybrid shapes.

jenga checkpoints states every block (16 tokens here), so it must choose which of them to keep
(docs/design.md §4). Three rules, each the jenga core in the simulator (benchmarks/sim/) on the
same seeded traces, 40 GiB, bf16:

    jenga        prefill-time states stay cached when superseded (stale), junction states fresh;
                 of the decode-time states only the request's newest complete one stays cached,
                 stale (a chat's turn end, a preempted request's resume point), and it
                 supersedes the last state the prompt's prefill left — the shipped rule
    every        every complete state stays cached when superseded (stale), decode-time ones too
                 (what jenga did before the engine had Mamba prefix caching)
    prompt-only  prefill-time states only: every decode-time state is dropped when superseded

Reported per (model, workload): prefix hit rate, max running requests, preemptions, and state
pages evicted (how much caching work a rule causes).

Run: python -m benchmarks.mamba_retention [--max-requests 1500]; writes
benchmarks/results/mamba_retention.md.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from benchmarks.sim.config import BLOCK_SIZE, GIB
from benchmarks.sim.loop import run_trace
from benchmarks.sim.managers import JengaManager
from benchmarks.sim.workloads import make_trace
from jenga_vllm.core.policies import POLICY_REGISTRY, MambaPolicy
from jenga_vllm.tools.cli import plan_for_budget
from jenga_vllm.tools.model_shapes import load_model_shapes

ROOT = Path(__file__).resolve().parents[1]

MODELS = ["jamba-1.5-mini", "nemotron-h-8b-base-8k", "qwen3-next-80b-a3b-thinking"]
WORKLOADS = ["multiturn", "sysprompt", "chat1k"]


class EveryState(MambaPolicy):
    def keeps_released(self, block: int, prompt_tokens: int | None) -> bool:
        return True


class PromptOnly(MambaPolicy):
    keeps_newest_decode_state = False


RULES = {"jenga": MambaPolicy, "every": EveryState, "prompt-only": PromptOnly}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--max-requests", type=int, default=1500)
    ap.add_argument("--kv-gib", type=float, default=40.0)
    args = ap.parse_args()
    kv = int(args.kv_gib * GIB)
    lines = [
        "# Mamba state retention: jenga's rule vs keeping every state vs prompt states only",
        "",
        f"`python -m benchmarks.mamba_retention` — the jenga core in the simulator, {args.kv_gib:.0f} "
        f"GiB, bf16, states checkpointed every {BLOCK_SIZE} tokens, the simulator's seeded traces "
        f"(≤ {args.max_requests} requests). Rules: see the script's docstring.",
        "",
        "| model | workload | hit rate jenga / every / prompt-only | max running | preemptions "
        "| state pages evicted |",
        "|---|---|---|---|---|---|",
    ]
    original = POLICY_REGISTRY["mamba"]
    try:
        for model in MODELS:
            shapes = load_model_shapes(ROOT / "benchmarks" / "model_configs" / f"{model}.json")
            max_len = min(shapes.max_position_embeddings, 40_960)
            for workload in WORKLOADS:
                trace = make_trace(workload, shapes, 0, kv, args.max_requests, max_len)
                if trace is None:
                    continue
                results = {}
                for name, policy in RULES.items():
                    POLICY_REGISTRY["mamba"] = policy
                    plan = plan_for_budget(shapes, BLOCK_SIZE, kv, max_len)
                    manager = JengaManager(shapes, plan)
                    result = run_trace(manager, trace, shapes, kv)
                    state = next(i for i, t in enumerate(plan.types) if not t.is_token_indexed)
                    evicted = manager.cache.evicted_pages(state)
                    results[name] = (result, evicted)
                    print(model, workload, name, f"{result.hit_rate:.3f}", evicted, flush=True)
                lines.append(
                    f"| {model} | {workload} | "
                    + " / ".join(f"{r.hit_rate:.3f}" for r, _ in results.values())
                    + " | "
                    + " / ".join(str(r.max_running) for r, _ in results.values())
                    + " | "
                    + " / ".join(str(r.preemptions) for r, _ in results.values())
                    + " | "
                    + " / ".join(f"{e:,}" for _, e in results.values())
                    + " |"
                )
    finally:
        POLICY_REGISTRY["mamba"] = original
    text = "\n".join(lines) + "\n"
    print(text)
    (ROOT / "benchmarks" / "results" / "mamba_retention.md").write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
