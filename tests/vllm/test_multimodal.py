"""Vision-language models served under jenga: image prompts, same tokens as stock (#16 part).

Oracle: for each zoo VLM (``jenga_vllm/tools/zoo_vlm.py``: LLaVA-like, full attention; a
Gemma-3-like one, sliding-window + full text layers) the same greedy token ids under jenga as
under stock vLLM 0.32 for image prompts — the same image in two requests (a prefix hit through
the image: vLLM keys those blocks by the image's hash), another image, a text-only prompt — and
for a batch of image prompts that outgrows the KV budget (preemption and recompute) — with the
encoder outputs in vLLM's encoder cache (``jenga``) and in jenga's pool (``jenga+pool``:
``jenga_encoder_cache=pool``, vision-embedding pages written and read by the worker). With the
pool, an image-heavy mix whose distinct images outnumber what vLLM's encoder budget holds runs
the encoder fewer times than stock, with the same tokens.
"""

from __future__ import annotations

import json

import pytest

from benchmarks.common.engines import run_module
from jenga_vllm.tools.zoo import engine_env

pytestmark = pytest.mark.e2e


_RUNS: dict[tuple[str, ...], dict] = {}


def _run(manager: str, model: str, *batched_tokens: str) -> dict:
    key = (manager, model, *batched_tokens)
    if key not in _RUNS:
        env = engine_env()
        _RUNS[key] = run_module("benchmarks.common.vlm_run", *key, marker="VLM_RESULT", env=env)
    return _RUNS[key]


@pytest.mark.parametrize("model", ["llava", "gemma3_vlm"])
def test_image_prompts_same_tokens_as_stock(model):
    stock = _run("vllm", model)
    for peer in ("jenga", "jenga+pool"):
        jenga = _run(peer, model)
        for name in ("images", "long", "seeded"):
            assert jenga[name]["outputs"] == stock[name]["outputs"], (peer, name)
        assert [len(o) for o in jenga["images"]["outputs"]] == [16] * 4
        # the image changes the output: A and C share their text, not their image
        assert jenga["images"]["outputs"][0] != jenga["images"]["outputs"][2]
        # B hits A's blocks through the image; C and D the text before it
        assert jenga["images"]["prefix_hits"] == stock["images"]["prefix_hits"] > 0, peer
        assert jenga["images"]["encoder_runs"] == stock["images"]["encoder_runs"] == 2, peer
        assert jenga["long"]["preemptions"] > 0 and stock["long"]["preemptions"] > 0, peer


def test_seeded_image_prompts_split_by_a_64_token_budget_give_stocks_unsplit_tokens():
    """Seeded sampling on image prompts whose prefills jenga runs in 64-token chunks (vLLM
    discards each partial chunk's sample and rewinds the generator: a crash on CPU before the
    fix); stock runs them unsplit."""
    stock = _run("vllm", "llava")["seeded"]
    jenga = _run("jenga", "llava", "64")["seeded"]
    assert jenga["outputs"] == stock["outputs"]
    assert len({tuple(o) for o in jenga["outputs"]}) == 4


def test_vision_pages_in_the_pool_run_the_encoder_less_with_the_same_tokens():
    """The image-heavy mix of benchmarks/e2e_multimodal.py (Gemma-3-like): 28 distinct images
    among 96 image requests, vLLM's encoder budget holds 16 — stock evicts and re-encodes;
    jenga's pool keeps them beside the KV (same total bytes)."""

    def mix(manager: str) -> dict:
        env = engine_env()
        return run_module(
            "benchmarks.common.vlm_mix_run",
            manager,
            "gemma3_vlm",
            "images",
            marker="VLM_MIX_RESULT",
            env=env,
        )

    stock, jenga = mix("vllm"), mix("jenga+pool")
    assert jenga["outputs"] == stock["outputs"]
    assert jenga["output_tokens"] == stock["output_tokens"] == 128 * 32
    distinct = 28  # the mix's images (benchmarks/common/vlm_mix_run.py, seeded)
    assert distinct <= jenga["encoder_runs"] < distinct + 4
    assert stock["encoder_runs"] >= 1.3 * jenga["encoder_runs"]
    # the worker holds them in the pool's pages, not in vLLM's dict
    assert jenga["dict_entries"] == 0 and jenga["page_entries"] > 16
    assert stock["dict_entries"] > 0 and stock["page_entries"] == 0


# A chat template for the Gemma-3-like zoo VLM: each image part becomes its placeholder, text
# parts their text, separated by spaces (vLLM's string format would join them with newlines,
# which Gemma-3's processor merges into the image's own newline tokens).
CHAT_TEMPLATE = (
    "{% for m in messages %}{% for c in m['content'] %}"
    "{% if c['type'] == 'text' %}{{ c['text'] }} {% else %}<start_of_image> {% endif %}"
    "{% endfor %}{% endfor %}"
)


def _image_part(data: bytes, mime: str = "image/png") -> dict:
    import base64

    url = f"data:{mime};base64,{base64.b64encode(data).decode()}"
    return {"type": "image_url", "image_url": {"url": url}}


def test_bad_images_get_vllms_400_and_the_server_keeps_serving(tmp_path):
    """Bad input over HTTP, jenga serving the Gemma-3-like VLM: a corrupt image, more images
    than --limit-mm-per-prompt, and an image prompt longer than the model's max length each get
    vLLM's normal 400; a good image request before and after gets the same 200 answer."""
    import fcntl
    import io

    from benchmarks.common.vlm_run import BYTES_PER_TOKEN, text
    from jenga_vllm.tools.server import VllmServer
    from jenga_vllm.tools.zoo_vlm import build_vlm, make_image
    from tests.vllm.harness import ENGINE_LOCK

    png = io.BytesIO()
    make_image(1).save(png, format="PNG")
    good = [_image_part(png.getvalue()), {"type": "text", "text": text(3, 30)}]
    template = tmp_path / "chat.jinja"
    template.write_text(CHAT_TEMPLATE)
    with open(ENGINE_LOCK, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        with VllmServer(
            build_vlm("gemma3_vlm"),
            "jenga",
            kv_cache_memory_bytes=2 * BYTES_PER_TOKEN["gemma3_vlm"] * 512,
            extra_args=(
                "--chat-template",
                str(template),
                "--limit-mm-per-prompt",
                json.dumps({"image": 1}),
            ),  # fmt: skip
            env={"PYTHONPATH": engine_env()["PYTHONPATH"]},
        ) as server:
            status, first = server.chat(good)
            assert status == 200, first
            corrupt = [_image_part(b"\x89PNG\r\n\x1a\n not an image"), good[1]]
            status, body = server.chat(corrupt)
            assert status == 400, body
            status, body = server.chat([good[0], good[0], good[1]])
            assert status == 400, body
            status, body = server.chat([good[0], {"type": "text", "text": text(5, 600)}])
            assert status == 400, body
            status, again = server.chat(good)
            assert status == 200, again
            answer = [b["choices"][0]["message"]["content"] for b in (first, again)]
            assert answer[0] == answer[1] and answer[0]
