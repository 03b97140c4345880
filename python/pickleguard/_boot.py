"""Activation at interpreter start, configured by the environment.

``00-pickleguard.pth`` imports this module only when a ``PICKLEGUARD_`` variable
is set, so an unconfigured interpreter pays for four dictionary lookups. Module
import runs once per process, which makes activation idempotent even when the
.pth file is processed twice (as it is in some virtual environments).

Variables:

* ``PICKLEGUARD_MANIFEST``: the manifest to enforce (path).
* ``PICKLEGUARD_MODE``: ``enforce`` (default) or ``warn``. Set without a manifest,
  it activates "nopickle": nothing loads.
* ``PICKLEGUARD_LOG``: also append each warn report and denial as a JSON line here.
* ``PICKLEGUARD_WARN_STDERR``: ``auto`` (default) or ``off``: what warn mode prints
  on stderr (see docs/deployment.md).
* ``PICKLEGUARD_RECORD``: a journal directory; every load is allowed and
  journaled (set by ``pickleguard record``).
* ``PICKLEGUARD_RECORD_IDENTITY``: ``sha256`` (default) or ``blake3``, the hash
  the journal identifies loads with.
* ``PICKLEGUARD_LAYERS``: set by ``activate()`` so child processes inherit the
  layers their parent added in code (JSON list of ``[mode, manifest]``).

Under environment activation no token is handed out, so nothing in the process
can lift these layers.

The gate itself is installed when ``pickle`` or ``_pickle`` is first imported
(an import hook, see ``_on_import``), not here: a process that never unpickles
does not pay for importing pickle. The backstop is registered here, at once.
"""

from __future__ import annotations

import os
import sys

from . import _on_import

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs milliseconds at interpreter start
    from typing import Any, Optional


VARIABLES = (
    "PICKLEGUARD_MANIFEST",
    "PICKLEGUARD_MODE",
    "PICKLEGUARD_RECORD",
    "PICKLEGUARD_LAYERS",
)


class BootError(Exception):
    """The environment asks for pickleguard but does not say how to guard."""


def _check_readable(manifest: str, variable: str) -> None:
    """Stop the start on a manifest that is missing or cannot be read: otherwise the
    process would run until its first load and only then refuse."""
    try:
        with open(manifest, "rb"):
            pass
    except OSError as e:
        reason = e.strerror or type(e).__name__
        raise BootError(f"{variable} names {manifest!r}, which cannot be read: {reason}") from e


def _activate(core: Any, manifest: Optional[str], mode: str) -> None:
    if manifest is None:
        core.activate(None, mode)
    else:
        # Read on a background thread so start-up does not wait for a large
        # manifest; the first load waits instead. A manifest that fails to read
        # refuses every load, and each refusal says why.
        core.activate_deferred(manifest, mode)


def _install_gate(module: Any) -> None:
    """The import hook's patcher for ``pickle`` and ``_pickle``: install the gate
    as soon as either has executed, before the import that asked for it returns."""
    if "pickle" in _on_import.executing:
        return  # _pickle, imported by pickle, whose own hook installs once it is whole
    importing = sys.modules.get("pickleguard._gate")
    if importing is not None and not hasattr(importing, "guard_module"):
        return  # imported by the gate module, which installs as its last step
    from . import _gate  # installs as its last step, if this imports it

    _gate.install(just_imported=True)
    _gate.guard_module(module)  # a module imported anew after the first


def _install_gate_when_imported(core: Any) -> None:
    """Put the gate in place when ``pickle`` or ``_pickle`` is first imported, not
    now: a process that never unpickles (most of a tree's helpers) does not pay for
    importing pickle at start. The backstop is registered now all the same."""
    from . import adapters

    if "pickle" in sys.modules or "_pickle" in sys.modules:
        # Imported before start-up got here (a sitecustomize, an earlier .pth):
        # install now, rebinding whatever holds an original.
        from . import _gate

        _gate.install()
    core.install_backstop()
    adapters.install()
    _on_import.gate_wanted = True
    _on_import.patch_on_import({"pickle": _install_gate, "_pickle": _install_gate})


def boot() -> None:
    from . import _core

    env = os.environ
    mode = env.get("PICKLEGUARD_MODE") or "enforce"
    if mode not in ("enforce", "warn"):
        raise BootError(f'PICKLEGUARD_MODE must be "enforce" or "warn", not {mode!r}')
    inherited = []
    try:
        if env.get("PICKLEGUARD_LAYERS"):
            import json  # only children of activate() in code pay for it

            inherited = json.loads(env["PICKLEGUARD_LAYERS"])
        inherited = [(str(m), None if p is None else str(p)) for m, p in inherited]
    except (ValueError, TypeError) as e:
        raise BootError(f"PICKLEGUARD_LAYERS is not a JSON list of [mode, manifest]: {e}") from e
    manifest = env.get("PICKLEGUARD_MANIFEST")
    if manifest is not None:
        if not manifest.strip():
            raise BootError("PICKLEGUARD_MANIFEST is set but empty")
        # Children may start in another directory: give them the absolute path.
        manifest = env["PICKLEGUARD_MANIFEST"] = os.path.abspath(manifest)
        _check_readable(manifest, "PICKLEGUARD_MANIFEST")
    for _, layer_manifest in inherited:
        if layer_manifest is not None:
            _check_readable(layer_manifest, "PICKLEGUARD_LAYERS")
    log = env.get("PICKLEGUARD_LOG")
    if log is not None and not log.strip():
        raise BootError("PICKLEGUARD_LOG is set but empty")
    _install_gate_when_imported(_core)
    # A forked child has no manifest-reading thread to wait for: finish reading first.
    os.register_at_fork(before=_core.settle_manifests)
    if log is not None:
        _core.set_audit_log(log)
    if env.get("PICKLEGUARD_WARN_STDERR") is not None:
        _core.set_warn_stderr(env["PICKLEGUARD_WARN_STDERR"])
    if env.get("PICKLEGUARD_RECORD"):
        identity = env.get("PICKLEGUARD_RECORD_IDENTITY") or "sha256"
        if identity not in ("sha256", "blake3"):
            raise BootError(
                f'PICKLEGUARD_RECORD_IDENTITY must be "sha256" or "blake3", not {identity!r}'
            )
        _core.start_journal(env["PICKLEGUARD_RECORD"], identity)
        _core.record_layer()
        return
    if manifest is not None or "PICKLEGUARD_MODE" in env:
        _activate(_core, manifest, mode)
    for layer_mode, manifest in inherited:
        _activate(_core, manifest, layer_mode)


boot()
