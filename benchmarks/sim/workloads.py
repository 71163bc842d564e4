"""Seeded synthetic traces (tokens are random ids, so only deliberate sharing produces hits).

Workloads:
    chat        ShareGPT-like: prompt ~ lognormal(median 180, σ 1.0) in [8, 4096], output ~
                lognormal(median 200, σ 0.8) in [8, 2048]; no shared prefix
    chat1k      the same, prompts ≤ 768 and outputs ≤ 256 tokens (Mamba hybrids only)
    longdoc     QA over long documents: one of 16 documents (Zipf 1.1) of 8k–32k tokens + a
                32–128-token question; output 64–512 (models with ≥ 40k context only)
    longctx     96k–130k-token prompts (models with 128k context)
    multiturn   sessions of 2–6 turns; each session starts with one of 4 system prompts of
                300–1,000 tokens; turn k+1 = turn k's prompt + its answer + a new 40–300-token
                user message, sent when turn k finishes; answers 40–400 tokens
    sysprompt   single-turn requests, each = one of 5 shared system prompts of 300–1,000 tokens
                (Zipf 1.0) + a unique user message ~ lognormal(median 180, σ 1.0) in [8, 2048];
                output as chat. Requests arrive over time (Poisson, ``SYSPROMPT_LOAD`` × the rate
                whose unshared KV need fills the pool)
    multimodal  (vision models) a 64-token system prompt + 1–2 images (Gemma-4: 280 tokens,
                Llama-4: 144·(tiles+1), tiles 1–4; Qwen3.5: one token per 32×32 pixels — patch
                16, spatial merge 2 — of a 384–1280 × 384–1280-pixel image, sides rounded to
                32 as its processor does) from a pool of 64 (Zipf 1.2) + a 16–96-token
                question; output 32–256
    vision      (vision models) the e2e_multimodal shape: a 64-token system prompt + a 16–96-token
                question + one image (sizes as above) from a pool of 64 (Zipf 0.8) — no prefix
                hit covers an image, so every image needs its embeddings — output 32–256; the
                requests carry their images for the peers' encoder caches (sim/vision.py)
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from benchmarks.sim.config import DECODE_STRIDE, LONG_CONTEXT, SYSPROMPT_LOAD
from jenga_vllm.tools.model_shapes import ModelShapes


@dataclass(slots=True)
class TraceRequest:
    """One request of a trace. ``after`` = index of the request that must finish first;
    ``arrival`` = the scheduler step from which it waits."""

    prompt: list[int]
    output: list[int]
    after: int | None = None
    arrival: int = 0
    images: tuple[tuple[int, int], ...] = ()  # (image id, embeddings), for encoder caches


def _tokens(rng: random.Random, n: int) -> list[int]:
    return [rng.randrange(1, 1 << 30) for _ in range(n)]


def _lognormal(rng: random.Random, median: float, sigma: float, lo: int, hi: int) -> int:
    return int(min(hi, max(lo, rng.lognormvariate(math.log(median), sigma))))


def _zipf(rng: random.Random, n: int, s: float) -> int:
    weights = [1.0 / (i + 1) ** s for i in range(n)]
    return rng.choices(range(n), weights)[0]


def make_trace(
    workload: str,
    shapes: ModelShapes,
    seed: int,
    pool_bytes: int,
    max_requests: int,
    max_model_len: int,
    demand_factor: float = 2.5,
) -> list[TraceRequest] | None:
    """A seeded trace whose total need is ≈ demand_factor × the pool (None: not applicable)."""
    rng = random.Random(f"{workload}-{seed}")
    trace: list[TraceRequest] = []
    demand = 0

    def add(
        prompt: list[int], output: list[int], after: int | None = None, images: tuple = ()
    ) -> None:
        nonlocal demand
        trace.append(TraceRequest(prompt, output, after, images=images))
        demand += shapes.needed_bytes(len(prompt) + len(output))

    if workload == "chat":
        while demand < demand_factor * pool_bytes and len(trace) < max_requests:
            p = _lognormal(rng, 180, 1.0, 8, 4096)
            o = _lognormal(rng, 200, 0.8, 8, 2048)
            add(_tokens(rng, p), _tokens(rng, o))
    elif workload == "chat1k":
        if not shapes.is_hybrid_state:
            return None
        while demand < demand_factor * pool_bytes and len(trace) < max_requests:
            p = _lognormal(rng, 180, 1.0, 8, 768)
            o = _lognormal(rng, 150, 0.8, 8, 256)
            add(_tokens(rng, p), _tokens(rng, o))
    elif workload == "longctx":
        if max_model_len < LONG_CONTEXT:
            return None
        while demand < demand_factor * pool_bytes and len(trace) < max_requests:
            p = rng.randint(96_000, LONG_CONTEXT - 1024)
            add(_tokens(rng, p), _tokens(rng, rng.randint(128, 1024)))
    elif workload == "longdoc":
        if max_model_len < 33_000:
            return None
        docs = [_tokens(rng, rng.randint(8192, 32768)) for _ in range(16)]
        while demand < demand_factor * pool_bytes and len(trace) < max_requests:
            doc = docs[_zipf(rng, len(docs), 1.1)]
            add(doc + _tokens(rng, rng.randint(32, 128)), _tokens(rng, rng.randint(64, 512)))
    elif workload == "multiturn":
        systems = [_tokens(rng, rng.randint(300, 1000)) for _ in range(4)]
        limit = max_model_len - 512
        while demand < demand_factor * pool_bytes and len(trace) < max_requests:
            context = list(systems[rng.randrange(len(systems))])
            prev = None
            for _turn in range(rng.randint(2, 6)):
                prompt = context + _tokens(rng, rng.randint(40, 300))
                output = _tokens(rng, rng.randint(40, 400))
                if len(prompt) + len(output) > limit:
                    break
                add(prompt, output, prev)
                prev = len(trace) - 1
                context = prompt + output
    elif workload == "sysprompt":
        systems = [_tokens(rng, rng.randint(300, 1000)) for _ in range(5)]
        while demand < demand_factor * pool_bytes and len(trace) < max_requests:
            system = systems[_zipf(rng, len(systems), 1.0)]
            user = _lognormal(rng, 180, 1.0, 8, 2048)
            add(system + _tokens(rng, user), _tokens(rng, _lognormal(rng, 200, 0.8, 8, 2048)))
        _poisson_arrivals(rng, trace, shapes, SYSPROMPT_LOAD * pool_bytes)
    elif workload in ("multimodal", "vision"):
        if not shapes.is_multimodal:
            return None
        system = _tokens(rng, 64)
        if shapes.model_type == "gemma4":
            sizes = [280] * 64
        elif shapes.model_type == "qwen3_5_moe":
            sizes = [
                round(rng.randint(384, 1280) / 32) * round(rng.randint(384, 1280) / 32)
                for _ in range(64)
            ]
        else:
            sizes = [144 * (rng.randint(1, 4) + 1) for _ in range(64)]
        images = [_tokens(rng, n) for n in sizes]
        while workload == "vision" and demand < demand_factor * pool_bytes:
            if len(trace) >= max_requests:
                break
            k = _zipf(rng, len(images), 0.8)
            prompt = system + _tokens(rng, rng.randint(16, 96)) + images[k]
            add(prompt, _tokens(rng, rng.randint(32, 256)), images=((k, sizes[k]),))
        while workload == "multimodal" and demand < demand_factor * pool_bytes:
            if len(trace) >= max_requests:
                break
            prompt = list(system)
            for _ in range(rng.randint(1, 2)):
                prompt += images[_zipf(rng, len(images), 1.2)]
            prompt += _tokens(rng, rng.randint(16, 96))
            add(prompt, _tokens(rng, rng.randint(32, 256)))
    else:
        raise ValueError(f"unknown workload {workload!r}")
    return trace


def _poisson_arrivals(
    rng: random.Random, trace: list[TraceRequest], shapes: ModelShapes, load_bytes: int
) -> None:
    """Poisson arrivals at the rate at which the running requests, each holding its unshared need
    (prompt + half its output, no prefix sharing) for its life (one prefill step + one step per
    decode stride), hold ``load_bytes`` on average (Little's law: rate × E[need × life])."""
    held = sum(
        shapes.needed_bytes(len(r.prompt) + len(r.output) // 2)
        * (1 + math.ceil(len(r.output) / DECODE_STRIDE))
        for r in trace
    )
    per_step = load_bytes * len(trace) / held
    clock = 0.0
    for r in trace:
        clock += rng.expovariate(per_step)
        r.arrival = int(clock)
