"""The vision-embedding cache in the simulator (#16): each peer's encoder cache, driven as vLLM
0.32's scheduler drives it.

vllm   vLLM's own ``EncoderCacheManager`` with its budget of ``encoder_cache_size`` embeddings
       (``ENCODER_CACHE_EMBEDS``, vLLM's default on a GPU: ``max_num_batched_tokens``), beside
       the KV pool;
jenga  jenga's ``JengaEncoderCacheManager`` over ``vision_embedding`` pages of its pool, whose
       budget grows by the same bytes (``jenga_encoder_cache=pool``).
At admission each image of the prompt is looked up (a hit needs no encoder run) or allocated
(an encoder run), together with the prompt's KV or not at all; the simulator prefills a prompt
in one step, so the request lets its images go at the next step (vLLM frees an encoder input
once its tokens are computed). Embeddings are the language model's input width × 2 bytes
(bf16), one per image token.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from jenga_vllm.core.spec import LayerTypeSpec
from jenga_vllm.tools.model_shapes import ModelShapes

ENCODER_CACHE_EMBEDS = 8192  # vLLM's encoder_cache_size = max_num_batched_tokens (GPU default)
PAGE_EMBEDDINGS = 16  # jenga_vllm.vllm.encoder_cache.PAGE_EMBEDDINGS on a GPU (block 16)


def embed_bytes(shapes: ModelShapes) -> int:
    return int(shapes.text_config["hidden_size"]) * 2


def vision_spec(shapes: ModelShapes) -> LayerTypeSpec:
    return LayerTypeSpec.of(
        "vision_embedding", (embed_bytes(shapes),), block_tokens=PAGE_EMBEDDINGS
    )


def encoder_budget_bytes(shapes: ModelShapes) -> int:
    return ENCODER_CACHE_EMBEDS * embed_bytes(shapes)


@dataclass
class _Feature:
    identifier: str


@dataclass
class ImageRequest:
    """What an encoder-cache manager reads from a vLLM Request."""

    request_id: str
    images: tuple[tuple[int, int], ...]  # (image id, embeddings)
    mm_features: list[_Feature] = field(init=False)

    def __post_init__(self) -> None:
        self.mm_features = [_Feature(f"img{image}") for image, _ in self.images]

    def get_num_encoder_embeds(self, input_id: int) -> int:
        return self.images[input_id][1]


class ImageCache:
    """One peer's encoder cache; ``runs`` counts encoder executions."""

    def __init__(self, manager: Any, pooled: bool) -> None:
        self.ec = manager
        self.pooled = pooled  # jenga's: pages reserved with the KV (reserve / settle)
        self.runs = 0
        self._open: dict[str, tuple[ImageRequest, list[int]]] = {}
        self._prefilled: list[ImageRequest] = []

    def before(self, rid: str, images: tuple[tuple[int, int], ...], hit_pages=()) -> bool:
        """Look the images up; the misses must fit (vLLM's ``can_allocate``); jenga's are
        reserved without evicting the request's prefix hit (``hit_pages``)."""
        request = ImageRequest(rid, images)
        misses: list[int] = []
        scheduled = 0
        for i in range(len(images)):
            if self.ec.check_and_update_cache(request, i):
                continue
            if not self.ec.can_allocate(request, i, 1 << 40, scheduled):
                self.ec.free(request)
                return False
            scheduled += request.get_num_encoder_embeds(i)
            misses.append(i)
        self._open[rid] = (request, misses)
        if self.pooled and misses and not self.ec.reserve(rid, hit_pages):
            self.abandon(rid)
            return False
        return True

    def abandon(self, rid: str) -> None:
        """The prompt's KV did not fit: nothing of its images is taken."""
        request, _ = self._open.pop(rid)
        if self.pooled:
            self.ec.settle(rid, scheduled=False)
        self.ec.free(request)

    def commit(self, rid: str) -> None:
        request, misses = self._open.pop(rid)
        if self.pooled:
            self.ec.settle(rid, scheduled=True)
        for i in misses:
            self.ec.allocate(request, i)
        self.runs += len(misses)
        self._prefilled.append(request)

    def end_step(self) -> None:
        """The step's output went out; last step's prefills let their images go."""
        self.ec.get_freed_mm_hashes()
        self.ec.get_manager_metadata()
        for request in self._prefilled:
            self.ec.free(request)
        self._prefilled.clear()

    def finish(self, rid: str, images: tuple[tuple[int, int], ...]) -> None:
        self.ec.free(ImageRequest(rid, images))


def stock_cache() -> ImageCache:
    from vllm.v1.core.encoder_cache_manager import EncoderCacheManager

    return ImageCache(EncoderCacheManager(ENCODER_CACHE_EMBEDS), pooled=False)


def jenga_cache(kv_manager: Any) -> ImageCache:
    from jenga_vllm.vllm.encoder_cache import JengaEncoderCacheManager

    manager = JengaEncoderCacheManager(ENCODER_CACHE_EMBEDS)
    manager.bind(kv_manager)
    return ImageCache(manager, pooled=True)
