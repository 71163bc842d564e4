"""One real engine serving a tiny vision-language model; prints JSON (``python -m`` this module).

``python -m benchmarks.common.vlm_run MANAGER MODEL [BATCHED_TOKENS]`` (MODEL: ``llava`` or
``gemma3_vlm``; MANAGER: ``vllm``, ``jenga``, or ``jenga+pool`` — jenga with vision embeddings
in its pool; BATCHED_TOKENS: a prefill budget, ``max_num_batched_tokens``, that splits every
prompt), fp32:
    images   A alone (image 1), then B (image 1 again, another tail), C (image 2, A's text),
             D (A's text, no image) in one batch: vLLM keys image blocks by the image's hash, so
             B hits A's blocks through the image, C and D only the text before it;
    long     8 requests, 6 with images (two images used twice), ~150 text tokens each, decoding
             120 tokens on a KV budget of 1.2 max-length requests: vLLM preempts and recomputes;
    seeded   seeded sampling (temperature 0.8, a seed per request) on image prompts and a text
             prompt, 16 tokens each (under a small prefill budget vLLM discards the sample of
             every partial chunk and rewinds the request's generator).
Prints token ids per scenario, vLLM's counters (prefix-cache hits, preemptions) and the encoder
runs (images the scheduler sent to the encoder; the engine core runs in-process to count them). Needs
``zoo.engine_env()``'s PYTHONPATH where torchvision is absent (the caller sets it).
"""

from __future__ import annotations

import fcntl
import json
import os
import sys

from benchmarks.common.engines import ENGINE_LOCK, MAX_MODEL_LEN

# Text layers' KV bytes per token (fp32, K and V): llava 4 full layers, gemma3_vlm 6 layers.
BYTES_PER_TOKEN = {"llava": 2048, "gemma3_vlm": 3072}
BUDGET_REQUESTS = 1.2


def engine_kwargs(manager: str) -> dict:
    """``jenga+pool``: jenga with its encoder cache in the pool; else the manager's name."""
    name, _, extra = manager.partition("+")
    kwargs: dict = {"kv_cache_manager": name}
    if extra:
        kwargs["additional_config"] = {"jenga_encoder_cache": extra}
    return kwargs


def vlm_engine(model: str, manager: str, budget_requests: float, **overrides):
    """The zoo VLM ``model`` in an engine of ``manager`` (as ``engine_kwargs``): fp32, eager,
    block 32, one image per prompt, a KV budget of ``budget_requests`` max-length requests;
    ``overrides`` change or add engine arguments. Call it holding ``ENGINE_LOCK``."""
    from jenga_vllm import LLM
    from jenga_vllm.tools.zoo_vlm import build_vlm

    kwargs: dict = {
        "dtype": "float32",
        "max_model_len": MAX_MODEL_LEN,
        "block_size": 32,
        "kv_cache_memory_bytes": int(budget_requests * BYTES_PER_TOKEN[model] * MAX_MODEL_LEN),
        "enforce_eager": True,
        "disable_log_stats": False,
        "limit_mm_per_prompt": {"image": 1},
        "seed": 0,
        **engine_kwargs(manager),
        **overrides,
    }
    return LLM(str(build_vlm(model)), **kwargs)


def encoder_storage(llm) -> dict:
    """Where the in-process worker holds encoder outputs: entries in vLLM's dict, entries in
    jenga's vision pages (``encoder_cache.VisionPageStore``)."""
    core = llm.llm_engine.engine_core.engine_core
    runner = core.model_executor.driver_worker.worker.model_runner
    store = runner.__dict__.get("_jenga_vision_store")
    return {
        "dict_entries": len(runner.encoder_cache),
        "page_entries": len(store.pages) if store is not None else 0,
    }


def count_encoder_runs(llm) -> dict:
    """Counts the encoder inputs the in-process scheduler schedules (same for both managers)."""
    scheduler = llm.llm_engine.engine_core.engine_core.scheduler
    counts = {"encoder_runs": 0}
    schedule = scheduler.schedule

    def counting_schedule(*args, **kwargs):
        output = schedule(*args, **kwargs)
        counts["encoder_runs"] += sum(len(v) for v in output.scheduled_encoder_inputs.values())
        return output

    scheduler.schedule = counting_schedule
    return counts


def text(seed: int, n: int) -> str:
    return " ".join(f"w{(seed + 7 * i) % 480}" for i in range(n))


if __name__ == "__main__":
    from vllm import SamplingParams

    from jenga_vllm.tools.zoo_vlm import image_placeholder, make_image

    manager, model = sys.argv[1], sys.argv[2]
    batched = {"max_num_batched_tokens": int(sys.argv[3])} if len(sys.argv) > 3 else {}
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # the scheduler in this process
    image = image_placeholder(model)
    head, mid = text(3, 40), text(11, 12)

    def request(tail: int, img: int | None, head: str = head, tail_len: int = 6) -> dict:
        if img is None:
            return {"prompt": f"{head} {mid} {text(tail, tail_len)}"}
        prompt = f"{head} {image} {mid} {text(tail, tail_len)}"
        return {"prompt": prompt, "multi_modal_data": {"image": make_image(img)}}

    greedy = lambda n: SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True)  # noqa: E731
    seeded = [
        SamplingParams(temperature=0.8, seed=40 + i, max_tokens=16, ignore_eos=True)
        for i in range(4)
    ]
    scenarios = {
        "images": [
            ([request(100, 1)], greedy(16)),
            ([request(200, 1), request(100, 2), request(100, None)], greedy(16)),
        ],
        "long": [
            (
                [
                    request(300 + i, [3, 4, 5, 3, 4, 6, None, None][i], text(50 + i, 20), 130)
                    for i in range(8)
                ],
                greedy(120),
            )
        ],
        "seeded": [
            ([request(400, 1, text(60, 30), 40)], seeded[:1]),
            ([request(401, 7, text(61, 30), 60), request(402, None), request(403, 1)], seeded[1:]),
        ],
    }
    with open(ENGINE_LOCK, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        llm = vlm_engine(
            model, manager, BUDGET_REQUESTS, enable_prefix_caching=True, max_num_seqs=8, **batched
        )

        def counters() -> dict:
            names = ("vllm:prefix_cache_hits", "vllm:num_preemptions")
            return {m.name: m.value for m in llm.get_metrics() if m.name in names}

        encoder = count_encoder_runs(llm)
        result = {}
        for name, batches in scenarios.items():
            runs_before = encoder["encoder_runs"]
            before, outputs = counters(), []
            for batch, params in batches:
                outs = llm.generate(batch, params, use_tqdm=False)
                outputs += [list(o.outputs[0].token_ids) for o in outs]
            after = counters()
            result[name] = {
                "outputs": outputs,
                "prefix_hits": after["vllm:prefix_cache_hits"] - before["vllm:prefix_cache_hits"],
                "preemptions": after["vllm:num_preemptions"] - before["vllm:num_preemptions"],
                "encoder_runs": encoder["encoder_runs"] - runs_before,
            }
        llm.llm_engine.engine_core.shutdown()
    print("VLM_RESULT " + json.dumps(result), flush=True)
