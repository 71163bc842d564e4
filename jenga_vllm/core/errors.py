"""One small exception hierarchy for the whole package.

Every message names the problem and the fix. An operation that raises leaves the allocator's state
exactly as it was (operations validate before they mutate).
"""

from __future__ import annotations


class JengaError(Exception):
    """Base class of every error jenga_vllm raises on purpose."""


class JengaConfigError(JengaError, ValueError):
    """A layout or configuration that cannot be built (bad sizes, unknown layer type, ...)."""


class JengaAllocationError(JengaError, RuntimeError):
    """A misuse of the allocator's request API (unknown request, double free, ...).

    Running out of memory is *not* an error: `allocate` returns None and the caller preempts.
    """


class JengaUnsupportedError(JengaError, NotImplementedError):
    """A feature combination jenga does not support (yet); the message says what to turn off."""
