"""One engine, an image-heavy mix on a tiny zoo VLM; prints JSON (``python -m`` this module).

``python -m tests.vllm.vlm_mix_run MANAGER MODEL``: 24 requests submitted at once — 16 with one
image drawn Zipf(1.2) from 6 (a few popular images), 8 text-only — each a 24-word shared system
prompt + its own 20–60 words, greedy, 64 output tokens, on a KV budget of 1.5 max-length
requests. Prints wall seconds of ``generate``, output tokens, vLLM's KV capacity in tokens and
its counters (prefix-cache hits, preemptions). Needs ``tests/vllm/vlm_shim`` on PYTHONPATH where
torchvision is absent.
"""

from __future__ import annotations

import fcntl
import json
import random
import sys
import time

from tests.vllm.harness import ENGINE_LOCK, MAX_MODEL_LEN
from tests.vllm.vlm_run import BYTES_PER_TOKEN, text

BUDGET_REQUESTS = 1.5
OUTPUT_TOKENS = 64


def mix(placeholder: str) -> list[tuple[str, int | None]]:
    """(prompt, image seed or None) per request; deterministic."""
    rng = random.Random(5)
    weights = [1 / (k + 1) ** 1.2 for k in range(6)]
    requests = []
    for i in range(24):
        own = text(100 + 13 * i, rng.randint(20, 60))
        if i % 3 == 2:
            requests.append((f"{text(1, 24)} {own}", None))
        else:
            image = rng.choices(range(6), weights)[0]
            requests.append((f"{text(1, 24)} {placeholder} {own}", image))
    return requests


if __name__ == "__main__":
    from vllm import SamplingParams

    from jenga_vllm import LLM
    from jenga_vllm.tools.zoo_vlm import build_vlm, image_placeholder, make_image

    manager, model = sys.argv[1], sys.argv[2]
    prompts = []
    for prompt, image in mix(image_placeholder(model)):
        item = {"prompt": prompt}
        if image is not None:
            item["multi_modal_data"] = {"image": make_image(10 + image)}
        prompts.append(item)
    with open(ENGINE_LOCK, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        llm = LLM(
            str(build_vlm(model)),
            kv_cache_manager=manager,
            dtype="float32",
            max_model_len=MAX_MODEL_LEN,
            block_size=32,
            kv_cache_memory_bytes=int(BUDGET_REQUESTS * BYTES_PER_TOKEN[model] * MAX_MODEL_LEN),
            enforce_eager=True,
            disable_log_stats=False,
            max_num_seqs=16,
            limit_mm_per_prompt={"image": 1},
            seed=0,
        )
        params = SamplingParams(temperature=0.0, max_tokens=OUTPUT_TOKENS, ignore_eos=True)
        started = time.perf_counter()
        outs = llm.generate(prompts, params, use_tqdm=False)
        seconds = time.perf_counter() - started
        names = ("vllm:prefix_cache_hits", "vllm:prefix_cache_queries", "vllm:num_preemptions")
        counters = {m.name: m.value for m in llm.get_metrics() if m.name in names}
        capacity = llm.llm_engine.vllm_config.cache_config.kv_cache_size_tokens
        llm.llm_engine.engine_core.shutdown()
    result = {
        "seconds": seconds,
        "output_tokens": sum(len(o.outputs[0].token_ids) for o in outs),
        "outputs": [list(o.outputs[0].token_ids) for o in outs],
        "kv_capacity_tokens": capacity,
        **counters,
    }
    print("VLM_MIX_RESULT " + json.dumps(result), flush=True)
