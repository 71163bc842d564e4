"""Make vLLM's Triton ``unified_attention`` importable where vLLM is not installed (the GPU box).

Copies the two pure-Python kernel modules verbatim from the installed vLLM
(``v1/attention/ops/triton_unified_attention.py`` and ``triton_attention_helpers.py``) into
``<out>/vllm/...`` and writes the handful of tiny modules they import (envs, logger, platforms,
triton_utils, KVQuantMode). With ``<out>`` on PYTHONPATH,
``from vllm.v1.attention.ops.triton_unified_attention import unified_attention`` then runs the very
kernel vLLM 0.32's Triton backend launches. Run here (where vLLM is installed):

    python -m benchmarks.peer_shim            # writes .device/peer (git-ignored)
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

SHIMS = {
    "vllm/__init__.py": '"""Shim: just enough of vLLM for its Triton attention kernel."""\n',
    "vllm/envs.py": "VLLM_BATCH_INVARIANT = False\n",
    "vllm/logger.py": "import logging\n\n\ndef init_logger(name):\n    return logging.getLogger(name)\n",
    "vllm/platforms/__init__.py": """import torch


class _Platform:
    def fp8_dtype(self):
        return torch.float8_e4m3fn

    def is_device_capability_family(self, family):
        major, _ = torch.cuda.get_device_capability()
        return major * 10 == family

    def is_cuda(self):
        return True


current_platform = _Platform()
""",
    "vllm/triton_utils/__init__.py": "import triton\nimport triton.language as tl\n",
    "vllm/v1/__init__.py": "",
    "vllm/v1/attention/__init__.py": "",
    "vllm/v1/attention/ops/__init__.py": "",
    "vllm/v1/kv_cache_interface.py": """from enum import IntEnum


class KVQuantMode(IntEnum):
    NONE = 0
    FP8_PER_TENSOR = 1
    INT8_PER_TOKEN_HEAD = 2
    FP8_PER_TOKEN_HEAD = 3
    INT4_PER_TOKEN_HEAD = 4
""",
}
COPIED = (
    "v1/attention/ops/triton_unified_attention.py",
    "v1/attention/ops/triton_attention_helpers.py",
)


def build(out: Path) -> Path:
    import vllm

    src = Path(vllm.__file__).parent
    if (out / "vllm").exists():
        shutil.rmtree(out / "vllm")
    for rel, text in SHIMS.items():
        path = out / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    for rel in COPIED:
        shutil.copyfile(src / rel, out / "vllm" / rel)
    (out / "VLLM_VERSION").write_text(vllm.__version__ + "\n")
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).resolve().parents[1] / ".device" / "peer"
    )
    print(build(parser.parse_args().out))
