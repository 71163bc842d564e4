"""benchmarks/simulate.py: the baseline is vLLM's own decision, accounting matches a hand trace."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest

from benchmarks import simulate
from benchmarks.sim import loop, managers, oracle, workloads
from jenga_vllm.tools.model_shapes import load_model_shapes
from jenga_vllm.tools.vllm_layout import VllmLayoutError, vllm_layout

REPO = Path(__file__).resolve().parents[2]

CONFIGS = REPO / "benchmarks" / "model_configs"


def test_vllm_decision_moves_when_a_spec_changes() -> None:
    """Gemma-4's full layers (2 heads × 512) make vLLM scale their block to 32 tokens; give them
    the sliding layers' shape and vLLM's own functions go back to 16-token blocks everywhere."""
    s = load_model_shapes(CONFIGS / "gemma-4-26b-a4b.json")
    real = vllm_layout(s, 8 << 30, max_model_len=8192)
    full = [g for g in real.groups if g.kind == "FullAttentionSpec"]
    assert full and full[0].block_size == 32
    assert real.scheduler_block_size == 32
    same = dataclasses.replace(
        s,
        layers=tuple(
            dataclasses.replace(layer, num_kv_heads=8, head_dim=256, head_dim_v=256)
            for layer in s.layers
        ),
    )
    changed = vllm_layout(same, 8 << 30, max_model_len=8192)
    assert {g.block_size for g in changed.groups} == {16}
    assert changed.scheduler_block_size == 16
    assert changed.max_concurrency < real.max_concurrency  # full layers now cost 2x per token


def test_hybrid_manager_modes_come_from_vllm() -> None:
    s = load_model_shapes(CONFIGS / "llama-4-scout-17b-16e-instruct.json")
    on = vllm_layout(s, 40 << 30, max_model_len=131072, hma="on")
    off = vllm_layout(s, 40 << 30, max_model_len=131072, hma="off")
    assert on.hybrid_enabled and not off.hybrid_enabled
    assert any(g.kind == "ChunkedLocalAttentionSpec" for g in on.groups)
    assert [g.kind for g in off.groups] == ["FullAttentionSpec"]
    assert on.max_concurrency > 2 * off.max_concurrency
    nemotron = load_model_shapes(CONFIGS / "nemotron-h-8b-base-8k.json")
    with pytest.raises(VllmLayoutError, match="promote"):
        vllm_layout(nemotron, 8 << 30, max_model_len=8192, hma="off")
    default = vllm_layout(nemotron, 8 << 30, max_model_len=8192)
    assert {g.block_size for g in default.groups} == {1040}  # vLLM's inflated attention block


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory):
    """A 2-layer full-attention model: 1 KV head × 8 dims, bf16 → 32 B/token/layer."""
    path = tmp_path_factory.mktemp("tiny") / "config.json"
    path.write_text(
        json.dumps(
            {
                "model_type": "llama",
                "architectures": ["LlamaForCausalLM"],
                "hidden_size": 32,
                "intermediate_size": 64,
                "num_attention_heads": 4,
                "num_key_value_heads": 1,
                "num_hidden_layers": 2,
                "vocab_size": 128,
                "max_position_embeddings": 64,
                "torch_dtype": "bfloat16",
            }
        )
    )
    return load_model_shapes(path)


def test_accounting_matches_the_oracle_on_a_hand_computed_trace(tiny) -> None:
    """6 requests of 16 prompt + 16 output tokens; a page (16 tokens × 2 layers × 32 B) is
    1,024 B; the budget is 11 pages. Step 1 admits all 6 (one page each: 6,144 B needed).
    Step 2: each grows to 32 tokens (2 pages); only 5 fit in the 10 usable pages (the 11th is
    the null page for the paged managers; the oracle has 11,264 B and 6 × 2,048 does not fit
    either), so the newest is preempted once; 5 finish; it is re-admitted and finishes at step 3.
    """
    assert tiny.needed_bytes(32) == 2048
    kv = 11 * 1024
    trace = [workloads.TraceRequest(list(range(i * 100, i * 100 + 16)), [7] * 16) for i in range(6)]
    layout = vllm_layout(tiny, kv, max_model_len=64)
    assert layout.num_blocks == 11 and layout.block_bytes == 1024
    peers = [
        managers.JengaManager(tiny, simulate.plan_for_budget(tiny, 16, kv, 64)),
        managers.VllmManager(layout, "vllm"),
        oracle.OracleManager(tiny, kv),
    ]
    for manager in peers:
        r = loop.run_trace(manager, trace, tiny, kv)
        assert (r.max_running, r.preemptions, r.completed, r.steps) == (6, 1, 6, 3), manager.name
        assert r.peak_util == pytest.approx(6 * 1024 / kv), manager.name
        assert r.util_series == pytest.approx([6144 / kv, 1024 / kv, 0.0]), manager.name
    assert peers[0].held_bytes() == 0 and peers[2].held_bytes() == 0


def test_quick_run_writes_a_wellformed_table(tmp_path: Path) -> None:
    rc = simulate.main(
        [
            "--models",
            "llama-3.1-8b-instruct,gpt-oss-20b",
            "--workloads",
            "chat,multiturn",
            "--kv-gib",
            "2",
            "--max-requests",
            "40",
            "--max-model-len",
            "4096",
            "--out",
            str(tmp_path),
            "--quick",
        ]
    )
    assert rc == 0
    text = (tmp_path / "simulate_quick.md").read_text()
    rows = [
        line for line in text.splitlines() if line.startswith("| llama") or line.startswith("| gpt")
    ]
    assert len(rows) == 4
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        ratio = float(cells[4])  # jenga ÷ vllm max concurrency
        assert 0.5 < ratio < 2.0


def test_a_partial_run_with_report_leaves_the_whole_run_table_and_plots_alone(
    tmp_path: Path,
) -> None:
    args = ["--models", "llama-3.1-8b-instruct", "--workloads", "chat", "--kv-gib", "1"]
    args += ["--max-requests", "20", "--max-model-len", "2048", "--out", str(tmp_path)]
    assert simulate.main([*args, "--report", "part.md"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["part.md"]
    text = (tmp_path / "part.md").read_text()
    assert "--report part.md" in text.split("\n")[2]  # the command that made it
    assert sum(line.startswith("| llama-3.1-8b-instruct | chat") for line in text.splitlines()) == 1
    assert "Plots:" not in text


def test_exact_need_counts_shared_prefix_blocks_once(tiny) -> None:
    """Two running requests sharing a 32-token prefix: 2 shared + 2 private 1,024-B blocks."""
    need = oracle.ExactNeed(tiny)
    a = managers.Running("a", 0, list(range(48)), 48, 0, 48)
    b = managers.Running("b", 1, list(range(32)) + [999] * 16, 48, 0, 48)
    need.set(a, 48)
    assert need.total == 3 * 1024
    assert need.cost_of(b, 48) == 1024
    need.set(b, 48)
    assert need.total == 4 * 1024
    need.remove(a)
    assert need.total == 3 * 1024


def test_sysprompt_trace_shares_a_few_long_system_prompts_and_arrives_over_time() -> None:
    """Each request = one of 5 shared 300-1,000-token prompts + a unique user part; arrivals are
    seeded, non-decreasing and spread over many steps (not one queue at step 0)."""
    shapes = load_model_shapes(CONFIGS / "nemotron-h-8b-base-8k.json")
    trace = workloads.make_trace("sysprompt", shapes, 0, 8 << 30, 400, 8192)
    assert trace == workloads.make_trace("sysprompt", shapes, 0, 8 << 30, 400, 8192)
    groups: dict[tuple[int, ...], list[list[int]]] = {}
    for r in trace:
        groups.setdefault(tuple(r.prompt[:300]), []).append(r.prompt)
    assert 2 <= len(groups) <= 5
    for prompts in groups.values():
        if len(prompts) > 1:
            assert 300 <= len(os.path.commonprefix(prompts)) <= 1000
    arrivals = [r.arrival for r in trace]
    assert arrivals == sorted(arrivals) and arrivals[0] < 5 and arrivals[-1] > 10
    assert all(r.after is None for r in trace)


def test_a_hit_on_a_state_written_this_step_waits_one_engine_step() -> None:
    """Nemotron-H: the first request of a system prompt computes it; the second makes the
    checkpoint at the shared-prefix junction; the third would start from that checkpoint while
    the engine is still writing it. Both managers refuse it (vLLM's MambaManager rule) and the
    scheduler admits it an engine step later, within the same simulated step, with its hit."""
    shapes = load_model_shapes(CONFIGS / "nemotron-h-8b-base-8k.json")
    system = list(range(1, 641))  # 40 blocks
    trace = [
        workloads.TraceRequest(system + [10_000 + 100 * i + j for j in range(50)], [7] * 32)
        for i in range(3)
    ]
    kv = 8 << 30
    manager = managers.JengaManager(shapes, simulate.plan_for_budget(shapes, 16, kv, 8192))
    r = loop.run_trace(manager, trace, shapes, kv)
    assert r.deferrals == 1 and r.max_running == 3 and r.preemptions == 0
    assert r.hit_tokens == 640  # only the third request: the second made the checkpoint
    vllm = managers.VllmManager(vllm_layout(shapes, kv, max_model_len=8192), "vllm")
    assert vllm.checkpoint_tokens == 1040  # its block: the 640-token prompt has no checkpoint
    assert loop.run_trace(vllm, trace, shapes, kv).hit_tokens == 0


def test_vision_images_in_the_pool_never_encode_more_than_vllms_encoder_cache() -> None:
    """benchmarks/sim_vision.py's case on Gemma-4-26B shapes, small: both peers serve the same
    trace; jenga's pool encodes each image at least once and never more often than vLLM's own
    EncoderCacheManager with its 8,192-embedding budget."""
    from benchmarks import sim_vision
    from benchmarks.sim import vision

    shapes = load_model_shapes(CONFIGS / "gemma-4-26b-a4b.json")
    kv = 1 << 30
    trace = workloads.make_trace("vision", shapes, 0, kv, 300, 4096)
    assert trace is not None and all(len(r.images) == 1 for r in trace)
    distinct = {image for r in trace for image, _ in r.images}
    specs = [*shapes.layer_type_specs(16), vision.vision_spec(shapes)]
    from jenga_vllm.core.layout import plan_layout

    plan = plan_layout(specs, 16, kv + vision.encoder_budget_bytes(shapes), max_model_len=4096)
    jenga = loop.run_trace(managers.JengaManager(shapes, plan, with_images=True), trace, shapes, kv)
    layout = vllm_layout(shapes, kv, max_model_len=4096)
    stock = loop.run_trace(managers.VllmManager(layout, "vllm", True), trace, shapes, kv)
    assert jenga.completed == stock.completed == len(trace)
    assert len(distinct) <= jenga.encoder_runs <= stock.encoder_runs
    assert "| gemma-4-26b-a4b |" in sim_vision.run_model("gemma-4-26b-a4b", kv, 60, 4096)
