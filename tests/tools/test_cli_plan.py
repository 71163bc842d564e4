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
        ("qwen3.5-35b-a3b", 30, 10),
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


def test_qwen35_moe_nested_text_config_gives_30_gdn_and_10_attention_layers() -> None:
    """Qwen3.5-35B-A3B (Hub config, text_config nested): 3 Gated-DeltaNet layers then 1 full,
    ×10; the recurrent state in the config's mamba_ssm_dtype (float32), as vLLM applies it."""
    import json

    from transformers import Qwen3_5MoeConfig, Qwen3_5MoeTextConfig

    raw = json.loads((CONFIGS / "qwen3.5-35b-a3b.json").read_text())
    config = Qwen3_5MoeConfig(**{k: v for k, v in raw.items() if k != "model_type"})
    assert isinstance(config.text_config, Qwen3_5MoeTextConfig)
    assert config.text_config.mamba_ssm_dtype == "float32"
    s = shapes_of("qwen3.5-35b-a3b")
    assert (s.model_type, s.architecture, s.is_multimodal) == (
        "qwen3_5_moe",
        "Qwen3_5MoeForCausalLM",
        True,
    )
    assert s.filled_fields == ()  # every field we read is in the file
    state = [layer for layer in s.layers if layer.kind == "mamba"]
    full = [layer for layer in s.layers if layer.kind == "full"]
    assert (len(state), len(full)) == (30, 10)
    assert [layer.index for layer in full] == list(range(3, 40, 4))
    conv_dim = 2 * 16 * 128 + 32 * 128  # q, k (16 heads × 128) and v (32 heads × 128)
    gdn_bytes = (4 - 1) * conv_dim * 2 + 32 * 128 * 128 * 4  # bf16 conv + fp32 recurrent
    assert all(layer.state_bytes == gdn_bytes == 2_146_304 for layer in state)
    assert all(layer.bytes_per_token == 2 * 2 * 256 * 2 for layer in full)


def test_vllm_inflates_qwen35_attention_block_to_hold_the_fp32_state() -> None:
    """vLLM's own choice (align mode, bf16 block 16): the attention block grows until one page
    of the 10 full layers' group holds a whole GDN state — twice Qwen3-Next's (544), whose state
    is bf16."""
    from jenga_vllm.tools.vllm_layout import vllm_layout

    blocks = {}
    for name in ("qwen3.5-35b-a3b", "qwen3-next-80b-a3b-thinking"):
        s = shapes_of(name)
        layout = vllm_layout(s, 8 << 30, max_model_len=8192)
        attention = next(g for g in layout.groups if g.kind == "FullAttentionSpec")
        state = next(layer for layer in s.layers if layer.kind == "mamba").state_bytes
        per_token = next(layer for layer in s.layers if layer.kind == "full").bytes_per_token
        assert attention.block_size == math.ceil(state / per_token / 16) * 16
        blocks[name] = attention.block_size
    assert blocks == {"qwen3.5-35b-a3b": 1056, "qwen3-next-80b-a3b-thinking": 544}


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
