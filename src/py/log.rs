//! The `pickleguard` logger: where allowed loads (at DEBUG), warn-mode reports and
//! denials are logged; and warn mode's own lines on stderr.
//!
//! The logger follows the library convention: it has a `NullHandler`, so an
//! application that configures logging gets every record, and one that does not
//! gets no second copy of a denial its traceback already shows.

use super::error::{GuardError, Result};
use super::journal::audit_log_path;
use crate::identity::{Algorithm, Identities};
use crate::load::Load;
use crate::report::{describe_payload, Denial};
use crate::stderr::{Denials, WarnOutput, WarnStderr, WarnStderrSetting};
use parking_lot::Mutex;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyDict;

pub(super) static LOGGER: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

pub(super) fn logger(py: Python<'_>) -> Result<&Bound<'_, PyAny>> {
    LOGGER
        .get_or_try_init(py, || -> Result<Py<PyAny>> {
            let logging = py.import("logging")?;
            let logger = logging.call_method1("getLogger", ("pickleguard",))?;
            logger.call_method1("addHandler", (logging.call_method0("NullHandler")?,))?;
            Ok(logger.unbind())
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

/// Whether `logging` has been imported. Until it is, no handler can exist that
/// would want a record, and a record logged now would reach none later (logging
/// does not replay records), so an allowed load skips the import (7 to 10 ms at
/// the first load) and the logger altogether.
fn logging_imported(py: Python<'_>) -> bool {
    if LOGGER.get(py).is_some() {
        return true;
    }
    // SAFETY: PyImport_GetModuleDict (stable ABI) returns a borrowed reference to
    // the interpreter's module dict, which lives as long as the interpreter; we
    // hold the GIL (`py`) and take a new reference before using it.
    let modules =
        unsafe { Bound::from_borrowed_ptr_or_opt(py, pyo3::ffi::PyImport_GetModuleDict()) };
    // Without a module dict, fall back to importing logging, as before.
    modules.is_none_or(|m| m.contains(pyo3::intern!(py, "logging")).unwrap_or(true))
}

pub(super) fn log_allowed(py: Python<'_>, load: &Load<'_>, ids: &mut Identities<'_>) -> Result<()> {
    if !logging_imported(py) {
        return Ok(());
    }
    let logger = logger(py)?;
    if debug_enabled(py, logger)? {
        let id = ids
            .any_known()
            .unwrap_or_else(|| ids.get(Algorithm::Sha256));
        logger.call_method1("debug", ("allowed %s", describe_payload(load, &id)))?;
    }
    Ok(())
}

static WARN_STDERR: once_cell::sync::Lazy<Mutex<WarnStderr>> = once_cell::sync::Lazy::new(|| {
    let setting = std::env::var("PICKLEGUARD_WARN_STDERR")
        .ok()
        .and_then(|v| WarnStderrSetting::parse(&v))
        .unwrap_or_default();
    Mutex::new(WarnStderr::new(setting))
});

/// Set what warn mode prints on stderr: "auto" (a line per distinct payload and
/// caller, or one summary at exit when an audit log is set) or "off".
#[pyfunction]
pub(super) fn set_warn_stderr(setting: &str) -> Result<()> {
    let parsed = WarnStderrSetting::parse(setting).ok_or_else(|| {
        GuardError::BadArgument(format!(
            "PICKLEGUARD_WARN_STDERR must be {}, not {setting:?}",
            WarnStderrSetting::NAMES
        ))
    })?;
    WARN_STDERR.lock().setting = parsed;
    Ok(())
}

fn write_stderr(py: Python<'_>, line: &str) -> Result<()> {
    let stderr = py.import("sys")?.getattr("stderr")?;
    if !stderr.is_none() {
        stderr.call_method1("write", (line,))?;
        stderr.call_method0("flush")?;
    }
    Ok(())
}

/// The exit summary of reports that went only to the audit log (run by atexit).
#[pyfunction]
fn print_warn_summary(py: Python<'_>) -> Result<()> {
    let summary = WARN_STDERR.lock().summary(audit_log_path().as_deref());
    match summary {
        Some(line) => write_stderr(py, &line),
        None => Ok(()),
    }
}

/// Log a load that warn mode allows although a layer would refuse it, and say so on
/// stderr as `WarnStderr` decides.
pub(super) fn report_warning(py: Python<'_>, denial: &Denial) -> Result<()> {
    logger(py)?.call_method1(
        "warning",
        ("warn mode, allowed anyway: %s", denial.message.as_str()),
    )?;
    let output = WARN_STDERR
        .lock()
        .on_report(denial, audit_log_path().as_deref());
    match output {
        WarnOutput::Line(line) => write_stderr(py, &line),
        WarnOutput::HeldFirst => {
            let summary = wrap_pyfunction!(print_warn_summary, py)?;
            py.import("atexit")?.call_method1("register", (summary,))?;
            Ok(())
        }
        WarnOutput::Nothing => Ok(()),
    }
}

static DENIALS: once_cell::sync::Lazy<Mutex<Denials>> =
    once_cell::sync::Lazy::new(|| Mutex::new(Denials::default()));

/// Log a denial that is about to be raised; the first one arranges the exit line
/// about denials the program caught.
pub(super) fn log_denial(py: Python<'_>, denial: &Denial) -> Result<()> {
    logger(py)?.call_method1("error", ("%s", denial.message.as_str()))?;
    if DENIALS.lock().on_denial(denial) {
        let summary = wrap_pyfunction!(print_caught_denials, py)?;
        py.import("atexit")?.call_method1("register", (summary,))?;
    }
    Ok(())
}

/// The first lines of the NoPickleErrors in the exception that ended the program
/// (`sys.last_value`, which the interpreter sets when it prints an uncaught
/// exception), following its causes and contexts.
fn uncaught_denials(py: Python<'_>) -> Result<Vec<String>> {
    let sys = py.import("sys")?;
    let no_pickle = py.import("pickleguard.errors")?.getattr("NoPickleError")?;
    let mut shown = Vec::new();
    let mut exception = sys.getattr("last_value").ok();
    for _ in 0..32 {
        let Some(current) = exception.filter(|e| !e.is_none()) else {
            break;
        };
        if current.is_instance(&no_pickle)? {
            let text = current.str()?.to_string();
            shown.push(text.lines().next().unwrap_or_default().to_owned());
        }
        let cause = current.getattr("__cause__")?;
        exception = Some(if cause.is_none() {
            current.getattr("__context__")?
        } else {
            cause
        });
    }
    Ok(shown)
}

/// At exit: say once the denials that no traceback showed (run by atexit).
#[pyfunction]
fn print_caught_denials(py: Python<'_>) -> Result<()> {
    // A multiprocessing child sends its exceptions to its parent, which raises them.
    let in_child = match py
        .import("sys")?
        .getattr("modules")?
        .get_item("multiprocessing")
    {
        Ok(mp) => !mp.call_method0("parent_process")?.is_none(),
        Err(_) => false,
    };
    if in_child {
        return Ok(());
    }
    let summary = DENIALS.lock().caught_summary(&uncaught_denials(py)?);
    match summary {
        Some(line) => write_stderr(py, &line),
        None => Ok(()),
    }
}
