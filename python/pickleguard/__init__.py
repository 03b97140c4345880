"""pickleguard: refuse every pickle load that an explicit policy does not allow.

A payload is identified by the SHA-256 of the exact bytes the unpickler will consume.
``activate()`` installs the gate on every ``pickle`` entry point and adds a
process-wide layer; ``no_pickles()`` and ``allow_pickles()`` scope loads in code.
"""

from __future__ import annotations

import os

from . import _core
from ._core import Token, allow_pickles, identify
from .errors import BadTokenError, ManifestError, NoPickleError, PickleGuardError

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs milliseconds at interpreter start
    from typing import Any, Iterable, Optional, Union

__all__ = [
    "BadTokenError",
    "ManifestError",
    "NoPickleError",
    "PickleGuardError",
    "Token",
    "activate",
    "allow_pickles",
    "identify",
    "load",
    "loads",
    "no_pickles",
]

__version__: str = _core.VERSION


def activate(
    manifest: Optional[Union[str, "os.PathLike[str]"]] = None, mode: str = "enforce"
) -> Token:
    """Guard every pickle load in this process.

    Installs the gate on ``pickle`` and ``_pickle`` and adds a process-wide layer
    that allows the pickles listed in ``manifest`` (a TOML file; see
    docs/manifest.md). With ``manifest=None`` the layer allows nothing: only
    ``allow_pickles(token)`` lifts it. ``mode="warn"`` allows every load but
    reports each one the layer would refuse.

    Returns the token of the new layer. Layers only add up: a later call adds
    another layer that must also allow a load, so it can only tighten.

    It raises ManifestError if the manifest cannot be read; the layer is installed
    anyway and, in enforce mode, refuses every load until the process restarts.

    Child Python processes inherit the layer through the PICKLEGUARD_LAYERS
    environment variable (read by the .pth file pickleguard installs). A
    multiprocessing forkserver already running is let go of, so that the next one
    starts with the layer. Processes started before this call cannot be reached:
    if multiprocessing children (pool or executor workers, managers, processes)
    are alive, it raises PickleGuardError naming them, after installing the layer
    (in warn mode it logs a warning instead).
    """
    if mode not in ("enforce", "warn"):
        raise ValueError(f'mode must be "enforce" or "warn", not {mode!r}')
    path = None if manifest is None else os.path.abspath(os.fspath(manifest))
    from . import _gate, _processes

    _gate.install()
    guarded_before = bool(_core.process_layers())
    try:
        token = _core.activate(path, mode)
    finally:
        # Child processes (subprocess, multiprocessing spawn and forkserver) start
        # with the same layers; even a broken manifest is inherited, closed.
        _inherit_layer(mode, path)
        # A forkserver started earlier would fork workers without this layer.
        _processes.restart_forkserver()
    # Workers started earlier do not have the layer: say so rather than claim them.
    _processes.check_children(mode, guarded_before)
    return token


def _inherit_layer(mode: str, manifest: Optional[str]) -> None:
    import json

    try:
        layers = json.loads(os.environ.get("PICKLEGUARD_LAYERS") or "[]")
    except ValueError:
        layers = []
    if [mode, manifest] not in layers:
        layers.append([mode, manifest])
        os.environ["PICKLEGUARD_LAYERS"] = json.dumps(layers)


def no_pickles() -> Token:
    """Open a deny scope in this thread or asyncio task and return its token.

    Inside the scope no pickle loads unless ``allow_pickles(token)`` lifts it. Use
    it as ``with no_pickles() as token:`` to end the scope with the block.
    """
    from . import _gate

    _gate.install()
    return _core.no_pickles()


def loads(
    data: Any,
    /,
    *,
    sha256: str,
    fix_imports: bool = True,
    encoding: str = "ASCII",
    errors: str = "strict",
    buffers: Optional[Iterable[Any]] = None,
) -> Any:
    """``pickle.loads`` that loads only the object whose SHA-256 is ``sha256``.

    It raises NoPickleError if the data has another hash, or if an active layer
    refuses it: a pin never lifts the operator's policy.
    """
    return _core.pinned_loads(
        data, sha256, fix_imports=fix_imports, encoding=encoding, errors=errors, buffers=buffers
    )


def load(
    file: Any,
    *,
    sha256: str,
    fix_imports: bool = True,
    encoding: str = "ASCII",
    errors: str = "strict",
    buffers: Optional[Iterable[Any]] = None,
) -> Any:
    """``pickle.load`` that loads only the object whose SHA-256 is ``sha256``.

    Reads exactly one pickle from ``file``; see ``loads``.
    """
    return _core.pinned_load(
        file, sha256, fix_imports=fix_imports, encoding=encoding, errors=errors, buffers=buffers
    )
