"""One real engine with ngram speculative decoding; prints JSON (``python -m`` this module).

``python -m tests.vllm.spec_decode_run MANAGER MODEL``: greedy fp32 token ids for prompts that
share a prefix (prefix hits) and for a batch that outgrows a small KV budget (preemption), with
repetitive prompts so the ngram proposer finds drafts; plus vLLM's own counters (prefix hits,
preemptions, spec-decode drafts / draft tokens / accepted tokens).
"""

from __future__ import annotations

import fcntl
import json
import sys

from tests.vllm.harness import ENGINE_LOCK, kv_budget, word_token_ids

SPEC = {"method": "ngram", "num_speculative_tokens": 3, "prompt_lookup_min": 2,
        "prompt_lookup_max": 4}  # fmt: skip
COUNTERS = (
    "vllm:prefix_cache_hits",
    "vllm:num_preemptions",
    "vllm:spec_decode_num_drafts",
    "vllm:spec_decode_num_draft_tokens",
    "vllm:spec_decode_num_accepted_tokens",
)


def repetitive(seed: int, length: int, prefix: list[int] | None = None) -> list[int]:
    """A prompt made of one short phrase repeated (ngram lookups find it), after ``prefix``."""
    phrase = word_token_ids(seed, 6)
    return (prefix or []) + (phrase * (length // 6 + 1))[:length]


if __name__ == "__main__":
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    from jenga_vllm import LLM
    from jenga_vllm.tools.zoo import build_model

    manager, model = sys.argv[1], sys.argv[2]
    shared = word_token_ids(7, 200)
    batches = [
        [repetitive(100, 30, prefix=shared)],
        [repetitive(100 + i, 20 + 9 * i, prefix=shared) for i in range(1, 4)],
        [repetitive(200 + i, 180 + 16 * i) for i in range(8)],
    ]
    with open(ENGINE_LOCK, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        llm = LLM(
            str(build_model(model)),
            kv_cache_manager=manager,
            speculative_config=SPEC,
            dtype="float32",
            max_model_len=512,
            block_size=32,
            kv_cache_memory_bytes=kv_budget(model),
            enforce_eager=True,
            disable_log_stats=False,
            max_num_seqs=8,
            seed=0,
        )
        params = SamplingParams(temperature=0.0, max_tokens=160, ignore_eos=True)
        outputs = []
        for batch in batches:
            outs = llm.generate(
                [TokensPrompt(prompt_token_ids=p) for p in batch], params, use_tqdm=False
            )
            outputs += [list(o.outputs[0].token_ids) for o in outs]
        counters = {m.name: m.value for m in llm.get_metrics() if m.name in COUNTERS}
        llm.llm_engine.engine_core.shutdown()
    print("SPEC_RESULT " + json.dumps({"outputs": outputs, **counters}), flush=True)
