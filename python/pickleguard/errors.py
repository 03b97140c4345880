"""pickleguard's exceptions.

None of them derives from UnpicklingError, ValueError, TypeError, AttributeError or
ImportError: libraries catch those around pickle loads and fall back silently, and a
denial must never be mistaken for a damaged file.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs milliseconds at interpreter start
    from typing import Any


__all__ = ["BadTokenError", "ManifestError", "NoPickleError", "PickleGuardError"]


class PickleGuardError(Exception):
    """Base class of every error pickleguard raises on its own account."""


class NoPickleError(PickleGuardError):
    """A load was refused by the active policy. Nothing in the pickle ran.

    Attributes:
        sha256: hex SHA-256 of the refused payload; empty when the refusing manifest
            identifies with BLAKE3 alone (it is not computed just for this).
        identity: the identity the suggested entry uses, ``sha256:<hex>`` or
            ``blake3:<hex>`` (the refusing manifest's choice).
        kind: ``pickle`` (one pickle stream) or ``artifact`` (a whole file).
        size: its size in bytes.
        caller: the loading frame, as ``module:qualname``.
        code: a stable reason code: ``not-listed``, ``stack-mismatch``,
            ``no-manifest``, ``broken-manifest``, ``scope``, ``pin-mismatch``,
            ``backstop``, ``backstop-self`` or ``early-unpickler``.
        entry: a manifest entry that would allow this load, ready to paste.
    """

    def __init__(
        self,
        message: str,
        *,
        sha256: str = "",
        identity: str = "",
        kind: str = "pickle",
        size: int = 0,
        caller: str = "",
        code: str = "",
        entry: str = "",
    ) -> None:
        super().__init__(message)
        self.sha256 = sha256
        self.identity = identity
        self.kind = kind
        self.size = size
        self.caller = caller
        self.code = code
        self.entry = entry

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), self.args, self.__dict__)


class BadTokenError(PickleGuardError):
    """A token was forged, copied, pickled, expired, or used outside its scope."""


class ManifestError(PickleGuardError):
    """A manifest could not be read. The message names the file, line and column."""


class _UndelimitedPickle(Exception):
    """Internal: no pickle could be delimited in ``args[0]``; ``args[1]`` says why.

    The gate turns it into the exception plain pickle would raise, found without
    running anything (see ``_gate._explain_undelimited``); it never escapes.
    """
