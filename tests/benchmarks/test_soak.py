"""benchmarks/soak.py, bounded: a jenga server on the wide Mamba-2 hybrid (prefix caching on) under
48 mixed requests — greedy, seeded, streamed, aborted mid-stream — stays up, holds no page after,
and every answer equals a quiet stock server's (aborted streams: a prefix of it). Before the
seeded-generator fix one seeded request whose prefill jenga split killed the engine."""

import pytest

from benchmarks import soak

pytestmark = pytest.mark.e2e


def test_a_mixed_load_on_a_mamba_hybrid_keeps_the_server_up_with_stocks_answers():
    result = soak.run("granite_hybrid_wide", requests=48, concurrency=8)
    kinds = {r.kind for r in result.requests}
    assert kinds == set(soak.KINDS)
    assert any(r.seed is not None for r in result.requests)
    assert result.server_errors() == 0, [a.error for a in result.load if a.error][:3]
    assert result.alive_after
    assert result.mismatches() == []
    assert result.usage_after == 0.0 and result.reset_ok
    assert result.prefix_hits > 0
    assert result.passed()
