//! The guarded module functions (`pickle.loads`/`load` and the pinned variants),
//! and the originals they run admitted bytes with. They are builtins, like the
//! originals, so they do not bind as methods when stored on a class
//! (`loads = pickle.loads`).

use super::backstop::{clear_extension_cache, GateLoad};
use super::error::{GuardError, Result};
use super::feed::Feed;
use super::source::{admit_bytes, io_types, Rewind};
use super::stream::{admit_stream_inner, source_name, AdmittedBytes};
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

/// Hand the core the originals it runs admitted bytes with (C `loads`, the C
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

pub(super) fn gate_part<'py>(
    py: Python<'py>,
    cell: &'py PyOnceLock<Py<PyAny>>,
) -> Result<&'py Bound<'py, PyAny>> {
    cell.get(py).map(|f| f.bind(py)).ok_or_else(|| {
        GuardError::Guard("pickleguard's gate is not bound; import pickleguard first".into())
    })
}

/// The caller's keyword arguments but `buffers` (None when there are none), and
/// `buffers`.
pub(super) type SplitOptions<'py> = (Option<Bound<'py, PyDict>>, Option<Bound<'py, PyAny>>);

/// Split `buffers` out of the caller's keyword arguments; the rest pass through to
/// the original untouched, so it validates them exactly as plain pickle does.
/// No options at all (the common call) is `None`: no dict is built per load.
pub(super) fn split_kwargs<'py>(
    py: Python<'py>,
    kwargs: Option<&Bound<'py, PyDict>>,
) -> Result<SplitOptions<'py>> {
    let options = match kwargs {
        Some(k) if !k.is_empty() => k.copy()?,
        _ => return Ok((None, None)),
    };
    let buffers = options
        .get_item(pyo3::intern!(py, "buffers"))?
        .filter(|b| !b.is_none());
    if buffers.is_some() {
        options.del_item("buffers")?;
    }
    Ok((Some(options).filter(|o| !o.is_empty()), buffers))
}

pub(super) fn run_original<'py>(
    py: Python<'py>,
    admitted: Result<AdmittedInput<'py>>,
    mut options: Option<Bound<'py, PyDict>>,
    rewind: Option<Rewind<'py>>,
) -> Result<Bound<'py, PyAny>> {
    let (feed, feed_buffers, uses_globals) = match admitted {
        Ok(found) => found,
        Err(e) => {
            let options = options.unwrap_or_else(|| PyDict::new(py));
            return Err(explain(py, e, "c", &options));
        }
    };
    if let Some(b) = feed_buffers {
        options
            .get_or_insert_with(|| PyDict::new(py))
            .set_item("buffers", b)?;
    }
    let result = if uses_globals {
        // Through a subclass whose find_class admits each import in its own frame,
        // so no other unpickler started meanwhile counts as admitted. Bytes read
        // from a stream are fed without a copy (BytesIO copies all but `bytes`).
        if feed.is_instance_of::<AdmittedBytes>() {
            let holder = Bound::new(py, Feed::new())?;
            holder.get().set(feed);
            let unpickler =
                gate_part(py, &ADMITTED_UNPICKLER)?.call((&holder,), options.as_ref())?;
            let result = {
                let _load = GateLoad::enter(&unpickler);
                unpickler.call_method0("load")
            };
            if let Some(rewind) = &rewind {
                rewind.after(holder.get().consumed())?;
            }
            result
        } else {
            let file = py.import("io")?.call_method1("BytesIO", (feed,))?;
            let unpickler = gate_part(py, &ADMITTED_UNPICKLER)?.call((file,), options.as_ref())?;
            let _load = GateLoad::enter(&unpickler);
            unpickler.call_method0("load")
        }
    } else {
        // No global to import, nothing to call: the plain C loads.
        let original = gate_part(py, &ORIGINAL_LOADS)?;
        match &options {
            None => original.call1((feed,)),
            Some(options) => original.call((feed,), Some(options)),
        }
    };
    clear_extension_cache(py);
    Ok(result?)
}

/// What admission hands back: the verified input for the real unpickler, the
/// out-of-band buffers to pass with it, and whether the pickle names any global.
pub(super) type AdmittedInput<'py> = (Bound<'py, PyAny>, Option<Bound<'py, PyAny>>, bool);

/// Turn an admission failure into the exception to raise: for input that could not
/// be delimited, the one plain pickle raises (found by the gate's dry run).
pub(super) fn explain(
    py: Python<'_>,
    error: GuardError,
    flavor: &str,
    options: &Bound<'_, PyDict>,
) -> GuardError {
    if !matches!(error, GuardError::Undelimited { .. }) {
        return error;
    }
    let undelimited = PyErr::from(error);
    let explained = gate_part(py, &EXPLAIN_UNDELIMITED)
        .and_then(|f| Ok(f.call1((undelimited.into_value(py), flavor, options))?));
    match explained {
        Err(e) => e,
        Ok(_) => GuardError::Guard("undelimited pickle was not explained".into()),
    }
}

/// The `read` and `readline` of `file`, looked up as the C unpickler does (after
/// `peek` and `readinto`, whose lookup errors also propagate).
pub(super) fn file_methods<'py>(
    file: &Bound<'py, PyAny>,
) -> Result<(Bound<'py, PyAny>, Bound<'py, PyAny>)> {
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
        (Some(read), Some(readline)) => Ok((read, readline)),
        _ => Err(GuardError::WrongType(
            "file must have 'read' and 'readline' attributes".into(),
        )),
    }
}

/// `pickle.loads`, admitted by pickleguard first.
#[pyfunction]
#[pyo3(signature = (data, /, **kwargs))]
pub(super) fn loads<'py>(
    py: Python<'py>,
    data: &Bound<'py, PyAny>,
    kwargs: Option<&Bound<'py, PyDict>>,
) -> Result<Bound<'py, PyAny>> {
    let (options, buffers) = split_kwargs(py, kwargs)?;
    run_original(py, admit_bytes(py, data, buffers, None), options, None)
}

/// `pickle.load`, admitted by pickleguard first.
#[pyfunction]
#[pyo3(signature = (file, **kwargs))]
pub(super) fn load<'py>(
    py: Python<'py>,
    file: &Bound<'py, PyAny>,
    kwargs: Option<&Bound<'py, PyDict>>,
) -> Result<Bound<'py, PyAny>> {
    let (read, readline) = file_methods(file)?;
    let (options, buffers) = split_kwargs(py, kwargs)?;
    let name = source_name(file);
    match admit_stream_inner(py, &read, &readline, Some(file), buffers, None, name, true) {
        Ok(admitted) => run_original(
            py,
            Ok((
                admitted.data.into_any(),
                admitted.buffers,
                admitted.uses_globals,
            )),
            options,
            admitted.rewind,
        ),
        Err(e) => run_original(py, Err(e), options, None),
    }
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
    let (options, buffers) = split_kwargs(py, kwargs)?;
    run_original(
        py,
        admit_bytes(py, data, buffers, Some(sha256)),
        options,
        None,
    )
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
    let (read, readline) = file_methods(file)?;
    let (options, buffers) = split_kwargs(py, kwargs)?;
    let name = source_name(file);
    let admitted = admit_stream_inner(
        py,
        &read,
        &readline,
        Some(file),
        buffers,
        Some(sha256),
        name,
        false,
    )
    .map(|a| (a.data.into_any(), a.buffers, a.uses_globals));
    run_original(py, admitted, options, None)
}
