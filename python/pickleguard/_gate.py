"""The gate: guarded replacements for every pickle loading entry point.

Each replacement reads exactly one pickle into a private buffer, has the core hash
and judge it, and only then runs the original unpickler, on that buffer alone. The
source is never read twice, so a file that changes under us cannot smuggle in
unverified bytes.
"""

from __future__ import annotations

import _pickle
import _thread
import io
import pickle
import sys

from . import _core, _on_import
from .errors import NoPickleError, _UndelimitedPickle

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs milliseconds at interpreter start
    from typing import Any, Dict, Iterable, Iterator, NoReturn, Optional, Tuple

# The originals, captured before anything is patched.
_c_loads = _pickle.loads
_c_load = _pickle.load
_CUnpickler = _pickle.Unpickler
_c_unpickler_load = _CUnpickler.load
_py_load = pickle._Unpickler.load
_py_find_class = pickle._Unpickler.find_class

_install_lock = _thread.allocate_lock()
_installed = False


class _ImportRefused(BaseException):
    """Raised by the dry run when it would have to use an imported global."""


# Set in this thread while a dry run runs. Only then does a placeholder stop what
# touches it: outside a dry run it is an ordinary class, so code that walks every
# module's attributes (dill.__diff, inspect, documentation tools) finds nothing that
# raises a BaseException at it.
_dry_run = _thread._local()


def _in_dry_run() -> bool:
    return getattr(_dry_run, "active", False)


class _PlaceholderMeta(type):
    """In a dry run, using a placeholder global in any way (calling it, reading an
    attribute such as ``__new__``) stops the run."""

    def __getattribute__(cls, name: str) -> Any:
        if _in_dry_run():
            raise _ImportRefused
        return type.__getattribute__(cls, name)

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        if _in_dry_run():
            raise _ImportRefused
        raise TypeError("pickleguard's dry-run placeholder cannot be instantiated")


def _refuse_new(cls: Any, *args: Any, **kwargs: Any) -> Any:
    if _in_dry_run():
        raise _ImportRefused
    raise TypeError("pickleguard's dry-run placeholder cannot be instantiated")


# A class, so the C unpickler's "is it a type" checks pass and the run stops at the
# placeholder's first use (NEWOBJ calls its __new__ slot directly), as plain pickle
# would go on to use the real class.
_Placeholder = _PlaceholderMeta("_Placeholder", (), {"__new__": _refuse_new})


# Globals the dry run may really use: the builtin exception classes. Constructing
# one runs no user code and allocates nothing beyond its arguments, and it lets the
# run reach the structural error plain pickle would report after it. Scalar and
# container types stay placeholders: `bytearray(1 << 40)` would allocate.
_DRY_RUN_MODULES = frozenset({"builtins", "__builtin__", "exceptions"})
_DRY_RUN_GLOBALS: Dict[str, type] = {
    name: obj
    for name, obj in vars(__import__("builtins")).items()
    if isinstance(obj, type) and issubclass(obj, BaseException)
}


def _refuse_import(self: Any, module: str, name: str) -> Any:
    if module in _DRY_RUN_MODULES and name in _DRY_RUN_GLOBALS:
        return _DRY_RUN_GLOBALS[name]
    return _Placeholder


class _CDryRun(_CUnpickler):
    find_class = _refuse_import


class _PyDryRun(pickle._Unpickler):
    find_class = _refuse_import


def _explain_undelimited(
    undelimited: _UndelimitedPickle, flavor: str, options: Dict[str, Any]
) -> NoReturn:
    """Raise the exception plain pickle raises for input we could not delimit.

    The input is run through the real unpickler with every global replaced by an
    inert placeholder that stops the run as soon as it is called or touched (builtin
    exception classes excepted). Only literals, containers and exception instances
    can be built, so no code runs. A structural
    error the run meets first (a bad mark, an empty stack, a bad string) is the
    one plain pickle raises; otherwise the reader's own error stands.
    """
    data, reader_error = undelimited.args
    if not _core.dry_run_safe(data):
        # EXT opcodes, or a memo index or length the input does not pay for.
        raise reader_error from None
    options = {k: v for k, v in options.items() if k != "buffers"}
    outer = _in_dry_run()
    _dry_run.active = True
    try:
        if flavor == "c":
            _CDryRun(io.BytesIO(data), **options).load()
        else:
            _py_load(_PyDryRun(io.BytesIO(data), **options))
    except _ImportRefused:
        pass
    except Exception as plain_error:
        raise plain_error from None
    finally:
        _dry_run.active = outer
    raise reader_error from None


# The guarded module functions are builtins from the core (see `_core.loads`), so
# they never bind as methods when a class stores them (`loads = pickle.loads`).
loads = _core.loads
load = _core.load
# They stand in for pickle's own, and pickle by reference as them: code that
# pickles `pickle.loads` (dask sends `cloudpickle.loads` to its workers) must not
# write a reference to pickleguard's internals, which the backstop refuses.
loads.__module__ = load.__module__ = "pickle"


class _BufferFeed:
    """The out-of-band buffers iterator the real unpickler sees: the verified ones."""

    __slots__ = ("current",)

    def __init__(self) -> None:
        self.current: Iterator[Any] = iter(())

    def __iter__(self) -> _BufferFeed:
        return self

    def __next__(self) -> Any:
        return next(self.current)


class Unpickler(_CUnpickler):
    """``pickle.Unpickler`` with every ``load()`` admitted by pickleguard first.

    The C unpickler underneath reads from a private buffer that holds only verified
    bytes; its memo persists across ``load()`` calls exactly as in plain pickle, and
    subclasses may override ``find_class`` and ``persistent_load`` as usual.
    """

    __module__ = "pickle"  # it is pickle.Unpickler once installed; see `loads`

    def __init__(
        self,
        file: Any,
        *,
        fix_imports: bool = True,
        encoding: str = "ASCII",
        errors: str = "strict",
        buffers: Optional[Iterable[Any]] = None,
    ) -> None:
        buffer_feed = None if buffers is None else _BufferFeed()
        # All the core's load() needs, in one attribute: set once, read once a load.
        self._pickleguard = source = _core.UnpicklerSource(
            file, fix_imports, encoding, errors, buffers, buffer_feed
        )
        if not isinstance(self, Unpickler):
            # A subclass of the original C class, calling its base through a name that
            # was bound before activation and rebound to this class, as dill does
            # (`StockUnpickler.__init__(self, ...)`, then `StockUnpickler.load(self)`).
            # super() would raise TypeError; set up its C part on the feed instead, so
            # the load() it calls by that name is judged like any other.
            _CUnpickler.__init__(
                self,
                source.feed,
                fix_imports=fix_imports,
                encoding=encoding,
                errors=errors,
                buffers=buffer_feed,
            )
            return
        super().__init__(
            source.feed,
            fix_imports=fix_imports,
            encoding=encoding,
            errors=errors,
            buffers=buffer_feed,
        )

    def load(self) -> Any:
        # Admits one pickle, puts it in the private feed and runs the C load on it,
        # all in the core; raises like plain pickle if __init__ was not called.
        return _core.unpickler_load(self)

    def find_class(self, module_name: str, global_name: str, /) -> Any:
        # A direct call is an ordinary import; see _core.unpickler_find_class.
        return _core.unpickler_find_class(self, module_name, global_name)


def _guarded_py_load(self: Any) -> Any:
    """``pickle._Unpickler.load``, patched on the class so every subclass is covered."""
    return _core.py_unpickler_load(self)


def _guarded_py_find_class(self: Any, module: str, name: str) -> Any:
    """``pickle._Unpickler.find_class``, patched on the class; see the core."""
    return _core.py_unpickler_find_class(self, module, name)


_guarded_py_find_class.__name__ = "find_class"
_guarded_py_find_class.__qualname__ = "_Unpickler.find_class"
_guarded_py_load.__name__ = "load"
_guarded_py_load.__qualname__ = "_Unpickler.load"


def rebind_names(replacements: Dict[int, Any], skip: Tuple[str, ...] = ()) -> None:
    """In every imported module (but pickleguard's and those in ``skip``), point
    names bound to an object whose id is in ``replacements`` at its replacement."""
    for name, module in list(sys.modules.items()):
        if module is None or name in skip or name.startswith("pickleguard"):
            continue
        try:
            namespace = vars(module)
        except TypeError:
            continue
        for attr, value in list(namespace.items()):
            replacement = replacements.get(id(value))
            if replacement is not None and value is not replacement:
                try:
                    setattr(module, attr, replacement)
                except (AttributeError, TypeError):
                    pass


def _rebind_captured_originals() -> None:
    """Point names bound to the original loaders before activation at the guarded
    ones: ``from pickle import loads`` in modules imported earlier, shelve's
    ``Unpickler``, multiprocessing's ``ForkingPickler.loads``. Whatever this misses
    still meets the backstop."""
    replacements = {id(_c_loads): loads, id(_c_load): load, id(_CUnpickler): Unpickler}
    rebind_names(replacements, skip=("pickle", "_pickle"))
    reduction = sys.modules.get("multiprocessing.reduction")
    forking = getattr(reduction, "ForkingPickler", None)
    if forking is not None and forking.__dict__.get("loads") is _c_loads:
        forking.loads = loads


def _early_subclass_load(self: Any) -> Any:
    """``load()`` given, at activation, to the subclasses of the original C
    ``Unpickler`` that were made before it and inherit its unchecked ``load()``."""
    if hasattr(self, "_pickleguard"):
        # Set up through a base name rebound to the guarded class (dill's
        # ``StockUnpickler.__init__(self, ...)``): its C part reads the private feed.
        return _core.unpickler_load(self)
    # Its C part reads the caller's file directly: there is no telling what it
    # reads, so it cannot be judged. Warn mode lets it run (the backstop still
    # refuses its global imports); enforcement refuses it.
    cls = type(self)
    message = (
        f"pickleguard refused {cls.__module__}.{cls.__qualname__}.load(): the class "
        "subclasses the original pickle.Unpickler and was created before pickleguard "
        "was activated, so its load() reads its file past the gate and cannot be "
        "judged.\nhint: activate pickleguard before importing "
        f"{cls.__module__}, or from the environment (PICKLEGUARD_MANIFEST, or "
        "pickleguard run), so no unpickler class exists before it"
    )
    if _core.enforcing():
        caller = sys._getframe(1)
        code = caller.f_code
        name = f"{caller.f_globals.get('__name__')}:{getattr(code, 'co_qualname', code.co_name)}"
        raise NoPickleError(message, code="early-unpickler", caller=name)
    import logging

    logging.getLogger("pickleguard").warning("warn mode, allowed anyway: %s", message)
    return _c_unpickler_load(self)


def _guard_early_subclasses() -> None:
    """Give every subclass of the original C ``Unpickler`` that exists now and
    inherits its ``load()`` the one above. pickleguard's own classes keep theirs."""
    own = (Unpickler, _AdmittedUnpickler, _CDryRun)
    pending = list(_CUnpickler.__subclasses__())
    seen = set()
    while pending:
        cls = pending.pop()
        if cls in seen or cls in own:
            continue
        seen.add(cls)
        pending.extend(cls.__subclasses__())
        if cls.load is _c_unpickler_load:
            try:
                cls.load = _early_subclass_load  # type: ignore[method-assign]
            except (AttributeError, TypeError):
                pass  # an immutable type: the backstop still refuses its imports


def guard_module(module: Any) -> None:
    """Put the guarded entry points on ``module``, a ``pickle`` or ``_pickle``
    module object: the one imported now, or one imported anew later."""
    module.load = load
    module.loads = loads
    module.Unpickler = Unpickler
    py_unpickler = getattr(module, "_Unpickler", None)
    if isinstance(py_unpickler, type):
        py_unpickler.load = _guarded_py_load  # type: ignore[attr-defined]
        py_unpickler.find_class = _guarded_py_find_class  # type: ignore[attr-defined]


def install(*, just_imported: bool = False) -> None:
    """Replace the loading entry points of ``pickle`` and ``_pickle``, register the
    audit-hook backstop and prove it works. Idempotent. Raises PickleGuardError if
    the backstop cannot be put in place.

    ``just_imported``: called as ``pickle`` or ``_pickle`` is first imported (see
    ``_boot``), when no other module can hold an original loader or subclass the
    original ``Unpickler`` yet, so there is nothing to rebind; and the adapters'
    import hook is in place already."""
    global _installed
    with _install_lock:
        if _installed:
            return
        _core.install_backstop()
        guard_module(pickle)
        guard_module(_pickle)
        if not just_imported:
            _rebind_captured_originals()
            _guard_early_subclasses()
        # torch.load and joblib.load pin whole files; see adapters.
        from . import adapters

        replaced = adapters.install()
        if replaced:
            # `from torch import load` in a module imported before activation.
            rebind_names(replaced)
        _installed = True


def installed() -> bool:
    return _installed


class _AdmittedUnpickler(_CUnpickler):
    """What the guarded ``loads``/``load`` run a pickle that names globals with:
    the C unpickler, with each import admitted in its own find_class frame."""

    def find_class(self, module_name: str, global_name: str, /) -> Any:
        return _core.unpickler_find_class(self, module_name, global_name)


_core.bind_gate(
    _c_loads,
    _CUnpickler.load,
    _py_load,
    _CUnpickler.find_class,
    _py_find_class,
    _AdmittedUnpickler,
    _explain_undelimited,
)
_core.seal_type(Unpickler)
if _on_import.gate_wanted:
    # Activated at start: pickle was imported just now (by this module, or by the
    # import that set off the hook), so nothing can hold an original loader yet;
    # unless it was imported past the hook (a finder ahead of it), then rebind.
    install(just_imported=bool(_on_import.executed & {"pickle", "_pickle"}))
