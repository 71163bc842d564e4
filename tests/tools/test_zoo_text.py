"""The zoo's text helpers: ``words`` is what the zoo tokenizer reads back as the same ids."""

from __future__ import annotations


def test_words_round_trip_through_the_zoo_tokenizer():
    from transformers import AutoTokenizer

    from jenga_vllm.tools.zoo import build_model, word_token_ids, words

    tokenizer = AutoTokenizer.from_pretrained(str(build_model("llama")))
    ids = word_token_ids(3, 300)
    assert tokenizer(words(ids), add_special_tokens=False)["input_ids"] == ids
