"""Each policy against hand-computed expectations (block size 16)."""

import ast
import pathlib

import pytest

from jenga_vllm.core import POLICY_REGISTRY, LayerTypeSpec, block_hashes, register_policy
from jenga_vllm.core.policies import MambaPolicy
from tests.core.helpers import BS, make_cache


def policy(kind: str, block_tokens: int = 16, **extra):
    spec = LayerTypeSpec.uniform("t", kind, 1, 8, **extra)
    return POLICY_REGISTRY[kind](spec, block_tokens, 16)


def cached_set(blocks):
    blocks = set(blocks)
    return lambda i: i in blocks


def test_full_attention_needs_everything_and_an_unbroken_run():
    p = policy("full")
    assert p.first_needed_block(1000) == 0
    assert p.num_blocks(33) == 3
    assert p.longest_valid_hit(10, cached_set({0, 1, 2, 4, 5})) == 3
    assert p.longest_valid_hit(2, cached_set({0, 1, 2})) == 2
    assert p.longest_valid_hit(5, cached_set({1, 2, 3})) == 0


@pytest.mark.parametrize(
    "computed, first",
    [(0, 0), (39, 0), (40, 0), (47, 0), (48, 0), (55, 1), (56, 1), (100, 3), (103, 4)],
)
def test_sliding_window_releases_blocks_left_of_the_window(computed, first):
    # W=40: the next token (position n) needs positions >= n-39.
    p = policy("sliding_window", window=40)
    assert p.first_needed_block(computed) == first


def test_sliding_window_hit_needs_only_the_window():
    p = policy("sliding_window", window=40)
    # Length 8 blocks = 128 tokens needs positions >= 89, i.e. blocks 5..7.
    assert p.longest_valid_hit(8, cached_set({5, 6, 7})) == 8
    # Block 6 missing: 7 blocks (112 tokens) needs blocks 4..6 - missing; 6 needs 3..5 - no 3/4.
    assert p.longest_valid_hit(8, cached_set({0, 1, 5, 7})) == 2
    assert p.longest_valid_hit(8, cached_set({3, 4, 5, 7})) == 6


def test_chunked_local_hit_at_chunk_boundary_needs_nothing():
    p = policy("chunked_local", chunk=64)  # 4 blocks per chunk
    assert p.first_needed_block(64) == 4
    assert p.first_needed_block(70) == 4
    assert p.first_needed_block(63) == 0
    assert p.longest_valid_hit(8, cached_set(set())) == 8  # 128 tokens: a chunk boundary
    assert p.longest_valid_hit(7, cached_set({4, 5})) == 6  # 96 tokens needs blocks 4, 5
    assert p.longest_valid_hit(7, cached_set({5, 6})) == 4  # block 4 missing: back to 64
    assert p.longest_valid_hit(7, cached_set({4, 5, 6})) == 7


def test_mamba_keeps_one_state_and_hits_only_at_cached_checkpoints():
    p = policy("mamba", block_tokens=64)  # checkpoint every 64 tokens = 4 common blocks
    assert p.num_blocks(130) == 3
    assert p.first_needed_block(130) == 2  # only the running state (block 2) is held
    assert p.first_needed_block(128) == 1  # the state after token 128 lives in block 1
    assert p.release_threshold(1) == 128  # the end of the running block
    # A step to 200 tokens writes the running state (block 3) and, when the engine exports it,
    # the state at 192 (block 2); nothing in between.
    assert p.new_blocks(1, 200, checkpoint=True) == [2, 3]
    assert p.new_blocks(1, 200, checkpoint=False) == [3]
    # A step ending on a boundary (256) writes the running state there; its checkpoint is the
    # state after 192, the longest hit a 256-token prompt can have (one token is recomputed).
    assert p.new_blocks(0, 256, checkpoint=True) == [2, 3]
    # Prefill-time states stay cached when superseded; decode-time ones are the cache's choice.
    assert p.keeps_released(1, prompt_tokens=130)
    assert not p.keeps_released(2, prompt_tokens=130)
    assert p.keeps_released(2, prompt_tokens=None)
    # max 11 common blocks -> candidate lengths 2 mamba blocks (8 common) then 1 (4 common)
    assert p.longest_valid_hit(11, cached_set({1})) == 8
    assert p.longest_valid_hit(11, cached_set({0})) == 4
    assert p.longest_valid_hit(11, cached_set(set())) == 0


def test_cross_attention_never_limits_a_token_prefix():
    p = policy("cross_attention")
    assert not p.uses_token_prefix
    assert p.longest_valid_hit(9, cached_set(set())) == 9


def test_eviction_rank_is_the_token_position_in_every_type():
    assert policy("full").eviction_rank(3) == 48
    assert policy("sliding_window", window=40).eviction_rank(3) == 48
    assert policy("mamba", block_tokens=64).eviction_rank(3) == 192


def test_each_policy_says_what_kind_of_type_it_is():
    # What code outside policies/ asks instead of comparing kind names.
    kinds = {
        "full": policy("full"),
        "sliding_window": policy("sliding_window", window=40),
        "chunked_local": policy("chunked_local", chunk=64),
        "mamba": policy("mamba"),
        "cross_attention": policy("cross_attention"),
        "vision_embedding": policy("vision_embedding"),
    }
    assert [k for k, p in kinds.items() if not p.is_token_indexed] == ["mamba"]
    assert [k for k, p in kinds.items() if p.needs_whole_prefix] == ["full"]
    assert {k: p.window_tokens for k, p in kinds.items() if p.window_tokens} == {
        "sliding_window": 40,
        "chunked_local": 64,
    }
    assert [k for k, p in kinds.items() if p.holds_items] == ["vision_embedding"]


class GatedDeltaNetPolicy(MambaPolicy):
    """A linear-attention state type: Mamba's rules under its own kind name."""

    kind = "gated_deltanet"


@pytest.fixture
def gated_deltanet():
    register_policy(GatedDeltaNetPolicy)
    yield
    del POLICY_REGISTRY["gated_deltanet"]


def _replay(state_kind: str) -> list:
    """Two requests sharing a prefix over full + sliding window + a state type, under pressure:
    every decision (hits, page tables, refusals, evictions) as a list."""
    specs = [
        LayerTypeSpec.uniform("full", "full", 2, 64),
        LayerTypeSpec.uniform("swa", "sliding_window", 3, 48, window=40),
        LayerTypeSpec.uniform("state", state_kind, 2, 1024, block_tokens=32),
    ]
    cache = make_cache(specs, large_pages=3)
    shared = list(range(1, 97))
    seen = [cache.state_types, cache.attention_types, cache.window_types]
    for rid, tail in (("a", range(500, 540)), ("b", range(700, 760)), ("a2", range(500, 540))):
        tokens = shared + list(tail)
        hashes = block_hashes(tokens, BS)
        hit = cache.find_longest_hit(hashes, len(tokens) - 1)
        seen.append((hit.num_tokens, hit.junction_tokens))
        for n in range(max(hit.num_tokens, 1), len(tokens) + 1, 7):
            pages = cache.allocate(rid, n, hit if n == max(hit.num_tokens, 1) else None)
            seen.append(pages is not None)
            if pages is None:
                break
            cache.cache_blocks(rid, hashes, n)
            cache.release_unneeded(rid, n)
        seen.append(cache.block_ids(rid))
        cache.free(rid)
        seen.append([cache.evicted_pages(t) for t in range(3)])
    return seen


def test_a_new_state_kind_is_one_class_and_one_registry_line(gated_deltanet):
    # Registered, a state kind under a new name is served exactly as Mamba is: the cache asks
    # the policy, never the kind's name.
    mamba = _replay("mamba")
    assert _replay("gated_deltanet") == mamba
    assert mamba[0] == [2]  # the third type is a state type
    assert (0, 128) in mamba  # a junction: the attention types could serve more than the state
    assert mamba[-1] == [8, 12, 7]  # the pool was under pressure: every type evicted


def _compares_a_kind_name(node: ast.AST) -> bool:
    """``x.kind == "full"``, ``kind != "mamba"``, ``kind in ("a", "b")``, ``kind in WINDOW_KINDS``."""
    if not isinstance(node, ast.Compare):
        return False
    sides = [node.left, *node.comparators]
    names_kind = any(
        (isinstance(s, ast.Attribute) and s.attr == "kind")
        or (isinstance(s, ast.Name) and s.id == "kind")
        for s in sides
    )
    literal = any(
        isinstance(c, ast.Constant) and isinstance(c.value, str) for s in sides for c in ast.walk(s)
    )
    kind_set = any(isinstance(s, ast.Name) and s.id.endswith("KINDS") for s in sides)
    return names_kind and (literal or kind_set)


def test_no_code_outside_the_policies_compares_kind_names():
    # Per-kind rules are policy properties (is_token_indexed, needs_whole_prefix, window_tokens,
    # holds_items, ...): a new kind is one class + one registry line, not an edit per ladder.
    package = pathlib.Path(__file__).resolve().parents[2] / "jenga_vllm"
    sources = [
        path
        for folder in (package / "core", package / "vllm")
        for path in folder.rglob("*.py")
        if "policies" not in path.parts
    ]
    offenders = [
        f"{path.relative_to(package)}:{node.lineno}"
        for path in sources
        for node in ast.walk(ast.parse(path.read_text(), str(path)))
        if _compares_a_kind_name(node)
    ]
    assert not offenders, offenders
