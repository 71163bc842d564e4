"""Vision-language models served under jenga: image prompts, same tokens as stock (#16 part).

Oracle: for each zoo VLM (``jenga_vllm/tools/zoo_vlm.py``: LLaVA-like, full attention; a
Gemma-3-like one, sliding-window + full text layers) the same greedy token ids under jenga as
under stock vLLM 0.32 for image prompts — the same image in two requests (a prefix hit through
the image: vLLM keys those blocks by the image's hash), another image, a text-only prompt — and
for a batch of image prompts that outgrows the KV budget (preemption and recompute). Encoder
outputs stay in vLLM's encoder cache here (the pool does not hold them yet).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SHIM = ROOT / "tests" / "vllm" / "vlm_shim"  # transformers' torchvision modules, from PIL twins

pytestmark = pytest.mark.e2e


def _run(manager: str, model: str) -> dict:
    path = os.environ.get("PYTHONPATH", "")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(SHIM), path])))
    done = subprocess.run(
        [sys.executable, "-m", "tests.vllm.vlm_run", manager, model],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=ROOT,
        env=env,
    )
    for line in done.stdout.splitlines():
        if line.startswith("VLM_RESULT "):
            return json.loads(line.split(" ", 1)[1])
    raise AssertionError(f"{manager} {model} engine failed:\n{done.stderr[-3000:]}")


@pytest.mark.parametrize("model", ["llava", "gemma3_vlm"])
def test_image_prompts_same_tokens_as_stock(model):
    stock, jenga = _run("vllm", model), _run("jenga", model)
    for name in ("images", "long"):
        assert jenga[name]["outputs"] == stock[name]["outputs"], name
    assert [len(o) for o in jenga["images"]["outputs"]] == [16] * 4
    # the image changes the output: A and C share their text, not their image
    assert jenga["images"]["outputs"][0] != jenga["images"]["outputs"][2]
    # B hits A's blocks through the image; C and D the text before it
    assert jenga["images"]["prefix_hits"] == stock["images"]["prefix_hits"] > 0
    assert jenga["long"]["preemptions"] > 0 and stock["long"]["preemptions"] > 0
