"""vLLM's Mamba worker rules hold for jenga's unit-id views and page tables (no engine starts).

The worker (GPU and CPU runners alike) reads and writes a request's state in block-table column
``(seq_len - 1) // B`` (``mamba_get_block_table_tensor``), exports a prefill checkpoint into
column ``cdiv(seq_len, B) - 2`` when ``compute_mamba_prefill_checkpoints`` says so, and addresses
a state page through a strided view (``MambaBase.bind_kv_cache``: row = block id, stride = the
tensor's block stride). This test builds jenga's KVCacheConfig for the Granite-like zoo model
with prefix caching on, drives ``JengaKVCacheManager`` like the scheduler, and checks with
vLLM's own functions that (1) every column the worker touches holds a page jenga allocated for
exactly that step — never the null page, never a page of another request; (2) writing a
distinct state into each such page through vLLM's views clobbers no other page of any type.
"""

from __future__ import annotations

import pytest

from tests.vllm.harness import make_request  # noqa: E402

pytestmark = pytest.mark.e2e

torch = pytest.importorskip("torch")

BLOCK = 32


@pytest.fixture(scope="module")
def setup():
    from vllm.engine.arg_utils import EngineArgs
    from vllm.model_executor.models import ModelRegistry
    from vllm.v1.attention.backends.registry import MambaAttentionBackendEnum
    from vllm.v1.kv_cache_interface import FullAttentionSpec, MambaSpec

    from jenga_vllm.tools.zoo import build_model
    from jenga_vllm.vllm import plugin
    from jenga_vllm.vllm.kv_config import build_kv_cache_configs

    plugin.install()
    vllm_config = EngineArgs(
        model=str(build_model("granite_hybrid")),
        dtype="float32",
        block_size=BLOCK,
        max_model_len=512,
        enable_prefix_caching=True,
        additional_config={"kv_cache_manager": "jenga"},
    ).create_engine_config()
    cls, _ = ModelRegistry.resolve_model_cls(
        vllm_config.model_config.architecture, model_config=vllm_config.model_config
    )
    mamba = MambaSpec(
        block_size=BLOCK,
        shapes=tuple(cls.get_mamba_state_shape_from_config(vllm_config)),
        dtypes=tuple(cls.get_mamba_state_dtype_from_config(vllm_config)),
        mamba_type=MambaAttentionBackendEnum.MAMBA2,
        mamba_cache_mode="align",
        num_prefill_checkpoint_blocks=1,
        prefill_checkpoint_alignment=1,
    )
    attention = FullAttentionSpec(
        block_size=BLOCK, num_kv_heads=2, head_size=32, dtype=torch.float32
    )
    specs = {f"m{i}": mamba for i in range(6)} | {f"a{i}": attention for i in range(2)}
    config = build_kv_cache_configs(vllm_config, [specs], [4_000_000])[0]
    config.hash_block_size = config.cache_hit_alignment_tokens = BLOCK  # as EngineCore sets
    return config, specs


def worker_columns(row: list[int], computed: int, scheduled: int, spec) -> tuple[int, int]:
    """(running-state block id, checkpoint block id or None) as vLLM's worker picks them."""
    from vllm.model_executor.layers.mamba.checkpoint import compute_mamba_prefill_checkpoints
    from vllm.v1.attention.backends.utils import mamba_get_block_table_tensor

    seq_len = computed + scheduled
    table = torch.tensor([row + [0] * (16 - len(row))], dtype=torch.int32)
    running = mamba_get_block_table_tensor(table, torch.tensor([seq_len]), spec, "align")
    offsets, cols = compute_mamba_prefill_checkpoints(
        [seq_len], [scheduled], BLOCK, spec.block_size, 1, False, BLOCK
    )
    return int(running[0, 0]), (row[cols[0]] if offsets[0] else None)


def test_every_state_column_the_worker_touches_is_a_page_jenga_allocated(setup):
    from jenga_vllm.vllm.manager import JengaKVCacheManager

    config, specs = setup
    manager = JengaKVCacheManager(
        config, max_model_len=512, scheduler_block_size=BLOCK, hash_block_size=BLOCK
    )
    state = next(i for i, t in enumerate(config.plan.types) if t.spec.kind == "mamba")
    spec = config.kv_cache_groups[state].kv_cache_spec
    prompt = list(range(100, 100 + 250))
    req = make_request("a", prompt, max_tokens=64)
    rows: list[int] = []
    owned: list[set[int]] = []
    # A 250-token prompt in chunks of 96 (the scheduler ends non-final chunks on a block
    # boundary), then decode steps past two boundaries.
    steps = [96, 96, 58] + [1] * 40
    for scheduled in steps:
        blocks = manager.allocate_slots(req, scheduled)
        assert blocks is not None
        rows.extend(b.block_id for b in blocks.blocks[state])  # the worker appends by position
        running, checkpoint = worker_columns(rows, req.num_computed_tokens, scheduled, spec)
        live = {p.unit_id for p in manager.cache.requests["a"].tables[state] if p is not None}
        assert running != 0 and running in live, "the running state lands in a jenga page"
        if checkpoint is not None:
            assert checkpoint != 0 and checkpoint in live, "the checkpoint lands in a jenga page"
        owned.append(live)
        req.num_computed_tokens += scheduled
        if req.num_computed_tokens >= len(prompt):
            req.append_output_token_ids(7)
    # The final prompt chunk exported the state after 224 tokens (the prompt's last full block
    # before its end) into block 6: it stayed cached (a prefill-time state) until the first
    # decode-time state (256, block 7) superseded it. The chunk ends 96 and 192 and the chunks'
    # checkpoints 64 and 160 stay; of the decode-time states only the newest complete one stays
    # cached: 288 (block 8); 256 was dropped when 288 was superseded.
    index = manager.cache.index
    cached = [b for b, h in enumerate(req.block_hashes) if index.get(state, h) is not None]
    assert cached == [1, 2, 4, 5, 8]
    manager.free(req)


def test_state_views_address_unit_ids_without_touching_neighbours(setup):
    from vllm.v1.kv_cache_layout import KVCacheLayout
    from vllm.v1.worker.utils import allocate_kv_cache

    config, specs = setup
    plan = config.plan
    caches = allocate_kv_cache(config, torch.device("cpu"), KVCacheLayout.LBHNC)
    state = next(i for i, t in enumerate(plan.types) if t.spec.kind == "mamba")
    attn = 1 - state
    mamba_spec = specs["m0"]

    def state_views(name):  # MambaBase.bind_kv_cache, unchanged
        pages = caches[name].squeeze(dim=(1, 2))
        views, offset = [], 0
        for shape, dtype in zip(mamba_spec.shapes, mamba_spec.dtypes, strict=True):
            nbytes = torch.Size(shape).numel() * dtype.itemsize
            views.append(pages[:, offset : offset + nbytes].view(dtype).view(-1, *shape))
            offset += nbytes
        return views

    for name in specs:
        assert caches[name].stride(0) * caches[name].element_size() == plan.unit_bytes
    # Every page of both types in two large pages each, filled through vLLM's views.
    pages = {
        t: [
            plan.unit_id(t, large, slot)
            for large in (1 + 2 * t, 2 + 2 * t)
            for slot in range(plan.types[t].pages_per_large)
        ]
        for t in (state, attn)
    }
    for i, name in enumerate(specs):
        t = state if name.startswith("m") else attn
        for j, unit in enumerate(pages[t]):
            value = float(1 + 100 * i + j)
            if t == state:
                for view in state_views(name):
                    view[unit].fill_(value)
            else:
                caches[name][unit].view(torch.float32).fill_(value)
    for i, name in enumerate(specs):  # read back after every write: nothing was clobbered
        t = state if name.startswith("m") else attn
        for j, unit in enumerate(pages[t]):
            value = float(1 + 100 * i + j)
            if t == state:
                assert all(bool((view[unit] == value).all()) for view in state_views(name))
            else:
                assert bool((caches[name][unit].view(torch.float32) == value).all())
