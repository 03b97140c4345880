"""Run a function on a module right after it first executes, before the import
that loads it returns, so that nothing bound from the module is ever the
unpatched version.

One meta path finder, placed first on ``sys.meta_path``, serves every patch:
the gate's on ``pickle`` and ``_pickle`` (installed at interpreter start, so a
process that never imports pickle never pays for it) and the adapters' on torch
and joblib. It finds nothing itself: it asks the finders after it and wraps the
``exec_module`` of the loader they return.
"""

from __future__ import annotations

import sys

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs milliseconds at interpreter start
    from typing import Any, Callable, Dict, Set

_PATCHERS: Dict[str, Callable[[Any], None]] = {}
# The names being looked up by this finder itself, so that it does not find itself.
_finding: Set[str] = set()
# The patched modules whose code is running now (a patcher may need to know that
# the module importing its own is not whole yet).
executing: Set[str] = set()
# The patched modules that have executed (through this finder) at least once.
executed: Set[str] = set()
# Set at start-up under environment activation: the gate module installs itself
# as the last step of its import (see _boot), however that import was reached.
gate_wanted = False


class _PatchOnImport:
    """The finder: for a module with a patcher, the other finders' spec, with its
    loader's ``exec_module`` followed by the patcher."""

    @classmethod
    def find_spec(cls, name: str, path: Any = None, target: Any = None) -> Any:
        patch = _PATCHERS.get(name)
        if patch is None or name in _finding:
            return None
        # The finders after this one, asked as the import system asks them
        # (importlib.util.find_spec would do the same, but importing it costs a
        # millisecond of start-up where pickle is imported).
        _finding.add(name)
        try:
            spec = None
            for finder in list(sys.meta_path):
                find = getattr(finder, "find_spec", None)
                if finder is cls or find is None:
                    continue
                spec = find(name, path, target)
                if spec is not None:
                    break
        finally:
            _finding.discard(name)
        loader = getattr(spec, "loader", None)
        if loader is None or not hasattr(loader, "exec_module"):
            return None
        original_exec = loader.exec_module

        def exec_module(module: Any) -> None:
            executing.add(name)
            try:
                original_exec(module)
            finally:
                executing.discard(name)
            executed.add(name)
            patch(module)

        # On this module's own loader instance only.
        loader.exec_module = exec_module
        return spec


def patch_on_import(patchers: Dict[str, Callable[[Any], None]]) -> None:
    """Have each ``patchers[name]`` run on module ``name`` whenever it is imported
    from now on (a later import of it anew included). It does not run on a module
    imported already: the caller patches those."""
    _PATCHERS.update(patchers)
    if _PatchOnImport not in sys.meta_path:
        sys.meta_path.insert(0, _PatchOnImport)
