"""On PYTHONPATH (jenga_vllm.tools.pil_image_processors.in_child_processes): at interpreter
start-up, serve transformers' torchvision image processors from their PIL twins."""

from jenga_vllm.tools.pil_image_processors import install

install()
