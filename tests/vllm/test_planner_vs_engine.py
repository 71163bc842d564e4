"""`jenga-vllm plan`'s numbers for vLLM equal what a real vLLM engine logs for the same config.

The planner (jenga_vllm.tools.vllm_layout, no weights) computes vLLM 0.32's own layout decision from a
config.json; a real engine (the e2e harness's stock run, same KV bytes, max_model_len and block
size) reports `kv_cache_size_tokens` from its "KV cache size: N tokens" start-up line.
"""

from __future__ import annotations

import pytest

from jenga_vllm.tools.zoo import build_model
from tests.vllm import harness

pytestmark = pytest.mark.e2e

# Zoo models whose architecture the shape reader knows (gemma3's gemma3_text is not one of them).
PLANNED = [m for m in ("llama", "gemma4", "gpt_oss", "llama4") if m in harness.zoo_models()]


@pytest.mark.parametrize("model", PLANNED)
def test_planner_vllm_capacity_equals_the_engines(model: str) -> None:
    from jenga_vllm.tools.model_shapes import load_model_shapes
    from jenga_vllm.tools.vllm_layout import vllm_layout

    engine = harness.run_scenarios(model, "vllm")
    shapes = load_model_shapes(str(build_model(model)), dtype="float32")
    layout = vllm_layout(
        shapes,
        harness.kv_budget(model),
        max_model_len=harness.MAX_MODEL_LEN,
        block_size=harness.BLOCK_SIZE,
    )
    assert engine.kv_cache_size_tokens is not None
    assert int(layout.max_concurrency * harness.MAX_MODEL_LEN) == engine.kv_cache_size_tokens
