//! The one error type of the binding, and its conversion to the exceptions of
//! `pickleguard.errors`: the only place a core error becomes a `PyErr`.

use crate::manifest::ManifestError as CoreManifestError;
use crate::reader::ReadError;
use crate::report::Denial;
use pyo3::exceptions::{PyOverflowError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use pyo3::types::PyDict;

pyo3::import_exception!(pickleguard.errors, PickleGuardError);
pyo3::import_exception!(pickleguard.errors, NoPickleError);
pyo3::import_exception!(pickleguard.errors, BadTokenError);
pyo3::import_exception!(pickleguard.errors, ManifestError);
pyo3::import_exception!(pickleguard.errors, _UndelimitedPickle);
pyo3::import_exception!(pickle, UnpicklingError);

/// Everything that can go wrong inside the core, converted to a Python exception
/// only at the boundary.
pub(super) enum GuardError {
    Read(ReadError<PyErr>),
    /// No pickle could be delimited in `data`; the gate explains it without running it.
    Undelimited {
        data: Py<PyBytes>,
        error: PyErr,
    },
    Manifest(CoreManifestError),
    Denied(Box<Denial>),
    /// A token or grant used as it may not be (BadTokenError).
    BadToken(String),
    /// A mode other than "enforce" or "warn".
    BadMode(String),
    /// An identity algorithm other than "sha256" or "blake3".
    BadAlgorithm(String),
    /// A malformed argument (an identity, a stack pattern); the text says how.
    BadArgument(String),
    /// An argument of the wrong type (TypeError).
    WrongType(String),
    /// A file pickleguard writes could not be opened or created.
    Io {
        what: &'static str,
        path: std::path::PathBuf,
        error: std::io::Error,
    },
    /// pickleguard refuses on its own account (PickleGuardError): a misused
    /// artifact scope, a file that changed between reads, the gate not in place.
    Guard(String),
    /// A guarded unpickler whose `__init__` was not called (UnpicklingError).
    NotInitialised(String),
    Py(PyErr),
}

pub(super) type Result<T> = std::result::Result<T, GuardError>;

impl From<PyErr> for GuardError {
    fn from(err: PyErr) -> Self {
        GuardError::Py(err)
    }
}

impl From<GuardError> for PyErr {
    fn from(err: GuardError) -> PyErr {
        match err {
            GuardError::Py(e) => e,
            GuardError::Read(ReadError::Source(e)) => e,
            GuardError::Read(e) if e.is_eof() => {
                pyo3::exceptions::PyEOFError::new_err(e.to_string())
            }
            GuardError::Read(e) if e.is_overflow() => PyOverflowError::new_err(e.to_string()),
            GuardError::Read(e) => UnpicklingError::new_err(e.to_string()),
            GuardError::Undelimited { data, error } => {
                Python::attach(|py| _UndelimitedPickle::new_err((data, error.into_value(py))))
            }
            GuardError::Manifest(e) => ManifestError::new_err(e.to_string()),
            GuardError::BadToken(message) => BadTokenError::new_err(message),
            GuardError::BadMode(mode) => PyValueError::new_err(format!(
                "mode must be \"enforce\" or \"warn\", not {mode:?}"
            )),
            GuardError::BadAlgorithm(name) => PyValueError::new_err(format!(
                "algorithm must be \"sha256\" or \"blake3\", not {name:?}"
            )),
            GuardError::BadArgument(message) => PyValueError::new_err(message),
            GuardError::WrongType(message) => PyTypeError::new_err(message),
            GuardError::Io { what, path, error } => {
                PickleGuardError::new_err(format!("could not {what} {}: {error}", path.display()))
            }
            GuardError::Guard(message) => PickleGuardError::new_err(message),
            GuardError::NotInitialised(message) => UnpicklingError::new_err(message),
            GuardError::Denied(denial) => Python::attach(|py| denial_to_pyerr(py, &denial)),
        }
    }
}

/// The `NoPickleError` a denial raises, carrying its facts as attributes.
pub(super) fn denial_to_pyerr(py: Python<'_>, denial: &Denial) -> PyErr {
    let build = || -> PyResult<PyErr> {
        let kwargs = PyDict::new(py);
        kwargs.set_item("sha256", &denial.sha256_hex)?;
        kwargs.set_item("identity", &denial.identity)?;
        kwargs.set_item("kind", denial.kind.table())?;
        kwargs.set_item("size", denial.size)?;
        kwargs.set_item("caller", &denial.caller)?;
        kwargs.set_item("code", denial.code)?;
        kwargs.set_item("entry", &denial.entry)?;
        let exc = py
            .get_type::<NoPickleError>()
            .call((denial.message.as_str(),), Some(&kwargs))?;
        Ok(PyErr::from_value(exc))
    };
    build().unwrap_or_else(|e| e)
}
