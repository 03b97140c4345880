"""Type stubs for pickleguard's native core (built from src/py/, the PyO3 binding)."""

__all__ = [
    "ArtifactScope",
    "Feed",
    "Grant",
    "Token",
    "UnpicklerSource",
    "VERSION",
    "VerifiedBytes",
    "activate",
    "activate_deferred",
    "allow_pickles",
    "bind_gate",
    "channel_callers",
    "channel_rules",
    "check_manifest",
    "classify_imports",
    "delimit",
    "dry_run_safe",
    "enforcing",
    "hexdigest",
    "identify",
    "in_artifact",
    "journaling",
    "imports",
    "install_backstop",
    "load",
    "loads",
    "manifest_summary",
    "no_pickles",
    "pattern_matches",
    "pinned_load",
    "pinned_loads",
    "process_layers",
    "py_unpickler_find_class",
    "py_unpickler_load",
    "record_layer",
    "seal_type",
    "settle_manifests",
    "set_audit_log",
    "set_warn_stderr",
    "start_journal",
    "unpickler_find_class",
    "unpickler_load",
    "verify_artifact",
    "verify_stream",
]

from typing import Any, Callable, Iterable, Iterator, List, Optional, Tuple, final

VERSION: str

@final
class Token:
    """The right to lift one layer. Cannot be created, copied or pickled."""

    def __enter__(self) -> Token: ...
    def __exit__(self, *args: object) -> bool: ...
    def close(self) -> None: ...
    def __copy__(self) -> None: ...
    def __deepcopy__(self, memo: Any) -> None: ...
    def __reduce__(self) -> None: ...  # type: ignore[override]
    def __reduce_ex__(self, protocol: Any) -> None: ...  # type: ignore[override]
    def __getstate__(self) -> None: ...

@final
class Grant:
    """The with-block returned by ``allow_pickles``."""

    def __enter__(self) -> Grant: ...
    def __exit__(self, *args: object) -> bool: ...

@final
class ArtifactScope:
    """The with-block of a verified artifact, returned by ``verify_artifact``."""

    def __enter__(self) -> ArtifactScope: ...
    def __exit__(self, *args: object) -> bool: ...

def verify_artifact(
    data: Any,
    source: Optional[str] = None,
    loader: Optional[str] = None,
    imports: Optional[List[Tuple[str, bool]]] = None,
    stream: Any = None,
    any_stream: bool = False,
    in_memory: bool = False,
) -> ArtifactScope: ...
def journaling() -> bool: ...
def in_artifact() -> bool: ...
def enforcing() -> bool: ...
def activate(manifest: Optional[str] = None, mode: str = "enforce") -> Token: ...
def activate_deferred(manifest: str, mode: str = "enforce") -> None: ...
def settle_manifests() -> None: ...
def no_pickles() -> Token: ...
def allow_pickles(token: Any, only_objects: Optional[List[str]] = None) -> Grant: ...
def loads(data: Any, /, **kwargs: Any) -> Any: ...
def load(file: Any, **kwargs: Any) -> Any: ...
def pinned_loads(data: Any, sha256: str, /, **kwargs: Any) -> Any: ...
def pinned_load(file: Any, sha256: str, /, **kwargs: Any) -> Any: ...
def bind_gate(
    original_loads: Callable[..., Any],
    c_unpickler_load: Callable[..., Any],
    py_unpickler_load: Callable[..., Any],
    c_find_class: Callable[..., Any],
    py_find_class: Callable[..., Any],
    admitted_unpickler: Callable[..., Any],
    explain: Callable[..., Any],
) -> None: ...
def unpickler_find_class(unpickler: Any, module: Any, name: Any) -> Any: ...
def py_unpickler_find_class(unpickler: Any, module: Any, name: Any) -> Any: ...
def unpickler_load(unpickler: Any) -> Any: ...
def py_unpickler_load(unpickler: Any) -> Any: ...
def install_backstop() -> None: ...

@final
class VerifiedBytes:
    """Verified pickle bytes read from a stream, lent read-only as a buffer."""

    def __len__(self) -> int: ...

@final
class Feed:
    """A private file holding only verified bytes."""

    def __init__(self) -> None: ...
    def read(self, n: Optional[int] = ...) -> bytes: ...
    def readline(self, size: Optional[int] = ...) -> bytes: ...
    def readinto(self, buffer: Any) -> int: ...

@final
class UnpicklerSource:
    """What the guarded Unpickler keeps between loads."""

    def __new__(
        cls,
        file: Any,
        fix_imports: bool,
        encoding: str,
        errors: str,
        buffers: Optional[Iterable[Any]],
        buffer_feed: Optional[Any],
    ) -> UnpicklerSource: ...
    @property
    def feed(self) -> Feed: ...

def verify_stream(
    read: Callable[..., Any],
    readline: Callable[..., Any],
    buffers: Optional[Iterable[Any]] = None,
    sha256: Optional[str] = None,
    file: Any = None,
) -> Tuple[bytes, Optional[Iterator[Any]]]: ...
def seal_type(cls: type) -> bool: ...
def delimit(data: Any, offset: int = 0) -> Tuple[int, int]: ...
def dry_run_safe(data: Any) -> bool: ...
def identify(
    data: Any, buffers: Optional[Iterable[Any]] = None, algorithm: str = "sha256"
) -> str: ...
def hexdigest(data: Any, algorithm: str = "sha256") -> str: ...
def process_layers() -> List[Tuple[str, Optional[str], int, Optional[str]]]: ...
def check_manifest(path: str) -> int: ...
def start_journal(directory: str, algorithm: str = "sha256") -> None: ...
def set_audit_log(path: str) -> None: ...
def set_warn_stderr(setting: str) -> None:
    """What warn mode prints on stderr: "auto" (a line per distinct payload and caller,
    or one summary line at exit when an audit log is set) or "off". Raises ValueError
    for any other value."""

def imports(data: Any) -> List[Tuple[str, bool]]: ...
def classify_imports(names: List[str]) -> List[Tuple[str, str]]: ...
def manifest_summary(
    path: str,
) -> Tuple[
    List[Tuple[str, List[str], Optional[List[str]]]],
    List[Tuple[str, List[str], Optional[List[str]]]],
]: ...
def record_layer() -> None: ...
def channel_callers(name: str) -> List[str]: ...
def channel_rules(name: str) -> List[Tuple[List[str], List[str]]]: ...
def pattern_matches(pattern: str, name: str) -> bool: ...
