"""Speculative decoding under jenga: ngram served, draft-model methods refused with the fix.

Oracle (ngram): the Gemma-3-like zoo model (sliding-window + full attention) with vLLM's ngram
proposer (3 speculative tokens) gives the same greedy token ids under jenga as under stock, with
prefix hits and forced preemption under jenga, and vLLM's spec-decode counters show drafts
accepted in both (acceptance is a property of the token ids, so the accepted counts agree to
within the few drafts a different preemption schedule adds or drops).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from jenga_vllm.core.errors import JengaUnsupportedError

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.e2e


def _run(manager: str) -> dict:
    done = subprocess.run(
        [sys.executable, "-m", "tests.vllm.spec_decode_run", manager, "gemma3"],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=ROOT,
    )
    for line in done.stdout.splitlines():
        if line.startswith("SPEC_RESULT "):
            return json.loads(line.split(" ", 1)[1])
    raise AssertionError(f"{manager} ngram engine failed:\n{done.stderr[-3000:]}")


def test_ngram_speculative_decoding_same_tokens_as_stock():
    stock, jenga = _run("vllm"), _run("jenga")
    assert jenga["outputs"] == stock["outputs"]
    assert len(jenga["outputs"]) == 12 and all(len(o) == 160 for o in jenga["outputs"])
    for run in (stock, jenga):
        assert run["vllm:spec_decode_num_accepted_tokens"] > 0
        assert run["vllm:prefix_cache_hits"] > 0
    assert jenga["vllm:num_preemptions"] > 0
    accepted = [r["vllm:spec_decode_num_accepted_tokens"] for r in (stock, jenga)]
    assert abs(accepted[0] - accepted[1]) <= 0.02 * accepted[0], accepted


def test_draft_model_methods_are_refused_before_any_engine_starts():
    from vllm.engine.arg_utils import EngineArgs

    from jenga_vllm.tools.zoo import build_model
    from jenga_vllm.vllm import plugin
    from jenga_vllm.vllm.supported import BY_KEY

    plugin.install()
    model = str(build_model("llama"))
    jenga = {"kv_cache_manager": "jenga"}
    draft = {"method": "draft_model", "model": model, "num_speculative_tokens": 2}
    args = EngineArgs(model=model, speculative_config=draft, additional_config=jenga)
    with pytest.raises(JengaUnsupportedError) as error:
        args.create_engine_config()
    assert str(error.value) == BY_KEY["speculative_draft_model"].message(model)
    ngram = {"method": "ngram", "num_speculative_tokens": 2, "prompt_lookup_max": 3}
    config = EngineArgs(
        model=model, speculative_config=ngram, additional_config=jenga
    ).create_engine_config()
    assert config.speculative_config.use_ngram()
