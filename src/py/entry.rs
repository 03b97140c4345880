//! The guarded module functions (`pickle.loads`/`load` and the pinned variants),
//! and the originals they run verified bytes with. They are builtins, like the
//! originals, so they do not bind as methods when stored on a class
//! (`loads = pickle.loads`).

use super::backstop::{clear_extension_cache, GateLoad};
use super::error::{GuardError, Result};
use super::feed::Feed;
use super::source::{io_types, verify_from_bytes, Rewind};
use super::stream::{
    source_name, verify_from_stream, LoadRequest, Stream, VerifiedBytes, VerifiedPickle, WholeFile,
};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyDict;

pub(super) static ORIGINAL_LOADS: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
pub(super) static ADMITTED_UNPICKLER: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
pub(super) static ORIGINAL_C_LOAD: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
pub(super) static ORIGINAL_PY_LOAD: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
pub(super) static ORIGINAL_C_FIND_CLASS: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
pub(super) static ORIGINAL_PY_FIND_CLASS: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
pub(super) static EXPLAIN_UNDELIMITED: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

/// Hand the core the originals it runs verified bytes with (C `loads`, the C
/// `Unpickler.load`, the pure-Python `_Unpickler.load`) and the gate's explainer.
/// Only the first call counts, so they cannot be swapped afterwards.
#[pyfunction]
pub(super) fn bind_gate(
    py: Python<'_>,
    original_loads: Py<PyAny>,
    c_unpickler_load: Py<PyAny>,
    py_unpickler_load: Py<PyAny>,
    c_find_class: Py<PyAny>,
    py_find_class: Py<PyAny>,
    admitted_unpickler: Py<PyAny>,
    explain: Py<PyAny>,
) {
    let _ = ADMITTED_UNPICKLER.set(py, admitted_unpickler);
    let _ = ORIGINAL_C_FIND_CLASS.set(py, c_find_class);
    let _ = ORIGINAL_PY_FIND_CLASS.set(py, py_find_class);
    let _ = ORIGINAL_LOADS.set(py, original_loads);
    let _ = ORIGINAL_C_LOAD.set(py, c_unpickler_load);
    let _ = ORIGINAL_PY_LOAD.set(py, py_unpickler_load);
    let _ = EXPLAIN_UNDELIMITED.set(py, explain);
}

/// One of the callables `bind_gate` handed over. The gate module binds them when
/// it is imported, which start-up defers until `pickle` is (see `_boot`): a pinned
/// load before that imports it here.
pub(super) fn bound_by_gate<'py>(
    py: Python<'py>,
    cell: &'py PyOnceLock<Py<PyAny>>,
) -> Result<&'py Bound<'py, PyAny>> {
    if cell.get(py).is_none() {
        py.import(pyo3::intern!(py, "pickleguard._gate"))?;
    }
    cell.get(py).map(|f| f.bind(py)).ok_or_else(|| {
        GuardError::Guard("pickleguard's gate is not bound; import pickleguard first".into())
    })
}

/// The caller's keyword arguments, with `buffers` taken out.
pub(super) struct CallOptions<'py> {
    /// The rest, passed through to the original untouched, so it validates them
    /// exactly as plain pickle does; `None` when there are none.
    pub(super) options: Option<Bound<'py, PyDict>>,
    /// `buffers`, unless absent or None.
    pub(super) buffers: Option<Bound<'py, PyAny>>,
}

impl<'py> CallOptions<'py> {
    /// No options at all (the common call) builds no dict.
    pub(super) fn split(py: Python<'py>, kwargs: Option<&Bound<'py, PyDict>>) -> Result<Self> {
        let options = match kwargs {
            Some(k) if !k.is_empty() => k.copy()?,
            _ => {
                return Ok(CallOptions {
                    options: None,
                    buffers: None,
                })
            }
        };
        let buffers = options
            .get_item(pyo3::intern!(py, "buffers"))?
            .filter(|b| !b.is_none());
        if buffers.is_some() {
            options.del_item("buffers")?;
        }
        Ok(CallOptions {
            options: Some(options).filter(|o| !o.is_empty()),
            buffers,
        })
    }
}

/// What verification hands the real unpickler.
pub(super) struct VerifiedInput<'py> {
    /// Exactly the judged bytes: a `bytes` (or a view of part of one) from
    /// `loads`, a `VerifiedBytes` from a stream.
    pub(super) data: Bound<'py, PyAny>,
    /// The out-of-band buffers to pass with them.
    pub(super) buffers: Option<Bound<'py, PyAny>>,
    /// Whether the pickle names any global (true when not known).
    pub(super) uses_globals: bool,
    /// For a whole file verified at once: where to put its position afterwards.
    pub(super) rewind: Option<Rewind<'py>>,
}

impl<'py> VerifiedInput<'py> {
    pub(super) fn new(
        data: Bound<'py, PyAny>,
        buffers: Option<Bound<'py, PyAny>>,
        uses_globals: bool,
    ) -> Self {
        VerifiedInput {
            data,
            buffers,
            uses_globals,
            rewind: None,
        }
    }
}

impl<'py> From<VerifiedPickle<'py>> for VerifiedInput<'py> {
    fn from(pickle: VerifiedPickle<'py>) -> Self {
        VerifiedInput {
            data: pickle.data.into_any(),
            buffers: pickle.buffers,
            uses_globals: pickle.uses_globals,
            rewind: pickle.rewind,
        }
    }
}

/// Run the right original on verified input; explain a failed verification.
pub(super) fn run_original<'py>(
    py: Python<'py>,
    verified: Result<VerifiedInput<'py>>,
    mut options: Option<Bound<'py, PyDict>>,
) -> Result<Bound<'py, PyAny>> {
    let input = match verified {
        Ok(input) => input,
        Err(e) => {
            let options = options.unwrap_or_else(|| PyDict::new(py));
            return Err(explain_undelimited(py, e, Unpickler::C, &options));
        }
    };
    if let Some(b) = input.buffers {
        options
            .get_or_insert_with(|| PyDict::new(py))
            .set_item("buffers", b)?;
    }
    let result = if input.uses_globals {
        load_admitting_imports(py, input.data, input.rewind, options.as_ref())?
    } else {
        // No global to import, nothing to call: the plain C loads.
        let original = bound_by_gate(py, &ORIGINAL_LOADS)?;
        let run = |data: &Bound<'py, PyAny>| match &options {
            None => original.call1((data,)),
            Some(options) => original.call((data,), Some(options)),
        };
        match input.data.cast::<VerifiedBytes>() {
            Ok(verified) => VerifiedBytes::with_view(verified, run)?,
            Err(_) => run(&input.data),
        }
    };
    clear_extension_cache(py);
    Ok(result?)
}

/// Load `data` through the admitted unpickler, a subclass whose find_class admits
/// each import in its own frame, so no other unpickler started meanwhile counts as
/// admitted. The outer error is the gate's; the inner one is the load's own.
fn load_admitting_imports<'py>(
    py: Python<'py>,
    data: Bound<'py, PyAny>,
    rewind: Option<Rewind<'py>>,
    options: Option<&Bound<'py, PyDict>>,
) -> Result<PyResult<Bound<'py, PyAny>>> {
    let unpickler_class = bound_by_gate(py, &ADMITTED_UNPICKLER)?;
    // Bytes read from a stream are fed without a copy (BytesIO copies all but
    // `bytes`).
    if !data.is_instance_of::<VerifiedBytes>() {
        let file = py.import("io")?.call_method1("BytesIO", (data,))?;
        let unpickler = unpickler_class.call((file,), options)?;
        let _load = GateLoad::enter(&unpickler);
        return Ok(unpickler.call_method0("load"));
    }
    let feed = Bound::new(py, Feed::new())?;
    feed.get().set(data);
    let unpickler = unpickler_class.call((&feed,), options)?;
    let result = {
        let _load = GateLoad::enter(&unpickler);
        unpickler.call_method0("load")
    };
    if let Some(rewind) = &rewind {
        rewind.after(feed.get().consumed())?;
    }
    Ok(result)
}

/// Which original unpickler failed to read input that could not be delimited, as
/// the gate's explainer names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Unpickler {
    /// The C `_pickle` (`loads`, `load`, `Unpickler.load`).
    C,
    /// The pure-Python `pickle._Unpickler`.
    Python,
}

impl Unpickler {
    fn explainer_name(self) -> &'static str {
        match self {
            Unpickler::C => "c",
            Unpickler::Python => "py",
        }
    }
}

/// Turn a verification failure into the exception to raise: for input that could
/// not be delimited, the one `unpickler` raises on it (found by the gate's dry run).
pub(super) fn explain_undelimited(
    py: Python<'_>,
    error: GuardError,
    unpickler: Unpickler,
    options: &Bound<'_, PyDict>,
) -> GuardError {
    if !matches!(error, GuardError::Undelimited { .. }) {
        return error;
    }
    let undelimited = PyErr::from(error);
    let explained = bound_by_gate(py, &EXPLAIN_UNDELIMITED).and_then(|f| {
        let args = (
            undelimited.into_value(py),
            unpickler.explainer_name(),
            options,
        );
        Ok(f.call1(args)?)
    });
    match explained {
        Err(e) => e,
        Ok(_) => GuardError::Guard("undelimited pickle was not explained".into()),
    }
}

/// A file's `read` and `readline`.
pub(super) struct FileMethods<'py> {
    pub(super) read: Bound<'py, PyAny>,
    pub(super) readline: Bound<'py, PyAny>,
}

impl<'py> FileMethods<'py> {
    pub(super) fn stream<'a>(&'a self, file: Option<&'a Bound<'py, PyAny>>) -> Stream<'a, 'py> {
        Stream {
            read: &self.read,
            readline: &self.readline,
            file,
        }
    }
}

/// The `read` and `readline` of `file`, looked up as the C unpickler does (after
/// `peek` and `readinto`, whose lookup errors also propagate).
pub(super) fn file_methods<'py>(file: &Bound<'py, PyAny>) -> Result<FileMethods<'py>> {
    let py = file.py();
    // io's own types cannot fail these lookups in any other way than a missing
    // attribute, and making that AttributeError costs more than a small load.
    let own_type = io_types(py)?.iter().any(|t| file.get_type().is(*t));
    if !own_type {
        file.getattr_opt(pyo3::intern!(py, "peek"))?;
        file.getattr_opt(pyo3::intern!(py, "readinto"))?;
    }
    match (
        file.getattr_opt(pyo3::intern!(py, "read"))?,
        file.getattr_opt(pyo3::intern!(py, "readline"))?,
    ) {
        (Some(read), Some(readline)) => Ok(FileMethods { read, readline }),
        _ => Err(GuardError::WrongType(
            "file must have 'read' and 'readline' attributes".into(),
        )),
    }
}

/// `loads` with an optional call-site pin: verify `data`, then run the original on
/// exactly the judged bytes.
fn guarded_loads<'py>(
    py: Python<'py>,
    data: &Bound<'py, PyAny>,
    pin: Option<&str>,
    kwargs: Option<&Bound<'py, PyDict>>,
) -> Result<Bound<'py, PyAny>> {
    let CallOptions { options, buffers } = CallOptions::split(py, kwargs)?;
    run_original(py, verify_from_bytes(py, data, buffers, pin), options)
}

/// `load` with an optional call-site pin: verify one pickle from `file`, then run
/// the original on exactly the judged bytes. Without a pin, a whole file may be
/// allowed at once by its hash.
fn guarded_load<'py>(
    py: Python<'py>,
    file: &Bound<'py, PyAny>,
    pin: Option<&str>,
    kwargs: Option<&Bound<'py, PyDict>>,
) -> Result<Bound<'py, PyAny>> {
    let methods = file_methods(file)?;
    let CallOptions { options, buffers } = CallOptions::split(py, kwargs)?;
    let request = LoadRequest {
        buffers,
        pin,
        source_name: source_name(file),
    };
    let stream = methods.stream(Some(file));
    let verified = verify_from_stream(py, &stream, request, WholeFile::MayHash);
    run_original(py, verified.map(VerifiedInput::from), options)
}

/// `pickle.loads`, verified by pickleguard first.
#[pyfunction]
#[pyo3(signature = (data, /, **kwargs))]
pub(super) fn loads<'py>(
    py: Python<'py>,
    data: &Bound<'py, PyAny>,
    kwargs: Option<&Bound<'py, PyDict>>,
) -> Result<Bound<'py, PyAny>> {
    guarded_loads(py, data, None, kwargs)
}

/// `pickle.load`, verified by pickleguard first.
#[pyfunction]
#[pyo3(signature = (file, **kwargs))]
pub(super) fn load<'py>(
    py: Python<'py>,
    file: &Bound<'py, PyAny>,
    kwargs: Option<&Bound<'py, PyDict>>,
) -> Result<Bound<'py, PyAny>> {
    guarded_load(py, file, None, kwargs)
}

/// `pickleguard.loads`: `loads` that also requires the data's SHA-256 to be `sha256`.
#[pyfunction]
#[pyo3(signature = (data, sha256, /, **kwargs))]
pub(super) fn pinned_loads<'py>(
    py: Python<'py>,
    data: &Bound<'py, PyAny>,
    sha256: &str,
    kwargs: Option<&Bound<'py, PyDict>>,
) -> Result<Bound<'py, PyAny>> {
    guarded_loads(py, data, Some(sha256), kwargs)
}

/// `pickleguard.load`: `load` that also requires the pickle's SHA-256 to be `sha256`.
#[pyfunction]
#[pyo3(signature = (file, sha256, /, **kwargs))]
pub(super) fn pinned_load<'py>(
    py: Python<'py>,
    file: &Bound<'py, PyAny>,
    sha256: &str,
    kwargs: Option<&Bound<'py, PyDict>>,
) -> Result<Bound<'py, PyAny>> {
    guarded_load(py, file, Some(sha256), kwargs)
}
