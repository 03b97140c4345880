//! Call stacks: the frames a stack pattern is matched against, named
//! `module:qualname`, and the caller a denial names.

use super::error::Result;
use crate::load::Caller;
use crate::names::{is_internal, is_pickle_machinery, ENGINE_MAIN_MODULES};
use crate::policy::CallStack;
use parking_lot::Mutex;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString};
use std::sync::Arc;

/// Frames of the Python call stack, innermost first.
pub(super) fn walk_frames(
    py: Python<'_>,
    visit: impl FnMut(&str, &Bound<'_, PyAny>) -> bool,
) -> Result<()> {
    let frame = py.import("sys")?.call_method1("_getframe", (0,))?;
    walk_frames_from(frame, visit)
}

/// Frames from `frame` outwards, named `module:qualname`, until `visit` says stop.
pub(super) fn walk_frames_from<'py>(
    mut frame: Bound<'py, PyAny>,
    mut visit: impl FnMut(&str, &Bound<'py, PyAny>) -> bool,
) -> Result<()> {
    while !frame.is_none() {
        let globals = frame.getattr(pyo3::intern!(frame.py(), "f_globals"))?;
        let module = globals
            .cast::<PyDict>()
            .ok()
            .and_then(|g| g.get_item("__name__").ok().flatten())
            .and_then(|n| n.extract::<String>().ok())
            .unwrap_or_else(|| "<unknown>".into());
        // multiprocessing's spawn and forkserver children import the main script as
        // __mp_main__ (and alias it as __main__): name it the same in every process.
        let module = match module.as_str() {
            "__mp_main__" => "__main__".to_owned(),
            "__main__" => engine_main_module(&globals).unwrap_or(module),
            _ => module,
        };
        let code = frame.getattr(pyo3::intern!(frame.py(), "f_code"))?;
        let qualname = match code.getattr(pyo3::intern!(code.py(), "co_qualname")) {
            Ok(q) => q,
            Err(_) => code.getattr(pyo3::intern!(code.py(), "co_name"))?,
        };
        let name = format!(
            "{module}:{}",
            qualname.cast::<PyString>().map_err(PyErr::from)?.to_cow()?
        );
        if !visit(&name, &frame) {
            break;
        }
        frame = frame.getattr(pyo3::intern!(frame.py(), "f_back"))?;
    }
    Ok(())
}

/// A frame's code object as the policy sees it: `module:qualname`, and whether it
/// belongs to pickleguard or to the pickle machinery.
#[derive(Clone)]
pub(super) struct FrameName {
    pub(super) name: Arc<str>,
    pub(super) internal: bool,
    pub(super) machinery: bool,
}

/// Frame names cached by code object (held, so its address is not reused while
/// cached). Computing one takes several attribute lookups; stack patterns need it
/// for every frame of every load they check.
pub(super) type FrameNameCache =
    std::collections::HashMap<usize, (Py<PyAny>, FrameName), crate::identity::BuildDigestHasher>;

pub(super) static FRAME_NAMES: once_cell::sync::Lazy<Mutex<FrameNameCache>> =
    once_cell::sync::Lazy::new(|| Mutex::new(FrameNameCache::default()));

pub(super) const FRAME_NAME_CACHE_LIMIT: usize = 16_384;

pub(super) fn compute_frame_name(frame: &Bound<'_, PyAny>) -> FrameName {
    let mut name = None;
    let _ = walk_frames_from(frame.clone(), |n, _| {
        name = Some(n.to_owned());
        false
    });
    let name: Arc<str> = name.unwrap_or_else(|| "<unknown>:<unknown>".into()).into();
    let module = name.split(':').next().unwrap_or_default();
    FrameName {
        internal: is_internal(module),
        machinery: is_pickle_machinery(module),
        name,
    }
}

/// The module a `__main__` frame runs, if it is an engine's start-up module run
/// with `-m` (see `ENGINE_MAIN_MODULES`).
fn engine_main_module(globals: &Bound<'_, PyAny>) -> Option<String> {
    let spec = globals.cast::<PyDict>().ok()?.get_item("__spec__").ok()??;
    let name: String = spec.getattr("name").ok()?.extract().ok()?;
    ENGINE_MAIN_MODULES.contains(&name.as_str()).then_some(name)
}

extern "C" {
    // In the stable ABI from CPython 3.10, and in 3.9 (where it was added) with the
    // same signature and a new reference returned, so the abi3-py39 wheel may call
    // it; pyo3-ffi declares it only for 3.10+ under abi3. `.ci/abi3_symbols.py`
    // checks it against the 3.11+ stable-ABI lists and 3.9's exports.
    fn PyFrame_GetCode(frame: *mut pyo3::ffi::PyObject) -> *mut pyo3::ffi::PyObject;
}

/// The loading call stack: every frame but pickleguard's own, outermost first, and
/// the innermost frame outside pickle and pickleguard.
pub(super) fn call_stack(py: Python<'_>) -> CallStack {
    let mut stack = CallStack {
        frames: Vec::with_capacity(64),
        caller: None,
        called_from: None,
    };
    // SAFETY: the GIL is held; PyEval_GetFrame returns a borrowed reference to the
    // running frame (or NULL), which from_borrowed_ptr_or_opt turns into an owned one.
    let mut frame = unsafe {
        Bound::from_borrowed_ptr_or_opt(
            py,
            pyo3::ffi::PyEval_GetFrame().cast::<pyo3::ffi::PyObject>(),
        )
    };
    // One lock for the whole walk. Computing a missing name runs no Python code
    // that could load a pickle, so holding it there cannot deadlock.
    let mut cache = FRAME_NAMES.lock();
    while let Some(current) = frame {
        // SAFETY: `current` is a live frame object and the GIL is held;
        // PyFrame_GetCode returns a new reference, never NULL.
        let code = unsafe { Bound::from_owned_ptr(py, PyFrame_GetCode(current.as_ptr())) };
        // `f_back` as an attribute: the stable ABI has no PyFrame_GetBack. (It
        // raises no audit event; `f_code` does, which is why the code object
        // comes from PyFrame_GetCode.) A frame without one ends the walk.
        let back = current
            .getattr(pyo3::intern!(py, "f_back"))
            .ok()
            .filter(|b| !b.is_none());
        let key = code.as_ptr() as usize;
        let found = match cache.get(&key) {
            Some((_, found)) => found.clone(),
            None => {
                let found = compute_frame_name(&current);
                if cache.len() >= FRAME_NAME_CACHE_LIMIT {
                    cache.clear();
                }
                cache.insert(key, (code.unbind(), found.clone()));
                found
            }
        };
        if !found.machinery {
            if stack.caller.is_none() {
                stack.caller = Some(found.name.clone());
            } else if stack.called_from.is_none() {
                stack.called_from = Some(found.name.clone());
            }
        }
        if !found.internal {
            stack.frames.push(found.name);
        }
        frame = back;
    }
    stack.frames.reverse();
    stack
}

/// The innermost frame outside pickle and pickleguard: the code that asked for the load.
pub(super) fn caller(py: Python<'_>) -> Option<Caller> {
    let mut found = None;
    let _ = walk_frames(py, |name, frame| {
        if is_pickle_machinery(name.split(':').next().unwrap_or_default()) {
            return true;
        }
        let file = frame
            .getattr("f_code")
            .and_then(|c| c.getattr(pyo3::intern!(c.py(), "co_filename")))
            .and_then(|f| f.extract::<String>())
            .unwrap_or_default();
        let line = frame
            .getattr("f_lineno")
            .and_then(|l| l.extract())
            .unwrap_or(0);
        found = Some(Caller {
            name: name.to_owned(),
            file,
            line,
        });
        false
    });
    found
}
