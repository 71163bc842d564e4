"""One engine, a request mix on a tiny zoo VLM; prints JSON (``python -m`` this module).

``python -m benchmarks.common.vlm_mix_run MANAGER MODEL [MIX] [rounds=N] [profile]`` (MANAGER as in
``vlm_run``: ``vllm``, ``jenga``, ``jenga+pool``; ``rounds``: the mix is generated N times one
after the other, each round new questions and image draws (default 1); ``profile``: also CPU
seconds per phase of the engine step, ``benchmarks/e2e_throughput.PhaseProfile``). MIX:
    images  128 requests submitted at once, 96 with one image drawn Zipf(0.8) from 32 (a few
            popular images, a long tail), 32 text-only; each a 24-word shared system prompt, its
            own 20–40-word question, then the image — so a prefix hit never covers an image and
            every image needs its encoder output, cached or computed;
    text    the same prompts without images;
    tight   ``images`` on a KV budget of 1.5 max-length requests instead of 4, where KV is short
            of memory all the time (vLLM preempts).
Greedy, 32 output tokens, on a KV budget of 4 max-length requests; ``max_num_batched_tokens``
256, so vLLM's encoder cache (``encoder_cache_size`` = that many embeddings) holds 16 of the
zoo's 16-embedding images (jenga's pool gets the same bytes on top of the KV budget). Prints
wall and process CPU seconds of ``generate`` (engine core and worker run in this process, so
the CPU seconds are all the serving work), output tokens, the tokens, median TTFT, vLLM's KV capacity in
tokens, its counters (prefix-cache hits, preemptions), the encoder runs (images the
scheduler sent to the encoder; the engine core runs in-process to count them) and where the
worker holds encoder outputs at the end (vLLM's dict or jenga's vision pages). Needs
``zoo.engine_env()``'s PYTHONPATH where torchvision is absent.
"""

from __future__ import annotations

import fcntl
import json
import os
import random
import statistics
import sys
import time

from benchmarks.common.engines import ENGINE_LOCK
from benchmarks.common.vlm_run import count_encoder_runs, encoder_storage, text, vlm_engine

BUDGET_REQUESTS = {"images": 4.0, "text": 4.0, "tight": 1.5}  # max-length requests of KV
OUTPUT_TOKENS = 32
NUM_REQUESTS = 128
NUM_IMAGES = 32
ZIPF = 0.8
BATCHED_TOKENS = 256


def mix(placeholder: str | None, round_: int = 0) -> list[tuple[str, int | None]]:
    """(prompt, image seed or None) per request; deterministic. ``placeholder`` None: the
    text-only twin (same prompts, no images). ``round_`` > 0: other questions and draws."""
    rng = random.Random(5 + 1000 * round_)
    weights = [1 / (k + 1) ** ZIPF for k in range(NUM_IMAGES)]
    requests = []
    for i in range(NUM_REQUESTS):
        question = f"{text(1, 24)} {text(100 + 13 * i + 5 * round_, rng.randint(20, 40))}"
        image = rng.choices(range(NUM_IMAGES), weights)[0]
        if i % 4 == 3 or placeholder is None:
            requests.append((question, None))
        else:
            requests.append((f"{question} {placeholder}", image))
    return requests


if __name__ == "__main__":
    from vllm import SamplingParams

    from jenga_vllm.tools.zoo_vlm import image_placeholder, make_image

    manager, model = sys.argv[1], sys.argv[2]
    kind = sys.argv[3] if len(sys.argv) > 3 else "images"
    options = sys.argv[4:]
    profiled = "profile" in options
    rounds = int(next((o.split("=")[1] for o in options if o.startswith("rounds=")), 1))
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # the scheduler in this process
    placeholder = image_placeholder(model) if kind != "text" else None
    rounds_prompts = []
    for round_ in range(rounds):
        prompts = []
        for prompt, image in mix(placeholder, round_):
            item: dict = {"prompt": prompt}
            if image is not None:
                item["multi_modal_data"] = {"image": make_image(10 + image)}
            prompts.append(item)
        rounds_prompts.append(prompts)
    with open(ENGINE_LOCK, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        llm = vlm_engine(
            model,
            manager,
            BUDGET_REQUESTS[kind],
            max_num_seqs=16,
            max_num_batched_tokens=BATCHED_TOKENS,
        )
        encoder = count_encoder_runs(llm)
        profile = None
        if profiled:
            from benchmarks.common.phases import PhaseProfile

            profile = PhaseProfile(llm)
        params = SamplingParams(temperature=0.0, max_tokens=OUTPUT_TOKENS, ignore_eos=True)
        started, cpu_started = time.perf_counter(), time.process_time()
        outs = [o for p in rounds_prompts for o in llm.generate(p, params, use_tqdm=False)]
        seconds = time.perf_counter() - started
        cpu_seconds = time.process_time() - cpu_started
        names = ("vllm:prefix_cache_hits", "vllm:prefix_cache_queries", "vllm:num_preemptions")
        counters = {m.name: m.value for m in llm.get_metrics() if m.name in names}
        capacity = llm.llm_engine.vllm_config.cache_config.kv_cache_size_tokens
        storage = encoder_storage(llm)
        llm.llm_engine.engine_core.shutdown()
    ttft = [o.metrics.first_token_latency for o in outs if o.metrics is not None]
    result = {
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "phases": profile.totals() if profile is not None else None,
        "output_tokens": sum(len(o.outputs[0].token_ids) for o in outs),
        "outputs": [list(o.outputs[0].token_ids) for o in outs],
        "kv_capacity_tokens": capacity,
        "encoder_runs": encoder["encoder_runs"],
        "ttft_median_s": statistics.median(ttft) if ttft else None,
        **storage,
        **counters,
    }
    print("VLM_MIX_RESULT " + json.dumps(result), flush=True)
