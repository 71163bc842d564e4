"""The token workloads several benchmarks share, and the KV yardstick of the zoo models."""

from __future__ import annotations


def workload(num_requests: int, seed: int = 11, max_length: int = 0) -> list[list[int]]:
    """Prompts: 96–223 tokens, half sharing a 128-token prefix; or ``max_length`` tokens each."""
    from jenga_vllm.tools.zoo import word_token_ids

    if max_length:
        return [word_token_ids(500 + i, max_length) for i in range(num_requests)]
    shared = word_token_ids(seed, 128)
    prompts = []
    for i in range(num_requests):
        length = 96 + (37 * i) % 128
        prefix = shared if i % 2 == 0 else None
        prompts.append(word_token_ids(seed * 1000 + i, length, prefix=prefix))
    return prompts


def full_bytes_per_token(model: str) -> int:
    """KV budget yardstick: bytes a token costs if every layer kept it (jenga_vllm.tools.zoo)."""
    from jenga_vllm.tools.zoo import FULL_KV_BYTES_PER_TOKEN

    return FULL_KV_BYTES_PER_TOKEN[model]
