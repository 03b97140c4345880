//! The guarded unpickler classes' `load` and `find_class`: each load verifies one
//! pickle and runs the original on it; each `find_class` admits an import only
//! inside that load.

use super::backstop::{clear_extension_cache, Admitted, GateLoad};
use super::entry::{
    bound_by_gate, explain_undelimited, file_methods, Unpickler, ORIGINAL_C_FIND_CLASS,
    ORIGINAL_C_LOAD, ORIGINAL_PY_FIND_CLASS, ORIGINAL_PY_LOAD,
};
use super::error::{GuardError, Result, UnpicklingError};
use super::feed::Feed;
use super::scopes::{active_scopes, ActiveScopes, PROCESS_LAYERS};
use super::stream::{verify_next_pickle, verify_pickle_by_pickle, VerifiedPickle, WholeFile};
use crate::reader;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};
use std::sync::atomic::{AtomicBool, Ordering};

/// What the guarded `pickle.Unpickler` keeps between loads (its one attribute,
/// `_pickleguard`): where it reads from, its options, and the private feed its
/// C part reads.
#[pyclass(frozen, module = "pickleguard._core")]
pub(super) struct UnpicklerSource {
    pub(super) read: Py<PyAny>,
    pub(super) readline: Py<PyAny>,
    pub(super) file: Py<PyAny>,
    #[pyo3(get)]
    pub(super) feed: Py<Feed>,
    /// The caller's out-of-band buffers (an iterator), and the stand-in iterator
    /// the C part reads the verified ones from.
    pub(super) buffers: Option<Py<PyAny>>,
    pub(super) buffer_feed: Option<Py<PyAny>>,
    pub(super) fix_imports: Py<PyAny>,
    pub(super) encoding: Py<PyAny>,
    pub(super) errors: Py<PyAny>,
    /// Set when a load left the C part holding bytes past STOP (see
    /// `refuse_tail_past_stop`): every later load is refused.
    pub(super) tail_past_stop: AtomicBool,
}

#[pymethods]
impl UnpicklerSource {
    #[new]
    pub(super) fn new(
        file: &Bound<'_, PyAny>,
        fix_imports: &Bound<'_, PyAny>,
        encoding: &Bound<'_, PyAny>,
        errors: &Bound<'_, PyAny>,
        buffers: Option<&Bound<'_, PyAny>>,
        buffer_feed: Option<&Bound<'_, PyAny>>,
    ) -> Result<Self> {
        let py = file.py();
        let methods = file_methods(file)?;
        let buffers = match buffers {
            Some(b) if !b.is_none() => Some(b.try_iter()?.into_any().unbind()),
            _ => None,
        };
        Ok(UnpicklerSource {
            read: methods.read.unbind(),
            readline: methods.readline.unbind(),
            file: file.clone().unbind(),
            feed: Py::new(py, Feed::new())?,
            buffers,
            buffer_feed: buffer_feed
                .filter(|b| !b.is_none())
                .map(|b| b.clone().unbind()),
            fix_imports: fix_imports.clone().unbind(),
            encoding: encoding.clone().unbind(),
            errors: errors.clone().unbind(),
            tail_past_stop: AtomicBool::new(false),
        })
    }
}

pub(super) fn init_not_called(unpickler: &Bound<'_, PyAny>) -> GuardError {
    let name = unpickler
        .get_type()
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "Unpickler".into());
    GuardError::NotInitialised(format!(
        "Unpickler.__init__() was not called by {name}.__init__()"
    ))
}

/// `load()` of the guarded `pickle.Unpickler`: verify one pickle from the source,
/// put it in the private feed, and run the C unpickler's `load` on it.
#[pyfunction]
pub(super) fn unpickler_load<'py>(
    py: Python<'py>,
    unpickler: &Bound<'py, PyAny>,
) -> Result<Bound<'py, PyAny>> {
    let Ok(source) = unpickler.getattr(pyo3::intern!(py, "_pickleguard")) else {
        return Err(init_not_called(unpickler));
    };
    let source = source.cast::<UnpicklerSource>().map_err(PyErr::from)?.get();
    if source.tail_past_stop.load(Ordering::Relaxed) {
        return Err(GuardError::Py(UnpicklingError::new_err(
            "this unpickler read a pickle whose frame ran past its STOP; the bytes after \
             STOP are still in its buffer, so it loads nothing more\nhint: load the \
             file with a new unpickler, after re-pickling it",
        )));
    }
    let buffers = source.buffers.as_ref().map(|b| b.bind(py).clone());
    let (read, readline) = (source.read.bind(py), source.readline.bind(py));
    let feed = source.feed.bind(py);
    // The C part reads only the feed, never the file, so a whole file allowed by
    // its hash may be fed at once, as `pickle.load` does; what the C part still
    // holds in its own buffer afterwards must end at STOP (see
    // `refuse_tail_past_stop`). Any other pickle is delimited, which refuses a
    // frame that runs past STOP.
    match verify_next_pickle(
        py,
        read,
        readline,
        Some(source.file.bind(py)),
        buffers,
        None,
        WholeFile::MayHash,
    ) {
        Ok(verified) => {
            let rewind = verified.rewind;
            let whole_file = rewind.as_ref().map(|_| verified.data.clone());
            feed.get().set(verified.data.into_any());
            if let (Some(b), Some(buffer_feed)) = (verified.buffers, &source.buffer_feed) {
                buffer_feed.bind(py).setattr("current", b)?;
            }
            // Its globals are admitted one by one, in the class's find_class.
            let result = {
                let _load = GateLoad::enter(unpickler);
                bound_by_gate(py, &ORIGINAL_C_LOAD)?.call1((unpickler,))
            };
            let (consumed, last_read) = (feed.get().consumed(), feed.get().last_read());
            // Do not keep the verified bytes alive.
            feed.get().clear();
            clear_extension_cache(py);
            if let (Some(rewind), Some(data)) = (&rewind, &whole_file) {
                let data = &data.get().data;
                // The last read is one frame's body or the STOP alone (the C part
                // reads nothing else into its buffer before STOP).
                let clean = result.is_ok() && reader::ends_at_stop(&data[last_read.0..last_read.1]);
                let refused = if clean {
                    Ok(())
                } else {
                    refuse_tail_past_stop(py, unpickler, source, data)
                };
                // Its position goes back to right after what the load read.
                rewind.after(consumed)?;
                refused?;
            }
            Ok(result?)
        }
        Err(e) => {
            let options = PyDict::new(py);
            options.set_item("fix_imports", &source.fix_imports)?;
            options.set_item("encoding", &source.encoding)?;
            options.set_item("errors", &source.errors)?;
            Err(explain_undelimited(py, e, Unpickler::C, &options))
        }
    }
}

/// After a whole file was fed at once and its load raised, or did not end at the
/// end of what the C part keeps in its own buffer: unless the file is one pickle
/// whose every frame ends by its STOP (what the pickle-by-pickle path feeds), the
/// C part may hold bytes past STOP, which its next load would run first. It
/// cannot drop them (setting it up afresh would leave it reading freed memory),
/// so this unpickler refuses every later load, its memo is emptied so that a
/// load the gate does not start (the C base's own `load`, called by name) finds
/// no callable there (and its imports meet the backstop), and this load is
/// refused as the pickle-by-pickle path refuses it.
fn refuse_tail_past_stop(
    py: Python<'_>,
    unpickler: &Bound<'_, PyAny>,
    source: &UnpicklerSource,
    data: &[u8],
) -> Result<()> {
    let error = match reader::delimit(data) {
        Ok(_) => return Ok(()),
        Err(error) => error,
    };
    source.tail_past_stop.store(true, Ordering::Relaxed);
    // The C class's own descriptor: a subclass may shadow `memo`.
    bound_by_gate(py, &ORIGINAL_C_LOAD)?
        .getattr(pyo3::intern!(py, "__objclass__"))?
        .getattr(pyo3::intern!(py, "memo"))?
        .call_method1(pyo3::intern!(py, "__get__"), (unpickler,))?
        .call_method0(pyo3::intern!(py, "clear"))?;
    let options = PyDict::new(py);
    options.set_item("fix_imports", &source.fix_imports)?;
    options.set_item("encoding", &source.encoding)?;
    options.set_item("errors", &source.errors)?;
    let undelimited = GuardError::Undelimited {
        data: PyBytes::new(py, data).unbind(),
        error: GuardError::Read(error.map_source(|never| match never {})).into(),
    };
    Err(explain_undelimited(py, undelimited, Unpickler::C, &options))
}

/// Whether this pure-Python load reads (through `read`, perhaps via a decompressor)
/// the verified stream of a verified artifact whose grants still lift every
/// layer and deny scope in force: nothing was added inside the block that the
/// artifact's verification did not see.
pub(super) fn reads_verified_artifact(py: Python<'_>, read: &Bound<'_, PyAny>) -> Result<bool> {
    let scopes = active_scopes(py)?;
    if scopes.artifacts.is_empty() {
        return Ok(false);
    }
    let Ok(file) = read.getattr(pyo3::intern!(read.py(), "__self__")) else {
        return Ok(false);
    };
    artifact_feeds(py, &scopes, &file)
}

/// Whether `file` is (or reads from) the verified stream of an artifact whose loads
/// run in this thread or task: what an unpickler reads from it is covered by that
/// artifact's entry. For an adapter that must know before it reads (joblib's
/// unpickler reading a stream of its own).
#[pyfunction]
pub(super) fn reads_artifact(py: Python<'_>, file: &Bound<'_, PyAny>) -> Result<bool> {
    let scopes = active_scopes(py)?;
    if scopes.artifacts.is_empty() {
        return Ok(false);
    }
    artifact_feeds(py, &scopes, file)
}

fn artifact_feeds(py: Python<'_>, scopes: &ActiveScopes, file: &Bound<'_, PyAny>) -> Result<bool> {
    let layers = PROCESS_LAYERS.read().clone();
    Ok(scopes.artifacts.iter().any(|artifact| {
        artifact.feeds(py, file)
            && layers.iter().all(|l| artifact.lifted.contains(&l.id))
            && scopes.scopes.iter().all(|s| artifact.lifted.contains(s))
    }))
}

/// Verify the next pickle a pure-Python unpickler would read through `read` and
/// `readline`, with its out-of-band `buffers`.
fn verify_py_unpickler_input<'py>(
    py: Python<'py>,
    read: &Bound<'py, PyAny>,
    readline: &Bound<'py, PyAny>,
    buffers: Option<Bound<'py, PyAny>>,
) -> Result<VerifiedPickle<'py>> {
    let file = read.getattr(pyo3::intern!(py, "__self__")).ok();
    verify_pickle_by_pickle(py, read, readline, file.as_ref(), buffers, None)
}

/// `pickle._Unpickler.load`, patched on the class: verify one pickle from the
/// instance's file, swap in a private feed holding it, run the original `load`.
#[pyfunction]
pub(super) fn py_unpickler_load<'py>(
    py: Python<'py>,
    unpickler: &Bound<'py, PyAny>,
) -> Result<Bound<'py, PyAny>> {
    let original = bound_by_gate(py, &ORIGINAL_PY_LOAD)?;
    let (Ok(read), Ok(readline)) = (
        unpickler.getattr(pyo3::intern!(unpickler.py(), "_file_read")),
        unpickler.getattr(pyo3::intern!(unpickler.py(), "_file_readline")),
    ) else {
        // Not initialised: the original raises its own error, reading nothing.
        return Ok(original.call1((unpickler,))?);
    };
    if reads_verified_artifact(py, &read)? {
        // A pickle inside a verified artifact, which its entry covers: joblib
        // interleaves raw array bytes with the opcodes, so it cannot be delimited.
        let result = {
            let _load = GateLoad::enter(unpickler);
            original.call1((unpickler,))
        };
        clear_extension_cache(py);
        return Ok(result?);
    }
    let buffers = Some(unpickler.getattr(pyo3::intern!(py, "_buffers"))?).filter(|b| !b.is_none());
    let VerifiedPickle {
        data,
        buffers: feed_buffers,
        ..
    } = match verify_py_unpickler_input(py, &read, &readline, buffers) {
        Ok(verified) => verified,
        Err(e) => {
            let options = PyDict::new(py);
            for key in ["fix_imports", "encoding", "errors"] {
                options.set_item(key, unpickler.getattr(key)?)?;
            }
            return Err(explain_undelimited(py, e, Unpickler::Python, &options));
        }
    };
    let feed = Bound::new(py, Feed::new())?;
    feed.get().set(data.into_any());
    unpickler.setattr(
        "_file_read",
        feed.getattr(pyo3::intern!(feed.py(), "read"))?,
    )?;
    unpickler.setattr(
        "_file_readline",
        feed.getattr(pyo3::intern!(feed.py(), "readline"))?,
    )?;
    if let Some(b) = feed_buffers {
        unpickler.setattr("_buffers", b)?;
    }
    let result = {
        // Its globals are admitted one by one in the patched find_class, which
        // checks that the load running is this one.
        let _load = GateLoad::enter(unpickler);
        original.call1((unpickler,))
    };
    clear_extension_cache(py);
    unpickler.setattr("_file_read", read)?;
    unpickler.setattr("_file_readline", readline)?;
    Ok(result?)
}

/// `find_class` of the guarded `pickle.Unpickler` (and of the unpickler the guarded
/// `loads`/`load` run). It admits the import only when `unpickler` is the one whose
/// load the gate started on judged bytes, innermost on this thread, or the one that
/// innermost load routes its `find_class` to (see `GateLoad::admits_imports_of`).
/// Any other call
/// (an unguarded unpickler calling `pickle.Unpickler.find_class(self, ...)` by
/// name, a direct call outside a load) runs unadmitted: the C `find_class` raises
/// its audit event and the backstop refuses it.
#[pyfunction]
pub(super) fn unpickler_find_class<'py>(
    py: Python<'py>,
    unpickler: &Bound<'py, PyAny>,
    module: &Bound<'py, PyAny>,
    name: &Bound<'py, PyAny>,
) -> Result<Bound<'py, PyAny>> {
    let original = bound_by_gate(py, &ORIGINAL_C_FIND_CLASS)?;
    if !GateLoad::admits_imports_of(unpickler) {
        return Ok(original.call1((unpickler, module, name))?);
    }
    // The C find_class runs in this frame and raises its event here.
    let _admitted = Admitted::at_current_frame(py);
    Ok(original.call1((unpickler, module, name))?)
}

/// `pickle._Unpickler.find_class`, patched on the class. Admitted, as above, only
/// inside the load the gate started for this very unpickler: a subclass whose own
/// `load()` loop runs the dispatch table, or any other caller, stays unadmitted,
/// so the backstop refuses the import.
#[pyfunction]
pub(super) fn py_unpickler_find_class<'py>(
    py: Python<'py>,
    unpickler: &Bound<'py, PyAny>,
    module: &Bound<'py, PyAny>,
    name: &Bound<'py, PyAny>,
) -> Result<Bound<'py, PyAny>> {
    let original = bound_by_gate(py, &ORIGINAL_PY_FIND_CLASS)?;
    if !GateLoad::admits_imports_of(unpickler) {
        return Ok(original.call1((unpickler, module, name))?);
    }
    // The original find_class is a Python function: its own frame, called from
    // this one, raises the event.
    let code = original.getattr(pyo3::intern!(original.py(), "__code__"))?;
    let _admitted = Admitted::for_callee(py, &code);
    Ok(original.call1((unpickler, module, name))?)
}

pub(super) fn current_frame(py: Python<'_>) -> Option<Bound<'_, PyAny>> {
    // SAFETY: the GIL is held; PyEval_GetFrame returns a borrowed reference to the
    // running frame or NULL, which from_borrowed_ptr_or_opt turns into an owned one.
    unsafe {
        Bound::from_borrowed_ptr_or_opt(
            py,
            pyo3::ffi::PyEval_GetFrame().cast::<pyo3::ffi::PyObject>(),
        )
    }
}

/// The address of the running frame, `None` when no Python frame runs.
pub(super) fn current_frame_ptr(py: Python<'_>) -> Option<usize> {
    current_frame(py).map(|f| f.as_ptr() as usize)
}
