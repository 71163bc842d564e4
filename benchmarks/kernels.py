"""P4: jenga's paged-attention kernel on realistic layer shapes vs vLLM's Triton kernel, same data.

Question: does reading K/V through jenga's heterogeneous page tables (unit ids, overlapping page
strides, per-type small pages, null pages behind windows) cost anything against vLLM 0.32's
own Triton ``unified_attention`` reading the very same pool, view and page table?

What it measures (bf16, block size 16, one layer of each type; GPU only):
- decode: batch 1–256 × context 1k–32k (batch·context ≤ 1M tokens): achieved HBM bandwidth
  (bytes = K/V of the visible keys + q + out) vs the peak copy bandwidth measured in this run;
- prefill: fresh prompts (q_len = context): TFLOP/s (4·Hq·d·visible pairs) vs the bf16 matmul
  peak measured in this run;
- a mixed batch (one 2k prefill chunk + 63 decodes) in one launch;
- ``× vLLM``: vLLM's time / ours (> 1: ours faster), on identical inputs. vLLM's kernel comes from
  an installed vLLM, or from ``.device/peer`` (see peer_shim.py) where vLLM is not installed; if
  neither imports, torch SDPA on gathered contiguous K/V (full-attention rows only) stands in.

The pool holds two layer types per model (sliding: 3 layers per small page, full: 2), so each
layer's view has ``stride(0) = unit`` smaller than its page and a non-zero layer offset; a
sequence's pages are scattered at random over the large pages, and pages behind a window are the
null page. Data is fresh random bf16 (never zeros); timings are ``triton.testing.do_bench``
medians (L2 flushed between runs) rotating over several page-table sets when a case is small.

Run: ``python -m benchmarks.kernels`` (``--quick`` for a short subset, ``--sweep`` to also time
alternative tile configs). Prints a markdown table and writes benchmarks/results/kernels.md.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
import triton

ROOT = Path(__file__).resolve().parents[1]
BLOCK_SIZE = 16
DTYPE = torch.bfloat16  # --smoke switches to float16 (Triton's interpreter cannot dot bf16)
SMOKE = False  # --smoke: tiny shapes on CPU under TRITON_INTERPRET=1, to check the plumbing
MAX_TOKENS = 1 << 20  # batch·context cap: keeps the pool under ~20 GB
ROTATE_BYTES = 512 << 20  # rotate page-table sets until a round touches this much K/V
T_START = time.time()


def import_kernels():
    try:
        from jenga_vllm import kernels
    except ImportError:  # run from the repo root, package not installed (the GPU box)
        import kernels  # type: ignore[no-redef]
    return kernels


K = import_kernels()


def import_peer():
    """vLLM's Triton unified_attention, or (None, why)."""
    import importlib.util

    peer_dir = ROOT / ".device" / "peer"
    # A real vLLM install wins over the copied kernel unless BENCH_PEER_SHIM=1.
    use_shim = os.environ.get("BENCH_PEER_SHIM") == "1" or importlib.util.find_spec("vllm") is None
    if use_shim and peer_dir.exists():
        sys.path.insert(0, str(peer_dir))
    try:
        import vllm
        from vllm.v1.attention.ops.triton_unified_attention import unified_attention

        version = getattr(vllm, "__version__", None)
        if version is None and (peer_dir / "VLLM_VERSION").exists():
            version = (peer_dir / "VLLM_VERSION").read_text().strip() + " (copied kernel)"
        return unified_attention, f"vLLM {version} triton unified_attention"
    except Exception as exc:  # noqa: BLE001 - any failure means "no peer"
        return None, f"vLLM kernel unavailable ({type(exc).__name__}: {exc})"


@dataclass(frozen=True)
class LayerShape:
    model: str
    layer: str
    head_size: int
    num_kv_heads: int
    num_q_heads: int
    window: int  # 0: full attention
    sinks: bool
    layers_per_small_page: int


SMOKE_SHAPES = [
    LayerShape("tiny-gemma", "sliding-32", 32, 2, 4, 32, False, 3),
    LayerShape("tiny-gemma", "full", 32, 2, 4, 0, False, 2),
    LayerShape("tiny-oss", "sliding-16", 16, 1, 8, 16, True, 3),
    LayerShape("tiny-oss", "full", 16, 1, 8, 0, True, 2),
]
SHAPES = [
    LayerShape("Gemma-3-27B", "sliding-1024", 128, 16, 32, 1024, False, 3),
    LayerShape("Gemma-3-27B", "full", 128, 16, 32, 0, False, 2),
    LayerShape("gpt-oss-120b", "sliding-128", 64, 8, 64, 128, True, 3),
    LayerShape("gpt-oss-120b", "full", 64, 8, 64, 0, True, 2),
]


class Pool:
    """One model's pool: two layer types (sliding, full) carved into shared large pages."""

    def __init__(
        self, shapes: list[LayerShape], pages_needed: dict[str, int], device: torch.device
    ):
        elt = torch.empty((), dtype=DTYPE).element_size()
        self.layer_bytes = {
            s.layer: s.num_kv_heads * BLOCK_SIZE * 2 * s.head_size * elt for s in shapes
        }
        small = {s.layer: s.layers_per_small_page * self.layer_bytes[s.layer] for s in shapes}
        self.unit, self.large = K.unit_and_large_page_bytes(list(small.values()))
        per_large = {name: self.large // size for name, size in small.items()}
        num_large = {name: math.ceil(pages_needed[name] / per_large[name]) for name in small}
        total_large = 1 + sum(num_large.values())  # + the null large page 0
        gen = torch.Generator().manual_seed(0)
        order = (torch.randperm(total_large - 1, generator=gen) + 1).tolist()
        self.free_units: dict[str, torch.Tensor] = {}
        units_per_large = self.large // self.unit
        start = 0
        for name, count in num_large.items():
            large_pages = torch.tensor(order[start : start + count])
            start += count
            slots = torch.arange(per_large[name]) * (small[name] // self.unit)
            units = (large_pages[:, None] * units_per_large + slots[None, :]).flatten()
            self.free_units[name] = units[torch.randperm(units.numel(), generator=gen)].to(
                torch.int32
            )
        self.pool = torch.empty(total_large * self.large, dtype=torch.int8, device=device)
        self.pool.view(DTYPE).normal_()  # fresh random data everywhere, null page included
        self.shapes = {s.layer: s for s in shapes}
        self.small = small

    def view(self, layer: str) -> torch.Tensor:
        s = self.shapes[layer]
        geometry = K.LayerPageGeometry(
            num_kv_heads=s.num_kv_heads,
            head_size=s.head_size,
            block_size=BLOCK_SIZE,
            dtype=DTYPE,
            unit_bytes=self.unit,
            offset_bytes=(s.layers_per_small_page - 1) * self.layer_bytes[layer],  # last layer
        )
        return geometry.kv_view(self.pool)


@dataclass
class Batch:
    query: torch.Tensor
    block_table: torch.Tensor
    query_start_loc: torch.Tensor
    seq_lens: torch.Tensor
    max_query_len: int
    max_seq_len: int


def first_visible(pos: int, window: int) -> int:
    return max(0, pos - window + 1) if window else 0


def make_batches(
    pool: Pool, shape: LayerShape, seq_lens: list[int], query_lens: list[int], sets: int, device
):
    """``sets`` independent batches (disjoint pages) of the same shape, for rotation."""
    batches = []
    units = pool.free_units[shape.layer]
    cursor = 0
    max_pages = max(math.ceil(n / BLOCK_SIZE) for n in seq_lens)
    for _ in range(sets):
        table = torch.zeros(len(seq_lens), max_pages, dtype=torch.int32)
        for s, (n, q) in enumerate(zip(seq_lens, query_lens, strict=True)):
            first_page = first_visible(n - q, shape.window) // BLOCK_SIZE
            count = math.ceil(n / BLOCK_SIZE) - first_page
            if cursor + count > units.numel():
                raise RuntimeError("benchmark pool too small for this case")
            table[s, first_page : first_page + count] = units[cursor : cursor + count]
            cursor += count  # pages behind the window stay 0: the null page
        starts = torch.tensor([0, *torch.tensor(query_lens).cumsum(0).tolist()], dtype=torch.int32)
        tokens = int(starts[-1])
        batches.append(
            Batch(
                query=torch.randn(
                    tokens, shape.num_q_heads, shape.head_size, device=device, dtype=DTYPE
                ),
                block_table=table.to(device),
                query_start_loc=starts.to(device),
                seq_lens=torch.tensor(seq_lens, dtype=torch.int32, device=device),
                max_query_len=max(query_lens),
                max_seq_len=max(seq_lens),
            )
        )
    return batches


def visible_keys(seq_lens: list[int], query_lens: list[int], window: int) -> tuple[int, int]:
    """(distinct keys read, (query, key) pairs attended) summed over the batch."""
    keys = pairs = 0
    for n, q in zip(seq_lens, query_lens, strict=True):
        keys += n - first_visible(n - q, window)
        for p in range(n - q, n):
            pairs += p + 1 - first_visible(p, window)
    return keys, pairs


def closed_form_pairs(n: int, window: int) -> int:
    """Causal pairs of a fresh prompt of n tokens (fast path for big prefill rows)."""
    if not window or window >= n:
        return n * (n + 1) // 2
    return window * (window + 1) // 2 + (n - window) * window


class Runner:
    """Times ours and the peer on the same rotated batches."""

    def __init__(self, peer, device):
        self.peer = peer
        self.device = device
        self.scratch: dict[tuple, tuple[torch.Tensor, ...]] = {}
        self.workspaces: dict[tuple, object] = {}

    def workspace(self, shape: LayerShape, tokens: int):
        """Pre-allocated split scratch, as the backend gets it from the metadata builder."""
        key = (shape.layer, shape.num_q_heads, shape.head_size)
        ws = self.workspaces.get(key)
        if ws is None or ws.out.shape[0] < tokens:
            pad = triton.next_power_of_2(shape.head_size)
            rows, heads, splits = max(tokens, 256), shape.num_q_heads, K.MAX_SPLITS
            f32 = dict(dtype=torch.float32, device=self.device)
            ws = K.SplitWorkspace(
                out=torch.empty(rows, heads, splits, pad, **f32),
                max=torch.empty(rows, heads, splits, **f32),
                sum=torch.empty(rows, heads, splits, **f32),
            )
            self.workspaces[key] = ws
        return ws

    def ours(self, shape: LayerShape, view, b: Batch, sinks, out, config=None):
        return K.paged_attention(
            b.query, view, b.block_table, b.query_start_loc, b.seq_lens, shape.head_size**-0.5,
            max_query_len=b.max_query_len, out=out, window=shape.window, sinks=sinks, config=config,
            workspace=self.workspace(shape, b.query.shape[0]),
        )  # fmt: skip

    def vllm(self, shape: LayerShape, view, b: Batch, sinks, out):
        # Exactly what vLLM's TritonAttentionImpl.forward passes (builder defaults, 16 segments).
        kv = view.transpose(1, 2)
        key_cache, value_cache = kv.split(shape.head_size, dim=-1)
        threshold = 128 // shape.num_kv_heads
        key = (shape.layer, b.query.shape[1])
        if key not in self.scratch:
            pad = triton.next_power_of_2(shape.head_size)
            self.scratch[key] = (
                torch.empty(
                    threshold, shape.num_q_heads, 16, pad, dtype=torch.float32, device=self.device
                ),
                torch.empty(
                    threshold, shape.num_q_heads, 16, dtype=torch.float32, device=self.device
                ),
                torch.empty(
                    threshold, shape.num_q_heads, 16, dtype=torch.float32, device=self.device
                ),
            )
        seg_out, seg_max, seg_sum = self.scratch[key]
        self.peer(
            q=b.query, k=key_cache, v=value_cache, out=out, cu_seqlens_q=b.query_start_loc,
            max_seqlen_q=b.max_query_len, seqused_k=b.seq_lens, max_seqlen_k=b.max_seq_len,
            softmax_scale=shape.head_size**-0.5, causal=True,
            window_size=(shape.window - 1, 0) if shape.window else (-1, -1),
            block_table=b.block_table, softcap=0, q_descale=None, k_descale=None, v_descale=None,
            seq_threshold_3D=threshold, num_par_softmax_segments=16, softmax_segm_output=seg_out,
            softmax_segm_max=seg_max, softmax_segm_expsum=seg_sum, sinks=sinks,
        )  # fmt: skip
        return out

    def bench(self, fn, batches) -> float:
        """Median ms of ``fn(batch)``, rotating over ``batches``, each call replayed from a CUDA
        graph (as vLLM serves decode) so host-side launch cost does not pollute small cases."""
        if SMOKE:
            start = time.perf_counter()
            fn(batches[0])
            return 1e3 * (time.perf_counter() - start)
        for b in batches:
            fn(b)  # compile + warm up outside the capture
        torch.cuda.synchronize()
        graphs = []
        for b in batches:
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                fn(b)
            graphs.append(graph)
        it = [0]

        def replay():
            graphs[it[0] % len(graphs)].replay()
            it[0] += 1

        return triton.testing.do_bench(replay, warmup=25, rep=100, return_mode="median")


def gather_for_sdpa(view, shape: LayerShape, b: Batch, seq_len: int, q_len: int):
    """Contiguous [B, H, L, d] K/V of equal-length sequences (full attention only)."""
    n_seqs = b.seq_lens.numel()
    pos = torch.arange(seq_len, device=view.device)
    pages = b.block_table[:, pos // BLOCK_SIZE].long()  # [B, L]
    rows = view[pages, :, (pos % BLOCK_SIZE)[None, :].expand(n_seqs, -1)]  # [B, L, H, 2d]
    k = rows[..., : shape.head_size].permute(0, 2, 1, 3).contiguous()
    v = rows[..., shape.head_size :].permute(0, 2, 1, 3).contiguous()
    q = b.query.view(n_seqs, q_len, shape.num_q_heads, shape.head_size).transpose(1, 2).contiguous()
    return q, k, v


def peak_copy_gbs(device) -> float:
    """Device-to-device copy of 2 GiB, GB/s counting bytes read plus bytes written."""
    src = torch.randn(1 << 30, device=device, dtype=DTYPE)
    dst = torch.empty_like(src)
    t = triton.testing.do_bench(partial(dst.copy_, src), warmup=25, rep=200, return_mode="median")
    return 2 * src.numel() * src.element_size() / (t * 1e-3) / 1e9


def peak_matmul_tflops(device) -> float:
    """bf16 8192³ matmul on random data."""
    a = torch.randn(8192, 8192, device=device, dtype=DTYPE)
    b = torch.randn(8192, 8192, device=device, dtype=DTYPE)
    t = triton.testing.do_bench(
        partial(torch.matmul, a, b), warmup=25, rep=200, return_mode="median"
    )
    return 2 * 8192**3 / (t * 1e-3) / 1e12


def decode_cases(quick: bool) -> list[tuple[int, int]]:
    if SMOKE:
        return [(2, 40), (3, 64)]
    batches = [1, 8, 32, 128, 256] if not quick else [1, 32, 128]
    contexts = [1024, 4096, 16384, 32768] if not quick else [4096, 32768]
    return [(b, c) for b in batches for c in contexts if b * c <= MAX_TOKENS]


PREFILL_CASES = [(1, 4096), (1, 16384), (4, 4096), (16, 1024)]


def main() -> None:
    parser = argparse.ArgumentParser(description="jenga paged attention vs vLLM's Triton kernel")
    parser.add_argument("--quick", action="store_true", help="a short subset")
    parser.add_argument("--sweep", action="store_true", help="also time alternative tile configs")
    parser.add_argument(
        "--budget-s", type=float, default=float(os.environ.get("BENCH_BUDGET_S", 1e9))
    )
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "kernels.md")
    parser.add_argument("--smoke", action="store_true", help="tiny CPU run (TRITON_INTERPRET=1)")
    args = parser.parse_args()
    global SMOKE, DTYPE
    SMOKE = args.smoke
    if SMOKE:
        DTYPE = torch.float16
        device = torch.device("cpu")
        name = "CPU (Triton interpreter; timings meaningless)"
        copy_gbs = mm_tflops = 1.0
    elif not torch.cuda.is_available():
        sys.exit(
            "python -m benchmarks.kernels needs a CUDA GPU (--smoke checks the plumbing on CPU)"
        )
    else:
        device = torch.device("cuda")
        name = torch.cuda.get_device_name()
        copy_gbs, mm_tflops = peak_copy_gbs(device), peak_matmul_tflops(device)
    torch.manual_seed(0)
    peer, peer_name = import_peer()
    header = [
        f"# P4 kernels: jenga paged attention vs {peer_name if peer else 'torch SDPA (gathered K/V)'}",
        "",
        f"Device: **{name}**, torch {torch.__version__}, triton {triton.__version__}. "
        f"Measured in this run: copy bandwidth **{copy_gbs:.0f} GB/s** (read + write), "
        f"bf16 matmul **{mm_tflops:.0f} TFLOP/s** (8192³).",
        f"{'' if peer else peer_name}",
        "bf16, block size 16, unit-id views with stride(0) = unit < page, scattered pages, null pages "
        "behind windows. `× vLLM` = vLLM time / jenga time on identical data (> 1: jenga faster). "
        "`max|Δ|` = max abs difference between the two outputs.",
        "",
    ]
    print("\n".join(header), flush=True)
    rows: list[str] = []
    table_head = "| model | layer | phase | batch | ctx | jenga µs | vLLM µs | × vLLM | GB/s (% peak) | TFLOP/s (% peak) | max\\|Δ\\| |"
    rows += [table_head, "|" + "---|" * 11]
    print(rows[0] + "\n" + rows[1], flush=True)
    runner = Runner(peer, device)
    by_model: dict[str, list[LayerShape]] = {}
    for s in SMOKE_SHAPES if SMOKE else SHAPES:
        by_model.setdefault(s.model, []).append(s)
    decode = decode_cases(args.quick)
    prefill = [(1, 40)] if SMOKE else PREFILL_CASES if not args.quick else PREFILL_CASES[:2]
    mixed = (4, 48, [20, 1, 1, 1]) if SMOKE else (64, 4096, [2048] + [1] * 63)
    sweep_rows: list[str] = []
    for model, shapes in by_model.items():
        # Pages: the largest decode case (with rotation slack) or prefill case per type.
        need = {}
        for s in shapes:
            worst = max(
                max(
                    b * math.ceil(min(c, (s.window or c) + BLOCK_SIZE) / BLOCK_SIZE)
                    for b, c in decode
                ),
                max(b * math.ceil(c / BLOCK_SIZE) for b, c in prefill),
            )
            layer_bytes = s.num_kv_heads * BLOCK_SIZE * 2 * s.head_size * 2
            need[s.layer] = 3 * worst + 512 if SMOKE else worst + ROTATE_BYTES // layer_bytes + 64
        pool = Pool(shapes, need, device)
        for s in shapes:
            view = pool.view(s.layer)
            sinks = torch.randn(s.num_q_heads, device=device) if s.sinks else None
            cases = [("decode", b, c, [c] * b, [1] * b) for b, c in decode]
            cases += [("prefill", b, c, [c] * b, [c] * b) for b, c in prefill]
            cases.append(("mixed", mixed[0], mixed[1], [mixed[1]] * mixed[0], mixed[2]))
            for phase, batch, ctx, seq_lens, query_lens in cases:
                if time.time() - T_START > args.budget_s:
                    print(f"(budget reached: skipping the rest of {model} {s.layer})", flush=True)
                    break
                if phase == "prefill":
                    keys, pairs = batch * ctx, batch * closed_form_pairs(ctx, s.window)
                else:
                    keys, pairs = visible_keys(seq_lens, query_lens, s.window)
                kv_bytes = keys * s.num_kv_heads * s.head_size * 2 * 2
                sets = 2 if SMOKE else max(1, min(8, ROTATE_BYTES // max(kv_bytes, 1)))
                batches = make_batches(pool, s, seq_lens, query_lens, sets, device)
                out_ours = torch.empty_like(batches[0].query)
                out_peer = torch.empty_like(batches[0].query)
                t_ours = runner.bench(
                    partial(runner.ours, s, view, sinks=sinks, out=out_ours), batches
                )
                runner.ours(s, view, batches[0], sinks, out_ours)
                t_peer, diff = float("nan"), float("nan")
                if peer is not None:
                    try:
                        t_peer = runner.bench(
                            partial(runner.vllm, s, view, sinks=sinks, out=out_peer), batches
                        )
                        runner.vllm(s, view, batches[0], sinks, out_peer)
                        diff = (out_ours.float() - out_peer.float()).abs().max().item()
                    except Exception as exc:  # noqa: BLE001 - e.g. it does not compile here
                        peer_name = f"{peer_name} FAILED ({type(exc).__name__}: {str(exc)[:300]})"
                        print(peer_name, flush=True)
                        header.append(f"Peer failed, SDPA used for later rows: {peer_name}")
                        peer = runner.peer = None
                if peer is None and s.window == 0 and s.sinks is False and phase != "mixed":
                    gathered = [gather_for_sdpa(view, s, b, ctx, query_lens[0]) for b in batches]
                    it = [0]

                    def sdpa_call(_b, gathered=gathered, it=it):
                        g = gathered[it[0] % len(gathered)]
                        it[0] += 1
                        torch.nn.functional.scaled_dot_product_attention(
                            *g, is_causal=g[0].shape[2] > 1, enable_gqa=True
                        )

                    t_peer = runner.bench(sdpa_call, batches)
                tokens = batches[0].query.shape[0]
                io_bytes = kv_bytes + 2 * tokens * s.num_q_heads * s.head_size * 2
                gbs = io_bytes / (t_ours * 1e-3) / 1e9
                tflops = 4 * s.num_q_heads * s.head_size * pairs / (t_ours * 1e-3) / 1e12
                bw = f"{gbs:.0f} ({100 * gbs / copy_gbs:.0f}%)" if phase != "prefill" else ""
                fl = f"{tflops:.0f} ({100 * tflops / mm_tflops:.0f}%)" if phase != "decode" else ""
                ratio = t_peer / t_ours if t_peer == t_peer else float("nan")
                row = (
                    f"| {model} | {s.layer} | {phase} | {batch} | {ctx} | {1e3 * t_ours:.1f} | "
                    f"{1e3 * t_peer:.1f} | {ratio:.2f} | {bw} | {fl} | {diff:.3g} |"
                )
                rows.append(row)
                print(row, flush=True)
            if args.sweep and s.window == 0:
                sweep_rows += sweep(runner, pool, s, view, sinks, device, args.budget_s)
        del pool
        torch.cuda.empty_cache()
    text = "\n".join(header + rows)
    if sweep_rows:
        text += "\n\n## Tile-config sweep (jenga kernel, µs, median)\n\n" + "\n".join(sweep_rows)
    text += f"\n\nWall time of this run: {time.time() - T_START:.0f} s.\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(f"\nwrote {args.out}", flush=True)


def sweep(
    runner: Runner, pool: Pool, s: LayerShape, view, sinks, device, budget_s: float
) -> list[str]:
    """Time alternative tile configs on one decode and one prefill case (for choose_config)."""
    lines = []
    ctx = 64 if SMOKE else 4096  # decode b32 / prefill context; the split case uses 4x
    group = s.num_q_heads // s.num_kv_heads
    block_m = max(16, triton.next_power_of_2(group))
    tile = K.choose_config(s.head_size, group, s.num_kv_heads, 1, 1, device).tile_n
    cases = {
        f"decode b32 ctx{ctx}": ([ctx] * 32, [1] * 32, [
            K.LaunchConfig(block_m, t, w, st) for t, w, st in (
                (32, 4, 3), (64, 4, 2), (64, 4, 3), (128, 4, 2), (128, 4, 3), (128, 8, 3),
            )
        ]),
        f"decode b32 ctx{ctx} split": ([ctx] * 32, [1] * 32, [
            K.LaunchConfig(block_m, tile, 4, 3, sp) for sp in (1, 2, 4)
        ]),
        f"decode b8 ctx{4 * ctx}": ([4 * ctx] * 8, [1] * 8, [
            K.LaunchConfig(block_m, tile, 4, 3, sp) for sp in (1, 2, 4, 8, 16)
        ]),
        f"decode b1 ctx{4 * ctx}": ([4 * ctx], [1], [
            K.LaunchConfig(block_m, tile, 4, 3, sp) for sp in (4, 8, 16, 32)
        ]),
        f"prefill b1 ctx{ctx}": ([ctx], [ctx], [
            K.LaunchConfig(bm, t, w, st) for bm, t, w, st in (
                (64, 64, 4, 2), (64, 64, 4, 3), (128, 64, 8, 2), (128, 128, 8, 2), (64, 32, 4, 3),
            ) if bm >= block_m
        ]),
    }  # fmt: skip
    for label, (seq_lens, query_lens, configs) in cases.items():
        if SMOKE:
            configs = configs[:2]
        batches = make_batches(pool, s, seq_lens, query_lens, 2, device)
        out = torch.empty_like(batches[0].query)
        default = K.choose_config(
            s.head_size, group, s.num_kv_heads, len(seq_lens), max(query_lens), device
        )
        timings = []
        for cfg in configs:
            if time.time() - T_START > budget_s:
                break
            try:
                t = runner.bench(
                    partial(runner.ours, s, view, sinks=sinks, out=out, config=cfg), batches
                )
            except Exception as exc:  # noqa: BLE001 - a config may not fit (shared memory)
                lines.append(f"- {s.model} {s.layer} {label} {cfg}: failed ({type(exc).__name__})")
                continue
            timings.append((t, cfg))
        if timings:
            best_t, best = min(timings, key=lambda x: x[0])
            lines.append(
                f"- {s.model} {s.layer} {label}: best {1e3 * best_t:.1f} µs with {best}; default "
                f"{default}; all: "
                + ", ".join(
                    f"{c.block_m}/{c.tile_n}/{c.num_warps}w/{c.num_stages}s/{c.num_splits}sp={1e3 * t:.0f}"
                    for t, c in timings
                )
            )
            print(lines[-1], flush=True)
    return lines


if __name__ == "__main__":
    main()
