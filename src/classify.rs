//! Sorts the globals a pickle imports into three classes, for a reviewer:
//!
//! * [`Class::Safe`]: a known data constructor (a container, a number, a date, an
//!   array or tensor rebuilder). Only this class is a claim, and it is made for
//!   exact names only: what such a constructor is given (a `defaultdict`'s
//!   factory, a `partial`'s function, an array's dtype) is a separate import,
//!   classified on its own.
//! * [`Class::Risky`]: known to run code, start processes or threads, touch files
//!   or the network, import by name, load another pickle, or reach attributes,
//!   items or memory it is not handed. A table entry covers the global or module
//!   it names and everything under it.
//! * [`Class::Review`]: anything else: a class or function these tables do not
//!   know. Unknown is not safe: a reviewer reads what it does.
//!
//! The tables cannot be complete: new risky functions appear in every library. So
//! safety is what is listed, never what is missing from a denylist.

/// How a global is classified. Ordered from least to most severe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Class {
    Safe,
    Review,
    Risky,
}

impl Class {
    pub fn as_str(self) -> &'static str {
        match self {
            Class::Safe => "safe",
            Class::Review => "review",
            Class::Risky => "risky",
        }
    }
}

/// A table entry: a dotted name (`module.global`, or a module) and why it is there.
type Entry = (&'static str, &'static str);

// ---------------------------------------------------------------------------
// SAFE: exact names. A name under one of these (`collections.OrderedDict.fromkeys`)
// is not covered.

/// Builtin types that build plain data from data.
const SAFE_BUILTINS: &[Entry] = &[
    (
        "builtins.object",
        "the base class; copyreg._reconstructor's usual argument",
    ),
    ("builtins.set", "a set of the given items"),
    ("builtins.frozenset", "a frozen set of the given items"),
    ("builtins.dict", "a dict of the given items"),
    ("builtins.list", "a list of the given items"),
    ("builtins.tuple", "a tuple of the given items"),
    ("builtins.bytes", "bytes from the given data"),
    ("builtins.bytearray", "a byte array from the given data"),
    ("builtins.str", "a string"),
    ("builtins.int", "an integer"),
    ("builtins.float", "a float"),
    ("builtins.complex", "a complex number"),
    ("builtins.bool", "a boolean"),
    ("builtins.range", "a range of integers"),
    ("builtins.slice", "a slice object"),
    ("builtins.Ellipsis", "the `...` constant, not callable"),
    ("builtins.NotImplemented", "a constant, not callable"),
];

/// Standard-library constructors of data and pickle's own rebuilders.
const SAFE_STDLIB: &[Entry] = &[
    (
        "copyreg._reconstructor",
        "calls __new__/__init__ of a class that is its own import",
    ),
    (
        "copyreg.__newobj__",
        "cls.__new__(cls, *args) for a class that is its own import",
    ),
    (
        "copyreg.__newobj_ex__",
        "cls.__new__ with keywords, for a class that is its own import",
    ),
    (
        "_codecs.encode",
        "how protocols 0-2 write bytes; codecs are looked up in `encodings` only",
    ),
    ("collections.OrderedDict", "an ordered dict"),
    (
        "collections.defaultdict",
        "a dict; its default factory is its own import",
    ),
    ("collections.deque", "a double-ended queue"),
    ("collections.Counter", "a dict of counts"),
    ("datetime.date", "a date"),
    ("datetime.time", "a time of day"),
    ("datetime.datetime", "a date and time"),
    ("datetime.timedelta", "a duration"),
    ("datetime.timezone", "a fixed UTC offset"),
    ("decimal.Decimal", "a decimal number, parsed from text"),
    ("fractions.Fraction", "a fraction"),
    ("uuid.UUID", "a UUID from its bytes"),
    ("array.array", "a typed array"),
    (
        "array._array_reconstructor",
        "how protocol 3+ writes array.array",
    ),
    (
        "re._compile",
        "a compiled regular expression (a hostile pattern can be slow, no more)",
    ),
    ("types.SimpleNamespace", "an attribute bag"),
    (
        "functools.partial",
        "calls only the function it wraps, which is its own import and classified on \
         its own; it lets a pickle pass keyword arguments to it, no more",
    ),
];

/// numpy's array, dtype and scalar rebuilders (both numpy 1's `numpy.core` and
/// numpy 2's `numpy._core`), and its random generators' state.
const SAFE_NUMPY: &[Entry] = &[
    (
        "numpy.core.multiarray._reconstruct",
        "an empty array, filled by BUILD",
    ),
    (
        "numpy._core.multiarray._reconstruct",
        "an empty array, filled by BUILD",
    ),
    (
        "numpy.core.multiarray.scalar",
        "a numpy scalar from its bytes",
    ),
    (
        "numpy._core.multiarray.scalar",
        "a numpy scalar from its bytes",
    ),
    (
        "numpy.core.numeric._frombuffer",
        "an array from protocol 5 buffers",
    ),
    (
        "numpy._core.numeric._frombuffer",
        "an array from protocol 5 buffers",
    ),
    ("numpy.dtype", "an array's element type"),
    ("numpy.ndarray", "the array class"),
    (
        "numpy.ma.core._mareconstruct",
        "an empty masked array, filled by BUILD",
    ),
    ("numpy.ma.core.MaskedArray", "the masked array class"),
    ("numpy.ma.MaskedArray", "the masked array class"),
    (
        "numpy.random._pickle.__randomstate_ctor",
        "a RandomState; its generator is its own import or a known name",
    ),
    (
        "numpy.random._pickle.__generator_ctor",
        "a Generator; its generator is its own import or a known name",
    ),
    (
        "numpy.random._pickle.__bit_generator_ctor",
        "a bit generator of a class that is its own import or a known name",
    ),
    (
        "numpy.random._mt19937.MT19937",
        "a bit generator, state set by BUILD",
    ),
    (
        "numpy.random._pcg64.PCG64",
        "a bit generator, state set by BUILD",
    ),
    (
        "numpy.random._pcg64.PCG64DXSM",
        "a bit generator, state set by BUILD",
    ),
    (
        "numpy.random._philox.Philox",
        "a bit generator, state set by BUILD",
    ),
    (
        "numpy.random._sfc64.SFC64",
        "a bit generator, state set by BUILD",
    ),
    (
        "numpy.random.bit_generator.SeedSequence",
        "a seed's entropy",
    ),
    (
        "numpy.random.bit_generator.__pyx_unpickle_SeedSequence",
        "Cython's rebuilder of SeedSequence, checked by layout",
    ),
];

/// torch's tensor rebuilders, storage classes and small value types.
const SAFE_TORCH: &[Entry] = &[
    (
        "torch._utils._rebuild_tensor",
        "a tensor view of a storage (its own import)",
    ),
    (
        "torch._utils._rebuild_tensor_v2",
        "a tensor view of a storage (its own import)",
    ),
    (
        "torch._utils._rebuild_parameter",
        "a Parameter around a tensor",
    ),
    ("torch.device", "a device name"),
    ("torch.Size", "a shape"),
    (
        "torch.UntypedStorage",
        "a storage class, named by checkpoints",
    ),
    (
        "torch.FloatStorage",
        "a storage class, named by checkpoints",
    ),
    (
        "torch.DoubleStorage",
        "a storage class, named by checkpoints",
    ),
    ("torch.HalfStorage", "a storage class, named by checkpoints"),
    (
        "torch.BFloat16Storage",
        "a storage class, named by checkpoints",
    ),
    ("torch.LongStorage", "a storage class, named by checkpoints"),
    ("torch.IntStorage", "a storage class, named by checkpoints"),
    (
        "torch.ShortStorage",
        "a storage class, named by checkpoints",
    ),
    ("torch.CharStorage", "a storage class, named by checkpoints"),
    ("torch.ByteStorage", "a storage class, named by checkpoints"),
    ("torch.BoolStorage", "a storage class, named by checkpoints"),
    (
        "torch.ComplexFloatStorage",
        "a storage class, named by checkpoints",
    ),
    (
        "torch.ComplexDoubleStorage",
        "a storage class, named by checkpoints",
    ),
    (
        "torch.QInt8Storage",
        "a storage class, named by checkpoints",
    ),
    (
        "torch.QUInt8Storage",
        "a storage class, named by checkpoints",
    ),
    (
        "torch.QInt32Storage",
        "a storage class, named by checkpoints",
    ),
    ("torch.float16", "a dtype constant, not callable"),
    ("torch.bfloat16", "a dtype constant, not callable"),
    ("torch.float32", "a dtype constant, not callable"),
    ("torch.float64", "a dtype constant, not callable"),
    ("torch.int8", "a dtype constant, not callable"),
    ("torch.int16", "a dtype constant, not callable"),
    ("torch.int32", "a dtype constant, not callable"),
    ("torch.int64", "a dtype constant, not callable"),
    ("torch.uint8", "a dtype constant, not callable"),
    ("torch.bool", "a dtype constant, not callable"),
];

/// Other libraries' data holders.
const SAFE_OTHER: &[Entry] = &[(
    "joblib.numpy_pickle.NumpyArrayWrapper",
    "describes an array joblib's own loader reads; under plain pickle, inert data \
     (the only name under the risky `joblib` that is safe)",
)];

// ---------------------------------------------------------------------------
// RISKY: an entry covers itself and every name under it (`os` covers `os.path.join`;
// `osmosis` is not under `os`).

/// Builtins that run code, import, reach attributes or namespaces, or touch files.
const RISKY_BUILTINS: &[Entry] = &[
    ("builtins.eval", "evaluates a string as code"),
    ("builtins.exec", "runs a string as code"),
    ("builtins.compile", "compiles a string to code"),
    ("builtins.__import__", "imports any module by name"),
    ("builtins.open", "opens any file"),
    ("builtins.getattr", "reaches any attribute by name"),
    ("builtins.setattr", "sets any attribute"),
    ("builtins.delattr", "deletes any attribute"),
    ("builtins.globals", "a module's namespace"),
    ("builtins.locals", "a frame's namespace"),
    ("builtins.vars", "any object's namespace"),
    ("builtins.breakpoint", "starts the debugger"),
    ("builtins.input", "reads the terminal, blocks"),
    ("builtins.help", "imports modules by name, runs a pager"),
    ("builtins.memoryview", "exposes an object's memory"),
    ("builtins.exit", "closes stdin and exits"),
    ("builtins.quit", "closes stdin and exits"),
    ("builtins.license", "reads files, reads the terminal"),
    ("builtins.credits", "reads the terminal"),
    ("builtins.copyright", "reads the terminal"),
    ("builtins.execfile", "Python 2: runs a file"),
    ("builtins.file", "Python 2: opens a file"),
    ("builtins.reload", "Python 2: re-runs a module"),
    ("builtins.raw_input", "Python 2: reads the terminal"),
];

/// Modules and functions that run code, import by name, or load code from files.
const RISKY_CODE: &[Entry] = &[
    ("importlib", "imports any module by name"),
    ("imp", "imports any module by name"),
    ("_imp", "the import machinery"),
    ("pkgutil", "resolve_name imports by name"),
    ("pydoc", "locate imports by name; runs pagers"),
    ("zipimport", "imports code from any zip file"),
    ("runpy", "runs modules and files"),
    ("code", "an interpreter: runs source"),
    ("codeop", "compiles source"),
    ("compileall", "compiles and writes files"),
    ("py_compile", "compiles and writes files"),
    ("modulefinder", "runs module code to find imports"),
    ("site", "addsitedir runs the lines of .pth files"),
    ("doctest", "runs the examples in docstrings"),
    ("unittest", "imports tests by name and runs them"),
    ("test", "CPython's test helpers run scripts"),
    ("timeit", "runs code strings"),
    ("trace", "runs code strings"),
    ("profile", "runs code strings"),
    ("cProfile", "runs code strings"),
    ("_lsprof", "the profiler"),
    ("pdb", "the debugger: runs code strings"),
    ("bdb", "the debugger base"),
    ("tkinter", "Tcl's eval"),
    ("_tkinter", "Tcl's eval"),
    ("Tkinter", "Python 2 tkinter"),
    ("idlelib", "the IDE: runs code"),
    ("types.FunctionType", "a function from a code object"),
    ("types.LambdaType", "a function from a code object"),
    ("types.CodeType", "a code object from bytecode"),
    ("types.MethodType", "binds a callable to an object"),
    ("types.new_class", "creates a class, running a callback"),
    ("types.prepare_class", "calls a metaclass's __prepare__"),
    ("functools.reduce", "calls a function over and over"),
    (
        "logging.config",
        "listen evaluates configurations received on a socket",
    ),
    ("distutils", "spawn runs commands; builds run compilers"),
    ("setuptools", "runs builds and commands"),
    ("pkg_resources", "loads entry points by name, reads files"),
    ("pip", "installs and runs packages"),
    ("ensurepip", "installs packages"),
    ("venv", "creates environments, runs pip"),
    ("yaml", "some of its loaders build any object"),
    (
        "pickleguard",
        "the guard itself: must not be steered by a pickle",
    ),
];

/// Reach attributes, items, objects or memory the pickle was not handed.
const RISKY_REACH: &[Entry] = &[
    ("operator.attrgetter", "reaches any attribute by name"),
    ("operator.methodcaller", "calls any method by name"),
    ("operator.itemgetter", "reaches any item"),
    ("operator.getitem", "reaches any item"),
    ("operator.call", "calls anything"),
    ("_operator.attrgetter", "reaches any attribute by name"),
    ("_operator.methodcaller", "calls any method by name"),
    ("_operator.itemgetter", "reaches any item"),
    ("_operator.getitem", "reaches any item"),
    ("_operator.call", "calls anything"),
    ("inspect", "reaches frames, sources and attributes"),
    ("sys", "modules, hooks, the interpreter's state"),
    ("gc", "reaches every live object"),
    ("ctypes", "raw memory and native calls"),
    ("_ctypes", "raw memory and native calls"),
    ("cffi", "raw memory and native calls"),
];

/// Start processes, threads, signals, or other programs.
const RISKY_PROCESS: &[Entry] = &[
    ("os", "runs commands, changes files"),
    ("posix", "os on POSIX: runs commands, changes files"),
    ("nt", "os on Windows: runs commands, changes files"),
    ("subprocess", "runs commands"),
    ("_posixsubprocess", "runs commands"),
    ("commands", "Python 2: runs commands"),
    ("popen2", "Python 2: runs commands"),
    ("pty", "spawns processes"),
    ("pipes", "runs shell pipelines"),
    ("platform", "runs commands to probe the system"),
    ("mailcap", "runs the commands of mailcap files"),
    ("webbrowser", "starts a browser"),
    ("antigravity", "starts a browser"),
    ("multiprocessing", "starts processes, unpickles"),
    ("concurrent", "runs callables in threads and processes"),
    ("threading", "starts threads"),
    ("_thread", "starts threads"),
    ("thread", "Python 2: starts threads"),
    ("asyncio", "runs commands, opens sockets"),
    ("signal", "changes signal handlers"),
    ("_signal", "changes signal handlers"),
];

/// Read, write or delete files.
const RISKY_FILES: &[Entry] = &[
    ("shutil", "copies, moves and deletes files"),
    ("tempfile", "creates files"),
    ("pathlib", "reads and writes files"),
    ("io", "opens files"),
    ("_io", "opens files"),
    ("_pyio", "opens files"),
    ("StringIO", "Python 2 io"),
    ("cStringIO", "Python 2 io"),
    ("posixpath", "os.path on POSIX: reads the file system"),
    ("ntpath", "os.path on Windows: reads the file system"),
    ("genericpath", "reads the file system"),
    ("glob", "lists files"),
    ("fileinput", "opens files"),
    ("linecache", "reads files"),
    ("filecmp", "reads files"),
    ("zipfile", "opens archives"),
    ("tarfile", "opens and extracts archives"),
    ("gzip", "opens files"),
    ("bz2", "opens files"),
    ("lzma", "opens files"),
    ("shelve", "opens files, unpickles"),
    ("dbm", "opens files"),
    ("dumbdbm", "Python 2 dbm"),
    ("anydbm", "Python 2 dbm"),
    ("dbhash", "Python 2 dbm"),
    ("gdbm", "Python 2 dbm"),
    ("whichdb", "Python 2 dbm"),
    ("_dbm", "opens files"),
    ("_gdbm", "opens files"),
    ("sqlite3", "opens databases"),
    ("_sqlite3", "opens databases"),
    ("mailbox", "reads and writes files"),
    ("netrc", "reads files"),
    ("mmap", "maps files into memory"),
    ("codecs.open", "opens files"),
    ("logging.handlers", "handlers open files and sockets"),
    ("logging.FileHandler", "opens files"),
    ("logging.basicConfig", "can open files"),
];

/// Open connections.
const RISKY_NETWORK: &[Entry] = &[
    ("socket", "opens connections"),
    ("_socket", "opens connections"),
    ("ssl", "opens connections"),
    ("socketserver", "listens"),
    ("SocketServer", "Python 2: listens"),
    ("http", "opens connections, listens"),
    ("httplib", "Python 2: opens connections"),
    ("BaseHTTPServer", "Python 2: listens"),
    ("SimpleHTTPServer", "Python 2: listens"),
    ("CGIHTTPServer", "Python 2: listens, runs scripts"),
    ("urllib", "opens URLs"),
    ("urllib2", "Python 2: opens URLs"),
    ("ftplib", "opens connections"),
    ("smtplib", "opens connections"),
    ("poplib", "opens connections"),
    ("imaplib", "opens connections"),
    ("nntplib", "opens connections"),
    ("telnetlib", "opens connections"),
    ("xmlrpc", "calls remote procedures, listens"),
    ("xmlrpclib", "Python 2: calls remote procedures"),
    ("SimpleXMLRPCServer", "Python 2: listens"),
    ("DocXMLRPCServer", "Python 2: listens"),
    ("wsgiref", "listens"),
    ("requests", "opens URLs"),
    ("urllib3", "opens URLs"),
    ("httpx", "opens URLs"),
    ("aiohttp", "opens URLs, listens"),
];

/// Load other pickles or serialized code (which this scan does not see into).
const RISKY_LOADERS: &[Entry] = &[
    ("pickle", "loads other pickles"),
    ("_pickle", "loads other pickles"),
    ("cPickle", "Python 2: loads other pickles"),
    ("marshal", "loads code objects"),
    ("dill", "loads functions and code"),
    ("cloudpickle", "loads functions and code"),
    ("joblib", "loads files and other pickles"),
    ("pandas.read_pickle", "loads other pickles"),
    ("pandas.io.pickle", "loads other pickles"),
];

/// numpy's functions that run code, compile, or read and write files.
const RISKY_NUMPY: &[Entry] = &[
    (
        "numpy.testing",
        "runstring runs code strings; helpers run commands",
    ),
    ("numpy.f2py", "runs compilers, imports what it builds"),
    ("numpy.distutils", "runs compilers and commands"),
    ("numpy.ctypeslib", "loads native libraries"),
    ("numpy.load", "reads files, may unpickle"),
    ("numpy.save", "writes files"),
    ("numpy.savez", "writes files"),
    ("numpy.savez_compressed", "writes files"),
    ("numpy.loadtxt", "reads files"),
    ("numpy.savetxt", "writes files"),
    ("numpy.genfromtxt", "reads files and URLs"),
    ("numpy.fromfile", "reads files"),
    ("numpy.fromregex", "reads files"),
    ("numpy.memmap", "maps files"),
    ("numpy.lib.npyio", "reads and writes files, may unpickle"),
    (
        "numpy.lib._npyio_impl",
        "reads and writes files, may unpickle",
    ),
    ("numpy.lib.format", "reads and writes files, may unpickle"),
    ("numpy.lib._datasource", "opens files and URLs"),
];

/// torch's functions that load checkpoints or code, compile, or fetch.
const RISKY_TORCH: &[Entry] = &[
    ("torch.hub", "downloads and runs code"),
    ("torch.load", "loads a checkpoint: another pickle"),
    ("torch.save", "writes files"),
    (
        "torch.serialization.load",
        "loads a checkpoint: another pickle",
    ),
    (
        "torch.serialization._load",
        "loads a checkpoint: another pickle",
    ),
    ("torch.serialization.save", "writes files"),
    (
        "torch.storage._load_from_bytes",
        "loads a nested checkpoint, whose pickle this scan does not see",
    ),
    ("torch.jit", "loads and compiles code"),
    ("torch.package", "imports code from archives"),
    (
        "torch.utils.cpp_extension",
        "runs compilers, loads libraries",
    ),
    ("torch.ops", "calls native operators by name"),
    ("torch._ops", "calls native operators by name"),
    ("torch._inductor", "generates and runs code"),
];

const SAFE_TABLES: &[&[Entry]] = &[
    SAFE_BUILTINS,
    SAFE_STDLIB,
    SAFE_NUMPY,
    SAFE_TORCH,
    SAFE_OTHER,
];

const RISKY_TABLES: &[&[Entry]] = &[
    RISKY_BUILTINS,
    RISKY_CODE,
    RISKY_REACH,
    RISKY_PROCESS,
    RISKY_FILES,
    RISKY_NETWORK,
    RISKY_LOADERS,
    RISKY_NUMPY,
    RISKY_TORCH,
];

// ---------------------------------------------------------------------------
// Python 2 names: for protocols 0 to 2, pickle loads these under their Python 3
// names (`fix_imports`), and Python 3 itself writes builtins and copyreg this way.
// Only the renames that reach a table entry are listed; other Python 2 modules
// that are risky are in the tables under their old names.

/// Globals renamed one by one: (Python 2 name, what pickle loads).
const RENAMED_GLOBALS: &[(&str, &str)] = &[
    ("__builtin__.xrange", "builtins.range"),
    ("__builtin__.unicode", "builtins.str"),
    ("__builtin__.basestring", "builtins.str"),
    ("__builtin__.long", "builtins.int"),
    ("__builtin__.unichr", "builtins.chr"),
    ("__builtin__.reduce", "functools.reduce"),
    ("__builtin__.intern", "sys.intern"),
];

/// Modules renamed whole: (Python 2 module, what pickle imports).
const RENAMED_MODULES: &[(&str, &str)] = &[("__builtin__", "builtins"), ("copy_reg", "copyreg")];

/// Whether `name` is `prefix` or a name under it: `os.path.join` is under `os`,
/// `osmosis.x` is not.
fn under(name: &str, prefix: &str) -> bool {
    name.strip_prefix(prefix)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('.'))
}

/// `name` as pickle loads it on Python 3 (see [`RENAMED_GLOBALS`]).
fn python3_name(name: &str) -> std::borrow::Cow<'_, str> {
    if let Some((_, new)) = RENAMED_GLOBALS.iter().find(|(old, _)| *old == name) {
        return (*new).into();
    }
    for (old, new) in RENAMED_MODULES {
        if under(name, old) {
            return format!("{new}{}", &name[old.len()..]).into();
        }
    }
    name.into()
}

fn find(
    tables: &'static [&'static [Entry]],
    matches: impl Fn(&str) -> bool,
) -> Option<&'static Entry> {
    tables
        .iter()
        .flat_map(|t| t.iter())
        .find(|(n, _)| matches(n))
}

/// The class of a global, given as pickleguard renders it: `module.name`, with
/// dots inside either part. A name without a dot is not a global's: it is how a
/// computed import or a copyreg extension is shown, and both are risky.
pub fn classify(rendered: &str) -> Class {
    if !rendered.contains('.') {
        return Class::Risky;
    }
    let name = python3_name(rendered);
    if find(SAFE_TABLES, |n| n == name).is_some() {
        return Class::Safe;
    }
    if find(RISKY_TABLES, |n| under(&name, n)).is_some() {
        return Class::Risky;
    }
    // A special name past the module's first part (`mylib.f.__globals__`,
    // `builtins.__build_class__`): reaches an object's internals, its globals or
    // builtins, or the import machinery. `__main__.Model` is a script's class.
    if name.split('.').skip(1).any(|part| part.starts_with("__")) {
        return Class::Risky;
    }
    Class::Review
}

/// Why `rendered` is in a table, if it is (for tests and messages).
pub fn reason(rendered: &str) -> Option<&'static str> {
    let name = python3_name(rendered);
    find(SAFE_TABLES, |n| n == name)
        .or_else(|| find(RISKY_TABLES, |n| under(&name, n)))
        .map(|(_, why)| *why)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(tables: &'static [&'static [Entry]]) -> impl Iterator<Item = &'static Entry> {
        tables.iter().flat_map(|t| t.iter())
    }

    #[test]
    fn tables_are_well_formed() {
        let mut seen = std::collections::HashSet::new();
        for (name, why) in all(SAFE_TABLES).chain(all(RISKY_TABLES)) {
            assert!(seen.insert(*name), "{name} is listed twice");
            assert!(!why.trim().is_empty(), "{name} says why");
            assert!(
                !name.is_empty() && name.split('.').all(|p| !p.is_empty()),
                "{name} is a dotted name"
            );
        }
        // A safe name under a risky entry would be shadowed by mistake; the one
        // exception is deliberate.
        for (name, _) in all(SAFE_TABLES) {
            let shadowed = all(RISKY_TABLES).any(|(r, _)| under(name, r));
            assert_eq!(
                shadowed,
                *name == "joblib.numpy_pickle.NumpyArrayWrapper",
                "{name}"
            );
        }
    }

    fn assert_safe_exactly(table: &[Entry]) {
        for (name, _) in table {
            assert_eq!(classify(name), Class::Safe, "{name}");
            assert!(reason(name).is_some(), "{name}");
            // Exact names only: what lies under a safe name is not covered.
            let inner = format!("{name}.anything");
            assert_ne!(classify(&inner), Class::Safe, "{inner}");
            let special = format!("{name}.__globals__");
            assert_eq!(classify(&special), Class::Risky, "{special}");
        }
    }

    fn assert_risky_with_everything_under(table: &[Entry]) {
        for (name, _) in table {
            for variant in [
                name.to_string(),
                format!("{name}.anything"),
                format!("{name}.a.b"),
            ] {
                // A risky module as a rendered name carries its own dot (`os` is
                // rendered `os.<name>`); a risky global stands alone.
                assert_eq!(classify(&variant), Class::Risky, "{variant}");
            }
        }
    }

    #[test]
    fn safe_builtins() {
        assert_safe_exactly(SAFE_BUILTINS);
        assert_eq!(classify("builtins.list"), Class::Safe);
        // A builtin these tables do not know is for review, not safe.
        assert_eq!(classify("builtins.print"), Class::Review);
        assert_eq!(classify("builtins.type"), Class::Review);
        assert_eq!(classify("builtins.map"), Class::Review);
        assert_eq!(classify("builtins.dict.fromkeys"), Class::Review);
    }

    #[test]
    fn safe_stdlib() {
        assert_safe_exactly(SAFE_STDLIB);
        for name in [
            "collections.OrderedDict",
            "collections.defaultdict",
            "copyreg._reconstructor",
            "datetime.datetime",
            "datetime.timedelta",
            "decimal.Decimal",
            "fractions.Fraction",
            "functools.partial",
        ] {
            assert_eq!(classify(name), Class::Safe, "{name}");
        }
        // Its neighbours are not covered.
        assert_eq!(classify("collections.namedtuple"), Class::Review);
        assert_eq!(classify("functools.partialmethod"), Class::Review);
        assert_eq!(classify("copyreg._reduce_ex"), Class::Review);
    }

    #[test]
    fn safe_numpy() {
        assert_safe_exactly(SAFE_NUMPY);
        for name in [
            "numpy.core.multiarray._reconstruct",
            "numpy._core.multiarray._reconstruct",
            "numpy.dtype",
            "numpy.ndarray",
            "numpy.core.multiarray.scalar",
        ] {
            assert_eq!(classify(name), Class::Safe, "{name}");
        }
        assert_eq!(classify("numpy.frombuffer"), Class::Review);
        assert_eq!(classify("numpy.core.multiarray"), Class::Review);
    }

    #[test]
    fn safe_torch() {
        assert_safe_exactly(SAFE_TORCH);
        for name in [
            "torch._utils._rebuild_tensor_v2",
            "torch._utils._rebuild_parameter",
            "torch.FloatStorage",
            "torch.device",
            "torch.Size",
        ] {
            assert_eq!(classify(name), Class::Safe, "{name}");
        }
        assert_eq!(classify("torch.nn.modules.linear.Linear"), Class::Review);
        assert_eq!(
            classify("torch._utils._rebuild_from_type_v2"),
            Class::Review
        );
    }

    #[test]
    fn safe_other() {
        assert_safe_exactly(SAFE_OTHER);
        assert_eq!(
            classify("joblib.numpy_pickle.NumpyArrayWrapper"),
            Class::Safe
        );
        assert_eq!(classify("joblib.load"), Class::Risky);
        assert_eq!(classify("joblib.numpy_pickle.load"), Class::Risky);
    }

    #[test]
    fn risky_builtins() {
        assert_risky_with_everything_under(RISKY_BUILTINS);
        for name in [
            "getattr",
            "eval",
            "exec",
            "__import__",
            "open",
            "compile",
            "breakpoint",
            "input",
            "setattr",
            "delattr",
            "globals",
            "vars",
        ] {
            assert_eq!(
                classify(&format!("builtins.{name}")),
                Class::Risky,
                "{name}"
            );
        }
        // Any special name under builtins reaches the interpreter's machinery.
        assert_eq!(classify("builtins.__build_class__"), Class::Risky);
        assert_eq!(classify("builtins.__loader__"), Class::Risky);
        assert_eq!(classify("builtins.object.__subclasses__"), Class::Risky);
    }

    #[test]
    fn risky_code() {
        assert_risky_with_everything_under(RISKY_CODE);
        // Shown as not risky by the old denylist; runstring was confirmed to exec.
        for name in [
            "numpy.testing._private.utils.runstring",
            "pydoc.locate",
            "distutils.spawn.spawn",
            "logging.config.listen",
            "zipimport.zipimporter",
        ] {
            assert_eq!(classify(name), Class::Risky, "{name}");
            assert!(reason(name).is_some(), "{name}");
        }
        assert_eq!(classify("importlib.import_module"), Class::Risky);
        assert_eq!(classify("types.FunctionType"), Class::Risky);
        assert_eq!(classify("types.CodeType"), Class::Risky);
        assert_eq!(classify("inspect.getattr_static"), Class::Risky);
        // logging itself is not: loggers pickle as logging.getLogger.
        assert_eq!(classify("logging.getLogger"), Class::Review);
        assert_eq!(classify("types.SimpleNamespace"), Class::Safe);
    }

    #[test]
    fn risky_reach() {
        assert_risky_with_everything_under(RISKY_REACH);
        assert_eq!(classify("operator.attrgetter"), Class::Risky);
        assert_eq!(classify("operator.methodcaller"), Class::Risky);
        assert_eq!(classify("operator.add"), Class::Review);
    }

    #[test]
    fn risky_process() {
        assert_risky_with_everything_under(RISKY_PROCESS);
        assert_eq!(classify("os.system"), Class::Risky);
        assert_eq!(classify("posix.system"), Class::Risky);
        assert_eq!(classify("subprocess.Popen"), Class::Risky);
    }

    #[test]
    fn risky_files() {
        assert_risky_with_everything_under(RISKY_FILES);
        // os.path.join pickles as posixpath.join.
        assert_eq!(classify("posixpath.join"), Class::Risky);
        assert_eq!(classify("codecs.open"), Class::Risky);
        assert_eq!(classify("codecs.lookup"), Class::Review);
    }

    #[test]
    fn risky_network() {
        assert_risky_with_everything_under(RISKY_NETWORK);
        assert_eq!(classify("urllib.request.urlopen"), Class::Risky);
        assert_eq!(classify("http.client.HTTPConnection"), Class::Risky);
    }

    #[test]
    fn risky_loaders() {
        assert_risky_with_everything_under(RISKY_LOADERS);
        assert_eq!(classify("pickle.loads"), Class::Risky);
        assert_eq!(classify("dill._dill._create_function"), Class::Risky);
    }

    #[test]
    fn risky_numpy() {
        assert_risky_with_everything_under(RISKY_NUMPY);
        assert_eq!(
            classify("numpy.testing._private.utils.runstring"),
            Class::Risky
        );
        assert_eq!(classify("numpy.load"), Class::Risky);
    }

    #[test]
    fn risky_torch() {
        assert_risky_with_everything_under(RISKY_TORCH);
        assert_eq!(classify("torch.hub.load"), Class::Risky);
        assert_eq!(classify("torch.storage._load_from_bytes"), Class::Risky);
    }

    #[test]
    fn module_prefixes_are_whole_parts() {
        assert_eq!(classify("os.path.join"), Class::Risky);
        assert_eq!(classify("os.system"), Class::Risky);
        assert_eq!(classify("osmosis.Model"), Class::Review);
        assert_eq!(classify("os_utils.Model"), Class::Review);
        assert_eq!(classify("system.os"), Class::Review);
        assert_eq!(classify("numpy.testing_helpers.Model"), Class::Review);
        assert_eq!(classify("mytorch.hub.load"), Class::Review);
        assert!(under("os.path", "os") && under("os", "os"));
        assert!(!under("osmosis", "os") && !under("o", "os"));
    }

    #[test]
    fn unknown_globals_are_for_review() {
        assert_eq!(classify("mylib.Model"), Class::Review);
        assert_eq!(classify("__main__.Model"), Class::Review);
        assert_eq!(classify("mylib.models.Model.from_dict"), Class::Review);
        assert_eq!(reason("mylib.Model"), None);
    }

    #[test]
    fn special_names_are_risky() {
        // builtins reached through any module's or function's namespace.
        assert_eq!(classify("mylib.__builtins__.get"), Class::Risky);
        assert_eq!(classify("mylib.f.__globals__.get"), Class::Risky);
        assert_eq!(classify("mylib.Model.__init__"), Class::Risky);
        // ...but a script's classes, and the listed safe dunder rebuilders, are not.
        assert_eq!(classify("__main__.Model"), Class::Review);
        assert_eq!(classify("copyreg.__newobj__"), Class::Safe);
    }

    #[test]
    fn python2_names_are_classified_as_what_they_load() {
        assert_eq!(classify("__builtin__.set"), Class::Safe);
        assert_eq!(classify("__builtin__.object"), Class::Safe);
        assert_eq!(classify("__builtin__.xrange"), Class::Safe);
        assert_eq!(classify("__builtin__.unicode"), Class::Safe);
        assert_eq!(classify("copy_reg._reconstructor"), Class::Safe);
        assert_eq!(classify("__builtin__.eval"), Class::Risky);
        assert_eq!(classify("__builtin__.getattr"), Class::Risky);
        assert_eq!(classify("__builtin__.reduce"), Class::Risky);
        assert_eq!(classify("__builtin__.intern"), Class::Risky);
        assert_eq!(classify("__builtin__.unichr"), Class::Review);
        assert_eq!(classify("cPickle.loads"), Class::Risky);
        assert_eq!(classify("commands.getoutput"), Class::Risky);
        // Only whole module names are renamed.
        assert_eq!(classify("__builtin__x.set"), Class::Review);
        assert_eq!(python3_name("copy_reg.x.y"), "copyreg.x.y");
    }

    #[test]
    fn names_without_a_module_are_risky() {
        // How scan renders a computed import and an extension.
        assert_eq!(classify("<computed at load time>"), Class::Risky);
        assert_eq!(classify("<copyreg extension 5>"), Class::Risky);
        assert_eq!(classify(""), Class::Risky);
    }

    #[test]
    fn classes_are_ordered_by_severity() {
        assert!(Class::Safe < Class::Review && Class::Review < Class::Risky);
        assert_eq!(
            [Class::Safe, Class::Review, Class::Risky].map(Class::as_str),
            ["safe", "review", "risky"]
        );
    }
}
