"""The memory planner (jenga-vllm plan) and the real-config → KV-shape reader behind it."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from jenga_vllm.core.layout import plan_layout
from jenga_vllm.tools.cli import jenga_max_requests, main
from jenga_vllm.tools.model_shapes import load_model_shapes

CONFIGS = Path(__file__).resolve().parents[2] / "benchmarks" / "model_configs"


def shapes_of(name: str):
    return load_model_shapes(CONFIGS / f"{name}.json")


def test_gemma4_sliding_and_full_layers_differ_in_heads_and_head_dim() -> None:
    s = shapes_of("gemma-4-26b-a4b")
    kinds = s.kinds
    sliding = kinds[("sliding_window", 1024, None)]
    full = kinds[("full", None, None)]
    assert (len(sliding), len(full)) == (25, 5)
    assert (sliding[0].num_kv_heads, sliding[0].head_dim) == (8, 256)
    assert (full[0].num_kv_heads, full[0].head_dim) == (2, 512)
    # attention_k_eq_v: vLLM still stores K and V, so 2 × heads × dim × 2 bytes.
    assert full[0].bytes_per_token == 2 * 2 * 512 * 2
    assert [layer.index for layer in full] == [5, 11, 17, 23, 29]


def test_llama4_nope_layers_come_from_transformers_default_and_are_reported() -> None:
    s = shapes_of("llama-4-scout-17b-16e-instruct")
    full = [layer.index for layer in s.layers if layer.kind == "full"]
    assert full == list(range(3, 48, 4))  # NoPE every 4th layer (no_rope_layer_interval=4)
    assert all(layer.chunk == 8192 for layer in s.layers if layer.kind == "chunked_local")
    assert any(f.startswith("text_config.no_rope_layers") for f in s.filled_fields)


@pytest.mark.parametrize(
    ("name", "num_state", "num_attn"),
    [
        ("jamba-1.5-mini", 28, 4),
        ("nemotron-h-8b-base-8k", 24, 4),
        ("qwen3-next-80b-a3b-thinking", 36, 12),
    ],
)
def test_state_bytes_match_vllms_own_model_class(name: str, num_state: int, num_attn: int) -> None:
    """Our Mamba/GDN state bytes equal what vLLM's model class computes for the same config
    (for a GPU deployment: build_vllm_config keeps the CPU platform's AVX512-BF16 rule out)."""
    from vllm.model_executor.models import ModelRegistry
    from vllm.v1.kv_cache_interface import MambaSpec

    from jenga_vllm.tools.vllm_layout import build_vllm_config

    s = shapes_of(name)
    assert sum(layer.kind == "mamba" for layer in s.layers) == num_state
    assert sum(layer.kind == "full" for layer in s.layers) == num_attn
    vc = build_vllm_config(s, max_model_len=4096)
    cls, _ = ModelRegistry.resolve_model_cls(
        vc.model_config.architecture, model_config=vc.model_config
    )
    spec = MambaSpec(
        shapes=tuple(cls.get_mamba_state_shape_from_config(vc)),
        dtypes=tuple(cls.get_mamba_state_dtype_from_config(vc)),
        block_size=16,
    )
    mamba = next(layer for layer in s.layers if layer.kind == "mamba")
    assert mamba.state_bytes == spec.page_size_bytes


def test_jenga_fits_what_exact_bytes_allow_on_a_homogeneous_model() -> None:
    s = shapes_of("llama-3.1-8b-instruct")
    kv, length = 40 << 30, 8192
    plan = plan_layout(s.layer_type_specs(16), 16, kv, max_model_len=length)
    exact = kv // s.needed_bytes(length)
    fit = jenga_max_requests(plan, length)
    assert exact - 1 <= fit <= exact  # the null large page is the only loss


def test_plan_command_prints_pages_and_both_counts(capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(
        ["plan", str(CONFIGS / "gpt-oss-20b.json"), "--kv-bytes", "4GiB", "--max-model-len", "8192"]
    )
    out = capsys.readouterr().out
    assert rc == 0
    assert "sliding_window_128" in out and "large page" in out
    assert "max-length requests that fit: jenga" in out
    assert "vLLM 0.32 (HMA default" in out and "vLLM fits" in out


def test_plan_vllm_count_is_vllms_own_max_concurrency(capsys: pytest.CaptureFixture[str]) -> None:
    from jenga_vllm.tools.vllm_layout import vllm_layout

    s = shapes_of("gemma-2-9b")
    layout = vllm_layout(s, 8 << 30, max_model_len=8192)
    main(
        [
            "plan",
            str(CONFIGS / "gemma-2-9b.json"),
            "--kv-bytes",
            str(8 << 30),
            "--max-model-len",
            "8192",
        ]
    )
    out = capsys.readouterr().out
    assert f"vLLM fits {math.floor(layout.max_concurrency)} " in out


def test_main_dispatches_subcommands_and_rejects_unknown() -> None:
    with pytest.raises(SystemExit):
        main(["no-such-command"])
    with pytest.raises(SystemExit):
        main([])
