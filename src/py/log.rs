//! The `pickleguard` logger: where allowed loads (at DEBUG), warn-mode reports and
//! denials are logged.

use super::error::Result;
use crate::identity::{Algorithm, Identities};
use crate::load::Load;
use crate::report::describe_payload;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyDict;

pub(super) static LOGGER: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

pub(super) fn logger(py: Python<'_>) -> Result<&Bound<'_, PyAny>> {
    LOGGER
        .get_or_try_init(py, || -> Result<Py<PyAny>> {
            Ok(py
                .import("logging")?
                .call_method1("getLogger", ("pickleguard",))?
                .unbind())
        })
        .map(|l| l.bind(py))
}

pub(super) const DEBUG: i32 = 10;

/// The logger's per-level cache of isEnabledFor answers (`Logger._cache`). logging
/// clears it in place whenever levels change, so the dict object itself is stable.
pub(super) static LOGGER_CACHE: PyOnceLock<Option<Py<PyDict>>> = PyOnceLock::new();

pub(super) fn debug_enabled(py: Python<'_>, logger: &Bound<'_, PyAny>) -> Result<bool> {
    let cache = LOGGER_CACHE.get_or_init(py, || {
        logger
            .getattr(pyo3::intern!(py, "_cache"))
            .ok()
            .and_then(|c| c.cast_into::<PyDict>().ok())
            .map(Bound::unbind)
    });
    // Reading the cached answer skips a Python-level call on every load; without
    // it, ask isEnabledFor, which fills it.
    if let Some(flag) = cache
        .as_ref()
        .and_then(|c| c.bind(py).get_item(DEBUG).ok().flatten())
    {
        return Ok(flag.is_truthy()?);
    }
    Ok(logger.call_method1("isEnabledFor", (DEBUG,))?.is_truthy()?)
}

pub(super) fn log_allowed(py: Python<'_>, load: &Load<'_>, ids: &mut Identities<'_>) -> Result<()> {
    let logger = logger(py)?;
    if debug_enabled(py, logger)? {
        let id = ids
            .any_known()
            .unwrap_or_else(|| ids.get(Algorithm::Sha256));
        logger.call_method1("debug", ("allowed %s", describe_payload(load, &id)))?;
    }
    Ok(())
}
