"""jenga_vllm.vllm.worker.UnitZeroer: clears exactly the units it is given, nothing around them."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.e2e

torch = pytest.importorskip("torch")


def test_unit_zeroer_clears_only_the_given_units():
    from jenga_vllm.vllm.worker import UnitZeroer

    unit, units = 48, 10
    buffer = torch.full((unit * units + 7,), 5, dtype=torch.int8)  # + slack past the last unit
    zeroer = UnitZeroer(buffer, unit, units)
    zeroer.zero_block_ids([3, 4, 9])
    rows = buffer[: unit * units].view(units, unit)
    for u in range(units):
        assert bool((rows[u] == 0).all()) == (u in (3, 4, 9))
        assert bool((rows[u] == 5).all()) == (u not in (3, 4, 9))
    assert bool((buffer[unit * units :] == 5).all())
    zeroer.zero_block_ids([])  # a step with nothing new
