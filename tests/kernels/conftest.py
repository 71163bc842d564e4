"""Kernel tests run the Triton kernels on CPU through Triton's interpreter.

TRITON_INTERPRET must be set before ``triton.jit`` decorates a kernel, i.e. before
``jenga_vllm.kernels`` is first imported; pytest loads this file before the test modules here.
"""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")
