"""The README's "Supported with jenga" table is supported.py's table, row for row."""

from __future__ import annotations

from pathlib import Path

from jenga_vllm.vllm import supported

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_support_table_is_the_one_in_supported_py():
    assert supported.readme_table() in README.read_text(), (
        "README.md's support table is out of date: paste jenga_vllm.vllm.supported.readme_table()"
    )


def test_every_refusal_names_a_fix():
    for row in supported.REFUSED:
        message = row.message("x")
        assert row.feature in message and row.fix in message
        assert row.stage in ("args", "config", "layout")
        assert (row.applies is None) == (row.stage == "layout")


def _layout_cases() -> dict:
    """Layer specs that trigger each ``layout`` refusal (they are met where the specs are)."""
    import torch
    from vllm.v1.attention.backends.registry import MambaAttentionBackendEnum
    from vllm.v1.kv_cache_interface import CircularBufferSpec, FullAttentionSpec, MambaSpec

    def mamba(kind, mode="align"):
        return MambaSpec(
            block_size=32,
            shapes=((3, 64), (64, 16)),
            dtypes=(torch.float32, torch.float32),
            mamba_type=kind,
            mamba_cache_mode=mode,
        )

    attention = {"block_size": 32, "num_kv_heads": 2, "head_size": 32, "dtype": torch.float32}

    def nixl_on_a_mamba_hybrid() -> None:
        """NixlConnector with a Mamba-2 + attention model: refused where the pool is planned."""
        from vllm.engine.arg_utils import EngineArgs

        from jenga_vllm.tools.zoo import build_model
        from jenga_vllm.vllm.kv_config import build_kv_cache_configs

        config = EngineArgs(
            model=str(build_model("granite_hybrid")),
            dtype="float32",
            block_size=32,
            max_model_len=512,
            additional_config={"kv_cache_manager": "jenga"},
            kv_transfer_config={"kv_connector": "NixlConnector", "kv_role": "kv_both"},
        ).create_engine_config()
        specs = {"f": FullAttentionSpec(**attention),
                 "m": mamba(MambaAttentionBackendEnum.MAMBA2)}  # fmt: skip
        build_kv_cache_configs(config, [specs], [1 << 24])

    return {
        "nixl_state_layers": nixl_on_a_mamba_hybrid,
        "cpu_mamba_mixer": {"m": mamba(MambaAttentionBackendEnum.MAMBA1)},
        "mamba_cache_mode": {"m": mamba(MambaAttentionBackendEnum.MAMBA2, "all")},
        "padded_pages": {"a": FullAttentionSpec(**attention, page_size_padded=1 << 20)},
        "unknown_spec": {"c": CircularBufferSpec(**attention)},
    }


def _config_cases(tmp_path: Path) -> dict:
    """Engine arguments that trigger each ``config`` refusal (checked before any process)."""
    import json

    from jenga_vllm.tools.zoo import build_model

    llama, hybrid = str(build_model("llama")), str(build_model("granite_hybrid"))
    mamba_only = tmp_path / "mamba2"  # an attention-free model: its config is all vLLM reads
    mamba_only.mkdir()
    config = {"architectures": ["Mamba2ForCausalLM"], "model_type": "mamba2", "vocab_size": 484,
              "hidden_size": 128, "num_hidden_layers": 2, "num_heads": 8, "head_dim": 32,
              "state_size": 16, "n_groups": 1, "expand": 2, "conv_kernel": 4,
              "chunk_size": 64}  # fmt: skip
    (mamba_only / "config.json").write_text(json.dumps(config))
    return {
        "attention_free": {"model": str(mamba_only), "tokenizer": llama},
        "encoder_decoder_prefix_caching": {
            "model": str(build_model("whisper")),
            "enable_prefix_caching": True,
        },
        "speculative_method": {
            "model": llama,
            "speculative_config": {"method": "medusa", "model": llama, "num_speculative_tokens": 2},
        },
        "speculative_hybrid": {
            "model": hybrid,
            "speculative_config": {
                "method": "draft_model",
                "model": hybrid,
                "num_speculative_tokens": 2,
            },
        },
    }


def test_every_refusal_row_is_triggered_and_names_its_fix(tmp_path):
    """Each refused feature, turned on as a user would, gets exactly its row's error: ``args``
    rows in test_switches.py (a real start); ``config`` rows here through vLLM's
    ``create_engine_config`` (no process starts); ``layout`` rows on the layer specs."""
    import pytest
    from vllm.engine.arg_utils import EngineArgs

    from jenga_vllm.core.errors import JengaUnsupportedError
    from jenga_vllm.vllm import plugin
    from jenga_vllm.vllm.kv_config import layer_types_from_specs
    from tests.vllm.test_switches import REFUSED_ARGS

    plugin.install()
    layout, config = _layout_cases(), _config_cases(tmp_path)
    for row in supported.REFUSED:
        if row.stage == "args":
            assert row.key in REFUSED_ARGS, row.key
            continue
        with pytest.raises(JengaUnsupportedError) as error:
            if row.stage == "layout":
                case = layout[row.key]
                case() if callable(case) else layer_types_from_specs(case, 32)
            else:
                args = dict(config[row.key])
                EngineArgs(
                    **args, additional_config={"kv_cache_manager": "jenga"}
                ).create_engine_config()
        assert row.feature in str(error.value) and row.fix in str(error.value), row.key
