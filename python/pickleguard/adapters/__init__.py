"""Adapters for loaders whose files are not one standalone pickle.

A torch checkpoint is a zip archive (or, in the legacy format, several pickles
followed by raw storage bytes); a joblib file interleaves raw array bytes with
pickle opcodes, and may be compressed. Neither can be pinned by the pickles inside
it alone: swapping a tensor's bytes changes no pickle. So ``torch.load`` and
``joblib.load`` are wrapped to pin the whole file (an ``[[artifact]]`` entry, the
hash ``sha256sum`` prints): the wrapper reads the file once, judges those bytes,
and runs the original loader on exactly them, with the pickles it reads out of the
file covered by the artifact's entry (see ``_artifact``; ``torch`` and ``joblib``
hold what is particular to each library).

The wrappers are installed when the library is imported (an import hook, see
``pickleguard._on_import``), or at once if it already is. The adapter modules
themselves are imported only then, so a program that never imports torch or
joblib does not pay for them.
"""

from __future__ import annotations

import sys

from .._on_import import patch_on_import

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs milliseconds at interpreter start
    from typing import Any, Callable, Dict


def _patch_torch(module: Any) -> None:
    from . import torch

    torch.patch(module)


def _patch_joblib(module: Any) -> None:
    from . import joblib

    joblib.patch(module)


_PATCHERS: Dict[str, Callable[[Any], None]] = {
    "torch": _patch_torch,
    "joblib": _patch_joblib,
}


_installed = False


def install() -> Dict[int, Any]:
    """Wrap the loaders of the libraries already imported, and put the import hook
    in place for the others. Returns what it replaced, ``{id(original): wrapper}``,
    so that the caller can rebind names that still hold an original (``from torch
    import load`` in a module imported before activation). Idempotent: a second
    call replaces nothing."""
    global _installed
    replaced: Dict[int, Any] = {}
    if _installed:
        return replaced
    _installed = True
    for name, patch in _PATCHERS.items():
        module = sys.modules.get(name)
        if module is not None:
            before = getattr(module, "load", None)
            patch(module)
            after = getattr(module, "load", None)
            if before is not None and after is not before:
                replaced[id(before)] = after
    patch_on_import(_PATCHERS)
    return replaced
