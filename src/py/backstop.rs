//! The backstop: an audit hook (registered with `sys.addaudithook`) that refuses `pickle.find_class` (the event
//! every unpickler raises before importing a global) unless the event comes from
//! the `find_class` call of a load the gate started on judged bytes. An unpickler
//! reached by a path the gate does not cover (a function bound before activation, a
//! second `_pickle`, a subclass of the original C class, a load loop of its own)
//! then cannot import a single global.

use super::error::{GuardError, NoPickleError, Result};
use super::frames::caller;
use super::log::logger;
use super::unpickler::{current_frame, current_frame_ptr};
use crate::admission::Admission;
use crate::names::refused_even_when_admitted;
use crate::report::{backstop_denial, BackstopReason};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyDict;
use std::sync::atomic::{AtomicBool, Ordering};

thread_local! {
    /// Admissions in force on this thread, innermost last. Only the innermost one
    /// counts, and only for events raised where it says: code that an admitted
    /// pickle calls (a REDUCE target, a persistent_load, an import) runs in other
    /// frames, so an unpickler it starts is not admitted by the outer load.
    pub(super) static ADMISSIONS: std::cell::RefCell<Vec<Admission>> = const { std::cell::RefCell::new(Vec::new()) };
    /// The unpicklers whose load the gate started on judged bytes, innermost last.
    /// Held, so that no other object can take one's address meanwhile.
    pub(super) static GATE_LOADS: std::cell::RefCell<Vec<Py<PyAny>>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// While alive, one admission is in force on this thread.
pub(super) struct Admitted;

impl Admitted {
    /// For an original unpickler called from the current frame with no Python frame
    /// of its own (the C `loads`, the C `find_class`).
    pub(super) fn at_current_frame(py: Python<'_>) -> Self {
        let frame = current_frame_ptr(py);
        ADMISSIONS.with(|a| a.borrow_mut().push(Admission::InFrame { frame }));
        Admitted
    }

    /// For a Python function `code` called from the current frame.
    pub(super) fn for_callee(py: Python<'_>, code: &Bound<'_, PyAny>) -> Self {
        let frame = current_frame_ptr(py);
        let code = code.as_ptr() as usize;
        ADMISSIONS.with(|a| a.borrow_mut().push(Admission::InCallee { frame, code }));
        Admitted
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        ADMISSIONS.with(|a| a.borrow_mut().pop());
        // Both unpicklers take EXT codes from copyreg's cache without raising
        // pickle.find_class; an entry an admitted load left there would let an
        // unadmitted unpickler reach that global past the backstop.
        // SAFETY: Admitted lives only inside functions that hold the GIL.
        let py = unsafe { Python::assume_attached() };
        clear_extension_cache(py);
    }
}

/// While alive, the gate is running an original `load` of this unpickler on bytes
/// it judged. Only then does the unpickler's `find_class` admit imports.
pub(super) struct GateLoad;

impl GateLoad {
    pub(super) fn enter(unpickler: &Bound<'_, PyAny>) -> Self {
        let unpickler = unpickler.clone().unbind();
        GATE_LOADS.with(|l| l.borrow_mut().push(unpickler));
        GateLoad
    }

    /// Whether `unpickler`'s `find_class` may admit the import it is asked for:
    /// `unpickler` runs the innermost load the gate started on this thread, or that
    /// load's unpickler routes its `find_class` to `unpickler`'s (a bound method set
    /// on the instance, as joblib does for the pickle nested in an object array:
    /// `inner.find_class = outer.find_class`) and the gate runs `unpickler`'s own
    /// load further out. Either way the import belongs to a load the gate judged.
    pub(super) fn admits_imports_of(unpickler: &Bound<'_, PyAny>) -> bool {
        let py = unpickler.py();
        GATE_LOADS.with(|l| {
            let loads = l.borrow();
            let Some(innermost) = loads.last() else {
                return false;
            };
            if innermost.is(unpickler) {
                return true;
            }
            let running = loads.iter().any(|u| u.is(unpickler));
            running && routes_find_class_to(innermost.bind(py), unpickler)
        })
    }
}

/// Whether `inner`'s instance dict sets `find_class` to a method bound to `outer`.
/// Read from the dict, not by attribute access: no code of the pickle's runs here.
fn routes_find_class_to(inner: &Bound<'_, PyAny>, outer: &Bound<'_, PyAny>) -> bool {
    let py = inner.py();
    let Ok(Some(method)) = inner
        .getattr(pyo3::intern!(py, "__dict__"))
        .and_then(|d| d.cast_into::<PyDict>().map_err(PyErr::from))
        .and_then(|d| d.get_item(pyo3::intern!(py, "find_class")))
    else {
        return false;
    };
    // Exactly a bound method (types.MethodType), whose `__self__` is then plain data.
    let is_method = py
        .import("types")
        .and_then(|types| types.getattr("MethodType"))
        .is_ok_and(|method_type| method.get_type().is(&method_type));
    is_method
        && method
            .getattr(pyo3::intern!(py, "__self__"))
            .is_ok_and(|bound_to| bound_to.is(outer))
}

impl Drop for GateLoad {
    fn drop(&mut self) {
        GATE_LOADS.with(|l| l.borrow_mut().pop());
    }
}

/// Whether the `pickle.find_class` event being raised comes from where the
/// innermost admission says.
pub(super) fn admitted_here(py: Python<'_>) -> bool {
    let Some(admission) = ADMISSIONS.with(|a| a.borrow().last().copied()) else {
        return false;
    };
    let frame = current_frame(py);
    let address = |object: &Bound<'_, PyAny>| object.as_ptr() as usize;
    admission.admits(frame.as_ref().map(address), || {
        let Some(frame) = &frame else {
            return (None, None);
        };
        let code = frame.getattr(pyo3::intern!(py, "f_code")).ok();
        let back = frame.getattr(pyo3::intern!(py, "f_back")).ok();
        (code.as_ref().map(address), back.as_ref().map(address))
    })
}

pub(super) static EXTENSION_CACHE: PyOnceLock<Py<PyDict>> = PyOnceLock::new();

pub(super) fn clear_extension_cache(py: Python<'_>) {
    let cache = EXTENSION_CACHE.get_or_try_init(py, || -> Result<Py<PyDict>> {
        Ok(py
            .import("copyreg")?
            .getattr("_extension_cache")?
            .cast_into::<PyDict>()
            .map_err(PyErr::from)?
            .unbind())
    });
    if let Ok(cache) = cache {
        let cache = cache.bind(py);
        if !cache.is_empty() {
            cache.clear();
        }
    }
}

pub(super) static BACKSTOP_REGISTERED: AtomicBool = AtomicBool::new(false);

/// Refuse the `pickle.find_class` event for `module.name` unless the load that
/// raises it was admitted here; some imports are refused even then.
pub(super) fn backstop_check(py: Python<'_>, args: &Bound<'_, PyAny>) -> Result<()> {
    let (module, name): (String, String) = args
        .extract()
        .unwrap_or_else(|_| ("<unknown>".into(), "<unknown>".into()));
    let why = refused_even_when_admitted(&module, &name);
    let reason = match &why {
        Some(_) => BackstopReason::AlwaysRefused,
        None if admitted_here(py) => return Ok(()),
        None => BackstopReason::NotAdmitted,
    };
    let denial = backstop_denial(reason, &module, &name, why.as_deref(), caller(py).as_ref());
    if module != "pickleguard.selftest" {
        if let Ok(log) = logger(py) {
            let _ = log.call_method1("error", ("%s", denial.message.as_str()));
        }
    }
    Err(GuardError::Denied(Box::new(denial)))
}

/// The audit hook, registered with `sys.addaudithook` (the stable ABI has no
/// `PySys_AddAuditHook`). CPython calls it for every audited event; all but
/// `pickle.find_class` return at once. An error it raises aborts the event, and
/// a panic surfaces as PyO3's PanicException, which aborts it too: never a global
/// let through.
#[pyfunction]
pub(super) fn audit_hook(
    py: Python<'_>,
    event: &Bound<'_, PyAny>,
    args: &Bound<'_, PyAny>,
) -> PyResult<()> {
    if !event.eq(pyo3::intern!(py, "pickle.find_class"))? {
        return Ok(());
    }
    backstop_check(py, args).map_err(PyErr::from)
}

/// Register the audit hook (once) and prove it is in place: an unadmitted
/// `pickle.find_class` event must be refused. Raises PickleGuardError otherwise,
/// so no one reports "enforcing" without the backstop.
#[pyfunction]
pub(super) fn install_backstop(py: Python<'_>) -> Result<()> {
    if !BACKSTOP_REGISTERED.swap(true, Ordering::AcqRel) {
        let registered = wrap_pyfunction!(audit_hook, py)
            .and_then(|hook| py.import("sys")?.call_method1("addaudithook", (hook,)));
        if let Err(cause) = registered {
            BACKSTOP_REGISTERED.store(false, Ordering::Release);
            return Err(GuardError::Guard(format!(
                "could not register pickleguard's audit hook: {cause}"
            )));
        }
    }
    // Entries cached before activation would reach unadmitted unpicklers too.
    clear_extension_cache(py);
    let probe = py.import("sys")?.call_method1(
        "audit",
        ("pickle.find_class", "pickleguard.selftest", "probe"),
    );
    match probe {
        Err(e) if e.is_instance_of::<NoPickleError>(py) => Ok(()),
        Err(e) => Err(GuardError::Guard(format!(
            "pickleguard's audit-hook backstop failed its self-test: {e}"
        ))),
        Ok(_) => Err(GuardError::Guard(
            "pickleguard's audit-hook backstop is not in place: another audit hook refused its \
             registration, so pickleguard will not report enforcing"
                .into(),
        )),
    }
}
