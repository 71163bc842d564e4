"""benchmarks/sim_spec_capacity.py: vLLM's state budget from vLLM, jenga's count from its core."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from benchmarks import sim_spec_capacity as spec
from jenga_vllm.core.layout import plan_layout
from jenga_vllm.tools.cli import jenga_max_requests
from jenga_vllm.tools.model_shapes import load_model_shapes
from jenga_vllm.tools.vllm_layout import vllm_layout

REPO = Path(__file__).resolve().parents[2]

CONFIGS = REPO / "benchmarks" / "model_configs"


@pytest.mark.parametrize(
    ("name", "checkpoint_blocks"), [("qwen3.5-35b-a3b", 0), ("nemotron-h-8b-base-8k", 1)]
)
def test_vllm_budgets_two_plus_k_states_and_k_more_conv_rows(
    name: str, checkpoint_blocks: int
) -> None:
    """With K speculative tokens vLLM's own figure counts 2 + K state blocks per Mamba group
    (+ 1 prefill checkpoint on Mamba-2), and each state's conv part grows by K rows."""
    shapes = load_model_shapes(CONFIGS / f"{name}.json")
    base = next(layer for layer in shapes.layers if layer.kind == "mamba")
    conv_rows, conv_dim = base.state_shapes[0]
    assert conv_rows == 3  # conv kernel 4, no speculative rows
    for k in (0, 3):
        layout = vllm_layout(shapes, 8 << 30, max_model_len=1024, num_speculative_tokens=k)
        budget, steady, states = spec.vllm_counts(layout)
        assert states == 2 + k + checkpoint_blocks
        mamba_groups = sum(g.kind == "MambaSpec" for g in layout.groups)
        attention = math.ceil(
            1024 / next(g.block_size for g in layout.groups if g.kind != "MambaSpec")
        )
        assert budget == layout.num_blocks // (mamba_groups * states + attention)
        assert steady == layout.num_blocks // (mamba_groups * (1 + k) + attention)
        state = next(g.real_page_bytes for g in layout.groups if g.kind == "MambaSpec")
        assert state == base.state_bytes + k * conv_dim * 2  # bf16 conv rows


def test_jenga_count_is_what_the_core_admits() -> None:
    """The packing formula against jenga's real allocator: Nemotron-H 8B requests of 1,000
    tokens each keep one state and their attention pages; the core admits the same number (one
    fewer when the last admission's transient prefill checkpoint does not fit)."""
    shapes = load_model_shapes(CONFIGS / "nemotron-h-8b-base-8k.json")
    for gib, tokens in ((4, 1000), (8, 4096)):
        plan = plan_layout(shapes.layer_type_specs(16), 16, gib << 30, max_model_len=tokens)
        pages = [math.ceil(tokens / 16) if t.is_token_indexed else 1 for t in plan.types]
        fits = spec.jenga_fits(plan, pages)
        assert jenga_max_requests(plan, tokens) in (fits - 1, fits)


def test_report_names_each_columns_formula(tmp_path: Path) -> None:
    out = tmp_path / "spec.md"
    assert (
        spec.main(
            ["--models", "qwen3.5-35b-a3b", "--lengths", "1024", "--k", "0,1", "--out", str(out)]
        )
        == 0
    )
    text = out.read_text()
    rows = [line for line in text.splitlines() if line.startswith("| qwen3.5-35b-a3b")]
    assert len(rows) == 2
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        budget, steady, jenga = int(cells[5]), int(cells[6]), int(cells[7])
        assert budget < steady <= jenga  # vLLM budgets one state more than it holds
    for column in ("vLLM budget", "vLLM steady", "jenga 1+K", "jenga at vLLM's count"):
        assert f"**{column}**" in text
