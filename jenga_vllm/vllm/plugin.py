"""vLLM general plugin: installs (and, for tests, uninstalls) the patches of ``patches.LEDGER``.

``register()`` is the ``vllm.general_plugins`` entry point: vLLM calls it in every process
(frontend, EngineCore, workers) before it builds anything. It calls ``install()``, which applies
each ledger entry once per process (idempotent); entries of heavy modules are applied right after
the module's first import (a post-import hook), so the API server never imports the model
runners. Every replacement decides at call time whether jenga was asked for, so installing the
plugin changes nothing until ``--kv-cache-manager jenga`` is given (docs/design.md §5).

On an unsupported vLLM version only the ``always`` entry is installed: asking for jenga then
fails with the supported versions in the message, and stock vLLM keeps working.
"""

from __future__ import annotations

import importlib.abc
import logging
import sys
from typing import Any

from jenga_vllm.core.errors import JengaUnsupportedError
from jenga_vllm.vllm.patches import LEDGER, BackendRegistration, SymbolPatch

# Re-exported: what users and other modules import from the plugin.
from jenga_vllm.vllm.switch import (  # noqa: F401
    CHOICES,
    MANAGER_KEY,
    is_jenga_enabled,
    is_supported_vllm,
    manager_choice,
    supported_versions,
)

Entry = SymbolPatch | BackendRegistration
_installed: dict[str, tuple[Entry, Any]] = {}  # key -> (entry, original)
_supported: bool | None = None


def _vllm_version() -> str:
    import vllm

    return vllm.__version__


def require_supported_vllm() -> None:
    """Raise the error that names the supported vLLM versions (jenga was asked for)."""
    if not is_supported_vllm(_vllm_version()):
        raise JengaUnsupportedError(
            f"jenga_vllm supports vLLM {supported_versions()}, found {_vllm_version()}; install "
            "a supported vLLM or use --kv-cache-manager vllm"
        )


def _platform() -> str:
    from vllm.platforms import current_platform

    if current_platform.is_cpu():
        return "cpu"
    return "cuda" if current_platform.is_cuda_alike() else current_platform.device_type


def _apply(entry: Entry) -> None:
    if entry.key not in _installed:
        _installed[entry.key] = (entry, entry.apply())


class _PatchOnImport(importlib.abc.MetaPathFinder):
    """Applies the entries of a module right after its first import (a post-import hook)."""

    def __init__(self) -> None:
        self.pending: dict[str, list[Entry]] = {}

    def find_spec(self, fullname, path, target=None):
        entries = self.pending.get(fullname)
        if entries is None:
            return None
        spec = None
        for finder in sys.meta_path:
            if finder is not self and hasattr(finder, "find_spec"):
                spec = finder.find_spec(fullname, path, target)
                if spec is not None:
                    break
        if spec is None or spec.loader is None:
            return spec
        del self.pending[fullname]
        exec_module = spec.loader.exec_module

        def exec_then_patch(module) -> None:
            exec_module(module)
            for entry in entries:
                _apply(entry)

        spec.loader.exec_module = exec_then_patch  # type: ignore[method-assign]
        return spec


_on_import = _PatchOnImport()


def _apply_when_imported(entry: Entry) -> None:
    if entry.module in sys.modules:
        _apply(entry)
        return
    pending = _on_import.pending.setdefault(entry.module, [])
    if entry not in pending:
        pending.append(entry)
    if _on_import not in sys.meta_path:
        sys.meta_path.insert(0, _on_import)


def install() -> list[str]:
    """Apply every ledger entry once in this process (``on_import`` ones when their module is
    first imported); returns the keys installed so far."""
    global _supported
    if _supported is None:
        _supported = is_supported_vllm(_vllm_version())
    platform = _platform() if _supported else None
    for entry in LEDGER:
        if entry.cli_only or not (_supported or entry.always):
            continue
        if entry.platform is not None and entry.platform != platform:
            continue
        if entry.on_import:
            _apply_when_imported(entry)
        else:
            _apply(entry)
    return installed()


def install_cli_patches() -> None:
    """The ``jenga-vllm`` script's entries (applied before vLLM's CLI starts)."""
    for entry in LEDGER:
        if entry.cli_only:
            _apply(entry)


def installed() -> list[str]:
    return sorted(_installed)


def uninstall() -> None:
    """Undo every applied entry, newest first, and drop pending post-import ones (tests)."""
    global _supported
    for key in reversed(list(_installed)):
        entry, original = _installed.pop(key)
        entry.undo(original)
    _on_import.pending.clear()
    if _on_import in sys.meta_path:
        sys.meta_path.remove(_on_import)
    _supported = None


def register() -> None:
    """``vllm.general_plugins`` entry point (called by vLLM in every process)."""
    keys = install()
    if not _supported:
        logging.getLogger(__name__).error(
            "jenga_vllm supports vLLM %s, found %s: --kv-cache-manager jenga is unavailable",
            supported_versions(),
            _vllm_version(),
        )
    assert keys
