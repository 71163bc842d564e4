"""``jenga-vllm`` console script. Subcommands register in ``SUBCOMMANDS``.

``jenga-vllm plan MODEL_DIR_OR_CONFIG [--kv-bytes N] [--max-model-len L] [--block-size B]``
    The memory planner: reads a model's config.json (no weights), prints per layer type the small
    page, bytes per token (or state bytes), pages per large page and padding, the large page, and
    how many max-length requests fit in the KV budget under jenga (counted by allocating them in
    the jenga core, chunked prefill, out-of-window pages released) vs vLLM 0.32's own layout
    decision (vLLM's start-up "Maximum concurrency" figure, from its own functions — see
    jenga_vllm/tools/vllm_layout.py), with the hybrid manager as vLLM defaults it and disabled.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from jenga_vllm.core.cache import JengaCache
from jenga_vllm.core.errors import JengaConfigError
from jenga_vllm.core.layout import LayoutPlan, plan_layout
from jenga_vllm.tools.model_shapes import ModelShapes, load_model_shapes

GIB = 1 << 30
PREFILL_CHUNK = 8192


def _parse_bytes(text: str) -> int:
    """'40GiB', '40G', '4e10', '1073741824' → bytes."""
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
    t = text.strip().lower().removesuffix("b").removesuffix("i")
    if t and t[-1] in units:
        return int(float(t[:-1]) * units[t[-1]])
    return int(float(t))


def plan_for_budget(
    shapes: ModelShapes, block_size: int, kv_bytes: int, max_model_len: int
) -> LayoutPlan:
    """The jenga layout for ``shapes`` in ``kv_bytes``: the core planner, as the engine calls it
    (it trades padding against large pages too big to share out a small pool, e.g. Nemotron-H
    56B's 912 MB state page whose exact LCM with the attention page is 36.5 GB)."""
    specs = shapes.layer_type_specs(block_size)
    return plan_layout(specs, block_size, kv_bytes, max_model_len=max_model_len)


def jenga_max_requests(plan: LayoutPlan, max_model_len: int, limit: int = 100_000) -> int:
    """How many requests of ``max_model_len`` tokens the jenga core holds at once."""
    cache = JengaCache(plan, enable_caching=False)
    count = 0
    while count < limit:
        rid = f"r{count}"
        done = 0
        while done < max_model_len:
            done = min(done + PREFILL_CHUNK, max_model_len)
            if cache.allocate(rid, done) is None:
                return count
            cache.release_unneeded(rid, done)
        count += 1
    return count


def format_plan(plan: LayoutPlan) -> list[str]:
    lines = [
        f"jenga layout: large page {plan.large_page_bytes:,} B, unit {plan.unit_bytes:,} B, "
        f"{plan.usable_large_pages:,} usable large pages (+1 null)"
        + "".join(
            f", + {len(real)} {plan.types[plan.lend_type].spec.name} pages in "
            + ("the null page" if index == 0 else "a tail page")
            for index, real in plan.lent_slots()
        ),
        f"  {'layer type':<22}{'layers':>7}{'small page B':>15}{'B/token':>11}{'state B':>13}"
        f"{'per large':>10}{'padding B':>11}",
    ]
    for t in plan.types:
        state = t.content_bytes if not t.is_token_indexed else 0
        lines.append(
            f"  {t.spec.name:<22}{t.spec.num_layers:>7}{t.small_page_bytes:>15,}"
            f"{t.bytes_per_token:>11,}{state:>13,}{t.pages_per_large:>10}{t.padding_bytes:>11,}"
        )
    return lines


def cmd_plan(args: argparse.Namespace) -> int:
    shapes = load_model_shapes(args.model, dtype=args.dtype)
    max_len = args.max_model_len or min(shapes.max_position_embeddings, 131_072)
    out = [shapes.summary()]
    if shapes.filled_fields:
        out.append(
            "filled from transformers config-class defaults: " + ", ".join(shapes.filled_fields)
        )
    try:
        plan = plan_for_budget(shapes, args.block_size, args.kv_bytes, max_len)
    except JengaConfigError as e:
        print(f"jenga cannot plan this: {e}", file=sys.stderr)
        return 2
    out += format_plan(plan)
    jenga_fit = jenga_max_requests(plan, max_len)
    exact = shapes.needed_bytes(max_len)
    out.append(
        f"one {max_len:,}-token request needs {exact:,} B exactly; "
        f"KV budget {args.kv_bytes:,} B ({args.kv_bytes / GIB:.2f} GiB)"
    )
    out.append(
        f"max-length requests that fit: jenga {jenga_fit}  (exact bytes: {args.kv_bytes // exact})"
    )
    if not args.no_vllm:
        from jenga_vllm.tools.vllm_layout import VllmLayoutError, vllm_layout

        for hma in ("default", "off"):
            try:
                layout = vllm_layout(
                    shapes,
                    args.kv_bytes,
                    max_model_len=max_len,
                    block_size=args.block_size,
                    hma=hma,
                )
            except VllmLayoutError as e:
                out.append(f"vLLM 0.32 (hybrid manager {hma}): refuses: {str(e)[:160]}")
                continue
            fit = int(layout.max_concurrency)
            ratio = f"{jenga_fit / fit:.2f}x" if fit else "inf"
            out.append(layout.describe())
            out.append(
                f"  -> vLLM fits {fit} (its 'Maximum concurrency' {layout.max_concurrency:.2f}x); "
                f"jenga / vLLM = {ratio}"
            )
    print("\n".join(out))
    return 0


def _add_plan(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plan", help="memory planner: how many requests fit, jenga vs vLLM 0.32")
    p.add_argument("model", help="a model directory or a config.json file (no weights needed)")
    p.add_argument("--kv-bytes", type=_parse_bytes, default=40 * GIB, help="KV budget (40GiB)")
    p.add_argument("--max-model-len", type=int, default=None, help="default: min(model, 131072)")
    p.add_argument("--block-size", type=int, default=16, help="tokens per block (16)")
    p.add_argument("--dtype", default="bfloat16", help="KV-cache dtype (bfloat16)")
    p.add_argument("--no-vllm", action="store_true", help="skip vLLM's own decision (faster)")
    p.set_defaults(func=cmd_plan)


SUBCOMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [_add_plan]

# vLLM's own subcommands, run unchanged through jenga_vllm.tools.vllm_cli: ``jenga-vllm serve M
# --kv-cache-manager jenga`` is ``vllm serve M --kv-cache-manager jenga`` (and works where the
# ``vllm`` script of the CPU wheel cannot start; see vllm_cli.py).
VLLM_SUBCOMMANDS = ("serve", "bench", "chat", "complete", "run-batch", "collect-env")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in VLLM_SUBCOMMANDS:
        from jenga_vllm.tools import vllm_cli

        sys.argv = ["vllm", *argv]
        vllm_cli.main()
        return 0
    parser = argparse.ArgumentParser(
        prog="jenga-vllm",
        description="Jenga KV-cache tools",
        epilog=f"Also: {', '.join(VLLM_SUBCOMMANDS)} — vLLM's own subcommands, unchanged "
        "(e.g. jenga-vllm serve MODEL --kv-cache-manager jenga).",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for add in SUBCOMMANDS:
        add(sub)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
